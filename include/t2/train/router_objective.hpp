#pragma once
// Training the dual-attention router (nn/router.hpp), as objectives over its flat parameters
// for train/'s trainers and searches, two ways:
//
//   router_label_objective   on task labels: the mean of −log α_label over pooled hidden
//                            states (adapt::pooled_hidden) with their task;
//   router_answer_objective  end to end: the mean next-token cross-entropy of labelled
//                            answers, each under the mixture at the α the router gives its
//                            prompt. z' is linear in α, so the mixture adapter's gradient
//                            dL/dα (step 4's backpropagation) carries through the router.
//
//   t2::train::router_label_objective objective(r, features, labels);
//   t2::train::trainer step(t2::train::exact{}, t2::train::adam(objective.parameter_count(), {.lr = 1e-2f}));
//   for (int i = 0; i < 200; ++i) step.step(objective, r.parameters());
#include <algorithm>
#include <cstddef>
#include <span>
#include <utility>
#include <vector>

#include <memory>

#include "t2/adapt/router_dispatch.hpp"
#include "t2/core/tensor.hpp"
#include "t2/nn/backprop.hpp"
#include "t2/nn/loss.hpp"
#include "t2/nn/router.hpp"
#include "t2/train/adapter_objective.hpp"
#include "t2/train/few_shot.hpp"

T2_NAMESPACE_BEGIN
namespace train {

class router_label_objective {
public:
    // features [N × dim], labels [N] < K. Borrows the router (for its shape).
    router_label_objective(const nn::router& r, matrix<float> features, std::vector<std::size_t> labels)
        : router_(&r), features_(std::move(features)), labels_(std::move(labels)) {
        T2_CHECK(features_.extent(0) == labels_.size() && !labels_.empty(), "router_label_objective: ",
                 features_.extent(0), " examples and ", labels_.size(), " labels");
        T2_CHECK(features_.extent(1) == r.config().dim, "router_label_objective: features of ", features_.extent(1),
                 " values for a router of dim ", r.config().dim);
        for (const std::size_t y : labels_)
            T2_CHECK(y < r.config().experts, "router_label_objective: label ", y, " of ", r.config().experts, " experts");
    }

    std::size_t parameter_count() const noexcept { return router_->parameters().size(); }

    float value_and_gradient(std::span<const float> p, std::span<float> gradient) const {
        std::fill(gradient.begin(), gradient.end(), 0.f);
        double loss = 0;
        for (std::size_t i = 0; i < labels_.size(); ++i)
            loss += router_->label_loss(p, row(i), labels_[i], gradient);
        for (float& g : gradient)
            g /= float(labels_.size());
        return float(loss / double(labels_.size()));
    }

    void losses(std::span<const float> candidates, std::span<float> out) const {
        const std::size_t n = parameter_count();
        T2_CHECK(candidates.size() == out.size() * n, "router_label_objective: ", candidates.size(),
                 " candidate floats for ", out.size(), " losses of ", n, " parameters");
        for (std::size_t c = 0; c < out.size(); ++c) {
            double loss = 0;
            for (std::size_t i = 0; i < labels_.size(); ++i)
                loss += router_->label_loss(candidates.subspan(c * n, n), row(i), labels_[i], {});
            out[c] = float(loss / double(labels_.size()));
        }
    }

private:
    std::span<const float> row(std::size_t i) const {
        const auto r = features_.row(i);
        return {r.data(), r.size()};
    }

    const nn::router* router_;
    matrix<float> features_;
    std::vector<std::size_t> labels_;
};

template <exec::cpu_executor E, nn::model_config C>
class router_answer_objective {
public:
    using model_type = nn::llama<C, adapt::svf>;

