// Gradient estimators, training steps and searches (train/): on a quadratic whose gradient
// is known, SPSA and ES point the way of the exact gradient as closely as their sample
// counts allow, and every method lowers the loss within a fixed budget, reproducibly; a
// run continued from its saved state ends where an uninterrupted one does; candidates that
// cannot be evaluated never turn into NaN. On the real stories260K model, a population
// scored in one batched pass gives each candidate the loss it has alone, and the estimators
// train an SVF adapter.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "support/check.hpp"
#include "support/stories260k.hpp"
#include "support/tolerance.hpp"
#include "t2/nn/random_init.hpp"
#include "t2/train/adapter_objective.hpp"
#include "t2/train/few_shot.hpp"
#include "t2/train/search.hpp"
#include "t2/train/trainer.hpp"

namespace {

// L(θ) = ½ Σ_j a_j (θ_j − t_j)², a_j ∈ [0.5, 2]: gradient a ⊙ (θ − t), minimum 0 at t.
// Candidates whose first coordinate is below `forbidden_below` cannot be evaluated (+∞).
struct quadratic {
    std::vector<float> curvature, target;
    float forbidden_below = -std::numeric_limits<float>::infinity();
    std::size_t evaluations = 0;

    quadratic(std::size_t n, std::uint64_t seed, float lo = -1.f, float hi = 1.f) : curvature(n), target(n) {
        t2_test::fill_uniform(curvature, seed, 0.5f, 2.f);
        t2_test::fill_uniform(target, seed + 1, lo, hi);
    }
    std::size_t parameter_count() const { return target.size(); }
    float value(std::span<const float> theta) const {
        if (theta[0] < forbidden_below)
            return std::numeric_limits<float>::infinity();
        double sum = 0;
        for (std::size_t j = 0; j < target.size(); ++j)
            sum += 0.5 * curvature[j] * (double(theta[j]) - target[j]) * (double(theta[j]) - target[j]);
        return static_cast<float>(sum);
    }
    void losses(std::span<const float> candidates, std::span<float> out) {
        const std::size_t n = parameter_count();
        REQUIRE(candidates.size() == out.size() * n);
        for (std::size_t p = 0; p < out.size(); ++p)
            out[p] = value(candidates.subspan(p * n, n));
        evaluations += out.size();
    }
    float value_and_gradient(std::span<const float> theta, std::span<float> gradient) {
        for (std::size_t j = 0; j < target.size(); ++j)
            gradient[j] = curvature[j] * (theta[j] - target[j]);
        return value(theta);
    }
};
static_assert(t2::train::population_objective<quadratic> && t2::train::differentiable_objective<quadratic>);

double cosine(std::span<const float> a, std::span<const float> b) {
    double ab = 0, aa = 0, bb = 0;
    for (std::size_t j = 0; j < a.size(); ++j) {
        ab += double(a[j]) * b[j];
        aa += double(a[j]) * a[j];
        bb += double(b[j]) * b[j];
    }
    return ab / std::sqrt(aa * bb);
}

template <class Estimator>
std::vector<float> estimate(Estimator estimator, quadratic& q, std::span<const float> theta, std::uint64_t step) {
    std::vector<float> g(theta.size());
    estimator.estimate(q, theta, std::span<float>(g), step);
    return g;
}

} // namespace

