#pragma once
// Householder bidiagonalization of A [p × q], p ≥ q, column-major (LAPACK's xGEBD2); the
// reflectors are applied back to the bidiagonal's singular vectors in svd_block_reflector.hpp:
//
//   A = Q B Pᵀ,  B upper bidiagonal (d [q] on the diagonal, e [q−1] above it)
//   Q = H₀ H₁ … H_{q−1},   Hₖ = I − τqₖ uₖ uₖᵀ, uₖ = (0…0, 1, A[k+1:p, k])
//   P = G₀ G₁ … G_{q−3},   Gₖ = I − τpₖ vₖ vₖᵀ, vₖ = (0…0, 1, A[k, k+2:q]) (row k)
//
// Every pass works on whole columns, which are contiguous: applying a left reflector to
// column j needs only column j, so the pending right update of the previous step and the
// left update of this step are fused into one read-write pass per column, and the only other
// pass is the read of A·v for the right reflector. That is three streams of the trailing
// matrix per step where an unfused xGEBD2 needs four, and no gemm is needed (t2's gemm is f32
// only, and the work here is in Real). Columns (and fixed row chunks for A·v) are the units
// spread over exec::threads; no sum ever crosses two of them, so the thread count cannot
// change a bit of the result.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "t2/adapt/detail/svd_parallel.hpp"
#include "t2/config.hpp"

T2_NAMESPACE_BEGIN
namespace adapt::detail {

// x·y with sixteen partial sums in a fixed order: vectorizable without reassociation by the
// compiler, and the same bits whichever executor or thread computes it.
template <class Real>
Real householder_dot(const Real* T2_RESTRICT x, const Real* T2_RESTRICT y, std::size_t n) {
    constexpr std::size_t lanes = 16;
    Real s[lanes] = {};
    std::size_t i = 0;
    for (; i + lanes <= n; i += lanes)
        for (std::size_t l = 0; l < lanes; ++l)
            s[l] += x[i + l] * y[i + l];
    for (std::size_t l = 0; i < n; ++i, ++l)
        s[l] += x[i] * y[i];
    for (std::size_t width = lanes / 2; width > 0; width /= 2)
        for (std::size_t l = 0; l < width; ++l)
            s[l] += s[l + width];
    return s[0];
}

// y −= alpha·x
template <class Real>
void householder_axpy(Real alpha, const Real* T2_RESTRICT x, Real* T2_RESTRICT y, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        y[i] -= alpha * x[i];
}

// The reflector I − τ·(1, x)(1, x)ᵀ that maps (alpha, x[0..n)·stride) to (β, 0…0) (LAPACK's
// xLARFG): x is overwritten with the reflector's tail, alpha with β; returns τ (0 when x is
// already zero, leaving the sign of alpha as it is: B may have negative entries).
template <class Real>
Real householder_reflector(Real& alpha, Real* x, std::size_t n, std::size_t stride) {
    Real norm2 = 0;
    for (std::size_t i = 0; i < n; ++i)
        norm2 += x[i * stride] * x[i * stride];
    if (norm2 == 0)
        return 0;
    const Real beta = -std::copysign(std::hypot(alpha, std::sqrt(norm2)), alpha);
    const Real tau = (beta - alpha) / beta, scale = 1 / (alpha - beta);
    for (std::size_t i = 0; i < n; ++i)
        x[i * stride] *= scale;
    alpha = beta;
    return tau;
}

template <class Real>
struct bidiagonal_form {
    std::vector<double> d, e;    // B's diagonal [q] and superdiagonal [q − 1]
    std::vector<Real> tau_q, tau_p; // [q] each; the reflectors' vectors stay in A
};

// Enough columns per task (about 256k flops) that handing them to a thread pays.
inline std::size_t householder_grain(std::size_t column_length) {
    return std::max<std::size_t>(1, (std::size_t{1} << 16) / std::max<std::size_t>(column_length, 1));
}

template <class Real, exec::cpu_executor E>
bidiagonal_form<Real> bidiagonalize(const E& ex, Real* a, std::size_t p, std::size_t q) {
    bidiagonal_form<Real> out{std::vector<double>(q), std::vector<double>(q > 0 ? q - 1 : 0),
                              std::vector<Real>(q), std::vector<Real>(q)};
    std::vector<Real> x(p); // A·v of the pending right reflector, by row
    constexpr std::size_t row_chunk = 256;
    auto col = [&](std::size_t j) { return a + j * p; };
    for (std::size_t k = 0; k < q; ++k) {
        // The right reflector of step k−1 is still to be applied to rows k..p of the columns
        // from k on: column j loses τ·x·vⱼ, with v = (1, A[k−1, k+1:q]).
        const Real tau_right = k > 0 ? out.tau_p[k - 1] : Real(0);
        auto right_update = [&](std::size_t j) {
            if (tau_right != 0)
                householder_axpy(tau_right * (j == k ? Real(1) : col(j)[k - 1]), &x[k], col(j) + k,
                                 p - k);
        };
        right_update(k);
        Real& diagonal = col(k)[k];
        const Real tau_left = householder_reflector(diagonal, col(k) + k + 1, p - k - 1, 1);
        out.tau_q[k] = tau_left;
        out.d[k] = double(diagonal);
        if (k + 1 == q)
            break;
        const Real* u = col(k) + k + 1; // tail of the left reflector
        svd_for_each(ex, q - k - 1, householder_grain(p - k), [&](std::size_t t) {
            const std::size_t j = k + 1 + t;
            right_update(j);
            if (tau_left == 0)
                return;
            Real* c = col(j) + k;
            const Real w = tau_left * (c[0] + householder_dot(u, c + 1, p - k - 1));
            c[0] -= w;
            householder_axpy(w, u, c + 1, p - k - 1);
        });
        // The right reflector from row k: annihilates A[k, k+2:q].
        Real& super = col(k + 1)[k];
        const Real tau = householder_reflector(super, col(k + 1) + p + k, q - k - 2, p);
        out.tau_p[k] = tau;
        out.e[k] = double(super);
        if (tau == 0)
            continue;
        // x = A[k+1:p, k+1:q]·v, by fixed chunks of rows.
        const std::size_t rows = p - k - 1, chunks = (rows + row_chunk - 1) / row_chunk;
        svd_for_each(ex, chunks, householder_grain(row_chunk * (q - k)), [&](std::size_t chunk) {
            const std::size_t r0 = k + 1 + chunk * row_chunk;
            const std::size_t r1 = std::min(p, r0 + row_chunk);
            Real* T2_RESTRICT xs = &x[r0];
            const Real* T2_RESTRICT first = col(k + 1) + r0;
            for (std::size_t i = 0; i < r1 - r0; ++i)
                xs[i] = first[i];
            for (std::size_t j = k + 2; j < q; ++j)
                householder_axpy(-col(j)[k], col(j) + r0, xs, r1 - r0);
        });
    }
    return out;
}

} // namespace adapt::detail
T2_NAMESPACE_END
