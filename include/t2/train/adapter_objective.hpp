#pragma once
// A model's loss on a batch as a function of an adapter's flat parameters: the objective
// (train/objective.hpp) that the training steps and searches of train/ minimize.
//
//   auto objective = t2::train::adapter_objective(ex, model, adapter, batch, t2::nn::next_token_cross_entropy{},
//                                                 [&] { return t2::adapt::make_svf_adapter(model); });
//   trainer.step(objective, adapter.parameters());
//
// value_and_gradient runs nn::forward_backward with `adapter` (its parameters set to the
// point asked for). losses scores a population in as few forward passes as the row budget
// allows: each candidate's parameters go into an adapter state of a pool (made once by
// `make_adapter`, which must build adapters of the same layout as `adapter`: the same kind,
// parametrization and rescaling), and one batched forward runs every (candidate, sequence)
// pair with its candidate's adapter — factored SVF applies a scale vector per row group, so
// the frozen factors are read once for the whole population. Candidate c's loss is the loss
// object on its block of rows, exactly as for the batch alone.
//
// Candidates an SVF adapter cannot run (rescaling undefined: Σ(σ⊙z) = 0) are not run and
// score +∞, as does a non-finite loss.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include "t2/adapt/model.hpp"
#include "t2/core/error.hpp"
#include "t2/nn/backprop.hpp"
#include "t2/nn/llama.hpp"
#include "t2/nn/loss.hpp"
#include "t2/train/detail/adapter_pool.hpp"
#include "t2/train/objective.hpp"

T2_NAMESPACE_BEGIN
namespace train {

struct adapter_objective_options {
    // Rows (tokens) of one population forward; a population larger than this runs in
    // several. The logits of those rows are the largest buffer: rows × vocab floats.
    std::size_t max_rows = 4096;
};

template <exec::cpu_executor E, class Model, class Loss>
    requires nn::loss_function<Loss, E>
class adapter_objective {
public:
    using adapter_type = typename Model::adapter_type;

    adapter_objective(const E& ex, const Model& model, adapter_type& adapter, const nn::training_batch& batch, Loss loss,
                      std::function<adapter_type()> make_adapter, adapter_objective_options options = {})
        : ex_(&ex), model_(&model), adapter_(&adapter), batch_(&batch), loss_(std::move(loss)),
          pool_("adapter_objective", adapter, std::move(make_adapter)), options_(options) {
        T2_CHECK(options.max_rows >= batch.rows(), "adapter_objective: a row budget of ", options.max_rows,
                 " is smaller than one batch (", batch.rows(), " rows)");
    }

    std::size_t parameter_count() const noexcept { return adapter_->parameters().size(); }

    float value_and_gradient(std::span<const float> parameters, std::span<float> gradient) {
        check_size("parameters", parameters.size());
        check_size("gradient", gradient.size());
        if (parameters.data() != adapter_->parameters().data())
            std::copy(parameters.begin(), parameters.end(), adapter_->parameters().begin());
        adapter_->zero_gradient();
        const float loss = nn::forward_backward(*ex_, *model_, *adapter_, *batch_, loss_, training_);
        std::copy(adapter_->gradient().begin(), adapter_->gradient().end(), gradient.begin());
        return loss;
    }

    void losses(std::span<const float> candidates, std::span<float> losses) {
        const std::size_t n = parameter_count(), P = losses.size();
        T2_CHECK(candidates.size() == P * n, "adapter_objective: ", candidates.size(), " candidate floats for ", P,
                 " losses of ", n, " parameters");
        for_each_candidate(
            candidates,
            [&](std::size_t c, matrix_view<const float> logits) {
                const float loss = loss_(*ex_, batch_->loss_rows_view(), logits, matrix_view<float>());
                losses[c] = std::isfinite(loss) ? loss : std::numeric_limits<float>::infinity();
            },
            [&](std::size_t c) { losses[c] = std::numeric_limits<float>::infinity(); });
    }

    // The population forward underneath losses(), for objectives that read more than a loss
    // from the logits: on_logits(c, logits of the batch's rows under candidate c) for every
    // candidate that can run, in order, and cannot_run(c) for the others.
    template <class OnLogits, class CannotRun>
    void for_each_candidate(std::span<const float> candidates, OnLogits&& on_logits, CannotRun&& cannot_run) {
        const std::size_t n = parameter_count();
        T2_CHECK(n > 0 && candidates.size() % n == 0, "adapter_objective: ", candidates.size(),
                 " candidate floats are not a whole number of ", n, "-parameter candidates");
        const std::size_t P = candidates.size() / n;
        const std::size_t per_forward = std::max<std::size_t>(1, options_.max_rows / std::max<std::size_t>(1, batch_->rows()));
        for (std::size_t first = 0; first < P; first += per_forward)
            forward(candidates, first, std::min(P, first + per_forward), on_logits, cannot_run);
    }

private:
    void check_size(const char* what, std::size_t size) const {
        T2_CHECK(size == parameter_count(), "adapter_objective: ", what,
                 " of ", size, " floats for an adapter of ", parameter_count(), " parameters");
    }

    // Candidates [first, last) in one forward.
    template <class OnLogits, class CannotRun>
    void forward(std::span<const float> candidates, std::size_t first, std::size_t last, OnLogits& on_logits,
                 CannotRun& cannot_run) {
        const std::size_t n = parameter_count(), B = batch_->sequences(), R = batch_->rows();
        std::vector<std::size_t> run; // the candidates that can run, in order
        for (std::size_t c = first; c < last; ++c) {
            const adapter_type& a = pool_.load(c - first, candidates.subspan(c * n, n));
            if (detail::runnable(*model_, a))
                run.push_back(c);
            else
                cannot_run(c);
        }
        if (run.empty())
            return;
        // State i·B + b runs sequence b; they are kept (their caches sized to the sequences)
        // and rewound for the next population.
        while (states_.size() < run.size() * B)
            states_.push_back(model_->make_state(batch_->rows_of(states_.size() % B)));
        steps_.clear();
        for (std::size_t i = 0; i < run.size(); ++i)
            for (std::size_t b = 0; b < B; ++b) {
                nn::llama_state& state = states_[i * B + b];
                state.reset();
                steps_.push_back({&state, batch_->inputs().subspan(batch_->offsets()[b], batch_->rows_of(b)),
                                  &pool_[run[i] - first]});
            }
        const auto logits = model_->forward(*ex_, std::span<const typename Model::step>(steps_), workspace_,
                                            nn::logits_for::all);
        for (std::size_t i = 0; i < run.size(); ++i)
            on_logits(run[i], matrix_view<const float>(logits.rows(i * R, (i + 1) * R)));
    }

    const E* ex_;
    const Model* model_;
    adapter_type* adapter_;
    const nn::training_batch* batch_;
    Loss loss_;
    detail::adapter_pool<adapter_type> pool_;
    adapter_objective_options options_;
    std::vector<nn::llama_state> states_; // never reallocated while steps_ point into it
    std::vector<typename Model::step> steps_;
    nn::decoder_workspace workspace_;
    nn::training_workspace training_;
};

} // namespace train
T2_NAMESPACE_END
