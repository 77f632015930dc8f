#pragma once
// threads<Inner>: splits a kernel's work across a thread_pool and runs each piece with the
// Inner executor (scalar or simd<Arch>). Kernels overload on threads<Inner> to decide how
// their work divides (rows, columns, blocks); the pieces are ordinary Inner kernels.
//
//   t2::exec::thread_pool pool(2);
//   t2::exec::threads<t2::exec::simd<>> ex(pool);
//   t2::ops::gemm(ex, a, b, c);
#include <algorithm>
#include <cstddef>

#include "t2/exec/executor.hpp"
#include "t2/exec/thread_pool.hpp"

T2_NAMESPACE_BEGIN
namespace exec {

template <cpu_executor Inner>
class threads {
public:
    using space = host_memory;
    using inner_type = Inner;
    static constexpr const char* name = "threads";

    explicit threads(thread_pool& pool, Inner inner = {}) noexcept : pool_(&pool), inner_(inner) {}

    thread_pool& pool() const noexcept { return *pool_; }
    const Inner& inner() const noexcept { return inner_; }
    std::size_t concurrency() const noexcept { return pool_->size(); }

    // The most chunks parallel_for splits work into.
    std::size_t max_chunks() const noexcept { return concurrency() == 1 ? 1 : concurrency() * 4; }

    // Calls body(begin, end) over [0, n) in at most max_chunks() chunks of at least
    // `grain` items each (a few chunks per thread balance uneven cores).
    template <class F>
    void parallel_for(std::size_t n, std::size_t grain, F&& body) const {
        if (n == 0)
            return;
        grain = std::max<std::size_t>(grain, 1);
        // Rounding n / grain down and sizing the chunks evenly (they differ by at most one
        // item) keeps every chunk >= grain; only n < grain gives a single smaller chunk.
        const std::size_t chunks = std::min(std::max<std::size_t>(1, n / grain), max_chunks());
        const std::size_t step = n / chunks, longer = n % chunks; // the first `longer` get +1
        pool_->run(chunks, [&](std::size_t c) {
            const std::size_t begin = c * step + std::min(c, longer);
            body(begin, begin + step + (c < longer ? 1 : 0));
        });
    }

private:
    thread_pool* pool_;
    [[no_unique_address]] Inner inner_;
};

} // namespace exec
T2_NAMESPACE_END
