#pragma once
// Running a PyTorch reference script (tests/parity/*.py) and reading what it writes back:
// shared by the parity tests. The script runs with T2_PYTHON from the environment, else
// /usr/bin/python3 (Debian's, with python3-torch and python3-numpy).
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/wait.h>

namespace t2_test {

inline std::string read_text(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// A POSIX shell word.
inline std::string shell_quoted(const std::string& s) {
    std::string out = "'";
    for (char c : s)
        out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

struct script_run {
    std::string error; // empty on success; else what failed, the script's output and the fix
    double seconds = 0;
};

// Runs `python script arguments` (arguments already shell-quoted), its output going to log.
inline script_run run_python_script(const std::string& script, const std::string& arguments,
                                    const std::filesystem::path& log) {
    const char* env = std::getenv("T2_PYTHON");
    const std::string python = env && *env ? env : "/usr/bin/python3";
    const std::string command = shell_quoted(python) + " " + shell_quoted(script) + " " + arguments + " > " +
                                shell_quoted(log.string()) + " 2>&1";
    script_run run;
    const auto start = std::chrono::steady_clock::now();
    const int status = std::system(command.c_str());
    run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (status != 0) {
        const std::string how = WIFEXITED(status) ? "exit status " + std::to_string(WEXITSTATUS(status))
                                                  : "wait status " + std::to_string(status);
        run.error = "the PyTorch reference failed (" + python + " " + script + ", " + how + "). Its output:\n" +
                    read_text(log) +
                    "\nThe parity tests need Python 3 with torch and numpy (Debian: apt install "
                    "python3-torch python3-numpy; or set T2_PYTHON to such a python).";
    }
    return run;
}

// A little-endian float64 or float32 C-order .npy file (format versions 1 to 3), as doubles.
struct npy_array {
    std::vector<std::size_t> shape;
    std::vector<double> data;
};

inline npy_array read_npy(const std::filesystem::path& path) {
    const std::string bytes = read_text(path);
    const auto fail = [&](const std::string& what) { throw std::runtime_error(path.string() + ": " + what); };
    if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0)
        fail("missing or not a .npy file");
    const auto byte = [&](std::size_t i) { return std::size_t(static_cast<unsigned char>(bytes[i])); };
    const std::size_t major = byte(6);
    std::size_t header_len = 0, data_at = 0;
    if (major == 1) {
        header_len = byte(8) | byte(9) << 8;
        data_at = 10 + header_len;
    } else if ((major == 2 || major == 3) && bytes.size() >= 12) {
        header_len = byte(8) | byte(9) << 8 | byte(10) << 16 | byte(11) << 24;
        data_at = 12 + header_len;
    } else {
        fail(".npy version " + std::to_string(major) + " is not supported");
    }
    if (data_at > bytes.size())
        fail("truncated header");
    const std::string header = bytes.substr(data_at - header_len, header_len);
    std::size_t item = 0;
    if (header.find("'descr': '<f8'") != std::string::npos)
        item = 8;
    else if (header.find("'descr': '<f4'") != std::string::npos)
        item = 4;
    else
        fail("dtype is not little-endian float64 or float32: " + header);
    if (header.find("'fortran_order': False") == std::string::npos)
        fail("not in C order");
    const auto at = header.find("'shape': (");
    const auto end = header.find(')', at);
    if (at == std::string::npos || end == std::string::npos)
        fail("no shape in the header");
    npy_array a;
    std::istringstream dims(header.substr(at + 10, end - at - 10));
    std::size_t count = 1;
    for (std::string d; std::getline(dims, d, ',');)
        if (d.find_first_not_of(' ') != std::string::npos) {
            a.shape.push_back(std::stoul(d));
            count *= a.shape.back();
        }
    if (bytes.size() - data_at != count * item)
        fail("holds " + std::to_string(bytes.size() - data_at) + " bytes of data, its shape needs " +
             std::to_string(count * item));
    a.data.resize(count);
    for (std::size_t i = 0; i < count; ++i) {
        if (item == 8) {
            std::memcpy(&a.data[i], bytes.data() + data_at + 8 * i, 8);
        } else {
            float f;
            std::memcpy(&f, bytes.data() + data_at + 4 * i, 4);
            a.data[i] = f;
        }
    }
    return a;
}

} // namespace t2_test
