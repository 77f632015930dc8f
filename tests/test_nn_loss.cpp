// The loss kernels (ops::signed_cross_entropy, ops::kl_divergence in both directions) and
// the loss objects over packed batches (nn::next_token_cross_entropy, reinforce, kl_to_base,
// losses(...)) against independent double-precision references written here, on every
// executor and on odd shapes (V not a multiple of any vector width, R from 1 to 40, weights
// of both signs and zeros); gradients also against central finite differences in double;
// the loss objects against PyTorch (tests/parity/loss_reference.py) on a packed batch.
//
// Tolerances (comments 4 and 5 of support/tolerance.hpp, u = 2⁻²⁴). t2 forms a row's
// log-sum-exp as max + log Σ exp(x − max): x − max is rounded once (a relative error u·|x − max|
// of its exponential), exp is within function_error, the sum (f32 blocks on SIMD executors)
// within summation_error_bound(V) relative to itself, the rest is double. So its log-sum-exp
// is within
//     ε = u·(max − min) + function_error + summation_error_bound(V)
// of the exact one, and each probability within 2ε relative (its exponential and the
// normalizing sum). Then, to first order:
//   cross-entropy   |Δ(lse − x_t)| ≤ ε; a weighted sum Σ|w|·ε / divisor
//   KL              d = log q − log p is off by the two log-sum-exps' errors, the weighing
//                   probabilities s (p or q) by 2ε relative: |ΔKL| ≤ (ε_p + ε_q)·(1 + 2Σ s|d|)
//   gradients       the same relative errors on each term, plus one rounding per f32 operation
//                   on its magnitude, and u·(|dlogits before| + |term|) per accumulation.
// A value returned as f32 adds u·|value|, a reference rounded to f32 u·|want|. These are
// worst-case bounds for one f32 evaluation against the exact result; every comparison prints
// its worst ratio. The gradient started from zero is also checked against central finite
// differences of the double reference (support/finite_differences.hpp, h = 1e-6), each
// element within the same bound on t2's error (the gradient from zero, so without the
// accumulation's share) plus the finite differences' own bound on theirs, as in
// test_ops_backward.cpp.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <limits>
#include <map>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "support/check.hpp"
#include "support/finite_differences.hpp"
#include "support/executors.hpp"
#include "support/python_reference.hpp"
#include "support/tolerance.hpp"
#include "t2/io/npy.hpp"
#include "t2/nn/loss.hpp"

namespace {

namespace fs = std::filesystem;
using t2::matrix;
using t2::matrix_view;
using t2::ops::kl_direction;
using dvec = std::vector<double>;

const t2::exec::scalar reference;
constexpr double u = t2_test::unit_roundoff;

template <class F>
void for_every_executor(F&& f) {
    f(reference, std::string("scalar"));
    t2_test::for_each_executor(f);
}

// Uniform values, as f32 for t2 and the same values widened for the references.
struct input {
    matrix<float> f;
    dvec d;
    input(std::size_t rows, std::size_t cols, std::uint64_t seed, float lo = -4.f, float hi = 4.f)
        : f(t2_test::random_tensor(t2::dims<2>(rows, cols), seed, lo, hi)), d(f.data(), f.data() + f.size()) {}
    void refresh() { d.assign(f.data(), f.data() + f.size()); }
};

// Weights in [−2, 2] with about a quarter of them exactly 0; or all 1 (empty) when signed is false.
std::vector<float> signed_weights(std::size_t n, std::uint64_t seed) {
    std::vector<float> w(n);
    t2_test::fill_uniform(w, seed, -2.f, 2.f);
    for (std::size_t i = 0; i < n; ++i)
        if (i % 4 == 1)
            w[i] = 0.f;
    return w;
}

double weight_of(std::span<const float> w, std::size_t r) { return w.empty() ? 1.0 : double(w[r]); }

// ---- double-precision references ------------------------------------------------------

// One row: its log-sum-exp, softmax and ε (the bound on t2's log-sum-exp error, above).
struct row_ref {
    double lse = 0, eps = 0;
    dvec p;
};

row_ref analyse(const double* x, std::size_t V) {
    row_ref r;
    const double max = *std::max_element(x, x + V), min = *std::min_element(x, x + V);
    double s = 0;
    for (std::size_t v = 0; v < V; ++v)
        s += std::exp(x[v] - max);
    r.lse = max + std::log(s);
    r.p.resize(V);
    for (std::size_t v = 0; v < V; ++v)
        r.p[v] = std::exp(x[v] - r.lse);
    r.eps = u * (max - min) + t2_test::function_error + t2_test::summation_error_bound(V);
    return r;
}

// What a loss (or a sum of them) adds: its value and gradient in double, with the bounds on
// t2's errors. `magnitude` is Σ|terms| already added into each dlogits element (initially
// |dlogits|), which the rounding of each accumulation is relative to.
struct expected {
    double value = 0, value_bound = 0;
    dvec grad, grad_bound, magnitude;

