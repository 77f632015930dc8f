#pragma once
// The Executor concept. An executor is a value passed as the first argument of every
// kernel; its type selects the implementation (overload resolution on the executor type),
// its state carries what the implementation needs (a thread pool, a CUDA stream).
//
// Every executor names the memory space it reads and writes (`space`) and a short `name`
// for benchmarks and messages. CPU executors work on host memory.
#include <concepts>
#include <cstddef>

#include "t2/core/memory.hpp"

T2_NAMESPACE_BEGIN
namespace exec {

template <class E>
concept executor = requires(const E& e) {
    typename E::space;
    requires memory_space<typename E::space>;
    { E::name } -> std::convertible_to<const char*>;
};

template <class E>
concept cpu_executor = executor<E> && std::same_as<typename E::space, host_memory>;

} // namespace exec
T2_NAMESPACE_END
