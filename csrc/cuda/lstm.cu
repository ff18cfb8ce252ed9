// lstm.cu — persistent CUDA kernels for the LSTM recurrence of N directions
// (docs/design.md §3, contract in bilstm_fast/ops/backends.py), and their
// launcher. Design and per-step cost model: docs/cuda.md.
//
// Legend: T steps, B batch, N directions (1 or 2), H hidden size, G = 4H,
// X the input dtype (float, half, bfloat16); all math and state in fp32.
// Per-file letters: U units per block, Hx = blocks * U, NB batch rows per
// chunk, KS forward k-splits, Kr W_hh columns in registers, M / N / K the
// engine's MMA tile (lstm_api.h EngineShape), MT / KT tile counts.
//
// One launch runs every step of both directions; grid = N * blocks, one block
// per SM, each direction on its own blocks with its own barrier counter.
// Block (n, j) owns all four gates of units [j*U, (j+1)*U) of direction n and
// keeps its W_hh slice (4U rows x H) on chip for the whole sequence: the first
// Kr columns as MMA operand fragments in registers, the rest in shared memory.
//
// Forward step (fwd_step): wait for the direction's barrier; copy h_{t-1}
// [B, Hx] (X) from the L2 exchange buffer into shared memory with 16-byte
// async copies, all issued at once in up to 4 stages along K, the matmul of a
// stage starting as soon as it has landed; G^T[4U, NB] = W_slice * h^T on the
// engine's tiles (warps split the rows and, KS ways, the reduction); add the
// prefetched gx, update c (registers) and h; publish h_t (X, 16-byte stores);
// arrive at the barrier; then write y / gates / cells and prefetch the next
// step's gx while the other blocks arrive.
//
// Backward step (bwd_step): the block owns the same units and slice. It
// receives dh for its units as the sum, in a fixed order, of the partial
// products every block of the direction sent it (a reduce-scatter: B*Hx X
// read per block, no all-gather of the B*4H dG), computes dG of its units
// (dgx), then the partial products P^T[Hx, NB] = W_slice^T * dG^T of its
// 4U rows and sends each block its U columns. One barrier per step.
//
// Engines (lstm_api.h Engine): fp16 / bf16 wmma tiles (m32n8k16), tf32 wmma
// (m16n16k8) when torch allows TF32, and exact fp32 FMA tiles (16x8x8) laid
// out like an MMA fragment. One kernel template for the forward and one for
// the backward, instantiated per (X, engine); T, B, H, lengths and strides
// are runtime values.
//
// The same source compiles as plain C++ against emu.h (BILSTM_CUDA_EMULATE):
// wmma is emulated tile-wise, cp.async (the only inline PTX) has a plain-copy
// twin, the barrier uses cuda::atomic_ref in both.

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>

#include "lstm_api.h"

#ifdef BILSTM_CUDA_EMULATE
#include "emu.h"
namespace wm = emu::wmma;
using bl_half = emu::half;
using bl_bf16 = emu::bfloat16;
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bl_half x) { return emu::to_float(x); }
__device__ __forceinline__ float to_f(bl_bf16 x) { return emu::to_float(x); }
template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bl_half from_f<bl_half>(float x) { return emu::half_from_float(x); }
template <> __device__ __forceinline__ bl_bf16 from_f<bl_bf16>(float x) { return emu::bf16_from_float(x); }
__device__ __forceinline__ float bl_exp(float x) { return std::exp(x); }
__device__ __forceinline__ float bl_tanh(float x) { return std::tanh(x); }
__device__ __forceinline__ int lane_id() { return (int)emu::lane(); }
// 16 bytes from `src` to `dst` (no alignment assumed by the CPU).
__device__ __forceinline__ void copy16(void* dst, const void* src) { std::memcpy(dst, src, 16); }
__device__ __forceinline__ float4 ld_f4(const float* p) { float4 v; std::memcpy(&v, p, 16); return v; }
// cp.async twins: the copy happens at once, so committing and waiting are no-ops.
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src) { std::memcpy(smem_dst, gmem_src, 16); }
__device__ __forceinline__ void cp_async_commit() {}
__device__ __forceinline__ void cp_async_wait(int) {}
// A spinning thread gives the CPU to the others (hundreds of OS threads share a few cores).
__device__ __forceinline__ void spin_pause() { std::this_thread::yield(); }
#else
#include <cuda/atomic>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
namespace wm = nvcuda::wmma;
using bl_half = __half;
using bl_bf16 = __nv_bfloat16;
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bl_half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(bl_bf16 x) { return __bfloat162float(x); }
template <class T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bl_half from_f<bl_half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ bl_bf16 from_f<bl_bf16>(float x) { return __float2bfloat16_rn(x); }
__device__ __forceinline__ float bl_exp(float x) { return expf(x); }
__device__ __forceinline__ float bl_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ int lane_id() { return (int)(threadIdx.x & 31); }
__device__ __forceinline__ void copy16(void* dst, const void* src) {
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
}
__device__ __forceinline__ float4 ld_f4(const float* p) { return *reinterpret_cast<const float4*>(p); }
// 16-byte global -> shared copy through L2 only (cp.async.cg: never a stale
// L1 line of data another SM wrote), asynchronous: a thread issues all its
// copies of a stage, then waits once.
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem_src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Wait until at most `pending` (0..3) of this thread's committed groups are in flight.
__device__ __forceinline__ void cp_async_wait(int pending) {
  switch (pending) {  // the count is an immediate of the instruction
    case 0: asm volatile("cp.async.wait_group 0;\n" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;\n" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;\n" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 3;\n" ::: "memory"); break;
  }
}
__device__ __forceinline__ void spin_pause() {}
#define BL_DYNAMIC_SMEM(TYPE, NAME)                   \
  extern __shared__ float4 bl_dynamic_smem_raw[];     \
  TYPE* NAME = reinterpret_cast<TYPE*>(bl_dynamic_smem_raw)
#endif

namespace bilstm_cuda {

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }
// nn.LSTM's sigmoid: 1 / (1 + e^-x); +-inf give 1 / 0, NaN stays NaN.
__device__ __forceinline__ float sigmoidf_(float x) { return 1.f / (1.f + bl_exp(-x)); }

// ------------------------------------------------------------- engines
// An engine is the per-step matmul of a warp on (M x K) * (K x N) tiles:
//   FragA<L>  the W_hh operand (L = wm::row_major for W, wm::col_major for W^T),
//   FragB     the batch operand (h^T or dG^T: element (k, n) at p[n * ld + k]),
//   FragC     the fp32 accumulator, stored column-major (element (m, n) at p[n * ld + m]);
// load_a / load_b / mma / store_col are warp-collective, like wmma.
template <class X, int M, int N, int K, class P>
struct WmmaEngine {
  template <class L> using FragA = wm::fragment<wm::matrix_a, M, N, K, P, L>;
  using FragB = wm::fragment<wm::matrix_b, M, N, K, P, wm::col_major>;
  using FragC = wm::fragment<wm::accumulator, M, N, K, float>;
  static constexpr bool kTf32 = std::is_same<P, wm::precision::tf32>::value;
  template <class F> __device__ __forceinline__ static void round(F& f) {
    if constexpr (kTf32) {
      for (int i = 0; i < f.num_elements; ++i) f.x[i] = wm::__float_to_tf32(f.x[i]);
    }
  }
  template <class L> __device__ __forceinline__ static void load_a(FragA<L>& a, const X* p, int ld) {
    wm::load_matrix_sync(a, p, ld);
    round(a);
  }
  __device__ __forceinline__ static void load_b(FragB& b, const X* p, int ld) {
    wm::load_matrix_sync(b, p, ld);
    round(b);
  }
  __device__ __forceinline__ static void zero(FragC& c) { wm::fill_fragment(c, 0.f); }
  template <class L> __device__ __forceinline__ static void mma(FragC& c, const FragA<L>& a, const FragB& b) {
    wm::mma_sync(c, a, b, c);
  }
  __device__ __forceinline__ static void store_col(float* p, const FragC& c, int ld) {
    wm::store_matrix_sync(p, c, ld, wm::mem_col_major);
  }
};

// Exact fp32 on the FMA pipes, with the interface of a 16x8x8 MMA tile. Lane
// l owns row l/2 of the tile and columns 4*(l%2) .. +3: it keeps A's row l/2
// (8 values; lanes 2r and 2r+1 both hold row r) and reads its 4 batch columns
// of B straight from shared memory (two 16-byte loads per column, broadcast
// to the 16 lanes that share them), 32 FMAs per 8 loads.
struct FmaEngine {
  template <class L> struct FragA { float x[8]; };
  struct FragB { const float* p; int ld; };
  struct FragC { float x[4]; };
  template <class L> __device__ __forceinline__ static void load_a(FragA<L>& a, const float* p, int ld) {
    const int r = lane_id() >> 1;
    if constexpr (std::is_same<L, wm::row_major>::value) {
      const float4 v[2] = {ld_f4(p + (size_t)r * ld), ld_f4(p + (size_t)r * ld + 4)};
      a.x[0] = v[0].x; a.x[1] = v[0].y; a.x[2] = v[0].z; a.x[3] = v[0].w;
      a.x[4] = v[1].x; a.x[5] = v[1].y; a.x[6] = v[1].z; a.x[7] = v[1].w;
    } else {
#pragma unroll
      for (int k = 0; k < 8; ++k) a.x[k] = p[(size_t)k * ld + r];
    }
  }
  __device__ __forceinline__ static void load_b(FragB& b, const float* p, int ld) { b.p = p; b.ld = ld; }
  __device__ __forceinline__ static void zero(FragC& c) {
#pragma unroll
    for (int j = 0; j < 4; ++j) c.x[j] = 0.f;
  }
  template <class L> __device__ __forceinline__ static void mma(FragC& c, const FragA<L>& a, const FragB& b) {
    const int c0 = (lane_id() & 1) * 4;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float4 v[2] = {ld_f4(b.p + (size_t)(c0 + j) * b.ld), ld_f4(b.p + (size_t)(c0 + j) * b.ld + 4)};
      float s = c.x[j];
      s += a.x[0] * v[0].x; s += a.x[1] * v[0].y; s += a.x[2] * v[0].z; s += a.x[3] * v[0].w;
      s += a.x[4] * v[1].x; s += a.x[5] * v[1].y; s += a.x[6] * v[1].z; s += a.x[7] * v[1].w;
      c.x[j] = s;
    }
  }
  __device__ __forceinline__ static void store_col(float* p, const FragC& c, int ld) {
    const int r = lane_id() >> 1, c0 = (lane_id() & 1) * 4;
#pragma unroll
    for (int j = 0; j < 4; ++j) p[(size_t)(c0 + j) * ld + r] = c.x[j];
  }
};

