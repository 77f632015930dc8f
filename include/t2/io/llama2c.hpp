#pragma once
// llama2.c checkpoints (Karpathy's llama2.c, export.py), read or mapped (io::file_image).
//
//   version 0 (legacy): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
//       vocab_size, seq_len; a negative vocab_size means an untied classifier), then f32:
//       embedding, per-layer groups (attention norms, wq, wk, wv, wo, MLP norms, w1, w2,
//       w3), final norm, the RoPE tables (skipped), classifier if untied.
//   version 1: 256-byte header: uint32 magic "ak42", int32 version, the 7 int32, uint8
//       shared_classifier; then f32: attention norms, MLP norms, final norm, embedding,
//       wq…w3 (all layers each), classifier if untied.
//   version 2: as 1 plus int32 group_size after the flag; norms f32, then every matrix as
//       int8 values followed by f32 scales, one per group (Q8_0), dequantized at load.
//
// Every size is checked against the file's length before anything is read.
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>

#include "t2/io/atomic_file.hpp"
#include "t2/io/checkpoint.hpp"
#include "t2/io/detail/sizes.hpp"
#include "t2/io/file_image.hpp"

T2_NAMESPACE_BEGIN
namespace io {

static_assert(std::endian::native == std::endian::little, "checkpoint readers assume little-endian");

namespace detail {

inline constexpr std::uint32_t llama2c_magic = 0x616b3432; // "ak42"


// Where the f32 weights come from: views into the file's image (versions 0 and 1) or
// dequantized copies (version 2), either way kept alive by the storage.
struct llama2c_storage {
    std::shared_ptr<const void> source; // what the bytes belong to (a file_image)
    std::vector<std::shared_ptr<const t2::matrix<float>>> copies;
};

struct llama2c_source {
    byte_reader reader;
    llama2c_storage& storage;
    std::vector<tensor_record>& records;
    std::size_t group_size = 0; // 0: f32 data

    const float* f32(std::size_t n, const char* what) {
        const auto bytes = reader.take(checked_mul(n, sizeof(float), reader.name()), what);
        return reinterpret_cast<const float*>(bytes.data());
    }

    // One matrix: a view of f32 data, or int8 values and scales dequantized into a copy.
    matrix_view<const float> matrix(std::size_t rows, std::size_t cols, const char* what) {
        const std::size_t n = checked_mul(rows, cols, reader.name());
        records.push_back({what, group_size == 0 ? "f32" : "q8_0", {rows, cols}});
        if (group_size == 0)
            return {f32(n, what), dims<2>(rows, cols)};
        if (n % group_size != 0)
            t2::detail::throw_error(reader.name(), ": ", what, " has ", n,
                                    " elements, not a multiple of the Q8_0 group size ", group_size);
        const auto values = reader.take(n, what);
        const float* scales = f32(n / group_size, what);
        auto out = std::make_shared<t2::matrix<float>>(rows, cols);
        float* dst = out->data();
        for (std::size_t i = 0; i < n; ++i)
            dst[i] = static_cast<float>(static_cast<std::int8_t>(values[i])) * scales[i / group_size];
        storage.copies.push_back(out);
        return out->view();
    }

