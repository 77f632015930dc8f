#pragma once
// What every reader needs about sizes: multiplication that reports overflow instead of
// wrapping (sizes come from files), and shapes as the messages write them: [2, 3].
#include <cstddef>
#include <limits>
#include <span>
#include <string>

#include "t2/core/error.hpp"

T2_NAMESPACE_BEGIN
namespace io::detail {

inline std::size_t checked_mul(std::size_t a, std::size_t b, const std::string& where) {
    if (b != 0 && a > std::numeric_limits<std::size_t>::max() / b)
        t2::detail::throw_error(where, ": size overflows");
    return a * b;
}

inline std::string shape_string(std::span<const std::size_t> shape) {
    std::string out = "[";
    for (std::size_t i = 0; i < shape.size(); ++i)
        out += (i ? ", " : "") + std::to_string(shape[i]);
    return out + "]";
}

} // namespace io::detail
T2_NAMESPACE_END
