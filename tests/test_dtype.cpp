// bf16 and f16: exact round-to-nearest-even conversion to and from f32.
//
// Three independent references, none of which shares code with t2/core/dtype.hpp:
//  - exact arithmetic in double (scale by the quantum, std::nearbyint ties-to-even, decode
//    with std::ldexp), used for every test below;
//  - the compiler's _Float16 where it has one (GCC 12 on x86-64; clang 14 does not);
//  - a table of edge cases written by numpy (f16) and torch (bf16).
#include <doctest/doctest.h>

#include <bit>
#include <cfenv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ios>
#include <limits>

#include "t2/core/dtype.hpp"

namespace {

using t2::bf16;
using t2::f16;

// ---- independent references ------------------------------------------------------------

// Decodes f16 bits with the formula of IEEE 754 binary16.
double ref_f16_value(std::uint16_t bits) {
    const int sign = bits >> 15;
    const int exponent = (bits >> 10) & 0x1f;
    const int mantissa = bits & 0x3ff;
    double v;
    if (exponent == 0x1f)
        v = mantissa ? std::numeric_limits<double>::quiet_NaN()
                     : std::numeric_limits<double>::infinity();
    else if (exponent == 0)
        v = std::ldexp(mantissa, -24);
    else
        v = std::ldexp(1024 + mantissa, exponent - 25);
    return sign ? -v : v;
}

// Rounds |f| to `mantissa_bits` fraction bits with the smallest normal exponent `min_exp`
// (subnormals below it keep the same quantum), ties to even, in exact double arithmetic.
// Returns the rounded magnitude (may be a power of two above the largest finite value).
double ref_round(float f, int mantissa_bits, int min_exp) {
    const double a = std::fabs(static_cast<double>(f));
    if (a == 0)
        return 0;
    int e = 0;
    (void)std::frexp(a, &e); // a in [2^(e-1), 2^e)
    const int exponent = std::max(e - 1, min_exp);
    const double quantum = std::ldexp(1.0, exponent - mantissa_bits);
    return std::nearbyint(a / quantum) * quantum; // a / quantum is exact; default rounding = ties to even
}

// f32 -> f16 bits, round to nearest even. NaN is reported as 0x7e00 | sign (callers check
// NaN-ness, not payloads).
std::uint16_t ref_f32_to_f16(float f) {
    const std::uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    if (std::isnan(f))
        return sign | 0x7e00;
    if (std::isinf(f))
        return sign | 0x7c00;
    const double v = ref_round(f, 10, -14);
    if (v > 65504.0)
        return sign | 0x7c00;
    if (v < 0x1p-14) // subnormal (or zero): v is a multiple of 2^-24
        return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(v * 0x1p24));
    int e = 0;
    (void)std::frexp(v, &e);
    const int exponent = e - 1;
    const auto mantissa = static_cast<std::uint16_t>(std::ldexp(v, 10 - exponent) - 1024);
    return static_cast<std::uint16_t>(sign | ((exponent + 15) << 10) | mantissa);
}

// f32 -> bf16 bits, round to nearest even (bf16 has f32's exponent range, 7 fraction bits).
std::uint16_t ref_f32_to_bf16(float f) {
    const std::uint16_t sign = std::signbit(f) ? 0x8000 : 0;
    if (std::isnan(f))
        return sign | 0x7fc0;
    if (std::isinf(f))
        return sign | 0x7f80;
    const double v = ref_round(f, 7, -126);
    const double max_bf16 = std::ldexp(255.0, 120); // 0x7f7f = (2 - 2^-7) * 2^127
    if (v > max_bf16)
        return sign | 0x7f80;
    // v is a bf16 value, so it is exact in f32 with its low 16 bits clear.
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(static_cast<float>(v));
    if ((bits & 0xffffu) != 0)
        return 0xffff; // cannot happen; a NaN pattern that makes the comparison fail
    return static_cast<std::uint16_t>(sign | (bits >> 16));
}

float from_bits(std::uint32_t bits) { return std::bit_cast<float>(bits); }
std::uint32_t to_bits(float f) { return std::bit_cast<std::uint32_t>(f); }

