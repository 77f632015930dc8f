#pragma once
// Row-wise softmax, numerically stable.
//
//   y[rows × cols] = exp(x − max_row(x)) / Σ_row exp(x − max_row(x))
//   (a vector overload treats x[n] as one row)
//
//   softmax_backward: dx[rows × cols] = y ⊙ (dy − Σ_row y ⊙ dy), from the forward's output y
//
// Subtracting the row maximum keeps exp from overflowing and changes nothing
// mathematically. y may be x (in place). As in PyTorch, a row whose maximum is ±inf or
// that contains a NaN comes out all NaN (a row of all −inf: there is nothing to normalise).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "t2/core/tensor.hpp"
#include "t2/exec/scalar.hpp"
#include "t2/exec/simd.hpp"
#include "t2/exec/threads.hpp"
#include "t2/ops/detail/kernel_support.hpp"
#include "t2/ops/detail/parallel.hpp"

T2_NAMESPACE_BEGIN
namespace ops {
namespace detail {

inline void softmax(const exec::scalar&, const float* x, float* y, std::size_t rows,
                    std::size_t cols) {
    for (std::size_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;
        float max = -std::numeric_limits<float>::infinity();
        for (std::size_t c = 0; c < cols; ++c)
            max = std::max(max, xr[c]);
        float sum = 0.f;
        for (std::size_t c = 0; c < cols; ++c) {
            yr[c] = std::exp(xr[c] - max);
            sum += yr[c];
        }
        for (std::size_t c = 0; c < cols; ++c)
            yr[c] /= sum;
    }
}

#if T2_ENABLE_SIMD
template <class Arch>
void softmax(const exec::simd<Arch>&, const float* x, float* y, std::size_t rows,
             std::size_t cols) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t lanes = batch::size;
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    const std::size_t body = cols / lanes * lanes, tail = cols - body;
    for (std::size_t r = 0; r < rows; ++r) {
        const float* xr = x + r * cols;
        float* yr = y + r * cols;

        batch vmax(neg_inf);
        for (std::size_t c = 0; c < body; c += lanes)
            vmax = xsimd::max(vmax, batch::load_unaligned(xr + c));
        if (tail)
            vmax = xsimd::max(vmax, load_partial<Arch>(xr + body, tail, neg_inf));
        const batch max(reduce_max(vmax));

        // Padding lanes hold −inf, so they add exp(−inf) = 0 to the sum.
        batch vsum(0.f);
        for (std::size_t c = 0; c < body; c += lanes) {
            const batch e = xsimd::exp(batch::load_unaligned(xr + c) - max);
            e.store_unaligned(yr + c);
            vsum += e;
        }
        if (tail) {
            const batch e = xsimd::exp(load_partial<Arch>(xr + body, tail, neg_inf) - max);
            store_partial<Arch>(e, yr + body, tail);
            vsum += e;
        }

        const batch inv(1.f / t2::detail::reduce_add(vsum));
        for (std::size_t c = 0; c < body; c += lanes)
            (batch::load_unaligned(yr + c) * inv).store_unaligned(yr + c);
        if (tail)
            store_partial<Arch>(load_partial<Arch>(yr + body, tail, 0.f) * inv, yr + body, tail);
    }
}
#endif

template <class Inner>
void softmax(const exec::threads<Inner>& ex, const float* x, float* y, std::size_t rows,
             std::size_t cols) {
    for_rows(ex, rows, cols, compute_grain, [&](std::size_t r0, std::size_t r1) {
        detail::softmax(ex.inner(), x + r0 * cols, y + r0 * cols, r1 - r0, cols);
    });
}

} // namespace detail

// Softmax of every row of x into y (y may be x).
template <exec::cpu_executor E>
void softmax(const E& ex, matrix_view<const float> x, matrix_view<float> y) {
    detail::check_same_shape("softmax", "x", x, "y", y);
    detail::check_no_partial_overlap("softmax", "x", x, "y", y);
    detail::softmax(ex, x.data(), y.data(), x.extent(0), x.extent(1));
}

// Softmax of the vector x into y (y may be x).
template <exec::cpu_executor E>
void softmax(const E& ex, vector_view<const float> x, vector_view<float> y) {
    detail::check_same_shape("softmax", "x", x, "y", y);
    detail::check_no_partial_overlap("softmax", "x", x, "y", y);
    detail::softmax(ex, x.data(), y.data(), x.empty() ? 0 : 1, x.size());
}

// Backward of softmax, row by row: dx = y ⊙ (dy − Σ_row y ⊙ dy), where y is the softmax's
// output (the Jacobian diag(y) − y·yᵀ applied to dy). dx is overwritten and may be y or dy.
template <exec::cpu_executor E>
void softmax_backward(const E& ex, matrix_view<const float> y, matrix_view<const float> dy,
                      matrix_view<float> dx) {
    constexpr const char* op = "softmax_backward";
    detail::check_same_shape(op, "y", y, "dy", dy);
    detail::check_same_shape(op, "y", y, "dx", dx);
    detail::check_no_partial_overlap(op, "y", y, "dx", dx);
    detail::check_no_partial_overlap(op, "dy", dy, "dx", dx);
    const std::size_t cols = y.extent(1);
    detail::for_row_ranges(ex, y.extent(0), cols, detail::stream_grain,
                           [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
            const float* yr = y.data() + r * cols;
            const float* dyr = dy.data() + r * cols;
            float* dxr = dx.data() + r * cols;
            float dot = 0.f;
            for (std::size_t c = 0; c < cols; ++c)
                dot += yr[c] * dyr[c];
            for (std::size_t c = 0; c < cols; ++c)
                dxr[c] = yr[c] * (dyr[c] - dot);
        }
    });
}

// Backward of the softmax of a vector (one row).
template <exec::cpu_executor E>
void softmax_backward(const E& ex, vector_view<const float> y, vector_view<const float> dy,
                      vector_view<float> dx) {
    softmax_backward(ex, y.reshape(dims<2>(1, y.size())), dy.reshape(dims<2>(1, dy.size())),
                     dx.reshape(dims<2>(1, dx.size())));
}

} // namespace ops
T2_NAMESPACE_END
