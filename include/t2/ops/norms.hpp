#pragma once
// Normalisation over the last dimension.
//
//   rmsnorm:   y[rows × d] = x · w[d] / sqrt(mean(x²) + eps)
//   layernorm: y[rows × d] = (x − mean(x)) / sqrt(var(x) + eps) · gamma[d] + beta[d]
//   (vector overloads treat x[d] as one row)
//
//   rmsnorm_backward: dx[rows × d] (overwritten), dweight[d] (accumulated, +=) from dy
//
// rmsnorm follows llama2.c (and Hugging Face's LlamaRMSNorm): eps inside the square root,
// y = w · (x · rstd). layernorm follows torch.nn.LayerNorm (the biased variance) with the
// corrected two-pass algorithm (Chan, Golub & LeVeque 1983): a second pass sums x − m and
// (x − m)² around the first-pass mean m, which corrects both m's rounding error and the
// variance; one-pass E[x²] − E[x]² would cancel badly when |mean| >> std. y may be x.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include "t2/core/tensor.hpp"
#include "t2/exec/scalar.hpp"
#include "t2/exec/simd.hpp"
#include "t2/exec/threads.hpp"
#include "t2/ops/detail/kernel_support.hpp"
#include "t2/ops/detail/parallel.hpp"

T2_NAMESPACE_BEGIN
namespace ops {
namespace detail {

inline void rmsnorm(const exec::scalar&, const float* x, const float* w, float* y, std::size_t rows,
                    std::size_t d, float eps) {
    for (std::size_t r = 0; r < rows; ++r) {
        const float* xr = x + r * d;
        float* yr = y + r * d;
        float ss = 0.f;
        for (std::size_t j = 0; j < d; ++j)
            ss += xr[j] * xr[j];
        const float rstd = 1.f / std::sqrt(ss / static_cast<float>(d) + eps);
        for (std::size_t j = 0; j < d; ++j)
            yr[j] = w[j] * (rstd * xr[j]);
    }
}

inline void layernorm(const exec::scalar&, const float* x, const float* gamma, const float* beta,
                      float* y, std::size_t rows, std::size_t d, float eps) {
    for (std::size_t r = 0; r < rows; ++r) {
        const float* xr = x + r * d;
        float* yr = y + r * d;
        float sum = 0.f;
        for (std::size_t j = 0; j < d; ++j)
            sum += xr[j];
        const float m = sum / static_cast<float>(d);
        float s1 = 0.f, s2 = 0.f;
        for (std::size_t j = 0; j < d; ++j) {
            s1 += xr[j] - m;
            s2 += (xr[j] - m) * (xr[j] - m);
        }
        const float mean = m + s1 / static_cast<float>(d);
        const float var =
            std::max(0.f, (s2 - s1 * s1 / static_cast<float>(d)) / static_cast<float>(d));
        const float rstd = 1.f / std::sqrt(var + eps);
        for (std::size_t j = 0; j < d; ++j)
            yr[j] = (xr[j] - mean) * rstd * gamma[j] + beta[j];
    }
}

#if T2_ENABLE_SIMD
// Σ f(x[j]) over one row, two partial sums per lane to overlap FMA latency; f must map
// the zero padding of the tail to zero.
template <class Arch, class F>
float simd_row_sum(const float* x, std::size_t d, F&& f) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t lanes = batch::size;
    batch s0(0.f), s1(0.f);
    std::size_t j = 0;
    for (; j + 2 * lanes <= d; j += 2 * lanes) {
        s0 = f(batch::load_unaligned(x + j), s0);
        s1 = f(batch::load_unaligned(x + j + lanes), s1);
    }
    for (; j + lanes <= d; j += lanes)
        s0 = f(batch::load_unaligned(x + j), s0);
    if (j < d)
        s1 = f(load_partial<Arch>(x + j, d - j, 0.f), s1);
    return t2::detail::reduce_add(s0 + s1);
}

template <class Arch>
void rmsnorm(const exec::simd<Arch>&, const float* x, const float* w, float* y, std::size_t rows,
             std::size_t d, float eps) {
    using batch = xsimd::batch<float, Arch>;
    for (std::size_t r = 0; r < rows; ++r) {
        const float* xr = x + r * d;
        const float ss = simd_row_sum<Arch>(
            xr, d, [](const batch& v, const batch& acc) { return xsimd::fma(v, v, acc); });
        const batch rstd(1.f / std::sqrt(ss / static_cast<float>(d) + eps));
        simd_map<Arch>(w, xr, y + r * d, d,
                       [&](const batch& wv, const batch& xv) { return wv * (rstd * xv); });
    }
}

template <class Arch>
void layernorm(const exec::simd<Arch>&, const float* x, const float* gamma, const float* beta,
               float* y, std::size_t rows, std::size_t d, float eps) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t lanes = batch::size;
    for (std::size_t r = 0; r < rows; ++r) {
        const float* xr = x + r * d;
        float* yr = y + r * d;
        const float m =
            simd_row_sum<Arch>(xr, d, [](const batch& v, const batch& acc) { return v + acc; }) /
            static_cast<float>(d);
        // Σ(x − m) and Σ(x − m)² in one pass over the full batches; the padding of a
        // partial batch would add −m, so the tail is done by hand.
        const batch vm(m);
        const std::size_t body = d / lanes * lanes;
        batch a1(0.f), a2(0.f);
        for (std::size_t j = 0; j < body; j += lanes) {
            const batch c = batch::load_unaligned(xr + j) - vm;
            a1 += c;
            a2 = xsimd::fma(c, c, a2);
        }
        float s1 = t2::detail::reduce_add(a1), s2 = t2::detail::reduce_add(a2);
        for (std::size_t j = body; j < d; ++j) {
            s1 += xr[j] - m;
            s2 += (xr[j] - m) * (xr[j] - m);
        }
        const batch mean(m + s1 / static_cast<float>(d));
        const float var =
            std::max(0.f, (s2 - s1 * s1 / static_cast<float>(d)) / static_cast<float>(d));
        const batch rstd(1.f / std::sqrt(var + eps));
        std::size_t j = 0;
        for (; j < body; j += lanes) {
            const batch v = (batch::load_unaligned(xr + j) - mean) * rstd;
            xsimd::fma(v, batch::load_unaligned(gamma + j), batch::load_unaligned(beta + j))
                .store_unaligned(yr + j);
        }
        if (j < d) {
            const std::size_t n = d - j;
            const batch v = (load_partial<Arch>(xr + j, n, 0.f) - mean) * rstd;
            store_partial<Arch>(xsimd::fma(v, load_partial<Arch>(gamma + j, n, 0.f),
                                           load_partial<Arch>(beta + j, n, 0.f)),
                                yr + j, n);
        }
    }
}
#endif

