#pragma once
// Causal grouped-query self-attention over a whole sequence (positions 0 … T−1, no KV
// cache): the training form of the attention in nn/llama.hpp, with its backward.
//
//   q[T × H·hd], k[T × KV·hd], v[T × KV·hd]     H = n_heads, KV = n_kv_heads, H % KV = 0
//   query head h reads KV head h / (H/KV) (the H/KV heads of a group share one K and V)
//   probs[H × T × T] = causal_softmax(q_h · k_hᵀ / sqrt(hd))   row t sees columns 0 … t;
//                                                             the upper triangle is zero
//   out[T × H·hd]    = probs_h · v_h            (head h in columns h·hd … h·hd + hd − 1)
//
// causal_attention overwrites out and probs; the backward needs probs back (saved
// activations, O(H·T²): the one quadratic buffer) and, with P = probs_h, S = q_h·k_hᵀ/√hd:
//   dv_g = Σ_h∈g P_hᵀ · dout_h                 dP = dout_h · v_gᵀ
//   dS   = P ⊙ (dP − rowsum(P ⊙ dP))           (softmax backward; zero above the diagonal)
//   dq_h = dS · k_g / √hd                      dk_g = Σ_h∈g dSᵀ · q_h / √hd
// dq, dk and dv are overwritten (dk and dv summed over the heads that share a KV head).
//
// The work splits by query head, one task each on threads<Inner>, so that models with few
// KV heads (MQA has one) still use every thread. The backward's dk and dv are sums over the
// heads of a group: each task writes its own head's share, and the shares are added in
// head order afterwards, so the result does not depend on the thread count. The backward
// takes dP and dS in blocks of rows, so its scratch grows with T, not T².
//
// Scratch (each head's gathered q, k, v, …) comes from the caller when it passes a span of
// causal_attention_scratch(ex, T, H, hd) (or _backward_scratch) floats, so that a training
// loop that keeps one allocates nothing; without one, the call allocates its own.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <span>
#include <vector>

#include "t2/core/tensor.hpp"
#include "t2/exec/executor.hpp"
#include "t2/ops/detail/kernel_support.hpp"
#include "t2/ops/detail/parallel.hpp"
#include "t2/ops/gemm.hpp"
#include "t2/ops/softmax.hpp"

