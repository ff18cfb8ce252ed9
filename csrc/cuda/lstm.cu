// lstm.cu — persistent CUDA kernels for the LSTM recurrence of N directions
// (docs/design.md §3, contract in bilstm_fast/ops/backends.py), and their launcher.
//
// Legend: T steps, B batch, N directions (1 or 2), H hidden size, G = 4H,
// X input dtype (float, half, bfloat16), all math and state in fp32.
//
// One launch runs every step of both directions. Grid = N * blocks; block
// (n, j) owns all four gates of the hidden units [j*slice, (j+1)*slice) of
// direction n. Per step it reads the whole previous h of its direction, does
// its 4*slice x H slice of the recurrent mat-vec, updates c and h of its units
// in registers and publishes h; then the blocks of that direction meet at a
// grid barrier (one per direction: the directions never wait for each other).
// h is double-buffered, so one barrier per step is enough.
//   on-chip path (kOnChip): the block's W_hh slice (4*slice*H of X) is loaded
//     once into shared memory and stays there for all T steps;
//   streaming path (kStream): W_hh is read from global memory (L2) each step,
//     so every H works.
// Backward mirrors it: phase 1 computes dG for the block's units and publishes
// it; barrier; phase 2 computes dh = dG W_hh for the block's units (W_hh
// columns on chip or streamed).
// Within a block, h_{t-1} (dG) is staged in shared memory per tile of batch
// rows; threads loop over (row, unit) items, and when a tile has fewer items
// than threads each dot product is split over several threads (k-split).
// make_plan (host side, below) picks blocks, path and tiles; docs/cuda.md.
//
// The same source compiles as plain C++ against emu.h (BILSTM_CUDA_EMULATE):
// no inline PTX, no warp-synchronous code, no shuffles.

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "lstm_api.h"

#ifdef BILSTM_CUDA_EMULATE
#include "emu.h"
using bl_half = emu::half;
using bl_bf16 = emu::bfloat16;
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bl_half x) { return emu::to_float(x); }
__device__ __forceinline__ float to_f(bl_bf16 x) { return emu::to_float(x); }
template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bl_half from_f<bl_half>(float x) { return emu::half_from_float(x); }
template <> __device__ __forceinline__ bl_bf16 from_f<bl_bf16>(float x) { return emu::bf16_from_float(x); }
using std::min;
// Load of data another block wrote before the last grid barrier.
__device__ __forceinline__ float ld_shared_state(const float* p) { return *p; }
__device__ __forceinline__ float bl_exp(float x) { return std::exp(x); }
__device__ __forceinline__ float bl_tanh(float x) { return std::tanh(x); }
#else
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
using bl_half = __half;
using bl_bf16 = __nv_bfloat16;
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bl_half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(bl_bf16 x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bl_half from_f<bl_half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ bl_bf16 from_f<bl_bf16>(float x) { return __float2bfloat16_rn(x); }
#define BL_DYNAMIC_SMEM(TYPE, NAME)                   \
  extern __shared__ float4 bl_dynamic_smem_raw[];     \
  TYPE* NAME = reinterpret_cast<TYPE*>(bl_dynamic_smem_raw)
// Load of data another block wrote before the last grid barrier: cache at L2
// only (ld.global.cg), so no stale L1 line from an earlier step can be hit.
__device__ __forceinline__ float ld_shared_state(const float* p) { return __ldcg(p); }
__device__ __forceinline__ float bl_exp(float x) { return expf(x); }
__device__ __forceinline__ float bl_tanh(float x) { return tanhf(x); }
template <class T>
__device__ __forceinline__ T bl_load_acquire(const T* p) {
  T v = *reinterpret_cast<const volatile T*>(p);
  __threadfence();
  return v;
}
#endif

// ------------------------------------------------ compile-time switches
// BOOL_SWITCH(cond, NAME, ...) / DTYPE_SWITCH(code, T, ...): run the body
// with a constexpr bool / a type alias, instantiating each variant once.
#define BOOL_SWITCH(COND, NAME, ...)     \
  [&] {                                  \
    if (COND) {                          \
      constexpr bool NAME = true;        \
      return __VA_ARGS__();              \
    } else {                             \
      constexpr bool NAME = false;       \
      return __VA_ARGS__();              \
    }                                    \
  }()
#define DTYPE_SWITCH(CODE, T, ...)                                              \
  [&] {                                                                         \
    switch (CODE) {                                                             \
      case ::bilstm::DType::f32: { using T = float; return __VA_ARGS__(); }    \
      case ::bilstm::DType::f16: { using T = bl_half; return __VA_ARGS__(); }  \
      case ::bilstm::DType::bf16: { using T = bl_bf16; return __VA_ARGS__(); } \
      default: throw std::runtime_error("bilstm_fast._cuda: unsupported dtype " \
                                        + std::to_string(static_cast<int>(CODE))); \
    }                                                                           \
  }()

namespace bilstm_cuda {

// Threads per block are capped at 256 and kernels declare
// __launch_bounds__(256, 1): ptxas may then use up to 255 registers per thread.
// (With the default heuristics it capped some variants at 64 registers and
// spilled; the compile report / tests/test_cuda_emulated.py fail on any spill.)
constexpr int kMaxThreads = 256;

__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + bl_exp(-x)); }

