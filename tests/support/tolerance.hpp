#pragma once
// Tolerances for comparing two f32 evaluations of the same model that differ only in the
// order of their summations (scalar against SIMD of any width, a gemm against a dot kernel,
// prefill against decoding), derived from the computation instead of fitted to a machine.
//
// 1. One summation. In f32 (unit roundoff u = 2⁻²⁴), a dot product of length n computed in
//    any order satisfies |fl(s) − s| ≤ γ_n Σ|aᵢbᵢ| with γ_n = nu / (1 − nu) (Higham,
//    "Accuracy and Stability of Numerical Algorithms", §3.1). That bound is reached only when
//    every rounding error has the same sign; treating rounding errors as independent and
//    mean-zero (Higham & Mary, "A new approach to probabilistic rounding error analysis",
//    SIAM J. Sci. Comput. 41(5), 2019, Thm 3.1) gives
//        γ̃_n(λ) = exp(λ√n·u + nu²/(1 − u)) − 1
//    with probability at least 1 − 2n·exp(−λ²(1 − u)²/2). λ = 8 leaves about 10⁻¹⁰ for the
//    chain lengths below: a check failing by chance is not a possibility we budget for.
//
// 2. Through the model. Every block starts from rmsnorm(x): a relative error ρ of the residual
//    stream x becomes (to first order) the same relative error of the normalized x̂, because
//    x̂ = √D · x/‖x‖ and the derivative of x/‖x‖ is a projection scaled by 1/‖x‖. The errors of
//    the chains of summations a token's value passes through therefore add up as relative
//    errors: per block D (q, k, v) + head_dim (scores) + 2·context (softmax denominator and
//    the weighted values) + D (wo) + D (w1, w3) + hidden_dim (w2) + 2·D (the two norms'
//    sums of squares); then D (final norm) and D (classifier). The chain length N is their
//    sum, and the relative error of what reaches the classifier is at most γ̃_N. This takes
//    the sublayers to be well conditioned relative to the normalized stream (no cancellation
//    that amplifies relative error), which holds for trained and random-weight models alike;
//    a kernel bug moves logits by far more than the bound (tests/test_nn_llama.cpp shows it).
//
// 3. One logit. zᵢ = Σⱼ hⱼWᵢⱼ with h = g ⊙ x̂, so by Cauchy–Schwarz
//        Σⱼ |hⱼWᵢⱼ| ≤ ‖g‖_∞ ‖x̂‖₂ ‖Wᵢ‖₂ = ‖g‖_∞ √D ‖Wᵢ‖₂ =: sᵢ,
//    a magnitude known from the weights alone. Each evaluation is within γ̃_N·sᵢ of the exact
//    logit; two evaluations are within twice that of each other.
//
// 4. One kernel. A kernel output that is a sum of n terms (gemm: n = k products, then α·, β·c
//    and their sum, so k + 2 roundings on the longest path) is within γ̃_n·Σ|terms| of the
//    exact value in whatever order the terms are added; two orders are within twice that of
//    each other; a double-precision reference (its own error ~n·2⁻⁵³, negligible) rounded to
//    f32 is one more rounding, u·|want| ≤ u·Σ|terms|. Below n = λ² = 64 the deterministic γ_n
//    is the smaller bound, and it holds always, so summation_error_bound takes the minimum.
//
// 5. Element-wise functions. simd<Arch> evaluates exp, erf, tanh, sin and cos with xsimd's
//    polynomial kernels (Cephes-derived, peak errors 1–2 ulp), the scalar reference with the
//    C library (≤ 1 ulp in glibc); an ulp of f is at most 2u·|f|, so either is taken within
//    function_error = 2 ulp = 4u of the exact value, relative to |f| (absolute for sin and cos,
//    whose values are ≤ 1). A test adds the roundings of its formula around the function.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include <doctest/doctest.h>

#include "t2/core/dtype.hpp"
#include "t2/nn/config.hpp"

