#pragma once
// Hugging Face Llama checkpoints (LlamaForCausalLM): a directory holding config.json and
// either model.safetensors or model.safetensors.index.json, whose weight_map names the shard
// file of every tensor.
//
//   model.embed_tokens.weight                       [vocab × dim]     token embedding
//   model.layers.N.input_layernorm.weight           [dim]             attention norm
//   model.layers.N.self_attn.{q,k,v,o}_proj.weight  [dim|kv × dim]    wq, wk, wv, wo
//   model.layers.N.post_attention_layernorm.weight  [dim]             MLP norm
//   model.layers.N.mlp.gate_proj.weight             [hidden × dim]    w1
//   model.layers.N.mlp.down_proj.weight             [dim × hidden]    w2
//   model.layers.N.mlp.up_proj.weight               [hidden × dim]    w3
//   model.norm.weight                               [dim]             final norm
//   lm_head.weight                                  [vocab × dim]     classifier (absent or
//                                                                     tied: the embedding)
//
// Transformers applies rotary embeddings to q and k as rotate-halves (its conversion script
// permutes the rows of Meta's q/k weights for that), so these weights are used as stored with
// rope_layout::halves. F32 tensors are views into the files' images (io::file_image: read
// or mapped); F16 and BF16 ones are converted to f32 copies kept alive by weights.owner.
//
// Settings t2 does not implement (rope_scaling, biases, another activation, a head_dim other
// than hidden_size / num_attention_heads) are refused with an error rather than ignored, so a
// model that loads is one t2 runs exactly.
#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "t2/io/checkpoint.hpp"
#include "t2/io/json.hpp"
#include "t2/io/safetensors.hpp"

