#pragma once
// The shape of a Llama-family decoder.
//
// llama_config holds every dimension at run time (read from a checkpoint). A model may
// instead be given a struct with the same members declared `static constexpr` (see
// static_llama_config below); the layer templates read `cfg.dim` either way, so with a
// static config the compiler sees every size as a constant.
#include <cstddef>
#include <string>

#include "t2/core/error.hpp"
#include "t2/ops/rope.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

struct llama_config {
    std::size_t dim = 0;        // model width
    std::size_t hidden_dim = 0; // MLP width
    std::size_t n_layers = 0;
    std::size_t n_heads = 0;
    std::size_t n_kv_heads = 0; // divides n_heads: n_heads = MHA, 1 = MQA, else GQA
    std::size_t vocab_size = 0;
    std::size_t seq_len = 0;    // longest context the KV cache holds
    float norm_eps = 1e-5f;
    float rope_theta = 10000.f;
    ops::rope_layout rope_layout = ops::rope_layout::interleaved;
    bool shared_classifier = true; // the classifier reuses the token embedding
};

// A config type: llama_config or a struct with the same members as static constexpr.
template <class C>
concept model_config = requires(const C& c) {
    { c.dim } -> std::convertible_to<std::size_t>;
    { c.hidden_dim } -> std::convertible_to<std::size_t>;
    { c.n_layers } -> std::convertible_to<std::size_t>;
    { c.n_heads } -> std::convertible_to<std::size_t>;
    { c.n_kv_heads } -> std::convertible_to<std::size_t>;
    { c.vocab_size } -> std::convertible_to<std::size_t>;
    { c.seq_len } -> std::convertible_to<std::size_t>;
    { c.norm_eps } -> std::convertible_to<float>;
    { c.rope_theta } -> std::convertible_to<float>;
};

template <model_config C>
constexpr std::size_t head_dim(const C& c) noexcept {
    return c.dim / c.n_heads;
}
template <model_config C>
constexpr std::size_t kv_dim(const C& c) noexcept {
    return head_dim(c) * c.n_kv_heads;
}

// Checks that the dimensions describe a model t2 can run; `where` names the source (a file).
template <model_config C>
void validate(const C& c, const std::string& where) {
    const auto fail = [&](const auto&... what) { t2::detail::throw_error(where, ": ", what...); };
    if (c.dim == 0 || c.hidden_dim == 0 || c.n_layers == 0 || c.n_heads == 0 || c.n_kv_heads == 0 ||
        c.vocab_size == 0 || c.seq_len == 0)
        fail("every dimension must be positive (dim ", c.dim, ", hidden_dim ", c.hidden_dim,
             ", n_layers ", c.n_layers, ", n_heads ", c.n_heads, ", n_kv_heads ", c.n_kv_heads,
             ", vocab_size ", c.vocab_size, ", seq_len ", c.seq_len, ")");
    if (c.dim % c.n_heads != 0)
        fail("dim ", c.dim, " is not a multiple of n_heads ", c.n_heads);
    if (head_dim(c) % 2 != 0)
        fail("head size ", head_dim(c), " is odd; rotary embeddings rotate pairs");
    if (c.n_heads % c.n_kv_heads != 0)
        fail("n_kv_heads ", c.n_kv_heads, " does not divide n_heads ", c.n_heads);
    // Generous bounds that still keep every size product far from overflow.
    constexpr std::size_t limit = std::size_t{1} << 24;
    if (c.dim > limit || c.hidden_dim > limit || c.n_layers > 4096 || c.vocab_size > limit ||
        c.seq_len > limit)
        fail("implausibly large dimensions (dim ", c.dim, ", hidden_dim ", c.hidden_dim,
             ", n_layers ", c.n_layers, ", vocab_size ", c.vocab_size, ", seq_len ", c.seq_len, ")");
    if (!(c.norm_eps > 0.f) || !(c.rope_theta > 1.f))
        fail("norm_eps must be positive and rope_theta greater than 1");
}

// Example of a compile-time configuration: Karpathy's stories260K.
struct stories260k_config {
    static constexpr std::size_t dim = 64, hidden_dim = 172, n_layers = 5, n_heads = 8,
                                 n_kv_heads = 4, vocab_size = 512, seq_len = 512;
    static constexpr float norm_eps = 1e-5f, rope_theta = 10000.f;
    static constexpr ops::rope_layout rope_layout = ops::rope_layout::interleaved;
    static constexpr bool shared_classifier = true;
};

} // namespace nn
T2_NAMESPACE_END
