// t2::train's optimizers (adam, sgd) and clip_gradient_norm. Parity with PyTorch:
// tests/parity/optimizer_reference.py runs torch.optim.Adam / SGD and
// torch.nn.utils.clip_grad_norm_ on the float32 inputs t2 writes under
// T2_TEST_TMP_DIR/parity_optimizers (once for all cases, one torch import), and t2's parameters
// after each of 7 steps, and its state() after the last, must agree with PyTorch's on sizes 1,
// 13 and 1001 for several option sets. Without a Python that can import torch these tests
// fail, saying so; T2_PYTHON in the environment overrides /usr/bin/python3. Then clipping
// against its definition, bad options and spans, and a restart from state() and steps() (what
// a checkpoint holds) against an uninterrupted run.
//
// Tolerances (u = 2⁻²⁴, as in support/tolerance.hpp). The gradients are given, not functions
// of the parameters, so no rounding error feeds back into an update: an element's error after
// step t is the sum of its updates' errors and of the roundings of its subtractions. t2 and
// PyTorch evaluate the same formulas in float32, one rounding per operation or none where a
// product is fused into an FMA (both may fuse), with the same float32 hyperparameters and
// equal coefficients (1 − β is exact in f32 for β in [0.5, 1), and correctly rounded either
// way). So each is within E of the exact trajectory (run in double here), and they are within
// 2E of each other, where, to first order in u, per element:
//   Adam  m's error e_m ← β₁e_m + 3u·M with M ← β₁M + (1−β₁)|g| (β₁m, (1−β₁)g and their sum,
//         each the rounding of a partial no larger than M); v's terms are nonnegative, so
//         e_v ← β₂e_v + 4u·v ((1−β₂)g, its product with g, β₂v, the sum). The denominator
//         d = √v/c₂ + ε (c₂ = √(1−β₂ᵗ) rounded to f32, the division, the sqrt, + ε) is off by
//         ρ_d = e_v/(2v) + 4u relative; the step size s = lr/(1−β₁ᵗ) (its f32 roundings) and
//         s·m/d (two more) add 4u: the update is off by s/d·(e_m + |m|·(ρ_d + 4u)).
//   SGD   the buffer's error e_b ← μe_b + 2u·B with B ← μB + |g| (μb and the sum; the first
//         step copies g exactly); the update lr·b adds one rounding, u·lr|b|.
//   Both  E ← E + (the update's error) + u·|θ| (the subtraction's rounding).
// The state after the last step is within 2e_m, 2e_v and 2e_b likewise. These are worst cases
// (every rounding of one sign); the summary prints each case's worst ratio to its bound. After
// the first step 2E is about one ulp of θ, which a value near a rounding midpoint reaches when
// the two round it opposite ways: ratios up to ~0.8 on 1001 elements are that. A changed rule
// (a lost bias correction, ε moved) moves an update by a fraction of lr, orders of magnitude
// past 2E (about 14u·|θ| after 7 steps).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <limits>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "support/check.hpp"
#include "support/python_reference.hpp"
#include "support/tolerance.hpp"
#include "t2/io/npy.hpp"
#include "t2/train/optimizers.hpp"