    expected(std::span<const float> dlogits0)
        : grad(dlogits0.size(), 0.0), grad_bound(dlogits0.size(), 0.0), magnitude(dlogits0.size()) {
        for (std::size_t i = 0; i < magnitude.size(); ++i)
            magnitude[i] = std::abs(double(dlogits0[i]));
    }
    // A loss object's value is returned in f32.
    void round_value(double term) { value_bound += u * std::abs(term); }
    // Adds `term` to element i, t2 having computed it within `error`, in `adds` f32 additions.
    void add(std::size_t i, double term, double error, int adds = 1) {
        grad[i] += term;
        grad_bound[i] += error + adds * u * (magnitude[i] + std::abs(term));
        magnitude[i] += std::abs(term);
    }
};

// Σ_r w_r·(lse_r − x[r, t_r]) / divisor and w_r / divisor · (softmax − onehot).
double add_cross_entropy(expected& e, const dvec& x, std::size_t R, std::size_t V,
                         std::span<const std::int32_t> targets, std::span<const float> weights, double divisor) {
    double value = 0;
    for (std::size_t r = 0; r < R; ++r) {
        const double w = weight_of(weights, r);
        if (w == 0)
            continue;
        const row_ref row = analyse(x.data() + r * V, V);
        const std::size_t t = std::size_t(targets[r]);
        value += w * (row.lse - x[r * V + t]) / divisor;
        e.value_bound += std::abs(w) * row.eps / divisor;
        const double g = w / divisor;
        for (std::size_t v = 0; v < V; ++v) {
            const double p = row.p[v], term = g * (p - (v == t ? 1.0 : 0.0));
            // e·scale: 2ε relative, scale and product one rounding each; the target's −g one more.
            const double error = std::abs(g) * p * (2 * row.eps + 2 * u) + (v == t ? u * std::abs(g) : 0.0);
            e.add(r * V + v, term, error, v == t ? 2 : 1);
        }
    }
    e.value += value;
    return value;
}

// Σ_r w_r·KL_r / divisor and its gradient with respect to the adapted logits a.
double add_kl(expected& e, const dvec& base, const dvec& a, std::size_t R, std::size_t V,
              std::span<const float> weights, kl_direction direction, double divisor) {
    const bool forward = direction == kl_direction::base_to_adapted;
    double value = 0;
    for (std::size_t r = 0; r < R; ++r) {
        const double w = weight_of(weights, r);
        if (w == 0)
            continue;
        const row_ref P = analyse(base.data() + r * V, V), Q = analyse(a.data() + r * V, V);
        dvec d(V);
        double kl = 0, weighted = 0; // Σ s|d|
        for (std::size_t v = 0; v < V; ++v) {
            d[v] = (a[r * V + v] - Q.lse) - (base[r * V + v] - P.lse);
            const double s = forward ? P.p[v] : Q.p[v];
            kl += forward ? -s * d[v] : s * d[v];
            weighted += s * std::abs(d[v]);
        }
        const double kl_bound = (P.eps + Q.eps) * (1 + 2 * weighted);
        value += w * kl / divisor;
        e.value_bound += std::abs(w) * kl_bound / divisor;
        const double g = w / divisor;
        for (std::size_t v = 0; v < V; ++v) {
            const double p = P.p[v], q = Q.p[v];
            double term, error;
            if (forward) {
                term = g * (q - p);
                error = std::abs(g) * (2 * Q.eps * q + 2 * P.eps * p + u * (q + p));
            } else {
                term = g * q * (d[v] - kl);
                error = std::abs(g) * (2 * Q.eps * q * std::abs(d[v] - kl) + q * (P.eps + Q.eps + kl_bound) +
                                       u * q * std::abs(d[v] - kl));
            }
            e.add(r * V + v, term, error);
        }
    }
    e.value += value;
    return value;
}

// The worst ratio |got − want| / bound of each named bounded check and the worst
// finite-difference error of each named gradient, printed when the test case ends.
class worst_log {
public:
    explicit worst_log(std::string test) : test_(std::move(test)) {}
    worst_log(const worst_log&) = delete;
    worst_log& operator=(const worst_log&) = delete;
    ~worst_log() {
        for (const auto& [name, worst] : worst_)
            std::printf("%-22s %-44s %.2e\n", test_.c_str(), name.c_str(), worst);
    }
    void record(const std::string& name, double value) {
        double& w = worst_[name];
        w = std::max(w, value);
    }
    // got (t2's gradient from zero) against finite differences: e_from_zero's bound on t2's
    // error plus fd.error.
    void finite_differences(const std::string& name, std::span<const float> got, const t2_test::fd_gradient& fd,
                            const expected& e_from_zero) {
        dvec bound(got.size());
        for (std::size_t i = 0; i < bound.size(); ++i)
            bound[i] = e_from_zero.grad_bound[i] + fd.error[i];
        const auto c = t2_test::compare_within(got, fd.value, bound);
        INFO(name << ": against finite differences, worst element " << c.worst_index << ": got " << c.got
                  << ", want " << c.want << ", |difference| = " << std::abs(c.got - c.want) << " is "
                  << c.worst_ratio << " of its bound " << c.bound);
        CHECK(c.ok);
        record(name + ": finite differences", c.worst_ratio);
    }

private:
    std::string test_;
    std::map<std::string, double> worst_;
};

// Checks t2's value and dlogits (after adding to dlogits0) against e; returns the worst
// ratios to the bounds, of the value and of dlogits.
std::pair<double, double> check_expected(const std::string& what, double got_value, std::span<const float> got,
                                         std::span<const float> dlogits0, const expected& e,
                                         worst_log* log = nullptr) {
    std::vector<float> want(got.size()), bound(got.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
        const double w = double(dlogits0[i]) + e.grad[i];
        want[i] = float(w);
        bound[i] = float(e.grad_bound[i] + u * std::abs(w));
    }
    const auto value = t2_test::compare_within(got_value, e.value, e.value_bound);
    const auto grad = t2_test::compare_within(got, std::span<const float>(want), std::span<const float>(bound));
    {
        INFO(what << ": value");
        T2_CHECK_WITHIN(got_value, e.value, e.value_bound);
    }
    {
        INFO(what << ": dlogits");
        T2_CHECK_WITHIN(got, std::span<const float>(want), std::span<const float>(bound));
    }
    if (log) {
        log->record(what + ": value / bound", value.worst_ratio);
        log->record(what + ": dlogits / bound", grad.worst_ratio);
    }
    return {value.worst_ratio, grad.worst_ratio};
}

// A zero-filled R × V matrix: the gradient compared with finite differences is accumulated
// from zero (accumulating onto values of order 1 would round a small gradient to their
// precision).
matrix<float> zeros(std::size_t R, std::size_t V) {
    matrix<float> m(R, V);
    m.fill(0.f);
    return m;
}

std::string shape_name(std::size_t R, std::size_t V) { return std::to_string(R) + "x" + std::to_string(V); }

constexpr std::size_t kernel_rows[] = {1, 2, 7, 17, 40};
constexpr std::size_t kernel_classes[] = {1, 3, 13, 31, 67, 1031};
constexpr std::size_t fd_max_elements = 1500; // finite differences cost (R·V)² exponentials

// ---- packed batches for the loss objects ------------------------------------------------

struct packed_batch {
    std::vector<std::size_t> offsets;
    std::vector<std::int32_t> targets;
    input logits, base;
    std::vector<float> rewards, mask, kl_weights, weights;

