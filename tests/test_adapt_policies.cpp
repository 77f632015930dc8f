// The adapter weight policies (svf with its z, sigmoid and mixture parametrizations, lora) run
// with per-matrix adapter states, matrix selection, parameter counts, decompositions and
// experts, and their files.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "support/check.hpp"
#include "support/finite_differences.hpp"
#include "support/killed_writer.hpp"
#include "support/temp_dir.hpp"
#include "support/tolerance.hpp"
#include "t2/adapt/model.hpp"
#include "t2/adapt/parameters.hpp"
#include "t2/io/adapter_files.hpp"
#include "t2/io/load.hpp"
#include "t2/nn/random_init.hpp"

namespace {

using t2::matrix;
using t2::matrix_view;
using t2::adapt::svf_parametrization;
using svf_rows = t2::nn::adapter_rows<t2::adapt::svf_state>;
using lora_rows = t2::nn::adapter_rows<t2::adapt::lora_state>;

constexpr svf_parametrization all_parametrizations[] = {svf_parametrization::z, svf_parametrization::sigmoid,
                                                        svf_parametrization::mixture};

t2::adapt::svd_factors factors_of(const matrix<float>& w) {
    return t2::adapt::svd_factors::own(t2::adapt::svd<double>(t2::exec::scalar{}, w.view()));
}

// The singular values of W', σ ⊙ z · c (c = Σσ / Σ(σ⊙z) with rescaling, else 1), in double.
std::vector<double> adapted_scales(const t2::adapt::svd_factors& f, const std::vector<double>& z, bool rescale) {
    double total = 0, weighted = 0;
    for (std::size_t j = 0; j < f.rank(); ++j) {
        total += f.sigma[j];
        weighted += f.sigma[j] * z[j];
    }
    const double c = rescale ? total / weighted : 1.0;
    std::vector<double> s(f.rank());
    for (std::size_t j = 0; j < f.rank(); ++j)
        s[j] = f.sigma[j] * z[j] * c;
    return s;
}

// W' = U diag(σ ⊙ z · c) Vᵀ in double, straight from the definition.
std::vector<double> adapted_matrix(const t2::adapt::svd_factors& f, const std::vector<double>& z, bool rescale) {
    const std::size_t out = f.out_features(), in = f.in_features(), r = f.rank();
    const auto s = adapted_scales(f, z, rescale);
    std::vector<double> w(out * in, 0.0);
    for (std::size_t i = 0; i < out; ++i)
        for (std::size_t k = 0; k < in; ++k)
            for (std::size_t j = 0; j < r; ++j)
                w[i * in + k] += double(f.u(i, j)) * s[j] * f.v(k, j);
    return w;
}

// z in double from the parameters p of a state parametrized as `kind`: z itself,
// sigmoid(θ), or Σ_k α_k experts(k, :).
std::vector<double> z_of(svf_parametrization kind, const std::vector<double>& p, const matrix<float>& experts) {
    switch (kind) {
    case svf_parametrization::z: return p;
    case svf_parametrization::sigmoid: {
        std::vector<double> z(p.size());
        for (std::size_t j = 0; j < p.size(); ++j)
            z[j] = 1 / (1 + std::exp(-p[j]));
        return z;
    }
    case svf_parametrization::mixture: break;
    }
    std::vector<double> z(experts.extent(1), 0.0);
    for (std::size_t k = 0; k < experts.extent(0); ++k)
        for (std::size_t j = 0; j < z.size(); ++j)
            z[j] += p[k] * experts(k, j);
    return z;
}

// x·Wᵀ [T × out] in double, W [out × in] row-major.
std::vector<double> times_transposed(matrix_view<const float> x, const std::vector<double>& w, std::size_t out) {
    const std::size_t T = x.extent(0), in = x.extent(1);
    std::vector<double> y(T * out, 0.0);
    for (std::size_t t = 0; t < T; ++t)
        for (std::size_t i = 0; i < out; ++i)
            for (std::size_t k = 0; k < in; ++k)
                y[t * out + i] += double(x(t, k)) * w[i * in + k];
    return y;
}
std::vector<double> times_transposed(const matrix<float>& x, const std::vector<double>& w, std::size_t out) {
    return times_transposed(x.view(), w, out);
}

// g·W [T × in] in double: dL/dx of the linear loss below.
std::vector<double> times(const matrix<float>& g, const std::vector<double>& w, std::size_t in) {
    const std::size_t T = g.extent(0), out = g.extent(1);
    std::vector<double> dx(T * in, 0.0);
    for (std::size_t t = 0; t < T; ++t)
        for (std::size_t k = 0; k < in; ++k)
            for (std::size_t i = 0; i < out; ++i)
                dx[t * in + k] += double(g(t, i)) * w[i * in + k];
    return dx;
}

// Σ g ⊙ (x·Wᵀ) in double.
double linear_loss(const matrix<float>& x, const std::vector<double>& w, const matrix<float>& g) {
    const auto y = times_transposed(x, w, g.extent(1));
    double loss = 0;
    for (std::size_t i = 0; i < y.size(); ++i)
        loss += g.data()[i] * y[i];
    return loss;
}

double relative_error(const std::vector<double>& got, const std::vector<double>& want) {
    double diff = 0, norm = 0;
    for (std::size_t i = 0; i < got.size(); ++i) {
        diff += (got[i] - want[i]) * (got[i] - want[i]);
        norm += want[i] * want[i];
    }
    return std::sqrt(diff / norm);
}

template <class T>
std::vector<double> doubles(const T& values) {
    return std::vector<double>(values.begin(), values.end());
}

bool same_bits(std::span<const float> got, std::span<const float> want) {
    return got.size() == want.size() && std::equal(got.begin(), got.end(), want.begin());
}

// One matrix's SVF adapter state made by hand: the parameters and their gradient live here,
// the state views them (as an adapter's matrix states view its flat spans). Movable (a
// vector's move keeps its buffer), not copyable (a copy would view the original's vectors).
struct svf_matrix {
    std::vector<float> parameters, gradient;
    t2::adapt::svf_state state;

    svf_matrix(svf_parametrization kind, bool rescale, std::vector<float> values, matrix<float> experts = {})
        : parameters(std::move(values)), gradient(parameters.size(), 0.f) {
        state.parametrization = kind;
        state.rescale = rescale;
        state.parameters = parameters;
        state.gradient = gradient;
        state.experts = std::move(experts);
    }
    svf_matrix(svf_matrix&&) = default;
    svf_matrix(const svf_matrix&) = delete;
    svf_matrix& operator=(const svf_matrix&) = delete;

    std::vector<double> z() const { return z_of(state.parametrization, doubles(parameters), state.experts); }
};

// A state of each parametrization with values away from every edge, from `seed`: z in
// [0.5, 1.5]; θ in [−2, 2] (z in [0.12, 0.88]); or K = 3 experts in [0.5, 1.5] mixed by
// α = (0.2, 0.5, 0.3). Σ(σ⊙z) is then far from 0, so rescaling is well defined.
svf_matrix example_state(svf_parametrization kind, bool rescale, std::size_t r, std::uint64_t seed) {
    if (kind == svf_parametrization::mixture) {
        matrix<float> experts(3, r);
        t2_test::fill_uniform(experts.span(), seed, 0.5f, 1.5f);
        return svf_matrix(kind, rescale, {0.2f, 0.5f, 0.3f}, std::move(experts));
    }
    std::vector<float> values(r);
    if (kind == svf_parametrization::z)
        t2_test::fill_uniform(values, seed, 0.5f, 1.5f);
    else
        t2_test::fill_uniform(values, seed, -2.f, 2.f);
    return svf_matrix(kind, rescale, std::move(values));
}

// One matrix's LoRA adapter state made by hand: A [r × in] then B [out × r] in one vector,
// both uniform in [−1, 1) (B nonzero, so every term of forward and backward counts).
struct lora_matrix {
    std::vector<float> parameters, gradient;
    t2::adapt::lora_state state;

