// gemm and gemv: every executor against the scalar reference on odd shapes, all transpose
// and alpha/beta combinations; the scalar reference against a double-precision product.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include "support/check.hpp"
#include "support/executors.hpp"
#include "support/tolerance.hpp"

namespace {

using t2::matrix;
using t2::ops::gemm_options;

struct shape {
    std::size_t m, n, k;
};

// Odd sizes around the tiles (mr = 6/10, nr = 16/32, kc = 256/384) and the skinny-path
// threshold, plus the transformer shapes the issue benchmarks, in miniature.
const shape shapes[] = {{1, 1, 1},   {1, 7, 3},    {2, 3, 5},     {3, 1, 17},   {7, 13, 11},
                        {10, 32, 9}, {11, 33, 31}, {16, 67, 64},  {17, 40, 257}, {31, 17, 5},
                        {33, 65, 385}, {1, 300, 289}, {5, 129, 100}, {67, 258, 7},  {130, 97, 131}};

// Operands stored for the requested transposes: A is m×k (k×m if transposed), B k×n (n×k).
struct problem {
    matrix<float> a, b, c;
    problem(const shape& s, const gemm_options& o, std::uint64_t seed)
        : a(t2_test::random_matrix(o.transpose_a ? s.k : s.m, o.transpose_a ? s.m : s.k, seed)),
          b(t2_test::random_matrix(o.transpose_b ? s.n : s.k, o.transpose_b ? s.k : s.n, seed + 1)),
          c(t2_test::random_matrix(s.m, s.n, seed + 2)) {}
};

std::vector<gemm_options> all_options() {
    std::vector<gemm_options> out;
    for (bool ta : {false, true})
        for (bool tb : {false, true})
            for (auto [alpha, beta] : {std::pair{1.f, 0.f}, {0.5f, 1.f}, {-2.f, 0.25f}})
                out.push_back({ta, tb, alpha, beta});
    return out;
}

// Σ|terms| of every element of α·op(A)·op(B) + β·C for a problem (support/tolerance.hpp).
std::vector<double> magnitudes(const shape& s, const gemm_options& o, const matrix<float>& a,
                               const matrix<float>& b, const matrix<float>& c) {
    return t2_test::product_magnitudes(
        s.m, s.n, s.k, [&](std::size_t i, std::size_t p) { return o.transpose_a ? a(p, i) : a(i, p); },
        [&](std::size_t p, std::size_t j) { return o.transpose_b ? b(j, p) : b(p, j); }, o.alpha, o.beta,
        [&](std::size_t i, std::size_t j) { return c(i, j); });
}

// An element of C is k products, added up, times α, plus β·c: k + 2 roundings on its longest
// path, in any order the kernel chooses (support/tolerance.hpp, comment 4).
std::vector<float> between_orders(const shape& s, const gemm_options& o, const problem& p) {
    return t2_test::scaled_bounds(magnitudes(s, o, p.a, p.b, p.c), t2_test::between_orders(s.k + 2));
}

template <class E>
void check_against_scalar(const E& ex) {
    std::uint64_t seed = 100;
    for (const shape& s : shapes)
        for (const gemm_options& o : all_options()) {
            problem p(s, o, seed += 3);
            matrix<float> want = p.c, got = p.c;
            t2::ops::gemm(t2::exec::scalar{}, p.a, p.b, want, o);
            t2::ops::gemm(ex, p.a, p.b, got, o);
            CAPTURE(s.m);
            CAPTURE(s.n);
            CAPTURE(s.k);
            CAPTURE(o.transpose_a);
            CAPTURE(o.transpose_b);
            CAPTURE(o.alpha);
            CAPTURE(o.beta);
            T2_CHECK_WITHIN(got.span(), want.span(), between_orders(s, o, p));
        }
}

} // namespace

TEST_CASE("gemm scalar reference matches a double-precision product") {
    for (const shape& s : shapes)
        for (const gemm_options& o : all_options()) {
            problem p(s, o, 7);
            matrix<float> got = p.c;
            t2::ops::gemm(t2::exec::scalar{}, p.a, p.b, got, o);
            std::vector<float> want(s.m * s.n);
            for (std::size_t i = 0; i < s.m; ++i)
                for (std::size_t j = 0; j < s.n; ++j) {
                    double sum = 0;
                    for (std::size_t k = 0; k < s.k; ++k)
                        sum += double(o.transpose_a ? p.a(k, i) : p.a(i, k)) *
                               double(o.transpose_b ? p.b(j, k) : p.b(k, j));
                    want[i * s.n + j] = float(o.alpha * sum + o.beta * double(p.c(i, j)));
                }
            T2_CHECK_WITHIN(got.span(), want,
                            t2_test::scaled_bounds(magnitudes(s, o, p.a, p.b, p.c),
                                                   t2_test::against_double(s.k + 2)));
        }
}

