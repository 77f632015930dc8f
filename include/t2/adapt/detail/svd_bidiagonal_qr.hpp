#pragma once
// Singular values and vectors of an upper bidiagonal B [q × q] by implicit-shift QR (LAPACK's
// xBDSQR, Demmel and Kahan): B = Ub·diag(d)·Vbᵀ, with d overwritten by the singular values
// (unsorted; negative ones are left for the caller to flip with their V column).
//
// The iteration on d and e runs in double whatever Real is: it is O(q²) work, and double keeps
// its convergence tests and shifts exact for f32 data. The plane rotations it produces are only
// recorded (sweeps of rotations of adjacent columns) and applied to Ub and Vb later, in bulk:
// rows of Ub and Vb are independent under column rotations, so each block of rows is packed
// into a contiguous buffer and takes every recorded sweep in turn while it sits in cache.
// Each element sees the same rotations in the same order whatever the blocking and the
// thread, so the result does not depend on the executor's thread count.
//
// Guarantees (as xBDSQR): relative accuracy for the singular values of B (zero-shift QR when
// the shift would spoil it), convergence in at most 6·q² inner steps, else a t2::error.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "t2/adapt/detail/svd_parallel.hpp"
#include "t2/core/error.hpp"

T2_NAMESPACE_BEGIN
namespace adapt::detail {

// Smaller and larger singular value of [[f, g], [0, h]] without overflow (LAPACK's xLAS2).
inline void singular_values_2x2(double f, double g, double h, double& smin, double& smax) {
    const double fa = std::abs(f), ga = std::abs(g), ha = std::abs(h);
    const double fhmn = std::min(fa, ha), fhmx = std::max(fa, ha);
    if (fhmn == 0) {
        smin = 0;
        smax = fhmx == 0 ? ga : std::hypot(fhmx, ga);
        return;
    }
    if (ga < fhmx) {
        const double as = 1 + fhmn / fhmx, at = (fhmx - fhmn) / fhmx, au = (ga / fhmx) * (ga / fhmx);
        const double c = 2 / (std::sqrt(as * as + au) + std::sqrt(at * at + au));
        smin = fhmn * c;
        smax = fhmx / c;
        return;
    }
    const double au = fhmx / ga;
    if (au == 0) { // f and h are negligible next to g
        smin = (fhmn * fhmx) / ga;
        smax = ga;
        return;
    }
    const double as = 1 + fhmn / fhmx, at = (fhmx - fhmn) / fhmx;
    const double c = 1 / (std::sqrt(1 + (as * au) * (as * au)) + std::sqrt(1 + (at * au) * (at * au)));
    smin = 2 * (fhmn * c) * au;
    smax = ga / (c + c);
}

// The rotation with c·f + s·g = r, −s·f + c·g = 0, c ≥ 0 (LAPACK 3.10's xLARTG convention).
// The matrix is scaled to entries below 1 before it gets here and is f32 data, so f² + g²
// can neither overflow nor underflow in double.
inline void plane_rotation(double f, double g, double& c, double& s, double& r) {
    if (g == 0) {
        c = 1, s = 0, r = f;
    } else if (f == 0) {
        c = 0, s = g > 0 ? 1 : -1, r = std::abs(g);
    } else {
        const double norm = std::sqrt(f * f + g * g);
        c = std::abs(f) / norm;
        r = std::copysign(norm, f);
        s = g / r;
    }
}

// Recorded rotations of adjacent columns, applied to Ub and Vb (q × q, column-major with
// leading dimensions ldu, ldv) in bulk: rotation (c, s) of columns (j, j+1) maps
// x ← c·x + s·y, y ← c·y − s·x.
template <class Real>
class rotation_log {
public:
    rotation_log(Real* u, std::size_t ldu, Real* v, std::size_t ldv, std::size_t q)
        : u_(u), v_(v), ldu_(ldu), ldv_(ldv), q_(q) {}

