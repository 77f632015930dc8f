// Adapters as per-context state on one frozen base (the real stories260K model): contexts
// with different experts decode concurrently from one loaded model and each gives exactly
// what it gives alone; a batch whose sequences carry different adapters (SVF z candidates,
// mixtures, the base, LoRA) gives each sequence what its own run gives; using adapters never
// changes the base; an adapter made for another model is refused.
#include <algorithm>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "support/check.hpp"
#include "support/stories260k.hpp"
#include "support/tolerance.hpp"
#include "t2/adapt/model.hpp"
#include "t2/io/llama2c.hpp"
#include "t2/nn/generate.hpp"
#include "t2/nn/random_init.hpp"

namespace {

const std::string models = T2_SHARED_MODELS_DIR;
using dense_model = t2::nn::llama<t2::nn::llama_config>;
using tokens_t = std::vector<std::int32_t>;

using stories = t2_test::decomposed_stories;
const stories& load() { return t2_test::decomposed_stories260k(); }

// An expert with z uniform in [lo, hi] for every decomposed matrix.
t2::adapt::expert random_expert(const t2::adapt::decomposition& d, std::uint64_t seed, float lo, float hi) {
    t2::adapt::expert e{d.base_model_hash, false, "test " + std::to_string(seed), "", {}};
    for (const auto& m : d.matrices) {
        std::vector<float> z(m.factors.rank());
        t2_test::fill_uniform(z, seed * 1000 + e.z.size(), lo, hi);
        e.z.emplace_back(m.name, std::move(z));
    }
    return e;
}

// Greedy decoding of `steps` tokens after `prompt`, every step's logits kept.
template <class E, class Model>
std::vector<float> greedy_logits(const E& ex, const Model& model, const typename Model::adapter_type* adapter,
                                 const tokens_t& prompt, std::size_t steps) {
    auto state = model.make_state(prompt.size() + steps);
    std::vector<float> kept;
    auto logits = model.forward(ex, state, prompt, t2::nn::logits_for::last, adapter);
    for (std::size_t t = 0;; ++t) {
        kept.insert(kept.end(), logits.span().begin(), logits.span().end());
        if (t == steps)
            break;
        const std::int32_t next = t2::ops::argmax(logits.span());
        logits = model.forward(ex, state, std::span(&next, 1), t2::nn::logits_for::last, adapter);
    }
    return kept;
}

} // namespace

TEST_CASE("adapters: four contexts with different experts decode concurrently, each as it would alone") {
    const stories& s = load();
    const auto model = t2::adapt::make_svf_model(s.config, s.weights, s.decomposition);
    const std::string hash_before = t2::adapt::weights_hash(s.config, s.weights);

    // Four contexts: an SVF expert (composed), another (factored), a sigmoid-parametrized
    // adapter, and a mixture of two experts.
    const std::vector<t2::adapt::expert> experts{random_expert(s.decomposition, 1, 0.6f, 1.4f),
                                                 random_expert(s.decomposition, 2, 0.8f, 1.2f)};
    std::vector<t2::adapt::svf_adapter> adapters;
    adapters.push_back(t2::adapt::make_svf_adapter(model));
    t2::adapt::apply_expert(adapters.back(), s.decomposition, experts[0]);
    t2::adapt::prepare(t2::exec::scalar{}, model, adapters.back(), 1, t2::adapt::svf_mode::composed);
    adapters.push_back(t2::adapt::make_svf_adapter(model));
    t2::adapt::apply_expert(adapters.back(), s.decomposition, experts[1]);
    adapters.push_back(t2::adapt::make_svf_adapter(
        model, {.parametrization = t2::adapt::svf_parametrization::sigmoid, .init_std = 0.5f, .seed = 7}));
    adapters.push_back(t2::adapt::make_mixture_adapter(model, s.decomposition, experts));
    t2::adapt::set_mixture_alpha(adapters.back(), std::vector<float>{0.3f, 0.9f});

    const tokens_t prompts[4] = {{1, 403, 407}, {1, 376, 261, 17}, {1}, {1, 298}};
    constexpr std::size_t steps = 24;
    const auto run = [&](std::size_t i) {
        return greedy_logits(t2::exec::simd<>{}, model, &adapters[i], prompts[i], steps);
    };
    std::vector<std::vector<float>> alone(4), together(4);
    for (std::size_t i = 0; i < 4; ++i)
        alone[i] = run(i);
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < 4; ++i)
        threads.emplace_back([&, i] { together[i] = run(i); });
    for (auto& t : threads)
        t.join();
    for (std::size_t i = 0; i < 4; ++i) {
        CAPTURE(i);
        CHECK(together[i] == alone[i]);
        for (std::size_t j = 0; j < i; ++j) // the adapters change the outputs
            CHECK(alone[i] != alone[j]);
    }
    // The base saw none of it: its weights hash alike, and without an adapter the SVF model
    // is the dense model exactly.
    CHECK(t2::adapt::weights_hash(s.config, s.weights) == hash_before);
    const dense_model dense(s.config, s.weights);
    CHECK(greedy_logits(t2::exec::simd<>{}, model, nullptr, prompts[0], 8) ==
          greedy_logits(t2::exec::simd<>{}, dense, nullptr, prompts[0], 8));
}