    packed_batch(const std::vector<std::size_t>& lengths, std::size_t V, std::uint64_t seed)
        : offsets{0}, logits(total(lengths), V, seed), base(total(lengths), V, seed + 1) {
        const std::size_t R = total(lengths);
        for (std::size_t n : lengths)
            offsets.push_back(offsets.back() + n);
        targets = t2_test::random_tokens(R, V, seed + 2);
        // Near the base: the adapted logits are the base's plus a perturbation of ±0.5.
        for (std::size_t i = 0; i < logits.f.size(); ++i)
            logits.f.data()[i] = base.f.data()[i] + logits.f.data()[i] / 8;
        logits.refresh();
        const float reward_cycle[] = {1.f, -1.f, 0.5f, -0.25f, 2.f};
        for (std::size_t b = 0; b < lengths.size(); ++b)
            rewards.push_back(reward_cycle[b % 5]);
        // Each sequence's first two rows are its prompt: mask 0, and a padding target there.
        mask.assign(R, 1.f);
        for (std::size_t b = 0; b < lengths.size(); ++b)
            for (std::size_t r = offsets[b]; r < std::min(offsets[b] + 2, offsets[b + 1]); ++r) {
                mask[r] = 0.f;
                targets[r] = r % 2 ? -100 : std::int32_t(V + 3);
            }
        kl_weights = mask;
        for (std::size_t r = 0; r < R; ++r)
            if (mask[r] != 0.f && r % 3 == 0)
                kl_weights[r] = 0.5f;
        weights = kl_weights; // next-token weights: fractional, >= 0
    }
    static std::size_t total(const std::vector<std::size_t>& lengths) {
        std::size_t n = 0;
        for (std::size_t l : lengths)
            n += l;
        return n;
    }
    std::size_t R() const { return logits.f.extent(0); }
    std::size_t V() const { return logits.f.extent(1); }
    std::size_t B() const { return offsets.size() - 1; }
    t2::nn::loss_rows rows() const { return {offsets, targets}; }
    // Per-row REINFORCE weights r_b·mask_r (exact in f32 for these rewards and masks).
    std::vector<float> reinforce_weights() const {
        std::vector<float> w(R());
        for (std::size_t b = 0; b < B(); ++b)
            for (std::size_t r = offsets[b]; r < offsets[b + 1]; ++r)
                w[r] = rewards[b] * mask[r];
        return w;
    }
};

double sum_of(std::span<const float> w) {
    double s = 0;
    for (float x : w)
        s += x;
    return s;
}

// Adds the expected value and gradient of each named loss of a packed batch (the names the
// PyTorch reference writes), with the f32 rounding of every term's value and of the total.
void add_named_loss(expected& e, const packed_batch& pb, const std::string& name, const dvec& x, float coefficient) {
    const std::size_t R = pb.R(), V = pb.V();
    std::vector<double> terms;
    const auto reinforce_term = [&] {
        const auto w = pb.reinforce_weights();
        terms.push_back(add_cross_entropy(e, x, R, V, pb.targets, w, double(pb.B())));
    };
    const auto kl_term = [&](kl_direction d) {
        terms.push_back(add_kl(e, pb.base.d, x, R, V, pb.kl_weights, d, 1.0 / double(coefficient)));
    };
    if (name == "next_token_cross_entropy")
        terms.push_back(add_cross_entropy(e, x, R, V, pb.targets, pb.weights, sum_of(pb.weights)));
    if (name.starts_with("reinforce"))
        reinforce_term();
    if (name.ends_with("kl_base_to_adapted"))
        kl_term(kl_direction::base_to_adapted);
    if (name.ends_with("kl_adapted_to_base"))
        kl_term(kl_direction::adapted_to_base);
    REQUIRE(!terms.empty());
    for (double t : terms)
        e.round_value(t);
    if (terms.size() > 1)
        e.round_value(e.value);
}

// t2's loss object for each name, called on ex.
template <class E>
float run_named_loss(const E& ex, const packed_batch& pb, const std::string& name, float coefficient,
                     matrix_view<float> dlogits) {
    namespace nn = t2::nn;
    const auto rows = pb.rows();
    const nn::reinforce rl{pb.rewards, pb.mask};
    const nn::kl_to_base kl_forward{pb.base.f, coefficient, pb.kl_weights, kl_direction::base_to_adapted};
    const nn::kl_to_base kl_reverse{pb.base.f, coefficient, pb.kl_weights, kl_direction::adapted_to_base};
    if (name == "next_token_cross_entropy")
        return nn::next_token_cross_entropy{pb.weights}(ex, rows, pb.logits.f, dlogits);
    if (name == "reinforce")
        return rl(ex, rows, pb.logits.f, dlogits);
    if (name == "kl_base_to_adapted")
        return kl_forward(ex, rows, pb.logits.f, dlogits);
    if (name == "kl_adapted_to_base")
        return kl_reverse(ex, rows, pb.logits.f, dlogits);
    if (name == "reinforce+kl_base_to_adapted")
        return nn::losses(rl, kl_forward)(ex, rows, pb.logits.f, dlogits);
    if (name == "reinforce+kl_adapted_to_base")
        return nn::losses(rl, kl_reverse)(ex, rows, pb.logits.f, dlogits);
    FAIL("unknown loss " << name);
    return 0.f;
}

const std::vector<std::string> loss_names = {"next_token_cross_entropy",     "reinforce",
                                             "kl_base_to_adapted",           "kl_adapted_to_base",
                                             "reinforce+kl_base_to_adapted", "reinforce+kl_adapted_to_base"};

// ---- compile-time checks ------------------------------------------------------------------

struct not_a_loss {
    int operator()(int) const { return 0; }
};
using pool_executor = t2::exec::threads<t2::exec::scalar>;
static_assert(t2::nn::loss_function<t2::nn::next_token_cross_entropy>);
static_assert(t2::nn::loss_function<t2::nn::reinforce, pool_executor>);
static_assert(t2::nn::loss_function<t2::nn::kl_to_base>);
static_assert(t2::nn::loss_function<t2::nn::loss_sum<t2::nn::reinforce, t2::nn::kl_to_base>>);
static_assert(!t2::nn::loss_function<not_a_loss>);
static_assert(!t2::nn::loss_function<int>);

} // namespace

