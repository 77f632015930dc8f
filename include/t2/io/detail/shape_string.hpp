#pragma once
// A tensor shape as the readers' messages write it: [2, 3].
#include <cstddef>
#include <span>
#include <string>

#include "t2/config.hpp"

T2_NAMESPACE_BEGIN
namespace io::detail {

inline std::string shape_string(std::span<const std::size_t> shape) {
    std::string out = "[";
    for (std::size_t i = 0; i < shape.size(); ++i)
        out += (i ? ", " : "") + std::to_string(shape[i]);
    return out + "]";
}

} // namespace io::detail
T2_NAMESPACE_END
