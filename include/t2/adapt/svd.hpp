#pragma once
// Thin singular value decomposition of an f32 matrix, W = U Σ Vᵀ. This is the one-time
// decomposition behind Singular Value Fine-tuning.
//
//   W [n × m] (f32)  ->  U [n × r], σ [r], V [m × r] (f32), r = min(n, m)
//
//   t2::exec::thread_pool pool(4);
//   auto d = t2::adapt::svd<double>(t2::exec::threads<t2::exec::simd<>>(pool), w);
//
// Methods (svd_options::method):
// - bidiagonal (default): Householder bidiagonalization, implicit-shift QR on the bidiagonal
//   (LAPACK's xBDSQR, with its relative accuracy), back-transformation by the reflectors in
//   blocks of 32 in the compact WY form (detail/svd_householder.hpp,
//   detail/svd_bidiagonal_qr.hpp, detail/svd_block_reflector.hpp). About 4-8 times faster than
//   jacobi; accuracy measured a few 1e-8 (Real = double) in reconstruction and orthogonality.
// - jacobi: one-sided Jacobi (detail/svd_jacobi.hpp), the highest relative accuracy for
//   small singular values of graded matrices, at several times the cost.
//
// Guarantees (both methods):
// - σ is sorted descending and nonnegative; ties keep the order the method produced them in,
//   so the result is fully deterministic.
// - UᵀU = I and VᵀV = I even for rank-deficient input. Jacobi sets σ = 0 for columns at or
//   below σ_max·ε² and completes U by Gram-Schmidt; bidiagonal gets the completion from the
//   orthogonal transformations themselves, and its σ of a rank-deficient W are rounding noise
//   (below about σ_max·ε of Real) rather than exact zeros.
// - Sign convention: in every column of U the component of largest magnitude (the first
//   such one on ties) is positive; the matching V column is flipped with it, so U Σ Vᵀ is
//   unchanged. This makes the decomposition a function of W (up to equal σ) so that
//   decomposition files and expert vectors trained on them are reproducible.
// - Edge shapes: 0 rows or 0 columns give r = 0 (empty U, σ and V of the right shapes);
//   an all-zero W gives σ = 0, U = the first r unit vectors, V = I. NaN or infinity in W
//   is a t2::error; so is failing to converge (jacobi: options.max_sweeps; bidiagonal:
//   xBDSQR's bound of 6·r² inner steps; never observed in tests).
// - Determinism: every executor (scalar, simd<Arch>, threads<Inner> with any thread count)
//   gives bitwise the same result for the same method, Real and compiler flags: the work is
//   split into units (columns, fixed row blocks, Jacobi block pairs) whose arithmetic does
//   not depend on who runs them, and no kernel is executor-specific.
//
// Real is the working precision (double by default; float is faster, about 1e-6 relative
// against a few 1e-8 for double). Jacobi accumulates V in double either way (see svd_pair);
// bidiagonal iterates on the bidiagonal in double either way. Results are always f32.
//
// The matrix with more rows than columns is worked on (a wide W is transposed, and U and V
// swap roles at the end): A [p × q], p ≥ q, column-major. Entries are first scaled by a
// power of two (exact) so that the largest is in [0.5, 1) and no square overflows or
// underflows.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "t2/adapt/detail/svd_bidiagonal_qr.hpp"
#include "t2/adapt/detail/svd_block_reflector.hpp"
#include "t2/adapt/detail/svd_householder.hpp"
#include "t2/adapt/detail/svd_jacobi.hpp"
#include "t2/core/error.hpp"
#include "t2/core/tensor.hpp"
#include "t2/exec/executor.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

enum class svd_method { bidiagonal, jacobi };

struct svd_options {
    svd_method method = svd_method::bidiagonal;
    // jacobi only. A sweep visits all column pairs once; Jacobi converges quadratically, typically in
    // 7-15 sweeps, so hitting this cap means something is wrong (a t2::error).
    int max_sweeps = 60;
    // jacobi only. Relative orthogonality that ends the iteration; 0 means √p·ε of Real.
    double tolerance = 0;
};

struct svd_result {
    matrix<float> u;     // [n × r], orthonormal columns
    vector<float> sigma; // [r], descending, ≥ 0
    matrix<float> v;     // [m × r], orthonormal columns
    int sweeps = 0;      // Jacobi sweeps (the last finding nothing to rotate), or QR sweeps
};

