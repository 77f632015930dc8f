// The adapter weight policies (svf, mixture, lora), matrix selection, parameter counts,
// decompositions and experts, and their files.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>


#include "support/check.hpp"
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

t2::adapt::svd_factors factors_of(const matrix<float>& w) {
    return t2::adapt::svd_factors::own(t2::adapt::svd<double>(t2::exec::scalar{}, w.view()));
}

// W' = U diag(σ ⊙ z · c) Vᵀ in double, straight from the definition.
std::vector<double> adapted_matrix(const t2::adapt::svd_factors& f, const std::vector<double>& z, bool rescale) {
    const std::size_t out = f.out_features(), in = f.in_features(), r = f.rank();
    double total = 0, weighted = 0;
    for (std::size_t j = 0; j < r; ++j) {
        total += f.sigma[j];
        weighted += f.sigma[j] * z[j];
    }
    const double c = rescale ? total / weighted : 1.0;
    std::vector<double> w(out * in, 0.0);
    for (std::size_t i = 0; i < out; ++i)
        for (std::size_t k = 0; k < in; ++k)
            for (std::size_t j = 0; j < r; ++j)
                w[i * in + k] += double(f.u(i, j)) * f.sigma[j] * z[j] * c * f.v(k, j);
    return w;
}

// x·Wᵀ [T × out] in double, W [out × in] row-major.
std::vector<double> times_transposed(const matrix<float>& x, const std::vector<double>& w, std::size_t out) {
    const std::size_t T = x.extent(0), in = x.extent(1);
    std::vector<double> y(T * out, 0.0);
    for (std::size_t t = 0; t < T; ++t)
        for (std::size_t i = 0; i < out; ++i)
            for (std::size_t k = 0; k < in; ++k)
                y[t * out + i] += double(x(t, k)) * w[i * in + k];
    return y;
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

TEST_CASE("svf: composed and factored are the definition, with and without rescaling") {
    const t2::exec::simd<> ex;
    for (const auto& shape : {std::tuple{7, 5, 3}, {5, 9, 1}, {16, 16, 4}, {33, 17, 2}}) {
        const auto [out, in, T] = shape;
        const int rows = out, cols = in; // doctest's CAPTURE cannot take structured bindings
        const matrix<float> w = t2_test::random_matrix(out, in, 11 + out);
        const matrix<float> x = t2_test::random_matrix(T, in, 12 + in);
        const auto f = factors_of(w);
        const auto zv = t2_test::random_vector(f.rank(), 13);
        std::vector<float> z(f.rank());
        for (std::size_t j = 0; j < z.size(); ++j)
            z[j] = 1.f + 0.5f * zv(j);
        for (const bool rescale : {false, true}) {
            const auto want = adapted_matrix(f, doubles(z), rescale);
            for (const auto mode : {t2::adapt::svf_mode::composed, t2::adapt::svf_mode::factored}) {
                CAPTURE(rows);
                CAPTURE(cols);
                CAPTURE(rescale);
                const int mode_index = int(mode);
                CAPTURE(mode_index);
                t2::adapt::svf policy(f, {.rescale = rescale, .mode = mode});
                // z = 1 is the base matrix.
                matrix<float> y(T, out), base(T, out);
                policy.forward(ex, x.view(), y.view());
                t2::ops::gemm(t2::exec::scalar{}, x.view(), w.view(), base.view(), {.transpose_b = true});
                CHECK(t2_test::compare(y.span(), base.span(), 1e-5, 1e-5).ok);

                policy.set_z(ex, z);
                CHECK(policy.mode() == mode);
                policy.forward(ex, x.view(), y.view());
                CHECK(relative_error(doubles(y.span()), times_transposed(x, want, out)) < 1e-6);
            }
        }
    }
}

TEST_CASE("svf: the cheaper mode is chosen from the token count, and bad z is refused") {
    using t2::adapt::svf_mode;
    CHECK(t2::adapt::cheaper_svf_mode(768, 768, 768, 1) == svf_mode::factored);
    CHECK(t2::adapt::cheaper_svf_mode(768, 768, 768, 256) == svf_mode::factored);
    CHECK(t2::adapt::cheaper_svf_mode(768, 768, 768, 2000) == svf_mode::composed);
    CHECK(t2::adapt::cheaper_svf_mode(2048, 768, 768, 4000) == svf_mode::composed);
    const matrix<float> w = t2_test::random_matrix(12, 10, 3);
    t2::adapt::svf policy(factors_of(w));
    const t2::exec::scalar ex;
    policy.set_z(ex, std::vector<float>(10, 2.f), 100);
    CHECK(policy.mode() == svf_mode::composed);
    policy.set_z(ex, std::vector<float>(10, 2.f), 1);
    CHECK(policy.mode() == svf_mode::factored);
    CHECK(t2_test::contains(t2_test::error_message([&] { policy.set_z(ex, std::vector<float>(9, 1.f)); }), "rank 10"));
    CHECK(t2_test::contains(t2_test::error_message([&] { policy.set_z(ex, std::vector<float>(10, NAN)); }), "non-finite"));
    t2::adapt::svf rescaled(factors_of(w), {.rescale = true});
    CHECK(t2_test::contains(t2_test::error_message([&] { rescaled.set_z(ex, std::vector<float>(10, 0.f)); }), "rescaling"));
    t2::adapt::svf dense{t2::nn::dense<float>(matrix<float>(w))};
    CHECK_FALSE(dense.adapted());
    CHECK(t2_test::contains(t2_test::error_message([&] { dense.set_z(ex, std::vector<float>(10, 1.f)); }), "not adapted"));
}

TEST_CASE("svf, mixture and lora: backward matches finite differences in double") {
    const t2::exec::simd<> ex;
    const std::size_t out = 9, in = 7, T = 3;
    const matrix<float> w = t2_test::random_matrix(out, in, 21);
    const matrix<float> x = t2_test::random_matrix(T, in, 22);
    const matrix<float> g = t2_test::random_matrix(T, out, 23);
    const auto f = factors_of(w);
    const std::size_t r = f.rank();
    std::vector<float> z(r);
    for (std::size_t j = 0; j < r; ++j)
        z[j] = 0.5f + 0.1f * float(j);
    const double h = 1e-6;

    for (const bool rescale : {false, true}) {
        CAPTURE(rescale);
        t2::adapt::svf policy(f, {.rescale = rescale});
        policy.set_z(ex, z);
        auto grad = policy.make_gradient();
        matrix<float> dx(T, in);
        policy.backward(ex, x.view(), g.view(), dx.view(), grad);
        std::vector<double> fd(r);
        for (std::size_t j = 0; j < r; ++j) {
            auto plus = doubles(z), minus = doubles(z);
            plus[j] += h;
            minus[j] -= h;
            fd[j] = (linear_loss(x, adapted_matrix(f, plus, rescale), g) -
                     linear_loss(x, adapted_matrix(f, minus, rescale), g)) / (2 * h);
        }
        CHECK(relative_error(doubles(grad.z), fd) < 1e-3);
        // dx = g·W' exactly (the loss is linear in x).
        const auto wp = adapted_matrix(f, doubles(z), rescale);
        CHECK(relative_error(doubles(dx.span()), times(g, wp, in)) < 1e-5);
    }

    SUBCASE("mixture: dL/dα and dL/dz_k") {
        const std::size_t K = 3;
        matrix<float> experts = t2_test::random_matrix(K, r, 24);
        const std::vector<float> alpha{0.2f, 0.5f, 0.3f};
        t2::adapt::mixture policy(f, experts, {.rescale = true});
        policy.set_alpha(ex, alpha);
        auto grad = policy.make_gradient();
        matrix<float> dx(T, in);
        policy.backward(ex, x.view(), g.view(), dx.view(), grad);
        const auto loss_at = [&](const std::vector<double>& a, const matrix<float>& e) {
            std::vector<double> mixed(r, 0.0);
            for (std::size_t k = 0; k < K; ++k)
                for (std::size_t j = 0; j < r; ++j)
                    mixed[j] += a[k] * e(k, j);
            return linear_loss(x, adapted_matrix(f, mixed, true), g);
        };
        std::vector<double> fd(K);
        for (std::size_t k = 0; k < K; ++k) {
            auto plus = doubles(alpha), minus = doubles(alpha);
            plus[k] += h;
            minus[k] -= h;
            fd[k] = (loss_at(plus, experts) - loss_at(minus, experts)) / (2 * h);
        }
        CHECK(relative_error(doubles(grad.alpha), fd) < 1e-3);
        std::vector<double> fd_experts(K * r);
        const double he = 1e-3; // the experts are stored in f32: a step f32 resolves
        for (std::size_t i = 0; i < K * r; ++i) {
            matrix<float> plus = experts, minus = experts;
            plus.data()[i] += float(he);
            minus.data()[i] -= float(he);
            fd_experts[i] = (loss_at(doubles(alpha), plus) - loss_at(doubles(alpha), minus)) /
                            (double(plus.data()[i]) - double(minus.data()[i]));
        }
        CHECK(relative_error(doubles(grad.experts.span()), fd_experts) < 1e-3);
    }

    SUBCASE("lora: dL/dA, dL/dB and dL/dx") {
        t2::adapt::lora policy(t2::nn::dense<float>(matrix<float>(w)), {.rank = 4, .alpha = 6.f}, 25);
        // B starts at zero; give it values so every path of the gradient is exercised.
        t2_test::fill_uniform(policy.b().span(), 26);
        const auto lora_matrix = [&](const matrix<float>& a, const matrix<float>& b) {
            std::vector<double> m(out * in);
            for (std::size_t i = 0; i < out; ++i)
                for (std::size_t k = 0; k < in; ++k) {
                    double ba = 0;
                    for (std::size_t j = 0; j < 4; ++j)
                        ba += double(b(i, j)) * a(j, k);
                    m[i * in + k] = w(i, k) + 1.5 * ba;
                }
            return m;
        };
        const auto copy = [](matrix_view<const float> m) {
            matrix<float> c(m.extent(0), m.extent(1));
            std::copy(m.data(), m.data() + m.size(), c.data());
            return c;
        };
        const matrix<float> a = copy(std::as_const(policy).a()), b = copy(std::as_const(policy).b());
        matrix<float> y(T, out);
        policy.forward(ex, x.view(), y.view());
        const auto wp = lora_matrix(a, b);
        CHECK(relative_error(doubles(y.span()), times_transposed(x, wp, out)) < 1e-6);

        auto grad = policy.make_gradient();
        matrix<float> dx(T, in);
        policy.backward(ex, x.view(), g.view(), dx.view(), grad);
        const auto fd_of = [&](bool of_a) {
            const matrix<float>& m = of_a ? a : b;
            std::vector<double> fd(m.size());
            for (std::size_t i = 0; i < m.size(); ++i) {
                matrix<float> plus = m, minus = m;
                plus.data()[i] += 1e-3f;
                minus.data()[i] -= 1e-3f;
                const double step = double(plus.data()[i]) - double(minus.data()[i]);
                fd[i] = (linear_loss(x, of_a ? lora_matrix(plus, b) : lora_matrix(a, plus), g) -
                         linear_loss(x, of_a ? lora_matrix(minus, b) : lora_matrix(a, minus), g)) / step;
            }
            return fd;
        };
        CHECK(relative_error(doubles(grad.a.span()), fd_of(true)) < 1e-3);
        CHECK(relative_error(doubles(grad.b.span()), fd_of(false)) < 1e-3);
        CHECK(relative_error(doubles(dx.span()), times(g, wp, in)) < 1e-5);
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

    auto model = t2::adapt::make_svf_model(ckpt.config, ckpt.weights, loaded);
    const t2::nn::llama<t2::nn::llama_config> base(ckpt.config, ckpt.weights);
    const std::vector<std::int32_t> tokens{1, 403, 407, 261, 378, 39, 70};
    auto s1 = base.make_state(), s2 = model.make_state();
    const auto want = base.forward(ex, s1, tokens, t2::nn::logits_for::all);
    const auto same = model.forward(ex, s2, tokens, t2::nn::logits_for::all);
    // z = 1 rebuilds each MLP matrix from its factors: on a token's chain, w1 (or w3) and w2
    // of every block are one more summation over the rank each (support/tolerance.hpp).
    std::size_t rebuilt_chain = 0;
    for (const auto& m : loaded.matrices)
        if (m.slot.which != t2::nn::projection::w3) // w1 and w3 run side by side
            rebuilt_chain += m.factors.rank();
    const auto bound = t2_test::logit_order_tolerance(base, tokens.size(), rebuilt_chain);
    T2_CHECK_WITHIN(same.span(), want.span(), bound);

    // An expert: written, read back, applied; it changes the logits exactly as set_z does.
    t2::adapt::expert e{d.base_model_hash, false, "test task", "{\"method\": \"hand-made\"}", {}};
    for (const auto& m : d.matrices) {
        std::vector<float> z(m.factors.rank());
        for (std::size_t j = 0; j < z.size(); ++j)
            z[j] = 1.f + 0.3f * std::sin(float(j + m.slot.layer));
        e.z.emplace_back(m.name, z);
    }
    const std::string expert_path = dir + "/expert.safetensors";
    t2::io::write_expert(expert_path, e);
    const auto e2 = t2::io::read_expert(expert_path);
    CHECK(e2.task == "test task");
    CHECK(e2.training == e.training);
    CHECK(e2.z == e.z);
    t2::adapt::apply_expert(ex, model, loaded, e2, 7);
    s2.reset();
    const auto adapted = model.forward(ex, s2, tokens, t2::nn::logits_for::all);
    CHECK_FALSE(t2_test::compare(adapted.span(), want.span(), 1e-3, 1e-3).ok);
    // The same through the mixture policy with one expert and α = 1.
    auto mixed = t2::adapt::make_mixture_model(ckpt.config, ckpt.weights, loaded, std::span(&e2, 1));
    const std::vector<float> one{1.f};
    t2::adapt::set_mixture_alpha(ex, mixed, one);
    auto s3 = mixed.make_state();
    const auto via_mixture = mixed.forward(ex, s3, tokens, t2::nn::logits_for::all);
    T2_CHECK_WITHIN(via_mixture.span(), adapted.span(), bound);

    SUBCASE("another model's decomposition and experts are refused") {
        const auto other = t2::nn::random_weights(ckpt.config, 5);
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::make_svf_model(ckpt.config, other, loaded); }),
                       "another model"));
        t2::adapt::expert foreign = e2;
        foreign.base_model_hash = std::string(64, 'a');
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::apply_expert(ex, model, loaded, foreign); }),
                       "another model"));
        t2::adapt::expert wrong_rank = e2;
        wrong_rank.z[0].second.pop_back();
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::apply_expert(ex, model, loaded, wrong_rank); }), "rank"));
        t2::adapt::expert rescaled = e2;
        rescaled.rescale = true;
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::apply_expert(ex, model, loaded, rescaled); }), "rescaling"));
        t2::adapt::expert stray = e2;
        stray.z.emplace_back("layers.0.attention.wq", std::vector<float>(64, 1.f));
        CHECK(t2_test::contains(t2_test::error_message([&] { t2::adapt::apply_expert(ex, model, loaded, stray); }),
                       "does not hold"));
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
    auto model = t2::adapt::make_lora_model(ckpt.config, ckpt.weights, q_and_v, {.rank = 4, .alpha = 8.f}, 1);
    std::size_t adapted = 0, parameters = 0;
    for (const auto& b : model.weights().blocks)
        for (const auto p : t2::nn::all_projections) {
            const auto& w = t2::nn::projection_of(b, p).weight();
            adapted += w.adapted();
            parameters += w.adapted() ? w.a().size() + w.b().size() : 0;
        }
    CHECK(adapted == 10);
    CHECK(parameters == t2::adapt::trainable_parameters(ckpt.config, q_and_v, t2::adapt::adapter_spec::parse("lora:4")));
    const t2::nn::llama<t2::nn::llama_config> base(ckpt.config, ckpt.weights);
    const std::vector<std::int32_t> tokens{1, 403, 407};
    auto s1 = base.make_state(), s2 = model.make_state();
    const auto want = base.forward(ex, s1, tokens, t2::nn::logits_for::all);
    const auto got = model.forward(ex, s2, tokens, t2::nn::logits_for::all);
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
