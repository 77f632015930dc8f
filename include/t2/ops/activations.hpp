#pragma once
// Activation functions on f32 vectors (flatten a matrix with .flat() to use them on it).
//
//   silu:   y[n] = x / (1 + exp(-x))
//   gelu:   y[n] = x/2 · (1 + erf(x/√2))                              (approximation none)
//           y[n] = x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))      (approximation tanh)
//   swiglu: y[n] = silu(gate[n]) · up[n]                               (the Llama MLP)
//
//   swiglu_backward: dgate[n] = dy · up · σ(gate) · (1 + gate · (1 − σ(gate)))
//                    dup[n]   = dy · silu(gate)                     (both overwritten)
//
// The formulas are PyTorch's (torch.nn.functional.silu, gelu(approximate=...)). y may be
// an input (in place). simd<Arch> evaluates exp, erf and tanh with xsimd's polynomial
// approximations, a few ulp from the C library's.
#include <cmath>
#include <cstddef>
#include <utility>

#include "t2/core/tensor.hpp"
#include "t2/exec/scalar.hpp"
#include "t2/exec/simd.hpp"
#include "t2/exec/threads.hpp"
#include "t2/ops/detail/kernel_support.hpp"
#include "t2/ops/detail/parallel.hpp"

T2_NAMESPACE_BEGIN
namespace ops {

// Which GELU: the exact erf form, or the tanh approximation of GPT-2 and BERT.
enum class gelu_approximation { none, tanh };

namespace detail {

inline constexpr float inv_sqrt2 = 0.70710678118654752440f;
inline constexpr float sqrt_2_over_pi = 0.79788456080286535588f;
inline constexpr float gelu_tanh_kappa = 0.044715f;

inline void silu(const exec::scalar&, const float* x, float* y, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        y[i] = x[i] / (1.f + std::exp(-x[i]));
}

inline void gelu(const exec::scalar&, const float* x, float* y, std::size_t n,
                 gelu_approximation approx) {
    if (approx == gelu_approximation::none) {
        for (std::size_t i = 0; i < n; ++i)
            y[i] = 0.5f * x[i] * (1.f + std::erf(x[i] * inv_sqrt2));
    } else {
        for (std::size_t i = 0; i < n; ++i) {
            const float v = x[i];
            const float inner = sqrt_2_over_pi * (v + gelu_tanh_kappa * v * v * v);
            y[i] = 0.5f * v * (1.f + std::tanh(inner));
        }
    }
}

inline void swiglu(const exec::scalar&, const float* gate, const float* up, float* y,
                   std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        y[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
}

#if T2_ENABLE_SIMD
template <class Arch>
void silu(const exec::simd<Arch>&, const float* x, float* y, std::size_t n) {
    using batch = xsimd::batch<float, Arch>;
    simd_map<Arch>(x, y, n, [](const batch& v) { return v / (batch(1.f) + xsimd::exp(-v)); });
}

template <class Arch>
void gelu(const exec::simd<Arch>&, const float* x, float* y, std::size_t n,
          gelu_approximation approx) {
    using batch = xsimd::batch<float, Arch>;
    if (approx == gelu_approximation::none) {
        simd_map<Arch>(x, y, n, [](const batch& v) {
            return batch(0.5f) * v * (batch(1.f) + xsimd::erf(v * batch(inv_sqrt2)));
        });
    } else {
        simd_map<Arch>(x, y, n, [](const batch& v) {
            const batch inner = batch(sqrt_2_over_pi) * (v + batch(gelu_tanh_kappa) * v * v * v);
            return batch(0.5f) * v * (batch(1.f) + xsimd::tanh(inner));
        });
    }
}

template <class Arch>
void swiglu(const exec::simd<Arch>&, const float* gate, const float* up, float* y, std::size_t n) {
    using batch = xsimd::batch<float, Arch>;
    simd_map<Arch>(gate, up, y, n, [](const batch& g, const batch& u) {
        return g / (batch(1.f) + xsimd::exp(-g)) * u;
    });
}
#endif

template <class Inner>
void silu(const exec::threads<Inner>& ex, const float* x, float* y, std::size_t n) {
    for_elements(ex, n, compute_grain, [&](std::size_t b, std::size_t e) {
        detail::silu(ex.inner(), x + b, y + b, e - b);
    });
}

template <class Inner>
void gelu(const exec::threads<Inner>& ex, const float* x, float* y, std::size_t n,
          gelu_approximation approx) {
    for_elements(ex, n, compute_grain, [&](std::size_t b, std::size_t e) {
        detail::gelu(ex.inner(), x + b, y + b, e - b, approx);
    });
}

template <class Inner>
void swiglu(const exec::threads<Inner>& ex, const float* gate, const float* up, float* y,
            std::size_t n) {
    for_elements(ex, n, compute_grain, [&](std::size_t b, std::size_t e) {
        detail::swiglu(ex.inner(), gate + b, up + b, y + b, e - b);
    });
}

inline void check_unary(const char* op, vector_view<const float> x, vector_view<float> y) {
    check_same_shape(op, "x", x, "y", y);
    check_no_partial_overlap(op, "x", x, "y", y);
}

} // namespace detail

// y = silu(x) = x · sigmoid(x).
template <exec::cpu_executor E>
void silu(const E& ex, vector_view<const float> x, vector_view<float> y) {
    detail::check_unary("silu", x, y);
    detail::silu(ex, x.data(), y.data(), y.size());
}

// y = gelu(x), exact by default, or with PyTorch's approximate="tanh".
template <exec::cpu_executor E>
void gelu(const E& ex, vector_view<const float> x, vector_view<float> y,
          gelu_approximation approximation = gelu_approximation::none) {
    detail::check_unary("gelu", x, y);
    T2_CHECK(approximation == gelu_approximation::none || approximation == gelu_approximation::tanh,
             "gelu: unknown approximation ", static_cast<int>(approximation));
    detail::gelu(ex, x.data(), y.data(), y.size(), approximation);
}

// y = silu(gate) · up, the gated unit of the Llama MLP (y = W2 · swiglu(W1 x, W3 x)).
template <exec::cpu_executor E>
void swiglu(const E& ex, vector_view<const float> gate, vector_view<const float> up,
            vector_view<float> y) {
    detail::check_same_shape("swiglu", "gate", gate, "up", up);
    detail::check_same_shape("swiglu", "gate", gate, "y", y);
    detail::check_no_partial_overlap("swiglu", "gate", gate, "y", y);
    detail::check_no_partial_overlap("swiglu", "up", up, "y", y);
    detail::swiglu(ex, gate.data(), up.data(), y.data(), y.size());
}

// Backward of swiglu: the gradients of y = silu(gate) · up with respect to gate and up, from
// dy. dgate and dup are overwritten; each may be one of the inputs (in place), but not the
// other output.
template <exec::cpu_executor E>
void swiglu_backward(const E& ex, vector_view<const float> gate, vector_view<const float> up,
                     vector_view<const float> dy, vector_view<float> dgate,
                     vector_view<float> dup) {
    constexpr const char* op = "swiglu_backward";
    detail::check_same_shape(op, "gate", gate, "up", up);
    detail::check_same_shape(op, "gate", gate, "dy", dy);
    detail::check_same_shape(op, "gate", gate, "dgate", dgate);
    detail::check_same_shape(op, "gate", gate, "dup", dup);
    for (const auto& out : {std::pair{"dgate", dgate}, std::pair{"dup", dup}}) {
        detail::check_no_partial_overlap(op, "gate", gate, out.first, out.second);
        detail::check_no_partial_overlap(op, "up", up, out.first, out.second);
        detail::check_no_partial_overlap(op, "dy", dy, out.first, out.second);
    }
    detail::check_disjoint(op, "dgate", dgate, "dup", dup);
    detail::for_element_ranges(ex, gate.size(), detail::compute_grain,
                               [&](std::size_t i0, std::size_t i1) {
        const float* g = gate.data();
        const float* u = up.data();
        const float* d = dy.data();
        float* dg_out = dgate.data();
        float* du_out = dup.data();
        for (std::size_t i = i0; i < i1; ++i) {
            const float sig = 1.f / (1.f + std::exp(-g[i]));
            const float dg = d[i] * u[i] * sig * (1.f + g[i] * (1.f - sig));
            const float du = d[i] * g[i] * sig;
            dg_out[i] = dg;
            du_out[i] = du;
        }
    });
}

} // namespace ops
T2_NAMESPACE_END
