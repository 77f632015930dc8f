#pragma once
// Softmax cross-entropy of next-token targets, with its gradient in the same pass.
//
//   logits[T × V], targets[T] (class ids), weights[T] (optional)
//   ce_t = log Σ_v exp(logits[t, v]) − logits[t, targets[t]]          (= −log softmax[target])
//
// cross_entropy: the mean over the counted positions, weights >= 0; dlogits OVERWRITTEN.
//   loss     = Σ_t w_t · ce_t / Σ_t w_t
//   dlogits  = w_t / Σ w · (softmax(logits[t]) − onehot(targets[t]))    [T × V]
//   w_t = 0 leaves position t out (its target is then not read, so padding may hold any id,
//   PyTorch's ignore_index among them) and fractional weights weigh positions; no weights
//   count every position once. When no position counts (T = 0, or all weights 0) there is
//   nothing to average: the loss is 0 and the gradient is zero, so a batch of padding only
//   contributes nothing rather than NaN.
//
// signed_cross_entropy: the weighted SUM, weights of any sign; dlogits ACCUMULATED.
//   loss     = Σ_t w_t · ce_t / d
//   dlogits += w_t / d · (softmax(logits[t]) − onehot(targets[t]))
//   The building block of the losses in nn/loss.hpp (REINFORCE weighs a sequence's tokens by
//   its reward, which may be negative). w_t = 0 again leaves the row out, target unread. The
//   divisor d (default 1: the plain sum) normalizes value and gradient in one place, with
//   one rounding, as cross_entropy divides by Σw: a mean is signed_cross_entropy with
//   d = Σw, bit for bit. It returns double: a sum that callers add to other terms.
//
// Numerically stable: each row's maximum is subtracted before exp and the sum of the
// exponentials (in double, or in f32 blocks of a few hundred terms added in double on SIMD
// executors), the log-sum-exp and the loss are accumulated in double, so a row of large
// logits neither overflows nor loses the loss's small differences. Both functions share one
// row loop (detail::cross_entropy_rows); each row's loss is kept and the rows summed in row
// order afterwards, so the result is the same for every thread count.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "t2/core/tensor.hpp"
#include "t2/exec/executor.hpp"
#include "t2/exec/scalar.hpp"
#include "t2/exec/simd.hpp"
#include "t2/exec/threads.hpp"
#include "t2/ops/detail/kernel_support.hpp"
#include "t2/ops/detail/parallel.hpp"

