// Choosing the next token: greedy argmax, seeded reproducibility, top-k and nucleus
// (top-p) truncation, and the empirical distribution of draws against softmax(logits / T)
// computed independently in double (a chi-square test with a generous bound; the seeds are
// fixed, so the test is deterministic).
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "support/check.hpp"
#include "t2/core/rng.hpp"
#include "t2/ops/sampling.hpp"

namespace {

using t2::ops::sampler;
using t2::ops::sampling_options;

constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
constexpr float inf_f = std::numeric_limits<float>::infinity();

// softmax(logits / T) in double.
std::vector<double> softmax_at(const std::vector<float>& logits, double T) {
    double top = -INFINITY;
    for (float l : logits)
        top = std::max(top, double(l));
    std::vector<double> p(logits.size());
    double total = 0;
    for (std::size_t i = 0; i < p.size(); ++i)
        total += p[i] = std::exp((double(logits[i]) - top) / T);
    for (double& x : p)
        x /= total;
    return p;
}

// Counts of each token over n draws.
std::vector<std::size_t> histogram(sampler& s, const std::vector<float>& logits, std::size_t n) {
    std::vector<std::size_t> counts(logits.size());
    std::size_t out_of_range = 0;
    for (std::size_t i = 0; i < n; ++i) {
        const std::int32_t t = s(logits);
        if (t >= 0 && std::size_t(t) < logits.size())
            ++counts[std::size_t(t)];
        else
            ++out_of_range;
    }
    REQUIRE(out_of_range == 0);
    return counts;
}

// Pearson's chi-square of the counts against the expected probabilities (which must be
// positive wherever counts are); tokens with expected probability 0 must never be drawn.
double chi_square(const std::vector<std::size_t>& counts, const std::vector<double>& expected) {
    REQUIRE(counts.size() == expected.size());
    std::size_t n = 0;
    for (auto c : counts)
        n += c;
    double chi2 = 0;
    for (std::size_t i = 0; i < counts.size(); ++i) {
        if (expected[i] == 0) {
            CHECK(counts[i] == 0);
            continue;
        }
        const double e = expected[i] * double(n);
        const double d = double(counts[i]) - e;
        chi2 += d * d / e;
    }
    return chi2;
}

// Above the 1 - 1e-6 quantile of chi-square with up to 5 degrees of freedom (35.9 at 5):
// a correct sampler fails this for no seed in practice, a biased one fails it by far.
constexpr double chi2_bound = 36.0;
constexpr std::size_t n_draws = 200000;

} // namespace

TEST_CASE("argmax: first index on ties, NaN never wins, empty throws") {
    CHECK(t2::ops::argmax(std::vector<float>{1.f, 3.f, 2.f}) == 1);
    CHECK(t2::ops::argmax(std::vector<float>{5.f}) == 0);
    CHECK(t2::ops::argmax(std::vector<float>{2.f, 7.f, 7.f, 1.f, 7.f}) == 1);
    CHECK(t2::ops::argmax(std::vector<float>{-inf_f, -inf_f}) == 0);
    CHECK(t2::ops::argmax(std::vector<float>{nan_f, 1.f, 2.f}) == 2);
    CHECK(t2::ops::argmax(std::vector<float>{1.f, nan_f, 0.5f}) == 0);
    CHECK(t2::ops::argmax(std::vector<float>{0.f, 3.f, nan_f, 3.f, nan_f}) == 1);
    CHECK(t2::ops::argmax(std::vector<float>{nan_f, -inf_f}) == 1);
    CHECK_THROWS_AS(t2::ops::argmax(std::span<const float>{}), t2::error);
}

TEST_CASE("argmax: the two-pass scan equals a one-pass reference on every length and mixture") {
    // The reference: keep the first strictly larger value; a NaN held is always replaced.
    const auto reference = [](const std::vector<float>& x) {
        std::size_t best = 0;
        for (std::size_t i = 1; i < x.size(); ++i)
            if (x[i] > x[best] || std::isnan(x[best]))
                best = i;
        return static_cast<std::int32_t>(best);
    };
    t2::philox rng(11);
    std::uint64_t draw = 0;
    for (std::size_t n = 1; n <= 70; ++n)
        for (int trial = 0; trial < 20; ++trial) {
            std::vector<float> x(n);
            for (float& v : x) {
                const float u = rng.uniform(draw++);
                // Few distinct values (ties), NaN and −∞ now and then.
                v = u < 0.1f ? nan_f : u < 0.15f ? -inf_f : std::floor(rng.uniform(draw++) * 6.f);
            }
            CAPTURE(n);
            CAPTURE(trial);
            CHECK(t2::ops::argmax(x) == reference(x));
        }
    const std::vector<float> all_nan(13, nan_f);
    CHECK(t2::ops::argmax(all_nan) == reference(all_nan));
}

