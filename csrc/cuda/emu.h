// emu.h — runs CUDA kernel source as plain C++ on CPU threads (docs/design.md §6).
//
// The kernels in lstm.cu compile unchanged against this header when
// BILSTM_CUDA_EMULATE is defined (the module bilstm_fast._cuda_emu, and the
// sanitizer driver emu_selftest.cpp). The model:
//   * one std::thread per CUDA thread, all threads of all blocks alive at once
//     (so every block is "co-resident" and a grid barrier cannot deadlock);
//   * threadIdx / blockIdx / blockDim / gridDim are thread_local;
//   * __syncthreads() is a per-block std::barrier, __syncwarp() a per-warp one
//     (warps are 32 consecutive threads of a block, the last one may be short);
//   * dynamic shared memory is one buffer per block, reached through the
//     BL_DYNAMIC_SMEM macro (a static __shared__ cannot be per-block in C++);
//   * atomics go through std::atomic_ref: atomicAdd, and cuda::atomic_ref
//     (libcu++'s spelling, used by the grid barrier of lstm.cu) with its
//     memory orders; __threadfence is a compiler fence;
//   * 16-byte vector types (float4, uint4) and __ldcg are plain loads;
//   * wmma (namespace emu::wmma, the API of nvcuda::wmma): every thread of a
//     warp holds the WHOLE tile of a fragment (the real layout spreads it over
//     the 32 lanes; kernels that only load, mma, store and touch x[i]
//     element-wise cannot tell the difference). load_matrix_sync reads the
//     tile in every thread, mma_sync multiplies it in fp32, store_matrix_sync
//     writes it from lane 0 only (the writes of the other lanes would be the
//     same values, and a data race for ThreadSanitizer), so a kernel must
//     __syncwarp() / __syncthreads() before other lanes read what was stored:
//     exactly what real wmma requires too;
//   * half / bfloat16 are 16-bit storage types with round-to-nearest-even
//     conversions (arithmetic is always done in float by the kernels).
// Limits (keep kernels inside them): no inline PTX (lstm.cu gives each PTX
// wrapper an emulated twin: cp.async is a plain copy), no implicit warp
// lockstep and no warp shuffles, x86 memory ordering is stronger than CUDA's,
// and a thread per CUDA thread is slow: emulate small grids (tens of blocks of
// tens of threads).
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// CUDA's 16-byte vector types (what a 128-bit load moves).
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };

namespace emu {

// ------------------------------------------------------------ 16-bit floats
inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

struct half { uint16_t bits; };
struct bfloat16 { uint16_t bits; };

inline float to_float(float f) { return f; }
inline float to_float(bfloat16 h) { return bits_f32(uint32_t(h.bits) << 16); }
inline bfloat16 bf16_from_float(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bfloat16{uint16_t((u >> 16) | 0x40)};  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);                                                  // nearest, ties to even
  return bfloat16{uint16_t(u >> 16)};
}

inline float to_float(half h) {
  uint32_t sign = uint32_t(h.bits & 0x8000u) << 16, exp = (h.bits >> 10) & 0x1fu, man = h.bits & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));          // inf / nan
  if (exp == 0) {                                                             // zero / subnormal
    float v = std::ldexp(float(man), -24);
    return sign ? -v : v;
  }
  return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}
inline half half_from_float(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return half{uint16_t(sign | 0x7e00u)};                  // nan
  if (a >= 0x477ff000u) return half{uint16_t(sign | 0x7c00u)};                 // rounds to inf
  if (a < 0x38800000u) {                                                       // subnormal / zero
    // value / 2^-24 rounded to nearest even (exact in float arithmetic)
    float v = bits_f32(a) * 16777216.0f;
    return half{uint16_t(sign | uint16_t(std::nearbyint(v)))};
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u);                                  // nearest, ties to even
  return half{uint16_t(sign | uint16_t((r - 0x38000000u) >> 13))};
}

// ----------------------------------------------------------- launch context
struct Block {
  Block(unsigned nthreads, size_t smem_bytes) : bar(nthreads), smem((smem_bytes + 15) / 16 + 1) {
    for (unsigned w = 0; w * 32 < nthreads; ++w)
      warp_bars.push_back(std::make_unique<std::barrier<>>(std::min(32u, nthreads - w * 32)));
  }
  std::barrier<> bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bars;  // one per warp of 32 threads
  std::vector<std::max_align_t> smem;                      // 16-byte aligned dynamic shared memory
};

inline thread_local dim3 tl_threadIdx, tl_blockIdx, tl_blockDim, tl_gridDim;
inline thread_local Block* tl_block = nullptr;
inline thread_local unsigned tl_linear_tid = 0;  // threadIdx flattened, as CUDA numbers lanes

// Every CUDA thread is an OS thread, all alive at once.
inline constexpr size_t kMaxEmulatedThreads = 4096;

