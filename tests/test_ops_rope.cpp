// rope: the scalar reference against a direct complex rotation in double precision, for
// both layouts; every executor against the reference; the argument checks.
#include <cmath>
#include <complex>
#include <cstddef>
#include <string>
#include <vector>

#include "support/check.hpp"
#include "support/executors.hpp"
#include "support/tolerance.hpp"

namespace {

using t2::matrix;
using t2::ops::rope_config;
using t2::ops::rope_layout;
const t2::exec::scalar reference;

// Pair i of every head, as a complex number (a + ib), multiplied by e^{i·pos·θ^(−2i/d)}.
matrix<float> rope_double(const matrix<float>& x, const std::vector<std::size_t>& positions,
                          const rope_config& cfg) {
    const std::size_t rows = x.extent(0), cols = x.extent(1), d = cfg.head_dim, half = d / 2;
    matrix<float> y = x;
    for (std::size_t t = 0; t < rows; ++t)
        for (std::size_t h = 0; h < cols; h += d)
            for (std::size_t i = 0; i < half; ++i) {
                const std::size_t a = cfg.layout == rope_layout::interleaved ? h + 2 * i : h + i;
                const std::size_t b =
                    cfg.layout == rope_layout::interleaved ? h + 2 * i + 1 : h + i + half;
                const double angle = double(positions[t]) *
                                     std::pow(double(cfg.theta), -2.0 * double(i) / double(d));
                const std::complex<double> z =
                    std::complex<double>(x(t, a), x(t, b)) * std::polar(1.0, angle);
                y(t, a) = float(z.real());
                y(t, b) = float(z.imag());
            }
    return y;
}

std::vector<std::size_t> random_positions(std::size_t n, std::size_t max, std::uint64_t seed) {
    const t2::philox rng(seed);
    std::vector<std::size_t> p(n);
    for (std::size_t i = 0; i < n; ++i)
        p[i] = std::size_t(rng.uniform(i) * float(max));
    return p;
}

// Per-element bounds for rope (support/tolerance.hpp, comments 4 and 5). Each output is
// a·cos − b·sin (or a·sin + b·cos): cos and sin within f absolute (values ≤ 1), and two
// products and their sum, γ_2, so one f32 evaluation is within (f + γ_2)·(|a| + |b|) of the
// rotation by its f32 angle. Against the exact angle, that angle is off by
// δθ = angle·(ln θ·|fl(2i/d) − 2i/d| + 4u) (the exponent's rounding through pow, then pow
// itself, ≤ 1 ulp = 2u, 1/x and pos·inv_freq), which moves the pair by δθ·|(a, b)|; the
// double reference rounds once more, u|want|.
matrix<float> rope_bounds(const matrix<float>& x, const std::vector<std::size_t>& positions,
                          const rope_config& cfg, double evaluations, bool against_double) {
    constexpr double u = t2_test::unit_roundoff;
    const double own = t2_test::function_error + t2_test::deterministic_summation_bound(2);
    const std::size_t rows = x.extent(0), cols = x.extent(1), d = cfg.head_dim, half = d / 2;
    matrix<float> bound(rows, cols);
    for (std::size_t t = 0; t < rows; ++t)
        for (std::size_t h = 0; h < cols; h += d)
            for (std::size_t i = 0; i < half; ++i) {
                const bool inter = cfg.layout == rope_layout::interleaved;
                const std::size_t a = inter ? h + 2 * i : h + i, b = inter ? h + 2 * i + 1 : h + i + half;
                const double exponent = 2.0 * double(i) / double(d);
                const double exponent_error = std::abs(double(float(2 * i) / float(d)) - exponent);
                const double angle = double(positions[t]) * std::pow(double(cfg.theta), -exponent);
                const double angle_error = angle * (std::log(double(cfg.theta)) * exponent_error + 4 * u);
                const double size = std::abs(x(t, a)) + std::abs(x(t, b));
                const double e = evaluations * own * size + (against_double ? angle_error * size : 0);
                const double r = against_double ? u : 0; // |want| ≤ |(a, b)| ≤ size
                bound(t, a) = float(e + r * size);
                bound(t, b) = float(e + r * size);
            }
    return bound;
}

} // namespace

