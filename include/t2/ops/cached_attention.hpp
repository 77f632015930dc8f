#pragma once
// Causal grouped-query attention of new positions over key/value caches, for a packed batch
// of sequences: the inference form of the attention in ops/attention.hpp.
//
//   q[R × H·hd], k, v[R × KV·hd]   the new rows of B sequences, stacked; sequence s owns rows
//                                  first_row … first_row + rows − 1, at positions start …
//                                  start + rows − 1
//   keys, values [KV × hd × capacity] of sequence s (one layer of its cache), transposed:
//                                  each head's d-th components of every position contiguous
//   out[R × H·hd]
//
// Each sequence's new keys and values are written into its cache at columns start … start +
// rows − 1, then every new position attends to its cache up to itself. The work splits into
// (sequence, KV head) tasks. Decoding (a few rows per sequence) runs straight on the
// transposed cache: a query's scores are sums over d of its d-th component times the keys'
// d-th components, vectorized along the positions, and its output hd dot products of the
// probabilities with the value components — every operation as wide as the SIMD registers
// whatever the head size (stories260K's is 8, half an AVX-512 register: a row-major cache
// made every score a short dot product and a horizontal sum). Prefill (more rows) copies the visible part of the cache out and runs two
// matrix products, scores = Q·K and out = softmax·Vᵀ, with the H/KV query heads of a group
// stacked into one matrix.
//
// Scratch: tasks in one slot run one after another (ops/detail/parallel.hpp), so the caller
// provides cached_attention_scratch(…) floats — per slot the largest task's, sized by the
// caches' capacity rather than the current length so that it does not grow while decoding —
// and no call allocates.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>

#include "t2/core/tensor.hpp"
#include "t2/exec/executor.hpp"
#include "t2/ops/attention.hpp"
#include "t2/ops/blas1.hpp"
#include "t2/ops/detail/parallel.hpp"
#include "t2/ops/gemm.hpp"
#include "t2/ops/softmax.hpp"

