// Two-pass self-adaptation (adapt/self_adaptive.hpp) and its dispatchers: answers against
// solo runs of the same adapters, composed against factored, the cache, refusals; the
// classifying dispatchers' reading of pass-1 answers; the few-shot search's α; the
// dual-attention router's gradients, training on labels and routing.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "support/check.hpp"
#include "support/temp_dir.hpp"
#include "t2/adapt/classify_dispatch.hpp"
#include "t2/adapt/router_dispatch.hpp"
#include "t2/adapt/self_adaptive.hpp"
#include "t2/adapt/svd.hpp"
#include "t2/exec/simd.hpp"
#include "t2/io/adapter_files.hpp"
#include "t2/nn/random_init.hpp"
#include "t2/train/few_shot_dispatch.hpp"
#include "t2/train/optimizers.hpp"
#include "t2/train/router_objective.hpp"
#include "t2/train/trainer.hpp"

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

namespace {

// Central differences of f at p along coordinate i, step h.
template <class F>
double central_difference(F&& f, std::vector<float> p, std::size_t i, float h) {
    const float at = p[i];
    p[i] = at + h;
    const double up = f(p);
    p[i] = at - h;
    const double down = f(p);
    return (up - down) / (2 * double(h));
}

// Pooled hidden states of prompts of three tasks, told apart by the letters they use
// (a–c, d–f, g–i).
std::vector<std::vector<std::int32_t>> task_prompts(std::size_t per_task, std::uint64_t seed,
                                                    std::vector<std::size_t>& labels) {
    std::vector<std::vector<std::int32_t>> out;
    for (std::size_t i = 0; i < per_task; ++i)
        for (std::size_t task = 0; task < 3; ++task) {
            auto p = t2_test::random_tokens(3 + (i + task) % 4, 3, seed + 10 * i + task);
            for (auto& t : p)
                t += std::int32_t(2 + 3 * task);
            p.insert(p.begin(), t2::nn::bos_token);
            out.push_back(p);
            labels.push_back(task);
        }
    return out;
}

} // namespace

TEST_CASE("nn: the router's gradients match central differences") {
    const t2::nn::router r({.dim = 7, .experts = 3, .key_dim = 5, .temperature = 0.7f}, 11);
    std::vector<float> h(7), dalpha(3);
    t2_test::fill_uniform(h, 12, -2.f, 2.f);
    t2_test::fill_uniform(dalpha, 13, -1.f, 1.f);
    const std::vector<float> p(r.parameters().begin(), r.parameters().end());
    std::vector<float> label_gradient(p.size()), alpha_gradient(p.size());
    const float loss = r.label_loss(p, h, 2, label_gradient);
    r.backward(p, h, dalpha, alpha_gradient);
    std::vector<float> alpha(3);
    r.forward(h, alpha);
    CHECK(double(loss) == doctest::Approx(-std::log(double(alpha[2]))).epsilon(1e-6));

    // Both functions are computed in double and rounded once to float (relative 2⁻²⁴ of
    // values of order 1), so a difference quotient with step h carries ≈ 2⁻²⁴/h of rounding
    // and h²/6·|f'''| of truncation; with h = 1e-2 and third derivatives of order 10, both
    // stay below 2e-4.
    const auto label = [&](const std::vector<float>& q) { return double(r.label_loss(q, h, 2, {})); };
    const auto along_dalpha = [&](const std::vector<float>& q) {
        std::vector<float> a(3);
        r.forward(q, h, a);
        double sum = 0;
        for (std::size_t k = 0; k < 3; ++k)
            sum += double(dalpha[k]) * double(a[k]);
        return sum;
    };
    for (std::size_t i = 0; i < p.size(); ++i) {
        CAPTURE(i);
        CHECK(std::abs(central_difference(label, p, i, 1e-2f) - double(label_gradient[i])) < 2e-4);
        CHECK(std::abs(central_difference(along_dalpha, p, i, 1e-2f) - double(alpha_gradient[i])) < 2e-4);
    }
    CHECK_THROWS_AS(r.label_loss(p, h, 3, {}), t2::error);
    CHECK_THROWS_AS(r.forward(std::span<const float>(h).first(6), alpha), t2::error);
}

