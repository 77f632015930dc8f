#pragma once
// safetensors files (Hugging Face's format for weights; t2's for experts and decompositions).
//
//   [u64 little-endian N][N bytes of JSON header][data section]
//   header: {"__metadata__": {"key": "value", ...},
//            "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
//   offsets are relative to the data section; tensors are row-major, little-endian.
//
// Reading validates what the format's reference implementation does, so a file t2 accepts is
// one other readers accept too: the header length against the file, a header that begins with
// '{' and is strict JSON without duplicate keys, every offset inside the data section, end −
// begin == numel × dtype size (overflow-checked), and the tensors tiling the data section with
// no overlap and no gap (the spec forbids holes so that a file cannot smuggle other content).
// A dtype t2 does not know is accepted while parsing and refused when the tensor is decoded.
//
// Writing (write_safetensors) is atomic (io::atomic_file) and gives the bytes the reference
// writer gives: tensors laid out largest dtype first, then by name (so every tensor is
// naturally aligned), the header padded with spaces to a multiple of 8 bytes.
#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "t2/core/dtype.hpp"
#include "t2/core/tensor.hpp"
#include "t2/io/atomic_file.hpp"
#include "t2/io/detail/sizes.hpp"
#include "t2/io/json.hpp"
#include "t2/io/file_image.hpp"

T2_NAMESPACE_BEGIN
namespace io {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

enum class safetensors_dtype : std::uint8_t {
    boolean, u8, i8, f8_e5m2, f8_e4m3, f8_e8m0, i16, u16, f16, bf16, i32, u32, f32, f64, i64, u64,
    unknown // a name this version of t2 does not know (e.g. a sub-byte type)
};

namespace detail {
struct safetensors_dtype_info {
    std::string_view name;
    std::size_t size;
};
inline constexpr std::array<safetensors_dtype_info, 17> safetensors_dtypes{{
    {"BOOL", 1}, {"U8", 1}, {"I8", 1}, {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
    {"I16", 2}, {"U16", 2}, {"F16", 2}, {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},
    {"F64", 8}, {"I64", 8}, {"U64", 8}, {"?", 0}}};
} // namespace detail

constexpr std::string_view name_of(safetensors_dtype d) noexcept {
    return detail::safetensors_dtypes[static_cast<std::size_t>(d)].name;
}
// Bytes per element; 0 for unknown.
constexpr std::size_t size_of(safetensors_dtype d) noexcept {
    return detail::safetensors_dtypes[static_cast<std::size_t>(d)].size;
}
constexpr safetensors_dtype parse_safetensors_dtype(std::string_view name) noexcept {
    for (std::size_t i = 0; i + 1 < detail::safetensors_dtypes.size(); ++i)
        if (detail::safetensors_dtypes[i].name == name)
            return static_cast<safetensors_dtype>(i);
    return safetensors_dtype::unknown;
}
constexpr safetensors_dtype to_safetensors(dtype d) noexcept {
    switch (d) {
    case dtype::f32: return safetensors_dtype::f32;
    case dtype::bf16: return safetensors_dtype::bf16;
    case dtype::f16: return safetensors_dtype::f16;
    }
    return safetensors_dtype::unknown;
}

// The safetensors dtype of a C++ element type.
template <class T>
struct safetensors_type;
#define T2_SAFETENSORS_TYPE(T, D)                                                          \
    template <>                                                                            \
    struct safetensors_type<T> {                                                           \
        static constexpr safetensors_dtype value = safetensors_dtype::D;                   \
    }
T2_SAFETENSORS_TYPE(bool, boolean);
T2_SAFETENSORS_TYPE(std::uint8_t, u8);
T2_SAFETENSORS_TYPE(std::int8_t, i8);
T2_SAFETENSORS_TYPE(std::int16_t, i16);
T2_SAFETENSORS_TYPE(std::uint16_t, u16);
T2_SAFETENSORS_TYPE(f16, f16);
T2_SAFETENSORS_TYPE(bf16, bf16);
T2_SAFETENSORS_TYPE(std::int32_t, i32);
T2_SAFETENSORS_TYPE(std::uint32_t, u32);
T2_SAFETENSORS_TYPE(float, f32);
T2_SAFETENSORS_TYPE(double, f64);
T2_SAFETENSORS_TYPE(std::int64_t, i64);
T2_SAFETENSORS_TYPE(std::uint64_t, u64);
#undef T2_SAFETENSORS_TYPE

using safetensors_metadata = std::map<std::string, std::string, std::less<>>;

// One tensor of a parsed file.
struct safetensors_tensor {
    std::string name;
    safetensors_dtype dtype = safetensors_dtype::unknown;
    std::string dtype_name;           // as written in the header
    std::vector<std::size_t> shape;   // row-major; [] is a scalar
    std::size_t numel = 1;
    std::size_t offset = 0;           // of the first byte, from the start of the file
    std::span<const std::byte> data;  // raw little-endian bytes
};

struct safetensors_options {
    // The reference implementation's limit; real headers are kilobytes to a few megabytes.
    std::size_t max_header_bytes = 100'000'000;
    // From a path: read into huge-page memory, or mapped (io::file_image).
    load_mode mode = load_mode::read;
};

// A parsed safetensors file: read or mapped from a path (io::file_image), or a view of bytes
// someone else keeps alive (a fuzzer's input, a buffer). Tensors keep header order.
class safetensors_file {
public:
    explicit safetensors_file(const std::string& path, const safetensors_options& options = {}) {
        // Read, the data section (after the u64 length and the header) starts 64-byte aligned.
        std::size_t data_start = 0;
        if (const auto head = read_file_prefix(path, 8); head.size() == 8) {
            std::uint64_t header_bytes = 0;
            std::memcpy(&header_bytes, head.data(), 8);
            if (header_bytes <= options.max_header_bytes)
                data_start = 8 + static_cast<std::size_t>(header_bytes);
        }
        auto file = std::make_shared<const file_image>(path, options.mode, data_start);
        const auto bytes = file->bytes();
        owner_ = std::move(file);
        parse(bytes, path, options);
    }

