// Backpropagation through whole models: the training forward is the inference forward,
// gradients match directional finite differences of the loss, recomputation changes
// nothing, and the loss mask does what it says. (Parity with PyTorch autograd is in
// test_parity_grad.cpp; each layer's backward against finite differences in double is in
// test_ops_backward.cpp and test_adapt_policies.cpp.)
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "support/check.hpp"
#include "support/tolerance.hpp"
#include "t2/adapt/model.hpp"
#include "t2/io/load.hpp"
#include "t2/nn/backprop.hpp"
#include "t2/nn/convert.hpp"
#include "t2/nn/random_init.hpp"

namespace {

using t2::nn::llama_config;

// (L(θ + h·u) − L(θ − h·u)) / 2h along a direction u given as a perturbation of the
// parameters in place: perturb(s) adds s·u. The loss is computed in f32, so h cannot be
// tiny; 2e-3 keeps both the rounding and the curvature of random models below 2%.
double directional_fd(const std::function<double()>& loss, const std::function<void(float)>& perturb, float h) {
    perturb(h);
    const double plus = loss();
    perturb(-2 * h);
    const double minus = loss();
    perturb(h);
    return (plus - minus) / (2.0 * h);
}

float* writable(const float* p) { return const_cast<float*>(p); } // test-owned weights

const llama_config configs[] = {
    {.dim = 16, .hidden_dim = 24, .n_layers = 2, .n_heads = 4, .n_kv_heads = 2, .vocab_size = 19, .seq_len = 12},
    {.dim = 12, .hidden_dim = 20, .n_layers = 2, .n_heads = 3, .n_kv_heads = 1, .vocab_size = 23, .seq_len = 9,
     .rope_layout = t2::ops::rope_layout::halves, .shared_classifier = false},
    {.dim = 8, .hidden_dim = 14, .n_layers = 3, .n_heads = 2, .n_kv_heads = 2, .vocab_size = 11, .seq_len = 7,
     .rope_theta = 500000.f},
};

} // namespace

TEST_CASE("backprop: the training forward gives the inference forward's loss") {
    const t2::exec::simd<> ex;
    for (const auto& c : configs) {
        const t2::nn::llama<llama_config> model(c, t2::nn::random_weights(c, 3));
        const auto tokens = t2_test::random_tokens(c.seq_len + 1, c.vocab_size, 4);
        auto grads = t2::nn::make_gradients(model);
        const float trained = t2::nn::forward_backward(ex, model, tokens, {}, grads);
        const float inferred = t2::nn::sequence_loss(ex, model, tokens);
        // Two code paths, two summation orders (support/tolerance.hpp).
        CHECK(std::abs(trained - inferred) <= t2_test::loss_order_tolerance(model, tokens.size()));
        CHECK(std::isfinite(trained));
    }
}

