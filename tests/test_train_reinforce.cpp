// REINFORCE (train/reinforce.hpp) on a tiny model whose answers can be enumerated: with
// sampled rollouts its gradient is an unbiased estimate of −∇E_π[r], checked against the
// expectation computed over every answer; its loss is the formula it claims, over answer
// rows only; rewards are shaped as documented; a run is reproducible from its seed; the KL
// term vanishes at the base model; and training with it raises the mean reward.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "support/check.hpp"
#include "support/tolerance.hpp"
#include "t2/adapt/decomposition.hpp"
#include "t2/adapt/model.hpp"
#include "t2/nn/random_init.hpp"
#include "t2/train/optimizers.hpp"
#include "t2/train/reinforce.hpp"
#include "t2/train/trainer.hpp"

namespace {

using t2::nn::llama_config;

// Five tokens, answers of two: 25 possible answers, every one enumerable.
const llama_config tiny{.dim = 16, .hidden_dim = 24, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2,
                        .vocab_size = 5, .seq_len = 8};
constexpr std::size_t answer_length = 2;

// A reward with several levels and both signs, so that no baseline hides an error.
float table_reward(std::span<const std::int32_t> answer) {
    if (answer.size() != answer_length)
        return 0.f;
    return float(answer[0] * 2 - answer[1]) / 4.f - 0.5f;
}

struct tiny_svf {
    const t2::exec::simd<> ex{};
    t2::nn::llama_weights<t2::nn::dense<float>> weights = t2::nn::random_weights(tiny, 21);
    t2::adapt::decomposition decomposition =
        t2::adapt::decompose(ex, tiny, weights, t2::adapt::selection::all());
    t2::nn::llama<llama_config, t2::adapt::svf> model = t2::adapt::make_svf_model(tiny, weights, decomposition);
    t2::adapt::svf_adapter adapter = t2::adapt::make_svf_adapter(model);
    std::vector<std::int32_t> prompt{t2::nn::bos_token, 3, 2};

    tiny_svf() { t2_test::fill_uniform(adapter.parameters(), 22, 0.5f, 1.5f); }
};

// Every answer y of answer_length tokens after the prompt, with log π(y) in double.
struct enumeration {
    std::vector<std::vector<std::int32_t>> sequences; // prompt + y
    std::vector<double> log_probability;
};

template <class Model, class Adapter>
enumeration enumerate(const t2::exec::simd<>& ex, const Model& model, const Adapter& adapter,
                      const std::vector<std::int32_t>& prompt) {
    enumeration e;
    const std::size_t V = tiny.vocab_size;
    for (std::size_t y0 = 0; y0 < V; ++y0)
        for (std::size_t y1 = 0; y1 < V; ++y1) {
            auto s = prompt;
            s.push_back(std::int32_t(y0));
            s.push_back(std::int32_t(y1));
            e.sequences.push_back(s);
        }
    std::vector<std::span<const std::int32_t>> views(e.sequences.begin(), e.sequences.end());
    const t2::nn::training_batch batch(views);
    const auto logits = t2::nn::batch_logits(ex, model, batch, &adapter);
    for (std::size_t b = 0; b < batch.sequences(); ++b) {
        double lp = 0;
        for (std::size_t r = batch.offsets()[b] + prompt.size() - 1; r < batch.offsets()[b + 1]; ++r) {
            const auto row = logits.row(r);
            double top = row[0], sum = 0;
            for (std::size_t j = 0; j < V; ++j)
                top = std::max(top, double(row[j]));
            for (std::size_t j = 0; j < V; ++j)
                sum += std::exp(double(row[j]) - top);
            lp += double(row[std::size_t(batch.targets()[r])]) - top - std::log(sum);
        }
        e.log_probability.push_back(lp);
    }
    return e;
}

std::vector<float> answer_mask(std::size_t prompt_length) {
    std::vector<float> mask(prompt_length - 1 + answer_length, 0.f);
    std::fill(mask.begin() + std::ptrdiff_t(prompt_length - 1), mask.end(), 1.f);
    return mask;
}

double squared_norm(std::span<const double> v) {
    double s = 0;
    for (const double x : v)
        s += x * x;
    return s;
}

auto reward_of_answer() {
    return [](std::size_t, std::span<const std::int32_t> answer) { return table_reward(answer); };
}

} // namespace

