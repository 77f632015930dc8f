#pragma once
// GGUF checkpoints (the model format of ggml / llama.cpp, versions 2 and 3) of Llama-
// architecture models, read or mapped (io::file_image); the embedded SentencePiece vocabulary becomes an
// io::tokenizer.
//
// File layout (little-endian; str = uint64 byte length, then that many UTF-8 bytes):
//   uint32 magic "GGUF", uint32 version, uint64 tensor_count, uint64 metadata_kv_count
//   metadata_kv_count × { str key, uint32 value_type, value }
//       value types 0..12: uint8 int8 uint16 int16 uint32 int32 float32 bool string array
//       uint64 int64 float64; an array is { uint32 element_type, uint64 count, elements }
//   tensor_count × { str name, uint32 n_dims (1..4), uint64 ne[n_dims], uint32 ggml_type,
//       uint64 offset }
//   zero padding up to general.alignment (default 32), then the data section; each
//   tensor's offset is relative to the data section and a multiple of the alignment.
// Version 1 stored counts and lengths as uint32 and is not read; version 2 has version 3's
// layout (3 only added big-endian files, which are rejected here).
//
// Shapes: ne[0] is the fastest-varying dimension, so a row-major [rows × cols] matrix has
// ne = {cols, rows}. t2 (and checkpoint::tensors) write shapes row-major, i.e. reversed.
//
// Tensor types: F32 (viewed in place, no copy), F16 and BF16 (converted to f32 copies),
// Q8_0 (blocks of 32 values along ne[0]: f16 scale d, 32 int8 q, value = d·q; dequantized
// to an f32 copy). Any other type is an error naming the tensor and the type.
//
// Llama tensors (llama.cpp's names), row-major shapes, and what t2 calls them:
//   token_embd.weight            [vocab × dim]      token_embedding
//   blk.N.attn_norm.weight       [dim]              blocks[N].attention_norm
//   blk.N.attn_q.weight          [dim × dim]        wq
//   blk.N.attn_k/attn_v.weight   [kv_dim × dim]     wk, wv
//   blk.N.attn_output.weight     [dim × dim]        wo
//   blk.N.ffn_norm.weight        [dim]              mlp_norm
//   blk.N.ffn_gate.weight        [hidden × dim]     w1
//   blk.N.ffn_down.weight        [dim × hidden]     w2
//   blk.N.ffn_up.weight          [hidden × dim]     w3
//   output_norm.weight           [dim]              final_norm
//   output.weight                [vocab × dim]      classifier (absent: tied to the embedding)
// Any other tensor is an error rather than something silently ignored: it would be a part
// of the model t2 does not run (Llama 3.1's rope_freqs.weight, a mixture of experts' ...).
//
// Metadata: general.architecture must be "llama". Required: llama.embedding_length,
// llama.feed_forward_length, llama.block_count, llama.attention.head_count,
// llama.context_length (becomes seq_len, the KV cache's capacity) and
// llama.attention.layer_norm_rms_epsilon. Optional: llama.attention.head_count_kv (default:
// head_count), llama.rope.freq_base (default 10000), llama.vocab_size,
// llama.rope.dimension_count and llama.attention.key_length / value_length (must agree with
// the tensors and the head size), general.alignment. Models t2 would run wrongly are
// refused: RoPE scaling (llama.rope.scaling.type other than "none"), partial rotary
// dimensions, experts (llama.expert_count > 0).
//
// RoPE layout: interleaved pairs, and no permutation of q/k at load. llama.cpp runs the
// llama architecture in its "normal" rope mode, which rotates adjacent pairs (2i, 2i + 1)
// as llama2.c and Meta's reference code do. Its converters make the weights fit that mode:
// convert-llama2c-to-ggml copies llama2.c's matrices element for element (row-major order is
// ggml's ne0-fastest order; the weights of stories260K.gguf are byte-identical to those of
// stories260K.bin), and convert_hf_to_gguf.py permutes Hugging Face's q/k rows from its
// rotate-halves layout back to interleaved. So a llama GGUF is always
// ops::rope_layout::interleaved; tests/test_io_gguf.cpp checks that stories260K.gguf gives
// the logits of stories260K.bin (and different ones with the halves layout).
//
// Tokenizer: when tokenizer.ggml.model is "llama" (SentencePiece), tokenizer.ggml.tokens
// (one per row of the embedding) and tokenizer.ggml.scores (optional, default 0) become an
// io::tokenizer that behaves like llama2.c's tokenizer.bin of the same vocabulary, by
// undoing the two changes llama2.c's export makes to SentencePiece pieces: "▁" (U+2581)
// becomes ' ', and BOS/EOS become "\n<s>\n" / "\n</s>\n" (which text can never merge into).
// Byte pieces <0xXX> are the same in both. tokenizer.ggml.bos_token_id / eos_token_id
// must be 1 / 2 when present, as io::tokenizer assumes. Another tokenizer model (e.g.
// "gpt2" BPE) leaves checkpoint::tokenizer empty.
//
// Validation: every count, length, dimension, offset and size is checked against the
// bytes that remain before it is used, with overflow-safe arithmetic, so a hostile file
// costs at most a pass over its own bytes and allocations proportional to its length.
// Tensors must be aligned, inside the data section, without overlap and uniquely named;
// shapes must match the configuration. Every failure is a t2::error naming the file and
// the key or tensor.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "t2/core/dtype.hpp"
#include "t2/io/checkpoint.hpp"
#include "t2/io/detail/sizes.hpp"
#include "t2/io/file_image.hpp"
#include "t2/io/tokenizer.hpp"

