#pragma once
// What the training steps and searches of train/ evaluate: an objective over a flat vector
// of n parameters (an adapter's parameters(), or anything else), to be minimized.
//
//   objective.parameter_count()                  n
//   objective.losses(candidates, losses)         the losses of P candidates at once,
//                                                candidates [P × n] stacked, losses [P]
//   objective.value_and_gradient(params, grad)   the loss at params, and its exact gradient
//                                                written (=) into grad [n]
//
// Forward-only estimators (SPSA, ES) and searches (CEM, random shooting) need losses(); the
// exact estimator needs value_and_gradient(). A population is one call so that a model can
// score it as one batch with a different adapter state per sequence (train/adapter_objective.hpp).
// A candidate that cannot be evaluated (an SVF adapter whose rescaling is undefined, a loss
// that is not finite) has the loss +∞: the worst, never a NaN in what follows.
#include <concepts>
#include <cstddef>
#include <span>

#include "t2/config.hpp"

T2_NAMESPACE_BEGIN
namespace train {

template <class O>
concept population_objective = requires(O& o, std::span<const float> candidates, std::span<float> losses) {
    { o.parameter_count() } -> std::convertible_to<std::size_t>;
    o.losses(candidates, losses);
};

template <class O>
concept differentiable_objective = requires(O& o, std::span<const float> parameters, std::span<float> gradient) {
    { o.parameter_count() } -> std::convertible_to<std::size_t>;
    { o.value_and_gradient(parameters, gradient) } -> std::convertible_to<float>;
};

} // namespace train
T2_NAMESPACE_END