// With u ~ N(0, I_d) and a central difference (exact for a quadratic: (L₊ − L₋)/2ε = g·u),
// SPSA's estimate is (1/S) Σ (g·u_i) u_i: its component along g concentrates at |g| and the
// rest is noise of squared norm ≈ |g|²(d − 1)/S, so cos(ĝ, g) ≈ 1/√(1 + (d − 1)/S). ES's
// weights are a monotone function of g·ε_i (the difference of the centred ranks of the two
// members of a pair), whose correlation with g·ε_i is ρ ≈ √(3/π) for Gaussian g·ε (the rank
// transform of a normal variable), so cos ≈ 1/√(1 + (d − 1)/(ρ²P)). Each check asks for
// half the expected cosine: for these d, S and P the cosine's own spread (≈ (1 − cos²)/√S)
// is a few hundredths, far from that margin, and a random direction gives ≈ 0 ± 1/√d.
TEST_CASE("train: SPSA and ES point the way of the exact gradient as their sample counts predict") {
    const std::size_t d = 40;
    quadratic q(d, 11);
    std::vector<float> theta(d);
    t2_test::fill_uniform(theta, 112);
    std::vector<float> exact_g = estimate(t2::train::exact{}, q, theta, 0);
    for (const std::size_t S : {8, 64, 512}) {
        CAPTURE(S);
        const double expected = 1 / std::sqrt(1 + double(d - 1) / double(S));
        const auto g = estimate(t2::train::spsa({.epsilon = 1e-2f, .samples = S, .seed = 3}), q, theta, 5);
        CHECK(cosine(g, exact_g) > expected / 2);
        const double rho2 = 3 / 3.141592653589793;
        const auto g_es = estimate(t2::train::es({.sigma = 1e-2f, .pairs = S, .seed = 3}), q, theta, 5);
        CHECK(cosine(g_es, exact_g) > (1 / std::sqrt(1 + double(d - 1) / (rho2 * double(S)))) / 2);
    }
    // More samples, closer: the estimates converge to the gradient's direction.
    const auto few = estimate(t2::train::spsa({.samples = 4, .seed = 9}), q, theta, 0);
    const auto many = estimate(t2::train::spsa({.samples = 4096, .seed = 9}), q, theta, 0);
    CHECK(cosine(many, exact_g) > 0.99);
    CHECK(cosine(many, exact_g) > cosine(few, exact_g));
    // SPSA's magnitude is the gradient's (E[(g·u)u] = g), not only its direction.
    double norm_many = 0, norm_exact = 0;
    for (std::size_t j = 0; j < d; ++j) {
        norm_many += double(many[j]) * many[j];
        norm_exact += double(exact_g[j]) * exact_g[j];
    }
    CHECK(std::sqrt(norm_many / norm_exact) == doctest::Approx(1).epsilon(0.1));
}

TEST_CASE("train: every estimator and search lowers the loss within a fixed budget, the same way every run") {
    const std::size_t d = 24;
    const auto run_trainer = [&](auto estimator, std::size_t steps) {
        quadratic q(d, 21);
        std::vector<float> theta(d, 0.f);
        const float before = q.value(theta);
        t2::train::trainer t(std::move(estimator), t2::train::adam(d, {.lr = 0.05f}));
        for (std::size_t i = 0; i < steps; ++i)
            t.step(q, theta);
        CHECK(q.value(theta) < 0.05f * before);
        return theta;
    };
    const auto exact = run_trainer(t2::train::exact{}, 200);
    const auto spsa = run_trainer(t2::train::spsa({.epsilon = 1e-2f, .samples = 8, .seed = 1}), 300);
    const auto es = run_trainer(t2::train::es({.sigma = 2e-2f, .pairs = 8, .seed = 1}), 300);
    // Seeded: a second run is the same bit for bit; another seed is another run.
    CHECK(run_trainer(t2::train::spsa({.epsilon = 1e-2f, .samples = 8, .seed = 1}), 300) == spsa);
    CHECK(run_trainer(t2::train::es({.sigma = 2e-2f, .pairs = 8, .seed = 1}), 300) == es);
    CHECK(run_trainer(t2::train::spsa({.epsilon = 1e-2f, .samples = 8, .seed = 2}), 300) != spsa);

    // Searches, over [0, 1]^d with the optimum inside.
    const auto search = [&](auto method, std::size_t iterations) {
        quadratic q(d, 31, 0.2f, 0.8f);
        std::vector<float> origin(d, 0.f);
        const float start = q.value(origin);
        for (std::size_t i = 0; i < iterations; ++i)
            method.iterate(q);
        CHECK(method.iterations() == iterations);
        CHECK(method.best_loss() == q.value(method.best()));
        CHECK(std::all_of(method.best().begin(), method.best().end(), [](float x) { return x >= 0 && x <= 1; }));
        return std::pair(method.best_loss() / start, std::vector<float>(method.best().begin(), method.best().end()));
    };
    const auto [cem_ratio, cem_best] = search(t2::train::cem(d, {.seed = 4}), 50);
    const auto [shooting_ratio, shooting_best] = search(t2::train::random_shooting(d, {.seed = 4}), 50);
    CHECK(cem_ratio < 0.05);
    CHECK(shooting_ratio < 0.5);
    CHECK(cem_ratio < shooting_ratio); // CEM's adaptive distribution beats blind sampling
    CHECK(search(t2::train::cem(d, {.seed = 4}), 50).second == cem_best);
}

