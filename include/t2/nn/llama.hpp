#pragma once
// A Llama-family decoder: token embedding, n_layers pre-norm residual blocks (RMSNorm,
// grouped-query attention with rotary embeddings and a KV cache; RMSNorm, SwiGLU MLP),
// final RMSNorm, classifier (optionally tied to the embedding).
//
//   forward(ex, state, tokens[T]) → logits[T × vocab] (or [1 × vocab], the last position)
//
// The weights (llama_weights) are immutable and may be shared by several sessions; each
// session's mutable part (KV cache, position, scratch) is a llama_state. T = 1 is decoding
// (every matrix product is a gemv); T > 1 is prefill (gemm).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <vector>

#include "t2/core/tensor.hpp"
#include "t2/nn/config.hpp"
#include "t2/nn/kv_cache.hpp"
#include "t2/nn/linear.hpp"
#include "t2/nn/parallel.hpp"
#include "t2/ops/activations.hpp"
#include "t2/ops/elementwise.hpp"
#include "t2/ops/norms.hpp"
#include "t2/ops/rope.hpp"
#include "t2/ops/softmax.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

template <weight_policy Weight>
struct block_weights {
    vector_view<const float> attention_norm; // [dim]
    linear<Weight> wq, wk, wv, wo;           // [dim×dim], [kv_dim×dim] ×2, [dim×dim]
    vector_view<const float> mlp_norm;       // [dim]
    linear<Weight> w1, w2, w3;               // [hidden×dim], [dim×hidden], [hidden×dim]
};

template <weight_policy Weight>
struct llama_weights {
    matrix_view<const float> token_embedding; // [vocab × dim]
    std::vector<block_weights<Weight>> blocks;
    vector_view<const float> final_norm;      // [dim]
    linear<Weight> classifier;                // [vocab × dim]
    std::shared_ptr<const void> owner;        // keeps the views above alive
};

// Mutable per-sequence state.
class llama_state {
public:
    // A cache for `context` positions; 0 means the model's whole context (seq_len).
    template <model_config C>
    explicit llama_state(const C& c, std::size_t context = 0) : cache(c, context ? context : c.seq_len) {}

    kv_cache cache;
    std::size_t position = 0; // tokens already in the cache

    void reset() noexcept { position = 0; }
};

enum class logits_for { last, all };

template <model_config Config, weight_policy Weight = dense<float>>
class llama {
public:
    llama(const Config& config, llama_weights<Weight> weights)
        : config_(config), weights_(std::move(weights)) {
        check_shapes();
    }

    const Config& config() const noexcept { return config_; }
    const llama_weights<Weight>& weights() const noexcept { return weights_; }
    llama_weights<Weight>& weights() noexcept { return weights_; }
    // A fresh sequence; `context` bounds its length (and the KV cache), 0 = seq_len.
    llama_state make_state(std::size_t context = 0) const { return llama_state(config_, context); }

    // Runs tokens[T] at positions state.position … +T-1, appends them to the cache and
    // returns the logits of the last position or of all of them.
    template <exec::cpu_executor E>
    matrix<float> forward(const E& ex, llama_state& state, std::span<const std::int32_t> tokens,
                          logits_for which = logits_for::last) const {
        const std::size_t T = tokens.size(), D = config_.dim;
        T2_CHECK(T > 0, "forward: no tokens");
        T2_CHECK(state.position + T <= state.cache.capacity(), "forward: positions ", state.position,
                 "..", state.position + T - 1, " exceed the state's context of ", state.cache.capacity(),
                 " tokens");
        T2_CHECK(state.cache.capacity() <= config_.seq_len && state.cache.layers() == config_.n_layers,
                 "forward: the state belongs to another model");
        matrix<float> x(T, D);
        for (std::size_t t = 0; t < T; ++t) {
            const std::int32_t token = tokens[t];
            T2_CHECK(token >= 0 && static_cast<std::size_t>(token) < config_.vocab_size,
                     "forward: token id ", token, " is outside the vocabulary of ",
                     config_.vocab_size);
            const auto row = weights_.token_embedding.row(static_cast<std::size_t>(token));
            std::copy(row.data(), row.data() + D, x.row(t).data());
        }
        scratch s(config_, T);
        for (std::size_t l = 0; l < config_.n_layers; ++l)
            block(ex, l, state, x, s);
        state.position += T;

        const std::size_t first = which == logits_for::last ? T - 1 : 0;
        const auto rows = x.rows(first, T);
        matrix<float> normed(T - first, D), logits(T - first, config_.vocab_size);
        ops::rmsnorm(ex, rows, weights_.final_norm, normed, config_.norm_eps);
        weights_.classifier(ex, normed, logits);
        return logits;
    }

private:
    // Activations of one forward call, reused by every layer.
    struct scratch {
        matrix<float> h, q, k, v, attended, out, gate, up;
        scratch(const Config& c, std::size_t T)
            : h(T, c.dim), q(T, c.dim), k(T, kv_dim(c)), v(T, kv_dim(c)), attended(T, c.dim),
              out(T, c.dim), gate(T, c.hidden_dim), up(T, c.hidden_dim) {}
    };

