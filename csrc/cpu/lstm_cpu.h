// bilstm_fast CPU backend: shared declarations (params, jobs, ISA kernel table).
//
// Legend: T steps, B batch, N directions (1 or 2), H hidden size,
// L = SIMD lanes of the kernel's ISA for the dtype (8 floats with AVX2),
// Hq = H rounded up to a multiple of 4L (the unit in which hidden units are
// split between threads).
//
// All strides are in elements. The last dimension of every tensor is
// contiguous (checked by the binding). Nothing in this directory links torch:
// the binding receives raw pointers, shapes and strides (DESIGN.md §5).
#pragma once
#include <cstdint>

namespace bilstm_cpu {

// A strided view of up to 4 dims as the binding received it; the stride of
// the last dim is always 1 (a 4-d [T, B, N, F] view is indexed by (t, b, n)
// plus an offset along F; a 3-d one by all three indices).
struct View {
  void* ptr = nullptr;
  int64_t stride[4] = {0, 0, 0, 1};
};

// Forward recurrence (op contract: bilstm_fast/ops/backends.py).
struct FwdParams {
  int64_t T = 0, B = 0, N = 0, H = 0;
  View gx;              // [T, B, N, 4H]  pre-activations, both biases included
  View w_hh;            // [N, 4H, H]
  View h0, c0;          // [N, B, H]
  const int64_t* lengths = nullptr;  // [B], values in 1..T; nullptr = all T
  View y;               // [T, B, N, H]   out, 0 where t >= L_b
  View h_n, c_n;        // [N, B, H]      out
  View gates;           // [T, B, N, 4H]  out, activated i,f,g,o (ptr null: not needed)
  View cs;              // [T, B, N, H]   out, cell state after step t (ptr null: not needed)
  const void* w_hh_packed = nullptr;  // w_hh already packed by the cpu kernels (pack_w_hh), or null
};

// Backward recurrence: the dh/dc recurrence producing dgx, dh0, dc0.
struct BwdParams {
  int64_t T = 0, B = 0, N = 0, H = 0;
  View dy;              // [T, B, N, H]
  View dh_n, dc_n;      // [N, B, H]
  View w_hh;            // [N, 4H, H]
  View c0;              // [N, B, H]
  const int64_t* lengths = nullptr;  // [B] or nullptr
  View gates;           // [T, B, N, 4H]  from forward
  View cs;              // [T, B, N, H]   from forward
  View dgx;             // [T, B, N, 4H]  out, 0 where t >= L_b
  View dh0, dc0;        // [N, B, H]      out
};

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

// The kernels of one ISA build of lstm_kernel.cpp. Index 0 = float, 1 = double.
struct KernelSet {
  const char* isa;
  int vec_bytes;       // SIMD register width the kernels use
  FwdFn forward[2];
  BwdFn backward[2];
};

const KernelSet& kernels_avx512();
const KernelSet& kernels_avx2();
const KernelSet& kernels_baseline();

}  // namespace bilstm_cpu
