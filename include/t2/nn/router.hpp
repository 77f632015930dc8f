#pragma once
// The dual-attention router (ours, beyond the Transformer² paper): a second attention that
// reads the model's adaptation patterns rather than its tokens. Its query is a learned
// projection of the pooled pass-1 hidden state h; its keys are learned embeddings, one per
// expert; the softmax of their scaled dot products is the mixing weights α over the experts:
//
//   q = W_q·h  [d_k],   s_k = (e_k · q) / (τ·√d_k),   α = softmax(s)  [K]
//
// Parameters are one flat vector (W_q [d_k × dim] row-major, then the keys E [K × d_k]), so
// the optimizers and estimators of train/ see floats only. Trainable on task labels
// (label_loss: −log α_label) and end to end on the answer's loss through α (backward, with
// dL/dα from the mixture adapter's gradient: z' is linear in α).
//
// The arithmetic is a [d_k × dim] product and K dot products per prompt, too small to be
// worth an executor; it runs in plain loops, in double.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/core/rng.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

struct router_config {
    std::size_t dim = 0;      // the model's hidden size
    std::size_t experts = 0;  // K
    std::size_t key_dim = 32; // d_k
    float temperature = 1.f;  // τ
};

class router {
public:
    router() = default;
    // W_q and E drawn from N(0, 1/dim) and N(0, 1/d_k) (seeded), so that the scores start of
    // order 1/τ whatever the sizes.
    explicit router(const router_config& c, std::uint64_t seed = 0) : config_(c) {
        T2_CHECK(c.dim > 0 && c.experts > 0 && c.key_dim > 0, "router: dim ", c.dim, ", ", c.experts,
                 " experts and key size ", c.key_dim, "; all must be positive");
        T2_CHECK(std::isfinite(c.temperature) && c.temperature > 0.f, "router: temperature ", c.temperature,
                 " must be positive");
        parameters_.resize(c.key_dim * c.dim + c.experts * c.key_dim);
        const philox rng(seed);
        const std::size_t projection = c.key_dim * c.dim;
        for (std::size_t i = 0; i < parameters_.size(); ++i)
            parameters_[i] = rng.normal(i) / std::sqrt(float(i < projection ? c.dim : c.key_dim));
    }
    // From saved parameters (io/adapter_files.hpp).
    router(const router_config& c, std::vector<float> parameters) : router(c) {
        T2_CHECK(parameters.size() == parameters_.size(), "router: ", parameters.size(), " parameters for dim ", c.dim,
                 ", ", c.experts, " experts and key size ", c.key_dim, " (", parameters_.size(), " expected)");
        parameters_ = std::move(parameters);
    }

    const router_config& config() const noexcept { return config_; }
    std::span<float> parameters() noexcept { return parameters_; }
    std::span<const float> parameters() const noexcept { return parameters_; }

    // α for a pooled hidden state h [dim], with the router's parameters or with `p`.
    void forward(std::span<const float> h, std::span<float> alpha) const { forward(parameters_, h, alpha); }
    void forward(std::span<const float> p, std::span<const float> h, std::span<float> alpha) const {
        T2_CHECK(alpha.size() == config_.experts, "router: ", alpha.size(), " outputs for ", config_.experts, " experts");
        std::vector<double> q(config_.key_dim), a(config_.experts);
        scores(p, h, q, a);
        softmax(a);
        for (std::size_t k = 0; k < a.size(); ++k)
            alpha[k] = float(a[k]);
    }

    // gradient += dL/dp given h, and dL/dα (at the parameters p).
    void backward(std::span<const float> p, std::span<const float> h, std::span<const float> dalpha,
                  std::span<float> gradient) const {
        T2_CHECK(dalpha.size() == config_.experts, "router backward: ", dalpha.size(), " gradients of α for ",
                 config_.experts, " experts");
        std::vector<double> q(config_.key_dim), alpha(config_.experts), ds(config_.experts);
        scores(p, h, q, alpha);
        softmax(alpha);
        double weighted = 0; // Σ_j α_j dα_j
        for (std::size_t k = 0; k < alpha.size(); ++k)
            weighted += alpha[k] * double(dalpha[k]);
        for (std::size_t k = 0; k < alpha.size(); ++k)
            ds[k] = alpha[k] * (double(dalpha[k]) - weighted);
        accumulate(p, h, q, ds, gradient);
    }