T2_NAMESPACE_BEGIN
namespace ops {
namespace detail {

struct attention_dims {
    std::size_t T, heads, kv_heads, head_dim, group;
};

inline attention_dims check_attention(const char* op, matrix_view<const float> q,
                                      matrix_view<const float> k, matrix_view<const float> v,
                                      tensor_view<const float, dims<3>> probs,
                                      std::size_t n_heads, std::size_t n_kv_heads) {
    T2_CHECK(n_heads > 0 && n_kv_heads > 0 && n_heads % n_kv_heads == 0, op, ": ", n_heads,
             " heads and ", n_kv_heads, " KV heads; both must be positive and the heads a "
             "multiple of the KV heads");
    const std::size_t T = q.extent(0), hd = q.extent(1) / n_heads;
    T2_CHECK(hd > 0 && q.extent(1) == n_heads * hd, op, ": q is ", q.shape(), " for ", n_heads,
             " heads; q needs n_heads · head_dim columns with head_dim > 0");
    T2_CHECK(k.extent(0) == T && k.extent(1) == n_kv_heads * hd, op, ": k is ", k.shape(),
             " but q is ", q.shape(), "; k must be ", T, "x", n_kv_heads * hd, " (", n_kv_heads,
             " KV heads of ", hd, ")");
    check_same_shape(op, "k", k, "v", v);
    T2_CHECK(probs.extent(0) == n_heads && probs.extent(1) == T && probs.extent(2) == T, op,
             ": probs is ", probs.shape(), "; it must be ", n_heads, "x", T, "x", T,
             " (one T × T matrix per head)");
    check_disjoint(op, "q", q, "probs", probs);
    check_disjoint(op, "k", k, "probs", probs);
    check_disjoint(op, "v", v, "probs", probs);
    return {T, n_heads, n_kv_heads, hd, n_heads / n_kv_heads};
}

// dst[rows × hd] = columns col … col + hd − 1 of src[rows × cols].
inline void gather_columns(const float* src, std::size_t cols, std::size_t col, std::size_t rows,
                           std::size_t hd, float* dst) {
    for (std::size_t t = 0; t < rows; ++t)
        std::copy_n(src + t * cols + col, hd, dst + t * hd);
}

// Columns col … col + hd − 1 of dst[rows × cols] = src[rows × hd].
inline void scatter_columns(const float* src, std::size_t rows, std::size_t hd, float* dst,
                            std::size_t cols, std::size_t col) {
    for (std::size_t t = 0; t < rows; ++t)
        std::copy_n(src + t * hd, hd, dst + t * cols + col);
}

// Rows of dS per block in the backward: the scratch is attention_block × T floats.
inline constexpr std::size_t attention_block = 64;

// Per task: q, k, v and the output of one head, [T × hd] each.
inline std::size_t forward_slot_floats(std::size_t T, std::size_t hd) noexcept { return 4 * T * hd; }
// Per task: q, k, v, dout and dq of one head, and a block of dS; shared: every head's share
// of dk and dv.
inline std::size_t backward_slot_floats(std::size_t T, std::size_t hd) noexcept {
    return 5 * T * hd + std::min(T, attention_block) * T;
}

// A [rows × cols] view of scratch at *offset, which moves past it.
inline matrix_view<float> take(std::span<float> scratch, std::size_t& offset, std::size_t rows, std::size_t cols) {
    const matrix_view<float> m = view_of(scratch.data() + offset, rows, cols);
    offset += rows * cols;
    return m;
}

} // namespace detail

// Floats of scratch causal_attention and causal_attention_backward need for T positions of
// n_heads heads of head_dim on this executor.
template <exec::cpu_executor E>
std::size_t causal_attention_scratch(const E& ex, std::size_t T, std::size_t n_heads, std::size_t head_dim) {
    return detail::task_slots(ex, n_heads) * detail::forward_slot_floats(T, head_dim);
}
template <exec::cpu_executor E>
std::size_t causal_attention_backward_scratch(const E& ex, std::size_t T, std::size_t n_heads, std::size_t head_dim) {
    return detail::task_slots(ex, n_heads) * detail::backward_slot_floats(T, head_dim) + 2 * n_heads * T * head_dim;
}

// out = causal softmax(q·kᵀ/√hd)·v per head, the softmax rows saved in probs (see the top of
// this file). out and probs are overwritten and must not overlap the inputs.
template <exec::cpu_executor E>
void causal_attention(const E& ex, matrix_view<const float> q, matrix_view<const float> k,
                      matrix_view<const float> v, matrix_view<float> out,
                      tensor_view<float, dims<3>> probs, std::size_t n_heads,
                      std::size_t n_kv_heads, std::span<float> scratch = {}) {
    constexpr const char* op = "causal_attention";
    const auto a = detail::check_attention(op, q, k, v, probs, n_heads, n_kv_heads);
    detail::check_same_shape(op, "q", q, "out", out);
    detail::check_disjoint(op, "q", q, "out", out);
    detail::check_disjoint(op, "k", k, "out", out);
    detail::check_disjoint(op, "v", v, "out", out);
    detail::check_disjoint(op, "probs", probs, "out", out);
    const std::size_t T = a.T, hd = a.head_dim;
    const float scale = 1.f / std::sqrt(static_cast<float>(hd));
    std::vector<float> own;
    if (scratch.empty()) {
        own.resize(causal_attention_scratch(ex, T, n_heads, hd));
        scratch = own;
    }
    T2_CHECK(scratch.size() >= causal_attention_scratch(ex, T, n_heads, hd), op, ": scratch of ", scratch.size(),
             " floats, it needs ", causal_attention_scratch(ex, T, n_heads, hd));
    detail::for_each_task_in_slot(ex, a.heads, [&](const auto& inner, std::size_t h, std::size_t slot) {
        const std::size_t g = h / a.group;
        std::size_t at = slot * detail::forward_slot_floats(T, hd);
        const auto query = detail::take(scratch, at, T, hd), keys = detail::take(scratch, at, T, hd);
        const auto values = detail::take(scratch, at, T, hd), attended = detail::take(scratch, at, T, hd);
        detail::gather_columns(q.data(), q.extent(1), h * hd, T, hd, query.data());
        detail::gather_columns(k.data(), k.extent(1), g * hd, T, hd, keys.data());
        detail::gather_columns(v.data(), v.extent(1), g * hd, T, hd, values.data());
        const auto p = view_of(probs.data() + h * T * T, T, T);
        gemm(inner, matrix_view<const float>(query), matrix_view<const float>(keys), p,
             {.transpose_b = true, .alpha = scale});
        for (std::size_t t = 0; t < T; ++t) {
            const auto row = p.row(t);
            const auto seen = row.rows(0, t + 1); // position t sees 0 … itself
            softmax(inner, seen, seen);
            std::fill(row.data() + t + 1, row.data() + T, 0.f);
        }
        gemm(inner, matrix_view<const float>(p), matrix_view<const float>(values), attended);
        detail::scatter_columns(attended.data(), T, hd, out.data(), out.extent(1), h * hd);
    });
}

// Backward of causal_attention from dout[T × H·hd] and the saved probs: dq, dk, dv
// (overwritten; see the top of this file). The outputs must not overlap each other or the
// inputs.
template <exec::cpu_executor E>
void causal_attention_backward(const E& ex, matrix_view<const float> q, matrix_view<const float> k,
                               matrix_view<const float> v,
                               tensor_view<const float, dims<3>> probs,
                               matrix_view<const float> dout, matrix_view<float> dq,
                               matrix_view<float> dk, matrix_view<float> dv, std::size_t n_heads,
                               std::size_t n_kv_heads, std::span<float> scratch = {}) {
    constexpr const char* op = "causal_attention_backward";
    const auto a = detail::check_attention(op, q, k, v, probs, n_heads, n_kv_heads);
    detail::check_same_shape(op, "q", q, "dout", dout);
    detail::check_same_shape(op, "q", q, "dq", dq);
    detail::check_same_shape(op, "k", k, "dk", dk);
    detail::check_same_shape(op, "v", v, "dv", dv);
    const auto check_output = [&](const char* name, matrix_view<const float> out) {
        detail::check_disjoint(op, "q", q, name, out);
        detail::check_disjoint(op, "k", k, name, out);
        detail::check_disjoint(op, "v", v, name, out);
        detail::check_disjoint(op, "probs", probs, name, out);
        detail::check_disjoint(op, "dout", dout, name, out);
    };
    check_output("dq", dq);
    check_output("dk", dk);
    check_output("dv", dv);
    detail::check_disjoint(op, "dq", dq, "dk", dk);
    detail::check_disjoint(op, "dq", dq, "dv", dv);
    detail::check_disjoint(op, "dk", dk, "dv", dv);

    const std::size_t T = a.T, hd = a.head_dim;
    const float scale = 1.f / std::sqrt(static_cast<float>(hd));
    std::vector<float> own;
    if (scratch.empty()) {
        own.resize(causal_attention_backward_scratch(ex, T, n_heads, hd));
        scratch = own;
    }
    T2_CHECK(scratch.size() >= causal_attention_backward_scratch(ex, T, n_heads, hd), op, ": scratch of ",
             scratch.size(), " floats, it needs ", causal_attention_backward_scratch(ex, T, n_heads, hd));
    // Each head's share of dk and dv, [H × T × hd]; a group's shares are summed below.
    std::size_t shared = 0;
    const auto dk_share = detail::take(scratch, shared, a.heads * T, hd);
    const auto dv_share = detail::take(scratch, shared, a.heads * T, hd);
    detail::for_each_task_in_slot(ex, a.heads, [&](const auto& inner, std::size_t h, std::size_t slot) {
        const std::size_t g = h / a.group;
        std::size_t at = shared + slot * detail::backward_slot_floats(T, hd);
        const auto query = detail::take(scratch, at, T, hd), keys = detail::take(scratch, at, T, hd);
        const auto values = detail::take(scratch, at, T, hd), dattended = detail::take(scratch, at, T, hd);
        const auto dquery = detail::take(scratch, at, T, hd);
        const auto ds = detail::take(scratch, at, std::min(T, detail::attention_block), T);
        detail::gather_columns(q.data(), q.extent(1), h * hd, T, hd, query.data());
        detail::gather_columns(dout.data(), dout.extent(1), h * hd, T, hd, dattended.data());
        detail::gather_columns(k.data(), k.extent(1), g * hd, T, hd, keys.data());
        detail::gather_columns(v.data(), v.extent(1), g * hd, T, hd, values.data());
        const auto p = view_of(probs.data() + h * T * T, T, T);
        const auto dkeys = dk_share.rows(h * T, (h + 1) * T);

        gemm(inner, p, matrix_view<const float>(dattended), dv_share.rows(h * T, (h + 1) * T), {.transpose_a = true});
        for (std::size_t r0 = 0; r0 < T; r0 += detail::attention_block) {
            const std::size_t r1 = std::min(T, r0 + detail::attention_block);
            const auto dsb = ds.rows(0, r1 - r0);
            gemm(inner, matrix_view<const float>(dattended.rows(r0, r1)), matrix_view<const float>(values), dsb,
                 {.transpose_b = true}); // dP
            for (std::size_t t = r0; t < r1; ++t) {
                const std::size_t visible = t + 1;
                const float* pr = p.data() + t * T;
                float* dr = dsb.data() + (t - r0) * T;
                float dot = 0.f;
                for (std::size_t c = 0; c < visible; ++c)
                    dot += pr[c] * dr[c];
                for (std::size_t c = 0; c < visible; ++c)
                    dr[c] = pr[c] * (dr[c] - dot);
                std::fill(dr + visible, dr + T, 0.f);
            }
            gemm(inner, matrix_view<const float>(dsb), matrix_view<const float>(keys), dquery.rows(r0, r1),
                 {.alpha = scale});
            gemm(inner, matrix_view<const float>(dsb), matrix_view<const float>(query.rows(r0, r1)), dkeys,
                 {.transpose_a = true, .alpha = scale, .beta = r0 == 0 ? 0.f : 1.f});
        }
        detail::scatter_columns(dquery.data(), T, hd, dq.data(), dq.extent(1), h * hd);
    });
    // dk_g and dv_g: the shares of the group's heads, added in head order.
    detail::for_each_task(ex, a.kv_heads, [&](const auto&, std::size_t g) {
        for (std::size_t t = 0; t < T; ++t) {
            float* dk_row = dk.data() + t * dk.extent(1) + g * hd;
            float* dv_row = dv.data() + t * dv.extent(1) + g * hd;
            std::copy_n(dk_share.data() + (g * a.group * T + t) * hd, hd, dk_row);
            std::copy_n(dv_share.data() + (g * a.group * T + t) * hd, hd, dv_row);
            for (std::size_t j = 1; j < a.group; ++j) {
                const float* dk_part = dk_share.data() + ((g * a.group + j) * T + t) * hd;
                const float* dv_part = dv_share.data() + ((g * a.group + j) * T + t) * hd;
                for (std::size_t i = 0; i < hd; ++i) {
                    dk_row[i] += dk_part[i];
                    dv_row[i] += dv_part[i];
                }
            }
        }
    });
}

} // namespace ops
T2_NAMESPACE_END
