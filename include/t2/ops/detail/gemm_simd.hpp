#pragma once
// The SIMD gemm: packed, cache-blocked, with a register-tile micro-kernel (the BLIS
// scheme: Goto & van de Geijn, "Anatomy of high-performance matrix multiplication", 2008),
// and a dot-product kernel for skinny x·Wᵀ products, which is what a transformer runs
// when it multiplies a few tokens by a weight matrix stored as W[N×K].
//
// All routines here take gemm_args (raw pointers with leading dimensions), so that the
// threads executor can hand each worker a sub-block of C without copying. beta == 0 never
// reads C (BLAS semantics: C may hold NaN or garbage).
#include "t2/config.hpp"

#if T2_ENABLE_SIMD
#include <algorithm>
#include <cstddef>
#include <xsimd/xsimd.hpp>
#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "t2/core/dtype.hpp"
#include "t2/core/memory.hpp"
#include "t2/exec/simd.hpp"
#include "t2/ops/detail/gemm_args.hpp"

T2_NAMESPACE_BEGIN
namespace ops::detail {

// L consecutive elements as an f32 batch: f32 loads directly; bf16 is widened (its bits
// are the top half of an f32), with one AVX-512/AVX2 instruction sequence where available.
template <class Arch>
T2_ALWAYS_INLINE xsimd::batch<float, Arch> load_f32(const float* p) {
    return xsimd::batch<float, Arch>::load_unaligned(p);
}
template <class Arch>
T2_ALWAYS_INLINE xsimd::batch<float, Arch> load_f32(const bf16* p) {
    using batch = xsimd::batch<float, Arch>;
#if defined(__AVX512F__)
    if constexpr (batch::size == 16) {
        const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        return batch(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)));
    }
#endif
#if defined(__AVX2__)
    if constexpr (batch::size == 8) {
        const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
        return batch(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16)));
    }
#endif
    alignas(tensor_alignment) float widened[batch::size];
    for (std::size_t i = 0; i < batch::size; ++i)
        widened[i] = to_f32(p[i]);
    return batch::load_aligned(widened);
}

// Register tile and cache blocks per architecture, chosen by measurement (see
// benchmarks/README.md). With 32 vector registers (AVX-512) a 10×2-vector tile leaves GCC
// enough registers to keep both B vectors live (12×2 made it spill one per iteration); with
// 16 registers (AVX2, SSE) the classic 6×2 tile. kc × nr of packed B per micro-panel stays in
// L1, mc × kc of packed A in L2, kc × nc of packed B in the last-level cache. The AVX2 blocks
// follow BLIS's Zen 3 tuning (mc 144, nc 4080: 216 KiB of A in a 512 KiB L2) with OpenBLAS's
// Haswell kc = 384, which passes over C fewer times than 256 (each k block updates all of C);
// on Zen 5 in AVX2 mode the variants tried (mc 96–192, kc 256–384) were within the noise.
template <class Arch>
struct gemm_blocking {
    static constexpr std::size_t lanes = xsimd::batch<float, Arch>::size;
    static constexpr std::size_t nv = 2;
    static constexpr std::size_t nr = nv * lanes;
    static constexpr std::size_t mr = lanes >= 16 ? 10 : 6;
    static constexpr std::size_t kc = 384;
    static constexpr std::size_t mc = lanes >= 16 ? mr * 16 : 144;
    static constexpr std::size_t nc = lanes >= 16 ? nr * 128 : 4080;
};

// Packs rows [i0, i0+m) × columns [k0, k0+kc) of op(A) into mr-row micro-panels, each
// stored k-major (kc × mr), zero-padding the last panel.
template <std::size_t MR, class TB>
void pack_a(const gemm_args<TB>& g, std::size_t i0, std::size_t m, std::size_t k0, std::size_t kc,
            float* T2_RESTRICT out) {
    for (std::size_t p = 0; p < m; p += MR) {
        const std::size_t rows = std::min(MR, m - p);
        if (!g.trans_a) {
            for (std::size_t kk = 0; kk < kc; ++kk) {
                for (std::size_t r = 0; r < rows; ++r)
                    out[kk * MR + r] = g.a[(i0 + p + r) * g.lda + k0 + kk];
                for (std::size_t r = rows; r < MR; ++r)
                    out[kk * MR + r] = 0.f;
            }
        } else if (rows == MR) {
            // A compile-time length: inline vector moves, not a library call per MR floats.
            for (std::size_t kk = 0; kk < kc; ++kk)
                std::copy_n(g.a + (k0 + kk) * g.lda + i0 + p, MR, out + kk * MR);
        } else {
            for (std::size_t kk = 0; kk < kc; ++kk) {
                const float* src = g.a + (k0 + kk) * g.lda + i0 + p;
                for (std::size_t r = 0; r < rows; ++r)
                    out[kk * MR + r] = src[r];
                for (std::size_t r = rows; r < MR; ++r)
                    out[kk * MR + r] = 0.f;
            }
        }
        out += kc * MR;
    }
}