T2_NAMESPACE_BEGIN
namespace io {

static_assert(std::endian::native == std::endian::little, "the GGUF reader assumes little-endian");
static_assert(sizeof(std::size_t) == 8, "the GGUF reader assumes 64-bit sizes");

// GGUF metadata value types (gguf_type in ggml's gguf.h).
enum class gguf_type : std::uint32_t {
    uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6,
    boolean = 7, string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12,
};

// The ggml tensor types this reader converts (ggml's numbering).
enum class ggml_type : std::uint32_t { f32 = 0, f16 = 1, q8_0 = 8, bf16 = 30 };

namespace detail {

inline constexpr std::uint32_t gguf_magic = 0x46554747; // "GGUF" as a little-endian uint32
inline constexpr std::size_t gguf_max_dims = 4;          // GGML_MAX_DIMS
inline constexpr std::size_t q8_0_block = 32, q8_0_block_bytes = 34;

inline const char* gguf_type_name(gguf_type t) noexcept {
    constexpr const char* names[] = {"uint8", "int8",  "uint16", "int16", "uint32", "int32", "float32",
                                     "bool",  "string", "array", "uint64", "int64", "float64"};
    const auto i = static_cast<std::uint32_t>(t);
    return i < std::size(names) ? names[i] : "unknown";
}

// Bytes of one scalar value; 0 for strings and arrays.
inline std::size_t gguf_scalar_size(gguf_type t) noexcept {
    switch (t) {
    case gguf_type::uint8: case gguf_type::int8: case gguf_type::boolean: return 1;
    case gguf_type::uint16: case gguf_type::int16: return 2;
    case gguf_type::uint32: case gguf_type::int32: case gguf_type::float32: return 4;
    case gguf_type::uint64: case gguf_type::int64: case gguf_type::float64: return 8;
    default: return 0;
    }
}

// ggml's type names, so an unsupported type is reported the way llama.cpp users know it.
inline std::string ggml_type_name(std::uint32_t t) {
    constexpr const char* names[] = {
        "F32",     "F16",    "Q4_0",    "Q4_1",   "Q4_2 (removed)", "Q4_3 (removed)", "Q5_0",
        "Q5_1",    "Q8_0",   "Q8_1",    "Q2_K",   "Q3_K",    "Q4_K",   "Q5_K",    "Q6_K",
        "Q8_K",    "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",  "IQ4_NL", "IQ3_S",   "IQ2_S",
        "IQ4_XS",  "I8",     "I16",     "I32",    "I64",     "F64",    "IQ1_M",   "BF16",
        "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0",  "IQ4_NL_4_4", "IQ4_NL_4_8",
        "IQ4_NL_8_8", "MXFP4"};
    return t < std::size(names) ? names[t] : "unknown type " + std::to_string(t);
}

// (elements per block, bytes per block) of the types read here; {0, 0} for the others.
inline std::pair<std::size_t, std::size_t> ggml_block(std::uint32_t t) noexcept {
    switch (static_cast<ggml_type>(t)) {
    case ggml_type::f32: return {1, 4};
    case ggml_type::f16: return {1, 2};
    case ggml_type::bf16: return {1, 2};
    case ggml_type::q8_0: return {q8_0_block, q8_0_block_bytes};
    }
    return {0, 0};
}

inline const char* ggml_dtype_string(std::uint32_t t) noexcept {
    switch (static_cast<ggml_type>(t)) {
    case ggml_type::f32: return "f32";
    case ggml_type::f16: return "f16";
    case ggml_type::bf16: return "bf16";
    case ggml_type::q8_0: return "q8_0";
    }
    return "?";
}

// A product of file-given sizes, or nullopt when it does not fit in 64 bits.
inline std::optional<std::uint64_t> mul_u64(std::uint64_t a, std::uint64_t b) noexcept {
    if (b != 0 && a > std::numeric_limits<std::uint64_t>::max() / b)
        return std::nullopt;
    return a * b;
}

// Reads a GGUF string (uint64 length, bytes); the length is checked before it is used.
inline std::string_view gguf_read_string(byte_reader& r, const std::string& what) {
    const auto n = r.read<std::uint64_t>((what + " length").c_str());
    if (n > r.remaining())
        t2::detail::throw_error(r.name(), ": ", what, " claims ", n, " bytes at offset ",
                                r.offset() - 8, " but only ", r.remaining(), " remain");
    const auto bytes = r.take(static_cast<std::size_t>(n), what.c_str());
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

} // namespace detail

// One metadata value as it lies in the file. Arrays are decoded on request, so a large
// vocabulary costs nothing until it is read.
struct gguf_value {
    gguf_type type{};
    gguf_type element_type{};        // arrays only
    std::uint64_t count = 0;         // arrays only: the number of elements
    std::span<const std::byte> bytes; // scalars: the value; strings: the text; arrays: the elements
};

// One tensor's entry, validated: its data lies inside the data section.
struct gguf_tensor_info {
    std::string name;
    std::vector<std::uint64_t> ne;    // GGUF order: ne[0] varies fastest
    std::uint32_t type = 0;           // ggml type (one of ggml_type)
    std::uint64_t offset = 0;         // from the start of the data section
    std::span<const std::byte> data;  // the stored bytes