template <class X, int E> struct EngineOf;
// fp16 / bf16: m32n8k16 moves half the batch-operand bytes of m16n16k16 per
// MMA and pads B only to 8, for the same HMMA.16816s (docs/cuda.md §4).
template <class X> struct EngineOf<X, kF16> { using type = WmmaEngine<X, 32, 8, 16, X>; };
template <> struct EngineOf<float, kTF32> { using type = WmmaEngine<float, 16, 16, 8, wm::precision::tf32>; };
template <> struct EngineOf<float, kFma> { using type = FmaEngine; };

// ------------------------------------------------------ common pieces
// Per-direction grid barrier: counter[0] of the direction's own 128-byte line
// only grows; the k-th barrier waits until it reaches k * blocks, so it never
// needs a reset within a launch. Deadlock-free only because every block of
// the grid is co-resident (cooperative launch + occupancy check, below).
// arrive: the caller's __syncthreads() has ordered the block's writes before
// thread 0's release-add (cumulative at gpu scope).
__device__ __forceinline__ void barrier_arrive(unsigned* counter) {
  if (threadIdx.x == 0)
    cuda::atomic_ref<unsigned, cuda::thread_scope_device>(*counter).fetch_add(1u, cuda::memory_order_release);
}
// wait: thread 0 spins on acquire loads of the counter (each poll one L2
// round trip; no fence per poll), then the block meets at __syncthreads().
__device__ __forceinline__ void barrier_wait(unsigned* counter, unsigned target) {
  if (threadIdx.x == 0) {
    cuda::atomic_ref<unsigned, cuda::thread_scope_device> c(*counter);
    while (c.load(cuda::memory_order_acquire) < target) spin_pause();
  }
  __syncthreads();
}

// Issues the async copies of columns [c0, c0 + per_row.d * 16 bytes) of
// `nrows` rows into shared memory rows `dst_ld` apart; row r comes from
// row_src(r), and the pieces form one commit group. Every 16-byte piece of a
// stage is issued before any is waited for (cp_async_wait, then
// __syncthreads): one L2 round trip per stage, not one per element. per_row
// (the 16-byte pieces of a row) divides without a division (FastDiv).
template <class X, class RowSrc>
__device__ __forceinline__ void stage_rows(X* dst, int dst_ld, int nrows, int c0, const FastDiv& per_row,
                                           RowSrc row_src) {
  constexpr int kVec = 16 / (int)sizeof(X);
  const int total = nrows * (int)per_row.d;
  for (int i = threadIdx.x; i < total; i += blockDim.x) {
    const int r = per_row.div(i), c = c0 + per_row.mod(i, r) * kVec;
    cp_async16(dst + (size_t)r * dst_ld + c, row_src(r) + c);
  }
  cp_async_commit();
}

// 8 fp32 values -> 8 X at `dst` (16-byte aligned), in 16-byte stores.
template <class X>
__device__ __forceinline__ void store8(X* dst, const float* v) {
  alignas(16) X tmp[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) tmp[i] = from_f<X>(v[i]);
#pragma unroll
  for (int i = 0; i < (int)sizeof(tmp) / 16; ++i) copy16(reinterpret_cast<char*>(dst) + 16 * i, reinterpret_cast<const char*>(tmp) + 16 * i);
}

// L_b clamped into 1..T: no lengths value can index out of bounds.
__device__ __forceinline__ int seq_len(const int64_t* lengths, int b, int T) {
  if (!lengths) return T;
  const int64_t L = lengths[b];
  return L < 1 ? 1 : L > T ? T : (int)L;
}

// A chunk's pairs (pair pr = tid + k * threads; forward and backward alike):
// pr's batch row in its chunk and its unit in the block, (pr / U, pr % U).
__device__ __forceinline__ int pair_row(const Geometry& g, int pr) { return g.by_U.div(pr); }
__device__ __forceinline__ int pair_unit(const Geometry& g, int pr, int row) { return g.by_U.mod(pr, row); }

// Row r of the block's W_hh slice (r = gate * U + unit) in the direction's
// [4H, H] matrix, or -1 for a padding unit (>= H).
__device__ __forceinline__ int slice_row(int r, int U, int u0, int H) {
  const int gate = r / U, u = u0 + r % U;
  return u < H ? gate * H + u : -1;
}

// Columns [Kr, Kpad) of the W_hh slice into w_s [4U][ld_w] (zero padding).
template <class X>
__device__ __forceinline__ void fill_w_smem(X* w_s, const X* w, const Geometry& g, int u0, int H) {
  const int cols = g.Kpad - g.Kr, rows = 4 * g.U;
  for (int i = threadIdx.x; i < rows * cols; i += blockDim.x) {
    const int r = i / cols, c = i - r * cols, k = g.Kr + c, row = slice_row(r, g.U, u0, H);
    w_s[(size_t)r * g.ld_w + c] = (row >= 0 && k < H) ? w[(size_t)row * H + k] : from_f<X>(0.f);
  }
}

// The tile (rows [m0, m0+M), columns [k0, k0+K)) of the W_hh slice as an A
// operand fragment, staged through this warp's `scratch` (M*K X of shared
// memory): row-major tiles of W for the forward, col-major tiles of W^T
// (m indexes W's columns, k its slice rows) for the backward.
template <class Eng, class L, int M, int K, class X>
__device__ __forceinline__ void load_w_tile(typename Eng::template FragA<L>& a, X* scratch, const X* w,
                                            int m0, int k0, int U, int u0, int H) {
  constexpr bool kW = std::is_same<L, wm::row_major>::value;  // A = W (forward) or W^T (backward)
  for (int e = lane_id(); e < M * K; e += 32) {
    const int m = e / K, k = e - m * K;
    const int r = kW ? m0 + m : k0 + k, col = kW ? k0 + k : m0 + m;  // slice row, W column
    const int row = slice_row(r, U, u0, H);
    scratch[kW ? m * K + k : k * M + m] = (row >= 0 && col < H) ? w[(size_t)row * H + col] : from_f<X>(0.f);
  }
  __syncwarp();
  Eng::load_a(a, scratch, kW ? K : M);
  __syncwarp();
}

// f(std::integral_constant<int, n>) for the runtime n in 1..MAX: the batch
// tiles of a chunk become a compile-time count, so the matmul loops carry no
// per-tile guards (and no per-tile recomputation of fragment addresses).
template <int N, int MAX, class F>
__device__ __forceinline__ void with_tiles(int n, F&& f) {
  if constexpr (N == MAX) {
    f(std::integral_constant<int, N>{});
  } else {
    if (n == N) f(std::integral_constant<int, N>{});
    else with_tiles<N + 1, MAX>(n, f);
  }
}

