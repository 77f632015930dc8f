#pragma once
// The few-shot dispatcher of two-pass inference (adapt/self_adaptive.hpp): given a handful of
// labelled examples of a new task, CEM searches mixing weights α ∈ [0, 1]^K over the expert
// library (one α for the model, or one per layer), scoring candidates by the few-shot score
// (train/few_shot.hpp: correct greedy answers, ties broken by the labels' likelihood). The
// search runs once, at the first decision or at fit(); every later prompt of the task gets
// the α it found, and mixed_expert() writes it out as an ordinary expert (z' = Σ_k α_k z_k).
//
//   t2::train::few_shot_dispatcher dispatch(shots, {.iterations = 50});
//   const auto answers = self_adaptive.generate(ex, dispatch, prompts, sampler);
//   t2::io::write_expert("task.safetensors", dispatch.mixed_expert(self_adaptive, "task"));
//
// It lives with the searches rather than in adapt/ because it runs them.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "t2/adapt/dispatch.hpp"
#include "t2/adapt/self_adaptive.hpp"
#include "t2/train/few_shot.hpp"
#include "t2/train/search.hpp"

T2_NAMESPACE_BEGIN
namespace train {

struct few_shot_dispatch_options {
    std::size_t iterations = 50;   // CEM iterations (the reference's default)
    cem_options search = {};       // population 32, 6 elites, μ₀ = 1/K, σ₀ = 0.5, box [0, 1]
    bool per_layer = false;        // one α per layer instead of one for the model
    few_shot_options scoring = {}; // end token, rows per population pass
    std::string label = "few-shot";
};

class few_shot_dispatcher {
public:
    explicit few_shot_dispatcher(std::vector<labelled_example> shots, few_shot_dispatch_options options = {})
        : shots_(std::move(shots)), options_(std::move(options)) {
        T2_CHECK(!shots_.empty(), "few_shot_dispatcher: no examples");
        T2_CHECK(options_.iterations > 0, "few_shot_dispatcher: 0 iterations");
    }

    // Runs the search (again, if it ran before) for this model's library.
    template <exec::cpu_executor E, nn::model_config C>
    void fit(const E& ex, const adapt::self_adaptive<C>& sa) {
        const auto make = [&] {
            return adapt::make_mixture_adapter(sa.model(), sa.decomposed(), sa.experts(),
                                               {.rescale = sa.experts()[0].rescale, .per_layer = options_.per_layer});
        };
        auto adapter = make();
        few_shot_objective objective(ex, sa.model(), adapter, shots_, make, options_.scoring);
        cem search(objective.parameter_count(), options_.search);
        for (std::size_t i = 0; i < options_.iterations; ++i)
            search.iterate(objective);
        alpha_.assign(search.best().begin(), search.best().end());
        score_ = objective.score(alpha_);
        library_ = sa.experts().data();
    }

    template <exec::cpu_executor E, nn::model_config C>
    std::vector<adapt::dispatch_decision> decide(const E& ex, const adapt::self_adaptive<C>& sa,
                                                 std::span<const std::span<const std::int32_t>> prompts) {
        if (alpha_.empty() || library_ != sa.experts().data())
            fit(ex, sa);
        return std::vector<adapt::dispatch_decision>(prompts.size(), {alpha_, options_.label});
    }

    // The α found (empty before the search), and its few-shot score.
    std::span<const float> alpha() const noexcept { return alpha_; }
    const few_shot_score& score() const noexcept { return score_; }

    // The mixture found, as one expert: each adapted matrix's z' as the mixture adapter
    // computes it (svf_state::expert_vector), so the expert answers bit for bit as the
    // mixture does.
    template <nn::model_config C>
    adapt::expert mixed_expert(const adapt::self_adaptive<C>& sa, std::string task) const {
        T2_CHECK(!alpha_.empty(), "few_shot_dispatcher: no search has run");
        const std::span<const adapt::expert> library = sa.experts();
        auto mixture = adapt::make_mixture_adapter(sa.model(), sa.decomposed(), library,
                                                   {.rescale = library[0].rescale, .per_layer = options_.per_layer});
        adapt::set_mixture_alpha(mixture, alpha_);
        adapt::expert out{sa.decomposed().base_model_hash, library[0].rescale, std::move(task),
                          R"({"method":"few-shot cem"})", {}};
        for (const auto& m : sa.decomposed().matrices) {
            std::vector<float> z(m.factors.rank());
            mixture.matrix(m.slot.layer, std::size_t(m.slot.which)).expert_vector(z);
            out.z.emplace_back(m.name, std::move(z));
        }
        return out;
    }

private:
    std::vector<labelled_example> shots_;
    few_shot_dispatch_options options_;
    std::vector<float> alpha_;
    few_shot_score score_;
    const adapt::expert* library_ = nullptr; // the library alpha_ was fitted to
};

} // namespace train
T2_NAMESPACE_END
