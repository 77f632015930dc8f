#pragma once
// Gradient estimators: the compile-time policy of a training step (train/trainer.hpp). Each
// writes (=) an estimate of dL/dθ at θ into `gradient` and returns an estimate of L(θ):
//
//   float estimate(objective, θ, gradient, step)
//
//   exact   backpropagation: objective.value_and_gradient
//   spsa    MeZO-style simultaneous perturbation: for i < samples, u_i ~ N(0, I) and
//           g = (1/S) Σ_i (L(θ + εu_i) − L(θ − εu_i)) / (2ε) · u_i
//   es      antithetic Gaussian evolution strategies (Salimans et al. 2017) with rank-based
//           fitness shaping: the 2P losses L(θ ± σε_i) become centred ranks c ∈ [−½, ½] and
//           g = Σ_i (c⁺_i − c⁻_i) ε_i / (2Pσ)
//
// The perturbations are regenerated from (seed, step, sample) by the counter-based generator,
// never stored between steps, so a step is reproducible from the seed alone (and a resumed
// run needs only the step number). The population of a step — SPSA's ± pairs, ES's 2P
// members — is scored in one objective.losses call; its candidates take 2S·n (2P·n) floats,
// the only memory beyond inference's that a forward-only step needs.
//
// Pairs with a non-finite loss (a candidate that could not be evaluated) carry no
// information about the slope: SPSA leaves them out of its mean (an error if none is left),
// and ES ranks them last.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/core/rng.hpp"
#include "t2/train/objective.hpp"

T2_NAMESPACE_BEGIN
namespace train {

struct exact {
    template <differentiable_objective O>
    float estimate(O& objective, std::span<const float> parameters, std::span<float> gradient, std::uint64_t) {
        return objective.value_and_gradient(parameters, gradient);
    }
};

namespace detail {

inline void check_estimate(const char* who, std::size_t n, std::span<const float> parameters,
                           std::span<float> gradient) {
    T2_CHECK(parameters.size() == n && gradient.size() == n, who, ": the objective has ", n, " parameters, given ",
             parameters.size(), " parameters and a gradient of ", gradient.size());
}

// Perturbation `sample` of step `step`: u[j] ~ N(0, 1), regenerated on demand.
class gaussian_directions {
public:
    gaussian_directions(std::uint64_t seed, std::uint64_t step) : rng_(philox(seed).split(step)) {}
    float operator()(std::size_t sample, std::size_t n, std::size_t j) const {
        return rng_.normal(static_cast<std::uint64_t>(sample) * n + j);
    }

private:
    philox rng_;
};

// Scores the population θ ± scale·u_i, i < samples: rows 2i and 2i+1 of candidates [2S × n],
// their losses into losses [2S].
template <population_objective O>
void score_antithetic(O& objective, const gaussian_directions& u, std::span<const float> theta, float scale,
                      std::size_t samples, std::vector<float>& candidates, std::vector<float>& losses) {
    const std::size_t n = theta.size();
    candidates.resize(2 * samples * n);
    for (std::size_t i = 0; i < samples; ++i) {
        float* plus = candidates.data() + 2 * i * n;
        float* minus = plus + n;
        for (std::size_t j = 0; j < n; ++j) {
            const float d = scale * u(i, n, j);
            plus[j] = theta[j] + d;
            minus[j] = theta[j] - d;
        }
    }
    losses.resize(2 * samples);
    objective.losses(std::span<const float>(candidates), std::span<float>(losses));
}

// Centred ranks of the losses in [−½, ½] (the smallest −½), ties sharing their mean rank;
// non-finite losses rank last.
inline std::vector<float> centred_ranks(std::span<const float> losses) {
    const std::size_t n = losses.size();
    std::vector<std::size_t> order(n);
    std::iota(order.begin(), order.end(), std::size_t{0});
    const auto key = [&](std::size_t i) { return std::isnan(losses[i]) ? INFINITY : losses[i]; };
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return key(a) < key(b); });
    std::vector<float> ranks(n, 0.f);
    if (n < 2)
        return ranks;
    for (std::size_t first = 0; first < n;) {
        std::size_t last = first;
        while (last + 1 < n && key(order[last + 1]) == key(order[first]))
            ++last;
        const double mean_rank = 0.5 * double(first + last);
        for (std::size_t k = first; k <= last; ++k)
            ranks[order[k]] = static_cast<float>(mean_rank / double(n - 1) - 0.5);
        first = last + 1;
    }
    return ranks;
}

} // namespace detail