// The K tiles kt = ks + KS*q, q in [q_lo, q_hi), of one slot (mt, ks) of a
// warp, accumulated into acc[0..NNT) (NNT batch tiles). Its register tiles
// are a_reg[f0 + q] for q < qreg (f0: the slot's first index in the warp's
// tile stream), the rest come from shared memory through a_tile(mt, kt).
// Register arrays are indexed only by compile-time constants (unrolled
// loops), so they never leave the registers.
template <class Eng, class L, int RT, int NNT, class ATile, class BTile>
__device__ __forceinline__ void slot_mma(typename Eng::FragC (&acc)[NNT], const typename Eng::template FragA<L> (&a_reg)[RT],
                                         int mt, int ks, int KS, int f0, int qreg, int q_lo, int q_hi,
                                         ATile a_tile, int ld_a, BTile b_tile, int ld_b) {
  const int qr_hi = imin(q_hi, qreg);
#pragma unroll
  for (int f = 0; f < RT; ++f) {
    const int q = f - f0;
    if (q >= q_lo && q < qr_hi) {
      const int kt = ks + KS * q;
#pragma unroll
      for (int nt = 0; nt < NNT; ++nt) {
        typename Eng::FragB b;
        Eng::load_b(b, b_tile(kt, nt), ld_b);
        Eng::mma(acc[nt], a_reg[f], b);
      }
    }
  }
  for (int q = imax(q_lo, qreg); q < q_hi; ++q) {
    const int kt = ks + KS * q;
    typename Eng::template FragA<L> a;
    Eng::load_a(a, a_tile(mt, kt), ld_a);
#pragma unroll
    for (int nt = 0; nt < NNT; ++nt) {
      typename Eng::FragB b;
      Eng::load_b(b, b_tile(kt, nt), ld_b);
      Eng::mma(acc[nt], a, b);
    }
  }
}

// Division by 1 at compile time: the backward's k split (KS = 1).
struct UnitDiv {
  static constexpr unsigned d = 1;
  __device__ __forceinline__ static int div(int n) { return n; }
  __device__ __forceinline__ static int mod(int, int) { return 0; }
};

// One warp's share of a chunk's matmul C[MT*M rows, NNT*N] = A * B, all K at
// once. Slots j = warp + i * warps map to (mt = j / KS, ks = j % KS); the
// warp's first `qr` tiles (slot-major) are its register tiles, i.e. the W_hh
// columns [0, Kr). flush(mt, ks, acc) takes each slot's accumulators. KS: a
// FastDiv (forward) or UnitDiv (backward).
template <class Eng, class L, int RT, int NNT, class ATile, class BTile, class Flush, class Div>
__device__ __forceinline__ void warp_mma(const typename Eng::template FragA<L> (&a_reg)[RT], int S, const Div& KS, int KT,
                                         int qr, ATile a_tile, int ld_a, BTile b_tile, int ld_b, Flush flush) {
  const int warp = threadIdx.x / 32, nw = blockDim.x / 32, ksn = (int)KS.d;
  for (int j = warp, i = 0; j < S; j += nw, ++i) {
    const int mt = KS.div(j), ks = KS.mod(j, mt);
    const int kcount = KS.div(KT - ks + ksn - 1), f0 = i * kcount;
    typename Eng::FragC acc[NNT];
#pragma unroll
    for (int nt = 0; nt < NNT; ++nt) Eng::zero(acc[nt]);
    slot_mma<Eng, L>(acc, a_reg, mt, ks, ksn, f0, imin(kcount, imax(0, qr - f0)), 0, kcount, a_tile, ld_a, b_tile, ld_b);
    flush(mt, ks, acc);
  }
}

template <class X, int E>
struct FwdCta {
  using Eng = typename EngineOf<X, E>::type;
  static constexpr EngineShape S = engine_shape(E);
  static constexpr int kP = kPairsPerThread;
  using FragA = typename Eng::template FragA<wm::row_major>;

  const FwdParams& p;
  const Geometry& g;
  int T, B, N, H, dir, blk, u0, MT, KT, slots, nchunks;
  X *w_s, *h_s, *hout, *xch;
  float* red;
  const X* w;
  unsigned* counter;
  FragA a_reg[S.reg_tiles];
  // Per pair k of this thread (pair = tid + k * threads of the chunk, (row, unit) = (pair / U, pair % U)):
  float c[kP], gx[kP][4], h[kP], act[kP][4];
  int* len_s;  // shared [NB]: L_b of the chunk's rows (load_lengths)

  __device__ __forceinline__ FwdCta(const FwdParams& p_, unsigned char* smem) : p(p_), g(p_.geo) {
    T = (int)p.T; B = (int)p.B; N = (int)p.N; H = (int)p.H;
    dir = blockIdx.x / g.blocks; blk = blockIdx.x - dir * g.blocks; u0 = blk * g.U;
    MT = 4 * g.U / S.m; KT = g.Kpad / S.k; slots = MT * g.KS;
    nchunks = (B + g.NB - 1) / g.NB;
    w_s = reinterpret_cast<X*>(smem + g.off_w);
    h_s = reinterpret_cast<X*>(smem + g.off_b);
    red = reinterpret_cast<float*>(smem + g.off_red);
    hout = reinterpret_cast<X*>(smem + g.off_out);
    len_s = reinterpret_cast<int*>(smem + g.off_len);
    xch = static_cast<X*>(p.exchange);
    w = static_cast<const X*>(p.w_hh.ptr) + (size_t)dir * 4 * H * H;
    counter = p.barrier + dir * kBarrierStride;
  }

  __device__ __forceinline__ int time_of(int s) const { return dir == 0 ? s : T - 1 - s; }
  __device__ __forceinline__ X* xrow(int parity, int b) const { return xch + ((size_t)(parity * N + dir) * B + b) * g.Hx; }
  __device__ __forceinline__ int pair_count(int b0) const { return imin(g.NB, B - b0) * g.U; }
  // len_s of chunk b0's rows: L_b clamped (seq_len), read from global memory
  // once per launch (per chunk visit when B > NB) instead of once per pair
  // and step; the caller synchronizes before it is read. (BwdCta has the same
  // loop: one shared helper taking the row count changed nvcc's schedule of
  // the forward, +3-6% predicted per step.)
  __device__ __forceinline__ void load_lengths(int b0) {
    for (int r = threadIdx.x; r < imin(g.NB, B - b0); r += blockDim.x) len_s[r] = seq_len(p.lengths, b0 + r, T);
  }

  __device__ __forceinline__ void load_gx(int k, int t, int b, int uu) {
    const X* q = static_cast<const X*>(p.gx.ptr) + (int64_t)t * p.gx.stride[0] + (int64_t)b * p.gx.stride[1] +
                 (int64_t)dir * p.gx.stride[2] + uu;
#pragma unroll
    for (int gt = 0; gt < 4; ++gt) gx[k][gt] = to_f(q[(size_t)gt * H]);
  }

  // gx of step s for every pair of chunk b0 (skipped for padding units): the
  // single-chunk path (B <= NB), after the arrival; load_chunk otherwise.
  __device__ __forceinline__ void prefetch_gx(int s, int b0) {
    const int t = time_of(s), np = pair_count(b0);
#pragma unroll
    for (int k = 0; k < kP; ++k) {
      const int pr = threadIdx.x + k * blockDim.x, bl = pair_row(g, pr), uu = u0 + pair_unit(g, pr, bl);
      if (pr < np && uu < H) load_gx(k, t, b0 + bl, uu);
    }
  }

  __device__ __forceinline__ void prologue() {
    // W_hh tiles of this warp's slot (one slot per warp whenever qr > 0) into registers.
    const int warp = threadIdx.x / 32;
    X* scratch = h_s + (size_t)warp * S.m * S.k;
    if (warp < slots) {
      const int mt = warp / g.KS, ks = warp - mt * g.KS;
#pragma unroll
      for (int f = 0; f < S.reg_tiles; ++f)
        if (f < g.qr) load_w_tile<Eng, wm::row_major, S.m, S.k>(a_reg[f], scratch, w, mt * S.m, (ks + g.KS * f) * S.k, g.U, u0, H);
    }
    __syncthreads();
    fill_w_smem(w_s, w, g, u0, H);
    // h_s padding (columns >= Hx, rows >= the chunk) stays zero for the whole launch.
    for (int i = threadIdx.x; i < g.NB * g.ld_b; i += blockDim.x) h_s[i] = from_f<X>(0.f);
    // h0 -> the exchange (parity 0) for this block's units, c0 -> state.
    const X* h0 = static_cast<const X*>(p.h0.ptr) + (size_t)dir * B * H;
    const X* c0 = static_cast<const X*>(p.c0.ptr) + (size_t)dir * B * H;
    for (int64_t i = threadIdx.x; i < (int64_t)B * g.U; i += blockDim.x) {
      const int b = (int)(i / g.U), uu = u0 + (int)(i % g.U);
      xrow(0, b)[uu] = uu < H ? h0[(size_t)b * H + uu] : from_f<X>(0.f);
      if (nchunks > 1) p.state[((size_t)dir * B + b) * g.Hx + uu] = uu < H ? to_f(c0[(size_t)b * H + uu]) : 0.f;
    }
    if (nchunks == 1) {
#pragma unroll
      for (int k = 0; k < kP; ++k) {
        const int pr = threadIdx.x + k * blockDim.x, bl = pair_row(g, pr), uu = u0 + pair_unit(g, pr, bl);
        c[k] = (pr < pair_count(0) && uu < H) ? to_f(c0[(size_t)bl * H + uu]) : 0.f;
      }
      load_lengths(0);
      prefetch_gx(0, 0);
    }
    __syncthreads();
    barrier_arrive(counter);
  }