TEST_CASE("train: a run continued from its saved state ends where an uninterrupted one does") {
    const std::size_t d = 17;
    quadratic q(d, 41);
    const auto make = [&] {
        return t2::train::trainer(t2::train::spsa({.samples = 3, .seed = 8}), t2::train::adam(d, {.lr = 0.02f}),
                                  {.clip = 5.f});
    };
    std::vector<float> straight(d, 0.f), resumed(d, 0.f);
    auto a = make();
    for (int i = 0; i < 20; ++i)
        a.step(q, straight);

    auto first = make();
    for (int i = 0; i < 9; ++i)
        first.step(q, resumed);
    // What a checkpoint keeps: the parameters, the optimizer's state and its step count.
    const std::vector<float> saved_state(first.optimizer().state().begin(), first.optimizer().state().end());
    const std::size_t saved_steps = first.steps();
    auto second = make();
    std::copy(saved_state.begin(), saved_state.end(), second.optimizer().state().begin());
    second.optimizer().set_steps(saved_steps);
    for (int i = 0; i < 11; ++i)
        second.step(q, resumed);
    CHECK(resumed == straight);
}

TEST_CASE("train: candidates that cannot be evaluated are the worst, never a NaN") {
    const std::size_t d = 6;
    quadratic q(d, 51);
    // θ₀ one perturbation scale above the forbidden region: a pair with |u₀| > 1 (a third of
    // them) has a member there.
    std::vector<float> theta(d, 0.f);
    q.forbidden_below = 0.f;
    theta[0] = 0.02f;
    std::vector<float> g(d);
    const float spsa_loss =
        t2::train::spsa({.epsilon = 0.02f, .samples = 16, .seed = 2}).estimate(q, theta, std::span<float>(g), 0);
    CHECK(std::isfinite(spsa_loss));
    CHECK(std::all_of(g.begin(), g.end(), [](float x) { return std::isfinite(x); }));
    const float es_loss = t2::train::es({.sigma = 0.02f, .pairs = 8, .seed = 2}).estimate(q, theta, std::span<float>(g), 0);
    CHECK(std::isfinite(es_loss));
    CHECK(std::all_of(g.begin(), g.end(), [](float x) { return std::isfinite(x); }));
    t2::train::cem search(d, {.lo = -1.f, .hi = 1.f, .seed = 2});
    for (int i = 0; i < 5; ++i)
        search.iterate(q);
    CHECK(search.best()[0] >= 0.f);
    CHECK(std::isfinite(search.best_loss()));
    // Nothing evaluable: SPSA has no slope to report.
    q.forbidden_below = 10.f;
    CHECK(t2_test::contains(t2_test::error_message([&] {
        t2::train::spsa({.samples = 2}).estimate(q, theta, std::span<float>(g), 0);
    }), "no perturbation"));

    // Ranks: ties share their mean, non-finite last.
    const std::vector<float> losses{3.f, 1.f, NAN, 1.f, INFINITY};
    const auto ranks = t2::train::detail::centred_ranks(losses);
    CHECK(ranks == std::vector<float>{0.f, -0.375f, 0.375f, -0.375f, 0.375f});
}

TEST_CASE("train: bad options and mismatched spans are errors") {
    quadratic q(4, 61);
    std::vector<float> theta(4), g(3);
    CHECK_THROWS_AS(t2::train::spsa({.epsilon = 0.f}), t2::error);
    CHECK_THROWS_AS(t2::train::spsa({.samples = 0}), t2::error);
    CHECK_THROWS_AS(t2::train::es({.sigma = -1.f}), t2::error);
    CHECK_THROWS_AS(t2::train::cem(4, {.elites = 1}), t2::error);
    CHECK_THROWS_AS(t2::train::cem(4, {.population = 4, .elites = 5}), t2::error);
    CHECK_THROWS_AS(t2::train::random_shooting(4, {.lo = 1.f, .hi = 0.f}), t2::error);
    CHECK(t2_test::contains(t2_test::error_message([&] {
        t2::train::spsa().estimate(q, theta, std::span<float>(g), 0);
    }), "a gradient of 3"));
    t2::train::trainer t(t2::train::exact{}, t2::train::sgd(4));
    std::vector<float> five(5);
    CHECK_THROWS_AS(t.step(q, five), t2::error);
}

