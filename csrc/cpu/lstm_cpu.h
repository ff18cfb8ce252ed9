// bilstm_fast CPU backend: the op's arguments under the kernels' names.
//
// Legend (docs/design.md §0): T steps, B batch, N directions (1 or 2), H hidden size.
// The work split, scratch and ISA kernel table: cpu_kernels.h.
//
// All strides are in elements. The last dimension of every tensor is
// contiguous (checked at the boundary). Nothing in this directory links torch.
#pragma once
#include <cstdint>

#include "common/lstm_args.h"

namespace bilstm_cpu {

// The op's arguments (shared with the CUDA modules; checked once at the
// Python boundary, csrc/common/tensor_arg.h), under the kernels' names.
using bilstm::DType;
using bilstm::View;
using FwdParams = bilstm::FwdArgs;
using BwdParams = bilstm::BwdArgs;

// Index of a dtype's kernel in a KernelTable (cpu_kernels.h): 0 float, 1 double,
// 2 float16, 3 bfloat16.
inline int kernel_index(DType d) {
  return d == DType::f64 ? 1 : d == DType::f16 ? 2 : d == DType::bf16 ? 3 : 0;
}

}  // namespace bilstm_cpu
