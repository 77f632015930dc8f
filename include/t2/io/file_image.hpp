#pragma once
// A checkpoint file's bytes in memory: the one copy of a model's weights, which every reader
// (llama2.c, GGUF, safetensors) views in place. It lives as long as any shared_ptr to it
// (every weight of a model holds one).
//
//   load_mode::read (the default): the whole file is read with pread into one buffer aligned
//     to 2 MiB and offered transparent huge pages (core/memory.hpp), placed so that the file
//     offset where the tensors begin lands on a 64-byte boundary. Nothing stays mapped, so
//     the page cache is not part of the process's resident memory: a model costs its own
//     size once.
//   load_mode::map: the file is memory-mapped read-only and read in place; pages are
//     faulted in on first use and may be dropped again by the kernel under memory pressure.
//
// Why read is the default, measured on a 167 MB stories42M-shaped llama2.c checkpoint in the
// page cache, one thread (benchmarks/README.md, "Loading"): greedy decode runs at 142-166
// tok/s from the read image against 95-97 tok/s from the mapping, at the same peak resident
// size (180 MB). A mapping gets 4 KiB TLB entries except where the page cache happens to hold
// 2 MiB folios (55 of the 167 MB here), and MADV_HUGEPAGE cannot change that: a read-only
// file mapping is not THP-eligible. Reading costs ~30 ms (pread into huge pages); time to
// first token is then 0.07 s against 0.12 s mapped (run.c: 0.12 s), except where fresh
// memory is slow to fault in (a VM whose host reclaims freed guest memory: 0.37 s there).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <fcntl.h>

#include "t2/core/memory.hpp"
#include "t2/io/mapped_file.hpp"

T2_NAMESPACE_BEGIN
namespace io {

enum class load_mode {
    read, // copy the file into huge-page memory (fast decode, no page cache in the RSS)
    map,  // leave it in a read-only mapping (nothing copied; 4 KiB pages)
};

struct load_options {
    load_mode mode = load_mode::read;
};

// Up to n bytes from the start of a file (fewer when it is shorter): for peeking at a
// header before choosing how to lay out the image.
inline std::vector<std::byte> read_file_prefix(const std::string& path, std::size_t n) {
    const detail::file_descriptor fd(path);
    n = std::min(n, fd.regular_file_size(path));
    std::vector<std::byte> out(n);
    out.resize(fd.read_at(out.data(), n, 0, path));
    return out;
}

class file_image {
public:
    // `aligned_offset`: a file offset (where the first tensor begins) that read mode places
    // on a 64-byte boundary; a mapping keeps every offset's alignment within its page.
    explicit file_image(std::string path, load_mode mode = load_mode::read, std::size_t aligned_offset = 0)
        : path_(std::move(path)), mode_(mode) {
        if (mode == load_mode::map) {
            mapping_ = std::make_unique<const mapped_file>(path_);
            bytes_ = mapping_->bytes();
            return;
        }
        const detail::file_descriptor fd(path_);
        const std::size_t size = fd.regular_file_size(path_);
        if (size == 0)
            return;
        const std::size_t lead = (tensor_alignment - aligned_offset % tensor_alignment) % tensor_alignment;
        T2_CHECK(size <= std::numeric_limits<std::size_t>::max() - lead - t2::detail::huge_page_size,
                 path_, ": ", size, " bytes is too large to read");
        buffer_ = t2::detail::aligned_allocate<std::byte>(lead + size);
#if defined(POSIX_FADV_SEQUENTIAL)
        ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL); // a hint: a larger readahead
#endif
        std::byte* data = buffer_.get() + lead;
        const std::size_t got = fd.read_at(data, size, 0, path_);
        if (got != size)
            t2::detail::throw_error(path_, ": truncated while reading: ", got, " of ", size,
                                    " bytes (did the file change?)");
        bytes_ = {data, size};
    }
    file_image(const file_image&) = delete;
    file_image& operator=(const file_image&) = delete;

    const std::string& path() const noexcept { return path_; }
    load_mode mode() const noexcept { return mode_; }
    std::size_t size() const noexcept { return bytes_.size(); }
    std::span<const std::byte> bytes() const noexcept { return bytes_; }

private:
    std::string path_;
    load_mode mode_;
    std::unique_ptr<std::byte, t2::detail::aligned_free> buffer_;
    std::unique_ptr<const mapped_file> mapping_;
    std::span<const std::byte> bytes_;
};

} // namespace io
T2_NAMESPACE_END