    std::size_t elements() const noexcept {
        std::size_t n = 1;
        for (auto d : ne)
            n *= static_cast<std::size_t>(d); // fits: checked against the data's size at parse
        return n;
    }
    // Row-major: the reverse of ne.
    std::vector<std::size_t> shape() const { return {ne.rbegin(), ne.rend()}; }
};

// The parsed structure of a GGUF image: header, metadata and tensor infos, everything
// validated against the image's length. Values and tensor data are views into `bytes`,
// which must outlive this object.
class gguf_file {
public:
    gguf_file(std::span<const std::byte> bytes, std::string name)
        : bytes_(bytes), name_(std::move(name)) {
        byte_reader r(bytes_, name_);
        parse_header(r);
        parse_metadata(r);
        parse_alignment();
        parse_tensor_infos(r);
        place_tensors(r.offset());
    }

    const std::string& name() const noexcept { return name_; }
    std::uint32_t version() const noexcept { return version_; }
    std::size_t alignment() const noexcept { return alignment_; }
    std::size_t data_offset() const noexcept { return data_offset_; }
    const std::map<std::string, gguf_value, std::less<>>& metadata() const noexcept { return metadata_; }
    const std::vector<gguf_tensor_info>& tensors() const noexcept { return tensors_; }

    const gguf_value* find(std::string_view key) const {
        const auto it = metadata_.find(key);
        return it == metadata_.end() ? nullptr : &it->second;
    }
    const gguf_tensor_info* find_tensor(std::string_view name) const {
        const auto it = tensor_index_.find(std::string(name));
        return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
    }

    // Typed access. Absent keys give nullopt (or an empty vector); a present key of the
    // wrong type is an error naming the file and the key. Integers of any width and
    // signedness are accepted where the value fits, as converters disagree on widths.
    std::optional<std::uint64_t> get_uint(std::string_view key) const {
        const gguf_value* v = find(key);
        if (!v)
            return std::nullopt;
        std::int64_t value = 0;
        if (!integer(*v, value) || value < 0)
            fail_type(key, *v, "a non-negative integer");
        return static_cast<std::uint64_t>(value);
    }
    std::uint64_t require_uint(std::string_view key) const {
        const auto v = get_uint(key);
        if (!v)
            missing(key);
        return *v;
    }
    std::optional<double> get_float(std::string_view key) const {
        const gguf_value* v = find(key);
        if (!v)
            return std::nullopt;
        if (v->type == gguf_type::float32)
            return load<float>(v->bytes.data());
        if (v->type == gguf_type::float64)
            return load<double>(v->bytes.data());
        fail_type(key, *v, "a float");
    }
    std::optional<std::string_view> get_string(std::string_view key) const {
        const gguf_value* v = find(key);
        if (!v)
            return std::nullopt;
        if (v->type != gguf_type::string)
            fail_type(key, *v, "a string");
        return std::string_view(reinterpret_cast<const char*>(v->bytes.data()), v->bytes.size());
    }
    std::vector<std::string_view> get_strings(std::string_view key) const {
        const gguf_value* v = array(key, "an array of strings");
        if (!v)
            return {};
        if (v->element_type != gguf_type::string)
            fail_type(key, *v, "an array of strings");
        std::vector<std::string_view> out;
        out.reserve(static_cast<std::size_t>(v->count)); // bounded: ≥ 8 bytes each, checked at parse
        byte_reader r(v->bytes, name_);
        const std::string what = "an element of " + std::string(key);
        for (std::uint64_t i = 0; i < v->count; ++i)
            out.push_back(detail::gguf_read_string(r, what));
        return out;
    }
    std::vector<float> get_floats(std::string_view key) const {
        const gguf_value* v = array(key, "an array of float32");
        if (!v)
            return {};
        if (v->element_type != gguf_type::float32)
            fail_type(key, *v, "an array of float32");
        std::vector<float> out(static_cast<std::size_t>(v->count));
        if (!out.empty())
            std::memcpy(out.data(), v->bytes.data(), out.size() * sizeof(float));
        return out;
    }
    std::vector<std::int64_t> get_ints(std::string_view key) const {
        const gguf_value* v = array(key, "an array of integers");
        if (!v)
            return {};
        const std::size_t size = detail::gguf_scalar_size(v->element_type);
        gguf_value element{v->element_type, {}, 0, {}};
        std::vector<std::int64_t> out(static_cast<std::size_t>(v->count));
        for (std::size_t i = 0; i < out.size(); ++i) {
            element.bytes = v->bytes.subspan(i * size, size);
            if (!integer(element, out[i]))
                fail_type(key, *v, "an array of integers");
        }
        return out;
    }

private:
    template <class T>
    static T load(const std::byte* p) noexcept {
        T value;
        std::memcpy(&value, p, sizeof(T));
        return value;
    }

