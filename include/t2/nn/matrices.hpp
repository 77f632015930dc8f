#pragma once
// The projection matrices of a Llama decoder's blocks, by name: what an adapter can adapt.
//
//   layers.{l}.attention.{wq,wk,wv,wo}      [dim × dim], [kv_dim × dim] ×2, [dim × dim]
//   layers.{l}.feed_forward.{w1,w2,w3}      [hidden × dim], [dim × hidden], [hidden × dim]
//
// Names follow Meta's Llama checkpoints (and llama2.c's export), so decomposition and
// expert files are readable by anyone who knows those. Shapes are [out × in], as stored.
#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "t2/nn/config.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

enum class projection { wq, wk, wv, wo, w1, w2, w3 };

inline constexpr std::array<projection, 7> all_projections{projection::wq, projection::wk, projection::wv,
                                                           projection::wo, projection::w1, projection::w2,
                                                           projection::w3};

constexpr bool is_mlp(projection p) noexcept {
    return p == projection::w1 || p == projection::w2 || p == projection::w3;
}

constexpr std::string_view short_name(projection p) noexcept {
    constexpr std::array<std::string_view, 7> names{"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
    return names[static_cast<std::size_t>(p)];
}

inline std::string matrix_name(std::size_t layer, projection p) {
    return "layers." + std::to_string(layer) + (is_mlp(p) ? ".feed_forward." : ".attention.") +
           std::string(short_name(p));
}

// The inverse of matrix_name: false for anything else (the layer is not range-checked).
inline bool parse_matrix_name(std::string_view name, std::size_t& layer, projection& which) {
    constexpr std::string_view prefix = "layers.";
    if (!name.starts_with(prefix))
        return false;
    name.remove_prefix(prefix.size());
    std::size_t digits = 0, value = 0;
    while (digits < name.size() && digits < 7 && name[digits] >= '0' && name[digits] <= '9')
        value = value * 10 + static_cast<std::size_t>(name[digits++] - '0');
    if (digits == 0 || (digits > 1 && name[0] == '0'))
        return false;
    name.remove_prefix(digits);
    for (const projection p : all_projections)
        if (name == (is_mlp(p) ? ".feed_forward." : ".attention.") + std::string(short_name(p))) {
            layer = value;
            which = p;
            return true;
        }
    return false;
}

struct matrix_slot {
    std::size_t layer = 0;
    projection which = projection::wq;
    std::size_t out = 0, in = 0;

    std::string name() const { return matrix_name(layer, which); }
};

template <model_config C>
constexpr matrix_slot slot_of(const C& c, std::size_t layer, projection p) noexcept {
    switch (p) {
    case projection::wq:
    case projection::wo: return {layer, p, c.dim, c.dim};
    case projection::wk:
    case projection::wv: return {layer, p, kv_dim(c), c.dim};
    case projection::w1:
    case projection::w3: return {layer, p, c.hidden_dim, c.dim};
    case projection::w2: return {layer, p, c.dim, c.hidden_dim};
    }
    return {};
}

// Every block projection, layer by layer in the order above.
template <model_config C>
std::vector<matrix_slot> block_matrices(const C& c) {
    std::vector<matrix_slot> slots;
    slots.reserve(c.n_layers * all_projections.size());
    for (std::size_t l = 0; l < c.n_layers; ++l)
        for (const projection p : all_projections)
            slots.push_back(slot_of(c, l, p));
    return slots;
}

template <class Block>
auto& projection_of(Block& b, projection p) noexcept {
    switch (p) {
    case projection::wq: return b.wq;
    case projection::wk: return b.wk;
    case projection::wv: return b.wv;
    case projection::wo: return b.wo;
    case projection::w1: return b.w1;
    case projection::w2: return b.w2;
    case projection::w3: break;
    }
    return b.w3;
}

} // namespace nn
T2_NAMESPACE_END