namespace {

// The SVF model of stories260K and a batch of three random sequences of unequal length.
struct svf_stories {
    const t2_test::decomposed_stories& s = t2_test::decomposed_stories260k();
    const t2::nn::llama<t2::nn::llama_config, t2::adapt::svf> model =
        t2::adapt::make_svf_model(s.config, s.weights, s.decomposition);
    const std::vector<std::vector<std::int32_t>> tokens{t2_test::random_tokens(9, s.config.vocab_size, 1),
                                                        t2_test::random_tokens(14, s.config.vocab_size, 2),
                                                        t2_test::random_tokens(5, s.config.vocab_size, 3)};
    const std::vector<std::span<const std::int32_t>> spans{tokens.begin(), tokens.end()};
    const t2::nn::training_batch batch{spans};
    t2::exec::thread_pool pool{2};
    const t2::exec::threads<t2::exec::simd<>> ex{pool};
};

} // namespace

TEST_CASE("train: a population scored in one batched pass gives each candidate the loss it has alone") {
    const svf_stories fixture;
    // Plain references, not a structured binding: Clang 14 cannot capture bindings in lambdas.
    const auto& s = fixture.s;
    const auto& model = fixture.model;
    const auto& batch = fixture.batch;
    const auto& ex = fixture.ex;
    const t2::adapt::svf_adapter_options options{.rescale = true};
    auto adapter = t2::adapt::make_svf_adapter(model, options);
    const std::size_t n = adapter.parameters().size();

    // Five candidates, the third with one matrix's z all zero: rescaling undefined.
    const std::size_t P = 5;
    std::vector<float> candidates(P * n);
    t2_test::fill_uniform(candidates, 70, 0.5f, 1.5f);
    const auto first_matrix = adapter.layout()[0];
    std::fill_n(candidates.begin() + 2 * n + first_matrix.offset, first_matrix.size, 0.f);

    // Other row counts pick other gemm kernels and x·V runs over other rows: the logits
    // differ within the derived order bound (with the rank-r factored product on the chain),
    // and a mean cross-entropy by at most twice its largest element.
    const t2::nn::llama<t2::nn::llama_config> dense(s.config, s.weights);
    const auto logit_bound = t2_test::logit_order_tolerance(dense, 14, 2 * s.config.hidden_dim);
    const double loss_bound = 2 * double(*std::max_element(logit_bound.begin(), logit_bound.end()));

    for (const std::size_t max_rows : {std::size_t{4096}, batch.rows(), 2 * batch.rows() + 1}) {
        CAPTURE(max_rows); // one forward, one per candidate, two per forward
        t2::train::adapter_objective objective(ex, model, adapter, batch, t2::nn::next_token_cross_entropy{},
                                               [&] { return t2::adapt::make_svf_adapter(model, options); },
                                               {.max_rows = max_rows});
        std::vector<float> losses(P);
        objective.losses(candidates, losses);
        for (std::size_t c = 0; c < P; ++c) {
            CAPTURE(c);
            if (c == 2) {
                CHECK(losses[c] == std::numeric_limits<float>::infinity());
                continue;
            }
            auto alone = t2::adapt::make_svf_adapter(model, options);
            std::copy_n(candidates.begin() + c * n, n, alone.parameters().begin());
            const float want = t2::nn::batch_loss(ex, model, batch, t2::nn::next_token_cross_entropy{}, &alone);
            T2_CHECK_WITHIN(double(losses[c]), double(want), loss_bound);
        }
        CHECK(losses[0] != losses[1]);
    }
    // The exact objective is forward_backward's loss and gradient.
    t2::train::adapter_objective objective(ex, model, adapter, batch, t2::nn::next_token_cross_entropy{},
                                           [&] { return t2::adapt::make_svf_adapter(model, options); });
    std::vector<float> theta(candidates.begin(), candidates.begin() + n), g(n);
    const float loss = objective.value_and_gradient(theta, g);
    auto reference = t2::adapt::make_svf_adapter(model, options);
    std::copy(theta.begin(), theta.end(), reference.parameters().begin());
    CHECK(t2::nn::forward_backward(ex, model, reference, batch, t2::nn::next_token_cross_entropy{}) == loss);
    CHECK(std::equal(g.begin(), g.end(), reference.gradient().begin()));
    // A pool adapter of another layout is refused.
    t2::train::adapter_objective wrong(ex, model, adapter, batch, t2::nn::next_token_cross_entropy{}, [&] {
        return t2::adapt::make_mixture_adapter(model, s.decomposition, std::vector<t2::adapt::expert>{}, {});
    });
    std::vector<float> one(1);
    CHECK_THROWS_AS(wrong.losses(std::span<const float>(candidates).first(n), one), t2::error);
}

