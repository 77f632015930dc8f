#pragma once
// for_each_task(ex, n, body): runs body(inner, i) for i in [0, n), where inner is the
// executor each task should use. On threads<Inner> the tasks are spread over the pool and
// each runs on Inner; on any other executor they run in order on the executor itself.
// Layers use it where the natural unit of parallel work (an attention head) is coarser
// than what a single kernel call would split.
#include <cstddef>

#include "t2/exec/threads.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

template <exec::cpu_executor E, class Body>
void for_each_task(const E& ex, std::size_t n, Body&& body) {
    for (std::size_t i = 0; i < n; ++i)
        body(ex, i);
}

template <class Inner, class Body>
void for_each_task(const exec::threads<Inner>& ex, std::size_t n, Body&& body) {
    ex.parallel_for(n, 1, [&](std::size_t begin, std::size_t end) {
        for (std::size_t i = begin; i < end; ++i)
            body(ex.inner(), i);
    });
}

} // namespace nn
T2_NAMESPACE_END
