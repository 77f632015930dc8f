// Two-pass self-adaptation (adapt/self_adaptive.hpp) and its dispatchers: answers against
// solo runs of the same adapters, composed against factored, the cache, refusals; the
// classifying dispatchers' reading of pass-1 answers; the few-shot search's α.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "support/check.hpp"
#include "t2/adapt/classify_dispatch.hpp"
#include "t2/adapt/self_adaptive.hpp"
#include "t2/adapt/svd.hpp"
#include "t2/exec/simd.hpp"
#include "t2/nn/random_init.hpp"
#include "t2/train/few_shot_dispatch.hpp"

namespace {

using t2::adapt::dispatch_decision;
using prompt_list = std::span<const std::span<const std::int32_t>>;

// Token 1 is BOS (""), tokens 2…12 the words "a"…"k"; anything else in a text is skipped.
struct letter_tokenizer {
    std::vector<std::int32_t> encode(std::string_view text, bool bos) const {
        std::vector<std::int32_t> out;
        if (bos)
            out.push_back(t2::nn::bos_token);
        for (const char c : text)
            if (c >= 'a' && c <= 'k')
                out.push_back(std::int32_t(c - 'a' + 2));
        return out;
    }
    std::string decode(std::int32_t, std::int32_t token) const {
        return token >= 2 && token <= 12 ? std::string(1, char('a' + token - 2)) + " " : std::string();
    }
};

// A tiny random model over that vocabulary, decomposed, and three random experts named by
// letters.
struct fixture {
    const t2::nn::llama_config c{.dim = 16, .hidden_dim = 24, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                                 .vocab_size = 13, .seq_len = 24};
    t2::exec::simd<> ex{};
    t2::nn::llama_weights<t2::nn::dense<float>> weights = t2::nn::random_weights(c, 17);
    t2::adapt::decomposition d = t2::adapt::decompose(ex, c, weights, t2::adapt::selection::all());
    t2::nn::llama<t2::nn::llama_config, t2::adapt::svf> model = t2::adapt::make_svf_model(c, weights, d);
    std::vector<t2::adapt::expert> experts = make_experts({"b", "e", "h"}, 40);
    std::vector<std::vector<std::int32_t>> prompt_tokens = make_prompts(6);
    std::vector<std::span<const std::int32_t>> prompts{prompt_tokens.begin(), prompt_tokens.end()};

    std::vector<t2::adapt::expert> make_experts(std::vector<std::string> names, std::uint64_t seed) const {
        std::vector<t2::adapt::expert> out(names.size());
        for (std::size_t k = 0; k < out.size(); ++k) {
            out[k].base_model_hash = d.base_model_hash;
            out[k].rescale = true;
            out[k].task = names[k];
            for (const auto& m : d.matrices) {
                std::vector<float> z(m.factors.rank());
                t2_test::fill_uniform(z, seed + 10 * k + m.slot.layer * 3 + std::size_t(m.slot.which), -1.f, 3.f);
                out[k].z.emplace_back(m.name, z);
            }
        }
        return out;
    }
    static std::vector<std::vector<std::int32_t>> make_prompts(std::size_t n) {
        std::vector<std::vector<std::int32_t>> out;
        for (std::size_t i = 0; i < n; ++i) {
            auto p = t2_test::random_tokens(2 + i % 3, 11, 300 + i);
            for (auto& t : p)
                t += 2; // letters only
            p.insert(p.begin(), t2::nn::bos_token);
            out.push_back(p);
        }
        return out;
    }

    // Greedy answers of every prompt alone, with the mixture at `alpha` (empty: the base),
    // not prepared: factored.
    std::vector<std::int32_t> solo(std::span<const std::int32_t> prompt, std::span<const float> alpha,
                                   std::size_t budget) const {
        t2::ops::sampler greedy({.temperature = 0.f});
        std::vector<t2::adapt::svf_adapter> adapter;
        std::vector<const t2::adapt::svf_adapter*> pointer;
        if (!alpha.empty()) {
            adapter.push_back(t2::adapt::make_mixture_adapter(
                model, d, experts, {.rescale = true, .per_layer = alpha.size() != experts.size()}));
            t2::adapt::set_mixture_alpha(adapter[0], alpha);
            pointer.push_back(&adapter[0]);
        }
        return t2::nn::generate(ex, model, std::span(&prompt, 1), greedy, {.max_new_tokens = budget, .end_token = -1},
                                t2::nn::no_stop_condition{},
                                std::span<const t2::adapt::svf_adapter* const>(pointer))[0]
            .tokens;
    }
};

// A user's dispatcher: the decisions it was given, prompt by prompt.
struct fixed_dispatcher {
    std::vector<dispatch_decision> decisions;
    std::size_t calls = 0;
    template <class E, class SA>
    std::vector<dispatch_decision> decide(const E&, const SA&, prompt_list prompts) {
        ++calls;
        return {decisions.begin(), decisions.begin() + std::ptrdiff_t(std::min(prompts.size(), decisions.size()))};
    }
};

} // namespace

