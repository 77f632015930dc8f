#pragma once
// The arguments of one gemm call in BLAS form: raw row-major pointers with leading
// dimensions, so that a sub-block of C (and the matching parts of A and B) is just another
// gemm_args. B may be stored as f32 or as a narrower storage type TB (bf16 weights), which
// the kernels widen to f32 as they read it. Shapes:
//   C[m×n] (ldc) = alpha · op(A)[m×k] · op(B)[k×n] + beta · C
//   op(A)[i,k] = trans_a ? a[k·lda + i] : a[i·lda + k]
//   op(B)[k,j] = trans_b ? b[j·ldb + k] : b[k·ldb + j]
#include <cstddef>

#include "t2/core/dtype.hpp"

T2_NAMESPACE_BEGIN
namespace ops::detail {

template <class TB = float>
struct gemm_args {
    bool trans_a, trans_b;
    std::size_t m, n, k;
    float alpha;
    const float* a;
    std::size_t lda;
    const TB* b;
    std::size_t ldb;
    float beta;
    float* c;
    std::size_t ldc;

    float a_at(std::size_t i, std::size_t kk) const noexcept {
        return trans_a ? a[kk * lda + i] : a[i * lda + kk];
    }
    float b_at(std::size_t kk, std::size_t j) const noexcept {
        return to_f32(trans_b ? b[j * ldb + kk] : b[kk * ldb + j]);
    }

    // The rows [i0, i0+rows) of C as a gemm of their own.
    gemm_args row_block(std::size_t i0, std::size_t rows) const noexcept {
        gemm_args g = *this;
        g.m = rows;
        g.a = trans_a ? a + i0 : a + i0 * lda;
        g.c = c + i0 * ldc;
        return g;
    }
    // The columns [j0, j0+cols) of C as a gemm of their own.
    gemm_args column_block(std::size_t j0, std::size_t cols) const noexcept {
        gemm_args g = *this;
        g.n = cols;
        g.b = trans_b ? b + j0 * ldb : b + j0;
        g.c = c + j0;
        return g;
    }
};

} // namespace ops::detail
T2_NAMESPACE_END