  // y, gates, cells of the pairs of chunk b0 at step s (from registers).
  __device__ __forceinline__ void write_outputs(int s, int b0) {
    const int t = time_of(s), np = pair_count(b0);
    X* y = static_cast<X*>(p.y.ptr);
    float* gates = static_cast<float*>(p.gates.ptr);
    float* cells = static_cast<float*>(p.cells.ptr);
#pragma unroll
    for (int k = 0; k < kP; ++k) {
      const int pr = threadIdx.x + k * blockDim.x, bl = pair_row(g, pr), b = b0 + bl, uu = u0 + pair_unit(g, pr, bl);
      if (pr >= np || uu >= H) continue;
      const bool valid = t < len_s[bl];
      y[(int64_t)t * p.y.stride[0] + (int64_t)b * p.y.stride[1] + (int64_t)dir * p.y.stride[2] + uu] =
          from_f<X>(valid ? h[k] : 0.f);
      if (gates && valid) {
        const int64_t tbn = ((int64_t)t * B + b) * N + dir;
#pragma unroll
        for (int gt = 0; gt < 4; ++gt) gates[tbn * 4 * H + (int64_t)gt * H + uu] = act[k][gt];
        cells[tbn * H + uu] = c[k];
      }
    }
  }

  // The cell update of chunk b0 at step s: G = gx + sum_ks red, then c, h.
  __device__ __forceinline__ void cell_update(int s, int b0) {
    const int t = time_of(s), np = pair_count(b0);
    const size_t red_ks = (size_t)g.NB * g.ld_red;
#pragma unroll
    for (int k = 0; k < kP; ++k) {
      const int pr = threadIdx.x + k * blockDim.x, bl = pair_row(g, pr), u = pair_unit(g, pr, bl), uu = u0 + u;
      if (pr >= np) continue;
      if (uu >= H) { hout[pr] = from_f<X>(0.f); continue; }
      if (t >= len_s[bl]) {                                 // past L_b: state frozen, y = 0
        hout[pr] = h_s[(size_t)bl * g.ld_b + uu];
        h[k] = 0.f;
        continue;
      }
      float a[4];
#pragma unroll
      for (int gt = 0; gt < 4; ++gt) {
        const float* r = red + (size_t)bl * g.ld_red + gt * g.U + u;
        float v = gx[k][gt];
        for (int ks = 0; ks < g.KS; ++ks) v += r[ks * red_ks];
        a[gt] = v;
      }
      const float ig = sigmoidf_(a[0]), fg = sigmoidf_(a[1]), gg = bl_tanh(a[2]), og = sigmoidf_(a[3]);
      c[k] = fg * c[k] + ig * gg;
      h[k] = og * bl_tanh(c[k]);
      act[k][0] = ig; act[k][1] = fg; act[k][2] = gg; act[k][3] = og;
      hout[pr] = from_f<X>(h[k]);
    }
  }

  // B > NB: chunk b0 at step s starts: its rows' lengths, c from the state
  // buffer and gx, all in one round trip (len_s is read after the barrier).
  // Its own gx loads, not prefetch_gx's: nvcc's line info drops the outer
  // frames of part of this copy, so the cost model tells it by this line.
  __device__ __forceinline__ void load_chunk(int s, int b0) {
    const int t = time_of(s), np = pair_count(b0);
    load_lengths(b0);
#pragma unroll
    for (int k = 0; k < kP; ++k) {
      const int pr = threadIdx.x + k * blockDim.x, bl = pair_row(g, pr), uu = u0 + pair_unit(g, pr, bl);
      if (pr >= np) continue;
      c[k] = p.state[((size_t)dir * B + b0 + bl) * g.Hx + uu];
      if (uu < H) load_gx(k, t, b0 + bl, uu);  // cost-model: chunk gx
    }
    __syncthreads();
  }
  __device__ __forceinline__ void store_chunk(int b0) {  // c -> state (B > NB only)
    const int np = pair_count(b0);
#pragma unroll
    for (int k = 0; k < kP; ++k) {
      const int pr = threadIdx.x + k * blockDim.x, bl = pair_row(g, pr);
      if (pr < np) p.state[((size_t)dir * B + b0 + bl) * g.Hx + u0 + pair_unit(g, pr, bl)] = c[k];
    }
  }

  __device__ __forceinline__ void epilogue() {
    const int fin = T & 1;
    X* h_n = static_cast<X*>(p.h_n.ptr) + (size_t)dir * B * H;
    X* c_n = static_cast<X*>(p.c_n.ptr) + (size_t)dir * B * H;
    for (int64_t i = threadIdx.x; i < (int64_t)B * g.U; i += blockDim.x) {  // own writes (__syncthreads before)
      const int b = (int)(i / g.U), uu = u0 + (int)(i % g.U);
      if (uu < H) h_n[(size_t)b * H + uu] = __ldcg(xrow(fin, b) + uu);
      if (uu < H && nchunks > 1) c_n[(size_t)b * H + uu] = from_f<X>(p.state[((size_t)dir * B + b) * g.Hx + uu]);
    }
    if (nchunks == 1) {
#pragma unroll
      for (int k = 0; k < kP; ++k) {
        const int pr = threadIdx.x + k * blockDim.x, bl = pair_row(g, pr), uu = u0 + pair_unit(g, pr, bl);
        if (pr < pair_count(0) && uu < H) c_n[(size_t)bl * H + uu] = from_f<X>(c[k]);
      }
    }
  }
};

