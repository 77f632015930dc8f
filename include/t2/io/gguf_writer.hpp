#pragma once
// Writing a Llama model (configuration, f32 weights, SentencePiece vocabulary) as a GGUF
// file that llama.cpp's loader accepts and io::read_gguf reads back: what `t2 export` writes
// an adapted model as (adapt/export.hpp makes its dense weights), so that an expert trained
// with t2 runs in any GGUF runtime.
//
//   io::write_gguf("adapted.gguf", config, weights, &tokenizer, {.type = io::ggml_type::f16});
//
// The file is what llama.cpp's own converters write (gguf.hpp describes the layout):
//   - GGUF version 3, little-endian; metadata, tensor infos, zero padding to the alignment,
//     then the data section, each tensor at an offset that is a multiple of the alignment
//     (general.alignment, uint32, 32 by default) and padded up to the next one. ggml's
//     reader requires exactly this packing: tensor i+1 starts where tensor i's padded size
//     ends, in the order of the infos.
//   - Metadata with the types llama.cpp's loader insists on (it refuses a key of another
//     type): general.architecture = "llama", general.name, general.alignment and
//     general.file_type (0: all F32, 1: mostly F16) as uint32; llama.vocab_size,
//     llama.context_length (t2's seq_len), llama.embedding_length, llama.block_count,
//     llama.feed_forward_length, llama.rope.dimension_count (the head size: t2 rotates whole
//     heads), llama.attention.head_count and head_count_kv as uint32;
//     llama.attention.layer_norm_rms_epsilon and llama.rope.freq_base as float32.
//   - llama.cpp's tensor names (the table at the top of gguf.hpp), in the order token_embd,
//     blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_down,
//     ffn_up}, output_norm, output; output.weight is left out when the classifier is tied to
//     the embedding (llama.cpp then reuses token_embd.weight, as io::read_gguf does).
//     Matrices are written in the requested type (F32 or F16, IEEE round to nearest even);
//     vectors (the RMSNorm weights) stay F32, as llama.cpp's converters keep them.
//   - RoPE: llama.cpp runs the llama architecture with interleaved pairs, so q/k rows of a
//     model in the rotate-halves layout (Hugging Face checkpoints, ops::rope_layout::halves)
//     are permuted as convert_hf_to_gguf.py's LlamaModel.permute does; an interleaved model
//     (llama2.c, GGUF) is written as it is. Read back, a file gives the same logits.
//   - Vocabulary: tokenizer.ggml.model = "llama" with tokenizer.ggml.tokens (strings),
//     scores (float32) and token_type (int32: 2 unknown for id 0, 3 control for BOS, EOS and
//     empty pieces, 6 byte for <0xXX>, 1 normal), and unknown / bos / eos_token_id = 0 / 1 / 2
//     (uint32), as llama.cpp's convert-llama2c-to-ggml writes them. Pieces are written as
//     SentencePiece spells them, undoing what io::read_gguf_tokenizer does on reading: ' '
//     becomes "▁" (U+2581), and BOS / EOS lose the newlines llama2.c wraps them in. llama.cpp
//     refuses a vocabulary with a repeated piece, so that is an error here. Without a
//     tokenizer, tokenizer.ggml.model is "no_vocab" (llama.cpp then runs on token ids).
//
// Bad input is an error naming the file and what is wrong, before the target is touched or
// at worst before it is replaced (io::atomic_file: never a truncated file): a configuration
// t2 cannot run, weights of the wrong shape, a non-finite weight, a value beyond F16's range.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "t2/core/dtype.hpp"
#include "t2/io/atomic_file.hpp"
#include "t2/io/gguf.hpp"

