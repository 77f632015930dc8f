#pragma once
// Derivative-free searches over a box [lo, hi]ⁿ, one population per iteration scored in one
// objective.losses call (train/objective.hpp), minimizing:
//
//   cem              the cross-entropy method as the Transformer² reference's few-shot
//                    search over mixing weights α: samples from N(μ, σ) clamped to the box,
//                    member 0 the best so far (from the second iteration on), then μ and σ
//                    the mean and unbiased standard deviation of the elites (the lowest
//                    losses). Defaults: 32 members, 6 elites, μ₀ = 1/n, σ₀ = 0.5, [0, 1].
//   random_shooting  uniform samples from the box, keeping the best.
//
//   t2::train::cem search(K, {.seed = 1});
//   for (int i = 0; i < 50; ++i)
//       search.iterate(objective);
//   use(search.best());
//
// Members with the loss +∞ (not evaluable, e.g. α all zero under rescaling) are the worst
// and never become elites while enough others are finite. Samples come from (seed,
// iteration, member) through the counter-based generator: the same seed gives the same
// search.
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
#include "t2/train/objective.hpp"

T2_NAMESPACE_BEGIN
namespace train {

namespace detail {

// The box, and the search's best so far.
class box_search {
public:
    box_search(const char* who, std::size_t n, std::size_t population, float lo, float hi) : n_(n) {
        T2_CHECK(n > 0 && population > 0, who, ": ", n, " parameters and a population of ", population,
                 "; both must be positive");
        T2_CHECK(lo < hi && std::isfinite(lo) && std::isfinite(hi), who, ": the box [", lo, ", ", hi,
                 "] is empty or not finite");
        candidates_.resize(population * n);
        losses_.resize(population);
    }

    std::size_t parameter_count() const noexcept { return n_; }
    std::size_t iterations() const noexcept { return iterations_; }
    // The best candidate so far (empty before the first iteration) and its loss.
    std::span<const float> best() const noexcept { return best_; }
    float best_loss() const noexcept { return best_loss_; }

protected:
    float* member(std::size_t m) noexcept { return candidates_.data() + m * n_; }
    std::size_t population() const noexcept { return losses_.size(); }

    template <population_objective O>
    void score(O& objective) {
        T2_CHECK(objective.parameter_count() == n_, "search: made for ", n_, " parameters, the objective has ",
                 objective.parameter_count());
        objective.losses(std::span<const float>(candidates_), std::span<float>(losses_));
        for (float& l : losses_)
            if (!std::isfinite(l))
                l = std::numeric_limits<float>::infinity();
        for (std::size_t m = 0; m < population(); ++m)
            if (best_.empty() || losses_[m] < best_loss_) {
                best_.assign(member(m), member(m) + n_);
                best_loss_ = losses_[m];
            }
        ++iterations_;
    }

    std::size_t n_;
    std::vector<float> candidates_, losses_, best_;
    float best_loss_ = std::numeric_limits<float>::infinity();
    std::size_t iterations_ = 0;
};

} // namespace detail

struct cem_options {
    std::size_t population = 32, elites = 6;
    float lo = 0.f, hi = 1.f;
    float initial_mean = -1.f; // < 0: 1/n
    float initial_std = 0.5f;
    std::uint64_t seed = 0;
};

class cem : public detail::box_search {
public:
    cem(std::size_t n, cem_options options = {})
        : box_search("cem", n, options.population, options.lo, options.hi), options_(options),
          mean_(n, options.initial_mean < 0 ? 1.f / float(n) : options.initial_mean), std_(n, options.initial_std) {
        T2_CHECK(options.elites >= 2 && options.elites <= options.population, "cem: ", options.elites,
                 " elites of ", options.population, "; need at least 2 (for a standard deviation) and at most all");
        T2_CHECK(options.initial_std >= 0, "cem: initial_std ", options.initial_std, " is negative");
    }

    // One iteration: sample, score, refit μ and σ to the elites. Returns the best loss so far.
    template <population_objective O>
    float iterate(O& objective) {
        const philox rng = philox(options_.seed).split(iterations());
        for (std::size_t m = 0; m < population(); ++m) {
            float* x = member(m);
            if (m == 0 && !best().empty()) {
                std::copy(best().begin(), best().end(), x);
                continue;
            }
            for (std::size_t j = 0; j < n_; ++j)
                x[j] = std::clamp(mean_[j] + std_[j] * rng.normal(m * n_ + j), options_.lo, options_.hi);
        }
        score(objective);

        std::vector<std::size_t> order(population());
        std::iota(order.begin(), order.end(), std::size_t{0});
        std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return losses_[a] < losses_[b]; });
        const std::size_t E = options_.elites;
        for (std::size_t j = 0; j < n_; ++j) {
            double sum = 0;
            for (std::size_t e = 0; e < E; ++e)
                sum += member(order[e])[j];
            const double mean = sum / double(E);
            double squares = 0;
            for (std::size_t e = 0; e < E; ++e)
                squares += (member(order[e])[j] - mean) * (member(order[e])[j] - mean);
            mean_[j] = static_cast<float>(mean);
            std_[j] = static_cast<float>(std::sqrt(squares / double(E - 1)));
        }
        return best_loss();
    }

    std::span<const float> mean() const noexcept { return mean_; }
    std::span<const float> standard_deviation() const noexcept { return std_; }

private:
    cem_options options_;
    std::vector<float> mean_, std_;
};

struct random_shooting_options {
    std::size_t population = 32;
    float lo = 0.f, hi = 1.f;
    std::uint64_t seed = 0;
};

class random_shooting : public detail::box_search {
public:
    random_shooting(std::size_t n, random_shooting_options options = {})
        : box_search("random_shooting", n, options.population, options.lo, options.hi), options_(options) {}

    template <population_objective O>
    float iterate(O& objective) {
        const philox rng = philox(options_.seed).split(iterations());
        for (std::size_t m = 0; m < population(); ++m)
            for (std::size_t j = 0; j < n_; ++j)
                member(m)[j] = rng.uniform(m * n_ + j, options_.lo, options_.hi);
        score(objective);
        return best_loss();
    }

private:
    random_shooting_options options_;
};

} // namespace train
T2_NAMESPACE_END
