#pragma once
// Rotary position embeddings (RoPE, Su et al. 2021), applied in place.
//
//   x[T × (n_heads · head_dim)], positions[T] (or start, start + 1, ...)
//   for every row t, head h and pair i < head_dim/2, with angle = positions[t] · θ^(−2i/head_dim):
//     (a, b) <- (a cos − b sin, a sin + b cos)
//   where the pair (a, b) is, within the head,
//     interleaved: (2i, 2i + 1)         llama2.c, GGUF / llama.cpp, Meta's original Llama
//     halves:      (i, i + head_dim/2)  Hugging Face transformers ("rotate_half")
//
// rope_backward applies the transpose of the same rotations, a rotation by −angle, to a
// gradient in place (the rotation is orthogonal, so its transpose is its inverse).
//
// A checkpoint converted between the two conventions has its q/k projection rows permuted
// to match, so the layout must follow the checkpoint format, not the model family.
//
// Angles are computed in f32 exactly as llama2.c and Hugging Face compute them
// (inv_freq = 1 / θ^(2i/head_dim), angle = f32(pos) · inv_freq), so their absolute error
// grows with the position (about pos · 2^-24 radians); simd<Arch> evaluates cos and sin
// with xsimd's polynomials, within a few ulp of the C library's.
#include <algorithm>
#include <array>
#include <cmath>
#include <complex>
#include <cstddef>
#include <span>
#include <vector>

#include "t2/core/tensor.hpp"
#include "t2/exec/scalar.hpp"
#include "t2/exec/simd.hpp"
#include "t2/exec/threads.hpp"
#include "t2/ops/detail/kernel_support.hpp"
#include "t2/ops/detail/parallel.hpp"

T2_NAMESPACE_BEGIN
namespace ops {

// Which elements of a head form a rotated pair (see the top of this file).
enum class rope_layout { interleaved, halves };

// The rotary embedding of a model: part of its configuration, shared by q and k.
struct rope_config {
    std::size_t head_dim = 0;                      // even; x's columns are whole heads
    float theta = 10000.f;                         // the base (Llama 3: 500000)
    rope_layout layout = rope_layout::interleaved; // follow the checkpoint format
};

namespace detail {

// Row t's position: list[t], or start + t when there is no list.
struct rope_positions {
    const std::size_t* list = nullptr;
    std::size_t start = 0;

    std::size_t operator[](std::size_t t) const noexcept { return list ? list[t] : start + t; }
    // The positions of rows [t, ...).
    rope_positions from(std::size_t t) const noexcept {
        return list ? rope_positions{list + t, 0} : rope_positions{nullptr, start + t};
    }
};

// n floats, inline up to N and on the heap beyond: per-call scratch sized by head_dim, so
// that decoding a token allocates nothing for every model t2 reads (head_dim ≤ 512).
template <std::size_t N>
class small_floats {
public:
    explicit small_floats(std::size_t n) {
        if (n > N)
            heap_.resize(n);
    }
    small_floats(const small_floats&) = delete;
    small_floats& operator=(const small_floats&) = delete;

