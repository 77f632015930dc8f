#pragma once
// for_each_task(ex, n, body): runs body(inner, i) for i in [0, n), where inner is the
// executor each task should use. On threads<Inner> the tasks are spread over the pool and
// each runs on Inner; on any other executor they run in order on the executor itself.
// Layers use it where the natural unit of parallel work (an attention head) is coarser
// than what a single kernel call would split. It lives with the kernels (ops/detail), which
// need it too; layers use it under this name.
#include "t2/ops/detail/parallel.hpp"

T2_NAMESPACE_BEGIN
namespace nn {

using ops::detail::for_each_task;

} // namespace nn
T2_NAMESPACE_END
