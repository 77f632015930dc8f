// silu, gelu (erf and tanh forms), swiglu: the scalar reference against the formulas in
// double precision; every executor against the reference on odd sizes and extreme inputs.
#include <cmath>
#include <cstddef>
#include <limits>
#include <numbers>
#include <string>

#include "support/check.hpp"
#include "support/executors.hpp"
#include "support/tolerance.hpp"

namespace {

using t2::vector;
using t2::ops::gelu_approximation;
const t2::exec::scalar reference;

double silu_double(double x) {
    return x / (1 + std::exp(-x));
}
double gelu_double(double x) {
    return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
}
double gelu_tanh_double(double x) {
    return 0.5 * x * (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
}

// Inputs over [-8, 8) with the values where the formulas change regime appended.
vector<float> inputs(std::size_t n, std::uint64_t seed) {
    return t2_test::random_tensor(t2::dims<1>(n), seed, -8.f, 8.f);
}

vector<float> extremes() {
    const float values[] = {0.f,   -0.f,   1e-30f, -1e-30f, 1e-7f, -1e-7f, 0.5f,  -0.5f,
                            3.f,   -3.f,   10.f,   -10.f,   20.f,  -20.f,  87.f,  -87.f,
                            88.8f, -88.8f, 100.f,  -100.f,  1e4f,  -1e4f,  3e38f, -3e38f};
    vector<float> v(std::size(values));
    std::copy(std::begin(values), std::end(values), v.data());
    return v;
}

// Error bounds of one f32 evaluation, per element, first order (support/tolerance.hpp,
// comment 5: f = function_error for exp, erf and tanh, u per rounding), taken relative to
// want (the f32 reference where exp overflows, so both evaluations give the same ±0).
constexpr double u = t2_test::unit_roundoff, f = t2_test::function_error;
enum class formula { silu, gelu, gelu_tanh, swiglu };

double error(formula which, double x, double want) {
    switch (which) {
    case formula::silu: // exp (f) passed through 1 + e (≤ f, + u), then the division (u)
        return (f + 2 * u) * std::abs(want);
    case formula::swiglu: // silu, then · up
        return (f + 3 * u) * std::abs(want);
    case formula::gelu: { // 0.5x·(1 + erf(t)), t = x·fl(1/√2): t off by 2u|t|, erf by f|erf|,
        const double t = x / std::sqrt(2.0), e = std::erf(t); // 1 + erf and the product round
        const double erf_error = 2 / std::sqrt(std::numbers::pi) * std::exp(-t * t) * 2 * u * std::abs(t) +
                                 f * std::abs(e) + u * std::abs(1 + e);
        return 0.5 * std::abs(x) * erf_error + u * std::abs(want);
    }
    case formula::gelu_tanh: { // a = c·(x + κx³): κ·x·x·x rounds 3 times, κ and c once, the sum
        const double k = 0.044715, c = std::sqrt(2 / std::numbers::pi); // and the product once;
        const double cubic = k * x * x * x, a = c * (x + cubic), t = std::tanh(a); // tanh' = sech²
        const double a_error = c * (4 * u * std::abs(cubic) + u * std::abs(x + cubic)) + 2 * u * std::abs(a);
        const double q = std::exp(-2 * std::abs(a)), sech2 = 4 * q / ((1 + q) * (1 + q));
        return 0.5 * std::abs(x) * (sech2 * a_error + f * std::abs(t) + u * std::abs(1 + t)) +
               u * std::abs(want);
    }
    }
    return 0;
}

// `evaluations` f32 evaluations' errors, + u|want| when want is a double rounded to f32.
std::vector<float> bounds(formula which, const vector<float>& x, const vector<float>& want,
                          double evaluations, bool rounded_reference) {
    std::vector<float> b(x.size());
    for (std::size_t i = 0; i < x.size(); ++i)
        b[i] = float(evaluations * error(which, x[i], want[i]) +
                     (rounded_reference ? u * std::abs(want[i]) : 0));
    return b;
}

template <class F>
vector<float> apply_double(const vector<float>& x, F f) {
    vector<float> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i)
        y[i] = float(f(double(x[i])));
    return y;
}

} // namespace

TEST_CASE("activation references match the formulas in double precision") {
    const auto x = inputs(1000, 1);
    vector<float> y(1000);
    t2::ops::silu(reference, x, y);
    const auto silu = apply_double(x, silu_double);
    T2_CHECK_WITHIN(y.span(), silu.span(), bounds(formula::silu, x, silu, 1, true));
    // 1 + erf and 1 + tanh cancel for negative x: the f32 error there is absolute.
    t2::ops::gelu(reference, x, y);
    const auto gelu = apply_double(x, gelu_double);
    T2_CHECK_WITHIN(y.span(), gelu.span(), bounds(formula::gelu, x, gelu, 1, true));
    t2::ops::gelu(reference, x, y, gelu_approximation::tanh);
    const auto gelu_tanh = apply_double(x, gelu_tanh_double);
    T2_CHECK_WITHIN(y.span(), gelu_tanh.span(), bounds(formula::gelu_tanh, x, gelu_tanh, 1, true));

    const auto up = t2_test::random_vector(1000, 2);
    t2::ops::swiglu(reference, x, up, y);
    vector<float> want(1000);
    for (std::size_t i = 0; i < 1000; ++i)
        want[i] = float(silu_double(x[i]) * up[i]);
    T2_CHECK_WITHIN(y.span(), want.span(), bounds(formula::swiglu, x, want, 1, true));
}

