#pragma once
// Adapter states for a population: slot i holds candidate i's parameters in an adapter made
// by the caller's factory (the same layout as a reference adapter, which is checked), so that
// one batched forward can run every candidate on the shared base.
#include <algorithm>
#include <cstddef>
#include <functional>
#include <span>
#include <type_traits>
#include <vector>

#include "t2/adapt/model.hpp"
#include "t2/core/error.hpp"

T2_NAMESPACE_BEGIN
namespace train::detail {

template <class Adapter>
class adapter_pool {
public:
    adapter_pool(const char* owner, const Adapter& reference, std::function<Adapter()> make)
        : owner_(owner), reference_(&reference), make_(std::move(make)) {}

    // Slot `slot` holding `parameters`.
    Adapter& load(std::size_t slot, std::span<const float> parameters) {
        while (slots_.size() <= slot) {
            slots_.push_back(make_());
            const Adapter& made = slots_.back();
            T2_CHECK(made.base() == reference_->base() && made.parameters().size() == reference_->parameters().size(),
                     owner_, ": make_adapter built an adapter of ", made.parameters().size(), " parameters",
                     made.base() == reference_->base() ? "" : " for another model", "; the trained one has ",
                     reference_->parameters().size());
        }
        Adapter& a = slots_[slot];
        std::copy(parameters.begin(), parameters.end(), a.parameters().begin());
        return a;
    }

    Adapter& operator[](std::size_t slot) { return slots_[slot]; }

private:
    const char* owner_;
    const Adapter* reference_;
    std::function<Adapter()> make_;
    std::vector<Adapter> slots_;
};

// Whether a forward can run with the adapter: an SVF adapter whose rescaling is undefined
// (Σ(σ⊙z) = 0 for a matrix) cannot.
template <class Model, class Adapter>
bool runnable(const Model& model, const Adapter& adapter) {
    if constexpr (std::is_same_v<Adapter, adapt::svf_adapter>)
        return adapt::rescaling_defined(model, adapter);
    else
        return true;
}

} // namespace train::detail
T2_NAMESPACE_END
