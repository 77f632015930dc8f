#pragma once
// What pass 1 of two-pass inference decides for a prompt (adapt/self_adaptive.hpp), and the
// dispatchers that decide it by asking the model (adapt/classify_dispatch.hpp), searching
// few-shot mixtures (train/few_shot_dispatch.hpp) or whatever a user writes.
//
// A dispatcher is any type with
//
//   std::vector<dispatch_decision> decide(const E& ex, const self_adaptive<C>& model,
//                                         std::span<const std::span<const std::int32_t>> prompts);
//
// returning one decision per prompt: mixing weights α over the model's expert library
// (z' = Σ_k α_k z_k per adapted matrix; K weights, or K per layer, layer-major), or none at
// all for the base model. One expert is the one-hot α, which gives its z exactly.
#include <algorithm>
#include <cctype>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "t2/core/error.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

struct dispatch_decision {
    std::vector<float> alpha; // K (or n_layers·K) mixing weights; empty: the base model
    std::string label;        // what was decided, for people: an expert's task, "base", …

    bool is_base() const noexcept { return alpha.empty(); }
    bool operator==(const dispatch_decision&) const = default;
};

inline dispatch_decision base_decision(std::string label = "base") { return {{}, std::move(label)}; }

inline dispatch_decision expert_decision(std::size_t k, std::size_t experts, std::string label) {
    T2_CHECK(k < experts, "expert_decision: expert ", k, " of ", experts);
    std::vector<float> alpha(experts, 0.f);
    alpha[k] = 1.f;
    return {std::move(alpha), std::move(label)};
}

namespace detail {

inline std::string_view trim(std::string_view s) {
    const auto space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
    while (!s.empty() && space(s.front()))
        s.remove_prefix(1);
    while (!s.empty() && space(s.back()))
        s.remove_suffix(1);
    return s;
}

inline bool same_ignoring_case(std::string_view a, std::string_view b) {
    return std::ranges::equal(a, b, [](char x, char y) {
        return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
    });
}

} // namespace detail

// Which of `names` a classification answer names: the contents of its first \boxed{…} (the
// reference's convention), else its first word (punctuation around it dropped), compared
// without case or surrounding space. Anything else ("other", an unknown name, nothing)
// is nullopt: the base model.
inline std::optional<std::size_t> parse_task_label(std::string_view answer, std::span<const std::string> names) {
    std::string_view label;
    if (const auto open = answer.find("\\boxed{"); open != std::string_view::npos) {
        const auto from = open + 7, close = answer.find('}', from);
        if (close == std::string_view::npos)
            return std::nullopt;
        label = answer.substr(from, close - from);
    } else {
        const std::string_view rest = detail::trim(answer);
        const auto word_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; };
        const auto begin = std::ranges::find_if(rest, word_char);
        const auto end = std::find_if_not(begin, rest.end(), word_char);
        label = rest.substr(std::size_t(begin - rest.begin()), std::size_t(end - begin));
    }
    label = detail::trim(label);
    for (std::size_t k = 0; k < names.size(); ++k)
        if (!label.empty() && detail::same_ignoring_case(label, detail::trim(names[k])))
            return k;
    return std::nullopt;
}

} // namespace adapt
T2_NAMESPACE_END