TEST_CASE("adapt: a router trained on task labels routes held-out prompts of each task to its expert") {
    fixture f;
    std::vector<std::size_t> train_labels, test_labels;
    const auto train_tokens = task_prompts(8, 500, train_labels), test_tokens = task_prompts(5, 900, test_labels);
    const std::vector<std::span<const std::int32_t>> train_prompts(train_tokens.begin(), train_tokens.end()),
        test_prompts(test_tokens.begin(), test_tokens.end());

    t2::nn::router r({.dim = f.c.dim, .experts = 3, .key_dim = 8}, 21);
    t2::train::router_label_objective objective(r, t2::adapt::pooled_hidden(f.ex, f.model, train_prompts), train_labels);
    std::vector<float> gradient(r.parameters().size());
    const float before = objective.value_and_gradient(r.parameters(), gradient);
    t2::train::trainer step(t2::train::exact{}, t2::train::adam(objective.parameter_count(), {.lr = 0.05f}));
    for (int i = 0; i < 300; ++i)
        step.step(objective, r.parameters());
    const float after = objective.value_and_gradient(r.parameters(), gradient);
    CHECK(after < 0.1f * before);

    t2::adapt::self_adaptive sa(f.model, f.d, f.experts);
    t2::adapt::router_dispatcher dispatch(r);
    t2::ops::sampler greedy({.temperature = 0.f});
    const auto answers = sa.generate(f.ex, dispatch, test_prompts, greedy, {.max_new_tokens = 2, .end_token = -1});
    std::size_t routed = 0;
    for (std::size_t b = 0; b < answers.size(); ++b) {
        const auto& alpha = answers[b].decision.alpha;
        REQUIRE(alpha.size() == 3);
        routed += std::size_t(std::ranges::max_element(alpha) - alpha.begin()) == test_labels[b] ? 1 : 0;
        CHECK(answers[b].generation.tokens == f.solo(test_prompts[b], alpha, 2));
    }
    CHECK(routed == answers.size());

    const t2::nn::router other({.dim = f.c.dim, .experts = 2}, 1);
    t2::adapt::router_dispatcher mismatched(other);
    CHECK_THROWS_WITH_AS(sa.generate(f.ex, mismatched, test_prompts, greedy), doctest::Contains("router for 2 experts"),
                         t2::error);
}

TEST_CASE("io: a router file round-trips and refuses another library") {
    fixture f;
    const t2::nn::router r({.dim = f.c.dim, .experts = 3, .key_dim = 4, .temperature = 0.5f}, 8);
    const std::string path = t2_test::temp_dir() + "/router.safetensors";
    t2::io::write_router(path, r, f.experts);
    const t2::nn::router back = t2::io::read_router(path, f.experts);
    CHECK(back.config().key_dim == 4);
    CHECK(back.config().temperature == 0.5f);
    CHECK(std::ranges::equal(back.parameters(), r.parameters()));

    auto reordered = f.experts;
    std::swap(reordered[0], reordered[1]);
    CHECK_THROWS_WITH_AS(t2::io::read_router(path, reordered), doctest::Contains("another expert library"), t2::error);
    CHECK_THROWS_WITH_AS(t2::io::write_router(path, r, std::span(f.experts).first(2)),
                         doctest::Contains("a library of 2"), t2::error);
    t2::io::write_expert(path, f.experts[0]);
    CHECK_THROWS_WITH_AS(t2::io::read_router(path, f.experts), doctest::Contains("not a t2.router file"), t2::error);
}

TEST_CASE("train: the router trained end to end through α: gradient against central differences, and steps lower the loss") {
    fixture f;
    std::vector<t2::train::labelled_example> examples;
    for (std::size_t s = 0; s < 4; ++s)
        examples.push_back({f.prompt_tokens[s], f.solo(f.prompts[s], std::vector<float>{0.1f, 0.2f, 0.9f}, 3)});
    t2::nn::router r({.dim = f.c.dim, .experts = 3, .key_dim = 4, .temperature = 0.5f}, 31);
    t2::train::router_answer_objective objective(f.ex, f.model, f.d, std::span<const t2::adapt::expert>(f.experts), r,
                                                 std::span<const t2::train::labelled_example>(examples));
    const std::vector<float> p(r.parameters().begin(), r.parameters().end());
    std::vector<float> gradient(p.size());
    const float loss = objective.value_and_gradient(p, gradient);
    double norm = 0;
    for (const float g : gradient)
        norm += double(g) * double(g);
    norm = std::sqrt(norm);
    REQUIRE(norm > 1e-4);

    // Along the gradient the directional derivative is ‖g‖. The loss is an f32 forward and
    // cross-entropy (relative rounding ≈ 1e-6 of a loss of order 1), so a step of 1e-2 leaves
    // ≈ 1e-4 of rounding in the quotient and h²/6·|L'''| ≈ 1e-5 of truncation: 1% of ‖g‖ ≥ 1e-3
    // is ten times both. A gradient off by a factor, or pointing elsewhere, misses it.
    const auto along = [&](float t) {
        std::vector<float> q = p;
        for (std::size_t i = 0; i < q.size(); ++i)
            q[i] += t * float(double(gradient[i]) / norm);
        std::vector<float> ignored(q.size());
        return double(objective.value_and_gradient(q, ignored));
    };
    const double h = 1e-2;
    CHECK(std::abs((along(float(h)) - along(float(-h))) / (2 * h) - norm) < 1e-2 * norm);
    std::vector<float> one(1);
    objective.losses(p, one);
    CHECK(one[0] == doctest::Approx(loss).epsilon(1e-6));

    t2::train::trainer step(t2::train::exact{}, t2::train::adam(objective.parameter_count(), {.lr = 0.05f}));
    for (int i = 0; i < 30; ++i)
        step.step(objective, r.parameters());
    CHECK(objective.value_and_gradient(r.parameters(), gradient) < 0.9f * loss);
}
