// lstm_args.h — the recurrence op's arguments as every native kernel sees them
// (contract: bilstm_fast/ops/backends.py; design: docs/design.md §3).
//
// Legend (docs/design.md §0): T steps, B batch, N directions (1 or 2), H hidden
// size, G = 4H, P = proj_size (the features of h) with a projection, else H.
//
// Plain structs, no pybind11, CUDA or torch types: this header compiles in the
// CPU kernels, in nvcc translation units and in the CUDA emulation alike.
// csrc/common/tensor_arg.h fills them at the Python boundary after checking
// every tensor once (shape, dtype, device, layout).
#pragma once
#include <cstdint>

namespace bilstm {

// Element type of a tensor. Codes are shared by every module.
enum class DType : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3, i64 = 4, i32 = 5 };

inline int dtype_size(DType d) {
  switch (d) {
    case DType::f64: case DType::i64: return 8;
    case DType::f32: case DType::i32: return 4;
    default: return 2;
  }
}

// A strided view of up to 4 dims; strides in elements. The last dimension is
// always contiguous (stride 1, checked at the boundary), so a [T, B, N, F]
// view is indexed by (t, b, n) plus an offset along F.
struct View {
  void* ptr = nullptr;
  int64_t stride[4] = {0, 0, 0, 1};
};

// Forward recurrence. X = the input dtype; A = the accumulation dtype
// (f64 for f64 input, else f32) of the workspace.
struct FwdArgs {
  int64_t T = 0, B = 0, N = 0, H = 0;
  DType dtype = DType::f32;          // X
  View gx;                           // [T, B, N, 4H] X  pre-activations, both biases included (cpu: in A)
  View w_hh;                         // [N, 4H, P]    X
  View h0, c0;                       // [N, B, P], [N, B, H] X
  const int64_t* lengths = nullptr;  // [B], values in 1..T; nullptr = all T
  View y;                            // [T, B, N, P]  X  out, 0 where t >= L_b
  View h_n, c_n;                     // [N, B, P], [N, B, H] X  out
  View gates;                        // [T, B, N, 4H] A  out: activated i, f, g, o (ptr null: not needed)
  View cells;                           // [T, B, N, H]  A  out: cell state after step t (ptr null: not needed)
  // Projection (proj_size): h_t = (o * tanh(c_t)) W_hr^T. w_hr.ptr null = none,
  // and then P is unused (h has H features; a binding may leave it 0).
  int64_t P = 0;
  View w_hr;                         // [N, P, H]     X
};

// Backward recurrence: the dh/dc recurrence producing dgx, dh0, dc0 (and dw_hr).
struct BwdArgs {
  int64_t T = 0, B = 0, N = 0, H = 0;
  DType dtype = DType::f32;          // X
  View dy;                           // [T, B, N, P]  X
  View dh_n, dc_n;                   // [N, B, P], [N, B, H] X
  View w_hh;                         // [N, 4H, P]    X
  View c0;                           // [N, B, H]     X
  const int64_t* lengths = nullptr;  // [B] or nullptr
  View gates;                        // [T, B, N, 4H] A  from forward
  View cells;                           // [T, B, N, H]  A  from forward
  View dgx;                          // [T, B, N, 4H] X  out, 0 where t >= L_b
  View dh0, dc0;                     // [N, B, P], [N, B, H] X  out
  // Projection (FwdArgs): w_hr.ptr null = none, P unused.
  int64_t P = 0;
  View w_hr;                         // [N, P, H]     X
  View dw_hr;                        // [N, P, H]     X  out (with w_hr)
};

}  // namespace bilstm
