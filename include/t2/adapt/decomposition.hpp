#pragma once
// The frozen half of SVF for a whole model: the thin SVD of each selected matrix, computed
// once and named by the hash of the base model's weights, so that it (and every expert
// trained on it) is refused by a different model.
//
//   auto d = t2::adapt::decompose(ex, checkpoint.config, checkpoint.weights,
//                                 t2::adapt::selection::mlp());
//   t2::io::write_decomposition("model.svd.safetensors", d);   // io/decomposition.hpp
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "t2/adapt/selection.hpp"
#include "t2/adapt/svd.hpp"
#include "t2/adapt/svf.hpp"
#include "t2/core/sha256.hpp"
#include "t2/nn/llama.hpp"
#include "t2/nn/matrices.hpp"
#include "t2/ops/detail/parallel.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

struct decomposed_matrix {
    std::string name; // nn::matrix_name
    nn::matrix_slot slot;
    svd_factors factors;
};

struct decomposition {
    std::string base_model_hash; // weights_hash of the model it was computed from
    std::string selection;       // as selection::text()
    std::vector<decomposed_matrix> matrices;

    const decomposed_matrix* find(std::string_view name) const noexcept {
        for (const auto& m : matrices)
            if (m.name == name)
                return &m;
        return nullptr;
    }
};

// SHA-256 over the configuration and every weight as little-endian f32, in a fixed order:
// a function of the model, not of the file it came from (a llama2.c .bin and the same
// weights in GGUF F32 hash alike; a quantized copy does not).
template <nn::model_config C>
std::string weights_hash(const C& c, const nn::llama_weights<nn::dense<float>>& w) {
    sha256 h;
    const auto number = [&](std::uint64_t v) {
        std::byte bytes[8];
        for (int i = 0; i < 8; ++i)
            bytes[i] = static_cast<std::byte>(v >> (8 * i));
        h.update(bytes);
    };
    const auto real = [&](float v) {
        std::uint32_t bits;
        std::memcpy(&bits, &v, 4);
        number(bits);
    };
    const auto floats = [&](const float* p, std::size_t n) {
        static_assert(std::endian::native == std::endian::little, "t2 hashes little-endian f32");
        h.update(std::as_bytes(std::span(p, n)));
    };
    const auto vec = [&](vector_view<const float> v) { floats(v.data(), v.size()); };
    const auto mat = [&](matrix_view<const float> m) { floats(m.data(), m.size()); };
    h.update(std::string_view("t2 llama weights v1"));
    for (const std::size_t d : {std::size_t(c.dim), std::size_t(c.hidden_dim), std::size_t(c.n_layers),
                                std::size_t(c.n_heads), std::size_t(c.n_kv_heads), std::size_t(c.vocab_size)})
        number(d);
    real(c.norm_eps);
    real(c.rope_theta);
    number(static_cast<std::uint64_t>(c.rope_layout));
    mat(w.token_embedding);
    for (const auto& b : w.blocks) {
        vec(b.attention_norm);
        vec(b.mlp_norm);
        for (const nn::projection p : nn::all_projections)
            mat(nn::projection_of(b, p).weight().weight());
    }
    vec(w.final_norm);
    mat(w.classifier.weight().weight());
    return h.hex();
}

enum class svd_precision { f64, f32 }; // the SVD's working precision (svd<double> or svd<float>)

struct decompose_options {
    svd_options svd;
    svd_precision precision = svd_precision::f64;
    // Called as each matrix is done (done = 1 … total, name = that matrix), one call at a
    // time but from whichever thread finished it.
    std::function<void(std::size_t done, std::size_t total, const std::string& name)> progress;
};

// The matrices are decomposed concurrently, one per task (each SVD on the inner executor),
// when there are at least as many as threads: whole SVDs in parallel scale better than the
// parallel parts of one. The result is the same either way: the SVD gives the same bits on
// every executor.
template <exec::cpu_executor E, nn::model_config C>
decomposition decompose(const E& ex, const C& c, const nn::llama_weights<nn::dense<float>>& w,
                        const selection& chosen, const decompose_options& options = {}) {
    decomposition d{weights_hash(c, w), chosen.text(), {}};
    const auto slots = chosen.of(c);
    T2_CHECK(!slots.empty(), "decompose: the selection \"", chosen.text(), "\" matches no matrix");
    std::vector<svd_factors> factors(slots.size());
    std::mutex progress_lock;
    std::size_t done = 0;
    const auto decompose_one = [&](const auto& on, std::size_t i) {
        const nn::matrix_slot& s = slots[i];
        const auto weight = nn::projection_of(w.blocks[s.layer], s.which).weight().weight();
        factors[i] = svd_factors::own(options.precision == svd_precision::f64 ? svd<double>(on, weight, options.svd)
                                                                               : svd<float>(on, weight, options.svd));
        if (options.progress) {
            const std::lock_guard<std::mutex> lock(progress_lock);
            options.progress(++done, slots.size(), s.name());
        }
    };
    std::size_t threads = 1;
    if constexpr (requires { ex.concurrency(); })
        threads = ex.concurrency();
    if (threads > 1 && slots.size() >= threads)
        ops::detail::for_each_task(ex, slots.size(), decompose_one);
    else
        for (std::size_t i = 0; i < slots.size(); ++i)
            decompose_one(ex, i);
    for (std::size_t i = 0; i < slots.size(); ++i)
        d.matrices.push_back({slots[i].name(), slots[i], std::move(factors[i])});
    return d;
}

} // namespace adapt
T2_NAMESPACE_END
