#pragma once
// The few-shot score of adapter parameters, as a population objective (train/objective.hpp)
// for the searches of train/search.hpp: what the Transformer² reference's CEM maximizes when
// it adapts to a new task from a handful of labelled examples.
//
//   score = (number of examples answered correctly) + ½·exp(mean log π(answer token))
//   loss  = −score / S                               (S examples; lower is better)
//
// An answer is correct when the greedy answer generated with the candidate's parameters is
// the labelled one: by default the same tokens followed by the end token (with no end token,
// end_token < 0: the same first tokens); a judge can say otherwise. Ties in accuracy are broken by the mean per-token log-likelihood of the
// labelled answers under the candidate: exp of it is a geometric-mean probability in (0, 1],
// so half of it never outweighs one more correct answer.
//
//   std::vector<t2::train::labelled_example> shots = {{prompt_tokens, answer_tokens}, ...};
//   t2::train::few_shot_objective objective(ex, model, adapter, shots, make_adapter);
//   t2::train::cem search(objective.parameter_count(), {});
//   for (int i = 0; i < 50; ++i) search.iterate(objective);
//
// A population is scored in as few batched passes as its row budget allows, every
// (candidate, example) pair with its candidate's adapter state, in one forward over every
// pair's prompt + labelled answer: its logits give the likelihood and, by teacher forcing,
// whether greedy decoding would produce the label (the argmax at every labelled position is
// the label). A judge needs the generated answers themselves: they are then generated for
// all pairs together (prefill, then lockstep decoding). Candidates that cannot run (an SVF
// rescaling that is undefined) score +∞.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/nn/backprop.hpp"
#include "t2/nn/generate.hpp"
#include "t2/nn/loss.hpp"
#include "t2/train/adapter_objective.hpp"
#include "t2/train/detail/adapter_pool.hpp"

T2_NAMESPACE_BEGIN
namespace train {

struct labelled_example {
    std::vector<std::int32_t> prompt; // BOS first
    std::vector<std::int32_t> answer; // the labelled answer's tokens, without an end token
};

// judge(example index, generated answer without its end token) -> correct?
using answer_judge = std::function<bool(std::size_t, std::span<const std::int32_t>)>;

struct few_shot_options {
    std::int32_t end_token = nn::bos_token; // ends a generated answer
    std::size_t max_rows = 4096;            // rows (tokens) of one population pass
};

// What a candidate scored.
struct few_shot_score {
    std::size_t correct = 0;
    double mean_log_likelihood = -std::numeric_limits<double>::infinity(); // per labelled answer token

    double value() const noexcept { return double(correct) + 0.5 * std::exp(mean_log_likelihood); }
};

template <exec::cpu_executor E, class Model>
class few_shot_objective {
public:
    using adapter_type = typename Model::adapter_type;

    // judge: empty for an exact match of the tokens.
    few_shot_objective(const E& ex, const Model& model, adapter_type& adapter, std::vector<labelled_example> examples,
                       std::function<adapter_type()> make_adapter, few_shot_options options = {},
                       answer_judge judge = {})
        : ex_(&ex), model_(&model), examples_(checked(std::move(examples))), judge_(std::move(judge)),
          options_(options), batch_(sequence_views()), answer_rows_(answer_mask()),
          likelihood_(ex, model, adapter, batch_, nn::next_token_cross_entropy{answer_rows_}, make_adapter,
                      {.max_rows = options.max_rows}),
          pool_("few_shot_objective", adapter, std::move(make_adapter)) {
        std::size_t longest = 0;
        for (const labelled_example& e : examples_)
            longest = std::max(longest, e.answer.size());
        budget_ = longest + (options.end_token >= 0 ? 1 : 0); // and the end token after it
    }

    // The likelihood objective inside reads this object's batch: not copyable, not movable.
    few_shot_objective(const few_shot_objective&) = delete;
    few_shot_objective& operator=(const few_shot_objective&) = delete;

    std::size_t parameter_count() const noexcept { return likelihood_.parameter_count(); }
    std::size_t examples() const noexcept { return examples_.size(); }

    // −score/S of every candidate; scores() keeps the scores themselves.
    void losses(std::span<const float> candidates, std::span<float> losses) {
        const std::size_t n = parameter_count(), P = losses.size();
        T2_CHECK(candidates.size() == P * n, "few_shot_objective: ", candidates.size(), " candidate floats for ", P,
                 " losses of ", n, " parameters");
        scores_.assign(P, few_shot_score{});
        if (judge_) {
            // The likelihood from the population forward, then the greedy answers generated.
            likelihood_.losses(candidates, losses);
            std::size_t generated_rows = 0;
            for (const labelled_example& e : examples_)
                generated_rows += e.prompt.size() + budget_;
            const std::size_t per_pass = std::max<std::size_t>(1, options_.max_rows / generated_rows);
            for (std::size_t first = 0; first < P; first += per_pass)
                count_correct(candidates, first, std::min(P, first + per_pass), losses);
        } else {
            // Teacher forcing: greedy decoding reproduces the labelled answer exactly when the
            // argmax at every labelled position (and at the end token after it) is the label,
            // so the forward that scores the likelihood decides correctness too, with no
            // generation. (Where two logits tie within rounding, the packed forward and a
            // decoding one may break the tie differently.)
            likelihood_.for_each_candidate(
                candidates,
                [&](std::size_t c, matrix_view<const float> logits) {
                    losses[c] = nn::next_token_cross_entropy{answer_rows_}(*ex_, batch_.loss_rows_view(), logits,
                                                                           matrix_view<float>());
                    for (std::size_t b = 0; b < examples_.size(); ++b)
                        scores_[c].correct += labels_are_argmax(logits, b) ? 1 : 0;
                },
                [&](std::size_t c) { losses[c] = std::numeric_limits<float>::infinity(); });
        }
        for (std::size_t c = 0; c < P; ++c) {
            if (!std::isfinite(losses[c])) {
                scores_[c] = few_shot_score{};
                losses[c] = std::numeric_limits<float>::infinity();
                continue;
            }
            scores_[c].mean_log_likelihood = -double(losses[c]);
            losses[c] = float(-scores_[c].value() / double(examples_.size()));
        }
    }

