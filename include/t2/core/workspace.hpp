#pragma once
// Reusable scratch memory: the activations of a forward or backward pass carved from one
// aligned buffer that is kept between calls, so that a context decoding token after token
// (or training step after step on one batch shape) allocates only when a call needs more
// than any call before it.
//
//   ws.layout([&](auto& take) { h = take(T, dim); q = take(T, dim); ... });
//
// layout() runs the callback twice: first with a `take` that only counts floats, then —
// after growing the buffer if the count exceeds it — with one that hands out views, so the
// sizes are written once, where the views are. Every view starts on a 64-byte boundary.
// Views stay valid until the next layout() on the same workspace.
#include <cstddef>

#include "t2/core/memory.hpp"
#include "t2/core/tensor.hpp"

T2_NAMESPACE_BEGIN

class workspace {
public:
    std::size_t capacity() const noexcept { return buffer_.size(); }

    template <class Carve>
    void layout(Carve&& carve) {
        counter count;
        carve(count);
        if (count.used > buffer_.size()) {
            buffer_ = aligned_buffer<float>(); // free first: the peak is the new size, not both
            buffer_ = aligned_buffer<float>(count.used, uninitialized);
        }
        carver take{buffer_.data()};
        carve(take);
    }

private:
    static constexpr std::size_t align_floats = tensor_alignment / sizeof(float);
    static constexpr std::size_t rounded(std::size_t n) noexcept {
        return (n + align_floats - 1) / align_floats * align_floats;
    }

    struct counter {
        std::size_t used = 0;
        template <class... I>
        tensor_view<float, dims<sizeof...(I)>> operator()(I... extents) {
            const dims<sizeof...(I)> shape(static_cast<std::size_t>(extents)...);
            used += rounded(t2::detail::checked_product(shape.all()));
            return {};
        }
    };
    struct carver {
        float* next;
        template <class... I>
        tensor_view<float, dims<sizeof...(I)>> operator()(I... extents) {
            const dims<sizeof...(I)> shape(static_cast<std::size_t>(extents)...);
            float* data = next;
            next += rounded(t2::detail::checked_product(shape.all()));
            return {data, shape};
        }
    };

    aligned_buffer<float> buffer_;
};

T2_NAMESPACE_END
