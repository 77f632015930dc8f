// rmsnorm and layernorm: the scalar reference against double precision (llama2.c's and
// PyTorch's definitions); every executor against the reference on odd shapes.
#include <cmath>
#include <cstddef>
#include <string>

#include "support/check.hpp"
#include "support/executors.hpp"
#include "support/tolerance.hpp"

namespace {

using t2::matrix;
using t2::vector;
const t2::exec::scalar reference;
const std::size_t row_counts[] = {1, 2, 3, 16, 17, 67};
constexpr double u = t2_test::unit_roundoff;

matrix<float> rmsnorm_double(const matrix<float>& x, const vector<float>& w, double eps) {
    const std::size_t rows = x.extent(0), d = x.extent(1);
    matrix<float> y(rows, d);
    for (std::size_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (std::size_t j = 0; j < d; ++j)
            ss += double(x(r, j)) * x(r, j);
        const double rstd = 1 / std::sqrt(ss / double(d) + eps);
        for (std::size_t j = 0; j < d; ++j)
            y(r, j) = float(double(w[j]) * x(r, j) * rstd);
    }
    return y;
}

matrix<float> layernorm_double(const matrix<float>& x, const vector<float>& gamma,
                               const vector<float>& beta, double eps) {
    const std::size_t rows = x.extent(0), d = x.extent(1);
    matrix<float> y(rows, d);
    for (std::size_t r = 0; r < rows; ++r) {
        double mean = 0, var = 0;
        for (std::size_t j = 0; j < d; ++j)
            mean += x(r, j);
        mean /= double(d);
        for (std::size_t j = 0; j < d; ++j)
            var += (x(r, j) - mean) * (x(r, j) - mean);
        const double rstd = 1 / std::sqrt(var / double(d) + eps);
        for (std::size_t j = 0; j < d; ++j)
            y(r, j) = float((x(r, j) - mean) * rstd * gamma[j] + beta[j]);
    }
    return y;
}

// Per-element bounds on one f32 evaluation's error (first order, support/tolerance.hpp):
// rmsnorm's sum of squares is d positive terms (relative γ̃_d), then /d, +eps, sqrt and 1/
// (their errors, with sqrt halving its argument's) give rstd within γ̃_d/2 + 3u, and
// w·(rstd·x) two roundings more.
std::vector<double> rmsnorm_error(const matrix<float>& x, const matrix<float>& y) {
    const std::size_t d = x.extent(1);
    const double relative = t2_test::summation_error_bound(d) / 2 + 5 * u;
    std::vector<double> e(y.size());
    for (std::size_t i = 0; i < e.size(); ++i)
        e[i] = relative * std::abs(double(y.data()[i]));
    return e;
}

// layernorm (corrected two-pass): the mean m + Σ(x − m)/d is off by δμ ≤ γ̃_{d+1}·Σ|x − μ|/d
// (the correction's sum of rounded differences) + u|μ|; the variance, d positive squares,
// by γ̃_{d+1} + 4u relative, so rstd by half that + 3u; then each y = (x − μ)·rstd·γ + β
// rounds four times: |γ|·rstd·(δμ + u|x − μ|) + |(x − μ)·rstd·γ|·(ρ_rstd + 2u) + u|y|.
std::vector<double> layernorm_error(const matrix<float>& x, const vector<float>& gamma,
                                    const vector<float>& beta, double eps) {
    const std::size_t rows = x.extent(0), d = x.extent(1);
    const double g = t2_test::summation_error_bound(d + 1);
    std::vector<double> e(x.size());
    for (std::size_t r = 0; r < rows; ++r) {
        double mean = 0, var = 0, spread = 0;
        for (std::size_t j = 0; j < d; ++j)
            mean += x(r, j);
        mean /= double(d);
        for (std::size_t j = 0; j < d; ++j)
            var += (x(r, j) - mean) * (x(r, j) - mean), spread += std::abs(x(r, j) - mean);
        var /= double(d);
        const double rstd = 1 / std::sqrt(var + eps), rho_rstd = (g + 4 * u) / 2 + 3 * u;
        const double d_mean = g * spread / double(d) + u * std::abs(mean);
        for (std::size_t j = 0; j < d; ++j) {
            const double z = x(r, j) - mean, y = z * rstd * gamma[j];
            e[r * d + j] = std::abs(gamma[j]) * rstd * (d_mean + u * std::abs(z)) +
                           std::abs(y) * (rho_rstd + 2 * u) + u * std::abs(y + beta[j]);
        }
    }
    return e;
}

// A bound per element: `evaluations` f32 evaluations' errors, plus `extra_roundings`·u|want|
// (a double reference rounded to f32).
std::vector<float> bounds(const std::vector<double>& error, double evaluations,
                          std::span<const float> want = {}, double extra_roundings = 0) {
    std::vector<float> b(error.size());
    for (std::size_t i = 0; i < b.size(); ++i)
        b[i] = float(evaluations * error[i] + (want.empty() ? 0 : extra_roundings * u * std::abs(want[i])));
    return b;
}

} // namespace

