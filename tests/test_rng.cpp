// Philox4x32-10: known answers from Random123, distributions, determinism, streams.
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <set>

#include "t2/core/rng.hpp"

namespace {

using block = t2::philox::block;

// philox(seed, stream).bits(index) runs Philox4x32-10 on
//   counter = {index low, index high, stream low, stream high}, key = {seed low, seed high}.
// These build a generator and an index from a Random123 (counter, key) pair.
constexpr std::uint64_t join(std::uint32_t lo, std::uint32_t hi) {
    return (std::uint64_t{hi} << 32) | lo;
}
constexpr block philox4x32_10(block ctr, std::array<std::uint32_t, 2> key) {
    return t2::philox(join(key[0], key[1]), join(ctr[2], ctr[3])).bits(join(ctr[0], ctr[1]));
}

// Random123 1.14, examples/kat_vectors, "philox4x32 10" lines: ctr, key, expected output.
struct kat {
    block ctr;
    std::array<std::uint32_t, 2> key;
    block expected;
};
constexpr kat kats[] = {
    {{0x00000000u, 0x00000000u, 0x00000000u, 0x00000000u},
     {0x00000000u, 0x00000000u},
     {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
    {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
     {0xffffffffu, 0xffffffffu},
     {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
    {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
     {0xa4093822u, 0x299f31d0u},
     {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
};

// The generator is constexpr: the known answers hold at compile time too.
static_assert(philox4x32_10(kats[0].ctr, kats[0].key) == kats[0].expected);
static_assert(philox4x32_10(kats[1].ctr, kats[1].key) == kats[1].expected);
static_assert(philox4x32_10(kats[2].ctr, kats[2].key) == kats[2].expected);
static_assert(t2::philox(7).uniform(3) >= 0.0f && t2::philox(7).uniform(3) < 1.0f);

struct moments {
    double mean = 0, variance = 0;
};
template <class F>
moments sample_moments(std::size_t n, F&& draw) {
    double sum = 0, sum_sq = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const double x = draw(i);
        sum += x;
        sum_sq += x * x;
    }
    moments m;
    m.mean = sum / static_cast<double>(n);
    m.variance = sum_sq / static_cast<double>(n) - m.mean * m.mean;
    return m;
}

constexpr std::size_t n_samples = 1'000'000;

} // namespace

TEST_CASE("philox: Random123 known-answer tests for philox4x32-10") {
    for (const kat& k : kats) {
        const block got = philox4x32_10(k.ctr, k.key);
        INFO("ctr " << k.ctr[0] << " " << k.ctr[1] << " " << k.ctr[2] << " " << k.ctr[3]);
        CHECK(got[0] == k.expected[0]);
        CHECK(got[1] == k.expected[1]);
        CHECK(got[2] == k.expected[2]);
        CHECK(got[3] == k.expected[3]);
    }
    // The same through the public constructor directly, spelled out.
    CHECK(t2::philox(0).bits(0) == kats[0].expected);
    CHECK(t2::philox(~std::uint64_t{0}, ~std::uint64_t{0}).bits(~std::uint64_t{0}) ==
          kats[1].expected);
    CHECK(t2::philox(0x299f31d0a4093822ull, 0x0370734413198a2eull).bits(0x85a308d3243f6a88ull) ==
          kats[2].expected);
}

TEST_CASE("philox: every input word matters") {
    const block base = t2::philox(1, 1).bits(1);
    CHECK(t2::philox(1, 1).bits(1 + (std::uint64_t{1} << 32)) != base); // index high word
    CHECK(t2::philox(1, 1).bits(2) != base);                            // index low word
    CHECK(t2::philox(1, 1 + (std::uint64_t{1} << 32)).bits(1) != base); // stream high word
    CHECK(t2::philox(1, 2).bits(1) != base);                            // stream low word
    CHECK(t2::philox(1 + (std::uint64_t{1} << 32), 1).bits(1) != base); // seed high word
    CHECK(t2::philox(2, 1).bits(1) != base);                            // seed low word
}

TEST_CASE("philox: deterministic, a value type with no hidden state") {
    const t2::philox a(42), b(42);
    t2::philox c = a;
    for (std::uint64_t i = 0; i < 1000; ++i) {
        CHECK(a.bits(i) == b.bits(i));
        CHECK(a.uniform(i) == c.uniform(i));
        CHECK(a.normal(i) == b.normal(i));
    }
    // Order of evaluation does not matter (counter-based).
    const float late = a.uniform(999);
    (void)a.uniform(5);
    CHECK(a.uniform(999) == late);
    c = t2::philox(43);
    CHECK(c.bits(0) != a.bits(0));
}

TEST_CASE("philox: uniform is in [0, 1) with the right mean and variance") {
    const t2::philox rng(2024);
    bool in_range = true, on_grid = true;
    std::array<std::size_t, 100> histogram{};
    const moments m = sample_moments(n_samples, [&](std::size_t i) {
        const float u = rng.uniform(i);
        in_range = in_range && u >= 0.0f && u < 1.0f;
        const float scaled = u * 0x1p24f; // 24 random bits: an integer after scaling
        on_grid = on_grid && scaled == std::floor(scaled);
        ++histogram[static_cast<std::size_t>(u * 100)];
        return static_cast<double>(u);
    });
    CHECK(in_range);
    CHECK(on_grid);
    // Mean 1/2 with standard error sqrt(1/12/n) = 2.9e-4; variance 1/12 with standard error
    // sqrt((1/80 - 1/144)/n) = 7.5e-5. Bounds at about 6 standard errors.
    CHECK(std::abs(m.mean - 0.5) < 1.8e-3);
    CHECK(std::abs(m.variance - 1.0 / 12) < 4.5e-4);
    // Chi-square over 100 equal bins: 99 degrees of freedom, mean 99, sd 14.
    double chi2 = 0;
    const double expected = n_samples / 100.0;
    for (std::size_t count : histogram)
        chi2 += (static_cast<double>(count) - expected) * (static_cast<double>(count) - expected) / expected;
    INFO("chi2 = " << chi2);
    CHECK(chi2 < 99 + 6 * 14);
    CHECK(chi2 > 99 - 5 * 14);
    // Lag-1 correlation between consecutive indices: E[u_i u_{i+1}] = 1/4.
    double lag = 0;
    for (std::size_t i = 0; i + 1 < n_samples; ++i)
        lag += static_cast<double>(rng.uniform(i)) * rng.uniform(i + 1);
    lag /= static_cast<double>(n_samples - 1);
    CHECK(std::abs(lag - 0.25) < 6 * std::sqrt(7.0 / 144 / n_samples));
}

TEST_CASE("philox: uniform(lo, hi) scales into [lo, hi)") {
    const t2::philox rng(5);
    bool in_range = true;
    const moments m = sample_moments(100'000, [&](std::size_t i) {
        const float u = rng.uniform(i, -3.0f, 5.0f);
        in_range = in_range && u >= -3.0f && u < 5.0f;
        return static_cast<double>(u);
    });
    CHECK(in_range);
    CHECK(std::abs(m.mean - 1.0) < 6 * std::sqrt(64.0 / 12 / 100'000));

    // The largest u, 1 - 2^-24 (found by search: seed 3, index 2350790), must not round up
    // to hi: 1 + (2 - 1) * (1 - 2^-24) is a tie that f32 rounds to 2.
    const t2::philox three(3);
    REQUIRE(three.uniform(2350790) == 0x1.fffffep-1f);
    CHECK(three.uniform(2350790, 1.0f, 2.0f) < 2.0f);
    CHECK(three.uniform(2350790, 1.0f, 2.0f) == 0x1.fffffep0f);
    CHECK(three.uniform(2350790, -2.0f, -1.0f) < -1.0f);
    CHECK(three.uniform(2350790, -0x1p-149f, 0.0f) < 0.0f);
    CHECK(three.uniform(2350790, 0.0f, 3.0f) < 3.0f);
    CHECK(three.uniform(2350790, 4.0f, 4.0f) == 4.0f); // empty range: lo
    for (float lo : {-5.0f, -1.0f, 0.0f, 0.5f, 1.0f, 3.0f, 1000.0f})
        for (float width : {0x1p-20f, 0.1f, 1.0f, 3.0f, 1e6f}) {
            const float hi = lo + width;
            if (!(lo < hi))
                continue; // width below lo's ulp
            const float top = three.uniform(2350790, lo, hi);
            INFO("lo " << lo << ", hi " << hi);
            CHECK(top < hi);
            CHECK(top >= lo);
        }
    static_assert(t2::philox(3).uniform(2350790, 1.0f, 2.0f) < 2.0f);
}

TEST_CASE("philox: normal has mean 0, variance 1 and Gaussian tails") {
    const t2::philox rng(7);
    std::size_t within_1 = 0, within_2 = 0;
    double fourth = 0;
    bool finite = true;
    const moments m = sample_moments(n_samples, [&](std::size_t i) {
        const double x = rng.normal(i);
        finite = finite && std::isfinite(x);
        within_1 += std::abs(x) < 1.0;
        within_2 += std::abs(x) < 2.0;
        fourth += x * x * x * x;
        return x;
    });
    const double n = n_samples;
    CHECK(finite);
    // Mean: standard error 1e-3; variance: standard error sqrt(2/n) = 1.4e-3.
    CHECK(std::abs(m.mean) < 6e-3);
    CHECK(std::abs(m.variance - 1.0) < 8.5e-3);
    // Kurtosis E[x^4] = 3, standard error sqrt(96/n) ~ 0.01.
    CHECK(std::abs(fourth / n - 3.0) < 0.06);
    // P(|x| < 1) = 0.682689, P(|x| < 2) = 0.954500.
    CHECK(std::abs(within_1 / n - 0.682689) < 6 * std::sqrt(0.6827 * 0.3173 / n));
    CHECK(std::abs(within_2 / n - 0.954500) < 6 * std::sqrt(0.9545 * 0.0455 / n));
}

TEST_CASE("philox: split streams differ from each other and from the parent") {
    const t2::philox parent(99);
    const t2::philox s0 = parent.split(0), s1 = parent.split(1), s2 = parent.split(2);
    const t2::philox grandchild = s0.split(0);
    CHECK(parent.split(1).bits(0) == s1.bits(0)); // splitting is deterministic
    std::set<block> firsts;
    for (const auto& g : {parent, s0, s1, s2, grandchild, t2::philox(100), t2::philox(99, 1)})
        firsts.insert(g.bits(0));
    // Seven generators, seven different first blocks (a collision would be a 2^-128 event
    // unless streams coincide); philox(99, 1) is the same as split(0), so six distinct.
    CHECK(parent.split(0).bits(0) == t2::philox(99, 1).bits(0));
    CHECK(firsts.size() == 6);

    // Different streams are uncorrelated: E[(u - 1/2)(v - 1/2)] = 0, sd 1/12/sqrt(n).
    const std::size_t n = 200'000;
    double cov = 0;
    std::size_t equal = 0;
    for (std::size_t i = 0; i < n; ++i) {
        cov += (s1.uniform(i) - 0.5) * (s2.uniform(i) - 0.5);
        equal += s1.bits(i) == s2.bits(i);
    }
    cov /= static_cast<double>(n);
    CHECK(std::abs(cov) < 6.0 / 12 / std::sqrt(static_cast<double>(n)));
    CHECK(equal == 0);

    // Many splits of one parent, and splits of splits, never coincide.
    std::set<block> seen;
    for (std::uint64_t s = 0; s < 256; ++s) {
        seen.insert(parent.split(s).bits(0));
        seen.insert(parent.split(s).split(s).bits(0));
    }
    CHECK(seen.size() == 512);
}
