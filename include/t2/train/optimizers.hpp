#pragma once
// Optimizers over a flat span of parameters (an adapter's parameters(), or any other), and
// global gradient-norm clipping. Each optimizer minimizes: step(parameters, gradient) moves
// the parameters against the gradient and keeps its own state (moments, step count), which
// state() exposes as one span of floats for checkpoints.
//
//   t2::train::adam opt(adapter.parameters().size(), {.lr = 2e-3f});
//   t2::train::clip_gradient_norm(adapter.gradient(), 1e-3f);
//   opt.step(adapter.parameters(), adapter.gradient());
//
// The update rules are PyTorch's (torch.optim.Adam without weight decay or amsgrad,
// torch.optim.SGD with momentum and no dampening or Nesterov), in the same order of
// operations, so that a step agrees with PyTorch's to float rounding.
#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>
#include <vector>

#include "t2/core/error.hpp"

T2_NAMESPACE_BEGIN
namespace train {

template <class O>
concept optimizer = requires(O& o, std::span<float> parameters, std::span<const float> gradient) {
    o.step(parameters, gradient);
    { o.steps() } -> std::convertible_to<std::size_t>;
};

namespace detail {

inline void check_step(const char* who, std::size_t size, std::span<float> parameters,
                       std::span<const float> gradient) {
    T2_CHECK(parameters.size() == size && gradient.size() == size, who, ": made for ", size, " parameters, given ",
             parameters.size(), " parameters and ", gradient.size(), " gradients");
}

} // namespace detail

struct adam_options {
    float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
};

// Adam (Kingma & Ba): m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g²,
// θ ← θ − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + ε).
class adam {
public:
    explicit adam(std::size_t size, adam_options options = {}) : options_(options), state_(2 * size, 0.f) {
        T2_CHECK(options.lr > 0 && std::isfinite(options.lr) && options.beta1 >= 0 && options.beta1 < 1 &&
                     options.beta2 >= 0 && options.beta2 < 1 && options.eps > 0 && std::isfinite(options.eps),
                 "adam: lr ", options.lr, ", betas ", options.beta1, "/", options.beta2, ", eps ", options.eps,
                 "; the learning rate and eps must be positive and finite and the betas in [0, 1)");
    }

    void step(std::span<float> parameters, std::span<const float> gradient) {
        const std::size_t n = size();
        detail::check_step("adam", n, parameters, gradient);
        ++steps_;
        const auto [lr, beta1, beta2, eps] = options_;
        const double t = static_cast<double>(steps_);
        const float bias1 = static_cast<float>(1.0 - std::pow(double(beta1), t));
        const float bias2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(double(beta2), t)));
        const float step_size = lr / bias1;
        float* m = state_.data();
        float* v = state_.data() + n;
        for (std::size_t i = 0; i < n; ++i) {
            const float g = gradient[i];
            m[i] = beta1 * m[i] + (1.f - beta1) * g;
            v[i] = beta2 * v[i] + (1.f - beta2) * g * g;
            parameters[i] -= step_size * (m[i] / (std::sqrt(v[i]) / bias2_sqrt + eps));
        }
    }

    std::size_t size() const noexcept { return state_.size() / 2; }
    std::size_t steps() const noexcept { return steps_; }
    const adam_options& options() const noexcept { return options_; }
    // m then v; with steps(), all a checkpoint needs (restore with set_steps after writing it).
    std::span<float> state() noexcept { return state_; }
    std::span<const float> state() const noexcept { return state_; }
    void set_steps(std::size_t steps) noexcept { steps_ = steps; }

private:
    adam_options options_;
    std::vector<float> state_;
    std::size_t steps_ = 0;
};

struct sgd_options {
    float lr = 1e-2f, momentum = 0.9f;
};

// SGD with momentum: b ← μb + g (b = g at the first step), θ ← θ − lr·b.
class sgd {
public:
    explicit sgd(std::size_t size, sgd_options options = {}) : options_(options), state_(size, 0.f) {
        T2_CHECK(options.lr > 0 && std::isfinite(options.lr) && options.momentum >= 0 && options.momentum < 1,
                 "sgd: lr ", options.lr, ", momentum ", options.momentum,
                 "; the learning rate must be positive and finite and the momentum in [0, 1)");
    }

    void step(std::span<float> parameters, std::span<const float> gradient) {
        detail::check_step("sgd", size(), parameters, gradient);
        const bool first = steps_++ == 0;
        for (std::size_t i = 0; i < size(); ++i) {
            float& b = state_[i];
            b = first ? gradient[i] : options_.momentum * b + gradient[i];
            parameters[i] -= options_.lr * (options_.momentum != 0.f ? b : gradient[i]);
        }
    }

    std::size_t size() const noexcept { return state_.size(); }
    std::size_t steps() const noexcept { return steps_; }
    const sgd_options& options() const noexcept { return options_; }
    std::span<float> state() noexcept { return state_; } // the momentum buffer
    std::span<const float> state() const noexcept { return state_; }
    void set_steps(std::size_t steps) noexcept { steps_ = steps; }

private:
    sgd_options options_;
    std::vector<float> state_;
    std::size_t steps_ = 0;
};

// Scales the gradient so that its Euclidean norm is at most max_norm (as
// torch.nn.utils.clip_grad_norm_: by max_norm / (norm + 1e-6) when the norm exceeds it);
// returns the norm before clipping. max_norm ≤ 0 leaves the gradient alone. A non-finite
// norm is an error: the step that produced it has nothing to apply.
inline float clip_gradient_norm(std::span<float> gradient, float max_norm) {
    double sum = 0;
    for (const float g : gradient)
        sum += double(g) * g;
    const float norm = static_cast<float>(std::sqrt(sum));
    T2_CHECK(std::isfinite(norm), "clip_gradient_norm: the gradient's norm is ", norm);
    if (max_norm > 0 && norm > max_norm) {
        const float scale = max_norm / (norm + 1e-6f);
        for (float& g : gradient)
            g *= scale;
    }
    return norm;
}

} // namespace train
T2_NAMESPACE_END