    // A sweep over the planes (first + i, first + i + 1), i in [0, count), in ascending order
    // of i when forward, descending otherwise; returns where to write its 4·count numbers:
    // U's cosines, U's sines, V's cosines, V's sines, each indexed by i.
    Real* add_sweep(std::size_t first, std::size_t count, bool forward) {
        sweeps_.push_back({first, count, numbers_.size(), forward});
        numbers_.resize(numbers_.size() + 4 * count);
        return numbers_.data() + sweeps_.back().offset;
    }

    template <exec::cpu_executor E>
    void flush_if_full(const E& ex) {
        if (numbers_.size() >= (std::size_t{1} << 21))
            flush(ex);
    }

    template <exec::cpu_executor E>
    void flush(const E& ex) {
        const std::size_t blocks = (q_ + block_rows - 1) / block_rows;
        svd_for_each(ex, 2 * blocks, 1, [&](std::size_t item) {
            const bool on_v = item >= blocks;
            const std::size_t r0 = (on_v ? item - blocks : item) * block_rows;
            const std::size_t rows = std::min(block_rows, q_ - r0);
            Real* m = (on_v ? v_ : u_) + r0;
            const std::size_t ld = on_v ? ldv_ : ldu_;
            // The block's rows packed column after column, block_rows apart: the sweeps then
            // stream through contiguous memory (ld, often a power of two, would map every
            // column to the same cache sets) and the whole block stays in L2.
            std::vector<Real> packed(q_ * block_rows, Real(0));
            for (std::size_t j = 0; j < q_; ++j)
                std::copy_n(m + j * ld, rows, packed.data() + j * block_rows);
            for (const sweep& sw : sweeps_)
                rotate_sweep(packed.data(), sw, on_v);
            for (std::size_t j = 0; j < q_; ++j)
                std::copy_n(packed.data() + j * block_rows, rows, m + j * ld);
        });
        sweeps_.clear();
        numbers_.clear();
    }

private:
    struct sweep {
        std::size_t first, count, offset;
        bool forward;
    };
    // Rows per block: 256 bytes of a column, enough independent work per rotation (64 and
    // 128 bytes measured 2.4 and 1.6 times slower at 1024² f64 on Zen 4). Pushing several
    // sweeps through a block as a wavefront (same bits) measured no faster: the packed block
    // sits in L2 either way.
    static constexpr std::size_t block_rows = 256 / sizeof(Real);

    // One recorded sweep on the packed block m [q × block_rows], in the sweep's order:
    // columns x = first + i and y = x + 1 become c·x + s·y and c·y − s·x.
    void rotate_sweep(Real* m, const sweep& s, bool on_v) const {
        const Real* cs = numbers_.data() + s.offset + (on_v ? 2 * s.count : 0);
        for (std::size_t t = 0; t < s.count; ++t) {
            const std::size_t i = s.forward ? t : s.count - 1 - t;
            Real* T2_RESTRICT x = m + (s.first + i) * block_rows;
            Real* T2_RESTRICT y = x + block_rows;
            const Real c = cs[i], sn = cs[s.count + i];
            for (std::size_t r = 0; r < block_rows; ++r) {
                const Real a = x[r], b = y[r];
                x[r] = c * a + sn * b;
                y[r] = c * b - sn * a;
            }
        }
    }

