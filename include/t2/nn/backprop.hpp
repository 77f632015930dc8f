#pragma once
// Exact backpropagation through a llama over a batch of sequences: any loss object
// (nn/loss.hpp: next-token cross-entropy, REINFORCE, a KL penalty to the base, their sums),
// and the gradient of either an adapter's parameters (into its flat gradient span: z or θ
// for SVF, α for mixtures, A and B for LoRA) or, for a dense model, of the dense weights, the
// norms and the token embedding (llama_gradients).
//
//   t2::nn::training_batch batch(sequences);              // B token sequences, packed
//   float loss = t2::nn::forward_backward(ex, model, adapter, batch, t2::nn::reinforce{rewards, mask});
//   t2::nn::training_workspace ws;   // a training loop passes one: its buffers are reused
//   t2::nn::forward_backward(ex, model, adapter, batch, loss, ws);
//   auto grads = t2::nn::make_gradients(dense_model, {.dense_weights = true});
//   t2::nn::forward_backward(ex, dense_model, batch, loss, grads, ws, {.dense_weights = true});
//
// A sequence of N tokens gives N−1 rows: row t reads tokens[t] and predicts tokens[t+1]. The
// rows of the B sequences are stacked in batch order (training_batch: offsets and targets),
// and a loss's per-row weights follow that packing. Gradients accumulate (+=) into `grads`,
// so calls sum; zero them between optimizer steps (adapter_state::zero_gradient).
//
// Each sequence runs from position 0 without a KV cache, through the decoder block of
// llama::forward (nn/decoder_block.hpp) with ops::causal_attention per sequence in place of
// the cached one; every matrix product runs over all R rows of the batch at once.
//
// Memory kept for backward, per row and block, in floats: 6·dim + 2·kv_dim + 3·hidden, plus
// n_heads·T_b² per sequence and block (the attention probabilities); plus 2·vocab per row
// (the logits and their gradient). At stories15M's shape and one sequence of T = 256 that is
// 6.3 MB per block and 66 MB of logits. With recompute = true only each block's input (dim
// floats per row) is kept and a block's other activations are recomputed just before its
// backward: ~1 extra forward pass of compute for n_layers× less activation memory
// (peak_activation_floats gives both).
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "t2/core/tensor.hpp"
#include "t2/nn/decoder_block.hpp"
#include "t2/nn/llama.hpp"
#include "t2/nn/loss.hpp"
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
    // Dense models: gradients of the weights (matrices, RMSNorm weights, token embedding),
    // not only dL/dx. Adapted models train their adapter only.
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
    requires(!adaptable_weight<Weight>)
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

// Floats of activations forward_backward keeps for one sequence of T tokens (inputs).
template <model_config C>
std::size_t peak_activation_floats(const C& c, std::size_t T, bool recompute) {
    const std::size_t per_block = T * (6 * c.dim + 2 * kv_dim(c) + 3 * c.hidden_dim + c.n_heads * T);
    const std::size_t inputs = T * c.dim * c.n_layers;
    const std::size_t logits = 2 * T * c.vocab_size; // and their gradient
    return (recompute ? inputs + per_block : c.n_layers * per_block) + logits;
}

// B token sequences packed for training: sequence b's N_b − 1 rows (inputs and next-token
// targets) at rows offsets[b] … offsets[b+1] − 1.
class training_batch {
public:
    explicit training_batch(std::span<const std::span<const std::int32_t>> sequences) {
        T2_CHECK(!sequences.empty(), "training_batch: no sequences");
        offsets_.push_back(0);
        for (std::size_t b = 0; b < sequences.size(); ++b) {
            const auto s = sequences[b];
            T2_CHECK(s.size() >= 2, "training_batch: sequence ", b, " has ", s.size(),
                     " tokens; it needs at least 2 tokens (an input and its target)");
            inputs_.insert(inputs_.end(), s.begin(), s.end() - 1);
            targets_.insert(targets_.end(), s.begin() + 1, s.end());
            offsets_.push_back(inputs_.size());
        }
    }
    // One sequence.
    explicit training_batch(std::span<const std::int32_t> tokens)
        : training_batch(std::span<const std::span<const std::int32_t>>(&tokens, 1)) {}