// out[kk·NR + j] = src[j·ld + kk] for kk < kc, j < cols, zero for cols ≤ j < NR.
// With AVX the bulk goes through 8×8 register transposes (rows of src are read a line at a
// time and out is written in full vectors); element-wise loops take the edges. This packing
// is on the critical path of x·Wᵀ with W stored [N×K].
template <std::size_t NR, class TB>
void pack_transposed(const TB* T2_RESTRICT src, std::size_t ld, std::size_t kc, std::size_t cols,
                     float* T2_RESTRICT out) {
    std::size_t j = 0;
#if defined(__AVX__)
    if constexpr (std::is_same_v<TB, float>)
    for (; j + 8 <= cols; j += 8) {
        std::size_t kk = 0;
        for (; kk + 8 <= kc; kk += 8) {
            const float* s = src + j * ld + kk;
            __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ld),
                   r2 = _mm256_loadu_ps(s + 2 * ld), r3 = _mm256_loadu_ps(s + 3 * ld),
                   r4 = _mm256_loadu_ps(s + 4 * ld), r5 = _mm256_loadu_ps(s + 5 * ld),
                   r6 = _mm256_loadu_ps(s + 6 * ld), r7 = _mm256_loadu_ps(s + 7 * ld);
            const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
                         t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3),
                         t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
                         t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
            const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
                         u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
                         u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
                         u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
            r0 = _mm256_permute2f128_ps(u0, u4, 0x20);
            r1 = _mm256_permute2f128_ps(u1, u5, 0x20);
            r2 = _mm256_permute2f128_ps(u2, u6, 0x20);
            r3 = _mm256_permute2f128_ps(u3, u7, 0x20);
            r4 = _mm256_permute2f128_ps(u0, u4, 0x31);
            r5 = _mm256_permute2f128_ps(u1, u5, 0x31);
            r6 = _mm256_permute2f128_ps(u2, u6, 0x31);
            r7 = _mm256_permute2f128_ps(u3, u7, 0x31);
            float* d = out + kk * NR + j;
            _mm256_storeu_ps(d, r0);
            _mm256_storeu_ps(d + NR, r1);
            _mm256_storeu_ps(d + 2 * NR, r2);
            _mm256_storeu_ps(d + 3 * NR, r3);
            _mm256_storeu_ps(d + 4 * NR, r4);
            _mm256_storeu_ps(d + 5 * NR, r5);
            _mm256_storeu_ps(d + 6 * NR, r6);
            _mm256_storeu_ps(d + 7 * NR, r7);
        }
        for (; kk < kc; ++kk)
            for (std::size_t t = 0; t < 8; ++t)
                out[kk * NR + j + t] = src[(j + t) * ld + kk];
    }
#endif
    // Other storage types, and the edges: a cache line of each row at a time.
    constexpr std::size_t line = 16;
    for (std::size_t k1 = 0; k1 < kc; k1 += line) {
        const std::size_t kn = std::min(line, kc - k1);
        for (std::size_t jj = j; jj < cols; ++jj)
            for (std::size_t kk = k1; kk < k1 + kn; ++kk)
                out[kk * NR + jj] = to_f32(src[jj * ld + kk]);
    }
    for (std::size_t kk = 0; kk < kc; ++kk)
        for (std::size_t jj = cols; jj < NR; ++jj)
            out[kk * NR + jj] = 0.f;
}

