#pragma once
// General matrix multiply, the hot loop of the library.
//
//   C[M×N] = alpha · op(A)[M×K] · op(B)[K×N] + beta · C
//   op(X) = Xᵀ when the matching transpose option is set; A is then stored K×M, B N×K.
//
// A linear layer y = x·Wᵀ with W stored [out × in] is gemm(ex, x, w, y, {.transpose_b = true}).
// beta = 0 overwrites C without reading it (C may hold NaN), as BLAS does.
//
// Executors: scalar is the reference (a dot product per element); simd<Arch> picks a
// packed, cache-blocked micro-kernel for large products and a dot-product kernel for
// x·Wᵀ with few rows of x; threads<Inner> splits C into column (or row) blocks.
#include <algorithm>
#include <array>
#include <cstddef>
#include <span>
#include <type_traits>
#include <utility>

#include "t2/core/tensor.hpp"
#include "t2/exec/scalar.hpp"
#include "t2/exec/simd.hpp"
#include "t2/exec/threads.hpp"
#include "t2/ops/detail/gemm_args.hpp"
#include "t2/ops/detail/gemm_simd.hpp"

T2_NAMESPACE_BEGIN
namespace ops {

struct gemm_options {
    bool transpose_a = false;
    bool transpose_b = false;
    float alpha = 1.f;
    float beta = 0.f;
};

namespace detail {

template <class TB>
void scale_c(const gemm_args<TB>& g) {
    for (std::size_t i = 0; i < g.m; ++i)
        for (std::size_t j = 0; j < g.n; ++j) {
            float& c = g.c[i * g.ldc + j];
            c = g.beta != 0.f ? g.beta * c : 0.f;
        }
}

template <class TB>
void gemm(const exec::scalar&, const gemm_args<TB>& g) {
    for (std::size_t i = 0; i < g.m; ++i)
        for (std::size_t j = 0; j < g.n; ++j) {
            float sum = 0.f;
            for (std::size_t kk = 0; kk < g.k; ++kk)
                sum += g.a_at(i, kk) * g.b_at(kk, j);
            float& c = g.c[i * g.ldc + j];
            c = g.beta != 0.f ? g.beta * c + g.alpha * sum : g.alpha * sum;
        }
}

// Up to this many rows of A, x·Wᵀ runs as dot products over the stored rows of W (one
// sequential stream, no packing): decoding's one row and little more; x·B with B's rows
// contiguous runs as transposed gemvs (attention's probabilities · values when decoding). From there up to one
// register tile's width of rows (16 with AVX2, 32 with AVX-512) gemm_few_rows reads W in place
// against a packed Aᵀ: at 16 rows 1.3–1.7× OpenBLAS on AVX2 where the packed kernel was
// 0.9–1.2× (benchmarks/README.md).
inline constexpr std::size_t skinny_rows = 4;

#if T2_ENABLE_SIMD
template <class Arch, class TB>
void gemm(const exec::simd<Arch>&, const gemm_args<TB>& g) {
    if (g.k == 0)
        return scale_c(g);
    if (g.m <= skinny_rows && !g.trans_b)
        return gemv_rows<Arch>(g);
    if constexpr (std::is_same_v<TB, float>)
        if (g.trans_b && !g.trans_a && g.m > skinny_rows && g.m <= gemm_blocking<Arch>::nr)
            return gemm_few_rows<Arch>(g);
    if (g.trans_b && g.m <= skinny_rows) {
        if (!g.trans_a)
            return gemm_dot<Arch>(g.m, g.n, g.k, g.alpha, g.a, g.lda, g.b, g.ldb, g.beta, g.c,
                                  g.ldc);
        // Few rows of a transposed A: gather them into contiguous rows first.
        aligned_buffer<float> rows(g.m * g.k, uninitialized);
        for (std::size_t i = 0; i < g.m; ++i)
            for (std::size_t kk = 0; kk < g.k; ++kk)
                rows.data()[i * g.k + kk] = g.a_at(i, kk);
        return gemm_dot<Arch>(g.m, g.n, g.k, g.alpha, rows.data(), g.k, g.b, g.ldb, g.beta,
                              g.c, g.ldc);
    }
    gemm_packed<Arch>(g);
}
#endif

// Splits C into blocks, one task each; every block is an ordinary gemm of the inner
// executor. A task packs its own part of the operand whose dimension is split and the whole
// of the other, so the split runs along the larger of m and n: columns for x·Wᵀ (few tokens,
// wide W), rows for weight gradients such as dyᵀ·x of a 32000-wide classifier, whose A would
// otherwise be packed once per thread.
inline constexpr std::size_t split_block = 64; // gemm_split_c's blocks: a multiple of every micro-tile width

template <class Inner, class TB>
void gemm_split_c(const exec::threads<Inner>& ex, const gemm_args<TB>& g) {
    constexpr std::size_t block = split_block;
    // Below these sizes a split costs more than it saves. Few-row products are bound by
    // streaming B, so they pay off sooner: at 32K elements of B a thread still reads 64 KiB.
    const std::size_t work = g.m * g.n * std::max<std::size_t>(g.k, 1);
    const std::size_t threshold = g.m <= skinny_rows ? std::size_t{1} << 15 : std::size_t{1} << 18;
    if (ex.concurrency() == 1 || work < threshold)
        return gemm(ex.inner(), g);
    if (g.n >= g.m) {
        const std::size_t blocks = (g.n + block - 1) / block;
        ex.parallel_for(blocks, 1, [&](std::size_t b0, std::size_t b1) {
            const std::size_t j0 = b0 * block, j1 = std::min(g.n, b1 * block);
            gemm(ex.inner(), g.column_block(j0, j1 - j0));
        });
    } else {
        const std::size_t blocks = (g.m + block - 1) / block;
        ex.parallel_for(blocks, 1, [&](std::size_t b0, std::size_t b1) {
            const std::size_t i0 = b0 * block, i1 = std::min(g.m, b1 * block);
            gemm(ex.inner(), g.row_block(i0, i1 - i0));
        });
    }
}

template <class Inner, class TB>
void gemm(const exec::threads<Inner>& ex, const gemm_args<TB>& g) {
    gemm_split_c(ex, g);
}

#if T2_ENABLE_SIMD
// With SIMD pieces, a product with a few micro-tiles of rows for every thread may instead
// share each packed block of B among the threads (gemm_packed_shared_b), splitting C's rows:
// B is packed once rather than once per thread, and the rows divide evenly. It pays unless C
// is much wider than tall and its columns divide into enough blocks to balance (x·Wᵀ for a
// hundred tokens and a wide W), where the column split above needs no barrier. Measured on
// two threads (AVX2): squares 0.9–1.0 → 1.0–1.1 of OpenBLAS; 128 rows × 288–768 columns
// 0.6–0.9 → 0.9–1.1; 128 × 2048–4096 better split by columns (0.93–1.02 against 0.7–0.8).
template <class Arch, class TB>
void gemm(const exec::threads<exec::simd<Arch>>& ex, const gemm_args<TB>& g) {
    using blk = gemm_blocking<Arch>;
    const std::size_t threads = ex.concurrency();
    const std::size_t column_blocks = (g.n + split_block - 1) / split_block;
    const bool columns_balance = g.n > g.m && column_blocks >= 8 * threads;
    if (threads > 1 && g.m >= threads * 4 * blk::mr && !columns_balance && g.n >= blk::nr && g.k > 0 &&
        g.m * g.n * g.k >= (std::size_t{1} << 18))
        return gemm_packed_shared_b<Arch>(g, threads, [&](std::size_t n, auto&& f) { ex.pool().run(n, f); });
    gemm_split_c(ex, g);
}
#endif

template <class TB>
gemm_args<TB> make_gemm_args(matrix_view<const float> a, matrix_view<const TB> b, matrix_view<float> c,
                             const gemm_options& options) {
    const std::size_t m = options.transpose_a ? a.extent(1) : a.extent(0);
    const std::size_t k = options.transpose_a ? a.extent(0) : a.extent(1);
    const std::size_t kb = options.transpose_b ? b.extent(1) : b.extent(0);
    const std::size_t n = options.transpose_b ? b.extent(0) : b.extent(1);
    T2_CHECK(k == kb && c.extent(0) == m && c.extent(1) == n, "gemm: op(A) is ", m, "x", k,
             ", op(B) is ", kb, "x", n, " and C is ", c.shape(), "; need C = ", m, "x", n,
             " and matching inner dimensions (A ", a.shape(), (options.transpose_a ? "ᵀ" : ""),
             ", B ", b.shape(), (options.transpose_b ? "ᵀ" : ""), ")");
    return {options.transpose_a, options.transpose_b, m, n, k,
            options.alpha, a.data(), a.extent(1), b.data(), b.extent(1),
            options.beta, c.data(), n};
}

template <exec::cpu_executor E, class TB>
void gemm_impl(const E& ex, matrix_view<const float> a, matrix_view<const TB> b, matrix_view<float> c,
               const gemm_options& options) {
    const auto g = make_gemm_args(a, b, c, options);
    if (g.m != 0 && g.n != 0)
        gemm(ex, g);
}

// Several few-row products over one A (the q, k, v projections of a decoded token), as one
// job: their 64-column blocks are numbered one after another and split across the pool
// together. At decoding each product is a few hundred microseconds of streaming its B, and a
// pool job per product paid a fork-join and the slower core's tail for each (two-thread bf16
// decode of the stories42M shape: 1.59× f32 before, see benchmarks/README.md). Each block is
// the same inner gemm the column split runs, so the results are bit for bit those of
// separate gemm calls.
template <class Inner, class TB>
void gemm_same_a(const exec::threads<Inner>& ex, std::span<const gemm_args<TB>> products) {
    constexpr std::size_t block = split_block;
    std::size_t blocks = 0, work = 0;
    bool few_rows = true;
    for (const auto& g : products) {
        if (g.m == 0)
            continue;
        blocks += (g.n + block - 1) / block;
        work += g.m * g.n * std::max<std::size_t>(g.k, 1);
        few_rows = few_rows && g.m <= skinny_rows && g.trans_b && !g.trans_a;
    }
    if (!few_rows || ex.concurrency() == 1 || work < (std::size_t{1} << 15)) {
        for (const auto& g : products)
            if (g.m != 0 && g.n != 0)
                gemm(ex, g);
        return;
    }
    ex.parallel_for(blocks, 1, [&](std::size_t b0, std::size_t b1) {
        std::size_t first = 0; // the number of the current product's first block
        for (const auto& g : products) {
            if (g.m == 0)
                continue;
            const std::size_t count = (g.n + block - 1) / block;
            const std::size_t from = std::max(b0, first), to = std::min(b1, first + count);
            if (from < to) {
                const std::size_t j0 = (from - first) * block, j1 = std::min(g.n, (to - first) * block);
                gemm(ex.inner(), g.column_block(j0, j1 - j0));
            }
            first += count;
        }
    });
}

template <exec::cpu_executor E, class TB>
void gemm_same_a(const E& ex, std::span<const gemm_args<TB>> products) {
    for (const auto& g : products)
        if (g.m != 0 && g.n != 0)
            gemm(ex, g);
}

} // namespace detail

// B in f32, or in bf16 (weights kept in half the memory, widened as they are read).
template <exec::cpu_executor E>
void gemm(const E& ex, matrix_view<const float> a, matrix_view<const float> b, matrix_view<float> c,
          const gemm_options& options = {}) {
    detail::gemm_impl(ex, a, b, c, options);
}
template <exec::cpu_executor E>
void gemm(const E& ex, matrix_view<const float> a, matrix_view<const bf16> b, matrix_view<float> c,
          const gemm_options& options = {}) {
    detail::gemm_impl(ex, a, b, c, options);
}

// Several products over one A, C_i = alpha · op(A) · op(B_i) + beta · C_i, bit for bit what a
// gemm call each gives; on a thread pool, few-row products (decoding's q, k and v) share one
// job instead of one each.
template <class TB>
struct gemm_product {
    matrix_view<const TB> b;
    matrix_view<float> c;
};

template <exec::cpu_executor E, class TB>
void gemm_same_a(const E& ex, matrix_view<const float> a, std::span<const gemm_product<TB>> products,
                 const gemm_options& options = {}) {
    constexpr std::size_t most = 8;
    T2_CHECK(products.size() <= most, "gemm_same_a: at most ", most, " products, got ", products.size());
    std::array<detail::gemm_args<TB>, most> args{};
    for (std::size_t i = 0; i < products.size(); ++i)
        args[i] = detail::make_gemm_args(a, products[i].b, products[i].c, options);
    detail::gemm_same_a(ex, std::span<const detail::gemm_args<TB>>(args.data(), products.size()));
}

} // namespace ops
T2_NAMESPACE_END
