#pragma once
// LoRA (Hu et al. 2021), the baseline Transformer² compares against: a weight policy with
//
//   W' = W + (α / r) · B A,   A [r × in], B [out × r],
//
// W frozen, A and B trainable. A starts uniform in ±1/√in (PEFT's kaiming-uniform with
// a = √5) and B at zero, so W' = W until training moves B. y = x·Wᵀ + (α/r)·(x·Aᵀ)·Bᵀ never
// materializes B A. A matrix the model does not adapt holds only W (adapted() is false).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "t2/core/error.hpp"
#include "t2/core/rng.hpp"
#include "t2/core/tensor.hpp"
#include "t2/nn/linear.hpp"
#include "t2/ops/gemm.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

struct lora_options {
    std::size_t rank = 16;
    float alpha = 16.f; // the update is scaled by alpha / rank
};

class lora {
public:
    struct gradient {
        matrix<float> a, b; // dL/dA [r × in], dL/dB [out × r], accumulated
    };

    lora() = default;
    explicit lora(nn::dense<float> base) : base_(std::move(base)) {}
    // Fresh adapter: A from `seed` (one stream per matrix: pass a distinct seed), B = 0.
    lora(nn::dense<float> base, const lora_options& options, std::uint64_t seed)
        : base_(std::move(base)), a_(options.rank, base_.in_features()),
          b_(base_.out_features(), options.rank), alpha_(options.alpha), adapted_(true) {
        T2_CHECK(options.rank > 0, "lora: rank must be positive");
        const philox rng(seed);
        const float bound = 1.f / std::sqrt(static_cast<float>(base_.in_features()));
        for (std::size_t i = 0; i < a_.size(); ++i)
            a_.data()[i] = rng.uniform(i, -bound, bound);
    }
    // Trained adapter (e.g. read from a file).
    lora(nn::dense<float> base, matrix<float> a, matrix<float> b, float alpha)
        : base_(std::move(base)), a_(std::move(a)), b_(std::move(b)), alpha_(alpha), adapted_(true) {
        T2_CHECK(a_.extent(0) > 0 && a_.extent(0) == b_.extent(1) && a_.extent(1) == base_.in_features() &&
                     b_.extent(0) == base_.out_features(),
                 "lora: A is ", a_.shape(), " and B is ", b_.shape(), " for a ", base_.out_features(), "x",
                 base_.in_features(), " matrix; need A r×in and B out×r");
    }

    bool adapted() const noexcept { return adapted_; }
    std::size_t rank() const noexcept { return a_.extent(0); }
    std::size_t in_features() const noexcept { return base_.in_features(); }
    std::size_t out_features() const noexcept { return base_.out_features(); }
    float scaling() const noexcept { return adapted_ ? alpha_ / static_cast<float>(rank()) : 0.f; }
    matrix_view<float> a() noexcept { return a_.view(); }
    matrix_view<float> b() noexcept { return b_.view(); }
    matrix_view<const float> a() const noexcept { return a_.view(); }
    matrix_view<const float> b() const noexcept { return b_.view(); }

    template <exec::cpu_executor E>
    void forward(const E& ex, matrix_view<const float> x, matrix_view<float> y) const {
        base_.forward(ex, x, y);
        if (!adapted_)
            return;
        matrix<float> down(x.extent(0), rank());
        ops::gemm(ex, x, a_.view(), down.view(), {.transpose_b = true});
        ops::gemm(ex, down.view(), b_.view(), y, {.transpose_b = true, .alpha = scaling(), .beta = 1.f});
    }

    gradient make_gradient() const {
        if (!adapted_)
            return {};
        return {matrix<float>(a_.extent(0), a_.extent(1)), matrix<float>(b_.extent(0), b_.extent(1))};
    }

    // dx = dL/dx (overwritten); grad.a, grad.b accumulate. With u = x·Aᵀ:
    // dB = s·dyᵀu, du = s·dy·B, dA = duᵀx, dx = dy·W + du·A.
    template <exec::cpu_executor E>
    void backward(const E& ex, matrix_view<const float> x, matrix_view<const float> dy,
                  matrix_view<float> dx, gradient& grad) const {
        nn::dense<float>::gradient frozen; // the base weight is not trained
        base_.backward(ex, x, dy, dx, frozen);
        if (!adapted_)
            return;
        const std::size_t T = x.extent(0);
        matrix<float> down(T, rank()), ddown(T, rank());
        ops::gemm(ex, x, a_.view(), down.view(), {.transpose_b = true});
        ops::gemm(ex, dy, down.view(), grad.b.view(), {.transpose_a = true, .alpha = scaling(), .beta = 1.f});
        ops::gemm(ex, dy, b_.view(), ddown.view(), {.alpha = scaling()});
        ops::gemm(ex, ddown.view(), x, grad.a.view(), {.transpose_a = true, .beta = 1.f});
        ops::gemm(ex, ddown.view(), a_.view(), dx, {.beta = 1.f});
    }

private:
    nn::dense<float> base_;
    matrix<float> a_, b_;
    float alpha_ = 0.f;
    bool adapted_ = false;
};

} // namespace adapt
T2_NAMESPACE_END