namespace {

namespace fs = std::filesystem;
using t2::train::adam;
using t2::train::adam_options;
using t2::train::sgd;
using t2::train::sgd_options;

constexpr double u = t2_test::unit_roundoff;
constexpr std::size_t steps = 7;
constexpr std::size_t sizes[] = {1, 13, 1001};

static_assert(t2::train::optimizer<adam>);
static_assert(t2::train::optimizer<sgd>);
static_assert(!t2::train::optimizer<adam_options>);
static_assert(!t2::train::optimizer<int>);

const std::string script =
    fs::path(T2_TEST_DATA_DIR "/../parity/optimizer_reference.py").lexically_normal().string();

struct optimizer_case {
    std::string name, kind; // kind: adam | sgd | clip
    adam_options adam_opts;
    sgd_options sgd_opts;
    float max_norm = 0;                // clip
    std::vector<std::size_t> chunks;   // clip: the parameters the reference splits the span into
    std::size_t n = 0, steps = 0;      // clip: one gradient, steps = 1
    std::vector<float> params, grads;  // [n], [steps × n]
    fs::path dir;
};

// Step t's gradient of element i: a standard normal times a per-element scale in [10⁻⁴, 1),
// so that the larger ε outweigh √v on some elements (where moving ε would show), and 0 at the
// first step on every 7th element (v = 0 there: the denominator is ε alone).
std::vector<float> gradient_sequence(std::size_t n, std::size_t count, std::uint64_t seed) {
    const t2::philox normal(seed), scale(seed, 1);
    std::vector<float> g(count * n);
    for (std::size_t t = 0; t < count; ++t)
        for (std::size_t i = 0; i < n; ++i)
            g[t * n + i] = t == 0 && i % 7 == 3 ? 0.f
                                                : normal.normal(t * n + i) * std::pow(10.f, scale.uniform(i, -4.f, 0.f));
    return g;
}

optimizer_case trajectory_case(std::string kind, std::size_t n, std::uint64_t seed) {
    optimizer_case c;
    c.kind = std::move(kind);
    c.n = n;
    c.steps = steps;
    c.params.resize(n);
    t2_test::fill_uniform(c.params, seed);
    c.grads = gradient_sequence(n, steps, seed + 1);
    return c;
}

const adam_options adam_sets[] = {
    {},
    {.lr = 2e-3f, .beta1 = 0.8f, .beta2 = 0.99f, .eps = 1e-6f},
    {.lr = 0.05f, .beta1 = 0.f, .beta2 = 0.5f, .eps = 1e-3f},
    {.lr = 0.3f, .beta1 = 0.95f, .beta2 = 0.9999f, .eps = 1e-4f},
};
const sgd_options sgd_sets[] = {{.lr = 1e-2f, .momentum = 0.9f}, {.lr = 0.1f, .momentum = 0.f}, {.lr = 0.5f, .momentum = 0.5f}};

// Clip cases: n, the gradient's scale and max_norm as a fraction of its norm. The tiny one
// (norm ~7e-6, max_norm ~2e-7) is where the +1e-6 of the divisor shows (by ~13%).
struct clip_spec {
    std::size_t n;
    float scale, fraction;
};
const clip_spec clip_specs[] = {{1, 10.f, 0.5f}, {13, 1.f, 0.25f}, {1001, 1.f, 0.1f}, {1001, 1e-6f, 0.03f},
                                {13, 1.f, 2.f}};

std::string formatted(float x) {
    std::ostringstream s;
    s << std::setprecision(9) << x;
    return s.str();
}

void write_case(const optimizer_case& c) {
    fs::create_directories(c.dir / "in");
    std::ofstream spec(c.dir / "case.txt");
    spec << "# written by test_train_optimizers for " << c.name << "\nkind\t" << c.kind << "\n";
    if (c.kind == "adam")
        spec << "lr\t" << formatted(c.adam_opts.lr) << "\nbeta1\t" << formatted(c.adam_opts.beta1) << "\nbeta2\t"
             << formatted(c.adam_opts.beta2) << "\neps\t" << formatted(c.adam_opts.eps) << "\n";
    else if (c.kind == "sgd")
        spec << "lr\t" << formatted(c.sgd_opts.lr) << "\nmomentum\t" << formatted(c.sgd_opts.momentum) << "\n";
    else {
        spec << "max_norm\t" << formatted(c.max_norm) << "\nchunks\t";
        for (std::size_t i = 0; i < c.chunks.size(); ++i)
            spec << (i ? "," : "") << c.chunks[i];
        spec << "\n";
    }
    if (c.kind == "clip") {
        t2::io::write_npy((c.dir / "in" / "grads.npy").string(), c.grads, {c.n});
        return;
    }
    t2::io::write_npy((c.dir / "in" / "params.npy").string(), c.params, {c.n});
    t2::io::write_npy((c.dir / "in" / "grads.npy").string(), c.grads, {c.steps, c.n});
}

double norm_of(std::span<const float> g) {
    double s = 0;
    for (float x : g)
        s += double(x) * x;
    return std::sqrt(s);
}

struct reference_set {
    std::vector<optimizer_case> cases;
    std::string error; // why there are none
    double seconds = 0;
};

reference_set prepare() {
    reference_set set;
    const fs::path dir = fs::path(T2_TEST_TMP_DIR) / "parity_optimizers";
    std::error_code ec;
    fs::remove_all(dir, ec);
    fs::create_directories(dir);
    std::uint64_t seed = 100;
    for (std::size_t n : sizes) {
        for (std::size_t k = 0; k < std::size(adam_sets); ++k) {
            auto c = trajectory_case("adam", n, seed += 10);
            c.adam_opts = adam_sets[k];
            c.name = "adam" + std::to_string(k) + "-n" + std::to_string(n);
            set.cases.push_back(std::move(c));
        }
        for (std::size_t k = 0; k < std::size(sgd_sets); ++k) {
            auto c = trajectory_case("sgd", n, seed += 10);
            c.sgd_opts = sgd_sets[k];
            c.name = "sgd" + std::to_string(k) + "-n" + std::to_string(n);
            set.cases.push_back(std::move(c));
        }
    }
    for (std::size_t k = 0; k < std::size(clip_specs); ++k) {
        const clip_spec& s = clip_specs[k];
        optimizer_case c;
        c.kind = "clip";
        c.name = "clip" + std::to_string(k) + "-n" + std::to_string(s.n);
        c.n = s.n;
        c.steps = 1;
        c.grads = gradient_sequence(s.n, 1, seed += 10);
        for (float& g : c.grads)
            g *= s.scale;
        c.max_norm = float(s.fraction * norm_of(c.grads));
        c.chunks = s.n < 3 ? std::vector<std::size_t>{s.n} : std::vector<std::size_t>{s.n / 3, s.n - s.n / 3 - 1, 1};
        set.cases.push_back(std::move(c));
    }
    try {
        std::ofstream manifest(dir / "manifest.txt");
        manifest << "# case directories, written by test_train_optimizers\n";
        for (auto& c : set.cases) {
            c.dir = dir / c.name;
            write_case(c);
            manifest << c.dir.string() << "\n";
        }
    } catch (const std::exception& e) {
        set.error = std::string("writing the cases failed: ") + e.what();
        return set;
    }
    const auto run = t2_test::run_python_script(
        script, "batch " + t2_test::shell_quoted((dir / "manifest.txt").string()), dir / "python.log");
    set.seconds = run.seconds;
    set.error = run.error;
    return set;
}

const reference_set& references() {
    static const reference_set set = prepare();
    return set;
}

std::vector<float> read_floats(const fs::path& path) {
    const auto a = t2_test::read_npy(path);
    return {a.data.begin(), a.data.end()};
}

// 2E of the header per step and element ([steps × n]), and the bound on the final state.
struct bounds {
    std::vector<float> trajectory, state;
};

bounds adam_bounds(const optimizer_case& c) {
    const adam_options& o = c.adam_opts;
    const double b1 = o.beta1, b2 = o.beta2;
    bounds b{std::vector<float>(c.grads.size()), std::vector<float>(2 * c.n)};
    for (std::size_t i = 0; i < c.n; ++i) {
        double theta = c.params[i], m = 0, v = 0, M = 0, e_m = 0, e_v = 0, E = 0;
        for (std::size_t t = 1; t <= c.steps; ++t) {
            const double g = c.grads[(t - 1) * c.n + i];
            m = b1 * m + (1 - b1) * g;
            M = b1 * M + (1 - b1) * std::abs(g);
            v = b2 * v + (1 - b2) * g * g;
            e_m = b1 * e_m + 3 * u * M;
            e_v = b2 * e_v + 4 * u * v;
            const double s = o.lr / (1 - std::pow(b1, double(t)));
            const double d = std::sqrt(v) / std::sqrt(1 - std::pow(b2, double(t))) + o.eps;
            const double rho_d = (v > 0 ? e_v / (2 * v) : 0) + 4 * u;
            theta -= s * m / d;
            E += s / d * (e_m + std::abs(m) * (rho_d + 4 * u)) + u * std::abs(theta);
            b.trajectory[(t - 1) * c.n + i] = float(2 * E);
        }
        b.state[i] = float(2 * e_m);
        b.state[c.n + i] = float(2 * e_v);
    }
    return b;
}

bounds sgd_bounds(const optimizer_case& c) {
    const double lr = c.sgd_opts.lr, mu = c.sgd_opts.momentum;
    bounds b{std::vector<float>(c.grads.size()), std::vector<float>(c.n)};
    for (std::size_t i = 0; i < c.n; ++i) {
        double theta = c.params[i], buf = 0, B = 0, e_b = 0, E = 0;
        for (std::size_t t = 1; t <= c.steps; ++t) {
            const double g = c.grads[(t - 1) * c.n + i];
            if (t == 1) {
                buf = g;
                B = std::abs(g);
            } else {
                buf = mu * buf + g;
                B = mu * B + std::abs(g);
                e_b = mu * e_b + 2 * u * B;
            }
            const double q = lr * (mu != 0 ? buf : g);
            theta -= q;
            E += (mu != 0 ? lr * e_b : 0) + u * std::abs(q) + u * std::abs(theta);
            b.trajectory[(t - 1) * c.n + i] = float(2 * E);
        }
        b.state[i] = float(2 * e_b);
    }
    return b;
}

// Runs t2's optimizer over the case; the parameters after each step, [steps × n].
template <class Optimizer>
std::vector<float> run_steps(Optimizer& opt, const optimizer_case& c, std::vector<float>& theta, std::size_t from,
                             std::size_t to) {
    std::vector<float> out;
    for (std::size_t t = from; t < to; ++t) {
        opt.step(theta, std::span<const float>(c.grads).subspan(t * c.n, c.n));
        out.insert(out.end(), theta.begin(), theta.end());
    }
    return out;
}

// One kind's cases against the reference; prints each case's worst ratios to the bounds.
template <class Optimizer, class Options>
void check_trajectories(const std::string& kind, Options optimizer_case::*options,
                        bounds (*bound)(const optimizer_case&), std::size_t expected_cases) {
    const reference_set& set = references();
    if (!set.error.empty())
        FAIL(set.error);
    std::ostringstream summary;
    summary << "worst |t2 - PyTorch| / bound: parameters over " << steps << " steps, final state (reference for all "
            << "cases " << std::fixed << std::setprecision(1) << set.seconds << " s)\n"
            << std::scientific << std::setprecision(2);
    std::size_t count = 0;
    for (const optimizer_case& c : set.cases) {
        if (c.kind != kind)
            continue;
        ++count;
        CAPTURE(c.name);
        Optimizer opt(c.n, c.*options);
        std::vector<float> theta = c.params;
        const std::vector<float> got = run_steps(opt, c, theta, 0, c.steps);
        const std::vector<float> want = read_floats(c.dir / "out" / "params.npy");
        REQUIRE(want.size() == got.size());
        const bounds b = bound(c);
        T2_CHECK_WITHIN(got, want, b.trajectory);
        CHECK(opt.steps() == c.steps);
        summary << "  " << std::left << std::setw(12) << c.name << " "
                << t2_test::compare_within(got, want, b.trajectory).worst_ratio;
        const fs::path state = c.dir / "out" / "state.npy";
        if (fs::exists(state)) { // not for SGD without momentum: PyTorch keeps no buffer then
            const std::vector<float> want_state = read_floats(state);
            REQUIRE(want_state.size() == opt.state().size());
            T2_CHECK_WITHIN(opt.state(), want_state, b.state);
            summary << "  " << t2_test::compare_within(opt.state(), want_state, b.state).worst_ratio;
        }
        summary << "\n";
    }
    CHECK(count == expected_cases); // a case that stopped being written must not pass unnoticed
    MESSAGE(summary.str());
}

template <class Optimizer, class Options>
void check_restart(const Options& options) {
    const optimizer_case c = trajectory_case("restart", 13, 7);
    Optimizer whole(c.n, options);
    std::vector<float> theta = c.params;
    run_steps(whole, c, theta, 0, c.steps);
    for (std::size_t k = 1; k < c.steps; ++k) {
        CAPTURE(k);
        Optimizer first(c.n, options);
        std::vector<float> restarted = c.params;
        run_steps(first, c, restarted, 0, k);
        std::vector<float> forgetful = restarted;
        Optimizer resumed(c.n, options), no_steps(c.n, options);
        REQUIRE(resumed.state().size() == first.state().size());
        std::copy(first.state().begin(), first.state().end(), resumed.state().begin());
        std::copy(first.state().begin(), first.state().end(), no_steps.state().begin());
        resumed.set_steps(first.steps());
        run_steps(resumed, c, restarted, k, c.steps);
        run_steps(no_steps, c, forgetful, k, c.steps);
        CHECK(resumed.steps() == c.steps);
        CHECK(restarted == theta); // to the bit
        // The step count is part of the state (bias corrections, SGD's first step): without
        // it the run differs, so the equality above is not a vacuous one.
        CHECK(forgetful != theta);
    }
}

} // namespace