    std::size_t sequences() const noexcept { return offsets_.size() - 1; }
    std::size_t rows() const noexcept { return inputs_.size(); }
    std::size_t rows_of(std::size_t b) const noexcept { return offsets_[b + 1] - offsets_[b]; }
    std::span<const std::size_t> offsets() const noexcept { return offsets_; }
    std::span<const std::int32_t> inputs() const noexcept { return inputs_; }
    std::span<const std::int32_t> targets() const noexcept { return targets_; }
    loss_rows loss_rows_view() const noexcept { return {offsets_, targets_}; }

private:
    std::vector<std::size_t> offsets_;
    std::vector<std::int32_t> inputs_, targets_;
};

namespace detail {

// Scratch that a kernel overwrites in full before anything reads it.
inline matrix<float> scratch_matrix(std::size_t rows, std::size_t cols) {
    return matrix<float>(dims<2>(rows, cols), uninitialized);
}

// What a block's backward needs from its forward, for R packed rows; the attention
// probabilities of sequence b are probs[probs_offset(b) …] as [n_heads × T_b × T_b].
struct block_activations {
    matrix<float> x, h1, q, k, v, attended, x_mid, h2, gate, up, act;
    std::vector<std::size_t> probs_at; // B+1 offsets into probs
    vector<float> probs;

    template <model_config C>
    block_activations(const C& c, const training_batch& batch)
        : x(scratch_matrix(batch.rows(), c.dim)), h1(scratch_matrix(batch.rows(), c.dim)),
          q(scratch_matrix(batch.rows(), c.dim)), k(scratch_matrix(batch.rows(), kv_dim(c))),
          v(scratch_matrix(batch.rows(), kv_dim(c))), attended(scratch_matrix(batch.rows(), c.dim)),
          x_mid(scratch_matrix(batch.rows(), c.dim)), h2(scratch_matrix(batch.rows(), c.dim)),
          gate(scratch_matrix(batch.rows(), c.hidden_dim)), up(scratch_matrix(batch.rows(), c.hidden_dim)),
          act(scratch_matrix(batch.rows(), c.hidden_dim)), probs_at(batch.sequences() + 1, 0) {
        for (std::size_t b = 0; b < batch.sequences(); ++b)
            probs_at[b + 1] = probs_at[b] + c.n_heads * batch.rows_of(b) * batch.rows_of(b);
        probs = vector<float>(dims<1>(probs_at.back()), uninitialized);
    }

    // Sequence b's probabilities, [heads × T × T] for its T rows.
    tensor_view<float, dims<3>> probs_of(std::size_t b, std::size_t heads, std::size_t T) {
        return view_of(probs.data() + probs_at[b], heads, T, T);
    }
    tensor_view<const float, dims<3>> probs_of(std::size_t b, std::size_t heads, std::size_t T) const {
        return view_of(probs.data() + probs_at[b], heads, T, T);
    }
};

// Calls f(b, rows of sequence b) for every sequence of the batch.
template <class F>
void for_each_sequence(const training_batch& batch, F&& f) {
    for (std::size_t b = 0; b < batch.sequences(); ++b)
        f(b, batch.offsets()[b], batch.offsets()[b + 1]);
}

// Runs block b on a.x (filled by the caller) and writes its output to out: the decoder
// block of inference, with causal attention over each whole sequence that keeps the
// probabilities for the backward.
template <exec::cpu_executor E, model_config C, weight_policy Weight, class Adapters>
void block_forward(const E& ex, const C& c, const block_weights<Weight>& b, block_activations& a,
                   const training_batch& batch, std::span<const std::size_t> positions, matrix<float>& projected,
                   matrix_view<float> out, const Adapters& adapters, std::span<float> scratch) {
    const nn::block_activations where{a.x.view(),   a.h1.view(),    a.q.view(),  a.k.view(),    a.v.view(),
                                      a.attended.view(), a.x_mid.view(), a.h2.view(), a.gate.view(), a.up.view(),
                                      a.act.view(), projected.view(), out};
    nn::block_forward(ex, c, b, where, positions, [&](const auto& inner, auto q, auto k, auto v, auto attended) {
        for_each_sequence(batch, [&](std::size_t s, std::size_t r0, std::size_t r1) {
            ops::causal_attention(inner, q.rows(r0, r1), k.rows(r0, r1), v.rows(r0, r1), attended.rows(r0, r1),
                                  a.probs_of(s, c.n_heads, r1 - r0), c.n_heads, c.n_kv_heads, scratch);
        });
    }, adapters);
}

// Intermediates of a block's backward, overwritten before they are read; `kernels` is the
// scratch of the attention and RMSNorm kernels (sized by forward_backward for its executor).
struct backward_scratch {
    matrix<float> d_act, d_gate, d_up, d_h, d_part, d_attended, dq, dk, dv;
    std::vector<float> kernels;

