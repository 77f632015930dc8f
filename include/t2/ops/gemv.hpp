#pragma once
// Matrix-vector product, the hot loop of single-token decoding.
//
//   y[M] = alpha · A[M×N] · x[N] + beta · y          (transpose = false)
//   y[N] = alpha · A[M×N]ᵀ · x[M] + beta · y         (transpose = true)
//
// It is the one-row case of gemm (y as a 1×M row of x·Aᵀ), and runs through the same
// executors: simd<Arch> streams A once, as dot products over its rows or, transposed, as
// row-wise updates of y; threads<Inner> gives each thread a block of y.
#include "t2/ops/gemm.hpp"

T2_NAMESPACE_BEGIN
namespace ops {

struct gemv_options {
    bool transpose = false;
    float alpha = 1.f;
    float beta = 0.f;
};

template <exec::cpu_executor E>
void gemv(const E& ex, matrix_view<const float> a, vector_view<const float> x, vector_view<float> y,
          const gemv_options& options = {}) {
    const std::size_t rows = a.extent(0), cols = a.extent(1);
    const std::size_t in = options.transpose ? rows : cols, out = options.transpose ? cols : rows;
    T2_CHECK(x.size() == in && y.size() == out, "gemv: A is ", a.shape(),
             (options.transpose ? " (transposed)" : ""), ", so x needs ", in, " elements and y ",
             out, "; got x ", x.shape(), " and y ", y.shape());
    if (out == 0)
        return;
    // y as a row: y[1×out] = x[1×in] · (transpose ? A : Aᵀ).
    const detail::gemm_args<float> g{false, !options.transpose, 1, out, in, options.alpha, x.data(), in,
                              a.data(), cols, options.beta, y.data(), out};
    detail::gemm(ex, g);
}

} // namespace ops
T2_NAMESPACE_END