// ---- kernels ------------------------------------------------------------------------------

TEST_CASE("signed_cross_entropy: value and accumulated gradient against double precision, every executor") {
    worst_log log("signed_cross_entropy");
    std::uint64_t seed = 1000;
    for (std::size_t R : kernel_rows)
        for (std::size_t V : kernel_classes)
            for (int weighting : {0, 1}) { // none (all 1), signed weights with zeros
                CAPTURE(shape_name(R, V));
                CAPTURE(weighting);
                input logits(R, V, seed++);
                auto targets = t2_test::random_tokens(R, V, seed++);
                const std::vector<float> weights = weighting ? signed_weights(R, seed++) : std::vector<float>{};
                for (std::size_t r = 0; r < weights.size(); ++r)
                    if (weights[r] == 0.f)
                        targets[r] = r % 2 ? -100 : std::int32_t(V); // not read
                const double divisor = weighting ? 2.5 : 1.0;
                const auto dlogits0 = t2_test::random_tensor(t2::dims<2>(R, V), seed++);
                expected e(dlogits0.span());
                add_cross_entropy(e, logits.d, R, V, targets, weights, divisor);
                t2_test::fd_gradient fd;
                const matrix<float> none = zeros(R, V);
                expected from_zero_e(none.span());
                add_cross_entropy(from_zero_e, logits.d, R, V, targets, weights, divisor);
                if (R * V <= fd_max_elements)
                    fd = t2_test::weighted_gradient(
                        logits.d,
                        [&] {
                            expected scratch(dlogits0.span());
                            return add_cross_entropy(scratch, logits.d, R, V, targets, weights, divisor);
                        },
                        V + R + 6);
                for_every_executor([&](const auto& ex, const std::string& name) {
                    INFO(name);
                    matrix<float> dlogits = dlogits0;
                    const double value = t2::ops::signed_cross_entropy(ex, logits.f, targets, weights, dlogits, divisor);
                    check_expected("signed_cross_entropy", value, dlogits.span(), dlogits0.span(), e, &log);
                    for (std::size_t r = 0; r < weights.size(); ++r)
                        if (weights[r] == 0.f)
                            for (std::size_t v = 0; v < V; ++v)
                                CHECK(dlogits(r, v) == dlogits0(r, v)); // untouched
                    if (!fd.value.empty()) {
                        matrix<float> from_zero = zeros(R, V);
                        t2::ops::signed_cross_entropy(ex, logits.f, targets, weights, from_zero, divisor);
                        log.finite_differences("dlogits", from_zero.span(), fd, from_zero_e);
                    }
                    CHECK(t2::ops::signed_cross_entropy(ex, logits.f, targets, weights, {}, divisor) == value);
                });
            }
}

TEST_CASE("kl_divergence: both directions against double precision, every executor") {
    worst_log log("kl_divergence");
    std::uint64_t seed = 2000;
    for (const auto direction : {kl_direction::base_to_adapted, kl_direction::adapted_to_base})
        for (std::size_t R : kernel_rows)
            for (std::size_t V : kernel_classes)
                for (int weighting : {0, 1}) {
                    const std::string dir_name =
                        direction == kl_direction::base_to_adapted ? "base_to_adapted" : "adapted_to_base";
                    CAPTURE(dir_name);
                    CAPTURE(shape_name(R, V));
                    CAPTURE(weighting);
                    input base(R, V, seed++), logits(R, V, seed++);
                    if (weighting == 1) { // near the base, as an adapter in training is
                        for (std::size_t i = 0; i < logits.f.size(); ++i)
                            logits.f.data()[i] = base.f.data()[i] + logits.f.data()[i] / 16;
                        logits.refresh();
                    }
                    const std::vector<float> weights = weighting ? signed_weights(R, seed++) : std::vector<float>{};
                    const double divisor = weighting ? 1.0 / 0.2 : 1.0;
                    const auto dlogits0 = t2_test::random_tensor(t2::dims<2>(R, V), seed++);
                    expected e(dlogits0.span());
                    add_kl(e, base.d, logits.d, R, V, weights, direction, divisor);
                    t2_test::fd_gradient fd;
                    const matrix<float> none = zeros(R, V);
                    expected from_zero_e(none.span());
                    add_kl(from_zero_e, base.d, logits.d, R, V, weights, direction, divisor);
                    if (R * V <= fd_max_elements)
                        fd = t2_test::weighted_gradient(
                            logits.d,
                            [&] {
                                expected scratch(dlogits0.span());
                                return add_kl(scratch, base.d, logits.d, R, V, weights, direction, divisor);
                            },
                            V + R + 10);
                    for_every_executor([&](const auto& ex, const std::string& name) {
                        INFO(name);
                        matrix<float> dlogits = dlogits0;
                        const double value =
                            t2::ops::kl_divergence(ex, base.f, logits.f, weights, dlogits, direction, divisor);
                        check_expected(dir_name, value, dlogits.span(), dlogits0.span(), e, &log);
                        if (V > 1)
                            CHECK(value != 0.0); // the rows differ
                        if (!fd.value.empty()) {
                            matrix<float> from_zero = zeros(R, V);
                            t2::ops::kl_divergence(ex, base.f, logits.f, weights, from_zero, direction, divisor);
                            log.finite_differences(dir_name, from_zero.span(), fd, from_zero_e);
                        }
                        CHECK(t2::ops::kl_divergence(ex, base.f, logits.f, weights, {}, direction, divisor) == value);
                    });
                }
}