#if T2_ENABLE_SIMD
TEST_CASE_TEMPLATE_DEFINE("gemm simd matches scalar", E, gemm_simd_id) { check_against_scalar(E{}); }
TEST_CASE_TEMPLATE_APPLY(gemm_simd_id, t2_test::simd_executors);

TEST_CASE("gemm threads<simd> matches scalar with 1, 2 and 3 threads") {
    for (std::size_t n : {1, 2, 3}) {
        t2::exec::thread_pool pool(n);
        check_against_scalar(t2::exec::threads<t2::exec::simd<>>(pool));
    }
}

TEST_CASE("gemm threads<simd> splits large products correctly") {
    // Big enough to pass the threading threshold and split both ways.
    t2::exec::thread_pool pool(3);
    const t2::exec::threads<t2::exec::simd<>> ex(pool);
    // 9 × 37 × 4133: gemm_few_rows over more than one of its k blocks.
    for (const shape& s : {shape{300, 70, 50}, shape{70, 300, 50}, shape{1, 1000, 300}, shape{9, 777, 130},
                           shape{9, 37, 4133}})
        for (const gemm_options& o : all_options()) {
            problem p(s, o, 11);
            matrix<float> want = p.c, got = p.c;
            t2::ops::gemm(t2::exec::scalar{}, p.a, p.b, want, o);
            t2::ops::gemm(ex, p.a, p.b, got, o);
            T2_CHECK_WITHIN(got.span(), want.span(), between_orders(s, o, p));
        }
}

TEST_CASE("gemm with beta = 0 ignores NaN in C") {
    const shape s{13, 37, 29};
    problem p(s, {}, 5);
    p.c.fill(NAN);
    matrix<float> want(13, 37);
    t2::ops::gemm(t2::exec::scalar{}, p.a, p.b, want);
    t2::ops::gemm(t2::exec::simd<>{}, p.a, p.b, p.c);
    T2_CHECK_WITHIN(p.c.span(), want.span(), between_orders(s, {}, p)); // β = 0: no C term
}
#endif

TEST_CASE("gemm threads<simd> gives simd's result bit for bit, whichever way it splits") {
    // Threads split C (its columns for x·Wᵀ, its rows with a shared packed B for products with
    // rows for every thread), never a sum: every thread count must reproduce one thread.
    const t2::exec::simd<> one;
    for (const shape& s : {shape{300, 70, 50}, shape{70, 300, 50}, shape{257, 333, 300}, shape{1000, 40, 600},
                           shape{130, 97, 131}, shape{9, 777, 130}, shape{64, 1100, 40}})
        for (const gemm_options& o : all_options()) {
            problem p(s, o, 23);
            matrix<float> want = p.c;
            t2::ops::gemm(one, p.a, p.b, want, o);
            for (std::size_t n : {2, 3}) {
                t2::exec::thread_pool pool(n);
                matrix<float> got = p.c;
                t2::ops::gemm(t2::exec::threads<t2::exec::simd<>>(pool), p.a, p.b, got, o);
                CAPTURE(n);
                CAPTURE(s.m);
                CAPTURE(s.n);
                CAPTURE(s.k);
                CHECK(std::equal(got.span().begin(), got.span().end(), want.span().begin()));
            }
        }
}

// Products over one A: what a gemm call each gives, bit for bit, on every executor, whether
// they share one job (few rows of A, Bs transposed) or fall back to a call each (more rows),
// for f32 and bf16 Bs of odd widths, including an empty one.
template <class TB, class E>
void check_same_a(const E& ex, std::size_t m, std::uint64_t seed) {
    const std::size_t k = 131, widths[] = {67, 0, 300, 1};
    const matrix<float> a = t2_test::random_matrix(m, k, seed);
    std::vector<matrix<TB>> bs;
    std::vector<matrix<float>> want, got;
    std::vector<t2::ops::gemm_product<TB>> products;
    for (std::size_t n : widths) {
        const matrix<float> b32 = t2_test::random_matrix(n, k, seed += 7);
        matrix<TB> b(n, k);
        for (std::size_t i = 0; i < b.size(); ++i)
            b[i] = t2::from_f32<TB>(b32[i]);
        bs.push_back(std::move(b));
        want.push_back(t2_test::random_matrix(m, n, seed + 1));
        got.push_back(want.back());
    }
    const gemm_options o{.transpose_b = true, .alpha = 0.5f, .beta = 0.25f};
    for (std::size_t i = 0; i < bs.size(); ++i) {
        t2::ops::gemm(ex, a, bs[i].view(), want[i].view(), o);
        products.push_back({bs[i].view(), got[i].view()});
    }
    t2::ops::gemm_same_a(ex, a, std::span<const t2::ops::gemm_product<TB>>(products), o);
    for (std::size_t i = 0; i < bs.size(); ++i) {
        CAPTURE(i);
        CHECK(std::equal(got[i].span().begin(), got[i].span().end(), want[i].span().begin()));
    }
}