TEST_CASE("backprop: dense weight gradients match directional finite differences") {
    t2::exec::thread_pool pool(2);
    const t2::exec::threads<t2::exec::simd<>> ex(pool);
    for (const auto& c : configs) {
        CAPTURE(c.dim);
        const auto weights = t2::nn::random_weights(c, 5);
        const t2::nn::llama<llama_config> model(c, weights);
        const auto tokens = t2_test::random_tokens(8, c.vocab_size, 6);
        std::vector<float> mask(tokens.size() - 1, 1.f);
        mask[0] = 0.f;
        mask[3] = 0.5f;
        const t2::nn::backprop_options options{.dense_weights = true};
        auto g = t2::nn::make_gradients(model, options);
        t2::nn::forward_backward(ex, model, tokens, mask, g, options);
        const auto loss = [&] { return double(t2::nn::sequence_loss(ex, model, tokens, mask)); };

        // One random direction per tensor: compare ⟨∇L, u⟩ with the finite difference.
        std::uint64_t seed = 100;
        const auto check_tensor = [&](std::string what, const float* values, std::size_t n, const float* grad) {
            CAPTURE(what);
            REQUIRE(grad != nullptr);
            std::vector<float> u(n);
            t2_test::fill_uniform(u, seed++);
            double analytic = 0;
            for (std::size_t i = 0; i < n; ++i)
                analytic += double(grad[i]) * u[i];
            const double fd = directional_fd(loss, [&](float s) {
                for (std::size_t i = 0; i < n; ++i)
                    writable(values)[i] += s * u[i];
            }, 2e-3f);
            CAPTURE(analytic);
            CAPTURE(fd);
            CHECK(std::abs(analytic - fd) <= 2e-2 * std::abs(fd) + 1e-4);
        };
        check_tensor("embedding", weights.token_embedding.data(), weights.token_embedding.size(),
                     g.token_embedding.data());
        check_tensor("final norm", weights.final_norm.data(), weights.final_norm.size(), g.final_norm.data());
        if (!c.shared_classifier)
            check_tensor("classifier", weights.classifier.weight().weight().data(),
                         weights.classifier.weight().weight().size(), g.classifier.weight.data());
        for (std::size_t l = 0; l < c.n_layers; ++l) {
            const auto& b = weights.blocks[l];
            check_tensor("attention norm", b.attention_norm.data(), c.dim, g.blocks[l].attention_norm.data());
            check_tensor("mlp norm", b.mlp_norm.data(), c.dim, g.blocks[l].mlp_norm.data());
            for (const auto p : t2::nn::all_projections) {
                const auto w = t2::nn::projection_of(b, p).weight().weight();
                check_tensor(std::string(t2::nn::short_name(p)) + " " + std::to_string(l), w.data(), w.size(),
                             t2::nn::projection_of(g.blocks[l], p).weight.data());
            }
        }
    }
}

// The adapter's flat gradient against (L(p + h·u) − L(p − h·u)) / 2h along a random
// direction u of its flat parameters.
template <class Adapter, class Loss>
void check_adapter_gradient(Adapter& adapter, Loss&& loss, std::uint64_t seed) {
    std::vector<float> u(adapter.parameters().size());
    t2_test::fill_uniform(u, seed);
    double analytic = 0;
    for (std::size_t i = 0; i < u.size(); ++i)
        analytic += double(adapter.gradient()[i]) * u[i];
    const double fd = directional_fd(loss,
                                     [&](float s) {
                                         for (std::size_t i = 0; i < u.size(); ++i)
                                             adapter.parameters()[i] += s * u[i];
                                     },
                                     2e-3f);
    CHECK(analytic == doctest::Approx(fd).epsilon(2e-2));
}