TEST_CASE("kl_divergence of identical rows is exactly 0 with a zero gradient; the default is base_to_adapted") {
    const input a(5, 67, 2500);
    const auto dlogits0 = t2_test::random_tensor(t2::dims<2>(5, 67), 2501);
    for_every_executor([&](const auto& ex, const std::string& name) {
        INFO(name);
        for (const auto direction : {kl_direction::base_to_adapted, kl_direction::adapted_to_base}) {
            matrix<float> dlogits = dlogits0;
            CHECK(t2::ops::kl_divergence(ex, a.f, a.f, {}, dlogits, direction) == 0.0);
            CHECK(std::equal(dlogits.span().begin(), dlogits.span().end(), dlogits0.span().begin()));
        }
    });
    const input b(5, 67, 2502);
    CHECK(t2::ops::kl_divergence(reference, a.f, b.f) ==
          t2::ops::kl_divergence(reference, a.f, b.f, {}, {}, kl_direction::base_to_adapted));
    CHECK(t2::ops::kl_divergence(reference, a.f, b.f) !=
          t2::ops::kl_divergence(reference, a.f, b.f, {}, {}, kl_direction::adapted_to_base));
}

TEST_CASE("loss kernels: threads<Inner> gives its inner executor's result bit for bit") {
    // 40 rows of 1031 classes: more than one row range per thread (compute_grain is 4 Ki).
    const std::size_t R = 40, V = 1031;
    const input base(R, V, 2600), logits(R, V, 2601);
    const auto targets = t2_test::random_tokens(R, V, 2602);
    const auto weights = signed_weights(R, 2603);
    const auto run = [&](const auto& ex, std::vector<float>& out) {
        matrix<float> d(R, V);
        d.fill(0.5f);
        std::vector<double> values{t2::ops::signed_cross_entropy(ex, logits.f, targets, weights, d, 3.0),
                                   t2::ops::kl_divergence(ex, base.f, logits.f, weights, d),
                                   t2::ops::kl_divergence(ex, base.f, logits.f, {}, d, kl_direction::adapted_to_base)};
        out.assign(d.data(), d.data() + d.size());
        return values;
    };
    std::vector<float> inner_grad, pooled_grad;
    for (std::size_t n : t2_test::test_pool_sizes) {
        CAPTURE(n);
        CHECK(run(reference, inner_grad) == run(t2::exec::threads<t2::exec::scalar>(t2_test::test_pool(n)), pooled_grad));
        CHECK(inner_grad == pooled_grad);
#if T2_ENABLE_SIMD
        CHECK(run(t2::exec::simd<>{}, inner_grad) ==
              run(t2::exec::threads<t2::exec::simd<>>(t2_test::test_pool(n)), pooled_grad));
        CHECK(inner_grad == pooled_grad);
#endif
    }
}

TEST_CASE("loss kernels: logits around 1e4 neither overflow nor lose the value") {
    const std::size_t R = 3, V = 33;
    input base(R, V, 2700), logits(R, V, 2701);
    for (auto* in : {&base, &logits}) {
        for (float& v : in->f.span())
            v += 1e4f;
        in->refresh();
    }
    const std::vector<std::int32_t> targets{0, 32, 7};
    const std::vector<float> weights{1.f, -2.f, 0.5f};
    for_every_executor([&](const auto& ex, const std::string& name) {
        INFO(name);
        matrix<float> dlogits(R, V);
        dlogits.fill(0.f);
        expected ce(dlogits.span());
        add_cross_entropy(ce, logits.d, R, V, targets, weights, 1.0);
        const double value = t2::ops::signed_cross_entropy(ex, logits.f, targets, weights, dlogits);
        check_expected("signed_cross_entropy", value, dlogits.span(), std::vector<float>(R * V, 0.f), ce);
        for (const auto direction : {kl_direction::base_to_adapted, kl_direction::adapted_to_base}) {
            dlogits.fill(0.f);
            expected kl(dlogits.span());
            add_kl(kl, base.d, logits.d, R, V, weights, direction, 1.0);
            const double v = t2::ops::kl_divergence(ex, base.f, logits.f, weights, dlogits, direction);
            check_expected("kl_divergence", v, dlogits.span(), std::vector<float>(R * V, 0.f), kl);
        }
    });
}

