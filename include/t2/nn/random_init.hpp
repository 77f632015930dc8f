#pragma once
// Random weights for a configuration: for benchmarks at real model sizes and for tests of
// shapes no checkpoint has. Matrices are uniform in ±1/sqrt(fan_in) (activations stay
// O(1) through the layers), norm weights are 1, everything is reproducible from the seed.
#include <cmath>
#include <cstdint>
#include <memory>
#include <vector>

#include "t2/core/rng.hpp"
#include "t2/nn/llama.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

template <model_config C>
llama_weights<dense<float>> random_weights(const C& c, std::uint64_t seed) {
    validate(c, "random_weights");
    // All tensors live in one owner so the views stay valid however the weights are copied.
    struct storage {
        std::vector<matrix<float>> matrices;
        std::vector<vector<float>> vectors;
    };
    auto owned = std::make_shared<storage>();
    const philox rng(seed);
    std::uint64_t stream = 0;
    const auto make_matrix = [&](std::size_t rows, std::size_t cols) {
        matrix<float> m(rows, cols);
        const philox r = rng.split(stream++);
        const float bound = 1.f / std::sqrt(static_cast<float>(cols));
        for (std::size_t i = 0; i < m.size(); ++i)
            m[i] = r.uniform(i, -bound, bound);
        owned->matrices.push_back(std::move(m));
        return matrix_view<const float>(owned->matrices.back());
    };
    const auto ones = [&](std::size_t n) {
        vector<float> v(n);
        v.fill(1.f);
        owned->vectors.push_back(std::move(v));
        return vector_view<const float>(owned->vectors.back());
    };
    owned->matrices.reserve(7 * c.n_layers + 2);
    owned->vectors.reserve(2 * c.n_layers + 1);
    llama_weights<dense<float>> w;
    w.owner = owned;
    const auto linear_of = [&](std::size_t rows, std::size_t cols) {
        return linear<dense<float>>(dense<float>(make_matrix(rows, cols), owned));
    };
    w.token_embedding = make_matrix(c.vocab_size, c.dim);
    w.blocks.resize(c.n_layers);
    for (auto& b : w.blocks) {
        b.attention_norm = ones(c.dim);
        b.wq = linear_of(c.dim, c.dim);
        b.wk = linear_of(kv_dim(c), c.dim);
        b.wv = linear_of(kv_dim(c), c.dim);
        b.wo = linear_of(c.dim, c.dim);
        b.mlp_norm = ones(c.dim);
        b.w1 = linear_of(c.hidden_dim, c.dim);
        b.w2 = linear_of(c.dim, c.hidden_dim);
        b.w3 = linear_of(c.hidden_dim, c.dim);
    }
    w.final_norm = ones(c.dim);
    w.classifier = c.shared_classifier
                       ? linear<dense<float>>(dense<float>(w.token_embedding, owned))
                       : linear_of(c.vocab_size, c.dim);
    return w;
}

} // namespace nn
T2_NAMESPACE_END
