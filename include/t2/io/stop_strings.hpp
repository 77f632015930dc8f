#pragma once
// Stop strings for batched generation: a stop condition for nn::generate that ends a
// sequence as soon as its generated text contains any of the given strings.
//
//   t2::io::stop_strings stop(tok, {"\n\n", "The end"}, prompts);
//   auto out = t2::nn::generate(ex, model, prompts, sample, options, stop);
//
// Strings are matched in the decoded text (a stop string may span several tokens), from
// the first generated token on; the prompt's text is not searched. Each sequence keeps the
// text it generated; only the part that can hold a new match is searched after each token.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/io/tokenizer.hpp"

T2_NAMESPACE_BEGIN
namespace io {

class stop_strings {
public:
    // prompts: the batch's prompts, to decode each sequence's first token after its last
    // prompt token.
    stop_strings(const tokenizer& tok, std::vector<std::string> strings,
                 std::span<const std::span<const std::int32_t>> prompts)
        : tok_(&tok), strings_(std::move(strings)), text_(prompts.size()), last_prompt_token_(prompts.size()) {
        for (const std::string& s : strings_)
            T2_CHECK(!s.empty(), "stop_strings: an empty stop string would stop every sequence at once");
        for (const std::string& s : strings_)
            longest_ = std::max(longest_, s.size());
        for (std::size_t b = 0; b < prompts.size(); ++b) {
            T2_CHECK(!prompts[b].empty(), "stop_strings: prompt ", b, " is empty");
            last_prompt_token_[b] = prompts[b].back();
        }
    }

    bool operator()(std::size_t b, std::span<const std::int32_t> generated) {
        T2_CHECK(b < text_.size() && !generated.empty(), "stop_strings: sequence ", b, " of a batch of ",
                 text_.size());
        const std::int32_t previous = generated.size() > 1 ? generated[generated.size() - 2] : last_prompt_token_[b];
        std::string& text = text_[b];
        const std::size_t before = text.size();
        text += tok_->decode(previous, generated.back());
        // A new match ends in the new piece: it starts at most longest − 1 bytes before it.
        const std::size_t from = before >= longest_ ? before - longest_ + 1 : 0;
        for (const std::string& s : strings_)
            if (text.find(s, from) != std::string::npos)
                return true;
        return false;
    }

    // What sequence b generated, as text (stop string included).
    const std::string& text(std::size_t b) const { return text_.at(b); }

private:
    const tokenizer* tok_;
    std::vector<std::string> strings_;
    std::size_t longest_ = 0;
    std::vector<std::string> text_;
    std::vector<std::int32_t> last_prompt_token_;
};

} // namespace io
T2_NAMESPACE_END
