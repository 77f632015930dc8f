#pragma once
// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
//
// A counter-based generator maps (key, counter) to random bits with no hidden state, so
// element i of a random tensor is the same however the work is split across threads or
// devices, and a seed alone reproduces a run. philox is a small value type: copy it freely.
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <numbers>

#include "t2/config.hpp"

T2_NAMESPACE_BEGIN

class philox {
public:
    using block = std::array<std::uint32_t, 4>;

    constexpr explicit philox(std::uint64_t seed, std::uint64_t stream = 0) noexcept
        : key_{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)},
          stream_(stream) {}

    // Four independent 32-bit words for counter value `index`.
    constexpr block bits(std::uint64_t index) const noexcept {
        block ctr{static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32),
                  static_cast<std::uint32_t>(stream_), static_cast<std::uint32_t>(stream_ >> 32)};
        std::array<std::uint32_t, 2> key = key_;
        for (int round = 0; round < 10; ++round) {
            const std::uint64_t p0 = std::uint64_t{0xD2511F53u} * ctr[0];
            const std::uint64_t p1 = std::uint64_t{0xCD9E8D57u} * ctr[2];
            ctr = {static_cast<std::uint32_t>(p1 >> 32) ^ ctr[1] ^ key[0], static_cast<std::uint32_t>(p1),
                   static_cast<std::uint32_t>(p0 >> 32) ^ ctr[3] ^ key[1], static_cast<std::uint32_t>(p0)};
            key[0] += 0x9E3779B9u;
            key[1] += 0xBB67AE85u;
        }
        return ctr;
    }

    // Uniform in [0, 1) with 24 random bits (every value exactly representable in f32).
    constexpr float uniform(std::uint64_t index) const noexcept {
        return static_cast<float>(bits(index)[0] >> 8) * 0x1p-24f;
    }

    // Uniform in [lo, hi). Rounding can carry lo + (hi - lo) * u up to hi itself (e.g. lo = 1,
    // hi = 2, u = 1 - 2^-24), so that one case is clamped to the float just below hi.
    constexpr float uniform(std::uint64_t index, float lo, float hi) const noexcept {
        const float x = lo + (hi - lo) * uniform(index);
        return x < hi || !(lo < hi) ? x : float_below(hi);
    }

    // Standard normal via Box-Muller on two words of the same block.
    float normal(std::uint64_t index) const noexcept {
        const block b = bits(index);
        const double u1 = (static_cast<double>(b[0]) + 1.0) * 0x1p-32; // (0, 1]
        const double u2 = static_cast<double>(b[1]) * 0x1p-32;         // [0, 1)
        return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) *
                                  std::cos(2.0 * std::numbers::pi * u2));
    }

    // A generator for an independent stream (e.g. one per layer or per worker).
    constexpr philox split(std::uint64_t stream) const noexcept {
        philox out = *this;
        out.stream_ = stream_ * 0x9E3779B97F4A7C15ull + stream + 1;
        return out;
    }

private:
    static constexpr float float_below(float x) noexcept { // x > -inf, not NaN
        const auto bits = std::bit_cast<std::uint32_t>(x);
        if (x > 0)
            return std::bit_cast<float>(bits - 1);
        if (x == 0)
            return std::bit_cast<float>(0x80000001u); // -2^-149
        return std::bit_cast<float>(bits + 1);
    }

    std::array<std::uint32_t, 2> key_;
    std::uint64_t stream_;
};

T2_NAMESPACE_END