TEST_CASE("sampler: temperature 0 is argmax") {
    sampler s({.temperature = 0.f, .top_p = 1.f, .seed = 7});
    CHECK(s(std::vector<float>{0.1f, 2.f, 2.f, -1.f}) == 1);
    CHECK(s(std::vector<float>{nan_f, 0.f, 4.f, nan_f}) == 2);
    CHECK(s(std::vector<float>{3.f, 1.f}) == 0);
    std::size_t others = 0;
    for (int i = 0; i < 100; ++i)
        others += s(std::vector<float>{0.f, 0.5f, 0.49f}) != 1;
    CHECK(others == 0);
    CHECK_THROWS_AS(s(std::span<const float>{}), t2::error);
}

TEST_CASE("sampler: the same seed gives the same draws, another seed others") {
    const std::vector<float> logits{0.5f, 0.1f, -0.3f, 0.2f, 0.0f, 0.4f, -0.1f, 0.3f};
    const auto draws = [&](std::uint64_t seed) {
        sampler s({.temperature = 1.f, .top_p = 1.f, .top_k = 0, .seed = seed});
        std::vector<std::int32_t> out;
        for (int i = 0; i < 200; ++i)
            out.push_back(s(logits));
        return out;
    };
    CHECK(draws(42) == draws(42));
    CHECK(draws(1) == draws(1));
    CHECK(draws(42) != draws(43));
    CHECK(draws(0) != draws(1));
}

TEST_CASE("sampler: top_k = 1 and a tiny top_p return the argmax") {
    const std::vector<float> logits{0.2f, 1.0f, 0.9f, -0.5f, 0.99f, 1.0f};
    for (const float T : {0.5f, 1.f, 4.f}) {
        CAPTURE(T);
        sampler k1({.temperature = T, .top_p = 1.f, .top_k = 1, .seed = 3});
        sampler k1p({.temperature = T, .top_p = 0.7f, .top_k = 1, .seed = 4});
        sampler tiny_p({.temperature = T, .top_p = 1e-6f, .top_k = 0, .seed = 5});
        std::size_t others = 0;
        for (int i = 0; i < 1000; ++i)
            others += (k1(logits) != 1) + (k1p(logits) != 1) + (tiny_p(logits) != 1);
        CHECK(others == 0);
    }
}

TEST_CASE("sampler: without truncation the draws follow softmax(logits / T)") {
    const std::vector<float> logits{1.0f, -0.5f, 0.3f, 2.0f, 0.0f};
    std::uint64_t seed = 100;
    for (const float T : {0.5f, 1.f, 2.f}) {
        CAPTURE(T);
        sampler s({.temperature = T, .top_p = 1.f, .top_k = 0, .seed = seed++});
        const auto counts = histogram(s, logits, n_draws);
        const double chi2 = chi_square(counts, softmax_at(logits, T));
        CAPTURE(chi2);
        CHECK(chi2 < chi2_bound);
    }
    // The test has power: draws at T = 1 are far from softmax at T = 2.
    {
        sampler s({.temperature = 1.f, .top_p = 1.f, .top_k = 0, .seed = 8});
        const auto counts = histogram(s, logits, n_draws);
        CHECK(chi_square(counts, softmax_at(logits, 2.0)) > 100 * chi2_bound);
    }
    // top_p = 0 also disables the nucleus.
    sampler s0({.temperature = 1.f, .top_p = 0.f, .top_k = 0, .seed = 9});
    const double chi2 = chi_square(histogram(s0, logits, n_draws), softmax_at(logits, 1.0));
    CAPTURE(chi2);
    CHECK(chi2 < chi2_bound);
    // top_k at least the vocabulary size changes nothing.
    sampler sk({.temperature = 1.f, .top_p = 1.f, .top_k = 99, .seed = 10});
    const double chi2k = chi_square(histogram(sk, logits, n_draws), softmax_at(logits, 1.0));
    CAPTURE(chi2k);
    CHECK(chi2k < chi2_bound);
}

