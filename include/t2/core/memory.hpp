#pragma once
// Where memory lives, and the owning aligned buffer behind every host tensor.
//
// Memory spaces are tag types: a view's type says whether its pointer may be dereferenced
// on the host. CPU executors accept host views only; a CUDA executor (exec/cuda.hpp)
// accepts device views. Storage is 64-byte aligned (one cache line, one AVX-512 vector).
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "t2/core/error.hpp"

T2_NAMESPACE_BEGIN

struct host_memory {
    static constexpr const char* name = "host";
};
struct cuda_memory {
    static constexpr const char* name = "cuda";
};

template <class S>
concept memory_space = std::is_same_v<S, host_memory> || std::is_same_v<S, cuda_memory>;

inline constexpr std::size_t tensor_alignment = 64;

namespace detail {

// Memory comes from the aligned global operator new, so that a program that replaces
// operator new (to count, trace or pool allocations) sees t2's buffers too.
struct aligned_free {
    std::size_t alignment = tensor_alignment;
    void operator()(void* p) const noexcept { ::operator delete(p, std::align_val_t{alignment}); }
};

// Buffers this large are aligned to 2 MiB and offered transparent huge pages: a weight
// matrix streamed once per token then needs 512× fewer TLB entries, which measured here as
// 15 → 28 GB/s for a single-core read of a 440 MB model.
inline constexpr std::size_t huge_page_size = std::size_t{2} << 20;

template <class T>
std::unique_ptr<T, aligned_free> aligned_allocate(std::size_t bytes) {
    if (bytes == 0)
        return {nullptr, aligned_free{}};
    T2_CHECK(bytes <= std::numeric_limits<std::size_t>::max() - huge_page_size,
             "allocation of ", bytes, " bytes is too large");
    const std::size_t alignment = bytes >= huge_page_size ? huge_page_size : tensor_alignment;
    const std::size_t rounded = (bytes + alignment - 1) / alignment * alignment;
    void* p = ::operator new(rounded, std::align_val_t{alignment});
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (alignment == huge_page_size)
        ::madvise(p, rounded, MADV_HUGEPAGE); // a hint: failure only costs speed
#endif
    return {static_cast<T*>(p), aligned_free{alignment}};
}

} // namespace detail

// Tag for storage whose every element the caller writes before reading it.
struct uninitialized_t {
    explicit uninitialized_t() = default;
};
inline constexpr uninitialized_t uninitialized{};

// Owning, 64-byte aligned, host storage for n trivially copyable elements. Contents are
// zero unless constructed with `uninitialized`; copying copies the elements.
template <class T>
class aligned_buffer {
    static_assert(std::is_trivially_copyable_v<T>, "aligned_buffer holds trivial types");

public:
    aligned_buffer() = default;
    explicit aligned_buffer(std::size_t n) : aligned_buffer(n, uninitialized) {
        if (n)
            std::memset(static_cast<void*>(data_.get()), 0, n * sizeof(T));
    }
    aligned_buffer(std::size_t n, uninitialized_t) : size_(n) {
        T2_CHECK(n <= std::numeric_limits<std::size_t>::max() / sizeof(T),
                 "buffer of ", n, " elements overflows size_t");
        data_ = detail::aligned_allocate<T>(n * sizeof(T));
    }
    aligned_buffer(const aligned_buffer& other) : aligned_buffer(other.size_) {
        if (size_)
            std::memcpy(static_cast<void*>(data_.get()), other.data_.get(), size_ * sizeof(T));
    }
    aligned_buffer& operator=(const aligned_buffer& other) {
        if (this != &other)
            *this = aligned_buffer(other);
        return *this;
    }
    aligned_buffer(aligned_buffer&& other) noexcept
        : data_(std::move(other.data_)), size_(std::exchange(other.size_, 0)) {}
    aligned_buffer& operator=(aligned_buffer&& other) noexcept {
        data_ = std::move(other.data_);
        size_ = std::exchange(other.size_, 0);
        return *this;
    }

    T* data() noexcept { return data_.get(); }
    const T* data() const noexcept { return data_.get(); }
    std::size_t size() const noexcept { return size_; }

private:
    std::unique_ptr<T, detail::aligned_free> data_;
    std::size_t size_ = 0;
};

T2_NAMESPACE_END
