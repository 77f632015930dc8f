#pragma once
// The hook for the CUDA executor. Its kernels live in .cuh headers compiled by nvcc only
// (a later step of the roadmap). What exists already: the executor type with its memory
// space, so code written against the Executor concept accepts it, and tensor views in
// cuda_memory, which host-only kernels reject at compile time.
#include "t2/exec/executor.hpp"

T2_NAMESPACE_BEGIN
namespace exec {

struct cuda {
    using space = cuda_memory;
    static constexpr const char* name = "cuda";
    int device = 0;
    void* stream = nullptr; // cudaStream_t, kept opaque so this header needs no CUDA headers
};

} // namespace exec
T2_NAMESPACE_END
