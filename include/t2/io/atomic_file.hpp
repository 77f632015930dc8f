#pragma once
// Writing a file so that a crash or a kill mid-way never leaves a truncated file where a
// good one stood: the bytes go to a temporary file in the same directory, which is synced
// and then renamed over the target (rename is atomic within a file system).
#include <cerrno>
#include <cstring>
#include <span>
#include <string>

#include <fcntl.h>
#include <unistd.h>

#include "t2/core/error.hpp"

T2_NAMESPACE_BEGIN
namespace io {

inline void write_file_atomically(const std::string& path, std::span<const std::byte> bytes) {
    std::string temp = path + ".tmp.XXXXXX";
    const int fd = ::mkstemp(temp.data());
    if (fd < 0)
        t2::detail::throw_error(path, ": cannot create a temporary file beside it: ", std::strerror(errno));
    const auto fail = [&](const char* what) {
        const int err = errno;
        ::close(fd);
        ::unlink(temp.c_str());
        t2::detail::throw_error(path, ": ", what, ": ", std::strerror(err));
    };
    std::size_t written = 0;
    while (written < bytes.size()) {
        const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fail("write failed");
        }
        written += static_cast<std::size_t>(n);
    }
    if (::fchmod(fd, 0644) != 0)
        fail("cannot set permissions");
    if (::fsync(fd) != 0)
        fail("fsync failed");
    if (::close(fd) != 0) {
        ::unlink(temp.c_str());
        t2::detail::throw_error(path, ": close failed: ", std::strerror(errno));
    }
    if (::rename(temp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(temp.c_str());
        t2::detail::throw_error(path, ": cannot rename the finished file into place: ", std::strerror(err));
    }
}

} // namespace io
T2_NAMESPACE_END
