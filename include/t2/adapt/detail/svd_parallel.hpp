#pragma once
// The one parallel loop of the SVD: spread over the pool on exec::threads<Inner>, in order on
// every other executor. Callers split the work into items whose arithmetic does not depend on
// which thread runs them, which is what makes the result independent of the thread count.
#include <cstddef>

#include "t2/exec/executor.hpp"
#include "t2/exec/threads.hpp"

T2_NAMESPACE_BEGIN
namespace adapt::detail {

// Runs body(item) for item in [0, n); `grain` keeps each chunk big enough to be worth a task.
template <exec::cpu_executor E, class Body>
void svd_for_each(const E&, std::size_t n, std::size_t, Body&& body) {
    for (std::size_t i = 0; i < n; ++i)
        body(i);
}
template <class Inner, class Body>
void svd_for_each(const exec::threads<Inner>& ex, std::size_t n, std::size_t grain, Body&& body) {
    ex.parallel_for(n, grain, [&](std::size_t begin, std::size_t end) {
        for (std::size_t i = begin; i < end; ++i)
            body(i);
    });
}

} // namespace adapt::detail
T2_NAMESPACE_END