    template <model_config C>
    backward_scratch(const C& c, std::size_t R)
        : d_act(scratch_matrix(R, c.hidden_dim)), d_gate(scratch_matrix(R, c.hidden_dim)),
          d_up(scratch_matrix(R, c.hidden_dim)), d_h(scratch_matrix(R, c.dim)), d_part(scratch_matrix(R, c.dim)),
          d_attended(scratch_matrix(R, c.dim)), dq(scratch_matrix(R, c.dim)), dk(scratch_matrix(R, kv_dim(c))),
          dv(scratch_matrix(R, kv_dim(c))) {}
};

// dx: dL/d(block output) on entry, dL/d(block input) on return. matrix_backward(p, x, dy,
// dx) runs projection p's backward (and accumulates its gradient, if any); the norms'
// gradients go to d_attention_norm and d_mlp_norm unless they are empty.
template <exec::cpu_executor E, model_config C, weight_policy Weight, class MatrixBackward>
void block_backward(const E& ex, const C& c, const block_weights<Weight>& b, const block_activations& a,
                    const training_batch& batch, backward_scratch& s, matrix_view<float> dx,
                    vector_view<float> d_attention_norm, vector_view<float> d_mlp_norm,
                    MatrixBackward&& matrix_backward) {
    // Named references, not a structured binding: Clang 14 cannot capture one in a lambda.
    matrix<float> &d_act = s.d_act, &d_gate = s.d_gate, &d_up = s.d_up, &d_h = s.d_h, &d_part = s.d_part;
    matrix<float> &d_attended = s.d_attended, &dq = s.dq, &dk = s.dk, &dv = s.dv;
    const std::span<float> kernels(s.kernels);
    // MLP: x_next = x_mid + w2(swiglu(w1 h2, w3 h2)), h2 = rmsnorm(x_mid).
    matrix_backward(projection::w2, a.act.view(), dx, d_act.view());
    ops::swiglu_backward(ex, a.gate.flat(), a.up.flat(), d_act.flat(), d_gate.flat(), d_up.flat());
    matrix_backward(projection::w1, a.h2.view(), d_gate.view(), d_h.view());
    matrix_backward(projection::w3, a.h2.view(), d_up.view(), d_part.view());
    ops::add(ex, d_h.flat(), d_part.flat(), d_h.flat());
    ops::rmsnorm_backward(ex, a.x_mid.view(), b.mlp_norm, d_h.view(), d_part.view(), d_mlp_norm, c.norm_eps,
                          kernels);
    ops::add(ex, dx.flat(), d_part.flat(), dx.flat()); // dL/dx_mid
    // Attention: x_mid = x + wo(attention(rope(wq h1), rope(wk h1), wv h1)), h1 = rmsnorm(x).
    matrix_backward(projection::wo, a.attended.view(), dx, d_attended.view());
    const ops::rope_config rope{head_dim(c), c.rope_theta, c.rope_layout};
    for_each_sequence(batch, [&](std::size_t s, std::size_t r0, std::size_t r1) {
        ops::causal_attention_backward(ex, a.q.rows(r0, r1), a.k.rows(r0, r1), a.v.rows(r0, r1), a.probs_of(s, c.n_heads, r1 - r0),
                                       d_attended.rows(r0, r1), dq.rows(r0, r1), dk.rows(r0, r1), dv.rows(r0, r1),
                                       c.n_heads, c.n_kv_heads, kernels);
        ops::rope_backward(ex, dq.rows(r0, r1), 0, rope);
        ops::rope_backward(ex, dk.rows(r0, r1), 0, rope);
    });
    matrix_backward(projection::wq, a.h1.view(), dq.view(), d_h.view());
    matrix_backward(projection::wk, a.h1.view(), dk.view(), d_part.view());
    ops::add(ex, d_h.flat(), d_part.flat(), d_h.flat());
    matrix_backward(projection::wv, a.h1.view(), dv.view(), d_part.view());
    ops::add(ex, d_h.flat(), d_part.flat(), d_h.flat());
    ops::rmsnorm_backward(ex, a.x.view(), b.attention_norm, d_h.view(), d_part.view(), d_attention_norm, c.norm_eps,
                          kernels);
    ops::add(ex, dx.flat(), d_part.flat(), dx.flat());
}

template <model_config C>
void check_batch(const C& c, const training_batch& batch) {
    for (std::size_t b = 0; b < batch.sequences(); ++b)
        T2_CHECK(batch.rows_of(b) <= c.seq_len, "forward_backward: sequence ", b, " has ", batch.rows_of(b),
                 " input positions, more than the model's context of ", c.seq_len);
    for (const std::int32_t token : batch.inputs())
        T2_CHECK(token >= 0 && static_cast<std::size_t>(token) < c.vocab_size, "forward_backward: token id ",
                 token, " is outside the vocabulary of ", c.vocab_size);
}

// Every row's position: each sequence runs from position 0.
inline std::vector<std::size_t> positions_from_0(const training_batch& batch) {
    std::vector<std::size_t> positions;
    for_each_sequence(batch, [&](std::size_t, std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r)
            positions.push_back(r - r0);
    });
    return positions;
}