    // −log α_label, and gradient += its dL/dp.
    float label_loss(std::span<const float> p, std::span<const float> h, std::size_t label,
                     std::span<float> gradient) const {
        T2_CHECK(label < config_.experts, "router: label ", label, " of ", config_.experts, " experts");
        std::vector<double> q(config_.key_dim), s(config_.experts), ds(config_.experts);
        scores(p, h, q, s);
        // log-softmax: the loss stays finite when α_label underflows.
        double top = s[0];
        for (const double v : s)
            top = std::max(top, v);
        double sum = 0;
        for (const double v : s)
            sum += std::exp(v - top);
        for (std::size_t k = 0; k < s.size(); ++k)
            ds[k] = std::exp(s[k] - top) / sum - (k == label ? 1.0 : 0.0);
        if (!gradient.empty())
            accumulate(p, h, q, ds, gradient);
        return float(top + std::log(sum) - s[label]);
    }

private:
    double scale() const noexcept { return 1.0 / (double(config_.temperature) * std::sqrt(double(config_.key_dim))); }

    void check(std::span<const float> p, std::span<const float> h) const {
        T2_CHECK(p.size() == parameters_.size(), "router: ", p.size(), " parameters, expected ", parameters_.size());
        T2_CHECK(h.size() == config_.dim, "router: a hidden state of ", h.size(), " values for dim ", config_.dim);
    }

    // q = W_q·h, s = E·q·scale.
    void scores(std::span<const float> p, std::span<const float> h, std::span<double> q, std::span<double> s) const {
        check(p, h);
        const std::size_t D = config_.dim, dk = config_.key_dim;
        for (std::size_t i = 0; i < dk; ++i) {
            double sum = 0;
            for (std::size_t j = 0; j < D; ++j)
                sum += double(p[i * D + j]) * double(h[j]);
            q[i] = sum;
        }
        const float* keys = p.data() + dk * D;
        for (std::size_t k = 0; k < config_.experts; ++k) {
            double sum = 0;
            for (std::size_t i = 0; i < dk; ++i)
                sum += double(keys[k * dk + i]) * q[i];
            s[k] = sum * scale();
        }
    }

    static void softmax(std::span<double> v) {
        double top = v[0], sum = 0;
        for (const double x : v)
            top = std::max(top, x);
        for (double& x : v)
            sum += x = std::exp(x - top);
        for (double& x : v)
            x /= sum;
    }

    // From ds = dL/ds: dE_k = ds_k·scale·q, dq = scale·Σ_k ds_k e_k, dW_q = dq ⊗ h.
    void accumulate(std::span<const float> p, std::span<const float> h, std::span<const double> q,
                    std::span<const double> ds, std::span<float> gradient) const {
        T2_CHECK(gradient.size() == parameters_.size(), "router: a gradient of ", gradient.size(), " for ",
                 parameters_.size(), " parameters");
        const std::size_t D = config_.dim, dk = config_.key_dim;
        const float* keys = p.data() + dk * D;
        float* dkeys = gradient.data() + dk * D;
        std::vector<double> dq(dk, 0.0);
        for (std::size_t k = 0; k < config_.experts; ++k)
            for (std::size_t i = 0; i < dk; ++i) {
                dkeys[k * dk + i] += float(ds[k] * scale() * q[i]);
                dq[i] += ds[k] * scale() * double(keys[k * dk + i]);
            }
        for (std::size_t i = 0; i < dk; ++i)
            for (std::size_t j = 0; j < D; ++j)
                gradient[i * D + j] += float(dq[i] * double(h[j]));
    }

    router_config config_;
    std::vector<float> parameters_;
};

} // namespace nn
T2_NAMESPACE_END