// One forward time step s of one block (the loop body of lstm_fwd_kernel;
// docs/cuda.md §4 counts its instructions): the barrier of step s, then per
// chunk of NB batch rows: stage h_{t-1}, the matmul, the cell update, publish
// h_t; arrive; outputs and the next gx while the other blocks arrive.
template <class X, int E>
__device__ __forceinline__ void fwd_step(FwdCta<X, E>& k, int s) {
  using C = FwdCta<X, E>;
  using Eng = typename C::Eng;
  const Geometry& g = k.g;
  const int par = s & 1;
  barrier_wait(k.counter, (unsigned)(s + 1) * g.blocks);  // [barrier] h_{t-1} of every block published
  for (int b0 = 0; b0 < k.B; b0 += g.NB) {
    const int nb = imin(g.NB, k.B - b0);
    if (k.nchunks > 1) {  // [state]
      k.load_chunk(s, b0);
    }
    // [stage] h_{t-1} in `groups` stages along K, all issued now: the matmul of stage
    // i starts as soon as it has landed, while the later ones are in flight.
    for (int i = 0; i < g.groups; ++i)
      stage_rows(k.h_s, g.ld_b, nb, g.st_col[i], g.st_row[i], [&](int r) { return k.xrow(par, b0 + r); });
    // [mma]
    auto a_tile = [&](int mt, int kt) { return k.w_s + (size_t)mt * C::S.m * g.ld_w + (kt * C::S.k - g.Kr); };
    auto b_tile = [&](int kt, int nt) { return k.h_s + (size_t)nt * C::S.n * g.ld_b + kt * C::S.k; };
    with_tiles<1, C::S.max_nt>((nb + C::S.n - 1) / C::S.n, [&](auto tiles) {
      constexpr int NNT = decltype(tiles)::value;
      auto flush = [&](int mt, int ks, auto& acc) {
        constexpr int kTiles = std::extent<std::remove_reference_t<decltype(acc)>>::value;
#pragma unroll
        for (int nt = 0; nt < kTiles; ++nt)
          Eng::store_col(k.red + ((size_t)ks * g.NB + nt * C::S.n) * g.ld_red + mt * C::S.m, acc[nt], g.ld_red);
      };
      if (g.groups == 1) {
        cp_async_wait(0);
        __syncthreads();
        warp_mma<Eng, wm::row_major, C::S.reg_tiles, NNT>(k.a_reg, k.slots, g.by_KS, k.KT, g.qr, a_tile, g.ld_w, b_tile,
                                                       g.ld_b, flush);
      } else {  // one slot (mt, ks) per warp; warps >= slots only keep the block's barriers
        const int warp = threadIdx.x / 32, mt = g.by_KS.div(warp), ks = g.by_KS.mod(warp, mt);
        // q of the slot's first K tile at or after kt: ceil((kt - ks) / KS), kt - ks + KS - 1 >= 0
        auto q_at = [&](int kt) { return g.by_KS.div(kt - ks + g.KS - 1); };
        typename Eng::FragC acc[NNT];
#pragma unroll
        for (int nt = 0; nt < NNT; ++nt) Eng::zero(acc[nt]);
        for (int i = 0; i < g.groups; ++i) {
          cp_async_wait(g.groups - 1 - i);
          __syncthreads();
          if (warp < k.slots)
            slot_mma<Eng, wm::row_major>(acc, k.a_reg, mt, ks, g.KS, 0, g.qr, q_at(g.st_kt[i]), q_at(g.st_kt[i + 1]),
                                         a_tile, g.ld_w, b_tile, g.ld_b);
        }
        if (warp < k.slots) flush(mt, ks, acc);
      }
    });
    __syncthreads();  // [cell]
    k.cell_update(s, b0);
    __syncthreads();
    // [publish] h_t of this block's units: rows of U X, 16-byte stores
    constexpr int kVec = 16 / (int)sizeof(X);
    for (int i = threadIdx.x; i < nb * (int)g.u_vec.d; i += blockDim.x) {
      const int r = g.u_vec.div(i), v = g.u_vec.mod(i, r);
      copy16(k.xrow(par ^ 1, b0 + r) + k.u0 + v * kVec, k.hout + (size_t)r * g.U + v * kVec);
    }
    if (k.nchunks > 1) {  // [outputs]
      k.write_outputs(s, b0);
      k.store_chunk(b0);
      __syncthreads();  // h_s / red / hout reused by the next chunk
    }
  }
  __syncthreads();  // [arrive]
  barrier_arrive(k.counter);
  if (k.nchunks == 1) {  // [outputs]
    k.write_outputs(s, 0);
    if (s + 1 < k.T) k.prefetch_gx(s + 1, 0);
  }
}

template <class X, int E>
__global__ void __launch_bounds__(kMaxThreads, 1) lstm_fwd_kernel(__grid_constant__ const FwdParams p) {
  BL_DYNAMIC_SMEM(unsigned char, smem);
  FwdCta<X, E> k(p, smem);
  k.prologue();
  for (int s = 0; s < k.T; ++s) fwd_step(k, s);
  __syncthreads();
  k.epilogue();
}

// =============================================================== backward
// Shared memory: w_s [4U][ld_w] X (W_hh slice columns [Kr, Kpad)); dG_s
// [NB][ld_b] X (dG of this block's 4U rows, the batch operand); rx: the
// received partials [blocks][nb][U] X, reused by each warp as its flush
// staging [NB][M+4] fp32 and, in the prologue, for W-tile staging.
template <class X, int E>
struct BwdCta {
  using Eng = typename EngineOf<X, E>::type;
  static constexpr EngineShape S = engine_shape(E);
  static constexpr int kP = kPairsPerThread;
  using FragA = typename Eng::template FragA<wm::col_major>;

  const BwdParams& p;
  const Geometry& g;
  int T, B, N, H, dir, blk, u0, MT, KT, nchunks;
  X *w_s, *dg_s, *rx, *xch;
  const X* w;
  unsigned* counter;
  FragA a_reg[S.reg_tiles];
  // Per pair k: the dh / dc recurrence, and the saved forward values of the step.
  float dh[kP], dc[kP], act[kP][4], cell[kP], cprev[kP], dy[kP];
  int* len_s;  // shared [NB]: L_b of the chunk's rows (load_lengths)

  __device__ __forceinline__ BwdCta(const BwdParams& p_, unsigned char* smem) : p(p_), g(p_.geo) {
    T = (int)p.T; B = (int)p.B; N = (int)p.N; H = (int)p.H;
    dir = blockIdx.x / g.blocks; blk = blockIdx.x - dir * g.blocks; u0 = blk * g.U;
    MT = g.Kpad / S.m; KT = 4 * g.U / S.k;
    nchunks = (B + g.NB - 1) / g.NB;
    w_s = reinterpret_cast<X*>(smem + g.off_w);
    dg_s = reinterpret_cast<X*>(smem + g.off_b);
    rx = reinterpret_cast<X*>(smem + g.off_red);
    len_s = reinterpret_cast<int*>(smem + g.off_len);
    xch = static_cast<X*>(p.exchange);
    w = static_cast<const X*>(p.w_hh.ptr) + (size_t)dir * 4 * H * H;
    counter = p.barrier + dir * kBarrierStride;
  }

  // Iteration it runs the forward step T-1-it of this direction, at time t.
  __device__ __forceinline__ int time_of(int it) const { return dir == 0 ? T - 1 - it : it; }
  __device__ __forceinline__ int pair_count(int b0) const { return imin(g.NB, B - b0) * g.U; }
  // len_s of chunk b0's rows (as FwdCta::load_lengths).
  __device__ __forceinline__ void load_lengths(int b0) {
    for (int r = threadIdx.x; r < imin(g.NB, B - b0); r += blockDim.x) len_s[r] = seq_len(p.lengths, b0 + r, T);
  }
  // Partials that block `src` sends block `dest` at parity `par`: [B][U] X.
  __device__ __forceinline__ X* xblock(int par, int dest, int src) const {
    return xch + ((((size_t)par * N + dir) * g.blocks + dest) * g.blocks + src) * B * g.U;
  }

  // The saved forward values of iteration it for the pairs of chunk b0.
  __device__ __forceinline__ void prefetch(int it, int b0) {
    const int t = time_of(it), np = pair_count(b0);
    const float* gates = static_cast<const float*>(p.gates.ptr);
    const float* cells = static_cast<const float*>(p.cells.ptr);
    const X* c0 = static_cast<const X*>(p.c0.ptr);
    const X* dyp = static_cast<const X*>(p.dy.ptr);
#pragma unroll
    for (int k = 0; k < kP; ++k) {
      const int pr = threadIdx.x + k * blockDim.x, bl = pair_row(g, pr), b = b0 + bl, uu = u0 + pair_unit(g, pr, bl);
      if (pr >= np || uu >= H) continue;
      const int L = len_s[bl];
      if (t >= L) continue;  // masked: nothing read
      const int64_t tbn = ((int64_t)t * B + b) * N + dir;
#pragma unroll
      for (int gt = 0; gt < 4; ++gt) act[k][gt] = gates[tbn * 4 * H + (int64_t)gt * H + uu];
      cell[k] = cells[tbn * H + uu];
      const int tp = dir == 0 ? t - 1 : t + 1;  // the forward step before t
      cprev[k] = (tp >= 0 && tp < L) ? cells[(((int64_t)tp * B + b) * N + dir) * H + uu]
                                     : to_f(c0[((size_t)dir * B + b) * H + uu]);
      dy[k] = to_f(dyp[(int64_t)t * p.dy.stride[0] + (int64_t)b * p.dy.stride[1] + (int64_t)dir * p.dy.stride[2] + uu]);
    }
  }

  __device__ __forceinline__ void chunk_state(int b0, bool load) {  // dh, dc <-> state (B > NB only)
    const int np = pair_count(b0);
    if (load) {  // the same round trip as dh's and dc's; prefetch reads it next
      load_lengths(b0);
      __syncthreads();
    }
#pragma unroll
    for (int k = 0; k < kP; ++k) {
      const int pr = threadIdx.x + k * blockDim.x, bl = pair_row(g, pr);
      if (pr >= np) continue;
      const size_t i = ((size_t)dir * B + b0 + bl) * g.Hx + u0 + pair_unit(g, pr, bl);
      float* st = p.state + i;
      float* sc = p.state + (size_t)N * B * g.Hx + i;
      if (load) { dh[k] = *st; dc[k] = *sc; } else { *st = dh[k]; *sc = dc[k]; }
    }
  }