T2_NAMESPACE_BEGIN
namespace ops {

struct attention_sequence {
    std::size_t first_row = 0, rows = 0, start = 0;
    tensor_view<float, dims<3>> keys, values; // [KV × hd × capacity]
};

namespace detail {

// Up to this many rows a (sequence, KV head) task runs on the cache directly.
inline constexpr std::size_t direct_attention_rows = 4;

// scores[p] = scale · Σ_d query[d] · keys[d·stride + p] for p < n: one query against the
// transposed keys, summed over d in order for every position (the same bits on every
// executor).
inline void transposed_scores(const exec::scalar&, const float* query, std::size_t hd, const float* keys,
                              std::size_t stride, float scale, float* scores, std::size_t n) {
    for (std::size_t p = 0; p < n; ++p) {
        float sum = 0.f;
        for (std::size_t d = 0; d < hd; ++d)
            sum += query[d] * keys[d * stride + p];
        scores[p] = sum * scale;
    }
}

#if T2_ENABLE_SIMD
// Four vectors of positions at a time, each an accumulator kept in a register across d.
template <class Arch>
void transposed_scores(const exec::simd<Arch>&, const float* query, std::size_t hd, const float* keys,
                       std::size_t stride, float scale, float* scores, std::size_t n) {
    using batch = xsimd::batch<float, Arch>;
    constexpr std::size_t lanes = batch::size;
    const batch factor(scale);
    std::size_t p = 0;
    for (; p + 4 * lanes <= n; p += 4 * lanes) {
        batch s0(0.f), s1(0.f), s2(0.f), s3(0.f);
        for (std::size_t d = 0; d < hd; ++d) {
            const batch qd(query[d]);
            const float* row = keys + d * stride + p;
            s0 = xsimd::fma(qd, batch::load_unaligned(row), s0);
            s1 = xsimd::fma(qd, batch::load_unaligned(row + lanes), s1);
            s2 = xsimd::fma(qd, batch::load_unaligned(row + 2 * lanes), s2);
            s3 = xsimd::fma(qd, batch::load_unaligned(row + 3 * lanes), s3);
        }
        (s0 * factor).store_unaligned(scores + p);
        (s1 * factor).store_unaligned(scores + p + lanes);
        (s2 * factor).store_unaligned(scores + p + 2 * lanes);
        (s3 * factor).store_unaligned(scores + p + 3 * lanes);
    }
    for (; p + lanes <= n; p += lanes) {
        batch s0(0.f);
        for (std::size_t d = 0; d < hd; ++d)
            s0 = xsimd::fma(batch(query[d]), batch::load_unaligned(keys + d * stride + p), s0);
        (s0 * factor).store_unaligned(scores + p);
    }
    transposed_scores(exec::scalar{}, query, hd, keys + p, stride, scale, scores + p, n - p);
}
#endif

// Scratch of the largest (sequence, KV head) task: stacked queries, their outputs, scores,
// and for prefill the visible keys and values.
inline std::size_t cached_attention_slot_floats(std::span<const attention_sequence> sequences,
                                                std::size_t group, std::size_t hd) {
    std::size_t largest = 0;
    for (const attention_sequence& s : sequences) {
        const std::size_t capacity = s.keys.extent(2);
        const std::size_t copies = s.rows > direct_attention_rows ? 2 * hd * capacity : 0;
        largest = std::max(largest, group * s.rows * (2 * hd + capacity) + copies);
    }
    return largest;
}

} // namespace detail

// Floats of scratch cached_attention needs on this executor.
template <exec::cpu_executor E>
std::size_t cached_attention_scratch(const E& ex, std::span<const attention_sequence> sequences,
                                     std::size_t n_heads, std::size_t n_kv_heads, std::size_t head_dim) {
    return detail::cached_attention_slot_floats(sequences, n_heads / n_kv_heads, head_dim) *
           detail::task_slots(ex, sequences.size() * n_kv_heads);
}

template <exec::cpu_executor E>
void cached_attention(const E& ex, matrix_view<const float> q, matrix_view<const float> k,
                      matrix_view<const float> v, std::span<const attention_sequence> sequences,
                      matrix_view<float> out, std::size_t n_heads, std::size_t n_kv_heads,
                      std::span<float> scratch) {
    constexpr const char* op = "cached_attention";
    T2_CHECK(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0, op, ": ", n_heads, " heads and ",
             n_kv_heads, " KV heads; both must be positive and the heads a multiple of the KV heads");
    const std::size_t R = q.extent(0), hd = q.extent(1) / n_heads, group = n_heads / n_kv_heads;
    T2_CHECK(hd > 0 && q.extent(1) == n_heads * hd, op, ": q is ", q.shape(), " for ", n_heads, " heads");
    T2_CHECK(k.extent(0) == R && k.extent(1) == n_kv_heads * hd, op, ": k is ", k.shape(), ", expected ", R,
             "x", n_kv_heads * hd);
    detail::check_same_shape(op, "k", k, "v", v);
    detail::check_same_shape(op, "q", q, "out", out);
    std::size_t rows = 0;
    for (const attention_sequence& s : sequences) {
        T2_CHECK(s.first_row == rows && s.rows > 0, op, ": sequences must own consecutive, non-empty row ranges");
        rows += s.rows;
        T2_CHECK(s.keys.extent(0) == n_kv_heads && s.keys.extent(1) == hd && same_shape(s.keys, s.values), op,
                 ": a cache is ", s.keys.shape(), " (keys) and ", s.values.shape(), " (values), expected ",
                 n_kv_heads, "x", hd, "x capacity");
        T2_CHECK(s.start + s.rows <= s.keys.extent(2), op, ": positions ", s.start, "..", s.start + s.rows - 1,
                 " exceed a cache of ", s.keys.extent(2));
    }
    T2_CHECK(rows == R, op, ": the sequences own ", rows, " rows, q has ", R);
    const std::size_t slot_floats = detail::cached_attention_slot_floats(sequences, group, hd);
    const std::size_t needed = slot_floats * detail::task_slots(ex, sequences.size() * n_kv_heads);
    T2_CHECK(scratch.size() >= needed, op, ": scratch of ", scratch.size(), " floats, ", needed, " needed");

    const float scale = 1.f / std::sqrt(static_cast<float>(hd));
    detail::for_each_task_in_slot(ex, sequences.size() * n_kv_heads, [&](const auto& inner, std::size_t task,
                                                                         std::size_t slot) {
        const attention_sequence& s = sequences[task / n_kv_heads];
        const std::size_t g = task % n_kv_heads, T = s.rows, context = s.start + T, capacity = s.keys.extent(2);
        const auto keys = s.keys.row(g), values = s.values.row(g); // [hd × capacity]
        for (std::size_t t = 0; t < T; ++t) {
            const float* k_row = k.row(s.first_row + t).data() + g * hd;
            const float* v_row = v.row(s.first_row + t).data() + g * hd;
            for (std::size_t d = 0; d < hd; ++d) {
                keys(d, s.start + t) = k_row[d];
                values(d, s.start + t) = v_row[d];
            }
        }
        float* base = scratch.data() + slot * slot_floats;
        const auto query_of = [&](std::size_t j, std::size_t t) {
            return q.row(s.first_row + t).data() + (g * group + j) * hd;
        };
        const auto out_of = [&](std::size_t j, std::size_t t) {
            return out.row(s.first_row + t).data() + (g * group + j) * hd;
        };
        if (T <= detail::direct_attention_rows) {
            float* scores = base; // one row at a time
            for (std::size_t j = 0; j < group; ++j)
                for (std::size_t t = 0; t < T; ++t) {
                    const std::size_t visible = s.start + t + 1; // position start + t sees itself
                    detail::transposed_scores(inner, query_of(j, t), hd, keys.data(), capacity, scale, scores,
                                              visible);
                    detail::softmax(inner, scores, scores, 1, visible);
                    float* o = out_of(j, t);
                    for (std::size_t d = 0; d < hd; ++d)
                        o[d] = detail::dot(inner, scores, values.row(d).data(), visible);
                }
            return;
        }
        const auto queries = view_of(base, group * T, hd);
        const auto attended = view_of(base + group * T * hd, group * T, hd);
        const auto scores = view_of(base + 2 * group * T * hd, group * T, context);
        const auto visible_keys = view_of(base + group * T * (2 * hd + capacity), hd, context);
        const auto visible_values = view_of(visible_keys.data() + hd * context, hd, context);
        for (std::size_t d = 0; d < hd; ++d) {
            std::copy_n(keys.row(d).data(), context, visible_keys.row(d).data());
            std::copy_n(values.row(d).data(), context, visible_values.row(d).data());
        }
        for (std::size_t j = 0; j < group; ++j)
            for (std::size_t t = 0; t < T; ++t)
                std::copy_n(query_of(j, t), hd, queries.row(j * T + t).data());
        gemm(inner, matrix_view<const float>(queries), matrix_view<const float>(visible_keys), scores,
             {.alpha = scale});
        for (std::size_t r = 0; r < group * T; ++r) {
            // Row r is position start + r % T: it sees the cache up to itself.
            const std::size_t visible = s.start + r % T + 1;
            const auto row = scores.row(r);
            const auto seen = row.rows(0, visible);
            softmax(inner, seen, seen);
            std::fill(row.data() + visible, row.data() + context, 0.f);
        }
        gemm(inner, matrix_view<const float>(scores), matrix_view<const float>(visible_values), attended,
             {.transpose_b = true});
        for (std::size_t j = 0; j < group; ++j)
            for (std::size_t t = 0; t < T; ++t)
                std::copy_n(attended.row(j * T + t).data(), hd, out_of(j, t));
    });
}

} // namespace ops
T2_NAMESPACE_END