TEST_CASE("sampler: top_k = 2 draws the two largest, renormalised") {
    // The two largest are tokens 3 and 0.
    const std::vector<float> logits{1.0f, -0.5f, 0.3f, 1.5f, 0.0f};
    for (const float T : {0.5f, 1.f, 2.f}) {
        CAPTURE(T);
        sampler s({.temperature = T, .top_p = 1.f, .top_k = 2, .seed = 20});
        const auto counts = histogram(s, logits, n_draws);
        CHECK(counts[1] == 0);
        CHECK(counts[2] == 0);
        CHECK(counts[4] == 0);
        const double a = std::exp(1.0 / T), b = std::exp(1.5 / T);
        std::vector<double> expected(logits.size(), 0.0);
        expected[0] = a / (a + b);
        expected[3] = b / (a + b);
        const double chi2 = chi_square(counts, expected);
        CAPTURE(chi2);
        CHECK(chi2 < chi2_bound);
    }
}

TEST_CASE("sampler: top_p keeps the smallest prefix that reaches it, renormalised") {
    {
        // Probabilities 0.4, 0.3, 0.2, 0.1 in order: 0.4 < 0.5 <= 0.7 keeps tokens 0 and 1.
        const std::vector<float> sorted{std::log(0.4f), std::log(0.3f), std::log(0.2f),
                                        std::log(0.1f)};
        sampler s({.temperature = 1.f, .top_p = 0.5f, .top_k = 0, .seed = 29});
        const auto counts = histogram(s, sorted, n_draws);
        const double chi2 = chi_square(counts, {4.0 / 7.0, 3.0 / 7.0, 0.0, 0.0});
        CAPTURE(chi2);
        CHECK(chi2 < chi2_bound);
    }
    // Probabilities 0.1, 0.4, 0.2, 0.3 at T = 1 (token 1 most likely, then 3).
    const std::vector<float> logits{std::log(0.1f), std::log(0.4f), std::log(0.2f), std::log(0.3f)};
    {
        // 0.4 < 0.5 <= 0.4 + 0.3: tokens 1 and 3, in ratio 4 : 3.
        sampler s({.temperature = 1.f, .top_p = 0.5f, .top_k = 0, .seed = 30});
        const auto counts = histogram(s, logits, n_draws);
        const double chi2 = chi_square(counts, {0.0, 4.0 / 7.0, 0.0, 3.0 / 7.0});
        CAPTURE(chi2);
        CHECK(chi2 < chi2_bound);
    }
    {
        // 0.7 < 0.8 <= 0.9: tokens 1, 3 and 2, in ratio 4 : 3 : 2.
        sampler s({.temperature = 1.f, .top_p = 0.8f, .top_k = 0, .seed = 31});
        const auto counts = histogram(s, logits, n_draws);
        const double chi2 = chi_square(counts, {0.0, 4.0 / 9.0, 2.0 / 9.0, 3.0 / 9.0});
        CAPTURE(chi2);
        CHECK(chi2 < chi2_bound);
    }
    {
        // top_k applies first: of tokens 1 and 3 (ratio 4 : 3), 4/7 < 0.6, so both stay.
        sampler s({.temperature = 1.f, .top_p = 0.6f, .top_k = 2, .seed = 32});
        const auto counts = histogram(s, logits, n_draws);
        const double chi2 = chi_square(counts, {0.0, 4.0 / 7.0, 0.0, 3.0 / 7.0});
        CAPTURE(chi2);
        CHECK(chi2 < chi2_bound);
    }
}

TEST_CASE("sampler: invalid options throw") {
    CHECK_THROWS_AS(sampler({.temperature = -1.f}), t2::error);
    CHECK_THROWS_AS(sampler({.temperature = -0.001f}), t2::error);
    CHECK_THROWS_AS(sampler({.temperature = nan_f}), t2::error);
    CHECK_THROWS_AS(sampler({.temperature = inf_f}), t2::error);
    CHECK_THROWS_AS(sampler({.temperature = -inf_f}), t2::error);
    CHECK_THROWS_AS(sampler({.temperature = 1.f, .top_p = -0.1f}), t2::error);
    CHECK_THROWS_AS(sampler({.temperature = 1.f, .top_p = 1.5f}), t2::error);
    CHECK_THROWS_AS(sampler({.temperature = 1.f, .top_p = nan_f}), t2::error);
    CHECK_THROWS_AS(sampler({.temperature = 1.f, .top_p = inf_f}), t2::error);
    CHECK_NOTHROW(sampler({.temperature = 0.f, .top_p = 0.f}));
    CHECK_NOTHROW(sampler({.temperature = 1.f, .top_p = 1.f}));
}