    // `name` is used in error messages; `owner` (optional) keeps `bytes` alive for as long as
    // this object or anything holding owner() lives.
    safetensors_file(std::span<const std::byte> bytes, std::string name,
                     std::shared_ptr<const void> owner = {}, const safetensors_options& options = {})
        : owner_(std::move(owner)) {
        parse(bytes, std::move(name), options);
    }

    const std::string& name() const noexcept { return name_; }
    std::span<const safetensors_tensor> tensors() const noexcept { return tensors_; }
    const safetensors_metadata& metadata() const noexcept { return metadata_; }
    std::size_t header_size() const noexcept { return header_size_; }
    const std::shared_ptr<const void>& owner() const noexcept { return owner_; }

    const safetensors_tensor* find(std::string_view tensor) const {
        const auto it = index_.find(tensor);
        return it == index_.end() ? nullptr : &tensors_[it->second];
    }
    const safetensors_tensor& at(std::string_view tensor) const {
        const auto* t = find(tensor);
        if (!t)
            t2::detail::throw_error(name_, ": no tensor named \"", tensor, "\"");
        return *t;
    }

    // Converts an F32, F16 or BF16 tensor to f32; out must hold numel elements.
    void to_f32(const safetensors_tensor& t, std::span<float> out) const {
        T2_CHECK(out.size() == t.numel, name_, ": tensor \"", t.name, "\" has ", t.numel,
                 " elements, the destination ", out.size());
        switch (t.dtype) {
        case safetensors_dtype::f32:
            if (!t.data.empty())
                std::memcpy(out.data(), t.data.data(), t.data.size());
            return;
        case safetensors_dtype::f16: convert<f16>(t, out); return;
        case safetensors_dtype::bf16: convert<bf16>(t, out); return;
        default:
            t2::detail::throw_error(name_, ": tensor \"", t.name, "\" has dtype ", t.dtype_name,
                                    "; t2 reads F32, F16 and BF16 tensors as f32");
        }
    }
    std::vector<float> to_f32(const safetensors_tensor& t) const {
        std::vector<float> out(t.numel);
        to_f32(t, out);
        return out;
    }