// Packs rows [k0, k0+kc) × columns [j0, j0+n) of op(B) into nr-column micro-panels, each
// stored k-major (kc × nr), zero-padding the last panel.
template <std::size_t NR, class TB>
void pack_b(const gemm_args<TB>& g, std::size_t k0, std::size_t kc, std::size_t j0, std::size_t n,
            float* T2_RESTRICT out) {
    for (std::size_t p = 0; p < n; p += NR) {
        const std::size_t cols = std::min(NR, n - p);
        if (!g.trans_b && cols == NR) {
            // A compile-time length: inline vector moves, not a library call per NR floats.
            for (std::size_t kk = 0; kk < kc; ++kk) {
                const TB* src = g.b + (k0 + kk) * g.ldb + j0 + p;
                float* dst = out + kk * NR;
                for (std::size_t j = 0; j < NR; ++j)
                    dst[j] = to_f32(src[j]);
            }
        } else if (!g.trans_b) {
            for (std::size_t kk = 0; kk < kc; ++kk) {
                const TB* src = g.b + (k0 + kk) * g.ldb + j0 + p;
                float* dst = out + kk * NR;
                for (std::size_t j = 0; j < cols; ++j)
                    dst[j] = to_f32(src[j]);
                for (std::size_t j = cols; j < NR; ++j)
                    dst[j] = 0.f;
            }
        } else {
            // Column j of the panel is row j0+p+j of the stored B: a transpose.
            pack_transposed<NR>(g.b + (j0 + p) * g.ldb + k0, g.ldb, kc, cols, out);
        }
        out += kc * NR;
    }
}

// Where the micro-kernel's broadcast operand comes from: a packed kc × MR micro-panel of A,
// or MR rows of a matrix read in place (the rows of W in gemm_few_rows).
template <std::size_t MR>
struct packed_panel {
    const float* T2_RESTRICT p;
    T2_ALWAYS_INLINE float operator()(std::size_t kk, std::size_t r) const { return p[kk * MR + r]; }
    T2_ALWAYS_INLINE void prefetch(std::size_t) const {}
};
// `next` are the rows the following tile will read. Each tile reads its MR rows as MR
// interleaved streams of a few cache lines each, too short for the hardware prefetcher to
// ramp up on: W, streamed from memory once per decoding step, arrived at a third of the
// bandwidth a single row (gemv) reaches. So while one tile computes, it fetches the next
// tile's lines at the same k offset.
template <std::size_t MR>
struct row_pointers {
    const float* rows[MR];
    const float* next[MR];
    T2_ALWAYS_INLINE float operator()(std::size_t kk, std::size_t r) const { return rows[r][kk]; }
    T2_ALWAYS_INLINE void prefetch(std::size_t kk) const {
#pragma GCC unroll 16
        for (std::size_t r = 0; r < MR; ++r)
            __builtin_prefetch(next[r] + kk);
    }
};

// A tile T (m ≤ MR rows, n ≤ NR columns) = Σ_kk a(kk, r) · Bp[kk, j] over kc, where Bp is a
// packed kc × NR micro-panel, stored as alpha · T + beta · C with T(r, j) at
// c[r·ldc + j]; or, with `transposed`, at c[j·ldc + r].
template <class Arch, std::size_t MR, std::size_t NV, bool transposed = false, class ASource>
T2_ALWAYS_INLINE void micro_kernel(std::size_t kc, const ASource& a, const float* T2_RESTRICT bp, float* c,
                                   std::size_t ldc, std::size_t m, std::size_t n, float alpha, float beta) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t L = batch::size;
    constexpr std::size_t NR = NV * L;
    static_assert(NV == 1 || NV == 2, "the tile is one or two vectors wide");

    // The tile of C is read only after the k loop; fetching it now hides the cache misses
    // of a C too large for the caches (each k block of a large product updates all of C).
    if constexpr (!transposed) {
#pragma GCC unroll 16
        for (std::size_t r = 0; r < MR; ++r)
            if (r < m) {
                __builtin_prefetch(c + r * ldc, 1);
                __builtin_prefetch(c + r * ldc + NR - 1, 1);
            }
    }
    batch acc[MR][NV];
#pragma GCC unroll 16
    for (std::size_t r = 0; r < MR; ++r)