  // dh of this block's units = the sum over source blocks, in block order, of
  // the partials received for iteration it-1 (whose step is `t_prev`); pairs
  // whose sequence was past its end there keep their dh.
  __device__ __forceinline__ void receive(int it, int b0) {
    const int nb = imin(g.NB, B - b0), par = (it - 1) & 1, t_prev = time_of(it - 1);
    const FastDiv by_nb = b0 + g.NB >= B ? g.by_nb[1] : g.by_nb[0];  // the last chunk's rows, or a full chunk's
    stage_rows(rx, g.U, g.blocks * nb, 0, g.u_vec, [&](int r) {
      const int src = by_nb.div(r);
      return xblock(par, blk, src) + (size_t)(b0 + by_nb.mod(r, src)) * g.U;
    });
    cp_async_wait(0);
    __syncthreads();
    const int np = nb * g.U;
#pragma unroll
    for (int k = 0; k < kP; ++k) {
      const int pr = threadIdx.x + k * blockDim.x;
      if (pr >= np || t_prev >= len_s[pair_row(g, pr)]) continue;
      float s0 = 0.f, s1 = 0.f;  // two chains, fixed order: deterministic
      int j = 0;
      for (; j + 1 < g.blocks; j += 2) {
        s0 += to_f(rx[(size_t)j * np + pr]);
        s1 += to_f(rx[(size_t)(j + 1) * np + pr]);
      }
      if (j < g.blocks) s0 += to_f(rx[(size_t)j * np + pr]);
      dh[k] = s0 + s1;
    }
  }

  // dG of the chunk's pairs at iteration it: dgx (X, 0 past L_b) and dG_s.
  __device__ __forceinline__ void gate_grads(int it, int b0) {
    const int t = time_of(it), np = pair_count(b0);
    X* dgx = static_cast<X*>(p.dgx.ptr);
#pragma unroll
    for (int k = 0; k < kP; ++k) {
      const int pr = threadIdx.x + k * blockDim.x, bl = pair_row(g, pr), u = pair_unit(g, pr, bl), b = b0 + bl, uu = u0 + u;
      if (pr >= np) continue;
      X* gs = dg_s + (size_t)bl * g.ld_b + u;
      if (uu >= H) {
#pragma unroll
        for (int gt = 0; gt < 4; ++gt) gs[gt * g.U] = from_f<X>(0.f);
        continue;
      }
      X* dq = dgx + (int64_t)t * p.dgx.stride[0] + (int64_t)b * p.dgx.stride[1] + (int64_t)dir * p.dgx.stride[2] + uu;
      float d[4] = {0.f, 0.f, 0.f, 0.f};
      if (t < len_s[bl]) {
        const float ig = act[k][0], fg = act[k][1], gg = act[k][2], og = act[k][3];
        const float dh_out = dh[k] + dy[k];
        const float tc = bl_tanh(cell[k]);
        const float dct = dc[k] + dh_out * og * (1.f - tc * tc);
        d[0] = dct * gg * ig * (1.f - ig);
        d[1] = dct * cprev[k] * fg * (1.f - fg);
        d[2] = dct * ig * (1.f - gg * gg);
        d[3] = dh_out * tc * og * (1.f - og);
        dc[k] = dct * fg;
      }
#pragma unroll
      for (int gt = 0; gt < 4; ++gt) {
        const X v = from_f<X>(d[gt]);
        dq[(size_t)gt * H] = v;
        gs[gt * g.U] = v;
      }
    }
  }

  __device__ __forceinline__ void prologue() {
    const int warp = threadIdx.x / 32, nw = blockDim.x / 32;
    X* scratch = rx + (size_t)warp * S.m * S.k;
    // Register slots i < qr / KT of this warp: m-tiles warp + i * warps over W's columns.
#pragma unroll
    for (int f = 0; f < S.reg_tiles; ++f)
      if (f < g.qr) load_w_tile<Eng, wm::col_major, S.m, S.k>(a_reg[f], scratch, w, (warp + (f / KT) * nw) * S.m,
                                                                (f % KT) * S.k, g.U, u0, H);
    __syncthreads();
    fill_w_smem(w_s, w, g, u0, H);
    for (int i = threadIdx.x; i < g.NB * g.ld_b; i += blockDim.x) dg_s[i] = from_f<X>(0.f);
    const X* dh_n = static_cast<const X*>(p.dh_n.ptr) + (size_t)dir * B * H;
    const X* dc_n = static_cast<const X*>(p.dc_n.ptr) + (size_t)dir * B * H;
    if (nchunks > 1) {
      for (int64_t i = threadIdx.x; i < (int64_t)B * g.U; i += blockDim.x) {
        const int b = (int)(i / g.U), uu = u0 + (int)(i % g.U);
        const size_t si = ((size_t)dir * B + b) * g.Hx + uu;
        p.state[si] = uu < H ? to_f(dh_n[(size_t)b * H + uu]) : 0.f;
        p.state[(size_t)N * B * g.Hx + si] = uu < H ? to_f(dc_n[(size_t)b * H + uu]) : 0.f;
      }
    } else {
#pragma unroll
      for (int k = 0; k < kP; ++k) {
        const int pr = threadIdx.x + k * blockDim.x, bl = pair_row(g, pr), uu = u0 + pair_unit(g, pr, bl);
        const bool own = pr < pair_count(0) && uu < H;
        dh[k] = own ? to_f(dh_n[(size_t)bl * H + uu]) : 0.f;
        dc[k] = own ? to_f(dc_n[(size_t)bl * H + uu]) : 0.f;
      }
      load_lengths(0);
      __syncthreads();  // len_s, read by prefetch
      prefetch(0, 0);
    }
    __syncthreads();
  }

  __device__ __forceinline__ void epilogue() {
    barrier_wait(counter, (unsigned)T * g.blocks);
    X* dh0 = static_cast<X*>(p.dh0.ptr) + (size_t)dir * B * H;
    X* dc0 = static_cast<X*>(p.dc0.ptr) + (size_t)dir * B * H;
    for (int b0 = 0; b0 < B; b0 += g.NB) {
      if (nchunks > 1) chunk_state(b0, true);
      receive(T, b0);
      const int np = pair_count(b0);
#pragma unroll
      for (int k = 0; k < kP; ++k) {
        const int pr = threadIdx.x + k * blockDim.x, bl = pair_row(g, pr), b = b0 + bl, uu = u0 + pair_unit(g, pr, bl);
        if (pr >= np || uu >= H) continue;
        dh0[(size_t)b * H + uu] = from_f<X>(dh[k]);
        dc0[(size_t)b * H + uu] = from_f<X>(dc[k]);
      }
      __syncthreads();  // rx reused by the next chunk
    }
  }
};

// One backward iteration it of one block (the loop body of lstm_bwd_kernel;
// docs/cuda.md §4): the barrier of iteration it-1, then per chunk: receive dh,
// dG and dgx, the partial products W_slice^T dG^T, sent to their owners;
// arrive; prefetch the next iteration's saved values while the others arrive.
template <class X, int E>
__device__ __forceinline__ void bwd_step(BwdCta<X, E>& k, int it) {
  using C = BwdCta<X, E>;
  using Eng = typename C::Eng;
  const Geometry& g = k.g;
  const int par = it & 1, warp = threadIdx.x / 32;
  if (it > 0) barrier_wait(k.counter, (unsigned)it * g.blocks);  // [barrier] partials of iteration it-1 sent
  for (int b0 = 0; b0 < k.B; b0 += g.NB) {
    const int nb = imin(g.NB, k.B - b0);
    if (k.nchunks > 1) {  // [state]
      k.chunk_state(b0, true);
      k.prefetch(it, b0);
    }
    if (it > 0) k.receive(it, b0);  // [receive]
    k.gate_grads(it, b0);           // [dgates]
    __syncthreads();  // dG_s complete; rx free for the flush staging
    // [mma] and [send]: each warp's tiles of P^T go straight to their owners
    float* stg = reinterpret_cast<float*>(k.rx) + (size_t)warp * g.NB * (C::S.m + 4);  // NB x (M+4) fp32
    auto a_tile = [&](int mt, int kt) { return k.w_s + (size_t)kt * C::S.k * g.ld_w + (mt * C::S.m - g.Kr); };
    auto b_tile = [&](int kt, int nt) { return k.dg_s + (size_t)nt * C::S.n * g.ld_b + kt * C::S.k; };
    with_tiles<1, C::S.max_nt>((nb + C::S.n - 1) / C::S.n, [&](auto tiles) {
      constexpr int NNT = decltype(tiles)::value;
      warp_mma<Eng, wm::col_major, C::S.reg_tiles, NNT>(
          k.a_reg, k.MT, UnitDiv{}, k.KT, g.qr, a_tile, g.ld_w, b_tile, g.ld_b,
          [&](int mt, int, auto& acc) {
            constexpr int kTiles = std::extent<std::remove_reference_t<decltype(acc)>>::value;
#pragma unroll
            for (int nt = 0; nt < kTiles; ++nt) Eng::store_col(stg + (size_t)nt * C::S.n * (C::S.m + 4), acc[nt], C::S.m + 4);
            __syncwarp();
            // rows k of this tile go to the block owning unit k, 8 consecutive (same owner) per store
            for (int e = lane_id(); e < nb * (C::S.m / 8); e += 32) {
              const int bl = e / (C::S.m / 8), kk = mt * C::S.m + 8 * (e - bl * (C::S.m / 8));
              if (kk >= g.Hx) continue;
              store8(k.xblock(par, kk / g.U, k.blk) + (size_t)(b0 + bl) * g.U + kk % g.U,
                     stg + (size_t)bl * (C::S.m + 4) + kk - mt * C::S.m);
            }
            __syncwarp();
          });
    });
    if (k.nchunks > 1) {  // [state]
      k.chunk_state(b0, false);
      __syncthreads();  // dG_s / rx reused by the next chunk
    }
  }
  __syncthreads();  // [arrive]
  barrier_arrive(k.counter);
  if (k.nchunks == 1 && it + 1 < k.T) k.prefetch(it + 1, 0);  // [prefetch]
}