TEST_CASE("loss kernels: bad sizes, non-finite weights and bad targets are t2::errors") {
    const auto logits = t2_test::random_matrix(3, 5, 2800);
    const auto base = t2_test::random_matrix(3, 5, 2801);
    matrix<float> dlogits(3, 5);
    const std::vector<std::int32_t> ok{0, 1, 2};
    const auto message = [](auto&& f) { return t2_test::error_message(f); };
    SUBCASE("signed_cross_entropy") {
        using t2::ops::signed_cross_entropy;
        CHECK(t2_test::contains(message([&] {
                                    signed_cross_entropy(reference, logits, std::vector<std::int32_t>{0, 5, 1},
                                                         std::vector<float>{1.f, -1.f, 1.f}, dlogits);
                                }),
                                "target 5 at position 1"));
        CHECK(t2_test::contains(
            message([&] { signed_cross_entropy(reference, logits, std::vector<std::int32_t>{0, 1, -1}, {}); }),
            "target -1 at position 2"));
        // A target outside the classes on a row of weight 0 is not read.
        CHECK_NOTHROW(signed_cross_entropy(reference, logits, std::vector<std::int32_t>{0, 99, -100},
                                           std::vector<float>{-1.f, 0.f, 0.f}, dlogits));
        CHECK(t2_test::contains(message([&] {
                                    signed_cross_entropy(reference, logits, ok, std::vector<float>{1.f, NAN, 1.f});
                                }),
                                "weight nan at position 1"));
        CHECK_THROWS_AS(signed_cross_entropy(reference, logits, ok, std::vector<float>{INFINITY, 1.f, 1.f}), t2::error);
        CHECK_THROWS_AS(signed_cross_entropy(reference, logits, std::vector<std::int32_t>{0, 1}, {}), t2::error);
        CHECK_THROWS_AS(signed_cross_entropy(reference, logits, ok, std::vector<float>{1.f}), t2::error);
        matrix<float> wrong(3, 4);
        CHECK_THROWS_AS(signed_cross_entropy(reference, logits, ok, {}, wrong), t2::error);
        matrix<float> in_place = logits;
        CHECK_THROWS_AS(signed_cross_entropy(reference, in_place, ok, {}, in_place), t2::error);
        CHECK_THROWS_AS(signed_cross_entropy(reference, logits, ok, {}, dlogits, 0.0), t2::error);
        CHECK_THROWS_AS(signed_cross_entropy(reference, logits, ok, {}, dlogits, NAN), t2::error);
        matrix<float> no_classes(3, 0);
        CHECK_THROWS_AS(signed_cross_entropy(reference, no_classes, ok, {}), t2::error);
        matrix<float> empty(0, 5);
        CHECK(signed_cross_entropy(reference, empty, {}, {}) == 0.0);
    }
    SUBCASE("kl_divergence") {
        using t2::ops::kl_divergence;
        const auto other = t2_test::random_matrix(3, 4, 2802);
        CHECK(t2_test::contains(message([&] { kl_divergence(reference, other, logits); }), "base_logits is [3, 4]"));
        CHECK(t2_test::contains(message([&] {
                                    kl_divergence(reference, base, logits, std::vector<float>{1.f, 1.f, -INFINITY});
                                }),
                                "weight -inf at position 2"));
        CHECK_THROWS_AS(kl_divergence(reference, base, logits, std::vector<float>{1.f, 1.f}), t2::error);
        matrix<float> wrong(3, 4);
        CHECK_THROWS_AS(kl_divergence(reference, base, logits, {}, wrong), t2::error);
        matrix<float> a = logits, b = base;
        CHECK_THROWS_AS(kl_divergence(reference, b, a, {}, a), t2::error);
        CHECK_THROWS_AS(kl_divergence(reference, b, a, {}, b), t2::error);
        CHECK_THROWS_AS(kl_divergence(reference, base, logits, {}, dlogits, kl_direction::base_to_adapted, -1.0),
                        t2::error);
        matrix<float> no_classes(3, 0);
        CHECK_THROWS_AS(kl_divergence(reference, no_classes, no_classes), t2::error);
    }
}

// ---- loss objects -------------------------------------------------------------------------

TEST_CASE("next_token_cross_entropy is ops::cross_entropy bit for bit, its gradient added") {
    std::uint64_t seed = 3000;
    for (std::size_t R : {1, 7, 40})
        for (std::size_t V : {1, 13, 1031})
            for (int weighting : {0, 1, 2, 3}) { // none, a 0/1 mask, fractional, all 0
                CAPTURE(shape_name(R, V));
                CAPTURE(weighting);
                const auto logits = t2_test::random_tensor(t2::dims<2>(R, V), seed++, -4.f, 4.f);
                auto targets = t2_test::random_tokens(R, V, seed++);
                std::vector<float> weights;
                for (std::size_t r = 0; weighting && r < R; ++r)
                    weights.push_back(weighting == 1 ? float(r % 3 != 0) : weighting == 2 ? 0.25f + float(r % 5) / 3 : 0.f);
                for (std::size_t r = 0; r < weights.size(); ++r)
                    if (weights[r] == 0.f)
                        targets[r] = -100;
                const std::vector<std::size_t> offsets{0, R / 3, R};
                const t2::nn::loss_rows rows{offsets, targets};
                for_every_executor([&](const auto& ex, const std::string& name) {
                    INFO(name);
                    matrix<float> want(R, V), got(R, V);
                    got.fill(0.f);
                    const float loss = t2::ops::cross_entropy(ex, logits, targets, weights, want);
                    CHECK(t2::nn::next_token_cross_entropy{weights}(ex, rows, logits, got) == loss);
                    CHECK(got.span().size() == want.span().size());
                    CHECK(std::equal(got.span().begin(), got.span().end(), want.span().begin()));
                    CHECK(t2::nn::next_token_cross_entropy{weights}(ex, rows, logits, {}) == loss);
                });
            }
}

