#pragma once
// Shared helpers for the tests: random tensors, the executors every kernel is tested on,
// and comparison against a reference that reports the worst element.
#include <doctest/doctest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "t2/t2.hpp"

namespace t2_test {

// Fills with uniform values in [lo, hi) from a seeded counter-based generator.
inline void fill_uniform(std::span<float> out, std::uint64_t seed, float lo = -1.f, float hi = 1.f) {
    const t2::philox rng(seed);
    for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = rng.uniform(i, lo, hi);
}

template <class E>
t2::tensor<float, E> random_tensor(const E& shape, std::uint64_t seed, float lo = -1.f, float hi = 1.f) {
    t2::tensor<float, E> t(shape);
    fill_uniform(t.span(), seed, lo, hi);
    return t;
}

inline t2::matrix<float> random_matrix(std::size_t rows, std::size_t cols, std::uint64_t seed) {
    return random_tensor(t2::dims<2>(rows, cols), seed);
}

inline t2::vector<float> random_vector(std::size_t n, std::uint64_t seed) {
    return random_tensor(t2::dims<1>(n), seed);
}

// n token ids in [0, vocab), seeded.
inline std::vector<std::int32_t> random_tokens(std::size_t n, std::size_t vocab, std::uint64_t seed) {
    const t2::philox rng(seed);
    std::vector<std::int32_t> t(n);
    for (std::size_t i = 0; i < n; ++i)
        t[i] = static_cast<std::int32_t>(rng.bits(i)[0] % vocab);
    return t;
}

struct comparison {
    double worst_error = 0; // max |got - want| / (atol/rtol-scaled) over elements
    std::size_t worst_index = 0;
    double got = 0, want = 0;
    bool ok = true;
};

// Element i passes when |got - want| <= atol + rtol * |want|. NaN anywhere fails.
inline comparison compare(std::span<const float> got, std::span<const float> want, double rtol,
                          double atol) {
    comparison c;
    REQUIRE(got.size() == want.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double g = got[i], w = want[i];
        const double diff = std::abs(g - w);
        const double err = diff == 0 ? 0 : diff / (atol + rtol * std::abs(w));
        if (!(err <= 1.0) && c.ok) {
            c.ok = false;
        }
        if (!(err <= c.worst_error)) { // also catches NaN
            c.worst_error = std::isnan(err) ? INFINITY : err;
            c.worst_index = i;
            c.got = g;
            c.want = w;
        }
    }
    return c;
}

// Checks got against want and prints the worst element when they disagree.
#define T2_CHECK_CLOSE(GOT, WANT, RTOL, ATOL)                                              \
    do {                                                                                   \
        const auto t2_cmp = ::t2_test::compare((GOT), (WANT), (RTOL), (ATOL));              \
        INFO("worst element " << t2_cmp.worst_index << ": got " << t2_cmp.got << ", want "  \
                              << t2_cmp.want << " (error " << t2_cmp.worst_error            \
                              << " x tolerance)");                                         \
        CHECK(t2_cmp.ok);                                                                  \
    } while (0)

// The message of the t2::error that f throws, or "" (and a failed check) if it throws none.
template <class F>
std::string error_message(F&& f) {
    try {
        f();
    } catch (const t2::error& e) {
        return e.what();
    }
    FAIL_CHECK("expected a t2::error");
    return "";
}

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Sizes every kernel is tested on: 1, primes, and sizes around SIMD widths (4, 8, 16).
inline constexpr std::size_t odd_sizes[] = {1, 2, 3, 5, 7, 8, 13, 15, 16, 17, 31, 33, 64, 67, 127, 257};

} // namespace t2_test
