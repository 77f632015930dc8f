#pragma once
// Exact backpropagation through a llama over one sequence: next-token cross-entropy with a
// loss mask, and the gradients of whatever the weight policy trains (z for SVF, α and the
// experts for mixtures, A and B for LoRA, W for dense weights on request), plus optionally
// the norms and the token embedding.
//
//   auto grads = t2::nn::make_gradients(model);
//   float loss = t2::nn::forward_backward(ex, model, tokens, mask, grads);
//
// tokens[N] are both inputs and targets: position t reads tokens[t] and predicts
// tokens[t+1], for t < N−1. mask[N−1] weighs those predictions (0 leaves one out: the
// prompt's tokens in supervised fine-tuning); empty counts all. The loss is the weighted
// mean (ops::cross_entropy). Gradients accumulate (+=) into `grads`, so calls over several
// sequences sum; zero them between optimizer steps.
//
// The sequence runs from position 0 without a KV cache, through the decoder block of
// llama::forward (nn/decoder_block.hpp) with ops::causal_attention in place of the cached one.
//
// Memory kept for backward, per token and block, in floats: 6·dim + 2·kv_dim + 3·hidden
// + n_heads·T (the attention probabilities); plus vocab (the logits, whose gradient
// overwrites them) once. At stories15M's shape and T = 256 that is 6.3 MB per block and
// 33 MB of logits. With
// recompute = true only each block's input (dim floats per token) is kept and a block's
// other activations are recomputed just before its backward: ~1 extra forward pass of
// compute for n_layers× less activation memory (peak_activation_floats gives both).
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "t2/core/tensor.hpp"
#include "t2/nn/decoder_block.hpp"
#include "t2/nn/llama.hpp"
#include "t2/nn/matrices.hpp"
#include "t2/ops/activations.hpp"
#include "t2/ops/attention.hpp"
#include "t2/ops/cross_entropy.hpp"
#include "t2/ops/elementwise.hpp"
#include "t2/ops/embedding.hpp"
#include "t2/ops/norms.hpp"
#include "t2/ops/rope.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

struct backprop_options {
    // Gradients of the plain weights as well: dense matrices (with the dense policy), the
    // RMSNorm weights and the token embedding. Adapter parameters always get theirs.
    bool dense_weights = false;
    // Keep only the blocks' inputs and recompute the rest during backward.
    bool recompute = false;
};

template <weight_policy Weight>
struct block_gradients {
    typename Weight::gradient wq, wk, wv, wo, w1, w2, w3;
    vector<float> attention_norm, mlp_norm; // empty unless dense_weights
};

template <weight_policy Weight>
struct llama_gradients {
    std::vector<block_gradients<Weight>> blocks;
    typename Weight::gradient classifier; // with a tied classifier, its share goes to token_embedding
    vector<float> final_norm;             // empty unless dense_weights
    matrix<float> token_embedding;        // empty unless dense_weights
};

namespace detail {

template <class Weight>
typename Weight::gradient policy_gradient(const Weight& w, bool dense_weights) {
    if constexpr (requires { w.make_gradient(true); })
        return w.make_gradient(dense_weights);
    else
        return w.make_gradient();
}

} // namespace detail

template <model_config C, weight_policy Weight>
llama_gradients<Weight> make_gradients(const llama<C, Weight>& model, const backprop_options& options = {}) {
    const auto& c = model.config();
    const auto& w = model.weights();
    const bool dense = options.dense_weights;
    llama_gradients<Weight> g;
    g.blocks.resize(c.n_layers);
    for (std::size_t l = 0; l < c.n_layers; ++l) {
        for (const projection p : all_projections)
            projection_of(g.blocks[l], p) = detail::policy_gradient(projection_of(w.blocks[l], p).weight(), dense);
        if (dense) {
            g.blocks[l].attention_norm = vector<float>(c.dim);
            g.blocks[l].mlp_norm = vector<float>(c.dim);
        }
    }
    g.classifier = detail::policy_gradient(w.classifier.weight(), dense && !c.shared_classifier);
    if (dense) {
        g.final_norm = vector<float>(c.dim);
        g.token_embedding = matrix<float>(c.vocab_size, c.dim);
    }
    return g;
}

// Floats of activations forward_backward keeps for a sequence of T tokens (inputs).
template <model_config C>
std::size_t peak_activation_floats(const C& c, std::size_t T, bool recompute) {
    const std::size_t per_block = T * (6 * c.dim + 2 * kv_dim(c) + 3 * c.hidden_dim + c.n_heads * T);
    const std::size_t inputs = T * c.dim * c.n_layers;
    const std::size_t logits = T * c.vocab_size; // their gradient overwrites them
    return (recompute ? inputs + per_block : c.n_layers * per_block) + logits;
}

namespace detail {

// Scratch that a kernel overwrites in full before anything reads it.
inline matrix<float> scratch_matrix(std::size_t rows, std::size_t cols) {
    return matrix<float>(dims<2>(rows, cols), uninitialized);
}

// What a block's backward needs from its forward.
struct block_activations {
    matrix<float> x, h1, q, k, v, attended, x_mid, h2, gate, up, act;
    tensor<float, dims<3>> probs;

