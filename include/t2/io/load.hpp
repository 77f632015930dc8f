#pragma once
// load_checkpoint(path): reads a model in whichever supported format the path holds,
// recognised by content rather than by file name.
#include <string>

#include "t2/io/checkpoint.hpp"
#include "t2/io/llama2c.hpp"

T2_NAMESPACE_BEGIN
namespace io {

inline checkpoint load_checkpoint(const std::string& path) { return read_llama2c(path); }

} // namespace io
T2_NAMESPACE_END