bool f16_is_nan(std::uint16_t b) { return (b & 0x7c00) == 0x7c00 && (b & 0x3ff) != 0; }
bool bf16_is_nan(std::uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x7f) != 0; }

std::uint16_t t2_f16(float f) { return t2::from_f32<f16>(f).bits; }
std::uint16_t t2_bf16(float f) { return t2::from_f32<bf16>(f).bits; }

#if defined(__FLT16_MAX__)
std::uint16_t native_f16(float f) {
    const auto h = static_cast<_Float16>(f);
    std::uint16_t bits;
    std::memcpy(&bits, &h, sizeof bits);
    return bits;
}
#endif

// Checks t2's conversion of one f32 against the reference; returns false (and reports) on a
// mismatch. NaN must stay NaN with its sign; the payload is free.
bool check_conversion(float f, std::uint16_t got, std::uint16_t want, bool (*is_nan)(std::uint16_t)) {
    const bool ok = std::isnan(f) ? is_nan(got) && (got & 0x8000) == (want & 0x8000) : got == want;
    if (!ok) {
        INFO("f32 bits 0x" << std::hex << to_bits(f) << " (" << f << "): got 0x" << got
                           << ", want 0x" << want);
        CHECK(ok);
    }
    return ok;
}

bool check_f16(float f) { return check_conversion(f, t2_f16(f), ref_f32_to_f16(f), f16_is_nan); }
bool check_bf16(float f) { return check_conversion(f, t2_bf16(f), ref_f32_to_bf16(f), bf16_is_nan); }

// Edge cases; f16 column written by numpy (np.float32 -> np.float16), bf16 column by torch
// (torch.float32 -> torch.bfloat16). See the comment at the top of the file.
struct edge {
    std::uint32_t f32;
    std::uint16_t f16;
    std::uint16_t bf16;
};
constexpr edge numpy_torch_edges[] = {
    {0x00000000u, 0x0000u, 0x0000u}, // 0.0
    {0x80000000u, 0x8000u, 0x8000u}, // -0.0
    {0x3f800000u, 0x3c00u, 0x3f80u}, // 1.0
    {0xbf800000u, 0xbc00u, 0xbf80u}, // -1.0
    {0x477fe000u, 0x7bffu, 0x4780u}, // 65504.0 (largest f16)
    {0x477feffdu, 0x7bffu, 0x4780u}, // 65519.99
    {0x477ff000u, 0x7c00u, 0x4780u}, // 65520.0 (tie -> inf)
    {0xc77ff000u, 0xfc00u, 0xc780u}, // -65520.0
    {0x47800000u, 0x7c00u, 0x4780u}, // 65536.0
    {0x501502f9u, 0x7c00u, 0x5015u}, // 1e10
    {0x33800000u, 0x0001u, 0x3380u}, // 2^-24 (smallest f16 subnormal)
    {0x33000000u, 0x0000u, 0x3300u}, // 2^-25 (tie -> 0)
    {0x33000001u, 0x0001u, 0x3300u}, // just above 2^-25
    {0x32ffffffu, 0x0000u, 0x3300u}, // just below 2^-25
    {0x33c00000u, 0x0002u, 0x33c0u}, // 1.5 * 2^-24 (tie -> 2)
    {0x34200000u, 0x0002u, 0x3420u}, // 2.5 * 2^-24 (tie -> 2)
    {0x38800000u, 0x0400u, 0x3880u}, // 2^-14 (smallest f16 normal)
    {0x387fe000u, 0x0400u, 0x3880u}, // 2^-14 - 2^-25 (tie, rounds up into the normals)
    {0x3f801000u, 0x3c00u, 0x3f80u}, // 1 + 2^-11 (tie -> even)
    {0x3f803000u, 0x3c02u, 0x3f80u}, // 1 + 3 * 2^-11 (tie -> even, up)
    {0x3f801001u, 0x3c01u, 0x3f80u}, // just above a tie
    {0x40490fdbu, 0x4248u, 0x4049u}, // pi
    {0x322bcc77u, 0x0000u, 0x322cu}, // 1e-8
    {0x0da24260u, 0x0000u, 0x0da2u}, // 1e-30
    {0x7f61b1e6u, 0x7c00u, 0x7f62u}, // 3e38
    {0x7f7fffffu, 0x7c00u, 0x7f80u}, // largest f32 (bf16 -> inf)
    {0x3f808000u, 0x3c04u, 0x3f80u}, // 1 + 2^-8 (bf16 tie -> even, down)
    {0x3f818000u, 0x3c0cu, 0x3f82u}, // 1 + 3 * 2^-8 (bf16 tie -> even, up)
    {0x3f808008u, 0x3c04u, 0x3f81u}, // just above a bf16 tie
    {0x7f800000u, 0x7c00u, 0x7f80u}, // inf
    {0xff800000u, 0xfc00u, 0xff80u}, // -inf
    {0x3dcccccdu, 0x2e66u, 0x3dcdu}, // 0.1
    {0xb6f4f286u, 0x807au, 0xb6f5u}, // -7.3e-6
    {0x449a522bu, 0x64d3u, 0x449au}, // 1234.5678
    {0x00800000u, 0x0000u, 0x0080u}, // 2^-126 (smallest f32 normal)
    {0x00000001u, 0x0000u, 0x0000u}, // 2^-149 (smallest f32 subnormal)
    {0x00010000u, 0x0000u, 0x0001u}, // 2^-133 (smallest bf16 subnormal)
    {0x00008000u, 0x0000u, 0x0000u}, // 2^-134 (tie -> 0)
    {0x00018000u, 0x0000u, 0x0002u}, // 3 * 2^-134 (tie -> 2)
};

} // namespace