// Barrier across the `blocks` blocks of one direction. `counter` only grows:
// the k-th barrier (k = 1, 2, ...) waits until it reaches k * blocks, so it
// never needs resetting within a launch. Deadlock-free only if all blocks of
// the grid are co-resident (guaranteed by the cooperative launch below; in
// emulation every block has its threads).
__device__ __forceinline__ void grid_barrier(unsigned* counter, unsigned target) {
  __syncthreads();                  // the whole block is done with this step
  if (threadIdx.x == 0) {
    __threadfence();                // release this block's global writes
    atomicAdd(counter, 1u);
    while (bl_load_acquire(counter) < target) __nanosleep(20);
  }
  __syncthreads();                  // the block sees the other blocks' writes
}

// The inner products, with the load of the fp32 vector (h or dG) as a
// parameter: plain (shared memory) or L2 (another block's data, unstaged).
struct LoadPlain { __device__ __forceinline__ float operator()(const float* p) const { return *p; } };
struct LoadL2 { __device__ __forceinline__ float operator()(const float* p) const { return ld_shared_state(p); } };

// a_g += sum_k h[k] * w[k * wk + g * wg] for the four gates g.
template <class T, class Load>
__device__ __forceinline__ void gate_dots(const float* h, const T* w, size_t wk, size_t wg, int K, Load load,
                                          float& a0, float& a1, float& a2, float& a3) {
  for (int k = 0; k < K; ++k) {
    const float hk = load(h + k);
    const T* wr = w + k * wk;
    a0 += hk * to_f(wr[0]);
    a1 += hk * to_f(wr[wg]);
    a2 += hk * to_f(wr[2 * wg]);
    a3 += hk * to_f(wr[3 * wg]);
  }
}

// sum_row g[row] * w[row * scratch]
template <class T, class Load>
__device__ __forceinline__ float column_dot(const float* g, const T* w, size_t scratch, int rows, Load load) {
  float acc = 0.f;
  for (int row = 0; row < rows; ++row) acc += load(g + row) * to_f(w[row * scratch]);
  return acc;
}

