// The model templates with a compile-time configuration (nn::stories260k_config, every
// dimension a static constexpr member): llama<stories260k_config> on the real checkpoint
// gives exactly the logits of llama<llama_config> on the same weights, and rejects
// weights of another shape.
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "support/check.hpp"
#include "support/tolerance.hpp"
#include "t2/io/llama2c.hpp"
#include "t2/nn/random_init.hpp"

namespace {

using static_config = t2::nn::stories260k_config;

static_assert(sizeof(static_config) == 1, "a static config is an empty struct");
static_assert(std::is_empty_v<static_config>);
static_assert(t2::nn::model_config<static_config>);
static_assert(t2::nn::model_config<t2::nn::llama_config>);
static_assert(t2::nn::head_dim(static_config{}) == 8);
static_assert(t2::nn::kv_dim(static_config{}) == 32);

const std::string models = T2_SHARED_MODELS_DIR;

template <class E, class Model>
std::vector<float> run(const E& ex, const Model& model, const std::vector<std::int32_t>& tokens,
                       bool one_at_a_time) {
    auto state = model.make_state(16);
    std::vector<float> out;
    const auto append = [&](const t2::matrix<float>& logits) {
        out.insert(out.end(), logits.span().begin(), logits.span().end());
    };
    if (one_at_a_time) {
        for (const std::int32_t t : tokens)
            append(model.forward(ex, state, std::span<const std::int32_t>(&t, 1)));
    } else {
        append(model.forward(ex, state, tokens, t2::nn::logits_for::all));
    }
    return out;
}

} // namespace

TEST_CASE("llama<stories260k_config> matches llama<llama_config> on stories260K") {
    auto ck = t2::io::read_llama2c(models + "/stories260K.bin");
    const t2::nn::llama_config& c = ck.config;
    const static_config s;
    REQUIRE(c.dim == s.dim);
    REQUIRE(c.hidden_dim == s.hidden_dim);
    REQUIRE(c.n_layers == s.n_layers);
    REQUIRE(c.n_heads == s.n_heads);
    REQUIRE(c.n_kv_heads == s.n_kv_heads);
    REQUIRE(c.vocab_size == s.vocab_size);
    REQUIRE(c.seq_len == s.seq_len);

    const t2::nn::llama<t2::nn::llama_config> dynamic_model(c, ck.weights); // a shared copy
    const t2::nn::llama<static_config> static_model(s, std::move(ck.weights));
    CHECK(sizeof(static_model) < sizeof(dynamic_model));

    const std::vector<std::int32_t> tokens{1, 403, 407, 261, 378, 9, 500, 2};
    for (const bool one_at_a_time : {false, true}) {
        CAPTURE(one_at_a_time);
        const auto want = run(t2::exec::scalar{}, dynamic_model, tokens, one_at_a_time);
        REQUIRE(want.size() == tokens.size() * c.vocab_size);
        const auto got = run(t2::exec::scalar{}, static_model, tokens, one_at_a_time);
        T2_CHECK_CLOSE(got, want, 0.0, 0.0);
#if T2_ENABLE_SIMD
        const auto want_simd = run(t2::exec::simd<>{}, dynamic_model, tokens, one_at_a_time);
        T2_CHECK_CLOSE(run(t2::exec::simd<>{}, static_model, tokens, one_at_a_time), want_simd, 0.0,
                       0.0);
        // simd and scalar differ only in summation order (support/tolerance.hpp).
        T2_CHECK_WITHIN(want_simd, want, t2_test::logit_order_tolerance(dynamic_model, tokens.size()));
#endif
    }
}

TEST_CASE("llama<stories260k_config> rejects weights of another shape") {
    const static_config s;
    const auto shaped = [&](auto change) {
        t2::nn::llama_config c{.dim = s.dim,
                               .hidden_dim = s.hidden_dim,
                               .n_layers = s.n_layers,
                               .n_heads = s.n_heads,
                               .n_kv_heads = s.n_kv_heads,
                               .vocab_size = s.vocab_size,
                               .seq_len = s.seq_len};
        change(c);
        return t2::nn::random_weights(c, 5);
    };
    // The matching shape is accepted; any other is rejected by the shape check.
    CHECK_NOTHROW(t2::nn::llama<static_config>(s, shaped([](auto&) {})));
    const auto rejects = [&](auto change) {
        const auto message = t2_test::error_message(
            [&] { t2::nn::llama<static_config> model(s, shaped(change)); });
        CAPTURE(message);
        CHECK(t2_test::contains(message, "llama: "));
    };
    rejects([](auto& c) {
        c.dim = 32;
        c.n_heads = 4;
        c.n_kv_heads = 2;
    });
    rejects([](auto& c) { c.hidden_dim = 128; });
    rejects([](auto& c) { c.n_layers = 4; });
    rejects([](auto& c) { c.n_kv_heads = 8; });
    rejects([](auto& c) { c.vocab_size = 256; });
    CHECK_THROWS_AS(t2::nn::llama<static_config>(s, shaped([](auto& c) { c.n_layers = 6; })),
                    t2::error);
}