// ---- compile time ------------------------------------------------------------------------

static_assert(t2::from_f32<f16>(1.0f).bits == 0x3c00);
static_assert(t2::from_f32<f16>(-2.0f).bits == 0xc000);
static_assert(t2::from_f32<f16>(65520.0f).bits == 0x7c00);
static_assert(t2::from_f32<f16>(0x1p-24f).bits == 0x0001);
static_assert(t2::to_f32(f16{0x3555}) == 0x1.554p-2f);
static_assert(t2::to_f32(f16{0x0001}) == 0x1p-24f); // subnormal path is constexpr too
static_assert(t2::from_f32<bf16>(1.0f).bits == 0x3f80);
static_assert(t2::from_f32<bf16>(0x1.01p0f).bits == 0x3f80); // tie -> even
static_assert(t2::to_f32(bf16{0xc049}) == -0x1.92p1f);
static_assert(t2::to_f32(1.5f) == 1.5f && t2::from_f32<float>(1.5f) == 1.5f);
static_assert(t2::storage_type<float> && t2::storage_type<bf16> && t2::storage_type<f16>);
static_assert(!t2::storage_type<int>);
static_assert(sizeof(bf16) == 2 && sizeof(f16) == 2);
static_assert(t2::dtype_traits<bf16>::id == t2::dtype::bf16 &&
              t2::dtype_traits<f16>::name == "f16");
static_assert(t2::name_of(t2::dtype::bf16) == "bf16" && t2::size_of(t2::dtype::f32) == 4 &&
              t2::size_of(t2::dtype::f16) == 2);

// ---- tests -------------------------------------------------------------------------------

TEST_CASE("dtype: the rounding mode is the default (the references rely on it)") {
    REQUIRE(std::fegetround() == FE_TONEAREST);
    CHECK(std::nearbyint(2.5) == 2.0);
    CHECK(std::nearbyint(3.5) == 4.0);
}

TEST_CASE("f16: every bit pattern decodes as IEEE binary16 and round-trips") {
    std::size_t nan_count = 0;
    for (std::uint32_t b = 0; b <= 0xffff; ++b) {
        const auto bits = static_cast<std::uint16_t>(b);
        const float f = t2::to_f32(f16{bits});
        const double want = ref_f16_value(bits);
        const f16 back = t2::from_f32<f16>(f);
        if (f16_is_nan(bits)) {
            ++nan_count;
            const bool ok = std::isnan(f) && f16_is_nan(back.bits) &&
                            std::signbit(f) == ((bits & 0x8000) != 0) &&
                            (back.bits & 0x8000) == (bits & 0x8000);
            if (!ok) {
                INFO("f16 NaN 0x" << std::hex << b << " -> f32 " << f << " -> 0x" << back.bits);
                CHECK(ok);
            }
            continue;
        }
        const bool ok = static_cast<double>(f) == want && std::signbit(f) == std::signbit(want) &&
                        back.bits == bits;
        if (!ok) {
            INFO("f16 0x" << std::hex << b << " -> f32 " << f << " (want " << want << ") -> 0x"
                          << back.bits);
            CHECK(ok);
        }
    }
    CHECK(nan_count == 2 * 1023);
}

