// ops::cached_attention against ops::causal_attention (the training form, whose own tests
// compare it with double precision): for a packed batch of sequences with odd lengths and
// head sizes, MHA, GQA and MQA, prefilled at once or in pieces or token by token, on the
// scalar reference and every SIMD and threads executor; and the errors it reports.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "support/check.hpp"
#include "support/executors.hpp"
#include "support/tolerance.hpp"

namespace {

struct shape {
    std::size_t heads, kv_heads, head_dim;
};

// One sequence's keys and values as a cache holds them: [KV × hd × capacity].
struct cache {
    t2::tensor<float, t2::dims<3>> keys, values;
    cache(std::size_t kv, std::size_t capacity, std::size_t hd)
        : keys(t2::dims<3>(kv, hd, capacity)), values(t2::dims<3>(kv, hd, capacity)) {}
};

// Runs the T rows of each sequence through cached_attention in pieces of `piece` rows per
// call (all sequences in every call while they have rows left) and returns out [R × H·hd].
template <class E>
t2::matrix<float> run_cached(const E& ex, const shape& s, const std::vector<std::size_t>& lengths,
                             const t2::matrix<float>& q, const t2::matrix<float>& k, const t2::matrix<float>& v,
                             std::size_t piece) {
    const std::size_t R = q.extent(0);
    std::vector<cache> caches;
    std::vector<std::size_t> first(lengths.size());
    for (std::size_t b = 0, row = 0; b < lengths.size(); row += lengths[b++]) {
        caches.emplace_back(s.kv_heads, lengths[b] + 3, s.head_dim); // spare capacity
        first[b] = row;
    }
    t2::matrix<float> out(R, s.heads * s.head_dim);
    std::vector<std::size_t> done(lengths.size(), 0);
    for (;;) {
        // Gather this call's rows: the next `piece` of every sequence with rows left.
        std::vector<t2::ops::attention_sequence> seqs;
        std::vector<std::size_t> source;
        for (std::size_t b = 0; b < lengths.size(); ++b) {
            const std::size_t n = std::min(piece, lengths[b] - done[b]);
            if (n == 0)
                continue;
            seqs.push_back({source.size(), n, done[b], caches[b].keys.view(), caches[b].values.view()});
            for (std::size_t t = 0; t < n; ++t)
                source.push_back(first[b] + done[b] + t);
            done[b] += n;
        }
        if (seqs.empty())
            return out;
        const std::size_t rows = source.size();
        t2::matrix<float> qs(rows, q.extent(1)), ks(rows, k.extent(1)), vs(rows, v.extent(1)), os(rows, out.extent(1));
        for (std::size_t r = 0; r < rows; ++r) {
            std::copy_n(q.row(source[r]).data(), q.extent(1), qs.row(r).data());
            std::copy_n(k.row(source[r]).data(), k.extent(1), ks.row(r).data());
            std::copy_n(v.row(source[r]).data(), v.extent(1), vs.row(r).data());
        }
        std::vector<float> scratch(t2::ops::cached_attention_scratch(ex, std::span<const t2::ops::attention_sequence>(seqs),
                                                                     s.heads, s.kv_heads, s.head_dim));
        t2::ops::cached_attention(ex, qs, ks, vs, std::span<const t2::ops::attention_sequence>(seqs), os.view(),
                                  s.heads, s.kv_heads, scratch);
        for (std::size_t r = 0; r < rows; ++r)
            std::copy_n(os.row(r).data(), os.extent(1), out.row(source[r]).data());
    }
}

} // namespace