    template <model_config C>
    block_activations(const C& c, std::size_t T)
        : x(scratch_matrix(T, c.dim)), h1(scratch_matrix(T, c.dim)), q(scratch_matrix(T, c.dim)),
          k(scratch_matrix(T, kv_dim(c))), v(scratch_matrix(T, kv_dim(c))), attended(scratch_matrix(T, c.dim)),
          x_mid(scratch_matrix(T, c.dim)), h2(scratch_matrix(T, c.dim)), gate(scratch_matrix(T, c.hidden_dim)),
          up(scratch_matrix(T, c.hidden_dim)), act(scratch_matrix(T, c.hidden_dim)),
          probs(dims<3>(c.n_heads, T, T), uninitialized) {}
};

// Runs block b on a.x (filled by the caller) and writes its output to out: the decoder
// block of inference, with causal attention over the whole sequence that keeps the
// probabilities for the backward.
template <exec::cpu_executor E, model_config C, weight_policy Weight>
void block_forward(const E& ex, const C& c, const block_weights<Weight>& b, block_activations& a,
                   matrix_view<float> out) {
    const std::size_t T = a.x.extent(0);
    matrix<float> projected = scratch_matrix(T, c.dim);
    const nn::block_activations where{a.x.view(),   a.h1.view(),    a.q.view(),  a.k.view(),    a.v.view(),
                                      a.attended.view(), a.x_mid.view(), a.h2.view(), a.gate.view(), a.up.view(),
                                      a.act.view(), projected.view(), out};
    const block_rows sequence{0, T, 0};
    nn::block_forward(ex, c, b, where, std::span(&sequence, 1),
                      [&](const auto& inner, auto q, auto k, auto v, auto attended) {
                          ops::causal_attention(inner, q, k, v, attended, a.probs.view(), c.n_heads, c.n_kv_heads);
                      });
}

// dx: dL/d(block output) on entry, dL/d(block input) on return.
template <exec::cpu_executor E, model_config C, weight_policy Weight>
void block_backward(const E& ex, const C& c, const block_weights<Weight>& b, const block_activations& a,
                    matrix_view<float> dx, block_gradients<Weight>& g) {
    const std::size_t T = a.x.extent(0);
    matrix<float> d_act = scratch_matrix(T, c.hidden_dim), d_gate = scratch_matrix(T, c.hidden_dim),
                  d_up = scratch_matrix(T, c.hidden_dim);
    matrix<float> d_h = scratch_matrix(T, c.dim), d_part = scratch_matrix(T, c.dim);
    // MLP: x_next = x_mid + w2(swiglu(w1 h2, w3 h2)), h2 = rmsnorm(x_mid).
    b.w2.backward(ex, a.act.view(), dx, d_act.view(), g.w2);
    ops::swiglu_backward(ex, a.gate.flat(), a.up.flat(), d_act.flat(), d_gate.flat(), d_up.flat());
    b.w1.backward(ex, a.h2.view(), d_gate.view(), d_h.view(), g.w1);
    b.w3.backward(ex, a.h2.view(), d_up.view(), d_part.view(), g.w3);
    ops::add(ex, d_h.flat(), d_part.flat(), d_h.flat());
    ops::rmsnorm_backward(ex, a.x_mid.view(), b.mlp_norm, d_h.view(), d_part.view(), g.mlp_norm.view(),
                          c.norm_eps);
    ops::add(ex, dx.flat(), d_part.flat(), dx.flat()); // dL/dx_mid
    // Attention: x_mid = x + wo(attention(rope(wq h1), rope(wk h1), wv h1)), h1 = rmsnorm(x).
    matrix<float> d_attended = scratch_matrix(T, c.dim), dq = scratch_matrix(T, c.dim),
                  dk = scratch_matrix(T, kv_dim(c)), dv = scratch_matrix(T, kv_dim(c));
    b.wo.backward(ex, a.attended.view(), dx, d_attended.view(), g.wo);
    ops::causal_attention_backward(ex, a.q.view(), a.k.view(), a.v.view(), a.probs.view(), d_attended.view(),
                                   dq.view(), dk.view(), dv.view(), c.n_heads, c.n_kv_heads);
    const ops::rope_config rope{head_dim(c), c.rope_theta, c.rope_layout};
    ops::rope_backward(ex, dq.view(), 0, rope);
    ops::rope_backward(ex, dk.view(), 0, rope);
    b.wq.backward(ex, a.h1.view(), dq.view(), d_h.view(), g.wq);
    b.wk.backward(ex, a.h1.view(), dk.view(), d_part.view(), g.wk);
    ops::add(ex, d_h.flat(), d_part.flat(), d_h.flat());
    b.wv.backward(ex, a.h1.view(), dv.view(), d_part.view(), g.wv);
    ops::add(ex, d_h.flat(), d_part.flat(), d_h.flat());
    ops::rmsnorm_backward(ex, a.x.view(), b.attention_norm, d_h.view(), d_part.view(), g.attention_norm.view(),
                          c.norm_eps);
    ops::add(ex, dx.flat(), d_part.flat(), dx.flat());
}

template <model_config C>
void check_sequence(const C& c, std::span<const std::int32_t> tokens, std::span<const float> mask) {
    T2_CHECK(tokens.size() >= 2, "forward_backward: need at least 2 tokens (an input and its target), got ",
             tokens.size());
    T2_CHECK(tokens.size() - 1 <= c.seq_len, "forward_backward: ", tokens.size() - 1,
             " input positions exceed the model's context of ", c.seq_len);
    T2_CHECK(mask.empty() || mask.size() == tokens.size() - 1, "forward_backward: the loss mask has ", mask.size(),
             " weights for ", tokens.size() - 1, " predictions (one per token after the first)");
}

} // namespace detail