    lora_matrix(std::size_t rank, float alpha, std::size_t out, std::size_t in, std::uint64_t seed)
        : parameters(rank * (in + out)), gradient(parameters.size(), 0.f) {
        t2_test::fill_uniform(parameters, seed);
        const std::span<float> p(parameters), g(gradient);
        state = {.rank = rank,
                 .scaling = alpha / float(rank),
                 .a = p.first(rank * in),
                 .b = p.subspan(rank * in),
                 .gradient_a = g.first(rank * in),
                 .gradient_b = g.subspan(rank * in)};
    }
    lora_matrix(lora_matrix&&) = default;
    lora_matrix(const lora_matrix&) = delete;
    lora_matrix& operator=(const lora_matrix&) = delete;

    // W + (α/r)·B A in double, [out × in].
    std::vector<double> adapted(const matrix<float>& w, const std::vector<double>& p) const {
        const std::size_t out = w.extent(0), in = w.extent(1), r = state.rank;
        std::vector<double> m(out * in);
        for (std::size_t i = 0; i < out; ++i)
            for (std::size_t k = 0; k < in; ++k) {
                double ba = 0;
                for (std::size_t j = 0; j < r; ++j)
                    ba += p[r * in + i * r + j] * p[j * in + k];
                m[i * in + k] = w(i, k) + double(state.scaling) * ba;
            }
        return m;
    }
};

// Σ_j |s_j U_ij| Σ_k |x_tk V_kj| for the rows of x [T × in]: the magnitudes that y =
// ((x·V) ⊙ s)·Uᵀ sums, into rows first… of `out` (T_all × out_features).
void factored_magnitudes(matrix_view<const float> x, const t2::adapt::svd_factors& f, const std::vector<double>& s,
                         std::size_t first, std::vector<double>& out) {
    const std::size_t n_out = f.out_features(), in = f.in_features(), r = f.rank();
    for (std::size_t t = 0; t < x.extent(0); ++t) {
        std::vector<double> xv(r, 0.0);
        for (std::size_t j = 0; j < r; ++j)
            for (std::size_t k = 0; k < in; ++k)
                xv[j] += std::abs(double(x(t, k)) * f.v(k, j));
        for (std::size_t i = 0; i < n_out; ++i) {
            double m = 0;
            for (std::size_t j = 0; j < r; ++j)
                m += std::abs(s[j] * f.u(i, j)) * xv[j];
            out[(first + t) * n_out + i] = m;
        }
    }
}

// Σ_k |x_tk W_ik| (+ |α/r| Σ_j |B_ij| Σ_k |x_tk A_jk| with a LoRA state) for the rows of x.
void dense_magnitudes(matrix_view<const float> x, const matrix<float>& w, const t2::adapt::lora_state* s,
                      std::size_t first, std::vector<double>& out) {
    const std::size_t n_out = w.extent(0), in = w.extent(1), r = s ? s->rank : 0;
    for (std::size_t t = 0; t < x.extent(0); ++t) {
        std::vector<double> xa(r, 0.0);
        for (std::size_t j = 0; j < r; ++j)
            for (std::size_t k = 0; k < in; ++k)
                xa[j] += std::abs(double(x(t, k)) * s->a[j * in + k]);
        for (std::size_t i = 0; i < n_out; ++i) {
            double m = 0;
            for (std::size_t k = 0; k < in; ++k)
                m += std::abs(double(x(t, k)) * w(i, k));
            for (std::size_t j = 0; j < r; ++j)
                m += std::abs(double(s->scaling) * s->b[i * r + j]) * xa[j];
            out[(first + t) * n_out + i] = m;
        }
    }
}

} // namespace

