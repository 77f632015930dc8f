#pragma once
// Which matrices of a model an adapter adapts.
//
//   selection::mlp()          w1, w2, w3 of every block (the Transformer² reference default)
//   selection::attention()    wq, wk, wv, wo
//   selection::all()          all seven
//   selection::pattern(re)    the matrices whose full name (nn/matrices.hpp, e.g.
//                             "layers.3.attention.wq") matches the ECMAScript regex re
//   selection::parse(text)    "mlp" | "attn" | "attention" | "all" | a regex
//
// The classifier and the embedding are never adapted: the reference adapts only the blocks.
#include <memory>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/nn/matrices.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

class selection {
public:
    static selection mlp() { return selection(kind::mlp, "mlp"); }
    static selection attention() { return selection(kind::attention, "attn"); }
    static selection all() { return selection(kind::all, "all"); }
    static selection pattern(std::string regex) {
        selection s(kind::pattern, regex);
        try {
            s.regex_ = std::make_shared<const std::regex>(regex, std::regex::ECMAScript);
        } catch (const std::regex_error& e) {
            t2::detail::throw_error("matrix selection \"", regex, "\" is not a valid regex: ", e.what());
        }
        return s;
    }
    static selection parse(std::string_view text) {
        if (text == "mlp")
            return mlp();
        if (text == "attn" || text == "attention")
            return attention();
        if (text == "all")
            return all();
        T2_CHECK(!text.empty(), "matrix selection is empty; use mlp, attn, all or a regex");
        return pattern(std::string(text));
    }

    bool contains(const nn::matrix_slot& m) const {
        switch (kind_) {
        case kind::mlp: return nn::is_mlp(m.which);
        case kind::attention: return !nn::is_mlp(m.which);
        case kind::all: return true;
        case kind::pattern: break;
        }
        return std::regex_match(m.name(), *regex_);
    }

    // The selected matrices of a configuration, in nn::block_matrices order.
    template <nn::model_config C>
    std::vector<nn::matrix_slot> of(const C& c) const {
        std::vector<nn::matrix_slot> chosen;
        for (const auto& m : nn::block_matrices(c))
            if (contains(m))
                chosen.push_back(m);
        return chosen;
    }

    // What parse() reads back.
    const std::string& text() const noexcept { return text_; }

private:
    enum class kind { mlp, attention, all, pattern };
    selection(kind k, std::string text) : kind_(k), text_(std::move(text)) {}

    kind kind_;
    std::string text_;
    std::shared_ptr<const std::regex> regex_;
};

} // namespace adapt
T2_NAMESPACE_END
