#pragma once
// Shapes that mix compile-time and run-time extents, in the spirit of std::extents (C++23).
//
//   extents<dyn, 64>   rank 2, first extent chosen at run time, second fixed at 64
//   dims<3>            rank 3, every extent dynamic (the common case: read from a file)
//
// Only the dynamic extents are stored, so extents<4, 4> is an empty object and a tensor
// built on it has a size known to the compiler.
#include <array>
#include <cstddef>
#include <limits>
#include <ostream>
#include <span>
#include <type_traits>
#include <utility>

#include "t2/core/error.hpp"

T2_NAMESPACE_BEGIN

inline constexpr std::size_t dyn = std::dynamic_extent;

namespace detail {

// Multiplies extents, throwing instead of wrapping around on overflow.
constexpr std::size_t checked_product(std::span<const std::size_t> values) {
    std::size_t n = 1;
    for (std::size_t v : values) {
        T2_CHECK(v == 0 || n <= std::numeric_limits<std::size_t>::max() / v,
                 "shape element count overflows size_t");
        n *= v;
    }
    return n;
}

} // namespace detail

template <std::size_t... E>
class extents {
public:
    static constexpr std::size_t rank() noexcept { return sizeof...(E); }
    static constexpr std::size_t rank_dynamic() noexcept { return ((E == dyn) + ... + 0); }
    static constexpr std::size_t static_extent(std::size_t i) noexcept { return static_[i]; }
    static constexpr bool is_static = rank_dynamic() == 0;

    constexpr extents() noexcept = default;

    // Either the dynamic extents only (as std::extents), or all rank() extents, in which
    // case the static ones must match.
    template <class... I>
        requires((std::is_integral_v<I> && ...) && sizeof...(I) > 0 &&
                 (sizeof...(I) == rank_dynamic() || sizeof...(I) == rank()))
    constexpr explicit extents(I... values) {
        const std::array<std::size_t, sizeof...(I)> v{checked_size(values)...};
        if constexpr (sizeof...(I) == rank_dynamic() && rank_dynamic() != rank()) {
            dynamic_ = v;
        } else {
            std::size_t d = 0;
            for (std::size_t i = 0; i < rank(); ++i) {
                if (static_[i] == dyn)
                    dynamic_[d++] = v[i];
                else
                    T2_CHECK(v[i] == static_[i], "extent ", i, " is ", v[i],
                             " but the shape fixes it to ", static_[i]);
            }
        }
    }

    // From all rank() extents given at run time (e.g. read from a file).
    constexpr explicit extents(const std::array<std::size_t, rank()>& all) {
        std::size_t d = 0;
        for (std::size_t i = 0; i < rank(); ++i) {
            if (static_[i] == dyn)
                dynamic_[d++] = all[i];
            else
                T2_CHECK(all[i] == static_[i], "extent ", i, " is ", all[i],
                         " but the shape fixes it to ", static_[i]);
        }
    }

    // Widening conversion: a static extent may become dynamic, never the other way round
    // without a check (use the array constructor for that).
    template <std::size_t... F>
        requires(sizeof...(F) == sizeof...(E) && ((E == dyn || E == F) && ...))
    constexpr extents(const extents<F...>& other) noexcept
        : extents(other.all(), unchecked{}) {}

    constexpr std::size_t extent(std::size_t i) const noexcept {
        if (static_[i] != dyn)
            return static_[i];
        return dynamic_[dynamic_index_[i]];
    }

    constexpr std::array<std::size_t, rank()> all() const noexcept {
        std::array<std::size_t, rank()> out{};
        for (std::size_t i = 0; i < rank(); ++i)
            out[i] = extent(i);
        return out;
    }

    constexpr std::size_t size() const noexcept {
        if constexpr (is_static)
            return static_size;
        std::size_t n = 1;
        for (std::size_t i = 0; i < rank(); ++i)
            n *= extent(i);
        return n;
    }

    template <std::size_t... F>
    friend constexpr bool operator==(const extents& a, const extents<F...>& b) noexcept {
        if constexpr (sizeof...(F) != sizeof...(E))
            return false;
        else
            return a.all() == b.all();
    }

    friend std::ostream& operator<<(std::ostream& out, const extents& e) {
        out << '[';
        for (std::size_t i = 0; i < rank(); ++i)
            out << (i ? ", " : "") << e.extent(i);
        return out << ']';
    }

    static constexpr std::size_t static_size = [] {
        std::size_t n = 1;
        for (std::size_t v : std::array<std::size_t, sizeof...(E)>{E...})
            n *= (v == dyn ? 1 : v);
        return n;
    }();

private:
    template <std::size_t...>
    friend class extents;
    struct unchecked {};

    constexpr extents(const std::array<std::size_t, rank()>& all, unchecked) noexcept {
        std::size_t d = 0;
        for (std::size_t i = 0; i < rank(); ++i)
            if (static_[i] == dyn)
                dynamic_[d++] = all[i];
    }

    template <class I>
    static constexpr std::size_t checked_size(I v) {
        if constexpr (std::is_signed_v<I>)
            T2_CHECK(v >= 0, "negative extent ", v);
        return static_cast<std::size_t>(v);
    }

    static constexpr std::array<std::size_t, sizeof...(E)> static_{E...};
    static constexpr std::array<std::size_t, sizeof...(E)> dynamic_index_ = [] {
        std::array<std::size_t, sizeof...(E)> index{};
        std::size_t d = 0;
        for (std::size_t i = 0; i < sizeof...(E); ++i)
            index[i] = static_[i] == dyn ? d++ : 0;
        return index;
    }();
    [[no_unique_address]] std::array<std::size_t, rank_dynamic()> dynamic_{};
};

namespace detail {
template <std::size_t R, class Seq = std::make_index_sequence<R>>
struct all_dynamic;
template <std::size_t R, std::size_t... I>
struct all_dynamic<R, std::index_sequence<I...>> {
    using type = extents<((void)I, dyn)...>;
};
} // namespace detail

// Rank-R shape with every extent dynamic.
template <std::size_t R>
using dims = typename detail::all_dynamic<R>::type;

template <class T>
inline constexpr bool is_extents_v = false;
template <std::size_t... E>
inline constexpr bool is_extents_v<extents<E...>> = true;

template <class T>
concept extents_like = is_extents_v<T>;

T2_NAMESPACE_END
