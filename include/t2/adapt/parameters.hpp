#pragma once
// Trainable parameters of an adapter, from a configuration alone (no weights needed):
//
//   svf        Σ over the selected matrices of rank r = min(out, in)   (one z per matrix)
//   lora:R     Σ R·(out + in)                                         (A and B)
//   mixture:K  K mixing weights, or K per layer with per_layer_alpha   (experts frozen)
//
// For Llama-3-8B's shapes: SVF on the MLP 393,216, SVF on q and v 163,840, LoRA rank 16 on
// q and v 6,815,744 — the paper's 0.39M, 0.16M and 6.82M.
#include <charconv>
#include <cstddef>
#include <set>
#include <string>
#include <string_view>

#include "t2/adapt/selection.hpp"
#include "t2/core/error.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

enum class adapter_kind { svf, mixture, lora };

struct adapter_spec {
    adapter_kind kind = adapter_kind::svf;
    std::size_t lora_rank = 16;
    std::size_t experts = 0;      // mixture: K
    bool per_layer_alpha = false; // mixture: one α per layer instead of one for the model

    // "svf", "lora" (rank 16), "lora:R", "mixture:K", "mixture:K:layer".
    static adapter_spec parse(std::string_view text) {
        const auto number = [&](std::string_view digits) {
            std::size_t value = 0;
            const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
            T2_CHECK(ec == std::errc{} && end == digits.data() + digits.size() && value > 0,
                     "adapter \"", text, "\": \"", digits, "\" is not a positive integer");
            return value;
        };
        if (text == "svf")
            return {};
        if (text == "lora")
            return {.kind = adapter_kind::lora};
        if (text.starts_with("lora:"))
            return {.kind = adapter_kind::lora, .lora_rank = number(text.substr(5))};
        if (text.starts_with("mixture:")) {
            std::string_view rest = text.substr(8);
            const bool per_layer = rest.ends_with(":layer");
            if (per_layer)
                rest.remove_suffix(6);
            return {.kind = adapter_kind::mixture, .experts = number(rest), .per_layer_alpha = per_layer};
        }
        t2::detail::throw_error("unknown adapter \"", text, "\"; use svf, lora, lora:R, mixture:K or mixture:K:layer");
    }

    std::string text() const {
        switch (kind) {
        case adapter_kind::svf: return "svf";
        case adapter_kind::lora: return "lora:" + std::to_string(lora_rank);
        case adapter_kind::mixture: break;
        }
        return "mixture:" + std::to_string(experts) + (per_layer_alpha ? ":layer" : "");
    }
};

template <nn::model_config C>
std::size_t trainable_parameters(const C& config, const selection& chosen, const adapter_spec& adapter) {
    std::size_t total = 0;
    std::set<std::size_t> layers;
    for (const nn::matrix_slot& m : chosen.of(config)) {
        layers.insert(m.layer);
        switch (adapter.kind) {
        case adapter_kind::svf: total += std::min(m.out, m.in); break;
        case adapter_kind::lora: total += adapter.lora_rank * (m.out + m.in); break;
        case adapter_kind::mixture: break;
        }
    }
    if (adapter.kind == adapter_kind::mixture)
        total = layers.empty() ? 0 : adapter.experts * (adapter.per_layer_alpha ? layers.size() : 1);
    return total;
}

} // namespace adapt
T2_NAMESPACE_END
