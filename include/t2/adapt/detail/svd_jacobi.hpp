#pragma once
// One-sided Jacobi (Hestenes) SVD of A [p × q], p ≥ q, column-major: the highest-relative-
// accuracy method of adapt::svd (svd_method::jacobi).
//
// Each rotation of columns (i, j) zeroes their inner product; a sweep visits every pair once.
// The columns are grouped into 2B blocks (of up to 16 columns, a function of q only) and
// the blocks meet in round-robin (tournament) order: each of the 2B−1 rounds holds B
// disjoint block pairs, which run in parallel on exec::threads<Inner> (serially, in the
// same order, on other executors). Every pair's arithmetic is the same whichever thread
// runs it and the rounds are ordered, so all executors give bitwise equal results.
// Convergence: a sweep in which every pair has |aᵢ·aⱼ| ≤ tol·‖aᵢ‖‖aⱼ‖, with tol = √p·ε
// by default (LAPACK's xGESVJ uses the same).
//
// Cost: about 6·q²·(p + q/2) flops per sweep and 7-15 sweeps on random matrices (up to
// ~22 for strongly graded rows); no QR preconditioning or column pivoting (LAPACK's
// xGEJSV), which would cut the sweeps on tall and graded matrices.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "t2/adapt/detail/svd_parallel.hpp"
#include "t2/core/error.hpp"

T2_NAMESPACE_BEGIN
namespace adapt::detail {

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

template <class Real>
struct jacobi_factors {
    std::vector<double> v; // [q × q], column-major; V is accumulated in double (see svd_pair)
    std::vector<Real> sigma; // [q], in column order (unsorted)
    int sweeps = 0;
};

// On return the columns of a hold U (unit norm; numerically zero columns completed to an
// orthonormal set, their σ set to 0). `nonzero` is false for an all-zero A.
template <class Real, exec::cpu_executor E>
jacobi_factors<Real> jacobi_svd(const E& ex, std::vector<Real>& a, std::size_t p, std::size_t q,
                                bool nonzero, int max_sweeps, double tolerance) {
    jacobi_factors<Real> out{std::vector<double>(q * q, 0.0), std::vector<Real>(q), 0};
    for (std::size_t j = 0; j < q; ++j)
        out.v[j * q + j] = 1;
    if (nonzero && q > 1) {
        const Real eps = std::numeric_limits<Real>::epsilon();
        const Real tol = tolerance > 0 ? Real(tolerance) : std::sqrt(Real(p)) * eps;
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
            return svd_pair(&a[i * p], &a[j * p], p, &out.v[i * q], &out.v[j * q], q, tol);
        };
        bool converged = false;
        for (int sweep = 0; sweep < max_sweeps && !converged; ++sweep) {
            converged = true;
            ++out.sweeps;
            for (std::size_t round = 0; round + 1 < blocks; ++round) {
                svd_for_each(ex, tasks, grain, [&](std::size_t t) {
                    // Task t of this round: the t-th pair (x, y), x < y, in player order.
                    std::size_t x = 0, seen = 0;
                    for (;; ++x) {
                        if (x < tournament_partner(x, round, blocks) && seen++ == t)
                            break;
                    }
                    const std::size_t y = tournament_partner(x, round, blocks);
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
        T2_CHECK(converged, "svd: one-sided Jacobi did not converge in ", max_sweeps,
                 " sweeps on a ", p, " x ", q, " matrix (tolerance ", tol,
                 "); raise svd_options::max_sweeps or tolerance");
    }

    // σⱼ = ‖aⱼ‖; columns at or below σ_max·ε² are numerically zero: their direction is
    // rounding noise, so they get σ = 0 and a completed U column instead.
    for (std::size_t j = 0; j < q; ++j)
        out.sigma[j] = std::sqrt(svd_dot(&a[j * p], &a[j * p], p));
    const Real sigma_max = *std::max_element(out.sigma.begin(), out.sigma.end());
    const Real eps = std::numeric_limits<Real>::epsilon();
    const Real zero_below = sigma_max * eps * eps;
    std::vector<const Real*> basis;
    basis.reserve(q);
    std::vector<std::size_t> zero_cols;
    for (std::size_t j = 0; j < q; ++j) {
        Real* col = &a[j * p];
        if (out.sigma[j] > zero_below && out.sigma[j] > 0) {
            const Real inv = 1 / out.sigma[j];
            for (std::size_t i = 0; i < p; ++i)
                col[i] *= inv;
            basis.push_back(col);
        } else {
            out.sigma[j] = 0;
            zero_cols.push_back(j);
        }
    }
    std::size_t start = 0;
    for (const std::size_t j : zero_cols) {
        svd_complete(basis, p, start, &a[j * p]);
        basis.push_back(&a[j * p]);
    }
    return out;
}

} // namespace adapt::detail
T2_NAMESPACE_END