TEST_CASE("adapt: a classification answer names an expert by its first \\boxed{} or its first word") {
    const std::vector<std::string> names{"math", "Code", " reasoning "};
    CHECK(t2::adapt::parse_task_label("The answer is \\boxed{code}.", names) == 1u);
    CHECK(t2::adapt::parse_task_label("\\boxed{ MATH } and \\boxed{code}", names) == 0u);
    CHECK(t2::adapt::parse_task_label("  reasoning, because", names) == 2u);
    CHECK(t2::adapt::parse_task_label("\"math\"", names) == 0u);
    CHECK_FALSE(t2::adapt::parse_task_label("\\boxed{other}", names));
    CHECK_FALSE(t2::adapt::parse_task_label("\\boxed{math", names)); // never closed
    CHECK_FALSE(t2::adapt::parse_task_label("mathematics", names));
    CHECK_FALSE(t2::adapt::parse_task_label("", names));
    CHECK_FALSE(t2::adapt::parse_task_label("\\boxed{}", names));
}

TEST_CASE("adapt: self_adaptive answers every prompt as its decision's adapter answers it alone") {
    fixture f;
    t2::adapt::self_adaptive sa(f.model, f.d, f.experts);
    const std::vector<float> mix{0.2f, 0.5f, 0.3f};
    std::vector<float> per_layer(f.c.n_layers * 3);
    t2_test::fill_uniform(per_layer, 5, 0.f, 1.f);
    fixed_dispatcher dispatch{{t2::adapt::base_decision(), t2::adapt::expert_decision(0, 3, "b"), {mix, "mix"},
                               t2::adapt::expert_decision(2, 3, "h"), {per_layer, "per layer"}, {mix, "mix"}}};
    t2::ops::sampler greedy({.temperature = 0.f});
    const auto answers = sa.generate(f.ex, dispatch, f.prompts, greedy, {.max_new_tokens = 6, .end_token = -1});
    REQUIRE(answers.size() == f.prompts.size());
    for (std::size_t b = 0; b < answers.size(); ++b) {
        CAPTURE(b);
        CHECK(answers[b].decision == dispatch.decisions[b]);
        CHECK(answers[b].generation.tokens == f.solo(f.prompts[b], dispatch.decisions[b].alpha, 6));
        CHECK(answers[b].timing.answer_seconds > 0);
    }
    // Different decisions in one batch run factored: nothing composed, one adapter per α.
    CHECK(sa.cached_bytes() == 0);
    CHECK(sa.cached_adapters() == 4);
    // The adapters change the answers, or the comparison above would prove little.
    std::size_t changed = 0;
    for (std::size_t b = 1; b < answers.size(); ++b)
        changed += answers[b].generation.tokens != f.solo(f.prompts[b], {}, 6) ? 1 : 0;
    CHECK(changed >= 3);
}

TEST_CASE("adapt: composed and factored adapters give the same answers; the cache keeps composed weights by α") {
    fixture f;
    const std::vector<float> alpha{0.1f, 0.7f, 0.4f};
    fixed_dispatcher dispatch{std::vector<dispatch_decision>(f.prompts.size(), {alpha, "mix"})};
    t2::ops::sampler greedy({.temperature = 0.f});
    const t2::nn::generation_options long_answers{.max_new_tokens = 16, .end_token = -1};

    t2::adapt::self_adaptive composed(f.model, f.d, f.experts);
    const auto first = composed.generate(f.ex, dispatch, f.prompts, greedy, long_answers);
    // 6 prompts of 16 tokens make composing every matrix the cheaper mode (rank 16).
    std::size_t all_matrices = 0;
    for (const auto& m : f.d.matrices)
        all_matrices += m.factors.out_features() * m.factors.in_features() * sizeof(float);
    CHECK(composed.cached_bytes() == all_matrices);
    CHECK(composed.cached_adapters() == 1);

    t2::adapt::self_adaptive factored(f.model, f.d, f.experts, {.cache_bytes = 0}); // never composes
    const auto second = factored.generate(f.ex, dispatch, f.prompts, greedy, long_answers);
    CHECK(factored.cached_bytes() == 0);
    for (std::size_t b = 0; b < f.prompts.size(); ++b) {
        CAPTURE(b);
        CHECK(first[b].generation.tokens == second[b].generation.tokens);
        CHECK(first[b].generation.tokens == f.solo(f.prompts[b], alpha, 16));
    }

    // The same α again is served from the cache; another α is composed beside it while the
    // budget allows, and pushes the least recently used one out when it does not.
    composed.generate(f.ex, dispatch, f.prompts, greedy, long_answers);
    CHECK(composed.cached_adapters() == 1);
    fixed_dispatcher other{std::vector<dispatch_decision>(f.prompts.size(), {{0.9f, 0.f, 0.2f}, "other"})};
    composed.generate(f.ex, other, f.prompts, greedy, long_answers);
    CHECK(composed.cached_adapters() == 2);
    CHECK(composed.cached_bytes() == 2 * all_matrices);

    t2::adapt::self_adaptive one_slot(f.model, f.d, f.experts, {.cache_bytes = all_matrices});
    one_slot.generate(f.ex, dispatch, f.prompts, greedy, long_answers);
    const auto switched = one_slot.generate(f.ex, other, f.prompts, greedy, long_answers);
    CHECK(one_slot.cached_adapters() == 1);
    CHECK(one_slot.cached_bytes() == all_matrices);
    CHECK(switched[0].generation.tokens == f.solo(f.prompts[0], other.decisions[0].alpha, 16));

    // A new library drops the cache, and its experts answer.
    auto library = f.make_experts({"b", "e", "h"}, 90);
    composed.set_experts(library);
    CHECK(composed.cached_adapters() == 0);
    const auto renewed = composed.generate(f.ex, dispatch, f.prompts, greedy, long_answers);
    f.experts = library;
    CHECK(renewed[0].generation.tokens == f.solo(f.prompts[0], alpha, 16));
}