TEST_CASE("backprop: SVF z and θ, mixture α and LoRA gradients match directional finite differences") {
    const t2::exec::simd<> ex;
    const auto& c = configs[0];
    const auto weights = t2::nn::random_weights(c, 7);
    const auto d = t2::adapt::decompose(ex, c, weights, t2::adapt::selection::all());
    const auto tokens = t2_test::random_tokens(10, c.vocab_size, 8);
    const auto svf_model = t2::adapt::make_svf_model(c, weights, d);

    SUBCASE("svf with rescaling") {
        auto adapter = t2::adapt::make_svf_adapter(svf_model, {.rescale = true});
        t2_test::fill_uniform(adapter.parameters(), 10, 0.5f, 1.5f);
        t2::nn::forward_backward(ex, svf_model, adapter, tokens);
        check_adapter_gradient(
            adapter, [&] { return double(t2::nn::sequence_loss(ex, svf_model, tokens, {}, &adapter)); }, 50);
    }

    SUBCASE("svf, z = sigmoid(θ), with rescaling") {
        auto adapter = t2::adapt::make_svf_adapter(
            svf_model, {.parametrization = t2::adapt::svf_parametrization::sigmoid, .rescale = true, .seed = 3});
        t2_test::fill_uniform(adapter.parameters(), 11, -1.f, 1.f);
        t2::nn::forward_backward(ex, svf_model, adapter, tokens);
        check_adapter_gradient(
            adapter, [&] { return double(t2::nn::sequence_loss(ex, svf_model, tokens, {}, &adapter)); }, 51);
    }

    SUBCASE("mixture α, per layer") {
        std::vector<t2::adapt::expert> experts(3);
        for (std::size_t k = 0; k < experts.size(); ++k) {
            experts[k].base_model_hash = d.base_model_hash;
            for (const auto& m : d.matrices) {
                std::vector<float> z(m.factors.rank());
                t2_test::fill_uniform(z, 200 + k * 100 + m.slot.layer * 7 + std::size_t(m.slot.which), 0.f, 2.f);
                experts[k].z.emplace_back(m.name, z);
            }
        }
        auto adapter = t2::adapt::make_mixture_adapter(svf_model, d, experts, {.per_layer = true});
        const std::vector<float> alpha{0.2f, 0.5f, 0.3f, 0.6f, 0.1f, 0.3f};
        t2::adapt::set_mixture_alpha(adapter, alpha);
        CHECK(adapter.parameters("layers.1.alpha")[1] == 0.1f);
        t2::nn::forward_backward(ex, svf_model, adapter, tokens);
        // One α at a time: dL/dα of layer l sums over its matrices.
        for (std::size_t i = 0; i < alpha.size(); ++i) {
            CAPTURE(i);
            const double fd = directional_fd(
                [&] { return double(t2::nn::sequence_loss(ex, svf_model, tokens, {}, &adapter)); },
                [&](float s) { adapter.parameters()[i] += s; }, 2e-3f);
            CHECK(std::abs(adapter.gradient()[i] - fd) <= 2e-2 * std::abs(fd) + 1e-4);
        }
    }

    SUBCASE("lora") {
        const auto model = t2::adapt::make_lora_model(c, weights);
        auto adapter = t2::adapt::make_lora_adapter(model, t2::adapt::selection::all(), {.rank = 3, .alpha = 6.f}, 9);
        for (const auto& range : adapter.layout())
            if (range.name.ends_with(".lora_b"))
                t2_test::fill_uniform(adapter.parameters(range.name), 300 + range.offset, -0.3f, 0.3f);
        t2::nn::forward_backward(ex, model, adapter, tokens);
        check_adapter_gradient(
            adapter, [&] { return double(t2::nn::sequence_loss(ex, model, tokens, {}, &adapter)); }, 400);
    }
}

TEST_CASE("backprop: recomputation gives the same gradients; gradients accumulate") {
    t2::exec::thread_pool pool(3);
    const t2::exec::threads<t2::exec::simd<>> ex(pool);
    const auto& c = configs[1];
    const t2::nn::llama<llama_config> model(c, t2::nn::random_weights(c, 11));
    const auto tokens = t2_test::random_tokens(c.seq_len + 1, c.vocab_size, 12);
    const t2::nn::backprop_options kept{.dense_weights = true}, recomputed{.dense_weights = true, .recompute = true};
    auto a = t2::nn::make_gradients(model, kept), b = t2::nn::make_gradients(model, recomputed);
    const float la = t2::nn::forward_backward(ex, model, tokens, {}, a, kept);
    const float lb = t2::nn::forward_backward(ex, model, tokens, {}, b, recomputed);
    CHECK(la == lb);
    CHECK(std::equal(a.token_embedding.data(), a.token_embedding.data() + a.token_embedding.size(),
                     b.token_embedding.data()));
    CHECK(std::equal(a.blocks[0].wq.weight.data(), a.blocks[0].wq.weight.data() + a.blocks[0].wq.weight.size(),
                     b.blocks[0].wq.weight.data()));
    // A second call adds the same gradient again.
    t2::nn::forward_backward(ex, model, tokens, {}, b, recomputed);
    for (std::size_t i = 0; i < a.blocks[1].w2.weight.size(); ++i)
        REQUIRE(b.blocks[1].w2.weight.data()[i] == doctest::Approx(2 * a.blocks[1].w2.weight.data()[i]).epsilon(1e-5));
    CHECK(t2::nn::peak_activation_floats(c, 100, true) < t2::nn::peak_activation_floats(c, 100, false));
}