template <class X, int E>
__global__ void __launch_bounds__(kMaxThreads, 1) lstm_bwd_kernel(__grid_constant__ const BwdParams p) {
  BL_DYNAMIC_SMEM(unsigned char, smem);
  BwdCta<X, E> k(p, smem);
  k.prologue();
  for (int it = 0; it < k.T; ++it) bwd_step(k, it);
  k.epilogue();
}

// ================================================================= host side
const char* engine_name(int e) {
  switch (e) {
    case kF16: return "f16";
    case kTF32: return "tf32";
    case kFma: return "fma";
    default: return "auto";
  }
}

namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error("bilstm_fast cuda: " + msg); }

long round_up(long x, long m) { return (x + m - 1) / m * m; }

// Dynamic shared memory of a geometry (fills the offsets).
long layout_smem(int kind, Geometry& g, const EngineShape& S, int esize) {
  const int pad = 16 / esize;  // one 16-byte access of padding per row: no bank conflicts
  g.ld_w = g.Kpad - g.Kr + pad;
  const long w = round_up((long)4 * g.U * g.ld_w * esize, 128);
  const long tile_stage = (long)g.warps * S.m * S.k * esize;  // prologue W-tile staging
  g.off_w = 0;
  g.off_b = (int)w;
  if (kind == kForward) {
    g.ld_b = g.Kpad + pad;
    g.ld_red = 4 * g.U + 4;
    const long hs = round_up(std::max((long)g.NB * g.ld_b * esize, tile_stage), 128);
    const long red = round_up((long)g.KS * g.NB * g.ld_red * 4, 128);
    g.off_red = (int)(w + hs);
    g.off_out = (int)(w + hs + red);
    g.off_len = (int)(w + hs + red + round_up((long)g.NB * g.U * esize, 128));
    return g.off_len + round_up((long)g.NB * 4, 128);
  }
  g.ld_b = 4 * g.U + pad;
  g.ld_red = 0;
  const long gs = round_up((long)g.NB * g.ld_b * esize, 128);
  const long rx = round_up(std::max({(long)g.blocks * g.NB * g.U * esize, (long)g.warps * g.NB * (S.m + 4) * 4, tile_stage}), 128);
  g.off_red = (int)(w + gs);
  g.off_out = 0;
  g.off_len = (int)(w + gs + rx);
  return g.off_len + round_up((long)g.NB * 4, 128);
}

// The Geometry's step-invariant index math (lstm_api.h): the forward's K
// stages (up to kStages when every warp owns at most one slot, so that its
// accumulators live across the stages), and the divisors of the step loop.
void fill_index_math(int kind, Geometry& g, const EngineShape& S, int esize, int B) {
  const int vec = 16 / esize;  // X elements per 16-byte piece
  // Every numerator a FastDiv sees is below NB * Hx / vec (the staged pieces
  // of a chunk; pairs, slots and K tiles are smaller).
  if ((long)g.NB * round_up(g.Hx, S.k) / vec >= kFastDivMax || g.Hx > kFastDivMaxD || g.NB > kFastDivMaxD)
    fail("a batch chunk of " + std::to_string(g.NB) + " rows x " + std::to_string(g.Hx) +
         " units is beyond the kernels' index range");
  g.by_U = FastDiv((unsigned)g.U);
  g.u_vec = FastDiv((unsigned)(g.U / vec));
  const int last = B - (B - 1) / g.NB * g.NB;  // rows of the last chunk
  g.by_nb[0] = FastDiv((unsigned)g.NB);
  g.by_nb[1] = FastDiv((unsigned)last);
  g.by_KS = FastDiv((unsigned)g.KS);
  if (kind != kForward) return;
  const int MT = 4 * g.U / S.m, KT = g.Kpad / S.k;
  g.groups = MT * g.KS <= g.warps ? std::min(kStages, KT) : 1;
  for (int i = 0; i <= g.groups; ++i) {
    g.st_kt[i] = i * KT / g.groups;
    g.st_col[i] = std::min(g.Hx, g.st_kt[i] * S.k);
  }
  for (int i = 0; i < g.groups; ++i) g.st_row[i] = FastDiv((unsigned)((g.st_col[i + 1] - g.st_col[i]) / vec));
}

}  // namespace

int default_warps() {
#ifdef BILSTM_CUDA_EMULATE
  return kEmulatedWarps;
#else
  return kGpuWarps;
#endif
}

