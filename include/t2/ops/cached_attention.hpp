#pragma once
// Causal grouped-query attention of new positions over key/value caches, for a packed batch
// of sequences: the inference form of the attention in ops/attention.hpp.
//
//   q[R × H·hd], k, v[R × KV·hd]   the new rows of B sequences, stacked; sequence s owns rows
//                                  first_row … first_row + rows − 1, at positions start …
//                                  start + rows − 1
//   keys, values [KV × capacity × hd] of sequence s (one layer of its cache)
//   out[R × H·hd]
//
// Each sequence's new keys and values are written into its cache at rows start … start +
// rows − 1, then every new position attends to its cache up to itself. The queries of the
// H/KV heads sharing a KV head are stacked into one [group·rows × hd] matrix, so one
// (sequence, KV head) pair costs two matrix products: scores = Q·Kᵀ and out = softmax·V.
// Prefill of one sequence and lockstep decoding of many (one row each) are the same call.
//
// Scratch: the (sequence, KV head) pairs are tasks; tasks in one slot run one after another
// (ops/detail/parallel.hpp), so the caller provides cached_attention_scratch(…) floats —
// per slot the largest task's, sized by the caches' capacity rather than the current
// length so that it does not grow while decoding — and no call allocates.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>

#include "t2/core/tensor.hpp"
#include "t2/exec/executor.hpp"
#include "t2/ops/attention.hpp"
#include "t2/ops/detail/parallel.hpp"
#include "t2/ops/gemm.hpp"
#include "t2/ops/softmax.hpp"

T2_NAMESPACE_BEGIN
namespace ops {

struct attention_sequence {
    std::size_t first_row = 0, rows = 0, start = 0;
    tensor_view<float, dims<3>> keys, values; // [KV × capacity × hd]
};

namespace detail {

// Scratch of the largest (sequence, KV head) task: stacked queries, their outputs, scores.
inline std::size_t cached_attention_slot_floats(std::span<const attention_sequence> sequences,
                                                std::size_t group, std::size_t hd) {
    std::size_t largest = 0;
    for (const attention_sequence& s : sequences)
        largest = std::max(largest, group * s.rows * (2 * hd + s.keys.extent(1)));
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
        T2_CHECK(s.keys.extent(0) == n_kv_heads && s.keys.extent(2) == hd && same_shape(s.keys, s.values), op,
                 ": a cache is ", s.keys.shape(), " (keys) and ", s.values.shape(), " (values), expected ",
                 n_kv_heads, "x capacity x", hd);
        T2_CHECK(s.start + s.rows <= s.keys.extent(1), op, ": positions ", s.start, "..", s.start + s.rows - 1,
                 " exceed a cache of ", s.keys.extent(1));
    }
    T2_CHECK(rows == R, op, ": the sequences own ", rows, " rows, q has ", R);
    const std::size_t slot_floats = detail::cached_attention_slot_floats(sequences, group, hd);
    const std::size_t needed = slot_floats * detail::task_slots(ex, sequences.size() * n_kv_heads);
    T2_CHECK(scratch.size() >= needed, op, ": scratch of ", scratch.size(), " floats, ", needed, " needed");

    const float scale = 1.f / std::sqrt(static_cast<float>(hd));
    detail::for_each_task_in_slot(ex, sequences.size() * n_kv_heads, [&](const auto& inner, std::size_t task,
                                                                         std::size_t slot) {
        const attention_sequence& s = sequences[task / n_kv_heads];
        const std::size_t g = task % n_kv_heads, T = s.rows, context = s.start + T;
        const auto keys = s.keys.row(g), values = s.values.row(g); // [capacity × hd]
        for (std::size_t t = 0; t < T; ++t) {
            std::copy_n(k.row(s.first_row + t).data() + g * hd, hd, keys.row(s.start + t).data());
            std::copy_n(v.row(s.first_row + t).data() + g * hd, hd, values.row(s.start + t).data());
        }
        float* base = scratch.data() + slot * slot_floats;
        const auto queries = view_of(base, group * T, hd);
        const auto attended = view_of(base + group * T * hd, group * T, hd);
        const auto scores = view_of(base + 2 * group * T * hd, group * T, context);
        for (std::size_t j = 0; j < group; ++j)
            for (std::size_t t = 0; t < T; ++t)
                std::copy_n(q.row(s.first_row + t).data() + (g * group + j) * hd, hd, queries.row(j * T + t).data());
        gemm(inner, queries, keys.rows(0, context), scores, {.transpose_b = true, .alpha = scale});
        for (std::size_t r = 0; r < group * T; ++r) {
            // Row r is position start + r % T: it sees the cache up to itself.
            const std::size_t visible = s.start + r % T + 1;
            const auto row = scores.row(r);
            const auto seen = row.rows(0, visible);
            softmax(inner, seen, seen);
            std::fill(row.data() + visible, row.data() + context, 0.f);
        }
        gemm(inner, scores, values.rows(0, context), attended);
        for (std::size_t j = 0; j < group; ++j)
            for (std::size_t t = 0; t < T; ++t)
                std::copy_n(attended.row(j * T + t).data(), hd, out.row(s.first_row + t).data() + (g * group + j) * hd);
    });
}

} // namespace ops
T2_NAMESPACE_END
