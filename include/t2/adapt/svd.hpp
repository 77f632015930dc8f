#pragma once
// Thin singular value decomposition of an f32 matrix, W = U Σ Vᵀ, by one-sided Jacobi
// (Hestenes). This is the one-time decomposition behind Singular Value Fine-tuning.
//
//   W [n × m] (f32)  ->  U [n × r], σ [r], V [m × r] (f32), r = min(n, m)
//
//   t2::exec::thread_pool pool(4);
//   auto d = t2::adapt::svd<double>(t2::exec::threads<t2::exec::scalar>(pool), w);
//
// Guarantees:
// - σ is sorted descending and nonnegative; ties keep the order of the Jacobi columns, so
//   the result is fully deterministic.
// - UᵀU = I and VᵀV = I even for rank-deficient input: a column of the Jacobi iterate
//   whose norm falls to (or below) σ_max·ε² gets σ = 0 and a U column completed by
//   Gram-Schmidt from unit vectors; its V column comes from the accumulated rotations.
// - Sign convention: in every column of U the component of largest magnitude (the first
//   such one on ties) is positive; the matching V column is flipped with it, so U Σ Vᵀ is
//   unchanged. This makes the decomposition a function of W (up to equal σ) so that
//   decomposition files and expert vectors trained on them are reproducible.
// - Edge shapes: 0 rows or 0 columns give r = 0 (empty U, σ and V of the right shapes);
//   an all-zero W gives σ = 0, U = the first r unit vectors, V = I. NaN or infinity in W
//   is a t2::error; so is failing to converge within options.max_sweeps (never observed
//   in tests; it would mean a pathological input or a too-strict tolerance).
//
// Real is the working precision of the work on W's columns (double by default; float
// is faster, about 1e-6 relative on matrices of a few hundred columns against a few 1e-8
// for double); the rotations and V are accumulated in double either way (see svd_pair).
// Results are always stored as f32.
//
// Method: the matrix with more rows than columns is worked on (a wide W is transposed,
// and U and V swap roles at the end): A [p × q], p ≥ q, stored column by column. Each
// rotation of columns (i, j) zeroes their inner product; a sweep visits every pair once.
// The columns are grouped into 2B blocks (of up to 16 columns, a function of q only) and
// the blocks meet in round-robin (tournament) order: each of the 2B−1 rounds holds B
// disjoint block pairs, which run in parallel on exec::threads<Inner> (serially, in the
// same order, on other executors). Every pair's arithmetic is the same whichever thread
// runs it and the rounds are ordered, so all executors give bitwise equal results.
// Convergence: a sweep in which every pair has |aᵢ·aⱼ| ≤ tol·‖aᵢ‖‖aⱼ‖, with tol = √p·ε
// by default (LAPACK's xGESVJ uses the same). Entries are first scaled by a power of two
// (exact) so that no square overflows or underflows.
//
// Cost: about 6·q²·(p + q/2) flops per sweep and 7-15 sweeps on random matrices (up to
// ~22 for strongly graded rows); no QR preconditioning or column pivoting (LAPACK's
// xGEJSV) yet, which would cut the sweeps on tall and graded matrices.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/core/tensor.hpp"
#include "t2/exec/executor.hpp"
#include "t2/exec/threads.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

struct svd_options {
    // A sweep visits all column pairs once; Jacobi converges quadratically, typically in
    // 7-15 sweeps, so hitting this cap means something is wrong (a t2::error).
    int max_sweeps = 60;
    // Relative orthogonality that ends the iteration; 0 means √p·ε of the working precision.
    double tolerance = 0;
};

struct svd_result {
    matrix<float> u;     // [n × r], orthonormal columns
    vector<float> sigma; // [r], descending, ≥ 0
    matrix<float> v;     // [m × r], orthonormal columns
    int sweeps = 0;      // Jacobi sweeps used, the last one finding nothing to rotate
};