TEST_CASE("bf16: every bit pattern decodes as the top half of an f32 and round-trips") {
    std::size_t nan_count = 0;
    for (std::uint32_t b = 0; b <= 0xffff; ++b) {
        const auto bits = static_cast<std::uint16_t>(b);
        const float f = t2::to_f32(bf16{bits});
        const bf16 back = t2::from_f32<bf16>(f);
        if (bf16_is_nan(bits)) {
            ++nan_count;
            const bool ok = std::isnan(f) && bf16_is_nan(back.bits) &&
                            (back.bits & 0x8000) == (bits & 0x8000);
            if (!ok) {
                INFO("bf16 NaN 0x" << std::hex << b << " -> 0x" << back.bits);
                CHECK(ok);
            }
            continue;
        }
        const bool ok = to_bits(f) == (b << 16) && back.bits == bits;
        if (!ok) {
            INFO("bf16 0x" << std::hex << b << " -> f32 0x" << to_bits(f) << " -> 0x" << back.bits);
            CHECK(ok);
        }
    }
    CHECK(nan_count == 2 * 127);
}

TEST_CASE("f16 and bf16: edge cases against numpy and torch") {
    for (const edge& e : numpy_torch_edges) {
        const float f = from_bits(e.f32);
        INFO("f32 bits 0x" << std::hex << e.f32 << " (" << f << ")");
        CHECK(t2_f16(f) == e.f16);
        CHECK(t2_bf16(f) == e.bf16);
        // The table also validates the double references the sweeps below rely on.
        CHECK(ref_f32_to_f16(f) == e.f16);
        CHECK(ref_f32_to_bf16(f) == e.bf16);
    }
}

TEST_CASE("f16: named edge cases") {
    CHECK(t2_f16(65504.0f) == 0x7bff);
    CHECK(t2_f16(65519.99f) == 0x7bff);
    CHECK(t2_f16(std::nextafter(65520.0f, 0.0f)) == 0x7bff);
    CHECK(t2_f16(65520.0f) == 0x7c00);
    CHECK(t2_f16(-65520.0f) == 0xfc00);
    CHECK(t2_f16(std::numeric_limits<float>::max()) == 0x7c00);
    CHECK(t2_f16(std::numeric_limits<float>::infinity()) == 0x7c00);
    CHECK(t2_f16(-std::numeric_limits<float>::infinity()) == 0xfc00);
    CHECK(t2_f16(0x1p-24f) == 0x0001);
    CHECK(t2_f16(-0x1p-24f) == 0x8001);
    CHECK(t2_f16(0x1p-25f) == 0x0000);                           // tie -> even (zero)
    CHECK(t2_f16(-0x1p-25f) == 0x8000);                          // keeps the sign
    CHECK(t2_f16(std::nextafter(0x1p-25f, 1.0f)) == 0x0001);     // just above the tie
    CHECK(t2_f16(std::nextafter(0x1p-25f, 0.0f)) == 0x0000);
    CHECK(t2_f16(0x1p-149f) == 0x0000);                          // f32 subnormals -> zero
    CHECK(t2_f16(0.0f) == 0x0000);
    CHECK(t2_f16(-0.0f) == 0x8000);
    CHECK(t2_f16(0x1.ffcp-15f) == 0x0400); // largest subnormal + half ulp: tie -> even = smallest normal
    CHECK(t2_f16(0x1.ff8p-15f) == 0x03ff); // largest subnormal
    const float qnan = std::numeric_limits<float>::quiet_NaN();
    CHECK(f16_is_nan(t2_f16(qnan)));
    CHECK(f16_is_nan(t2_f16(-qnan)));
    CHECK((t2_f16(-qnan) & 0x8000) == 0x8000);
    CHECK(f16_is_nan(t2_f16(from_bits(0x7f800001u)))); // payload only in the dropped bits
    CHECK(f16_is_nan(t2_f16(from_bits(0xff800001u))));
    CHECK(f16_is_nan(t2_f16(from_bits(0x7fffffffu))));
    CHECK(std::isnan(t2::to_f32(f16{0x7c01})));
    CHECK(std::isinf(t2::to_f32(f16{0x7c00})));
    CHECK(t2::to_f32(f16{0xfc00}) == -std::numeric_limits<float>::infinity());
    CHECK(std::signbit(t2::to_f32(f16{0x8000})));
}