namespace detail {

template <class Real>
struct bidiagonal_factors {
    std::vector<Real> u;        // [p × q], column-major
    std::vector<Real> v;        // [q × q], column-major
    std::vector<double> sigma;  // [q], unsorted, ≥ 0
    int sweeps = 0;
};

// A [p × q] (p ≥ q, column-major) is overwritten by the Householder vectors.
template <class Real, exec::cpu_executor E>
bidiagonal_factors<Real> bidiagonal_svd(const E& ex, std::vector<Real>& a, std::size_t p,
                                        std::size_t q) {
    bidiagonal_form<Real> form = bidiagonalize(ex, a.data(), p, q);
    bidiagonal_factors<Real> out{std::vector<Real>(p * q, Real(0)), std::vector<Real>(q * q, Real(0)),
                                 {}, 0};
    for (std::size_t j = 0; j < q; ++j)
        out.u[j * p + j] = out.v[j * q + j] = 1;
    // The bidiagonal's vectors: Ub in the top q rows of U, Vb in V.
    rotation_log<Real> log(out.u.data(), p, out.v.data(), q, q);
    out.sweeps = bidiagonal_qr(ex, form.d, form.e, log);
    back_transform(ex, out.u.data(), p, q, p, a.data(), p, form.tau_q.data(), q, 0);
    // P's vectors lie in the rows of A; copied into columns they take the same kernel.
    std::vector<Real> p_vectors(q * q);
    for (std::size_t k = 0; k + 2 < q; ++k)
        for (std::size_t i = k + 2; i < q; ++i)
            p_vectors[k * q + i] = a[i * p + k];
    back_transform(ex, out.v.data(), q, q, q, p_vectors.data(), q, form.tau_p.data(), q, 1);
    for (std::size_t j = 0; j < q; ++j)
        if (form.d[j] < 0) {
            form.d[j] = -form.d[j];
            for (std::size_t i = 0; i < q; ++i)
                out.v[j * q + i] = -out.v[j * q + i];
        }
    out.sigma = std::move(form.d);
    return out;
}

} // namespace detail

// Thin SVD of w; see the top of this file for shapes, guarantees and the sign convention.
template <class Real = double, exec::cpu_executor E>
svd_result svd(const E& ex, matrix_view<const float> w, const svd_options& options = {}) {
    static_assert(std::is_same_v<Real, float> || std::is_same_v<Real, double>,
                  "svd works in float or double");
    T2_CHECK(options.max_sweeps > 0, "svd: max_sweeps must be positive, got ", options.max_sweeps);
    T2_CHECK(options.tolerance >= 0 && std::isfinite(options.tolerance),
             "svd: tolerance must be finite and >= 0, got ", options.tolerance);
    const std::size_t n = w.extent(0), m = w.extent(1);
    const bool wide = n < m;
    const std::size_t p = wide ? m : n, q = wide ? n : m; // A = (wide ? Wᵀ : W), p × q
    svd_result out{matrix<float>(n, q), vector<float>(q), matrix<float>(m, q)};
    if (q == 0)
        return out;

    float max_abs = 0;
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < m; ++j) {
            const float x = w(i, j);
            T2_CHECK(std::isfinite(x), "svd: the matrix holds ", x, " at (", i, ", ", j,
                     "); only finite values can be decomposed");
            max_abs = std::max(max_abs, std::abs(x));
        }

    // A scaled by a power of two (exact) so its largest entry is in [0.5, 1): squared norms
    // can then neither overflow nor underflow in f32, whatever the magnitude of W.
    int exponent = 0;
    if (max_abs > 0)
        (void)std::frexp(max_abs, &exponent);
    const Real scale = std::ldexp(Real(1), -exponent);

    std::vector<Real> a(p * q); // column j at a[j·p]
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < m; ++j) {
            const std::size_t row = wide ? j : i, col = wide ? i : j;
            a[col * p + row] = Real(w(i, j)) * scale;
        }

    // A = Ua Σ Vaᵀ. Tall: U = Ua (p = n), V = Va. Wide: W = Aᵀ = Va Σ Uaᵀ, so U = Va, V = Ua.
    auto emit = [&](const auto* u_src, const auto* v_src, const auto& sigma) {
        // Descending σ; a stable sort keeps equal values in column order (deterministic).
        std::vector<std::size_t> order(q);
        std::iota(order.begin(), order.end(), std::size_t{0});
        std::stable_sort(order.begin(), order.end(),
                         [&](std::size_t x, std::size_t y) { return sigma[x] > sigma[y]; });
        for (std::size_t k = 0; k < q; ++k) {
            const std::size_t j = order[k];
            const auto* uc = u_src + j * n;
            const auto* vc = v_src + j * m;
            // The convention is judged on the stored f32 values, so it holds exactly for
            // them even where two components round to the same magnitude.
            std::size_t big = 0;
            for (std::size_t i = 1; i < n; ++i)
                if (std::abs(static_cast<float>(uc[i])) > std::abs(static_cast<float>(uc[big])))
                    big = i;
            const bool flip = uc[big] < 0;
            for (std::size_t i = 0; i < n; ++i)
                out.u(i, k) = static_cast<float>(flip ? -uc[i] : uc[i]);
            for (std::size_t i = 0; i < m; ++i)
                out.v(i, k) = static_cast<float>(flip ? -vc[i] : vc[i]);
            out.sigma[k] = static_cast<float>(std::ldexp(sigma[j], exponent));
            T2_CHECK(std::isfinite(out.sigma[k]), "svd: singular value ",
                     std::ldexp(sigma[j], exponent), " of a ", n, " x ", m,
                     " matrix does not fit in f32; scale the matrix down");
        }
    };
    if (options.method == svd_method::jacobi) {
        auto f = detail::jacobi_svd(ex, a, p, q, max_abs > 0, options.max_sweeps, options.tolerance);
        out.sweeps = f.sweeps;
        if (wide)
            emit(f.v.data(), a.data(), f.sigma);
        else
            emit(a.data(), f.v.data(), f.sigma);
    } else {
        auto f = detail::bidiagonal_svd(ex, a, p, q);
        out.sweeps = f.sweeps;
        if (wide)
            emit(f.v.data(), f.u.data(), f.sigma);
        else
            emit(f.u.data(), f.v.data(), f.sigma);
    }
    return out;
}

} // namespace adapt
T2_NAMESPACE_END
