#pragma once
// A Llama-family decoder: token embedding, n_layers pre-norm residual blocks (RMSNorm,
// grouped-query attention with rotary embeddings and a KV cache; RMSNorm, SwiGLU MLP),
// final RMSNorm, classifier (optionally tied to the embedding).
//
//   forward(ex, batch, workspace)  → logits of each sequence's last position [B × vocab],
//                                    or of every position [R × vocab] (logits_for::all)
//   forward(ex, state, tokens)     → one sequence, the logits copied out
//   hidden(ex, batch, workspace)   → the final-normed hidden states of every position [R × dim]
//
// The weights (llama_weights) are immutable and may be shared by any number of sequences
// and threads; each sequence's mutable part (KV cache, position) is a llama_state. A batch
// is B sequences, each with its own state and its own number of new tokens (R in all): the
// rows of all of them are packed, so every matrix product is one gemm over R rows — packed
// prefill, and lockstep decoding of B sequences as a B-row gemm instead of B gemvs. The
// block itself is nn/decoder_block.hpp, shared with training (nn/backprop.hpp).
//
// Adapters (nn/adapter_state.hpp) are per call, never in the weights: forward(…, adapter)
// runs every sequence with one adapter state, and a batch of `step`s names one per sequence
// (nullptr: the base), so sequences with different experts, or a population of candidates,
// share one pass over the frozen base where the weight policy allows it.
//
// Scratch memory comes from a decoder_workspace that is sized by the first call and reused,
// so decoding token after token allocates nothing; the logits returned are a view into it,
// valid until its next use. A llama_state carries one for the single-sequence forward.
#include <algorithm>
#include <any>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "t2/core/tensor.hpp"
#include "t2/core/workspace.hpp"
#include "t2/nn/adapter_state.hpp"
#include "t2/nn/config.hpp"
#include "t2/nn/decoder_block.hpp"
#include "t2/nn/kv_cache.hpp"
#include "t2/nn/linear.hpp"
#include "t2/ops/cached_attention.hpp"
#include "t2/ops/norms.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

template <weight_policy Weight>
struct llama_weights {
    matrix_view<const float> token_embedding; // [vocab × dim]
    std::vector<block_weights<Weight>> blocks;
    vector_view<const float> final_norm;      // [dim]
    linear<Weight> classifier;                // [vocab × dim]
    std::shared_ptr<const void> owner;        // keeps the views above alive
};

// Scratch of forward calls: activations, attention scores, logits, and the per-sequence
// bookkeeping of a batch, kept between calls (see the top of this file).
struct decoder_workspace {
    workspace floats;
    std::vector<std::size_t> positions;             // of every row
    std::vector<ops::attention_sequence> attention; // every sequence's rows and cache
    std::any adapter_groups, matrix_groups;         // with adapters: their groups of rows
};

// Mutable per-sequence state.
class llama_state {
public:
    // A cache for `context` positions; 0 means the model's whole context (seq_len).
    template <model_config C>
    explicit llama_state(const C& c, std::size_t context = 0) : cache(c, context ? context : c.seq_len) {}

    kv_cache cache;
    std::size_t position = 0; // tokens already in the cache
    decoder_workspace scratch; // for forward(ex, state, tokens); batches bring their own

    void reset() noexcept { position = 0; }
};

// One sequence of a batch: its state, the tokens to run at its next positions, and for an
// adaptable model the adapter it runs with (nullptr: the base).
template <class Adapter>
struct basic_sequence_step {
    llama_state* state = nullptr;
    std::span<const std::int32_t> tokens;
    const Adapter* adapter = nullptr;
};
using sequence_step = basic_sequence_step<no_adapter>;

enum class logits_for { last, all };

template <model_config Config, weight_policy Weight = dense<float>>
class llama {
public:
    using adapter_type = adapter_of_t<Weight>;         // adapter_state<Weight>, or no_adapter
    using step = basic_sequence_step<adapter_type>;    // a sequence with its own adapter

    llama(const Config& config, llama_weights<Weight> weights)
        : config_(config), weights_(std::move(weights)) {
        check_shapes();
    }

    const Config& config() const noexcept { return config_; }
    const llama_weights<Weight>& weights() const noexcept { return weights_; }
    llama_weights<Weight>& weights() noexcept { return weights_; }
    // A fresh sequence; `context` bounds its length (and the KV cache), 0 = seq_len.
    llama_state make_state(std::size_t context = 0) const { return llama_state(config_, context); }

