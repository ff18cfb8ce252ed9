// The contract between lstm_driver.cpp and the ISA builds of lstm_kernel.cpp:
// the work of one thread (a job), the per-call scratch it works in, and the
// table of kernels one ISA build exports.
//
// Legend: T steps, B batch, N directions, H hidden, G = 4H gate rows,
// L = SIMD lanes of the build for the dtype (8 floats with AVX2),
// NR = 2L = columns of one packed weight panel (16 floats with AVX2),
// Hp = H rounded up to NR (the padded row length of the internal h/c buffers
// and of each gate's block in the internal gate buffer).
#pragma once
#include <cstdint>

#include "lstm_cpu.h"

namespace bilstm_cpu {

class Barrier;  // thread_pool.h

// out = x W^T + bias: the input projection of one layer (both directions'
// W_ih stacked), done by our micro-GEMM instead of torch's addmm (docs/cpu.md
// says why: this CPU's sgemm through torch is slower than ours at these shapes).
struct LinearParams {
  int64_t M = 0, K = 0, N = 0;
  View x;                    // [M, K]
  View w;                    // [N, K]
  const void* bias = nullptr;  // [N] contiguous, or nullptr
  View out;                  // [M, N]
};

// One thread's share of a linear call: output columns [n0, n1) (n0 a multiple
// of NR), its weight rows packed into `wpack` ([ceil((n1-n0)/NR)][K][NR]).
struct LinearJob {
  int64_t n0 = 0, n1 = 0;
  void* wpack = nullptr;
};

// Rows of one direction that share state buffers: `rows[i]` is the batch row
// of local row i; local rows are in order of decreasing length (ties by batch
// row), so the rows still running at any step are a prefix 0..na-1 in both
// directions and the per-step GEMM covers only them. Buffers (64-byte aligned):
//   forward:  h [2][nrows][Hp] (double-buffered h_{t-1} / h_t), c [nrows][Hp],
//             g [nrows][4][Hp]  pre-activations of the step, gate-blocked
//   backward: h [nrows][Hp] = dh, c [nrows][Hp] = dc,
//             g [2][nrows][4H]  dG of the step (double-buffered, compact rows:
//                               the A operand of the dh GEMM, K = 4H exactly)
struct RowGroup {
  const int64_t* rows = nullptr;
  int64_t nrows = 0;
  void* h = nullptr;
  void* c = nullptr;
  void* g = nullptr;
};

// One thread's share of the recurrence: direction n, the rows of `group`,
// hidden units [lo, hi) (multiples of NR; hi <= Hp). Jobs that share a group
// split its units and meet at `barrier` once per step.
struct RecJob {
  int64_t n = 0, lo = 0, hi = 0;
  const RowGroup* group = nullptr;
  Barrier* barrier = nullptr;  // null when the job has its group to itself
  void* wpack = nullptr;       // this job's packed W_hh slice (lstm_kernel.cpp: pack_*)
};

using LinearFn = void (*)(const LinearParams&, const LinearJob&);
using RecFwdFn = void (*)(const FwdParams&, const RecJob&, int64_t Hp);
using RecBwdFn = void (*)(const BwdParams&, const RecJob&, int64_t Hp);

// The kernels of one ISA build of lstm_kernel.cpp. Index 0 = float, 1 = double.
struct KernelTable {
  const char* isa;
  int vec_bytes;       // SIMD register width the kernels use; NR = 2 * vec_bytes / sizeof(T)
  LinearFn linear[2];
  RecFwdFn forward[2];
  RecBwdFn backward[2];
};

const KernelTable& kernel_table_avx512();
const KernelTable& kernel_table_avx2();
const KernelTable& kernel_table_baseline();

}  // namespace bilstm_cpu