TEST_CASE("sha256: the FIPS 180-4 test vectors, in one piece and in odd chunks") {
    CHECK(t2::sha256{}.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    t2::sha256 abc;
    abc.update(std::string_view("abc"));
    CHECK(abc.hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    for (const std::size_t chunk : {1, 7, 55, 56, 64}) {
        t2::sha256 h;
        for (std::size_t i = 0; i < two_blocks.size(); i += chunk)
            h.update(std::string_view(two_blocks).substr(i, chunk));
        CHECK(h.hex() == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    }
    t2::sha256 million;
    const std::string thousand(1000, 'a');
    for (int i = 0; i < 1000; ++i)
        million.update(thousand);
    CHECK(million.hex() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("matrices: names round-trip and only block projections parse") {
    t2::nn::llama_config c{.dim = 8, .hidden_dim = 12, .n_layers = 3, .n_heads = 2, .n_kv_heads = 1,
                           .vocab_size = 5, .seq_len = 4};
    const auto slots = t2::nn::block_matrices(c);
    REQUIRE(slots.size() == 21);
    for (const auto& s : slots) {
        std::size_t layer = 99;
        t2::nn::projection p{};
        REQUIRE(t2::nn::parse_matrix_name(s.name(), layer, p));
        CHECK(layer == s.layer);
        CHECK(p == s.which);
    }
    CHECK(slots[1].name() == "layers.0.attention.wk");
    CHECK(slots[1].out == 4);
    CHECK(slots[12].name() == "layers.1.feed_forward.w2");
    CHECK((slots[12].out == 8 && slots[12].in == 12));
    std::size_t layer;
    t2::nn::projection p;
    for (const char* bad : {"layers.x.attention.wq", "layers.01.attention.wq", "layers.0.attention.w1",
                            "layers.0.feed_forward.wq", "output", "layers.1.attention.wq.U", ""})
        CHECK_FALSE(t2::nn::parse_matrix_name(bad, layer, p));
}

TEST_CASE("selection: mlp, attention, all and regex patterns") {
    t2::nn::llama_config c{.dim = 8, .hidden_dim = 12, .n_layers = 2, .n_heads = 2, .n_kv_heads = 2,
                           .vocab_size = 5, .seq_len = 4};
    using t2::adapt::selection;
    CHECK(selection::parse("mlp").of(c).size() == 6);
    CHECK(selection::parse("attn").of(c).size() == 8);
    CHECK(selection::parse("attention").of(c).size() == 8);
    CHECK(selection::parse("all").of(c).size() == 14);
    const auto qv = selection::parse(R"(.*\.attention\.w[qv])").of(c);
    REQUIRE(qv.size() == 4);
    CHECK(qv[0].name() == "layers.0.attention.wq");
    CHECK(qv[3].name() == "layers.1.attention.wv");
    CHECK(selection::parse("layers\\.1\\..*").of(c).size() == 7);
    CHECK(selection::parse("nothing").of(c).empty());
    CHECK(t2_test::contains(t2_test::error_message([] { selection::parse("layers.(1"); }), "not a valid regex"));
    CHECK(t2_test::contains(t2_test::error_message([] { selection::parse(""); }), "empty"));
}

TEST_CASE("parameters: the paper's counts for Llama-3-8B's shapes") {
    const t2::nn::llama_config llama3_8b{.dim = 4096, .hidden_dim = 14336, .n_layers = 32, .n_heads = 32,
                                         .n_kv_heads = 8, .vocab_size = 128256, .seq_len = 8192};
    using namespace t2::adapt;
    const auto q_and_v = selection::pattern(R"(.*\.attention\.w[qv])");
    CHECK(trainable_parameters(llama3_8b, selection::mlp(), adapter_spec::parse("svf")) == 393'216);
    CHECK(trainable_parameters(llama3_8b, q_and_v, adapter_spec::parse("svf")) == 163'840);
    CHECK(trainable_parameters(llama3_8b, q_and_v, adapter_spec::parse("lora:16")) == 6'815'744);
    CHECK(trainable_parameters(llama3_8b, q_and_v, adapter_spec::parse("lora")) == 6'815'744);
    CHECK(trainable_parameters(llama3_8b, selection::all(), adapter_spec::parse("mixture:3")) == 3);
    CHECK(trainable_parameters(llama3_8b, selection::mlp(), adapter_spec::parse("mixture:3:layer")) == 96);
    CHECK(adapter_spec::parse("mixture:3:layer").text() == "mixture:3:layer");
    for (const char* bad : {"lora:0", "lora:x", "mixture:", "svd", "lora:16x"})
        CHECK(t2_test::contains(t2_test::error_message([&] { adapter_spec::parse(bad); }), "adapter"));
}

TEST_CASE("svf: composed and factored are the definition for each parametrization, with and without rescaling") {
    const t2::exec::simd<> ex;
    using shape = std::tuple<std::size_t, std::size_t, std::size_t>;
    for (const auto& s : {shape{7, 5, 3}, shape{5, 9, 1}, shape{16, 16, 4}, shape{33, 17, 2}}) {
        const auto [out, in, T] = s;
        const int rows = int(out), cols = int(in); // doctest's CAPTURE cannot take structured bindings
        CAPTURE(rows);
        CAPTURE(cols);
        const matrix<float> w = t2_test::random_matrix(out, in, 11 + out);
        const matrix<float> x = t2_test::random_matrix(T, in, 12 + in);
        const auto f = factors_of(w);
        // The same factors with and without the dense base (the model's decomposed matrices
        // hold both; a decomposition alone, only the factors).
        const t2::adapt::svf factored_only(f), with_base(t2::nn::dense<float>(matrix<float>(w)), f);

        // Without a state: U diag(σ) Vᵀ, the base up to the SVD's rounding, or the base itself.
        matrix<float> y(T, out), base(T, out), dense(T, out);
        t2::ops::gemm(t2::exec::scalar{}, x.view(), w.view(), base.view(), {.transpose_b = true});
        factored_only.forward(ex, x.view(), y.view());
        CHECK(t2_test::compare(y.span(), base.span(), 1e-5, 1e-5).ok);
        t2::ops::gemm(ex, x.view(), w.view(), dense.view(), {.transpose_b = true});
        with_base.forward(ex, x.view(), y.view());
        CHECK(same_bits(y.span(), dense.span()));

        for (const bool rescale : {false, true})
            for (const svf_parametrization kind : all_parametrizations) {
                CAPTURE(rescale);
                const int parametrization = int(kind);
                CAPTURE(parametrization);
                svf_matrix m = example_state(kind, rescale, f.rank(), 13);
                const auto want = times_transposed(x, adapted_matrix(f, m.z(), rescale), out);
                for (const auto mode : {t2::adapt::svf_mode::composed, t2::adapt::svf_mode::factored})
                    for (const t2::adapt::svf* policy : {&factored_only, &with_base}) {
                        const int mode_index = int(mode), has_base = policy == &with_base;
                        CAPTURE(mode_index);
                        CAPTURE(has_base);
                        policy->prepare(ex, m.state, T, mode);
                        CHECK(m.state.composed_is_current() == (mode == t2::adapt::svf_mode::composed));
                        std::vector<float> scratch(policy->scratch_floats(T));
                        const svf_rows all{0, T, &m.state};
                        policy->forward(ex, x.view(), y.view(), std::span(&all, 1), scratch);
                        CHECK(relative_error(doubles(y.span()), want) < 1e-6);
                    }
            }
    }
}

TEST_CASE("svf: the cheaper mode is chosen from the token count, and bad states are refused") {
    using t2::adapt::svf_mode;
    CHECK(t2::adapt::cheaper_svf_mode(768, 768, 768, 1) == svf_mode::factored);
    CHECK(t2::adapt::cheaper_svf_mode(768, 768, 768, 256) == svf_mode::factored);
    CHECK(t2::adapt::cheaper_svf_mode(768, 768, 768, 2000) == svf_mode::composed);
    CHECK(t2::adapt::cheaper_svf_mode(2048, 768, 768, 4000) == svf_mode::composed);
    const matrix<float> w = t2_test::random_matrix(12, 10, 3);
    const t2::adapt::svf policy(factors_of(w));
    const t2::exec::scalar ex;
    // 12×10 of rank 10: composing costs 12·10·(10 + T), factoring T·10·22 multiply-adds, so W'
    // pays for itself over 100 tokens and not over one.
    svf_matrix m(svf_parametrization::z, false, std::vector<float>(10, 2.f));
    policy.prepare(ex, m.state, 100);
    CHECK(m.state.composed_is_current());
    policy.prepare(ex, m.state, 1);
    CHECK_FALSE(m.state.composed_is_current());
    CHECK(m.state.composed.size() == 0);

    const auto forward_with = [&](const t2::adapt::svf_state& s) {
        matrix<float> x(2, 10), y(2, 12);
        std::vector<float> scratch(policy.scratch_floats(2));
        const svf_rows all{0, 2, &s};
        policy.forward(ex, x.view(), y.view(), std::span(&all, 1), scratch);
    };
    const auto backward_with = [&](t2::adapt::svf_state& s) {
        matrix<float> x(2, 10), dy(2, 12), dx(2, 10);
        std::vector<float> scratch(policy.backward_scratch_floats(2));
        policy.backward(ex, x.view(), dy.view(), dx.view(), &s, scratch);
    };
    // A state made for another matrix (another model's adapter): refused wherever it is used.
    svf_matrix short_z(svf_parametrization::z, false, std::vector<float>(9, 1.f));
    CHECK(t2_test::contains(t2_test::error_message([&] { forward_with(short_z.state); }), "rank 10"));
    CHECK(t2_test::contains(t2_test::error_message([&] { backward_with(short_z.state); }), "rank 10"));
    CHECK(t2_test::contains(t2_test::error_message([&] { policy.prepare(ex, short_z.state, 100); }), "rank 10"));
    svf_matrix short_experts(svf_parametrization::mixture, false, {0.5f, 0.5f}, matrix<float>(2, 9));
    CHECK(t2_test::contains(t2_test::error_message([&] { forward_with(short_experts.state); }), "rank 10"));
    // Rescaling divides by Σ(σ⊙z): z = 0 (or a NaN in z) leaves it undefined.
    svf_matrix zero(svf_parametrization::z, true, std::vector<float>(10, 0.f));
    CHECK(t2_test::contains(t2_test::error_message([&] { forward_with(zero.state); }), "rescaling"));
    CHECK(t2_test::contains(t2_test::error_message([&] { backward_with(zero.state); }), "rescaling"));
    svf_matrix nan(svf_parametrization::z, true, std::vector<float>(10, NAN));
    CHECK(t2_test::contains(t2_test::error_message([&] { forward_with(nan.state); }), "rescaling"));
    // Short scratch is refused, not overrun.
    CHECK(t2_test::contains(t2_test::error_message([&] {
                                matrix<float> x(2, 10), y(2, 12);
                                std::vector<float> scratch(policy.scratch_floats(2) - 1);
                                const svf_rows all{0, 2, &m.state};
                                policy.forward(ex, x.view(), y.view(), std::span(&all, 1), scratch);
                            }),
                            "scratch"));

    // A matrix the model does not decompose holds its dense base alone: it needs no scratch,
    // runs the base exactly without a state or with an inactive one (what make_svf_adapter
    // gives such a matrix), and refuses an active state (an adapter made for a model that
    // decomposed it).
    const t2::adapt::svf dense{t2::nn::dense<float>(matrix<float>(w))};
    CHECK_FALSE(dense.adapted());
    CHECK(dense.scratch_floats(5) == 0);
    const matrix<float> x = t2_test::random_matrix(3, 10, 4);
    matrix<float> want(3, 12), y(3, 12), dx(3, 10);
    t2::ops::gemm(ex, x.view(), w.view(), want.view(), {.transpose_b = true});
    t2::adapt::svf_state inactive;
    const svf_rows groups[] = {{0, 1, nullptr}, {1, 2, &inactive}};
    dense.forward(ex, x.view(), y.view(), groups, {});
    CHECK(same_bits(y.span(), want.span()));
    const svf_rows with_state[] = {{0, 1, nullptr}, {1, 2, &m.state}};
    CHECK(t2_test::contains(
        t2_test::error_message([&] { dense.forward(ex, x.view(), y.view(), with_state, {}); }), "not decomposed"));
    CHECK(t2_test::contains(t2_test::error_message([&] { dense.prepare(ex, m.state, 100); }), "not decomposed"));
    CHECK(t2_test::contains(t2_test::error_message([&] {
                                matrix<float> dy(3, 12);
                                dense.backward(ex, x.view(), dy.view(), dx.view(), &m.state, {});
                            }),
                            "not decomposed"));
}

TEST_CASE("svf: prepare's W' runs only while the parameters equal its snapshot") {
    const t2::exec::simd<> ex;
    const std::size_t out = 12, in = 10, T = 7;
    const matrix<float> w = t2_test::random_matrix(out, in, 30);
    const matrix<float> x = t2_test::random_matrix(T, in, 31);
    const auto f = factors_of(w);
    const std::size_t r = f.rank();
    const t2::adapt::svf policy(t2::nn::dense<float>(matrix<float>(w)), f);
    std::vector<float> scratch(policy.scratch_floats(T));
    const auto run = [&](std::span<const svf_rows> groups) {
        matrix<float> y(T, out);
        policy.forward(ex, x.view(), y.view(), groups, scratch);
        return y;
    };
    const auto run_one = [&](const t2::adapt::svf_state& s) {
        const svf_rows all{0, T, &s};
        return run(std::span(&all, 1));
    };

    for (const svf_parametrization kind : all_parametrizations) {
        const int parametrization = int(kind);
        CAPTURE(parametrization);
        svf_matrix m = example_state(kind, true, r, 32);
        svf_matrix twin = example_state(kind, true, r, 32); // the same parameters, never prepared
        policy.prepare(ex, m.state, T, t2::adapt::svf_mode::composed);
        REQUIRE(m.state.composed_is_current());
        CHECK_FALSE(twin.state.composed_is_current());

        // With a current W', forward is x·W'ᵀ with that W', bit for bit…
        const matrix<float> composed = run_one(m.state);
        matrix<float> direct(T, out);
        t2::ops::gemm(ex, x.view(), m.state.composed.view(), direct.view(), {.transpose_b = true});
        CHECK(same_bits(composed.span(), direct.span()));
        // …which is the factored product up to the order of its chained summations: over the
        // rank and over in, with one rounding of U·diag(s) or (x·V)·diag(s) between them.
        std::vector<double> magnitudes(T * out);
        factored_magnitudes(x.view(), f, adapted_scales(f, m.z(), true), 0, magnitudes);
        const auto bound = t2_test::scaled_bounds(magnitudes, t2_test::between_orders(in + r + 1));
        T2_CHECK_WITHIN(composed.span(), run_one(twin.state).span(), bound);

        // A parameter changes after prepare: the W' is stale and forward runs the new
        // parameters, the same bits as a state that never had a W'.
        const float before = m.parameters[1];
        m.parameters[1] = twin.parameters[1] = before + 0.25f;
        CHECK_FALSE(m.state.composed_is_current());
        const matrix<float> changed = run_one(m.state);
        CHECK(same_bits(changed.span(), run_one(twin.state).span()));
        CHECK(relative_error(doubles(changed.span()), times_transposed(x, adapted_matrix(f, m.z(), true), out)) < 1e-6);
        // The change shows: the stale W' would have given the old outputs.
        CHECK_FALSE(t2_test::compare_within(changed.span(), composed.span(), bound).ok);

        // Back to the snapshot's values: the W' is current again, and runs.
        m.parameters[1] = twin.parameters[1] = before;
        CHECK(m.state.composed_is_current());
        CHECK(same_bits(run_one(m.state).span(), composed.span()));

        // Rows in several groups, all with this state: still one W' for all of them.
        const svf_rows split[] = {{0, 3, &m.state}, {3, T - 3, &m.state}};
        CHECK(same_bits(run(split).span(), composed.span()));
        // Groups with different states run factored, whatever W' one of them holds.
        const svf_matrix other = example_state(svf_parametrization::z, true, r, 33);
        const svf_rows mixed[] = {{0, 3, &m.state}, {3, T - 3, &other.state}};
        const svf_rows mixed_twin[] = {{0, 3, &twin.state}, {3, T - 3, &other.state}};
        CHECK(same_bits(run(mixed).span(), run(mixed_twin).span()));

        // prepare's automatic choice follows the token count (see the test above), and
        // factored drops the W'.
        policy.prepare(ex, m.state, 1);
        CHECK_FALSE(m.state.composed_is_current());
        policy.prepare(ex, m.state, 1000);
        CHECK(m.state.composed_is_current());
        policy.prepare(ex, m.state, 1000, t2::adapt::svf_mode::factored);
        CHECK_FALSE(m.state.composed_is_current());
        CHECK(same_bits(run_one(m.state).span(), run_one(twin.state).span()));
    }
}

TEST_CASE("svf and lora: backward matches finite differences in double") {
    const t2::exec::simd<> ex;
    const std::size_t out = 9, in = 7, T = 3;
    const matrix<float> w = t2_test::random_matrix(out, in, 21);
    const matrix<float> x = t2_test::random_matrix(T, in, 22);
    const matrix<float> g = t2_test::random_matrix(T, out, 23);
    const auto f = factors_of(w);
    const std::size_t r = f.rank();
    matrix<float> dx(T, in);

    SUBCASE("svf: dL/dz, dL/dθ and dL/dα (experts frozen), and dL/dx") {
        const t2::adapt::svf policy(f);
        std::vector<float> scratch(policy.backward_scratch_floats(T));
        for (const svf_parametrization kind : all_parametrizations)
            for (const bool rescale : {false, true}) {
                const int parametrization = int(kind);
                CAPTURE(parametrization);
                CAPTURE(rescale);
                svf_matrix m = example_state(kind, rescale, r, 24);
                policy.backward(ex, x.view(), g.view(), dx.view(), &m.state, scratch);
                std::vector<double> p = doubles(m.parameters);
                const matrix<float>& experts = m.state.experts;
                const auto fd = t2_test::numeric_gradient(
                    p, [&] { return linear_loss(x, adapted_matrix(f, z_of(kind, p, experts), rescale), g); });
                // The central difference in double is good to ~1e-9 here; the analytic gradient
                // sums f32 products (x·V, dy·U) in double, a few units of 2⁻²⁴ relative: 1e-5
                // leaves a wide margin and still catches a wrong term of the chain rule.
                CHECK(relative_error(doubles(m.gradient), fd) < 1e-5);
                // dx = g·W' exactly (the loss is linear in x).
                CHECK(relative_error(doubles(dx.span()), times(g, adapted_matrix(f, m.z(), rescale), in)) < 1e-5);
                // The gradient accumulates: a second call adds the same floats again.
                const std::vector<float> once = m.gradient;
                policy.backward(ex, x.view(), g.view(), dx.view(), &m.state, scratch);
                bool doubled = true;
                for (std::size_t j = 0; j < once.size(); ++j)
                    doubled = doubled && m.gradient[j] == 2 * once[j];
                CHECK(doubled);
            }
    }

    SUBCASE("svf: without an active state, dL/dx of the base") {
        const t2::adapt::svf factored_only(f), with_base(t2::nn::dense<float>(matrix<float>(w)), f);
        const auto base = doubles(w.span());
        t2::adapt::svf_state inactive;
        for (const t2::adapt::svf* policy : {&factored_only, &with_base})
            for (t2::adapt::svf_state* s : {static_cast<t2::adapt::svf_state*>(nullptr), &inactive}) {
                const int has_base = policy == &with_base, has_state = s != nullptr;
                CAPTURE(has_base);
                CAPTURE(has_state);
                std::vector<float> scratch(policy->backward_scratch_floats(T));
                policy->backward(ex, x.view(), g.view(), dx.view(), s, scratch);
                CHECK(relative_error(doubles(dx.span()), times(g, base, in)) < 1e-5);
            }
    }

    SUBCASE("lora: dL/dA, dL/dB and dL/dx") {
        const t2::adapt::lora policy{t2::nn::dense<float>(matrix<float>(w))};
        lora_matrix m(4, 6.f, out, in, 25);
        const auto wp = m.adapted(w, doubles(m.parameters));
        const lora_rows all{0, T, &m.state};
        std::vector<float> scratch(policy.scratch_floats(T, m.state));
        matrix<float> y(T, out);
        policy.forward(ex, x.view(), y.view(), std::span(&all, 1), scratch);
        CHECK(relative_error(doubles(y.span()), times_transposed(x, wp, out)) < 1e-6);

        scratch.resize(policy.backward_scratch_floats(T, m.state));
        policy.backward(ex, x.view(), g.view(), dx.view(), &m.state, scratch);
        std::vector<double> p = doubles(m.parameters); // A, then B
        const auto fd = t2_test::numeric_gradient(p, [&] { return linear_loss(x, m.adapted(w, p), g); });
        // As for svf: the loss is bilinear in A and B, so the central difference is exact up to
        // double rounding, and f32 gemms of lengths T, in, out and r are far below 1e-5.
        const std::size_t a = 4 * in;
        CHECK(relative_error(doubles(m.state.gradient_a), std::vector<double>(fd.begin(), fd.begin() + a)) < 1e-5);
        CHECK(relative_error(doubles(m.state.gradient_b), std::vector<double>(fd.begin() + a, fd.end())) < 1e-5);
        CHECK(relative_error(doubles(dx.span()), times(g, wp, in)) < 1e-5);
        // The gradient accumulates: a second call adds the same floats again.
        const std::vector<float> once = m.gradient;
        policy.backward(ex, x.view(), g.view(), dx.view(), &m.state, scratch);
        bool doubled = true;
        for (std::size_t j = 0; j < once.size(); ++j)
            doubled = doubled && m.gradient[j] == 2 * once[j];
        CHECK(doubled);
        // Without a state: the frozen base's dL/dx (no scratch needed).
        policy.backward(ex, x.view(), g.view(), dx.view(), nullptr, {});
        CHECK(relative_error(doubles(dx.span()), times(g, doubles(w.span()), in)) < 1e-5);
    }
}

TEST_CASE("svf and lora: rows in groups with different states are each group run alone") {
    // Groups of odd sizes with a state that comes back after others, the base (nullptr) and
    // an inactive state in between. 36 rows: the whole takes simd's packed gemm, the groups
    // alone its few-row and dot-product kernels.
    struct group {
        std::size_t first, count;
        int state; // index into the states, −1: none (the base)
    };
    const group groups[] = {{0, 3, 0}, {3, 1, -1}, {4, 5, 1}, {9, 2, 2}, {11, 7, 0}, {18, 1, 3}, {19, 17, 1}};
    const std::size_t T = 36;

    // Every group's rows alone, with its own state (none: the base's forward) into `want`, and
    // the whole batch at once into `got`.
    const auto run = [&](const auto& ex, const auto& policy, const auto& states, std::size_t out,
                         const matrix<float>& x, std::size_t scratch_floats, matrix<float>& got,
                         matrix<float>& want) {
        using state_type = std::remove_cvref_t<decltype(*states[0])>;
        std::vector<t2::nn::adapter_rows<state_type>> rows;
        std::vector<float> scratch(scratch_floats);
        for (const group& gr : groups) {
            const state_type* s = gr.state < 0 ? nullptr : states[std::size_t(gr.state)];
            rows.push_back({gr.first, gr.count, s});
            matrix<float> alone(gr.count, out);
            const auto x_rows = x.view().rows(gr.first, gr.first + gr.count);
            if (s) {
                const t2::nn::adapter_rows<state_type> all{0, gr.count, s};
                policy.forward(ex, x_rows, alone.view(), std::span(&all, 1), scratch);
            } else {
                policy.forward(ex, x_rows, alone.view());
            }
            std::copy(alone.span().begin(), alone.span().end(), want.span().begin() + gr.first * out);
        }
        policy.forward(ex, x.view(), got.view(), std::span<const t2::nn::adapter_rows<state_type>>(rows), scratch);
    };

    // Each shape's weight and input, with room for both results.
    const auto for_each_shape = [&](auto&& body) {
        for (const auto& shape : {std::pair<std::size_t, std::size_t>{13, 11}, {37, 29}, {9, 23}}) {
            const std::size_t out = shape.first, in = shape.second; // not a structured binding: CAPTURE's lambda
            CAPTURE(out);
            CAPTURE(in);
            const matrix<float> w = t2_test::random_matrix(out, in, 40 + out);
            const matrix<float> x = t2_test::random_matrix(T, in, 41 + in);
            matrix<float> got(T, out), want(T, out);
            body(out, in, w, x, got, want);
        }
    };
    SUBCASE("svf") {
        for_each_shape([&](std::size_t out, std::size_t in, const matrix<float>& w, const matrix<float>& x,
                           matrix<float>& got, matrix<float>& want) {
            const auto f = factors_of(w);
            const std::size_t r = f.rank();
            const t2::adapt::svf factored_only(f), with_base(t2::nn::dense<float>(matrix<float>(w)), f);
            const svf_matrix a = example_state(svf_parametrization::z, false, r, 42);
            const svf_matrix b = example_state(svf_parametrization::sigmoid, true, r, 43);
            const svf_matrix c = example_state(svf_parametrization::mixture, true, r, 44);
            const t2::adapt::svf_state inactive;
            const t2::adapt::svf_state* states[] = {&a.state, &b.state, &inactive, &c.state};
            for (const t2::adapt::svf* policy : {&factored_only, &with_base}) {
                const int has_base = policy == &with_base;
                CAPTURE(has_base);
                const std::size_t scratch = policy->scratch_floats(T);
                // exec::scalar sums each element in one order whatever the rows around it: the
                // same bits.
                run(t2::exec::scalar{}, *policy, states, out, x, scratch, got, want);
                CHECK(same_bits(got.span(), want.span()));
                // simd's kernels differ with the row count: within two orders of each row's
                // summations (x·V and ·Uᵀ chained with a scaling between, or the dense base's).
                run(t2::exec::simd<>{}, *policy, states, out, x, scratch, got, want);
                std::vector<double> magnitudes(T * out), bound(T * out);
                for (const group& gr : groups) {
                    const auto x_rows = x.view().rows(gr.first, gr.first + gr.count);
                    const svf_matrix* s = gr.state == 0 ? &a : gr.state == 1 ? &b : gr.state == 3 ? &c : nullptr;
                    const bool base = !s;
                    if (base && policy == &with_base)
                        dense_magnitudes(x_rows, w, nullptr, gr.first, magnitudes);
                    else
                        factored_magnitudes(x_rows, f,
                                            adapted_scales(f, base ? std::vector<double>(r, 1.0) : s->z(),
                                                           !base && s->state.rescale),
                                            gr.first, magnitudes);
                    const double relative = base && policy == &with_base ? t2_test::between_orders(in)
                                                                         : t2_test::between_orders(in + r + 1);
                    for (std::size_t i = gr.first * out; i < (gr.first + gr.count) * out; ++i)
                        bound[i] = relative * magnitudes[i];
                }
                T2_CHECK_WITHIN(got.span(), want.span(), t2_test::scaled_bounds(bound, 1.0));
                // The bound tells the states apart: all rows with one state fail it.
                matrix<float> all_a(T, out);
                const svf_rows one{0, T, &a.state};
                std::vector<float> one_scratch(scratch);
                policy->forward(t2::exec::simd<>{}, x.view(), all_a.view(), std::span(&one, 1), one_scratch);
                CHECK_FALSE(t2_test::compare_within(all_a.span(), want.span(), t2_test::scaled_bounds(bound, 1.0)).ok);
            }
        });
    }

    SUBCASE("lora") {
        for_each_shape([&](std::size_t out, std::size_t in, const matrix<float>& w, const matrix<float>& x,
                           matrix<float>& got, matrix<float>& want) {
            const t2::adapt::lora policy{t2::nn::dense<float>(matrix<float>(w))};
            const lora_matrix a(3, 6.f, out, in, 45), b(5, 5.f, out, in, 46), c(2, 1.f, out, in, 47);
            const t2::adapt::lora_state inactive;
            const t2::adapt::lora_state* states[] = {&a.state, &b.state, &inactive, &c.state};
            std::size_t scratch = 0; // floats: the most any state needs
            for (const auto* s : states)
                scratch = std::max(scratch, policy.scratch_floats(T, *s));
            run(t2::exec::scalar{}, policy, states, out, x, scratch, got, want);
            CHECK(same_bits(got.span(), want.span()));
            // simd: within two orders of x·Wᵀ + (α/r)·(x·Aᵀ)·Bᵀ's summations, x·Aᵀ then the
            // rank, with α· and the + of gemm's β = 1 on the longest path.
            run(t2::exec::simd<>{}, policy, states, out, x, scratch, got, want);
            std::vector<double> magnitudes(T * out), bound(T * out);
            for (const group& gr : groups) {
                const t2::adapt::lora_state* s = gr.state < 0 ? nullptr : states[std::size_t(gr.state)];
                if (s && !s->active())
                    s = nullptr;
                dense_magnitudes(x.view().rows(gr.first, gr.first + gr.count), w, s, gr.first, magnitudes);
                const double relative = t2_test::between_orders(s ? in + s->rank + 2 : in);
                for (std::size_t i = gr.first * out; i < (gr.first + gr.count) * out; ++i)
                    bound[i] = relative * magnitudes[i];
            }
            T2_CHECK_WITHIN(got.span(), want.span(), t2_test::scaled_bounds(bound, 1.0));
            // The bound tells the states apart: all rows with the base fail it.
            matrix<float> base(T, out);
            policy.forward(t2::exec::simd<>{}, x.view(), base.view());
            CHECK_FALSE(t2_test::compare_within(base.span(), want.span(), t2_test::scaled_bounds(bound, 1.0)).ok);
        });
    }

    SUBCASE("groups that miss rows, overlap or run out of order are refused") {
        const matrix<float> w = t2_test::random_matrix(7, 5, 48);
        const matrix<float> x = t2_test::random_matrix(3, 5, 49);
        matrix<float> y(3, 7);
        const auto f = factors_of(w);
        const t2::adapt::svf svf_policy(t2::nn::dense<float>(matrix<float>(w)), f);
        const t2::adapt::lora lora_policy{t2::nn::dense<float>(matrix<float>(w))};
        const svf_matrix a = example_state(svf_parametrization::z, false, f.rank(), 50);
        const lora_matrix b(2, 2.f, 7, 5, 51);
        std::vector<float> scratch(1024);
        const std::vector<std::vector<std::pair<std::size_t, std::size_t>>> bad{{{0, 1}}, {{0, 2}, {1, 2}}, {{1, 2}, {0, 1}},
                                                                                {{0, 3}, {3, 1}}};
        for (const auto& layout : bad) {
            std::vector<svf_rows> svf_groups;
            std::vector<lora_rows> lora_groups;
            for (const auto& [first, count] : layout) {
                svf_groups.push_back({first, count, &a.state});
                lora_groups.push_back({first, count, &b.state});
            }
            CHECK(t2_test::contains(t2_test::error_message([&] {
                                        svf_policy.forward(t2::exec::scalar{}, x.view(), y.view(),
                                                           std::span<const svf_rows>(svf_groups), scratch);
                                    }),
                                    "adapter groups"));
            CHECK(t2_test::contains(t2_test::error_message([&] {
                                        lora_policy.forward(t2::exec::scalar{}, x.view(), y.view(),
                                                            std::span<const lora_rows>(lora_groups), scratch);
                                    }),
                                    "adapter groups"));
        }
    }
}

TEST_CASE("decomposition and experts: stories260K end to end through files") {
    const auto ckpt = t2::io::load_checkpoint(T2_SHARED_MODELS_DIR "/stories260K.bin");
    const t2::exec::simd<> ex;
    std::vector<std::string> progress;
    t2::adapt::decompose_options options;
    options.progress = [&](std::size_t done, std::size_t total, const std::string& name) {
        CHECK(total == 15);
        CHECK(done == progress.size() + 1);
        progress.push_back(name);
    };
    const auto d = t2::adapt::decompose(ex, ckpt.config, ckpt.weights, t2::adapt::selection::mlp(), options);
    REQUIRE(d.matrices.size() == 15);
    CHECK(progress.size() == 15);
    CHECK(d.base_model_hash == t2::adapt::weights_hash(ckpt.config, ckpt.weights));
    // The same weights from GGUF hash alike.
    const auto gguf = t2::io::load_checkpoint(T2_SHARED_MODELS_DIR "/stories260K.gguf");
    CHECK(t2::adapt::weights_hash(gguf.config, gguf.weights) == d.base_model_hash);

    const std::string dir = t2_test::temp_dir();
    const std::string svd_path = dir + "/stories260K.svd.safetensors";
    t2::io::write_decomposition(svd_path, d);
    const auto loaded = t2::io::read_decomposition(svd_path);
    CHECK(loaded.base_model_hash == d.base_model_hash);
    CHECK(loaded.selection == "mlp");
    REQUIRE(loaded.matrices.size() == d.matrices.size());
    for (std::size_t i = 0; i < d.matrices.size(); ++i) {
        CHECK(loaded.matrices[i].name == d.matrices[i].name);
        CHECK(std::equal(d.matrices[i].factors.u.data(), d.matrices[i].factors.u.data() + d.matrices[i].factors.u.size(),
                         loaded.matrices[i].factors.u.data()));
    }

    const auto model = t2::adapt::make_svf_model(ckpt.config, ckpt.weights, loaded);
    const t2::nn::llama<t2::nn::llama_config> base(ckpt.config, ckpt.weights);
    const std::vector<std::int32_t> tokens{1, 403, 407, 261, 378, 39, 70};
    auto s1 = base.make_state(), s2 = model.make_state();
    const auto want = base.forward(ex, s1, tokens, t2::nn::logits_for::all);
    // Without an adapter the decomposed matrices run their dense base: the base model's bits.
    const auto without = model.forward(ex, s2, tokens, t2::nn::logits_for::all);
    CHECK(same_bits(without.span(), want.span()));
    // A fresh adapter, one z of the matrix's rank per decomposed matrix, by its name.
    auto adapter = t2::adapt::make_svf_adapter(model);
    REQUIRE(adapter.layout().size() == loaded.matrices.size());
    for (const auto& m : loaded.matrices)
        CHECK(adapter.parameters(m.name).size() == m.factors.rank());
    // z = 1 rebuilds each MLP matrix from its factors: on a token's chain, w1 (or w3) and w2
    // of every block are one more summation over the rank each (support/tolerance.hpp).
    std::size_t rebuilt_chain = 0;
    for (const auto& m : loaded.matrices)
        if (m.slot.which != t2::nn::projection::w3) // w1 and w3 run side by side
            rebuilt_chain += m.factors.rank();
    const auto bound = t2_test::logit_order_tolerance(base, tokens.size(), rebuilt_chain);
    s2.reset();
    const auto same = model.forward(ex, s2, tokens, t2::nn::logits_for::all, &adapter);
    T2_CHECK_WITHIN(same.span(), want.span(), bound);

    // An expert: written, read back, applied; it changes the logits.
    const auto make_expert = [&](float offset, float amplitude) {
        t2::adapt::expert e{d.base_model_hash, false, "test task", "{\"method\": \"hand-made\"}", {}};
        for (const auto& m : d.matrices) {
            std::vector<float> z(m.factors.rank());
            for (std::size_t j = 0; j < z.size(); ++j)
                z[j] = offset + amplitude * std::sin(float(j + m.slot.layer));
            e.z.emplace_back(m.name, z);
        }
        return e;
    };
    const t2::adapt::expert e = make_expert(1.f, 0.3f);
    const std::string expert_path = dir + "/expert.safetensors";
    t2::io::write_expert(expert_path, e);
    const auto e2 = t2::io::read_expert(expert_path);
    CHECK(e2.task == "test task");
    CHECK(e2.training == e.training);
    CHECK(e2.z == e.z);
    t2::adapt::apply_expert(adapter, loaded, e2);
    t2::adapt::prepare(ex, model, adapter, tokens.size()); // W' where cheaper for these tokens
    s2.reset();
    const auto adapted = model.forward(ex, s2, tokens, t2::nn::logits_for::all, &adapter);
    CHECK_FALSE(t2_test::compare(adapted.span(), want.span(), 1e-3, 1e-3).ok);
    // The same through a mixture of that one expert with α = 1.
    auto mixed = t2::adapt::make_mixture_adapter(model, loaded, std::span(&e2, 1));
    REQUIRE(mixed.parameters().size() == 1);
    CHECK(mixed.parameters()[0] == 1.f); // uniform: 1/K
    const std::vector<float> one{1.f};
    t2::adapt::set_mixture_alpha(mixed, one);
    auto s3 = model.make_state();
    const auto via_mixture = model.forward(ex, s3, tokens, t2::nn::logits_for::all, &mixed);
    T2_CHECK_WITHIN(via_mixture.span(), adapted.span(), bound);

    SUBCASE("prepare: W' where it is cheaper, and used only while z is what it was made from") {
        const auto composed_matrices = [&] {
            std::size_t n = 0;
            for (std::size_t l = 0; l < adapter.layers(); ++l)
                for (std::size_t p = 0; p < t2::nn::projections_per_block; ++p)
                    n += adapter.matrix(l, p).composed_is_current();
            return n;
        };
        // stories260K's MLP matrices are 172×64 and 64×172 of rank 64: composing costs
        // 172·64·(64 + T) multiply-adds, factoring T·64·236: factored for 7 tokens, composed
        // for 10000.
        CHECK(composed_matrices() == 0);
        t2::adapt::prepare(ex, model, adapter, 10000);
        CHECK(composed_matrices() == 15);
        s2.reset();
        const auto composed = model.forward(ex, s2, tokens, t2::nn::logits_for::all, &adapter);
        T2_CHECK_WITHIN(composed.span(), adapted.span(), bound);

        // Another expert after prepare: every W' is stale, and the new z run, as they run on
        // an adapter that never composed.
        const t2::adapt::expert other = make_expert(0.9f, -0.2f);
        t2::adapt::apply_expert(adapter, loaded, other);
        CHECK(composed_matrices() == 0);
        s2.reset();
        const auto after = model.forward(ex, s2, tokens, t2::nn::logits_for::all, &adapter);
        auto fresh = t2::adapt::make_svf_adapter(model);
        t2::adapt::apply_expert(fresh, loaded, other);
        s3.reset();
        CHECK(same_bits(after.span(), model.forward(ex, s3, tokens, t2::nn::logits_for::all, &fresh).span()));
        CHECK_FALSE(t2_test::compare_within(after.span(), composed.span(), bound).ok);
        // The first expert again: its W's are current again.
        t2::adapt::apply_expert(adapter, loaded, e2);
        CHECK(composed_matrices() == 15);
        t2::adapt::prepare(ex, model, adapter, tokens.size());
        CHECK(composed_matrices() == 0);
        CHECK(t2_test::contains(t2_test::error_message([&] {
                                    const auto two_layers = t2::nn::llama_config{.dim = 8, .hidden_dim = 12,
                                                                                 .n_layers = 2, .n_heads = 2,
                                                                                 .n_kv_heads = 1, .vocab_size = 5,
                                                                                 .seq_len = 4};
                                    const auto w = t2::nn::random_weights(two_layers, 1);
                                    const auto small = t2::adapt::decompose(ex, two_layers, w, t2::adapt::selection::mlp());
                                    const auto small_model = t2::adapt::make_svf_model(two_layers, w, small);
                                    t2::adapt::prepare(ex, small_model, adapter, 1);
                                }),
                                "another model"));
    }

    SUBCASE("apply_expert and to_expert round-trip, z and θ = logit(z)") {
        const auto back = t2::adapt::to_expert(adapter, loaded, "round trip", "{\"steps\": 0}");
        CHECK(back.base_model_hash == loaded.base_model_hash);
        CHECK_FALSE(back.rescale);
        CHECK(back.task == "round trip");
        CHECK(back.training == "{\"steps\": 0}");
        CHECK(back.z == e2.z); // z parametrization: the values themselves
        // A matrix the expert leaves out gets z = 1.
        t2::adapt::expert partial = e2;
        const std::string left_out = partial.z[4].first;
        partial.z.erase(partial.z.begin() + 4);
        t2::adapt::apply_expert(adapter, loaded, partial);
        const auto ones = adapter.parameters(left_out);
        CHECK(std::all_of(ones.begin(), ones.end(), [](float v) { return v == 1.f; }));

        // The sigmoid parametrization holds θ = logit(z) (for z in (0, 1)), and gives z back.
        for (const bool rescale : {false, true}) {
            CAPTURE(rescale);
            t2::adapt::expert in_unit = make_expert(0.5f, 0.45f);
            in_unit.rescale = rescale;
            auto sigmoid = t2::adapt::make_svf_adapter(
                model, {.parametrization = svf_parametrization::sigmoid, .rescale = rescale, .seed = 4});
            t2::adapt::apply_expert(sigmoid, loaded, in_unit);
            const auto round = t2::adapt::to_expert(sigmoid, loaded);
            CHECK(round.rescale == rescale);
            REQUIRE(round.z.size() == in_unit.z.size());
            const double u = t2_test::unit_roundoff, fe = t2_test::function_error;
            double worst_theta = 0, worst_z = 0; // |error| / bound
            for (std::size_t i = 0; i < in_unit.z.size(); ++i) {
                const auto& [name, z] = in_unit.z[i];
                CHECK(round.z[i].first == name);
                const auto theta = sigmoid.parameters(name);
                for (std::size_t j = 0; j < z.size(); ++j) {
                    // θ = log(z / (1 − z)) in f32: 1 − z is exact for z ≥ 1/2 (Sterbenz) and one
                    // rounding below, the quotient one more, so log reads z/(1 − z)·(1 + ε),
                    // |ε| ≤ 2u, which moves θ by |ε|; log is within function_error of |θ|.
                    const double exact = std::log(double(z[j]) / (1 - double(z[j])));
                    const double theta_bound = 1.01 * (2 * u + fe * std::abs(exact)); // 1%: second order
                    worst_theta = std::max(worst_theta, std::abs(theta[j] - exact) / theta_bound);
                    // z' = 1 / (1 + exp(−θ')) in f32: exp within function_error, the + and the /
                    // one rounding each, ≤ (fe + 2u)·z; and θ's error moves z by z(1 − z)·|Δθ|.
                    const double zj = z[j];
                    const double z_bound = 1.01 * (zj * (1 - zj) * theta_bound + (fe + 2 * u) * zj);
                    worst_z = std::max(worst_z, std::abs(double(round.z[i].second[j]) - zj) / z_bound);
                }
            }
            CHECK(worst_theta <= 1);
            CHECK(worst_z <= 1);
            // θ = logit(z) is defined only for 0 < z < 1.
            for (const float bad : {0.f, 1.f, 1.25f, -0.5f}) {
                CAPTURE(bad);
                t2::adapt::expert outside = in_unit;
                outside.z[2].second[5] = bad;
                CHECK(t2_test::contains(
                    t2_test::error_message([&] { t2::adapt::apply_expert(sigmoid, loaded, outside); }), "0 < z < 1"));
            }
        }
    }

    SUBCASE("another model's decomposition and experts, and malformed experts, are refused") {
        const auto other = t2::nn::random_weights(ckpt.config, 5);
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::make_svf_model(ckpt.config, other, loaded); }),
                       "another model"));
        t2::adapt::expert foreign = e2;
        foreign.base_model_hash = std::string(64, 'a');
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::apply_expert(adapter, loaded, foreign); }),
                       "another model"));
        CHECK(t2_test::contains(
            t2_test::error_message([&] { t2::adapt::make_mixture_adapter(model, loaded, std::span(&foreign, 1)); }),
            "another model"));
        t2::adapt::expert wrong_rank = e2;
        wrong_rank.z[0].second.pop_back();
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::apply_expert(adapter, loaded, wrong_rank); }), "rank"));
        CHECK(t2_test::contains(
            t2_test::error_message([&] { t2::adapt::make_mixture_adapter(model, loaded, std::span(&wrong_rank, 1)); }),
            "rank"));
        t2::adapt::expert rescaled = e2;
        rescaled.rescale = true;
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::apply_expert(adapter, loaded, rescaled); }), "rescaling"));
        CHECK(t2_test::contains(
            t2_test::error_message([&] { t2::adapt::make_mixture_adapter(model, loaded, std::span(&rescaled, 1)); }),
            "rescaling"));
        t2::adapt::expert stray = e2;
        stray.z.emplace_back("layers.0.attention.wq", std::vector<float>(64, 1.f));
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::apply_expert(adapter, loaded, stray); }),
                       "does not hold"));
        t2::adapt::expert not_finite = e2;
        not_finite.z[1].second[3] = NAN;
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::apply_expert(adapter, loaded, not_finite); }),
                                "non-finite"));
        // A mixture's parameters are its α: no expert goes in or comes out.
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::apply_expert(mixed, loaded, e2); }),
                                "set_mixture_alpha"));
        // A refused expert changes nothing: every check runs before any value is written.
        const std::vector<float> before(adapter.parameters().begin(), adapter.parameters().end());
        t2::adapt::expert last_bad = e2;
        last_bad.z.back().second.back() = NAN;
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::apply_expert(adapter, loaded, last_bad); }),
                                "non-finite"));
        CHECK(std::equal(before.begin(), before.end(), adapter.parameters().begin(), adapter.parameters().end()));
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::to_expert(mixed, loaded); }), "mixture"));
        CHECK(t2_test::contains(t2_test::error_message([&] {
                                    t2::adapt::make_svf_adapter(model, {.parametrization = svf_parametrization::mixture});
                                }),
                                "make_mixture_adapter"));
        const std::vector<float> two{0.5f, 0.5f}, nan{NAN};
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::set_mixture_alpha(mixed, two); }), "2 weights"));
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::set_mixture_alpha(mixed, nan); }), "non-finite"));
    }

    SUBCASE("malformed files are errors naming the file") {
        const auto entry = [](std::string name, const std::vector<float>& v, std::vector<std::size_t> shape) {
            return t2::io::make_safetensors_entry(std::move(name), std::span<const float>(v), std::move(shape));
        };
        const std::vector<float> u(6, 0.5f), s{2.f, 1.f}, v(4, 0.5f);
        const t2::io::safetensors_metadata meta{{"format", "t2.decomposition"}, {"format_version", "1"},
                                                 {"base_model_hash", d.base_model_hash}, {"selection", "mlp"}};
        const std::string bad = dir + "/bad.safetensors";
        const auto error_for = [&](std::vector<t2::io::safetensors_entry> tensors, t2::io::safetensors_metadata m) {
            t2::io::write_safetensors(bad, tensors, m);
            return t2_test::error_message([&] { t2::io::read_decomposition(bad); });
        };
        const std::string w1 = "layers.0.feed_forward.w1";
        t2::io::write_safetensors(bad, {entry(w1 + ".U", u, {3, 2}), entry(w1 + ".S", s, {2}), entry(w1 + ".V", v, {2, 2})}, meta);
        CHECK(t2::io::read_decomposition(bad).matrices.size() == 1);
        CHECK(t2_test::contains(error_for({entry(w1 + ".U", u, {3, 2}), entry(w1 + ".V", v, {2, 2})}, meta), "lacks its S"));
        CHECK(t2_test::contains(error_for({entry(w1 + ".U", u, {2, 3}), entry(w1 + ".S", s, {2}), entry(w1 + ".V", v, {2, 2})}, meta),
                       "need U [out, r]"));
        const std::vector<float> ascending{1.f, 2.f};
        CHECK(t2_test::contains(error_for({entry(w1 + ".U", u, {3, 2}), entry(w1 + ".S", ascending, {2}), entry(w1 + ".V", v, {2, 2})}, meta),
                       "descending"));
        CHECK(t2_test::contains(error_for({entry("output.U", u, {3, 2})}, meta), "does not name a block matrix"));
        CHECK(t2_test::contains(error_for({entry(w1 + ".X", u, {3, 2})}, meta), "unexpected tensor"));
        auto other_format = meta;
        other_format["format"] = "t2.expert";
        CHECK(t2_test::contains(error_for({entry(w1 + ".S", s, {2})}, other_format), "not a t2.decomposition file"));
        auto future = meta;
        future["format_version"] = "2";
        CHECK(t2_test::contains(error_for({entry(w1 + ".S", s, {2})}, future), "newer"));
        auto no_hash = meta;
        no_hash.erase("base_model_hash");
        CHECK(t2_test::contains(error_for({entry(w1 + ".S", s, {2})}, no_hash), "base_model_hash"));
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::io::read_expert(svd_path); }), "not a t2.expert file"));
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::io::read_decomposition(expert_path); }), "not a t2.decomposition"));
    }
}

