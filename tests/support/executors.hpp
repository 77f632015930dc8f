#pragma once
// The executors every kernel is tested on against exec::scalar:
//   simd<Arch> for the default architecture and every other one in a hand list that the
//   compiler enables (AVX-512F, AVX2+FMA, SSE2, NEON64), each once;
//   threads<scalar> and threads<simd<>> on pools of 1, 2 and 3 threads (3 splits unevenly).
//
//   TEST_CASE_TEMPLATE_APPLY(id, t2_test::simd_executors);   // a std::tuple of simd<Arch>
//   t2_test::for_each_executor([&](const auto& ex, const std::string& name) { ... });
#include <doctest/doctest.h>

#include <cstddef>
#include <string>
#include <tuple>
#include <type_traits>

#include "t2/t2.hpp"

namespace t2_test {

// Pools shared by all tests, so each test does not start its own threads.
inline t2::exec::thread_pool& test_pool(std::size_t n_threads) {
    static t2::exec::thread_pool one(1), two(2), three(3);
    return n_threads <= 1 ? one : n_threads == 2 ? two : three;
}

inline constexpr std::size_t test_pool_sizes[] = {1, 2, 3};

#if T2_ENABLE_SIMD
namespace detail {
template <class... Archs>
struct arch_list {};

// Keeps the architectures the compiler enables, dropping the default (listed first).
template <class Kept, class... Archs>
struct enabled;
template <class... Kept>
struct enabled<arch_list<Kept...>> {
    using type = arch_list<Kept...>;
};
template <class... Kept, class A, class... Rest>
struct enabled<arch_list<Kept...>, A, Rest...>
    : std::conditional_t<A::supported() && !std::is_same_v<A, xsimd::default_arch>,
                         enabled<arch_list<Kept..., A>, Rest...>,
                         enabled<arch_list<Kept...>, Rest...>> {};

template <class List>
struct as_executors;
template <class... Archs>
struct as_executors<arch_list<Archs...>> {
    using types = std::tuple<t2::exec::simd<Archs>...>;
    template <class F>
    static void for_each(F& f) {
        (f(t2::exec::simd<Archs>{}, std::string("simd<") + Archs::name() + ">"), ...);
    }
};

using tested_archs = typename enabled<arch_list<xsimd::default_arch>, xsimd::avx512f,
                                      xsimd::fma3<xsimd::avx2>, xsimd::sse2, xsimd::neon64>::type;
} // namespace detail

// simd<Arch> for every tested architecture, as a type list for TEST_CASE_TEMPLATE_APPLY.
using simd_executors = detail::as_executors<detail::tested_archs>::types;
#endif

// Calls f(executor, name) for every simd<Arch> executor the compiler enables.
template <class F>
void for_each_simd_executor(F&& f) {
#if T2_ENABLE_SIMD
    detail::as_executors<detail::tested_archs>::for_each(f);
#else
    (void)f;
#endif
}

// Calls f(executor, name) for threads<scalar> and threads<simd<>> on each test pool.
template <class F>
void for_each_threads_executor(F&& f) {
    for (std::size_t n : test_pool_sizes) {
        const std::string pool = "(" + std::to_string(n) + " threads)";
        f(t2::exec::threads<t2::exec::scalar>(test_pool(n)), "threads<scalar>" + pool);
#if T2_ENABLE_SIMD
        f(t2::exec::threads<t2::exec::simd<>>(test_pool(n)), "threads<simd<>>" + pool);
#endif
    }
}

// Calls f(executor, name) for every executor that is tested against exec::scalar.
template <class F>
void for_each_executor(F&& f) {
    for_each_simd_executor(f);
    for_each_threads_executor(f);
}

} // namespace t2_test