// The dispatch rule (docs/cuda.md §3): the engine from the dtype (and TF32
// permission); as many blocks per direction as
// the SMs allow with U a multiple of 8; as many W_hh tiles in registers as the
// engine holds; the largest batch chunk (up to max_nt tiles) that fits the
// shared memory and the threads.
Plan make_plan(int kind, int N, int B, int H, DType dtype, const DeviceLimits& lim, const Options& opt) {
  if (N < 1 || N > 2 || B < 1 || H < 1)
    fail("bad sizes N=" + std::to_string(N) + " B=" + std::to_string(B) + " H=" + std::to_string(H));
  if (kind != kForward && kind != kBackward) fail("kind must be 0 (forward) or 1 (backward)");
  const bool f32 = dtype == DType::f32;
  if (!f32 && dtype != DType::f16 && dtype != DType::bf16) fail("dtype must be fp32, fp16 or bf16");
  Plan pl;
  std::string why;
  if (opt.engine == kAutoEngine) {
    Options o = opt;
    if (f32) {
      o.engine = opt.tf32 ? kTF32 : kFma;
      why = opt.tf32 ? "fp32 with TF32 allowed: tf32 tensor cores" : "fp32 without TF32: exact FMA tiles";
    } else {
      o.engine = kF16;
      why = "fp16 / bf16: m32n8k16 tensor-core tiles";
    }
    pl = make_plan(kind, N, B, H, dtype, lim, o);
    pl.why = why + pl.why.substr(pl.why.find(';'));
    return pl;
  } else {
    pl.engine = opt.engine;
    if (pl.engine < kF16 || pl.engine > kFma) fail("unknown engine " + std::to_string(opt.engine));
    if (f32 != (pl.engine == kTF32 || pl.engine == kFma))
      fail(std::string("engine ") + engine_name(pl.engine) + " does not run " + (f32 ? "fp32" : "fp16 / bf16") +
           " (fp16 / bf16: f16; fp32: tf32, fma)");
    why = std::string("engine ") + engine_name(pl.engine) + " forced";
  }
  const EngineShape S = engine_shape(pl.engine);
  const int esize = dtype_size(dtype);
  Geometry& g = pl.geo;
  const int max_blocks = std::max(1, lim.sm_count / N);
  const int want = opt.blocks > 0 ? opt.blocks : max_blocks;
  if (want > max_blocks)
    fail(std::to_string(want) + " blocks per direction x N=" + std::to_string(N) + " exceed the " +
         std::to_string(lim.sm_count) + " SMs (one co-resident block per SM)");
  if (opt.warps * 32 > kMaxThreads)
    fail("warps must be <= " + std::to_string(kMaxThreads / 32) + ", got " + std::to_string(opt.warps));
  g.U = (int)round_up((H + want - 1) / want, 8);
  g.blocks = (H + g.U - 1) / g.U;
  g.Hx = g.blocks * g.U;
  pl.reg_tiles = opt.reg_tiles < 0 ? S.reg_tiles : std::min(opt.reg_tiles, S.reg_tiles);
  // The warps' shares of the matmul and of W_hh in registers.
  auto split = [&](int nw) {
    g.warps = nw;
    const int R = pl.reg_tiles;
    if (kind == kForward) {
      g.Kpad = (int)round_up(g.Hx, S.k);
      const int MT = 4 * g.U / S.m, KT = g.Kpad / S.k;
      g.KS = MT <= nw ? std::max(1, std::min(nw / MT, KT)) : 1;
      g.qr = MT <= nw ? std::min(R, KT / g.KS) : 0;  // one slot per warp: its first qr K tiles
      g.Kr = g.KS * g.qr * S.k;
    } else {
      g.Kpad = (int)round_up(g.Hx, S.m);
      const int MT = g.Kpad / S.m, KT = 4 * g.U / S.k;
      g.KS = 1;
      const int rho = std::min(R / KT, MT / nw);  // whole register slots per warp
      g.qr = rho * KT;
      g.Kr = rho * nw * S.m;
    }
  };
  // Each thread owns at most kPairsPerThread (row, unit) pairs of a chunk:
  // automatic warps grow until one batch tile of U units is covered.
  auto pairs_fit = [&](int tiles) { return (long)tiles * S.n * g.U <= (long)kPairsPerThread * 32 * g.warps; };
  split(opt.warps > 0 ? opt.warps : default_warps());
  while (opt.warps <= 0 && !pairs_fit(1) && g.warps * 32 < kMaxThreads) split(g.warps + 1);
  // Batch chunk: at most max_nt tiles and the cap asked for; the largest that
  // fits the shared memory and the threads.
  const int cap_tiles = std::min(S.max_nt, opt.batch_tile > 0 ? std::max(1, opt.batch_tile / S.n) : S.max_nt);
  int tiles = std::min(cap_tiles, (B + S.n - 1) / S.n);
  for (;; --tiles) {
    g.NB = tiles * S.n;
    pl.smem_bytes = layout_smem(kind, g, S, esize);
    if (pl.smem_bytes <= lim.smem_per_block && pairs_fit(tiles)) break;
    if (tiles == 1) break;
  }
  if (pl.smem_bytes > lim.smem_per_block)
    fail("H=" + std::to_string(H) + " does not fit on chip: the W_hh slice of " + std::to_string(g.U) +
         " units (" + std::to_string(4L * g.U * (g.Kpad - g.Kr) * esize) + " B in shared memory beyond " +
         std::to_string(g.Kr) + " columns in registers) plus one batch tile needs " +
         std::to_string(pl.smem_bytes) + " B of shared memory per block, the device has " +
         std::to_string(lim.smem_per_block) + " B (" + std::to_string(g.blocks) + " blocks per direction)");
  if (!pairs_fit(1))
    fail("U=" + std::to_string(g.U) + " units x " + std::to_string(S.n) + " batch rows exceed the " +
         std::to_string(kPairsPerThread) + " cell-update pairs per thread of " + std::to_string(32 * g.warps) +
         " threads");
  // As many chunks as that largest one needs, but balanced (B = 64 over
  // 48-row chunks runs 2 x 32, not 48 + 16): the same chunk count, fewer
  // batch tiles in the larger chunk.
  {
    const int btiles = (B + S.n - 1) / S.n, chunks = (btiles + tiles - 1) / tiles;
    const int even = (btiles + chunks - 1) / chunks;
    if (even < tiles) {
      g.NB = even * S.n;
      pl.smem_bytes = layout_smem(kind, g, S, esize);
    }
  }
  const long long nchunks = (B + g.NB - 1) / g.NB;
  fill_index_math(kind, g, S, esize, B);
  pl.exchange_elems = kind == kForward ? 2LL * N * B * g.Hx : 2LL * N * g.blocks * B * g.Hx;
  pl.state_floats = nchunks > 1 ? (kind == kForward ? 1LL : 2LL) * N * B * g.Hx : 1;
  pl.why = why + "; " + std::to_string(g.blocks) + " blocks x " + std::to_string(g.U) + " units per direction, " +
           std::to_string(g.Kr) + " of " + std::to_string(g.Kpad) + " W_hh columns in registers, batch chunks of " +
           std::to_string(g.NB);
  return pl;
}

// Kernel of a (dtype, engine): fn(tag) with tag::X and tag::E.
template <class T, int En> struct KernelTag { using X = T; static constexpr int E = En; };
template <class Fn>
static void dispatch(DType d, int engine, Fn fn) {
  switch (engine) {
    case kF16:
      if (d == DType::f16) return fn(KernelTag<bl_half, kF16>{});
      if (d == DType::bf16) return fn(KernelTag<bl_bf16, kF16>{});
      break;
    case kTF32:
      if (d == DType::f32) return fn(KernelTag<float, kTF32>{});
      break;
    case kFma:
      if (d == DType::f32) return fn(KernelTag<float, kFma>{});
      break;
  }
  fail(std::string("no kernel for engine ") + engine_name(engine) + " and dtype code " + std::to_string((int)d));
}

#ifdef BILSTM_CUDA_EMULATE
// The emulated device: small, so that tests at H <= 48 see several blocks per direction.
DeviceLimits device_limits(int) { return DeviceLimits{8, 48 * 1024}; }

template <class Params, class Kernel>
static void launch(Kernel kernel, const Params& p, const Plan& pl, int, void*) {
  emu::launch(dim3(p.N * pl.geo.blocks), dim3(32 * pl.geo.warps), (size_t)pl.smem_bytes, kernel, p);
}
#else
static void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    fail(std::string(what) + ": " + cudaGetErrorName(e) + " (" + std::to_string((int)e) + "): " + cudaGetErrorString(e));
}

DeviceLimits device_limits(int device) {
  static std::mutex mu;
  static std::map<int, DeviceLimits> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  int sms = 0, smem = 0, coop = 0;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device), "cudaDeviceGetAttribute");
  if (!coop) fail("device " + std::to_string(device) + " does not support cooperative launch");
  return cache[device] = DeviceLimits{sms, smem};
}

// Per (kernel, device), once: raise the kernel's dynamic shared memory limit
// to the device's opt-in maximum (a cap, not a reservation), so no launch
// ever changes a function attribute another host thread may be launching
// with. The occupancy per (kernel, device, threads, smem) is cached too.
static int blocks_per_sm(const void* fn, int device, int threads, long smem) {
  static std::mutex mu;
  static std::map<std::pair<const void*, int>, bool> raised;
  static std::map<std::tuple<const void*, int, int, long>, int> occupancy;
  std::lock_guard<std::mutex> lock(mu);
  if (!raised[{fn, device}]) {
    check(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)device_limits(device).smem_per_block),
          "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
    raised[{fn, device}] = true;
  }
  auto key = std::make_tuple(fn, device, threads, smem);
  auto it = occupancy.find(key);
  if (it != occupancy.end()) return it->second;
  int per_sm = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, threads, (size_t)smem),
        "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
  return occupancy[key] = per_sm;
}

// Co-residency: the barrier spins, so every block must be resident at once.
// Checked against the device before the launch (a clear error, not a hang),
// then launched cooperatively (the driver refuses a grid that cannot be
// co-scheduled: cudaErrorCooperativeLaunchTooLarge).
template <class Params, class Kernel>
static void launch(Kernel kernel, const Params& p, const Plan& pl, int device, void* stream) {
  const void* fn = reinterpret_cast<const void*>(kernel);
  const int threads = 32 * pl.geo.warps, grid = (int)p.N * pl.geo.blocks;
  const long resident = (long)blocks_per_sm(fn, device, threads, pl.smem_bytes) * device_limits(device).sm_count;
  if (resident < grid)
    fail("grid of " + std::to_string(grid) + " blocks (" + std::to_string(pl.smem_bytes) + " B shared memory, " +
         std::to_string(threads) + " threads each) cannot be co-resident on device " + std::to_string(device) +
         " (" + std::to_string(resident) + " fit); the per-step barrier would deadlock");
  void* args[] = {const_cast<Params*>(&p)};
  check(cudaLaunchCooperativeKernel(fn, dim3(grid), dim3(threads), args, (size_t)pl.smem_bytes,
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

void forward(FwdParams p, const Plan& pl, int device, void* stream) {
#ifndef BILSTM_CUDA_EMULATE
  DeviceGuard guard(device);
#endif
  p.geo = pl.geo;
  dispatch(p.dtype, pl.engine, [&](auto tag) {
    using Tag = decltype(tag);
    launch(lstm_fwd_kernel<typename Tag::X, Tag::E>, p, pl, device, stream);
  });
}

void backward(BwdParams p, const Plan& pl, int device, void* stream) {
#ifndef BILSTM_CUDA_EMULATE
  DeviceGuard guard(device);
#endif
  p.geo = pl.geo;
  dispatch(p.dtype, pl.engine, [&](auto tag) {
    using Tag = decltype(tag);
    launch(lstm_bwd_kernel<typename Tag::X, Tag::E>, p, pl, device, stream);
  });
}

}  // namespace bilstm_cuda