TEST_CASE("reinforce: sampled rollouts estimate the gradient of the expected reward without bias") {
    tiny_svf t;
    const std::size_t n = t.adapter.parameters().size();
    const auto e = enumerate(t.ex, t.model, t.adapter, t.prompt);
    const std::size_t Y = e.sequences.size();
    const std::vector<float> mask = answer_mask(t.prompt.size());

    // ∇J = Σ_y π(y)·r(y)·∇log π(y), and the per-sample second moment Σ_y π(y)·‖r(y)∇log π(y)‖²,
    // from one backward per answer: reinforce{1} over y's answer rows is −log π(y).
    std::vector<double> grad_J(n, 0.0);
    double second_moment = 0, total_probability = 0;
    for (std::size_t y = 0; y < Y; ++y) {
        const double p = std::exp(e.log_probability[y]), r = table_reward(std::span(e.sequences[y]).subspan(t.prompt.size()));
        total_probability += p;
        t.adapter.zero_gradient();
        const float one = 1.f;
        t2::nn::forward_backward(t.ex, t.model, t.adapter, t2::nn::training_batch(std::span<const std::int32_t>(e.sequences[y])),
                                 t2::nn::reinforce{std::span(&one, 1), mask});
        double sq = 0;
        for (std::size_t i = 0; i < n; ++i) {
            const double g = -double(t.adapter.gradient()[i]); // ∇log π(y)
            grad_J[i] += p * r * g;
            sq += (r * g) * (r * g);
        }
        second_moment += p * sq;
    }
    CHECK(std::abs(total_probability - 1) < 1e-5); // the enumeration is the whole space
    const double variance = second_moment - squared_norm(grad_J); // E‖r∇log π − ∇J‖²
    REQUIRE(variance > 0);

    // ∇J by central differences of J along ∇J itself (scaled to the length of a random
    // direction, so that the derivative stands well above the rounding): J is a sum over answers in
    // double of probabilities from f32 logits, so each evaluation is off by at most
    // ε_J = Σ_y π|r|·2·answer_length·(logit bound) (−log softmax moves by at most twice its
    // logits' error). Central differences at h and 2h differ by 3ch² in truncation, so
    // |D(h) − J'| ≤ |D(2h) − D(h)| + 2ε_J/h bounds both parts.
    {
        std::vector<float> u(n);
        const double length = std::sqrt(squared_norm(grad_J));
        for (std::size_t i = 0; i < n; ++i)
            u[i] = float(grad_J[i] / length * std::sqrt(double(n)));
        const std::vector<float> at(t.adapter.parameters().begin(), t.adapter.parameters().end());
        const auto J = [&](double s) {
            for (std::size_t i = 0; i < n; ++i)
                t.adapter.parameters()[i] = float(double(at[i]) + s * u[i]);
            const auto shifted = enumerate(t.ex, t.model, t.adapter, t.prompt);
            double value = 0;
            for (std::size_t y = 0; y < Y; ++y)
                value += std::exp(shifted.log_probability[y]) *
                         table_reward(std::span(shifted.sequences[y]).subspan(t.prompt.size()));
            return value;
        };
        const double h = 5e-3;
        const double d1 = (J(h) - J(-h)) / (2 * h), d2 = (J(2 * h) - J(-2 * h)) / (4 * h);
        std::copy(at.begin(), at.end(), t.adapter.parameters().begin());
        double analytic = 0;
        for (std::size_t i = 0; i < n; ++i)
            analytic += grad_J[i] * u[i];
        const t2::nn::llama<llama_config> dense(tiny, t.weights);
        const auto bound = t2_test::logit_order_tolerance(dense, t.prompt.size() + answer_length, 2 * tiny.hidden_dim);
        double weighted = 0;
        for (std::size_t y = 0; y < Y; ++y)
            weighted += std::exp(e.log_probability[y]) *
                        std::abs(table_reward(std::span(e.sequences[y]).subspan(t.prompt.size())));
        const double eps_J = weighted * 2 * answer_length * double(*std::max_element(bound.begin(), bound.end()));
        INFO("directional derivative: analytic " << analytic << ", differences " << d1 << " and " << d2);
        CHECK(std::abs(d1 - analytic) <= std::abs(d2 - d1) + 2 * eps_J / h);
        CHECK(std::abs(analytic) > 10 * (std::abs(d2 - d1) + 2 * eps_J / h)); // the check has teeth
    }

    // N sampled rollouts: ĝ = −(1/N)·Σ_i r_i∇log π(y_i), so E[ĝ] = −∇J and E‖ĝ + ∇J‖² = variance/N.
    // By Markov's inequality ‖ĝ + ∇J‖² exceeds k²·variance/N with probability at most 1/k²;
    // k = 10 leaves 1%, for a seed fixed once. N makes the allowance well below ‖∇J‖.
    const std::size_t N = 32768;
    const double k = 10, allowed = k * std::sqrt(variance / double(N));
    const auto error_at = [&](float temperature) {
        const std::vector<std::span<const std::int32_t>> prompts{t.prompt};
        t2::train::reinforce_objective objective(t.ex, t.model, t.adapter, prompts, reward_of_answer(),
            {.max_new_tokens = answer_length, .temperature = temperature, .samples_per_prompt = N, .end_token = -1, .seed = 24});
        std::vector<float> g(n);
        const std::vector<float> at(t.adapter.parameters().begin(), t.adapter.parameters().end());
        objective.value_and_gradient(at, g);
        std::vector<double> diff(n);
        for (std::size_t i = 0; i < n; ++i)
            diff[i] = double(g[i]) + grad_J[i];
        return std::sqrt(squared_norm(diff));
    };
    const double sampled = error_at(1.f);
    INFO("‖∇J‖ = " << std::sqrt(squared_norm(grad_J)) << ", ‖ĝ + ∇J‖ = " << sampled << ", allowed " << allowed);
    CHECK(sampled <= allowed);
    CHECK(allowed < 0.5 * std::sqrt(squared_norm(grad_J))); // the bound says something
    // Rollouts from another distribution than π (greedy) estimate something else.
    CHECK(error_at(0.f) > allowed);
}