#pragma GCC unroll 2
        for (std::size_t v = 0; v < NV; ++v)
            acc[r][v] = batch(0.f);
    // Named B vectors rather than an array: GCC keeps them in registers then.
    constexpr std::size_t line = 64 / sizeof(float);
    for (std::size_t k1 = 0; k1 < kc; k1 += line) {
        a.prefetch(k1);
        const std::size_t k_end = std::min(kc, k1 + line);
        if constexpr (NV == 2) {
            for (std::size_t kk = k1; kk < k_end; ++kk) {
                const batch b0 = batch::load_aligned(bp + kk * NR);
                const batch b1 = batch::load_aligned(bp + kk * NR + L);
#pragma GCC unroll 16
                for (std::size_t r = 0; r < MR; ++r) {
                    const batch ar(a(kk, r));
                    acc[r][0] = xsimd::fma(ar, b0, acc[r][0]);
                    acc[r][1] = xsimd::fma(ar, b1, acc[r][1]);
                }
            }
        } else {
            for (std::size_t kk = k1; kk < k_end; ++kk) {
                const batch b0 = batch::load_aligned(bp + kk * NR);
#pragma GCC unroll 16
                for (std::size_t r = 0; r < MR; ++r)
                    acc[r][0] = xsimd::fma(batch(a(kk, r)), b0, acc[r][0]);
            }
        }
    }

    const batch va(alpha), vb(beta);
    if (!transposed && m == MR && n == NR) {
#pragma GCC unroll 16
        for (std::size_t r = 0; r < MR; ++r)
#pragma GCC unroll 4
            for (std::size_t v = 0; v < NV; ++v) {
                float* dst = c + r * ldc + v * L;
                batch out = acc[r][v] * va;
                if (beta != 0.f)
                    out = xsimd::fma(vb, batch::load_unaligned(dst), out);
                out.store_unaligned(dst);
            }
        return;
    }
    alignas(tensor_alignment) float tile[MR * NR];
    for (std::size_t r = 0; r < MR; ++r)
        for (std::size_t v = 0; v < NV; ++v)
            acc[r][v].store_aligned(tile + r * NR + v * L);
    for (std::size_t r = 0; r < m; ++r)
        for (std::size_t j = 0; j < n; ++j) {
            float& dst = transposed ? c[j * ldc + r] : c[r * ldc + j];
            const float out = alpha * tile[r * NR + j];
            dst = beta != 0.f ? beta * dst + out : out;
        }
}

// Rows [i0, i0+m) of C's column block [j0, j0+nc) for one k block: packs that slice of A
// and runs the micro-kernel over it against the already packed B block.
template <class Arch, class TB>
void gemm_row_blocks(const gemm_args<TB>& g, std::size_t i0, std::size_t m, std::size_t j0, std::size_t nc,
                     std::size_t k0, std::size_t kc, const float* packed_b, float* packed_a) {
    using blk = gemm_blocking<Arch>;
    // The first k block applies the caller's beta; later ones accumulate.
    const float beta = k0 == 0 ? g.beta : 1.f;
    for (std::size_t ib = i0; ib < i0 + m; ib += blk::mc) {
        const std::size_t mc = std::min(blk::mc, i0 + m - ib);
        pack_a<blk::mr>(g, ib, mc, k0, kc, packed_a);
        for (std::size_t jr = 0; jr < nc; jr += blk::nr) {
            const float* bp = packed_b + (jr / blk::nr) * kc * blk::nr;
            for (std::size_t ir = 0; ir < mc; ir += blk::mr) {
                const float* ap = packed_a + (ir / blk::mr) * kc * blk::mr;
                micro_kernel<Arch, blk::mr, blk::nv>(kc, packed_panel<blk::mr>{ap}, bp,
                                                     g.c + (ib + ir) * g.ldc + j0 + jr, g.ldc,
                                                     std::min(blk::mr, mc - ir), std::min(blk::nr, nc - jr),
                                                     g.alpha, beta);
            }
        }
    }
}

inline constexpr std::size_t round_up(std::size_t x, std::size_t to) { return (x + to - 1) / to * to; }

