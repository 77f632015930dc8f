#pragma once
// Back-transformation of the bidiagonal's singular vectors by the Householder reflectors
// (LAPACK's xORMBR), in the compact WY form (xLARFT + xLARFB):
//
//   C [length × cols] ← H_{k0} H_{k0+1} … H_{k1−1} · C = (I − V T Vᵀ) · C
//   V [rows × nb]   the block's reflectors, rows = length − (k0 + shift): column i holds zeros
//                   above row i, the implicit 1 at row i, the reflector's tail below
//   T [nb × nb]     upper triangular, T[i, i] = τ_{k0+i}
//   W [nb × cols]   = Vᵀ C, then T W; C −= V W
//
// Blocks of nb reflectors go from the last to the first. Both products are register-tiled
// loops in Real (t2's gemm is f32 only) whose sums over rows or reflectors run in one fixed
// order. The units spread over exec::threads are fixed groups of columns of C, placed by the
// column index alone, so neither the executor nor the thread count can change a bit.
#include <algorithm>
#include <cstddef>
#include <vector>

#include "t2/adapt/detail/svd_householder.hpp"
#include "t2/adapt/detail/svd_parallel.hpp"
#include "t2/config.hpp"

T2_NAMESPACE_BEGIN
namespace adapt::detail {

inline constexpr std::size_t wy_reflectors = 32; // nb, reflectors per block
inline constexpr std::size_t wy_tile_cols = 6;   // columns of C per register tile
inline constexpr std::size_t wy_task_cols = 24;  // columns of C per task (cache block)
// Rows (or reflectors) per register tile: one 64-byte vector. The loops over a tile's lanes
// carry `#pragma GCC unroll 1` so that GCC vectorizes them as they stand rather than unrolling
// them first and vectorizing the loop around them with transposes (2.5 times slower).
template <class Real>
inline constexpr std::size_t wy_lanes = 64 / sizeof(Real);

static_assert(wy_task_cols % wy_tile_cols == 0);

template <class Real>
struct block_reflector {
    std::size_t rows = 0;
    std::vector<Real> v;  // [rows × nb], column-major
    std::vector<Real> vt; // [rows × nb], row-major (Vᵀ's columns contiguous)
    std::vector<Real> t;  // [nb × nb], column-major, upper triangular

    // Reflectors k0..k1 (k1 − k0 ≤ nb; missing ones stay zero, so T's column is zero too),
    // reflector k with its implicit 1 at row k + shift and its tail at tails[k·ld + k + shift
    // + 1 .. length).
    void build(std::size_t length, const Real* tails, std::size_t ld, const Real* tau,
               std::size_t k0, std::size_t k1, std::size_t shift) {
        constexpr std::size_t nb = wy_reflectors;
        const std::size_t h0 = k0 + shift;
        rows = length - h0;
        v.assign(rows * nb, Real(0));
        vt.resize(rows * nb);
        t.assign(nb * nb, Real(0));
        for (std::size_t i = 0; i < k1 - k0 && i < rows; ++i) {
            const std::size_t k = k0 + i;
            Real* col = &v[i * rows];
            col[i] = 1;
            const Real* tail = tails + k * ld + h0 + i + 1;
            for (std::size_t r = i + 1; r < rows; ++r)
                col[r] = tail[r - i - 1];
            // T[0:i, i] = −τᵢ · T[0:i, 0:i] · (V[:, 0:i]ᵀ vᵢ)
            const Real tau_i = tau[k];
            t[i * nb + i] = tau_i;
            if (tau_i == 0)
                continue;
            Real z[nb];
            for (std::size_t l = 0; l < i; ++l)
                z[l] = householder_dot(&v[l * rows + i], col + i, rows - i);
            for (std::size_t l = 0; l < i; ++l) {
                Real s = 0;
                for (std::size_t m = l; m < i; ++m)
                    s += t[m * nb + l] * z[m];
                t[i * nb + l] = -tau_i * s;
            }
        }
        for (std::size_t r = 0; r < rows; ++r)
            for (std::size_t i = 0; i < nb; ++i)
                vt[r * nb + i] = v[i * rows + r];
    }

