#pragma once
// A read-only memory-mapped file. Checkpoint readers view their tensors in place, so loading
// a model costs page faults on first use rather than a copy; the mapping lives as long as
// any shared_ptr to it (every weight of a model holds one). detail::file_descriptor, the
// open file both it and io::file_image read through, lives here too.
#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <memory>
#include <span>
#include <string>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "t2/core/error.hpp"

T2_NAMESPACE_BEGIN
namespace io {

namespace detail {

// An open file descriptor, closed on scope exit.
class file_descriptor {
public:
    explicit file_descriptor(const std::string& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
        if (fd_ < 0)
            t2::detail::throw_error(path, ": cannot open: ", std::strerror(errno));
    }
    file_descriptor(const file_descriptor&) = delete;
    file_descriptor& operator=(const file_descriptor&) = delete;
    ~file_descriptor() { ::close(fd_); }
    int get() const noexcept { return fd_; }

    // The size of a regular file; anything else is an error naming `path`.
    std::size_t regular_file_size(const std::string& path) const {
        struct stat st {};
        if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode))
            t2::detail::throw_error(path, ": not a regular file");
        return static_cast<std::size_t>(st.st_size);
    }

    // Reads exactly n bytes at `offset` into dst, through short reads and EINTR. Returns
    // fewer only at the end of the file.
    std::size_t read_at(std::byte* dst, std::size_t n, std::size_t offset, const std::string& path) const {
        std::size_t done = 0;
        while (done < n) {
            // Linux moves at most 0x7ffff000 bytes per call; ask for 1 GiB at a time.
            const std::size_t want = std::min<std::size_t>(n - done, std::size_t{1} << 30);
            const ::ssize_t got = ::pread(fd_, dst + done, want, static_cast<::off_t>(offset + done));
            if (got < 0) {
                if (errno == EINTR)
                    continue;
                t2::detail::throw_error(path, ": read failed at offset ", offset + done, ": ",
                                        std::strerror(errno));
            }
            if (got == 0)
                break;
            done += static_cast<std::size_t>(got);
        }
        return done;
    }

private:
    int fd_;
};

} // namespace detail

class mapped_file {
public:
    explicit mapped_file(std::string path) : path_(std::move(path)) {
        const detail::file_descriptor fd(path_);
        size_ = fd.regular_file_size(path_);
        if (size_ > 0) {
            void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd.get(), 0);
            if (p == MAP_FAILED)
                t2::detail::throw_error(path_, ": cannot map: ", std::strerror(errno));
            data_ = static_cast<const std::byte*>(p);
        }
    }
    mapped_file(const mapped_file&) = delete;
    mapped_file& operator=(const mapped_file&) = delete;
    ~mapped_file() {
        if (data_)
            ::munmap(const_cast<std::byte*>(data_), size_);
    }

    const std::string& path() const noexcept { return path_; }
    std::size_t size() const noexcept { return size_; }
    std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }

private:
    std::string path_;
    const std::byte* data_ = nullptr;
    std::size_t size_ = 0;
};

// Reads little-endian values from a byte span with bounds checks; every failure names the
// file, the offset and what was being read.
class byte_reader {
public:
    byte_reader(std::span<const std::byte> bytes, std::string name)
        : bytes_(bytes), name_(std::move(name)) {}

    std::size_t offset() const noexcept { return offset_; }
    std::size_t remaining() const noexcept { return bytes_.size() - offset_; }
    const std::string& name() const noexcept { return name_; }

    void seek(std::size_t offset, const char* what) {
        if (offset > bytes_.size())
            t2::detail::throw_error(name_, ": ", what, " at offset ", offset, " is past the end of the ",
                                bytes_.size(), "-byte file");
        offset_ = offset;
    }

    // The next n bytes, advancing past them.
    std::span<const std::byte> take(std::size_t n, const char* what) {
        if (n > remaining())
            t2::detail::throw_error(name_, ": truncated: ", what, " needs ", n, " bytes at offset ",
                                offset_, " but only ", remaining(), " remain");
        const auto out = bytes_.subspan(offset_, n);
        offset_ += n;
        return out;
    }

    template <class T>
    T read(const char* what) {
        static_assert(std::is_trivially_copyable_v<T>);
        T value;
        std::memcpy(&value, take(sizeof(T), what).data(), sizeof(T));
        return value;
    }

private:
    std::span<const std::byte> bytes_;
    std::string name_;
    std::size_t offset_ = 0;
};

} // namespace io
T2_NAMESPACE_END