TEST_CASE("reinforce: the loss is the reward-weighted log-likelihood of the answers, over answer rows only") {
    tiny_svf t;
    const std::vector<std::int32_t> second{t2::nn::bos_token, 4}, third{t2::nn::bos_token, 0, 1, 2};
    const std::vector<std::span<const std::int32_t>> prompts{t.prompt, second, third};
    const auto reward = [](std::size_t prompt, std::span<const std::int32_t> answer) {
        return table_reward(answer) + float(prompt);
    };
    t2::train::reinforce_objective objective(t.ex, t.model, t.adapter, prompts, reward,
                                             {.max_new_tokens = answer_length, .temperature = 1.f,
                                              .samples_per_prompt = 3, .end_token = -1, .seed = 30});
    std::vector<float> g(t.adapter.parameters().size());
    const float loss = objective.value_and_gradient(t.adapter.parameters(), g);
    REQUIRE(objective.rollouts().size() == 9);
    // L = (1/B)·Σ_b r_b·(−log π(y_b)), log π(y_b) as generation scored it while decoding: the
    // same model in another summation order, each of the 2 answer tokens' −log π within twice
    // the logit bound (support/tolerance.hpp).
    const t2::nn::llama<llama_config> dense(tiny, t.weights);
    const auto bound = t2_test::logit_order_tolerance(dense, 2 + third.size(), 2 * tiny.hidden_dim);
    const double per_token = 2 * double(*std::max_element(bound.begin(), bound.end()));
    double want = 0, allowed = 0, reward_sum = 0;
    for (std::size_t b = 0; b < 9; ++b) {
        const auto& r = objective.rollouts()[b];
        CHECK(r.prompt == b / 3);
        CHECK(r.answer.size() == answer_length);
        CHECK(r.reward == reward(r.prompt, r.answer));
        CHECK(r.weight == r.reward); // no shaping by default
        want += double(r.weight) * -r.log_probability / 9;
        allowed += std::abs(double(r.weight)) * answer_length * per_token / 9;
        reward_sum += r.reward;
    }
    T2_CHECK_WITHIN(double(loss), want, allowed);
    CHECK(objective.mean_reward() == doctest::Approx(reward_sum / 9).epsilon(1e-6));
    // The gradient is forward_backward's over prompt + answer, answer rows only.
    std::vector<std::vector<std::int32_t>> sequences;
    std::vector<float> mask, weights;
    for (const auto& r : objective.rollouts()) {
        auto s = std::vector<std::int32_t>(prompts[r.prompt].begin(), prompts[r.prompt].end());
        for (std::size_t i = 0; i + 1 < s.size(); ++i)
            mask.push_back(0.f);
        for (std::size_t i = 0; i < r.answer.size(); ++i)
            mask.push_back(1.f);
        s.insert(s.end(), r.answer.begin(), r.answer.end());
        sequences.push_back(s);
        weights.push_back(r.weight);
    }
    const std::vector<std::span<const std::int32_t>> views(sequences.begin(), sequences.end());
    t.adapter.zero_gradient();
    CHECK(t2::nn::forward_backward(t.ex, t.model, t.adapter, t2::nn::training_batch(views),
                                   t2::nn::reinforce{weights, mask}) == loss);
    CHECK(std::equal(g.begin(), g.end(), t.adapter.gradient().begin()));
}

