#pragma once
// Dispatchers that ask the model which task a prompt is (Transformer²'s prompt-based and
// classification-expert adaptation): pass 1 wraps each prompt in a classification prompt
// listing the library's expert names, generates a short greedy answer, and reads the expert
// it names (adapt::parse_task_label: the first \boxed{…}, else the first word). An answer
// naming no expert ("other", anything unparseable) runs the base model; the reference
// keeps whichever expert was loaded before, which makes an answer depend on the previous
// prompt.
//
//   prompt_based          the base model classifies;
//   classification_expert a z trained to emit the task label (step 5's tools) is applied
//                         during pass 1 only.
//
//   t2::adapt::prompt_based dispatch(tokenizer);
//   t2::adapt::classification_expert dispatch(tokenizer, cls_expert);
//
// The tokenizer is borrowed: anything with encode(text, bos) → tokens and decode(previous,
// token) → text, as io::tokenizer.
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "t2/adapt/dispatch.hpp"
#include "t2/adapt/model.hpp"
#include "t2/adapt/self_adaptive.hpp"
#include "t2/nn/generate.hpp"
#include "t2/ops/sampling.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

template <class T>
concept text_tokenizer = requires(const T& t, std::string_view text, std::int32_t token) {
    { t.encode(text, true) } -> std::convertible_to<std::vector<std::int32_t>>;
    { t.decode(token, token) } -> std::convertible_to<std::string>;
};

// The reference's classification prompt, with {experts} (the names, quoted, comma-separated)
// and {prompt} (the prompt's text) filled in.
inline constexpr std::string_view default_classification_template =
    "Analyze the given question and classify it into one of these categories: {experts} or 'other'. "
    "Put your final answer in \\boxed{}.\n\nQuestion: {prompt}\nAnswer: ";

struct classify_options {
    std::string prompt_template{default_classification_template};
    std::size_t max_new_tokens = 24;        // of the classification answer
    std::int32_t end_token = nn::bos_token; // ends it
};

namespace detail {

inline std::string fill_template(std::string_view pattern, std::string_view key, std::string_view value) {
    std::string out;
    for (std::size_t at = 0;;) {
        const std::size_t hit = pattern.find(key, at);
        out.append(pattern.substr(at, hit == std::string_view::npos ? std::string_view::npos : hit - at));
        if (hit == std::string_view::npos)
            return out;
        out.append(value);
        at = hit + key.size();
    }
}

template <text_tokenizer Tokenizer>
std::string decode_tokens(const Tokenizer& tok, std::span<const std::int32_t> tokens, std::int32_t previous) {
    std::string text;
    for (const std::int32_t t : tokens) {
        text += tok.decode(previous, t);
        previous = t;
    }
    return text;
}

// Greedy classification answers of every prompt, with `adapter` (nullptr: the base).
template <exec::cpu_executor E, nn::model_config C, text_tokenizer Tokenizer>
std::vector<dispatch_decision> classify(const E& ex, const self_adaptive<C>& sa,
                                        std::span<const std::span<const std::int32_t>> prompts, const Tokenizer& tok,
                                        const classify_options& options, const svf_adapter* adapter) {
    T2_CHECK(options.max_new_tokens > 0, "classify: max_new_tokens is 0");
    const std::size_t context = sa.model().config().seq_len;
    T2_CHECK(options.max_new_tokens < context, "classify: an answer of ", options.max_new_tokens,
             " tokens leaves no room for the prompt in a context of ", context);
    std::string names;
    for (const std::string& name : sa.expert_names())
        names += (names.empty() ? "'" : ", '") + name + "'";
    const std::string with_names = fill_template(options.prompt_template, "{experts}", names);

    std::vector<std::vector<std::int32_t>> wrapped;
    for (const auto& prompt : prompts) {
        T2_CHECK(!prompt.empty(), "classify: an empty prompt (it needs at least BOS)");
        const std::string text = decode_tokens(tok, prompt.subspan(1), prompt[0]);
        std::vector<std::int32_t> tokens = tok.encode(fill_template(with_names, "{prompt}", text), true);
        // A classification prompt longer than the context keeps BOS and its end, where the
        // question and the answer cue are.
        const std::size_t room = context - options.max_new_tokens;
        if (tokens.size() > room)
            tokens.erase(tokens.begin() + 1, tokens.end() - std::ptrdiff_t(room - 1));
        wrapped.push_back(std::move(tokens));
    }
    const std::vector<std::span<const std::int32_t>> views(wrapped.begin(), wrapped.end());
    ops::sampler greedy({.temperature = 0.f});
    const std::span<const svf_adapter* const> adapters(&adapter, adapter ? 1 : 0);
    const auto answers = nn::generate(ex, sa.model(), std::span(views), greedy,
                                      {.max_new_tokens = options.max_new_tokens, .end_token = options.end_token},
                                      nn::no_stop_condition{}, adapters);

    std::vector<dispatch_decision> out;
    for (std::size_t b = 0; b < prompts.size(); ++b) {
        std::span<const std::int32_t> answer = answers[b].tokens;
        if (answers[b].reason == nn::stop_reason::end_token)
            answer = answer.first(answer.size() - 1);
        const std::string text = decode_tokens(tok, answer, views[b].back());
        if (const std::optional<std::size_t> k = parse_task_label(text, sa.expert_names()))
            out.push_back(expert_decision(*k, sa.experts().size(), sa.expert_names()[*k]));
        else
            out.push_back(base_decision());
    }
    return out;
}

} // namespace detail

template <text_tokenizer Tokenizer>
class prompt_based {
public:
    explicit prompt_based(const Tokenizer& tok, classify_options options = {})
        : tok_(&tok), options_(std::move(options)) {}

    template <exec::cpu_executor E, nn::model_config C>
    std::vector<dispatch_decision> decide(const E& ex, const self_adaptive<C>& sa,
                                          std::span<const std::span<const std::int32_t>> prompts) const {
        return detail::classify(ex, sa, prompts, *tok_, options_, nullptr);
    }

private:
    const Tokenizer* tok_;
    classify_options options_;
};

template <text_tokenizer Tokenizer>
class classification_expert {
public:
    classification_expert(const Tokenizer& tok, expert classifier, classify_options options = {})
        : tok_(&tok), classifier_(std::move(classifier)), options_(std::move(options)) {}

    template <exec::cpu_executor E, nn::model_config C>
    std::vector<dispatch_decision> decide(const E& ex, const self_adaptive<C>& sa,
                                          std::span<const std::span<const std::int32_t>> prompts) {
        // The classifier's adapter is made for the model it first meets, and again for another.
        if (!adapter_ || adapter_->base() != sa.model().weights().owner.get()) {
            adapter_ = make_svf_adapter(sa.model(), {.rescale = classifier_.rescale});
            apply_expert(*adapter_, sa.decomposed(), classifier_);
        }
        return detail::classify(ex, sa, prompts, *tok_, options_, &*adapter_);
    }

private:
    const Tokenizer* tok_;
    expert classifier_;
    classify_options options_;
    std::optional<svf_adapter> adapter_;
};

} // namespace adapt
T2_NAMESPACE_END
