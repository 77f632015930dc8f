// sum, max, argmax and their row versions: the scalar reference against the definitions
// (ties, NaN, ±0, −inf); every executor against the reference; max and argmax exact.
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include "support/check.hpp"
#include "support/executors.hpp"
#include "support/tolerance.hpp"

namespace {

using t2::matrix;
using t2::vector;
const t2::exec::scalar reference;
constexpr double u = 0x1p-24;
constexpr float inf = std::numeric_limits<float>::infinity();

vector<float> from(std::initializer_list<float> values) {
    vector<float> v(values.size());
    std::copy(values.begin(), values.end(), v.data());
    return v;
}

// Random vectors whose maximum occurs several times (first, in the body, in the tail).
vector<float> with_ties(std::size_t n, std::uint64_t seed) {
    auto x = t2_test::random_vector(n, seed);
    for (std::size_t i : {n / 3, n / 2, n - 1})
        x[i] = 2.f;
    return x;
}

} // namespace

TEST_CASE("sum reference: exact cases and the f32 error bound") {
    CHECK(t2::ops::sum(reference, vector<float>(0)) == 0.f);
    CHECK(t2::ops::sum(reference, from({1, 2, 3.5f})) == 6.5f);
    std::uint64_t seed = 1;
    for (std::size_t n : t2_test::odd_sizes) {
        const auto x = t2_test::random_vector(n, seed++);
        double exact = 0, scale = 0;
        for (float v : x.span())
            exact += v, scale += std::abs(v);
        CAPTURE(n);
        CHECK(std::abs(t2::ops::sum(reference, x) - exact) <= n * u * scale);
    }
}

TEST_CASE("max and argmax references: ties, ±0, -inf and NaN") {
    CHECK(t2::ops::max(reference, from({3})) == 3.f);
    CHECK(t2::ops::argmax(reference, from({3})) == 0);
    CHECK(t2::ops::argmax(reference, from({1, 5, 2, 5, 5})) == 1);
    CHECK(t2::ops::max(reference, from({1, 5, 2, 5, 5})) == 5.f);
    CHECK(t2::ops::argmax(reference, from({-0.f, 0.f})) == 0);
    CHECK(t2::ops::argmax(reference, from({0.f, -0.f})) == 0);
    CHECK(t2::ops::argmax(reference, from({-inf, -inf, -inf})) == 0);
    CHECK(t2::ops::max(reference, from({-inf, -inf})) == -inf);
    CHECK(t2::ops::argmax(reference, from({-inf, 1, inf, inf})) == 2);
    CHECK(t2::ops::argmax(reference, from({1, NAN, 7, NAN})) == 1);
    CHECK(t2::ops::argmax(reference, from({NAN, 7})) == 0);
    CHECK(std::isnan(t2::ops::max(reference, from({1, 7, NAN}))));
    CHECK(std::isnan(t2::ops::max(reference, from({NAN, 7}))));
}

TEST_CASE("reductions: every executor matches the scalar reference") {
    std::uint64_t seed = 40;
    std::vector<vector<float>> cases;
    for (std::size_t n : t2_test::odd_sizes)
        cases.push_back(with_ties(n, seed++));
    for (std::size_t n : {32768, 32769, 100003, 300007})
        cases.push_back(with_ties(n, seed++));
    for (const auto& x : cases) {
        const std::size_t n = x.size();
        const float sum = t2::ops::sum(reference, x), max = t2::ops::max(reference, x);
        const std::size_t arg = t2::ops::argmax(reference, x);
        double scale = 0;
        for (float v : x.span())
            scale += std::abs(v);
        t2_test::for_each_executor([&](const auto& ex, const std::string& name) {
            INFO(name << " n=" << n);
            // Two orders of the same n terms, each within γ̃_n·Σ|x| of the exact sum.
            T2_CHECK_WITHIN(t2::ops::sum(ex, x), sum, t2_test::between_orders(n) * scale);
            CHECK(t2::ops::max(ex, x) == max);
            CHECK(t2::ops::argmax(ex, x) == arg);
        });
    }
}

TEST_CASE("reductions: NaN, -inf and ±0 wherever they sit, on every executor") {
    for (std::size_t n : {1, 5, 16, 17, 67, 257, 40000, 100003}) {
        for (std::size_t at : {std::size_t{0}, n / 2, n - 1}) {
            auto x = t2_test::random_vector(n, n + at);
            x[at] = NAN;
            if (at + 7 < n)
                x[at + 7] = NAN; // a later NaN must not win
            t2_test::for_each_executor([&](const auto& ex, const std::string& name) {
                INFO(name << " n=" << n << " NaN at " << at);
                CHECK(t2::ops::argmax(ex, x) == at);
                CHECK(std::isnan(t2::ops::max(ex, x)));
                CHECK(std::isnan(t2::ops::sum(ex, x)));
            });
        }
        vector<float> all_neg_inf(n), zeros(n);
        all_neg_inf.fill(-inf);
        for (std::size_t i = 0; i < n; ++i)
            zeros[i] = i % 2 ? 0.f : -0.f;
        t2_test::for_each_executor([&](const auto& ex, const std::string& name) {
            INFO(name << " n=" << n);
            CHECK(t2::ops::argmax(ex, all_neg_inf) == 0);
            CHECK(t2::ops::max(ex, all_neg_inf) == -inf);
            CHECK(t2::ops::argmax(ex, zeros) == 0);
        });
    }
}

