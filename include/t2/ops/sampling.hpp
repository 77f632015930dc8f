#pragma once
// Choosing the next token from logits: greedy (temperature 0), or sampling from the
// softmax at a temperature, optionally restricted to the top-k tokens and/or the nucleus
// (the smallest set whose probability reaches top-p). Seeded with a counter-based
// generator: the i-th draw of a sampler depends on the seed and i only, so a run is
// reproducible on any executor and thread count.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/core/rng.hpp"

T2_NAMESPACE_BEGIN
namespace ops {

struct sampling_options {
    float temperature = 1.f; // 0: greedy
    float top_p = 0.9f;      // nucleus; 1 (or 0) disables it
    std::size_t top_k = 0;   // 0 disables it
    std::uint64_t seed = 0;
};

// The first index of the largest logit (NaN never wins).
inline std::int32_t argmax(std::span<const float> logits) {
    T2_CHECK(!logits.empty(), "argmax: no logits");
    // The largest value first, in eight independent maxima without branches (a NaN compares
    // false and is passed over), then its first index: two streaming passes instead of one
    // with a data-dependent branch per element (a 32,000-entry vocabulary per token).
    constexpr std::size_t ways = 8;
    float top[ways];
    std::fill(top, top + ways, -std::numeric_limits<float>::infinity());
    const std::size_t n = logits.size(), whole = n / ways * ways;
    for (std::size_t i = 0; i < whole; i += ways)
        for (std::size_t k = 0; k < ways; ++k)
            top[k] = logits[i + k] > top[k] ? logits[i + k] : top[k];
    for (std::size_t i = whole; i < n; ++i)
        top[0] = logits[i] > top[0] ? logits[i] : top[0];
    const float best = *std::max_element(top, top + ways);
    for (std::size_t i = 0; i < n; ++i)
        if (logits[i] == best)
            return static_cast<std::int32_t>(i);
    return static_cast<std::int32_t>(n - 1); // every logit NaN: the last, as before
}

class sampler {
public:
    explicit sampler(const sampling_options& options) : options_(options), rng_(options.seed) {
        T2_CHECK(options.temperature >= 0.f && std::isfinite(options.temperature),
                 "sampler: temperature must be a finite number >= 0, got ", options.temperature);
        T2_CHECK(options.top_p >= 0.f && options.top_p <= 1.f, "sampler: top-p must be in [0, 1], got ",
                 options.top_p);
    }

    const sampling_options& options() const noexcept { return options_; }

    std::int32_t operator()(std::span<const float> logits) {
        if (options_.temperature == 0.f)
            return argmax(logits);
        const float coin = rng_.uniform(draws_++);
        // Candidates sorted by logit, best first, cut to top-k.
        std::vector<std::int32_t> order(logits.size());
        std::iota(order.begin(), order.end(), 0);
        const std::size_t k = options_.top_k ? std::min(options_.top_k, order.size()) : order.size();
        const auto by_logit = [&](std::int32_t a, std::int32_t b) {
            return logits[std::size_t(a)] > logits[std::size_t(b)] ||
                   (logits[std::size_t(a)] == logits[std::size_t(b)] && a < b);
        };
        std::partial_sort(order.begin(), order.begin() + std::ptrdiff_t(k), order.end(), by_logit);
        order.resize(k);
        // Softmax at the temperature over the candidates, in double for a stable sum.
        const double top = logits[std::size_t(order[0])];
        std::vector<double> p(k);
        double total = 0;
        for (std::size_t i = 0; i < k; ++i)
            total += p[i] = std::exp((logits[std::size_t(order[i])] - top) / options_.temperature);
        // Nucleus: keep the shortest prefix whose probability reaches top_p.
        std::size_t keep = k;
        if (options_.top_p > 0.f && options_.top_p < 1.f) {
            double cumulative = 0;
            for (std::size_t i = 0; i < k; ++i) {
                cumulative += p[i] / total;
                if (cumulative >= options_.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        const double kept = std::accumulate(p.begin(), p.begin() + std::ptrdiff_t(keep), 0.0);
        double threshold = coin * kept;
        for (std::size_t i = 0; i < keep; ++i) {
            threshold -= p[i];
            if (threshold < 0)
                return order[i];
        }
        return order[keep - 1];
    }

private:
    sampling_options options_;
    philox rng_;
    std::uint64_t draws_ = 0;
};

} // namespace ops
T2_NAMESPACE_END
