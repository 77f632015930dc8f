#pragma once
// One training step over a flat parameter span, with the gradient estimator and the
// optimizer as compile-time policies:
//
//   t2::train::trainer<t2::train::spsa, t2::train::adam> t(
//       t2::train::spsa({.epsilon = 1e-3f, .samples = 4, .seed = 7}),
//       t2::train::adam(adapter.parameters().size(), {.lr = 2e-3f}), {.clip = 1e-3f});
//   for (int i = 0; i < 100; ++i)
//       t.step(objective, adapter.parameters());
//
// A step estimates the gradient (train/estimators.hpp), clips its global norm, and lets the
// optimizer (train/optimizers.hpp) move the parameters. The step number, which seeds the
// forward-only estimators' perturbations, is the optimizer's step count, so a run restored
// from a checkpoint (parameters, optimizer state and step count) continues exactly.
#include <cstddef>
#include <span>
#include <utility>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/train/estimators.hpp"
#include "t2/train/optimizers.hpp"

T2_NAMESPACE_BEGIN
namespace train {

struct trainer_options {
    float clip = 0.f; // the largest global gradient norm applied (≤ 0: no clipping)
};

struct step_result {
    float loss = 0;          // the estimator's estimate of the loss before the step
    float gradient_norm = 0; // before clipping
};

template <class Estimator, optimizer Optimizer>
class trainer {
public:
    trainer(Estimator estimator, Optimizer optimizer, trainer_options options = {})
        : estimator_(std::move(estimator)), optimizer_(std::move(optimizer)), options_(options) {}

    template <class Objective>
    step_result step(Objective& objective, std::span<float> parameters) {
        T2_CHECK(parameters.size() == objective.parameter_count(), "trainer: ", parameters.size(),
                 " parameters for an objective of ", objective.parameter_count());
        gradient_.resize(parameters.size());
        step_result result;
        result.loss = estimator_.estimate(objective, std::span<const float>(parameters), std::span<float>(gradient_),
                                          optimizer_.steps());
        result.gradient_norm = clip_gradient_norm(gradient_, options_.clip);
        optimizer_.step(parameters, gradient_);
        return result;
    }

    // The last step's gradient, after clipping.
    std::span<const float> gradient() const noexcept { return gradient_; }
    std::size_t steps() const noexcept { return optimizer_.steps(); }
    Estimator& estimator() noexcept { return estimator_; }
    Optimizer& optimizer() noexcept { return optimizer_; }

private:
    Estimator estimator_;
    Optimizer optimizer_;
    trainer_options options_;
    std::vector<float> gradient_;
};

} // namespace train
T2_NAMESPACE_END
