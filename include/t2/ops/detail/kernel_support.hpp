#pragma once
// What the vector and row kernels (blas1, elementwise, activations, softmax, norms, rope,
// reductions) share: shape and aliasing checks, the way threads<Inner> splits their work,
// and the few SIMD helpers xsimd 8 lacks.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "t2/core/error.hpp"
#include "t2/core/tensor.hpp"
#include "t2/exec/simd.hpp"
#include "t2/exec/threads.hpp"

T2_NAMESPACE_BEGIN
namespace ops::detail {

// ---- per-thread scratch ------------------------------------------------------------------

// n elements of this thread's buffer for Use (a tag type naming the one place that holds
// it), grown and never shrunk, so that a kernel called again with sizes it has seen
// allocates nothing (as gemm's packing buffers). A span taken on the calling thread and
// captured into a parallel body stays the calling thread's.
template <class Use, class T>
std::span<T> thread_buffer(std::size_t n) {
    thread_local std::vector<T> buffer;
    if (buffer.size() < n)
        buffer.resize(n);
    return {buffer.data(), n};
}

// ---- checks ---------------------------------------------------------------------------

template <class T, class E, class U, class F>
void check_same_shape(const char* op, const char* a_name, const tensor_view<T, E>& a,
                      const char* b_name, const tensor_view<U, F>& b) {
    T2_CHECK(a.shape() == b.shape(), op, ": ", a_name, " is ", a.shape(), " but ", b_name, " is ",
             b.shape(), "; they must have the same shape");
}

// An output may be exactly an input (in place) or lie apart from it. A partial overlap
// would read elements the kernel has already overwritten, so it is refused rather than
// silently giving a wrong answer.
template <class T, class E, class U, class F>
void check_no_partial_overlap(const char* op, const char* in_name, const tensor_view<T, E>& in,
                              const char* out_name, const tensor_view<U, F>& out) {
    if (in.empty() || out.empty() ||
        static_cast<const void*>(in.data()) == static_cast<const void*>(out.data()))
        return;
    const auto in0 = reinterpret_cast<std::uintptr_t>(in.data());
    const auto in1 = in0 + in.size() * sizeof(T);
    const auto out0 = reinterpret_cast<std::uintptr_t>(out.data());
    const auto out1 = out0 + out.size() * sizeof(U);
    T2_CHECK(in1 <= out0 || out1 <= in0, op, ": ", out_name, " partially overlaps ", in_name,
             "; pass the same tensor for in-place use, or disjoint memory");
}

// For outputs that must not share any memory with an input (a reduction's y[r] would land
// on elements of x that another row still has to read).
inline void check_disjoint(const char* op, const char* in_name, const void* in,
                           std::size_t in_bytes, const char* out_name, const void* out,
                           std::size_t out_bytes) {
    if (in_bytes == 0 || out_bytes == 0)
        return;
    const auto in0 = reinterpret_cast<std::uintptr_t>(in);
    const auto out0 = reinterpret_cast<std::uintptr_t>(out);
    T2_CHECK(in0 + in_bytes <= out0 || out0 + out_bytes <= in0, op, ": ", out_name, " overlaps ",
             in_name, "; the output needs memory of its own");
}

template <class T, class E, class U, class F>
void check_disjoint(const char* op, const char* in_name, const tensor_view<T, E>& in,
                    const char* out_name, const tensor_view<U, F>& out) {
    check_disjoint(op, in_name, in.data(), in.size() * sizeof(T), out_name, out.data(),
                   out.size() * sizeof(U));
}

// ---- how threads<Inner> splits the work -------------------------------------------------

// Below these sizes (in elements) threads<Inner> runs on the calling thread alone: waking
// a worker costs a few microseconds, about what one core needs to stream 32 Ki floats
// (memory-bound kernels) or to evaluate exp/erf on 4 Ki of them (transcendental kernels).
inline constexpr std::size_t stream_grain = std::size_t{1} << 15;
inline constexpr std::size_t compute_grain = std::size_t{1} << 12;

// Calls body(begin, end) over the elements [0, n). Pieces start on multiples of 64
// elements (256 bytes), so with aligned data no two threads write the same cache line and
// every piece but the last has no SIMD tail.
template <class Inner, class Body>
void for_elements(const exec::threads<Inner>& ex, std::size_t n, std::size_t grain, Body&& body) {
    constexpr std::size_t block = 64;
    if (ex.concurrency() == 1 || n <= grain) {
        body(std::size_t{0}, n);
        return;
    }
    const std::size_t blocks = (n + block - 1) / block;
    ex.parallel_for(
        blocks, std::max<std::size_t>(1, grain / block),
        [&](std::size_t b0, std::size_t b1) { body(b0 * block, std::min(n, b1 * block)); });
}

// Calls body(begin, end) over the rows [0, rows) of a rows × cols matrix, in pieces of at
// least `grain` elements.
template <class Inner, class Body>
void for_rows(const exec::threads<Inner>& ex, std::size_t rows, std::size_t cols, std::size_t grain,
              Body&& body) {
    const std::size_t grain_rows = std::max<std::size_t>(1, grain / std::max<std::size_t>(cols, 1));
    if (ex.concurrency() == 1 || rows <= grain_rows) {
        body(std::size_t{0}, rows);
        return;
    }
    ex.parallel_for(rows, grain_rows, body);
}

// Reductions cut [0, n) into pieces of a fixed size, whatever the thread count, and
// combine the partial results in piece order: the result is then the same for 1, 2 or N
// threads, and equal to the inner executor's for n <= reduce_piece.
inline constexpr std::size_t reduce_piece = std::size_t{1} << 15;

template <class T, class Inner, class Map, class Combine>
T reduce_pieces(const exec::threads<Inner>& ex, std::size_t n, Map&& map, Combine&& combine) {
    const std::size_t pieces = (n + reduce_piece - 1) / reduce_piece;
    if (pieces <= 1)
        return map(std::size_t{0}, n);
    std::vector<T> partial(pieces);
    ex.parallel_for(pieces, 1, [&](std::size_t p0, std::size_t p1) {
        for (std::size_t p = p0; p < p1; ++p)
            partial[p] = map(p * reduce_piece, std::min(n, (p + 1) * reduce_piece));
    });
    T acc = partial[0];
    for (std::size_t p = 1; p < pieces; ++p)
        acc = combine(acc, partial[p]);
    return acc;
}

// ---- SIMD helpers -----------------------------------------------------------------------
#if T2_ENABLE_SIMD
// The first `count` (< lanes) elements of p, the other lanes set to `fill`. Tails go
// through the same batch code as the body, so an element's result does not depend on
// where it sits relative to the vector width.
template <class Arch>
xsimd::batch<float, Arch> load_partial(const float* p, std::size_t count, float fill) {
    constexpr std::size_t lanes = xsimd::batch<float, Arch>::size;
    alignas(64) float buf[lanes];
    for (std::size_t i = 0; i < lanes; ++i)
        buf[i] = i < count ? p[i] : fill;
    return xsimd::batch<float, Arch>::load_unaligned(buf);
}

template <class Arch>
void store_partial(const xsimd::batch<float, Arch>& b, float* p, std::size_t count) {
    constexpr std::size_t lanes = xsimd::batch<float, Arch>::size;
    alignas(64) float buf[lanes];
    b.store_unaligned(buf);
    std::copy_n(buf, count, p);
}

// xsimd 8 has no reduce_max (9.0 added it).
template <class Arch>
float reduce_max(const xsimd::batch<float, Arch>& b) {
#if XSIMD_VERSION_MAJOR >= 9
    return xsimd::reduce_max(b);
#else
    constexpr std::size_t lanes = xsimd::batch<float, Arch>::size;
    alignas(64) float buf[lanes];
    b.store_unaligned(buf);
    float m = buf[0];
    for (std::size_t i = 1; i < lanes; ++i)
        m = std::max(m, buf[i]);
    return m;
#endif
}

// y[i] = f(a[i]) for a batch-valued f.
template <class Arch, class F>
void simd_map(const float* a, float* y, std::size_t n, F&& f) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t lanes = batch::size;
    std::size_t i = 0;
    for (; i + lanes <= n; i += lanes)
        f(batch::load_unaligned(a + i)).store_unaligned(y + i);
    if (i < n)
        store_partial<Arch>(f(load_partial<Arch>(a + i, n - i, 0.f)), y + i, n - i);
}

// y[i] = f(a[i], b[i]) for a batch-valued f.
template <class Arch, class F>
void simd_map(const float* a, const float* b, float* y, std::size_t n, F&& f) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t lanes = batch::size;
    std::size_t i = 0;
    for (; i + lanes <= n; i += lanes)
        f(batch::load_unaligned(a + i), batch::load_unaligned(b + i)).store_unaligned(y + i);
    if (i < n)
        store_partial<Arch>(
            f(load_partial<Arch>(a + i, n - i, 0.f), load_partial<Arch>(b + i, n - i, 0.f)), y + i,
            n - i);
}

#endif // T2_ENABLE_SIMD

} // namespace ops::detail
T2_NAMESPACE_END
