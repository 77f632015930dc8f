#pragma once
// REINFORCE with a KL penalty as a differentiable objective (train/objective.hpp), the way
// the Transformer² reference trains an expert: each evaluation rolls out answers to the
// prompts with the adapter's current parameters, scores each with the caller's reward, and
// backpropagates
//
//   L = (1/B)·Σ_b [ r_b·Σ_t −log π(y_bt) + λ·Σ_t KL_t(π_base ‖ π) ]
//
// over the B prompt + answer sequences, the sums running over answer tokens only (the prompt
// is context, not action). No baseline and no length normalization, as in the reference;
// reward normalization and clipping are options, off by default.
//
//   auto reward = [&](std::size_t prompt, std::span<const std::int32_t> answer) { return ok ? 1.f : -1.f; };
//   t2::train::reinforce_objective objective(ex, model, adapter, prompts, reward, {.kl_coefficient = 0.1f});
//   trainer.step(objective, adapter.parameters());         // trainer<exact, adam>
//   objective.mean_reward();                               // of the rollouts just scored
//
// Rollouts are greedy by default (the reference's choice: deterministic, biased); with
// temperature 1 they are samples of π and the gradient is an unbiased estimate of
// −∇ E_π[r] (tests/test_train_reinforce.cpp checks it against the enumerated expectation).
// Sampling draws from a generator keyed by (seed, rollout step), so a run is reproducible
// from its seed and a resumed run continues the same draws (set_rollout_step).
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <numeric>
#include <span>
#include <utility>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/core/rng.hpp"
#include "t2/nn/backprop.hpp"
#include "t2/nn/generate.hpp"
#include "t2/nn/loss.hpp"

T2_NAMESPACE_BEGIN
namespace train {

struct reinforce_options {
    std::size_t max_new_tokens = 64;           // each answer's token budget
    float temperature = 0.f;                   // 0: greedy (the reference); 1: samples of π
    std::size_t samples_per_prompt = 1;        // rollouts of each prompt per step
    float kl_coefficient = 0.f;                // λ; 0 skips the base model's forward
    bool normalize_rewards = false;            // r ← (r − mean)/std over the step's rollouts
    float reward_clip = 0.f;                   // > 0: r clipped to [−clip, clip], after normalizing
    std::int32_t end_token = nn::bos_token;    // ends an answer; scored as one of its actions
    std::uint64_t seed = 0;
    // Ends an answer early: stop(prompt index, tokens generated so far), e.g. at a stop string
    // or at the labelled answer's length. Empty: the end token and the budget only.
    std::function<bool(std::size_t, std::span<const std::int32_t>)> stop = {};
};

// One answer rolled out in the last step.
struct rollout {
    std::size_t prompt = 0;            // index into the prompts
    std::vector<std::int32_t> answer;  // generated tokens, the end token included if one was met
    float reward = 0;                  // as the reward function returned it
    float weight = 0;                  // after normalization and clipping: what multiplies log π
    double log_probability = 0;        // Σ_t log π(y_t) under the rolled-out parameters
};

// reward(prompt index, answer without its end token) -> a finite float.
template <class Reward>
concept reward_function = std::invocable<Reward&, std::size_t, std::span<const std::int32_t>> &&
                          std::convertible_to<std::invoke_result_t<Reward&, std::size_t, std::span<const std::int32_t>>, float>;

template <exec::cpu_executor E, class Model, reward_function Reward>
class reinforce_objective {
public:
    using adapter_type = typename Model::adapter_type;

