// Backward kernels (rmsnorm, rope, swiglu, softmax, cross-entropy, causal attention,
// embedding, dense linear) against central finite differences of independent double-precision
// forwards written here, on every executor and on odd sizes; the new forwards (cross-entropy,
// causal attention, embedding) against the same references.
//
// Every gradient check takes L = Σ g ⊙ f(inputs) with random g, differentiates it numerically
// in double (support/finite_differences.hpp: weighted_gradient, h = 1e-6, with a bound on its
// own rounding and truncation error) and checks every element of the f32 backward,
//     |got_i − fd_i| ≤ bound_i + fd_error_i,
// bound_i from the computation (support/tolerance.hpp, u = 2⁻²⁴): the kernel's formula
// evaluated with the absolute value of every term (Σ|terms| through each stage: a sum, a
// product and an elementwise function each carry a relative error relative to that magnitude)
// times summation_error_bound(N), N the longest chain of f32 roundings from the inputs to the
// element, plus function_error for each exp, sin, cos or pow on the chain, plus the relative
// errors the stages pass on (the rsqrt of rmsnorm, the saved probabilities of attention),
// derived next to each kernel's bound below. Where the kernel's formula is a single
// Jacobian-vector product (linear, embedding, swiglu's dup), its Σ|terms| is the finite
// differences' magnitude Σ_j |g_j ∂f_j/∂x_i|; where it is not (a subtraction inside, as in
// softmax, rmsnorm, swiglu's dgate, attention), the composite Jacobian can cancel what the
// kernel's intermediate values do not, so the magnitude is the formula's own. The worst ratio
// |error| / bound of each check is printed.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "support/check.hpp"
#include "support/finite_differences.hpp"
#include "support/executors.hpp"
#include "support/tolerance.hpp"
#include "t2/nn/random_init.hpp"

namespace {

using t2::matrix;
using t2::vector;
using dvec = std::vector<double>;
const t2::exec::scalar reference;

constexpr double u = t2_test::unit_roundoff;
constexpr double fe = t2_test::function_error;

// γ̃_n (the deterministic γ_n below 64), relative to a Σ|terms|.
double gamma_n(std::size_t n) { return t2_test::summation_error_bound(n); }

// f(ex, name) for exec::scalar and every executor tested against it.
template <class F>
void for_every_executor(F&& f) {
    f(reference, std::string("scalar"));
    t2_test::for_each_executor(f);
}

// Uniform values in [lo, hi), as f32 for t2 and the same values widened for the reference.
struct input {
    matrix<float> f;
    dvec d;
    input(std::size_t rows, std::size_t cols, std::uint64_t seed, float lo = -1.f, float hi = 1.f)
        : f(t2_test::random_tensor(t2::dims<2>(rows, cols), seed, lo, hi)),
          d(f.data(), f.data() + f.size()) {}
};

// got − before, elementwise: what an accumulating kernel added.
dvec added(std::span<const float> got, std::span<const float> before) {
    dvec d(got.size());
    for (std::size_t i = 0; i < got.size(); ++i)
        d[i] = double(got[i]) - double(before[i]);
    return d;
}

// bound + the finite differences' own error, elementwise.
template <class Bound>
dvec plus(const Bound& bound, const dvec& fd_error) {
    dvec b(bound.begin(), bound.end());
    for (std::size_t i = 0; i < b.size(); ++i)
        b[i] += fd_error[i];
    return b;
}

// Checks every element within its bound and prints the worst ratio |error| / bound of each
// named check when the test case ends.
class error_log {
public:
    explicit error_log(std::string test) : test_(std::move(test)) {}
    error_log(const error_log&) = delete;
    error_log& operator=(const error_log&) = delete;
    ~error_log() {
        for (const auto& [name, worst] : worst_)
            std::printf("%-28s %-30s worst |error| / bound %.2e\n", test_.c_str(), name.c_str(), worst);
    }