TEST_CASE("train: exact, SPSA and ES steps train an SVF adapter of stories260K") {
    const svf_stories fixture;
    const auto& model = fixture.model;
    const auto& batch = fixture.batch;
    const auto& ex = fixture.ex;
    const t2::adapt::svf_adapter_options options{.parametrization = t2::adapt::svf_parametrization::sigmoid,
                                                 .rescale = true, .seed = 5};

    const auto train = [&](auto estimator, float lr, std::size_t steps) {
        auto adapter = t2::adapt::make_svf_adapter(model, options);
        t2::train::adapter_objective objective(ex, model, adapter, batch, t2::nn::next_token_cross_entropy{},
                                               [&] { return t2::adapt::make_svf_adapter(model, options); });
        const float before = t2::nn::batch_loss(ex, model, batch, t2::nn::next_token_cross_entropy{}, &adapter);
        t2::train::trainer t(std::move(estimator), t2::train::adam(adapter.parameters().size(), {.lr = lr}));
        for (std::size_t i = 0; i < steps; ++i)
            t.step(objective, adapter.parameters());
        const float after = t2::nn::batch_loss(ex, model, batch, t2::nn::next_token_cross_entropy{}, &adapter);
        CAPTURE(before);
        CHECK(after < before - 0.05f);
        return after;
    };
    train(t2::train::exact{}, 0.05f, 10);
    train(t2::train::spsa({.epsilon = 1e-2f, .samples = 8, .seed = 1}), 0.05f, 10);
    train(t2::train::es({.sigma = 5e-2f, .pairs = 8, .seed = 1}), 0.05f, 10);
}

namespace {

// A tiny random model, three random experts over all its matrices, and shots labelled by the
// greedy answers of the mixture at a hidden α*: a mixture that answers every shot exists.
struct few_shot_task {
    const t2::nn::llama_config c{.dim = 16, .hidden_dim = 24, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                                 .vocab_size = 13, .seq_len = 10};
    t2::exec::simd<> ex{};
    t2::nn::llama_weights<t2::nn::dense<float>> weights = t2::nn::random_weights(c, 81);
    t2::adapt::decomposition d = t2::adapt::decompose(ex, c, weights, t2::adapt::selection::all());
    t2::nn::llama<t2::nn::llama_config, t2::adapt::svf> model = t2::adapt::make_svf_model(c, weights, d);
    std::vector<t2::adapt::expert> experts = make_experts();
    t2::adapt::svf_adapter adapter = make_mixture();
    std::vector<float> alpha_star{0.5f, 0.1f, 0.9f};
    std::vector<t2::train::labelled_example> shots = label(10, 4);

    std::vector<t2::adapt::expert> make_experts() const {
        std::vector<t2::adapt::expert> out(3);
        for (std::size_t k = 0; k < out.size(); ++k) {
            out[k].base_model_hash = d.base_model_hash;
            out[k].rescale = true;
            for (const auto& m : d.matrices) {
                std::vector<float> z(m.factors.rank());
                t2_test::fill_uniform(z, 90 + 10 * k + m.slot.layer * 3 + std::size_t(m.slot.which), -1.f, 3.f);
                out[k].z.emplace_back(m.name, z);
            }
        }
        return out;
    }
    t2::adapt::svf_adapter make_mixture() const { return t2::adapt::make_mixture_adapter(model, d, experts, {.rescale = true}); }
    t2::adapt::svf_adapter mixture_at(std::span<const float> alpha) const {
        auto a = make_mixture();
        t2::adapt::set_mixture_alpha(a, alpha);
        return a;
    }
    // Shot `shot`'s greedy answer under adapter `a`, decoded alone.
    t2::nn::generation greedy_answer(const t2::adapt::svf_adapter& a, std::size_t shot, std::size_t budget,
                                     std::int32_t end) const {
        t2::ops::sampler greedy({.temperature = 0.f});
        const t2::adapt::svf_adapter* pointer = &a;
        const std::span<const std::int32_t> prompt = shots[shot].prompt;
        return t2::nn::generate(ex, model, std::span(&prompt, 1), greedy, {.max_new_tokens = budget, .end_token = end},
                                t2::nn::no_stop_condition{}, std::span(&pointer, 1))[0];
    }