TEST_CASE("backprop: the loss mask leaves prompt positions out, and bad input is refused") {
    const t2::exec::simd<> ex;
    const auto& c = configs[0];
    const t2::nn::llama<llama_config> model(c, t2::nn::random_weights(c, 13));
    auto tokens = t2_test::random_tokens(9, c.vocab_size, 14);
    std::vector<float> mask(tokens.size() - 1, 1.f);
    mask[0] = mask[1] = 0.f;  // a prompt
    mask.back() = 0.f;        // and a masked last target: tokens.back() is read by nothing else
    const t2::nn::backprop_options dense{.dense_weights = true};
    auto g1 = t2::nn::make_gradients(model, dense);
    const float l1 = t2::nn::forward_backward(ex, model, tokens, mask, g1, dense);
    tokens.back() = (tokens.back() + 1) % static_cast<std::int32_t>(c.vocab_size);
    auto g2 = t2::nn::make_gradients(model, dense);
    const float l2 = t2::nn::forward_backward(ex, model, tokens, mask, g2, dense);
    CHECK(l1 == l2);
    CHECK(std::equal(g1.token_embedding.data(), g1.token_embedding.data() + g1.token_embedding.size(),
                     g2.token_embedding.data()));
    // A counted target does matter.
    tokens[4] = (tokens[4] + 1) % static_cast<std::int32_t>(c.vocab_size);
    auto g4 = t2::nn::make_gradients(model, dense);
    CHECK(t2::nn::forward_backward(ex, model, tokens, mask, g4, dense) != l1);
    std::vector<float> none(tokens.size() - 1, 0.f);
    auto g3 = t2::nn::make_gradients(model, dense);
    CHECK(t2::nn::forward_backward(ex, model, tokens, none, g3, dense) == 0.f);
    CHECK(std::all_of(g3.blocks[0].w1.weight.data(), g3.blocks[0].w1.weight.data() + g3.blocks[0].w1.weight.size(),
                      [](float v) { return v == 0.f; }));

    const std::vector<std::int32_t> one{1};
    CHECK(t2_test::contains(t2_test::error_message([&] { t2::nn::forward_backward(ex, model, one, {}, g3); }),
                            "at least 2 tokens"));
    CHECK(t2_test::contains(
        t2_test::error_message([&] { t2::nn::forward_backward(ex, model, tokens, std::span(mask).first(3), g3); }),
        "loss mask"));
    const std::vector<std::int32_t> outside{1, 2, 99};
    CHECK(t2_test::contains(t2_test::error_message([&] { t2::nn::forward_backward(ex, model, outside, {}, g3); }),
                            "99"));
    const auto long_sequence = t2_test::random_tokens(c.seq_len + 2, c.vocab_size, 15);
    CHECK(t2_test::contains(
        t2_test::error_message([&] { t2::nn::forward_backward(ex, model, long_sequence, {}, g3); }), "context"));
}

TEST_CASE("backprop: bf16 weights give input gradients; their weight gradients are refused") {
    const t2::exec::simd<> ex;
    const auto& c = configs[0];
    const t2::nn::llama<llama_config, t2::nn::dense<t2::bf16>> model(
        c, t2::nn::convert_weights<t2::bf16>(t2::nn::random_weights(c, 17)));
    const auto tokens = t2_test::random_tokens(6, c.vocab_size, 18);
    auto g = t2::nn::make_gradients(model);
    CHECK(std::abs(t2::nn::forward_backward(ex, model, tokens, {}, g) - t2::nn::sequence_loss(ex, model, tokens)) <=
          t2_test::loss_order_tolerance(model, tokens.size()));
    CHECK(t2_test::contains(t2_test::error_message([&] { t2::nn::make_gradients(model, {.dense_weights = true}); }),
                            "f32 weights"));
}

