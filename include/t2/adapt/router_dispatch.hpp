#pragma once
// The dual-attention dispatcher (nn/router.hpp): pass 1 runs the base model over each prompt,
// pools its final-normed hidden states (the mean over the prompt's positions), and the router
// turns the pooled state into mixing weights α over the expert library. Pass 1 is one
// prefill, with no generation, so it costs less than the classifying dispatchers' pass 1.
//
//   t2::nn::router r(t2::nn::router_config{.dim = c.dim, .experts = K}, seed);
//   ... train it (train/router_objective.hpp) ...
//   t2::adapt::router_dispatcher dispatch(r);
//   const auto answers = self_adaptive.generate(ex, dispatch, prompts, sampler);
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "t2/adapt/dispatch.hpp"
#include "t2/adapt/self_adaptive.hpp"
#include "t2/nn/router.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

// The mean of the final-normed hidden states over each prompt's positions, with the base
// model: [prompts × dim].
template <exec::cpu_executor E, class Model>
matrix<float> pooled_hidden(const E& ex, const Model& model, std::span<const std::span<const std::int32_t>> prompts) {
    const auto& c = model.config();
    std::vector<nn::llama_state> states;
    std::vector<nn::sequence_step> steps;
    states.reserve(prompts.size());
    for (const auto& p : prompts) {
        T2_CHECK(!p.empty() && p.size() <= c.seq_len, "pooled_hidden: a prompt of ", p.size(),
                 " tokens; the context holds 1 to ", c.seq_len);
        states.emplace_back(c, p.size());
        steps.push_back({&states.back(), p});
    }
    nn::decoder_workspace ws;
    const matrix_view<const float> hidden = model.hidden(ex, std::span<const nn::sequence_step>(steps), ws);
    matrix<float> pooled(prompts.size(), c.dim);
    std::size_t row = 0;
    for (std::size_t b = 0; b < prompts.size(); ++b) {
        for (std::size_t t = 0; t < prompts[b].size(); ++t, ++row)
            for (std::size_t j = 0; j < c.dim; ++j)
                pooled(b, j) += hidden(row, j);
        for (std::size_t j = 0; j < c.dim; ++j)
            pooled(b, j) /= float(prompts[b].size());
    }
    return pooled;
}

class router_dispatcher {
public:
    explicit router_dispatcher(const nn::router& r, std::string label = "router") : router_(&r), label_(std::move(label)) {}

    template <exec::cpu_executor E, nn::model_config C>
    std::vector<dispatch_decision> decide(const E& ex, const self_adaptive<C>& sa,
                                          std::span<const std::span<const std::int32_t>> prompts) const {
        const nn::router_config& rc = router_->config();
        T2_CHECK(rc.experts == sa.experts().size() && rc.dim == sa.model().config().dim, "router_dispatcher: a router for ",
                 rc.experts, " experts of dim ", rc.dim, ", the library has ", sa.experts().size(),
                 " experts and the model dim ", sa.model().config().dim);
        const matrix<float> pooled = pooled_hidden(ex, sa.model(), prompts);
        std::vector<dispatch_decision> out(prompts.size());
        for (std::size_t b = 0; b < prompts.size(); ++b) {
            out[b] = {std::vector<float>(rc.experts), label_};
            const auto h = pooled.row(b);
            router_->forward(std::span<const float>(h.data(), h.size()), out[b].alpha);
        }
        return out;
    }

private:
    const nn::router* router_;
    std::string label_;
};

} // namespace adapt
T2_NAMESPACE_END
