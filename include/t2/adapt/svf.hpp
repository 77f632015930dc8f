#pragma once
// Singular Value Fine-tuning: a weight policy for nn::linear whose adapted matrix is
//
//   W' = U diag(σ ⊙ z · c) Vᵀ,   c = Σσ / Σ(σ⊙z) with rescaling (the reference code's), else 1
//
// from the frozen thin SVD of the base matrix, W = U diag(σ) Vᵀ (U [out × r], V [in × r]).
// The policy holds only what is frozen — the base matrix and its factors — and is shared;
// the expert vector z lives in a per-matrix svf_state of an adapter (nn/adapter_state.hpp),
// parametrized one of three ways:
//   z        the parameters are z itself (z = 1: the base's singular values);
//   sigmoid  the parameters are θ and z = sigmoid(θ), as the reference implementation trains;
//   mixture  the parameters are mixing weights α [K] over K frozen expert vectors z_k of the
//            matrix, z = Σ_k α_k z_k (one α for the model or one per layer, shared by the
//            matrices it mixes).
// Gradients reach the parameters through the chain rule in each case.
//
// Two exact ways to apply W' to x [T × in]:
//   composed: materialize W' (a gemm of out·in·r multiply-adds), then y = x·W'ᵀ;
//   factored: y = ((x·V) ⊙ s)·Uᵀ with s = σ⊙z·c, no materialization, T·r·(in+out) per call.
// prepare() composes when that is cheaper for the tokens to come (cheaper_svf_mode) and keeps
// W' with a copy of the parameters it was made from; forward uses it only while the
// parameters are unchanged, so a stale W' is never read. Factored needs nothing prepared,
// and is what a batch whose sequences carry different states runs: x·V and ·Uᵀ are one gemm
// over all rows, and each sequence's rows get their own scale vector s.
//
// Without a state (or with an inactive one, for a matrix the adapter leaves alone) a matrix
// runs its dense base exactly; a matrix the model does not decompose holds only its base.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <memory>
#include <numeric>
#include <span>
#include <string>
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

// Multiply-adds to run `tokens` tokens through one matrix with a fresh z, either way.
constexpr svf_mode cheaper_svf_mode(std::size_t out, std::size_t in, std::size_t rank,
                                    std::size_t tokens) noexcept {
    const double composed = double(out) * double(in) * (double(rank) + double(tokens));
    const double factored = double(tokens) * double(rank) * double(in + out);
    return composed < factored ? svf_mode::composed : svf_mode::factored;
}

enum class svf_parametrization { z, sigmoid, mixture };

// One matrix's share of an SVF adapter (see the top of this file). Inactive (no parameters)
// for a matrix the adapter leaves alone.
struct svf_state {
    svf_parametrization parametrization = svf_parametrization::z;
    bool rescale = false;
    std::span<float> parameters; // z or θ [r], or α [K]; views the adapter's flat parameters
    std::span<float> gradient;   // the same layout in the adapter's flat gradient
    matrix<float> experts;       // mixture: [K × r], frozen

    // W' for the parameters in composed_from (prepare()); used only while they are current.
    matrix<float> composed;
    std::vector<float> composed_from;

    bool active() const noexcept { return !parameters.empty(); }
    bool composed_is_current() const noexcept {
        return composed.size() != 0 &&
               std::equal(parameters.begin(), parameters.end(), composed_from.begin(), composed_from.end());
    }

    // z from the parameters, into z [r].
    void expert_vector(std::span<float> z) const {
        switch (parametrization) {
        case svf_parametrization::z: std::copy(parameters.begin(), parameters.end(), z.begin()); return;
        case svf_parametrization::sigmoid:
            for (std::size_t j = 0; j < z.size(); ++j)
                z[j] = 1.f / (1.f + std::exp(-parameters[j]));
            return;
        case svf_parametrization::mixture: break;
        }
        std::fill(z.begin(), z.end(), 0.f);
        for (std::size_t k = 0; k < experts.extent(0); ++k)
            for (std::size_t j = 0; j < z.size(); ++j)
                z[j] += parameters[k] * experts(k, j);
    }
};

class svf {
public:
    using state = svf_state;