TEST_CASE("reinforce: rewards are normalized and clipped as asked; equal rewards give no gradient") {
    tiny_svf t;
    const std::vector<std::span<const std::int32_t>> prompts{t.prompt};
    std::vector<float> g(t.adapter.parameters().size());
    const t2::train::reinforce_options sampled{.max_new_tokens = answer_length, .temperature = 1.f,
                                               .samples_per_prompt = 16, .end_token = -1, .seed = 40};
    SUBCASE("normalized: mean 0, standard deviation 1") {
        auto options = sampled;
        options.normalize_rewards = true;
        t2::train::reinforce_objective objective(t.ex, t.model, t.adapter, prompts, reward_of_answer(), options);
        objective.value_and_gradient(t.adapter.parameters(), g);
        double mean = 0, square = 0;
        for (const auto& r : objective.rollouts())
            mean += r.weight / 16.0;
        for (const auto& r : objective.rollouts())
            square += (r.weight - mean) * (r.weight - mean) / 16.0;
        CHECK(std::abs(mean) < 1e-6);
        CHECK(std::sqrt(square) == doctest::Approx(1).epsilon(1e-5));
    }
    SUBCASE("clipped") {
        auto options = sampled;
        options.reward_clip = 0.25f;
        t2::train::reinforce_objective objective(t.ex, t.model, t.adapter, prompts, reward_of_answer(), options);
        objective.value_and_gradient(t.adapter.parameters(), g);
        bool clipped = false;
        for (const auto& r : objective.rollouts()) {
            CHECK(r.weight == std::clamp(r.reward, -0.25f, 0.25f));
            clipped = clipped || r.weight != r.reward;
        }
        CHECK(clipped);
    }
    SUBCASE("normalizing equal rewards leaves nothing to learn") {
        auto options = sampled;
        options.normalize_rewards = true;
        t2::train::reinforce_objective objective(t.ex, t.model, t.adapter, prompts,
                                                 [](std::size_t, std::span<const std::int32_t>) { return 1.f; }, options);
        CHECK(objective.value_and_gradient(t.adapter.parameters(), g) == 0.f);
        CHECK(std::all_of(g.begin(), g.end(), [](float x) { return x == 0.f; }));
    }
    SUBCASE("a stop condition ends answers early, per prompt") {
        const std::vector<std::int32_t> other{t2::nn::bos_token, 1};
        const std::vector<std::span<const std::int32_t>> two{t.prompt, other};
        auto options = sampled;
        options.max_new_tokens = 4;
        options.samples_per_prompt = 3;
        options.stop = [](std::size_t prompt, std::span<const std::int32_t> tokens) { return tokens.size() == prompt + 1; };
        t2::train::reinforce_objective objective(t.ex, t.model, t.adapter, two, reward_of_answer(), options);
        objective.value_and_gradient(t.adapter.parameters(), g);
        for (const auto& r : objective.rollouts())
            CHECK(r.answer.size() == r.prompt + 1);
    }
    SUBCASE("a non-finite reward is refused") {
        t2::train::reinforce_objective objective(t.ex, t.model, t.adapter, prompts,
                                                 [](std::size_t, std::span<const std::int32_t>) { return NAN; }, sampled);
        CHECK(t2_test::contains(t2_test::error_message([&] { objective.value_and_gradient(t.adapter.parameters(), g); }),
                                "rewards must be finite"));
    }
    SUBCASE("bad options are refused") {
        auto options = sampled;
        options.samples_per_prompt = 0;
        CHECK_THROWS_AS(t2::train::reinforce_objective(t.ex, t.model, t.adapter, prompts, reward_of_answer(), options),
                        t2::error);
        options = sampled;
        options.kl_coefficient = -1.f;
        CHECK_THROWS_AS(t2::train::reinforce_objective(t.ex, t.model, t.adapter, prompts, reward_of_answer(), options),
                        t2::error);
    }
}