namespace t2_test {

inline constexpr double unit_roundoff = 0x1p-24; // f32, round to nearest
inline constexpr double rounding_lambda = 8;

inline constexpr double function_error = 4 * unit_roundoff; // 2 ulp, comment 5

// γ_n = nu / (1 − nu) of Higham (deterministic bound on a length-n f32 summation).
inline double deterministic_summation_bound(std::size_t n) {
    const double nu = double(n) * unit_roundoff;
    return nu / (1 - nu);
}

// min(γ_n, γ̃_n(λ)), γ̃_n(λ) of Higham & Mary (probabilistic bound on a length-n f32
// summation), relative to the sum of the magnitudes of the terms.
inline double summation_error_bound(std::size_t n, double lambda = rounding_lambda) {
    const double u = unit_roundoff;
    return std::min(deterministic_summation_bound(n),
                    std::expm1(lambda * std::sqrt(double(n)) * u + double(n) * u * u / (1 - u)));
}

// Relative to Σ|terms|: two f32 evaluations of a length-n sum in different orders (comment 4).
inline double between_orders(std::size_t n) { return 2 * summation_error_bound(n); }

// Relative to Σ|terms|: an f32 evaluation against a double reference rounded to f32.
inline double against_double(std::size_t n) { return summation_error_bound(n) + unit_roundoff; }

// Σ|terms| of every element of C = α·A·B + β·C (m×n, row-major), A m×k and B k×n read through
// a(i, p), b(p, j) and c(i, j); β = 0 drops the C term (C may then hold NaN).
template <class A, class B, class C>
std::vector<double> product_magnitudes(std::size_t m, std::size_t n, std::size_t k, A&& a, B&& b,
                                       double alpha, double beta, C&& c) {
    std::vector<double> out(m * n);
    for (std::size_t i = 0; i < m; ++i)
        for (std::size_t j = 0; j < n; ++j) {
            double s = 0;
            for (std::size_t p = 0; p < k; ++p)
                s += std::abs(double(a(i, p)) * double(b(p, j)));
            out[i * n + j] = std::abs(alpha) * s + (beta == 0 ? 0 : std::abs(beta * double(c(i, j))));
        }
    return out;
}

// relative · magnitudes[i], as the per-element bounds of T2_CHECK_WITHIN.
inline std::vector<float> scaled_bounds(std::span<const double> magnitudes, double relative) {
    std::vector<float> out(magnitudes.size());
    for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = float(relative * magnitudes[i]);
    return out;
}

// N of the model comment above: the summation lengths a logit depends on, through every block,
// for a context of `context` positions.
template <class Config>
std::size_t summation_chain_length(const Config& c, std::size_t context) {
    const std::size_t per_block = std::size_t(c.dim) + t2::nn::head_dim(c) + 2 * context + std::size_t(c.dim) +
                                  std::size_t(c.dim) + std::size_t(c.hidden_dim) + 2 * std::size_t(c.dim);
    return std::size_t(c.n_layers) * per_block + 2 * std::size_t(c.dim);
}

// Per-logit bound (one entry per vocabulary entry) on |z − z'| for two f32 evaluations of
// `model` over `context` positions that differ in summation order: 2·γ̃_N·sᵢ. A matrix rebuilt
// from factors (an SVF W' = U diag(σ ⊙ z) Vᵀ of rank r, composed or applied factored) is one
// more summation of length r on the chain: pass their sum as `extra_chain`.
template <class Model>
std::vector<float> logit_order_tolerance(const Model& model, std::size_t context, std::size_t extra_chain = 0) {
    const auto& c = model.config();
    const auto& w = model.weights();
    double g_max = 0;
    for (std::size_t j = 0; j < w.final_norm.size(); ++j)
        g_max = std::max(g_max, std::abs(double(w.final_norm[j])));
    const auto classifier = w.classifier.weight().weight();
    const double relative = 2 * summation_error_bound(summation_chain_length(c, context) + extra_chain);
    std::vector<float> bound(classifier.extent(0));
    for (std::size_t i = 0; i < bound.size(); ++i) {
        double row = 0;
        for (std::size_t j = 0; j < classifier.extent(1); ++j) {
            const double v = t2::to_f32(classifier(i, j));
            row += v * v;
        }
        bound[i] = float(relative * g_max * std::sqrt(double(c.dim)) * std::sqrt(row));
    }
    return bound;
}

// Against a float64 reference that computes RoPE's angles exactly (two f32 evaluations share
// theirs, so logit_order_tolerance has no such term). t2 computes them in f32 (ops/rope.hpp):
// inv_freq = 1/θ^x with x = 2i/head_dim rounded (u·x, so θ^x within ln θ·x·u), pow within
// function_error, 1/· and pos·inv_freq one rounding each, so the angle pos·θ^(−x) is within
// pos·θ^(−x)·(ln θ·x·u + function_error + 2u) ≤ pos·(u/e + function_error + 2u) (y·e^(−y) ≤
// 1/e), and cos and sin add function_error each. A rotation off by δ moves a vector by δ of
// its norm, a relative error of q and of k: the scores of every block see twice
//   δ = (context − 1)·(u/e + function_error + 2u) + 2·function_error.
// Returns that relative error summed over the blocks, to add to γ̃_N of comment 2.
template <class Config>
double rope_angle_error(const Config& c, std::size_t context) {
    const double u = unit_roundoff;
    const double delta = double(context == 0 ? 0 : context - 1) * (u / std::exp(1.0) + function_error + 2 * u) +
                         2 * function_error;
    return double(c.n_layers) * 2 * delta;
}

// Per-logit bound (one entry per vocabulary entry) on |z − z_exact| for one f32 evaluation of
// `model` against an exact (float64) one with exact RoPE angles: (γ̃_N + rope_angle_error)·sᵢ,
// half of logit_order_tolerance's 2γ̃_N·sᵢ plus the angles' share.
template <class Model>
std::vector<float> logit_reference_tolerance(const Model& model, std::size_t context, std::size_t extra_chain = 0) {
    const double gamma = summation_error_bound(summation_chain_length(model.config(), context) + extra_chain);
    const double scale = (gamma + rope_angle_error(model.config(), context)) / (2 * gamma);
    std::vector<float> bound = logit_order_tolerance(model, context, extra_chain);
    for (float& b : bound)
        b = float(double(b) * scale);
    return bound;
}

// The chain of roundings (comment 2) from the loss's dL/dlogits back to the first block's
// input, for `context` positions: each forward summation has a backward one over its other
// dimension. The classifier's transpose (vocab) and the final norm's backward (rmsnorm_backward:
// D for Σ g·w·x, its rsqrt's D-long sum of squares entering three times, a few elementwise
// roundings); per block the transposes of w2 (D), of w1 and w3 (hidden_dim, and their sum), of
// wo (D) and of wq, wk, wv (D, and their sum), swiglu's backward (seven roundings and two
// exps), attention's backward (head_dim for dP, context for Σ P·dP, context for dQ and dK,
// the heads of a group) and RoPE's (two), the two norms' backwards and the two residual
// additions. The forward values the backward reads (probabilities, activations) carry the
// forward's chain, summation_chain_length, which a gradient's bound adds to this one.
template <class Config>
std::size_t backward_chain_length(const Config& c, std::size_t context) {
    const std::size_t D = c.dim, H = c.hidden_dim, hd = t2::nn::head_dim(c);
    const std::size_t group = std::size_t(c.n_heads) / std::size_t(c.n_kv_heads);
    const std::size_t norm = D + 3 * D + 8; // Σ g·w·x, r³ of a D-long sum, elementwise
    const std::size_t per_block = D + (7 + 8) + (H + 1) + norm + 1 + D + (hd + 2) + (context + 3) +
                                  (context + 2 + group + 2) + 2 + (D + 2) + norm + 1;
    return std::size_t(c.vocab_size) + norm + std::size_t(c.n_layers) * per_block;
}

// Bound on |L − L'| for a mean next-token cross-entropy over the same logits evaluated in
// two summation orders: −log softmax(z)_y = log Σ exp(z) − z_y moves by at most
// max|Δz| + |Δz_y| ≤ 2·max bound, and a mean of such terms by no more.
template <class Model>
double loss_order_tolerance(const Model& model, std::size_t context) {
    const auto bound = logit_order_tolerance(model, context);
    return 2 * double(*std::max_element(bound.begin(), bound.end()));
}

struct bounded_comparison {
    bool ok = true;
    double worst_ratio = 0; // max |got − want| / bound
    std::size_t worst_index = 0;
    double got = 0, want = 0, bound = 0;
};

// |got[i] − want[i]| ≤ bound[i mod bound.size()] for every i (rows of logits share the
// per-vocabulary bound). Against a double reference (finite differences, or a double
// evaluation not rounded to f32), got may be double too: an f32 result less what it
// accumulated onto, exactly. NaN fails.
template <class Got, class Want, class Bound>
bounded_comparison compare_elements(std::span<const Got> got, std::span<const Want> want, std::span<const Bound> bound) {
    REQUIRE(got.size() == want.size());
    REQUIRE(!bound.empty());
    bounded_comparison c;
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double b = double(bound[i % bound.size()]);
        const double diff = std::abs(double(got[i]) - double(want[i]));
        const double ratio = diff == 0 ? 0 : diff / b;
        if (!(ratio <= 1))
            c.ok = false;
        if (!(ratio <= c.worst_ratio)) {
            c.worst_ratio = std::isnan(ratio) ? INFINITY : ratio;
            c.worst_index = i;
            c.got = double(got[i]);
            c.want = double(want[i]);
            c.bound = b;
        }
    }
    return c;
}

