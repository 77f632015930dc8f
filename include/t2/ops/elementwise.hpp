#pragma once
// Elementwise arithmetic on f32 vectors (flatten a matrix with .flat() to use them on it).
//
//   add:   y[n] = a[n] + b[n]
//   mul:   y[n] = a[n] · b[n]
//   scale: y[n] = alpha · x[n]
//
// y may be one of the inputs (in place). Each result is one correctly rounded operation,
// so every executor gives exactly the reference's bits.
#include <cstddef>

#include "t2/core/tensor.hpp"
#include "t2/exec/scalar.hpp"
#include "t2/exec/simd.hpp"
#include "t2/exec/threads.hpp"
#include "t2/ops/detail/kernel_support.hpp"

T2_NAMESPACE_BEGIN
namespace ops {
namespace detail {

inline void add(const exec::scalar&, const float* a, const float* b, float* y, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        y[i] = a[i] + b[i];
}

inline void mul(const exec::scalar&, const float* a, const float* b, float* y, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        y[i] = a[i] * b[i];
}

inline void scale(const exec::scalar&, float alpha, const float* x, float* y, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        y[i] = alpha * x[i];
}

#if T2_ENABLE_SIMD
template <class Arch>
void add(const exec::simd<Arch>&, const float* a, const float* b, float* y, std::size_t n) {
    simd_map<Arch>(a, b, y, n, [](const auto& u, const auto& v) { return u + v; });
}

template <class Arch>
void mul(const exec::simd<Arch>&, const float* a, const float* b, float* y, std::size_t n) {
    simd_map<Arch>(a, b, y, n, [](const auto& u, const auto& v) { return u * v; });
}

template <class Arch>
void scale(const exec::simd<Arch>&, float alpha, const float* x, float* y, std::size_t n) {
    const xsimd::batch<float, Arch> a(alpha);
    simd_map<Arch>(x, y, n, [a](const auto& v) { return a * v; });
}
#endif

template <class Inner>
void add(const exec::threads<Inner>& ex, const float* a, const float* b, float* y, std::size_t n) {
    for_elements(ex, n, stream_grain, [&](std::size_t i0, std::size_t i1) {
        detail::add(ex.inner(), a + i0, b + i0, y + i0, i1 - i0);
    });
}

template <class Inner>
void mul(const exec::threads<Inner>& ex, const float* a, const float* b, float* y, std::size_t n) {
    for_elements(ex, n, stream_grain, [&](std::size_t i0, std::size_t i1) {
        detail::mul(ex.inner(), a + i0, b + i0, y + i0, i1 - i0);
    });
}

template <class Inner>
void scale(const exec::threads<Inner>& ex, float alpha, const float* x, float* y, std::size_t n) {
    for_elements(ex, n, stream_grain, [&](std::size_t i0, std::size_t i1) {
        detail::scale(ex.inner(), alpha, x + i0, y + i0, i1 - i0);
    });
}

inline void check_binary(const char* op, vector_view<const float> a, vector_view<const float> b,
                         vector_view<float> y) {
    check_same_shape(op, "a", a, "b", b);
    check_same_shape(op, "a", a, "y", y);
    check_no_partial_overlap(op, "a", a, "y", y);
    check_no_partial_overlap(op, "b", b, "y", y);
}

} // namespace detail

// y = a + b.
template <exec::cpu_executor E>
void add(const E& ex, vector_view<const float> a, vector_view<const float> b,
         vector_view<float> y) {
    detail::check_binary("add", a, b, y);
    detail::add(ex, a.data(), b.data(), y.data(), y.size());
}

// y = a · b (elementwise).
template <exec::cpu_executor E>
void mul(const E& ex, vector_view<const float> a, vector_view<const float> b,
         vector_view<float> y) {
    detail::check_binary("mul", a, b, y);
    detail::mul(ex, a.data(), b.data(), y.data(), y.size());
}

// y = alpha · x.
template <exec::cpu_executor E>
void scale(const E& ex, float alpha, vector_view<const float> x, vector_view<float> y) {
    detail::check_same_shape("scale", "x", x, "y", y);
    detail::check_no_partial_overlap("scale", "x", x, "y", y);
    detail::scale(ex, alpha, x.data(), y.data(), y.size());
}

} // namespace ops
T2_NAMESPACE_END