TEST_CASE("adapters: a batch with an adapter per sequence gives each sequence its own run") {
    const stories& s = load();
    const auto model = t2::adapt::make_svf_model(s.config, s.weights, s.decomposition);
    // A population of five z candidates, a mixture and the base, in one batch.
    std::vector<t2::adapt::svf_adapter> adapters;
    for (std::uint64_t k = 0; k < 5; ++k) {
        adapters.push_back(t2::adapt::make_svf_adapter(model, {.rescale = k % 2 == 1}));
        t2_test::fill_uniform(adapters.back().parameters(), 40 + k, 0.5f, 1.5f);
    }
    const std::vector<t2::adapt::expert> experts{random_expert(s.decomposition, 3, 0.6f, 1.4f),
                                                 random_expert(s.decomposition, 4, 0.6f, 1.4f)};
    adapters.push_back(t2::adapt::make_mixture_adapter(model, s.decomposition, experts, {.per_layer = true}));
    t2_test::fill_uniform(adapters.back().parameters(), 50, 0.f, 1.f);
    std::vector<const t2::adapt::svf_adapter*> chosen;
    for (const auto& a : adapters)
        chosen.push_back(&a);
    chosen.insert(chosen.begin() + 2, nullptr); // the base, between two candidates
    chosen.insert(chosen.begin() + 4, chosen[3]); // one adapter for two neighbouring sequences
    const std::size_t B = chosen.size();

    const auto check_batch = [&](const auto& ex, const char* executor) {
        CAPTURE(executor);
        std::vector<t2::nn::llama_state> batched, alone;
        std::vector<tokens_t> prompts;
        for (std::size_t b = 0; b < B; ++b) {
            prompts.push_back(t2_test::random_tokens(1 + (b * 5) % 7, s.config.vocab_size, 60 + b));
            batched.push_back(model.make_state(16));
            alone.push_back(model.make_state(16));
        }
        // Packed prefill of unequal prompts, then lockstep decoding, against each alone.
        // Summation orders differ (other row counts pick other gemm kernels, and x·V runs
        // over the batch's rows or one sequence's): the derived bound with the rank-r
        // factored product on the chain.
        const dense_model dense(s.config, s.weights);
        const auto bound = t2_test::logit_order_tolerance(dense, 16, 2 * s.config.hidden_dim);
        std::vector<t2::nn::llama<t2::nn::llama_config, t2::adapt::svf>::step> steps(B);
        t2::nn::decoder_workspace ws;
        std::vector<std::int32_t> next(B);
        for (std::size_t round = 0; round < 4; ++round) {
            for (std::size_t b = 0; b < B; ++b)
                steps[b] = {&batched[b], round == 0 ? std::span<const std::int32_t>(prompts[b])
                                                    : std::span<const std::int32_t>(&next[b], 1),
                            chosen[b]};
            const auto logits = model.forward(ex, std::span<const decltype(steps)::value_type>(steps), ws);
            for (std::size_t b = 0; b < B; ++b) {
                CAPTURE(round);
                CAPTURE(b);
                const auto want = model.forward(ex, alone[b], steps[b].tokens, t2::nn::logits_for::last, chosen[b]);
                const auto got = logits.row(b);
                T2_CHECK_WITHIN(std::span<const float>(got.data(), got.size()), want.span(), bound);
                next[b] = t2::ops::argmax(want.span());
            }
        }
    };
    check_batch(t2::exec::scalar{}, "scalar");
#if T2_ENABLE_SIMD
    check_batch(t2::exec::simd<>{}, "simd");
    t2::exec::thread_pool pool(3);
    check_batch(t2::exec::threads<t2::exec::simd<>>(pool), "threads");
#endif
}