    // prompts: token sequences (BOS first) the objective reads, not copies; set_prompts swaps
    // them, e.g. for a new minibatch each step.
    reinforce_objective(const E& ex, const Model& model, adapter_type& adapter,
                        std::span<const std::span<const std::int32_t>> prompts, Reward reward,
                        reinforce_options options = {})
        : ex_(&ex), model_(&model), adapter_(&adapter), reward_(std::move(reward)), options_(options) {
        T2_CHECK(options.samples_per_prompt > 0, "reinforce_objective: 0 samples per prompt");
        T2_CHECK(options.max_new_tokens > 0, "reinforce_objective: a token budget of 0");
        T2_CHECK(std::isfinite(options.temperature) && options.temperature >= 0.f,
                 "reinforce_objective: temperature ", options.temperature, "; it must be finite and >= 0");
        T2_CHECK(std::isfinite(options.kl_coefficient) && options.kl_coefficient >= 0.f,
                 "reinforce_objective: KL coefficient ", options.kl_coefficient, "; it must be finite and >= 0");
        T2_CHECK(std::isfinite(options.reward_clip) && options.reward_clip >= 0.f,
                 "reinforce_objective: reward clip ", options.reward_clip, "; it must be finite and >= 0 (0: off)");
        set_prompts(prompts);
    }

    void set_prompts(std::span<const std::span<const std::int32_t>> prompts) {
        T2_CHECK(!prompts.empty(), "reinforce_objective: no prompts");
        prompts_ = prompts;
    }

    std::size_t parameter_count() const noexcept { return adapter_->parameters().size(); }

    // Rolls out, scores, and returns L with its gradient at `parameters`.
    float value_and_gradient(std::span<const float> parameters, std::span<float> gradient) {
        T2_CHECK(parameters.size() == parameter_count() && gradient.size() == parameter_count(),
                 "reinforce_objective: ", parameters.size(), " parameters and ", gradient.size(),
                 " gradient floats for an adapter of ", parameter_count());
        if (parameters.data() != adapter_->parameters().data())
            std::copy(parameters.begin(), parameters.end(), adapter_->parameters().begin());
        roll_out();
        const nn::training_batch batch(sequence_views());
        const std::size_t B = rollouts_.size();
        // One weight per row: 1 where the row predicts an answer token, /B for the KL term.
        std::vector<float> answer_rows(batch.rows(), 0.f), kl_rows;
        std::vector<float> weights(B);
        for (std::size_t b = 0; b < B; ++b) {
            const std::size_t first_answer_row = batch.offsets()[b] + prompts_[rollouts_[b].prompt].size() - 1;
            std::fill(answer_rows.begin() + std::ptrdiff_t(first_answer_row),
                      answer_rows.begin() + std::ptrdiff_t(batch.offsets()[b + 1]), 1.f);
            weights[b] = rollouts_[b].weight;
        }
        adapter_->zero_gradient();
        const nn::reinforce policy_term{weights, answer_rows};
        float loss = 0;
        if (options_.kl_coefficient > 0.f) {
            kl_rows = answer_rows;
            for (float& w : kl_rows)
                w /= float(B);
            const matrix<float> base_logits = nn::batch_logits(*ex_, *model_, batch);
            loss = nn::forward_backward(*ex_, *model_, *adapter_, batch,
                                        nn::losses(policy_term, nn::kl_to_base{base_logits.view(), options_.kl_coefficient,
                                                                               kl_rows}),
                                        workspace_);
        } else {
            loss = nn::forward_backward(*ex_, *model_, *adapter_, batch, policy_term, workspace_);
        }
        std::copy(adapter_->gradient().begin(), adapter_->gradient().end(), gradient.begin());
        ++rollout_step_;
        return loss;
    }

    // The last step's rollouts, prompt-major: rollout i·samples + s is sample s of prompt i.
    std::span<const rollout> rollouts() const noexcept { return rollouts_; }
    // Mean of the last step's rewards as the reward function returned them.
    float mean_reward() const noexcept {
        if (rollouts_.empty())
            return 0.f;
        double sum = 0;
        for (const rollout& r : rollouts_)
            sum += r.reward;
        return float(sum / double(rollouts_.size()));
    }