    svf() = default;
    // A matrix the model does not decompose: only its base.
    explicit svf(nn::dense<float> base) : base_(std::move(base)) {}
    // A decomposed matrix; without an adapter it runs its dense base exactly.
    svf(nn::dense<float> base, svd_factors factors) : base_(std::move(base)), factors_(std::move(factors)) {
        check_factors();
        T2_CHECK(base_.out_features() == factors_.out_features() && base_.in_features() == factors_.in_features(),
                 "svf: factors of a ", factors_.out_features(), "x", factors_.in_features(), " matrix for a ",
                 base_.out_features(), "x", base_.in_features(), " base");
    }
    // Factors alone: the base is U diag(σ) Vᵀ.
    explicit svf(svd_factors factors) : factors_(std::move(factors)) { check_factors(); }

    bool adapted() const noexcept { return factors_.rank() > 0; }

    // Whether W' exists for state s: with rescaling Σ(σ⊙z) must be finite and non-zero (a
    // mixture whose weights are all 0 has none). forward refuses a state for which it is not.
    bool rescaling_defined(const state& s) const {
        if (!adapted() || !s.active() || !s.rescale)
            return true;
        // z_j as svf_state::expert_vector rounds it, so that this agrees with forward's check.
        const auto z = [&](std::size_t j) {
            if (s.parametrization == svf_parametrization::z)
                return s.parameters[j];
            if (s.parametrization == svf_parametrization::sigmoid)
                return 1.f / (1.f + std::exp(-s.parameters[j]));
            float sum = 0.f;
            for (std::size_t k = 0; k < s.experts.extent(0); ++k)
                sum += s.parameters[k] * s.experts(k, j);
            return sum;
        };
        double weighted = 0;
        for (std::size_t j = 0; j < rank(); ++j)
            weighted += double(factors_.sigma[j]) * z(j);
        return weighted != 0.0 && std::isfinite(weighted);
    }

    std::size_t rank() const noexcept { return factors_.rank(); }
    std::size_t in_features() const noexcept { return has_base() ? base_.in_features() : factors_.in_features(); }
    std::size_t out_features() const noexcept { return has_base() ? base_.out_features() : factors_.out_features(); }
    const svd_factors& factors() const noexcept { return factors_; }
    const nn::dense<float>& base() const noexcept { return base_; }

    // Floats of scratch that forward and backward need for `rows` rows (with any state).
    std::size_t scratch_floats(std::size_t rows, const state& = {}) const noexcept {
        return adapted() ? rows * rank() + 2 * rank() : 0;
    }
    std::size_t backward_scratch_floats(std::size_t rows, const state& = {}) const noexcept {
        return adapted() ? 2 * rows * rank() + 3 * rank() : 0;
    }

    // The base matrix.
    template <exec::cpu_executor E>
    void forward(const E& ex, matrix_view<const float> x, matrix_view<float> y) const {
        if (has_base())
            return base_.forward(ex, x, y);
        std::vector<float> scratch(scratch_floats(x.extent(0)));
        factored(ex, x, y, {}, scratch);
    }

    // Each group of rows with its adapter's state (nullptr or inactive: the base).
    template <exec::cpu_executor E>
    void forward(const E& ex, matrix_view<const float> x, matrix_view<float> y,
                 std::span<const nn::adapter_rows<state>> rows, std::span<float> scratch) const {
        nn::check_adapter_rows("svf", rows, x.extent(0));
        const state* first = rows.empty() ? nullptr : rows.front().state;
        const bool one_state = std::all_of(rows.begin(), rows.end(), [&](const auto& g) { return g.state == first; });
        if (!adapted()) {
            for (const auto& g : rows)
                check_state(g.state);
            return forward(ex, x, y);
        }
        if (one_state && (!first || !first->active()))
            return forward(ex, x, y);
        if (one_state && first->composed_is_current())
            return ops::gemm(ex, x, first->composed.view(), y, {.transpose_b = true});
        factored(ex, x, y, rows, scratch);
    }

    // Composes W' for the state's current parameters where that is cheaper than factoring
    // for `tokens` tokens (or as `mode` says), else drops a composed W'.
    template <exec::cpu_executor E>
    void prepare(const E& ex, state& s, std::size_t tokens, svf_mode mode = svf_mode::automatic) const {
        if (mode == svf_mode::automatic)
            mode = cheaper_svf_mode(out_features(), in_features(), rank(), tokens);
        check_state(&s);
        if (!adapted() || !s.active() || mode == svf_mode::factored) {
            s.composed = {};
            s.composed_from.clear();
            return;
        }
        std::vector<float> z(rank()), scales(rank());
        singular_values(&s, z, scales);
        matrix<float> scaled_u(dims<2>(out_features(), rank()), uninitialized);
        std::copy(factors_.u.data(), factors_.u.data() + factors_.u.size(), scaled_u.data());
        scale_columns(scaled_u.view(), scales);
        s.composed = matrix<float>(dims<2>(out_features(), in_features()), uninitialized);
        ops::gemm(ex, scaled_u.view(), factors_.v, s.composed.view(), {.transpose_b = true});
        s.composed_from.assign(s.parameters.begin(), s.parameters.end());
    }

