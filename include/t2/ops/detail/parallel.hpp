#pragma once
// How kernels that are written once for every CPU executor split their work:
//
//   for_each_task(ex, n, body)                  body(inner, i) for i in [0, n)
//   for_each_task_in_slot(ex, n, body)          body(inner, i, slot), slot < task_slots(ex, n):
//                                               tasks with the same slot never overlap in time,
//                                               so a slot can index preallocated scratch
//   for_element_ranges(ex, n, grain, body)      body(begin, end) over the elements [0, n)
//   for_row_ranges(ex, rows, cols, grain, body) body(begin, end) over the rows
//   for_column_ranges(ex, rows, cols, grain, body)
//                                               body(begin, end) over the columns
//
// On threads<Inner> the work is spread over the pool (tasks run on Inner; ranges as
// for_elements and for_rows split them); on any other executor it runs in order,
// in one piece, on the calling thread. for_each_task serves work whose natural unit (an
// attention head) is coarser than what one kernel call would split; column ranges serve
// sums over rows into one output row (a parameter gradient), which then need no locks and
// come out the same for any thread count.
#include <algorithm>
#include <atomic>
#include <cstddef>

#include "t2/exec/threads.hpp"
#include "t2/ops/detail/kernel_support.hpp"

T2_NAMESPACE_BEGIN
namespace ops::detail {

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

template <exec::cpu_executor E>
std::size_t task_slots(const E&, std::size_t) noexcept {
    return 1;
}

template <class Inner>
std::size_t task_slots(const exec::threads<Inner>& ex, std::size_t n) noexcept {
    return std::max<std::size_t>(1, std::min(n, ex.max_chunks()));
}

template <exec::cpu_executor E, class Body>
void for_each_task_in_slot(const E& ex, std::size_t n, Body&& body) {
    for (std::size_t i = 0; i < n; ++i)
        body(ex, i, std::size_t{0});
}

// parallel_for runs each of its chunks once, on one thread: a chunk claims a slot.
template <class Inner, class Body>
void for_each_task_in_slot(const exec::threads<Inner>& ex, std::size_t n, Body&& body) {
    std::atomic<std::size_t> next_slot{0};
    ex.parallel_for(n, 1, [&](std::size_t begin, std::size_t end) {
        const std::size_t slot = next_slot.fetch_add(1, std::memory_order_relaxed);
        for (std::size_t i = begin; i < end; ++i)
            body(ex.inner(), i, slot);
    });
}

template <exec::cpu_executor E, class Body>
void for_element_ranges(const E&, std::size_t n, std::size_t, Body&& body) {
    body(std::size_t{0}, n);
}

template <class Inner, class Body>
void for_element_ranges(const exec::threads<Inner>& ex, std::size_t n, std::size_t grain,
                        Body&& body) {
    for_elements(ex, n, grain, body);
}

template <exec::cpu_executor E, class Body>
void for_row_ranges(const E&, std::size_t rows, std::size_t, std::size_t, Body&& body) {
    body(std::size_t{0}, rows);
}

template <class Inner, class Body>
void for_row_ranges(const exec::threads<Inner>& ex, std::size_t rows, std::size_t cols,
                    std::size_t grain, Body&& body) {
    for_rows(ex, rows, cols, grain, body);
}

template <exec::cpu_executor E, class Body>
void for_column_ranges(const E&, std::size_t, std::size_t cols, std::size_t, Body&& body) {
    body(std::size_t{0}, cols);
}

// Columns in pieces of whole 64-column blocks holding at least `grain` elements.
template <class Inner, class Body>
void for_column_ranges(const exec::threads<Inner>& ex, std::size_t rows, std::size_t cols,
                       std::size_t grain, Body&& body) {
    for_elements(ex, cols, std::max<std::size_t>(1, grain / std::max<std::size_t>(rows, 1)),
                 body);
}

} // namespace ops::detail
T2_NAMESPACE_END
