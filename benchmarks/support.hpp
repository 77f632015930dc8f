#pragma once
// Helpers shared by the benchmark programs.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "t2/t2.hpp"

namespace t2_bench {

inline t2::matrix<float> random_matrix(std::size_t rows, std::size_t cols, std::uint64_t seed,
                                       float lo = -1.f, float hi = 1.f) {
    t2::matrix<float> m(rows, cols);
    const t2::philox rng(seed);
    for (std::size_t i = 0; i < m.size(); ++i)
        m[i] = rng.uniform(i, lo, hi);
    return m;
}

// One pool per thread count, made once: creating threads is not what is measured.
inline t2::exec::thread_pool& pool(std::size_t threads) {
    static std::vector<std::unique_ptr<t2::exec::thread_pool>> pools;
    if (pools.size() <= threads)
        pools.resize(threads + 1);
    if (!pools[threads])
        pools[threads] = std::make_unique<t2::exec::thread_pool>(threads);
    return *pools[threads];
}

} // namespace t2_bench
