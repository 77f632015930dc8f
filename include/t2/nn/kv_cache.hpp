#pragma once
// The key/value cache of a decoder: for every layer and KV head, the keys and values of
// every position seen so far, each head's positions contiguous so that attention reads
// them as ordinary row-major matrices.
//
//   keys, values: [n_layers × n_kv_heads × seq_len × head_dim]
#include <cstddef>

#include "t2/core/tensor.hpp"
#include "t2/nn/config.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

class kv_cache {
public:
    kv_cache() = default;
    template <model_config C>
    explicit kv_cache(const C& c)
        : keys_(c.n_layers, c.n_kv_heads, c.seq_len, head_dim(c)),
          values_(c.n_layers, c.n_kv_heads, c.seq_len, head_dim(c)) {}

    std::size_t capacity() const noexcept { return keys_.extent(2); }

    // Rows [0, length) of one head's keys or values: [length × head_dim].
    matrix_view<float> keys(std::size_t layer, std::size_t head, std::size_t length) {
        return keys_.row(layer).row(head).rows(0, length);
    }
    matrix_view<float> values(std::size_t layer, std::size_t head, std::size_t length) {
        return values_.row(layer).row(head).rows(0, length);
    }

private:
    tensor<float, dims<4>> keys_, values_;
};

} // namespace nn
T2_NAMESPACE_END