TEST_CASE("adapt: self_adaptive refuses another model's experts and malformed decisions") {
    fixture f;
    auto foreign = f.experts;
    foreign[1].base_model_hash = "0123";
    CHECK_THROWS_WITH_AS(t2::adapt::self_adaptive(f.model, f.d, foreign), doctest::Contains("another model"),
                         t2::error);
    auto mixed_rescaling = f.experts;
    mixed_rescaling[2].rescale = false;
    CHECK_THROWS_WITH_AS(t2::adapt::self_adaptive(f.model, f.d, mixed_rescaling), doctest::Contains("rescaling"),
                         t2::error);
    CHECK_THROWS_AS(t2::adapt::self_adaptive(f.model, f.d, {}), t2::error);

    t2::adapt::self_adaptive sa(f.model, f.d, f.experts);
    t2::ops::sampler greedy({.temperature = 0.f});
    fixed_dispatcher too_few{{t2::adapt::base_decision()}};
    CHECK_THROWS_WITH_AS(sa.generate(f.ex, too_few, f.prompts, greedy), doctest::Contains("decided for 1 of 6"),
                         t2::error);
    fixed_dispatcher wrong_size{std::vector<dispatch_decision>(6, {{0.5f, 0.5f}, "two"})};
    CHECK_THROWS_WITH_AS(sa.generate(f.ex, wrong_size, f.prompts, greedy), doctest::Contains("3 experts"), t2::error);
    fixed_dispatcher not_finite{std::vector<dispatch_decision>(6, {{0.5f, std::nanf(""), 0.f}, "nan"})};
    CHECK_THROWS_WITH_AS(sa.generate(f.ex, not_finite, f.prompts, greedy), doctest::Contains("non-finite"),
                         t2::error);
}