    // The score of one point, e.g. the search's best.
    few_shot_score score(std::span<const float> parameters) {
        float loss = 0;
        losses(parameters, std::span(&loss, 1));
        return scores_[0];
    }

    // The last population's scores (a candidate that could not run scores 0 correct).
    std::span<const few_shot_score> scores() const noexcept { return scores_; }

private:
    static std::vector<labelled_example> checked(std::vector<labelled_example> examples) {
        T2_CHECK(!examples.empty(), "few_shot_objective: no examples");
        for (std::size_t i = 0; i < examples.size(); ++i)
            T2_CHECK(!examples[i].prompt.empty() && !examples[i].answer.empty(), "few_shot_objective: example ", i,
                     " has an empty ", examples[i].prompt.empty() ? "prompt" : "answer");
        return examples;
    }

    // Prompt + labelled answer (+ the end token, which the likelihood does not count but
    // teacher forcing checks).
    std::vector<std::span<const std::int32_t>> sequence_views() {
        for (const labelled_example& e : examples_) {
            sequences_.push_back(e.prompt);
            sequences_.back().insert(sequences_.back().end(), e.answer.begin(), e.answer.end());
            if (options_.end_token >= 0)
                sequences_.back().push_back(options_.end_token);
        }
        return {sequences_.begin(), sequences_.end()};
    }

    // The rows of example b that predict its labelled answer (and its end token).
    std::pair<std::size_t, std::size_t> answer_rows(std::size_t b) const {
        return {batch_.offsets()[b] + examples_[b].prompt.size() - 1, batch_.offsets()[b + 1]};
    }

    // 1 on the rows that predict a labelled answer token.
    std::vector<float> answer_mask() const {
        std::vector<float> mask(batch_.rows(), 0.f);
        for (std::size_t b = 0; b < examples_.size(); ++b)
            std::fill_n(mask.begin() + std::ptrdiff_t(answer_rows(b).first), examples_[b].answer.size(), 1.f);
        return mask;
    }

    bool labels_are_argmax(matrix_view<const float> logits, std::size_t b) const {
        // Decoding stops at the end token: a label holding it cannot be generated.
        if (std::ranges::find(examples_[b].answer, options_.end_token) != examples_[b].answer.end())
            return false;
        const auto [first, last] = answer_rows(b);
        for (std::size_t r = first; r < last; ++r) {
            const auto row = logits.row(r);
            if (ops::argmax(std::span<const float>(row.data(), row.size())) != batch_.targets()[r])
                return false;
        }
        return true;
    }

    bool correct(std::size_t example, const nn::generation& g) const {
        const bool ended = g.reason == nn::stop_reason::end_token;
        const std::span<const std::int32_t> answer(g.tokens.data(), g.tokens.size() - (ended ? 1 : 0));
        if (judge_)
            return judge_(example, answer);
        // Without an end token an answer has no end: its first tokens are compared.
        const auto& label = examples_[example].answer;
        return options_.end_token < 0 ? answer.size() >= label.size() && std::ranges::equal(answer.first(label.size()), label)
                                      : ended && std::ranges::equal(answer, label);
    }

    // Greedy answers of candidates [first, last) to every example, in one batched generation;
    // losses holds each candidate's likelihood loss (+∞: it cannot run).
    void count_correct(std::span<const float> candidates, std::size_t first, std::size_t last,
                       std::span<const float> losses) {
        const std::size_t n = parameter_count(), S = examples_.size();
        std::vector<std::size_t> run;
        std::vector<std::span<const std::int32_t>> prompts;
        std::vector<const adapter_type*> adapters;
        for (std::size_t c = first; c < last; ++c)
            if (std::isfinite(losses[c])) {
                pool_.load(c - first, candidates.subspan(c * n, n));
                run.push_back(c);
            }
        if (run.empty())
            return;
        for (const std::size_t c : run) // after every load: the pool may grow while loading
            for (const labelled_example& e : examples_) {
                prompts.push_back(e.prompt);
                adapters.push_back(&pool_[c - first]);
            }
        ops::sampler greedy({.temperature = 0.f});
        const auto answers = nn::generate(*ex_, *model_, std::span<const std::span<const std::int32_t>>(prompts), greedy,
                                          {.max_new_tokens = budget_, .end_token = options_.end_token},
                                          nn::no_stop_condition{}, std::span<const adapter_type* const>(adapters));
        for (std::size_t i = 0; i < run.size(); ++i) {
            few_shot_score& s = scores_[run[i]];
            for (std::size_t e = 0; e < S; ++e)
                s.correct += correct(e, answers[i * S + e]) ? 1 : 0;
        }
    }

    const E* ex_;
    const Model* model_;
    std::vector<labelled_example> examples_;
    answer_judge judge_;
    few_shot_options options_;
    std::vector<std::vector<std::int32_t>> sequences_; // prompt + labelled answer
    nn::training_batch batch_;
    std::vector<float> answer_rows_;
    adapter_objective<E, Model, nn::next_token_cross_entropy> likelihood_;
    detail::adapter_pool<adapter_type> pool_;
    std::size_t budget_ = 0;
    std::vector<few_shot_score> scores_;
};

} // namespace train
T2_NAMESPACE_END