// kernel<<<grid, block, smem>>>(args...): returns when every thread has finished.
// An exception thrown by a thread is rethrown here (first one wins).
template <class... KArgs, class... Args>
void launch(dim3 grid, dim3 block, size_t smem_bytes, void (*kernel)(KArgs...), Args&&... args) {
  const unsigned nthreads = block.x * block.y * block.z;
  const unsigned nblocks = grid.x * grid.y * grid.z;
  if (nthreads == 0 || nblocks == 0) return;
  if (nthreads > 1024) throw std::runtime_error("emu::launch: more than 1024 threads per block");
  if (size_t(nthreads) * nblocks > kMaxEmulatedThreads)
    throw std::runtime_error("emu::launch: " + std::to_string(size_t(nthreads) * nblocks) +
                             " CUDA threads exceed the emulation limit of " + std::to_string(kMaxEmulatedThreads) +
                             " (one OS thread each): use fewer blocks or threads");
  std::vector<std::unique_ptr<Block>> blocks;
  for (unsigned i = 0; i < nblocks; ++i) blocks.push_back(std::make_unique<Block>(nthreads, smem_bytes));
  std::exception_ptr error;
  std::mutex error_mutex;
  std::vector<std::thread> threads;
  threads.reserve(size_t(nthreads) * nblocks);
  for (unsigned bi = 0; bi < nblocks; ++bi) {
    for (unsigned ti = 0; ti < nthreads; ++ti) {
      threads.emplace_back([&, bi, ti] {
        tl_gridDim = grid;
        tl_blockDim = block;
        tl_blockIdx = dim3(bi % grid.x, (bi / grid.x) % grid.y, bi / (grid.x * grid.y));
        tl_threadIdx = dim3(ti % block.x, (ti / block.x) % block.y, ti / (block.x * block.y));
        tl_linear_tid = ti;
        tl_block = blocks[bi].get();
        try {
          kernel(args...);
        } catch (...) {
          std::lock_guard<std::mutex> lock(error_mutex);
          if (!error) error = std::current_exception();
        }
      });
    }
  }
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

inline void* block_smem() { return tl_block->smem.data(); }
inline void syncthreads() { tl_block->bar.arrive_and_wait(); }
inline void syncwarp() { tl_block->warp_bars[tl_linear_tid / 32]->arrive_and_wait(); }
inline unsigned lane() { return tl_linear_tid % 32; }

// --------------------------------------------------------------------- wmma
// The subset of nvcuda::wmma that lstm.cu uses, emulated tile-wise (see the
// header comment): fragment<Use, M, N, K, T, Layout>, fill_fragment,
// load_matrix_sync, mma_sync, store_matrix_sync, __float_to_tf32.
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision { struct tf32 {}; }

template <class Use, int M, int N, int K> struct tile_shape;
template <int M, int N, int K> struct tile_shape<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct tile_shape<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct tile_shape<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

// The whole rows x cols tile, row-major, in float (exact for half, bfloat16
// and tf32 operands), in every thread of the warp.
template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = tile_shape<Use, M, N, K>::rows, cols = tile_shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  float x[num_elements];
};

template <class Use, int M, int N, int K, class T, class L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, float v) {
  for (float& e : f.x) e = v;
}

// Operand fragments: the layout is part of the type (row_major: element (r, c)
// at p[r * ld + c]; col_major: at p[c * ld + r]).
template <class Use, int M, int N, int K, class T, class L, class P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P* p, unsigned ld) {
  using F = fragment<Use, M, N, K, T, L>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = to_float(std::is_same_v<L, col_major> ? p[(size_t)c * ld + r] : p[(size_t)r * ld + c]);
}

template <int M, int N, int K, class TA, class LA, class TB, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      float acc = c.x[m * N + n];
      for (int k = 0; k < K; ++k) acc += a.x[m * K + k] * b.x[k * N + n];
      out[m * N + n] = acc;
    }
  std::memcpy(d.x, out, sizeof(out));
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ld, layout_t layout) {
  if (lane() != 0) return;  // one writer per warp (see the header comment)
  for (int r = 0; r < M; ++r)
    for (int c = 0; c < N; ++c) (layout == mem_col_major ? p[(size_t)c * ld + r] : p[(size_t)r * ld + c]) = f.x[r * N + c];
}

// cvt.rna.tf32.f32: keep 10 mantissa bits, round to nearest, ties away from zero.
inline float __float_to_tf32(float v) {
  uint32_t u = f32_bits(v);
  if ((u & 0x7f800000u) == 0x7f800000u) return v;  // inf / nan unchanged
  return bits_f32((u + 0x1000u) & 0xffffe000u);
}

}  // namespace wmma
}  // namespace emu

// ------------------------------------------------------ libcu++ atomics
// cuda::atomic_ref over std::atomic_ref: the orders the kernels name are the
// orders ThreadSanitizer checks.
namespace cuda {
using memory_order = std::memory_order;
inline constexpr memory_order memory_order_relaxed = std::memory_order_relaxed;
inline constexpr memory_order memory_order_acquire = std::memory_order_acquire;
inline constexpr memory_order memory_order_release = std::memory_order_release;
enum thread_scope { thread_scope_system, thread_scope_device, thread_scope_block };
template <class T, thread_scope Scope = thread_scope_system>
struct atomic_ref {
  explicit atomic_ref(T& v) : ref(v) {}
  T fetch_add(T v, memory_order o) const { return ref.fetch_add(v, o); }
  T load(memory_order o) const { return ref.load(o); }
  std::atomic_ref<T> ref;
};
}  // namespace cuda

// ------------------------------------------------------ CUDA spellings
#define threadIdx (::emu::tl_threadIdx)
#define blockIdx (::emu::tl_blockIdx)
#define blockDim (::emu::tl_blockDim)
#define gridDim (::emu::tl_gridDim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __restrict__ __restrict
#define __syncthreads() ::emu::syncthreads()
#define __syncwarp(...) ::emu::syncwarp()
// The emulated atomics carry their own orders; a compiler barrier suffices
// (and ThreadSanitizer does not model stand-alone fences).
#define __threadfence() std::atomic_signal_fence(std::memory_order_seq_cst)
// Dynamic shared memory of the current block as a TYPE* called NAME.
#define BL_DYNAMIC_SMEM(TYPE, NAME) TYPE* NAME = reinterpret_cast<TYPE*>(::emu::block_smem())

template <class T>
inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_acq_rel); }
// Load through L2 only (ld.global.cg): a plain load on a CPU.
template <class T>
inline T __ldcg(const T* p) { return *p; }