TEST_CASE("adam matches torch.optim.Adam over 7 steps (sizes 1, 13, 1001; four option sets)") {
    check_trajectories<adam>("adam", &optimizer_case::adam_opts, adam_bounds, std::size(sizes) * std::size(adam_sets));
}

TEST_CASE("sgd matches torch.optim.SGD over 7 steps (momentum 0.9, 0 and 0.5)") {
    check_trajectories<sgd>("sgd", &optimizer_case::sgd_opts, sgd_bounds, std::size(sizes) * std::size(sgd_sets));
}

// Tolerances. t2 sums the squares in double and rounds the norm once: within u·(1 + n·2⁻²⁹)
// of the exact norm N (n·2⁻⁵³ for the double sum, relative to u). PyTorch's float32 norm:
// each square u, the sum summation_error_bound(n) relative to itself, the sqrt halves that and
// adds u; the norm of the stacked per-parameter norms adds u (square), u (sqrt) and half of u:
// within γ̃_n/2 + 3u. The coefficient max_norm/(N + 1e-6) adds 2u on each side (the sum, the
// division; 1e-6 is the float 1e-6f in both) and each scaled element u.
TEST_CASE("clip_gradient_norm matches torch.nn.utils.clip_grad_norm_ and its definition") {
    const reference_set& set = references();
    if (!set.error.empty())
        FAIL(set.error);
    std::size_t count = 0;
    for (const optimizer_case& c : set.cases) {
        if (c.kind != "clip")
            continue;
        ++count;
        CAPTURE(c.name);
        std::vector<float> g = c.grads;
        const float norm = t2::train::clip_gradient_norm(g, c.max_norm);
        const double exact = norm_of(c.grads);
        const double rho_t2 = u + double(c.n) * 0x1p-53, rho_torch = t2_test::summation_error_bound(c.n) / 2 + 3 * u;
        CHECK(t2_test::compare_within(norm, exact, rho_t2 * exact).ok);
        const auto want_norm = t2_test::read_npy(c.dir / "out" / "norm.npy");
        REQUIRE(want_norm.data.size() == 1);
        const auto norm_check = t2_test::compare_within(norm, want_norm.data[0], (rho_t2 + rho_torch) * exact);
        INFO("norm: t2 " << norm << ", PyTorch " << want_norm.data[0] << ", " << norm_check.worst_ratio
                         << " of the bound");
        CHECK(norm_check.ok);
        const std::vector<float> want = read_floats(c.dir / "out" / "clipped.npy");
        REQUIRE(want.size() == g.size());
        if (!(norm > c.max_norm)) {
            CHECK(g == c.grads); // untouched, to the bit (PyTorch multiplies by exactly 1)
            CHECK(want == c.grads);
            continue;
        }
        std::vector<float> bound(g.size());
        for (std::size_t i = 0; i < g.size(); ++i)
            bound[i] = float((rho_t2 + rho_torch + 2 * 3 * u) * std::abs(double(g[i])));
        T2_CHECK_WITHIN(g, want, bound);
        // The definition: the clipped norm is max_norm·N/(N + 1e-6) for t2's returned N, within
        // the coefficient's two roundings and the elements' one (the double norm's own error is
        // below n·2⁻⁵³).
        const double clipped = norm_of(g), defined = double(c.max_norm) * norm / (double(norm) + double(1e-6f));
        CHECK(t2_test::compare_within(clipped, defined, (3 * u + double(c.n) * 0x1p-53) * defined).ok);
        CHECK(clipped < norm);
    }
    CHECK(count == std::size(clip_specs));
}

