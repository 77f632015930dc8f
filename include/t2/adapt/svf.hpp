#pragma once
// Singular Value Fine-tuning: a weight policy for nn::linear whose matrix is
//
//   W' = U diag(σ ⊙ z · c) Vᵀ,   c = Σσ / Σ(σ⊙z) with rescaling (the reference code's), else 1
//
// from the frozen thin SVD of the base matrix, W = U diag(σ) Vᵀ (U [out × r], V [in × r]),
// and an expert vector z [r], the only trainable state. z = 1 gives back W.
//
// Two exact ways to apply it to x [T × in]:
//   composed: materialize W' once per z (a gemm of out·in·r multiply-adds), then y = x·W'ᵀ;
//   factored: y = ((x·V) ⊙ s)·Uᵀ with s = σ⊙z·c, no materialization, T·r·(in+out) per call.
// set_z() takes the number of tokens the caller will run before z changes again and picks
// the cheaper one (cheaper_svf_mode); decoding a long answer with one expert composes,
// training (a new z every step) runs factored.
//
// A matrix the model does not adapt holds its dense base instead (adapted() is false), so a
// whole model can use this one policy type while only its selected matrices carry factors.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <memory>
#include <numeric>
#include <span>
#include <utility>
#include <vector>

#include "t2/adapt/svd.hpp"
#include "t2/core/error.hpp"
#include "t2/core/tensor.hpp"
#include "t2/nn/linear.hpp"
#include "t2/ops/gemm.hpp"

T2_NAMESPACE_BEGIN
namespace adapt {

// The frozen part, W = U diag(σ) Vᵀ, viewing memory kept alive by `owner` (an svd_result,
// or a memory-mapped decomposition file).
struct svd_factors {
    matrix_view<const float> u;     // [out × r]
    vector_view<const float> sigma; // [r]
    matrix_view<const float> v;     // [in × r]
    std::shared_ptr<const void> owner;

    static svd_factors own(svd_result result) {
        auto kept = std::make_shared<const svd_result>(std::move(result));
        return {kept->u.view(), kept->sigma.view(), kept->v.view(), kept};
    }

    std::size_t rank() const noexcept { return sigma.size(); }
    std::size_t out_features() const noexcept { return u.extent(0); }
    std::size_t in_features() const noexcept { return v.extent(0); }
};

enum class svf_mode { automatic, composed, factored };

struct svf_options {
    bool rescale = false;                 // multiply W' by Σσ / Σ(σ⊙z)
    svf_mode mode = svf_mode::automatic;  // or force one (benchmarks, tests)
};

// Multiply-adds to run `tokens` tokens through one matrix with a fresh z, either way.
constexpr svf_mode cheaper_svf_mode(std::size_t out, std::size_t in, std::size_t rank,
                                    std::size_t tokens) noexcept {
    const double composed = double(out) * double(in) * (double(rank) + double(tokens));
    const double factored = double(tokens) * double(rank) * double(in + out);
    return composed < factored ? svf_mode::composed : svf_mode::factored;
}

class svf {
public:
    // dL/dz of one matrix, accumulated over backward calls (empty when not adapted).
    struct gradient {
        std::vector<float> z;
    };

    svf() = default;
    explicit svf(nn::dense<float> base) : base_(std::move(base)) {}
    svf(svd_factors factors, svf_options options = {})
        : factors_(std::move(factors)), options_(options), adapted_(true) {
        T2_CHECK(factors_.u.extent(1) == rank() && factors_.v.extent(1) == rank(),
                 "svf: U is ", factors_.u.shape(), ", V is ", factors_.v.shape(), " for ", rank(),
                 " singular values");
        z_.assign(rank(), 1.f);
        update_scales();
    }

    bool adapted() const noexcept { return adapted_; }
    std::size_t rank() const noexcept { return factors_.rank(); }
    std::size_t in_features() const noexcept {
        return adapted() ? factors_.in_features() : base_.in_features();
    }
    std::size_t out_features() const noexcept {
        return adapted() ? factors_.out_features() : base_.out_features();
    }
    const svd_factors& factors() const noexcept { return factors_; }
    const svf_options& options() const noexcept { return options_; }
    std::span<const float> z() const noexcept { return z_; }
    // σ ⊙ z · c: the singular values of W'.
    std::span<const float> scales() const noexcept { return scales_; }
    // How forward() runs now: composed or factored. Until the first set_z (z = 1) it runs
    // factored whatever the options say: composing needs an executor, which set_z has.
    svf_mode mode() const noexcept { return mode_; }

    // Sets the expert vector. `tokens` is how many tokens the caller will run before the
    // next set_z; with svf_mode::automatic it decides between composing and factoring.
    template <exec::cpu_executor E>
    void set_z(const E& ex, std::span<const float> z, std::size_t tokens = 1) {
        T2_CHECK(adapted(), "svf: set_z on a matrix that is not adapted");
        T2_CHECK(z.size() == rank(), "svf: z has ", z.size(), " elements, the matrix has rank ", rank());
        for (const float zi : z)
            T2_CHECK(std::isfinite(zi), "svf: z holds a non-finite value");
        z_.assign(z.begin(), z.end());
        update_scales();
        mode_ = options_.mode != svf_mode::automatic
                    ? options_.mode
                    : cheaper_svf_mode(out_features(), in_features(), rank(), tokens);
        if (mode_ == svf_mode::composed)
            compose(ex);
        else
            composed_ = {};
    }

