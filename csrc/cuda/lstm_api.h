// lstm_api.h — what the bindings (and emu_selftest.cpp) see of the CUDA
// LSTM recurrence: the params structs, the launch plan, the entry points.
// No CUDA or torch types here, so it compiles in any C++ translation unit.
//
// Legend: T steps, B batch, N directions (1 or 2), H hidden size, G = 4H,
// X the input dtype (fp32, fp16, bf16). Per-file letters (docs/cuda.md §2):
// U hidden units per block, Hx = blocks * U (H padded to whole blocks),
// NB batch rows per chunk, KS k-splits of the forward matmul, Kr the W_hh
// columns held in registers. Accumulation, cell state and the gates / cells
// workspaces are fp32; the h (forward) and dh-partial (backward) exchange
// buffers are X.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/lstm_args.h"

// engine_shape() is used by the kernels and by make_plan alike.
#if defined(__CUDACC__)
#define BILSTM_HD __host__ __device__
#else
#define BILSTM_HD
#endif

namespace bilstm_cuda {

using bilstm::DType;
using bilstm::dtype_size;
enum Kind : int { kForward = 0, kBackward = 1 };

// The per-step matmul engines (lstm.cu): tensor-core tiles through wmma, or
// exact fp32 FMAs laid out like a tile. kAutoEngine lets make_plan choose.
enum Engine : int {
  kAutoEngine = 0,
  kF16 = 1,    // fp16 / bf16 wmma m32n8k16 (batch tiles of 8)
  kTF32 = 2,   // fp32 input, tf32 wmma m16n16k8 (when torch allows TF32)
  kFma = 3,    // fp32 input, exact fp32 FMA tiles 16x8x8
};

// Tile sizes and register budget of an engine, shared by the kernels and make_plan.
struct EngineShape {
  int m, n, k;     // MMA tile: M rows of the output, N batch columns, K reduction
  int reg_tiles;   // W_hh operand tiles a warp can keep in registers
  int max_nt;      // batch tiles (of n columns) per chunk
};
BILSTM_HD constexpr EngineShape engine_shape(int e) {
  return e == kF16    ? EngineShape{32, 8, 16, 8, 4}
       : e == kTF32   ? EngineShape{16, 16, 8, 16, 4}
                      : EngineShape{16, 8, 8, 8, 8};
}
const char* engine_name(int e);

// n / d and n % d for 0 <= n < 2^16 and 1 <= d <= 2^15 without a division
// instruction: q = floor(2n * m / 2^32) with m = ceil(2^31 / d) (d = 1 gives
// m = 2^31, which fits); the error n * (m - 2^31 / d) / 2^31 < 2^-15 <= 1/d
// never carries floor(n / d) over. A runtime integer division is a chain of
// ~20-40 dependent instructions on the GPU; this is a shift and one
// multiply-high. make_plan builds them for the sizes the step loop divides
// by (Geometry) and checks the bounds; the emulation self-test checks every
// n against '/'.
struct FastDiv {
  unsigned d = 1, m = 1u << 31;
  FastDiv() = default;
  explicit FastDiv(unsigned dd) : d(dd), m((unsigned)(((1ull << 31) + dd - 1) / dd)) {}
  BILSTM_HD int div(int n) const { return (int)((((unsigned long long)((unsigned)n << 1)) * m) >> 32); }
  BILSTM_HD int mod(int n, int q) const { return n - q * (int)d; }  // q = div(n)
};
constexpr int kFastDivMax = 1 << 16;  // numerators of a FastDiv: n < 2^16
constexpr int kFastDivMaxD = 1 << 15;  // and divisors d <= 2^15

// K stages of the forward h copy (cp.async.wait_group takes 0..3).
constexpr int kStages = 4;

// Cell-update pairs (batch row, unit) a thread owns per chunk (register arrays).
constexpr int kPairsPerThread = 4;
// Threads per block at most (the kernels' __launch_bounds__).
constexpr int kMaxThreads = 256;

// Limits of the device a plan is made for.
struct DeviceLimits {
  int sm_count;         // streaming multiprocessors
  long smem_per_block;  // max dynamic shared memory per block (opt-in), bytes
};

// Caller's overrides (0 / -1 = choose automatically).
struct Options {
  int engine = kAutoEngine;
  int blocks = 0;       // blocks per direction
  int warps = 0;        // warps per block
  int batch_tile = 0;   // at most this many batch rows per chunk (rounded down to the engine's N tile)
  int reg_tiles = -1;   // at most this many W_hh tiles per warp in registers (-1: as many as the engine holds)
  bool tf32 = false;    // fp32 input: TF32 tensor cores allowed (torch.backends.cuda.matmul.allow_tf32)
};

// The block geometry of a launch: everything the kernels derive from the plan.
// Offsets are bytes into the block's dynamic shared memory; leading
// dimensions (ld_*) are elements.
struct Geometry {
  int blocks = 0;   // per direction; block j owns units [j*U, (j+1)*U) (those >= H are padding)
  int U = 0;        // units per block, a multiple of 8 (16-byte rows of the exchange in any X)
  int Hx = 0;       // blocks * U
  int warps = 0;
  int NB = 0;       // batch rows per chunk, a multiple of the engine's N tile
  int KS = 1;       // forward: warps splitting the reduction over k (1 in backward)
  int Kpad = 0;     // forward: reduction length (Hx rounded to the K tile); backward: output rows (to the M tile)
  int Kr = 0;       // W_hh columns [0, Kr) of the slice live in registers, [Kr, Kpad) in shared memory
  int qr = 0;       // register tiles per warp (forward: per slot; backward: register slots * K tiles)
  int ld_w = 0;     // w_s row: Kpad - Kr (+16 bytes of padding against bank conflicts)
  int ld_b = 0;     // B operand row: forward h_s [NB][Kpad+pad], backward dG_s [NB][4U+pad]
  int ld_red = 0;   // forward: partial-gates rows red[KS][NB][4U+4] (fp32)
  int off_w = 0, off_b = 0, off_red = 0, off_out = 0;  // forward: w_s, h_s, red, hout; backward: w_s, dG_s, rx, -
  int off_len = 0;  // both: len_s [NB] int, L_b of the chunk's rows (read once per chunk visit, not per step)
  // Step-invariant index math, made once by make_plan: uniform over the
  // block, so the kernels take it as constant-bank operands and the step loop
  // runs no integer division by a runtime size (docs/cuda.md §4, lever 1).
  int groups = 1;                // forward: K stages of the h copy (1: the whole copy, then the matmul)
  int st_col[kStages + 1] = {};  // forward: stage i copies h columns [st_col[i], st_col[i+1]) (X elements)
  int st_kt[kStages + 1] = {};   // forward: and feeds the K tiles [st_kt[i], st_kt[i+1])
  FastDiv st_row[kStages];       // forward: by stage i's 16-byte pieces per h row
  FastDiv by_U;                  // by U: pair index -> (batch row, unit); backward: row k -> owner block
  FastDiv by_KS;                 // forward: by KS: slot -> (m tile, k split)
  FastDiv u_vec;                 // by U's 16-byte pieces per row: publish (forward), receive (backward)
  FastDiv by_nb[2];              // backward: by the rows of a full chunk (NB) and of the last chunk
};

// How a call is launched: grid = N * blocks, blockDim = 32 * warps.
struct Plan {
  int engine = kAutoEngine;
  int reg_tiles = 0;            // the register cap the plan used (plan text field)
  Geometry geo;
  long smem_bytes = 0;          // dynamic shared memory per block
  long long exchange_elems = 0; // X elements of the exchange buffer (forward 2*N*B*Hx, backward 2*N*blocks*B*Hx)
  long long state_floats = 0;   // fp32 state spilled per chunk when B > NB (forward c, backward dh and dc); >= 1
  std::string why;              // one line: why these choices
};

// The op's arguments (lstm_args.h, checked once at the boundary by
// bindings.cpp) plus what only these kernels need. Sequence tensors
// ([T, B, N, *]) may be strided (last dim dense); every other tensor is
// contiguous.
struct FwdParams : bilstm::FwdArgs {
  void* exchange = nullptr;      // X    [2, N, B, Hx]       h_t of every unit, by step parity
  float* state = nullptr;        // fp32 [N, B, Hx]          c between chunks (B > NB only)
  unsigned* barrier = nullptr;   // u32  [N, 32]  zeroed; one counter per direction, each on its own 128-byte line
  Geometry geo;                  // filled by the launcher from the plan
};

struct BwdParams : bilstm::BwdArgs {
  void* exchange = nullptr;      // X    [2, N, blocks(dest), blocks(src), B, U]  partial dh, by step parity
  float* state = nullptr;        // fp32 [2, N, B, Hx]       dh, dc between chunks (B > NB only)
  unsigned* barrier = nullptr;   // u32  [N, 32]  zeroed
  Geometry geo;
};

// Words of the barrier tensor: one 128-byte line per direction.
constexpr int kBarrierStride = 32;

// The plan for a call on a device with `lim` (throws std::runtime_error when
// nothing fits or an override is impossible). Pure host logic: the same on
// GPU and in emulation.
Plan make_plan(int kind, int N, int B, int H, DType dtype, const DeviceLimits& lim, const Options& opt);

// Launch on `stream` (a cudaStream_t; ignored in emulation, where the call
// returns when the kernel has finished). Throws std::runtime_error with the
// CUDA error name and string on failure. No host synchronisation. `plan` is
// make_plan's result for these sizes (the binding checked the buffers
// against it).
void forward(FwdParams p, const Plan& plan, int device, void* stream);
void backward(BwdParams p, const Plan& plan, int device, void* stream);

// Limits of `device` (queried once per device, cached); the emulated device in emulation.
DeviceLimits device_limits(int device);

// Warps per block when Options.warps is 0: 8 on a GPU (2 per SM sub-partition, to
// overlap the MMA chains), 2 in emulation (an OS thread per CUDA thread).
constexpr int kGpuWarps = 8, kEmulatedWarps = 2;
int default_warps();

}  // namespace bilstm_cuda
