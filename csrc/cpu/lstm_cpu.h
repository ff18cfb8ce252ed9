// bilstm_fast CPU backend: shared declarations (params, jobs, ISA kernel table).
//
// Legend: T steps, B batch, N directions (1 or 2), H hidden size,
// L = SIMD lanes of the kernel's ISA for the dtype (8 floats with AVX2),
// Hq = H rounded up to a multiple of 4L (the unit in which hidden units are
// split between threads).
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

class Barrier;  // thread_pool.h

// One unit of work of one thread: direction n, batch rows [b0, b1), hidden
// units [lo, hi) (multiples of 4L, hi <= Hq). Threads sharing (n, b0, b1)
// split the hidden units and meet at `barrier` once per step.
struct Job {
  int64_t n = 0, b0 = 0, b1 = 0, lo = 0, hi = 0;
  Barrier* barrier = nullptr;  // null when the job is alone on its rows
  void* wpack = nullptr;       // this job's packed W_hh slice: (hi-lo)*4H elements, 64-byte aligned
};

// Per-call scratch shared by the jobs of one direction n.
struct Buffers {
  int64_t Hq = 0;
  void* h[2] = {nullptr, nullptr};   // per direction: [2][B][Hq] double-buffered h (fwd) / [B][Hq] dh (bwd)
  void* c[2] = {nullptr, nullptr};   // per direction: [B][Hq] c (fwd) / dc (bwd)
};

using FwdFn = void (*)(const FwdParams&, const Job&, const Buffers&);
using BwdFn = void (*)(const BwdParams&, const Job&, const Buffers&);

// The kernels of one ISA build of lstm_kernel.cpp. Index 0 = float, 1 = double
// (kernel_index()).
struct KernelSet {
  const char* isa;
  int vec_bytes;       // SIMD register width the kernels use
  FwdFn forward[2];
  BwdFn backward[2];
};

inline int kernel_index(DType d) { return d == DType::f64 ? 1 : 0; }

const KernelSet& kernels_avx512();
const KernelSet& kernels_avx2();
const KernelSet& kernels_baseline();

}  // namespace bilstm_cpu