    // An integer value of any width; false for other types (and uint64 beyond int64).
    static bool integer(const gguf_value& v, std::int64_t& out) {
        const std::byte* p = v.bytes.data();
        switch (v.type) {
        case gguf_type::uint8: out = load<std::uint8_t>(p); return true;
        case gguf_type::int8: out = load<std::int8_t>(p); return true;
        case gguf_type::uint16: out = load<std::uint16_t>(p); return true;
        case gguf_type::int16: out = load<std::int16_t>(p); return true;
        case gguf_type::uint32: out = load<std::uint32_t>(p); return true;
        case gguf_type::int32: out = load<std::int32_t>(p); return true;
        case gguf_type::int64: out = load<std::int64_t>(p); return true;
        case gguf_type::uint64: {
            const auto u = load<std::uint64_t>(p);
            out = static_cast<std::int64_t>(u);
            return u <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
        }
        default: return false;
        }
    }

    const gguf_value* array(std::string_view key, const char* expected) const {
        const gguf_value* v = find(key);
        if (v && v->type != gguf_type::array)
            fail_type(key, *v, expected);
        return v;
    }

    [[noreturn]] void fail_type(std::string_view key, const gguf_value& v, const char* expected) const {
        if (v.type == gguf_type::array)
            t2::detail::throw_error(name_, ": metadata key ", key, " is an array of ",
                                    detail::gguf_type_name(v.element_type), ", expected ", expected);
        t2::detail::throw_error(name_, ": metadata key ", key, " has type ",
                                detail::gguf_type_name(v.type), ", expected ", expected);
    }
    [[noreturn]] void missing(std::string_view key) const {
        t2::detail::throw_error(name_, ": metadata key ", key, " is missing");
    }

    void parse_header(byte_reader& r) {
        const auto magic = r.read<std::uint32_t>("magic");
        if (magic != detail::gguf_magic)
            t2::detail::throw_error(name_, ": not a GGUF file (the first 4 bytes are not \"GGUF\")");
        version_ = r.read<std::uint32_t>("version");
        if (version_ == 1)
            t2::detail::throw_error(name_, ": GGUF version 1 (32-bit counts) is not supported; "
                                    "convert the model again with a current llama.cpp");
        if (version_ != 2 && version_ != 3) {
            if (version_ == 0x02000000u || version_ == 0x03000000u) // 2 or 3, byte-swapped
                t2::detail::throw_error(name_, ": big-endian GGUF is not supported");
            t2::detail::throw_error(name_, ": GGUF version ", version_,
                                    " is not supported (versions 2 and 3 are)");
        }
        tensor_count_ = r.read<std::uint64_t>("tensor_count");
        kv_count_ = r.read<std::uint64_t>("metadata_kv_count");
        // The smallest entries: an empty key with a uint8 value (13 bytes); an empty name
        // with one dimension (32 bytes). Counts beyond what the file can hold are
        // rejected before anything is sized by them.
        const std::uint64_t room = r.remaining();
        if (kv_count_ > room / 13)
            t2::detail::throw_error(name_, ": header claims ", kv_count_,
                                    " metadata entries, more than the file's ", bytes_.size(),
                                    " bytes can hold");
        if (tensor_count_ > room / 32)
            t2::detail::throw_error(name_, ": header claims ", tensor_count_,
                                    " tensors, more than the file's ", bytes_.size(), " bytes can hold");
    }

    void parse_metadata(byte_reader& r) {
        for (std::uint64_t i = 0; i < kv_count_; ++i) {
            const std::string key(detail::gguf_read_string(r, "metadata key " + std::to_string(i)));
            const auto type = r.read<std::uint32_t>("metadata value type");
            gguf_value v = read_value(r, type, key);
            if (!metadata_.emplace(key, v).second)
                t2::detail::throw_error(name_, ": metadata key ", key, " appears twice");
        }
    }

    gguf_value read_value(byte_reader& r, std::uint32_t raw_type, const std::string& key) {
        if (raw_type > static_cast<std::uint32_t>(gguf_type::float64))
            t2::detail::throw_error(name_, ": metadata key ", key, " has value type ", raw_type,
                                    ", which is not a GGUF type");
        gguf_value v;
        v.type = static_cast<gguf_type>(raw_type);
        const std::string what = "value of metadata key " + key;
        if (v.type == gguf_type::string) {
            const auto s = detail::gguf_read_string(r, what);
            v.bytes = std::as_bytes(std::span<const char>(s.data(), s.size()));
        } else if (v.type != gguf_type::array) {
            v.bytes = r.take(detail::gguf_scalar_size(v.type), what.c_str());
            check_bools(v.bytes, v.type, key);
        } else {
            const auto element = r.read<std::uint32_t>((what + " (array type)").c_str());
            if (element > static_cast<std::uint32_t>(gguf_type::float64))
                t2::detail::throw_error(name_, ": metadata key ", key, " is an array of type ",
                                        element, ", which is not a GGUF type");
            v.element_type = static_cast<gguf_type>(element);
            if (v.element_type == gguf_type::array)
                t2::detail::throw_error(name_, ": metadata key ", key,
                                        " is an array of arrays, which t2 does not read");
            v.count = r.read<std::uint64_t>((what + " (array length)").c_str());
            const std::size_t start = r.offset();
            const std::size_t size = detail::gguf_scalar_size(v.element_type);
            // Each element takes at least `size` bytes (8 for a string's length).
            const std::size_t least = size ? size : 8;
            if (v.count > r.remaining() / least)
                t2::detail::throw_error(name_, ": metadata key ", key, " claims ", v.count, " ",
                                        detail::gguf_type_name(v.element_type),
                                        " elements at offset ", start, " but only ", r.remaining(),
                                        " bytes remain");
            if (size) {
                v.bytes = r.take(static_cast<std::size_t>(v.count) * size, what.c_str());
                check_bools(v.bytes, v.element_type, key);
            } else {
                for (std::uint64_t i = 0; i < v.count; ++i)
                    detail::gguf_read_string(r, "element " + std::to_string(i) + " of metadata key " + key);
                v.bytes = bytes_.subspan(start, r.offset() - start);
            }
        }
        return v;
    }