T2_NAMESPACE_BEGIN
namespace io {

// The model configuration from a parsed config.json.
inline nn::llama_config read_huggingface_config(const json::node& root) {
    if (root.type() != json::kind::object)
        root.fail("expected a JSON object");
    const auto model_type = root.find_non_null("model_type");
    bool llama_arch = false;
    if (const auto archs = root.find_non_null("architectures"))
        for (std::size_t i = 0; i < archs->size(); ++i)
            llama_arch = llama_arch || (*archs)[i].as_string() == "LlamaForCausalLM";
    if (model_type && model_type->as_string() != "llama")
        model_type->fail("\"" + model_type->as_string() +
                         "\" is not supported: t2 reads Llama-family checkpoints (model_type \"llama\")");
    if (!model_type && !llama_arch)
        root.fail("neither model_type \"llama\" nor architectures [\"LlamaForCausalLM\"]: not a "
                  "Llama checkpoint");
    if (const auto act = root.find_non_null("hidden_act"); act && act->as_string() != "silu")
        act->fail("\"" + act->as_string() + "\" is not supported: Llama's MLP uses silu (SwiGLU)");
    if (const auto scaling = root.find_non_null("rope_scaling"))
        scaling->fail("rotary embedding scaling is not supported (t2 implements plain RoPE); only "
                      "checkpoints with \"rope_scaling\": null can be read");
    for (const char* bias : {"attention_bias", "mlp_bias"})
        if (const auto b = root.find_non_null(bias); b && b->as_bool())
            b->fail("biases are not supported (Llama has none)");

    nn::llama_config c;
    c.dim = root["hidden_size"].as_size();
    c.hidden_dim = root["intermediate_size"].as_size();
    c.n_layers = root["num_hidden_layers"].as_size();
    c.n_heads = root["num_attention_heads"].as_size();
    const auto kv = root.find_non_null("num_key_value_heads");
    c.n_kv_heads = kv ? kv->as_size() : c.n_heads;
    c.vocab_size = root["vocab_size"].as_size();
    c.seq_len = root["max_position_embeddings"].as_size();
    // Transformers' LlamaConfig defaults.
    const auto eps = root.find_non_null("rms_norm_eps");
    c.norm_eps = eps ? static_cast<float>(eps->as_double()) : 1e-6f;
    const auto theta = root.find_non_null("rope_theta");
    c.rope_theta = theta ? static_cast<float>(theta->as_double()) : 10000.f;
    const auto tie = root.find_non_null("tie_word_embeddings");
    c.shared_classifier = tie ? tie->as_bool() : false;
    c.rope_layout = ops::rope_layout::halves;
    nn::validate(c, root.file());
    if (const auto hd = root.find_non_null("head_dim"); hd && hd->as_size() != nn::head_dim(c))
        hd->fail(std::to_string(hd->as_size()) + " differs from hidden_size / num_attention_heads = " +
                 std::to_string(nn::head_dim(c)) + ", which t2 requires");
    return c;
}

namespace detail {

// Keeps a loaded model's memory alive: the file images (F32 weights view them) and the f32
// copies of F16/BF16 tensors.
struct huggingface_storage {
    std::vector<std::shared_ptr<const void>> files;
    std::vector<std::shared_ptr<const void>> copies;
};

struct huggingface_tensor {
    const safetensors_tensor* tensor;
    const safetensors_file* file;
};

// A tensor name of the form model.layers.N.rest: N, else npos.
inline std::size_t huggingface_layer(std::string_view name) {
    constexpr std::string_view prefix = "model.layers.";
    if (!name.starts_with(prefix))
        return std::string::npos;
    name.remove_prefix(prefix.size());
    std::size_t n = 0, digits = 0;
    for (; digits < name.size() && name[digits] >= '0' && name[digits] <= '9' && digits < 9; ++digits)
        n = n * 10 + std::size_t(name[digits] - '0');
    return digits > 0 && digits < name.size() && name[digits] == '.' ? n : std::string::npos;
}

} // namespace detail

// Assembles a model from a parsed config.json and the opened safetensors files that hold its
// tensors (a tensor may be in any of them, but in only one).
inline checkpoint read_huggingface(const json::document& config,
                                   const std::vector<std::shared_ptr<const safetensors_file>>& shards) {
    checkpoint out;
    out.config = read_huggingface_config(config.root());
    out.format = shards.size() == 1 ? "safetensors" : "safetensors (" + std::to_string(shards.size()) + " shards)";
    const auto& c = out.config;
    auto storage = std::make_shared<detail::huggingface_storage>();
    out.weights.owner = storage;

    std::map<std::string_view, detail::huggingface_tensor> tensors;
    std::string files;
    for (const auto& shard : shards) {
        T2_CHECK(shard != nullptr, "read_huggingface: null shard");
        storage->files.push_back(shard->owner());
        files += (files.empty() ? "" : ", ") + shard->name();
        for (const auto& t : shard->tensors()) {
            const auto [it, fresh] = tensors.emplace(t.name, detail::huggingface_tensor{&t, shard.get()});
            if (!fresh)
                t2::detail::throw_error(shard->name(), ": tensor \"", t.name, "\" is also in ",
                                        it->second.file->name());
            // Ignoring these would run a different model than the checkpoint describes.
            const std::size_t layer = detail::huggingface_layer(t.name);
            if (layer != std::string::npos && layer >= c.n_layers)
                t2::detail::throw_error(shard->name(), ": tensor \"", t.name, "\" belongs to layer ", layer,
                                        " but ", config.name(), " has num_hidden_layers = ", c.n_layers);
            if (layer != std::string::npos && std::string_view(t.name).ends_with(".bias"))
                t2::detail::throw_error(shard->name(), ": tensor \"", t.name,
                                        "\" is a bias; Llama layers have none and t2 does not support them");
        }
    }

    const auto lookup = [&](const std::string& name) -> const detail::huggingface_tensor* {
        const auto it = tensors.find(name);
        return it == tensors.end() ? nullptr : &it->second;
    };
    // The tensor as f32 with exactly the shape the configuration implies.
    const auto load = [&](const std::string& name, std::vector<std::size_t> shape) -> const float* {
        const auto* found = lookup(name);
        if (!found)
            t2::detail::throw_error(files.empty() ? config.name() : files, ": missing tensor \"", name, "\"");
        const safetensors_tensor& t = *found->tensor;
        const safetensors_file& file = *found->file;
        if (t.shape != shape)
            t2::detail::throw_error(file.name(), ": tensor \"", name, "\" has shape ",
                                    detail::shape_string(t.shape), ", but ", config.name(), " implies ",
                                    detail::shape_string(shape));
        const char* stored = t.dtype == safetensors_dtype::f32    ? "f32"
                             : t.dtype == safetensors_dtype::f16  ? "f16"
                             : t.dtype == safetensors_dtype::bf16 ? "bf16"
                                                                  : nullptr;
        if (!stored)
            t2::detail::throw_error(file.name(), ": tensor \"", name, "\" has dtype ", t.dtype_name,
                                    "; t2 reads F32, F16 and BF16 checkpoints");
        out.tensors.push_back({name, stored, t.shape});
        if (t.dtype == safetensors_dtype::f32 && safetensors_file::aligned<float>(t))
            return reinterpret_cast<const float*>(t.data.data());
        auto copy = std::make_shared<std::vector<float>>(t.numel);
        file.to_f32(t, *copy);
        storage->copies.push_back(copy);
        return copy->data();
    };
    const auto matrix = [&](const std::string& name, std::size_t rows, std::size_t cols) {
        return matrix_view<const float>(load(name, {rows, cols}), dims<2>(rows, cols));
    };
    const auto vector = [&](const std::string& name, std::size_t n) {
        return vector_view<const float>(load(name, {n}), dims<1>(n));
    };
    const auto dense = [&](matrix_view<const float> m) {
        return nn::linear<nn::dense<float>>(nn::dense<float>(m, storage));
    };

    const std::size_t D = c.dim, H = c.hidden_dim, KV = nn::kv_dim(c);
    auto& w = out.weights;
    w.token_embedding = matrix("model.embed_tokens.weight", c.vocab_size, D);
    w.blocks.resize(c.n_layers);
    for (std::size_t l = 0; l < c.n_layers; ++l) {
        const std::string p = "model.layers." + std::to_string(l) + ".";
        auto& b = w.blocks[l];
        b.attention_norm = vector(p + "input_layernorm.weight", D);
        b.wq = dense(matrix(p + "self_attn.q_proj.weight", D, D));
        b.wk = dense(matrix(p + "self_attn.k_proj.weight", KV, D));
        b.wv = dense(matrix(p + "self_attn.v_proj.weight", KV, D));
        b.wo = dense(matrix(p + "self_attn.o_proj.weight", D, D));
        b.mlp_norm = vector(p + "post_attention_layernorm.weight", D);
        b.w1 = dense(matrix(p + "mlp.gate_proj.weight", H, D));
        b.w2 = dense(matrix(p + "mlp.down_proj.weight", D, H));
        b.w3 = dense(matrix(p + "mlp.up_proj.weight", H, D));
    }
    w.final_norm = vector("model.norm.weight", D);
    // Tied: transformers replaces lm_head by the embedding even when the file stores one.
    if (!c.shared_classifier && !lookup("lm_head.weight"))
        out.config.shared_classifier = true;
    w.classifier = dense(out.config.shared_classifier ? w.token_embedding
                                                      : matrix("lm_head.weight", c.vocab_size, D));
    return out;
}

namespace detail {

inline bool ends_with(const std::string& s, std::string_view suffix) {
    return std::string_view(s).ends_with(suffix);
}

// The shard files an index names, each once, in first-mention order; each entry of its
// weight_map must be in the shard it names.
inline std::vector<std::shared_ptr<const safetensors_file>> open_huggingface_index(
    const std::filesystem::path& index_path, const load_options& options = {}) {
    const json::document index = json::parse_file(index_path.string());
    const json::node map = index.root()["weight_map"];
    if (map.type() != json::kind::object)
        map.fail("expected an object mapping tensor names to files");
    const std::filesystem::path dir = index_path.parent_path();
    std::vector<std::shared_ptr<const safetensors_file>> shards;
    std::map<std::string, std::size_t, std::less<>> opened;
    for (std::size_t i = 0; i < map.size(); ++i) {
        const json::node entry = map.member(i);
        const std::string& shard = entry.as_string();
        // A plain file name: an index must not send the reader elsewhere on the disk.
        if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
            shard.find('\\') != std::string::npos)
            entry.fail("\"" + shard + "\" is not a file name in the index's directory");
        auto it = opened.find(shard);
        if (it == opened.end()) {
            shards.push_back(std::make_shared<const safetensors_file>((dir / shard).string(),
                                                                      safetensors_options{.mode = options.mode}));
            it = opened.emplace(shard, shards.size() - 1).first;
        }
        if (!shards[it->second]->find(map.key(i)))
            entry.fail("the index places this tensor in " + shards[it->second]->name() +
                       ", which does not contain it");
    }
    if (shards.empty())
        map.fail("the index names no tensors");
    return shards;
}

} // namespace detail

