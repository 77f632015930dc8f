#pragma once
// A linear layer y = x·Wᵀ whose weight representation is a policy.
//
//   x[T × in] → y[T × out], W stored [out × in] as checkpoints store it.
//
// A weight policy provides in_features(), out_features() and forward(ex, x, y). dense<T> is a
// plain matrix with a `gradient` type, make_gradient() and backward(ex, x, dy, dx, gradient&).
// An adaptable policy (adapt/: SVF W' = U(σ⊙z)Vᵀ with its mixtures, LoRA) holds only the
// frozen part of its matrix and names a per-matrix adapter state type, `state`, that an
// adapter holds (nn/adapter_state.hpp); it runs with groups of rows, each with its state:
//   forward(ex, x, y, span<const adapter_rows<state>>, scratch)
//   backward(ex, x, dy, dx, state*, scratch)   (the state's gradient accumulates)
//   scratch_floats(rows, state), backward_scratch_floats(rows, state)
// and forward(ex, x, y) alone runs the base. Layers never change when the weight
// representation does.
#include <array>
#include <cstddef>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>

#include "t2/core/tensor.hpp"
#include "t2/exec/executor.hpp"
#include "t2/ops/gemm.hpp"
#include "t2/ops/linear_backward.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

// Rows first … first + count − 1 of a matrix product run with `state` (nullptr: the base).
template <class State>
struct adapter_rows {
    std::size_t first = 0, count = 0;
    const State* state = nullptr;
};

// Groups of rows must cover rows 0 … total − 1 in order (or be none: the base for all).
template <class State>
void check_adapter_rows(const char* op, std::span<const adapter_rows<State>> rows, std::size_t total) {
    std::size_t next = 0;
    for (const auto& group : rows) {
        T2_CHECK(group.first == next && group.count > 0, op, ": adapter groups must cover the rows in order; a group "
                 "starts at row ", group.first, " with ", group.count, " rows, expected row ", next);
        next += group.count;
    }
    T2_CHECK(rows.empty() || next == total, op, ": adapter groups cover ", next, " of ", total, " rows");
}

template <class P>
concept weight_policy = requires(const P& p) {
    { p.in_features() } -> std::convertible_to<std::size_t>;
    { p.out_features() } -> std::convertible_to<std::size_t>;
};

// A dense [out × in] matrix, stored as f32 or bf16 (half the bytes to stream per token;
// widened to f32 as the kernels read it). It views memory kept alive by `owner`: a tensor
// of its own, or a memory-mapped checkpoint shared by every weight of the model.
template <class T = float>
class dense {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, bf16>, "dense<T>: f32 or bf16");

public:
    dense() = default;
    dense(matrix_view<const T> weight, std::shared_ptr<const void> owner)
        : weight_(weight), owner_(std::move(owner)) {}
    explicit dense(matrix<T> weight) {
        auto storage = std::make_shared<matrix<T>>(std::move(weight));
        weight_ = storage->view();
        owner_ = std::move(storage);
    }

    std::size_t in_features() const noexcept { return weight_.extent(1); }
    std::size_t out_features() const noexcept { return weight_.extent(0); }
    matrix_view<const T> weight() const noexcept { return weight_; }

    template <exec::cpu_executor E>
    void forward(const E& ex, matrix_view<const float> x, matrix_view<float> y) const {
        ops::gemm(ex, x, weight_, y, {.transpose_b = true});
    }

    // dL/dW [out × in], accumulated; empty (the default) when the weight is frozen and only
    // dL/dx is wanted.
    struct gradient {
        matrix<float> weight;
    };
    gradient make_gradient(bool with_weight = false) const {
        if (!with_weight)
            return {};
        T2_CHECK((std::is_same_v<T, float>), "dense: weight gradients need f32 weights");
        return {matrix<float>(out_features(), in_features())};
    }

    // dx = dy·W (overwritten); grad.weight += dyᵀ·x when it is not empty.
    template <exec::cpu_executor E>
    void backward(const E& ex, matrix_view<const float> x, matrix_view<const float> dy,
                  matrix_view<float> dx, gradient& grad) const {
        ops::linear_backward(ex, x, weight_, dy, dx, grad.weight.view());
    }

