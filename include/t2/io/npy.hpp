#pragma once
// NumPy .npy files (format version 1.0) of little-endian float32, C order: what
// `t2 logits --out` writes and numpy.load reads. Written atomically: a temporary file in
// the same directory, flushed and synced, then renamed over the target.
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "t2/io/atomic_file.hpp"

T2_NAMESPACE_BEGIN
namespace io {

inline void write_npy(const std::string& path, std::span<const float> data,
                      const std::vector<std::size_t>& shape) {
    std::size_t count = 1;
    std::string dims;
    for (std::size_t d : shape) {
        count *= d;
        dims += std::to_string(d) + ",";
    }
    if (shape.size() > 1)
        dims.pop_back(); // "(3,)" for one dimension, "(2, 3)" style without the trailing comma
    T2_CHECK(count == data.size(), "write_npy: shape holds ", count, " elements, data ", data.size());
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
    // Magic (6) + version (2) + header length (2) + header + '\n' is a multiple of 64.
    const std::size_t unpadded = 10 + header.size() + 1;
    header.append((64 - unpadded % 64) % 64, ' ');
    header += '\n';
    std::string bytes = "\x93NUMPY";
    bytes += '\x01';
    bytes += '\x00';
    bytes += static_cast<char>(header.size() & 0xff);
    bytes += static_cast<char>(header.size() >> 8);
    bytes += header;
    bytes.append(reinterpret_cast<const char*>(data.data()), data.size_bytes());
    write_file_atomically(path, std::as_bytes(std::span<const char>(bytes)));
}

} // namespace io
T2_NAMESPACE_END
