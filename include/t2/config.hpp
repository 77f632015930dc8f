#pragma once
// Feature macros and the versioned namespace.
//
// Feature macros (define before including any t2 header, or via the build system):
//   T2_ENABLE_SIMD   1 if <xsimd/xsimd.hpp> is found, else 0. Enables exec::simd<Arch>.
//   T2_ENABLE_CUDA   1 when compiled by nvcc (__CUDACC__), else 0. Enables exec::cuda.
//   T2_DEBUG_CHECKS  1 unless NDEBUG is defined. Enables T2_ASSERT bounds/shape checks in
//                    hot paths; API boundaries check shapes in every build regardless.
//
// The inline namespace encodes the version and the features, so that two translation units
// built with different options (or versions) cannot be linked together silently: their
// symbols differ, and mixing them fails at link time instead of misbehaving at run time.
#include "t2/version.hpp"

#ifndef T2_ENABLE_SIMD
#if __has_include(<xsimd/xsimd.hpp>)
#define T2_ENABLE_SIMD 1
#else
#define T2_ENABLE_SIMD 0
#endif
#endif

#ifndef T2_ENABLE_CUDA
#ifdef __CUDACC__
#define T2_ENABLE_CUDA 1
#else
#define T2_ENABLE_CUDA 0
#endif
#endif

#ifndef T2_DEBUG_CHECKS
#ifdef NDEBUG
#define T2_DEBUG_CHECKS 0
#else
#define T2_DEBUG_CHECKS 1
#endif
#endif

#define T2_ABI_CAT_(a, b, c, d, e) v##a##_##b##_##c##_s##d##_c##e
#define T2_ABI_CAT(a, b, c, d, e) T2_ABI_CAT_(a, b, c, d, e)
#define T2_ABI_NAMESPACE                                                                   \
    T2_ABI_CAT(T2_VERSION_MAJOR, T2_VERSION_MINOR, T2_VERSION_PATCH, T2_ENABLE_SIMD,        \
               T2_ENABLE_CUDA)

#define T2_NAMESPACE_BEGIN                                                                 \
    namespace t2 {                                                                         \
    inline namespace T2_ABI_NAMESPACE {
#define T2_NAMESPACE_END                                                                   \
    }                                                                                      \
    }

#if defined(__GNUC__) || defined(__clang__)
#define T2_RESTRICT __restrict__
#define T2_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define T2_RESTRICT
#define T2_ALWAYS_INLINE inline
#endif
