// Batches of sequences on the real stories260K model: a packed forward over sequences of
// different lengths and positions gives each sequence's logits as separate calls would,
// lockstep decoding equals one-at-a-time decoding, batched greedy generation reproduces
// llama2.c run.c, stop strings end sequences, and a bad batch is refused before any cache
// changes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "support/check.hpp"
#include "support/tolerance.hpp"
#include "t2/io/llama2c.hpp"
#include "t2/io/stop_strings.hpp"
#include "t2/io/tokenizer.hpp"
#include "t2/nn/generate.hpp"

namespace {

const std::string models = T2_SHARED_MODELS_DIR;
using model_type = t2::nn::llama<t2::nn::llama_config>;
using tokens_t = std::vector<std::int32_t>;

model_type load_model() {
    auto ck = t2::io::read_llama2c(models + "/stories260K.bin");
    return model_type(ck.config, std::move(ck.weights));
}

// Three sequences: different histories already in their caches, different new lengths.
struct scenario {
    tokens_t history[3] = {{}, {1, 403, 407, 261}, {1, 376}};
    tokens_t next[3] = {{1, 403, 407, 261, 378, 432, 383}, {286}, {298, 315, 17, 499, 261}};
};

bool bitwise_equal(t2::matrix_view<const float> a, t2::matrix_view<const float> b) {
    return a.shape() == b.shape() && std::equal(a.data(), a.data() + a.size(), b.data());
}

// Packed batch vs. one call per sequence, for the last positions and for all of them.
template <class E>
void check_batch_against_separate_calls(const E& ex, const model_type& model, bool bitwise) {
    const scenario s;
    std::vector<t2::nn::llama_state> batched, alone;
    for (const tokens_t& h : s.history) {
        batched.push_back(model.make_state(32));
        alone.push_back(model.make_state(32));
        if (!h.empty()) {
            (void)model.forward(ex, batched.back(), h);
            (void)model.forward(ex, alone.back(), h);
        }
    }
    std::vector<t2::nn::sequence_step> steps;
    for (std::size_t b = 0; b < 3; ++b)
        steps.push_back({&batched[b], s.next[b]});
    t2::nn::decoder_workspace ws;
    const auto all = model.forward(ex, std::span<const t2::nn::sequence_step>(steps), ws, t2::nn::logits_for::all);
    const auto bound = t2_test::logit_order_tolerance(model, 32);
    std::size_t row = 0;
    for (std::size_t b = 0; b < 3; ++b) {
        CAPTURE(b);
        CHECK(batched[b].position == s.history[b].size() + s.next[b].size());
        const auto want = model.forward(ex, alone[b], s.next[b], t2::nn::logits_for::all);
        const auto got = all.rows(row, row + s.next[b].size());
        if (bitwise)
            CHECK(bitwise_equal(got, want.view()));
        else
            T2_CHECK_WITHIN(std::span<const float>(got.data(), got.size()), want.span(), bound);
        row += s.next[b].size();
    }
    CHECK(row == all.extent(0));

    // Lockstep decoding: one token each, B rows in one call, logits of the last positions.
    const tokens_t one_each[3] = {{17}, {261}, {403}};
    for (std::size_t b = 0; b < 3; ++b)
        steps[b] = {&batched[b], one_each[b]};
    const auto last = model.forward(ex, std::span<const t2::nn::sequence_step>(steps), ws);
    REQUIRE(last.extent(0) == 3);
    for (std::size_t b = 0; b < 3; ++b) {
        const auto want = model.forward(ex, alone[b], one_each[b]);
        const auto got = last.rows(b, b + 1);
        if (bitwise)
            CHECK(bitwise_equal(got, want.view()));
        else
            T2_CHECK_WITHIN(std::span<const float>(got.data(), got.size()), want.span(), bound);
    }
}

} // namespace

TEST_CASE("batch: a packed forward equals one call per sequence") {
    const model_type model = load_model();
    // The scalar gemm sums every element in one order whatever the number of rows: bitwise.
    check_batch_against_separate_calls(t2::exec::scalar{}, model, true);
#if T2_ENABLE_SIMD
    // SIMD picks other kernels for other row counts (dot products at one row, register tiles
    // at more): within the derived bound.
    check_batch_against_separate_calls(t2::exec::simd<>{}, model, false);
    t2::exec::thread_pool pool(3);
    check_batch_against_separate_calls(t2::exec::threads<t2::exec::simd<>>(pool), model, false);
#endif
}

