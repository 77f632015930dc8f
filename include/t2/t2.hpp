#pragma once
// The umbrella header: everything in t2.
#include "t2/config.hpp"
#include "t2/version.hpp"

#include "t2/core/dtype.hpp"
#include "t2/core/error.hpp"
#include "t2/core/extents.hpp"
#include "t2/core/memory.hpp"
#include "t2/core/rng.hpp"
#include "t2/core/tensor.hpp"

#include "t2/exec/cuda.hpp"
#include "t2/exec/executor.hpp"
#include "t2/exec/scalar.hpp"
#include "t2/exec/simd.hpp"
#include "t2/exec/thread_pool.hpp"
#include "t2/exec/threads.hpp"

#include "t2/ops/ops.hpp"

#include "t2/nn/config.hpp"
#include "t2/nn/convert.hpp"
#include "t2/nn/generate.hpp"
#include "t2/nn/kv_cache.hpp"
#include "t2/nn/linear.hpp"
#include "t2/nn/llama.hpp"
#include "t2/nn/random_init.hpp"

#include "t2/io/atomic_file.hpp"
#include "t2/io/checkpoint.hpp"
#include "t2/io/load.hpp"
#include "t2/io/npy.hpp"
#include "t2/io/tokenizer.hpp"

#include "t2/adapt/svd.hpp"