// The loss of forward_backward without the backward: for evaluation and forward-only
// gradient estimates.
template <exec::cpu_executor E, model_config C, weight_policy Weight>
float sequence_loss(const E& ex, const llama<C, Weight>& model, std::span<const std::int32_t> tokens,
                    std::span<const float> mask = {}) {
    detail::check_sequence(model.config(), tokens, mask);
    auto state = model.make_state(tokens.size() - 1);
    const auto logits = model.forward(ex, state, tokens.first(tokens.size() - 1), logits_for::all);
    return ops::cross_entropy(ex, logits.view(), tokens.subspan(1), mask);
}

template <exec::cpu_executor E, model_config C, weight_policy Weight>
float forward_backward(const E& ex, const llama<C, Weight>& model, std::span<const std::int32_t> tokens,
                       std::span<const float> mask, llama_gradients<Weight>& grads,
                       const backprop_options& options = {}) {
    const C& c = model.config();
    const llama_weights<Weight>& w = model.weights();
    detail::check_sequence(c, tokens, mask);
    T2_CHECK(grads.blocks.size() == c.n_layers, "forward_backward: gradients for ", grads.blocks.size(),
             " blocks, the model has ", c.n_layers, " (use make_gradients)");
    const std::size_t T = tokens.size() - 1, L = c.n_layers;
    const auto inputs = tokens.first(T);

    // Forward, keeping every block's activations (or only its input).
    std::vector<detail::block_activations> kept;
    std::vector<matrix<float>> block_inputs;
    kept.reserve(options.recompute ? 1 : L);
    matrix<float> x = detail::scratch_matrix(T, c.dim);
    ops::embedding(ex, w.token_embedding, inputs, x.view());
    for (std::size_t l = 0; l < L; ++l) {
        if (options.recompute) {
            block_inputs.push_back(x);
            if (kept.empty())
                kept.emplace_back(c, T);
        } else {
            kept.emplace_back(c, T);
        }
        detail::block_activations& a = kept.back();
        std::copy(x.data(), x.data() + x.size(), a.x.data());
        detail::block_forward(ex, c, w.blocks[l], a, x.view());
    }
    matrix<float> normed = detail::scratch_matrix(T, c.dim), logits = detail::scratch_matrix(T, c.vocab_size);
    ops::rmsnorm(ex, x.view(), w.final_norm, normed.view(), c.norm_eps);
    w.classifier(ex, normed.view(), logits.view());
    const float loss = ops::cross_entropy(ex, logits.view(), tokens.subspan(1), mask, logits.view());

    // Backward. A tied classifier's weight is the embedding: its gradient accumulates into
    // the embedding's, lent to the classifier's gradient for the call.
    matrix<float> d_normed = detail::scratch_matrix(T, c.dim), dx = detail::scratch_matrix(T, c.dim);
    if (c.shared_classifier) {
        auto tied = w.classifier.weight().make_gradient();
        if constexpr (requires { tied.weight; }) {
            std::swap(tied.weight, grads.token_embedding);
            try {
                w.classifier.backward(ex, normed.view(), logits.view(), d_normed.view(), tied);
            } catch (...) {
                std::swap(tied.weight, grads.token_embedding);
                throw;
            }
            std::swap(tied.weight, grads.token_embedding);
        } else {
            w.classifier.backward(ex, normed.view(), logits.view(), d_normed.view(), tied);
        }
    } else {
        w.classifier.backward(ex, normed.view(), logits.view(), d_normed.view(), grads.classifier);
    }
    ops::rmsnorm_backward(ex, x.view(), w.final_norm, d_normed.view(), dx.view(), grads.final_norm.view(),
                          c.norm_eps);
    for (std::size_t l = L; l-- > 0;) {
        detail::block_activations* a = nullptr;
        if (options.recompute) {
            a = &kept.front();
            std::copy(block_inputs[l].data(), block_inputs[l].data() + block_inputs[l].size(), a->x.data());
            detail::block_forward(ex, c, w.blocks[l], *a, x.view()); // x is scratch here
        } else {
            a = &kept[l];
        }
        detail::block_backward(ex, c, w.blocks[l], *a, dx.view(), grads.blocks[l]);
    }
    if (grads.token_embedding.size() != 0)
        ops::embedding_backward(ex, inputs, dx.view(), grads.token_embedding.view());
    return loss;
}

} // namespace nn
T2_NAMESPACE_END