TEST_CASE("clip_gradient_norm: max_norm <= 0 or above the norm leaves the gradient alone; non-finite throws") {
    const std::vector<float> g0 = gradient_sequence(13, 1, 42);
    const float exact = float(norm_of(g0));
    for (const float max_norm : {0.f, -1.f, -0.f, exact, 2 * exact, std::numeric_limits<float>::infinity()}) {
        CAPTURE(max_norm);
        std::vector<float> g = g0;
        CHECK(t2::train::clip_gradient_norm(g, max_norm) == exact);
        CHECK(g == g0);
    }
    std::vector<float> empty;
    CHECK(t2::train::clip_gradient_norm(empty, 1.f) == 0.f);
    // The finiteness check does not depend on clipping being on: a non-finite gradient has no
    // step to apply either way.
    for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity()})
        for (const float max_norm : {1.f, 0.f}) {
            CAPTURE(bad);
            CAPTURE(max_norm);
            std::vector<float> g = g0;
            g[5] = bad;
            CHECK(t2_test::contains(t2_test::error_message([&] { t2::train::clip_gradient_norm(g, max_norm); }),
                                    "clip_gradient_norm: the gradient's norm is"));
            g[5] = g0[5];
            CHECK(g == g0); // nothing scaled before the throw
        }
}