// ----------------------------------------------------------- forward kernel
// Shared memory: [W slice: H x 4 x slice of X, if W_SMEM][h tile: batch_tile x H fp32]
// [partial sums: 4 x threads fp32] (batch_tile 0: no h tile, h_{t-1} read from L2;
// only when one row does not fit).
template <class T, bool W_SMEM>
__global__ void __launch_bounds__(kMaxThreads, 1) lstm_fwd_kernel(const FwdParams p) {
  BL_DYNAMIC_SMEM(unsigned char, smem);
  const int T_ = (int)p.T, B = (int)p.B, N = (int)p.N, H = (int)p.H, G = 4 * H;
  const int dir = blockIdx.x / p.blocks, blk = blockIdx.x % p.blocks;
  const int u0 = blk * p.slice;
  const int hs = min(p.slice, H - u0);               // units owned by this block
  const int tid = threadIdx.x, nth = blockDim.x;
  const T* wt = static_cast<const T*>(p.w_t) + (size_t)dir * H * G;  // [H, 4H]
  T* w_s = reinterpret_cast<T*>(smem);                                // [H, 4, hs]
  const size_t w_bytes = W_SMEM ? ((size_t)H * 4 * p.slice * sizeof(T) + 15) / 16 * 16 : 0;
  float* h_s = reinterpret_cast<float*>(smem + w_bytes);              // [batch_tile, H]
  const bool staged = p.batch_tile > 0;        // else h_{t-1} is read from L2 (huge H)
  const int tile = staged ? p.batch_tile : B;
  float* red_s = h_s + (size_t)p.batch_tile * H;                      // [ks, items, 4] partial sums
  const size_t wk = W_SMEM ? 4 * hs : G, wg = W_SMEM ? hs : H;        // W(k, gate) at k * wk + gate * wg
  float* h_buf = p.scratch;                                                // [2, N, B, H]
  float* c_st = p.scratch + (size_t)2 * N * B * H;                         // [N, B, H]
  const T* gx = static_cast<const T*>(p.gx.ptr);
  T* y = static_cast<T*>(p.y.ptr);
  float* gates_out = static_cast<float*>(p.gates.ptr);                // [T, B, N, 4H] or null
  float* cells_out = static_cast<float*>(p.cells.ptr);                      // [T, B, N, H] or null

  if (W_SMEM) {
    for (int i = tid; i < H * 4 * hs; i += nth) {
      const int k = i / (4 * hs), gr = i % (4 * hs), gate = gr / hs, r = gr % hs;
      w_s[i] = wt[(size_t)k * G + gate * H + u0 + r];
    }
  }
  for (int i = tid; i < B * hs; i += nth) {          // state <- h0, c0
    const int b = i / hs, u = u0 + i % hs;
    const size_t nbh = ((size_t)dir * B + b) * H + u;
    h_buf[nbh] = to_f(static_cast<const T*>(p.h0.ptr)[nbh]);
    c_st[nbh] = to_f(static_cast<const T*>(p.c0.ptr)[nbh]);
  }
  unsigned n_bar = 1;
  grid_barrier(p.barrier + dir, n_bar++ * p.blocks);  // all of h0 published

  for (int s = 0; s < T_; ++s) {
    const int t = dir == 0 ? s : T_ - 1 - s;
    const float* h_prev = h_buf + ((size_t)(s & 1) * N + dir) * B * H;
    float* h_next = h_buf + ((size_t)((s + 1) & 1) * N + dir) * B * H;
    for (int b0 = 0; b0 < B; b0 += tile) {
      const int nb = min(tile, B - b0);
      if (staged) {
        __syncthreads();                               // previous tile fully read
        for (int i = tid; i < nb * H; i += nth) h_s[i] = ld_shared_state(h_prev + (size_t)b0 * H + i);
        __syncthreads();
      }
      // Few (row, unit) items for many threads (small B): split each dot
      // product over ks threads, partial sums through shared memory.
      const int items = nb * hs;
      const int ks = min(nth / items, H);
      if (ks >= 2) {
        if (tid < items * ks) {
          const int it = tid % items, kp = tid / items, bl = it / hs, r = it % hs;
          const int k0 = (int)((long)kp * H / ks), k1 = (int)((long)(kp + 1) * H / ks);
          const float* hb = (staged ? h_s + (size_t)bl * H : h_prev + (size_t)(b0 + bl) * H) + k0;
          const T* w = (W_SMEM ? w_s + r : wt + u0 + r) + (size_t)k0 * wk;
          float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
          if (staged) gate_dots(hb, w, wk, wg, k1 - k0, LoadPlain{}, a0, a1, a2, a3);
          else        gate_dots(hb, w, wk, wg, k1 - k0, LoadL2{}, a0, a1, a2, a3);
          float* rp = red_s + ((size_t)kp * items + it) * 4;
          rp[0] = a0; rp[1] = a1; rp[2] = a2; rp[3] = a3;
        }
        __syncthreads();
      }
      for (int i = tid; i < items; i += nth) {
        const int bl = i / hs, r = i % hs, b = b0 + bl, u = u0 + r;
        const bool valid = t < (p.lengths ? (int)p.lengths[b] : T_);
        const size_t bu = (size_t)b * H + u;
        const size_t nbh = (size_t)dir * B * H + bu;
        const size_t y_off = (size_t)t * p.y.stride[0] + (size_t)b * p.y.stride[1] + (size_t)dir * p.y.stride[2] + u;
        if (!valid) {                                  // state frozen, output 0
          h_next[bu] = h_prev[bu];
          y[y_off] = from_f<T>(0.f);
          continue;
        }
        const T* gxp = gx + (size_t)t * p.gx.stride[0] + (size_t)b * p.gx.stride[1] + (size_t)dir * p.gx.stride[2] + u;
        float a0 = to_f(gxp[0]), a1 = to_f(gxp[H]), a2 = to_f(gxp[2 * H]), a3 = to_f(gxp[3 * H]);
        if (ks >= 2) {
          for (int kp = 0; kp < ks; ++kp) {
            const float* rp = red_s + ((size_t)kp * items + i) * 4;
            a0 += rp[0]; a1 += rp[1]; a2 += rp[2]; a3 += rp[3];
          }
        } else {
          const float* hb = staged ? h_s + (size_t)bl * H : h_prev + (size_t)b * H;
          const T* w = W_SMEM ? w_s + r : wt + u;
          if (staged) gate_dots(hb, w, wk, wg, H, LoadPlain{}, a0, a1, a2, a3);
          else        gate_dots(hb, w, wk, wg, H, LoadL2{}, a0, a1, a2, a3);
        }
        const float ig = sigmoidf_(a0), fg = sigmoidf_(a1), gg = bl_tanh(a2), og = sigmoidf_(a3);
        const float c = fg * c_st[nbh] + ig * gg;
        const float h = og * bl_tanh(c);
        c_st[nbh] = c;
        h_next[bu] = h;
        y[y_off] = from_f<T>(h);
        if (gates_out) {
          float* gw = gates_out + (((size_t)t * B + b) * N + dir) * G + u;
          gw[0] = ig; gw[H] = fg; gw[2 * H] = gg; gw[3 * H] = og;
          cells_out[(((size_t)t * B + b) * N + dir) * H + u] = c;
        }
      }
      if (ks >= 2) __syncthreads();                    // red_s free for the next tile
    }
    grid_barrier(p.barrier + dir, n_bar++ * p.blocks);  // h_next complete
  }
  const float* h_fin = h_buf + ((size_t)(T_ & 1) * N + dir) * B * H;
  for (int i = tid; i < B * hs; i += nth) {
    const int b = i / hs, u = u0 + i % hs;
    const size_t nbh = ((size_t)dir * B + b) * H + u;
    static_cast<T*>(p.h_n.ptr)[nbh] = from_f<T>(h_fin[(size_t)b * H + u]);
    static_cast<T*>(p.c_n.ptr)[nbh] = from_f<T>(c_st[nbh]);
  }
}