    // Runs each sequence's tokens at its positions state.position … +T−1, appends them to
    // its cache and returns the logits of each sequence's last position (B rows, in batch
    // order) or of every position (R rows, packed in batch order). Every sequence runs with
    // `adapter` (nullptr: the base).
    template <exec::cpu_executor E>
    matrix_view<const float> forward(const E& ex, std::span<const sequence_step> batch, decoder_workspace& ws,
                                     logits_for which = logits_for::last,
                                     const adapter_type* adapter = nullptr) const {
        return run(ex, batch, ws, which == logits_for::last ? output::last_logits : output::all_logits,
                   [&](std::size_t) { return adapter; });
    }

    // The same with an adapter per sequence.
    template <exec::cpu_executor E>
        requires adaptable_weight<Weight>
    matrix_view<const float> forward(const E& ex, std::span<const step> batch, decoder_workspace& ws,
                                     logits_for which = logits_for::last) const {
        return run(ex, batch, ws, which == logits_for::last ? output::last_logits : output::all_logits,
                   [&](std::size_t b) { return batch[b].adapter; });
    }

    // The final-normed hidden states of every position [R × dim], packed in batch order; the
    // caches advance as in forward.
    template <exec::cpu_executor E>
    matrix_view<const float> hidden(const E& ex, std::span<const sequence_step> batch, decoder_workspace& ws,
                                    const adapter_type* adapter = nullptr) const {
        return run(ex, batch, ws, output::all_hidden, [&](std::size_t) { return adapter; });
    }

    // One sequence, with the state's own workspace; the logits are copied out.
    template <exec::cpu_executor E>
    matrix<float> forward(const E& ex, llama_state& state, std::span<const std::int32_t> tokens,
                          logits_for which = logits_for::last, const adapter_type* adapter = nullptr) const {
        const sequence_step step{&state, tokens};
        const matrix_view<const float> logits = forward(ex, std::span(&step, 1), state.scratch, which, adapter);
        matrix<float> copy(dims<2>(logits.extent(0), logits.extent(1)), uninitialized);
        std::copy(logits.data(), logits.data() + logits.size(), copy.data());
        return copy;
    }

private:
    enum class output { last_logits, all_logits, all_hidden };