TEST_CASE("argmax across pieces and SIMD segments keeps the first maximum") {
    // Longer than a segment of simd<sse2> (4 · 2^20 lanes-batches) and than many pieces.
    const std::size_t n = (std::size_t{5} << 20) + 1000;
    auto x = t2_test::random_vector(n, 3);
    for (std::size_t i : {n - 1, (std::size_t{4} << 20) + 3, std::size_t{5000000}})
        x[i] = 5.f;
    x[100000] = 4.f;
    t2_test::for_each_executor([&](const auto& ex, const std::string& name) {
        INFO(name);
        CHECK(t2::ops::argmax(ex, x) == (std::size_t{4} << 20) + 3);
        CHECK(t2::ops::max(ex, x) == 5.f);
    });
    x[7] = 5.f;
    t2_test::for_each_executor([&](const auto& ex, const std::string& name) {
        INFO(name);
        CHECK(t2::ops::argmax(ex, x) == 7);
    });
}

TEST_CASE("sum: threads add fixed pieces, the same for 1, 2 and 3 threads") {
    const auto x = t2_test::random_vector(300007, 9);
    const float one = t2::ops::sum(t2::exec::threads<t2::exec::scalar>(t2_test::test_pool(1)), x);
    for (std::size_t n : t2_test::test_pool_sizes) {
        CHECK(t2::ops::sum(t2::exec::threads<t2::exec::scalar>(t2_test::test_pool(n)), x) == one);
#if T2_ENABLE_SIMD
        const float simd_one =
            t2::ops::sum(t2::exec::threads<t2::exec::simd<>>(t2_test::test_pool(1)), x);
        CHECK(t2::ops::sum(t2::exec::threads<t2::exec::simd<>>(t2_test::test_pool(n)), x) ==
              simd_one);
#endif
    }
}

TEST_CASE("row reductions equal the vector reductions of each row, on every executor") {
    std::uint64_t seed = 200;
    for (const auto& shape : {std::pair<std::size_t, std::size_t>{1, 1},
                              {3, 17},
                              {17, 67},
                              {67, 257},
                              {2, 100003},
                              {1000, 33}}) {
        // (Named copies: Clang 14 cannot capture structured bindings in lambdas.)
        const std::size_t rows = shape.first, cols = shape.second;
        auto x = t2_test::random_matrix(rows, cols, seed++);
        for (std::size_t r = 0; r < rows; r += 2)
            x(r, cols / 2) = x(r, cols - 1) = 3.f; // ties in every other row
        if (rows > 1)
            x(1, 0) = NAN;
        t2_test::for_each_executor([&](const auto& ex, const std::string& name) {
            INFO(name << " on " << rows << "x" << cols);
            vector<float> sums(rows), maxes(rows);
            std::vector<std::size_t> args(rows);
            t2::ops::row_sum(ex, x, sums);
            t2::ops::row_max(ex, x, maxes);
            t2::ops::row_argmax(ex, x, args);
            for (std::size_t r = 0; r < rows; ++r) {
                const auto row = x.row(r);
                CAPTURE(r);
                const float s = t2::ops::sum(ex, row), m = t2::ops::max(ex, row);
                CHECK((sums[r] == s || (std::isnan(s) && std::isnan(sums[r]))));
                CHECK((maxes[r] == m || (std::isnan(m) && std::isnan(maxes[r]))));
                CHECK(args[r] == t2::ops::argmax(ex, row));
                CHECK(args[r] == t2::ops::argmax(reference, row));
            }
        });
    }
}

TEST_CASE("reductions reject empty inputs, mismatched shapes and overlapping outputs") {
    CHECK_THROWS_AS(t2::ops::max(reference, vector<float>(0)), t2::error);
    CHECK_THROWS_AS(t2::ops::argmax(reference, vector<float>(0)), t2::error);
    CHECK_THROWS_WITH_AS(t2::ops::argmax(reference, vector<float>(0)), doctest::Contains("argmax"),
                         t2::error);
    matrix<float> x(3, 4), empty_rows(2, 0);
    vector<float> y2(2), y3(3);
    std::vector<std::size_t> i2(2), i3(3);
    CHECK_THROWS_AS(t2::ops::row_sum(reference, x, y2), t2::error);
    CHECK_THROWS_AS(t2::ops::row_max(reference, x, y2), t2::error);
    CHECK_THROWS_AS(t2::ops::row_argmax(reference, x, i2), t2::error);
    CHECK_THROWS_AS(t2::ops::row_max(reference, empty_rows, y2), t2::error);
    CHECK_THROWS_AS(t2::ops::row_argmax(reference, empty_rows, i2), t2::error);
    CHECK_NOTHROW(t2::ops::row_sum(reference, empty_rows, y2));
    const auto inside = t2::view_of(x.data() + 5, 3);
    CHECK_THROWS_AS(t2::ops::row_sum(reference, x, inside), t2::error);
    CHECK_THROWS_AS(t2::ops::row_max(reference, x, inside), t2::error);
    CHECK_NOTHROW(t2::ops::row_argmax(reference, x, i3));
#if T2_ENABLE_SIMD
    CHECK_THROWS_AS(t2::ops::argmax(t2::exec::simd<>{}, vector<float>(0)), t2::error);
#endif
}
