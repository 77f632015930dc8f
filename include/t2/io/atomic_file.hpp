#pragma once
// Writing a file so that a crash, a kill or an error part-way never leaves a truncated file
// where a good one stood: the data goes to a temporary file in the target's directory
// (rename is atomic only within one file system), is flushed to the disk with fsync, and is
// then renamed over the target; the directory is synced too, so that the rename itself
// survives a power loss. Until commit() the target is untouched; without commit() (an
// exception, an early return) the temporary file is removed.
//
//   io::atomic_file out("experts/math.safetensors");    // streams: no copy of the data
//   out.write(header);
//   out.write(data);
//   out.commit();
//   io::write_file_atomically("logits.npy", bytes);      // or everything in one call
//
// A process killed mid-write leaves its temporary file behind (".NAME.tmp.PID.N" next to the
// target): nothing can remove it, but it never replaces the target.
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "t2/core/error.hpp"

T2_NAMESPACE_BEGIN
namespace io {

class atomic_file {
public:
    explicit atomic_file(std::string path) : path_(std::move(path)) {
        T2_CHECK(!path_.empty() && path_.back() != '/', "atomic_file: '", path_, "' is not a file name");
        const std::size_t slash = path_.rfind('/');
        dir_ = slash == std::string::npos ? "." : slash == 0 ? "/" : path_.substr(0, slash);
        const std::string base = slash == std::string::npos ? path_ : path_.substr(slash + 1);
        const std::string prefix = (slash == std::string::npos ? std::string() : path_.substr(0, slash + 1)) +
                                   "." + base + ".tmp." + std::to_string(::getpid()) + ".";
        // The clock makes names differ between writers in one process; O_EXCL settles races.
        const auto stamp = static_cast<unsigned long long>(
            std::chrono::steady_clock::now().time_since_epoch().count());
        for (unsigned attempt = 0; fd_ < 0; ++attempt) {
            temp_ = prefix + std::to_string((stamp + attempt) % 1'000'000'007ull);
            fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
            if (fd_ < 0 && (errno != EEXIST || attempt >= 100))
                t2::detail::throw_error(path_, ": cannot create the temporary file ", temp_, ": ",
                                        std::strerror(errno));
        }
        // A replaced file keeps its permissions; a new one gets 0666 less the umask.
        struct stat st {};
        if (::stat(path_.c_str(), &st) == 0 && S_ISREG(st.st_mode))
            (void)::fchmod(fd_, st.st_mode & 07777);
    }

    atomic_file(const atomic_file&) = delete;
    atomic_file& operator=(const atomic_file&) = delete;

    ~atomic_file() { discard(); }

    const std::string& path() const noexcept { return path_; }
    const std::string& temp_path() const noexcept { return temp_; }
    std::size_t written() const noexcept { return written_; }
    bool committed() const noexcept { return committed_; }

    void write(std::span<const std::byte> bytes) {
        T2_CHECK(fd_ >= 0, path_, ": write after commit or discard");
        const std::byte* p = bytes.data();
        std::size_t left = bytes.size();
        while (left > 0) {
            const ::ssize_t n = ::write(fd_, p, left);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                fail("cannot write");
            p += n;
            left -= static_cast<std::size_t>(n);
            written_ += static_cast<std::size_t>(n);
        }
    }
    void write(std::string_view text) {
        write(std::span<const std::byte>(reinterpret_cast<const std::byte*>(text.data()), text.size()));
    }

    // Makes the written data the target's content.
    void commit() {
        T2_CHECK(fd_ >= 0, path_, ": commit after commit or discard");
        if (::fsync(fd_) != 0)
            fail("cannot flush to disk");
        const int fd = fd_;
        fd_ = -1;
        if (::close(fd) != 0) // NFS reports deferred write errors here
            fail("cannot close");
        if (::rename(temp_.c_str(), path_.c_str()) != 0)
            fail("cannot rename the temporary file over the target");
        committed_ = true;
        const int dir = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir >= 0) { // best effort: some file systems refuse to sync a directory
            (void)::fsync(dir);
            ::close(dir);
        }
    }

    // Abandons the write: the target stays as it was.
    void discard() noexcept {
        if (fd_ >= 0) {
            ::close(fd_);
            fd_ = -1;
        }
        if (!committed_ && !temp_.empty()) {
            ::unlink(temp_.c_str());
            temp_.clear();
        }
    }

private:
    [[noreturn]] void fail(const char* what) {
        const int err = errno;
        const std::string temp = temp_;
        discard();
        t2::detail::throw_error(path_, ": ", what, " (temporary file ", temp, "): ", std::strerror(err));
    }

    std::string path_, dir_, temp_;
    int fd_ = -1;
    std::size_t written_ = 0;
    bool committed_ = false;
};

// The whole file in one call.
inline void write_file_atomically(const std::string& path, std::span<const std::byte> bytes) {
    atomic_file out(path);
    out.write(bytes);
    out.commit();
}

} // namespace io
T2_NAMESPACE_END