// ---------------------------------------------------------- backward kernel
// Shared memory: [W columns: 4H x slice of X, if W_SMEM][dG tile: batch_tile x 4H fp32]
// [partial sums: threads fp32] (batch_tile 0: dG read from L2).
template <class T, bool W_SMEM>
__global__ void __launch_bounds__(kMaxThreads, 1) lstm_bwd_kernel(const BwdParams p) {
  BL_DYNAMIC_SMEM(unsigned char, smem);
  const int T_ = (int)p.T, B = (int)p.B, N = (int)p.N, H = (int)p.H, G = 4 * H;
  const int dir = blockIdx.x / p.blocks, blk = blockIdx.x % p.blocks;
  const int u0 = blk * p.slice;
  const int hs = min(p.slice, H - u0);
  const int tid = threadIdx.x, nth = blockDim.x;
  const T* w = static_cast<const T*>(p.w_hh.ptr) + (size_t)dir * G * H;  // [4H, H]
  T* w_s = reinterpret_cast<T*>(smem);                                // [4H, hs]
  const size_t w_bytes = W_SMEM ? ((size_t)G * p.slice * sizeof(T) + 15) / 16 * 16 : 0;
  float* g_s = reinterpret_cast<float*>(smem + w_bytes);              // [batch_tile, 4H]
  const bool staged = p.batch_tile > 0;        // else dG is read from L2 (huge H)
  const int tile = staged ? p.batch_tile : B;
  float* red_s = g_s + (size_t)p.batch_tile * G;                      // [ks, items] partial sums
  const size_t wstride = W_SMEM ? hs : H;                             // W(row, unit) at row * wstride
  float* dh_st = p.scratch;                                                // [N, B, H]
  float* dc_st = p.scratch + (size_t)N * B * H;                            // [N, B, H]
  float* g_buf = p.scratch + (size_t)2 * N * B * H;                        // [2, N, B, 4H]
  const T* dy = static_cast<const T*>(p.dy.ptr);
  const float* gates_out = static_cast<const float*>(p.gates.ptr);    // [T, B, N, 4H]
  const float* cells_out = static_cast<const float*>(p.cells.ptr);          // [T, B, N, H]
  const T* c0 = static_cast<const T*>(p.c0.ptr);
  T* dgx = static_cast<T*>(p.dgx.ptr);

  if (W_SMEM) {
    for (int i = tid; i < G * hs; i += nth) w_s[i] = w[(size_t)(i / hs) * H + u0 + i % hs];
  }
  for (int i = tid; i < B * hs; i += nth) {
    const int b = i / hs, u = u0 + i % hs;
    const size_t nbh = ((size_t)dir * B + b) * H + u;
    dh_st[nbh] = to_f(static_cast<const T*>(p.dh_n.ptr)[nbh]);
    dc_st[nbh] = to_f(static_cast<const T*>(p.dc_n.ptr)[nbh]);
  }
  unsigned n_bar = 1;
  for (int s = T_ - 1; s >= 0; --s) {                 // s: step of this direction
    const int it = T_ - 1 - s;
    const int t = dir == 0 ? s : T_ - 1 - s;
    float* gb = g_buf + ((size_t)(it & 1) * N + dir) * B * G;
    __syncthreads();                                   // dh_st of the last phase 2 written
    // phase 1: dG of this block's units
    for (int i = tid; i < B * hs; i += nth) {
      const int b = i / hs, u = u0 + i % hs;
      const int L = p.lengths ? (int)p.lengths[b] : T_;
      const size_t nbh = ((size_t)dir * B + b) * H + u;
      T* dgxp = dgx + (size_t)t * p.dgx.stride[0] + (size_t)b * p.dgx.stride[1] + (size_t)dir * p.dgx.stride[2] + u;
      if (t >= L) {
        dgxp[0] = dgxp[H] = dgxp[2 * H] = dgxp[3 * H] = from_f<T>(0.f);
        continue;
      }
      const size_t tbn = ((size_t)t * B + b) * N + dir;
      const float* gt = gates_out + tbn * G + u;
      const float ig = gt[0], fg = gt[H], gg = gt[2 * H], og = gt[3 * H];
      const float c_t = cells_out[tbn * H + u];
      const int t_prev = dir == 0 ? t - 1 : t + 1;     // time of the previous step
      const bool prev_valid = s > 0 && t_prev < L;
      const float c_prev = prev_valid ? cells_out[(((size_t)t_prev * B + b) * N + dir) * H + u] : to_f(c0[nbh]);
      const float dh_out = dh_st[nbh] + to_f(dy[(size_t)t * p.dy.stride[0] + (size_t)b * p.dy.stride[1] + (size_t)dir * p.dy.stride[2] + u]);
      const float tc = bl_tanh(c_t);
      const float d_o = dh_out * tc;
      const float dct = dc_st[nbh] + dh_out * og * (1.f - tc * tc);
      const float di = dct * gg, dg = dct * ig, df = dct * c_prev;
      const float p0 = di * ig * (1.f - ig), p1 = df * fg * (1.f - fg);
      const float p2 = dg * (1.f - gg * gg), p3 = d_o * og * (1.f - og);
      dgxp[0] = from_f<T>(p0); dgxp[H] = from_f<T>(p1); dgxp[2 * H] = from_f<T>(p2); dgxp[3 * H] = from_f<T>(p3);
      float* gbp = gb + (size_t)b * G + u;
      gbp[0] = p0; gbp[H] = p1; gbp[2 * H] = p2; gbp[3 * H] = p3;
      dc_st[nbh] = dct * fg;
    }
    grid_barrier(p.barrier + dir, n_bar++ * p.blocks);  // dG of every unit published
    // phase 2: dh[b, u] = sum_r dG[b, r] W_hh[r, u] for this block's units
    for (int b0 = 0; b0 < B; b0 += tile) {
      const int nb = min(tile, B - b0);
      if (staged) {
        __syncthreads();
        for (int i = tid; i < nb * G; i += nth) g_s[i] = ld_shared_state(gb + (size_t)b0 * G + i);
        __syncthreads();
      }
      const int items = nb * hs;                        // split rows over ks threads (small B)
      const int ks = min(nth / items, G);
      if (ks >= 2) {
        if (tid < items * ks) {
          const int it = tid % items, kp = tid / items, bl = it / hs, r = it % hs;
          const int r0 = (int)((long)kp * G / ks), r1 = (int)((long)(kp + 1) * G / ks);
          const float* gr = (staged ? g_s + (size_t)bl * G : gb + (size_t)(b0 + bl) * G) + r0;
          const T* wc = (W_SMEM ? w_s + r : w + u0 + r) + (size_t)r0 * wstride;
          red_s[(size_t)kp * items + it] = staged ? column_dot(gr, wc, wstride, r1 - r0, LoadPlain{})
                                                  : column_dot(gr, wc, wstride, r1 - r0, LoadL2{});
        }
        __syncthreads();
      }
      for (int i = tid; i < items; i += nth) {
        const int bl = i / hs, r = i % hs, b = b0 + bl, u = u0 + r;
        if (t >= (p.lengths ? (int)p.lengths[b] : T_)) continue;  // dh frozen
        float acc = 0.f;
        if (ks >= 2) {
          for (int kp = 0; kp < ks; ++kp) acc += red_s[(size_t)kp * items + i];
        } else {
          const float* gr = staged ? g_s + (size_t)bl * G : gb + (size_t)b * G;
          const T* wc = W_SMEM ? w_s + r : w + u;
          acc = staged ? column_dot(gr, wc, wstride, G, LoadPlain{}) : column_dot(gr, wc, wstride, G, LoadL2{});
        }
        dh_st[((size_t)dir * B + b) * H + u] = acc;
      }
      if (ks >= 2) __syncthreads();                    // red_s free for the next tile
    }
  }
  __syncthreads();
  for (int i = tid; i < B * hs; i += nth) {
    const int b = i / hs, u = u0 + i % hs;
    const size_t nbh = ((size_t)dir * B + b) * H + u;
    static_cast<T*>(p.dh0.ptr)[nbh] = from_f<T>(dh_st[nbh]);
    static_cast<T*>(p.dc0.ptr)[nbh] = from_f<T>(dc_st[nbh]);
  }
}