inline void check_mask(std::span<const std::int32_t> tokens, std::span<const float> mask) {
    T2_CHECK(mask.empty() || tokens.size() < 2 || mask.size() == tokens.size() - 1, "forward_backward: the loss mask has ",
             mask.size(), " weights for ", tokens.size() - 1, " predictions (one per token after the first)");
}

} // namespace detail

// The logits of every row of the batch [R × vocab] (each sequence from position 0), by the
// inference forward with `adapter` (nullptr: the base): what a loss reads, e.g. the base
// model's logits for kl_to_base.
template <exec::cpu_executor E, model_config C, weight_policy Weight>
matrix<float> batch_logits(const E& ex, const llama<C, Weight>& model, const training_batch& batch,
                           const adapter_of_t<Weight>* adapter = nullptr) {
    detail::check_batch(model.config(), batch);
    std::vector<llama_state> states;
    std::vector<sequence_step> steps;
    states.reserve(batch.sequences());
    for (std::size_t b = 0; b < batch.sequences(); ++b) {
        states.push_back(model.make_state(batch.rows_of(b)));
        steps.push_back({&states.back(), batch.inputs().subspan(batch.offsets()[b], batch.rows_of(b))});
    }
    decoder_workspace ws;
    const auto logits = model.forward(ex, std::span<const sequence_step>(steps), ws, logits_for::all, adapter);
    matrix<float> copy(dims<2>(logits.extent(0), logits.extent(1)), uninitialized);
    std::copy(logits.data(), logits.data() + logits.size(), copy.data());
    return copy;
}

// The loss of forward_backward without the backward: for evaluation and forward-only
// gradient estimates.
template <exec::cpu_executor E, model_config C, weight_policy Weight, class Loss>
    requires loss_function<Loss, E>
float batch_loss(const E& ex, const llama<C, Weight>& model, const training_batch& batch, const Loss& loss,
                 const adapter_of_t<Weight>* adapter = nullptr) {
    const matrix<float> logits = batch_logits(ex, model, batch, adapter);
    return loss(ex, batch.loss_rows_view(), logits.view(), matrix_view<float>());
}

// Next-token cross-entropy of one sequence (mask: one weight per prediction, empty = all).
template <exec::cpu_executor E, model_config C, weight_policy Weight>
float sequence_loss(const E& ex, const llama<C, Weight>& model, std::span<const std::int32_t> tokens,
                    std::span<const float> mask = {}, const adapter_of_t<Weight>* adapter = nullptr) {
    detail::check_mask(tokens, mask);
    return batch_loss(ex, model, training_batch(tokens), next_token_cross_entropy{mask}, adapter);
}

class training_workspace;

namespace detail {

template <exec::cpu_executor E, model_config C, weight_policy Weight, class Loss>
float forward_backward(const E& ex, const llama<C, Weight>& model, adapter_of_t<Weight>* adapter,
                       const training_batch& batch, const Loss& loss, llama_gradients<Weight>* grads,
                       training_workspace& ws, const backprop_options& options);

} // namespace detail

