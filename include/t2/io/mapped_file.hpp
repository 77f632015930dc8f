#pragma once
// A read-only memory-mapped file. Checkpoint readers view their tensors in place, so loading
// a model costs page faults on first use rather than a copy; the mapping lives as long as
// any shared_ptr to it (every weight of a model holds one).
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

class mapped_file {
public:
    explicit mapped_file(std::string path) : path_(std::move(path)) {
        const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            t2::detail::throw_error(path_, ": cannot open: ", std::strerror(errno));
        struct stat st {};
        if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            ::close(fd);
            t2::detail::throw_error(path_, ": not a regular file");
        }
        size_ = static_cast<std::size_t>(st.st_size);
        if (size_ > 0) {
            void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) {
                const int err = errno;
                ::close(fd);
                t2::detail::throw_error(path_, ": cannot map: ", std::strerror(err));
            }
            data_ = static_cast<const std::byte*>(p);
        }
        ::close(fd);
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
