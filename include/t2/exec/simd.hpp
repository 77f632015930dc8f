#pragma once
// The SIMD executor over xsimd. Arch is an xsimd architecture tag; the default is the best
// one the compiler targets (xsimd::default_arch), so the ISA follows the compile flags of
// the user's translation unit: t2 itself never adds -march flags. On x86-64 without flags
// that is SSE2; build with -mavx2 -mfma (or -march=native) for AVX2+FMA or AVX-512.
#include "t2/exec/executor.hpp"

#if T2_ENABLE_SIMD
// GCC 12 warns about the `_mm512_undefined_ps()` operands inside its own AVX-512 intrinsic
// headers when xsimd's math functions inline them (GCC bug 105593, fixed in GCC 13). The
// warning is tied to the header's lines, so it is silenced where xsimd brings them in.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized" // the same false positive at -O1 (sanitizer builds)
#endif
#include <xsimd/xsimd.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

T2_NAMESPACE_BEGIN
namespace exec {

template <class Arch = xsimd::default_arch>
struct simd {
    using space = host_memory;
    using arch = Arch;
    static constexpr const char* name = "simd";
    // Number of f32 lanes in one register of this architecture.
    static constexpr std::size_t lanes = xsimd::batch<float, Arch>::size;
};

} // namespace exec

namespace detail {
// xsimd renamed hadd to reduce_add in 9.0; accept both.
template <class B>
T2_ALWAYS_INLINE auto reduce_add(const B& b) {
#if XSIMD_VERSION_MAJOR >= 9
    return xsimd::reduce_add(b);
#else
    return xsimd::hadd(b);
#endif
}
} // namespace detail
T2_NAMESPACE_END
#endif