// ================================================================= host side
namespace {

long round16(long x) { return (x + 15) / 16 * 16; }

// Shared memory per block of a plan.
long plan_smem(int kind, int path, int H, int slice, int batch_tile, int esize, int threads) {
  const long w = path == kOnChip ? round16((long)4 * H * slice * esize) : 0;
  const long stage = (long)batch_tile * (kind == kForward ? H : 4 * H) * 4;
  const long partial = (long)threads * (kind == kForward ? 4 : 1) * 4;  // k-split partial sums
  return w + stage + partial;
}

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error("bilstm_fast cuda: " + msg); }

}  // namespace

// Rule (docs/cuda.md): blocks per direction = min(SMs / N, ceil(H / 8)) so a
// block owns >= 8 units and the grid fits one block per SM; the on-chip path
// when that slice of W_hh plus a batch tile of >= min(B, 8) rows fits the
// per-block shared memory, else the streaming path. Untuned: only a GPU run
// can say where the crossover and the best block count really are.
Plan make_plan(int kind, int N, int B, int H, DType dtype, const DeviceLimits& lim, const Options& opt) {
  if (N < 1 || N > 2 || B < 1 || H < 1) fail("bad sizes N=" + std::to_string(N) + " B=" + std::to_string(B) + " H=" + std::to_string(H));
  const int esize = dtype_size(dtype);
  Plan pl{};
  pl.threads = opt.threads > 0 ? opt.threads : 256;
  if (pl.threads > kMaxThreads)
    fail("threads per block must be <= " + std::to_string(kMaxThreads) + ", got " + std::to_string(pl.threads));
  int blocks = opt.blocks > 0 ? opt.blocks : std::max(1, std::min(lim.sm_count / N, (H + 7) / 8));
  blocks = std::min(blocks, H);
  pl.slice = (H + blocks - 1) / blocks;
  pl.blocks = (H + pl.slice - 1) / pl.slice;        // no empty blocks
  // opt.batch_tile < 0 forces the unstaged mode (batch_tile 0), as used when one row does not fit.
  const int want_tile = opt.batch_tile > 0 ? std::min(opt.batch_tile, B) : std::min(B, 32);
  const int min_tile = opt.batch_tile > 0 ? want_tile : opt.batch_tile < 0 ? 0 : std::min(B, 8);
  const long row = (long)(kind == kForward ? H : 4 * H) * 4;
  auto fit_tile = [&](int path) {  // largest tile <= want_tile that fits; -1 if W alone does not fit
    const long free = lim.smem_per_block - plan_smem(kind, path, H, pl.slice, 0, esize, pl.threads);
    return free < 0 ? -1 : (int)std::min<long>(want_tile, free / row);
  };
  const int onchip_tile = fit_tile(kOnChip);
  if (opt.path == kOnChip || (opt.path == kAuto && onchip_tile >= min_tile)) {
    if (onchip_tile < min_tile)
      fail("on-chip path forced but W_hh slice + batch tile (" +
           std::to_string(plan_smem(kind, kOnChip, H, pl.slice, min_tile, esize, pl.threads)) +
           " B) exceeds shared memory per block (" + std::to_string(lim.smem_per_block) + " B)");
    pl.path = kOnChip;
    pl.batch_tile = opt.batch_tile < 0 ? 0 : onchip_tile;
    pl.why = "W_hh slice of " + std::to_string(pl.slice) + " units fits in shared memory";
  } else {
    pl.path = kStream;
    pl.batch_tile = opt.batch_tile < 0 ? 0 : std::max(0, fit_tile(kStream));  // 0: h / dG from L2
    pl.why = opt.path == kStream ? std::string("streaming path forced")
                                 : "W_hh slice of " + std::to_string(pl.slice) +
                                       " units does not fit in shared memory: weights stream from L2";
  }
  pl.smem_bytes = plan_smem(kind, pl.path, H, pl.slice, pl.batch_tile, esize, pl.threads);
  return pl;
}

