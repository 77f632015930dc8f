#pragma once
// A mixture of SVF experts: a weight policy whose expert vector is z' = Σ_k α_k z_k, from K
// expert vectors z_k of this matrix (frozen) and mixing weights α [K] (trainable; the
// few-shot CEM search and the dual-attention router produce them). Global or per-layer α
// is the caller's choice: it hands each matrix the α of its layer, or the same α to all.
// Gradients reach α (dL/dα_k = z_k · dL/dz') and the experts (dL/dz_k = α_k dL/dz'), so
// either can be trained.
#include <cstddef>
#include <span>
#include <utility>
#include <vector>

#include "t2/adapt/svf.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

class mixture {
public:
    struct gradient {
        std::vector<float> alpha; // dL/dα [K], accumulated
        matrix<float> experts;    // dL/dz_k [K × r], accumulated
        svf::gradient mixed;      // dL/dz' of the last backward call
    };

    mixture() = default;
    explicit mixture(nn::dense<float> base) : svf_(std::move(base)) {}
    // experts [K × r]: one expert vector per row; starts at α = (1/K, …, 1/K).
    mixture(svd_factors factors, matrix<float> experts, svf_options options = {})
        : svf_(std::move(factors), options), experts_(std::move(experts)) {
        T2_CHECK(experts_.extent(0) > 0 && experts_.extent(1) == svf_.rank(), "mixture: experts are ",
                 experts_.shape(), ", need K × ", svf_.rank(), " with K ≥ 1");
        const std::vector<float> uniform(experts_.extent(0), 1.f / static_cast<float>(experts_.extent(0)));
        set_alpha(exec::scalar{}, uniform);
    }

    bool adapted() const noexcept { return svf_.adapted(); }
    std::size_t experts() const noexcept { return experts_.extent(0); }
    std::size_t rank() const noexcept { return svf_.rank(); }
    std::size_t in_features() const noexcept { return svf_.in_features(); }
    std::size_t out_features() const noexcept { return svf_.out_features(); }
    std::span<const float> alpha() const noexcept { return alpha_; }
    const svf& mixed() const noexcept { return svf_; }

    // `tokens` as in svf::set_z.
    template <exec::cpu_executor E>
    void set_alpha(const E& ex, std::span<const float> alpha, std::size_t tokens = 1) {
        T2_CHECK(adapted(), "mixture: set_alpha on a matrix that is not adapted");
        T2_CHECK(alpha.size() == experts(), "mixture: ", alpha.size(), " mixing weights for ", experts(),
                 " experts");
        alpha_.assign(alpha.begin(), alpha.end());
        std::vector<float> z(rank(), 0.f);
        for (std::size_t k = 0; k < experts(); ++k)
            for (std::size_t j = 0; j < rank(); ++j)
                z[j] += alpha_[k] * experts_(k, j);
        svf_.set_z(ex, z, tokens);
    }

    template <exec::cpu_executor E>
    void forward(const E& ex, matrix_view<const float> x, matrix_view<float> y) const {
        svf_.forward(ex, x, y);
    }

    gradient make_gradient() const {
        if (!adapted())
            return {};
        return {std::vector<float>(experts(), 0.f), matrix<float>(experts(), rank()), svf_.make_gradient()};
    }

    template <exec::cpu_executor E>
    void backward(const E& ex, matrix_view<const float> x, matrix_view<const float> dy,
                  matrix_view<float> dx, gradient& grad) const {
        if (!adapted())
            return svf_.backward(ex, x, dy, dx, grad.mixed);
        std::fill(grad.mixed.z.begin(), grad.mixed.z.end(), 0.f);
        svf_.backward(ex, x, dy, dx, grad.mixed);
        for (std::size_t k = 0; k < experts(); ++k) {
            double d = 0;
            for (std::size_t j = 0; j < rank(); ++j) {
                d += double(experts_(k, j)) * grad.mixed.z[j];
                grad.experts(k, j) += alpha_[k] * grad.mixed.z[j];
            }
            grad.alpha[k] += static_cast<float>(d);
        }
    }

private:
    svf svf_;
    matrix<float> experts_;
    std::vector<float> alpha_;
};

} // namespace adapt
T2_NAMESPACE_END