TEST_CASE("loss objects on packed batches against double precision and finite differences") {
    worst_log log("loss objects");
    const float coefficient = 0.2f;
    std::uint64_t seed = 4000;
    // Unequal lengths, an empty sequence among them, one sequence alone.
    for (const auto& [lengths, classes] : {std::pair<std::vector<std::size_t>, std::size_t>{{5, 9, 3}, 13},
                                           {{1}, 7},
                                           {{4, 0, 11, 2, 6}, 31},
                                           {{17, 23}, 67}}) {
        const std::size_t V = classes; // a variable the lambdas below may capture
        const packed_batch pb(lengths, V, seed);
        seed += 10;
        CAPTURE(shape_name(pb.R(), V));
        CAPTURE(pb.B());
        const auto dlogits0 = t2_test::random_tensor(t2::dims<2>(pb.R(), V), seed++);
        for (const std::string& loss : loss_names) {
            CAPTURE(loss);
            if (loss == "next_token_cross_entropy" && sum_of(pb.weights) == 0)
                continue;
            expected e(dlogits0.span());
            add_named_loss(e, pb, loss, pb.logits.d, coefficient);
            t2_test::fd_gradient fd;
            const matrix<float> none = zeros(pb.R(), V);
            expected from_zero_e(none.span());
            add_named_loss(from_zero_e, pb, loss, pb.logits.d, coefficient);
            if (pb.R() * V <= fd_max_elements) {
                dvec x = pb.logits.d;
                fd = t2_test::weighted_gradient(
                    x,
                    [&] {
                        expected scratch(dlogits0.span());
                        add_named_loss(scratch, pb, loss, x, coefficient);
                        return scratch.value;
                    },
                    V + pb.R() + 10);
            }
            for_every_executor([&](const auto& ex, const std::string& name) {
                INFO(name);
                matrix<float> dlogits = dlogits0;
                const float value = run_named_loss(ex, pb, loss, coefficient, dlogits);
                check_expected(loss, value, dlogits.span(), dlogits0.span(), e, &log);
                if (!fd.value.empty()) {
                    matrix<float> from_zero = zeros(pb.R(), V);
                    run_named_loss(ex, pb, loss, coefficient, from_zero);
                    log.finite_differences(loss, from_zero.span(), fd, from_zero_e);
                }
                CHECK(run_named_loss(ex, pb, loss, coefficient, {}) == value);
            });
        }
    }
}

TEST_CASE("loss objects: a sum is its terms, in order; nothing counted or a zero coefficient adds nothing") {
    const packed_batch pb({5, 9, 3}, 13, 4500);
    const auto rows = pb.rows();
    const t2::nn::reinforce rl{pb.rewards, pb.mask};
    const t2::nn::kl_to_base kl{pb.base.f, 0.2f, {}, kl_direction::adapted_to_base};
    const t2::nn::next_token_cross_entropy ce{pb.weights};
    matrix<float> separate(pb.R(), pb.V()), summed(pb.R(), pb.V());
    separate.fill(0.25f);
    summed.fill(0.25f);
    double terms = rl(reference, rows, pb.logits.f, separate); // one statement each: in order
    terms += kl(reference, rows, pb.logits.f, separate);
    terms += ce(reference, rows, pb.logits.f, separate);
    CHECK(t2::nn::losses(rl, kl, ce)(reference, rows, pb.logits.f, summed) == float(terms));
    CHECK(std::equal(summed.span().begin(), summed.span().end(), separate.span().begin()));

    const std::vector<float> zeros(pb.R(), 0.f);
    matrix<float> dlogits(pb.R(), pb.V());
    dlogits.fill(0.25f);
    CHECK(t2::nn::next_token_cross_entropy{zeros}(reference, rows, pb.logits.f, dlogits) == 0.f);
    CHECK(t2::nn::reinforce{pb.rewards, zeros}(reference, rows, pb.logits.f, dlogits) == 0.f);
    CHECK(t2::nn::kl_to_base{.base_logits = pb.base.f, .coefficient = 0.f}(reference, rows, pb.logits.f, dlogits) == 0.f);
    CHECK(t2::nn::kl_to_base{pb.base.f, 1.f, zeros}(reference, rows, pb.logits.f, dlogits) == 0.f);
    CHECK(std::all_of(dlogits.span().begin(), dlogits.span().end(), [](float v) { return v == 0.25f; }));
    // An empty batch: no sequences, no rows.
    const std::vector<std::size_t> none{0};
    const matrix<float> no_rows(0, 13);
    const t2::nn::loss_rows empty{none, {}};
    CHECK(t2::nn::reinforce{}(reference, empty, no_rows, {}) == 0.f);
    CHECK(t2::nn::next_token_cross_entropy{}(reference, empty, no_rows, {}) == 0.f);
    CHECK(t2::nn::kl_to_base{.base_logits = no_rows, .coefficient = 0.2f}(reference, empty, no_rows, {}) == 0.f);
}