    // The spec allows only 0 and 1 in a bool.
    void check_bools(std::span<const std::byte> b, gguf_type type, const std::string& key) const {
        if (type != gguf_type::boolean)
            return;
        for (const std::byte x : b)
            if (static_cast<unsigned>(x) > 1)
                t2::detail::throw_error(name_, ": metadata key ", key, " holds the bool value ",
                                        static_cast<unsigned>(x), " (only 0 and 1 are valid)");
    }

    void parse_alignment() {
        const auto a = get_uint("general.alignment");
        if (!a)
            return;
        if (*a == 0 || !std::has_single_bit(*a) || *a > (std::uint64_t{1} << 30))
            t2::detail::throw_error(name_, ": general.alignment is ", *a,
                                    "; it must be a power of two up to 2^30");
        alignment_ = static_cast<std::size_t>(*a);
    }

    void parse_tensor_infos(byte_reader& r) {
        tensors_.reserve(static_cast<std::size_t>(tensor_count_)); // bounded in parse_header
        for (std::uint64_t i = 0; i < tensor_count_; ++i) {
            gguf_tensor_info t;
            t.name = detail::gguf_read_string(r, "name of tensor " + std::to_string(i));
            const auto what = [&](const char* field) { return "tensor " + t.name + " " + field; };
            const auto n_dims = r.read<std::uint32_t>(what("n_dims").c_str());
            if (n_dims == 0 || n_dims > detail::gguf_max_dims)
                t2::detail::throw_error(name_, ": tensor ", t.name, " has ", n_dims,
                                        " dimensions (1 to 4 are valid)");
            std::uint64_t elements = 1;
            for (std::uint32_t d = 0; d < n_dims; ++d) {
                t.ne.push_back(r.read<std::uint64_t>(what("dimension").c_str()));
                const auto product = detail::mul_u64(elements, t.ne.back());
                if (!product)
                    t2::detail::throw_error(name_, ": tensor ", t.name,
                                            " has more elements than 64 bits can count");
                elements = *product;
            }
            t.type = r.read<std::uint32_t>(what("type").c_str());
            const auto [block, block_bytes] = detail::ggml_block(t.type);
            if (block == 0)
                t2::detail::throw_error(name_, ": tensor ", t.name, " has ggml type ",
                                        detail::ggml_type_name(t.type),
                                        "; t2 reads F32, F16, BF16 and Q8_0");
            if (t.ne[0] % block != 0)
                t2::detail::throw_error(name_, ": tensor ", t.name, " is ",
                                        detail::ggml_type_name(t.type), " but its rows of ", t.ne[0],
                                        " elements are not whole blocks of ", block);
            const auto size = detail::mul_u64(elements / block, block_bytes);
            if (!size || *size > bytes_.size())
                t2::detail::throw_error(name_, ": tensor ", t.name, " of shape ",
                                        detail::shape_string(t.shape()), " needs more bytes than the ",
                                        bytes_.size(), "-byte file has");
            // t.data is placed once the data section's start is known.
            sizes_.push_back(static_cast<std::size_t>(*size));
            t.offset = r.read<std::uint64_t>(what("offset").c_str());
            if (!tensor_index_.emplace(t.name, tensors_.size()).second)
                t2::detail::throw_error(name_, ": tensor ", t.name, " appears twice");
            tensors_.push_back(std::move(t));
        }
    }

    // The data section starts at the next multiple of the alignment; tensors must lie in it,
    // aligned and without overlap.
    void place_tensors(std::size_t end_of_infos) {
        const std::size_t pad = (alignment_ - end_of_infos % alignment_) % alignment_;
        data_offset_ = end_of_infos + pad; // no overflow: both are far below 2^63
        if (tensors_.empty())
            return;
        if (data_offset_ > bytes_.size())
            t2::detail::throw_error(name_, ": truncated: the data section would start at offset ",
                                    data_offset_, " of a ", bytes_.size(), "-byte file");
        const std::size_t data_size = bytes_.size() - data_offset_;
        for (std::size_t i = 0; i < tensors_.size(); ++i) {
            auto& t = tensors_[i];
            const std::size_t size = sizes_[i];
            if (t.offset % alignment_ != 0)
                t2::detail::throw_error(name_, ": tensor ", t.name, " is at offset ", t.offset,
                                        ", not a multiple of the alignment ", alignment_);
            if (t.offset > data_size || size > data_size - t.offset)
                t2::detail::throw_error(name_, ": tensor ", t.name, " (", size, " bytes at offset ",
                                        t.offset, ") extends past the end of the ", data_size,
                                        "-byte data section; the file is truncated or corrupted");
            t.data = bytes_.subspan(data_offset_ + static_cast<std::size_t>(t.offset), size);
        }
        std::vector<std::size_t> order(tensors_.size());
        for (std::size_t i = 0; i < order.size(); ++i)
            order[i] = i;
        std::sort(order.begin(), order.end(),
                  [&](std::size_t a, std::size_t b) { return tensors_[a].offset < tensors_[b].offset; });
        const gguf_tensor_info* previous = nullptr;
        std::size_t previous_end = 0;
        for (const std::size_t i : order) {
            const auto& t = tensors_[i];
            if (sizes_[i] == 0)
                continue;
            if (previous && t.offset < previous_end)
                t2::detail::throw_error(name_, ": tensors ", previous->name, " and ", t.name,
                                        " overlap in the data section");
            previous = &t;
            previous_end = static_cast<std::size_t>(t.offset) + sizes_[i];
        }
    }