TEST_CASE("lora: a fresh adapter leaves the model unchanged") {
    const auto ckpt = t2::io::load_checkpoint(T2_SHARED_MODELS_DIR "/stories260K.bin");
    const t2::exec::simd<> ex;
    const auto q_and_v = t2::adapt::selection::pattern(R"(.*\.attention\.w[qv])");
    const auto model = t2::adapt::make_lora_model(ckpt.config, ckpt.weights);
    const auto adapter = t2::adapt::make_lora_adapter(model, q_and_v, {.rank = 4, .alpha = 8.f}, 1);
    std::size_t adapted = 0;
    for (std::size_t l = 0; l < adapter.layers(); ++l)
        for (std::size_t p = 0; p < t2::nn::projections_per_block; ++p)
            adapted += adapter.matrix(l, p).active();
    CHECK(adapted == 10);
    CHECK(adapter.parameters().size() ==
          t2::adapt::trainable_parameters(ckpt.config, q_and_v, t2::adapt::adapter_spec::parse("lora:4")));
    REQUIRE(adapter.layout().size() == 20);
    CHECK(adapter.layout()[0].name == "layers.0.attention.wq.lora_a");
    CHECK(adapter.layout()[1].name == "layers.0.attention.wq.lora_b");
    // B starts at 0 and A does not (uniform in ±1/√in): the zeros below are B's doing.
    const float bound = 1.f / std::sqrt(float(ckpt.config.dim));
    for (const auto& range : adapter.layout()) {
        CAPTURE(range.name);
        const auto values = adapter.parameters(range.name);
        if (range.name.ends_with(".lora_b")) {
            CHECK(std::all_of(values.begin(), values.end(), [](float v) { return v == 0.f; }));
        } else {
            CHECK(std::any_of(values.begin(), values.end(), [](float v) { return v != 0.f; }));
            CHECK(std::all_of(values.begin(), values.end(), [&](float v) { return std::abs(v) <= bound; }));
        }
    }
    const t2::nn::llama<t2::nn::llama_config> base(ckpt.config, ckpt.weights);
    const std::vector<std::int32_t> tokens{1, 403, 407};
    auto s1 = base.make_state(), s2 = model.make_state();
    const auto want = base.forward(ex, s1, tokens, t2::nn::logits_for::all);
    const auto without = model.forward(ex, s2, tokens, t2::nn::logits_for::all);
    T2_CHECK_CLOSE(without.span(), want.span(), 0, 0);
    s2.reset();
    const auto got = model.forward(ex, s2, tokens, t2::nn::logits_for::all, &adapter);
    // B = 0 at initialisation: the adapter adds exact zeros.
    T2_CHECK_CLOSE(got.span(), want.span(), 0, 0);
}