struct spsa_options {
    float epsilon = 1e-3f;    // the perturbation's scale
    std::size_t samples = 1;  // directions averaged per step (2 forward losses each)
    std::uint64_t seed = 0;
};

class spsa {
public:
    explicit spsa(spsa_options options = {}) : options_(options) {
        T2_CHECK(options.epsilon > 0 && std::isfinite(options.epsilon) && options.samples > 0,
                 "spsa: epsilon ", options.epsilon, " and ", options.samples,
                 " samples; both must be positive");
    }

    template <population_objective O>
    float estimate(O& objective, std::span<const float> theta, std::span<float> gradient, std::uint64_t step) {
        const std::size_t n = objective.parameter_count(), S = options_.samples;
        detail::check_estimate("spsa", n, theta, gradient);
        const detail::gaussian_directions u(options_.seed, step);
        detail::score_antithetic(objective, u, theta, options_.epsilon, S, candidates_, losses_);

        std::fill(gradient.begin(), gradient.end(), 0.f);
        std::size_t used = 0;
        double loss_sum = 0;
        for (std::size_t i = 0; i < S; ++i) {
            const float plus = losses_[2 * i], minus = losses_[2 * i + 1];
            if (!std::isfinite(plus) || !std::isfinite(minus))
                continue;
            ++used;
            loss_sum += 0.5 * (double(plus) + minus);
            const float slope = (plus - minus) / (2.f * options_.epsilon);
            for (std::size_t j = 0; j < n; ++j)
                gradient[j] += slope * u(i, n, j);
        }
        T2_CHECK(used > 0, "spsa: no perturbation of step ", step, " could be evaluated (every loss not finite)");
        for (float& g : gradient)
            g /= static_cast<float>(used);
        return static_cast<float>(loss_sum / double(used));
    }

    const spsa_options& options() const noexcept { return options_; }

private:
    spsa_options options_;
    std::vector<float> candidates_, losses_;
};

struct es_options {
    float sigma = 0.02f;        // the perturbation's standard deviation
    std::size_t pairs = 16;     // antithetic pairs per step: 2·pairs forward losses
    std::uint64_t seed = 0;
};

class es {
public:
    explicit es(es_options options = {}) : options_(options) {
        T2_CHECK(options.sigma > 0 && std::isfinite(options.sigma) && options.pairs > 0, "es: sigma ",
                 options.sigma, " and ", options.pairs, " pairs; both must be positive");
    }

    // Returns the mean of the population's finite losses (+∞ if none is).
    template <population_objective O>
    float estimate(O& objective, std::span<const float> theta, std::span<float> gradient, std::uint64_t step) {
        const std::size_t n = objective.parameter_count(), P = options_.pairs;
        detail::check_estimate("es", n, theta, gradient);
        const detail::gaussian_directions u(options_.seed, step);
        detail::score_antithetic(objective, u, theta, options_.sigma, P, candidates_, losses_);

        const std::vector<float> ranks = detail::centred_ranks(losses_);
        std::fill(gradient.begin(), gradient.end(), 0.f);
        for (std::size_t i = 0; i < P; ++i) {
            const float weight = (ranks[2 * i] - ranks[2 * i + 1]) / (2.f * float(P) * options_.sigma);
            for (std::size_t j = 0; j < n; ++j)
                gradient[j] += weight * u(i, n, j);
        }
        double sum = 0;
        std::size_t finite = 0;
        for (const float l : losses_)
            if (std::isfinite(l)) {
                sum += l;
                ++finite;
            }
        return finite ? static_cast<float>(sum / double(finite)) : INFINITY;
    }

    const es_options& options() const noexcept { return options_; }

private:
    es_options options_;
    std::vector<float> candidates_, losses_;
};

} // namespace train
T2_NAMESPACE_END