    // Given x and dL/dy of a forward call with state s (nullptr: the base): dx = dL/dx
    // (overwritten), and s's gradient += dL/d(parameters). With t = x·V and g = dy·U:
    // dL/ds = Σ_t t ⊙ g, dx = (g ⊙ s)·Vᵀ, and through s_j = σ_j z_j c:
    // dL/dz_j = σ_j c (dL/ds_j − Σ_i σ_i z_i dL/ds_i / Σ_i σ_i z_i) with rescaling (c depends on
    // z), σ_j c dL/ds_j without; then dL/dθ_j = dL/dz_j · z_j (1 − z_j) for sigmoid, and
    // dL/dα_k = Σ_j z_kj dL/dz_j for a mixture.
    template <exec::cpu_executor E>
    void backward(const E& ex, matrix_view<const float> x, matrix_view<const float> dy, matrix_view<float> dx,
                  state* s, std::span<float> scratch) const {
        check_state(s);
        if (!adapted() || !s || !s->active()) {
            if (has_base()) {
                nn::dense<float>::gradient frozen; // the base weight is not trained
                return base_.backward(ex, x, dy, dx, frozen);
            }
        }
        const bool trained = adapted() && s && s->active();
        const std::size_t T = x.extent(0), r = rank();
        T2_CHECK(scratch.size() >= backward_scratch_floats(T), "svf: backward scratch of ", scratch.size(),
                 " floats, needs ", backward_scratch_floats(T));
        const auto t = view_of(scratch.data(), T, r), g = view_of(scratch.data() + T * r, T, r);
        const auto z = scratch.subspan(2 * T * r, r), scales = scratch.subspan(2 * T * r + r, r);
        const auto ds = scratch.subspan(2 * T * r + 2 * r, r);
        ops::gemm(ex, dy, factors_.u, g);
        if (trained) {
            ops::gemm(ex, x, factors_.v, t);
            column_dots(t, g, ds);
        }
        const double c = singular_values(trained ? s : nullptr, z, scales);
        scale_columns(g, scales);
        ops::gemm(ex, matrix_view<const float>(g), factors_.v, dx, {.transpose_b = true});
        if (!trained)
            return;

        const auto sigma = factors_.sigma;
        double weighted = 0, total = 0;
        for (std::size_t j = 0; j < r; ++j) {
            weighted += double(sigma[j]) * z[j] * ds[j];
            total += double(sigma[j]) * z[j];
        }
        const double shift = s->rescale ? weighted / total : 0.0;
        const auto dz = [&](std::size_t j) { return double(sigma[j]) * c * (double(ds[j]) - shift); };
        switch (s->parametrization) {
        case svf_parametrization::z:
            for (std::size_t j = 0; j < r; ++j)
                s->gradient[j] += static_cast<float>(dz(j));
            return;
        case svf_parametrization::sigmoid:
            for (std::size_t j = 0; j < r; ++j)
                s->gradient[j] += static_cast<float>(dz(j) * z[j] * (1.0 - z[j]));
            return;
        case svf_parametrization::mixture: break;
        }
        for (std::size_t k = 0; k < s->experts.extent(0); ++k) {
            double d = 0;
            for (std::size_t j = 0; j < r; ++j)
                d += double(s->experts(k, j)) * dz(j);
            s->gradient[k] += static_cast<float>(d);
        }
    }

private:
    bool has_base() const noexcept { return base_.out_features() > 0; }

    void check_factors() const {
        T2_CHECK(factors_.u.extent(1) == rank() && factors_.v.extent(1) == rank(), "svf: U is ",
                 factors_.u.shape(), ", V is ", factors_.v.shape(), " for ", rank(), " singular values");
    }

