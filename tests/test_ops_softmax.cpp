// softmax: the scalar reference against double precision and the edge cases of the
// definition; every executor against the scalar reference on odd shapes.
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
const t2::exec::scalar reference;
constexpr float inf = std::numeric_limits<float>::infinity();
const std::size_t row_counts[] = {1, 2, 3, 16, 17, 67};

// Logits spread over [-8, 8): probabilities from ~1e-7 to ~1, as in attention.
matrix<float> logits(std::size_t rows, std::size_t cols, std::uint64_t seed) {
    return t2_test::random_tensor(t2::dims<2>(rows, cols), seed, -8.f, 8.f);
}

double row_max(const matrix<float>& x, std::size_t r) {
    double max = -INFINITY;
    for (std::size_t c = 0; c < x.extent(1); ++c)
        max = std::max(max, double(x(r, c)));
    return max;
}

std::vector<float> softmax_double(const matrix<float>& x) {
    const std::size_t rows = x.extent(0), cols = x.extent(1);
    std::vector<float> y(x.size());
    for (std::size_t r = 0; r < rows; ++r) {
        const double max = row_max(x, r);
        double sum = 0;
        for (std::size_t c = 0; c < cols; ++c)
            sum += std::exp(double(x(r, c)) - max);
        for (std::size_t c = 0; c < cols; ++c)
            y[r * cols + c] = float(std::exp(double(x(r, c)) - max) / sum);
    }
    return y;
}

// Relative error of one f32 evaluation of each y = e/S, e = exp(x − max), S = Σ e (first order,
// support/tolerance.hpp): x − max rounds by u|x − max|, which exp turns into a relative error,
// plus its own function_error; S adds n positive terms (γ̃_n) carrying the worst of those
// errors; 1/S and the product (or the division) round twice. −inf entries give exactly 0.
std::vector<double> softmax_error(const matrix<float>& x) {
    constexpr double u = t2_test::unit_roundoff, f = t2_test::function_error;
    const std::size_t rows = x.extent(0), cols = x.extent(1);
    std::vector<double> e(x.size());
    for (std::size_t r = 0; r < rows; ++r) {
        const double max = row_max(x, r);
        double spread = 0;
        for (std::size_t c = 0; c < cols; ++c)
            if (x(r, c) != -inf)
                spread = std::max(spread, max - x(r, c));
        const double sum = t2_test::summation_error_bound(cols) + spread * u + f;
        for (std::size_t c = 0; c < cols; ++c)
            e[r * cols + c] = x(r, c) == -inf ? 0 : (max - x(r, c)) * u + f + sum + 2 * u;
    }
    return e;
}

// Bounds `evaluations`·error·|want| (+ u|want| for a double reference rounded to f32).
std::vector<float> bounds(const std::vector<double>& error, std::span<const float> want,
                          double evaluations, bool rounded_reference) {
    std::vector<float> b(want.size());
    for (std::size_t i = 0; i < b.size(); ++i)
        b[i] = float((evaluations * error[i] + (rounded_reference ? t2_test::unit_roundoff : 0)) *
                     std::abs(want[i]));
    return b;
}

// A double reference and its bound for the f32 reference kernel.
void check_against_double(const matrix<float>& x, const matrix<float>& y) {
    const std::vector<float> want = softmax_double(x);
    T2_CHECK_WITHIN(y.span(), want, bounds(softmax_error(x), want, 1, true));
}

} // namespace

TEST_CASE("softmax reference matches double precision and rows sum to 1") {
    std::uint64_t seed = 1;
    for (std::size_t rows : {1, 3, 17})
        for (std::size_t cols : t2_test::odd_sizes) {
            const matrix<float> x = logits(rows, cols, seed++);
            matrix<float> y(rows, cols);
            t2::ops::softmax(reference, x, y);
            CAPTURE(rows);
            CAPTURE(cols);
            check_against_double(x, y);
            // Each y within error·y of the exact probability: the row within Σ error·y of 1.
            const auto error = softmax_error(x);
            for (std::size_t r = 0; r < rows; ++r) {
                double total = 0, bound = 0;
                for (std::size_t c = 0; c < cols; ++c)
                    total += y(r, c), bound += error[r * cols + c] * y(r, c);
                T2_CHECK_WITHIN(total, 1.0, bound);
            }
        }
}

