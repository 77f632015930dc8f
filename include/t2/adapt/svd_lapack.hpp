#pragma once
// Thin SVD by LAPACK's divide-and-conquer xGESDD through LAPACKE: the yardstick for
// adapt::svd, and an alternative where LAPACKE is at hand. Opt-in: include this header and
// link LAPACKE (pkg-config lapacke); nothing else in t2 needs it.
//
//   W [n × m] (f32)  ->  U [n × r], σ [r], V [m × r] (f32), r = min(n, m)
//   auto d = t2::adapt::svd_lapack(w);          // sgesdd on W
//   auto e = t2::adapt::svd_lapack<double>(w);  // dgesdd on W widened to f64
//
// The result follows adapt::svd's conventions (svd.hpp): σ descending and nonnegative, the
// largest-magnitude component of each U column positive with V flipped alike, empty factors
// for 0 rows or columns. NaN or infinity in W, or LAPACK reporting failure (info ≠ 0), is a
// t2::error. Threads: whatever the LAPACK library uses (OpenBLAS: openblas_set_num_threads).
// `sweeps` is 0: divide and conquer has no sweeps to count.
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "t2/adapt/svd.hpp"
#include "t2/core/error.hpp"
#include "t2/core/tensor.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

template <class Real = float>
svd_result svd_lapack(matrix_view<const float> w) {
    static_assert(std::is_same_v<Real, float> || std::is_same_v<Real, double>,
                  "svd_lapack works in float (sgesdd) or double (dgesdd)");
    const std::size_t n = w.extent(0), m = w.extent(1), r = std::min(n, m);
    svd_result out{matrix<float>(n, r), vector<float>(r), matrix<float>(m, r)};
    if (r == 0)
        return out;
    // Row-major throughout: A [n × m], U [n × r] (ldu = r), Vᵀ [r × m] (ldvt = m).
    std::vector<Real> a(n * m), sigma(r), u(n * r), vt(r * m);
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < m; ++j) {
            const float x = w(i, j);
            T2_CHECK(std::isfinite(x), "svd_lapack: the matrix holds ", x, " at (", i, ", ", j,
                     "); only finite values can be decomposed");
            a[i * m + j] = Real(x);
        }
    const auto rows = lapack_int(n), cols = lapack_int(m), rank = lapack_int(r);
    lapack_int info;
    if constexpr (std::is_same_v<Real, float>)
        info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', rows, cols, a.data(), cols, sigma.data(),
                              u.data(), rank, vt.data(), cols);
    else
        info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', rows, cols, a.data(), cols, sigma.data(),
                              u.data(), rank, vt.data(), cols);
    T2_CHECK(info == 0, "svd_lapack: LAPACKE_", std::is_same_v<Real, float> ? 's' : 'd',
             "gesdd returned info = ", info, " on a ", n, " x ", m,
             " matrix (< 0: a bad argument, > 0: no convergence); adapt::svd is the fallback");
    for (std::size_t k = 0; k < r; ++k) {
        // The sign convention is judged on the stored f32 values, as adapt::svd does.
        std::size_t big = 0;
        for (std::size_t i = 1; i < n; ++i)
            if (std::abs(float(u[i * r + k])) > std::abs(float(u[big * r + k])))
                big = i;
        const Real sign = u[big * r + k] < 0 ? Real(-1) : Real(1);
        for (std::size_t i = 0; i < n; ++i)
            out.u(i, k) = float(sign * u[i * r + k]);
        for (std::size_t i = 0; i < m; ++i)
            out.v(i, k) = float(sign * vt[k * m + i]);
        out.sigma[k] = float(sigma[k]);
    }
    return out;
}

} // namespace adapt
T2_NAMESPACE_END
