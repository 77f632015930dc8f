// t2 export: the model with an SVF expert (or a mixture of experts) applied, written as a
// GGUF file that llama.cpp and other GGUF runtimes load: the adapted matrices W' composed
// once, every other tensor as it is, the vocabulary carried over (io/gguf_writer.hpp).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "command.hpp"
#include "model.hpp"
#include "t2/adapt/export.hpp"
#include "t2/io/gguf_writer.hpp"

namespace t2_tool {
namespace {

struct export_options {
    std::string model, decomposition, out, type = "f32";
    std::optional<std::string> expert, experts, alpha, tokenizer;
    std::size_t threads = 1;
};

// --alpha: finite, non-negative weights written whole ('0.5', not '0.5x').
std::vector<float> parse_alpha(const std::string& text) {
    std::vector<float> alpha;
    for (const std::string& item : split_list(text)) {
        std::size_t used = 0;
        double value = NAN;
        try {
            value = std::stod(item, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used == 0 || used != item.size() || !std::isfinite(value) || value < 0 || value > 1e30)
            throw usage_error("--alpha wants comma-separated non-negative weights, got '" + item + "'");
        alpha.push_back(static_cast<float>(value));
    }
    return alpha;
}

// The experts to apply: one (--expert), or a mixture with its weights (--experts, --alpha).
struct expert_choice {
    std::vector<std::string> paths;
    std::optional<std::vector<float>> alpha; // a mixture
};

expert_choice choose_experts(const export_options& a) {
    if (a.expert && a.experts)
        throw usage_error("--expert and --experts do not go together");
    if (a.alpha && !a.experts)
        throw usage_error("--alpha goes with --experts");
    if (a.expert)
        return {{*a.expert}, std::nullopt};
    if (!a.experts)
        throw usage_error("give --expert FILE, or --experts A,B with --alpha x,y");
    if (!a.alpha)
        throw usage_error("--experts needs --alpha, one mixing weight per expert");
    expert_choice choice{split_list(*a.experts), parse_alpha(*a.alpha)};
    for (const auto& path : choice.paths)
        if (path.empty())
            throw usage_error("--experts wants comma-separated expert files, got '" + *a.experts + "'");
    if (choice.paths.size() != choice.alpha->size())
        throw usage_error("--experts names " + std::to_string(choice.paths.size()) + " experts but --alpha gives " +
                          std::to_string(choice.alpha->size()) + " weights");
    return choice;
}

void export_model(const export_options& a) {
    if (a.type != "f32" && a.type != "f16")
        throw usage_error("--type wants f32 or f16, got '" + a.type + "'");
    const expert_choice choice = choose_experts(a);

    const t2::io::checkpoint ck = load_checkpoint(a.model);
    const t2::io::tokenizer tok = find_tokenizer(a.tokenizer, ck, a.model);
    if (tok.vocab_size() != ck.config.vocab_size)
        throw t2::error("the tokenizer has " + std::to_string(tok.vocab_size()) + " tokens but the model " +
                        std::to_string(ck.config.vocab_size));
    const auto d = read_decomposition(a.decomposition);
    const auto model = t2::adapt::make_svf_model(ck.config, ck.weights, d); // refuses another model's SVD
    std::vector<t2::adapt::expert> experts;
    for (const auto& path : choice.paths)
        experts.push_back(read_expert(path));
    t2::adapt::svf_adapter adapter = [&] {
        if (!choice.alpha) {
            auto one = t2::adapt::make_svf_adapter(model, {.rescale = experts[0].rescale});
            t2::adapt::apply_expert(one, d, experts[0]); // refuses another model's expert
            return one;
        }
        auto mixture = t2::adapt::make_mixture_adapter(model, d, experts, {.rescale = experts[0].rescale});
        t2::adapt::set_mixture_alpha(mixture, *choice.alpha);
        return mixture;
    }();
    std::size_t adapted = 0;
    for (std::size_t l = 0; l < adapter.layers(); ++l)
        for (std::size_t p = 0; p < t2::nn::projections_per_block; ++p)
            adapted += adapter.matrix(l, p).active() ? 1 : 0;

    t2::exec::thread_pool pool(a.threads);
    const auto weights = t2::adapt::merged_weights(executor(pool), model, adapter);
    std::string name = std::filesystem::path(a.model).stem().string();
    for (const auto& e : experts)
        name += " + " + (e.task.empty() ? std::string("expert") : e.task);
    const auto type = a.type == "f16" ? t2::io::ggml_type::f16 : t2::io::ggml_type::f32;
    t2::io::write_gguf(a.out, ck.config, weights, &tok, {.type = type, .name = name});
    std::fprintf(stderr, "wrote %s: %s, %zu of %zu matrices adapted (%s), %s tensors\n", a.out.c_str(), name.c_str(),
                 adapted, ck.config.n_layers * t2::nn::projections_per_block,
                 choice.alpha ? "mixture" : "expert", a.type == "f16" ? "F16" : "F32");
}

} // namespace

void add_export(command& app) {
    auto o = std::make_shared<export_options>();
    app.subcommand("export", "write the model with an expert applied as GGUF, for llama.cpp and others")
        .model(o->model)
        .required("--decomposition", o->decomposition, "FILE", "the model's SVD (from 't2 decompose')")
        .option("--expert", o->expert, "FILE", "the SVF expert to apply")
        .option("--experts", o->experts, "A,B,...", "experts to mix instead, z' = Σ_k α_k z_k (with --alpha)")
        .option("--alpha", o->alpha, "x,y,...", "the mixing weights α_k of --experts, non-negative")
        .required("--out", o->out, "FILE", "where to write the model (.gguf)")
        .option("--type", o->type, "f32|f16", "matrices as F32 (default) or F16; norms stay F32")
        .option("--tokenizer", o->tokenizer, "FILE",
                "llama2.c tokenizer.bin (default: the model's own, or tokenizer.bin beside it)")
        .threads(o->threads)
        .footer("Writes a llama-architecture GGUF (version 3) with llama.cpp's tensor names and\n"
                "metadata and the model's vocabulary: every decomposed matrix as its adapted\n"
                "W' = U diag(σ ⊙ z) Vᵀ (with the expert's rescaling), every other tensor as it is.\n"
                "Read back, F32 gives the adapted model's logits exactly. The target is replaced\n"
                "only by a complete file.")
        .run([o] { export_model(*o); });
}

} // namespace t2_tool
