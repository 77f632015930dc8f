#pragma once
// Losses as objects: what turns a packed batch's logits into a value and dL/dlogits.
//
//   logits[R × V]: the rows of B sequences of different lengths stacked; sequence b owns
//   rows [offsets[b], offsets[b+1]), and row r predicts targets[r].
//
//   template <exec::cpu_executor E>
//   float operator()(const E& ex, const loss_rows& rows, matrix_view<const float> logits,
//                    matrix_view<float> dlogits) const;
//
// returns the loss and ADDS dL/dlogits to dlogits (an empty view: the value only), so a
// sum of losses is each term called in turn on the same dlogits, and backpropagation zeroes
// dlogits once and calls whatever loss it was given (DESIGN.md, "Losses are objects").
//
// What lives where: the row arithmetic — log-softmax, cross-entropy with signed weights,
// KL divergence, each over every executor, numerically stable — is a kernel in ops/
// (ops/cross_entropy.hpp, ops/kl_divergence.hpp), knowing nothing of sequences. A loss object
// here knows the batch: which rows form a sequence, a sequence's reward, how the terms are
// normalized; it turns that into one weight per row and a divisor, and checks the packing.
// Loss objects hold spans and views only (the caller's data; nothing is copied or owned), so
// they are cheap to build per step and to combine.
//
//   next_token_cross_entropy{weights}       Σ_r w_r·ce_r / Σ_r w_r   (ops::cross_entropy's
//                                           mean, bit for bit; 0 when nothing counts)
//   reinforce{rewards, mask}                (1/B)·Σ_b r_b·Σ_{r in b} mask_r·ce_r
//   kl_to_base{base_logits, coefficient, weights, direction}
//                                           coefficient·Σ_r w_r·KL_r
//   losses(a, b, ...)                       a + b + ...
//
// with ce_r = −log softmax(logits[r])[targets[r]].
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/core/tensor.hpp"
#include "t2/exec/executor.hpp"
#include "t2/exec/scalar.hpp"
#include "t2/ops/cross_entropy.hpp"
#include "t2/ops/kl_divergence.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

// The rows of a packed batch.
struct loss_rows {
    std::span<const std::size_t> offsets = {};  // B+1 row offsets: sequence b owns rows [offsets[b], offsets[b+1])
    std::span<const std::int32_t> targets = {}; // R: the token each row predicts

    std::size_t sequences() const noexcept { return offsets.empty() ? 0 : offsets.size() - 1; }
};

// A loss over a packed batch, callable on executor E (exec::scalar when none is named).
template <class L, class E = exec::scalar>
concept loss_function =
    exec::cpu_executor<E> && requires(const L& loss, const E& ex, const loss_rows& rows,
                                      matrix_view<const float> logits, matrix_view<float> dlogits) {
        { loss(ex, rows, logits, dlogits) } -> std::convertible_to<float>;
    };

namespace detail {

// offsets: 0 = offsets[0] <= offsets[1] <= ... <= offsets[B] = R; R targets; R logits rows;
// dlogits empty or the logits' shape.
inline void check_loss_rows(const char* loss, const loss_rows& rows, matrix_view<const float> logits,
                            matrix_view<float> dlogits) {
    const std::size_t R = logits.extent(0);
    T2_CHECK(!rows.offsets.empty() && rows.offsets.front() == 0, loss,
             ": row offsets must start with 0 (B+1 offsets for B sequences)");
    for (std::size_t b = 1; b < rows.offsets.size(); ++b)
        T2_CHECK(rows.offsets[b - 1] <= rows.offsets[b], loss, ": row offsets ", rows.offsets[b - 1],
                 " then ", rows.offsets[b], " at sequence ", b - 1, "; offsets must not decrease");
    T2_CHECK(rows.offsets.back() == R, loss, ": the row offsets end at ", rows.offsets.back(),
             " but the logits are ", logits.shape(), "; the last offset is the row count");
    T2_CHECK(rows.targets.size() == R, loss, ": ", rows.targets.size(), " targets for logits ",
             logits.shape(), "; give one per row");
    T2_CHECK(dlogits.empty() || dlogits.shape() == logits.shape(), loss, ": dlogits are ",
             dlogits.shape(), " but the logits are ", logits.shape(), "; give the same shape, or none");
}

inline void check_row_weights(const char* loss, const char* what, std::span<const float> w,
                              std::size_t R) {
    T2_CHECK(w.empty() || w.size() == R, loss, ": ", w.size(), " ", what, " for ", R,
             " rows; give one per row, or none");
}

} // namespace detail

// The weighted mean next-token cross-entropy, Σ_r w_r·ce_r / Σ_r w_r, with weights >= 0
// (empty: all 1; 0 leaves a row out, its target unread). Exactly ops::cross_entropy's value
// and gradient (added rather than written); 0 and no gradient when no row counts.
struct next_token_cross_entropy {
    std::span<const float> weights = {}; // R, >= 0, empty = all 1