    template <exec::cpu_executor E, class Step, class AdapterOf>
    matrix_view<const float> run(const E& ex, std::span<const Step> batch, decoder_workspace& ws, output what,
                                 AdapterOf&& adapter_of) const {
        const std::size_t D = config_.dim, B = batch.size();
        const std::size_t R = check_batch(batch, adapter_of);
        ws.positions.clear();
        ws.attention.clear();
        for (const Step& s : batch) {
            ws.attention.push_back({ws.positions.size(), s.tokens.size(), s.state->position,
                                    s.state->cache.layer_keys(0), s.state->cache.layer_values(0)});
            for (std::size_t t = 0; t < s.tokens.size(); ++t)
                ws.positions.push_back(s.state->position + t);
        }
        const std::size_t heads = config_.n_heads, kv_heads = config_.n_kv_heads;
        const std::size_t attention_floats =
            ops::cached_attention_scratch(ex, std::span<const ops::attention_sequence>(ws.attention), heads,
                                          kv_heads, head_dim(config_));
        const std::size_t out_rows = what == output::last_logits ? B : R;
        const auto groups = adapter_groups(batch, ws, adapter_of);
        std::span<float> adapter_scratch;
        block_activations a;
        matrix_view<float> selected, normed, logits;
        std::span<float> attention_scratch;
        ws.floats.layout([&](auto& take) {
            a.x = a.x_mid = a.out = take(R, D);
            a.h1 = a.h2 = take(R, D);
            a.q = take(R, D);
            a.k = take(R, kv_dim(config_));
            a.v = take(R, kv_dim(config_));
            a.attended = take(R, D);
            a.projected = take(R, D);
            a.gate = a.act = take(R, config_.hidden_dim);
            a.up = take(R, config_.hidden_dim);
            selected = what == output::last_logits ? take(B, D) : a.x;
            normed = take(out_rows, D);
            if (what != output::all_hidden)
                logits = take(out_rows, config_.vocab_size);
            const auto scores = take(attention_floats);
            attention_scratch = std::span<float>(scores.data(), scores.size());
            if constexpr (adaptable_weight<Weight>) {
                const auto floats = take(adapter_scratch_floats(groups, R));
                adapter_scratch = std::span<float>(floats.data(), floats.size());
            }
        });

        for (std::size_t b = 0; b < B; ++b)
            for (std::size_t t = 0; t < ws.attention[b].rows; ++t) {
                const auto row = weights_.token_embedding.row(static_cast<std::size_t>(batch[b].tokens[t]));
                std::copy(row.data(), row.data() + D, a.x.row(ws.attention[b].first_row + t).data());
            }
        for (std::size_t l = 0; l < config_.n_layers; ++l) {
            for (std::size_t b = 0; b < B; ++b) {
                ws.attention[b].keys = batch[b].state->cache.layer_keys(l);
                ws.attention[b].values = batch[b].state->cache.layer_values(l);
            }
            const auto attention = [&](const auto& inner, auto q, auto k, auto v, auto attended) {
                ops::cached_attention(inner, q, k, v, std::span<const ops::attention_sequence>(ws.attention), attended,
                                      heads, kv_heads, attention_scratch);
            };
            const std::span<const std::size_t> positions(ws.positions);
            if constexpr (adaptable_weight<Weight>)
                block_forward(ex, config_, weights_.blocks[l], a, positions, attention,
                              layer_adapters(l, groups, ws, adapter_scratch));
            else
                block_forward(ex, config_, weights_.blocks[l], a, positions, attention);
        }
        for (const Step& s : batch)
            s.state->position += s.tokens.size();

        if (what == output::last_logits)
            for (std::size_t b = 0; b < B; ++b) {
                const auto last = a.x.row(ws.attention[b].first_row + ws.attention[b].rows - 1);
                std::copy(last.data(), last.data() + D, selected.row(b).data());
            }
        ops::rmsnorm(ex, selected, weights_.final_norm, normed, config_.norm_eps);
        if (what == output::all_hidden)
            return normed;
        weights_.classifier(ex, normed, logits);
        return logits;
    }

    // Consecutive sequences with the same adapter form one group of rows (none without
    // adapters).
    template <class Step, class AdapterOf>
    std::span<const adapter_rows<adapter_type>> adapter_groups(std::span<const Step> batch, decoder_workspace& ws,
                                                               AdapterOf&& adapter_of) const {
        if constexpr (!adaptable_weight<Weight>) {
            return {};
        } else {
            using groups_type = std::vector<adapter_rows<adapter_type>>;
            if (!std::any_cast<groups_type>(&ws.adapter_groups))
                ws.adapter_groups = groups_type();
            groups_type& groups = *std::any_cast<groups_type>(&ws.adapter_groups);
            groups.clear();
            for (std::size_t b = 0; b < batch.size(); ++b) {
                const adapter_type* adapter = adapter_of(b);
                if (!groups.empty() && groups.back().state == adapter)
                    groups.back().count += batch[b].tokens.size();
                else
                    groups.push_back({ws.attention[b].first_row, batch[b].tokens.size(), adapter});
            }
            return groups;
        }
    }

    // Scratch of the weight policies for R rows with the batch's adapters.
    template <class Groups>
    std::size_t adapter_scratch_floats(const Groups& groups, std::size_t R) const {
        std::size_t most = 0;
        for (const auto& group : groups)
            if (group.state)
                for (std::size_t l = 0; l < config_.n_layers; ++l)
                    for (const projection p : all_projections)
                        most = std::max(most, projection_of(weights_.blocks[l], p).weight().scratch_floats(
                                                  R, group.state->matrix(l, static_cast<std::size_t>(p))));
        return most;
    }

