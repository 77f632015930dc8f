#pragma once
// Token embedding: a gather of table rows, and its backward, a scatter-add.
//
//   embedding:          y[T × d] = table[tokens[t]]            table[V × d], overwritten
//   embedding_backward: dtable[tokens[t]] += dy[t]             dtable[V × d], accumulated
//
// dtable accumulates, as every parameter gradient does, so that a caller can sum over
// calls; a token that occurs several times adds each of its rows. The scatter is split by
// columns, not by tokens, so repeated tokens need no locks and every executor and thread
// count adds in the same order (the same bits). Token ids outside [0, V) are an error.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>

#include "t2/core/tensor.hpp"
#include "t2/exec/executor.hpp"
#include "t2/ops/detail/kernel_support.hpp"
#include "t2/ops/detail/parallel.hpp"

T2_NAMESPACE_BEGIN
namespace ops {
namespace detail {

inline void check_tokens(const char* op, std::span<const std::int32_t> tokens, std::size_t vocab) {
    for (std::size_t t = 0; t < tokens.size(); ++t)
        T2_CHECK(tokens[t] >= 0 && static_cast<std::size_t>(tokens[t]) < vocab, op, ": token id ",
                 tokens[t], " at position ", t, " is outside the vocabulary of ", vocab,
                 " (the table's rows)");
}

} // namespace detail

// y[t] = table[tokens[t]].
template <exec::cpu_executor E>
void embedding(const E& ex, matrix_view<const float> table, std::span<const std::int32_t> tokens,
               matrix_view<float> y) {
    constexpr const char* op = "embedding";
    const std::size_t d = table.extent(1);
    T2_CHECK(y.extent(0) == tokens.size() && y.extent(1) == d, op, ": y is ", y.shape(),
             " but there are ", tokens.size(), " tokens and the table is ", table.shape(),
             "; y needs one row per token of the table's width");
    detail::check_disjoint(op, "table", table, "y", y);
    detail::check_tokens(op, tokens, table.extent(0));
    detail::for_row_ranges(ex, tokens.size(), d, detail::stream_grain,
                           [&](std::size_t t0, std::size_t t1) {
        for (std::size_t t = t0; t < t1; ++t)
            std::copy_n(table.data() + static_cast<std::size_t>(tokens[t]) * d, d,
                        y.data() + t * d);
    });
}

// dtable[tokens[t]] += dy[t] for every t.
template <exec::cpu_executor E>
void embedding_backward(const E& ex, std::span<const std::int32_t> tokens,
                        matrix_view<const float> dy, matrix_view<float> dtable) {
    constexpr const char* op = "embedding_backward";
    const std::size_t d = dtable.extent(1);
    T2_CHECK(dy.extent(0) == tokens.size() && dy.extent(1) == d, op, ": dy is ", dy.shape(),
             " but there are ", tokens.size(), " tokens and dtable is ", dtable.shape(),
             "; dy needs one row per token of the table's width");
    detail::check_disjoint(op, "dy", dy, "dtable", dtable);
    detail::check_tokens(op, tokens, dtable.extent(0));
    detail::for_column_ranges(ex, tokens.size(), d, detail::stream_grain,
                              [&](std::size_t j0, std::size_t j1) {
        for (std::size_t t = 0; t < tokens.size(); ++t) {
            const float* src = dy.data() + t * d;
            float* dst = dtable.data() + static_cast<std::size_t>(tokens[t]) * d;
            for (std::size_t j = j0; j < j1; ++j)
                dst[j] += src[j];
        }
    });
}

} // namespace ops
T2_NAMESPACE_END