    template <exec::cpu_executor E>
    float operator()(const E& ex, const loss_rows& rows, matrix_view<const float> logits,
                     matrix_view<float> dlogits) const {
        constexpr const char* loss = "next_token_cross_entropy";
        detail::check_loss_rows(loss, rows, logits, dlogits);
        const std::size_t R = logits.extent(0);
        detail::check_row_weights(loss, "weights", weights, R);
        double weight_sum = 0; // in row order, as ops::cross_entropy sums it
        for (std::size_t r = 0; r < R; ++r) {
            const float w = weights.empty() ? 1.f : weights[r];
            T2_CHECK(std::isfinite(w) && w >= 0.f, loss, ": weight ", w, " at row ", r,
                     "; weights must be finite and >= 0 (0 leaves the row out)");
            weight_sum += w;
        }
        if (weight_sum == 0)
            return 0.f;
        return static_cast<float>(
            ops::signed_cross_entropy(ex, logits, rows.targets, weights, dlogits, weight_sum));
    }
};

// REINFORCE as the Transformer² reference computes it: L = (1/B)·Σ_b r_b·Σ_{r in b} mask_r·ce_r,
// i.e. −Σ log π(y_r)·r_b summed over each sequence's answer rows, averaged over the B
// sequences. No baseline and no length normalization; rewards of any sign (+1 / −1 for
// right / wrong answers). mask: which rows are answer tokens (0/1, or weights; empty: all).
struct reinforce {
    std::span<const float> rewards = {}; // B
    std::span<const float> mask = {};    // R, empty = all rows

    template <exec::cpu_executor E>
    float operator()(const E& ex, const loss_rows& rows, matrix_view<const float> logits,
                     matrix_view<float> dlogits) const {
        constexpr const char* loss = "reinforce";
        detail::check_loss_rows(loss, rows, logits, dlogits);
        const std::size_t R = logits.extent(0), B = rows.sequences();
        T2_CHECK(rewards.size() == B, loss, ": ", rewards.size(), " rewards for ", B,
                 " sequences; give one per sequence");
        detail::check_row_weights(loss, "mask weights", mask, R);
        if (B == 0)
            return 0.f;
        // One weight per row: its sequence's reward times its mask (signed_cross_entropy
        // refuses a non-finite one, naming the row).
        struct row_weights;
        const std::span<float> weights = ops::detail::thread_buffer<row_weights, float>(R); // no allocation per step
        for (std::size_t b = 0; b < B; ++b) {
            T2_CHECK(std::isfinite(rewards[b]), loss, ": reward ", rewards[b], " of sequence ", b,
                     "; rewards must be finite");
            for (std::size_t r = rows.offsets[b]; r < rows.offsets[b + 1]; ++r)
                weights[r] = mask.empty() ? rewards[b] : rewards[b] * mask[r];
        }
        return static_cast<float>(ops::signed_cross_entropy(ex, logits, rows.targets, weights, dlogits,
                                                             static_cast<double>(B)));
    }
};

// A penalty on drifting from the base model: coefficient·Σ_r w_r·KL_r, KL_r between the
// softmax of the base model's logits and the adapted model's on row r, in the direction
// given (ops/kl_divergence.hpp says which is which). Summed over rows and vocabulary, not
// averaged. base_logits: the base model's logits for the same packed rows.
struct kl_to_base {
    matrix_view<const float> base_logits = {}; // R × V, the same packing as the logits
    float coefficient = 1.f;                   // >= 0; 0 turns the penalty off
    std::span<const float> weights = {};       // R, empty = all 1
    ops::kl_direction direction = ops::kl_direction::base_to_adapted;

    template <exec::cpu_executor E>
    float operator()(const E& ex, const loss_rows& rows, matrix_view<const float> logits,
                     matrix_view<float> dlogits) const {
        constexpr const char* loss = "kl_to_base";
        detail::check_loss_rows(loss, rows, logits, dlogits);
        T2_CHECK(base_logits.shape() == logits.shape(), loss, ": base logits are ", base_logits.shape(),
                 " but the logits are ", logits.shape(), "; give the base model's logits for the same rows");
        detail::check_row_weights(loss, "weights", weights, logits.extent(0));
        T2_CHECK(std::isfinite(coefficient) && coefficient >= 0.f, loss, ": coefficient ", coefficient,
                 "; it must be finite and >= 0 (0 turns the penalty off)");
        if (coefficient == 0.f)
            return 0.f;
        return static_cast<float>(ops::kl_divergence(ex, base_logits, logits, weights, dlogits, direction,
                                                     1.0 / static_cast<double>(coefficient)));
    }
};

// The sum of losses: the values add, the gradients accumulate (each term in order).
template <class... Losses>
struct loss_sum {
    std::tuple<Losses...> terms;

    template <exec::cpu_executor E>
    float operator()(const E& ex, const loss_rows& rows, matrix_view<const float> logits,
                     matrix_view<float> dlogits) const {
        double total = 0;
        std::apply([&](const auto&... term) { ((total += term(ex, rows, logits, dlogits)), ...); }, terms);
        return static_cast<float>(total);
    }
};

// losses(a, b, ...): a loss_sum holding copies of the terms (which are views).
template <class... Losses>
    requires(loss_function<std::decay_t<Losses>> && ...)
loss_sum<std::decay_t<Losses>...> losses(Losses&&... terms) {
    return {{std::forward<Losses>(terms)...}};
}

} // namespace nn
T2_NAMESPACE_END
