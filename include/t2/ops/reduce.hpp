#pragma once
// Reductions of f32 vectors, and of every row of a matrix.
//
//   sum:    x[n] -> Σ x                         (0 when n = 0)
//   max:    x[n] -> max x                       (n ≥ 1)
//   argmax: x[n] -> first index of max x        (n ≥ 1)
//   row_sum, row_max: x[rows × cols] -> y[rows];  row_argmax: -> index[rows]   (cols ≥ 1)
//
// NaN, as in NumPy and PyTorch: max is NaN and argmax is the index of the first NaN as
// soon as x holds a NaN. Ties, −0 against +0 included, go to the first index.
//
// Sums run in f32: the reference left to right, simd<Arch> with partial sums per lane,
// threads<Inner> over fixed pieces added in order (the same result for any thread count).
// max and argmax are exact on every executor.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <span>

#include "t2/core/tensor.hpp"
#include "t2/exec/scalar.hpp"
#include "t2/exec/simd.hpp"
#include "t2/exec/threads.hpp"
#include "t2/ops/detail/kernel_support.hpp"

T2_NAMESPACE_BEGIN
namespace ops {
namespace detail {

// A maximum and where it is. value is NaN (and index the first NaN's) when x has a NaN.
struct arg_result {
    float value;
    std::size_t index;
};

// The maximum of two arg_results of consecutive pieces, a coming first.
inline arg_result combine_argmax(const arg_result& a, const arg_result& b) {
    if (std::isnan(a.value))
        return a;
    if (std::isnan(b.value))
        return b;
    return b.value > a.value ? b : a;
}

inline float combine_max(float a, float b) {
    if (std::isnan(a) || std::isnan(b))
        return std::numeric_limits<float>::quiet_NaN();
    return std::max(a, b);
}

inline float sum(const exec::scalar&, const float* x, std::size_t n) {
    float s = 0.f;
    for (std::size_t i = 0; i < n; ++i)
        s += x[i];
    return s;
}

inline float max(const exec::scalar&, const float* x, std::size_t n) {
    float m = -std::numeric_limits<float>::infinity();
    for (std::size_t i = 0; i < n; ++i) {
        if (std::isnan(x[i]))
            return x[i];
        m = std::max(m, x[i]);
    }
    return m;
}

inline arg_result argmax(const exec::scalar&, const float* x, std::size_t n) {
    std::size_t best = 0;
    for (std::size_t i = 0; i < n; ++i) {
        if (std::isnan(x[i]))
            return {x[i], i};
        if (x[i] > x[best])
            best = i;
    }
    return {x[best], best};
}

#if T2_ENABLE_SIMD
template <class Arch>
float sum(const exec::simd<Arch>&, const float* x, std::size_t n) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t lanes = batch::size;
    // Four independent sums so consecutive adds do not wait on each other's latency.
    batch s0(0.f), s1(0.f), s2(0.f), s3(0.f);
    std::size_t i = 0;
    for (; i + 4 * lanes <= n; i += 4 * lanes) {
        s0 += batch::load_unaligned(x + i);
        s1 += batch::load_unaligned(x + i + lanes);
        s2 += batch::load_unaligned(x + i + 2 * lanes);
        s3 += batch::load_unaligned(x + i + 3 * lanes);
    }
    for (; i + lanes <= n; i += lanes)
        s0 += batch::load_unaligned(x + i);
    float s = t2::detail::reduce_add((s0 + s1) + (s2 + s3));
    for (; i < n; ++i)
        s += x[i];
    return s;
}

template <class Arch>
float max(const exec::simd<Arch>&, const float* x, std::size_t n) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t lanes = batch::size;
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    // xsimd::max follows the ISA on NaN (x86 maxps returns its second operand), so NaNs
    // are tracked apart and decide the result at the end. (Not with v != v: xsimd 8 compares
    // ordered on AVX and AVX-512, where NaN != NaN is false.)
    batch m(neg_inf);
    auto nan = xsimd::isnan(m);
    std::size_t i = 0;
    for (; i + lanes <= n; i += lanes) {
        const batch v = batch::load_unaligned(x + i);
        m = xsimd::max(m, v);
        nan = nan || xsimd::isnan(v);
    }
    if (i < n) {
        const batch v = load_partial<Arch>(x + i, n - i, neg_inf);
        m = xsimd::max(m, v);
        nan = nan || xsimd::isnan(v);
    }
    if (xsimd::any(nan))
        return std::numeric_limits<float>::quiet_NaN();
    return reduce_max(m);
}