    template <exec::cpu_executor E>
    void forward(const E& ex, matrix_view<const float> x, matrix_view<float> y) const {
        if (!adapted())
            return base_.forward(ex, x, y);
        if (mode_ == svf_mode::composed)
            return ops::gemm(ex, x, composed_.view(), y, {.transpose_b = true});
        matrix<float> projected(x.extent(0), rank());
        ops::gemm(ex, x, factors_.v, projected);
        scale_columns(projected.view(), scales_);
        ops::gemm(ex, projected.view(), factors_.u, y, {.transpose_b = true});
    }

    gradient make_gradient() const { return {std::vector<float>(adapted() ? rank() : 0, 0.f)}; }

    // Given x and dL/dy of a forward call: dx = dL/dx (overwritten) and grad.z += dL/dz.
    // With t = x·V and g = dy·U: dL/ds = Σ_t t ⊙ g, dx = (g ⊙ s)·Vᵀ, and through
    // s_j = σ_j z_j c: dL/dz_j = σ_j c (dL/ds_j − Σ_i σ_i z_i dL/ds_i / Σ_i σ_i z_i) with
    // rescaling (c depends on z), σ_j c dL/ds_j without.
    template <exec::cpu_executor E>
    void backward(const E& ex, matrix_view<const float> x, matrix_view<const float> dy,
                  matrix_view<float> dx, gradient& grad) const {
        if (!adapted()) {
            nn::dense<float>::gradient frozen; // the base weight is not trained
            base_.backward(ex, x, dy, dx, frozen);
            return;
        }
        T2_CHECK(grad.z.size() == rank(), "svf: gradient holds ", grad.z.size(), " values for rank ", rank());
        const std::size_t T = x.extent(0), r = rank();
        matrix<float> t(T, r), g(T, r);
        ops::gemm(ex, x, factors_.v, t);
        ops::gemm(ex, dy, factors_.u, g);
        std::vector<double> ds(r, 0.0);
        for (std::size_t i = 0; i < T; ++i)
            for (std::size_t j = 0; j < r; ++j)
                ds[j] += double(t(i, j)) * double(g(i, j));
        scale_columns(g.view(), scales_);
        ops::gemm(ex, g.view(), factors_.v, dx, {.transpose_b = true});

        const auto sigma = factors_.sigma;
        double weighted = 0, total = 0;
        for (std::size_t j = 0; j < r; ++j) {
            weighted += double(sigma[j]) * z_[j] * ds[j];
            total += double(sigma[j]) * z_[j];
        }
        const double shift = options_.rescale ? weighted / total : 0.0;
        for (std::size_t j = 0; j < r; ++j)
            grad.z[j] += static_cast<float>(double(sigma[j]) * scale_ * (ds[j] - shift));
    }

private:
    static void scale_columns(matrix_view<float> m, std::span<const float> s) noexcept {
        for (std::size_t i = 0; i < m.extent(0); ++i) {
            float* row = m.row(i).data();
            for (std::size_t j = 0; j < s.size(); ++j)
                row[j] *= s[j];
        }
    }

    void update_scales() {
        const auto sigma = factors_.sigma;
        double weighted = 0, total = 0;
        for (std::size_t j = 0; j < rank(); ++j) {
            weighted += double(sigma[j]) * z_[j];
            total += sigma[j];
        }
        scale_ = 1.0;
        if (options_.rescale) {
            T2_CHECK(weighted != 0.0 && std::isfinite(weighted), "svf: Σ(σ⊙z) is ", weighted,
                     "; rescaling by Σσ / Σ(σ⊙z) is undefined");
            scale_ = total / weighted;
        }
        scales_.resize(rank());
        for (std::size_t j = 0; j < rank(); ++j)
            scales_[j] = static_cast<float>(double(sigma[j]) * z_[j] * scale_);
    }

    template <exec::cpu_executor E>
    void compose(const E& ex) {
        matrix<float> scaled_u(out_features(), rank());
        std::copy(factors_.u.data(), factors_.u.data() + factors_.u.size(), scaled_u.data());
        scale_columns(scaled_u.view(), scales_);
        composed_ = matrix<float>(out_features(), in_features());
        ops::gemm(ex, scaled_u.view(), factors_.v, composed_.view(), {.transpose_b = true});
    }

    nn::dense<float> base_;
    svd_factors factors_;
    svf_options options_;
    bool adapted_ = false;
    std::vector<float> z_, scales_;
    double scale_ = 1.0; // c
    svf_mode mode_ = svf_mode::factored;
    matrix<float> composed_;
};

} // namespace adapt
T2_NAMESPACE_END