    vector_view<const float> vector(std::size_t n, const char* what) {
        records.push_back({what, "f32", {n}});
        return {f32(n, what), dims<1>(n)};
    }
};

inline nn::llama_config read_llama2c_dims(byte_reader& r, bool& shared) {
    std::int32_t h[7];
    for (auto& v : h)
        v = r.read<std::int32_t>("header");
    const char* names[] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
    for (int i = 0; i < 7; ++i)
        if (h[i] == 0 || (h[i] < 0 && i != 5))
            t2::detail::throw_error(r.name(), ": header field ", names[i], " is ", h[i],
                                    "; this is not a llama2.c checkpoint, or it is corrupted");
    shared = h[5] > 0;
    nn::llama_config c;
    c.dim = std::size_t(h[0]);
    c.hidden_dim = std::size_t(h[1]);
    c.n_layers = std::size_t(h[2]);
    c.n_heads = std::size_t(h[3]);
    c.n_kv_heads = std::size_t(h[4]);
    c.vocab_size = h[5] == std::numeric_limits<std::int32_t>::min() ? 0 : std::size_t(h[5] < 0 ? -h[5] : h[5]);
    c.seq_len = std::size_t(h[6]);
    c.shared_classifier = shared;
    nn::validate(c, r.name());
    return c;
}

} // namespace detail

// Parses versions 0, 1 and 2 from bytes that `source` keeps alive; `name` is used in
// messages. Tensors are recorded in file order with llama2.c's names (one record per layer).
inline checkpoint parse_llama2c(std::span<const std::byte> bytes, const std::string& name,
                                std::shared_ptr<const void> source) {
    const std::string& path = name;
    auto storage = std::make_shared<detail::llama2c_storage>();
    storage->source = std::move(source);
    checkpoint out;
    out.weights.owner = storage;
    detail::llama2c_source src{byte_reader(bytes, path), *storage, out.tensors, 0};
    int version = 0;
    auto& r = src.reader;
    bool shared = true;
    if (bytes.size() >= 8 && r.read<std::uint32_t>("magic") == detail::llama2c_magic) {
        version = r.read<std::int32_t>("version");
        if (version != 1 && version != 2)
            t2::detail::throw_error(path, ": llama2.c checkpoint version ", version,
                                    " is not supported (versions 0, 1 and 2 are)");
        out.config = detail::read_llama2c_dims(r, shared);
        shared = r.read<std::uint8_t>("shared_classifier flag") != 0;
        out.config.shared_classifier = shared;
        if (version == 2) {
            const auto group = r.read<std::int32_t>("group_size");
            if (group <= 0)
                t2::detail::throw_error(path, ": Q8_0 group size ", group, " must be positive");
            src.group_size = std::size_t(group);
        }
        r.seek(256, "the end of the 256-byte header");
    } else {
        r.seek(0, "header");
        out.config = detail::read_llama2c_dims(r, shared);
    }
    const auto& c = out.config;
    const std::size_t L = c.n_layers, D = c.dim, H = c.hidden_dim, KV = nn::kv_dim(c);
    auto& w = out.weights;
    w.blocks.resize(L);
    const auto dense = [&](nn::linear<nn::dense<float>>& layer, matrix_view<const float> m) {
        layer = nn::linear<nn::dense<float>>(nn::dense<float>(m, storage));
    };
    out.format = "llama2.c v" + std::to_string(version);
    if (version == 0) {
        w.token_embedding = src.matrix(c.vocab_size, D, "token embedding");
        for (auto& b : w.blocks) b.attention_norm = src.vector(D, "attention norms");
        for (auto& b : w.blocks) dense(b.wq, src.matrix(D, D, "wq"));
        for (auto& b : w.blocks) dense(b.wk, src.matrix(KV, D, "wk"));
        for (auto& b : w.blocks) dense(b.wv, src.matrix(KV, D, "wv"));
        for (auto& b : w.blocks) dense(b.wo, src.matrix(D, D, "wo"));
        for (auto& b : w.blocks) b.mlp_norm = src.vector(D, "MLP norms");
        for (auto& b : w.blocks) dense(b.w1, src.matrix(H, D, "w1"));
        for (auto& b : w.blocks) dense(b.w2, src.matrix(D, H, "w2"));
        for (auto& b : w.blocks) dense(b.w3, src.matrix(H, D, "w3"));
        w.final_norm = src.vector(D, "final norm");
        src.f32(detail::checked_mul(c.seq_len, nn::head_dim(c), path), "RoPE tables");
    } else {
        for (auto& b : w.blocks) b.attention_norm = src.vector(D, "attention norms");
        for (auto& b : w.blocks) b.mlp_norm = src.vector(D, "MLP norms");
        w.final_norm = src.vector(D, "final norm");
        w.token_embedding = src.matrix(c.vocab_size, D, "token embedding");
        for (auto& b : w.blocks) dense(b.wq, src.matrix(D, D, "wq"));
        for (auto& b : w.blocks) dense(b.wk, src.matrix(KV, D, "wk"));
        for (auto& b : w.blocks) dense(b.wv, src.matrix(KV, D, "wv"));
        for (auto& b : w.blocks) dense(b.wo, src.matrix(D, D, "wo"));
        for (auto& b : w.blocks) dense(b.w1, src.matrix(H, D, "w1"));
        for (auto& b : w.blocks) dense(b.w2, src.matrix(D, H, "w2"));
        for (auto& b : w.blocks) dense(b.w3, src.matrix(H, D, "w3"));
    }
    dense(w.classifier, shared ? w.token_embedding : src.matrix(c.vocab_size, D, "classifier"));
    if (r.remaining() != 0)
        t2::detail::throw_error(path, ": ", r.remaining(), " bytes left after the last tensor; the "
                                "header's dimensions do not describe this file");
    return out;
}


// Reads a llama2.c checkpoint file into a file_image (read into huge-page memory, or mapped:
// options.mode); f32 tensors are views of it. Read, the tensors start 64-byte aligned.
inline checkpoint read_llama2c(const std::string& path, const load_options& options = {}) {
    // Versions 1 and 2 have a 256-byte header; version 0 has seven int32.
    const auto head = read_file_prefix(path, 4);
    std::uint32_t magic = 0;
    if (head.size() == 4)
        std::memcpy(&magic, head.data(), 4);
    const std::size_t first_tensor = magic == detail::llama2c_magic ? 256 : 7 * sizeof(std::int32_t);
    auto file = std::make_shared<const file_image>(path, options.mode, first_tensor);
    return parse_llama2c(file->bytes(), path, file);
}

// Writes f32 weights as a legacy (version 0) llama2.c checkpoint, the format run.c reads,
// including its RoPE tables; atomically. The config must use interleaved RoPE with theta
// 10000, which is all that format can express.
template <class Weight>
void write_llama2c(const std::string& path, const nn::llama_config& c,
                   const nn::llama_weights<Weight>& w) {
    nn::validate(c, path);
    T2_CHECK(c.rope_layout == ops::rope_layout::interleaved && c.rope_theta == 10000.f,
             path, ": llama2.c checkpoints imply interleaved RoPE with theta 10000");
    T2_CHECK(c.dim <= 0x7fffffff && c.hidden_dim <= 0x7fffffff && c.vocab_size <= 0x7fffffff,
             path, ": dimensions do not fit the int32 header");
    std::vector<std::byte> out;
    const auto put = [&](const void* data, std::size_t bytes) {
        const auto* p = static_cast<const std::byte*>(data);
        out.insert(out.end(), p, p + bytes);
    };
    const auto put_view = [&](const auto& view) { put(view.data(), view.size() * sizeof(float)); };
    const std::int32_t vocab = std::int32_t(c.vocab_size) * (c.shared_classifier ? 1 : -1);
    const std::int32_t header[7] = {std::int32_t(c.dim), std::int32_t(c.hidden_dim), std::int32_t(c.n_layers),
                                    std::int32_t(c.n_heads), std::int32_t(c.n_kv_heads), vocab,
                                    std::int32_t(c.seq_len)};
    put(header, sizeof header);
    put_view(w.token_embedding);
    for (const auto& b : w.blocks) put_view(b.attention_norm);
    for (const auto& b : w.blocks) put_view(b.wq.weight().weight());
    for (const auto& b : w.blocks) put_view(b.wk.weight().weight());
    for (const auto& b : w.blocks) put_view(b.wv.weight().weight());
    for (const auto& b : w.blocks) put_view(b.wo.weight().weight());
    for (const auto& b : w.blocks) put_view(b.mlp_norm);
    for (const auto& b : w.blocks) put_view(b.w1.weight().weight());
    for (const auto& b : w.blocks) put_view(b.w2.weight().weight());
    for (const auto& b : w.blocks) put_view(b.w3.weight().weight());
    put_view(w.final_norm);
    // run.c skips these tables, but they are part of the format: cos then sin, [seq_len × head_dim/2].
    const std::size_t hd = nn::head_dim(c);
    for (int table = 0; table < 2; ++table)
        for (std::size_t pos = 0; pos < c.seq_len; ++pos)
            for (std::size_t i = 0; i < hd / 2; ++i) {
                const double angle = double(pos) * std::pow(10000.0, -2.0 * double(i) / double(hd));
                const float v = float(table == 0 ? std::cos(angle) : std::sin(angle));
                put(&v, sizeof v);
            }
    if (!c.shared_classifier)
        put_view(w.classifier.weight().weight());
    write_file_atomically(path, out);
}

} // namespace io
T2_NAMESPACE_END