// argmax of at most lanes · 2^20 elements: every lane keeps its running maximum and the
// number of the batch it came from (counted in f32, exact below 2^24); strict > keeps the
// first occurrence within a lane, and the smallest index among the lanes holding the
// maximum is the first occurrence overall.
template <class Arch>
arg_result argmax_segment(const float* x, std::size_t n) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t lanes = batch::size;
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
    batch best(neg_inf), where(0.f), current(0.f);
    const batch one(1.f);
    auto nan = xsimd::isnan(best);
    const auto step = [&](const batch& v) {
        const auto greater = v > best;
        best = xsimd::select(greater, v, best);
        where = xsimd::select(greater, current, where);
        nan = nan || xsimd::isnan(v);
        current += one;
    };
    std::size_t i = 0;
    for (; i + lanes <= n; i += lanes)
        step(batch::load_unaligned(x + i));
    if (i < n)
        step(load_partial<Arch>(x + i, n - i, neg_inf));
    if (xsimd::any(nan))
        return argmax(exec::scalar{}, x, n); // finds the first NaN
    alignas(64) float best_lanes[lanes], where_lanes[lanes];
    best.store_unaligned(best_lanes);
    where.store_unaligned(where_lanes);
    const float m = *std::max_element(best_lanes, best_lanes + lanes);
    std::size_t index = n;
    for (std::size_t l = 0; l < lanes; ++l)
        if (best_lanes[l] == m)
            index = std::min(index, static_cast<std::size_t>(where_lanes[l]) * lanes + l);
    return {m, index};
}

template <class Arch>
arg_result argmax(const exec::simd<Arch>&, const float* x, std::size_t n) {
    constexpr std::size_t segment = xsimd::batch<float, Arch>::size << 20;
    arg_result best = argmax_segment<Arch>(x, std::min(n, segment));
    for (std::size_t b = segment; b < n && !std::isnan(best.value); b += segment) {
        arg_result r = argmax_segment<Arch>(x + b, std::min(n - b, segment));
        r.index += b;
        best = combine_argmax(best, r);
    }
    return best;
}
#endif

template <class Inner>
float sum(const exec::threads<Inner>& ex, const float* x, std::size_t n) {
    return reduce_pieces<float>(
        ex, n, [&](std::size_t b, std::size_t e) { return detail::sum(ex.inner(), x + b, e - b); },
        std::plus<>{});
}

template <class Inner>
float max(const exec::threads<Inner>& ex, const float* x, std::size_t n) {
    return reduce_pieces<float>(
        ex, n, [&](std::size_t b, std::size_t e) { return detail::max(ex.inner(), x + b, e - b); },
        combine_max);
}

template <class Inner>
arg_result argmax(const exec::threads<Inner>& ex, const float* x, std::size_t n) {
    return reduce_pieces<arg_result>(
        ex, n,
        [&](std::size_t b, std::size_t e) {
            arg_result r = detail::argmax(ex.inner(), x + b, e - b);
            r.index += b;
            return r;
        },
        combine_argmax);
}

// Row versions: out(r, row r's reduction) for every row. On threads<Inner> every row is
// reduced exactly as the vector version would reduce it (the same fixed pieces), so the
// results do not depend on how rows land on threads: rows are spread over the pool, and
// when there are fewer rows than threads each row's pieces are. (A reduction called from
// inside a task of the same pool runs its pieces serially.)
template <class E, class Reduce, class Out>
void reduce_rows(const E& ex, const float* x, std::size_t rows, std::size_t cols, Reduce&& reduce,
                 Out&& out) {
    for (std::size_t r = 0; r < rows; ++r)
        out(r, reduce(ex, x + r * cols, cols));
}