// Every buffer of forward_backward, kept between calls: a training step on a batch of the
// shape before (the same sequence lengths, the same recompute option) reuses them, so it
// neither allocates these buffers nor faults their pages in again — on a virtual machine
// the page faults of a fresh step's 100 MB cost more than its arithmetic.
class training_workspace {
public:
    training_workspace() = default;

private:
    template <exec::cpu_executor E, model_config C, weight_policy W, class L>
    friend float detail::forward_backward(const E&, const llama<C, W>&, adapter_of_t<W>*, const training_batch&,
                                          const L&, llama_gradients<W>*, training_workspace&, const backprop_options&);

    template <model_config C>
    void fit(const C& c, const training_batch& batch, bool recompute) {
        const std::size_t R = batch.rows(), L = c.n_layers;
        const auto offsets = batch.offsets();
        if (recompute == recompute_ && dims_ == std::array{c.dim, c.hidden_dim, kv_dim(c), c.vocab_size, L} &&
            std::equal(offsets.begin(), offsets.end(), offsets_.begin(), offsets_.end()))
            return;
        *this = training_workspace(); // free first: the peak is the new size, not both
        kept.reserve(recompute ? 1 : L);
        for (std::size_t l = 0; l < (recompute ? 1 : L); ++l)
            kept.emplace_back(c, batch);
        if (recompute)
            for (std::size_t l = 0; l < L; ++l)
                block_inputs.push_back(detail::scratch_matrix(R, c.dim));
        x = detail::scratch_matrix(R, c.dim);
        projected = detail::scratch_matrix(R, c.dim);
        normed = detail::scratch_matrix(R, c.dim);
        d_normed = detail::scratch_matrix(R, c.dim);
        dx = detail::scratch_matrix(R, c.dim);
        logits = detail::scratch_matrix(R, c.vocab_size);
        dlogits = detail::scratch_matrix(R, c.vocab_size);
        backward.emplace(c, R);
        positions = detail::positions_from_0(batch);
        offsets_.assign(offsets.begin(), offsets.end());
        dims_ = {c.dim, c.hidden_dim, kv_dim(c), c.vocab_size, L};
        recompute_ = recompute;
    }

    std::vector<detail::block_activations> kept; // every block's, or one reused with recompute
    std::vector<matrix<float>> block_inputs;     // with recompute
    matrix<float> x, projected, normed, d_normed, dx, logits, dlogits;
    std::optional<detail::backward_scratch> backward;
    std::vector<float> adapter_scratch; // the weight policies' (grown, never shrunk)
    std::vector<std::size_t> positions;
    std::vector<std::size_t> offsets_;
    std::array<std::size_t, 5> dims_{};
    bool recompute_ = false;
};