    void record(const std::string& name, const t2_test::bounded_comparison& c) {
        INFO(name << ": worst element " << c.worst_index << ": got " << c.got << ", want " << c.want
                  << ", |difference| = " << std::abs(c.got - c.want) << " is " << c.worst_ratio
                  << " of its bound " << c.bound);
        CHECK(c.ok);
        double& w = worst_[name];
        w = std::max(w, c.worst_ratio);
    }
    void check(const std::string& name, std::span<const float> got, const dvec& want, const dvec& bound) {
        record(name, t2_test::compare_within(got, want, bound));
    }
    void check(const std::string& name, const dvec& got, const dvec& want, const dvec& bound) {
        record(name, t2_test::compare_within(std::span<const double>(got), want, bound));
    }
    // A gradient against finite differences: bound (the f32 kernel's) plus fd.error.
    template <class Got, class Bound>
    void gradient(const std::string& name, const Got& got, const t2_test::fd_gradient& fd, const Bound& bound) {
        check(name, got, fd.value, plus(bound, fd.error));
    }
    void value(const std::string& name, double got, double want, double bound) {
        record(name, t2_test::compare_within(got, want, bound));
    }

private:
    std::string test_;
    std::map<std::string, double> worst_;
};

// ---- double-precision reference forwards ----------------------------------------------------

dvec rmsnorm_ref(const dvec& x, const dvec& w, std::size_t T, std::size_t d, double eps) {
    dvec y(T * d);
    for (std::size_t t = 0; t < T; ++t) {
        double ss = 0;
        for (std::size_t j = 0; j < d; ++j)
            ss += x[t * d + j] * x[t * d + j];
        const double r = 1 / std::sqrt(ss / double(d) + eps);
        for (std::size_t j = 0; j < d; ++j)
            y[t * d + j] = x[t * d + j] * r * w[j];
    }
    return y;
}

dvec rope_ref(const dvec& x, std::size_t T, std::size_t cols, const std::vector<std::size_t>& pos,
              const t2::ops::rope_config& cfg) {
    dvec y = x;
    const std::size_t half = cfg.head_dim / 2;
    for (std::size_t t = 0; t < T; ++t)
        for (std::size_t h = 0; h < cols; h += cfg.head_dim)
            for (std::size_t i = 0; i < half; ++i) {
                const double angle =
                    double(pos[t]) * std::pow(double(cfg.theta), -double(2 * i) / double(cfg.head_dim));
                const bool inter = cfg.layout == t2::ops::rope_layout::interleaved;
                const std::size_t a = t * cols + h + (inter ? 2 * i : i);
                const std::size_t b = t * cols + h + (inter ? 2 * i + 1 : i + half);
                y[a] = x[a] * std::cos(angle) - x[b] * std::sin(angle);
                y[b] = x[a] * std::sin(angle) + x[b] * std::cos(angle);
            }
    return y;
}

dvec swiglu_ref(const dvec& gate, const dvec& up) {
    dvec y(gate.size());
    for (std::size_t i = 0; i < y.size(); ++i)
        y[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
    return y;
}

dvec softmax_ref(const dvec& x, std::size_t rows, std::size_t cols) {
    dvec y(x.size());
    for (std::size_t r = 0; r < rows; ++r) {
        const double* xr = x.data() + r * cols;
        const double m = *std::max_element(xr, xr + cols);
        double s = 0;
        for (std::size_t c = 0; c < cols; ++c)
            s += std::exp(xr[c] - m);
        for (std::size_t c = 0; c < cols; ++c)
            y[r * cols + c] = std::exp(xr[c] - m) / s;
    }
    return y;
}

double cross_entropy_ref(const dvec& logits, std::size_t T, std::size_t V,
                         const std::vector<std::int32_t>& targets, const std::vector<float>& w) {
    double loss = 0, wsum = 0;
    for (std::size_t t = 0; t < T; ++t) {
        const double wt = w.empty() ? 1.0 : w[t];
        if (wt == 0)
            continue;
        const double* x = logits.data() + t * V;
        const double m = *std::max_element(x, x + V);
        double s = 0;
        for (std::size_t v = 0; v < V; ++v)
            s += std::exp(x[v] - m);
        loss += wt * (m + std::log(s) - x[targets[t]]);
        wsum += wt;
    }
    return wsum == 0 ? 0 : loss / wsum;
}

struct attention_case {
    std::size_t T, heads, kv_heads, head_dim;
};

// out [T × H·hd] and probs [H × T × T] of causal grouped-query attention, straight from the
// definition (a loop per query, key and dimension).
dvec attention_ref(const dvec& q, const dvec& k, const dvec& v, const attention_case& c,
                   dvec* probs = nullptr) {
    const std::size_t T = c.T, hd = c.head_dim, qc = c.heads * hd, kc = c.kv_heads * hd;
    dvec out(T * qc, 0.0);
    if (probs)
        probs->assign(c.heads * T * T, 0.0);
    std::vector<double> s(T);
    for (std::size_t h = 0; h < c.heads; ++h) {
        const std::size_t g = h / (c.heads / c.kv_heads);
        for (std::size_t t = 0; t < T; ++t) {
            double m = -INFINITY;
            for (std::size_t u = 0; u <= t; ++u) {
                double dotp = 0;
                for (std::size_t i = 0; i < hd; ++i)
                    dotp += q[t * qc + h * hd + i] * k[u * kc + g * hd + i];
                s[u] = dotp / std::sqrt(double(hd));
                m = std::max(m, s[u]);
            }
            double sum = 0;
            for (std::size_t u = 0; u <= t; ++u)
                sum += (s[u] = std::exp(s[u] - m));
            for (std::size_t u = 0; u <= t; ++u) {
                const double p = s[u] / sum;
                if (probs)
                    (*probs)[(h * T + t) * T + u] = p;
                for (std::size_t i = 0; i < hd; ++i)
                    out[t * qc + h * hd + i] += p * v[u * kc + g * hd + i];
            }
        }
    }
    return out;
}

dvec embedding_ref(const dvec& table, std::size_t d, const std::vector<std::int32_t>& tokens) {
    dvec y(tokens.size() * d);
    for (std::size_t t = 0; t < tokens.size(); ++t)
        for (std::size_t j = 0; j < d; ++j)
            y[t * d + j] = table[std::size_t(tokens[t]) * d + j];
    return y;
}

// y = x · Wᵀ, x [T × in], W [out × in].
dvec linear_ref(const dvec& x, const dvec& w, std::size_t T, std::size_t in, std::size_t out) {
    dvec y(T * out, 0.0);
    for (std::size_t t = 0; t < T; ++t)
        for (std::size_t o = 0; o < out; ++o)
            for (std::size_t i = 0; i < in; ++i)
                y[t * out + o] += x[t * in + i] * w[o * in + i];
    return y;
}

// ---- bounds on the f32 kernels, from their formulas -------------------------------------

// rmsnorm_backward. r = 1/√(Σx²/d + ε): the sum of squares takes d roundings on each path (a
// product, d − 1 additions; positive terms, so relative to itself), /d and +ε two more; √
// halves a relative error, √ and 1/ add one rounding each: r is within
// ρ_r = γ̃_{d+2}/2 + 2u. dx_j = r·(g_j w_j − x_j c), c = r²·Σ_k g_k w_k x_k / d: the sum d + 1
// roundings on Σ|g w x|, c three more, x·c, the subtraction and r· one each, so N = d + 7
// relative to the formula's magnitude r·(|g_j w_j| + |x_j| r² Σ|g w x| / d), and r's error
// enters three times (r³). Returns that bound per element of dx.
dvec rmsnorm_dx_bound(const dvec& x, const dvec& w, const dvec& g, std::size_t T, std::size_t d, double eps) {
    dvec b(T * d);
    const double rho_r = gamma_n(d + 2) / 2 + 2 * u, relative = gamma_n(d + 7) + 3 * rho_r;
    for (std::size_t t = 0; t < T; ++t) {
        double ss = 0, gwx = 0;
        for (std::size_t j = 0; j < d; ++j) {
            ss += x[t * d + j] * x[t * d + j];
            gwx += std::abs(g[t * d + j] * w[j] * x[t * d + j]);
        }
        const double r = 1 / std::sqrt(ss / double(d) + eps);
        for (std::size_t j = 0; j < d; ++j)
            b[t * d + j] = relative * r * (std::abs(g[t * d + j] * w[j]) + std::abs(x[t * d + j]) * r * r * gwx / double(d));
    }
    return b;
}

// rope_backward: (a, b) ← (a·c + b·s, −a·s + b·c) with the forward's f32 angle. Its inverse
// frequency θ^(−2i/hd) is within ln θ·u (the rounded exponent 2i/hd ≤ 1) + function_error
// (pow) + u (1/·) relative, the angle pos·inv_freq one rounding more, so its absolute error is
// angle·(ln θ·u + function_error + 2u); cos and sin add function_error absolute (|c|, |s| ≤ 1).
// The angle error moves each output by at most (|a| + |b|)·(δangle + function_error); the two
// products and the sum are γ_2 of |a·c| + |b·s|.
dvec rope_dx_bound(const dvec& g, std::size_t T, std::size_t cols, const std::vector<std::size_t>& pos,
                   const t2::ops::rope_config& cfg) {
    dvec b(g.size(), 0.0);
    const std::size_t half = cfg.head_dim / 2;
    for (std::size_t t = 0; t < T; ++t)
        for (std::size_t h = 0; h < cols; h += cfg.head_dim)
            for (std::size_t i = 0; i < half; ++i) {
                const double angle =
                    double(pos[t]) * std::pow(double(cfg.theta), -double(2 * i) / double(cfg.head_dim));
                const double dangle = angle * (std::log(double(cfg.theta)) * u + fe + 2 * u) + fe;
                const bool inter = cfg.layout == t2::ops::rope_layout::interleaved;
                const std::size_t ia = t * cols + h + (inter ? 2 * i : i);
                const std::size_t ib = t * cols + h + (inter ? 2 * i + 1 : i + half);
                const double ga = std::abs(g[ia]), gb = std::abs(g[ib]);
                const double c = std::abs(std::cos(angle)), sn = std::abs(std::sin(angle));
                b[ia] = (ga + gb) * dangle + gamma_n(2) * (ga * c + gb * sn);
                b[ib] = (ga + gb) * dangle + gamma_n(2) * (ga * sn + gb * c);
            }
    return b;
}

// swiglu_backward: σ = 1/(1 + exp(−x)) is within function_error + 2u relative (exp, the sum
// of positive terms, the division); dgate = g·up·σ·(1 + x·(1 − σ)): 1 − σ carries σ's
// absolute error and one rounding, x·, 1 + and the three products one each, so relative to
// |g·up|·σ·(1 + |x|) (which bounds the magnitudes |x|(1 − σ) and σ's error's |x|·σ alike)
// the error is within 2·function_error + γ_7. The formula cancels where silu' does
// (x ≈ −1.28), so the magnitude is the formula's, not |dgate|.
dvec swiglu_dgate_bound(const dvec& gate, const dvec& up, const dvec& g) {
    dvec b(gate.size());
    for (std::size_t i = 0; i < b.size(); ++i) {
        const double sig = 1 / (1 + std::exp(-gate[i]));
        b[i] = (2 * fe + gamma_n(7)) * std::abs(g[i] * up[i]) * sig * (1 + std::abs(gate[i]));
    }
    return b;
}

// softmax_backward from y (the double softmax rounded to f32: u relative each):
// dx_i = y_i·(g_i − Σ_c y_c g_c). The sum takes cols roundings on Σ y|g| (the product and
// cols − 1 additions) after y's own; the subtraction and the product one each: N = cols + 3
// relative to y_i·(|g_i| + Σ y|g|), the formula's magnitude (the composite Jacobian's,
// y_i·(|g_i|(1 − y_i) + Σ_{c≠i} y_c|g_c|), is smaller where y_i is near 1).
dvec softmax_dx_bound(const dvec& y, const dvec& g, std::size_t rows, std::size_t cols) {
    dvec b(y.size());
    for (std::size_t r = 0; r < rows; ++r) {
        double s = 0;
        for (std::size_t c = 0; c < cols; ++c)
            s += y[r * cols + c] * std::abs(g[r * cols + c]);
        for (std::size_t c = 0; c < cols; ++c)
            b[r * cols + c] = gamma_n(cols + 3) * y[r * cols + c] * (std::abs(g[r * cols + c]) + s);
    }
    return b;
}

// cross_entropy (the mean). A row's log-sum-exp max + log Σ exp(x − max) is within
// ε = u·(max − min) + function_error + γ̃_V of the exact one (x − max rounded once, exp, the
// sum; the rest in double), as in tests/test_nn_loss.cpp; each probability e·(w/Σw/Σexp) is
// within 2ε relative (its exponential and the normalizing sum), the f32 scale and the product
// add a rounding each, the target's −w/Σw one more. The loss is the double mean of the rows'
// w·ce within Σ w·ε / Σ w, returned in f32: u·|loss| more.
struct cross_entropy_bounds {
    dvec dlogits;
    double loss = 0;
};

cross_entropy_bounds cross_entropy_bound(const dvec& logits, std::size_t T, std::size_t V,
                                         const std::vector<std::int32_t>& targets, const std::vector<float>& w,
                                         double want_loss) {
    cross_entropy_bounds b{dvec(T * V, 0.0), u * std::abs(want_loss)};
    double wsum = 0;
    for (std::size_t t = 0; t < T; ++t)
        wsum += w.empty() ? 1.0 : w[t];
    for (std::size_t t = 0; t < T; ++t) {
        const double wt = w.empty() ? 1.0 : w[t];
        if (wt == 0)
            continue;
        const double* x = logits.data() + t * V;
        const double max = *std::max_element(x, x + V), min = *std::min_element(x, x + V);
        double s = 0;
        for (std::size_t v = 0; v < V; ++v)
            s += std::exp(x[v] - max);
        const double eps = u * (max - min) + fe + gamma_n(V), scale = wt / wsum;
        b.loss += scale * eps;
        for (std::size_t v = 0; v < V; ++v) {
            const double p = std::exp(x[v] - max) / s;
            const bool target = v == std::size_t(targets[t]);
            b.dlogits[t * V + v] = scale * p * (2 * eps + 2 * u) + (target ? 2 * u * scale : 0.0);
        }
    }
    return b;
}

// causal_attention and its backward, one row t of head h (group g) at a time; S = q·kᵀ/√hd.
//   forward   S_tu: a gemm of length hd with α = 1/√hd (f32: √ and 1/ one rounding each):
//             within γ̃_{hd+4}·Σ_i|q_ti k_ui|/√hd =: δS_tu, absolute. softmax: S − max one
//             rounding (u·|S − max|), exp function_error, the f32 sum of positive terms γ̃_t+1,
//             the division u; an absolute error of S is a relative error of exp(S), and the
//             denominator carries the weighted mean of its terms' errors, at most their maximum:
//               ρ_tu = (δS_tu + u|S_tu − max|) + max_u'(δS_tu' + u|S_tu' − max|) + 2·fe + γ̃_{t+1} + u
//             relative for p_tu: the scores' magnitudes amplify their errors here, which a
//             composite Jacobian of q → out would not show. out_ti = Σ_u p_tu v_ui: γ̃_{t+3} on
//             Σ p|v| (a gemm) plus Σ_u ρ_tu·p_tu|v_ui|.
//   backward  from the saved f32 probabilities (relative error ρ, above):
//             dv_u = Σ_h∈g Σ_t p_tu·dout_t: γ̃_{T+2+group} on Σ p|dout| plus Σ ρ·p|dout|;
//             dP_tu = dout_t·v_u: γ̃_{hd+2} on DP_tu = Σ_i|dout_ti v_ui|;
//             dS_tu = p_tu·(dP_tu − Σ_u' p_tu' dP_tu'): magnitude DS_tu = p_tu·(DP_tu + Σ p DP),
//               the longest path hd + 2 + (t + 1) + 2 roundings, and p's error twice
//               (2·max_u ρ_tu);
//             dq_t = Σ_u dS_tu k_u /√hd, dk_u = Σ_h∈g Σ_t dS_tu q_t /√hd: a gemm (+2, and the
//               row blocks' β = 1 accumulations, at most T of them, and the group's heads) on
//               Σ DS·|k| (or |q|) /√hd.
//             Each path's roundings add: N = (hd + 2) + (T + 3) + (T + 2 + group + 2).
struct attention_bounds {
    dvec out, probs, dq, dk, dv;
};

attention_bounds attention_bound(const dvec& q, const dvec& k, const dvec& v, const dvec& dout,
                                 const attention_case& c) {
    const std::size_t T = c.T, hd = c.head_dim, qc = c.heads * hd, kc = c.kv_heads * hd,
                      group = c.heads / c.kv_heads;
    const double scale = 1 / std::sqrt(double(hd));
    attention_bounds b{dvec(T * qc, 0.0), dvec(c.heads * T * T, 0.0), dvec(T * qc, 0.0), dvec(T * kc, 0.0),
                       dvec(T * kc, 0.0)};
    const double backward_relative = gamma_n((hd + 2) + (T + 3) + (T + 2 + group + 2));
    std::vector<double> s(T), ds_err(T), p(T), rho(T), dp(T), ds(T);
    for (std::size_t h = 0; h < c.heads; ++h) {
        const std::size_t g = h / group;
        for (std::size_t t = 0; t < T; ++t) {
            double m = -INFINITY;
            for (std::size_t w = 0; w <= t; ++w) {
                double dotp = 0, mag = 0;
                for (std::size_t i = 0; i < hd; ++i) {
                    dotp += q[t * qc + h * hd + i] * k[w * kc + g * hd + i];
                    mag += std::abs(q[t * qc + h * hd + i] * k[w * kc + g * hd + i]);
                }
                s[w] = dotp * scale;
                ds_err[w] = gamma_n(hd + 4) * mag * scale;
                m = std::max(m, s[w]);
            }
            double sum = 0, worst = 0;
            for (std::size_t w = 0; w <= t; ++w) {
                sum += (p[w] = std::exp(s[w] - m));
                worst = std::max(worst, ds_err[w] + u * std::abs(s[w] - m));
            }
            double rho_max = 0;
            for (std::size_t w = 0; w <= t; ++w) {
                p[w] /= sum;
                rho[w] = ds_err[w] + u * std::abs(s[w] - m) + worst + 2 * fe + gamma_n(t + 1) + u;
                rho_max = std::max(rho_max, rho[w]);
                b.probs[(h * T + t) * T + w] = rho[w] * p[w];
            }
            // Forward out; backward dP, Σ p·dP and dS magnitudes.
            double pdp = 0;
            for (std::size_t w = 0; w <= t; ++w) {
                dp[w] = 0;
                for (std::size_t i = 0; i < hd; ++i) {
                    const double vi = std::abs(v[w * kc + g * hd + i]);
                    b.out[t * qc + h * hd + i] += (gamma_n(t + 3) + rho[w]) * p[w] * vi;
                    b.dv[w * kc + g * hd + i] +=
                        (gamma_n(T + 2 + group) + rho[w]) * p[w] * std::abs(dout[t * qc + h * hd + i]);
                    dp[w] += std::abs(dout[t * qc + h * hd + i]) * vi;
                }
                pdp += p[w] * dp[w];
            }
            for (std::size_t w = 0; w <= t; ++w) {
                const double err = (backward_relative + 2 * rho_max) * p[w] * (dp[w] + pdp);
                for (std::size_t i = 0; i < hd; ++i) {
                    b.dq[t * qc + h * hd + i] += err * std::abs(k[w * kc + g * hd + i]) * scale;
                    b.dk[w * kc + g * hd + i] += err * std::abs(q[t * qc + h * hd + i]) * scale;
                }
            }
        }
    }
    return b;
}

std::string shape_name(std::initializer_list<std::size_t> dims) {
    std::string s;
    for (std::size_t d : dims)
        s += (s.empty() ? "" : "x") + std::to_string(d);
    return s;
}

} // namespace

TEST_CASE("rmsnorm_backward matches finite differences; dweight accumulates") {
    error_log log("rmsnorm_backward");
    const float eps = 1e-5f;
    std::uint64_t seed = 1;
    for (std::size_t T : {1, 3, 7})
        for (std::size_t d : {5, 17, 33}) {
            CAPTURE(shape_name({T, d}));
            input x(T, d, seed++, -2.f, 2.f), w(1, d, seed++), g(T, d, seed++), dw0(1, d, seed++);
            const auto forward = [&] { return rmsnorm_ref(x.d, w.d, T, d, eps); };
            const auto want_dx = t2_test::weighted_gradient(x.d, g.d, forward, d + 4);
            const auto want_dw = t2_test::weighted_gradient(w.d, g.d, forward, d + 4);
            const dvec dx_bound = rmsnorm_dx_bound(x.d, w.d, g.d, T, d, eps);
            // dweight_j += Σ_t g_tj x_tj r_t (its exact terms: the finite differences'
            // magnitude): two products and T additions into dweight, whose previous value is
            // a term, N = T + 2; and r's ρ_r (rmsnorm_dx_bound).
            dvec dw_magnitude = want_dw.magnitude;
            for (std::size_t j = 0; j < d; ++j)
                dw_magnitude[j] += std::abs(double(dw0.f.data()[j]));
            const auto dw_bound = t2_test::scaled_bounds(dw_magnitude, gamma_n(T + 2) + gamma_n(d + 2) / 2 + 2 * u);
            const auto wv = w.f.row(0);
            for_every_executor([&](const auto& ex, const std::string& name) {
                INFO(name);
                matrix<float> dx(T, d);
                vector<float> dw(d);
                std::copy_n(dw0.f.data(), d, dw.data());
                t2::ops::rmsnorm_backward(ex, x.f, wv, g.f, dx, dw, eps);
                log.gradient("dx", dx.span(), want_dx, dx_bound);
                log.gradient("dweight (added)", added(dw.span(), dw0.f.span()), want_dw, dw_bound);
                // In place on dy, with the weight frozen (no dweight).
                matrix<float> in_place = g.f;
                t2::ops::rmsnorm_backward(ex, x.f, wv, in_place, in_place, t2::vector_view<float>{},
                                          eps);
                T2_CHECK_CLOSE(in_place.span(), dx.span(), 0, 1e-30);
            });
        }
}

TEST_CASE("rope_backward is the transpose of rope (finite differences), both layouts") {
    error_log log("rope_backward");
    std::uint64_t seed = 100;
    for (const auto layout : {t2::ops::rope_layout::interleaved, t2::ops::rope_layout::halves})
        for (std::size_t T : {1, 3, 7})
            for (std::size_t hd : {2, 6, 10})
                for (std::size_t heads : {1, 3}) {
                    const std::size_t cols = heads * hd;
                    const t2::ops::rope_config cfg{hd, 10000.f, layout};
                    CAPTURE(shape_name({T, heads, hd}));
                    CAPTURE(static_cast<int>(layout));
                    input x(T, cols, seed++), g(T, cols, seed++);
                    // Start 5, and a list of arbitrary positions (the span overload).
                    std::vector<std::size_t> from_start(T), listed(T);
                    for (std::size_t t = 0; t < T; ++t) {
                        from_start[t] = 5 + t;
                        listed[t] = (t * 37 + 11) % 50;
                    }
                    for (const auto* positions : {&from_start, &listed}) {
                        const auto want = t2_test::weighted_gradient(
                            x.d, g.d, [&] { return rope_ref(x.d, T, cols, *positions, cfg); }, 8);
                        const dvec bound = rope_dx_bound(g.d, T, cols, *positions, cfg);
                        for_every_executor([&](const auto& ex, const std::string& name) {
                            INFO(name);
                            matrix<float> dx = g.f;
                            if (positions == &from_start)
                                t2::ops::rope_backward(ex, dx, std::size_t{5}, cfg);
                            else
                                t2::ops::rope_backward(ex, dx, std::span<const std::size_t>(listed),
                                                       cfg);
                            log.gradient("dx", dx.span(), want, bound);
                        });
                    }
                    // The transpose of a rotation is its inverse.
                    matrix<float> y = x.f;
                    t2::ops::rope(reference, y, std::span<const std::size_t>(listed), cfg);
                    t2::ops::rope_backward(reference, y, std::span<const std::size_t>(listed), cfg);
                    T2_CHECK_CLOSE(y.span(), x.f.span(), 0, 1e-6);
                }
}

TEST_CASE("swiglu_backward matches finite differences") {
    error_log log("swiglu_backward");
    std::uint64_t seed = 200;
    for (std::size_t n : {1, 5, 17, 33, 100}) {
        CAPTURE(n);
        input gate(1, n, seed++, -6.f, 6.f), up(1, n, seed++, -2.f, 2.f), g(1, n, seed++);
        const auto forward = [&] { return swiglu_ref(gate.d, up.d); };
        const auto want_gate = t2_test::weighted_gradient(gate.d, g.d, forward, 6);
        const auto want_up = t2_test::weighted_gradient(up.d, g.d, forward, 6);
        const dvec gate_bound = swiglu_dgate_bound(gate.d, up.d, g.d);
        // dup = g·x·σ: σ's function_error + 2u (swiglu_dgate_bound) and two products, on the
        // one term |g ∂f/∂up|, the finite differences' magnitude.
        const auto up_bound = t2_test::scaled_bounds(want_up.magnitude, fe + gamma_n(4));
        for_every_executor([&](const auto& ex, const std::string& name) {
            INFO(name);
            vector<float> dgate(n), dup(n);
            t2::ops::swiglu_backward(ex, gate.f.flat(), up.f.flat(), g.f.flat(), dgate, dup);
            log.gradient("dgate", dgate.span(), want_gate, gate_bound);
            log.gradient("dup", dup.span(), want_up, up_bound);
            // In place: dgate over gate, dup over up.
            matrix<float> gate2 = gate.f, up2 = up.f;
            t2::ops::swiglu_backward(ex, gate2.flat(), up2.flat(), g.f.flat(), gate2.flat(),
                                     up2.flat());
            T2_CHECK_CLOSE(gate2.span(), dgate.span(), 0, 1e-30);
            T2_CHECK_CLOSE(up2.span(), dup.span(), 0, 1e-30);
        });
    }
}

TEST_CASE("softmax_backward matches finite differences") {
    error_log log("softmax_backward");
    std::uint64_t seed = 300;
    for (std::size_t rows : {1, 3, 7})
        for (std::size_t cols : {1, 5, 17, 33}) {
            CAPTURE(shape_name({rows, cols}));
            input x(rows, cols, seed++, -3.f, 3.f), g(rows, cols, seed++);
            const auto want = t2_test::weighted_gradient(
                x.d, g.d, [&] { return softmax_ref(x.d, rows, cols); }, cols + 4);
            matrix<float> y(rows, cols);
            const dvec yd = softmax_ref(x.d, rows, cols);
            const dvec bound = softmax_dx_bound(yd, g.d, rows, cols);
            std::copy(yd.begin(), yd.end(), y.data());
            for_every_executor([&](const auto& ex, const std::string& name) {
                INFO(name);
                matrix<float> dx(rows, cols);
                t2::ops::softmax_backward(ex, y, g.f, dx);
                log.gradient("dx", dx.span(), want, bound);
                matrix<float> in_place = g.f;
                t2::ops::softmax_backward(ex, y, in_place, in_place);
                T2_CHECK_CLOSE(in_place.span(), dx.span(), 0, 1e-30);
                vector<float> row(cols);
                t2::ops::softmax_backward(ex, y.row(0), g.f.row(0), row);
                T2_CHECK_CLOSE(row.span(), dx.row(0).span(), 0, 1e-30);
            });
        }
}

TEST_CASE("cross_entropy: loss and gradient against double precision, masks and weights") {
    error_log log("cross_entropy");
    std::uint64_t seed = 400;
    for (std::size_t T : {1, 3, 7})
        for (std::size_t V : {1, 5, 17, 33})
            for (int weighting : {0, 1, 2}) { // none, a 0/1 mask, fractional weights
                CAPTURE(shape_name({T, V}));
                CAPTURE(weighting);
                input logits(T, V, seed++, -4.f, 4.f);
                std::vector<std::int32_t> targets(T);
                std::vector<float> weights;
                for (std::size_t t = 0; t < T; ++t)
                    targets[t] = static_cast<std::int32_t>((t * 7 + seed) % V);
                if (weighting == 1)
                    for (std::size_t t = 0; t < T; ++t)
                        weights.push_back(t % 2 == 1 ? 0.f : 1.f);
                if (weighting == 2)
                    for (std::size_t t = 0; t < T; ++t)
                        weights.push_back(0.25f + 0.5f * float(t % 3));
                for (std::size_t t = 0; t < weights.size(); ++t)
                    if (weights[t] == 0.f)
                        targets[t] = -100; // padding: not read when the weight is 0
                const double want_loss = cross_entropy_ref(logits.d, T, V, targets, weights);
                const auto want = t2_test::weighted_gradient(
                    logits.d, [&] { return cross_entropy_ref(logits.d, T, V, targets, weights); }, V + T + 6);
                const auto bound = cross_entropy_bound(logits.d, T, V, targets, weights, want_loss);
                for_every_executor([&](const auto& ex, const std::string& name) {
                    INFO(name);
                    matrix<float> dlogits(T, V);
                    dlogits.fill(7.f); // overwritten, masked rows included
                    const float loss = t2::ops::cross_entropy(ex, logits.f, targets, weights, dlogits);
                    log.value("loss", loss, want_loss, bound.loss);
                    log.gradient("dlogits", dlogits.span(), want, bound.dlogits);
                    for (std::size_t t = 0; t < weights.size(); ++t)
                        if (weights[t] == 0.f)
                            for (float v : dlogits.row(t).span())
                                CHECK(v == 0.f);
                    CHECK(t2::ops::cross_entropy(ex, logits.f, targets, weights) == loss);
                    matrix<float> in_place = logits.f;
                    CHECK(t2::ops::cross_entropy(ex, in_place, targets, weights, in_place) == loss);
                    T2_CHECK_CLOSE(in_place.span(), dlogits.span(), 0, 1e-30);
                });
            }
}

TEST_CASE("cross_entropy: large logits, no counted position, bad targets and weights") {
    SUBCASE("logits around 1e4 neither overflow nor lose the loss") {
        input logits(3, 17, 450, -4.f, 4.f);
        for (float& v : logits.f.span())
            v += 1e4f;
        for (std::size_t i = 0; i < logits.d.size(); ++i)
            logits.d[i] = logits.f.data()[i];
        const std::vector<std::int32_t> targets{0, 16, 8};
        matrix<float> dlogits(3, 17);
        const float loss = t2::ops::cross_entropy(reference, logits.f, targets, {}, dlogits);
        CHECK(std::isfinite(loss));
        CHECK(loss == doctest::Approx(cross_entropy_ref(logits.d, 3, 17, targets, {})).epsilon(1e-6));
        for (float v : dlogits.span())
            CHECK(std::isfinite(v));
    }
    SUBCASE("no counted position: loss 0 and a zero gradient") {
        const auto logits = t2_test::random_matrix(3, 5, 460);
        const std::vector<std::int32_t> targets{-1, 99, 2};
        const std::vector<float> none{0.f, 0.f, 0.f};
        for_every_executor([&](const auto& ex, const std::string& name) {
            INFO(name);
            matrix<float> dlogits(3, 5);
            dlogits.fill(1.f);
            CHECK(t2::ops::cross_entropy(ex, logits, targets, none, dlogits) == 0.f);
            for (float v : dlogits.span())
                CHECK(v == 0.f);
            matrix<float> empty(0, 5);
            CHECK(t2::ops::cross_entropy(ex, empty, {}, {}, empty) == 0.f);
        });
    }
    SUBCASE("a counted target outside [0, V) or a bad weight is a t2::error") {
        const auto logits = t2_test::random_matrix(3, 5, 470);
        matrix<float> dlogits(3, 5);
        const std::vector<std::int32_t> too_big{0, 5, 1}, negative{0, 1, -1};
        CHECK(t2_test::contains(t2_test::error_message([&] {
                                    t2::ops::cross_entropy(reference, logits, too_big, {}, dlogits);
                                }),
                                "target 5 at position 1"));
        CHECK_THROWS_AS(t2::ops::cross_entropy(reference, logits, negative), t2::error);
        const std::vector<std::int32_t> ok{0, 1, 2};
        const std::vector<float> negative_weight{1.f, -1.f, 1.f}, nan_weight{1.f, NAN, 1.f};
        CHECK_THROWS_AS(t2::ops::cross_entropy(reference, logits, ok, negative_weight), t2::error);
        CHECK_THROWS_AS(t2::ops::cross_entropy(reference, logits, ok, nan_weight), t2::error);
        CHECK_THROWS_AS(t2::ops::cross_entropy(reference, logits, std::vector<std::int32_t>{0, 1}),
                        t2::error);
        CHECK_THROWS_AS(t2::ops::cross_entropy(reference, logits, ok, std::vector<float>{1.f}),
                        t2::error);
        matrix<float> wrong(3, 4);
        CHECK_THROWS_AS(t2::ops::cross_entropy(reference, logits, ok, {}, wrong), t2::error);
        matrix<float> no_classes(3, 0);
        CHECK_THROWS_AS(t2::ops::cross_entropy(reference, no_classes, ok), t2::error);
    }
}

TEST_CASE("causal_attention and its backward against double precision and finite differences") {
    error_log log("causal_attention");
    std::uint64_t seed = 500;
    std::vector<attention_case> cases;
    for (std::size_t T : {1, 3, 7})
        for (const auto& [H, KV] : {std::pair<std::size_t, std::size_t>{4, 2}, {4, 1}, {3, 3}})
            for (std::size_t hd : {3, 5})
                cases.push_back({T, H, KV, hd});
    cases.push_back({17, 4, 1, 3}); // 68 stacked query rows: two row blocks in the backward
    for (const attention_case& c : cases) {
        const std::size_t T = c.T, qc = c.heads * c.head_dim, kc = c.kv_heads * c.head_dim;
        CAPTURE(shape_name({c.T, c.heads, c.kv_heads, c.head_dim}));
        input q(T, qc, seed++, -2.f, 2.f), k(T, kc, seed++, -2.f, 2.f), v(T, kc, seed++);
        input g(T, qc, seed++);
        dvec want_probs;
        const dvec want_out = attention_ref(q.d, k.d, v.d, c, &want_probs);
        const auto forward = [&] { return attention_ref(q.d, k.d, v.d, c); };
        const std::size_t chain = c.head_dim + 2 * T + 6;
        const auto want_dq = t2_test::weighted_gradient(q.d, g.d, forward, chain);
        const auto want_dk = t2_test::weighted_gradient(k.d, g.d, forward, chain);
        const auto want_dv = t2_test::weighted_gradient(v.d, g.d, forward, chain);
        const attention_bounds bound = attention_bound(q.d, k.d, v.d, g.d, c);
        for_every_executor([&](const auto& ex, const std::string& name) {
            INFO(name);
            matrix<float> out(T, qc), dq(T, qc), dk(T, kc), dv(T, kc);
            t2::tensor<float, t2::dims<3>> probs(c.heads, T, T);
            probs.fill(NAN); // overwritten, the upper triangle included
            t2::ops::causal_attention(ex, q.f, k.f, v.f, out, probs, c.heads, c.kv_heads);
            log.check("out", out.span(), want_out, bound.out);
            log.check("probs", probs.span(), want_probs, bound.probs);
            for (std::size_t h = 0; h < c.heads; ++h)
                for (std::size_t t = 0; t < T; ++t)
                    for (std::size_t u = t + 1; u < T; ++u)
                        CHECK(probs(h, t, u) == 0.f);
            dq.fill(NAN);
            dk.fill(NAN);
            dv.fill(NAN);
            t2::ops::causal_attention_backward(ex, q.f, k.f, v.f, probs, g.f, dq, dk, dv, c.heads,
                                               c.kv_heads);
            log.gradient("dq", dq.span(), want_dq, bound.dq);
            log.gradient("dk", dk.span(), want_dk, bound.dk);
            log.gradient("dv", dv.span(), want_dv, bound.dv);
            // The bounds still catch a real error: the largest element of dq, dk or dv off by
            // 1e-3 of itself fails (T = 1 has dq = dk = 0: nothing to move).
            const auto caught = [&](const matrix<float>& got, const t2_test::fd_gradient& want,
                                    const dvec& b) {
                std::vector<float> wrong(got.data(), got.data() + got.size());
                const auto at = std::max_element(wrong.begin(), wrong.end(),
                                                 [](float x, float y) { return std::abs(x) < std::abs(y); });
                if (*at == 0.f)
                    return;
                *at *= 1 + 1e-3f;
                CHECK_FALSE(t2_test::compare_within(std::span<const float>(wrong), want.value, plus(b, want.error)).ok);
            };
            caught(dq, want_dq, bound.dq);
            caught(dk, want_dk, bound.dk);
            caught(dv, want_dv, bound.dv);
        });
    }
}

TEST_CASE("the layer kernels composed give nn::llama's logits (causal_attention as in the model)") {
    // The decoder rebuilt from ops (embedding, rmsnorm, rope, causal_attention, swiglu) with
    // the model's own linear layers, on random weights with grouped-query attention.
    const t2::nn::llama_config c{.dim = 24, .hidden_dim = 40, .n_layers = 2, .n_heads = 4,
                                 .n_kv_heads = 2, .vocab_size = 37, .seq_len = 16};
    const t2::nn::llama<t2::nn::llama_config> model(c, t2::nn::random_weights(c, 42));
    const std::vector<std::int32_t> tokens{1, 5, 36, 0, 5, 17, 2};
    const std::size_t T = tokens.size(), D = c.dim, kv = t2::nn::kv_dim(c);
    const t2::ops::rope_config rope{t2::nn::head_dim(c), c.rope_theta, c.rope_layout};
    for_every_executor([&](const auto& ex, const std::string& name) {
        INFO(name);
        const auto& w = model.weights();
        matrix<float> x(T, D), h(T, D), q(T, D), k(T, kv), v(T, kv), att(T, D), out(T, D);
        matrix<float> gate(T, c.hidden_dim), up(T, c.hidden_dim);
        t2::tensor<float, t2::dims<3>> probs(c.n_heads, T, T);
        t2::ops::embedding(ex, w.token_embedding, tokens, x);
        for (const auto& b : w.blocks) {
            t2::ops::rmsnorm(ex, x, b.attention_norm, h, c.norm_eps);
            b.wq(ex, h, q);
            b.wk(ex, h, k);
            b.wv(ex, h, v);
            t2::ops::rope(ex, q, 0, rope);
            t2::ops::rope(ex, k, 0, rope);
            t2::ops::causal_attention(ex, q, k, v, att, probs, c.n_heads, c.n_kv_heads);
            b.wo(ex, att, out);
            t2::ops::add(ex, x.flat(), out.flat(), x.flat());
            t2::ops::rmsnorm(ex, x, b.mlp_norm, h, c.norm_eps);
            b.w1(ex, h, gate);
            b.w3(ex, h, up);
            t2::ops::swiglu(ex, gate.flat(), up.flat(), gate.flat());
            b.w2(ex, gate, out);
            t2::ops::add(ex, x.flat(), out.flat(), x.flat());
        }
        matrix<float> logits(T, c.vocab_size);
        t2::ops::rmsnorm(ex, x, w.final_norm, h, c.norm_eps);
        w.classifier(ex, h, logits);
        auto state = model.make_state();
        const auto want = model.forward(ex, state, tokens, t2::nn::logits_for::all);
        // The same model in two summation orders: support/tolerance.hpp's per-logit bound.
        T2_CHECK_WITHIN(logits.span(), want.span(), t2_test::logit_order_tolerance(model, T));
    });
}

TEST_CASE("causal_attention rejects bad head counts, shapes and overlapping outputs") {
    matrix<float> q(3, 8), k(3, 4), v(3, 4), out(3, 8), dq(3, 8), dk(3, 4), dv(3, 4);
    t2::tensor<float, t2::dims<3>> probs(4, 3, 3);
    const auto run = [&](std::size_t H, std::size_t KV) {
        t2::ops::causal_attention(reference, q, k, v, out, probs, H, KV);
    };
    CHECK_NOTHROW(run(4, 2));
    CHECK(t2_test::contains(t2_test::error_message([&] { run(4, 3); }), "multiple of the KV heads"));
    CHECK_THROWS_AS(run(0, 1), t2::error);
    CHECK_THROWS_AS(run(3, 1), t2::error);  // 8 columns are not 3 heads
    CHECK_THROWS_AS(run(4, 4), t2::error);  // k needs 4 KV heads of 2 columns
    CHECK_THROWS_AS(run(8, 4), t2::error);  // probs is for 4 heads
    CHECK_THROWS_AS(t2::ops::causal_attention(reference, q, k, v, q, probs, 4, 2), t2::error);
    CHECK_THROWS_AS(t2::ops::causal_attention_backward(reference, q, k, v, probs, out, dq, dk, dk,
                                                       4, 2),
                    t2::error);
    CHECK_THROWS_AS(t2::ops::causal_attention_backward(reference, q, k, v, probs, out, out, dk, dv,
                                                       4, 2),
                    t2::error);
    matrix<float> dk_wrong(3, 8);
    CHECK_THROWS_AS(t2::ops::causal_attention_backward(reference, q, k, v, probs, out, dq,
                                                       dk_wrong, dv, 4, 2),
                    t2::error);
}

TEST_CASE("embedding and embedding_backward: gather, accumulating scatter, token checks") {
    error_log log("embedding");
    std::uint64_t seed = 600;
    for (std::size_t V : {1, 5, 17})
        for (std::size_t d : {5, 17, 33})
            for (std::size_t T : {1, 3, 7}) {
                CAPTURE(shape_name({V, d, T}));
                input table(V, d, seed++), g(T, d, seed++), dtable0(V, d, seed++);
                std::vector<std::int32_t> tokens(T);
                for (std::size_t t = 0; t < T; ++t)
                    tokens[t] = static_cast<std::int32_t>((t * 3) % V); // repeats when T > V/3
                const dvec want_y = embedding_ref(table.d, d, tokens);
                const auto want = t2_test::weighted_gradient(
                    table.d, g.d, [&] { return embedding_ref(table.d, d, tokens); }, 1);
                // dtable_v += Σ_{t: token v} g_t, one addition per occurrence into dtable (its
                // previous value a term): N ≤ T + 1 on the finite differences' magnitude
                // Σ|g_t| plus |dtable0|.
                dvec magnitude = want.magnitude;
                for (std::size_t i = 0; i < magnitude.size(); ++i)
                    magnitude[i] += std::abs(double(dtable0.f.data()[i]));
                const auto bound = t2_test::scaled_bounds(magnitude, gamma_n(T + 1));
                for_every_executor([&](const auto& ex, const std::string& name) {
                    INFO(name);
                    matrix<float> y(T, d);
                    t2::ops::embedding(ex, table.f, tokens, y);
                    // A gather: no rounding, so a bound of 0 (compare_within passes equality only).
                    log.check("y", y.span(), want_y, dvec(want_y.size(), 0.0));
                    matrix<float> dtable = dtable0.f;
                    t2::ops::embedding_backward(ex, tokens, g.f, dtable);
                    log.gradient("dtable (added)", added(dtable.span(), dtable0.f.span()), want, bound);
                });
            }
    const auto table = t2_test::random_matrix(5, 4, 650);
    matrix<float> y(2, 4), dtable(5, 4);
    const std::vector<std::int32_t> bad{1, 5}, negative{-1, 0};
    CHECK(t2_test::contains(
        t2_test::error_message([&] { t2::ops::embedding(reference, table, bad, y); }),
        "token id 5 at position 1 is outside the vocabulary of 5"));
    CHECK_THROWS_AS(t2::ops::embedding(reference, table, negative, y), t2::error);
    CHECK_THROWS_AS(t2::ops::embedding_backward(reference, bad, y, dtable), t2::error);
    CHECK_THROWS_AS(t2::ops::embedding_backward(reference, negative, y, dtable), t2::error);
    matrix<float> y3(3, 4), narrow(2, 3);
    CHECK_THROWS_AS(t2::ops::embedding(reference, table, std::vector<std::int32_t>{0, 1}, y3),
                    t2::error);
    CHECK_THROWS_AS(t2::ops::embedding(reference, table, std::vector<std::int32_t>{0, 1}, narrow),
                    t2::error);
}

TEST_CASE("linear_backward matches finite differences; dw accumulates; empty outputs skip") {
    error_log log("linear_backward");
    std::uint64_t seed = 700;
    for (std::size_t T : {1, 3, 7})
        for (std::size_t in : {5, 17, 33})
            for (std::size_t out : {3, 17}) {
                CAPTURE(shape_name({T, in, out}));
                input x(T, in, seed++), w(out, in, seed++), g(T, out, seed++), dw0(out, in, seed++);
                const auto forward = [&] { return linear_ref(x.d, w.d, T, in, out); };
                const auto want_dx = t2_test::weighted_gradient(x.d, g.d, forward, in);
                const auto want_dw = t2_test::weighted_gradient(w.d, g.d, forward, in);
                // dx = g·W and dw += gᵀ·x are gemms of length out and T, their terms exactly
                // the finite differences' magnitudes (f is linear): k + 2 roundings on
                // Σ|terms| (tolerance.hpp comment 4), dw's previous value a term.
                const auto dx_bound = t2_test::scaled_bounds(want_dx.magnitude, gamma_n(out + 2));
                dvec dw_magnitude = want_dw.magnitude;
                for (std::size_t i = 0; i < dw_magnitude.size(); ++i)
                    dw_magnitude[i] += std::abs(double(dw0.f.data()[i]));
                const auto dw_bound = t2_test::scaled_bounds(dw_magnitude, gamma_n(T + 2));
                for_every_executor([&](const auto& ex, const std::string& name) {
                    INFO(name);
                    matrix<float> dx(T, in), dw = dw0.f;
                    t2::ops::linear_backward(ex, x.f, w.f, g.f, dx, dw);
                    log.gradient("dx", dx.span(), want_dx, dx_bound);
                    log.gradient("dw (added)", added(dw.span(), dw0.f.span()), want_dw, dw_bound);
                    matrix<float> dx_only(T, in), dw_only = dw0.f;
                    t2::ops::linear_backward(ex, x.f, w.f, g.f, dx_only, t2::matrix_view<float>{});
                    t2::ops::linear_backward(ex, x.f, w.f, g.f, t2::matrix_view<float>{}, dw_only);
                    T2_CHECK_CLOSE(dx_only.span(), dx.span(), 0, 1e-30);
                    T2_CHECK_CLOSE(dw_only.span(), dw.span(), 0, 1e-30);
                });
            }
    matrix<float> x(3, 4), w(5, 4), dy(3, 5), dx(3, 4), dw(5, 4), w_wrong(5, 3), dy_wrong(3, 4);
    CHECK_THROWS_AS(t2::ops::linear_backward(reference, x, w_wrong, dy, dx, dw), t2::error);
    CHECK_THROWS_AS(t2::ops::linear_backward(reference, x, w, dy_wrong, dx, dw), t2::error);
    CHECK_THROWS_AS(t2::ops::linear_backward(reference, x, w, dy, dy, dw), t2::error);
}

TEST_CASE("backward kernels: threads split large shapes and give the inner executor's bits") {
    // Large enough that threads<Inner> splits rows, columns and elements.
    const std::size_t T = 300, d = 257, V = 129;
    const auto x = t2_test::random_matrix(T, d, 800), dy = t2_test::random_matrix(T, d, 801);
    const auto w = t2_test::random_vector(d, 802);
    const auto logits = t2_test::random_matrix(T, V, 803);
    std::vector<std::int32_t> tokens(T);
    for (std::size_t t = 0; t < T; ++t)
        tokens[t] = static_cast<std::int32_t>((t * 13) % V);
    t2_test::for_each_threads_executor([&](const auto& ex, const std::string& name) {
        INFO(name);
        const auto& inner = ex.inner();
        matrix<float> a(T, d), b(T, d);
        vector<float> dwa(d), dwb(d);
        t2::ops::rmsnorm_backward(ex, x, w, dy, a, dwa);
        t2::ops::rmsnorm_backward(inner, x, w, dy, b, dwb);
        T2_CHECK_CLOSE(a.span(), b.span(), 0, 1e-30);
        T2_CHECK_CLOSE(dwa.span(), dwb.span(), 0, 1e-30);
        t2::ops::softmax_backward(ex, x, dy, a);
        t2::ops::softmax_backward(inner, x, dy, b);
        T2_CHECK_CLOSE(a.span(), b.span(), 0, 1e-30);
        matrix<float> c(T, d), e(T, d);
        t2::ops::swiglu_backward(ex, x.flat(), dy.flat(), x.flat(), a.flat(), b.flat());
        t2::ops::swiglu_backward(inner, x.flat(), dy.flat(), x.flat(), c.flat(), e.flat());
        T2_CHECK_CLOSE(a.span(), c.span(), 0, 1e-30);
        T2_CHECK_CLOSE(b.span(), e.span(), 0, 1e-30);
        matrix<float> la(T, V), lb(T, V);
        CHECK(t2::ops::cross_entropy(ex, logits, tokens, {}, la) ==
              t2::ops::cross_entropy(inner, logits, tokens, {}, lb));
        T2_CHECK_CLOSE(la.span(), lb.span(), 0, 1e-30);
        matrix<float> ta(V, d), tb(V, d);
        t2::ops::embedding_backward(ex, tokens, dy, ta);
        t2::ops::embedding_backward(inner, tokens, dy, tb);
        T2_CHECK_CLOSE(ta.span(), tb.span(), 0, 1e-30);
        const t2::ops::rope_config rope{.head_dim = 64};
        matrix<float> ra = t2_test::random_matrix(T, 256, 804), rb = ra;
        t2::ops::rope_backward(ex, ra, std::size_t{3}, rope);
        t2::ops::rope_backward(inner, rb, std::size_t{3}, rope);
        T2_CHECK_CLOSE(ra.span(), rb.span(), 0, 1e-30);
    });
}