    std::vector<t2::train::labelled_example> label(std::size_t shots_count, std::size_t answer_length) {
        t2::adapt::set_mixture_alpha(adapter, alpha_star);
        std::vector<t2::train::labelled_example> out;
        std::vector<std::vector<std::int32_t>> prompts;
        for (std::size_t s = 0; s < shots_count; ++s) {
            auto p = t2_test::random_tokens(3, c.vocab_size, 100 + s);
            p[0] = t2::nn::bos_token;
            prompts.push_back(p);
        }
        const std::vector<std::span<const std::int32_t>> views(prompts.begin(), prompts.end());
        t2::ops::sampler greedy({.temperature = 0.f});
        const t2::adapt::svf_adapter* a = &adapter;
        const auto answers = t2::nn::generate(ex, model, std::span(views), greedy,
                                              {.max_new_tokens = answer_length, .end_token = -1},
                                              t2::nn::no_stop_condition{}, std::span(&a, 1));
        for (std::size_t s = 0; s < shots_count; ++s)
            out.push_back({prompts[s], answers[s].tokens});
        return out;
    }
};

} // namespace

TEST_CASE("train: the few-shot score counts greedy answers that match, ties broken by the likelihood") {
    few_shot_task t;
    // A judge that accepts the labelled answer's first two tokens.
    const auto judge = [&](std::size_t shot, std::span<const std::int32_t> answer) {
        return answer.size() >= 2 && std::ranges::equal(answer.first(2), std::span(t.shots[shot].answer).first(2));
    };
    t2::train::few_shot_objective objective(t.ex, t.model, t.adapter, t.shots, [&] { return t.make_mixture(); },
                                            {.end_token = -1}, judge);
    REQUIRE(objective.parameter_count() == 3);
    // α*, the base's neighbourhood, one that cannot run (all α = 0), and random points; the
    // row budget splits the population over several passes.
    std::vector<float> candidates{0.5f, 0.1f, 0.9f, 0.f, 0.f, 0.f, 0.1f, 0.8f, 0.1f};
    const std::size_t P = 7;
    candidates.resize(P * 3);
    t2_test::fill_uniform(std::span(candidates).subspan(9), 120, 0.f, 1.f);
    std::vector<float> losses(P);
    objective.losses(candidates, losses);
    CHECK(objective.scores()[0].correct == t.shots.size()); // the labels' own mixture
    // Without a judge, exact matches are decided by teacher forcing, without generating.
    t2::train::few_shot_objective exact(t.ex, t.model, t.adapter, t.shots, [&] { return t.make_mixture(); },
                                        {.end_token = -1});
    std::vector<float> exact_losses(P);
    exact.losses(candidates, exact_losses);
    CHECK(exact.scores()[0].correct == t.shots.size());
    CHECK(losses[1] == std::numeric_limits<float>::infinity());
    for (std::size_t c = 0; c < P; ++c) {
        CAPTURE(c);
        if (c == 1)
            continue;
        // Each candidate alone: its greedy answers and its labelled answers' likelihood.
        const auto alone = t.mixture_at(std::span(candidates).subspan(c * 3, 3));
        std::size_t correct = 0, exact_matches = 0;
        double log_likelihood = 0, tokens = 0;
        for (std::size_t s = 0; s < t.shots.size(); ++s) {
            const std::span<const std::int32_t> prompt = t.shots[s].prompt;
            const auto answer = t.greedy_answer(alone, s, 4, -1);
            correct += judge(s, answer.tokens) ? 1 : 0;
            exact_matches += answer.tokens == t.shots[s].answer ? 1 : 0;
            auto sequence = t.shots[s].prompt;
            sequence.insert(sequence.end(), t.shots[s].answer.begin(), t.shots[s].answer.end());
            std::vector<float> mask(sequence.size() - 1, 0.f);
            std::fill(mask.begin() + std::ptrdiff_t(prompt.size() - 1), mask.end(), 1.f);
            log_likelihood -= double(t2::nn::sequence_loss(t.ex, t.model, sequence, mask, &alone)) * double(t.shots[s].answer.size());
            tokens += double(t.shots[s].answer.size());
        }
        const auto& got = objective.scores()[c];
        CHECK(got.correct == correct);
        CHECK(exact.scores()[c].correct == exact_matches);
        CHECK(exact.scores()[c].mean_log_likelihood == got.mean_log_likelihood); // the same forward
        // Packed with other sequences, the logits are the same model in another summation
        // order: each token's log-probability within twice the logit bound.
        const t2::nn::llama<t2::nn::llama_config> dense(t.c, t.weights);
        const auto bound = t2_test::logit_order_tolerance(dense, 6, 2 * t.c.hidden_dim);
        T2_CHECK_WITHIN(got.mean_log_likelihood, log_likelihood / tokens,
                        2 * double(*std::max_element(bound.begin(), bound.end())));
        CHECK(losses[c] == doctest::Approx(-got.value() / double(t.shots.size())).epsilon(1e-6));
    }
    // With an end token, greedy decoding must stop right after the label. The random model
    // repeats itself, so one shot is relabelled: its answer is α*'s greedy tokens up to the
    // first new one, E, which becomes the end token.
    const auto star = t.mixture_at(t.alpha_star);
    auto ended_shots = t.shots;
    std::int32_t E = -1;
    for (std::size_t s = 0; s < t.shots.size() && E < 0; ++s) {
        const auto tokens = t.greedy_answer(star, s, 5, -1).tokens;
        for (std::size_t j = 1; j < tokens.size() && E < 0; ++j)
            if (std::find(tokens.begin(), tokens.begin() + std::ptrdiff_t(j), tokens[j]) == tokens.begin() + std::ptrdiff_t(j)) {
                ended_shots[s].answer.assign(tokens.begin(), tokens.begin() + std::ptrdiff_t(j));
                E = tokens[j];
            }
    }
    REQUIRE(E >= 0);
    t2::train::few_shot_objective ended(t.ex, t.model, t.adapter, ended_shots, [&] { return t.make_mixture(); },
                                        {.end_token = E});
    ended.losses(candidates, exact_losses);
    CHECK(ended.scores()[0].correct >= 1);
    for (std::size_t c = 0; c < P; ++c) {
        CAPTURE(c);
        if (c == 1)
            continue;
        const auto alone = t.mixture_at(std::span(candidates).subspan(c * 3, 3));
        std::size_t generated = 0;
        for (std::size_t s = 0; s < t.shots.size(); ++s) {
            auto want = ended_shots[s].answer;
            want.push_back(E);
            generated += t.greedy_answer(alone, s, want.size(), E).tokens == want ? 1 : 0;
        }
        CHECK(ended.scores()[c].correct == generated);
    }

    // Lexicographic: one more correct answer outweighs any likelihood.
    CHECK(t2::train::few_shot_score{3, -50.0}.value() > t2::train::few_shot_score{2, 0.0}.value());
    CHECK(t2::train::few_shot_score{2, -1.0}.value() > t2::train::few_shot_score{2, -2.0}.value());
    CHECK_THROWS_AS(t2::train::few_shot_objective(t.ex, t.model, t.adapter, {}, [&] { return t.make_mixture(); }),
                    t2::error);
}

TEST_CASE("train: CEM over mixture weights finds a mixture that answers every shot") {
    few_shot_task t;
    t2::train::few_shot_objective objective(t.ex, t.model, t.adapter, t.shots, [&] { return t.make_mixture(); },
                                            {.end_token = -1});
    // The base mixture (μ₀ = 1/K) does not answer every shot; CEM, as the reference runs it.
    std::vector<float> start(3, 1.f / 3);
    CHECK(objective.score(start).correct < t.shots.size());
    t2::train::cem search(3, {.seed = 5});
    float previous = std::numeric_limits<float>::infinity();
    for (int i = 0; i < 50; ++i) { // the reference's iteration count
        search.iterate(objective);
        CHECK(search.best_loss() <= previous); // member 0 is the previous best
        previous = search.best_loss();
        if (objective.score(search.best()).correct == t.shots.size())
            break;
    }
    const auto best = objective.score(search.best());
    INFO("best α " << search.best()[0] << ", " << search.best()[1] << ", " << search.best()[2] << " after "
                   << search.iterations() << " iterations");
    CHECK(best.correct == t.shots.size());
}