T2_NAMESPACE_BEGIN
namespace ops {
namespace detail {

struct exp_sum_result {
    float max;
    double sum; // Σ exp(x − max)
};

// One row: its maximum and Σ exp(x − max), the exponentials written to e (which may be x)
// unless e is null. The reference sums in double.
inline exp_sum_result exp_sum(const exec::scalar&, const float* x, float* e, std::size_t n) {
    float max = -std::numeric_limits<float>::infinity();
    for (std::size_t v = 0; v < n; ++v)
        max = std::max(max, x[v]);
    double sum = 0;
    for (std::size_t v = 0; v < n; ++v) {
        const float ev = std::exp(x[v] - max);
        sum += ev;
        if (e)
            e[v] = ev;
    }
    return {max, sum};
}

#if T2_ENABLE_SIMD
// Vector lanes sum blocks of a few hundred exponentials in f32 (each lane adds at most
// block/lanes terms, all ≤ 1), and the block sums go to double: the reference's accuracy
// at vector speed.
template <class Arch>
exp_sum_result exp_sum(const exec::simd<Arch>&, const float* x, float* e, std::size_t n) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t lanes = batch::size, block = 32 * lanes;
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const std::size_t body = n / lanes * lanes, tail = n - body;
    batch vmax(neg_inf);
    for (std::size_t v = 0; v < body; v += lanes)
        vmax = xsimd::max(vmax, batch::load_unaligned(x + v));
    if (tail)
        vmax = xsimd::max(vmax, load_partial<Arch>(x + body, tail, neg_inf));
    const float max = reduce_max(vmax);
    const batch shift(max);
    double sum = 0;
    for (std::size_t b0 = 0; b0 < n; b0 += block) {
        const std::size_t b1 = std::min(n, b0 + block);
        batch partial(0.f);
        std::size_t v = b0;
        for (; v + lanes <= b1; v += lanes) {
            const batch ev = xsimd::exp(batch::load_unaligned(x + v) - shift);
            if (e)
                ev.store_unaligned(e + v);
            partial += ev;
        }
        if (v < b1) { // padding lanes are −inf: exp gives 0
            const batch ev = xsimd::exp(load_partial<Arch>(x + v, b1 - v, neg_inf) - shift);
            if (e)
                store_partial<Arch>(ev, e + v, b1 - v);
            partial += ev;
        }
        sum += t2::detail::reduce_add(partial);
    }
    return {max, sum};
}
#endif

template <class Inner>
exp_sum_result exp_sum(const exec::threads<Inner>& ex, const float* x, float* e, std::size_t n) {
    return exp_sum(ex.inner(), x, e, n);
}

// ---- the shared row loop ---------------------------------------------------------------

// Sizes and shapes both cross-entropies need; dlogits may be empty.
inline void check_cross_entropy_shapes(const char* op, matrix_view<const float> logits,
                                       std::span<const std::int32_t> targets,
                                       std::span<const float> weights, matrix_view<float> dlogits) {
    const std::size_t T = logits.extent(0), V = logits.extent(1);
    T2_CHECK(targets.size() == T, op, ": logits are ", logits.shape(), " but there are ",
             targets.size(), " targets; give one per row");
    T2_CHECK(weights.empty() || weights.size() == T, op, ": logits are ", logits.shape(),
             " but there are ", weights.size(), " weights; give one per row, or none");
    T2_CHECK(V > 0, op, ": logits are ", logits.shape(), "; they need at least one class");
    if (!dlogits.empty())
        check_same_shape(op, "logits", logits, "dlogits", dlogits);
}

// A counted row's target must name one of the V classes.
inline void check_target(const char* op, std::span<const std::int32_t> targets, std::size_t t,
                         std::size_t V) {
    T2_CHECK(targets[t] >= 0 && static_cast<std::size_t>(targets[t]) < V, op, ": target ",
             targets[t], " at position ", t, " is outside the ", V,
             " classes of the logits; give an id in [0, ", V,
             "), or weight 0 to leave the position out");
}

enum class gradient_mode {
    overwrite, // dlogits = ..., rows of weight 0 zeroed; dlogits may be logits (in place)
    accumulate // dlogits += ..., rows of weight 0 untouched; dlogits apart from logits
};

// Σ_t w_t·ce_t / divisor, and w_t / divisor · (softmax − onehot) into dlogits unless it is
// empty. The arguments are checked; every counted row's target is in range.
template <exec::cpu_executor E>
double cross_entropy_rows(const E& ex, matrix_view<const float> logits,
                          std::span<const std::int32_t> targets, std::span<const float> weights,
                          double divisor, matrix_view<float> dlogits, gradient_mode mode) {
    const std::size_t T = logits.extent(0), V = logits.extent(1);
    const bool gradient = !dlogits.empty();
    const bool accumulate = mode == gradient_mode::accumulate;
    // Per-thread buffers (thread_buffer): a training loop's second step allocates nothing
    // here. The calling thread holds the row losses, which are summed in row order so that
    // every thread count gives the same bits.
    struct row_losses;
    struct exponentials;
    const std::span<double> row_loss = thread_buffer<row_losses, double>(T);
    for_row_ranges(ex, T, V, compute_grain, [&](std::size_t r0, std::size_t r1) {
        // Accumulating needs the exponentials apart from dlogits: one row of scratch.
        const std::span<float> scratch = thread_buffer<exponentials, float>(gradient && accumulate ? V : 0);
        for (std::size_t t = r0; t < r1; ++t) {
            const double w = weights.empty() ? 1.0 : weights[t];
            const float* x = logits.data() + t * V;
            float* dx = gradient ? dlogits.data() + t * V : nullptr;
            if (w == 0) {
                row_loss[t] = 0;
                if (gradient && !accumulate)
                    std::fill_n(dx, V, 0.f);
                continue;
            }
            const std::size_t target = static_cast<std::size_t>(targets[t]);
            const float target_logit = x[target]; // before dx, which may overwrite x
            float* e = !gradient ? nullptr : accumulate ? scratch.data() : dx;
            const auto [max, sum] = exp_sum(ex, x, e, V);
            row_loss[t] = w * (static_cast<double>(max) + std::log(sum) - target_logit);
            if (gradient) {
                const float scale = static_cast<float>(w / divisor / sum);
                if (accumulate)
                    for (std::size_t v = 0; v < V; ++v)
                        dx[v] += e[v] * scale;
                else
                    for (std::size_t v = 0; v < V; ++v)
                        dx[v] *= scale;
                dx[target] -= static_cast<float>(w / divisor);
            }
        }
    });
    double total = 0;
    for (std::size_t t = 0; t < T; ++t)
        total += row_loss[t];
    return total / divisor;
}

} // namespace detail