TEST_CASE("gemm_same_a gives a gemm call each's result bit for bit") {
    for (std::size_t m : {1, 3, 4, 9}) {
        CAPTURE(m);
        check_same_a<float>(t2::exec::scalar{}, m, 10 + m);
        check_same_a<t2::bf16>(t2::exec::scalar{}, m, 20 + m);
#if T2_ENABLE_SIMD
        check_same_a<float>(t2::exec::simd<>{}, m, 30 + m);
        for (std::size_t n : {1, 2, 3}) {
            CAPTURE(n);
            t2::exec::thread_pool pool(n);
            const t2::exec::threads<t2::exec::simd<>> ex(pool);
            check_same_a<float>(ex, m, 40 + m);
            check_same_a<t2::bf16>(ex, m, 50 + m);
        }
#endif
    }
    matrix<float> a(1, 4), b(3, 5), c(1, 3);
    const t2::ops::gemm_product<float> mismatched[] = {{b.view(), c.view()}};
    const std::span<const t2::ops::gemm_product<float>> products(mismatched);
    const gemm_options transposed{.transpose_b = true};
    CHECK_THROWS_WITH_AS(t2::ops::gemm_same_a(t2::exec::scalar{}, a, products, transposed), doctest::Contains("gemm"),
                         t2::error);
}

TEST_CASE("gemm threads<scalar> matches scalar") {
    t2::exec::thread_pool pool(2);
    check_against_scalar(t2::exec::threads<t2::exec::scalar>(pool));
}

TEST_CASE("gemm with k = 0 scales C by beta") {
    matrix<float> a(3, 0), b(0, 4), c = t2_test::random_matrix(3, 4, 1), want = c;
    for (float& v : want.span())
        v *= 0.5f;
    t2::ops::gemm(t2::exec::scalar{}, a, b, c, {.beta = 0.5f});
    T2_CHECK_CLOSE(c.span(), want.span(), 0, 0);
#if T2_ENABLE_SIMD
    c = t2_test::random_matrix(3, 4, 1);
    t2::ops::gemm(t2::exec::simd<>{}, a, b, c, {.beta = 0.5f});
    T2_CHECK_CLOSE(c.span(), want.span(), 0, 0);
#endif
}

TEST_CASE("gemm rejects mismatched shapes") {
    matrix<float> a(3, 4), b(5, 6), c(3, 6);
    CHECK_THROWS_AS(t2::ops::gemm(t2::exec::scalar{}, a, b, c), t2::error);
    matrix<float> b2(4, 6), c2(3, 5);
    CHECK_THROWS_AS(t2::ops::gemm(t2::exec::scalar{}, a, b2, c2), t2::error);
    CHECK_NOTHROW(t2::ops::gemm(t2::exec::scalar{}, a, b2, c));
    CHECK_THROWS_WITH_AS(t2::ops::gemm(t2::exec::scalar{}, a, b2, c, {.transpose_b = true}),
                         doctest::Contains("gemm"), t2::error);
}

template <class E>
void check_gemv(const E& ex) {
    std::uint64_t seed = 1;
    for (std::size_t rows : t2_test::odd_sizes)
        for (std::size_t cols : {1, 3, 16, 17, 67, 257, 1100})
            for (bool transpose : {false, true})
                for (auto [alpha, beta] : {std::pair{1.f, 0.f}, {0.5f, -1.f}}) {
                    const matrix<float> a = t2_test::random_matrix(rows, cols, seed++);
                    const std::size_t in = transpose ? rows : cols, out = transpose ? cols : rows;
                    const auto x = t2_test::random_vector(in, seed++);
                    auto want = t2_test::random_vector(out, seed++);
                    const auto y0 = want;
                    auto got = want;
                    const t2::ops::gemv_options o{transpose, alpha, beta};
                    // Independent reference in double.
                    for (std::size_t i = 0; i < out; ++i) {
                        double sum = 0;
                        for (std::size_t j = 0; j < in; ++j)
                            sum += double(transpose ? a(j, i) : a(i, j)) * x[j];
                        want[i] = float(alpha * sum + beta * double(want[i]));
                    }
                    t2::ops::gemv(ex, a, x, got, o);
                    CAPTURE(rows);
                    CAPTURE(cols);
                    CAPTURE(transpose);
                    // One row of a product with k = in (support/tolerance.hpp, comment 4).
                    const auto mags = t2_test::product_magnitudes(
                        1, out, in, [&](std::size_t, std::size_t j) { return x[j]; },
                        [&](std::size_t j, std::size_t i) { return transpose ? a(j, i) : a(i, j); }, alpha,
                        beta, [&](std::size_t, std::size_t i) { return y0[i]; });
                    T2_CHECK_WITHIN(got.span(), want.span(),
                                    t2_test::scaled_bounds(mags, t2_test::against_double(in + 2)));
                }
}

