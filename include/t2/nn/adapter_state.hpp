#pragma once
// Adapter state: everything an adapter changes, kept apart from the frozen base it runs on.
//
//   base model   llama<C, Weight>: dense weights, and for adapted matrices their frozen parts
//                (SVD factors); immutable, shared by any number of contexts and threads.
//   adapter      adapter_state<Weight>: the trainable parameters of every adapted matrix as
//                one flat span of floats, their gradient in the same layout, a name → range
//                map, and per matrix a Weight::state (views into the span, caches).
//
// A weight policy that can be adapted names its per-matrix state type (Weight::state) and
// runs with one: forward(ex, x, y, rows, scratch), where `rows` says which adapter state each
// group of rows uses (sequences of one batch may differ; nullptr is the base), and
// backward(ex, x, dy, dx, state, scratch), which accumulates into the state's gradient view.
// The adapt/ factories build adapter states (make_svf_adapter, make_lora_adapter, …); this
// header only holds them, so that nn/ runs any adapter without knowing its kind.
//
// An adapter state is movable, not copyable: its matrix states view its own buffers (a move
// keeps them where they are). Optimizers and forward-only estimators read and write
// parameters() and gradient() and never see a type.
#include <algorithm>
#include <array>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/nn/linear.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

template <class Weight>
concept adaptable_weight = weight_policy<Weight> && requires { typename Weight::state; };

// A named part of an adapter's flat parameters: [offset, offset + size).
struct parameter_range {
    std::string name;
    std::size_t offset = 0, size = 0;
};

// For weights that cannot be adapted (dense): an adapter type that is never made.
struct no_adapter {};

inline constexpr std::size_t projections_per_block = 7; // wq, wk, wv, wo, w1, w2, w3

template <adaptable_weight Weight>
class adapter_state {
public:
    using matrix_state = typename Weight::state;

    // For the model whose weights `base` keeps alive (llama_weights::owner, which identifies
    // the loaded model: forward refuses an adapter made for another). `parameters` are the
    // initial values (their gradient starts at 0), `layout` names their parts;
    // make(layer, projection index, parameters, gradient) builds each block matrix's state
    // from the flat spans (an inactive state for a matrix the adapter leaves alone).
    template <class Make>
    adapter_state(const void* base, std::size_t layers, std::vector<float> parameters,
                  std::vector<parameter_range> layout, Make&& make)
        : base_(base), parameters_(std::move(parameters)), gradient_(parameters_.size(), 0.f),
          layout_(std::move(layout)) {
        for (const parameter_range& r : layout_)
            T2_CHECK(r.offset <= parameters_.size() && r.size <= parameters_.size() - r.offset, "adapter_state: \"",
                     r.name, "\" [", r.offset, ", +", r.size, ") is outside the ", parameters_.size(), " parameters");
        matrices_.reserve(layers * projections_per_block);
        for (std::size_t l = 0; l < layers; ++l)
            for (std::size_t p = 0; p < projections_per_block; ++p)
                matrices_.push_back(make(l, p, std::span<float>(parameters_), std::span<float>(gradient_)));
    }

    adapter_state(adapter_state&&) noexcept = default;
    adapter_state& operator=(adapter_state&&) noexcept = default;
    adapter_state(const adapter_state&) = delete;
    adapter_state& operator=(const adapter_state&) = delete;

    std::span<float> parameters() noexcept { return parameters_; }
    std::span<const float> parameters() const noexcept { return parameters_; }
    std::span<float> gradient() noexcept { return gradient_; }
    std::span<const float> gradient() const noexcept { return gradient_; }
    void zero_gradient() noexcept { std::fill(gradient_.begin(), gradient_.end(), 0.f); }

    std::span<const parameter_range> layout() const noexcept { return layout_; }
    const parameter_range* find(std::string_view name) const noexcept {
        for (const parameter_range& r : layout_)
            if (r.name == name)
                return &r;
        return nullptr;
    }
    // The parameters (or gradient) named `name`; an error names it if there are none.
    std::span<float> parameters(std::string_view name) { return part(parameters_, name); }
    std::span<const float> parameters(std::string_view name) const { return part(parameters_, name); }
    std::span<float> gradient(std::string_view name) { return part(gradient_, name); }

    const void* base() const noexcept { return base_; }
    std::size_t layers() const noexcept { return matrices_.size() / projections_per_block; }
    const matrix_state& matrix(std::size_t layer, std::size_t projection) const noexcept {
        return matrices_[layer * projections_per_block + projection];
    }
    matrix_state& matrix(std::size_t layer, std::size_t projection) noexcept {
        return matrices_[layer * projections_per_block + projection];
    }

private:
    template <class Values>
    auto part(Values& values, std::string_view name) const {
        const parameter_range* r = find(name);
        T2_CHECK(r, "adapter_state: no parameters named \"", name, "\"");
        return std::span(values).subspan(r->offset, r->size);
    }

    const void* base_;
    std::vector<float> parameters_, gradient_;
    std::vector<parameter_range> layout_;
    std::vector<matrix_state> matrices_;
};

// The adapter type of a weight policy: adapter_state<Weight>, or no_adapter for weights that
// cannot be adapted.
template <class Weight>
struct adapter_of {
    using type = no_adapter;
};
template <adaptable_weight Weight>
struct adapter_of<Weight> {
    using type = adapter_state<Weight>;
};
template <class Weight>
using adapter_of_t = typename adapter_of<Weight>::type;

// The per-matrix state type of a weight policy (no_adapter for dense weights).
template <class Weight>
struct matrix_state_of {
    using type = no_adapter;
};
template <adaptable_weight Weight>
struct matrix_state_of<Weight> {
    using type = typename Weight::state;
};
template <class Weight>
using matrix_state_of_t = typename matrix_state_of<Weight>::type;

} // namespace nn
T2_NAMESPACE_END