TEST_CASE("rope reference matches a complex rotation in double precision") {
    std::uint64_t seed = 1;
    for (rope_layout layout : {rope_layout::interleaved, rope_layout::halves})
        for (float theta : {10000.f, 500000.f})
            for (std::size_t head_dim : {2, 6, 16, 64, 128})
                for (std::size_t heads : {1, 3}) {
                    const rope_config cfg{head_dim, theta, layout};
                    const auto x = t2_test::random_matrix(9, heads * head_dim, seed++);
                    const auto positions = random_positions(9, 4096, seed++);
                    matrix<float> y = x;
                    t2::ops::rope(reference, y, positions, cfg);
                    CAPTURE(head_dim);
                    CAPTURE(heads);
                    CAPTURE(theta);
                    CAPTURE(int(layout));
                    T2_CHECK_WITHIN(y.span(), rope_double(x, positions, cfg).span(),
                                    rope_bounds(x, positions, cfg, 1, true).span());
                }
}

TEST_CASE("rope reference: position 0, start positions, norms, and the two layouts") {
    const rope_config cfg{.head_dim = 8};
    SUBCASE("position 0 leaves x unchanged") {
        const auto x = t2_test::random_matrix(1, 24, 3);
        matrix<float> y = x;
        t2::ops::rope(reference, y, 0, cfg);
        T2_CHECK_CLOSE(y.span(), x.span(), 0, 1e-30);
    }
    SUBCASE("a start position means positions start, start + 1, ...") {
        const auto x = t2_test::random_matrix(5, 16, 4);
        matrix<float> a = x, b = x;
        t2::ops::rope(reference, a, 17, cfg);
        t2::ops::rope(reference, b, std::vector<std::size_t>{17, 18, 19, 20, 21}, cfg);
        T2_CHECK_CLOSE(a.span(), b.span(), 0, 1e-30);
    }
    SUBCASE("every pair keeps its length") {
        const auto x = t2_test::random_matrix(4, 16, 5);
        matrix<float> y = x;
        t2::ops::rope(reference, y, 1000, cfg);
        for (std::size_t t = 0; t < 4; ++t)
            for (std::size_t j = 0; j < 16; j += 2)
                CHECK(std::hypot(y(t, j), y(t, j + 1)) ==
                      doctest::Approx(std::hypot(x(t, j), x(t, j + 1))).epsilon(1e-6));
    }
    SUBCASE("halves is interleaved after moving pair (2i, 2i+1) to (i, i + d/2)") {
        const std::size_t d = 8, half = 4;
        const auto x = t2_test::random_matrix(3, 2 * d, 6);
        matrix<float> inter = x, halves(3, 2 * d);
        for (std::size_t t = 0; t < 3; ++t)
            for (std::size_t h = 0; h < 2 * d; h += d)
                for (std::size_t i = 0; i < half; ++i) {
                    halves(t, h + i) = x(t, h + 2 * i);
                    halves(t, h + i + half) = x(t, h + 2 * i + 1);
                }
        t2::ops::rope(reference, inter, 3, cfg);
        t2::ops::rope(reference, halves, 3,
                      rope_config{.head_dim = d, .layout = rope_layout::halves});
        for (std::size_t t = 0; t < 3; ++t)
            for (std::size_t h = 0; h < 2 * d; h += d)
                for (std::size_t i = 0; i < half; ++i) {
                    CHECK(halves(t, h + i) == inter(t, h + 2 * i));
                    CHECK(halves(t, h + i + half) == inter(t, h + 2 * i + 1));
                }
    }
    SUBCASE("empty inputs are no-ops") {
        matrix<float> none(0, 16);
        t2::ops::rope(reference, none, 5, cfg);
        t2::ops::rope(reference, none, std::vector<std::size_t>{}, cfg);
    }
}