TEST_CASE("activation references at extreme inputs: no NaN, the right limits") {
    const auto x = extremes();
    vector<float> s(x.size()), g(x.size()), t(x.size());
    t2::ops::silu(reference, x, s);
    t2::ops::gelu(reference, x, g);
    t2::ops::gelu(reference, x, t, gelu_approximation::tanh);
    for (std::size_t i = 0; i < x.size(); ++i) {
        CAPTURE(x[i]);
        CHECK(!std::isnan(s[i]));
        CHECK(!std::isnan(g[i]));
        CHECK(!std::isnan(t[i]));
        if (x[i] >= 20.f) {
            CHECK(s[i] == x[i]);
            CHECK(g[i] == x[i]);
            CHECK(t[i] == x[i]);
        }
        if (x[i] <= -20.f) {
            CHECK(std::abs(s[i]) < 1e-6f);
            CHECK(g[i] == 0.f);
            CHECK(t[i] == 0.f);
        }
    }
}

TEST_CASE("activations: every executor matches the scalar reference") {
    std::uint64_t seed = 30;
    std::vector<vector<float>> cases;
    for (std::size_t n : t2_test::odd_sizes)
        cases.push_back(inputs(n, seed++));
    cases.push_back(extremes());
    cases.push_back(inputs(5000, seed++)); // splits across threads
    cases.push_back(inputs(40001, seed++));
    for (const auto& x : cases) {
        const std::size_t n = x.size();
        const auto up = t2_test::random_vector(n, seed++);
        vector<float> silu(n), gelu(n), gelu_tanh(n), swiglu(n);
        t2::ops::silu(reference, x, silu);
        t2::ops::gelu(reference, x, gelu);
        t2::ops::gelu(reference, x, gelu_tanh, gelu_approximation::tanh);
        t2::ops::swiglu(reference, x, up, swiglu);
        // Two f32 evaluations (xsimd's functions against the C library's) of each element.
        const auto silu_bound = bounds(formula::silu, x, silu, 2, false);
        const auto gelu_bound = bounds(formula::gelu, x, gelu, 2, false);
        const auto tanh_bound = bounds(formula::gelu_tanh, x, gelu_tanh, 2, false);
        const auto swiglu_bound = bounds(formula::swiglu, x, swiglu, 2, false);
        t2_test::for_each_executor([&](const auto& ex, const std::string& name) {
            INFO(name << " n=" << n);
            vector<float> y(n);
            t2::ops::silu(ex, x, y);
            T2_CHECK_WITHIN(y.span(), silu.span(), silu_bound);
            t2::ops::gelu(ex, x, y);
            T2_CHECK_WITHIN(y.span(), gelu.span(), gelu_bound);
            t2::ops::gelu(ex, x, y, gelu_approximation::tanh);
            T2_CHECK_WITHIN(y.span(), gelu_tanh.span(), tanh_bound);
            t2::ops::swiglu(ex, x, up, y);
            T2_CHECK_WITHIN(y.span(), swiglu.span(), swiglu_bound);

            auto in_place = x;
            t2::ops::silu(ex, in_place, in_place);
            T2_CHECK_WITHIN(in_place.span(), silu.span(), silu_bound);
            in_place = x;
            t2::ops::gelu(ex, in_place, in_place);
            T2_CHECK_WITHIN(in_place.span(), gelu.span(), gelu_bound);
            in_place = up;
            t2::ops::swiglu(ex, x, in_place, in_place);
            T2_CHECK_WITHIN(in_place.span(), swiglu.span(), swiglu_bound);
        });
    }
}

TEST_CASE("activations reject mismatched shapes, partial overlap and unknown options") {
    vector<float> a(4), b(5), y(4);
    CHECK_THROWS_AS(t2::ops::silu(reference, a, b), t2::error);
    CHECK_THROWS_AS(t2::ops::gelu(reference, a, b), t2::error);
    CHECK_THROWS_AS(t2::ops::gelu(reference, a, b, gelu_approximation::tanh), t2::error);
    CHECK_THROWS_AS(t2::ops::swiglu(reference, a, b, y), t2::error);
    CHECK_THROWS_AS(t2::ops::swiglu(reference, a, a, b), t2::error);
    CHECK_THROWS_WITH_AS(t2::ops::swiglu(reference, a, b, y), doctest::Contains("swiglu"),
                         t2::error);
    CHECK_THROWS_AS(t2::ops::gelu(reference, a, y, static_cast<gelu_approximation>(7)), t2::error);
    vector<float> big(8);
    const auto x = t2::view_of(big.data(), 5), shifted = t2::view_of(big.data() + 3, 5);
    CHECK_THROWS_AS(t2::ops::silu(reference, x, shifted), t2::error);
#if T2_ENABLE_SIMD
    CHECK_THROWS_AS(t2::ops::silu(t2::exec::simd<>{}, a, b), t2::error);
#endif
}
