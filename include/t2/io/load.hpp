#pragma once
// load_checkpoint(path, options): reads a model in whichever supported format the path holds,
// recognised by content rather than by name:
//   a directory, config.json, *.safetensors or *.safetensors.index.json → Hugging Face
//   a file starting with "GGUF"                                          → GGUF
//   anything else                                                        → llama2.c .bin
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "t2/io/checkpoint.hpp"
#include "t2/io/gguf.hpp"
#include "t2/io/huggingface.hpp"
#include "t2/io/llama2c.hpp"

T2_NAMESPACE_BEGIN
namespace io {

enum class checkpoint_format { llama2c, gguf, huggingface };

inline checkpoint_format detect_format(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::is_directory(path, ec))
        return checkpoint_format::huggingface;
    const std::string name = fs::path(path).filename().string();
    if (name == "config.json" || detail::ends_with(name, ".safetensors") ||
        detail::ends_with(name, ".safetensors.index.json"))
        return checkpoint_format::huggingface;
    std::ifstream in(path, std::ios::binary);
    if (!in)
        t2::detail::throw_error(path, ": cannot open");
    char magic[4] = {};
    in.read(magic, 4);
    if (in.gcount() == 4 && std::memcmp(magic, "GGUF", 4) == 0)
        return checkpoint_format::gguf;
    return checkpoint_format::llama2c;
}

// options.mode: read the file(s) into huge-page memory (the default: the fastest decode, and
// the model costs its size once), or leave them mapped (load_mode::map: nothing is copied,
// pages load on first use; best when only a little of the file is needed).
inline checkpoint load_checkpoint(const std::string& path, const load_options& options = {}) {
    switch (detect_format(path)) {
    case checkpoint_format::gguf: return read_gguf(path, options);
    case checkpoint_format::huggingface: return read_huggingface(path, options);
    case checkpoint_format::llama2c: break;
    }
    return read_llama2c(path, options);
}

} // namespace io
T2_NAMESPACE_END
