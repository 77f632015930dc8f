#pragma once
// The key/value cache of a decoder: for every layer and KV head, the keys and values of
// every position seen so far, transposed — each head's d-th components of all positions
// contiguous — so that decoding attention runs full-width vector operations along the
// positions whatever the head size (ops::cached_attention reads one layer at a time).
//
//   keys, values: [n_layers × n_kv_heads × head_dim × capacity]
#include <array>
#include <cstddef>
#include <new>

#include "t2/core/tensor.hpp"
#include "t2/nn/config.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

class kv_cache {
public:
    kv_cache() = default;
    // Room for `capacity` positions (at most the model's seq_len).
    template <model_config C>
    kv_cache(const C& c, std::size_t capacity) {
        T2_CHECK(capacity > 0 && capacity <= c.seq_len, "kv_cache: capacity ", capacity,
                 " must be between 1 and the model's context of ", c.seq_len);
        const std::array<std::size_t, 4> shape{c.n_layers, c.n_kv_heads, head_dim(c), capacity};
        const std::size_t bytes = 2 * t2::detail::checked_product(shape) * sizeof(float);
        try {
            keys_ = tensor<float, dims<4>>(dims<4>(shape));
            values_ = tensor<float, dims<4>>(dims<4>(shape));
        } catch (const std::bad_alloc&) {
            t2::detail::throw_error("kv_cache: cannot allocate ", bytes, " bytes for ", capacity,
                                " positions; ask for a shorter context");
        }
    }

    std::size_t capacity() const noexcept { return keys_.extent(3); }
    std::size_t layers() const noexcept { return keys_.extent(0); }

    // One layer's keys or values: [n_kv_heads × head_dim × capacity].
    tensor_view<float, dims<3>> layer_keys(std::size_t layer) { return keys_.row(layer); }
    tensor_view<float, dims<3>> layer_values(std::size_t layer) { return values_.row(layer); }

private:
    tensor<float, dims<4>> keys_, values_;
};

} // namespace nn
T2_NAMESPACE_END
