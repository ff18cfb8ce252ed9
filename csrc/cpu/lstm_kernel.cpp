// The fused LSTM recurrence kernels, one source for every dtype and ISA.
//
// CMake compiles this file several times (CMakeLists.txt): once per ISA with
// BILSTM_ISA (namespace suffix), BILSTM_VEC_BYTES (SIMD width) and that ISA's
// -m flags; lstm_driver.cpp picks one build at run time
// (__builtin_cpu_supports). -march=native is never used, so the module runs
// on any x86-64 CPU. The kernels are templated over the scalar type T (float
// or double: T is both the storage and the accumulation type).
//
// Legend: T steps, B batch, N directions, H hidden, L = lanes per vector
// (BILSTM_VEC_BYTES / sizeof(T)), Hq = H rounded up to 4L, MB = batch rows per
// register tile.
//
// Everything here is inside namespace bilstm_cpu::BILSTM_ISA and uses no
// std:: templates that another build of this file could also instantiate:
// the linker keeps one copy of such a COMDAT, and an AVX-512 copy would then
// run on an AVX2-only CPU.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "lstm_cpu.h"
#include "thread_pool.h"

#ifndef BILSTM_ISA
#error "compile with -DBILSTM_ISA=<name> -DBILSTM_VEC_BYTES=<16|32|64>"
#endif