    Real* u_;
    Real* v_;
    std::size_t ldu_, ldv_, q_;
    std::vector<sweep> sweeps_;
    std::vector<Real> numbers_;
};

// Diagonalizes B (d [q], e [q − 1]); the rotations go to `log`. Returns the number of QR
// sweeps. Follows xBDSQR with its relative-accuracy tolerance; the 2×2 blocks that xBDSQR
// solves in closed form take an ordinary shifted step here (their shift is exact).
template <class Real, exec::cpu_executor E>
int bidiagonal_qr(const E& ex, std::vector<double>& d, std::vector<double>& e, rotation_log<Real>& log) {
    const std::size_t n = d.size();
    if (n <= 1)
        return 0;
    const double eps = std::numeric_limits<double>::epsilon() / 2; // LAPACK's unit roundoff
    const double tol = std::max(10.0, std::min(100.0, std::pow(eps, -0.125))) * eps;
    const double unfl = std::numeric_limits<double>::min();
    constexpr int max_iterations_per_pair = 6;

    // A lower bound on the smallest singular value sets the absolute threshold for
    // negligible entries; relative accuracy is kept down to it.
    double sminoa = std::abs(d[0]), running = sminoa;
    for (std::size_t i = 1; i < n && sminoa != 0; ++i) {
        running = std::abs(d[i]) * (running / (running + std::abs(e[i - 1])));
        sminoa = std::min(sminoa, running);
    }
    sminoa /= std::sqrt(double(n));
    const double nn = double(n) * double(n);
    const double thresh = std::max(tol * sminoa, max_iterations_per_pair * nn * unfl);
    const double max_iterations = max_iterations_per_pair * nn;

    double iterations = 0;
    int sweeps = 0;
    std::size_t old_ll = 0, old_m = 0;
    bool have_old = false, down = true;
    std::size_t m = n - 1; // the bottom of the block being worked on
    while (m > 0) {
        T2_CHECK(iterations <= max_iterations, "svd: the bidiagonal QR iteration did not converge in ",
                 max_iterations, " steps on ", n,
                 " singular values; this should not happen for finite input (please report it), "
                 "svd_method::jacobi is the fallback");
        // The block [ll, m]: e[ll−1] negligible (or ll = 0), nothing negligible inside.
        std::size_t ll = 0;
        double block_max = std::abs(d[m]);
        bool split_at_bottom = false;
        for (std::size_t i = m; i-- > 0;) {
            if (std::abs(e[i]) <= thresh) {
                e[i] = 0;
                if (i + 1 == m)
                    split_at_bottom = true;
                ll = i + 1;
                break;
            }
            block_max = std::max({block_max, std::abs(d[i]), std::abs(e[i])});
        }
        if (split_at_bottom) {
            --m;
            continue;
        }
        // A new block: chase the bulge from the larger end of the diagonal towards the smaller.
        if (!have_old || ll > old_m || m < old_ll)
            down = std::abs(d[ll]) >= std::abs(d[m]);

        // Convergence tests, relative to the running lower bound on the smallest singular value.
        double smin_lower = 0;
        bool deflated = false;
        if (down) {
            if (std::abs(e[m - 1]) <= tol * std::abs(d[m])) {
                e[m - 1] = 0;
                continue;
            }
            double mu = std::abs(d[ll]);
            smin_lower = mu;
            for (std::size_t i = ll; i < m; ++i) {
                if (std::abs(e[i]) <= tol * mu) {
                    e[i] = 0;
                    deflated = true;
                    break;
                }
                mu = std::abs(d[i + 1]) * (mu / (mu + std::abs(e[i])));
                smin_lower = std::min(smin_lower, mu);
            }
        } else {
            if (std::abs(e[ll]) <= tol * std::abs(d[ll])) {
                e[ll] = 0;
                continue;
            }
            double mu = std::abs(d[m]);
            smin_lower = mu;
            for (std::size_t i = m; i-- > ll;) {
                if (std::abs(e[i]) <= tol * mu) {
                    e[i] = 0;
                    deflated = true;
                    break;
                }
                mu = std::abs(d[i]) * (mu / (mu + std::abs(e[i])));
                smin_lower = std::min(smin_lower, mu);
            }
        }
        if (deflated)
            continue;
        old_ll = ll, old_m = m, have_old = true;

        // The shift: the smaller singular value of the trailing (leading, going up) 2×2,
        // or zero where subtracting it could cost relative accuracy.
        double shift = 0;
        if (!(double(n) * tol * (smin_lower / block_max) <= std::max(eps, 0.01 * tol))) {
            double r, sll;
            if (down) {
                sll = std::abs(d[ll]);
                singular_values_2x2(d[m - 1], e[m - 1], d[m], shift, r);
            } else {
                sll = std::abs(d[m]);
                singular_values_2x2(d[ll], e[ll], d[ll + 1], shift, r);
            }
            if (sll > 0 && (shift / sll) * (shift / sll) < eps)
                shift = 0;
        }
        iterations += double(m - ll);
        ++sweeps;

        const std::size_t count = m - ll;
        Real* rot = log.add_sweep(ll, count, down);
        Real *uc = rot, *us = rot + count, *vc = rot + 2 * count, *vs = rot + 3 * count;
        auto record = [&](std::size_t i, double cu, double su, double cv, double sv) {
            uc[i] = Real(cu), us[i] = Real(su), vc[i] = Real(cv), vs[i] = Real(sv);
        };
        if (shift == 0 && down) {
            double cs = 1, sn = 0, old_cs = 1, old_sn = 0, r;
            for (std::size_t i = ll; i < m; ++i) {
                plane_rotation(d[i] * cs, e[i], cs, sn, r);
                if (i > ll)
                    e[i - 1] = old_sn * r;
                plane_rotation(old_cs * r, d[i + 1] * sn, old_cs, old_sn, d[i]);
                record(i - ll, old_cs, old_sn, cs, sn);
            }
            const double h = d[m] * cs;
            d[m] = h * old_cs;
            e[m - 1] = h * old_sn;
            if (std::abs(e[m - 1]) <= thresh)
                e[m - 1] = 0;
        } else if (shift == 0) {
            double cs = 1, sn = 0, old_cs = 1, old_sn = 0, r;
            for (std::size_t i = m; i > ll; --i) {
                plane_rotation(d[i] * cs, e[i - 1], cs, sn, r);
                if (i < m)
                    e[i] = old_sn * r;
                plane_rotation(old_cs * r, d[i - 1] * sn, old_cs, old_sn, d[i]);
                record(i - 1 - ll, cs, -sn, old_cs, -old_sn);
            }
            const double h = d[ll] * cs;
            d[ll] = h * old_cs;
            e[ll] = h * old_sn;
            if (std::abs(e[ll]) <= thresh)
                e[ll] = 0;
        } else if (down) {
            double f = (std::abs(d[ll]) - shift) * (std::copysign(1.0, d[ll]) + shift / d[ll]);
            double g = e[ll];
            for (std::size_t i = ll; i < m; ++i) {
                double cr, sr, cl, sl, r;
                plane_rotation(f, g, cr, sr, r);
                if (i > ll)
                    e[i - 1] = r;
                f = cr * d[i] + sr * e[i];
                e[i] = cr * e[i] - sr * d[i];
                g = sr * d[i + 1];
                d[i + 1] = cr * d[i + 1];
                plane_rotation(f, g, cl, sl, r);
                d[i] = r;
                f = cl * e[i] + sl * d[i + 1];
                d[i + 1] = cl * d[i + 1] - sl * e[i];
                if (i + 1 < m) {
                    g = sl * e[i + 1];
                    e[i + 1] = cl * e[i + 1];
                }
                record(i - ll, cl, sl, cr, sr);
            }
            e[m - 1] = f;
            if (std::abs(e[m - 1]) <= thresh)
                e[m - 1] = 0;
        } else {
            double f = (std::abs(d[m]) - shift) * (std::copysign(1.0, d[m]) + shift / d[m]);
            double g = e[m - 1];
            for (std::size_t i = m; i > ll; --i) {
                double cr, sr, cl, sl, r;
                plane_rotation(f, g, cr, sr, r);
                if (i < m)
                    e[i] = r;
                f = cr * d[i] + sr * e[i - 1];
                e[i - 1] = cr * e[i - 1] - sr * d[i];
                g = sr * d[i - 1];
                d[i - 1] = cr * d[i - 1];
                plane_rotation(f, g, cl, sl, r);
                d[i] = r;
                f = cl * e[i - 1] + sl * d[i - 1];
                d[i - 1] = cl * d[i - 1] - sl * e[i - 1];
                if (i > ll + 1) {
                    g = sl * e[i - 2];
                    e[i - 2] = cl * e[i - 2];
                }
                record(i - 1 - ll, cr, -sr, cl, -sl);
            }
            e[ll] = f;
            if (std::abs(e[ll]) <= thresh)
                e[ll] = 0;
        }
        log.flush_if_full(ex);
    }
    log.flush(ex);
    return sweeps;
}

} // namespace adapt::detail
T2_NAMESPACE_END
