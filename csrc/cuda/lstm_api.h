// lstm_api.h — what the bindings (and emu_selftest.cpp) see of the CUDA
// LSTM recurrence: plain params structs, the launch plan, the entry points.
// No CUDA or torch types here, so it compiles in any C++ translation unit.
//
// Legend: T steps, B batch, N directions (1 or 2), H hidden size, G = 4H.
// X is the input dtype (fp32, fp16, bf16); all accumulation, cell state and
// workspaces are fp32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/lstm_args.h"

namespace bilstm_cuda {

using bilstm::DType;
enum Path : int { kAuto = 0, kOnChip = 1, kStream = 2 };
enum Kind : int { kForward = 0, kBackward = 1 };

using bilstm::dtype_size;

// Limits of the device a plan is made for.
struct DeviceLimits {
  int sm_count;         // streaming multiprocessors
  long smem_per_block;  // max dynamic shared memory per block (opt-in), bytes
};

// Caller's overrides (0 = choose automatically).
struct Options {
  int path = kAuto;   // kOnChip / kStream force the path (kOnChip errors if it does not fit)
  int blocks = 0;     // blocks per direction
  int threads = 0;    // threads per block
  int batch_tile = 0; // batch rows staged in shared memory per tile
};

// How a call is launched: grid = N * blocks, each block owns the four gates
// of `slice` consecutive hidden units of one direction.
struct Plan {
  int path;          // kOnChip or kStream
  int blocks;        // blocks per direction
  int slice;         // hidden units per block (the last block may own fewer)
  int threads;       // threads per block
  int batch_tile;    // batch rows staged per shared-memory tile
  long smem_bytes;   // dynamic shared memory per block
  std::string why;   // one line: why this path
};

// The op's arguments (lstm_args.h, checked once at the boundary by
// bindings.cpp) plus what only these kernels need. Sequence tensors
// ([T, B, N, *]) may be strided (last dim dense); every other tensor is
// contiguous. X = the input dtype; gates / cells / the workspace are fp32.
struct FwdParams : bilstm::FwdArgs {
  const void* w_t = nullptr;         // X [N, H, 4H]  W_hh transposed: w_t[n, k, r] = w_hh[n, r, k]
  float* scratch = nullptr;               // fp32 workspace, fwd_scratch_floats(N, B, H)
  unsigned* barrier = nullptr;       // [N] zeroed counters (one grid barrier per direction)
  int blocks = 0, slice = 0, batch_tile = 0;  // filled by the launcher from the plan
};

struct BwdParams : bilstm::BwdArgs {
  float* scratch = nullptr;               // fp32 workspace, bwd_scratch_floats(N, B, H)
  unsigned* barrier = nullptr;       // [N] zeroed counters
  int blocks = 0, slice = 0, batch_tile = 0;
};

inline long long fwd_scratch_floats(long long N, long long B, long long H) { return 3 * N * B * H; }
inline long long bwd_scratch_floats(long long N, long long B, long long H) { return 10 * N * B * H; }

// The plan for a call on a device with `lim` (throws std::runtime_error on
// an impossible override). Pure host logic: the same on GPU and in emulation.
Plan make_plan(int kind, int N, int B, int H, DType dtype, const DeviceLimits& lim, const Options& opt);

// Launch on `stream` (a cudaStream_t; ignored in emulation, where the call
// returns when the kernel has finished). Throws std::runtime_error with the
// CUDA error name and string on failure. No host synchronisation.
// p.dtype is f32, f16 or bf16.
Plan forward(FwdParams p, const Options& opt, int device, void* stream);
Plan backward(BwdParams p, const Options& opt, int device, void* stream);

// Limits of `device` (queried once per device, cached); the emulated device in emulation.
DeviceLimits device_limits(int device);

}  // namespace bilstm_cuda