    std::span<const std::byte> bytes_;
    std::string name_;
    std::uint32_t version_ = 0;
    std::uint64_t tensor_count_ = 0, kv_count_ = 0;
    std::size_t alignment_ = 32; // GGUF_DEFAULT_ALIGNMENT
    std::size_t data_offset_ = 0;
    std::map<std::string, gguf_value, std::less<>> metadata_;
    std::vector<gguf_tensor_info> tensors_;
    std::vector<std::size_t> sizes_; // bytes of each tensor
    std::unordered_map<std::string, std::size_t> tensor_index_;
};

// The SentencePiece vocabulary embedded in a GGUF file, as an io::tokenizer (see the top of
// this file), or nullopt when the file has none or another kind of tokenizer.
// `vocab_size` is the model's (rows of the embedding); 0 accepts the file's token count.
inline std::optional<tokenizer> read_gguf_tokenizer(const gguf_file& file, std::size_t vocab_size = 0) {
    const auto model = file.get_string("tokenizer.ggml.model");
    if (!model || *model != "llama")
        return std::nullopt;
    const std::string& name = file.name();
    if (!file.find("tokenizer.ggml.tokens"))
        t2::detail::throw_error(name, ": tokenizer.ggml.model is \"llama\" but tokenizer.ggml.tokens is missing");
    const auto tokens = file.get_strings("tokenizer.ggml.tokens");
    if (vocab_size == 0)
        vocab_size = tokens.size();
    if (tokens.size() != vocab_size)
        t2::detail::throw_error(name, ": tokenizer.ggml.tokens has ", tokens.size(),
                                " tokens but the model's vocabulary has ", vocab_size);
    if (vocab_size <= 3 || vocab_size > std::size_t{std::numeric_limits<std::int32_t>::max()})
        t2::detail::throw_error(name, ": tokenizer.ggml.tokens has ", vocab_size,
                                " tokens; a SentencePiece vocabulary needs <unk>, <s>, </s> and more");
    std::vector<float> scores(vocab_size, 0.f); // llama.cpp's default when absent
    if (file.find("tokenizer.ggml.scores")) {
        scores = file.get_floats("tokenizer.ggml.scores");
        if (scores.size() != vocab_size)
            t2::detail::throw_error(name, ": tokenizer.ggml.scores has ", scores.size(),
                                    " entries for ", vocab_size, " tokens");
    }
    if (file.find("tokenizer.ggml.token_type")) {
        const auto types = file.get_ints("tokenizer.ggml.token_type");
        if (types.size() != vocab_size)
            t2::detail::throw_error(name, ": tokenizer.ggml.token_type has ", types.size(),
                                    " entries for ", vocab_size, " tokens");
    }
    // io::tokenizer (like llama2.c's run.c) fixes BOS = 1 and EOS = 2.
    const auto special = [&](const char* key, std::int32_t expected) {
        const auto id = file.get_uint(key);
        if (id && *id != std::uint64_t(expected))
            t2::detail::throw_error(name, ": ", key, " is ", *id, "; t2's SentencePiece tokenizer "
                                    "needs ", expected);
    };
    special("tokenizer.ggml.bos_token_id", tokenizer::bos_id);
    special("tokenizer.ggml.eos_token_id", tokenizer::eos_id);

    std::vector<std::string> pieces(vocab_size);
    constexpr std::string_view space_marker = "\xE2\x96\x81"; // U+2581, SentencePiece's space
    for (std::size_t i = 0; i < vocab_size; ++i) {
        const std::string_view in = tokens[i];
        std::string& out = pieces[i];
        out.reserve(in.size());
        for (std::size_t j = 0; j < in.size();) {
            if (in.substr(j, space_marker.size()) == space_marker) {
                out += ' ';
                j += space_marker.size();
            } else {
                out += in[j++];
            }
        }
    }
    // llama2.c's export wraps BOS and EOS in newlines, which keeps text from ever merging
    // into them; doing the same makes both formats tokenize identically.
    for (const std::int32_t id : {tokenizer::bos_id, tokenizer::eos_id})
        pieces[std::size_t(id)] = "\n" + pieces[std::size_t(id)] + "\n";
    return tokenizer(std::move(pieces), std::move(scores));
}

namespace detail {

// Keeps a model's memory alive: the file image and any converted copies.
struct gguf_storage {
    std::shared_ptr<const void> file;
    std::deque<t2::vector<float>> copies; // a deque never moves its elements
};

// Finds tensors by name, checks their shapes and converts them to f32.
struct gguf_loader {
    const gguf_file& file;
    gguf_storage& storage;
    bool view_in_place; // false: copy even F32 (the caller does not keep the bytes alive)
    std::vector<bool> used;