template <class Inner>
void rmsnorm(const exec::threads<Inner>& ex, const float* x, const float* w, float* y,
             std::size_t rows, std::size_t d, float eps) {
    for_rows(ex, rows, d, stream_grain, [&](std::size_t r0, std::size_t r1) {
        detail::rmsnorm(ex.inner(), x + r0 * d, w, y + r0 * d, r1 - r0, d, eps);
    });
}

template <class Inner>
void layernorm(const exec::threads<Inner>& ex, const float* x, const float* gamma,
               const float* beta, float* y, std::size_t rows, std::size_t d, float eps) {
    for_rows(ex, rows, d, stream_grain, [&](std::size_t r0, std::size_t r1) {
        detail::layernorm(ex.inner(), x + r0 * d, gamma, beta, y + r0 * d, r1 - r0, d, eps);
    });
}

inline void check_norm(const char* op, matrix_view<const float> x, matrix_view<float> y,
                       const char* param_name, vector_view<const float> param, float eps) {
    check_same_shape(op, "x", x, "y", y);
    check_no_partial_overlap(op, "x", x, "y", y);
    T2_CHECK(x.extent(1) > 0, op, ": x is ", x.shape(), "; it needs at least one column");
    T2_CHECK(param.size() == x.extent(1), op, ": ", param_name, " is ", param.shape(), " but x is ",
             x.shape(), "; ", param_name, " needs one element per column");
    T2_CHECK(eps >= 0.f, op, ": eps is ", eps, "; it must be >= 0");
}

} // namespace detail

// y = x · weight / sqrt(mean(x²) + eps), row by row. y may be x.
template <exec::cpu_executor E>
void rmsnorm(const E& ex, matrix_view<const float> x, vector_view<const float> weight,
             matrix_view<float> y, float eps = 1e-5f) {
    detail::check_norm("rmsnorm", x, y, "weight", weight, eps);
    detail::rmsnorm(ex, x.data(), weight.data(), y.data(), x.extent(0), x.extent(1), eps);
}

template <exec::cpu_executor E>
void rmsnorm(const E& ex, vector_view<const float> x, vector_view<const float> weight,
             vector_view<float> y, float eps = 1e-5f) {
    rmsnorm(ex, x.reshape(dims<2>(1, x.size())), weight, y.reshape(dims<2>(1, y.size())), eps);
}