TEST_CASE("gemv scalar matches a double-precision product") { check_gemv(t2::exec::scalar{}); }

#if T2_ENABLE_SIMD
TEST_CASE_TEMPLATE_DEFINE("gemv simd matches double precision", E, gemv_simd_id) { check_gemv(E{}); }
TEST_CASE_TEMPLATE_APPLY(gemv_simd_id, t2_test::simd_executors);

TEST_CASE("gemv threads<simd> matches double precision") {
    t2::exec::thread_pool pool(3);
    check_gemv(t2::exec::threads<t2::exec::simd<>>(pool));
}
#endif

TEST_CASE("gemv rejects mismatched shapes") {
    matrix<float> a(3, 4);
    t2::vector<float> x(3), y(3);
    CHECK_THROWS_AS(t2::ops::gemv(t2::exec::scalar{}, a, x, y), t2::error);
    CHECK_THROWS_AS(t2::ops::gemv(t2::exec::scalar{}, a, x, y, {.transpose = true}), t2::error);
}

// bf16 weights: B is stored in bf16 and widened on the fly; the reference widens the same
// values, so every executor must agree with it to f32 rounding.
template <class E>
void check_bf16_weights(const E& ex) {
    std::uint64_t seed = 900;
    for (const shape& s : shapes)
        for (bool tb : {false, true})
            for (auto [alpha, beta] : {std::pair{1.f, 0.f}, {0.5f, 1.f}}) {
                const gemm_options o{false, tb, alpha, beta};
                problem p(s, o, seed += 3);
                t2::matrix<t2::bf16> b16(p.b.extent(0), p.b.extent(1));
                for (std::size_t i = 0; i < b16.size(); ++i)
                    b16[i] = t2::from_f32<t2::bf16>(p.b[i]);
                std::vector<float> want(s.m * s.n);
                for (std::size_t i = 0; i < s.m; ++i)
                    for (std::size_t j = 0; j < s.n; ++j) {
                        double sum = 0;
                        for (std::size_t k = 0; k < s.k; ++k)
                            sum += double(p.a(i, k)) * double(t2::to_f32(tb ? b16(j, k) : b16(k, j)));
                        want[i * s.n + j] = float(alpha * sum + beta * double(p.c(i, j)));
                    }
                matrix<float> got = p.c;
                t2::ops::gemm(ex, p.a, b16, got, o);
                CAPTURE(s.m);
                CAPTURE(s.n);
                CAPTURE(s.k);
                CAPTURE(tb);
                // The widened bf16 values are exact in f32: the same bound as for f32 B.
                const auto mags = t2_test::product_magnitudes(
                    s.m, s.n, s.k, [&](std::size_t i, std::size_t k) { return p.a(i, k); },
                    [&](std::size_t k, std::size_t j) { return t2::to_f32(tb ? b16(j, k) : b16(k, j)); },
                    alpha, beta, [&](std::size_t i, std::size_t j) { return p.c(i, j); });
                T2_CHECK_WITHIN(got.span(), want, t2_test::scaled_bounds(mags, t2_test::against_double(s.k + 2)));
            }
}

TEST_CASE("gemm with bf16 B: scalar matches double precision") { check_bf16_weights(t2::exec::scalar{}); }

#if T2_ENABLE_SIMD
TEST_CASE_TEMPLATE_DEFINE("gemm with bf16 B: simd matches double precision", E, gemm_bf16_id) {
    check_bf16_weights(E{});
}
TEST_CASE_TEMPLATE_APPLY(gemm_bf16_id, t2_test::simd_executors);

TEST_CASE("gemm with bf16 B: threads<simd> matches double precision") {
    t2::exec::thread_pool pool(3);
    check_bf16_weights(t2::exec::threads<t2::exec::simd<>>(pool));
}
#endif
