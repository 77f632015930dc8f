#pragma once
// Autoregressive generation with llama2.c run.c's semantics: the prompt (BOS first) is
// prefilled in one forward pass, then each forward pass yields one sampled token that is
// fed back; at most `steps` forward positions are run, so the sequence holds at most
// steps + 1 tokens; sampling BOS ends the sequence.
#include <chrono>
#include <cstdint>
#include <span>
#include <vector>

#include "t2/nn/llama.hpp"
#include "t2/ops/sampling.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

inline constexpr std::int32_t bos_token = 1;

struct generation_timing {
    double prefill_seconds = 0, decode_seconds = 0;
    std::size_t prompt_tokens = 0, generated_tokens = 0;
};

// Returns the whole sequence (prompt included). on_token(previous, token) is called for
// every generated token as soon as it is chosen, e.g. to print it.
template <exec::cpu_executor E, class Model, class OnToken>
std::vector<std::int32_t> generate(const E& ex, const Model& model, llama_state& state,
                                   std::span<const std::int32_t> prompt, std::size_t steps,
                                   ops::sampler& sample, OnToken&& on_token,
                                   generation_timing* timing = nullptr) {
    T2_CHECK(!prompt.empty(), "generate: the prompt needs at least one token (BOS)");
    T2_CHECK(prompt.size() <= steps, "generate: the prompt is ", prompt.size(),
             " tokens, more than the ", steps, " steps allowed");
    T2_CHECK(state.position + steps <= state.cache.capacity(), "generate: ", steps,
             " steps from position ", state.position, " exceed the state's context of ",
             state.cache.capacity());
    using clock = std::chrono::steady_clock;
    std::vector<std::int32_t> sequence(prompt.begin(), prompt.end());
    const std::size_t end = state.position + steps;
    const auto t0 = clock::now();
    auto logits = model.forward(ex, state, prompt);
    const auto t1 = clock::now();
    for (;;) {
        const std::int32_t next = sample(logits.span());
        if (next == bos_token)
            break;
        on_token(sequence.back(), next);
        sequence.push_back(next);
        if (state.position >= end)
            break;
        logits = model.forward(ex, state, std::span<const std::int32_t>(&next, 1));
    }
    if (timing) {
        timing->prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
        timing->decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
        timing->prompt_tokens = prompt.size();
        timing->generated_tokens = sequence.size() - prompt.size();
    }
    return sequence;
}

} // namespace nn
T2_NAMESPACE_END