TEST_CASE("batch: hidden states are what the classifier reads") {
    const model_type model = load_model();
    const t2::exec::scalar ex;
    const tokens_t a{1, 403, 407}, b{1, 286, 298, 315};
    auto sa = model.make_state(8), sb = model.make_state(8), ta = model.make_state(8), tb = model.make_state(8);
    const t2::nn::sequence_step hidden_steps[] = {{&sa, a}, {&sb, b}}, logit_steps[] = {{&ta, a}, {&tb, b}};
    t2::nn::decoder_workspace w1, w2;
    const auto hidden = model.hidden(ex, hidden_steps, w1);
    REQUIRE(hidden.extent(0) == a.size() + b.size());
    REQUIRE(hidden.extent(1) == model.config().dim);
    CHECK(sa.position == a.size());
    const auto logits = model.forward(ex, logit_steps, w2, t2::nn::logits_for::all);
    t2::matrix<float> reclassified(logits.extent(0), logits.extent(1));
    model.weights().classifier(ex, hidden, reclassified.view());
    CHECK(bitwise_equal(reclassified.view(), logits));
}

TEST_CASE("batch: greedy generation of many prompts reproduces run.c, with log-probabilities") {
    const model_type model = load_model();
    const auto tok = t2::io::read_llama2c_tokenizer(models + "/tok512.bin", 512);
    // tests/data/stories260K_greedy_runc.txt: prompt, steps, run.c's ids (prompt included).
    std::ifstream in(T2_TEST_DATA_DIR "/stories260K_greedy_runc.txt");
    REQUIRE(in.good());
    std::vector<tokens_t> prompts, want;
    std::vector<std::size_t> steps;
    for (std::string line; std::getline(in, line);) {
        if (line.empty() || line[0] == '#')
            continue;
        if (line.rfind("prompt: ", 0) == 0) {
            prompts.push_back(tok.encode(line.substr(8), true));
        } else if (line.rfind("steps: ", 0) == 0) {
            steps.push_back(std::stoul(line.substr(7)));
        } else {
            std::istringstream ids(line);
            want.emplace_back();
            for (std::int32_t id; ids >> id;)
                want.back().push_back(id);
        }
    }
    REQUIRE(prompts.size() >= 3);
    REQUIRE(want.size() == prompts.size());
    std::vector<std::span<const std::int32_t>> views(prompts.begin(), prompts.end());
    t2::ops::sampler greedy({.temperature = 0.f});
    const std::size_t budget = *std::max_element(steps.begin(), steps.end());
    const t2::exec::scalar ex;
    const auto out = t2::nn::generate(ex, model, std::span<const std::span<const std::int32_t>>(views), greedy,
                                      {.max_new_tokens = budget, .keep_logits = true});
    REQUIRE(out.size() == prompts.size());
    for (std::size_t p = 0; p < prompts.size(); ++p) {
        CAPTURE(p);
        const auto& g = out[p];
        // run.c stops after `steps` positions or at BOS (not printed): compare what it ran.
        const std::size_t produced = want[p].size() - prompts[p].size();
        REQUIRE(g.tokens.size() >= produced);
        CHECK(std::equal(want[p].begin() + std::ptrdiff_t(prompts[p].size()), want[p].end(), g.tokens.begin()));
        REQUIRE(g.logprobs.size() == g.tokens.size());
        REQUIRE(g.logits.extent(0) == g.tokens.size());
        for (std::size_t t = 0; t < g.tokens.size(); ++t) {
            // log softmax in double, from the logits it kept.
            const auto row = g.logits.row(t);
            double top = row[0], sum = 0;
            for (std::size_t v = 0; v < row.size(); ++v)
                top = std::max(top, double(row[v]));
            for (std::size_t v = 0; v < row.size(); ++v)
                sum += std::exp(double(row[v]) - top);
            const double lp = double(row[std::size_t(g.tokens[t])]) - top - std::log(sum);
            CHECK(g.logprobs[t] == doctest::Approx(lp).epsilon(1e-6));
            CHECK(g.logprobs[t] <= 0.f);
            CHECK(g.tokens[t] == t2::ops::argmax(std::span<const float>(row.data(), row.size())));
        }
        if (g.reason == t2::nn::stop_reason::end_token)
            CHECK(g.tokens.back() == t2::nn::bos_token);
        else // the budget, or the model's context when the prompt and the budget exceed it
            CHECK((g.reason == t2::nn::stop_reason::budget || g.reason == t2::nn::stop_reason::context));
    }
}