    // The tensor's data in place, as T: the dtype must be T's and the data aligned for T.
    template <class T>
    std::span<const T> view(const safetensors_tensor& t) const {
        if (t.dtype != safetensors_type<T>::value)
            t2::detail::throw_error(name_, ": tensor \"", t.name, "\" has dtype ", t.dtype_name,
                                    ", not ", name_of(safetensors_type<T>::value));
        if (!aligned<T>(t))
            t2::detail::throw_error(name_, ": tensor \"", t.name, "\" at file offset ", t.offset,
                                    " is not aligned for ", name_of(t.dtype), "; copy it instead");
        return {reinterpret_cast<const T*>(t.data.data()), t.numel};
    }
    template <class T>
    static bool aligned(const safetensors_tensor& t) noexcept {
        return reinterpret_cast<std::uintptr_t>(t.data.data()) % alignof(T) == 0;
    }

private:
    template <class S>
    void convert(const safetensors_tensor& t, std::span<float> out) const {
        const std::byte* p = t.data.data();
        for (std::size_t i = 0; i < t.numel; ++i) {
            S v;
            std::memcpy(&v.bits, p + 2 * i, 2);
            out[i] = to_f32(v);
        }
    }
    static float to_f32(f16 v) noexcept { return t2::detail::f16_to_f32(v); }
    static float to_f32(bf16 v) noexcept { return t2::detail::bf16_to_f32(v); }

    void parse(std::span<const std::byte> bytes, std::string name, const safetensors_options& options) {
        name_ = std::move(name);
        const std::string& file = name_;
        if (bytes.size() < 8)
            t2::detail::throw_error(file, ": ", bytes.size(), "-byte file is too short for a "
                                    "safetensors header (an 8-byte length comes first)");
        std::uint64_t n = 0;
        std::memcpy(&n, bytes.data(), 8);
        if (n > options.max_header_bytes)
            t2::detail::throw_error(file, ": header length ", n, " exceeds the limit of ",
                                    options.max_header_bytes, " bytes; not a safetensors file, or corrupted");
        if (n > bytes.size() - 8)
            t2::detail::throw_error(file, ": truncated: the header needs ", n, " bytes but only ",
                                    bytes.size() - 8, " follow its length");
        header_size_ = static_cast<std::size_t>(n);
        const auto header = bytes.subspan(8, header_size_);
        if (header.empty() || header[0] != std::byte{'{'})
            t2::detail::throw_error(file, ": the header does not begin with '{'; not a safetensors file");
        const std::size_t data_start = 8 + header_size_;
        const auto data = bytes.subspan(data_start);
        json::parse_options json_options;
        json_options.max_bytes = options.max_header_bytes;
        const json::document doc = json::parse(header, file, json_options);
        const json::node root = doc.root();
        if (root.type() != json::kind::object)
            root.fail("the header is not a JSON object");

        tensors_.reserve(root.size());
        for (std::size_t i = 0; i < root.size(); ++i) {
            const std::string& key = root.key(i);
            const json::node entry = root.member(i).renamed(
                key == "__metadata__" ? key : "tensor " + json::detail::quoted(key));
            if (key == "__metadata__") {
                read_metadata(entry);
                continue;
            }
            safetensors_tensor t;
            t.name = key;
            t.dtype_name = entry["dtype"].as_string();
            t.dtype = parse_safetensors_dtype(t.dtype_name);
            const json::node shape = entry["shape"];
            if (shape.type() != json::kind::array)
                shape.fail("expected an array of sizes, found " + std::string(json::name_of(shape.type())));
            t.shape.resize(shape.size());
            for (std::size_t d = 0; d < t.shape.size(); ++d) {
                t.shape[d] = shape[d].as_size();
                t.numel = detail::checked_mul(t.numel, t.shape[d], entry.where() + ".shape");
            }
            const json::node offsets = entry["data_offsets"];
            if (offsets.type() != json::kind::array || offsets.size() != 2)
                offsets.fail("expected [begin, end]");
            const std::size_t begin = offsets[0].as_size(), end = offsets[1].as_size();
            if (begin > end || end > data.size())
                offsets.fail("[" + std::to_string(begin) + ", " + std::to_string(end) +
                             ") is not inside the " + std::to_string(data.size()) +
                             "-byte data section");
            if (t.dtype != safetensors_dtype::unknown) {
                const std::size_t expected = detail::checked_mul(t.numel, size_of(t.dtype), entry.where());
                if (end - begin != expected)
                    offsets.fail("tensor of shape " + detail::shape_string(t.shape) + " and dtype " +
                                 t.dtype_name + " needs " + std::to_string(expected) +
                                 " bytes, the offsets span " + std::to_string(end - begin));
            }
            t.offset = data_start + begin;
            t.data = data.subspan(begin, end - begin);
            index_.emplace(t.name, tensors_.size());
            tensors_.push_back(std::move(t));
        }
        check_tiling(data.size(), data_start);
    }