// Floats of one packed A block (kc × mc, rounded so that what follows stays aligned).
template <class Arch>
std::size_t packed_a_floats(std::size_t m, std::size_t k) {
    using blk = gemm_blocking<Arch>;
    return round_up(std::min(blk::kc, k) * round_up(std::min(blk::mc, m), blk::mr), tensor_alignment / sizeof(float));
}

// Floats of one packed B block (kc × nc, whole micro-panels).
template <class Arch>
std::size_t packed_b_floats(std::size_t n, std::size_t k) {
    using blk = gemm_blocking<Arch>;
    return std::min(blk::kc, k) * round_up(std::min(blk::nc, n), blk::nr);
}

// The calling thread's packing memory, kept for its next gemm: a decoding step runs hundreds
// of gemms, and allocating their buffers each time cost page faults on every call. Like
// OpenBLAS's buffer pool it holds capacity, not state — no result depends on it — and one
// gemm at a time uses it on a thread (gemm never nests on one thread). It grows to powers of
// two from 256 KiB, so that attention's products, whose k grows by one per decoded token,
// do not reallocate every token.
inline float* packing_buffer(std::size_t floats) {
    thread_local aligned_buffer<float> buffer;
    if (buffer.size() < floats) {
        std::size_t size = std::size_t{1} << 16;
        while (size < floats)
            size *= 2;
        buffer = aligned_buffer<float>(); // free first: the peak is the new size, not both
        buffer = aligned_buffer<float>(size, uninitialized);
    }
    return buffer.data();
}

// Blocked, packed gemm on one thread.
template <class Arch, class TB>
void gemm_packed(const gemm_args<TB>& g) {
    using blk = gemm_blocking<Arch>;
    const std::size_t a_size = packed_a_floats<Arch>(g.m, g.k);
    const std::size_t b_size = packed_b_floats<Arch>(g.n, g.k);
    float* packed_a = packing_buffer(a_size + b_size);
    float* packed_b = packed_a + a_size;
    for (std::size_t j0 = 0; j0 < g.n; j0 += blk::nc) {
        const std::size_t nc = std::min(blk::nc, g.n - j0);
        for (std::size_t k0 = 0; k0 < g.k; k0 += blk::kc) {
            const std::size_t kc = std::min(blk::kc, g.k - k0);
            pack_b<blk::nr>(g, k0, kc, j0, nc, packed_b);
            gemm_row_blocks<Arch>(g, 0, g.m, j0, nc, k0, kc, packed_b, packed_a);
        }
    }
}

// C[m×n] = alpha · A[m×K] · W[n×K]ᵀ + beta · C for a few rows of A (m ≤ nr, one register
// tile wide), with W f32: the roles of the packed gemm swapped. Aᵀ is packed (kc × nr, cheap:
// A is small) and W is read in place, MR rows at a time broadcast along k, so W, by far the
// larger operand, is never copied; each micro-tile is Cᵀ and is stored transposed. Packing W
// cost as much as the arithmetic at 16 rows. The k block is long (up to 4096: Aᵀ then takes
// 256 KiB of L2 with AVX2) so that each W row is read as one long sequential stretch: with
// the packed gemm's kc = 384 the six short row segments per tile defeated the hardware
// prefetcher, 55–65 against 84–86 GFLOP/s at W = 4096×2048–4096 on one Zen 5 core.
template <class Arch, std::size_t MR, std::size_t NV>
void gemm_few_rows_tiles(const gemm_args<float>& g) {
    constexpr std::size_t block_k = 4096, NR = NV * xsimd::batch<float, Arch>::size;
    float* packed_at = packing_buffer(std::min(block_k, g.k) * NR);
    for (std::size_t k0 = 0; k0 < g.k; k0 += block_k) {
        const std::size_t kc = std::min(block_k, g.k - k0);
        for (std::size_t kk = 0; kk < kc; ++kk) {
            for (std::size_t i = 0; i < g.m; ++i)
                packed_at[kk * NR + i] = g.a[i * g.lda + k0 + kk];
            for (std::size_t i = g.m; i < NR; ++i)
                packed_at[kk * NR + i] = 0.f;
        }
        const float beta = k0 == 0 ? g.beta : 1.f;
        for (std::size_t j0 = 0; j0 < g.n; j0 += MR) {
            const std::size_t rows = std::min(MR, g.n - j0);
            row_pointers<MR> w;
            const std::size_t next_j0 = j0 + MR < g.n ? j0 + MR : j0;
            const std::size_t next_rows = std::min(MR, g.n - next_j0);
            for (std::size_t r = 0; r < MR; ++r) { // rows past the end repeat the last one
                w.rows[r] = g.b + (j0 + std::min(r, rows - 1)) * g.ldb + k0;
                w.next[r] = g.b + (next_j0 + std::min(r, next_rows - 1)) * g.ldb + k0;
            }
            micro_kernel<Arch, MR, NV, true>(kc, w, packed_at, g.c + j0, g.ldc, rows, g.m, g.alpha, beta);
        }
    }
}