namespace bilstm_cpu {
namespace BILSTM_ISA {
namespace {

constexpr int kVecBytes = BILSTM_VEC_BYTES;
// Tuning knobs. K chunk: bytes of packed weights reused from L1 by every row
// block (16 KB = half the L1d). Software prefetch distance along the weight
// stream (0 = off). Sweep on the 2-vCPU EPYC (single-thread CPU time, T=64
// B=1/8 H=256 and T=16 B=128 H=512): KC 4-32 KB x prefetch 0-16 KB were all
// within +-8%, the noise of this shared machine, so the simplest is kept.
#ifndef BILSTM_KC_BYTES
#define BILSTM_KC_BYTES 16384
#endif
#ifndef BILSTM_PF_BYTES
#define BILSTM_PF_BYTES 0
#endif

// Rows per register tile: MB rows x 4 vectors of accumulators. 16 vector
// registers (SSE2, AVX2) -> 3 x 4 = 12 accumulators + broadcasts; 32
// (AVX-512) -> 6 x 4 = 24.
constexpr int MB = kVecBytes == 64 ? 6 : 3;

template <class T> struct VecOf;
template <> struct VecOf<float> { typedef float type __attribute__((vector_size(kVecBytes))); };
template <> struct VecOf<double> { typedef double type __attribute__((vector_size(kVecBytes))); };

template <class T> using Vec = typename VecOf<T>::type;
template <class T> constexpr int lanes() { return kVecBytes / static_cast<int>(sizeof(T)); }

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// Loads/stores of n <= L elements (n < L only in the last tile when H % L != 0).
template <class T> inline Vec<T> loadu(const T* p, int n) {
  Vec<T> v = {};
  std::memcpy(&v, p, sizeof(T) * static_cast<size_t>(n));
  return v;
}
template <class T> inline void storeu(T* p, Vec<T> v, int n) {
  std::memcpy(p, &v, sizeof(T) * static_cast<size_t>(n));
}
template <class T> inline Vec<T> load_a(const T* p) { return *reinterpret_cast<const Vec<T>*>(p); }
template <class T> inline void store_a(T* p, Vec<T> v) { *reinterpret_cast<Vec<T>*>(p) = v; }

// ---------------------------------------------------------------- activations
// float: vectorized rational tanh (below); double: libm, element by element
// (float64 is the exact path, not the fast one). Scalar libm calls for float
// would cost more than the GEMM of a B=1 step.
// tanh as a rational function (the [13/6] minimax fit Eigen uses for float,
// max error a few ulp on [-7.99, 7.99], +-1 to float precision beyond, NaN
// kept): one
// division and 11 FMAs, no exp. sigmoid(x) = 0.5 + 0.5 * tanh(x / 2).
// Measured against a Cephes-style vector exp with 1 / (1 + exp(-x)): equal
// or ~2% faster at B=128, H=512 (58.9 vs 57.4 GFLOP/s, mean of 3 runs on a
// loaded machine), with one polynomial for both activations.
inline Vec<float> vtanh(const Vec<float> x0) {
  Vec<float> x = x0;
  // Clamp written so that NaN passes through (a comparison with NaN is
  // false, so it keeps x): NaN in gives NaN out, as in nn.LSTM.
  // (`x < 7.99 ? x : 7.99` turned NaN into 1.0: tests/test_nonfinite.py.)
  x = x > 7.99881172180175781f ? 7.99881172180175781f : x;
  x = x < -7.99881172180175781f ? -7.99881172180175781f : x;
  const Vec<float> x2 = x * x;
  Vec<float> p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  Vec<float> q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  Vec<float> r = (x * p) / q;
  // Exactly +-1 where float's tanh rounds to +-1 (|x| > 9.0109, 1 - tanh(x)
  // < 2^-25), as torch's tanh gives: the rational stops at 0.99999982, so
  // sigmoid(-inf) was 9e-8 instead of 0 and 0 * inf = NaN in the next step
  // went missing (tests/test_nonfinite.py, an Inf in W_hh).
  r = x0 > 9.0109f ? 1.0f : r;
  r = x0 < -9.0109f ? -1.0f : r;
  return r;
}
inline Vec<float> vsigmoid(Vec<float> x) { return 0.5f + 0.5f * vtanh(0.5f * x); }

inline Vec<double> vsigmoid(Vec<double> x) {
  for (int l = 0; l < lanes<double>(); ++l) x[l] = 1.0 / (1.0 + std::exp(-x[l]));
  return x;
}
inline Vec<double> vtanh(Vec<double> x) {
  for (int l = 0; l < lanes<double>(); ++l) x[l] = std::tanh(x[l]);
  return x;
}

// ------------------------------------------------------------ the micro-GEMM
// acc[m][q] (+)= sum_k A[m, k] * W[k, q, :] for m < M rows, q < 4 vectors:
//   A    rows of the left operand, row stride lda (h_{t-1} forward, dG backward)
//   W    packed [K][4][L], 64-byte aligned
// Forward the 4 vectors are the 4 gates of L hidden units (so the cell update
// runs on the accumulators with no extra pass); backward they are 4 tiles of
// L output columns. acc lives in `tile` ([M][4][L]) between K chunks.
template <class T, int M>
inline void micro_gemm(const T* A, int64_t lda, const T* W, int64_t K, T* tile, bool first) {
  constexpr int L = lanes<T>();
  using V = Vec<T>;
  V acc[M][4];
  for (int m = 0; m < M; ++m)
    for (int q = 0; q < 4; ++q) acc[m][q] = first ? V{} : load_a(tile + (m * 4 + q) * L);
  for (int64_t k = 0; k < K; ++k) {
    const T* w = W + k * 4 * L;
    if (BILSTM_PF_BYTES) __builtin_prefetch(w + BILSTM_PF_BYTES / sizeof(T), 0, 3);
    const V w0 = load_a(w), w1 = load_a(w + L), w2 = load_a(w + 2 * L), w3 = load_a(w + 3 * L);
    for (int m = 0; m < M; ++m) {
      const T a = A[m * lda + k];
      acc[m][0] += a * w0;
      acc[m][1] += a * w1;
      acc[m][2] += a * w2;
      acc[m][3] += a * w3;
    }
  }
  for (int m = 0; m < M; ++m)
    for (int q = 0; q < 4; ++q) store_a(tile + (m * 4 + q) * L, acc[m][q]);
}

// One row (batch 1, the latency case): two accumulator sets over even/odd k,
// so 8 independent FMA chains instead of 4 -- with 4 the loop is bound by
// the 4-cycle FMA latency, not by the weight stream.
template <class T>
inline void micro_gemm_1row(const T* A, const T* W, int64_t K, T* tile, bool first) {
  constexpr int L = lanes<T>();
  using V = Vec<T>;
  V a0[4], a1[4];
  for (int q = 0; q < 4; ++q) {
    a0[q] = first ? V{} : load_a(tile + q * L);
    a1[q] = V{};
  }
  int64_t k = 0;
  for (; k + 1 < K; k += 2) {
    const T* w = W + k * 4 * L;
    if (BILSTM_PF_BYTES) {
      __builtin_prefetch(w + BILSTM_PF_BYTES / sizeof(T), 0, 3);
      __builtin_prefetch(w + BILSTM_PF_BYTES / sizeof(T) + 4 * L, 0, 3);
    }
    const T x0 = A[k], x1 = A[k + 1];
    for (int q = 0; q < 4; ++q) {
      a0[q] += x0 * load_a(w + q * L);
      a1[q] += x1 * load_a(w + (4 + q) * L);
    }
  }
  if (k < K)
    for (int q = 0; q < 4; ++q) a0[q] += A[k] * load_a(W + k * 4 * L + q * L);
  for (int q = 0; q < 4; ++q) store_a(tile + q * L, a0[q] + a1[q]);
}

template <class T>
inline void micro_gemm_rows(int m, const T* A, int64_t lda, const T* W, int64_t K, T* tile, bool first) {
  // MB is 3 or 6; the tail of a row range takes a smaller instantiation.
  switch (m) {
    case 1: micro_gemm_1row<T>(A, W, K, tile, first); break;
    case 2: micro_gemm<T, 2>(A, lda, W, K, tile, first); break;
    case 3: micro_gemm<T, 3>(A, lda, W, K, tile, first); break;
#if BILSTM_VEC_BYTES == 64
    case 4: micro_gemm<T, 4>(A, lda, W, K, tile, first); break;
    case 5: micro_gemm<T, 5>(A, lda, W, K, tile, first); break;
    case 6: micro_gemm<T, 6>(A, lda, W, K, tile, first); break;
#endif
    default: break;
  }
}

// K chunk of the micro-GEMM in k steps: KC * 4L * sizeof(T) = BILSTM_KC_BYTES.
template <class T> constexpr int64_t kc_elems() {
  return BILSTM_KC_BYTES / (4 * lanes<T>() * static_cast<int64_t>(sizeof(T)));
}

// out[rows][4][L] = A[rows, 0:K] x W[0:K][4][L] for `rows` rows of A.
template <class T>
inline void gemm_panel(const T* A, int64_t lda, int64_t rows, const T* W, int64_t K, T* out) {
  constexpr int L = lanes<T>();
  const int64_t KC = kc_elems<T>();
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int64_t kn = imin(KC, K - k0);
    for (int64_t r = 0; r < rows; r += MB) {
      const int m = static_cast<int>(imin(MB, rows - r));
      micro_gemm_rows<T>(m, A + r * lda + k0, lda, W + k0 * 4 * L, kn, out + r * 4 * L, k0 == 0);
    }
  }
}

inline bool valid(const int64_t* lengths, int64_t b, int64_t t) { return !lengths || t < lengths[b]; }

template <class T> inline T* at(const View& v, int64_t i0, int64_t i1, int64_t i2) {
  return static_cast<T*>(v.ptr) + i0 * v.stride[0] + i1 * v.stride[1] + i2 * v.stride[2];
}

// ------------------------------------------------------------------ forward
// Job: direction n, rows [b0, b1), hidden units [lo, hi). Per step the job
// computes G = gx_t + h_{t-1} W_hh^T for its hidden tiles and rows, then the
// cell update on the result, writes h_t into the other half of the
// double-buffered h and meets the other threads of its rows at the barrier
// (only when the hidden units are split: one barrier per step).
template <class T>
void forward_job(const FwdParams& p, const Job& job, const Buffers& buf) {
  constexpr int L = lanes<T>();
  using V = Vec<T>;
  const int64_t T_ = p.T, B = p.B, H = p.H, Hq = buf.Hq, n = job.n;
  const int64_t hi_h = imin(job.hi, H);          // last real hidden unit + 1
  const int64_t ntiles = (hi_h - job.lo + L - 1) / L;
  const int64_t rows = job.b1 - job.b0;
  T* wp = static_cast<T*>(job.wpack);           // [ntiles][H][4][L]
  T* hbuf = static_cast<T*>(buf.h[n]);          // [2][B][Hq]
  T* cbuf = static_cast<T*>(buf.c[n]);          // [B][Hq]

  // Pack this job's slice of W_hh[n] (once per call), gate-interleaved:
  // wp[tile][k][g][l] = W_hh[n][g*H + tile*L + l][k], zero past H.
  // Loop order: read whole rows of W_hh (contiguous), scatter into the
  // tile's block (H*4L elements, L1/L2-resident). The k-outer order
  // (reading 8 elements H apart) made packing ~25% of a T=16, B=128 call.
  for (int64_t tile = 0; tile < ntiles; ++tile)
    for (int g = 0; g < 4; ++g)
      for (int l = 0; l < L; ++l) {
        const int64_t j = job.lo + tile * L + l;
        T* dst = wp + (tile * H * 4 + g) * L + l;
        const T* src = j < H ? at<const T>(p.w_hh, n, g * H + j, 0) : nullptr;
        for (int64_t k = 0; k < H; ++k) dst[k * 4 * L] = src ? src[k] : T(0);
      }
  for (int64_t b = job.b0; b < job.b1; ++b)
    for (int64_t j = job.lo; j < job.hi; ++j) {
      hbuf[b * Hq + j] = j < H ? *at<const T>(p.h0, n, b, j) : T(0);
      cbuf[b * Hq + j] = j < H ? *at<const T>(p.c0, n, b, j) : T(0);
    }
  if (job.barrier) job.barrier->wait();  // every slice of h0 is in place

  // Accumulator tiles of one hidden tile for all rows: [rows][4][L].
  alignas(64) T tile_acc_stack[16 * 4 * 64 / sizeof(T)];
  T* tile_acc = rows <= 16 ? tile_acc_stack
                           : static_cast<T*>(__builtin_alloca(sizeof(T) * rows * 4 * L + 64));
  tile_acc = reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(tile_acc) + 63) & ~uintptr_t(63));
  const bool keep = p.gates.ptr != nullptr;  // write gates / cells for the backward

  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = n == 0 ? s : T_ - 1 - s;
    const T* hc = hbuf + (s & 1) * B * Hq;      // h_{t-1}, [B][Hq]
    T* hn = hbuf + ((s + 1) & 1) * B * Hq;      // h_t
    for (int64_t tile = 0; tile < ntiles; ++tile) {
      const int64_t j0 = job.lo + tile * L;
      const int nl = static_cast<int>(imin(L, H - j0));
      gemm_panel<T>(hc + job.b0 * Hq, Hq, rows, wp + tile * H * 4 * L, H, tile_acc);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t b = job.b0 + r;
        T* yp = at<T>(p.y, t, b, n) + j0;
        if (!valid(p.lengths, b, t)) {          // frozen state, zero output
          std::memcpy(hn + b * Hq + j0, hc + b * Hq + j0, sizeof(T) * L);
          storeu<T>(yp, V{}, nl);
          continue;
        }
        const T* gxp = at<const T>(p.gx, t, b, n) + j0;
        const T* acc = tile_acc + r * 4 * L;
        const V i = vsigmoid(load_a(acc) + loadu(gxp, nl));
        const V f = vsigmoid(load_a(acc + L) + loadu(gxp + H, nl));
        const V g = vtanh(load_a(acc + 2 * L) + loadu(gxp + 2 * H, nl));
        const V o = vsigmoid(load_a(acc + 3 * L) + loadu(gxp + 3 * H, nl));
        const V c = f * load_a(cbuf + b * Hq + j0) + i * g;
        const V h = o * vtanh(c);
        store_a(cbuf + b * Hq + j0, c);
        store_a(hn + b * Hq + j0, h);
        storeu(yp, h, nl);
        if (keep) {
          T* gp = at<T>(p.gates, t, b, n) + j0;
          storeu(gp, i, nl);
          storeu(gp + H, f, nl);
          storeu(gp + 2 * H, g, nl);
          storeu(gp + 3 * H, o, nl);
          storeu(at<T>(p.cells, t, b, n) + j0, c, nl);
        }
      }
    }
    if (job.barrier) job.barrier->wait();
  }
  const T* hf = hbuf + (T_ & 1) * B * Hq;
  for (int64_t b = job.b0; b < job.b1; ++b)
    for (int64_t j = job.lo; j < hi_h; ++j) {
      *at<T>(p.h_n, n, b, j) = hf[b * Hq + j];
      *at<T>(p.c_n, n, b, j) = cbuf[b * Hq + j];
    }
}

