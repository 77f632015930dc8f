#pragma once
// Decomposition and expert files: safetensors with t2's metadata.
//
// Decomposition ("format": "t2.decomposition"): tensors "<matrix>.U" [out × r], "<matrix>.S"
// [r], "<matrix>.V" [in × r] in F32 for each decomposed matrix (the names and layout of the
// Transformer² reference code), metadata "base_model_hash" (adapt::weights_hash) and
// "selection".
//
// Expert ("format": "t2.expert"): tensors "<matrix>.z" [r] in F32, metadata
// "base_model_hash", "matrices" (a JSON object: matrix name → rank), "rescale" ("true" |
// "false"), "task", "training".
//
// Router ("format": "t2.router"): tensors "router.query" [d_k × dim] and "router.keys"
// [K × d_k] in F32 (nn/router.hpp), metadata "temperature", "experts" (a JSON array of the
// library's tasks) and "library_hash" (adapt::library_hash), which reading checks against
// the library it is to route.
//
// All are written atomically (a crash leaves the old file or none) and validated on
// reading: format tag, every tensor's dtype and shape, complete U/S/V triples, ranks, names
// of real matrices, the metadata agreeing with the tensors.
#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "t2/adapt/decomposition.hpp"
#include "t2/adapt/model.hpp"
#include "t2/nn/router.hpp"
#include "t2/io/json.hpp"
#include "t2/io/safetensors.hpp"
#include "t2/version.hpp"