template <class Inner, class Reduce, class Out>
void reduce_rows(const exec::threads<Inner>& ex, const float* x, std::size_t rows, std::size_t cols,
                 Reduce&& reduce, Out&& out) {
    const auto rows_from = [&](std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r)
            out(r, reduce(ex, x + r * cols, cols));
    };
    if (rows < ex.concurrency())
        rows_from(0, rows);
    else
        for_rows(ex, rows, cols, stream_grain, rows_from);
}

} // namespace detail

// Σ x (f32 accumulation). 0 for an empty vector.
template <exec::cpu_executor E>
float sum(const E& ex, vector_view<const float> x) {
    return detail::sum(ex, x.data(), x.size());
}

// The largest element; NaN if x holds a NaN.
template <exec::cpu_executor E>
float max(const E& ex, vector_view<const float> x) {
    T2_CHECK(!x.empty(), "max: x is empty; the maximum of nothing is undefined");
    return detail::max(ex, x.data(), x.size());
}

// The index of the first largest element; the index of the first NaN if x holds a NaN.
template <exec::cpu_executor E>
std::size_t argmax(const E& ex, vector_view<const float> x) {
    T2_CHECK(!x.empty(), "argmax: x is empty; the maximum of nothing is undefined");
    return detail::argmax(ex, x.data(), x.size()).index;
}

// y[r] = Σ_c x[r, c].
template <exec::cpu_executor E>
void row_sum(const E& ex, matrix_view<const float> x, vector_view<float> y) {
    T2_CHECK(y.size() == x.extent(0), "row_sum: x is ", x.shape(), " but y is ", y.shape(),
             "; y needs one element per row of x");
    detail::check_disjoint("row_sum", "x", x.data(), x.size() * sizeof(float), "y", y.data(),
                           y.size() * sizeof(float));
    detail::reduce_rows(
        ex, x.data(), x.extent(0), x.extent(1),
        [](const auto& e, const float* row, std::size_t n) { return detail::sum(e, row, n); },
        [&](std::size_t r, float v) { y[r] = v; });
}

// y[r] = max_c x[r, c] (NaN for a row holding a NaN).
template <exec::cpu_executor E>
void row_max(const E& ex, matrix_view<const float> x, vector_view<float> y) {
    T2_CHECK(y.size() == x.extent(0), "row_max: x is ", x.shape(), " but y is ", y.shape(),
             "; y needs one element per row of x");
    T2_CHECK(x.extent(1) > 0 || x.extent(0) == 0, "row_max: x is ", x.shape(),
             "; the maximum of an empty row is undefined");
    detail::check_disjoint("row_max", "x", x.data(), x.size() * sizeof(float), "y", y.data(),
                           y.size() * sizeof(float));
    detail::reduce_rows(
        ex, x.data(), x.extent(0), x.extent(1),
        [](const auto& e, const float* row, std::size_t n) { return detail::max(e, row, n); },
        [&](std::size_t r, float v) { y[r] = v; });
}

// index[r] = argmax_c x[r, c] (first occurrence; the first NaN of a row holding one).
template <exec::cpu_executor E>
void row_argmax(const E& ex, matrix_view<const float> x, std::span<std::size_t> index) {
    T2_CHECK(index.size() == x.extent(0), "row_argmax: x is ", x.shape(), " but index has ",
             index.size(), " elements; it needs one per row of x");
    T2_CHECK(x.extent(1) > 0 || x.extent(0) == 0, "row_argmax: x is ", x.shape(),
             "; the maximum of an empty row is undefined");
    detail::check_disjoint("row_argmax", "x", x.data(), x.size() * sizeof(float), "index",
                           index.data(), index.size_bytes());
    detail::reduce_rows(
        ex, x.data(), x.extent(0), x.extent(1),
        [](const auto& e, const float* row, std::size_t n) { return detail::argmax(e, row, n); },
        [&](std::size_t r, const detail::arg_result& v) { index[r] = v.index; });
}

} // namespace ops
T2_NAMESPACE_END