    void read_metadata(const json::node& entry) {
        if (entry.is_null())
            return;
        if (entry.type() != json::kind::object)
            entry.fail("expected an object of strings");
        for (std::size_t i = 0; i < entry.size(); ++i)
            metadata_.emplace(entry.key(i), entry.member(i).as_string());
    }

    // Sorted by position, each tensor must begin where the previous one ended and the last
    // must end where the file does.
    void check_tiling(std::size_t data_size, std::size_t data_start) const {
        std::vector<std::size_t> order(tensors_.size());
        for (std::size_t i = 0; i < order.size(); ++i)
            order[i] = i;
        const auto begin = [&](std::size_t i) { return tensors_[i].offset - data_start; };
        const auto end = [&](std::size_t i) { return begin(i) + tensors_[i].data.size(); };
        std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
            return begin(a) != begin(b) ? begin(a) < begin(b) : end(a) < end(b);
        });
        std::size_t covered = 0;
        for (std::size_t k = 0; k < order.size(); ++k) {
            const std::size_t i = order[k];
            if (begin(i) < covered)
                t2::detail::throw_error(name_, ": tensor \"", tensors_[i].name, "\" (data bytes ",
                                        begin(i), "..", end(i), ") overlaps tensor \"",
                                        tensors_[order[k - 1]].name, "\" (ending at ", covered, ")");
            if (begin(i) > covered)
                t2::detail::throw_error(name_, ": data bytes ", covered, "..", begin(i),
                                        " belong to no tensor (safetensors forbids gaps)");
            covered = end(i);
        }
        if (covered != data_size)
            t2::detail::throw_error(name_, ": ", data_size - covered, " bytes after the last tensor (data bytes ",
                                    covered, "..", data_size, ") belong to no tensor");
    }

    std::shared_ptr<const void> owner_;
    std::string name_;
    std::size_t header_size_ = 0;
    std::vector<safetensors_tensor> tensors_;
    std::map<std::string, std::size_t, std::less<>> index_;
    safetensors_metadata metadata_;
};

// --- writing -----------------------------------------------------------------------------------

// A tensor to write: its bytes are borrowed, not copied.
struct safetensors_entry {
    std::string name;
    safetensors_dtype dtype = safetensors_dtype::f32;
    std::vector<std::size_t> shape;
    std::span<const std::byte> data;
};

template <class T>
safetensors_entry make_safetensors_entry(std::string name, std::span<const T> data,
                                         std::vector<std::size_t> shape) {
    return {std::move(name), safetensors_type<std::remove_cv_t<T>>::value, std::move(shape),
            std::as_bytes(data)};
}

// From a host tensor or view: the shape comes with it.
template <class T, extents_like E>
safetensors_entry make_safetensors_entry(std::string name, tensor_view<T, E> view) {
    std::vector<std::size_t> shape(E::rank());
    for (std::size_t d = 0; d < shape.size(); ++d)
        shape[d] = view.extent(d);
    return make_safetensors_entry(std::move(name), std::span<const std::remove_cv_t<T>>(view.data(), view.size()),
                                  std::move(shape));
}

struct safetensors_write_options {
    // Called after each chunk of data is written, with the bytes written so far and the
    // file's total size: for progress bars on multi-gigabyte files.
    std::function<void(std::size_t written, std::size_t total)> progress;
    std::size_t chunk_bytes = std::size_t{16} << 20;
};