// With 16-lane vectors (AVX-512) up to 16 rows fit one vector: a tile one vector wide and
// more W rows tall does no work on padding (a two-vector tile did half its FMAs on zeros at
// 16 rows).
template <class Arch>
void gemm_few_rows(const gemm_args<float>& g) {
    using blk = gemm_blocking<Arch>;
    if constexpr (blk::lanes >= 16)
        if (g.m <= blk::lanes)
            return gemm_few_rows_tiles<Arch, blk::mr, 1>(g);
    gemm_few_rows_tiles<Arch, blk::mr, blk::nv>(g);
}

// The packed gemm on `threads` threads that share each packed block of B (BLIS's scheme):
// for every kc × nc block of op(B), the threads first pack a share of its micro-panels each,
// then each computes its own rows of C against the whole shared block, packing its own A.
// B is packed once in all instead of once per thread, and each element of C is summed in the
// same order as on one thread (bitwise the same result). run(n, f) calls f(0..n-1) in
// parallel and returns when all are done (a thread_pool's run).
template <class Arch, class TB, class Run>
void gemm_packed_shared_b(const gemm_args<TB>& g, std::size_t threads, Run&& run) {
    using blk = gemm_blocking<Arch>;
    // Rows per thread: whole micro-tiles, as even as they come.
    const std::size_t rows = round_up((g.m + threads - 1) / threads, blk::mr);
    const std::size_t a_size = packed_a_floats<Arch>(std::min(rows, g.m), g.k);
    const std::size_t b_size = packed_b_floats<Arch>(g.n, g.k);
    float* workspace = packing_buffer(threads * a_size + b_size);
    float* packed_b = workspace + threads * a_size;
    for (std::size_t j0 = 0; j0 < g.n; j0 += blk::nc) {
        const std::size_t nc = std::min(blk::nc, g.n - j0);
        const std::size_t panels = (nc + blk::nr - 1) / blk::nr;
        for (std::size_t k0 = 0; k0 < g.k; k0 += blk::kc) {
            const std::size_t kc = std::min(blk::kc, g.k - k0);
            run(threads, [&](std::size_t t) {
                const std::size_t p0 = panels * t / threads, p1 = panels * (t + 1) / threads;
                if (p0 < p1)
                    pack_b<blk::nr>(g, k0, kc, j0 + p0 * blk::nr, std::min(nc, p1 * blk::nr) - p0 * blk::nr,
                                    packed_b + p0 * kc * blk::nr);
            });
            run(threads, [&](std::size_t t) {
                const std::size_t i0 = t * rows;
                if (i0 < g.m)
                    gemm_row_blocks<Arch>(g, i0, std::min(rows, g.m - i0), j0, nc, k0, kc, packed_b,
                                          workspace + t * a_size);
            });
        }
    }
}

// C[m×n] = alpha · A[m×K] · W[n×K]ᵀ + beta · C, with A and W rows contiguous along K:
// every output is a dot product of two contiguous rows. This is gemm for a handful of
// tokens, and gemv. W is read row after row, one sequential stream: measured here, one
// stream reaches the core's full read bandwidth while several interleaved row streams lose
// a third of it. The few rows of A stay in cache and are reused for every row of W.
template <class Arch, std::size_t RM, class TB>
T2_ALWAYS_INLINE void dot_rows(std::size_t k, const float* a, std::size_t lda, const TB* w,
                               float* c, std::size_t ldc, float alpha, float beta) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t L = batch::size;
    // Independent accumulators per row of A, so that consecutive FMAs never wait on each
    // other: an FMA's latency (4 cycles) times the two FMA pipes asks for 8 chains. With one
    // row (decoding) two chains capped a bf16 stream at about 0.5 FMA per cycle, close to
    // what memory delivers; four keep the row ahead of it.
    constexpr std::size_t NA = RM == 1 ? 4 : 2;
    batch acc[RM][NA];