// Reads a model from its directory, or from its config.json, model.safetensors (or another
// single .safetensors file) or model.safetensors.index.json; the other files are looked for
// beside the one given. options.mode: each shard read into huge-page memory, or mapped.
inline checkpoint read_huggingface(const std::string& dir_or_file, const load_options& options = {}) {
    namespace fs = std::filesystem;
    const fs::path given(dir_or_file);
    std::error_code ec;
    fs::path dir, weights;
    if (fs::is_directory(given, ec)) {
        dir = given;
    } else if (fs::is_regular_file(given, ec)) {
        dir = given.parent_path();
        if (dir.empty())
            dir = ".";
        const std::string name = given.filename().string();
        if (detail::ends_with(name, ".safetensors") || detail::ends_with(name, ".safetensors.index.json"))
            weights = given;
        else if (name != "config.json")
            t2::detail::throw_error(dir_or_file, ": not a Hugging Face model (expected its directory, "
                                    "config.json, a .safetensors file or a .safetensors.index.json index)");
    } else {
        t2::detail::throw_error(dir_or_file, ": no such file or directory");
    }
    const fs::path config_path = dir / "config.json";
    if (!fs::is_regular_file(config_path, ec))
        t2::detail::throw_error(config_path.string(), ": missing; a Hugging Face model directory needs "
                                "its config.json");
    if (weights.empty()) {
        if (fs::is_regular_file(dir / "model.safetensors", ec))
            weights = dir / "model.safetensors";
        else if (fs::is_regular_file(dir / "model.safetensors.index.json", ec))
            weights = dir / "model.safetensors.index.json";
        else
            t2::detail::throw_error(dir.string(), ": neither model.safetensors nor "
                                    "model.safetensors.index.json (PyTorch .bin checkpoints are not "
                                    "supported: convert them to safetensors)");
    }
    const json::document config = json::parse_file(config_path.string());
    std::vector<std::shared_ptr<const safetensors_file>> shards;
    if (detail::ends_with(weights.filename().string(), ".index.json"))
        shards = detail::open_huggingface_index(weights, options);
    else
        shards.push_back(std::make_shared<const safetensors_file>(weights.string(),
                                                                  safetensors_options{.mode = options.mode}));
    return read_huggingface(config, shards);
}

} // namespace io
T2_NAMESPACE_END
