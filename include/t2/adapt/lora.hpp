#pragma once
// LoRA (Hu et al. 2021), the baseline Transformer² compares against:
//
//   W' = W + (α / r) · B A,   A [r × in], B [out × r],
//
// W frozen (the policy: the dense base, shared), A and B trainable (a per-matrix lora_state
// of an adapter, nn/adapter_state.hpp, viewing the adapter's flat parameters). A starts
// uniform in ±1/√in (PEFT's kaiming-uniform with a = √5) and B at zero (make_lora_adapter),
// so W' = W until training moves B. y = x·Wᵀ + (α/r)·(x·Aᵀ)·Bᵀ never materializes B A, so the
// sequences of one batch may carry different adapters: x·Wᵀ is one gemm over all rows, and
// each sequence's rows add their own low-rank term.
#include <cstddef>
#include <span>
#include <utility>

#include "t2/core/error.hpp"
#include "t2/core/tensor.hpp"
#include "t2/nn/linear.hpp"
#include "t2/ops/gemm.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

struct lora_options {
    std::size_t rank = 16;
    float alpha = 16.f; // the update is scaled by alpha / rank
};

// One matrix's share of a LoRA adapter; inactive (rank 0) for a matrix it leaves alone.
struct lora_state {
    std::size_t rank = 0;
    float scaling = 0.f;                    // alpha / rank
    std::span<float> a, b;                  // [r × in], [out × r] in the adapter's parameters
    std::span<float> gradient_a, gradient_b; // the same in its gradient

    bool active() const noexcept { return rank > 0; }
};

class lora {
public:
    using state = lora_state;

    lora() = default;
    explicit lora(nn::dense<float> base) : base_(std::move(base)) {}

    std::size_t in_features() const noexcept { return base_.in_features(); }
    std::size_t out_features() const noexcept { return base_.out_features(); }
    const nn::dense<float>& base() const noexcept { return base_; }

    // Floats of scratch that forward and backward need for `rows` rows with state s.
    std::size_t scratch_floats(std::size_t rows, const state& s) const noexcept { return rows * s.rank; }
    std::size_t backward_scratch_floats(std::size_t rows, const state& s) const noexcept { return 2 * rows * s.rank; }

    template <exec::cpu_executor E>
    void forward(const E& ex, matrix_view<const float> x, matrix_view<float> y) const {
        base_.forward(ex, x, y);
    }

    // Each group of rows with its adapter's state (nullptr or inactive: the base alone).
    template <exec::cpu_executor E>
    void forward(const E& ex, matrix_view<const float> x, matrix_view<float> y,
                 std::span<const nn::adapter_rows<state>> rows, std::span<float> scratch) const {
        nn::check_adapter_rows("lora", rows, x.extent(0));
        base_.forward(ex, x, y);
        for (const auto& group : rows) {
            if (!group.state || !group.state->active())
                continue;
            const state& s = *group.state;
            check_state(s);
            T2_CHECK(scratch.size() >= group.count * s.rank, "lora: scratch of ", scratch.size(),
                     " floats, forward needs ", group.count * s.rank);
            const auto down = view_of(scratch.data(), group.count, s.rank);
            const std::size_t end = group.first + group.count;
            ops::gemm(ex, x.rows(group.first, end), a_of(s), down, {.transpose_b = true});
            ops::gemm(ex, matrix_view<const float>(down), b_of(s), y.rows(group.first, end),
                      {.transpose_b = true, .alpha = s.scaling, .beta = 1.f});
        }
    }

    // dx = dL/dx (overwritten); s's gradient accumulates. With u = x·Aᵀ:
    // dB = s·dyᵀu, du = s·dy·B, dA = duᵀx, dx = dy·W + du·A.
    template <exec::cpu_executor E>
    void backward(const E& ex, matrix_view<const float> x, matrix_view<const float> dy, matrix_view<float> dx,
                  state* s, std::span<float> scratch) const {
        nn::dense<float>::gradient frozen; // the base weight is not trained
        base_.backward(ex, x, dy, dx, frozen);
        if (!s || !s->active())
            return;
        check_state(*s);
        const std::size_t T = x.extent(0), r = s->rank;
        T2_CHECK(scratch.size() >= backward_scratch_floats(T, *s), "lora: backward scratch of ", scratch.size(),
                 " floats, needs ", backward_scratch_floats(T, *s));
        const auto down = view_of(scratch.data(), T, r), ddown = view_of(scratch.data() + T * r, T, r);
        const auto grad_a = view_of(s->gradient_a.data(), r, in_features());
        const auto grad_b = view_of(s->gradient_b.data(), out_features(), r);
        ops::gemm(ex, x, a_of(*s), down, {.transpose_b = true});
        ops::gemm(ex, dy, matrix_view<const float>(down), grad_b, {.transpose_a = true, .alpha = s->scaling, .beta = 1.f});
        ops::gemm(ex, dy, b_of(*s), ddown, {.alpha = s->scaling});
        ops::gemm(ex, matrix_view<const float>(ddown), x, grad_a, {.transpose_a = true, .beta = 1.f});
        ops::gemm(ex, matrix_view<const float>(ddown), a_of(*s), dx, {.beta = 1.f});
    }

private:
    matrix_view<const float> a_of(const state& s) const noexcept {
        return view_of(static_cast<const float*>(s.a.data()), s.rank, in_features());
    }
    matrix_view<const float> b_of(const state& s) const noexcept {
        return view_of(static_cast<const float*>(s.b.data()), out_features(), s.rank);
    }

    void check_state(const state& s) const {
        T2_CHECK(s.a.size() == s.rank * in_features() && s.b.size() == out_features() * s.rank &&
                     s.gradient_a.size() == s.a.size() && s.gradient_b.size() == s.b.size(),
                 "lora: an adapter state of rank ", s.rank, " with ", s.a.size(), " + ", s.b.size(),
                 " parameters for a ", out_features(), "x", in_features(),
                 " matrix: the adapter was made for another model");
    }

    nn::dense<float> base_;
};

} // namespace adapt
T2_NAMESPACE_END