TEST_CASE("softmax reference: large logits, masks, ties and in-place use") {
    SUBCASE("logits near 1000 do not overflow") {
        matrix<float> x = logits(2, 33, 7);
        for (float& v : x.span())
            v += 1000.f;
        matrix<float> y(2, 33);
        t2::ops::softmax(reference, x, y);
        check_against_double(x, y);
    }
    SUBCASE("-inf entries (a causal mask) get probability 0") {
        matrix<float> x = logits(1, 9, 3);
        for (std::size_t c = 4; c < 9; ++c)
            x(0, c) = -inf;
        matrix<float> y(1, 9);
        t2::ops::softmax(reference, x, y);
        for (std::size_t c = 4; c < 9; ++c)
            CHECK(y(0, c) == 0.f);
        check_against_double(x, y);
    }
    SUBCASE("equal logits give the uniform distribution") {
        matrix<float> x(1, 7);
        x.fill(3.5f);
        t2::ops::softmax(reference, x, x);
        for (float v : x.span())
            T2_CHECK_WITHIN(v, 1.0 / 7, t2_test::unit_roundoff / 7); // exp(0) and Σ exact: 1/7 rounds
    }
    SUBCASE("a row of -inf or holding a NaN comes out NaN, as in PyTorch") {
        matrix<float> x(2, 5);
        x.fill(-inf);
        x(1, 0) = 0.f;
        x(1, 3) = NAN;
        t2::ops::softmax(reference, x, x);
        for (float v : x.span())
            CHECK(std::isnan(v));
    }
    SUBCASE("in place equals out of place") {
        matrix<float> x = logits(5, 31, 9), y(5, 31);
        t2::ops::softmax(reference, x, y);
        t2::ops::softmax(reference, x, x);
        T2_CHECK_CLOSE(x.span(), y.span(), 0, 1e-30);
    }
    SUBCASE("the vector overload is one row") {
        const matrix<float> x = logits(1, 67, 2);
        t2::vector<float> v(67), y(67);
        std::copy_n(x.data(), 67, v.data());
        matrix<float> want(1, 67);
        t2::ops::softmax(reference, v, y);
        t2::ops::softmax(reference, x, want);
        T2_CHECK_CLOSE(y.span(), want.span(), 0, 1e-30);
    }
    SUBCASE("empty shapes are no-ops") {
        matrix<float> a(0, 5), b(3, 0);
        t2::ops::softmax(reference, a, a);
        t2::ops::softmax(reference, b, b);
    }
}

TEST_CASE("softmax: every executor matches the scalar reference") {
    std::uint64_t seed = 100;
    for (std::size_t rows : row_counts)
        for (std::size_t cols : t2_test::odd_sizes) {
            const matrix<float> x = logits(rows, cols, seed++);
            matrix<float> want(rows, cols);
            t2::ops::softmax(reference, x, want);
            // Two f32 evaluations (exp implementations and summation orders) of each y.
            const auto bound = bounds(softmax_error(x), want.span(), 2, false);
            t2_test::for_each_executor([&](const auto& ex, const std::string& name) {
                matrix<float> got(rows, cols), in_place = x;
                t2::ops::softmax(ex, x, got);
                t2::ops::softmax(ex, in_place, in_place);
                INFO(name << " on " << rows << "x" << cols);
                T2_CHECK_WITHIN(got.span(), want.span(), bound);
                T2_CHECK_CLOSE(in_place.span(), got.span(), 0, 1e-30);
            });
        }
}

TEST_CASE("softmax: threads split large matrices by rows, exactly as the inner executor") {
    for (const auto& shape :
         {std::pair<std::size_t, std::size_t>{300, 1000}, {7, 40000}, {1001, 13}}) {
        // (Named copies: Clang 14 cannot capture structured bindings in lambdas.)
        const std::size_t rows = shape.first, cols = shape.second;
        const matrix<float> x = logits(rows, cols, rows + cols);
        t2_test::for_each_threads_executor([&](const auto& ex, const std::string& name) {
            matrix<float> got(rows, cols), want(rows, cols);
            t2::ops::softmax(ex, x, got);
            t2::ops::softmax(ex.inner(), x, want);
            INFO(name << " on " << rows << "x" << cols);
            T2_CHECK_CLOSE(got.span(), want.span(), 0, 1e-30);
        });
    }
}

TEST_CASE("softmax rejects mismatched shapes and partial overlap") {
    matrix<float> x(3, 4), y(3, 5), z(4, 4);
    CHECK_THROWS_AS(t2::ops::softmax(reference, x, y), t2::error);
    CHECK_THROWS_AS(t2::ops::softmax(reference, x, z), t2::error);
    CHECK_THROWS_WITH_AS(t2::ops::softmax(reference, x, y), doctest::Contains("softmax"),
                         t2::error);
    t2::vector<float> v(4), w(5);
    CHECK_THROWS_AS(t2::ops::softmax(reference, v, w), t2::error);
    matrix<float> big(4, 4);
    const auto shifted = t2::view_of(big.data() + 1, 3, 4);
    CHECK_THROWS_AS(t2::ops::softmax(reference, big.rows(0, 3), shifted), t2::error);
#if T2_ENABLE_SIMD
    CHECK_THROWS_AS(t2::ops::softmax(t2::exec::simd<>{}, x, y), t2::error);
#endif
}
