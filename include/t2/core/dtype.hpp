#pragma once
// Element types. f32 is the compute type; bf16 and f16 are storage types that convert to
// and from f32 exactly as IEEE 754 round-to-nearest-even does (NaN stays NaN, overflow goes
// to infinity, f16 subnormals are kept). Arithmetic on them happens after widening to f32.
//
// A new storage type joins by specialising dtype_traits with its name, size and the two
// conversions; kernels that accept "any storage type" go through to_f32 / from_f32.
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "t2/config.hpp"

T2_NAMESPACE_BEGIN

struct bf16 {
    std::uint16_t bits = 0;
    friend constexpr bool operator==(bf16, bf16) = default;
};

struct f16 {
    std::uint16_t bits = 0;
    friend constexpr bool operator==(f16, f16) = default;
};

enum class dtype : std::uint8_t { f32, bf16, f16 };

namespace detail {

constexpr bf16 f32_to_bf16(float value) noexcept {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(value);
    if ((x & 0x7fffffffu) > 0x7f800000u) // NaN: keep the sign, force a quiet payload
        return bf16{static_cast<std::uint16_t>((x >> 16) | 0x0040u)};
    const std::uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
    return bf16{static_cast<std::uint16_t>((x + rounding) >> 16)};
}

constexpr float bf16_to_f32(bf16 value) noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(value.bits) << 16);
}

constexpr f16 f32_to_f16(float value) noexcept {
    const std::uint32_t x = std::bit_cast<std::uint32_t>(value);
    const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
    const std::uint32_t abs = x & 0x7fffffffu;
    if (abs > 0x7f800000u) // NaN
        return f16{static_cast<std::uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu))};
    if (abs >= 0x477ff000u) // rounds to >= 65520: infinity (also maps inf to inf)
        return f16{static_cast<std::uint16_t>(sign | 0x7c00u)};
    if (abs < 0x38800000u) { // below the smallest normal f16 (2^-14): subnormal or zero
        if (abs < 0x33000000u) // below half the smallest subnormal (2^-25): rounds to zero
            return f16{sign};
        const std::uint32_t exponent = abs >> 23;
        const std::uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
        const std::uint32_t shift = 126u - exponent; // 14..24 for this range
        const std::uint32_t halfway = 1u << (shift - 1);
        std::uint32_t result = mantissa >> shift;
        const std::uint32_t rest = mantissa & ((1u << shift) - 1u);
        if (rest > halfway || (rest == halfway && (result & 1u)))
            ++result;
        return f16{static_cast<std::uint16_t>(sign | result)};
    }
    // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits.
    const std::uint32_t rebased = abs - (112u << 23);
    const std::uint32_t rounding = 0xfffu + ((rebased >> 13) & 1u);
    return f16{static_cast<std::uint16_t>(sign | ((rebased + rounding) >> 13))};
}

constexpr float f16_to_f32(f16 value) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(value.bits & 0x8000u) << 16;
    const std::uint32_t exponent = (value.bits >> 10) & 0x1fu;
    std::uint32_t mantissa = value.bits & 0x3ffu;
    if (exponent == 0x1fu) // inf or NaN
        return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
    if (exponent != 0)
        return std::bit_cast<float>(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    if (mantissa == 0)
        return std::bit_cast<float>(sign);
    // Subnormal: normalise the mantissa.
    std::uint32_t e = 113u;
    while ((mantissa & 0x400u) == 0) {
        mantissa <<= 1;
        --e;
    }
    return std::bit_cast<float>(sign | (e << 23) | ((mantissa & 0x3ffu) << 13));
}

} // namespace detail

template <class T>
struct dtype_traits; // specialise for new storage types

template <>
struct dtype_traits<float> {
    static constexpr dtype id = dtype::f32;
    static constexpr std::string_view name = "f32";
    static constexpr float to_f32(float v) noexcept { return v; }
    static constexpr float from_f32(float v) noexcept { return v; }
};

template <>
struct dtype_traits<bf16> {
    static constexpr dtype id = dtype::bf16;
    static constexpr std::string_view name = "bf16";
    static constexpr float to_f32(bf16 v) noexcept { return detail::bf16_to_f32(v); }
    static constexpr bf16 from_f32(float v) noexcept { return detail::f32_to_bf16(v); }
};

template <>
struct dtype_traits<f16> {
    static constexpr dtype id = dtype::f16;
    static constexpr std::string_view name = "f16";
    static constexpr float to_f32(f16 v) noexcept { return detail::f16_to_f32(v); }
    static constexpr f16 from_f32(float v) noexcept { return detail::f32_to_f16(v); }
};

template <class T>
concept storage_type = requires(T v, float f) {
    { dtype_traits<T>::to_f32(v) } -> std::same_as<float>;
    { dtype_traits<T>::from_f32(f) } -> std::same_as<T>;
};

template <storage_type T>
constexpr float to_f32(T v) noexcept {
    return dtype_traits<T>::to_f32(v);
}

template <storage_type T>
constexpr T from_f32(float v) noexcept {
    return dtype_traits<T>::from_f32(v);
}

constexpr std::string_view name_of(dtype d) noexcept {
    switch (d) {
    case dtype::f32: return "f32";
    case dtype::bf16: return "bf16";
    case dtype::f16: return "f16";
    }
    return "?";
}

constexpr std::size_t size_of(dtype d) noexcept { return d == dtype::f32 ? 4 : 2; }

T2_NAMESPACE_END