// Returns the mean loss; writes dlogits unless it is an empty view (forward only). dlogits
// may be logits (in place).
template <exec::cpu_executor E>
float cross_entropy(const E& ex, matrix_view<const float> logits,
                    std::span<const std::int32_t> targets, std::span<const float> weights,
                    matrix_view<float> dlogits) {
    constexpr const char* op = "cross_entropy";
    detail::check_cross_entropy_shapes(op, logits, targets, weights, dlogits);
    if (!dlogits.empty())
        detail::check_no_partial_overlap(op, "logits", logits, "dlogits", dlogits);
    const std::size_t T = logits.extent(0), V = logits.extent(1);
    double weight_sum = 0;
    for (std::size_t t = 0; t < T; ++t) {
        const float w = weights.empty() ? 1.f : weights[t];
        T2_CHECK(std::isfinite(w) && w >= 0.f, op, ": weight ", w, " at position ", t,
                 "; weights must be finite and >= 0 (0 leaves the position out)");
        if (w == 0.f)
            continue;
        detail::check_target(op, targets, t, V);
        weight_sum += w;
    }
    if (weight_sum == 0) {
        if (!dlogits.empty())
            std::fill_n(dlogits.data(), dlogits.size(), 0.f);
        return 0.f;
    }
    return static_cast<float>(detail::cross_entropy_rows(ex, logits, targets, weights, weight_sum,
                                                         dlogits, detail::gradient_mode::overwrite));
}

// Forward only: the loss.
template <exec::cpu_executor E>
float cross_entropy(const E& ex, matrix_view<const float> logits,
                    std::span<const std::int32_t> targets, std::span<const float> weights = {}) {
    return cross_entropy(ex, logits, targets, weights, matrix_view<float>{});
}

// Returns Σ_t w_t·ce_t / divisor and adds w_t / divisor · (softmax − onehot) to dlogits
// unless it is an empty view (forward only). dlogits must not share memory with logits.
// Weights: finite, any sign, one per row or none (all 1). Divisor: finite and > 0.
template <exec::cpu_executor E>
double signed_cross_entropy(const E& ex, matrix_view<const float> logits,
                            std::span<const std::int32_t> targets, std::span<const float> weights,
                            matrix_view<float> dlogits = {}, double divisor = 1) {
    constexpr const char* op = "signed_cross_entropy";
    detail::check_cross_entropy_shapes(op, logits, targets, weights, dlogits);
    if (!dlogits.empty())
        detail::check_disjoint(op, "logits", logits, "dlogits", dlogits);
    T2_CHECK(std::isfinite(divisor) && divisor > 0, op, ": divisor ", divisor,
             "; it must be finite and > 0 (1 for the plain sum)");
    const std::size_t T = logits.extent(0), V = logits.extent(1);
    for (std::size_t t = 0; t < T; ++t) {
        const float w = weights.empty() ? 1.f : weights[t];
        T2_CHECK(std::isfinite(w), op, ": weight ", w, " at position ", t,
                 "; weights must be finite (0 leaves the position out)");
        if (w != 0.f)
            detail::check_target(op, targets, t, V);
    }
    return detail::cross_entropy_rows(ex, logits, targets, weights, divisor, dlogits,
                                      detail::gradient_mode::accumulate);
}

} // namespace ops
T2_NAMESPACE_END
