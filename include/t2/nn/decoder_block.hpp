#pragma once
// The Llama decoder block, written once: pre-norm residual attention and SwiGLU MLP,
//
//   x_mid = x + wo(attention(rope(wq·h1), rope(wk·h1), wv·h1)),   h1 = rmsnorm(x)
//   out   = x_mid + w2(swiglu(w1·h2, w3·h2)),                     h2 = rmsnorm(x_mid)
//
// over R rows packed from one or more sequences; positions[r] is row r's position in its
// sequence, for the rotary embedding.
//
// Where the activations go decides the mode. Inference (nn/llama.hpp) points x, x_mid and
// out at one buffer, h1 at h2 and act at gate, and reuses them for every layer; training
// (nn/backprop.hpp) gives every layer buffers of its own and keeps them for the backward.
// Attention is the one step that differs, so it is passed in: over each sequence's KV cache
// (ops::cached_attention) for inference, causal over whole sequences keeping the
// probabilities (ops::causal_attention) for training.
//
// An adapter, if any, comes as block_adapters: for each projection, the groups of rows and
// the adapter state each group runs that matrix with (nn/adapter_state.hpp), and scratch for
// the weight policy; no_block_adapters runs the weights as they are.
#include <array>
#include <cstddef>
#include <span>
#include <type_traits>

#include "t2/core/tensor.hpp"
#include "t2/nn/config.hpp"
#include "t2/nn/linear.hpp"
#include "t2/nn/matrices.hpp"
#include "t2/ops/activations.hpp"
#include "t2/ops/elementwise.hpp"
#include "t2/ops/norms.hpp"
#include "t2/ops/rope.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

template <weight_policy Weight>
struct block_weights {
    vector_view<const float> attention_norm; // [dim]
    linear<Weight> wq, wk, wv, wo;           // [dim×dim], [kv_dim×dim] ×2, [dim×dim]
    vector_view<const float> mlp_norm;       // [dim]
    linear<Weight> w1, w2, w3;               // [hidden×dim], [dim×hidden], [hidden×dim]
};

// Where block_forward reads its input and writes every intermediate: [R × dim] (x, h1,
// attended, x_mid, h2, projected, out), [R × kv_dim] (k, v), [R × hidden] (gate, up, act).
struct block_activations {
    matrix_view<float> x, h1, q, k, v, attended, x_mid, h2, gate, up, act, projected, out;
};

struct no_block_adapters {};

template <class State>
struct block_adapters {
    std::array<std::span<const adapter_rows<State>>, all_projections.size()> rows; // by projection
    std::span<float> scratch;
};

namespace detail {

template <exec::cpu_executor E, weight_policy Weight, class Adapters>
void project(const E& ex, const linear<Weight>& m, projection p, matrix_view<const float> x, matrix_view<float> y,
             const Adapters& adapters) {
    if constexpr (std::is_same_v<Adapters, no_block_adapters>)
        m(ex, x, y);
    else
        m(ex, x, y, adapters.rows[static_cast<std::size_t>(p)], adapters.scratch);
}

// Projections that read the same x: together when no adapter runs (see nn::apply_same_input).
template <exec::cpu_executor E, weight_policy Weight, class Adapters, std::size_t N>
void project_same_input(const E& ex, const block_weights<Weight>& w, const std::array<projection, N>& ps,
                        matrix_view<const float> x, const std::array<matrix_view<float>, N>& ys,
                        const Adapters& adapters) {
    if constexpr (std::is_same_v<Adapters, no_block_adapters>) {
        std::array<const linear<Weight>*, N> layers;
        for (std::size_t i = 0; i < N; ++i)
            layers[i] = &projection_of(w, ps[i]);
        apply_same_input(ex, layers, x, ys);
    } else {
        for (std::size_t i = 0; i < N; ++i)
            project(ex, projection_of(w, ps[i]), ps[i], x, ys[i], adapters);
    }
}

} // namespace detail

template <exec::cpu_executor E, model_config C, weight_policy Weight, class Attention,
          class Adapters = no_block_adapters>
void block_forward(const E& ex, const C& c, const block_weights<Weight>& w, const block_activations& a,
                   std::span<const std::size_t> positions, Attention&& attention, const Adapters& adapters = {}) {
    const auto project = [&](projection p, matrix_view<const float> x, matrix_view<float> y) {
        detail::project(ex, projection_of(w, p), p, x, y, adapters);
    };
    ops::rmsnorm(ex, a.x, w.attention_norm, a.h1, c.norm_eps);
    detail::project_same_input(ex, w, std::array{projection::wq, projection::wk, projection::wv}, a.h1,
                               std::array{a.q, a.k, a.v}, adapters);
    const ops::rope_config rope{head_dim(c), c.rope_theta, c.rope_layout};
    ops::rope(ex, a.q, positions, rope);
    ops::rope(ex, a.k, positions, rope);
    attention(ex, matrix_view<const float>(a.q), matrix_view<const float>(a.k), matrix_view<const float>(a.v),
              a.attended);
    project(projection::wo, a.attended, a.projected);
    ops::add(ex, a.x.flat(), a.projected.flat(), a.x_mid.flat());

    ops::rmsnorm(ex, a.x_mid, w.mlp_norm, a.h2, c.norm_eps);
    detail::project_same_input(ex, w, std::array{projection::w1, projection::w3}, a.h2, std::array{a.gate, a.up},
                               adapters);
    ops::swiglu(ex, a.gate.flat(), a.up.flat(), a.act.flat());
    project(projection::w2, a.act, a.projected);
    ops::add(ex, a.x_mid.flat(), a.projected.flat(), a.out.flat());
}

} // namespace nn
T2_NAMESPACE_END