    // Steps rolled out so far; the sampler of step s draws from (seed, s).
    std::uint64_t rollout_step() const noexcept { return rollout_step_; }
    void set_rollout_step(std::uint64_t step) noexcept { rollout_step_ = step; }

private:
    void roll_out() {
        const std::size_t S = options_.samples_per_prompt, B = prompts_.size() * S;
        std::vector<std::span<const std::int32_t>> repeated(B);
        for (std::size_t b = 0; b < B; ++b)
            repeated[b] = prompts_[b / S];
        // A seed per step, from the counter-based generator: steps never share draws.
        const auto bits = philox(options_.seed).bits(rollout_step_);
        ops::sampler sample({.temperature = options_.temperature, .top_p = 1.f, .top_k = 0,
                             .seed = (std::uint64_t(bits[1]) << 32) | bits[0]});
        const adapter_type* adapter = adapter_;
        const auto stop = [&](std::size_t b, std::span<const std::int32_t> tokens) {
            return options_.stop && options_.stop(b / S, tokens);
        };
        const auto generated =
            nn::generate(*ex_, *model_, std::span<const std::span<const std::int32_t>>(repeated), sample,
                         {.max_new_tokens = options_.max_new_tokens, .end_token = options_.end_token}, stop,
                         std::span<const adapter_type* const>(&adapter, 1));
        rollouts_.resize(B);
        for (std::size_t b = 0; b < B; ++b) {
            rollout& r = rollouts_[b];
            const nn::generation& g = generated[b];
            r.prompt = b / S;
            r.answer = g.tokens;
            r.log_probability = std::accumulate(g.logprobs.begin(), g.logprobs.end(), 0.0);
            const bool ended = g.reason == nn::stop_reason::end_token;
            const std::span<const std::int32_t> answer(r.answer.data(), r.answer.size() - (ended ? 1 : 0));
            r.reward = static_cast<float>(reward_(r.prompt, answer));
            T2_CHECK(std::isfinite(r.reward), "reinforce_objective: the reward of prompt ", r.prompt, " is ", r.reward,
                     "; rewards must be finite");
            r.weight = r.reward;
        }
        shape_rewards();
    }

    void shape_rewards() {
        if (options_.normalize_rewards) {
            double mean = 0, square = 0;
            for (const rollout& r : rollouts_)
                mean += r.weight;
            mean /= double(rollouts_.size());
            for (const rollout& r : rollouts_)
                square += (r.weight - mean) * (r.weight - mean);
            const double deviation = std::sqrt(square / double(rollouts_.size()));
            // Equal rewards carry no signal: every weight becomes 0 rather than 0/0.
            for (rollout& r : rollouts_)
                r.weight = deviation > 0 ? float((r.weight - mean) / deviation) : 0.f;
        }
        if (options_.reward_clip > 0.f)
            for (rollout& r : rollouts_)
                r.weight = std::clamp(r.weight, -options_.reward_clip, options_.reward_clip);
    }

    // Prompt + answer of every rollout, packed in rollout order.
    std::vector<std::span<const std::int32_t>> sequence_views() {
        sequences_.resize(rollouts_.size());
        std::vector<std::span<const std::int32_t>> views(rollouts_.size());
        for (std::size_t b = 0; b < rollouts_.size(); ++b) {
            const auto prompt = prompts_[rollouts_[b].prompt];
            sequences_[b].assign(prompt.begin(), prompt.end());
            sequences_[b].insert(sequences_[b].end(), rollouts_[b].answer.begin(), rollouts_[b].answer.end());
            views[b] = sequences_[b];
        }
        return views;
    }

    const E* ex_;
    const Model* model_;
    adapter_type* adapter_;
    Reward reward_;
    reinforce_options options_;
    std::span<const std::span<const std::int32_t>> prompts_;
    std::vector<rollout> rollouts_;
    std::vector<std::vector<std::int32_t>> sequences_;
    std::uint64_t rollout_step_ = 0;
    nn::training_workspace workspace_;
};

} // namespace train
T2_NAMESPACE_END