    // Borrows everything; the library mixes with one α for the model.
    router_answer_objective(const E& ex, const model_type& model, const adapt::decomposition& d,
                            std::span<const adapt::expert> library, const nn::router& r,
                            std::span<const labelled_example> examples)
        : router_(&r) {
        T2_CHECK(!examples.empty(), "router_answer_objective: no examples");
        T2_CHECK(r.config().experts == library.size() && r.config().dim == model.config().dim,
                 "router_answer_objective: a router for ", r.config().experts, " experts of dim ", r.config().dim,
                 ", the library has ", library.size(), " and the model dim ", model.config().dim);
        std::vector<std::span<const std::int32_t>> prompts;
        for (const labelled_example& e : examples)
            prompts.push_back(e.prompt);
        features_ = adapt::pooled_hidden(ex, model, std::span<const std::span<const std::int32_t>>(prompts));
        const auto make = [&model, &d, library] {
            return adapt::make_mixture_adapter(model, d, library, {.rescale = library[0].rescale});
        };
        for (const labelled_example& e : examples)
            items_.push_back(std::make_unique<item>(ex, model, e, make));
    }

    std::size_t parameter_count() const noexcept { return router_->parameters().size(); }

    float value_and_gradient(std::span<const float> p, std::span<float> gradient) {
        std::fill(gradient.begin(), gradient.end(), 0.f);
        const std::size_t K = router_->config().experts;
        std::vector<float> alpha(K), dalpha(K);
        double loss = 0;
        for (std::size_t i = 0; i < items_.size(); ++i) {
            router_->forward(p, feature(i), alpha);
            loss += items_[i]->objective.value_and_gradient(alpha, dalpha);
            for (float& g : dalpha)
                g /= float(items_.size());
            router_->backward(p, feature(i), dalpha, gradient);
        }
        return float(loss / double(items_.size()));
    }

    void losses(std::span<const float> candidates, std::span<float> out) {
        const std::size_t n = parameter_count();
        T2_CHECK(candidates.size() == out.size() * n, "router_answer_objective: ", candidates.size(),
                 " candidate floats for ", out.size(), " losses of ", n, " parameters");
        std::vector<float> alpha(router_->config().experts), loss(1);
        for (std::size_t c = 0; c < out.size(); ++c) {
            double sum = 0;
            for (std::size_t i = 0; i < items_.size(); ++i) {
                router_->forward(candidates.subspan(c * n, n), feature(i), alpha);
                items_[i]->objective.losses(alpha, loss);
                sum += double(loss[0]);
            }
            out[c] = float(sum / double(items_.size()));
        }
    }

private:
    // One example: its tokens, the rows that predict its answer, a mixture adapter, and the
    // objective of its α.
    struct item {
        std::vector<std::int32_t> tokens;
        nn::training_batch batch;
        std::vector<float> answer_rows;
        adapt::svf_adapter adapter;
        adapter_objective<E, model_type, nn::next_token_cross_entropy> objective;

        template <class Make>
        item(const E& ex, const model_type& model, const labelled_example& e, const Make& make)
            : tokens(joined(e)), batch(std::span<const std::int32_t>(tokens)), answer_rows(mask(e, batch.rows())),
              adapter(make()),
              objective(ex, model, adapter, batch, nn::next_token_cross_entropy{answer_rows}, make) {}

        static std::vector<std::int32_t> joined(const labelled_example& e) {
            T2_CHECK(!e.prompt.empty() && !e.answer.empty(), "router_answer_objective: an example needs a prompt and an answer");
            std::vector<std::int32_t> t = e.prompt;
            t.insert(t.end(), e.answer.begin(), e.answer.end());
            return t;
        }
        static std::vector<float> mask(const labelled_example& e, std::size_t rows) {
            std::vector<float> m(rows, 0.f);
            std::fill(m.begin() + std::ptrdiff_t(e.prompt.size() - 1), m.end(), 1.f);
            return m;
        }
    };

    std::span<const float> feature(std::size_t i) const {
        const auto r = features_.row(i);
        return {r.data(), r.size()};
    }

    const nn::router* router_;
    matrix<float> features_;
    std::vector<std::unique_ptr<item>> items_;
};

} // namespace train
T2_NAMESPACE_END