    const gguf_tensor_info* find(const std::string& name) const { return file.find_tensor(name); }

    const gguf_tensor_info& require(const std::string& name) const {
        const auto* t = find(name);
        if (!t)
            t2::detail::throw_error(file.name(), ": tensor ", name, " is missing");
        return *t;
    }

    // Checks the row-major shape; trailing ne of 1 beyond the expected rank are allowed.
    void check_shape(const gguf_tensor_info& t, const std::vector<std::size_t>& expected) const {
        bool ok = t.ne.size() >= expected.size();
        for (std::size_t i = 0; ok && i < t.ne.size(); ++i) {
            const std::size_t want = i < expected.size() ? expected[expected.size() - 1 - i] : 1;
            ok = t.ne[i] == want;
        }
        if (!ok)
            t2::detail::throw_error(file.name(), ": tensor ", t.name, " has shape ",
                                    shape_string(t.shape()), ", expected ", shape_string(expected));
    }

    const float* load(const gguf_tensor_info& t) {
        used[std::size_t(&t - file.tensors().data())] = true;
        const std::size_t n = t.elements();
        const std::byte* src = t.data.data();
        const auto type = static_cast<ggml_type>(t.type);
        if (type == ggml_type::f32 && view_in_place &&
            reinterpret_cast<std::uintptr_t>(src) % alignof(float) == 0)
            return reinterpret_cast<const float*>(src);
        float* dst = storage.copies.emplace_back(n).data();
        const auto u16 = [&](std::size_t byte) {
            std::uint16_t bits;
            std::memcpy(&bits, src + byte, 2);
            return bits;
        };
        switch (type) {
        case ggml_type::f32:
            std::memcpy(dst, src, n * sizeof(float));
            break;
        case ggml_type::f16:
            for (std::size_t i = 0; i < n; ++i)
                dst[i] = t2::detail::f16_to_f32(f16{u16(2 * i)});
            break;
        case ggml_type::bf16:
            for (std::size_t i = 0; i < n; ++i)
                dst[i] = t2::detail::bf16_to_f32(bf16{u16(2 * i)});
            break;
        case ggml_type::q8_0:
            for (std::size_t b = 0; b < n / q8_0_block; ++b) {
                const std::size_t at = b * q8_0_block_bytes;
                const float d = t2::detail::f16_to_f32(f16{u16(at)});
                for (std::size_t i = 0; i < q8_0_block; ++i)
                    dst[b * q8_0_block + i] =
                        d * static_cast<float>(static_cast<std::int8_t>(src[at + 2 + i]));
            }
            break;
        }
        return dst;
    }