TEST_CASE("norm references match double precision") {
    std::uint64_t seed = 1;
    for (std::size_t rows : {1, 3, 17})
        for (std::size_t d : t2_test::odd_sizes) {
            const auto x = t2_test::random_matrix(rows, d, seed++);
            const auto w = t2_test::random_vector(d, seed++), b = t2_test::random_vector(d, seed++);
            matrix<float> y(rows, d);
            CAPTURE(rows);
            CAPTURE(d);
            t2::ops::rmsnorm(reference, x, w, y, 1e-5f);
            const auto rms = rmsnorm_double(x, w, 1e-5);
            T2_CHECK_WITHIN(y.span(), rms.span(), bounds(rmsnorm_error(x, rms), 1, rms.span(), 1));
            t2::ops::layernorm(reference, x, w, b, y, 1e-5f);
            const auto ln = layernorm_double(x, w, b, 1e-5);
            T2_CHECK_WITHIN(y.span(), ln.span(), bounds(layernorm_error(x, w, b, 1e-5), 1, ln.span(), 1));
        }
}

TEST_CASE("norm references: eps, constant rows, a large mean, in place, vector overloads") {
    SUBCASE("a zero row normalises to zero, not NaN") {
        matrix<float> x(2, 8);
        const auto w = t2_test::random_vector(8, 1), b = t2_test::random_vector(8, 2);
        matrix<float> y(2, 8);
        t2::ops::rmsnorm(reference, x, w, y);
        for (float v : y.span())
            CHECK(v == 0.f);
        t2::ops::layernorm(reference, x, w, b, y);
        for (std::size_t j = 0; j < 8; ++j)
            CHECK(y(1, j) == b[j]);
    }
    SUBCASE("eps enters under the square root") {
        matrix<float> x(1, 4);
        x.fill(0.5f); // mean(x²) = 0.25
        vector<float> w(4);
        w.fill(1.f);
        t2::ops::rmsnorm(reference, x, w, x, 0.75f);
        for (float v : x.span())
            CHECK(v == doctest::Approx(0.5).epsilon(1e-7));
    }
    SUBCASE("layernorm with |mean| >> std keeps its accuracy (corrected two-pass)") {
        // What is left is the rounding of x − mean near 300: ulp(300)/2 over std ~0.6.
        auto x = t2_test::random_matrix(3, 257, 5);
        for (float& v : x.span())
            v += 300.f;
        const auto g = t2_test::random_vector(257, 6), b = t2_test::random_vector(257, 7);
        matrix<float> y(3, 257);
        t2::ops::layernorm(reference, x, g, b, y);
        const auto want = layernorm_double(x, g, b, 1e-5);
        T2_CHECK_WITHIN(y.span(), want.span(), bounds(layernorm_error(x, g, b, 1e-5), 1, want.span(), 1));
    }
    SUBCASE("in place, and the vector overloads are one row") {
        const auto x = t2_test::random_matrix(1, 33, 8);
        const auto w = t2_test::random_vector(33, 9), b = t2_test::random_vector(33, 10);
        matrix<float> want(1, 33), in_place = x;
        t2::ops::rmsnorm(reference, x, w, want);
        t2::ops::rmsnorm(reference, in_place, w, in_place);
        T2_CHECK_CLOSE(in_place.span(), want.span(), 0, 1e-30);
        vector<float> v(33), out(33);
        std::copy_n(x.data(), 33, v.data());
        t2::ops::rmsnorm(reference, v, w, out);
        T2_CHECK_CLOSE(out.span(), want.span(), 0, 1e-30);
        t2::ops::layernorm(reference, x, w, b, want);
        t2::ops::layernorm(reference, v, w, b, out);
        T2_CHECK_CLOSE(out.span(), want.span(), 0, 1e-30);
    }
}