// y = (x − mean) / sqrt(var + eps) · gamma + beta, row by row (biased variance). y may be x.
template <exec::cpu_executor E>
void layernorm(const E& ex, matrix_view<const float> x, vector_view<const float> gamma,
               vector_view<const float> beta, matrix_view<float> y, float eps = 1e-5f) {
    detail::check_norm("layernorm", x, y, "gamma", gamma, eps);
    T2_CHECK(beta.size() == x.extent(1), "layernorm: beta is ", beta.shape(), " but x is ",
             x.shape(), "; beta needs one element per column");
    detail::layernorm(ex, x.data(), gamma.data(), beta.data(), y.data(), x.extent(0), x.extent(1),
                      eps);
}

template <exec::cpu_executor E>
void layernorm(const E& ex, vector_view<const float> x, vector_view<const float> gamma,
               vector_view<const float> beta, vector_view<float> y, float eps = 1e-5f) {
    layernorm(ex, x.reshape(dims<2>(1, x.size())), gamma, beta, y.reshape(dims<2>(1, y.size())),
              eps);
}

// Backward of rmsnorm. With r = 1 / sqrt(mean(x²) + eps) and g = dy ⊙ weight per row:
//   dx       = r · (g − x · r² · mean(g ⊙ x))    [rows × d], overwritten
//   dweight += Σ_rows dy ⊙ x · r                 [d], accumulated so that a caller can sum
//                                                over calls (an empty dweight skips it:
//                                                a frozen weight)
// dx may be x or dy (in place). dweight is summed column by column over the rows in
// order, so every executor and thread count gives the same bits. `scratch` (rows floats, for
// r) may come from the caller; without it the call allocates its own.
template <exec::cpu_executor E>
void rmsnorm_backward(const E& ex, matrix_view<const float> x, vector_view<const float> weight,
                      matrix_view<const float> dy, matrix_view<float> dx,
                      vector_view<float> dweight, float eps = 1e-5f, std::span<float> scratch = {}) {
    constexpr const char* op = "rmsnorm_backward";
    const std::size_t rows = x.extent(0), d = x.extent(1);
    detail::check_same_shape(op, "x", x, "dy", dy);
    detail::check_same_shape(op, "x", x, "dx", dx);
    detail::check_no_partial_overlap(op, "x", x, "dx", dx);
    detail::check_no_partial_overlap(op, "dy", dy, "dx", dx);
    T2_CHECK(d > 0, op, ": x is ", x.shape(), "; it needs at least one column");
    T2_CHECK(weight.size() == d, op, ": weight is ", weight.shape(), " but x is ", x.shape(),
             "; weight needs one element per column");
    T2_CHECK(dweight.empty() || dweight.size() == d, op, ": dweight is ", dweight.shape(),
             " but x is ", x.shape(), "; give one element per column, or none to skip it");
    T2_CHECK(eps >= 0.f, op, ": eps is ", eps, "; it must be >= 0");
    detail::check_disjoint(op, "x", x, "dweight", dweight);
    detail::check_disjoint(op, "dy", dy, "dweight", dweight);
    detail::check_disjoint(op, "dx", dx, "dweight", dweight);

    const float* xp = x.data();
    const float* dyp = dy.data();
    std::vector<float> own;
    if (scratch.size() < rows) {
        own.resize(rows);
        scratch = own;
    }
    float* rstd = scratch.data();
    detail::for_row_ranges(ex, rows, d, detail::stream_grain, [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
            float ss = 0.f;
            for (std::size_t j = 0; j < d; ++j)
                ss += xp[r * d + j] * xp[r * d + j];
            rstd[r] = 1.f / std::sqrt(ss / static_cast<float>(d) + eps);
        }
    });
    // Before dx: dx may overwrite x or dy.
    if (!dweight.empty())
        detail::for_column_ranges(
            ex, rows, d, detail::stream_grain, [&](std::size_t j0, std::size_t j1) {
                float* dw = dweight.data();
                for (std::size_t r = 0; r < rows; ++r)
                    for (std::size_t j = j0; j < j1; ++j)
                        dw[j] += dyp[r * d + j] * xp[r * d + j] * rstd[r];
            });
    detail::for_row_ranges(ex, rows, d, detail::stream_grain, [&](std::size_t r0, std::size_t r1) {
        const float* w = weight.data();
        for (std::size_t r = r0; r < r1; ++r) {
            const float* xr = xp + r * d;
            const float* dyr = dyp + r * d;
            float* dxr = dx.data() + r * d;
            float gx = 0.f;
            for (std::size_t j = 0; j < d; ++j)
                gx += dyr[j] * w[j] * xr[j];
            const float c = rstd[r] * rstd[r] * gx / static_cast<float>(d);
            for (std::size_t j = 0; j < d; ++j)
                dxr[j] = rstd[r] * (dyr[j] * w[j] - xr[j] * c);
        }
    });
}

} // namespace ops
T2_NAMESPACE_END
