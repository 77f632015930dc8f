#pragma once
// A scratch directory for files a test writes: T2_TEST_TMP_DIR (one per test program, in
// the build tree), created on first use.
#include <filesystem>
#include <string>

namespace t2_test {

inline std::string temp_dir() {
    const std::filesystem::path dir = T2_TEST_TMP_DIR;
    std::filesystem::create_directories(dir);
    return dir.string();
}

} // namespace t2_test