namespace detail {

// The padded header and the order of the tensors in the data section.
inline std::string safetensors_header(const std::vector<safetensors_entry>& tensors,
                                      const safetensors_metadata& metadata,
                                      std::vector<std::size_t>& order, const std::string& path) {
    order.resize(tensors.size());
    for (std::size_t i = 0; i < order.size(); ++i)
        order[i] = i;
    // The reference writer's order: dtype descending (its dtypes are listed by increasing
    // size, as ours are), then name. Largest elements first make every tensor start at a
    // multiple of its element size, and the same tensors always give the same bytes.
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
        if (tensors[a].dtype != tensors[b].dtype)
            return tensors[a].dtype > tensors[b].dtype;
        return tensors[a].name < tensors[b].name;
    });
    std::vector<std::string_view> names;
    names.reserve(tensors.size());
    for (const auto& t : tensors)
        names.push_back(t.name);
    std::sort(names.begin(), names.end());
    if (const auto dup = std::adjacent_find(names.begin(), names.end()); dup != names.end())
        t2::detail::throw_error(path, ": two tensors are named \"", *dup, "\"");

    json::value header = json::value::object();
    if (!metadata.empty()) {
        json::value meta = json::value::object();
        for (const auto& [key, value] : metadata)
            meta.set(key, value);
        header.set("__metadata__", std::move(meta));
    }
    std::size_t offset = 0;
    for (const std::size_t i : order) {
        const safetensors_entry& t = tensors[i];
        if (t.name.empty() || t.name == "__metadata__")
            t2::detail::throw_error(path, ": \"", t.name, "\" cannot name a tensor");
        if (t.dtype == safetensors_dtype::unknown)
            t2::detail::throw_error(path, ": tensor \"", t.name, "\" has no dtype");
        std::size_t numel = 1;
        json::value shape = json::value::array();
        for (const std::size_t d : t.shape) {
            numel = checked_mul(numel, d, path + ": tensor \"" + t.name + "\"");
            shape.push_back(d);
        }
        const std::size_t bytes = checked_mul(numel, size_of(t.dtype), path + ": tensor \"" + t.name + "\"");
        if (bytes != t.data.size())
            t2::detail::throw_error(path, ": tensor \"", t.name, "\" of shape ", shape_string(t.shape),
                                    " and dtype ", name_of(t.dtype), " needs ", bytes, " bytes, given ",
                                    t.data.size());
        json::value entry = json::value::object();
        entry.set("dtype", name_of(t.dtype));
        entry.set("shape", std::move(shape));
        json::value offsets = json::value::array();
        offsets.push_back(offset);
        offsets.push_back(offset + bytes);
        entry.set("data_offsets", std::move(offsets));
        header.append(t.name, std::move(entry)); // names are distinct: checked above
        offset += bytes;
    }
    std::string text = json::to_string(header);
    text.append((8 - text.size() % 8) % 8, ' ');
    T2_CHECK(text.size() <= safetensors_options{}.max_header_bytes, path, ": the header would be ",
             text.size(), " bytes, more than readers accept");
    return text;
}

inline std::array<std::byte, 8> le64(std::uint64_t v) {
    std::array<std::byte, 8> out;
    std::memcpy(out.data(), &v, 8);
    return out;
}

} // namespace detail

// The file's bytes in memory (for tests, fuzz corpora, and small files sent elsewhere).
inline std::vector<std::byte> serialize_safetensors(const std::vector<safetensors_entry>& tensors,
                                                    const safetensors_metadata& metadata = {}) {
    std::vector<std::size_t> order;
    const std::string header = detail::safetensors_header(tensors, metadata, order, "safetensors");
    std::vector<std::byte> out;
    const auto length = detail::le64(header.size());
    out.insert(out.end(), length.begin(), length.end());
    const auto h = std::as_bytes(std::span<const char>(header));
    out.insert(out.end(), h.begin(), h.end());
    for (const std::size_t i : order)
        out.insert(out.end(), tensors[i].data.begin(), tensors[i].data.end());
    return out;
}

// Writes atomically: until it returns, `path` keeps its old content (or does not exist),
// whatever happens to the process.
inline void write_safetensors(const std::string& path, const std::vector<safetensors_entry>& tensors,
                              const safetensors_metadata& metadata = {},
                              const safetensors_write_options& options = {}) {
    std::vector<std::size_t> order;
    const std::string header = detail::safetensors_header(tensors, metadata, order, path);
    std::size_t total = 8 + header.size();
    for (const auto& t : tensors)
        total += t.data.size();
    atomic_file out(path);
    out.write(detail::le64(header.size()));
    out.write(header);
    const std::size_t chunk = std::max<std::size_t>(options.chunk_bytes, 1);
    for (const std::size_t i : order) {
        const auto data = tensors[i].data;
        for (std::size_t at = 0; at < data.size(); at += chunk) {
            out.write(data.subspan(at, std::min(chunk, data.size() - at)));
            if (options.progress)
                options.progress(out.written(), total);
        }
    }
    out.commit();
}

} // namespace io
T2_NAMESPACE_END