namespace detail {

// One forward and backward over the batch: the adapter's gradient accumulates (adapted
// models), or grads' (dense models).
template <exec::cpu_executor E, model_config C, weight_policy Weight, class Loss>
float forward_backward(const E& ex, const llama<C, Weight>& model, adapter_of_t<Weight>* adapter,
                       const training_batch& batch, const Loss& loss, llama_gradients<Weight>* grads,
                       training_workspace& ws, const backprop_options& options) {
    const C& c = model.config();
    const llama_weights<Weight>& w = model.weights();
    check_batch(c, batch);
    const std::size_t L = c.n_layers, R = batch.rows();
    if constexpr (adaptable_weight<Weight>) {
        T2_CHECK(adapter->base() == w.owner.get() && adapter->layers() == L,
                 "forward_backward: the adapter was made for another model");
    } else {
        T2_CHECK(grads->blocks.size() == L, "forward_backward: gradients for ", grads->blocks.size(),
                 " blocks, the model has ", L, " (use make_gradients)");
    }
    ws.fit(c, batch, options.recompute);
    auto& x = ws.x;
    std::size_t kernel_floats = R; // rmsnorm_backward's
    for (std::size_t b = 0; b < batch.sequences(); ++b)
        kernel_floats = std::max({kernel_floats,
                                  ops::causal_attention_scratch(ex, batch.rows_of(b), c.n_heads, head_dim(c)),
                                  ops::causal_attention_backward_scratch(ex, batch.rows_of(b), c.n_heads, head_dim(c))});
    if (ws.backward->kernels.size() < kernel_floats)
        ws.backward->kernels.resize(kernel_floats);

    // The adapter's matrix states, one group of all R rows each, and the policies' scratch.
    const auto adapters_of_layer = [&](std::size_t l, auto& rows) {
        if constexpr (adaptable_weight<Weight>) {
            block_adapters<typename Weight::state> a{{}, std::span<float>(ws.adapter_scratch)};
            for (std::size_t p = 0; p < all_projections.size(); ++p) {
                rows[p] = {0, R, &adapter->matrix(l, p)};
                a.rows[p] = std::span(&rows[p], 1);
            }
            return a;
        } else {
            return no_block_adapters{};
        }
    };
    if constexpr (adaptable_weight<Weight>) {
        std::size_t most = 0;
        for (std::size_t l = 0; l < L; ++l)
            for (const projection p : all_projections) {
                const auto& policy = projection_of(w.blocks[l], p).weight();
                const auto& state = adapter->matrix(l, static_cast<std::size_t>(p));
                most = std::max({most, policy.scratch_floats(R, state), policy.backward_scratch_floats(R, state)});
            }
        if (ws.adapter_scratch.size() < most)
            ws.adapter_scratch.resize(most);
    }
    std::array<adapter_rows<matrix_state_of_t<Weight>>, all_projections.size()> layer_rows{};

    // Forward, keeping every block's activations (or only its input).
    ops::embedding(ex, w.token_embedding, batch.inputs(), x.view());
    const auto run_block = [&](std::size_t l, block_activations& a) {
        block_forward(ex, c, w.blocks[l], a, batch, ws.positions, ws.projected, x.view(),
                      adapters_of_layer(l, layer_rows), std::span<float>(ws.backward->kernels));
    };
    for (std::size_t l = 0; l < L; ++l) {
        if (options.recompute)
            std::copy(x.data(), x.data() + x.size(), ws.block_inputs[l].data());
        block_activations& a = ws.kept[options.recompute ? 0 : l];
        std::copy(x.data(), x.data() + x.size(), a.x.data());
        run_block(l, a);
    }
    ops::rmsnorm(ex, x.view(), w.final_norm, ws.normed.view(), c.norm_eps);
    w.classifier(ex, ws.normed.view(), ws.logits.view());
    std::fill(ws.dlogits.data(), ws.dlogits.data() + ws.dlogits.size(), 0.f); // losses add their gradients
    const float value = loss(ex, batch.loss_rows_view(), ws.logits.view(), ws.dlogits.view());

    // Backward. A tied classifier's weight is the embedding: its gradient accumulates into
    // the embedding's, lent to the classifier's gradient for the call.
    const auto normed = ws.normed.view();
    const auto dlogits = ws.dlogits.view();
    const auto d_normed = ws.d_normed.view();
    if constexpr (adaptable_weight<Weight>) {
        w.classifier.backward(ex, normed, dlogits, d_normed, static_cast<typename Weight::state*>(nullptr),
                              std::span<float>());
    } else if (c.shared_classifier) {
        auto tied = w.classifier.weight().make_gradient();
        std::swap(tied.weight, grads->token_embedding);
        try {
            w.classifier.backward(ex, normed, dlogits, d_normed, tied);
        } catch (...) {
            std::swap(tied.weight, grads->token_embedding);
            throw;
        }
        std::swap(tied.weight, grads->token_embedding);
    } else {
        w.classifier.backward(ex, normed, dlogits, d_normed, grads->classifier);
    }
    vector_view<float> d_final_norm, d_attention_norm, d_mlp_norm; // empty: not wanted
    if constexpr (!adaptable_weight<Weight>)
        d_final_norm = grads->final_norm.view();
    ops::rmsnorm_backward(ex, x.view(), w.final_norm, d_normed, ws.dx.view(), d_final_norm, c.norm_eps,
                          std::span<float>(ws.backward->kernels));
    for (std::size_t l = L; l-- > 0;) {
        block_activations& a = ws.kept[options.recompute ? 0 : l];
        if (options.recompute) {
            std::copy(ws.block_inputs[l].data(), ws.block_inputs[l].data() + ws.block_inputs[l].size(), a.x.data());
            run_block(l, a); // x is scratch here
        }
        const auto matrix_backward = [&](projection p, matrix_view<const float> in, matrix_view<const float> dy,
                                         matrix_view<float> d_in) {
            if constexpr (adaptable_weight<Weight>)
                projection_of(w.blocks[l], p).backward(ex, in, dy, d_in, &adapter->matrix(l, std::size_t(p)),
                                                       std::span<float>(ws.adapter_scratch));
            else
                projection_of(w.blocks[l], p).backward(ex, in, dy, d_in, projection_of(grads->blocks[l], p));
        };
        if constexpr (!adaptable_weight<Weight>) {
            d_attention_norm = grads->blocks[l].attention_norm.view();
            d_mlp_norm = grads->blocks[l].mlp_norm.view();
        }
        block_backward(ex, c, w.blocks[l], a, batch, *ws.backward, ws.dx.view(), d_attention_norm, d_mlp_norm,
                       matrix_backward);
    }
    if constexpr (!adaptable_weight<Weight>)
        if (grads->token_embedding.size() != 0)
            ops::embedding_backward(ex, batch.inputs(), ws.dx.view(), grads->token_embedding.view());
    return value;
}

} // namespace detail