TEST_CASE("adapt: the classifying dispatchers read the expert their pass-1 answer names") {
    fixture f;
    const letter_tokenizer tok;
    const t2::adapt::classify_options options{.prompt_template = "{prompt}", .max_new_tokens = 3, .end_token = -1};
    // Pass 1's own answers, with the base or with a classifier z: the expert whose name is
    // the first word, else the base.
    const auto expected = [&](std::span<const float> classifier_alpha, const t2::adapt::self_adaptive<>& sa) {
        std::vector<dispatch_decision> out;
        for (const auto& p : f.prompts) {
            const auto answer = f.solo(p, classifier_alpha, 3);
            const std::string first = tok.decode(0, answer[0]);
            const auto k = t2::adapt::parse_task_label(first, sa.expert_names());
            out.push_back(k ? t2::adapt::expert_decision(*k, 3, sa.expert_names()[*k]) : t2::adapt::base_decision());
        }
        return out;
    };
    t2::ops::sampler greedy({.temperature = 0.f});
    std::vector<dispatch_decision> base_choice, classifier_choice;
    // Name the library after the base's first answer letters, so that some prompts pick an
    // expert and the others the base.
    std::vector<std::string> names;
    for (std::size_t b = 0; b < 2; ++b)
        names.push_back(tok.decode(0, f.solo(f.prompts[b], {}, 1)[0]).substr(0, 1));
    names.push_back("k");
    if (names[1] == names[0])
        names[1] = "j";
    t2::adapt::self_adaptive sa(f.model, f.d, f.make_experts(names, 40));
    f.experts = std::vector<t2::adapt::expert>(sa.experts().begin(), sa.experts().end());

    t2::adapt::prompt_based prompt_based(tok, options);
    const auto by_base = sa.generate(f.ex, prompt_based, f.prompts, greedy, {.max_new_tokens = 2, .end_token = -1});
    const auto want_base = expected({}, sa);
    std::size_t chose_expert = 0;
    for (std::size_t b = 0; b < f.prompts.size(); ++b) {
        CAPTURE(b);
        CHECK(by_base[b].decision == want_base[b]);
        chose_expert += by_base[b].decision.is_base() ? 0 : 1;
    }
    CHECK(chose_expert >= 1);
    CHECK(chose_expert < f.prompts.size());

    // The classifier is the mixture of the library at α_c, written out as one expert.
    const std::vector<float> alpha_c{0.6f, 0.1f, 0.8f};
    auto classifier = f.experts[0];
    for (auto& [name, z] : classifier.z) {
        for (std::size_t j = 0; j < z.size(); ++j)
            z[j] = 0.f;
        for (std::size_t k = 0; k < 3; ++k)
            for (std::size_t j = 0; j < z.size(); ++j)
                z[j] += alpha_c[k] * (*f.experts[k].find(name))[j];
    }
    t2::adapt::classification_expert by_classifier(tok, classifier, options);
    const auto classified = sa.generate(f.ex, by_classifier, f.prompts, greedy, {.max_new_tokens = 2, .end_token = -1});
    const auto want_classified = expected(alpha_c, sa);
    CHECK(want_classified != want_base); // the classifier changes what pass 1 answers
    for (std::size_t b = 0; b < f.prompts.size(); ++b) {
        CAPTURE(b);
        CHECK(classified[b].decision == want_classified[b]);
    }
}

TEST_CASE("train: the few-shot dispatcher finds an α scoring at least as well as every expert alone") {
    fixture f;
    t2::adapt::self_adaptive sa(f.model, f.d, f.experts);
    // Shots labelled by the mixture at a hidden α*.
    const std::vector<float> alpha_star{0.5f, 0.1f, 0.9f};
    std::vector<t2::train::labelled_example> shots;
    for (std::size_t s = 0; s < f.prompts.size(); ++s)
        shots.push_back({f.prompt_tokens[s], f.solo(f.prompts[s], alpha_star, 3)});
    t2::train::few_shot_dispatcher dispatch(shots, {.iterations = 8, .search = {.seed = 3},
                                                    .scoring = {.end_token = -1}});
    t2::ops::sampler greedy({.temperature = 0.f});
    const auto answers = sa.generate(f.ex, dispatch, f.prompts, greedy, {.max_new_tokens = 3, .end_token = -1});
    REQUIRE(dispatch.alpha().size() == 3);
    for (const auto& a : answers)
        CHECK(std::ranges::equal(a.decision.alpha, dispatch.alpha()));

    // Its score against each expert alone, scored the same way.
    auto adapter = t2::adapt::make_mixture_adapter(f.model, f.d, f.experts, {.rescale = true});
    const auto make = [&] { return t2::adapt::make_mixture_adapter(f.model, f.d, f.experts, {.rescale = true}); };
    t2::train::few_shot_objective objective(f.ex, f.model, adapter, shots, make, {.end_token = -1});
    for (std::size_t k = 0; k < 3; ++k) {
        CAPTURE(k);
        std::vector<float> one_hot(3, 0.f);
        one_hot[k] = 1.f;
        CHECK(dispatch.score().value() >= objective.score(one_hot).value());
    }
    // The mixture written as one expert answers as the mixture does.
    const auto mixed = dispatch.mixed_expert(sa, "few-shot task");
    auto single = t2::adapt::make_svf_adapter(f.model, {.rescale = true});
    t2::adapt::apply_expert(single, f.d, mixed);
    const t2::adapt::svf_adapter* pointer = &single;
    const auto alone = t2::nn::generate(f.ex, f.model, std::span(f.prompts), greedy,
                                        {.max_new_tokens = 3, .end_token = -1}, t2::nn::no_stop_condition{},
                                        std::span(&pointer, 1));
    for (std::size_t b = 0; b < f.prompts.size(); ++b)
        CHECK(alone[b].tokens == answers[b].generation.tokens);
    // Later prompts reuse the α without searching again.
    const std::vector<float> found(dispatch.alpha().begin(), dispatch.alpha().end());
    sa.generate(f.ex, dispatch, f.prompts, greedy, {.max_new_tokens = 1, .end_token = -1});
    CHECK(std::ranges::equal(dispatch.alpha(), found));
}
