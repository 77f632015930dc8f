#pragma once
// All kernels.
#include "t2/ops/gemm.hpp"
#include "t2/ops/gemv.hpp"
#include "t2/ops/activations.hpp"
#include "t2/ops/blas1.hpp"
#include "t2/ops/elementwise.hpp"
#include "t2/ops/norms.hpp"
#include "t2/ops/reduce.hpp"
#include "t2/ops/rope.hpp"
#include "t2/ops/softmax.hpp"
#include "t2/ops/sampling.hpp"