TEST_CASE("decomposition files: a writer killed mid-way leaves the old file intact") {
    namespace fs = std::filesystem;
    const std::string dir = t2_test::temp_dir() + "/killed_writer";
    fs::remove_all(dir);
    fs::create_directories(dir);
    const std::string path = dir + "/model.svd.safetensors";
    const auto small = t2::adapt::svd_factors::own(t2::adapt::svd<double>(t2::exec::scalar{}, t2_test::random_matrix(6, 4, 1).view()));
    const std::string hash(64, 'b');
    t2::io::write_decomposition(path, {hash, "mlp", {{"layers.0.feed_forward.w1", {}, small}}});
    const auto read_back = [&] { return t2::io::read_decomposition(path); };
    REQUIRE(read_back().matrices.size() == 1);

    // A replacement of 16 MiB, written 1 MiB at a time; the child stops after 4 MiB.
    const auto big = std::make_shared<std::vector<float>>(std::size_t{4} << 20, 0.25f);
    const std::vector<float> sigma(512, 1.f);
    const t2::adapt::svd_factors huge{t2::matrix_view<const float>(big->data(), t2::dims<2>(4096, 512)),
                                      t2::vector_view<const float>(sigma.data(), t2::dims<1>(512)),
                                      t2::matrix_view<const float>(big->data() + 4096 * 512, t2::dims<2>(4096, 512)), big};
    t2_test::kill_writer_midway(
        [&](const t2::io::safetensors_write_options& options) {
            t2::io::write_decomposition(path, {hash, "all", {{"layers.0.feed_forward.w2", {}, huge}}}, options);
        },
        std::size_t{4} << 20);
    const auto d = read_back();
    REQUIRE(d.matrices.size() == 1);
    CHECK(d.matrices[0].name == "layers.0.feed_forward.w1");
    CHECK(d.selection == "mlp");
}