T2_NAMESPACE_BEGIN
namespace io {

struct gguf_write_options {
    ggml_type type = ggml_type::f32; // of the matrices: f32 or f16 (vectors stay f32)
    std::string name = "t2";         // general.name
    std::uint32_t alignment = 32;    // general.alignment: a power of two, at least 8 (the spec)
};

namespace detail {

// llama.cpp's token types (gguf-py's TokenType, llama_token_type).
enum class gguf_token_type : std::int32_t { normal = 1, unknown = 2, control = 3, byte = 6 };

// A part of a GGUF file built in memory (the header, the metadata, the tensor infos):
// little-endian values, GGUF strings (uint64 length, then the bytes) and typed key-value pairs.
class gguf_bytes_builder {
public:
    std::uint64_t count() const noexcept { return count_; }
    const std::string& bytes() const noexcept { return bytes_; }

    void string(std::string_view key, std::string_view value) {
        begin(key, gguf_type::string);
        text(value);
    }
    void u32(std::string_view key, std::uint32_t value) {
        begin(key, gguf_type::uint32);
        raw(value);
    }
    void f32(std::string_view key, float value) {
        begin(key, gguf_type::float32);
        raw(value);
    }
    void strings(std::string_view key, std::span<const std::string> values) {
        array(key, gguf_type::string, values.size());
        for (const std::string& v : values)
            text(v);
    }
    void f32s(std::string_view key, std::span<const float> values) {
        array(key, gguf_type::float32, values.size());
        for (const float v : values)
            raw(v);
    }
    void i32s(std::string_view key, std::span<const std::int32_t> values) {
        array(key, gguf_type::int32, values.size());
        for (const std::int32_t v : values)
            raw(v);
    }

    // Values outside a key-value pair, as the header and the tensor infos hold them.
    template <class T>
    void raw(T value) {
        bytes_.append(reinterpret_cast<const char*>(&value), sizeof value); // little-endian: gguf.hpp
    }
    void text(std::string_view s) {
        raw(std::uint64_t{s.size()});
        bytes_.append(s);
    }

private:
    void begin(std::string_view key, gguf_type type) {
        text(key);
        raw(static_cast<std::uint32_t>(type));
        ++count_;
    }
    void array(std::string_view key, gguf_type element, std::size_t n) {
        begin(key, gguf_type::array);
        raw(static_cast<std::uint32_t>(element));
        raw(std::uint64_t{n});
    }

    std::string bytes_;
    std::uint64_t count_ = 0;
};

// One tensor to write: a row-major view of f32 values, how to store it, and where.
struct gguf_tensor_plan {
    std::string name;
    const float* data = nullptr;
    std::size_t rows = 1, cols = 0; // a vector is one row (ne = {cols})
    bool vector = false;
    ggml_type type = ggml_type::f32;
    std::size_t rope_head_dim = 0; // q/k of a halves model: permute rows to interleaved pairs
    std::uint64_t offset = 0;      // in the data section

