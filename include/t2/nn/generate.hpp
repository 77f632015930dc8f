#pragma once
// Autoregressive generation.
//
// One sequence, with llama2.c run.c's semantics: the prompt (BOS first) is prefilled in one
// forward pass, then each forward pass yields one sampled token that is fed back; at most
// `steps` forward positions are run, so the sequence holds at most steps + 1 tokens;
// sampling BOS ends the sequence.
//
// A batch of prompts: all prompts are prefilled in one packed forward pass, then the
// sequences still running decode in lockstep, one B-row forward pass per token. Each stops on
// its end token, on the caller's stop condition (e.g. a stop string), at its token budget or
// when its context is full, and returns its tokens with the log-probability of each under
// the model (the softmax of the raw logits, whatever the sampler's temperature: the policy's
// log π(y) that REINFORCE weighs) and, on request, the logits it was sampled from.
#include <algorithm>
#include <chrono>
#include <cmath>
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
    sequence.reserve(steps + 1);
    const std::size_t end = state.position + steps;
    const auto step = [&](std::span<const std::int32_t> tokens) {
        const sequence_step one{&state, tokens};
        return model.forward(ex, std::span(&one, 1), state.scratch).row(0);
    };
    const auto t0 = clock::now();
    auto logits = step(prompt);
    const auto t1 = clock::now();
    for (;;) {
        const std::int32_t next = sample(std::span<const float>(logits.data(), logits.size()));
        if (next == bos_token)
            break;
        on_token(sequence.back(), next);
        sequence.push_back(next);
        if (state.position >= end)
            break;
        logits = step(std::span<const std::int32_t>(&sequence.back(), 1));
    }
    if (timing) {
        timing->prefill_seconds = std::chrono::duration<double>(t1 - t0).count();
        timing->decode_seconds = std::chrono::duration<double>(clock::now() - t1).count();
        timing->prompt_tokens = prompt.size();
        timing->generated_tokens = sequence.size() - prompt.size();
    }
    return sequence;
}

struct generation_options {
    std::size_t max_new_tokens = 256;    // the token budget of each sequence
    std::int32_t end_token = bos_token;  // ends a sequence (llama2.c's models end a story with BOS); -1: none
    bool keep_logits = false;            // return the logits every token was sampled from
};

enum class stop_reason { end_token, stop_condition, budget, context };

// One sequence of a batch: what it generated (its end token last, if it met one).
struct generation {
    std::vector<std::int32_t> tokens;
    std::vector<float> logprobs; // log p(token) under the model, one per token
    matrix<float> logits;        // [tokens × vocab] with keep_logits, else empty
    stop_reason reason = stop_reason::budget;
};

// Never stops a sequence early.
struct no_stop_condition {
    bool operator()(std::size_t, std::span<const std::int32_t>) const noexcept { return false; }
};

namespace detail {

// log softmax(logits)[token], in double.
inline float log_probability(std::span<const float> logits, std::int32_t token) {
    float top = logits[0];
    for (const float x : logits)
        top = std::max(top, x);
    double sum = 0;
    for (const float x : logits)
        sum += std::exp(double(x) - double(top));
    return static_cast<float>(double(logits[std::size_t(token)]) - double(top) - std::log(sum));
}

} // namespace detail

// Generates for every prompt; stop(b, tokens) is asked after each token of sequence b
// (tokens: what b has generated so far) and ends it when true. The sampler's draws are
// taken in batch order, so a seeded run is reproducible. For an adaptable model, `adapters`
// gives every prompt's adapter (B pointers, nullptr: the base) or one for all (1); none
// runs the base.
template <exec::cpu_executor E, class Model, class Stop = no_stop_condition>
std::vector<generation> generate(const E& ex, const Model& model,
                                 std::span<const std::span<const std::int32_t>> prompts, ops::sampler& sample,
                                 const generation_options& options = {}, Stop&& stop = {},
                                 std::span<const typename Model::adapter_type* const> adapters = {}) {
    using step = typename Model::step;
    const auto& c = model.config();
    const std::size_t B = prompts.size();
    T2_CHECK(B > 0, "generate: no prompts");
    T2_CHECK(adapters.size() <= 1 || adapters.size() == B, "generate: ", adapters.size(), " adapters for ", B,
             " prompts (give one per prompt, one for all, or none)");
    const auto adapter_of = [&](std::size_t b) {
        return adapters.empty() ? nullptr : adapters[adapters.size() == 1 ? 0 : b];
    };
    T2_CHECK(options.max_new_tokens > 0, "generate: a token budget of 0");
    std::vector<llama_state> states;
    states.reserve(B);
    for (std::size_t b = 0; b < B; ++b) {
        T2_CHECK(!prompts[b].empty(), "generate: prompt ", b, " is empty (it needs at least BOS)");
        T2_CHECK(prompts[b].size() < c.seq_len, "generate: prompt ", b, " has ", prompts[b].size(),
                 " tokens, the model's context is ", c.seq_len);
        states.emplace_back(c, std::min(c.seq_len, prompts[b].size() + options.max_new_tokens));
    }
    // Room for every token a sequence can generate (its context bounds it), so that the
    // token each step feeds back stays where it is.
    std::vector<generation> out(B);
    for (generation& g : out) {
        g.tokens.reserve(std::min(options.max_new_tokens, c.seq_len));
        g.logprobs.reserve(std::min(options.max_new_tokens, c.seq_len));
    }
    std::vector<std::vector<float>> kept_logits(options.keep_logits ? B : 0); // grown as tokens come

    // Sequences still running, in batch order, with the step each takes next.
    std::vector<std::size_t> running(B);
    std::vector<step> steps(B);
    for (std::size_t b = 0; b < B; ++b) {
        running[b] = b;
        steps[b] = {&states[b], prompts[b], adapter_of(b)};
    }
    decoder_workspace ws;
    while (!running.empty()) {
        const matrix_view<const float> logits = model.forward(ex, std::span<const step>(steps), ws);
        std::size_t still = 0;
        for (std::size_t i = 0; i < running.size(); ++i) {
            const std::size_t b = running[i];
            generation& g = out[b];
            const auto row = logits.row(i);
            const std::span<const float> scores(row.data(), row.size());
            const std::int32_t token = sample(scores);
            if (options.keep_logits)
                kept_logits[b].insert(kept_logits[b].end(), scores.begin(), scores.end());
            g.tokens.push_back(token);
            g.logprobs.push_back(detail::log_probability(scores, token));
            bool done = true;
            if (token == options.end_token)
                g.reason = stop_reason::end_token;
            else if (stop(b, std::span<const std::int32_t>(g.tokens)))
                g.reason = stop_reason::stop_condition;
            else if (g.tokens.size() == options.max_new_tokens)
                g.reason = stop_reason::budget;
            else if (states[b].position == states[b].cache.capacity())
                g.reason = stop_reason::context;
            else
                done = false;
            if (!done) {
                running[still] = b;
                steps[still] = {&states[b], std::span<const std::int32_t>(&g.tokens.back(), 1), adapter_of(b)};
                ++still;
            }
        }
        running.resize(still);
        steps.resize(still);
    }
    for (std::size_t b = 0; b < kept_logits.size(); ++b) {
        const std::size_t n = out[b].tokens.size();
        out[b].logits = matrix<float>(dims<2>(n, c.vocab_size), uninitialized);
        std::copy(kept_logits[b].begin(), kept_logits[b].end(), out[b].logits.data());
    }
    return out;
}

} // namespace nn
T2_NAMESPACE_END
