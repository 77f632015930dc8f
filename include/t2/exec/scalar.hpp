#pragma once
// The scalar reference executor: plain loops, one thread, no SIMD intrinsics. Every other
// executor is tested against it; its kernels are written for clarity, not speed.
#include "t2/exec/executor.hpp"

T2_NAMESPACE_BEGIN
namespace exec {

struct scalar {
    using space = host_memory;
    static constexpr const char* name = "scalar";
};

} // namespace exec
T2_NAMESPACE_END