TEST_CASE("bf16: named edge cases") {
    CHECK(t2_bf16(std::numeric_limits<float>::max()) == 0x7f80); // rounds up to infinity
    CHECK(t2_bf16(-std::numeric_limits<float>::max()) == 0xff80);
    CHECK(t2_bf16(from_bits(0x7f7f7fffu)) == 0x7f7f); // largest that stays finite
    CHECK(t2_bf16(from_bits(0x7f7f8000u)) == 0x7f80); // tie above the largest bf16 -> inf
    CHECK(t2_bf16(std::numeric_limits<float>::infinity()) == 0x7f80);
    CHECK(t2_bf16(-std::numeric_limits<float>::infinity()) == 0xff80);
    CHECK(t2_bf16(-0.0f) == 0x8000);
    CHECK(t2_bf16(0x1p-149f) == 0x0000);
    CHECK(t2_bf16(0x1p-133f) == 0x0001);
    const float qnan = std::numeric_limits<float>::quiet_NaN();
    CHECK(bf16_is_nan(t2_bf16(qnan)));
    CHECK(bf16_is_nan(t2_bf16(-qnan)));
    CHECK((t2_bf16(-qnan) & 0x8000) == 0x8000);
    // Payload only in the low 16 bits: plain truncation would give infinity.
    CHECK(bf16_is_nan(t2_bf16(from_bits(0x7f800001u))));
    CHECK(bf16_is_nan(t2_bf16(from_bits(0xff800001u))));
    CHECK(bf16_is_nan(t2_bf16(from_bits(0x7fffffffu)))); // must not carry into the sign
    CHECK((t2_bf16(from_bits(0x7fffffffu)) & 0x8000) == 0);
}

TEST_CASE("f16: every tie between neighbours rounds to even, and its float neighbours do not") {
    // For each pair of adjacent finite f16 values (lo, hi) the midpoint needs 12 significant
    // bits, so it is exact in f32; one f32 ulp either side must round to the nearer value.
    std::size_t checked = 0;
    for (std::uint16_t lo = 0; lo < 0x7bff; ++lo) {
        const auto hi = static_cast<std::uint16_t>(lo + 1);
        const float flo = t2::to_f32(f16{lo});
        const float fhi = t2::to_f32(f16{hi});
        const float mid = (flo + fhi) / 2;
        REQUIRE(static_cast<double>(mid) == (static_cast<double>(flo) + fhi) / 2);
        const std::uint16_t even = (lo & 1) ? hi : lo;
        for (const std::uint16_t sign : {std::uint16_t{0}, std::uint16_t{0x8000}}) {
            const float s = sign ? -1.0f : 1.0f;
            const bool ok = t2_f16(s * mid) == (sign | even) &&
                            t2_f16(s * std::nextafter(mid, 0.0f)) == (sign | lo) &&
                            t2_f16(s * std::nextafter(mid, 1e9f)) == (sign | hi);
            if (!ok) {
                INFO("tie between f16 0x" << std::hex << lo << " and 0x" << hi << " (sign 0x"
                                          << sign << ")");
                CHECK(ok);
            }
            checked += 3;
        }
    }
    // Between the largest finite f16 and the (virtual) next power of two, 2^16: 65520.
    CHECK(t2_f16(65520.0f) == 0x7c00);
    CHECK(t2_f16(std::nextafter(65520.0f, 0.0f)) == 0x7bff);
    CHECK(checked == 6 * 0x7bff);
}

