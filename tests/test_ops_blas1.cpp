// dot and axpy: the scalar reference against double precision; every executor against the
// reference on odd sizes; threads<Inner> reproducible for any thread count.
#include <cmath>
#include <cstddef>
#include <string>

#include "support/check.hpp"
#include "support/executors.hpp"
#include "support/tolerance.hpp"

namespace {

using t2::vector;
const t2::exec::scalar reference;
constexpr double u = 0x1p-24; // unit roundoff of f32

// Σ|x·y|: the scale of the rounding errors of any order of summation.
double abs_dot(const vector<float>& x, const vector<float>& y) {
    double s = 0;
    for (std::size_t i = 0; i < x.size(); ++i)
        s += std::abs(double(x[i]) * y[i]);
    return s;
}

double dot_double(const vector<float>& x, const vector<float>& y) {
    double s = 0;
    for (std::size_t i = 0; i < x.size(); ++i)
        s += double(x[i]) * y[i];
    return s;
}

} // namespace

TEST_CASE("dot reference: exact small cases and the f32 error bound") {
    vector<float> a(3), b(3);
    a[0] = 1, a[1] = 2, a[2] = 3, b[0] = 4, b[1] = -5, b[2] = 6;
    CHECK(t2::ops::dot(reference, a, b) == 12.f);
    CHECK(t2::ops::dot(reference, vector<float>(0), vector<float>(0)) == 0.f);
    std::uint64_t seed = 1;
    for (std::size_t n : t2_test::odd_sizes) {
        const auto x = t2_test::random_vector(n, seed++), y = t2_test::random_vector(n, seed++);
        // Recursive summation: |error| <= n·u·Σ|x·y| (Higham, Accuracy and Stability, 3.1).
        CAPTURE(n);
        CHECK(std::abs(t2::ops::dot(reference, x, y) - dot_double(x, y)) <= n * u * abs_dot(x, y));
    }
}

TEST_CASE("dot: every executor matches the scalar reference") {
    std::uint64_t seed = 50;
    for (std::size_t n : t2_test::odd_sizes) {
        const auto x = t2_test::random_vector(n, seed++), y = t2_test::random_vector(n, seed++);
        const float want = t2::ops::dot(reference, x, y);
        // Two orders of the same n products, each within γ̃_n·Σ|x·y| of the exact dot.
        const double bound = t2_test::between_orders(n) * abs_dot(x, y);
        t2_test::for_each_executor([&](const auto& ex, const std::string& name) {
            INFO(name << " n=" << n);
            T2_CHECK_WITHIN(t2::ops::dot(ex, x, y), want, bound);
        });
    }
}

TEST_CASE("dot: threads sum fixed pieces, the same for 1, 2 and 3 threads") {
    for (std::size_t n : {1000, 32768, 32769, 200003}) {
        const auto x = t2_test::random_vector(n, n), y = t2_test::random_vector(n, n + 1);
        const double exact = dot_double(x, y), scale = abs_dot(x, y);
        const float one_thread =
            t2::ops::dot(t2::exec::threads<t2::exec::scalar>(t2_test::test_pool(1)), x, y);
        t2_test::for_each_threads_executor([&](const auto& ex, const std::string& name) {
            INFO(name << " n=" << n);
            const float got = t2::ops::dot(ex, x, y);
            CHECK(std::abs(got - exact) <= n * u * scale);
            if (n <= 32768)
                CHECK(got == t2::ops::dot(ex.inner(), x, y));
            // Every pool of the same inner executor gives the same bits.
            const float again = t2::ops::dot(
                std::remove_cvref_t<decltype(ex)>(t2_test::test_pool(1), ex.inner()), x, y);
            CHECK(got == again);
        });
        CHECK(std::abs(one_thread - exact) <= n * u * scale);
    }
}

TEST_CASE("axpy reference matches double precision, in place too") {
    std::uint64_t seed = 7;
    for (std::size_t n : t2_test::odd_sizes) {
        const auto x = t2_test::random_vector(n, seed++);
        auto y = t2_test::random_vector(n, seed++);
        vector<float> want(n), bound(n);
        for (std::size_t i = 0; i < n; ++i) {
            want[i] = float(double(y[i]) + 0.75 * double(x[i]));
            // A sum of two terms, α·x and y, against double rounded to f32.
            bound[i] = float(t2_test::against_double(2) * (std::abs(0.75 * x[i]) + std::abs(y[i])));
        }
        t2::ops::axpy(reference, 0.75f, x, y);
        CAPTURE(n);
        T2_CHECK_WITHIN(y.span(), want.span(), bound.span());
        auto z = x;
        t2::ops::axpy(reference, -2.f, z, z);
        for (std::size_t i = 0; i < n; ++i)
            CHECK(z[i] == -x[i]);
    }
}

TEST_CASE("axpy: every executor matches the scalar reference") {
    std::uint64_t seed = 70;
    for (std::size_t n :
         {1, 2, 3, 5, 7, 8, 13, 15, 16, 17, 31, 33, 64, 67, 127, 257, 40000, 100003}) {
        const auto x = t2_test::random_vector(n, seed++), y0 = t2_test::random_vector(n, seed++);
        auto want = y0;
        t2::ops::axpy(reference, -0.3f, x, want);
        // With or without FMA, y + α·x is a two-term sum: two orders (roundings) of it.
        vector<float> bound(n);
        for (std::size_t i = 0; i < n; ++i)
            bound[i] = float(t2_test::between_orders(2) * (std::abs(-0.3 * x[i]) + std::abs(y0[i])));
        t2_test::for_each_executor([&](const auto& ex, const std::string& name) {
            auto got = y0;
            t2::ops::axpy(ex, -0.3f, x, got);
            INFO(name << " n=" << n);
            T2_CHECK_WITHIN(got.span(), want.span(), bound.span());
        });
    }
}

TEST_CASE("dot and axpy reject mismatched shapes and partial overlap") {
    vector<float> a(4), b(5);
    CHECK_THROWS_AS(t2::ops::dot(reference, a, b), t2::error);
    CHECK_THROWS_WITH_AS(t2::ops::dot(reference, a, b), doctest::Contains("dot"), t2::error);
    CHECK_THROWS_AS(t2::ops::axpy(reference, 1.f, a, b), t2::error);
    vector<float> big(8);
    const auto x = t2::view_of(big.data(), 5), y = t2::view_of(big.data() + 2, 5);
    CHECK_THROWS_AS(t2::ops::axpy(reference, 1.f, x, y), t2::error);
#if T2_ENABLE_SIMD
    CHECK_THROWS_AS(t2::ops::dot(t2::exec::simd<>{}, a, b), t2::error);
#endif
}