private:
    matrix_view<const T> weight_;
    std::shared_ptr<const void> owner_;
};

template <weight_policy Weight>
class linear {
public:
    linear() = default;
    explicit linear(Weight weight) : weight_(std::move(weight)) {}

    std::size_t in_features() const noexcept { return weight_.in_features(); }
    std::size_t out_features() const noexcept { return weight_.out_features(); }
    const Weight& weight() const noexcept { return weight_; }
    Weight& weight() noexcept { return weight_; }

    template <exec::cpu_executor E>
    void operator()(const E& ex, matrix_view<const float> x, matrix_view<float> y) const {
        check(x, y);
        weight_.forward(ex, x, y);
    }

    // With an adapter: each group of rows with its state (see the top of this file).
    template <exec::cpu_executor E, class State>
    void operator()(const E& ex, matrix_view<const float> x, matrix_view<float> y,
                    std::span<const adapter_rows<State>> rows, std::span<float> scratch) const {
        check(x, y);
        weight_.forward(ex, x, y, rows, scratch);
    }

    // Given the forward's x and dL/dy: dx = dL/dx (overwritten) and the gradient (accumulated):
    // dL/dW for dense into `grad`; for an adaptable policy, `grad` is the matrix's adapter
    // state (a pointer; nullptr: the base, dx only) followed by scratch.
    template <exec::cpu_executor E, class... Gradient>
    void backward(const E& ex, matrix_view<const float> x, matrix_view<const float> dy, matrix_view<float> dx,
                  Gradient&&... grad) const {
        T2_CHECK(x.extent(1) == in_features() && dy.extent(1) == out_features() && dx.extent(1) == in_features() &&
                     x.extent(0) == dy.extent(0) && dx.extent(0) == x.extent(0),
                 "linear backward: weight is ", out_features(), "x", in_features(), ", x is ", x.shape(),
                 ", dy is ", dy.shape(), ", dx is ", dx.shape());
        weight_.backward(ex, x, dy, dx, std::forward<Gradient>(grad)...);
    }

    void check(matrix_view<const float> x, matrix_view<float> y) const {
        T2_CHECK(x.extent(1) == in_features() && y.extent(1) == out_features() && x.extent(0) == y.extent(0),
                 "linear: weight is ", out_features(), "x", in_features(), ", x is ", x.shape(), ", y is ",
                 y.shape());
    }

private:
    Weight weight_;
};

template <class P>
inline constexpr bool is_dense_v = false;
template <class T>
inline constexpr bool is_dense_v<dense<T>> = true;

// y_i = x·W_iᵀ for layers that read the same x (q, k and v; gate and up), bit for bit what
// calling each gives. Dense weights run as one ops::gemm_same_a, which on a thread pool
// makes decoding's few-row products one job rather than one each.
template <exec::cpu_executor E, weight_policy Weight, std::size_t N>
void apply_same_input(const E& ex, const std::array<const linear<Weight>*, N>& layers, matrix_view<const float> x,
                      const std::array<matrix_view<float>, N>& ys) {
    if constexpr (is_dense_v<Weight>) {
        using T = typename decltype(layers[0]->weight().weight())::value_type;
        std::array<ops::gemm_product<T>, N> products;
        for (std::size_t i = 0; i < N; ++i) {
            layers[i]->check(x, ys[i]);
            products[i] = {layers[i]->weight().weight(), ys[i]};
        }
        ops::gemm_same_a(ex, x, std::span<const ops::gemm_product<T>>(products), {.transpose_b = true});
    } else {
        for (std::size_t i = 0; i < N; ++i)
            (*layers[i])(ex, x, ys[i]);
    }
}

} // namespace nn
T2_NAMESPACE_END
