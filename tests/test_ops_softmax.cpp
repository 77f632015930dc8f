// softmax: the scalar reference against double precision and the edge cases of the
// definition; every executor against the scalar reference on odd shapes.
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include "support/check.hpp"
#include "support/executors.hpp"

namespace {

using t2::matrix;
const t2::exec::scalar reference;
constexpr float inf = std::numeric_limits<float>::infinity();
const std::size_t row_counts[] = {1, 2, 3, 16, 17, 67};

// Logits spread over [-8, 8): probabilities from ~1e-7 to ~1, as in attention.
matrix<float> logits(std::size_t rows, std::size_t cols, std::uint64_t seed) {
    return t2_test::random_tensor(t2::dims<2>(rows, cols), seed, -8.f, 8.f);
}

std::vector<float> softmax_double(const matrix<float>& x) {
    const std::size_t rows = x.extent(0), cols = x.extent(1);
    std::vector<float> y(x.size());
    for (std::size_t r = 0; r < rows; ++r) {
        double max = -INFINITY, sum = 0;
        for (std::size_t c = 0; c < cols; ++c)
            max = std::max(max, double(x(r, c)));
        for (std::size_t c = 0; c < cols; ++c)
            sum += std::exp(double(x(r, c)) - max);
        for (std::size_t c = 0; c < cols; ++c)
            y[r * cols + c] = float(std::exp(double(x(r, c)) - max) / sum);
    }
    return y;
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
            T2_CHECK_CLOSE(y.span(), std::span<const float>(softmax_double(x)), 1e-6, 1e-12);
            for (std::size_t r = 0; r < rows; ++r) {
                double total = 0;
                for (std::size_t c = 0; c < cols; ++c)
                    total += y(r, c);
                CHECK(std::abs(total - 1.0) < 2e-6);
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
        T2_CHECK_CLOSE(y.span(), std::span<const float>(softmax_double(x)), 1e-6, 1e-12);
    }
    SUBCASE("-inf entries (a causal mask) get probability 0") {
        matrix<float> x = logits(1, 9, 3);
        for (std::size_t c = 4; c < 9; ++c)
            x(0, c) = -inf;
        matrix<float> y(1, 9);
        t2::ops::softmax(reference, x, y);
        for (std::size_t c = 4; c < 9; ++c)
            CHECK(y(0, c) == 0.f);
        T2_CHECK_CLOSE(y.span(), std::span<const float>(softmax_double(x)), 1e-6, 1e-12);
    }
    SUBCASE("equal logits give the uniform distribution") {
        matrix<float> x(1, 7);
        x.fill(3.5f);
        t2::ops::softmax(reference, x, x);
        for (float v : x.span())
            CHECK(v == doctest::Approx(1.0 / 7).epsilon(1e-6));
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
            t2_test::for_each_executor([&](const auto& ex, const std::string& name) {
                matrix<float> got(rows, cols), in_place = x;
                t2::ops::softmax(ex, x, got);
                t2::ops::softmax(ex, in_place, in_place);
                INFO(name << " on " << rows << "x" << cols);
                T2_CHECK_CLOSE(got.span(), want.span(), 1e-6, 1e-12);
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