TEST_CASE("norms: every executor matches the scalar reference") {
    std::uint64_t seed = 100;
    for (std::size_t rows : row_counts)
        for (std::size_t d : t2_test::odd_sizes) {
            auto x = t2_test::random_matrix(rows, d, seed++);
            for (float& v : x.span())
                v = 3.f * v + 0.5f; // a mean away from 0 exercises layernorm's centring
            const auto w = t2_test::random_vector(d, seed++), b = t2_test::random_vector(d, seed++);
            matrix<float> rms(rows, d), ln(rows, d);
            t2::ops::rmsnorm(reference, x, w, rms);
            t2::ops::layernorm(reference, x, w, b, ln);
            // Two f32 evaluations (two summation orders), each within its error bound.
            const auto rms_bound = bounds(rmsnorm_error(x, rmsnorm_double(x, w, 1e-5)), 2);
            const auto ln_bound = bounds(layernorm_error(x, w, b, 1e-5), 2);
            t2_test::for_each_executor([&](const auto& ex, const std::string& name) {
                INFO(name << " on " << rows << "x" << d);
                matrix<float> y(rows, d);
                t2::ops::rmsnorm(ex, x, w, y);
                T2_CHECK_WITHIN(y.span(), rms.span(), rms_bound);
                t2::ops::layernorm(ex, x, w, b, y);
                T2_CHECK_WITHIN(y.span(), ln.span(), ln_bound);
                auto in_place = x;
                t2::ops::rmsnorm(ex, in_place, w, in_place);
                T2_CHECK_WITHIN(in_place.span(), rms.span(), rms_bound);
                in_place = x;
                t2::ops::layernorm(ex, in_place, w, b, in_place);
                T2_CHECK_WITHIN(in_place.span(), ln.span(), ln_bound);
            });
        }
}

TEST_CASE("norms: threads split large matrices by rows, exactly as the inner executor") {
    for (const auto& shape :
         {std::pair<std::size_t, std::size_t>{16, 4096}, {128, 768}, {1000, 33}}) {
        // (Named copies: Clang 14 cannot capture structured bindings in lambdas.)
        const std::size_t rows = shape.first, d = shape.second;
        const auto x = t2_test::random_matrix(rows, d, rows);
        const auto w = t2_test::random_vector(d, d), b = t2_test::random_vector(d, d + 1);
        t2_test::for_each_threads_executor([&](const auto& ex, const std::string& name) {
            INFO(name << " on " << rows << "x" << d);
            matrix<float> got(rows, d), want(rows, d);
            t2::ops::rmsnorm(ex, x, w, got);
            t2::ops::rmsnorm(ex.inner(), x, w, want);
            T2_CHECK_CLOSE(got.span(), want.span(), 0, 1e-30);
            t2::ops::layernorm(ex, x, w, b, got);
            t2::ops::layernorm(ex.inner(), x, w, b, want);
            T2_CHECK_CLOSE(got.span(), want.span(), 0, 1e-30);
        });
    }
}

TEST_CASE("norms reject mismatched shapes, empty rows and negative eps") {
    matrix<float> x(3, 4), y(3, 4), y5(3, 5), empty(3, 0);
    vector<float> w4(4), w5(5);
    CHECK_THROWS_AS(t2::ops::rmsnorm(reference, x, w5, y), t2::error);
    CHECK_THROWS_AS(t2::ops::rmsnorm(reference, x, w4, y5), t2::error);
    CHECK_THROWS_AS(t2::ops::rmsnorm(reference, empty, vector<float>(0), empty), t2::error);
    CHECK_THROWS_AS(t2::ops::rmsnorm(reference, x, w4, y, -1.f), t2::error);
    CHECK_THROWS_WITH_AS(t2::ops::rmsnorm(reference, x, w5, y), doctest::Contains("rmsnorm"),
                         t2::error);
    CHECK_THROWS_AS(t2::ops::layernorm(reference, x, w4, w5, y), t2::error);
    CHECK_THROWS_AS(t2::ops::layernorm(reference, x, w5, w4, y), t2::error);
    CHECK_THROWS_AS(t2::ops::layernorm(reference, w4, w4, w4, w5), t2::error);
    CHECK_THROWS_WITH_AS(t2::ops::layernorm(reference, x, w4, w5, y), doctest::Contains("beta"),
                         t2::error);
    matrix<float> big(4, 4);
    const auto shifted = t2::view_of(big.data() + 2, 3, 4);
    CHECK_THROWS_AS(t2::ops::rmsnorm(reference, big.rows(0, 3), w4, shifted), t2::error);
#if T2_ENABLE_SIMD
    CHECK_THROWS_AS(t2::ops::rmsnorm(t2::exec::simd<>{}, x, w5, y), t2::error);
#endif
}