TEST_CASE("adapters: LoRA adapters per sequence share the base's pass") {
    const t2::nn::llama_config c{.dim = 24, .hidden_dim = 40, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                                 .vocab_size = 37, .seq_len = 16};
    const auto weights = t2::nn::random_weights(c, 5);
    const auto model = t2::adapt::make_lora_model(c, weights);
    std::vector<t2::adapt::lora_adapter> adapters;
    adapters.push_back(t2::adapt::make_lora_adapter(model, t2::adapt::selection::all(), {.rank = 3}, 1));
    adapters.push_back(t2::adapt::make_lora_adapter(model, t2::adapt::selection::attention(), {.rank = 5}, 2));
    for (auto& a : adapters)
        t2_test::fill_uniform(a.parameters(), a.parameters().size(), -0.2f, 0.2f);
    const std::vector<const t2::adapt::lora_adapter*> chosen{&adapters[0], nullptr, &adapters[1], &adapters[0]};
    const t2::exec::scalar ex; // the scalar gemm sums in one order whatever the rows: bitwise
    std::vector<t2::nn::llama_state> batched, alone;
    std::vector<tokens_t> prompts;
    std::vector<decltype(model)::step> steps;
    for (std::size_t b = 0; b < chosen.size(); ++b) {
        prompts.push_back(t2_test::random_tokens(2 + b, c.vocab_size, 70 + b));
        batched.push_back(model.make_state());
        alone.push_back(model.make_state());
    }
    for (std::size_t b = 0; b < chosen.size(); ++b)
        steps.push_back({&batched[b], prompts[b], chosen[b]});
    t2::nn::decoder_workspace ws;
    const auto logits = model.forward(ex, std::span<const decltype(model)::step>(steps), ws);
    for (std::size_t b = 0; b < chosen.size(); ++b) {
        CAPTURE(b);
        const auto want = model.forward(ex, alone[b], prompts[b], t2::nn::logits_for::last, chosen[b]);
        CHECK(std::equal(want.span().begin(), want.span().end(), logits.row(b).data()));
    }
}

TEST_CASE("adapters: batched generation with an expert per prompt") {
    const stories& s = load();
    const auto model = t2::adapt::make_svf_model(s.config, s.weights, s.decomposition);
    std::vector<t2::adapt::svf_adapter> adapters;
    for (std::uint64_t k = 0; k < 2; ++k) {
        adapters.push_back(t2::adapt::make_svf_adapter(model));
        t2::adapt::apply_expert(adapters.back(), s.decomposition, random_expert(s.decomposition, 8 + k, 0.7f, 1.3f));
    }
    const tokens_t prompt{1, 403, 407};
    const std::vector<std::span<const std::int32_t>> prompts(3, std::span<const std::int32_t>(prompt));
    const std::vector<const t2::adapt::svf_adapter*> chosen{&adapters[0], nullptr, &adapters[1]};
    t2::ops::sampler greedy({.temperature = 0.f});
    const t2::exec::scalar ex;
    const auto out = t2::nn::generate(ex, model, prompts, greedy, {.max_new_tokens = 12}, t2::nn::no_stop_condition{},
                                      std::span<const t2::adapt::svf_adapter* const>(chosen));
    for (std::size_t b = 0; b < 3; ++b) {
        CAPTURE(b);
        const auto one = chosen[b] ? t2::nn::generate(ex, t2::nn::with_adapter(model, *chosen[b]),
                                                      std::span(&prompts[b], 1), greedy, {.max_new_tokens = 12})
                                   : t2::nn::generate(ex, model, std::span(&prompts[b], 1), greedy,
                                                      {.max_new_tokens = 12});
        // The scalar gemm sums in one order whatever the rows: bitwise.
        CHECK(out[b].tokens == one[0].tokens);
        CHECK(out[b].logprobs == one[0].logprobs);
    }
    CHECK(out[0].logprobs != out[1].logprobs);
    CHECK(t2_test::contains(t2_test::error_message([&] {
                                (void)t2::nn::generate(ex, model, prompts, greedy, {}, t2::nn::no_stop_condition{},
                                                       std::span(chosen).subspan(0, 2));
                            }),
                            "2 adapters for 3 prompts"));
}

TEST_CASE("adapters: an adapter made for another model is refused") {
    const stories& s = load();
    const auto model = t2::adapt::make_svf_model(s.config, s.weights, s.decomposition);
    t2::nn::llama_config other = s.config;
    other.n_layers = 2;
    const auto other_weights = t2::nn::random_weights(other, 3);
    const auto other_d = t2::adapt::decompose(t2::exec::scalar{}, other, other_weights, t2::adapt::selection::mlp());
    const auto other_model = t2::adapt::make_svf_model(other, other_weights, other_d);
    const auto foreign = t2::adapt::make_svf_adapter(other_model);
    auto state = model.make_state(8);
    const tokens_t tokens{1, 2};
    CHECK(t2_test::contains(t2_test::error_message([&] {
                                (void)model.forward(t2::exec::scalar{}, state, tokens, t2::nn::logits_for::last, &foreign);
                            }),
                            "made for another model"));
    CHECK(state.position == 0);
    // Same layer count, other shapes: refused by the matrix that does not fit.
    t2::nn::llama_config narrow = s.config;
    narrow.hidden_dim = 100;
    const auto narrow_weights = t2::nn::random_weights(narrow, 4);
    const auto narrow_d = t2::adapt::decompose(t2::exec::scalar{}, narrow, narrow_weights, t2::adapt::selection::mlp());
    const auto narrow_adapter = t2::adapt::make_svf_adapter(t2::adapt::make_svf_model(narrow, narrow_weights, narrow_d));
    CHECK(t2_test::contains(t2_test::error_message([&] {
                                (void)model.forward(t2::exec::scalar{}, state, tokens, t2::nn::logits_for::last,
                                                    &narrow_adapter);
                            }),
                            "made for another model"));
}
