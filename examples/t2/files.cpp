// See files.hpp.
#include "files.hpp"

#include "t2/io/adapter_files.hpp"
#include "t2/io/load.hpp"

namespace t2_tool {

t2::io::checkpoint load_checkpoint(const std::string& path, const t2::io::load_options& options) {
    return t2::io::load_checkpoint(path, options);
}

t2::adapt::decomposition read_decomposition(const std::string& path) { return t2::io::read_decomposition(path); }

void write_decomposition(const std::string& path, const t2::adapt::decomposition& d) {
    t2::io::write_decomposition(path, d);
}

t2::adapt::expert read_expert(const std::string& path) { return t2::io::read_expert(path); }

} // namespace t2_tool