    std::size_t bytes() const noexcept { return rows * cols * (type == ggml_type::f16 ? 2 : 4); }
};

inline std::uint64_t align_up(std::uint64_t n, std::uint64_t alignment) noexcept {
    return (n + alignment - 1) / alignment * alignment;
}

// The row of the halves layout that row r of the interleaved layout holds (the inverse view of
// convert_hf_to_gguf.py's LlamaModel.permute). Within a head of head_dim rows, Hugging Face's
// rotated pair i is (i, i + head_dim/2) and llama.cpp's is (2i, 2i + 1): row 2i + j takes row
// j·head_dim/2 + i.
inline std::size_t halves_source_row(std::size_t r, std::size_t head_dim) noexcept {
    const std::size_t head = r / head_dim, within = r % head_dim;
    return head * head_dim + (within % 2) * (head_dim / 2) + within / 2;
}

// The stored bytes of a tensor; a non-finite value, or one beyond F16's range, is an error
// naming the tensor and the element (a written inf would be a silently broken model).
inline std::vector<std::byte> gguf_encode(const gguf_tensor_plan& t, const std::string& path) {
    std::vector<std::byte> out(t.bytes());
    std::byte* at = out.data();
    for (std::size_t r = 0; r < t.rows; ++r) {
        const std::size_t source = t.rope_head_dim ? halves_source_row(r, t.rope_head_dim) : r;
        const float* row = t.data + source * t.cols;
        for (std::size_t j = 0; j < t.cols; ++j) {
            const float v = row[j];
            // The element as pieces for throw_error's stream (string concatenation here draws
            // a false -Wrestrict from GCC 12 at -O2).
            const auto refuse = [&](const char* why) {
                if (t.vector)
                    t2::detail::throw_error(path, ": tensor ", t.name, " holds ", v, " at [", j, "]", why);
                t2::detail::throw_error(path, ": tensor ", t.name, " holds ", v, " at [", source, ", ", j, "]", why);
            };
            if (!std::isfinite(v))
                refuse("; refusing to write a non-finite weight");
            if (t.type == ggml_type::f32) {
                std::memcpy(at, &v, 4);
                at += 4;
                continue;
            }
            const std::uint16_t half = t2::detail::f32_to_f16(v).bits;
            if ((half & 0x7c00u) == 0x7c00u)
                refuse(", beyond F16's largest value 65504; write it as F32");
            std::memcpy(at, &half, 2);
            at += 2;
        }
    }
    return out;
}

// A piece of io::tokenizer as SentencePiece (and llama.cpp) spells it (see the top of this file).
inline std::string spm_piece(std::string_view piece, std::int32_t id) {
    if ((id == tokenizer::bos_id || id == tokenizer::eos_id) && piece.size() >= 2 && piece.front() == '\n' &&
        piece.back() == '\n')
        piece = piece.substr(1, piece.size() - 2);
    std::string out;
    out.reserve(piece.size());
    for (const char ch : piece) {
        if (ch == ' ')
            out += "\xE2\x96\x81"; // U+2581
        else
            out += ch;
    }
    return out;
}

inline gguf_token_type spm_token_type(std::string_view piece, std::int32_t id) {
    if (id == tokenizer::unk_id)
        return gguf_token_type::unknown;
    if (id == tokenizer::bos_id || id == tokenizer::eos_id || piece.empty())
        return gguf_token_type::control;
    const auto hex = [](char ch) {
        return (ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'F') || (ch >= 'a' && ch <= 'f');
    };
    if (piece.size() == 6 && piece.starts_with("<0x") && piece[5] == '>' && hex(piece[3]) && hex(piece[4]))
        return gguf_token_type::byte;
    return gguf_token_type::normal;
}

// tokenizer.ggml.* of a SentencePiece vocabulary.
inline void gguf_vocabulary(gguf_bytes_builder& kv, const tokenizer& tok, std::size_t vocab_size,
                            const std::string& path) {
    if (tok.vocab_size() != vocab_size)
        t2::detail::throw_error(path, ": the tokenizer holds ", tok.vocab_size(), " tokens, the model's vocabulary is ",
                                vocab_size);
    std::vector<std::string> tokens(vocab_size);
    std::vector<float> scores(vocab_size);
    std::vector<std::int32_t> types(vocab_size);
    std::unordered_map<std::string_view, std::int32_t> seen;
    seen.reserve(vocab_size);
    for (std::size_t i = 0; i < vocab_size; ++i) {
        const auto id = static_cast<std::int32_t>(i);
        tokens[i] = spm_piece(tok.piece(id), id);
        scores[i] = tok.score(id);
        types[i] = static_cast<std::int32_t>(spm_token_type(tokens[i], id));
        if (!std::isfinite(scores[i]))
            t2::detail::throw_error(path, ": token ", i, " has the score ", scores[i]);
    }
    for (std::size_t i = 0; i < vocab_size; ++i) // after the loop above: the views stay valid
        if (const auto [at, fresh] = seen.emplace(tokens[i], static_cast<std::int32_t>(i)); !fresh)
            t2::detail::throw_error(path, ": tokens ", at->second, " and ", i, " are both \"", tokens[i],
                                    "\"; llama.cpp refuses a vocabulary with a repeated piece");
    kv.string("tokenizer.ggml.model", "llama");
    kv.strings("tokenizer.ggml.tokens", tokens);
    kv.f32s("tokenizer.ggml.scores", scores);
    kv.i32s("tokenizer.ggml.token_type", types);
    kv.u32("tokenizer.ggml.unknown_token_id", tokenizer::unk_id);
    kv.u32("tokenizer.ggml.bos_token_id", tokenizer::bos_id);
    kv.u32("tokenizer.ggml.eos_token_id", tokenizer::eos_id);
}

// The tensors of the model in the order of the top of this file, their shapes checked.
inline std::vector<gguf_tensor_plan> gguf_tensors(const nn::llama_config& c,
                                                  const nn::llama_weights<nn::dense<float>>& w, ggml_type type,
                                                  const std::string& path) {
    const std::size_t D = c.dim, H = c.hidden_dim, KV = nn::kv_dim(c), V = c.vocab_size, hd = nn::head_dim(c);
    const bool permute = c.rope_layout == ops::rope_layout::halves;
    std::vector<gguf_tensor_plan> out;
    const auto add_matrix = [&](std::string name, matrix_view<const float> m, std::size_t rows, std::size_t cols,
                                bool rope = false) {
        if (m.extent(0) != rows || m.extent(1) != cols || (m.size() && !m.data()))
            t2::detail::throw_error(path, ": tensor ", name, " is ", m.extent(0), "x", m.extent(1),
                                    ", the configuration's is ", rows, "x", cols);
        out.push_back({std::move(name), m.data(), rows, cols, false, type, rope && permute ? hd : 0, 0});
    };
    const auto add_vector = [&](std::string name, vector_view<const float> v) {
        if (v.size() != D || !v.data())
            t2::detail::throw_error(path, ": tensor ", name, " has ", v.size(), " elements, the configuration's ", D);
        out.push_back({std::move(name), v.data(), 1, D, true, ggml_type::f32, 0, 0});
    };
    if (w.blocks.size() != c.n_layers)
        t2::detail::throw_error(path, ": ", w.blocks.size(), " blocks for ", c.n_layers, " layers");
    add_matrix("token_embd.weight", w.token_embedding, V, D);
    for (std::size_t l = 0; l < c.n_layers; ++l) {
        const auto& b = w.blocks[l];
        const std::string p = "blk." + std::to_string(l) + ".";
        add_vector(p + "attn_norm.weight", b.attention_norm);
        add_matrix(p + "attn_q.weight", b.wq.weight().weight(), D, D, true);
        add_matrix(p + "attn_k.weight", b.wk.weight().weight(), KV, D, true);
        add_matrix(p + "attn_v.weight", b.wv.weight().weight(), KV, D);
        add_matrix(p + "attn_output.weight", b.wo.weight().weight(), D, D);
        add_vector(p + "ffn_norm.weight", b.mlp_norm);
        add_matrix(p + "ffn_gate.weight", b.w1.weight().weight(), H, D);
        add_matrix(p + "ffn_down.weight", b.w2.weight().weight(), D, H);
        add_matrix(p + "ffn_up.weight", b.w3.weight().weight(), H, D);
    }
    add_vector("output_norm.weight", w.final_norm);
    const auto classifier = w.classifier.weight().weight();
    if (!c.shared_classifier) {
        add_matrix("output.weight", classifier, V, D);
    } else if (classifier.data() != w.token_embedding.data() &&
               (classifier.size() != w.token_embedding.size() ||
                std::memcmp(classifier.data(), w.token_embedding.data(), classifier.size() * sizeof(float)) != 0)) {
        // Left out, output.weight is the embedding: a different classifier would be lost.
        t2::detail::throw_error(path, ": the configuration ties the classifier to the embedding, but the "
                                      "weights' classifier differs from it");
    }
    return out;
}

} // namespace detail

// Writes the model as GGUF (see the top of this file); `tok` may be null (no vocabulary).
// Atomic: `path` is replaced only by a complete file.
inline void write_gguf(const std::string& path, const nn::llama_config& c, const nn::llama_weights<nn::dense<float>>& w,
                       const tokenizer* tok, const gguf_write_options& options = {}) {
    using t2::detail::throw_error;
    nn::validate(c, path);
    if (options.type != ggml_type::f32 && options.type != ggml_type::f16)
        throw_error(path, ": GGUF tensors are written as F32 or F16, not ",
                    detail::ggml_type_name(std::uint32_t(options.type)));
    const std::uint32_t alignment = options.alignment;
    if (alignment < 8 || !std::has_single_bit(alignment) || alignment > (std::uint32_t{1} << 30))
        throw_error(path, ": alignment ", alignment, " is not a power of two from 8 to 2^30");
    if (!std::isfinite(c.norm_eps) || !std::isfinite(c.rope_theta))
        throw_error(path, ": norm_eps ", c.norm_eps, " and rope_theta ", c.rope_theta, " must be finite");

    auto tensors = detail::gguf_tensors(c, w, options.type, path);
    std::uint64_t data_size = 0;
    for (auto& t : tensors) {
        t.offset = data_size;
        data_size = detail::align_up(data_size + t.bytes(), alignment);
    }

    const auto u32 = [](std::size_t v) { return static_cast<std::uint32_t>(v); }; // < 2^25: nn::validate
    detail::gguf_bytes_builder kv;
    kv.string("general.architecture", "llama");
    kv.string("general.name", options.name);
    kv.u32("general.alignment", alignment);
    kv.u32("general.file_type", options.type == ggml_type::f16 ? 1 : 0); // LLAMA_FTYPE_ALL_F32 / MOSTLY_F16
    kv.u32("llama.vocab_size", u32(c.vocab_size));
    kv.u32("llama.context_length", u32(c.seq_len));
    kv.u32("llama.embedding_length", u32(c.dim));
    kv.u32("llama.block_count", u32(c.n_layers));
    kv.u32("llama.feed_forward_length", u32(c.hidden_dim));
    kv.u32("llama.rope.dimension_count", u32(nn::head_dim(c)));
    kv.u32("llama.attention.head_count", u32(c.n_heads));
    kv.u32("llama.attention.head_count_kv", u32(c.n_kv_heads));
    kv.f32("llama.attention.layer_norm_rms_epsilon", c.norm_eps);
    kv.f32("llama.rope.freq_base", c.rope_theta);
    if (tok)
        detail::gguf_vocabulary(kv, *tok, c.vocab_size, path);
    else
        kv.string("tokenizer.ggml.model", "no_vocab");

    detail::gguf_bytes_builder header;
    header.raw(detail::gguf_magic);
    header.raw(std::uint32_t{3});
    header.raw(std::uint64_t{tensors.size()});
    header.raw(kv.count());
    std::string bytes = header.bytes() + kv.bytes();
    detail::gguf_bytes_builder infos;
    for (const auto& t : tensors) {
        infos.text(t.name);
        infos.raw(std::uint32_t{t.vector ? 1u : 2u});
        infos.raw(std::uint64_t{t.cols}); // ne[0] varies fastest: a row
        if (!t.vector)
            infos.raw(std::uint64_t{t.rows});
        infos.raw(static_cast<std::uint32_t>(t.type));
        infos.raw(t.offset);
    }
    bytes += infos.bytes();

    atomic_file out(path);
    const auto pad = [&](std::uint64_t written) { // zeros up to the next multiple of the alignment
        static constexpr char zeros[4096] = {};
        for (std::uint64_t n = detail::align_up(written, alignment) - written; n > 0;) {
            const std::size_t chunk = std::min<std::uint64_t>(n, sizeof zeros);
            out.write(std::string_view(zeros, chunk));
            n -= chunk;
        }
    };
    out.write(bytes);
    pad(bytes.size());
    for (const auto& t : tensors) {
        const auto data = detail::gguf_encode(t, path);
        out.write(data);
        pad(data.size());
    }
    out.commit();
}

} // namespace io
T2_NAMESPACE_END