TEST_CASE("adam and sgd refuse invalid options and spans of the wrong size") {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (const adam_options& o : {adam_options{.lr = 0.f}, adam_options{.lr = -1e-3f}, adam_options{.lr = nan},
                                  adam_options{.beta1 = 1.f}, adam_options{.beta1 = -0.1f}, adam_options{.beta1 = nan},
                                  adam_options{.beta2 = 1.f}, adam_options{.beta2 = 1.5f}, adam_options{.beta2 = -0.1f},
                                  adam_options{.eps = 0.f}, adam_options{.eps = -1e-8f}, adam_options{.eps = nan}}) {
        CAPTURE(o.lr);
        CAPTURE(o.beta1);
        CAPTURE(o.beta2);
        CAPTURE(o.eps);
        CHECK(t2_test::contains(t2_test::error_message([&] { adam(4, o); }), "adam: lr "));
    }
    for (const sgd_options& o : {sgd_options{.lr = 0.f}, sgd_options{.lr = -1.f}, sgd_options{.lr = nan},
                                 sgd_options{.momentum = 1.f}, sgd_options{.momentum = -0.1f},
                                 sgd_options{.momentum = 2.f}, sgd_options{.momentum = nan}}) {
        CAPTURE(o.lr);
        CAPTURE(o.momentum);
        CHECK(t2_test::contains(t2_test::error_message([&] { sgd(4, o); }), "sgd: lr "));
    }
    // The edges of [0, 1) that are in it.
    CHECK_NOTHROW(adam(4, {.beta1 = 0.f, .beta2 = 0.f}));
    CHECK_NOTHROW(sgd(4, {.momentum = 0.f}));

    const auto check_sizes = [](auto opt, const std::string& who) {
        for (const auto& sizes : {std::pair{4, 5}, std::pair{5, 4}, std::pair{6, 6}, std::pair{0, 0}}) {
            const int np = sizes.first, ng = sizes.second; // not a structured binding: CAPTURE captures it
            CAPTURE(np);
            CAPTURE(ng);
            std::vector<float> p(np, 1.f), g(ng, 1.f);
            CHECK(t2_test::contains(t2_test::error_message([&] { opt.step(p, g); }),
                                    who + ": made for 5 parameters, given " + std::to_string(np)));
            CHECK(p == std::vector<float>(np, 1.f));
        }
        // A refused step changes nothing: the next one is the first.
        CHECK(opt.steps() == 0);
        CHECK(std::all_of(opt.state().begin(), opt.state().end(), [](float x) { return x == 0.f; }));
        std::vector<float> p(5, 1.f), g(5, 1.f);
        opt.step(p, g);
        CHECK(opt.steps() == 1);
    };
    check_sizes(adam(5), "adam");
    check_sizes(sgd(5), "sgd");
}

TEST_CASE("a restart from state() and steps() continues to the bit (what a checkpoint holds)") {
    SUBCASE("adam") { check_restart<adam>(adam_options{.lr = 2e-3f, .beta1 = 0.8f, .beta2 = 0.99f, .eps = 1e-6f}); }
    SUBCASE("sgd") { check_restart<sgd>(sgd_options{.lr = 0.1f, .momentum = 0.9f}); }
    CHECK(adam(13).state().size() == 26); // m then v
    CHECK(sgd(13).state().size() == 13);
}