T2_NAMESPACE_BEGIN
namespace io {

namespace detail {

inline const std::string& required_metadata(const safetensors_file& f, const std::string& key) {
    const auto it = f.metadata().find(key);
    if (it == f.metadata().end())
        t2::detail::throw_error(f.name(), ": metadata has no \"", key, "\"");
    return it->second;
}

inline void check_format(const safetensors_file& f, std::string_view format) {
    const auto it = f.metadata().find("format");
    if (it == f.metadata().end() || it->second != format)
        t2::detail::throw_error(f.name(), ": not a ", format, " file (metadata \"format\" is ",
                                it == f.metadata().end() ? "missing" : "\"" + it->second + "\"", ")");
    const std::string& version = required_metadata(f, "format_version");
    if (version != "1")
        t2::detail::throw_error(f.name(), ": ", format, " format version ", version,
                                " is newer than this t2 reads (1)");
}

inline bool check_hash(const safetensors_file& f, const std::string& hash) {
    if (hash.size() != 64 || hash.find_first_not_of("0123456789abcdef") != std::string::npos)
        t2::detail::throw_error(f.name(), ": base_model_hash \"", hash, "\" is not a SHA-256 hex digest");
    return true;
}

// "<matrix>.<suffix>" → the matrix, or an error naming the tensor.
inline std::string matrix_of_tensor(const safetensors_file& f, const safetensors_tensor& t,
                                    std::span<const std::string_view> suffixes, std::string_view& suffix) {
    const auto dot = t.name.rfind('.');
    if (dot != std::string::npos)
        for (const std::string_view s : suffixes)
            if (std::string_view(t.name).substr(dot + 1) == s) {
                suffix = s;
                std::size_t layer;
                nn::projection which;
                const std::string matrix = t.name.substr(0, dot);
                if (!nn::parse_matrix_name(matrix, layer, which))
                    t2::detail::throw_error(f.name(), ": tensor \"", t.name, "\" does not name a block matrix");
                return matrix;
            }
    t2::detail::throw_error(f.name(), ": unexpected tensor \"", t.name, "\"");
}

inline std::span<const float> f32_tensor(const safetensors_file& f, const safetensors_tensor& t,
                                         std::size_t rank_of_shape) {
    if (t.dtype != safetensors_dtype::f32 || t.shape.size() != rank_of_shape)
        t2::detail::throw_error(f.name(), ": tensor \"", t.name, "\" is ", t.dtype_name, " ", shape_string(t.shape),
                                "; expected F32 with ", rank_of_shape, " dimension", rank_of_shape == 1 ? "" : "s");
    return f.view<float>(t);
}

} // namespace detail

inline void write_decomposition(const std::string& path, const adapt::decomposition& d,
                                const safetensors_write_options& options = {}) {
    std::vector<safetensors_entry> tensors;
    for (const auto& m : d.matrices) {
        tensors.push_back(make_safetensors_entry(m.name + ".U", m.factors.u));
        tensors.push_back(make_safetensors_entry(m.name + ".S", m.factors.sigma));
        tensors.push_back(make_safetensors_entry(m.name + ".V", m.factors.v));
    }
    write_safetensors(path, tensors,
                      {{"format", "t2.decomposition"},
                       {"format_version", "1"},
                       {"base_model_hash", d.base_model_hash},
                       {"selection", d.selection},
                       {"writer", "t2 " T2_VERSION_STRING}},
                      options);
}

// The factors view the file's memory, which they keep alive.
inline adapt::decomposition read_decomposition(std::shared_ptr<const safetensors_file> file) {
    const safetensors_file& f = *file;
    const std::string& path = f.name();
    detail::check_format(f, "t2.decomposition");
    adapt::decomposition d{detail::required_metadata(f, "base_model_hash"),
                           detail::required_metadata(f, "selection"), {}};
    detail::check_hash(f, d.base_model_hash);

    struct triple {
        const safetensors_tensor *u = nullptr, *s = nullptr, *v = nullptr;
    };
    std::map<std::string, triple> found;
    constexpr std::string_view suffixes[] = {"U", "S", "V"};
    for (const auto& t : f.tensors()) {
        std::string_view suffix;
        triple& slot = found[detail::matrix_of_tensor(f, t, suffixes, suffix)];
        (suffix == "U" ? slot.u : suffix == "S" ? slot.s : slot.v) = &t;
    }
    if (found.empty())
        t2::detail::throw_error(path, ": the decomposition holds no matrix");
    for (const auto& [name, t] : found) {
        if (!t.u || !t.s || !t.v)
            t2::detail::throw_error(path, ": ", name, " lacks its ", !t.u ? "U" : !t.s ? "S" : "V", " tensor");
        detail::f32_tensor(f, *t.u, 2);
        const auto sigma = detail::f32_tensor(f, *t.s, 1);
        detail::f32_tensor(f, *t.v, 2);
        const std::size_t r = t.s->shape[0], out = t.u->shape[0], in = t.v->shape[0];
        if (t.u->shape[1] != r || t.v->shape[1] != r || r == 0 || r > std::min(out, in))
            t2::detail::throw_error(path, ": ", name, " has U ", detail::shape_string(t.u->shape), ", S ",
                                    detail::shape_string(t.s->shape), ", V ", detail::shape_string(t.v->shape),
                                    "; need U [out, r], S [r], V [in, r] with 0 < r ≤ min(out, in)");
        for (std::size_t j = 0; j < r; ++j)
            if (!(sigma[j] >= 0.f) || !std::isfinite(sigma[j]) || (j > 0 && sigma[j] > sigma[j - 1]))
                t2::detail::throw_error(path, ": ", name, ".S is not finite, nonnegative and descending at ", j);
        nn::matrix_slot slot{0, nn::projection::wq, out, in};
        nn::parse_matrix_name(name, slot.layer, slot.which);
        d.matrices.push_back({name,
                              slot,
                              {matrix_view<const float>(f.view<float>(*t.u).data(), dims<2>(out, r)),
                               vector_view<const float>(sigma.data(), dims<1>(r)),
                               matrix_view<const float>(f.view<float>(*t.v).data(), dims<2>(in, r)), file}});
    }
    // nn::block_matrices order, so that iterating a decomposition follows the model.
    std::sort(d.matrices.begin(), d.matrices.end(), [](const auto& a, const auto& b) {
        return a.slot.layer != b.slot.layer ? a.slot.layer < b.slot.layer : a.slot.which < b.slot.which;
    });
    return d;
}

inline adapt::decomposition read_decomposition(const std::string& path) {
    return read_decomposition(std::make_shared<const safetensors_file>(path));
}

inline void write_expert(const std::string& path, const adapt::expert& e) {
    std::vector<safetensors_entry> tensors;
    json::value ranks = json::value::object();
    for (const auto& [name, z] : e.z) {
        tensors.push_back(make_safetensors_entry(name + ".z", std::span<const float>(z), {z.size()}));
        ranks.set(name, z.size());
    }
    write_safetensors(path, tensors,
                      {{"format", "t2.expert"},
                       {"format_version", "1"},
                       {"base_model_hash", e.base_model_hash},
                       {"matrices", json::to_string(ranks)},
                       {"rescale", e.rescale ? "true" : "false"},
                       {"task", e.task},
                       {"training", e.training},
                       {"writer", "t2 " T2_VERSION_STRING}});
}

inline adapt::expert read_expert(const safetensors_file& f) {
    const std::string& path = f.name();
    detail::check_format(f, "t2.expert");
    adapt::expert e;
    e.base_model_hash = detail::required_metadata(f, "base_model_hash");
    detail::check_hash(f, e.base_model_hash);
    const std::string& rescale = detail::required_metadata(f, "rescale");
    if (rescale != "true" && rescale != "false")
        t2::detail::throw_error(path, ": metadata \"rescale\" is \"", rescale, "\", not true or false");
    e.rescale = rescale == "true";
    e.task = detail::required_metadata(f, "task");
    e.training = detail::required_metadata(f, "training");
    const auto ranks = json::parse(detail::required_metadata(f, "matrices"), path + ": metadata \"matrices\"");
    const json::node root = ranks.root();
    if (root.type() != json::kind::object)
        root.fail("is not a JSON object");
    if (root.size() != f.tensors().size())
        t2::detail::throw_error(path, ": metadata lists ", root.size(), " matrices, the file holds ",
                                f.tensors().size(), " tensors");
    constexpr std::string_view suffixes[] = {"z"};
    for (const auto& t : f.tensors()) {
        std::string_view suffix;
        const std::string name = detail::matrix_of_tensor(f, t, suffixes, suffix);
        const auto z = detail::f32_tensor(f, t, 1);
        const auto listed = root.find(name);
        if (!listed || listed->as_size() != z.size())
            t2::detail::throw_error(path, ": ", name, ".z has ", z.size(), " values; metadata \"matrices\" says ",
                                    listed ? std::to_string(listed->as_size()) : "nothing");
        for (const float v : z)
            if (!std::isfinite(v))
                t2::detail::throw_error(path, ": ", name, ".z holds a non-finite value");
        e.z.emplace_back(name, std::vector<float>(z.begin(), z.end()));
    }
    return e;
}

inline adapt::expert read_expert(const std::string& path) { return read_expert(safetensors_file(path)); }

inline void write_router(const std::string& path, const nn::router& r, std::span<const adapt::expert> library) {
    const nn::router_config& c = r.config();
    T2_CHECK(library.size() == c.experts, "write_router: a router for ", c.experts, " experts, a library of ",
             library.size());
    const std::span<const float> p = r.parameters();
    json::value tasks = json::value::array();
    for (const adapt::expert& e : library)
        tasks.push_back(e.task);
    write_safetensors(path,
                      {make_safetensors_entry("router.query", p.first(c.key_dim * c.dim), {c.key_dim, c.dim}),
                       make_safetensors_entry("router.keys", p.subspan(c.key_dim * c.dim), {c.experts, c.key_dim})},
                      {{"format", "t2.router"},
                       {"format_version", "1"},
                       {"temperature", json::to_string(json::value(double(c.temperature)))},
                       {"experts", json::to_string(tasks)},
                       {"library_hash", adapt::library_hash(library)},
                       {"writer", "t2 " T2_VERSION_STRING}});
}

// A router file as it stands: the router, and what it records of its library.
struct router_file {
    nn::router router;
    std::string library_hash, experts; // experts: the JSON array of the library's tasks
};

inline router_file read_router(const safetensors_file& f) {
    const std::string& path = f.name();
    detail::check_format(f, "t2.router");
    const safetensors_tensor* query = f.find("router.query");
    const safetensors_tensor* keys = f.find("router.keys");
    if (!query || !keys || f.tensors().size() != 2)
        t2::detail::throw_error(path, ": a router holds the tensors router.query and router.keys, and only those");
    const auto q = detail::f32_tensor(f, *query, 2), k = detail::f32_tensor(f, *keys, 2);
    if (keys->shape[1] != query->shape[0])
        t2::detail::throw_error(path, ": router.keys is ", detail::shape_string(keys->shape), ", router.query ",
                                detail::shape_string(query->shape), "; expected [K, d_k] and [d_k, dim]");
    const auto temperature = json::parse(detail::required_metadata(f, "temperature"), path + ": metadata \"temperature\"");
    std::vector<float> parameters(q.begin(), q.end());
    parameters.insert(parameters.end(), k.begin(), k.end());
    for (const float v : parameters)
        if (!std::isfinite(v))
            t2::detail::throw_error(path, ": the router holds a non-finite value");
    return {nn::router({.dim = query->shape[1], .experts = keys->shape[0], .key_dim = query->shape[0],
                        .temperature = float(temperature.root().as_double())},
                       std::move(parameters)),
            detail::required_metadata(f, "library_hash"), detail::required_metadata(f, "experts")};
}

// The router in `path`, checked against the library it is to route.
inline nn::router read_router(const std::string& path, std::span<const adapt::expert> library) {
    router_file r = read_router(safetensors_file(path));
    if (r.library_hash != adapt::library_hash(library) || r.router.config().experts != library.size())
        t2::detail::throw_error(path, ": the router was trained for another expert library (", r.experts, ")");
    return std::move(r.router);
}

} // namespace io
T2_NAMESPACE_END
