#pragma once
// Backward of a dense linear map y = x · Wᵀ (no bias; W stored [out × in], as gemm's
// transpose_b and nn::linear keep it).
//
//   x[T × in], w[out × in], dy[T × out]
//   dx  = dy · W      [T × in],   overwritten   (the activation gradient)
//   dw += dyᵀ · x     [out × in], accumulated   (the parameter gradient, summed over calls)
//
// Both are gemm calls, so they run as fast as the forward does on every executor. Either
// output may be an empty view to skip it: dx is not needed below the first layer, dw is not
// needed for a frozen weight (an SVF expert trains z, not W).
#include <cstddef>
#include <type_traits>

#include "t2/core/dtype.hpp"
#include "t2/core/tensor.hpp"
#include "t2/exec/executor.hpp"
#include "t2/ops/detail/kernel_support.hpp"
#include "t2/ops/gemm.hpp"

T2_NAMESPACE_BEGIN
namespace ops {

namespace detail {

template <exec::cpu_executor E, class TW>
void linear_backward(const E& ex, matrix_view<const float> x, matrix_view<const TW> w,
                     matrix_view<const float> dy, matrix_view<float> dx, matrix_view<float> dw) {
    constexpr const char* op = "linear_backward";
    const std::size_t T = x.extent(0), in = x.extent(1), out = w.extent(0);
    T2_CHECK(w.extent(1) == in, op, ": x is ", x.shape(), " but w is ", w.shape(),
             "; w must be [out × in] with in = x's columns");
    T2_CHECK(dy.extent(0) == T && dy.extent(1) == out, op, ": dy is ", dy.shape(), " but x is ",
             x.shape(), " and w is ", w.shape(), "; dy must be ", T, "x", out);
    if (!dx.empty()) {
        check_same_shape(op, "x", x, "dx", dx);
        if constexpr (std::is_same_v<TW, float>)
            check_disjoint(op, "w", w, "dx", dx);
        check_disjoint(op, "dy", dy, "dx", dx);
        ops::gemm(ex, dy, w, dx);
    }
    if (!dw.empty()) {
        T2_CHECK(dw.extent(0) == out && dw.extent(1) == in, op, ": dw is ", dw.shape(), " but w is ", w.shape());
        check_disjoint(op, "x", x, "dw", dw);
        check_disjoint(op, "dy", dy, "dw", dw);
        ops::gemm(ex, dy, x, dw, {.transpose_a = true, .beta = 1.f});
    }
}

} // namespace detail

// W in f32, or in bf16 (then dw, if asked for, is still f32).
template <exec::cpu_executor E>
void linear_backward(const E& ex, matrix_view<const float> x, matrix_view<const float> w,
                     matrix_view<const float> dy, matrix_view<float> dx, matrix_view<float> dw) {
    detail::linear_backward(ex, x, w, dy, dx, dw);
}
template <exec::cpu_executor E>
void linear_backward(const E& ex, matrix_view<const float> x, matrix_view<const bf16> w,
                     matrix_view<const float> dy, matrix_view<float> dx, matrix_view<float> dw) {
    detail::linear_backward(ex, x, w, dy, dx, dw);
}

} // namespace ops
T2_NAMESPACE_END