TEST_CASE("batch: generation stops on the stop condition, the budget and the context") {
    const model_type model = load_model();
    const t2::exec::scalar ex;
    const tokens_t a{1, 403}, b{1, 286, 298};
    const std::span<const std::int32_t> prompts[] = {a, b};
    t2::ops::sampler greedy({.temperature = 0.f});
    // Sequence 1 stops after its third token; sequence 0 runs to the budget.
    const auto out = t2::nn::generate(ex, model, std::span<const std::span<const std::int32_t>>(prompts), greedy,
                                      {.max_new_tokens = 6, .end_token = -1},
                                      [](std::size_t seq, std::span<const std::int32_t> so_far) {
                                          return seq == 1 && so_far.size() == 3;
                                      });
    CHECK(out[0].tokens.size() == 6);
    CHECK(out[0].reason == t2::nn::stop_reason::budget);
    CHECK(out[1].tokens.size() == 3);
    CHECK(out[1].reason == t2::nn::stop_reason::stop_condition);
    CHECK(out[0].logits.size() == 0);

    // The same tokens come out of a sequence generated alone: the batch does not mix them.
    const std::span<const std::int32_t> alone[] = {a};
    const auto single = t2::nn::generate(ex, model, std::span<const std::span<const std::int32_t>>(alone), greedy,
                                         {.max_new_tokens = 6, .end_token = -1});
    CHECK(single[0].tokens == out[0].tokens);
    CHECK(single[0].logprobs == out[0].logprobs);

    // A budget past the model's context ends at the context.
    const auto full = t2::nn::generate(ex, model, std::span<const std::span<const std::int32_t>>(alone), greedy,
                                       {.max_new_tokens = 1000, .end_token = -1});
    CHECK(full[0].reason == t2::nn::stop_reason::context);
    CHECK(full[0].tokens.size() == model.config().seq_len - a.size() + 1);
    CHECK_THROWS_WITH_AS(t2::nn::generate(ex, model, std::span<const std::span<const std::int32_t>>(), greedy),
                         "generate: no prompts", t2::error);
}

TEST_CASE("batch: a bad batch is refused before any cache changes") {
    const model_type model = load_model();
    const t2::exec::scalar ex;
    auto s0 = model.make_state(4), s1 = model.make_state(4);
    const tokens_t two{1, 403}, three{1, 403, 407}, bad{1, 9999};
    t2::nn::decoder_workspace ws;
    const auto run = [&](std::initializer_list<t2::nn::sequence_step> steps) {
        return model.forward(ex, std::span<const t2::nn::sequence_step>(steps.begin(), steps.size()), ws);
    };
    CHECK_THROWS_WITH_AS(run({{&s0, two}, {&s0, two}}), "forward: sequences 0 and 1 of the batch share one state",
                         t2::error);
    CHECK_THROWS_WITH_AS(run({{&s0, two}, {&s1, bad}}), "forward: token id 9999 is outside the vocabulary of 512",
                         t2::error);
    CHECK_THROWS_WITH_AS(run({{&s0, two}, {&s1, {}}}), "forward: no tokens for a sequence of the batch", t2::error);
    CHECK_THROWS_WITH_AS(run({}), "forward: an empty batch", t2::error);
    CHECK(s0.position == 0);
    CHECK(s1.position == 0);
    (void)run({{&s0, two}, {&s1, three}});
    CHECK_THROWS_WITH_AS(run({{&s0, two}, {&s1, two}}), "forward: positions 3..4 exceed the state's context of 4 tokens",
                         t2::error);
    CHECK(s0.position == 2); // the first sequence fitted, but nothing ran
    CHECK(s1.position == 3);
}

TEST_CASE("batch: stop strings end each sequence at its first match") {
    const model_type model = load_model();
    const auto tok = t2::io::read_llama2c_tokenizer(models + "/tok512.bin", 512);
    const tokens_t a = tok.encode("Once upon a time", true), b = tok.encode("Lily saw a big dog", true);
    const std::span<const std::int32_t> prompts[] = {a, b};
    t2::ops::sampler greedy({.temperature = 0.f});
    // ", " spans a token boundary in the story ("," then " she"...), "." usually is one token.
    for (const std::string stop_at : {".", ", "}) {
        CAPTURE(stop_at);
        t2::io::stop_strings stop(tok, {stop_at, "never appears"}, prompts);
        const auto out = t2::nn::generate(t2::exec::scalar{}, model,
                                          std::span<const std::span<const std::int32_t>>(prompts), greedy,
                                          {.max_new_tokens = 200}, stop);
        for (std::size_t s = 0; s < 2; ++s) {
            CAPTURE(s);
            REQUIRE(out[s].reason == t2::nn::stop_reason::stop_condition);
            const std::string& text = stop.text(s);
            const std::size_t at = text.find(stop_at);
            REQUIRE(at != std::string::npos);
            // The match is in the last token's piece: one token fewer holds no match.
            std::string shorter;
            const std::span<const std::int32_t> prompt = prompts[s];
            for (std::size_t t = 0; t + 1 < out[s].tokens.size(); ++t)
                shorter += tok.decode(t ? out[s].tokens[t - 1] : prompt.back(), out[s].tokens[t]);
            CHECK(shorter.find(stop_at) == std::string::npos);
            CHECK(text.rfind(shorter, 0) == 0);
        }
    }
    CHECK_THROWS_WITH_AS(t2::io::stop_strings(tok, {""}, prompts),
                         "stop_strings: an empty stop string would stop every sequence at once", t2::error);
}
