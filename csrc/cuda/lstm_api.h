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

namespace bilstm_cuda {

enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };
enum Path : int { kAuto = 0, kOnChip = 1, kStream = 2 };
enum Kind : int { kForward = 0, kBackward = 1 };

inline int dtype_size(int dtype) { return dtype == kF32 ? 4 : 2; }

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

// Forward: sequence tensors [T, B, N, *] with strides in elements (innermost 1).
struct FwdParams {
  int T, B, N, H;
  long long gx_st, gx_sb, gx_sn;  // gx [T, B, N, 4H]
  long long y_st, y_sb, y_sn;     // y  [T, B, N, H]
  const void* gx;                 // X
  const void* w_t;                // X [N, H, 4H]  W_hh transposed: w_t[n, k, r] = w_hh[n, r, k]
  const void* h0;                 // X [N, B, H]
  const void* c0;                 // X [N, B, H]
  const int64_t* lengths;         // [B] in 1..T, or null (= all T)
  void* y;                        // X [T, B, N, H]
  void* h_n;                      // X [N, B, H]
  void* c_n;                      // X [N, B, H]
  float* gates;                   // [T, B, N, 4H] activated i, f, g, o, or null (no workspace)
  float* cs;                      // [T, B, N, H] cell state after each step, or null
  float* ws;                      // fp32 workspace, fwd_workspace_floats(N, B, H)
  unsigned* barrier;              // [N] zeroed counters (one grid barrier per direction)
  // filled by the launcher from the plan
  int blocks, slice, batch_tile;
};

// Backward: dgx and dy may be strided like gx and y above.
struct BwdParams {
  int T, B, N, H;
  long long dgx_st, dgx_sb, dgx_sn;  // dgx [T, B, N, 4H]
  long long dy_st, dy_sb, dy_sn;     // dy  [T, B, N, H]
  const void* dy;                    // X
  const void* dh_n;                  // X [N, B, H]
  const void* dc_n;                  // X [N, B, H]
  const void* w_hh;                  // X [N, 4H, H]
  const void* c0;                    // X [N, B, H]
  const int64_t* lengths;            // [B] or null
  const float* gates;                // [T, B, N, 4H] from forward
  const float* cs;                   // [T, B, N, H] from forward
  void* dgx;                         // X [T, B, N, 4H], 0 where t >= L_b
  void* dh0;                         // X [N, B, H]
  void* dc0;                         // X [N, B, H]
  float* ws;                         // fp32 workspace, bwd_workspace_floats(N, B, H)
  unsigned* barrier;                 // [N] zeroed counters
  int blocks, slice, batch_tile;
};

inline long long fwd_workspace_floats(long long N, long long B, long long H) { return 3 * N * B * H; }
inline long long bwd_workspace_floats(long long N, long long B, long long H) { return 10 * N * B * H; }

// The plan for a call on a device with `lim` (throws std::runtime_error on
// an impossible override). Pure host logic: the same on GPU and in emulation.
Plan make_plan(int kind, int N, int B, int H, int dtype, const DeviceLimits& lim, const Options& opt);

// Launch on `stream` (a cudaStream_t; ignored in emulation, where the call
// returns when the kernel has finished). Throws std::runtime_error with the
// CUDA error name and string on failure. No host synchronisation.
Plan forward(FwdParams p, int dtype, const Options& opt, int device, void* stream);
Plan backward(BwdParams p, int dtype, const Options& opt, int device, void* stream);

// Limits of `device` (queried once per device, cached); the emulated device in emulation.
DeviceLimits device_limits(int device);

}  // namespace bilstm_cuda