TEST_CASE("rope: every executor matches the scalar reference") {
    std::uint64_t seed = 50;
    for (rope_layout layout : {rope_layout::interleaved, rope_layout::halves})
        for (std::size_t head_dim : {2, 6, 8, 16, 34, 64, 96, 128})
            for (std::size_t heads : {1, 3})
                for (std::size_t rows : {1, 2, 7, 17}) {
                    const rope_config cfg{head_dim, 10000.f, layout};
                    const auto x = t2_test::random_matrix(rows, heads * head_dim, seed++);
                    const auto positions = random_positions(rows, 2048, seed++);
                    matrix<float> want = x;
                    t2::ops::rope(reference, want, positions, cfg);
                    // Two evaluations of the same f32 angles' rotations (xsimd's sincos, libm's).
                    const auto bound = rope_bounds(x, positions, cfg, 2, false);
                    t2_test::for_each_executor([&](const auto& ex, const std::string& name) {
                        INFO(name << " head_dim=" << head_dim << " heads=" << heads
                                  << " rows=" << rows << " layout=" << int(layout));
                        matrix<float> got = x;
                        t2::ops::rope(ex, got, positions, cfg);
                        T2_CHECK_WITHIN(got.span(), want.span(), bound.span());
                    });
                }
}

TEST_CASE("rope: threads split rows, exactly as the inner executor") {
    for (rope_layout layout : {rope_layout::interleaved, rope_layout::halves}) {
        const rope_config cfg{.head_dim = 64, .layout = layout};
        const auto x = t2_test::random_matrix(128, 12 * 64, 9);
        t2_test::for_each_threads_executor([&](const auto& ex, const std::string& name) {
            INFO(name << " layout=" << int(layout));
            matrix<float> got = x, want = x;
            t2::ops::rope(ex, got, 40, cfg);
            t2::ops::rope(ex.inner(), want, 40, cfg);
            T2_CHECK_CLOSE(got.span(), want.span(), 0, 1e-30);
            const auto positions = random_positions(128, 4000, 10);
            got = x, want = x;
            t2::ops::rope(ex, got, positions, cfg);
            t2::ops::rope(ex.inner(), want, positions, cfg);
            T2_CHECK_CLOSE(got.span(), want.span(), 0, 1e-30);
        });
    }
}

TEST_CASE("rope rejects odd head_dim, partial heads, wrong position counts and bad theta") {
    matrix<float> x(2, 12);
    CHECK_THROWS_AS(t2::ops::rope(reference, x, 0, rope_config{.head_dim = 3}), t2::error);
    CHECK_THROWS_WITH_AS(t2::ops::rope(reference, x, 0, rope_config{.head_dim = 3}),
                         doctest::Contains("even"), t2::error);
    CHECK_THROWS_AS(t2::ops::rope(reference, x, 0, rope_config{}), t2::error);
    CHECK_THROWS_AS(t2::ops::rope(reference, x, 0, rope_config{.head_dim = 8}), t2::error);
    CHECK_THROWS_AS(
        t2::ops::rope(reference, x, std::vector<std::size_t>{1, 2, 3}, rope_config{.head_dim = 4}),
        t2::error);
    CHECK_THROWS_AS(t2::ops::rope(reference, x, 0, rope_config{.head_dim = 4, .theta = 0.f}),
                    t2::error);
    CHECK_THROWS_AS(t2::ops::rope(reference, x, 0, rope_config{.head_dim = 4, .theta = NAN}),
                    t2::error);
    CHECK_THROWS_AS(
        t2::ops::rope(reference, x, 0,
                      rope_config{.head_dim = 4, .layout = static_cast<rope_layout>(9)}),
        t2::error);
    CHECK_NOTHROW(t2::ops::rope(reference, x, 0, rope_config{.head_dim = 6}));
#if T2_ENABLE_SIMD
    CHECK_THROWS_AS(t2::ops::rope(t2::exec::simd<>{}, x, 0, rope_config{.head_dim = 5}), t2::error);
#endif
}