// A dense model: grads accumulate (the weights' with options.dense_weights).
template <exec::cpu_executor E, model_config C, weight_policy Weight, class Loss>
    requires loss_function<Loss, E> && (!adaptable_weight<Weight>)
float forward_backward(const E& ex, const llama<C, Weight>& model, const training_batch& batch, const Loss& loss,
                       llama_gradients<Weight>& grads, training_workspace& ws, const backprop_options& options = {}) {
    return detail::forward_backward(ex, model, nullptr, batch, loss, &grads, ws, options);
}

template <exec::cpu_executor E, model_config C, weight_policy Weight, class Loss>
    requires loss_function<Loss, E> && (!adaptable_weight<Weight>)
float forward_backward(const E& ex, const llama<C, Weight>& model, const training_batch& batch, const Loss& loss,
                       llama_gradients<Weight>& grads, const backprop_options& options = {}) {
    training_workspace ws;
    return forward_backward(ex, model, batch, loss, grads, ws, options);
}

// An adapted model: runs with `adapter`, whose gradient span accumulates dL/d(parameters).
template <exec::cpu_executor E, model_config C, adaptable_weight Weight, class Loss>
    requires loss_function<Loss, E>
float forward_backward(const E& ex, const llama<C, Weight>& model, adapter_state<Weight>& adapter,
                       const training_batch& batch, const Loss& loss, training_workspace& ws,
                       const backprop_options& options = {}) {
    T2_CHECK(!options.dense_weights, "forward_backward: an adapted model trains its adapter, not dense weights");
    llama_gradients<Weight>* none = nullptr;
    return detail::forward_backward(ex, model, &adapter, batch, loss, none, ws, options);
}

template <exec::cpu_executor E, model_config C, adaptable_weight Weight, class Loss>
    requires loss_function<Loss, E>
float forward_backward(const E& ex, const llama<C, Weight>& model, adapter_state<Weight>& adapter,
                       const training_batch& batch, const Loss& loss, const backprop_options& options = {}) {
    training_workspace ws;
    return forward_backward(ex, model, adapter, batch, loss, ws, options);
}

// One sequence with next-token cross-entropy: mask[N−1] weighs the predictions (0 leaves one
// out, e.g. the prompt's tokens in supervised fine-tuning; empty counts all); the loss is
// their weighted mean (ops::cross_entropy).
template <exec::cpu_executor E, model_config C, weight_policy Weight>
    requires(!adaptable_weight<Weight>)
float forward_backward(const E& ex, const llama<C, Weight>& model, std::span<const std::int32_t> tokens,
                       std::span<const float> mask, llama_gradients<Weight>& grads,
                       const backprop_options& options = {}) {
    detail::check_mask(tokens, mask);
    return forward_backward(ex, model, training_batch(tokens), next_token_cross_entropy{mask}, grads, options);
}

template <exec::cpu_executor E, model_config C, adaptable_weight Weight>
float forward_backward(const E& ex, const llama<C, Weight>& model, adapter_state<Weight>& adapter,
                       std::span<const std::int32_t> tokens, std::span<const float> mask = {},
                       const backprop_options& options = {}) {
    detail::check_mask(tokens, mask);
    return forward_backward(ex, model, adapter, training_batch(tokens), next_token_cross_entropy{mask}, options);
}

} // namespace nn
T2_NAMESPACE_END