inline bounded_comparison compare_within(std::span<const float> got, std::span<const float> want,
                                         std::span<const float> bound) {
    return compare_elements(got, want, bound);
}

inline bounded_comparison compare_within(std::span<const float> got, std::span<const double> want,
                                         std::span<const double> bound) {
    REQUIRE(bound.size() == want.size());
    return compare_elements(got, want, bound);
}

inline bounded_comparison compare_within(std::span<const double> got, std::span<const double> want,
                                         std::span<const double> bound) {
    REQUIRE(bound.size() == want.size());
    return compare_elements(got, want, bound);
}

// One value against one bound.
inline bounded_comparison compare_within(double got, double want, double bound) {
    const double diff = std::abs(got - want), ratio = diff == 0 ? 0 : diff / bound;
    bounded_comparison c{ratio <= 1, std::isnan(ratio) ? INFINITY : ratio, 0, got, want, bound};
    return c;
}

} // namespace t2_test

// Checks got against want within per-element bounds and prints the worst element.
#define T2_CHECK_WITHIN(GOT, WANT, BOUND)                                                        \
    do {                                                                                         \
        const auto t2_within = ::t2_test::compare_within((GOT), (WANT), (BOUND));                \
        INFO("worst element " << t2_within.worst_index << ": got " << t2_within.got << ", want "  \
                              << t2_within.want << ", |difference| = "                          \
                              << std::abs(t2_within.got - t2_within.want) << " is "             \
                              << t2_within.worst_ratio << " of its bound " << t2_within.bound); \
        CHECK(t2_within.ok);                                                                     \
    } while (0)