TEST_CASE("backprop: a batch of unequal sequences with REINFORCE and a KL penalty") {
    const t2::exec::simd<> ex;
    const auto& c = configs[0]; // GQA
    const auto weights = t2::nn::random_weights(c, 11);
    const auto d = t2::adapt::decompose(ex, c, weights, t2::adapt::selection::mlp());
    const auto model = t2::adapt::make_svf_model(c, weights, d);
    const t2::nn::llama<llama_config> base(c, weights);
    auto adapter = t2::adapt::make_svf_adapter(model);
    t2_test::fill_uniform(adapter.parameters(), 300, 0.7f, 1.3f);
    const std::vector<std::vector<std::int32_t>> sequences{t2_test::random_tokens(9, c.vocab_size, 21),
                                                           t2_test::random_tokens(4, c.vocab_size, 22),
                                                           t2_test::random_tokens(12, c.vocab_size, 23)};
    const std::vector<std::span<const std::int32_t>> views(sequences.begin(), sequences.end());
    const t2::nn::training_batch batch(views);
    REQUIRE(batch.rows() == 8 + 3 + 11);
    const std::vector<float> rewards{1.f, -1.f, 0.5f};
    std::vector<float> mask(batch.rows(), 1.f); // the first two rows of each sequence are its prompt
    for (std::size_t b = 0; b < 3; ++b)
        mask[batch.offsets()[b]] = mask[batch.offsets()[b] + 1] = 0.f;
    // The base is the model without an adapter: its dense weights, as `base` holds them.
    const auto base_logits = t2::nn::batch_logits(ex, model, batch);
    const auto dense_logits = t2::nn::batch_logits(ex, base, batch);
    CHECK(std::equal(base_logits.span().begin(), base_logits.span().end(), dense_logits.span().begin()));
    const auto loss = t2::nn::losses(t2::nn::reinforce{rewards, mask},
                                     t2::nn::kl_to_base{.base_logits = base_logits.view(), .coefficient = 0.2f});

    const float value = t2::nn::forward_backward(ex, model, adapter, batch, loss);
    CHECK(value == doctest::Approx(t2::nn::batch_loss(ex, model, batch, loss, &adapter)).epsilon(1e-5));

    SUBCASE("the batch's REINFORCE gradient is the mean of each sequence's") {
        adapter.zero_gradient();
        for (std::size_t b = 0; b < 3; ++b) {
            const t2::nn::training_batch one(views[b]);
            const std::span<const float> its_mask(mask.data() + batch.offsets()[b], batch.rows_of(b));
            t2::nn::forward_backward(ex, model, adapter, one, t2::nn::reinforce{std::span(&rewards[b], 1), its_mask});
        }
        const std::vector<float> alone(adapter.gradient().begin(), adapter.gradient().end());
        adapter.zero_gradient();
        t2::nn::forward_backward(ex, model, adapter, batch, t2::nn::reinforce{rewards, mask});
        for (const auto& range : adapter.layout()) {
            CAPTURE(range.name);
            // The same sums over rows, split differently: within a few ulps of their size.
            double difference = 0, size = 0;
            for (std::size_t j = range.offset; j < range.offset + range.size; ++j) {
                difference += std::pow(double(adapter.gradient()[j]) - double(alone[j]) / 3, 2);
                size += std::pow(double(alone[j]) / 3, 2);
            }
            CHECK(std::sqrt(difference) <= 1e-5 * std::sqrt(size));
        }
    }

    SUBCASE("matches a directional finite difference") {
        check_adapter_gradient(adapter, [&] { return double(t2::nn::batch_loss(ex, model, batch, loss, &adapter)); },
                               400);
    }

    SUBCASE("bad batches are refused") {
        const std::vector<std::int32_t> short_one{1};
        CHECK_THROWS_WITH_AS(t2::nn::training_batch(std::span<const std::int32_t>(short_one)),
                             "training_batch: sequence 0 has 1 tokens; it needs at least 2 tokens (an input and its "
                             "target)",
                             t2::error);
        const std::vector<float> two_rewards{1.f, 1.f};
        CHECK(t2_test::contains(t2_test::error_message([&] {
                                    t2::nn::forward_backward(ex, model, adapter, batch, t2::nn::reinforce{two_rewards});
                                }),
                                "reward"));
    }
}