    // Layer l's projections with each group's matrix states.
    template <class Groups>
    auto layer_adapters(std::size_t l, const Groups& groups, decoder_workspace& ws, std::span<float> scratch) const {
        using rows_type = std::vector<adapter_rows<typename Weight::state>>;
        if (!std::any_cast<rows_type>(&ws.matrix_groups))
            ws.matrix_groups = rows_type();
        rows_type& rows = *std::any_cast<rows_type>(&ws.matrix_groups);
        const std::size_t G = groups.size(), P = all_projections.size();
        rows.resize(G * P);
        block_adapters<typename Weight::state> adapters{{}, scratch};
        for (std::size_t p = 0; p < P; ++p) {
            for (std::size_t g = 0; g < G; ++g)
                rows[p * G + g] = {groups[g].first, groups[g].count,
                                   groups[g].state ? &groups[g].state->matrix(l, p) : nullptr};
            adapters.rows[p] = std::span<const adapter_rows<typename Weight::state>>(rows.data() + p * G, G);
        }
        return adapters;
    }

    // Checks every sequence before anything runs; returns the rows in all.
    template <class Step, class AdapterOf>
    std::size_t check_batch(std::span<const Step> batch, AdapterOf&& adapter_of) const {
        T2_CHECK(!batch.empty(), "forward: an empty batch");
        std::size_t rows = 0;
        for (std::size_t b = 0; b < batch.size(); ++b) {
            const Step& s = batch[b];
            T2_CHECK(s.state, "forward: sequence ", b, " of the batch has no state");
            const llama_state& state = *s.state;
            const std::size_t T = s.tokens.size();
            T2_CHECK(T > 0, "forward: no tokens", batch.size() > 1 ? " for a sequence of the batch" : "");
            T2_CHECK(state.position + T <= state.cache.capacity(), "forward: positions ", state.position, "..",
                     state.position + T - 1, " exceed the state's context of ", state.cache.capacity(), " tokens");
            T2_CHECK(state.cache.capacity() <= config_.seq_len && state.cache.layers() == config_.n_layers,
                     "forward: the state belongs to another model");
            for (std::size_t c = 0; c < b; ++c)
                T2_CHECK(batch[c].state != s.state, "forward: sequences ", c, " and ", b,
                         " of the batch share one state");
            for (const std::int32_t token : s.tokens)
                T2_CHECK(token >= 0 && static_cast<std::size_t>(token) < config_.vocab_size, "forward: token id ",
                         token, " is outside the vocabulary of ", config_.vocab_size);
            if constexpr (adaptable_weight<Weight>)
                if (const adapter_type* adapter = adapter_of(b))
                    T2_CHECK(adapter->base() == weights_.owner.get() && adapter->layers() == config_.n_layers,
                             "forward: the adapter", batch.size() > 1 ? " of sequence " + std::to_string(b) : "",
                             " was made for another model");
            rows += T;
        }
        return rows;
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

// A model with one adapter for every sequence: llama's interface (config, make_state,
// forward, hidden) for code written against a model, such as generate. Borrows both.
template <model_config Config, adaptable_weight Weight>
class adapted_model {
public:
    using adapter_type = no_adapter; // the adapter is bound
    using step = sequence_step;

    adapted_model(const llama<Config, Weight>& model, const adapter_state<Weight>& adapter)
        : model_(&model), adapter_(&adapter) {}

    const Config& config() const noexcept { return model_->config(); }
    const llama<Config, Weight>& model() const noexcept { return *model_; }
    const adapter_state<Weight>& adapter() const noexcept { return *adapter_; }
    llama_state make_state(std::size_t context = 0) const { return model_->make_state(context); }

    template <exec::cpu_executor E>
    matrix_view<const float> forward(const E& ex, std::span<const sequence_step> batch, decoder_workspace& ws,
                                     logits_for which = logits_for::last) const {
        return model_->forward(ex, batch, ws, which, adapter_);
    }
    template <exec::cpu_executor E>
    matrix_view<const float> hidden(const E& ex, std::span<const sequence_step> batch, decoder_workspace& ws) const {
        return model_->hidden(ex, batch, ws, adapter_);
    }
    template <exec::cpu_executor E>
    matrix<float> forward(const E& ex, llama_state& state, std::span<const std::int32_t> tokens,
                          logits_for which = logits_for::last) const {
        return model_->forward(ex, state, tokens, which, adapter_);
    }

private:
    const llama<Config, Weight>* model_;
    const adapter_state<Weight>* adapter_;
};

template <model_config Config, adaptable_weight Weight>
adapted_model<Config, Weight> with_adapter(const llama<Config, Weight>& model, const adapter_state<Weight>& adapter) {
    return {model, adapter};
}

} // namespace nn
T2_NAMESPACE_END
