// add, mul, scale: one correctly rounded operation per element, so every executor must
// reproduce the scalar reference bit for bit, out of place and in place.
#include <cmath>
#include <cstddef>
#include <string>

#include "support/check.hpp"
#include "support/executors.hpp"

namespace {

using t2::vector;
const t2::exec::scalar reference;

// All the sizes below, then two that split across threads.
const std::size_t sizes[] = {0,  1,  2,  3,  5,  7,   8,   13,    15,    16,
                             17, 31, 33, 64, 67, 127, 257, 40000, 100003};

// Bitwise equality (NaN-free data), printing the first differing element.
void check_same(std::span<const float> got, std::span<const float> want) {
    T2_CHECK_CLOSE(got, want, 0, 1e-30);
}

} // namespace

TEST_CASE("elementwise reference matches the definition") {
    const auto a = t2_test::random_vector(67, 1), b = t2_test::random_vector(67, 2);
    vector<float> s(67), p(67), q(67);
    t2::ops::add(reference, a, b, s);
    t2::ops::mul(reference, a, b, p);
    t2::ops::scale(reference, -1.5f, a, q);
    for (std::size_t i = 0; i < 67; ++i) {
        CHECK(s[i] == float(double(a[i]) + double(b[i])));
        CHECK(p[i] == float(double(a[i]) * double(b[i])));
        CHECK(q[i] == float(-1.5 * double(a[i])));
    }
}

TEST_CASE("elementwise: every executor reproduces the scalar reference, in place too") {
    std::uint64_t seed = 10;
    for (std::size_t n : sizes) {
        const auto a = t2_test::random_vector(n, seed++), b = t2_test::random_vector(n, seed++);
        vector<float> sum(n), prod(n), scaled(n);
        t2::ops::add(reference, a, b, sum);
        t2::ops::mul(reference, a, b, prod);
        t2::ops::scale(reference, 0.3f, a, scaled);
        t2_test::for_each_executor([&](const auto& ex, const std::string& name) {
            INFO(name << " n=" << n);
            vector<float> y(n);
            t2::ops::add(ex, a, b, y);
            check_same(y.span(), sum.span());
            t2::ops::mul(ex, a, b, y);
            check_same(y.span(), prod.span());
            t2::ops::scale(ex, 0.3f, a, y);
            check_same(y.span(), scaled.span());

            auto in_a = a, in_b = b;
            t2::ops::add(ex, in_a, b, in_a);
            t2::ops::mul(ex, a, in_b, in_b);
            check_same(in_a.span(), sum.span());
            check_same(in_b.span(), prod.span());
            auto sq = a;
            t2::ops::mul(ex, sq, sq, sq);
            for (std::size_t i = 0; i < n; ++i)
                CHECK(sq[i] == a[i] * a[i]);
            in_a = a;
            t2::ops::scale(ex, 0.3f, in_a, in_a);
            check_same(in_a.span(), scaled.span());
        });
    }
}

TEST_CASE("elementwise ops reject mismatched shapes and partial overlap") {
    vector<float> a(4), b(5), y(4);
    CHECK_THROWS_AS(t2::ops::add(reference, a, b, y), t2::error);
    CHECK_THROWS_AS(t2::ops::mul(reference, a, y, b), t2::error);
    CHECK_THROWS_AS(t2::ops::scale(reference, 2.f, a, b), t2::error);
    CHECK_THROWS_WITH_AS(t2::ops::add(reference, a, b, y), doctest::Contains("add"), t2::error);
    vector<float> big(8);
    const auto x = t2::view_of(big.data(), 5), shifted = t2::view_of(big.data() + 1, 5);
    const auto other = t2_test::random_vector(5, 3);
    CHECK_THROWS_AS(t2::ops::add(reference, x, other, shifted), t2::error);
    CHECK_THROWS_AS(t2::ops::mul(reference, other, x, shifted), t2::error);
    CHECK_THROWS_AS(t2::ops::scale(reference, 2.f, x, shifted), t2::error);
    CHECK_NOTHROW(t2::ops::add(reference, x, other, x));
#if T2_ENABLE_SIMD
    CHECK_THROWS_AS(t2::ops::add(t2::exec::simd<>{}, a, b, y), t2::error);
#endif
}