// ----------------------------------------------------------------- backward
// Job: direction n, rows [b0, b1), hidden units [lo, hi) (a multiple of 4L).
// Per step (reverse order):
//   1. elementwise, own units j: dG_t[:, j of each gate] from dh, dc, dy and
//      the saved gates / cell states -> written straight into dgx[t]
//   2. barrier (all of dG_t is written)
//   3. dh[:, own units] = dG_t W_hh[:, own units]  (reduction over 4H)
// Both phases touch only the job's own units of dh/dc, so one barrier per
// step suffices (dgx[t] of the next step is a different row of memory).
template <class T>
void backward_job(const BwdParams& p, const Job& job, const Buffers& buf) {
  constexpr int L = lanes<T>();
  using V = Vec<T>;
  const int64_t T_ = p.T, H = p.H, Hq = buf.Hq, n = job.n, G = 4 * H;
  const int64_t hi_h = imin(job.hi, H);
  const int64_t ngroups = (job.hi - job.lo) / (4 * L);
  const int64_t rows = job.b1 - job.b0;
  T* wp = static_cast<T*>(job.wpack);           // [ngroups][4H][4][L]
  T* dh = static_cast<T*>(buf.h[n]);            // [B][Hq]
  T* dc = static_cast<T*>(buf.c[n]);            // [B][Hq]

  // wp[grp][r][u][l] = W_hh[n][r][grp*4L + u*L + l], zero past H.
  // (rows of W_hh are contiguous in k: this order reads them sequentially)
  for (int64_t grp = 0; grp < ngroups; ++grp)
    for (int64_t r = 0; r < G; ++r) {
      const T* src = at<const T>(p.w_hh, n, r, 0);
      T* dst = wp + (grp * G + r) * 4 * L;
      for (int64_t c = 0; c < 4 * L; ++c) {
        const int64_t k = job.lo + grp * 4 * L + c;
        dst[c] = k < H ? src[k] : T(0);
      }
    }
  for (int64_t b = job.b0; b < job.b1; ++b)
    for (int64_t j = job.lo; j < job.hi; ++j) {
      dh[b * Hq + j] = j < H ? *at<const T>(p.dh_n, n, b, j) : T(0);
      dc[b * Hq + j] = j < H ? *at<const T>(p.dc_n, n, b, j) : T(0);
    }

  alignas(64) T tile_acc_stack[16 * 4 * 64 / sizeof(T)];
  T* tile_acc = rows <= 16 ? tile_acc_stack
                           : static_cast<T*>(__builtin_alloca(sizeof(T) * rows * 4 * L + 64));
  tile_acc = reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(tile_acc) + 63) & ~uintptr_t(63));
  const int64_t ldg = p.dgx.stride[1];

  for (int64_t s = T_ - 1; s >= 0; --s) {
    const int64_t t = n == 0 ? s : T_ - 1 - s;
    // time of the step before this one, whose cell state is c_{t-1}
    const int64_t tp = n == 0 ? t - 1 : t + 1;
    for (int64_t b = job.b0; b < job.b1; ++b) {
      T* dg = at<T>(p.dgx, t, b, n);
      if (!valid(p.lengths, b, t)) {
        for (int64_t j = job.lo; j < hi_h; ++j)
          for (int g = 0; g < 4; ++g) dg[g * H + j] = T(0);
        continue;
      }
      const bool has_prev = s > 0 && valid(p.lengths, b, tp);
      const T* cprev = has_prev ? at<const T>(p.cells, tp, b, n) : at<const T>(p.c0, n, b, 0);
      const T* gt = at<const T>(p.gates, t, b, n);
      const T* ct = at<const T>(p.cells, t, b, n);
      const T* dyp = at<const T>(p.dy, t, b, n);
      for (int64_t j0 = job.lo; j0 < hi_h; j0 += L) {
        const int nl = static_cast<int>(imin(L, H - j0));
        const V i = loadu(gt + j0, nl), f = loadu(gt + H + j0, nl);
        const V g = loadu(gt + 2 * H + j0, nl), o = loadu(gt + 3 * H + j0, nl);
        const V tc = vtanh(loadu(ct + j0, nl));
        const V dho = load_a(dh + b * Hq + j0) + loadu(dyp + j0, nl);
        const V dct = load_a(dc + b * Hq + j0) + dho * o * (T(1) - tc * tc);
        const V cp = loadu(cprev + j0, nl);
        storeu(dg + j0, dct * g * i * (T(1) - i), nl);
        storeu(dg + H + j0, dct * cp * f * (T(1) - f), nl);
        storeu(dg + 2 * H + j0, dct * i * (T(1) - g * g), nl);
        storeu(dg + 3 * H + j0, dho * tc * o * (T(1) - o), nl);
        store_a(dc + b * Hq + j0, dct * f);
      }
    }
    if (job.barrier) job.barrier->wait();
    const T* dgt = at<const T>(p.dgx, t, job.b0, n);  // [rows][4H], row stride ldg
    for (int64_t grp = 0; grp < ngroups; ++grp) {
      const int64_t k0 = job.lo + grp * 4 * L;
      if (k0 >= H) break;
      gemm_panel<T>(dgt, ldg, rows, wp + grp * G * 4 * L, G, tile_acc);
      for (int64_t r = 0; r < rows; ++r)
        if (valid(p.lengths, job.b0 + r, t))
          std::memcpy(dh + (job.b0 + r) * Hq + k0, tile_acc + r * 4 * L, sizeof(T) * 4 * L);
    }
  }
  for (int64_t b = job.b0; b < job.b1; ++b)
    for (int64_t j = job.lo; j < hi_h; ++j) {
      *at<T>(p.dh0, n, b, j) = dh[b * Hq + j];
      *at<T>(p.dc0, n, b, j) = dc[b * Hq + j];
    }
}

}  // namespace

}  // namespace BILSTM_ISA

#define BILSTM_CAT2(a, b) a##b
#define BILSTM_CAT(a, b) BILSTM_CAT2(a, b)
#define BILSTM_STR2(a) #a
#define BILSTM_STR(a) BILSTM_STR2(a)

const KernelSet& BILSTM_CAT(kernels_, BILSTM_ISA)() {
  static const KernelSet k = {
      BILSTM_STR(BILSTM_ISA), BILSTM_VEC_BYTES,
      {&BILSTM_ISA::forward_job<float>, &BILSTM_ISA::forward_job<double>},
      {&BILSTM_ISA::backward_job<float>, &BILSTM_ISA::backward_job<double>}};
  return k;
}

}  // namespace bilstm_cpu
