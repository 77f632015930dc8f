#pragma once
// Level-1 BLAS on f32 vectors.
//
//   dot:  x[n] · y[n] -> float
//   axpy: y[n] += alpha · x[n]
//
// Sums run in f32. The scalar reference adds left to right; simd<Arch> keeps several
// partial sums per lane, and threads<Inner> adds fixed pieces of the vector in order, so
// results differ from the reference by rounding only and are reproducible for any thread
// count.
#include <cstddef>
#include <functional>

#include "t2/core/tensor.hpp"
#include "t2/exec/scalar.hpp"
#include "t2/exec/simd.hpp"
#include "t2/exec/threads.hpp"
#include "t2/ops/detail/kernel_support.hpp"

T2_NAMESPACE_BEGIN
namespace ops {
namespace detail {

inline float dot(const exec::scalar&, const float* x, const float* y, std::size_t n) {
    float sum = 0.f;
    for (std::size_t i = 0; i < n; ++i)
        sum += x[i] * y[i];
    return sum;
}

inline void axpy(const exec::scalar&, float alpha, const float* x, float* y, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        y[i] += alpha * x[i];
}

#if T2_ENABLE_SIMD
template <class Arch>
float dot(const exec::simd<Arch>&, const float* x, const float* y, std::size_t n) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t lanes = batch::size;
    // Four independent sums so consecutive FMAs do not wait on each other's latency.
    batch s0(0.f), s1(0.f), s2(0.f), s3(0.f);
    std::size_t i = 0;
    for (; i + 4 * lanes <= n; i += 4 * lanes) {
        s0 = xsimd::fma(batch::load_unaligned(x + i), batch::load_unaligned(y + i), s0);
        s1 = xsimd::fma(batch::load_unaligned(x + i + lanes), batch::load_unaligned(y + i + lanes),
                        s1);
        s2 = xsimd::fma(batch::load_unaligned(x + i + 2 * lanes),
                        batch::load_unaligned(y + i + 2 * lanes), s2);
        s3 = xsimd::fma(batch::load_unaligned(x + i + 3 * lanes),
                        batch::load_unaligned(y + i + 3 * lanes), s3);
    }
    for (; i + lanes <= n; i += lanes)
        s0 = xsimd::fma(batch::load_unaligned(x + i), batch::load_unaligned(y + i), s0);
    float sum = t2::detail::reduce_add((s0 + s1) + (s2 + s3));
    for (; i < n; ++i)
        sum += x[i] * y[i];
    return sum;
}

template <class Arch>
void axpy(const exec::simd<Arch>&, float alpha, const float* x, float* y, std::size_t n) {
    using batch = xsimd::batch<float, Arch>;
    const batch a(alpha);
    simd_map<Arch>(x, y, y, n,
                   [a](const batch& xv, const batch& yv) { return xsimd::fma(a, xv, yv); });
}
#endif

template <class Inner>
float dot(const exec::threads<Inner>& ex, const float* x, const float* y, std::size_t n) {
    return reduce_pieces<float>(
        ex, n,
        [&](std::size_t b, std::size_t e) { return detail::dot(ex.inner(), x + b, y + b, e - b); },
        std::plus<>{});
}

template <class Inner>
void axpy(const exec::threads<Inner>& ex, float alpha, const float* x, float* y, std::size_t n) {
    for_elements(ex, n, stream_grain, [&](std::size_t b, std::size_t e) {
        detail::axpy(ex.inner(), alpha, x + b, y + b, e - b);
    });
}

} // namespace detail

// x · y. An empty dot product is 0.
template <exec::cpu_executor E>
float dot(const E& ex, vector_view<const float> x, vector_view<const float> y) {
    detail::check_same_shape("dot", "x", x, "y", y);
    return detail::dot(ex, x.data(), y.data(), x.size());
}

// y += alpha · x. x and y may be the same vector (y becomes (1 + alpha) · y).
template <exec::cpu_executor E>
void axpy(const E& ex, float alpha, vector_view<const float> x, vector_view<float> y) {
    detail::check_same_shape("axpy", "x", x, "y", y);
    detail::check_no_partial_overlap("axpy", "x", x, "y", y);
    detail::axpy(ex, alpha, x.data(), y.data(), x.size());
}

} // namespace ops
T2_NAMESPACE_END