    template <exec::cpu_executor E>
    void block(const E& ex, std::size_t l, llama_state& state, matrix<float>& x, scratch& s) const {
        const block_weights<Weight>& w = weights_.blocks[l];
        ops::rmsnorm(ex, x, w.attention_norm, s.h, config_.norm_eps);
        w.wq(ex, s.h, s.q);
        w.wk(ex, s.h, s.k);
        w.wv(ex, s.h, s.v);
        const ops::rope_config rope{head_dim(config_), config_.rope_theta, config_.rope_layout};
        ops::rope(ex, s.q, state.position, rope);
        ops::rope(ex, s.k, state.position, rope);
        attention(ex, l, state, s);
        w.wo(ex, s.attended, s.out);
        ops::add(ex, x.flat(), s.out.flat(), x.flat());

        ops::rmsnorm(ex, x, w.mlp_norm, s.h, config_.norm_eps);
        w.w1(ex, s.h, s.gate);
        w.w3(ex, s.h, s.up);
        ops::swiglu(ex, s.gate.flat(), s.up.flat(), s.gate.flat());
        w.w2(ex, s.gate, s.out);
        ops::add(ex, x.flat(), s.out.flat(), x.flat());
    }

    // Causal grouped-query attention of T new positions over the cache. The queries of the
    // heads sharing a KV head are stacked into one [group·T × head_dim] matrix, so each KV
    // head costs two matrix products: scores = Q·Kᵀ and attended = softmax(scores)·V.
    template <exec::cpu_executor E>
    void attention(const E& ex, std::size_t l, llama_state& state, scratch& s) const {
        const std::size_t T = s.q.extent(0), hd = head_dim(config_);
        const std::size_t group = config_.n_heads / config_.n_kv_heads;
        const std::size_t start = state.position, context = start + T;
        const float scale = 1.f / std::sqrt(static_cast<float>(hd));
        for (std::size_t g = 0; g < config_.n_kv_heads; ++g) {
            auto keys = state.cache.keys(l, g, context), values = state.cache.values(l, g, context);
            for (std::size_t t = 0; t < T; ++t)
                for (std::size_t i = 0; i < hd; ++i) {
                    keys(start + t, i) = s.k(t, g * hd + i);
                    values(start + t, i) = s.v(t, g * hd + i);
                }
        }
        for_each_task(ex, config_.n_kv_heads, [&](const auto& inner, std::size_t g) {
            const auto keys = state.cache.keys(l, g, context);
            const auto values = state.cache.values(l, g, context);
            matrix<float> queries(group * T, hd), scores(group * T, context), out(group * T, hd);
            for (std::size_t j = 0; j < group; ++j)
                for (std::size_t t = 0; t < T; ++t)
                    for (std::size_t i = 0; i < hd; ++i)
                        queries(j * T + t, i) = s.q(t, (g * group + j) * hd + i);
            ops::gemm(inner, queries, keys, scores, {.transpose_b = true, .alpha = scale});
            for (std::size_t r = 0; r < group * T; ++r) {
                // Row r is position start + r % T: it sees the cache up to itself.
                const std::size_t visible = start + r % T + 1;
                auto row = scores.row(r);
                const auto seen = row.rows(0, visible);
                ops::softmax(inner, seen, seen);
                std::fill(row.data() + visible, row.data() + context, 0.f);
            }
            ops::gemm(inner, scores, values, out);
            for (std::size_t j = 0; j < group; ++j)
                for (std::size_t t = 0; t < T; ++t)
                    for (std::size_t i = 0; i < hd; ++i)
                        s.attended(t, (g * group + j) * hd + i) = out(j * T + t, i);
        });
    }

    void check_shapes() const {
        const auto& c = config_;
        validate(c, "llama");
        const auto expect = [](const auto& what, std::size_t l, std::size_t rows, std::size_t cols,
                               std::size_t want_rows, std::size_t want_cols) {
            T2_CHECK(rows == want_rows && cols == want_cols, "llama: ", what, " of layer ", l, " is ",
                     rows, "x", cols, ", expected ", want_rows, "x", want_cols);
        };
        const auto& w = weights_;
        T2_CHECK(w.token_embedding.extent(0) == c.vocab_size && w.token_embedding.extent(1) == c.dim,
                 "llama: token embedding is ", w.token_embedding.shape(), ", expected ", c.vocab_size,
                 "x", c.dim);
        T2_CHECK(w.blocks.size() == c.n_layers, "llama: ", w.blocks.size(), " blocks for ",
                 c.n_layers, " layers");
        T2_CHECK(w.final_norm.size() == c.dim, "llama: final norm has ", w.final_norm.size(),
                 " elements, expected ", c.dim);
        expect("classifier", 0, w.classifier.out_features(), w.classifier.in_features(),
               c.vocab_size, c.dim);
        for (std::size_t l = 0; l < c.n_layers; ++l) {
            const auto& b = w.blocks[l];
            T2_CHECK(b.attention_norm.size() == c.dim && b.mlp_norm.size() == c.dim,
                     "llama: norm weights of layer ", l, " need ", c.dim, " elements");
            const auto shape = [&](const char* name, const auto& lin, std::size_t r, std::size_t cc) {
                expect(name, l, lin.out_features(), lin.in_features(), r, cc);
            };
            shape("wq", b.wq, c.dim, c.dim);
            shape("wk", b.wk, kv_dim(c), c.dim);
            shape("wv", b.wv, kv_dim(c), c.dim);
            shape("wo", b.wo, c.dim, c.dim);
            shape("w1", b.w1, c.hidden_dim, c.dim);
            shape("w2", b.w2, c.dim, c.hidden_dim);
            shape("w3", b.w3, c.hidden_dim, c.dim);
        }
    }

    Config config_;
    llama_weights<Weight> weights_;
};

} // namespace nn
T2_NAMESPACE_END