    // An active state must fit this matrix; a matrix that is not decomposed takes none.
    void check_state(const state* s) const {
        if (!s || !s->active())
            return;
        const bool mixture = s->parametrization == svf_parametrization::mixture;
        const std::size_t want = mixture ? s->experts.extent(0) : rank();
        T2_CHECK(adapted() && s->parameters.size() == want && s->gradient.size() == want &&
                     (!mixture || s->experts.extent(1) == rank()),
                 "svf: an adapter state with ", s->parameters.size(), " parameters (experts ", s->experts.shape(),
                 ") for a matrix ", adapted() ? "of rank " + std::to_string(rank()) : std::string("not decomposed"),
                 ": the adapter was made for another model");
    }

    // The singular values of W' for state s (σ for nullptr) into scales, z into z; returns c.
    double singular_values(const state* s, std::span<float> z, std::span<float> scales) const {
        const auto sigma = factors_.sigma;
        if (!s || !s->active()) {
            std::copy(sigma.data(), sigma.data() + rank(), scales.begin());
            std::fill(z.begin(), z.end(), 1.f);
            return 1.0;
        }
        s->expert_vector(z);
        double weighted = 0, total = 0;
        for (std::size_t j = 0; j < rank(); ++j) {
            weighted += double(sigma[j]) * z[j];
            total += sigma[j];
        }
        double c = 1.0;
        if (s->rescale) {
            T2_CHECK(weighted != 0.0 && std::isfinite(weighted), "svf: Σ(σ⊙z) is ", weighted,
                     "; rescaling by Σσ / Σ(σ⊙z) is undefined");
            c = total / weighted;
        }
        for (std::size_t j = 0; j < rank(); ++j)
            scales[j] = static_cast<float>(double(sigma[j]) * z[j] * c);
        return c;
    }

    // y = ((x·V) ⊙ s_g)·Uᵀ with s_g the singular values of each group's state; the rows of
    // groups without one are then overwritten by the dense base when there is one.
    template <exec::cpu_executor E>
    void factored(const E& ex, matrix_view<const float> x, matrix_view<float> y,
                  std::span<const nn::adapter_rows<state>> rows, std::span<float> scratch) const {
        const std::size_t T = x.extent(0), r = rank();
        T2_CHECK(scratch.size() >= scratch_floats(T), "svf: scratch of ", scratch.size(), " floats, forward needs ",
                 scratch_floats(T));
        const auto z = scratch.subspan(0, r), scales = scratch.subspan(r, r);
        const auto t = view_of(scratch.data() + 2 * r, T, r);
        ops::gemm(ex, x, factors_.v, t);
        if (rows.empty()) {
            singular_values(nullptr, z, scales);
            scale_columns(t, scales);
        }
        for (const auto& group : rows) {
            check_state(group.state);
            const bool base = !group.state || !group.state->active();
            singular_values(base ? nullptr : group.state, z, scales);
            scale_columns(t.rows(group.first, group.first + group.count), scales);
        }
        ops::gemm(ex, matrix_view<const float>(t), factors_.u, y, {.transpose_b = true});
        if (has_base())
            for (const auto& group : rows)
                if (!group.state || !group.state->active())
                    base_.forward(ex, x.rows(group.first, group.first + group.count),
                                  y.rows(group.first, group.first + group.count));
    }

    static void scale_columns(matrix_view<float> m, std::span<const float> s) noexcept {
        for (std::size_t i = 0; i < m.extent(0); ++i) {
            float* row = m.row(i).data();
            for (std::size_t j = 0; j < s.size(); ++j)
                row[j] *= s[j];
        }
    }

    // ds_j = Σ_i t_ij g_ij, accumulated in double eight columns at a time.
    static void column_dots(matrix_view<const float> t, matrix_view<const float> g, std::span<float> ds) noexcept {
        const std::size_t T = t.extent(0), r = t.extent(1);
        for (std::size_t j0 = 0; j0 < r; j0 += 8) {
            const std::size_t n = std::min<std::size_t>(8, r - j0);
            double sum[8] = {};
            for (std::size_t i = 0; i < T; ++i) {
                const float *a = t.row(i).data() + j0, *b = g.row(i).data() + j0;
                for (std::size_t j = 0; j < n; ++j)
                    sum[j] += double(a[j]) * double(b[j]);
            }
            for (std::size_t j = 0; j < n; ++j)
                ds[j0 + j] = static_cast<float>(sum[j]);
        }
    }

    nn::dense<float> base_;
    svd_factors factors_;
};

} // namespace adapt
T2_NAMESPACE_END