TEST_CASE("bf16: every tie between neighbours rounds to even, and its float neighbours do not") {
    for (std::uint16_t lo = 0; lo < 0x7f7f; ++lo) {
        const auto hi = static_cast<std::uint16_t>(lo + 1);
        // The midpoint of two adjacent bf16 values is their f32 bits with 0x8000 appended.
        const std::uint32_t mid = (std::uint32_t{lo} << 16) | 0x8000u;
        const std::uint16_t even = (lo & 1) ? hi : lo;
        for (const std::uint32_t sign : {0u, 0x80000000u}) {
            const auto s16 = static_cast<std::uint16_t>(sign >> 16);
            const bool ok = t2_bf16(from_bits(sign | mid)) == (s16 | even) &&
                            t2_bf16(from_bits(sign | (mid - 1))) == (s16 | lo) &&
                            t2_bf16(from_bits(sign | (mid + 1))) == (s16 | hi) &&
                            ref_f32_to_bf16(from_bits(sign | mid)) == (s16 | even);
            if (!ok) {
                INFO("tie between bf16 0x" << std::hex << lo << " and 0x" << hi);
                CHECK(ok);
            }
        }
    }
}

TEST_CASE("f16 and bf16: a prime-stride sweep over all 2^32 f32 bit patterns") {
    // 2^32 / 1021 ~ 4.2 million patterns of every sign, exponent and mantissa, NaNs included.
    constexpr std::uint64_t stride = 1021;
    std::size_t n = 0, bad_f16 = 0, bad_bf16 = 0;
    for (std::uint64_t b = 0; b <= 0xffffffffu; b += stride, ++n) {
        const float f = from_bits(static_cast<std::uint32_t>(b));
        if (!check_f16(f) && ++bad_f16 > 20)
            FAIL("too many f16 mismatches");
        if (!check_bf16(f) && ++bad_bf16 > 20)
            FAIL("too many bf16 mismatches");
    }
    CHECK(n == 0xffffffffu / stride + 1);
    CHECK(bad_f16 == 0);
    CHECK(bad_bf16 == 0);
}

TEST_CASE("f16: the f16-relevant f32 range, densely") {
    // Every 37th pattern from 2^-26 up to 2^17 (9.7 million): each f16 binade, the
    // subnormals and the overflow threshold, at mantissa positions of every residue.
    std::size_t bad = 0;
    for (std::uint32_t b = 0x32800000u; b <= 0x48000000u; b += 37) {
        if (!check_f16(from_bits(b)) && ++bad > 20)
            FAIL("too many f16 mismatches");
    }
    CHECK(bad == 0);
}

#if defined(__FLT16_MAX__)
TEST_CASE("f16: agrees with the compiler's _Float16 conversion") {
    // Cross-checks the double reference and t2 against the compiler (libgcc's soft-fp or the
    // F16C instruction, depending on flags).
    std::size_t bad = 0;
    auto check_native = [&](float f) {
        const std::uint16_t native = native_f16(f);
        const std::uint16_t got = t2_f16(f);
        const bool ok = std::isnan(f) ? f16_is_nan(got) && f16_is_nan(native)
                                      : got == native && ref_f32_to_f16(f) == native;
        if (!ok) {
            INFO("f32 bits 0x" << std::hex << to_bits(f) << ": t2 0x" << got << ", _Float16 0x"
                               << native << ", reference 0x" << ref_f32_to_f16(f));
            CHECK(ok);
            ++bad;
        }
    };
    for (std::uint64_t b = 0; b <= 0xffffffffu && bad < 20; b += 4099)
        check_native(from_bits(static_cast<std::uint32_t>(b)));
    for (std::uint32_t b = 0x33000000u - 64; b <= 0x33000000u + 64; ++b)
        check_native(from_bits(b));
    for (std::uint32_t b = 0x477ff000u - 64; b <= 0x477ff000u + 64; ++b)
        check_native(from_bits(b));
    for (std::uint16_t h = 0; h < 0x7bff; ++h) { // every tie between finite neighbours
        const float mid = (t2::to_f32(f16{h}) + t2::to_f32(f16{static_cast<std::uint16_t>(h + 1)})) / 2;
        check_native(mid);
        check_native(-mid);
    }
    CHECK(bad == 0);
}
#endif