#ifdef BILSTM_CUDA_EMULATE
// The emulated device: small, so that tests at H <= 48 see several blocks per
// direction and both paths.
DeviceLimits device_limits(int) { return DeviceLimits{8, 48 * 1024}; }

template <class Params, class Kernel>
static void launch(Kernel kernel, const Params& p, const Plan& pl, int, void*) {
  emu::launch(dim3(p.N * pl.blocks), dim3(pl.threads), (size_t)pl.smem_bytes, kernel, p);
}
#else
static void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    fail(std::string(what) + ": " + cudaGetErrorName(e) + " (" + std::to_string((int)e) + "): " + cudaGetErrorString(e));
}

DeviceLimits device_limits(int device) {
  static DeviceLimits cache[64];
  static bool known[64] = {};
  if (device < 0 || device >= 64) fail("bad device index " + std::to_string(device));
  if (!known[device]) {
    int sms = 0, smem = 0, coop = 0;
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
    check(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
    check(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device), "cudaDeviceGetAttribute");
    if (!coop) fail("device " + std::to_string(device) + " does not support cooperative launch");
    cache[device] = DeviceLimits{sms, smem};
    known[device] = true;
  }
  return cache[device];
}

// Co-residency: the grid barrier spins, so every block must be resident at
// once. Checked with the occupancy API before launch (a clear error instead of
// a hang), then launched cooperatively (the driver refuses a grid that does
// not fit, cudaErrorCooperativeLaunchTooLarge).
template <class Params, class Kernel>
static void launch(Kernel kernel, const Params& p, const Plan& pl, int device, void* stream) {
  const void* fn = reinterpret_cast<const void*>(kernel);
  check(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pl.smem_bytes),
        "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
  int per_sm = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, pl.threads, (size_t)pl.smem_bytes),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  const long resident = (long)per_sm * device_limits(device).sm_count;
  if (resident < (long)p.N * pl.blocks)
    fail("grid of " + std::to_string(p.N * pl.blocks) + " blocks cannot be co-resident (" +
         std::to_string(resident) + " fit: " + std::to_string(per_sm) + " per SM); the per-step barrier would deadlock");
  void* args[] = {const_cast<Params*>(&p)};
  check(cudaLaunchCooperativeKernel(fn, dim3(p.N * pl.blocks), dim3(pl.threads), args, (size_t)pl.smem_bytes,
                                    static_cast<cudaStream_t>(stream)),
        "cudaLaunchCooperativeKernel");
  check(cudaGetLastError(), "lstm kernel launch");
}

