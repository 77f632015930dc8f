#pragma once
// Kullback–Leibler divergence between the softmax of two logit matrices, per row, with its
// gradient with respect to the second (the adapted model's logits) in the same pass.
//
//   base_logits[T × V], logits[T × V], weights[T] (optional, empty = all 1), direction
//   p = softmax(base_logits[t]), q = softmax(logits[t]), d = log q − log p   (per row, [V])
//   base_to_adapted (default):  KL_t = KL(p ‖ q) = Σ_v p_v (log p_v − log q_v) = −Σ_v p_v d_v
//                               dKL_t/dlogits[t] = q − p
//   adapted_to_base:            KL_t = KL(q ‖ p) = Σ_v q_v (log q_v − log p_v) =  Σ_v q_v d_v
//                               dKL_t/dlogits[t] = q ⊙ (d − KL_t)
//   loss     = Σ_t w_t · KL_t / divisor
//   dlogits += w_t / divisor · dKL_t/dlogits[t]                       [T × V], accumulated
//
// Two directions because the sources disagree: the Transformer² reference code penalizes
// KL(p_base ‖ q) (the base distribution weighs the log-ratio), the paper writes KL(q ‖ p_base)
// (the adapted policy's own expectation, as in RL fine-tuning's KL penalty). Both are exact
// here; the default follows the code, which is what reproducing its results needs.
//
// Weights are finite and of any sign; w_t = 0 leaves row t out (neither row is read). The
// divisor (default 1: the plain sum) normalizes value and gradient in one place, as
// signed_cross_entropy's does. Returns double: a sum that callers add to other terms.
//
// Numerically stable: each row's maximum is subtracted before exp (cross_entropy.hpp's
// detail::exp_sum, so the sums of exponentials are in double or in f32 blocks added in
// double); log p and log q are formed as logits − log-sum-exp, never as the log of a rounded
// probability, so a probability that underflows to 0 leaves a finite log-ratio and adds
// nothing. The log-ratios, the per-row divergences and their sum are in double, each row's
// kept and the rows summed in row order: the same result for every thread count. Identical
// rows (the adapter at its start) give exactly KL = 0 and a zero gradient.
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include "t2/core/tensor.hpp"
#include "t2/exec/executor.hpp"
#include "t2/ops/cross_entropy.hpp"
#include "t2/ops/detail/kernel_support.hpp"
#include "t2/ops/detail/parallel.hpp"

T2_NAMESPACE_BEGIN
namespace ops {

enum class kl_direction {
    base_to_adapted, // KL(p_base ‖ q): what the Transformer² reference code computes
    adapted_to_base  // KL(q ‖ p_base): what the paper writes
};

// Returns Σ_t w_t·KL_t / divisor and adds w_t / divisor · dKL_t/dlogits[t] to dlogits unless
// it is an empty view (forward only). dlogits must not share memory with either input.
template <exec::cpu_executor E>
double kl_divergence(const E& ex, matrix_view<const float> base_logits,
                     matrix_view<const float> logits, std::span<const float> weights = {},
                     matrix_view<float> dlogits = {},
                     kl_direction direction = kl_direction::base_to_adapted, double divisor = 1) {
    constexpr const char* op = "kl_divergence";
    const std::size_t T = logits.extent(0), V = logits.extent(1);
    detail::check_same_shape(op, "base_logits", base_logits, "logits", logits);
    T2_CHECK(weights.empty() || weights.size() == T, op, ": logits are ", logits.shape(),
             " but there are ", weights.size(), " weights; give one per row, or none");
    T2_CHECK(V > 0, op, ": logits are ", logits.shape(), "; they need at least one class");
    T2_CHECK(std::isfinite(divisor) && divisor > 0, op, ": divisor ", divisor,
             "; it must be finite and > 0 (1 for the plain sum)");
    const bool gradient = !dlogits.empty();
    if (gradient) {
        detail::check_same_shape(op, "logits", logits, "dlogits", dlogits);
        detail::check_disjoint(op, "logits", logits, "dlogits", dlogits);
        detail::check_disjoint(op, "base_logits", base_logits, "dlogits", dlogits);
    }
    for (std::size_t t = 0; t < weights.size(); ++t)
        T2_CHECK(std::isfinite(weights[t]), op, ": weight ", weights[t], " at position ", t,
                 "; weights must be finite (0 leaves the position out)");

    const bool forward_kl = direction == kl_direction::base_to_adapted;
    // Per-thread buffers (detail::thread_buffer): no allocation after the first call of a
    // shape. The row losses live on the calling thread and are summed in order.
    struct row_losses;
    struct exponentials;
    const std::span<double> row_loss = detail::thread_buffer<row_losses, double>(T);
    detail::for_row_ranges(ex, T, V, detail::compute_grain, [&](std::size_t r0, std::size_t r1) {
        // The rows' exponentials, exp(x − max), one row of each.
        float* ep = detail::thread_buffer<exponentials, float>(2 * V).data();
        float* eq = ep + V;
        for (std::size_t t = r0; t < r1; ++t) {
            const double w = weights.empty() ? 1.0 : weights[t];
            row_loss[t] = 0;
            if (w == 0)
                continue;
            const float* b = base_logits.data() + t * V;
            const float* a = logits.data() + t * V;
            const auto sp = detail::exp_sum(ex, b, ep, V);
            const auto sq = detail::exp_sum(ex, a, eq, V);
            // d_v = log q_v − log p_v = (a_v − b_v) − shift.
            const double shift = (static_cast<double>(sq.max) + std::log(sq.sum)) -
                                 (static_cast<double>(sp.max) + std::log(sp.sum));
            const double inv_p = 1 / sp.sum, inv_q = 1 / sq.sum;
            double kl = 0;
            for (std::size_t v = 0; v < V; ++v) {
                const double d = (static_cast<double>(a[v]) - b[v]) - shift;
                kl += forward_kl ? -(ep[v] * inv_p) * d : (eq[v] * inv_q) * d;
            }
            row_loss[t] = w * kl;
            if (!gradient)
                continue;
            float* dx = dlogits.data() + t * V;
            const double g = w / divisor;
            if (forward_kl)
                for (std::size_t v = 0; v < V; ++v)
                    dx[v] += static_cast<float>(g * (eq[v] * inv_q - ep[v] * inv_p));
            else
                for (std::size_t v = 0; v < V; ++v) {
                    const double d = (static_cast<double>(a[v]) - b[v]) - shift;
                    dx[v] += static_cast<float>(g * (eq[v] * inv_q) * (d - kl));
                }
        }
    });
    double total = 0;
    for (std::size_t t = 0; t < T; ++t)
        total += row_loss[t];
    return total / divisor;
}

} // namespace ops
T2_NAMESPACE_END