    float* data() noexcept { return heap_.empty() ? inline_.data() : heap_.data(); }
    const float* data() const noexcept { return heap_.empty() ? inline_.data() : heap_.data(); }
    float operator[](std::size_t i) const noexcept { return data()[i]; }

private:
    std::array<float, N> inline_;
    std::vector<float> heap_;
};

// inv_freq[i] = 1 / θ^(2i/head_dim) for i < head_dim/2, in llama2.c's f32 arithmetic.
struct rope_frequencies : small_floats<256> {
    explicit rope_frequencies(const rope_config& cfg) : small_floats(cfg.head_dim / 2) {
        for (std::size_t i = 0; i < cfg.head_dim / 2; ++i)
            data()[i] = 1.f / std::pow(cfg.theta, static_cast<float>(2 * i) / static_cast<float>(cfg.head_dim));
    }
};

inline void rope_rotate(float& a, float& b, float c, float s) noexcept {
    const float a0 = a, b0 = b;
    a = a0 * c - b0 * s;
    b = a0 * s + b0 * c;
}

// The pair (a, b) of pair index i within a head.
inline void rope_pair_offsets(rope_layout layout, std::size_t half, std::size_t i, std::size_t& a,
                              std::size_t& b) noexcept {
    a = layout == rope_layout::interleaved ? 2 * i : i;
    b = layout == rope_layout::interleaved ? 2 * i + 1 : i + half;
}

inline void rope(const exec::scalar&, float* x, std::size_t rows, std::size_t cols,
                 rope_positions positions, const rope_config& cfg) {
    const std::size_t half = cfg.head_dim / 2;
    const rope_frequencies inv_freq(cfg);
    for (std::size_t t = 0; t < rows; ++t) {
        const float pos = static_cast<float>(positions[t]);
        for (std::size_t i = 0; i < half; ++i) {
            const float angle = pos * inv_freq[i];
            const float c = std::cos(angle), s = std::sin(angle);
            std::size_t a, b;
            rope_pair_offsets(cfg.layout, half, i, a, b);
            for (std::size_t h = 0; h < cols; h += cfg.head_dim)
                rope_rotate(x[t * cols + h + a], x[t * cols + h + b], c, s);
        }
    }
}

#if T2_ENABLE_SIMD
template <class Arch>
void rope(const exec::simd<Arch>&, float* x, std::size_t rows, std::size_t cols,
          rope_positions positions, const rope_config& cfg) {
    using batch = xsimd::batch<float, Arch>;
    using cbatch = xsimd::batch<std::complex<float>, Arch>;
    constexpr std::size_t lanes = batch::size;
    const std::size_t half = cfg.head_dim / 2, body = half / lanes * lanes;
    const rope_frequencies inv_freq(cfg);
    // cos and sin of row t's angles, computed once and used by every head of the row.
    small_floats<512> cos_sin(2 * half);
    float* cos_t = cos_sin.data();
    float* sin_t = cos_sin.data() + half;
    for (std::size_t t = 0; t < rows; ++t) {
        const batch pos(static_cast<float>(positions[t]));
        for (std::size_t i = 0; i < body; i += lanes) {
            const auto sc = xsimd::sincos(pos * batch::load_unaligned(inv_freq.data() + i));
            sc.second.store_unaligned(cos_t + i);
            sc.first.store_unaligned(sin_t + i);
        }
        if (body < half) {
            const auto sc =
                xsimd::sincos(pos * load_partial<Arch>(inv_freq.data() + body, half - body, 0.f));
            store_partial<Arch>(sc.second, cos_t + body, half - body);
            store_partial<Arch>(sc.first, sin_t + body, half - body);
        }
        float* row = x + t * cols;
        // Frequencies outer, heads inner: each cos/sin batch is loaded once per row.
        for (std::size_t i = 0; i < body; i += lanes) {
            const batch c = batch::load_unaligned(cos_t + i);
            const batch s = batch::load_unaligned(sin_t + i);
            if (cfg.layout == rope_layout::interleaved) {
                // A complex load splits `lanes` pairs into their first and second elements.
                for (std::size_t h = 0; h < cols; h += cfg.head_dim) {
                    auto* pairs = reinterpret_cast<std::complex<float>*>(row + h) + i;
                    const cbatch z = cbatch::load_unaligned(pairs);
                    const batch a = z.real(), b = z.imag();
                    cbatch(xsimd::fms(a, c, b * s), xsimd::fma(a, s, b * c)).store_unaligned(pairs);
                }
            } else {
                for (std::size_t h = 0; h < cols; h += cfg.head_dim) {
                    float* first = row + h + i;
                    float* second = first + half;
                    const batch a = batch::load_unaligned(first);
                    const batch b = batch::load_unaligned(second);
                    xsimd::fms(a, c, b * s).store_unaligned(first);
                    xsimd::fma(a, s, b * c).store_unaligned(second);
                }
            }
        }
        for (std::size_t h = 0; h < cols; h += cfg.head_dim)
            for (std::size_t i = body; i < half; ++i) {
                std::size_t a, b;
                rope_pair_offsets(cfg.layout, half, i, a, b);
                rope_rotate(row[h + a], row[h + b], cos_t[i], sin_t[i]);
            }
    }
}
#endif

template <class Inner>
void rope(const exec::threads<Inner>& ex, float* x, std::size_t rows, std::size_t cols,
          rope_positions positions, const rope_config& cfg) {
    for_rows(ex, rows, cols, stream_grain, [&](std::size_t r0, std::size_t r1) {
        detail::rope(ex.inner(), x + r0 * cols, r1 - r0, cols, positions.from(r0), cfg);
    });
}

// Rotation by −angle, for every executor: (a, b) <- (a cos + b sin, −a sin + b cos), with
// the forward's f32 angles and the C library's cos and sin.
template <exec::cpu_executor E>
void rope_backward(const E& ex, float* x, std::size_t rows, std::size_t cols,
                   rope_positions positions, const rope_config& cfg) {
    const std::size_t half = cfg.head_dim / 2;
    const rope_frequencies inv_freq(cfg);
    for_row_ranges(ex, rows, cols, stream_grain, [&](std::size_t r0, std::size_t r1) {
        for (std::size_t t = r0; t < r1; ++t) {
            const float pos = static_cast<float>(positions[t]);
            float* row = x + t * cols;
            for (std::size_t i = 0; i < half; ++i) {
                const float angle = pos * inv_freq[i];
                const float c = std::cos(angle), s = std::sin(angle);
                std::size_t a, b;
                rope_pair_offsets(cfg.layout, half, i, a, b);
                for (std::size_t h = 0; h < cols; h += cfg.head_dim)
                    rope_rotate(row[h + a], row[h + b], c, -s);
            }
        }
    });
}

inline void check_rope(matrix_view<float> x, const rope_config& cfg) {
    T2_CHECK(cfg.head_dim > 0 && cfg.head_dim % 2 == 0, "rope: head_dim is ", cfg.head_dim,
             "; it must be even and positive (dimensions rotate in pairs)");
    T2_CHECK(x.extent(1) % cfg.head_dim == 0, "rope: x is ", x.shape(), " but head_dim is ",
             cfg.head_dim, "; a row must hold whole heads (n_heads · head_dim columns)");
    T2_CHECK(std::isfinite(cfg.theta) && cfg.theta > 0.f, "rope: theta is ", cfg.theta,
             "; it must be positive and finite");
    T2_CHECK(cfg.layout == rope_layout::interleaved || cfg.layout == rope_layout::halves,
             "rope: unknown layout ", static_cast<int>(cfg.layout));
}

} // namespace detail

// Rotates every head of row t of x by position positions[t], in place.
template <exec::cpu_executor E>
void rope(const E& ex, matrix_view<float> x, std::span<const std::size_t> positions,
          const rope_config& config) {
    detail::check_rope(x, config);
    T2_CHECK(positions.size() == x.extent(0), "rope: x is ", x.shape(), " but there are ",
             positions.size(), " positions; give one per row");
    detail::rope(ex, x.data(), x.extent(0), x.extent(1),
                 detail::rope_positions{positions.data(), 0}, config);
}

// Rotates every head of row t of x by position start_position + t, in place.
template <exec::cpu_executor E>
void rope(const E& ex, matrix_view<float> x, std::size_t start_position,
          const rope_config& config) {
    detail::check_rope(x, config);
    detail::rope(ex, x.data(), x.extent(0), x.extent(1),
                 detail::rope_positions{nullptr, start_position}, config);
}

// Backward of rope(ex, x, positions, config): dx = Rᵀ dy, in place on the gradient dx
// (dy on entry). Rotating by −angle undoes the forward, so it also recovers x from rope(x).
template <exec::cpu_executor E>
void rope_backward(const E& ex, matrix_view<float> dx, std::span<const std::size_t> positions,
                   const rope_config& config) {
    detail::check_rope(dx, config);
    T2_CHECK(positions.size() == dx.extent(0), "rope_backward: dx is ", dx.shape(),
             " but there are ", positions.size(), " positions; give one per row");
    detail::rope_backward(ex, dx.data(), dx.extent(0), dx.extent(1),
                          detail::rope_positions{positions.data(), 0}, config);
}

// Backward of rope(ex, x, start_position, config), in place on the gradient dx.
template <exec::cpu_executor E>
void rope_backward(const E& ex, matrix_view<float> dx, std::size_t start_position,
                   const rope_config& config) {
    detail::check_rope(dx, config);
    detail::rope_backward(ex, dx.data(), dx.extent(0), dx.extent(1),
                          detail::rope_positions{nullptr, start_position}, config);
}

} // namespace ops
T2_NAMESPACE_END