struct DeviceGuard {  // run on `device`, restore the caller's current device
  int prev = -1;
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&prev), "cudaGetDevice");
    if (prev != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { if (prev >= 0) cudaSetDevice(prev); }
};
#endif

// Threads per block when not overridden: 256 on a GPU; 32 in emulation, where
// each CUDA thread is an OS thread.
static Options with_defaults(Options o) {
#ifdef BILSTM_CUDA_EMULATE
  if (o.threads <= 0) o.threads = 32;
#else
  if (o.threads <= 0) o.threads = 256;
#endif
  return o;
}

Plan forward(FwdParams p, const Options& opt, int device, void* stream) {
#ifndef BILSTM_CUDA_EMULATE
  DeviceGuard guard(device);
#endif
  const Plan pl = make_plan(kForward, (int)p.N, (int)p.B, (int)p.H, p.dtype, device_limits(device), with_defaults(opt));
  p.blocks = pl.blocks; p.slice = pl.slice; p.batch_tile = pl.batch_tile;
  DTYPE_SWITCH(p.dtype, T, [&] {
    BOOL_SWITCH(pl.path == kOnChip, W_SMEM, [&] { launch(lstm_fwd_kernel<T, W_SMEM>, p, pl, device, stream); });
  });
  return pl;
}

Plan backward(BwdParams p, const Options& opt, int device, void* stream) {
#ifndef BILSTM_CUDA_EMULATE
  DeviceGuard guard(device);
#endif
  const Plan pl = make_plan(kBackward, (int)p.N, (int)p.B, (int)p.H, p.dtype, device_limits(device), with_defaults(opt));
  p.blocks = pl.blocks; p.slice = pl.slice; p.batch_tile = pl.batch_tile;
  DTYPE_SWITCH(p.dtype, T, [&] {
    BOOL_SWITCH(pl.path == kOnChip, W_SMEM, [&] { launch(lstm_bwd_kernel<T, W_SMEM>, p, pl, device, stream); });
  });
  return pl;
}

}  // namespace bilstm_cuda