    // C ← (I − V T Vᵀ) C for C [rows × cols] (leading dimension ldc), cols ≤ wy_task_cols.
    void apply(Real* c, std::size_t cols, std::size_t ldc) const {
        constexpr std::size_t nb = wy_reflectors;
        alignas(64) Real w[nb * wy_task_cols];
        std::size_t j = 0;
        for (; j + wy_tile_cols <= cols; j += wy_tile_cols)
            product_vt_c<wy_tile_cols>(c + j * ldc, ldc, w + j * nb);
        for (; j < cols; ++j)
            product_vt_c<1>(c + j * ldc, ldc, w + j * nb);
        for (j = 0; j < cols; ++j)
            product_t_w(w + j * nb);
        j = 0;
        for (; j + wy_tile_cols <= cols; j += wy_tile_cols)
            subtract_v_w<wy_tile_cols>(c + j * ldc, ldc, w + j * nb);
        for (; j < cols; ++j)
            subtract_v_w<1>(c + j * ldc, ldc, w + j * nb);
    }

private:
    // w[:, 0:NR] = Vᵀ · C[:, 0:NR], each entry summed over the rows in order.
    template <std::size_t NR>
    void product_vt_c(const Real* c, std::size_t ldc, Real* w) const {
        constexpr std::size_t nb = wy_reflectors, mr = wy_lanes<Real>;
        static_assert(nb % mr == 0);
        for (std::size_t i0 = 0; i0 < nb; i0 += mr) {
            Real acc[NR][mr] = {};
            // V[r, i] = 0 for r < i: rows above i0 add nothing to this tile.
            for (std::size_t r = std::min(i0, rows); r < rows; ++r) {
                const Real* T2_RESTRICT vr = &vt[r * nb + i0];
                for (std::size_t jj = 0; jj < NR; ++jj) {
                    const Real x = c[jj * ldc + r];
#pragma GCC unroll 1
                    for (std::size_t ii = 0; ii < mr; ++ii)
                        acc[jj][ii] += vr[ii] * x;
                }
            }
            for (std::size_t jj = 0; jj < NR; ++jj)
                for (std::size_t ii = 0; ii < mr; ++ii)
                    w[jj * nb + i0 + ii] = acc[jj][ii];
        }
    }

    // w ← T·w for one column.
    void product_t_w(Real* T2_RESTRICT w) const {
        constexpr std::size_t nb = wy_reflectors;
        Real out[nb] = {};
        for (std::size_t l = 0; l < nb; ++l) {
            const Real x = w[l];
            const Real* T2_RESTRICT tl = &t[l * nb];
            for (std::size_t i = 0; i < nb; ++i)
                out[i] += tl[i] * x;
        }
        for (std::size_t i = 0; i < nb; ++i)
            w[i] = out[i];
    }

    // C[:, 0:NR] −= V · w[:, 0:NR], each entry's sum over the reflectors in order.
    template <std::size_t NR>
    void subtract_v_w(Real* c, std::size_t ldc, const Real* w) const {
        constexpr std::size_t nb = wy_reflectors, mr = wy_lanes<Real>;
        std::size_t r0 = 0;
        for (; r0 + mr <= rows; r0 += mr) {
            Real acc[NR][mr] = {};
            // V[r, i] = 0 for i > r: reflectors past the tile's last row add nothing.
            const std::size_t reflectors = std::min(nb, r0 + mr);
            for (std::size_t i = 0; i < reflectors; ++i) {
                const Real* T2_RESTRICT vi = &v[i * rows + r0];
                for (std::size_t jj = 0; jj < NR; ++jj) {
                    const Real x = w[jj * nb + i];
#pragma GCC unroll 1
                    for (std::size_t rr = 0; rr < mr; ++rr)
                        acc[jj][rr] += vi[rr] * x;
                }
            }
            for (std::size_t jj = 0; jj < NR; ++jj) {
                Real* T2_RESTRICT cj = c + jj * ldc + r0;
                for (std::size_t rr = 0; rr < mr; ++rr)
                    cj[rr] -= acc[jj][rr];
            }
        }
        for (; r0 < rows; ++r0)
            for (std::size_t jj = 0; jj < NR; ++jj) {
                Real acc = 0;
                for (std::size_t i = 0; i < std::min(nb, r0 + 1); ++i)
                    acc += v[i * rows + r0] * w[jj * nb + i];
                c[jj * ldc + r0] -= acc;
            }
    }
};

// C ← (product of reflectors k = 0..count in ascending order)·C, C [length × cols] with
// leading dimension ldc; reflector k has its implicit 1 at row k + shift and its tail at
// tails[k·ld + k + shift + 1 .. length).
template <class Real, exec::cpu_executor E>
void back_transform(const E& ex, Real* c, std::size_t length, std::size_t cols, std::size_t ldc,
                    const Real* tails, std::size_t ld, const Real* tau, std::size_t count,
                    std::size_t shift) {
    // Reflectors with their 1 at or below the last row are the identity or act on that row
    // alone; the block keeps only rows below its first reflector's 1.
    count = std::min(count, length > shift ? length - shift : 0);
    if (count == 0 || cols == 0)
        return;
    constexpr std::size_t nb = wy_reflectors;
    block_reflector<Real> block;
    const std::size_t tasks = (cols + wy_task_cols - 1) / wy_task_cols;
    for (std::size_t k0 = (count - 1) / nb * nb;; k0 -= nb) {
        const std::size_t k1 = std::min(count, k0 + nb);
        block.build(length, tails, ld, tau, k0, k1, shift);
        Real* rows_from = c + k0 + shift;
        svd_for_each(ex, tasks, householder_grain(block.rows * nb * wy_task_cols / 16),
                     [&](std::size_t task) {
                         const std::size_t j0 = task * wy_task_cols;
                         block.apply(rows_from + j0 * ldc, std::min(wy_task_cols, cols - j0), ldc);
                     });
        if (k0 == 0)
            break;
    }
}

} // namespace adapt::detail
T2_NAMESPACE_END
