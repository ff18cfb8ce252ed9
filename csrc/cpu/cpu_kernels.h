// The contract between lstm_driver.cpp and the ISA builds of lstm_kernel.cpp:
// the work of one thread (a job), the per-call scratch it works in, and the
// table of kernels one ISA build exports.
//
// Legend: T steps, B batch, N directions, H hidden, G = 4H gate rows,
// P = proj_size (with a projection, else H),
// L = SIMD lanes of the build for the dtype (8 floats with AVX2),
// NR = 2L = columns of one packed weight panel (16 floats with AVX2),
// Hp = H rounded up to NR (the padded row length of the internal h/c buffers
// and of each gate's block in the internal gate buffer).
#pragma once
#include <cstdint>

#include "lstm_cpu.h"

namespace bilstm_cpu {

class Barrier;  // thread_pool.h

// C = A B (+ bias): the GEMMs outside the recurrence -- the input projection
// (x W_ih^T + b), and in training dx = dG W_ih, dW_ih = dG^T x and
// dW_hh = dG^T h_{t-1} -- all on the recurrence's micro-GEMM (docs/cpu.md
// says why: this CPU's sgemm through torch is slower than ours at these
// shapes). A is read in place through two strides, so A^T needs no copy; B
// is packed into panels by each thread for its own columns.
enum class BKind {
  w_rows,       // B[k][n] = b[n*ldb + k]: a row-major [N][K] weight used as W^T (x W^T)
  k_rows,       // B[k][n] = b[k*ldb + n]: a row-major [K][N] matrix
  prev_hidden,  // B[k = t*batch + b][n] = h_{t-1}[b][n] of direction `dir` (dW_hh), from y and h0
};

struct GemmParams {
  int64_t M = 0, N = 0, K = 0;
  const void* a = nullptr;
  int64_t lda = 0, ldk = 1;      // A[m][k] = a[m*lda + k*ldk]
  BKind bkind = BKind::w_rows;
  const void* b = nullptr;
  int64_t ldb = 0;
  // prev_hidden only: y [T, batch, N, H] and h0 [N, batch, H] views, lengths [batch] or nullptr.
  // Direction 0 at time t saw y[t-1] (h0 at t = 0); direction 1 saw y[t+1]
  // (h0 at t = L_b - 1; zero past it, where dG is zero anyway).
  View y, h0;
  const int64_t* lengths = nullptr;
  int64_t T = 0, batch = 0, dir = 0;
  bool a_bf16 = false;           // w_rows only: A (x) is bf16 like B (kernel_table.bf16_dot); K, lda, ldb even
  const void* bias = nullptr;    // [N] contiguous, or nullptr
  void* c = nullptr;
  int64_t ldc = 0;               // C[m][n] = c[m*ldc + n]
};

// One thread's share of a GEMM: output columns [n0, n1) (n0 a multiple of
// NR), B's columns packed into `bpack` ([ceil((n1-n0)/NR)][K][NR]).
struct GemmJob {
  const GemmParams* p = nullptr;
  int64_t n0 = 0, n1 = 0;
  void* bpack = nullptr;
  const void* zero_row = nullptr;  // >= N zeros (prev_hidden: rows past a sequence's end)
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
// With a projection (P = proj_size, Pp = P rounded up to NR) h is
// [2][nrows][Pp] forward / [nrows][Pp] backward, and two more:
//   forward:  m [nrows][Hp]  m_t = o * tanh(c_t), the A operand of h_t = m_t W_hr^T
//   backward: m [nrows][Hp]  dm = dr W_hr,  r [nrows][Pp]  dr = dh + dy_t
struct RowGroup {
  const int64_t* rows = nullptr;
  int64_t nrows = 0;
  void* h = nullptr;
  void* c = nullptr;
  void* g = nullptr;
  void* m = nullptr;  // projection only
  void* r = nullptr;  // projection, backward only
  void* h16 = nullptr;  // forward, X = bf16 without a projection: h in bf16, [2][nr][Hp]
                        // (the A operand of the dot-product GEMM, lstm_kernel.cpp)
};

// One thread's share of the recurrence: direction n, the rows of `group`,
// hidden units [lo, hi) (multiples of NR; hi <= Hp). Jobs that share a group
// split its units and meet at `barrier` once per step.
struct RecJob {
  int64_t n = 0, lo = 0, hi = 0;
  const RowGroup* group = nullptr;
  Barrier* barrier = nullptr;  // null when the job has its group to itself
  void* wpack = nullptr;       // this job's packed W_hh slice (lstm_kernel.cpp: pack_*)
  // Projection only: the job's columns [plo, phi) of h (multiples of NR, phi
  // <= Pp; may be empty), and for the backward the whole call's dr = dh + dy
  // [T, B, N, P] and m = o * tanh(c) [T, B, N, H] (A, zero where t >= L_b),
  // which the driver's dW_hr GEMM reads after the recurrence.
  int64_t plo = 0, phi = 0;
  View dr_seq, m_seq;
};

using GemmFn = void (*)(const GemmJob&);
using RecFwdFn = void (*)(const FwdParams&, const RecJob&, int64_t Hp);
using RecBwdFn = void (*)(const BwdParams&, const RecJob&, int64_t Hp);

// The kernels of one ISA build of lstm_kernel.cpp, by X: 0 = float, 1 = double,
// 2 = float16, 3 = bfloat16 (kernel_index(), lstm_cpu.h). X = fp16/bf16: the
// recurrence computes in A = float; a GEMM takes A and C in float and only B
// in X (converted while packed).
struct KernelTable {
  const char* isa;
  int vec_bytes;       // SIMD register width the kernels use; NR = 2 * vec_bytes / sizeof(T)
  GemmFn gemm[4];
  RecFwdFn forward[4];
  RecBwdFn backward[4];
  RecFwdFn forward_proj[4];   // with a projection (w_hr, proj_size): float32, float64 only (null for X = f16/bf16)
  RecBwdFn backward_proj[4];
  bool (*bf16_dot)();  // bf16 GEMMs run on the dot-product kernels (AVX512-BF16, where they pay; lstm_kernel.cpp)
};

// Whether bf16 GEMMs use the AVX512-BF16 dot products where the CPU has
// them: kBf16DotAuto (the default: where they beat the float FMAs on this
// core, measured once; lstm_kernel.cpp), kBf16DotOff, kBf16DotOn. Set by
// set_bf16_dot (lstm_driver.h) or BILSTM_CPU_BF16_DOT=auto|on|off, read
// once. A plain function, not a std::atomic the ISA builds would inline.
constexpr int kBf16DotAuto = -1, kBf16DotOff = 0, kBf16DotOn = 1;
int bf16_dot_mode();
bool cpu_has_bf16_dot();  // the CPU has AVX512-BF16 (lstm_driver.cpp)

const KernelTable& kernel_table_avx512();
const KernelTable& kernel_table_avx2();
const KernelTable& kernel_table_baseline();

}  // namespace bilstm_cpu