namespace detail {

// Runs body(pair) for pair in [0, n): spread over the pool on threads<Inner>, in order on
// any other executor. `grain` keeps each chunk big enough to be worth a task.
template <exec::cpu_executor E, class Body>
void svd_for_each(const E&, std::size_t n, std::size_t, Body&& body) {
    for (std::size_t i = 0; i < n; ++i)
        body(i);
}
template <class Inner, class Body>
void svd_for_each(const exec::threads<Inner>& ex, std::size_t n, std::size_t grain, Body&& body) {
    ex.parallel_for(n, grain, [&](std::size_t begin, std::size_t end) {
        for (std::size_t i = begin; i < end; ++i)
            body(i);
    });
}

// Partner of player k in round `round` of a round-robin tournament of `players` (even):
// player players−1 stays put, the others rotate (the circle method). Every pair meets
// exactly once in players−1 rounds.
inline std::size_t tournament_partner(std::size_t k, std::size_t round, std::size_t players) {
    const std::size_t last = players - 1;
    if (k == last)
        return round;
    if (k == round)
        return last;
    return (2 * round + last - k) % last; // k + partner ≡ 2·round (mod last)
}

// ‖x‖², ‖y‖² and x·y in one pass. Eight partial sums (one AVX vector of f32, two of f64)
// break the dependency chain, which the compiler may not do itself (it must not reassociate
// floating-point sums), and fix the summation order, so results are identical on every
// executor and thread count.
template <class Real>
void svd_gram(const Real* T2_RESTRICT x, const Real* T2_RESTRICT y, std::size_t p,
              Real& xx, Real& yy, Real& xy) {
    constexpr std::size_t lanes = 8;
    Real a[lanes] = {}, b[lanes] = {}, c[lanes] = {};
    std::size_t i = 0;
    for (; i + lanes <= p; i += lanes)
        for (std::size_t l = 0; l < lanes; ++l) {
            a[l] += x[i + l] * x[i + l];
            b[l] += y[i + l] * y[i + l];
            c[l] += x[i + l] * y[i + l];
        }
    for (std::size_t l = 0; i < p; ++i, ++l) {
        a[l] += x[i] * x[i];
        b[l] += y[i] * y[i];
        c[l] += x[i] * y[i];
    }
    auto sum = [](const Real* r) {
        return ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    };
    xx = sum(a);
    yy = sum(b);
    xy = sum(c);
}

template <class Real>
Real svd_dot(const Real* x, const Real* y, std::size_t p) {
    Real xx, yy, xy;
    svd_gram(x, y, p, xx, yy, xy);
    return xy;
}

// x ← c·x − s·y, y ← s·x + c·y.
template <class Real>
void svd_rotate(Real* T2_RESTRICT x, Real* T2_RESTRICT y, std::size_t p, Real c, Real s) {
    for (std::size_t i = 0; i < p; ++i) {
        const Real xi = x[i], yi = y[i];
        x[i] = c * xi - s * yi;
        y[i] = s * xi + c * yi;
    }
}

// One Jacobi rotation of columns x, y (length p) of A and the matching columns of V
// (length q). Returns whether the pair was still out of tolerance. The rotation itself is
// computed, and V accumulated, in double whatever Real is: V is the product of thousands
// of rotations, and f32 cosines and sines (c² + s² ≠ 1 by an ulp) let its columns drift
// from orthonormality about ten times faster than the f32 work on A loses accuracy.
template <class Real>
bool svd_pair(Real* x, Real* y, std::size_t p, double* vx, double* vy, std::size_t q, Real tol) {
    Real alpha, beta, gamma;
    svd_gram(x, y, p, alpha, beta, gamma);
    // A zero column has gamma = 0 and is skipped here, which is what keeps it exactly zero.
    if (!(std::abs(gamma) > tol * std::sqrt(alpha) * std::sqrt(beta)))
        return false;
    // The rotation that diagonalizes [[alpha, gamma], [gamma, beta]], the smaller angle
    // (|t| ≤ 1) for stability (Rutishauser's formulas).
    const double zeta = (double(beta) - double(alpha)) / (2 * double(gamma));
    const double t = (zeta >= 0 ? 1.0 : -1.0) / (std::abs(zeta) + std::sqrt(1 + zeta * zeta));
    const double c = 1 / std::sqrt(1 + t * t), s = c * t;
    svd_rotate(x, y, p, Real(c), Real(s));
    svd_rotate(vx, vy, q, c, s);
    return true;
}

// Unit vector orthogonal to the `count` orthonormal columns cols[0..count) (length p),
// written to out: the unit vector e_k, from `start` on, that keeps at least half of the
// average remaining norm after projection (one always exists: the average of ‖residual‖²
// over k is (p − count)/p), projected twice (classical Gram-Schmidt twice is as good as
// modified) and normalized.
template <class Real>
void svd_complete(const std::vector<const Real*>& cols, std::size_t p, std::size_t& start, Real* out) {
    const std::size_t count = cols.size();
    T2_ASSERT(count < p);
    const Real need = Real(0.5) * Real(p - count) / Real(p);
    std::vector<Real> best(p);
    Real best_norm = -1;
    for (std::size_t tried = 0; tried < p; ++tried) {
        const std::size_t k = (start + tried) % p;
        std::fill(out, out + p, Real(0));
        out[k] = 1;
        for (int pass = 0; pass < 2; ++pass)
            for (const Real* c : cols) {
                const Real d = svd_dot(c, out, p);
                for (std::size_t i = 0; i < p; ++i)
                    out[i] -= d * c[i];
            }
        const Real norm2 = svd_dot(out, out, p);
        if (norm2 > best_norm) {
            best_norm = norm2;
            std::copy(out, out + p, best.begin());
        }
        if (norm2 >= need) {
            start = k + 1;
            break;
        }
    }
    const Real inv = 1 / std::sqrt(best_norm);
    for (std::size_t i = 0; i < p; ++i)
        out[i] = best[i] * inv;
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

    // Column-major: column j at a[j·p] and v[j·q]. V is kept in double (see svd_pair).
    std::vector<Real> a(p * q);
    std::vector<double> v(q * q, 0.0);
    for (std::size_t i = 0; i < n; ++i)
        for (std::size_t j = 0; j < m; ++j) {
            const std::size_t row = wide ? j : i, col = wide ? i : j;
            a[col * p + row] = Real(w(i, j)) * scale;
        }
    for (std::size_t j = 0; j < q; ++j)
        v[j * q + j] = 1;

    if (max_abs > 0 && q > 1) {
        const Real eps = std::numeric_limits<Real>::epsilon();
        const Real tol = options.tolerance > 0 ? Real(options.tolerance)
                                               : std::sqrt(Real(p)) * eps;
        // Columns are grouped into an even number of blocks; a round pairs the blocks
        // (tournament order), and one task handles all column pairs between its two blocks,
        // so a sweep needs 2B − 1 joins instead of q − 1. The blocking depends on q alone,
        // never on the executor, which is what keeps every executor's result identical.
        const std::size_t block = std::clamp<std::size_t>(q / 32, 1, 16);
        const std::size_t tasks = (q + 2 * block - 1) / (2 * block); // B, pairs of blocks
        const std::size_t blocks = 2 * tasks;
        auto first = [&](std::size_t b) { return b * q / blocks; }; // block b: [first(b), first(b+1))
        std::vector<unsigned char> rotated(tasks);
        // Enough work per chunk (about 40k flops) that handing it to a thread pays.
        const std::size_t task_work = block * block * (p + q);
        const std::size_t grain = std::max<std::size_t>(1, 4096 / task_work);
        auto rotate = [&](std::size_t i, std::size_t j) {
            return detail::svd_pair(&a[i * p], &a[j * p], p, &v[i * q], &v[j * q], q, tol);
        };
        bool converged = false;
        for (int sweep = 0; sweep < options.max_sweeps && !converged; ++sweep) {
            converged = true;
            ++out.sweeps;
            for (std::size_t round = 0; round + 1 < blocks; ++round) {
                detail::svd_for_each(ex, tasks, grain, [&](std::size_t t) {
                    // Task t of this round: the t-th pair (x, y), x < y, in player order.
                    std::size_t x = 0, seen = 0;
                    for (;; ++x) {
                        if (x < detail::tournament_partner(x, round, blocks) && seen++ == t)
                            break;
                    }
                    const std::size_t y = detail::tournament_partner(x, round, blocks);
                    bool any = false;
                    if (round == 0) // each block's own pairs, once per sweep
                        for (const std::size_t b : {x, y})
                            for (std::size_t i = first(b); i < first(b + 1); ++i)
                                for (std::size_t j = i + 1; j < first(b + 1); ++j)
                                    any = rotate(i, j) || any;
                    for (std::size_t i = first(x); i < first(x + 1); ++i)
                        for (std::size_t j = first(y); j < first(y + 1); ++j)
                            any = rotate(i, j) || any;
                    rotated[t] = any;
                });
                for (std::size_t t = 0; t < tasks; ++t)
                    converged = converged && !rotated[t];
            }
        }
        T2_CHECK(converged, "svd: one-sided Jacobi did not converge in ", options.max_sweeps,
                 " sweeps on a ", n, " x ", m, " matrix (tolerance ", tol,
                 "); raise svd_options::max_sweeps or tolerance");
    }

    // σⱼ = ‖aⱼ‖; columns at or below σ_max·ε² are numerically zero: their direction is
    // rounding noise, so they get σ = 0 and a completed U column instead.
    std::vector<Real> sigma(q);
    for (std::size_t j = 0; j < q; ++j)
        sigma[j] = std::sqrt(detail::svd_dot(&a[j * p], &a[j * p], p));
    const Real sigma_max = *std::max_element(sigma.begin(), sigma.end());
    const Real eps = std::numeric_limits<Real>::epsilon();
    const Real zero_below = sigma_max * eps * eps;
    std::vector<const Real*> basis;
    basis.reserve(q);
    std::vector<std::size_t> zero_cols;
    for (std::size_t j = 0; j < q; ++j) {
        Real* col = &a[j * p];
        if (sigma[j] > zero_below && sigma[j] > 0) {
            const Real inv = 1 / sigma[j];
            for (std::size_t i = 0; i < p; ++i)
                col[i] *= inv;
            basis.push_back(col);
        } else {
            sigma[j] = 0;
            zero_cols.push_back(j);
        }
    }
    std::size_t start = 0;
    for (const std::size_t j : zero_cols) {
        detail::svd_complete(basis, p, start, &a[j * p]);
        basis.push_back(&a[j * p]);
    }

    // Descending σ; a stable sort keeps equal values in column order (deterministic).
    std::vector<std::size_t> order(q);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t x, std::size_t y) { return sigma[x] > sigma[y]; });

    // A = Ua Σ Vaᵀ. Tall: U = Ua (p = n), V = Va. Wide: W = Aᵀ = Va Σ Uaᵀ, so U = Va, V = Ua.
    auto emit = [&](const auto* u_src, const auto* v_src) {
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
    if (wide)
        emit(v.data(), a.data());
    else
        emit(a.data(), v.data());
    return out;
}

} // namespace adapt
T2_NAMESPACE_END