    matrix_view<const float> matrix(const std::string& name, std::size_t rows, std::size_t cols) {
        const auto& t = require(name);
        check_shape(t, {rows, cols});
        return {load(t), dims<2>(rows, cols)};
    }
    vector_view<const float> vector(const std::string& name, std::size_t n) {
        const auto& t = require(name);
        check_shape(t, {n});
        return {load(t), dims<1>(n)};
    }
};

// A dimension from the metadata: present, positive, and small enough for nn::validate to
// judge without overflow.
inline std::size_t gguf_dim(const gguf_file& f, std::string_view key) {
    const auto v = f.require_uint(key);
    if (v == 0 || v > (std::uint64_t{1} << 32))
        t2::detail::throw_error(f.name(), ": metadata key ", key, " is ", v,
                                "; it must be a positive dimension");
    return static_cast<std::size_t>(v);
}

} // namespace detail

// Reads a Llama GGUF image from memory. `name` labels errors. With an `owner` that keeps
// `bytes` alive, F32 tensors are views into the bytes; without one, every tensor is
// copied and the result does not refer to `bytes`.
inline checkpoint read_gguf(std::span<const std::byte> bytes, const std::string& name,
                            std::shared_ptr<const void> owner = nullptr) {
    const gguf_file file(bytes, name);
    const auto fail = [&](const auto&... what) { t2::detail::throw_error(name, ": ", what...); };

    const auto arch = file.get_string("general.architecture");
    if (!arch)
        fail("metadata key general.architecture is missing");
    if (*arch != "llama")
        fail("general.architecture is \"", *arch, "\"; t2 reads \"llama\" models");
    if (const auto experts = file.get_uint("llama.expert_count"); experts && *experts > 0)
        fail("llama.expert_count is ", *experts, "; mixture-of-experts models are not supported");
    if (const auto scaling = file.get_string("llama.rope.scaling.type"); scaling && *scaling != "none")
        fail("llama.rope.scaling.type is \"", *scaling, "\"; RoPE scaling is not supported");

    checkpoint out;
    out.format = "gguf v" + std::to_string(file.version());
    nn::llama_config& c = out.config;
    c.dim = detail::gguf_dim(file, "llama.embedding_length");
    c.hidden_dim = detail::gguf_dim(file, "llama.feed_forward_length");
    c.n_layers = detail::gguf_dim(file, "llama.block_count");
    c.n_heads = detail::gguf_dim(file, "llama.attention.head_count");
    c.n_kv_heads = file.find("llama.attention.head_count_kv")
                       ? detail::gguf_dim(file, "llama.attention.head_count_kv")
                       : c.n_heads;
    c.seq_len = detail::gguf_dim(file, "llama.context_length");
    const auto eps = file.get_float("llama.attention.layer_norm_rms_epsilon");
    if (!eps)
        fail("metadata key llama.attention.layer_norm_rms_epsilon is missing");
    if (!std::isfinite(*eps) || !(*eps > 0))
        fail("llama.attention.layer_norm_rms_epsilon is ", *eps, "; it must be positive");
    c.norm_eps = static_cast<float>(*eps);
    const double theta = file.get_float("llama.rope.freq_base").value_or(10000.0);
    if (!std::isfinite(theta) || !(theta > 1) || theta > 1e12)
        fail("llama.rope.freq_base is ", theta, "; it must be greater than 1");
    c.rope_theta = static_cast<float>(theta);
    c.rope_layout = ops::rope_layout::interleaved; // see the top of this file

    // The vocabulary is the embedding's row count.
    const gguf_tensor_info* embedding = file.find_tensor("token_embd.weight");
    if (!embedding)
        fail("tensor token_embd.weight is missing");
    if (embedding->ne.size() < 2)
        fail("tensor token_embd.weight has shape ", detail::shape_string(embedding->shape()),
             ", expected [vocab x ", c.dim, "]");
    if (embedding->ne[1] == 0 || embedding->ne[1] > (std::uint64_t{1} << 32))
        fail("tensor token_embd.weight has ", embedding->ne[1], " rows");
    c.vocab_size = static_cast<std::size_t>(embedding->ne[1]);
    if (const auto v = file.get_uint("llama.vocab_size"); v && *v != c.vocab_size)
        fail("llama.vocab_size is ", *v, " but token_embd.weight has ", c.vocab_size, " rows");
    c.shared_classifier = file.find_tensor("output.weight") == nullptr;
    nn::validate(c, name);

    const std::size_t hd = nn::head_dim(c);
    for (const char* key : {"llama.rope.dimension_count", "llama.attention.key_length",
                            "llama.attention.value_length"})
        if (const auto v = file.get_uint(key); v && *v != hd)
            fail(key, " is ", *v, " but the head size is ", hd,
                 " (embedding_length / head_count); t2 needs them equal");

    auto storage = std::make_shared<detail::gguf_storage>();
    storage->file = owner;
    out.weights.owner = storage;
    detail::gguf_loader src{file, *storage, owner != nullptr,
                            std::vector<bool>(file.tensors().size(), false)};
    const std::size_t D = c.dim, H = c.hidden_dim, KV = nn::kv_dim(c), V = c.vocab_size;
    auto& w = out.weights;
    const auto dense = [&](nn::linear<nn::dense<float>>& layer, matrix_view<const float> m) {
        layer = nn::linear<nn::dense<float>>(nn::dense<float>(m, storage));
    };
    w.token_embedding = src.matrix("token_embd.weight", V, D);
    w.blocks.resize(c.n_layers);
    for (std::size_t l = 0; l < c.n_layers; ++l) {
        auto& b = w.blocks[l];
        const std::string p = "blk." + std::to_string(l) + ".";
        b.attention_norm = src.vector(p + "attn_norm.weight", D);
        dense(b.wq, src.matrix(p + "attn_q.weight", D, D));
        dense(b.wk, src.matrix(p + "attn_k.weight", KV, D));
        dense(b.wv, src.matrix(p + "attn_v.weight", KV, D));
        dense(b.wo, src.matrix(p + "attn_output.weight", D, D));
        b.mlp_norm = src.vector(p + "ffn_norm.weight", D);
        dense(b.w1, src.matrix(p + "ffn_gate.weight", H, D));
        dense(b.w2, src.matrix(p + "ffn_down.weight", D, H));
        dense(b.w3, src.matrix(p + "ffn_up.weight", H, D));
    }
    w.final_norm = src.vector("output_norm.weight", D);
    dense(w.classifier, c.shared_classifier ? w.token_embedding : src.matrix("output.weight", V, D));
    for (std::size_t i = 0; i < file.tensors().size(); ++i)
        if (!src.used[i])
            fail("tensor ", file.tensors()[i].name, " is not part of a ", c.n_layers,
                 "-layer Llama model as t2 runs it; refusing to ignore it");

    for (const auto& t : file.tensors())
        out.tensors.push_back({t.name, detail::ggml_dtype_string(t.type), t.shape()});
    out.tokenizer = read_gguf_tokenizer(file, V);
    return out;
}

// Reads a Llama GGUF file into a file_image (read into huge-page memory, or mapped:
// options.mode); F32 tensors are views of it. The image starts page-aligned, so tensors keep
// the alignment the file gives them (general.alignment, 32 bytes by default).
inline checkpoint read_gguf(const std::string& path, const load_options& options = {}) {
    auto file = std::make_shared<const file_image>(path, options.mode);
    return read_gguf(file->bytes(), path, file);
}

} // namespace io
T2_NAMESPACE_END