TEST_CASE("loss objects: a packing, rewards, weights or base logits that do not fit are t2::errors") {
    const packed_batch pb({5, 9, 3}, 13, 4600);
    const auto& logits = pb.logits.f;
    const t2::nn::next_token_cross_entropy ce{};
    const t2::nn::reinforce rl{pb.rewards, pb.mask};
    const auto message = [&](const std::vector<std::size_t>& offsets, const auto& loss) {
        return t2_test::error_message([&] { loss(reference, t2::nn::loss_rows{offsets, pb.targets}, logits, {}); });
    };
    CHECK(t2_test::contains(message({}, ce), "row offsets must start with 0"));
    CHECK(t2_test::contains(message({1, 5, 14, 17}, ce), "row offsets must start with 0"));
    CHECK(t2_test::contains(message({0, 9, 5, 17}, ce), "offsets must not decrease"));
    CHECK(t2_test::contains(message({0, 5, 14, 16}, rl), "the row offsets end at 16"));
    CHECK(t2_test::contains(message({0, 5, 14, 17, 17}, rl), "3 rewards for 4 sequences"));
    const auto rows = pb.rows();
    const auto fails = [&](const auto& loss, const std::string& part) {
        CHECK(t2_test::contains(t2_test::error_message([&] { loss(reference, rows, logits, {}); }), part));
    };
    const std::vector<float> short_weights(pb.R() - 1, 1.f);
    std::vector<float> negative(pb.R(), 1.f), bad_reward = pb.rewards;
    negative[4] = -1.f;
    bad_reward[1] = NAN;
    fails(t2::nn::next_token_cross_entropy{short_weights}, "16 weights for 17 rows");
    fails(t2::nn::next_token_cross_entropy{negative}, "weight -1 at row 4");
    fails(t2::nn::reinforce{pb.rewards, short_weights}, "16 mask weights for 17 rows");
    fails(t2::nn::reinforce{bad_reward, pb.mask}, "reward nan of sequence 1");
    fails(t2::nn::reinforce{std::vector<float>(3, 1.f), {}}, "target 16 at position 0"); // the prompt's padding now counts
    const matrix<float> small_base(pb.R(), pb.V() - 1);
    fails(t2::nn::kl_to_base{.base_logits = small_base, .coefficient = 0.2f}, "base logits are [17, 12]");
    fails(t2::nn::kl_to_base{.base_logits = pb.base.f, .coefficient = -0.2f}, "coefficient -0.2");
    fails(t2::nn::kl_to_base{.base_logits = pb.base.f, .coefficient = NAN}, "coefficient nan");
    fails(t2::nn::kl_to_base{pb.base.f, 0.2f, short_weights}, "16 weights for 17 rows");
    std::vector<float> nan_weights(pb.R(), 1.f);
    nan_weights[3] = NAN;
    fails(t2::nn::kl_to_base{pb.base.f, 0.2f, nan_weights}, "weight nan at position 3");
    const std::vector<std::int32_t> short_targets(pb.R() - 1, 0);
    CHECK(t2_test::contains(t2_test::error_message([&] {
                                ce(reference, t2::nn::loss_rows{pb.offsets, short_targets}, logits, {});
                            }),
                            "16 targets"));
    matrix<float> wrong(pb.R(), pb.V() + 1);
    CHECK(t2_test::contains(t2_test::error_message([&] { rl(reference, rows, logits, wrong); }), "dlogits are [17, 14]"));
}

// ---- PyTorch parity -----------------------------------------------------------------------

TEST_CASE("loss objects match PyTorch (cross_entropy, log_softmax, kl_div) on a packed batch") {
    // 3 sequences of unequal lengths, rewards +1, −1, 0.5, KL coefficient 0.2.
    const float coefficient = 0.2f;
    packed_batch pb({6, 11, 4}, 37, 5000);
    pb.rewards = {1.f, -1.f, 0.5f};
    for (std::size_t r = 0; r < pb.R(); ++r)
        if (pb.mask[r] == 0.f)
            pb.targets[r] = -100; // PyTorch's ignore_index: it refuses other ids outside [0, V)
    const fs::path dir = fs::path(T2_TEST_TMP_DIR) / "parity_loss";
    std::error_code ec;
    fs::remove_all(dir, ec);
    fs::create_directories(dir);
    {
        std::ofstream spec(dir / "case.txt");
        const auto joined = [](const auto& values) {
            std::ostringstream s;
            s << std::setprecision(9);
            for (std::size_t i = 0; i < values.size(); ++i)
                s << (i ? "," : "") << values[i];
            return s.str();
        };
        spec << "# written by test_nn_loss\noffsets\t" << joined(pb.offsets) << "\ntargets\t" << joined(pb.targets)
             << "\nrewards\t" << joined(pb.rewards) << "\nmask\t" << joined(pb.mask) << "\nkl_weights\t"
             << joined(pb.kl_weights) << "\nweights\t" << joined(pb.weights) << "\nkl_coefficient\t" << std::setprecision(9) << coefficient << "\n";
    }
    t2::io::write_npy((dir / "logits.npy").string(), pb.logits.f.span(), {pb.R(), pb.V()});
    t2::io::write_npy((dir / "base_logits.npy").string(), pb.base.f.span(), {pb.R(), pb.V()});
    const std::string script = fs::path(T2_TEST_DATA_DIR "/../parity/loss_reference.py").lexically_normal().string();
    const auto run = t2_test::run_python_script(script, t2_test::shell_quoted(dir.string()), dir / "python.log");
    if (!run.error.empty())
        FAIL(run.error);

    const t2::exec::scalar scalar;
#if T2_ENABLE_SIMD
    const t2::exec::threads<t2::exec::simd<>> fast(t2_test::test_pool(2));
#else
    const t2::exec::threads<t2::exec::scalar> fast(t2_test::test_pool(2));
#endif
    const std::vector<float> zero(pb.R() * pb.V(), 0.f);
    std::ostringstream summary;
    summary << "worst |t2 - PyTorch| / bound (value, dlogits), scalar and threads<simd> (2); reference "
            << std::fixed << std::setprecision(1) << run.seconds << " s\n";
    for (const std::string& loss : loss_names) {
        CAPTURE(loss);
        const auto want_value = t2_test::read_npy(dir / "out" / (loss + ".loss.npy"));
        const auto want_grad = t2_test::read_npy(dir / "out" / (loss + ".dlogits.npy"));
        REQUIRE(want_value.data.size() == 1);
        REQUIRE(want_grad.data.size() == zero.size());
        // The bounds of the double-precision reference above, the values PyTorch's.
        expected e(zero);
        add_named_loss(e, pb, loss, pb.logits.d, coefficient);
        e.value = want_value.data[0];
        e.grad = want_grad.data;
        summary << "  " << std::left << std::setw(30) << loss << std::scientific << std::setprecision(2);
        for (int which = 0; which < 2; ++which) {
            matrix<float> dlogits = zeros(pb.R(), pb.V());
            const float value = which == 0 ? run_named_loss(scalar, pb, loss, coefficient, dlogits)
                                           : run_named_loss(fast, pb, loss, coefficient, dlogits);
            const auto [v, g] =
                check_expected(loss + (which ? " (threads<simd>)" : " (scalar)"), value, dlogits.span(), zero, e);
            summary << "  " << v << " " << g;
        }
        summary << "\n";
    }
    MESSAGE(summary.str());
}