TEST_CASE("cached_attention: a packed batch equals causal attention per sequence, in any pieces") {
    const shape shapes[] = {{4, 4, 6}, {6, 2, 10}, {3, 1, 18}, {8, 4, 8}};
    const std::vector<std::size_t> lengths{7, 1, 12, 5};
    std::size_t R = 0;
    for (const std::size_t n : lengths)
        R += n;
    for (const shape& s : shapes) {
        CAPTURE(s.heads);
        CAPTURE(s.kv_heads);
        CAPTURE(s.head_dim);
        const auto q = t2_test::random_matrix(R, s.heads * s.head_dim, 1 + s.heads);
        const auto k = t2_test::random_matrix(R, s.kv_heads * s.head_dim, 2 + s.heads);
        const auto v = t2_test::random_matrix(R, s.kv_heads * s.head_dim, 3 + s.heads);
        // The reference: causal attention over each whole sequence on exec::scalar.
        t2::matrix<float> want(R, q.extent(1));
        for (std::size_t b = 0, row = 0; b < lengths.size(); row += lengths[b++]) {
            const std::size_t T = lengths[b];
            t2::tensor<float, t2::dims<3>> probs(t2::dims<3>(s.heads, T, T));
            t2::ops::causal_attention(t2::exec::scalar{}, q.rows(row, row + T), k.rows(row, row + T),
                                      v.rows(row, row + T), want.rows(row, row + T), probs.view(), s.heads,
                                      s.kv_heads);
        }
        // Both forms sum in different orders (support/tolerance.hpp). A score q·k/√hd has hd
        // terms of at most 1/√hd each, so its error is between_orders(hd)·√hd absolute; a
        // probability moves by twice that relatively (exp, then the normalizer), plus exp's
        // function error and the normalizer's sum over the context; the output, a convex
        // combination of values in [−1, 1], adds its own sum over the context.
        const std::size_t context = 12; // the longest sequence
        const double score = t2_test::between_orders(s.head_dim) * std::sqrt(double(s.head_dim));
        const double probability = 2 * (score + t2_test::function_error) + t2_test::between_orders(context);
        const double bound = probability + t2_test::between_orders(context);
        const auto check = [&](const auto& ex, const std::string& name, std::size_t piece) {
            CAPTURE(name);
            CAPTURE(piece);
            const auto got = run_cached(ex, s, lengths, q, k, v, piece);
            double worst = 0;
            for (std::size_t i = 0; i < got.size(); ++i)
                worst = std::max(worst, std::abs(double(got.data()[i]) - double(want.data()[i])));
            CHECK(worst <= bound);
        };
        for (const std::size_t piece : {std::size_t{1}, std::size_t{3}, std::size_t{100}}) {
            check(t2::exec::scalar{}, "scalar", piece);
            t2_test::for_each_executor([&](const auto& ex, const std::string& name) { check(ex, name, piece); });
        }
    }
}

TEST_CASE("cached_attention: bad input is refused") {
    const t2::exec::scalar ex;
    cache c(2, 4, 4);
    t2::matrix<float> q(3, 16), k(3, 8), v(3, 8), out(3, 16);
    std::vector<float> scratch(1024);
    const auto run = [&](std::vector<t2::ops::attention_sequence> seqs, std::size_t heads = 4) {
        t2::ops::cached_attention(ex, q, k, v, std::span<const t2::ops::attention_sequence>(seqs), out.view(), heads,
                                  2, scratch);
    };
    CHECK_NOTHROW(run({{0, 3, 0, c.keys.view(), c.values.view()}}));
    CHECK_THROWS_WITH_AS(run({{0, 3, 2, c.keys.view(), c.values.view()}}),
                         "cached_attention: positions 2..4 exceed a cache of 4", t2::error);
    CHECK_THROWS_WITH_AS(run({{0, 2, 0, c.keys.view(), c.values.view()}}),
                         "cached_attention: the sequences own 2 rows, q has 3", t2::error);
    CHECK_THROWS_WITH_AS(run({{1, 3, 0, c.keys.view(), c.values.view()}}),
                         "cached_attention: sequences must own consecutive, non-empty row ranges", t2::error);
    CHECK_THROWS_WITH_AS(run({{0, 3, 0, c.keys.view(), c.values.view()}}, 3),
                         "cached_attention: 3 heads and 2 KV heads; both must be positive and the heads a multiple "
                         "of the KV heads",
                         t2::error);
    scratch.resize(3);
    CHECK(t2_test::contains(t2_test::error_message([&] { run({{0, 3, 0, c.keys.view(), c.values.view()}}); }),
                            "scratch of 3 floats"));
}