TEST_CASE("reinforce: the same seed gives the same rollouts and gradient; a resumed step continues the draws") {
    tiny_svf t;
    const std::vector<std::span<const std::int32_t>> prompts{t.prompt};
    const t2::train::reinforce_options options{.max_new_tokens = 4, .temperature = 1.f, .samples_per_prompt = 8,
                                               .end_token = 0, .seed = 50};
    const std::size_t n = t.adapter.parameters().size();
    const std::vector<float> at(t.adapter.parameters().begin(), t.adapter.parameters().end());
    const auto run = [&](std::uint64_t first_step, std::size_t steps) {
        t2::train::reinforce_objective objective(t.ex, t.model, t.adapter, prompts, reward_of_answer(), options);
        objective.set_rollout_step(first_step);
        std::vector<float> g(n);
        for (std::size_t s = 0; s < steps; ++s)
            objective.value_and_gradient(at, g);
        CHECK(objective.rollout_step() == first_step + steps);
        std::vector<std::vector<std::int32_t>> answers;
        for (const auto& r : objective.rollouts())
            answers.push_back(r.answer);
        return std::pair(g, answers);
    };
    const auto a = run(0, 2), b = run(0, 2), resumed = run(1, 1), first = run(0, 1);
    CHECK(a.first == b.first);
    CHECK(a.second == b.second);
    CHECK(resumed.first == a.first);
    CHECK(resumed.second == a.second);
    CHECK(first.second != a.second); // steps draw differently
    // Answers that met the end token end with it, and only those are shorter than the budget.
    for (const auto& answer : a.second)
        CHECK((answer.size() == 4 || answer.back() == 0));
}

TEST_CASE("reinforce: the KL penalty is zero with its gradient at the base and positive away from it") {
    tiny_svf t;
    const std::vector<std::span<const std::int32_t>> prompts{t.prompt};
    std::vector<float> g0(t.adapter.parameters().size()), g1(g0.size());
    const auto value = [&](t2::adapt::svf_adapter& adapter, float kl, std::vector<float>& g) {
        t2::train::reinforce_objective objective(t.ex, t.model, adapter, prompts, reward_of_answer(),
                                                 {.max_new_tokens = answer_length, .samples_per_prompt = 1,
                                                  .kl_coefficient = kl, .end_token = -1});
        return objective.value_and_gradient(adapter.parameters(), g);
    };
    // λ·KL and its gradient: the loss and gradient with λ = 0.5 less those with λ = 0.
    const auto penalty = [&](t2::adapt::svf_adapter& adapter) {
        const float kl = value(adapter, 0.5f, g1) - value(adapter, 0.f, g0);
        double norm = 0;
        for (std::size_t i = 0; i < g0.size(); ++i)
            norm += double(g1[i] - g0[i]) * double(g1[i] - g0[i]);
        return std::pair(kl, std::sqrt(norm));
    };
    const auto [away, away_gradient] = penalty(t.adapter); // z random
    CHECK(away > 0);
    CHECK(away_gradient > 0);
    // At z = 1 the adapted model is the base up to the rounding of U·diag(σ)·Vᵀ: KL and its
    // gradient (KL is smallest there) vanish to that rounding, far below their values away.
    auto base = t2::adapt::make_svf_adapter(t.model);
    const auto [at_base, at_base_gradient] = penalty(base);
    CHECK(std::abs(at_base) < 1e-3 * away);
    CHECK(at_base_gradient < 1e-3 * away_gradient);
}

TEST_CASE("reinforce: exact steps with Adam raise the expected reward") {
    tiny_svf t;
    const std::vector<std::span<const std::int32_t>> prompts{t.prompt};
    const auto expected_reward = [&] {
        const auto e = enumerate(t.ex, t.model, t.adapter, t.prompt);
        double J = 0;
        for (std::size_t y = 0; y < e.sequences.size(); ++y)
            J += std::exp(e.log_probability[y]) * table_reward(std::span(e.sequences[y]).subspan(t.prompt.size()));
        return J;
    };
    const double before = expected_reward();
    t2::train::reinforce_objective objective(t.ex, t.model, t.adapter, prompts, reward_of_answer(),
                                             {.max_new_tokens = answer_length, .temperature = 1.f,
                                              .samples_per_prompt = 64, .end_token = -1, .seed = 60});
    t2::train::trainer trainer(t2::train::exact{}, t2::train::adam(t.adapter.parameters().size(), {.lr = 2e-2f}));
    for (int step = 0; step < 30; ++step)
        trainer.step(objective, t.adapter.parameters());
    const double after = expected_reward();
    INFO("expected reward " << before << " -> " << after << " (rewards lie in [-1.5, 1.5])");
    CHECK(after > before + 0.3);
}