#pragma GCC unroll 8
    for (std::size_t i = 0; i < RM; ++i)
#pragma GCC unroll 4
        for (std::size_t v = 0; v < NA; ++v)
            acc[i][v] = batch(0.f);
    std::size_t kk = 0;
    for (; kk + NA * L <= k; kk += NA * L) {
#pragma GCC unroll 4
        for (std::size_t v = 0; v < NA; ++v) {
            const batch wv = load_f32<Arch>(w + kk + v * L);
#pragma GCC unroll 8
            for (std::size_t i = 0; i < RM; ++i)
                acc[i][v] = xsimd::fma(batch::load_unaligned(a + i * lda + kk + v * L), wv, acc[i][v]);
        }
    }
    for (; kk + L <= k; kk += L) {
        const batch wv = load_f32<Arch>(w + kk);
#pragma GCC unroll 8
        for (std::size_t i = 0; i < RM; ++i)
            acc[i][0] = xsimd::fma(batch::load_unaligned(a + i * lda + kk), wv, acc[i][0]);
    }
    for (std::size_t i = 0; i < RM; ++i) {
        batch total = acc[i][0];
#pragma GCC unroll 4
        for (std::size_t v = 1; v < NA; ++v)
            total += acc[i][v];
        float sum = t2::detail::reduce_add(total);
        for (std::size_t t = kk; t < k; ++t)
            sum += a[i * lda + t] * to_f32(w[t]);
        float& dst = c[i * ldc];
        dst = beta != 0.f ? beta * dst + alpha * sum : alpha * sum;
    }
}

template <class Arch, class TB>
void gemm_dot(std::size_t m, std::size_t n, std::size_t k, float alpha, const float* a,
              std::size_t lda, const TB* w, std::size_t ldw, float beta, float* c, std::size_t ldc) {
    for (std::size_t j = 0; j < n; ++j) {
        const TB* row = w + j * ldw;
        std::size_t i = 0;
        for (; i + 4 <= m; i += 4)
            dot_rows<Arch, 4>(k, a + i * lda, lda, row, c + i * ldc + j, ldc, alpha, beta);
        for (; i < m; ++i)
            dot_rows<Arch, 1>(k, a + i * lda, lda, row, c + i * ldc + j, ldc, alpha, beta);
    }
}

// c[m×n] = alpha · a[m×k] · B[k×n] + beta · c for a few rows (m ≤ skinny_rows) with B rows
// contiguous (transposed gemvs): each row of c accumulates row by row of B, in column
// blocks small enough to stay in L1 while B streams through. Attention's probabilities ·
// values at decoding (a few rows against a short cache) took a third of a small model's
// token in the packed gemm's packing.
template <class Arch, class TB>
void gemv_rows(const gemm_args<TB>& g) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t L = batch::size;
    constexpr std::size_t block = 1024;
    for (std::size_t i = 0; i < g.m; ++i)
        for (std::size_t j0 = 0; j0 < g.n; j0 += block) {
            const std::size_t nb = std::min(block, g.n - j0);
            alignas(tensor_alignment) float acc[block];
            std::fill_n(acc, nb, 0.f);
            for (std::size_t kk = 0; kk < g.k; ++kk) {
                const TB* row = g.b + kk * g.ldb + j0;
                const float ak = g.a_at(i, kk);
                const batch av(ak);
                std::size_t j = 0;
                for (; j + L <= nb; j += L)
                    xsimd::fma(av, load_f32<Arch>(row + j), batch::load_aligned(acc + j)).store_aligned(acc + j);
                for (; j < nb; ++j)
                    acc[j] += ak * to_f32(row[j]);
            }
            float* out = g.c + i * g.ldc + j0;
            for (std::size_t j = 0; j < nb; ++j)
                out[j] = g.beta != 0.f ? g.beta * out[j] + g.alpha * acc[j] : g.alpha * acc[j];
        }
}

} // namespace ops::detail
T2_NAMESPACE_END
#endif
