// emu.h — runs CUDA kernel source as plain C++ on CPU threads (docs/design.md §6).
//
// The kernels in lstm.cu compile unchanged against this header when
// BILSTM_CUDA_EMULATE is defined (the module bilstm_fast._cuda_emu, and the
// sanitizer driver emu_selftest.cpp). The model:
//   * one std::thread per CUDA thread, all threads of all blocks alive at once
//     (so every block is "co-resident" and a grid barrier cannot deadlock);
//   * threadIdx / blockIdx / blockDim / gridDim are thread_local;
//   * __syncthreads() is a per-block std::barrier;
//   * dynamic shared memory is one buffer per block, reached through the
//     BL_DYNAMIC_SMEM macro (a static __shared__ cannot be per-block in C++);
//   * atomics go through std::atomic_ref, __threadfence is a seq_cst fence;
//     the grid barrier of the persistent kernels is written in the kernel
//     source on top of these atomics (lstm.cu: grid_barrier);
//   * half / bfloat16 are 16-bit storage types with round-to-nearest-even
//     conversions (arithmetic is always done in float by the kernels).
// Limits (keep kernels inside them): no inline PTX (mma.sync, cp.async,
// wgmma), no implicit warp lockstep and no warp shuffles (not provided: the
// kernels do not use them), x86 memory ordering is stronger than CUDA's, and
// a thread per CUDA thread is slow: emulate small grids (tens of blocks of
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
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace emu {

// ------------------------------------------------------------ 16-bit floats
inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

struct half { uint16_t bits; };
struct bfloat16 { uint16_t bits; };

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
  explicit Block(std::ptrdiff_t nthreads, size_t smem_bytes)
      : bar(nthreads), smem((smem_bytes + 15) / 16 + 1) {}
  std::barrier<> bar;
  std::vector<std::max_align_t> smem;  // 16-byte aligned dynamic shared memory
};

inline thread_local dim3 tl_threadIdx, tl_blockIdx, tl_blockDim, tl_gridDim;
inline thread_local Block* tl_block = nullptr;

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

}  // namespace emu

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
#define __restrict__ __restrict
#define __syncthreads() ::emu::syncthreads()
// The emulated atomics are already acq_rel (atomicAdd) / acquire (bl_load_acquire),
// which orders what a CUDA __threadfence orders around them; a compiler barrier
// suffices (and ThreadSanitizer does not model stand-alone fences).
#define __threadfence() std::atomic_signal_fence(std::memory_order_seq_cst)
#define __nanosleep(ns) std::this_thread::yield()
// Dynamic shared memory of the current block as a TYPE* called NAME.
#define BL_DYNAMIC_SMEM(TYPE, NAME) TYPE* NAME = reinterpret_cast<TYPE*>(::emu::block_smem())

template <class T>
inline T atomicAdd(T* p, T v) { return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_acq_rel); }
template <class T>
inline T bl_load_acquire(const T* p) {
  return std::atomic_ref<T>(*const_cast<T*>(p)).load(std::memory_order_acquire);
}
