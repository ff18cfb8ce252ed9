// The CPU kernels, one source for every dtype and ISA: the input projection,
// the forward recurrence and the backward (dh/dc) recurrence, all built on
// one register-tiled micro-GEMM.
//
// CMake compiles this file once per ISA (CMakeLists.txt) with BILSTM_ISA
// (namespace suffix), BILSTM_VEC_BYTES (SIMD width) and that ISA's -m flags;
// lstm_driver.cpp picks one build at run time (__builtin_cpu_supports).
// -march=native is never used, so the module runs on any x86-64 CPU. The
// kernels are templated over the scalar type T (float or double: T is both
// the storage and the accumulation type); the recurrence also over the
// storage type S = X (float, double, f16, bf16) with T = Acc<S> (float for
// f16 / bf16), the GEMMs over B's storage type (docs/cpu.md, "fp16 / bf16").
//
// Legend: T steps, B batch, N directions, H hidden, D input features,
// L = lanes per vector (BILSTM_VEC_BYTES / sizeof(T)), NR = 2L columns per
// packed weight panel, MR = 6 rows per register tile, Hp = H rounded up to NR.
//
// Everything here is inside namespace bilstm_cpu::BILSTM_ISA and uses no
// std:: templates that another build of this file could also instantiate:
// the linker keeps one copy of such a COMDAT, and an AVX-512 copy would then
// run on an AVX2-only CPU.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ctime>

#include "cpu_kernels.h"
#include "thread_pool.h"

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef BILSTM_ISA
#error "compile with -DBILSTM_ISA=<name> -DBILSTM_VEC_BYTES=<16|32|64>"
#endif

namespace bilstm_cpu {
namespace BILSTM_ISA {
namespace {

constexpr int kVecBytes = BILSTM_VEC_BYTES;

template <class T> struct VecOf;
template <> struct VecOf<float> { typedef float type __attribute__((vector_size(kVecBytes))); };
template <> struct VecOf<double> { typedef double type __attribute__((vector_size(kVecBytes))); };

template <class T> using Vec = typename VecOf<T>::type;
// The same vector at element alignment: unaligned loads/stores without a
// memcpy through the stack.
template <class T> struct VecUOf;
template <> struct VecUOf<float> { typedef float type __attribute__((vector_size(kVecBytes), aligned(4))); };
template <> struct VecUOf<double> { typedef double type __attribute__((vector_size(kVecBytes), aligned(8))); };
template <class T> using VecU = typename VecUOf<T>::type;
template <class T> constexpr int lanes() { return kVecBytes / static_cast<int>(sizeof(T)); }
template <class T> constexpr int panel_cols() { return 2 * lanes<T>(); }  // NR

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// Vector loads/stores (unaligned unless _a); the _n forms take n <= L elements (n < L only at the last vector of a row
// when H % L != 0), zero-filling the rest on load. (A memcpy of a run-time
// size is a libc call: when every access took that path it was ~16% of a
// T=64, B=32 forward -- perf, before the fixed-size fast path.)
template <class T> inline Vec<T> loadu(const T* p) { return *reinterpret_cast<const VecU<T>*>(p); }
template <class T> inline void storeu(T* p, Vec<T> v) { *reinterpret_cast<VecU<T>*>(p) = v; }
template <class T> inline Vec<T> load_n(const T* p, int n) {
  if (n == lanes<T>()) return loadu(p);
  Vec<T> v = {};
  std::memcpy(&v, p, sizeof(T) * static_cast<size_t>(n));
  return v;
}
template <class T> inline void store_n(T* p, Vec<T> v, int n) {
  if (n == lanes<T>()) storeu(p, v);
  else std::memcpy(p, &v, sizeof(T) * static_cast<size_t>(n));
}
template <class T> inline Vec<T> load_a(const T* p) { return *reinterpret_cast<const Vec<T>*>(p); }
template <class T> inline void store_a(T* p, Vec<T> v) { *reinterpret_cast<Vec<T>*>(p) = v; }

// ------------------------------------------------- fp16 / bf16 storage (X)
// X = float16 / bfloat16 tensors are read and written through these; all
// arithmetic, the cell state and the workspace are in A = float
// (docs/design.md §0). A load widens L 16-bit values to a Vec<float>, a store
// rounds to nearest even (as torch's .to(dtype) does): F16C's vcvtph2ps /
// vcvtps2ph for fp16 (the avx2 / avx512 builds), 16-bit shifts for bf16
// (any build), the scalar bit-exact routines of torch's c10 (fp16_ieee_*)
// for fp16 in the baseline (SSE2) build.
struct f16 { uint16_t bits; };
struct bf16 { uint16_t bits; };
template <class S> struct AccOf { typedef S type; };  // A for X = S
template <> struct AccOf<f16> { typedef float type; };
template <> struct AccOf<bf16> { typedef float type; };
template <class S> using Acc = typename AccOf<S>::type;
template <class S> struct HalfOnly;  // defined for the 16-bit types only (SFINAE below)
template <> struct HalfOnly<f16> { typedef Vec<float> vec; };
template <> struct HalfOnly<bf16> { typedef Vec<float> vec; };
template <class A, class B> struct Same { static constexpr bool value = false; };
template <class A> struct Same<A, A> { static constexpr bool value = true; };

typedef uint16_t H16 __attribute__((vector_size(kVecBytes / 2)));  // L 16-bit lanes
typedef uint16_t H16U __attribute__((vector_size(kVecBytes / 2), aligned(2)));
typedef uint32_t U32 __attribute__((vector_size(kVecBytes)));

inline float f32_from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

inline float to_acc(float x) { return x; }
inline double to_acc(double x) { return x; }
inline float to_acc(bf16 x) { return f32_from_bits(static_cast<uint32_t>(x.bits) << 16); }
inline float to_acc(f16 x) {
#ifdef __F16C__
  return _cvtsh_ss(x.bits);
#else  // c10::detail::fp16_ieee_to_fp32_value
  const uint32_t w = static_cast<uint32_t>(x.bits) << 16, sign = w & 0x80000000u, two_w = w + w;
  const float normalized = f32_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float denormalized = f32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  return f32_from_bits(sign | (two_w < (1u << 27) ? f32_bits(denormalized) : f32_bits(normalized)));
#endif
}
template <class S> inline S from_acc(Acc<S> x) { return x; }
template <> inline bf16 from_acc<bf16>(float x) {  // c10::BFloat16's round_to_nearest_even
  if (x != x) return bf16{0x7FC0};
  const uint32_t u = f32_bits(x);
  return bf16{static_cast<uint16_t>((u + ((u >> 16) & 1) + 0x7FFFu) >> 16)};
}
template <> inline f16 from_acc<f16>(float x) {
#ifdef __F16C__
  return f16{static_cast<uint16_t>(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT))};
#else  // c10::detail::fp16_ieee_from_fp32_value
  float base = (std::fabs(x) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = f32_bits(x), shl1_w = w + w, sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = f32_from_bits((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = f32_bits(base);
  const uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
  return f16{static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign))};
#endif
}
// Element conversion S -> W (the identity when they are the same type).
template <class W, class S> inline W cvt(S x) {
  if constexpr (Same<W, S>::value) return x;
  else return from_acc<W>(to_acc(x));
}

// L 16-bit lanes <-> one Vec<float>.
template <class S> inline Vec<float> widen(H16 h);
template <class S> inline H16 narrow(Vec<float> v);
template <> inline Vec<float> widen<bf16>(H16 h) {
#if defined(__AVX2__) && BILSTM_VEC_BYTES == 32
  // (__builtin_convertvector made 5 instructions of this: 2 x 128-bit vpmovzxwd + a shift +
  // an insert, which made the bf16 B=1 step 0.63x of fp32's; this is vpmovzxwd ymm + vpslld.)
  return reinterpret_cast<Vec<float>>(_mm256_slli_epi32(_mm256_cvtepu16_epi32(reinterpret_cast<__m128i>(h)), 16));
#elif defined(__AVX512F__) && BILSTM_VEC_BYTES == 64
  return reinterpret_cast<Vec<float>>(_mm512_slli_epi32(_mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(h)), 16));
#else
  return reinterpret_cast<Vec<float>>(__builtin_convertvector(h, U32) << 16);
#endif
}
template <> inline H16 narrow<bf16>(Vec<float> v) {
  const U32 u = reinterpret_cast<U32>(v);
  U32 r = (u + ((u >> 16) & 1u) + 0x7FFFu) >> 16;
  r = v != v ? U32{} + 0x7FC0u : r;  // NaN -> the canonical quiet NaN, as c10
  return __builtin_convertvector(r, H16);
}
template <> inline Vec<float> widen<f16>(H16 h) {
#if defined(__F16C__) && BILSTM_VEC_BYTES == 32
  return reinterpret_cast<Vec<float>>(_mm256_cvtph_ps(reinterpret_cast<__m128i>(h)));
#elif defined(__AVX512F__) && BILSTM_VEC_BYTES == 64
  return reinterpret_cast<Vec<float>>(_mm512_cvtph_ps(reinterpret_cast<__m256i>(h)));
#else
  Vec<float> v;
  for (int l = 0; l < lanes<float>(); ++l) v[l] = to_acc(f16{h[l]});
  return v;
#endif
}
template <> inline H16 narrow<f16>(Vec<float> v) {
#if defined(__F16C__) && BILSTM_VEC_BYTES == 32
  return reinterpret_cast<H16>(_mm256_cvtps_ph(reinterpret_cast<__m256>(v), _MM_FROUND_TO_NEAREST_INT));
#elif defined(__AVX512F__) && BILSTM_VEC_BYTES == 64
  return reinterpret_cast<H16>(_mm512_cvtps_ph(reinterpret_cast<__m512>(v), _MM_FROUND_TO_NEAREST_INT));
#else
  H16 h;
  for (int l = 0; l < lanes<float>(); ++l) h[l] = from_acc<f16>(v[l]).bits;
  return h;
#endif
}
// loadu / load_n / storeu / store_n for X = f16, bf16 (the float forms above
// are the same calls on float pointers).
template <class S> inline typename HalfOnly<S>::vec loadu(const S* p) {
  return widen<S>(*reinterpret_cast<const H16U*>(p));
}
template <class S> inline typename HalfOnly<S>::vec load_n(const S* p, int n) {
  if (n == lanes<float>()) return loadu(p);
  H16 h = {};
  std::memcpy(&h, p, 2 * static_cast<size_t>(n));
  return widen<S>(h);
}
template <class S> inline void storeu(S* p, typename HalfOnly<S>::vec v) {
  *reinterpret_cast<H16U*>(p) = narrow<S>(v);
}
template <class S> inline void store_n(S* p, typename HalfOnly<S>::vec v, int n) {
  if (n == lanes<float>()) return storeu(p, v);
  const H16 h = narrow<S>(v);
  std::memcpy(p, &h, 2 * static_cast<size_t>(n));
}
// The two weight vectors (columns 0..L-1, L..2L-1) of one row of a packed
// panel (64-byte aligned). fp16: two vcvtph2ps. bf16 panel rows are stored
// interleaved, [c0, cL, c1, cL+1, ...] (col_pos): one load, then a
// shift and a mask -- 2 vector ALU ops per row instead of 2 vpmovzxwd + 2
// shifts, which made the B=1 step ALU-bound (1.14x of fp32's speed, 1.45x
// for fp16; one thread, CPU time, T64 H256).
template <class T> inline void load_w2(const T* p, Vec<T>& w0, Vec<T>& w1) {
  w0 = load_a(p);
  w1 = load_a(p + lanes<T>());
}
inline void load_w2(const f16* p, Vec<float>& w0, Vec<float>& w1) {
  w0 = widen<f16>(*reinterpret_cast<const H16*>(p));
  w1 = widen<f16>(*reinterpret_cast<const H16*>(p + lanes<float>()));
}
inline void load_w2(const bf16* p, Vec<float>& w0, Vec<float>& w1) {
  const U32 x = *reinterpret_cast<const U32*>(p);
  w0 = reinterpret_cast<Vec<float>>(x << 16);
  w1 = reinterpret_cast<Vec<float>>(x & 0xFFFF0000u);
}
// Where column c (< NR) of a panel row is stored, and a whole row from its two vectors.
template <class W> constexpr int col_pos(int c) { return c; }
template <> constexpr int col_pos<bf16>(int c) { return 2 * (c % lanes<float>()) + c / lanes<float>(); }
template <class W, class V> inline void store_row(W* d, V a, V b) {
  storeu(d, a);
  storeu(d + lanes<Acc<W>>(), b);
}
// bf16: the values came from bf16 (the panel's source is X), so truncation is exact.
inline void store_row(bf16* d, Vec<float> a, Vec<float> b) {
  typedef uint32_t U32U __attribute__((vector_size(kVecBytes), aligned(2)));
  *reinterpret_cast<U32U*>(d) = (reinterpret_cast<U32>(a) >> 16) | (reinterpret_cast<U32>(b) & 0xFFFF0000u);
}
// The panel element type for X = S: float / double as A; for fp16 / bf16
// BILSTM_HALF_PANELS=1 keeps W_hh in X in the panels (half the bytes
// streamed per step, widened in the micro-kernel), 0 packs it as float.
#ifndef BILSTM_HALF_PANELS
#define BILSTM_HALF_PANELS 1
#endif
template <class S> struct PanelOf { typedef S type; };
#if !BILSTM_HALF_PANELS
template <> struct PanelOf<f16> { typedef float type; };
template <> struct PanelOf<bf16> { typedef float type; };
#endif
template <class S> using Panel = typename PanelOf<S>::type;

#if defined(__AVX2__)
// 8 floats (256 bits) and 8 of an X = S row widened to them, unaligned: the
// 8 x 8 blocks pack_nt transposes in the AVX2 and AVX-512 builds alike.
typedef float F8 __attribute__((vector_size(32)));
typedef float F8U __attribute__((vector_size(32), aligned(4)));
inline F8 load8(const float* p) { return *reinterpret_cast<const F8U*>(p); }
inline F8 load8(const f16* p) {
  return reinterpret_cast<F8>(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline F8 load8(const bf16* p) {
  return reinterpret_cast<F8>(
      _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
// r[0..7] = the rows of an 8 x 8 float block -> its columns: in-lane
// interleaves of row pairs, then of pairs of pairs, then the 128-bit halves
// (what vunpck*ps / vshufps / vperm2f128 do; GCC picks the instructions).
inline void transpose8(F8* r) {
  typedef int I __attribute__((vector_size(32)));
  const I lo1 = {0, 8, 1, 9, 4, 12, 5, 13}, hi1 = {2, 10, 3, 11, 6, 14, 7, 15};
  const I lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
  const I lo4 = {0, 1, 2, 3, 8, 9, 10, 11}, hi4 = {4, 5, 6, 7, 12, 13, 14, 15};
  F8 t[8], s[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], lo1);
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], hi1);
  }
  for (int h = 0; h < 2; ++h) {  // s[q + 4h]: column q of rows 4h..4h+3, lanes {q, q + 4}
    s[4 * h] = __builtin_shuffle(t[4 * h], t[4 * h + 2], lo2);
    s[4 * h + 1] = __builtin_shuffle(t[4 * h], t[4 * h + 2], hi2);
    s[4 * h + 2] = __builtin_shuffle(t[4 * h + 1], t[4 * h + 3], lo2);
    s[4 * h + 3] = __builtin_shuffle(t[4 * h + 1], t[4 * h + 3], hi2);
  }
  for (int q = 0; q < 4; ++q) {
    r[q] = __builtin_shuffle(s[q], s[q + 4], lo4);
    r[q + 4] = __builtin_shuffle(s[q], s[q + 4], hi4);
  }
}
// One L-lane vector from L/8 consecutive 8-lane pieces.
inline Vec<float> join8(const F8* q) {
#if BILSTM_VEC_BYTES == 64
  return __builtin_shufflevector(q[0], q[1], 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  return q[0];
#endif
}
#endif

// ---------------------------------------------------------------- activations
// float: vectorized rational tanh (below); double: libm, element by element
// (float64 is the exact path, not the fast one). Scalar libm calls for float
// would cost more than the GEMM of a B=1 step.
// tanh as a rational function (the [13/6] minimax fit Eigen uses for float,
// max error a few ulp on [-7.99, 7.99], +-1 to float precision beyond, NaN
// kept): one division and 11 FMAs, no exp. sigmoid(x) = 0.5 + 0.5 tanh(x/2).
// Measured against a Cephes-style vector exp with 1 / (1 + exp(-x)): equal
// or ~2% faster at B=128, H=512, with one polynomial for both activations.
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
// Every product here -- the input projection, the forward step's h W_hh^T,
// the backward step's dG W_hh and the weight gradients -- is C = A Wp over
// a packed weight panel:
//   A   [M][K], A[m][k] at A + m*lda + k*ldk (x, h_{t-1}, dG_t; dG^T for the
//       weight gradients: ldk = the row stride, lda = 1), read in place
//   Wp  one panel [K][NR]: NR consecutive output columns, 64-byte aligned
//   C   [M][NR] rows with stride ldc; the first nc <= NR columns are stored
// Register tile: MR = 6 rows x 2 vectors = 12 accumulators + 2 weight
// vectors + 1 broadcast = 15 of AVX2's 16 registers; per k 2 weight loads and
// 6 broadcasts feed 12 FMAs. (The 3 rows x 4 vectors tile of the first
// version needs 4 weight vectors + 12 accumulators + a broadcast = 17
// registers, so GCC re-read one weight vector from memory per row.)
// With fewer rows the FMA chains get too few to hide the FMA latency
// (4 cycles, 2 pipes: 8 chains needed), so M <= 3 also splits k over KU
// accumulator sets (M=1: 4 sets = 8 chains; the B=1 case).
// AVX-512 has 32 vector registers: MR = 12 rows x 2 vectors = 24
// accumulators + 2 weight vectors + 1 broadcast = 27, so a B=8 step is one
// 8-row tile (16 FMA chains, 10 loads per 16 FMAs) instead of two 4-row
// tiles (8 chains, 6 loads per 8 FMAs). Measured on a Zen 5 (AVX-512), one
// thread, T64 H256 fp32 forward recurrence, min of 60 calls, 2 runs, 2 Dec
// 2026: B=8 143-152 -> 161-167 GFLOP/s; B=32 unchanged (173 vs 173-190).
constexpr int MR = kVecBytes == 64 ? 12 : 6;

enum class Init { zero, bias, accumulate };  // C = A Wp | C = bias + A Wp | C += A Wp

// Not inlined: inlined into gemm() GCC kept the accumulators of the 5-row
// tile on the stack (a vfmadd with a memory accumulator per FMA: perf on a
// T=64 B=1 call, where the projection runs 5- and 6-row tiles).
template <class T, int M, int KU, class W = T>  // W: the panel's element type (T, or X = fp16/bf16)
__attribute__((noinline)) void micro_gemm(const T* A, int64_t lda, int64_t ldk, const W* Wp, int64_t K, T* C, int64_t ldc,
                       int nc, Init init, const T* bias) {
  constexpr int L = lanes<T>(), NR = panel_cols<T>();
  using V = Vec<T>;
  V acc[KU][M][2];
  for (int u = 0; u < KU; ++u)
    for (int m = 0; m < M; ++m) acc[u][m][0] = acc[u][m][1] = V{};
  int64_t k = 0;
  for (; k + KU <= K; k += KU) {
#ifdef BILSTM_PF_BYTES  // software prefetch along the panel: off, chosen by sweep (fwd T32 B8 H256,
    // kernel_ab.sh, 2 runs: 1, 4 and 16 KB ahead within +-3% of none; the
    // hardware prefetcher already streams the panels)
    __builtin_prefetch(reinterpret_cast<const char*>(Wp + k * NR) + BILSTM_PF_BYTES, 0, 3);
#endif
    for (int u = 0; u < KU; ++u) {
      V w0, w1;
      load_w2(Wp + (k + u) * NR, w0, w1);
      for (int m = 0; m < M; ++m) {
        const T a = A[m * lda + (k + u) * ldk];
        acc[u][m][0] += a * w0;
        acc[u][m][1] += a * w1;
      }
    }
  }
  for (; k < K; ++k) {
    V w0, w1;
    load_w2(Wp + k * NR, w0, w1);
    for (int m = 0; m < M; ++m) {
      const T a = A[m * lda + k * ldk];
      acc[0][m][0] += a * w0;
      acc[0][m][1] += a * w1;
    }
  }
  for (int u = 1; u < KU; ++u)
    for (int m = 0; m < M; ++m) {
      acc[0][m][0] += acc[u][m][0];
      acc[0][m][1] += acc[u][m][1];
    }
  if (nc == NR && init == Init::zero) {  // every recurrence step: straight from the registers
    for (int m = 0; m < M; ++m) {
      storeu(C + m * ldc, acc[0][m][0]);
      storeu(C + m * ldc + L, acc[0][m][1]);
    }
    return;
  }
  const int n0 = nc < L ? nc : L, n1 = nc - n0;
  V b0 = {}, b1 = {};
  if (init == Init::bias) {
    b0 = load_n(bias, n0);
    if (n1 > 0) b1 = load_n(bias + L, n1);
  }
  for (int m = 0; m < M; ++m) {
    T* c = C + m * ldc;
    V c0 = acc[0][m][0] + b0, c1 = acc[0][m][1] + b1;
    if (init == Init::accumulate) {
      c0 += load_n(c, n0);
      if (n1 > 0) c1 += load_n(c + L, n1);
    }
    if (nc == NR) {
      storeu(c, c0);
      storeu(c + L, c1);
    } else {
      store_n(c, c0, n0);
      if (n1 > 0) store_n(c + L, c1, n1);
    }
  }
}

// f(Rows<M>{}) for a tile of m = M rows, 1 <= m <= MR: the one dispatch from a
// run-time height to the compile-time micro-kernels (a switch: a jump
// table; a compile-time chain of `if (m == M)` over the heights measured
// ~8% slower on the B8 recurrence, Zen 5, 2 runs).
template <int M> struct Rows { static constexpr int value = M; };
template <class F> inline void by_height(int m, F&& f) {
  switch (m) {
    case 1: f(Rows<1>{}); break;
    case 2: f(Rows<2>{}); break;
    case 3: f(Rows<3>{}); break;
    case 4: f(Rows<4>{}); break;
    case 5: f(Rows<5>{}); break;
    case 6: f(Rows<6>{}); break;
    default:
      if constexpr (MR >= 12) switch (m) {
          case 7: f(Rows<7>{}); break;
          case 8: f(Rows<8>{}); break;
          case 9: f(Rows<9>{}); break;
          case 10: f(Rows<10>{}); break;
          case 11: f(Rows<11>{}); break;
          case 12: f(Rows<12>{}); break;
          default: break;
        }
      break;
  }
}
// k-split accumulator sets of an M-row tile: >= 8 FMA chains (see above).
constexpr int k_sets(int M) { return M == 1 ? 4 : M <= 3 ? 2 : 1; }

template <class T, class W>
inline void micro_gemm_rows(int m, const T* A, int64_t lda, int64_t ldk, const W* Wp, int64_t K, T* C,
                            int64_t ldc, int nc, Init init, const T* bias) {
  by_height(m, [&](auto rows) {
    constexpr int M = decltype(rows)::value;
    micro_gemm<T, M, k_sets(M), W>(A, lda, ldk, Wp, K, C, ldc, nc, init, bias);
  });
}

// Tuning knobs: rows of A per block (MC) and the K chunk (KC; K up to
// KC_MAX is one chunk). The block's A chunk ([MC][KC]) stays in L2 while
// every weight panel's chunk ([KC][NR], L1-resident) passes over it, reused
// by all of the block's row tiles; partial sums go through C between chunks.
#ifndef BILSTM_MC_ROWS
#define BILSTM_MC_ROWS 192
#endif
// The AVX-512 build takes twice the chunk: every AVX-512 CPU has >= 1 MB of
// L2 per core (the A chunk [192][512] floats is 384 KB), and K = 4H = 1024
// (the backward step's dh GEMM at H = 256) is then one chunk. Measured on a
// Zen 5, T64 B32 D300 H256 training GEMMs, 2 threads, min of 20, 2 runs:
// backward recurrence 6.16-6.22 -> 5.67-5.69 ms, dx 7.16-7.31 -> 6.92-6.99
// ms, the projection 5.51-5.53 -> 5.34 ms (2 Dec 2026). The AVX2 values were
// chosen on a Zen 3 (512 KB L2).
#if BILSTM_VEC_BYTES == 64
#define BILSTM_KC_DEFAULT 512
#define BILSTM_KC_MAX_DEFAULT 1024
#else
#define BILSTM_KC_DEFAULT 256
#define BILSTM_KC_MAX_DEFAULT 640
#endif
#ifndef BILSTM_KC
#define BILSTM_KC BILSTM_KC_DEFAULT
#endif
#ifndef BILSTM_KC_MAX
#define BILSTM_KC_MAX BILSTM_KC_MAX_DEFAULT
#endif

// C[0:M][0:ncols] (init) A[0:M][0:K] x Wp, Wp = ceil(ncols/NR) panels
// [K][NR] one after the other. Rows are cut into balanced tiles of <= MR
// (8 rows: 4 + 4, not 6 + 2).
template <class T, class W = T>
void gemm(int64_t M, int64_t K, const T* A, int64_t lda, int64_t ldk, const W* Wp, int64_t ncols, T* C,
          int64_t ldc, Init init, const T* bias) {
  constexpr int NR = panel_cols<T>();
  const int64_t npanels = (ncols + NR - 1) / NR;
  const int64_t KC = K <= BILSTM_KC_MAX ? K : BILSTM_KC;
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int64_t kc = imin(KC, K - k0);
    const Init in = k0 == 0 ? init : Init::accumulate;
    for (int64_t m0 = 0; m0 < M; m0 += BILSTM_MC_ROWS) {
      const int64_t mb = imin(BILSTM_MC_ROWS, M - m0);
      const int64_t tiles = (mb + MR - 1) / MR;
      for (int64_t p = 0; p < npanels; ++p) {
        const int nc = static_cast<int>(imin(NR, ncols - p * NR));
        const W* wp = Wp + (p * K + k0) * NR;
        for (int64_t i = 0; i < tiles; ++i) {
          const int64_t r0 = m0 + mb * i / tiles, r1 = m0 + mb * (i + 1) / tiles;
          micro_gemm_rows<T, W>(static_cast<int>(r1 - r0), A + r0 * lda + k0 * ldk, lda, ldk, wp, kc,
                             C + r0 * ldc + p * NR, ldc, nc, in, in == Init::bias ? bias + p * NR : nullptr);
        }
      }
    }
  }
}

// ------------------------------------------------------------------ packing
// Panels of NR output columns, [K][NR] each, zero past the last column.
// "nt": column c < nvalid of the product is row c of a row-major matrix
// (rows `ld` apart: W_ih, and for the forward step one gate's block of
// W_hh), columns nvalid..ncols-1 are zero (padding). A transpose: in the
// AVX2 and AVX-512 builds each 8 x 8 block goes through 256-bit registers (3
// rounds of shuffles; AVX-512 joins two blocks per 16-lane row); otherwise
// (baseline, fp64, a partial panel) element by element, k outer. The
// AVX-512 build had only the element loop until 2 Dec 2026: on a Zen 5 it
// was ~17% of a T64 B8 H256 recurrence call (perf samples); with the
// blocks, one thread, min of 40 calls, 2 runs: the T64 B1 D300 projection
// 0.50 -> 0.39 ms, the B8 recurrence 3.37-3.47 -> 2.73-3.05 ms. Measured on [2048, 300]
// fp32, one thread, best of 20, on a loaded machine: 0.137 ms register
// transpose vs 0.262 ms element by element with run-time strides (GCC
// vectorized the element loop only when K was a compile-time constant); the
// element loop with a pointer per row was ~9% of a T=64 B=1 inference call
// (perf), more than the projection GEMM it fed.
// S: the source's element type, W: the panel's (converted on the way).
template <class S, class W = S>
void pack_nt(int64_t ncols, int64_t nvalid, int64_t K, const S* base, int64_t ld, W* dst) {
  using T = Acc<S>;
  constexpr int NR = panel_cols<T>(), L = lanes<T>();
  for (int64_t p = 0; p * NR < ncols; ++p) {
    const int64_t c0 = p * NR, nv = imin(NR, nvalid - c0);  // valid columns of this panel
    W* d = dst + p * K * NR;
    int64_t k = 0;
#if defined(__AVX2__)
    if constexpr ((L == 8 || L == 16) && sizeof(T) == 4) {
      constexpr int Q = NR / 8;  // 8-column blocks of a panel: 2 (AVX2), 4 (AVX-512)
      if (nv == NR)
        for (; k + 8 <= K; k += 8) {
          F8 r[8][Q];  // r[kk][q]: row k + kk, columns 8q..8q+7 of the panel
          for (int q = 0; q < Q; ++q) {
            F8 b[8];
            for (int c = 0; c < 8; ++c) b[c] = load8(base + (c0 + 8 * q + c) * ld + k);
            transpose8(b);
            for (int kk = 0; kk < 8; ++kk) r[kk][q] = b[kk];
          }
          for (int kk = 0; kk < 8; ++kk) store_row(d + (k + kk) * NR, join8(r[kk]), join8(r[kk] + Q / 2));
        }
    }
#endif
    for (; k < K; ++k)
      for (int c = 0; c < NR; ++c) d[k * NR + col_pos<W>(c)] = c < nv ? cvt<W>(base[(c0 + c) * ld + k]) : W{};
  }
}

// "nn": column c of the product is column c0 + c of a row-major [K][ld]
// matrix (W_hh read as [4H][H] for the backward step): each panel row is a
// contiguous copy of NR elements, zero past `ncols` valid columns. T: the
// accumulation type (NR), W: the panel's, krow(k): the source row (converted).
template <class T, class RowFn, class W>
void pack_nn(int64_t ncols, int64_t K, RowFn krow, int64_t c0, W* dst) {
  constexpr int NR = panel_cols<T>();
  for (int64_t p = 0; p * NR < ncols; ++p) {
    const int64_t nc = imin(NR, ncols - p * NR);
    W* d = dst + p * K * NR;
    for (int64_t k = 0; k < K; ++k) {
      const auto* s = krow(k) + c0 + p * NR;
      for (int c = 0; c < nc; ++c) d[k * NR + col_pos<W>(c)] = cvt<W>(s[c]);
      for (int c = static_cast<int>(nc); c < NR; ++c) d[k * NR + col_pos<W>(c)] = W{};
    }
  }
}

template <class T> inline T* at(const View& v, int64_t i0, int64_t i1, int64_t i2) {
  return static_cast<T*>(v.ptr) + i0 * v.stride[0] + i1 * v.stride[1] + i2 * v.stride[2];
}
template <class T> inline T* at2(const View& v, int64_t i0, int64_t i1) {
  return static_cast<T*>(v.ptr) + i0 * v.stride[0] + i1 * v.stride[1];
}

// ------------------------------------------- bf16 dot products (AVX512-BF16)
// For X = bf16 on a CPU with AVX512-BF16, the forward step's GEMM runs on
// vdpbf16ps: each instruction multiplies 16 pairs of bf16 and adds both
// products to 16 fp32 accumulators (twice the FMAs of vfmadd231ps). Its
// operands are bf16 pairs along k: W_hh packed as [panel][k/2][NR] 32-bit
// pairs (pack_nt over the rows read as 32-bit words: a pair of adjacent k is
// one word) and h_{t-1} kept in bf16 too, rounded to nearest even as
// nn.LSTM's bf16 h is. Accumulation and the cell state stay fp32. The input
// projection (x and W_ih both bf16, D even) too, through gemm_job. Measured
// on a Zen 5, T64 D300 H256, 2 threads, min of 60: the bf16 recurrence B1
// 0.32 -> 0.23 ms, B8 1.37-1.43 -> 0.78-0.82, B32 5.7-5.9 -> 3.5; the
// module (bilstm-bench, same run) B1 0.52 ms / B8 2.27 ms against the fp32
// model's 1.07 / 4.20 and nn.LSTM bf16's 1.05 / 3.51 (2 Dec 2026). The
// backward and fp16 (no AVX512-FP16 on AMD) compute in fp32 as before.
//
// Not on every AVX512-BF16 core: on an Intel Xeon (family 6 model 207, KVM,
// 2 Dec 2026) vdpbf16ps delivered half the multiply-adds per second of
// vfmadd231ps (42 vs 86 GMAC/s, 16 independent chains, one thread), and the
// bf16 module ran slower than fp32 (T64 B8 D300 H256, 2 threads: bf16 8.61
// ms, fp16 on the float FMAs 5.50 ms, same run). So "auto" (cpu_kernels.h:
// bf16_dot_mode) measures both instructions once per process (dot_pays,
// ~1.5 ms) and takes the dot products only where they deliver >= 1.25x the
// FMA's multiply-adds; the dot path's extra work per step (h rounded to a
// bf16 copy) is small next to a 2x rate (Zen 5: 1.75x on the recurrence).
#if BILSTM_VEC_BYTES == 64
// Thread CPU time, seconds (a preempted loop is not charged for the wait).
double thread_seconds() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// n rounds of 16 independent accumulator chains (as many as an 8-row tile
// keeps); the sum keeps the loop alive.
__attribute__((noinline)) float fma_chains(int64_t n, float seed) {
  __m512 acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_set1_ps(seed + 1e-3f * j);
  const __m512 a = _mm512_set1_ps(0.9999f), b = _mm512_set1_ps(1e-5f);
  for (int64_t i = 0; i < n; ++i)
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_fmadd_ps(acc[j], a, b);
  float s = 0.f;
  for (int j = 0; j < 16; ++j) s += _mm512_reduce_add_ps(acc[j]);
  return s;
}
__attribute__((noinline, target("avx512bf16"))) float dot_chains(int64_t n, float seed) {
  __m512 acc[16];
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_set1_ps(seed + 1e-3f * j);
  const __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3c00);
  for (int64_t i = 0; i < n; ++i)
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_dpbf16_ps(acc[j], a, b);
  float s = 0.f;
  for (int j = 0; j < 16; ++j) s += _mm512_reduce_add_ps(acc[j]);
  return s;
}

// Multiply-adds per second of vdpbf16ps (32 per instruction) over
// vfmadd231ps (16), the best of 5 alternating timings of each: ~0.1 ms a
// timing, so a preemption spoils one sample, not the minimum.
bool dot_pays() {
  constexpr int64_t kRounds = 20000;
  double fma = 1e30, dot = 1e30;
  volatile float sink = 0.f;
  for (int r = 0; r < 5; ++r) {
    double t0 = thread_seconds();
    sink = sink + fma_chains(kRounds, static_cast<float>(r));
    fma = std::fmin(fma, thread_seconds() - t0);
    t0 = thread_seconds();
    sink = sink + dot_chains(kRounds, static_cast<float>(r));
    dot = std::fmin(dot, thread_seconds() - t0);
  }
  return 32.0 / dot >= 1.25 * 16.0 / fma;
}

bool bf16_dot_supported() {
  static const bool cpu = cpu_has_bf16_dot();
  if (!cpu) return false;
  const int mode = bf16_dot_mode();
  if (mode != kBf16DotAuto) return mode == kBf16DotOn;
  static const bool pays = dot_pays();
  return pays;
}

template <int M, int KU>
__attribute__((noinline, target("avx512bf16"))) void micro_gemm_bf16(const uint32_t* A, int64_t lda,
                                                                     const uint32_t* Wp, int64_t K2, float* C,
                                                                     int64_t ldc, int nc, const float* bias) {
  __m512 acc[KU][M][2];
  for (int u = 0; u < KU; ++u)
    for (int m = 0; m < M; ++m) acc[u][m][0] = acc[u][m][1] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + KU <= K2; k += KU)
    for (int u = 0; u < KU; ++u) {
      const __m512bh w0 = (__m512bh)_mm512_load_si512(Wp + (k + u) * 32);
      const __m512bh w1 = (__m512bh)_mm512_load_si512(Wp + (k + u) * 32 + 16);
      for (int m = 0; m < M; ++m) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(A[m * lda + k + u]));
        acc[u][m][0] = _mm512_dpbf16_ps(acc[u][m][0], a, w0);
        acc[u][m][1] = _mm512_dpbf16_ps(acc[u][m][1], a, w1);
      }
    }
  for (; k < K2; ++k) {
    const __m512bh w0 = (__m512bh)_mm512_load_si512(Wp + k * 32);
    const __m512bh w1 = (__m512bh)_mm512_load_si512(Wp + k * 32 + 16);
    for (int m = 0; m < M; ++m) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(A[m * lda + k]));
      acc[0][m][0] = _mm512_dpbf16_ps(acc[0][m][0], a, w0);
      acc[0][m][1] = _mm512_dpbf16_ps(acc[0][m][1], a, w1);
    }
  }
  for (int u = 1; u < KU; ++u)
    for (int m = 0; m < M; ++m) {
      acc[0][m][0] = _mm512_add_ps(acc[0][m][0], acc[u][m][0]);
      acc[0][m][1] = _mm512_add_ps(acc[0][m][1], acc[u][m][1]);
    }
  // The first nc <= 32 columns (+ bias[0:nc]).
  const __mmask16 k0 = static_cast<__mmask16>(nc >= 16 ? 0xFFFFu : (1u << nc) - 1);
  const __mmask16 k1 = static_cast<__mmask16>(nc >= 32 ? 0xFFFFu : nc > 16 ? (1u << (nc - 16)) - 1 : 0u);
  const __m512 b0 = bias ? _mm512_maskz_loadu_ps(k0, bias) : _mm512_setzero_ps();
  const __m512 b1 = bias ? _mm512_maskz_loadu_ps(k1, bias + 16) : _mm512_setzero_ps();
  for (int m = 0; m < M; ++m) {
    _mm512_mask_storeu_ps(C + m * ldc, k0, _mm512_add_ps(acc[0][m][0], b0));
    _mm512_mask_storeu_ps(C + m * ldc + 16, k1, _mm512_add_ps(acc[0][m][1], b1));
  }
}

// C[0:M][0:ncols] = A W (+ bias[0:ncols]) for A [M][K2] bf16 pairs (row
// stride lda words) and W ceil(ncols/32) pair panels [K2][32] one after the
// other; rows in blocks of MC (A's block stays in L2 while the panels pass)
// and balanced tiles of <= MR = 12 (as gemm()).
inline void gemm_bf16(int64_t M, int64_t K2, const uint32_t* A, int64_t lda, const uint32_t* Wp,
                      int64_t ncols, float* C, int64_t ldc, const float* bias) {
  for (int64_t m0 = 0; m0 < M; m0 += BILSTM_MC_ROWS) {
    const int64_t mb = imin(BILSTM_MC_ROWS, M - m0), tiles = (mb + MR - 1) / MR;
    for (int64_t p = 0; p * 32 < ncols; ++p)
      for (int64_t i = 0; i < tiles; ++i) {
        const int64_t r0 = m0 + mb * i / tiles, r1 = m0 + mb * (i + 1) / tiles;
        const uint32_t* a = A + r0 * lda;
        const uint32_t* w = Wp + p * K2 * 32;
        float* c = C + r0 * ldc + p * 32;
        const int nc = static_cast<int>(imin(32, ncols - p * 32));
        const float* b = bias ? bias + p * 32 : nullptr;
        by_height(static_cast<int>(r1 - r0), [&](auto rows) {
          constexpr int Mt = decltype(rows)::value;
          micro_gemm_bf16<Mt, k_sets(Mt)>(a, lda, w, K2, c, ldc, nc, b);
        });
      }
  }
}
#else
inline bool bf16_dot_supported() { return false; }
inline void gemm_bf16(int64_t, int64_t, const uint32_t*, int64_t, const uint32_t*, int64_t, float*, int64_t,
                      const float*) {}
#endif

// Rows 0..na-1 of a group are the ones with length > t (rows are sorted by
// decreasing length); na only moves one way in a call, so this is O(1)
// amortized per step.
inline int64_t active_rows(const int64_t* lengths, const RowGroup& g, int64_t t, int64_t na) {
  if (!lengths) return g.nrows;
  while (na > 0 && lengths[g.rows[na - 1]] <= t) --na;
  while (na < g.nrows && lengths[g.rows[na]] > t) ++na;
  return na;
}

// ------------------------------------------------ GEMMs outside the recurrence
// C[:, n0:n1] = A B[:, n0:n1] (+ bias[n0:n1]): packs the job's columns of B
// once (first touch by the thread that uses them), then one GEMM over all M
// rows. SB: B's element type (T, or X = fp16/bf16 with T = float: B is
// converted while packed; A, bias and C are T).
template <class T, class SB = T>
void gemm_job(const GemmJob& job) {
  const GemmParams& p = *job.p;
  if constexpr (Same<SB, bf16>::value)
    if (p.a_bf16) {  // x and W_ih both bf16: the dot products (above); K, lda, ldb even (binding.cpp)
      const int64_t ncols = job.n1 - job.n0, K2 = p.K / 2;
      float* bp = static_cast<float*>(job.bpack);
      pack_nt<float>(ncols, ncols, K2, reinterpret_cast<const float*>(static_cast<const SB*>(p.b) + job.n0 * p.ldb),
                     p.ldb / 2, bp);
      const float* bias = static_cast<const float*>(p.bias);
      gemm_bf16(p.M, K2, static_cast<const uint32_t*>(p.a), p.lda / 2, reinterpret_cast<const uint32_t*>(bp), ncols,
                static_cast<float*>(p.c) + job.n0, p.ldc, bias ? bias + job.n0 : nullptr);
      return;
    }
  T* bp = static_cast<T*>(job.bpack);
  const int64_t ncols = job.n1 - job.n0;
  const SB* b = static_cast<const SB*>(p.b);
  switch (p.bkind) {
    case BKind::w_rows:
      pack_nt<SB>(ncols, ncols, p.K, b + job.n0 * p.ldb, p.ldb, bp);
      break;
    case BKind::k_rows:
      pack_nn<T>(ncols, p.K, [&](int64_t k) { return b + k * p.ldb; }, job.n0, bp);
      break;
    case BKind::prev_hidden: {
      const SB* zero = static_cast<const SB*>(job.zero_row);
      pack_nn<T>(ncols, p.K, [&](int64_t k) -> const SB* {
        const int64_t t = k / p.batch, bb = k % p.batch, len = p.lengths ? p.lengths[bb] : p.T;
        if (p.dir == 0) return t == 0 ? at<const SB>(p.h0, 0, bb, 0) : at<const SB>(p.y, t - 1, bb, 0);
        if (t == len - 1) return at<const SB>(p.h0, 1, bb, 0);
        return t + 1 < len ? at<const SB>(p.y, t + 1, bb, 1) : zero;
      }, job.n0, bp);
      break;
    }
  }
  const T* bias = static_cast<const T*>(p.bias);
  gemm<T>(p.M, p.K, static_cast<const T*>(p.a), p.lda, p.ldk, bp, ncols, static_cast<T*>(p.c) + job.n0, p.ldc,
          bias ? Init::bias : Init::zero, bias ? bias + job.n0 : nullptr);
}

// ------------------------------------------------------------------ forward
// Job: direction n, the rows of its group, hidden units [lo, hi). Per step:
//   1. G[i][gate][j] = h_{t-1}[i] W_hh[gate*H + j]^T for the running rows i
//      and the job's units j: one GEMM per gate over the job's panels
//   2. the cell update on G + gx_t, writing h_t into the other half of the
//      double-buffered h, y, and (training) the activated gates and c_t
//   3. the barrier, when several jobs split the group's units
// Rows that are not running (t >= L_b) get y = 0 and keep their state; both
// halves of h start as h0, so a row that starts late (direction 1) reads h0.
// S = X; T = A (gx, cell state, h, the gate buffer, gates / cells); W: the panels.
template <class S>
void forward_job(const FwdParams& p, const RecJob& job, int64_t Hp) {
  using T = Acc<S>;
  using W = Panel<S>;
  constexpr int L = lanes<T>();
  using V = Vec<T>;
  const RowGroup& grp = *job.group;
  const int64_t T_ = p.T, H = p.H, n = job.n, lo = job.lo, hi = job.hi, nr = grp.nrows;
  const int64_t hi_h = imin(hi, H), units = hi - lo;
  T* hbuf = static_cast<T*>(grp.h);    // [2][nr][Hp]
  T* cbuf = static_cast<T*>(grp.c);    // [nr][Hp]
  T* gbuf = static_cast<T*>(grp.g);    // [nr][4][Hp]

  // Gate g's panels of this job's units, packed now: wp + g * gstride,
  // [units/NR][H][NR]. Packed per call, never cached across calls: a cached
  // copy can go stale (a write through .data or .numpy() bumps no version
  // counter), and this packing is ~(hi-lo)*4H element copies against the
  // T*B*(hi-lo)*4H FMAs of the recurrence.
  W* wp = static_cast<W*>(job.wpack);
  const int64_t gstride = units * H;
  // bf16 dot products (above): a job with its group to itself (h is not
  // shared), H even and W_hh's rows 4-byte aligned (k pairs are words).
  bool dot = false;
  if constexpr (Same<S, bf16>::value)
    dot = bf16_dot_supported() && !job.barrier && lo == 0 && hi == Hp && H % 2 == 0 &&
          p.w_hh.stride[1] % 2 == 0 && p.w_hh.stride[0] % 2 == 0 && reinterpret_cast<uintptr_t>(p.w_hh.ptr) % 4 == 0;
  uint16_t* hb = nullptr;  // dot: h in bf16, [2][nr][Hp] like hbuf; zero past H
  if (dot) {
    hb = static_cast<uint16_t*>(grp.h16);
    std::memset(hb, 0, static_cast<size_t>(2 * nr * Hp * 2));
  }
  for (int g = 0; g < 4; ++g) {  // gate g's rows lo.. of W_hh[n], zero past H
    if (dot)  // the rows as H/2 words (k pairs): the same transposes move 32-bit pairs
      pack_nt<float>(units, H, H / 2, reinterpret_cast<const float*>(at<const S>(p.w_hh, n, g * H, 0)),
                     p.w_hh.stride[1] / 2, reinterpret_cast<float*>(wp + g * gstride));
    else
      pack_nt<S>(units, H - lo, H, at<const S>(p.w_hh, n, g * H + imin(lo, H - 1), 0), p.w_hh.stride[1],
                 wp + g * gstride);
  }
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t b = grp.rows[i];
    for (int64_t j = lo; j < hi; ++j) {
      const T h0 = j < H ? to_acc(*at<const S>(p.h0, n, b, j)) : T(0);
      hbuf[i * Hp + j] = hbuf[(nr + i) * Hp + j] = h0;
      cbuf[i * Hp + j] = j < H ? to_acc(*at<const S>(p.c0, n, b, j)) : T(0);
      if (dot && j < H) hb[i * Hp + j] = hb[(nr + i) * Hp + j] = reinterpret_cast<const uint16_t*>(at<const S>(p.h0, n, b, j))[0];
    }
  }
  if (job.barrier) job.barrier->wait();  // every slice of h0 is in place

  const bool keep = p.gates.ptr != nullptr;  // write gates / cells for the backward
  int64_t na = p.lengths ? 0 : nr;
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = n == 0 ? s : T_ - 1 - s;
    na = active_rows(p.lengths, grp, t, na);
    const T* hc = hbuf + (s & 1) * nr * Hp;  // h_{t-1}
    T* hn = hbuf + ((s + 1) & 1) * nr * Hp;  // h_t
    uint16_t* hbn = dot ? hb + ((s + 1) & 1) * nr * Hp : nullptr;
    for (int g = 0; g < 4 && na > 0; ++g) {
      if constexpr (Same<S, bf16>::value)
        if (dot) {
          gemm_bf16(na, H / 2, reinterpret_cast<const uint32_t*>(hb + (s & 1) * nr * Hp), Hp / 2,
                    reinterpret_cast<const uint32_t*>(wp + g * gstride), units, gbuf + g * Hp, 4 * Hp, nullptr);
          continue;
        }
      gemm<T>(na, H, hc, Hp, 1, wp + g * gstride, units, gbuf + g * Hp + lo, 4 * Hp, Init::zero, nullptr);
    }
    for (int64_t i = 0; i < na; ++i) {
      const int64_t b = grp.rows[i];
      const T* gi = gbuf + i * 4 * Hp;
      const T* gxp = at<const T>(p.gx, t, b, n);  // gx in A (binding.cpp)
      S* yp = at<S>(p.y, t, b, n);
      T* ci = cbuf + i * Hp;
      T* hi_ = hn + i * Hp;
      const bool last = n == 0 ? t == (p.lengths ? p.lengths[b] : T_) - 1 : t == 0;
      for (int64_t j = lo; j < hi_h; j += L) {
        const int nl = static_cast<int>(imin(L, H - j));
        const V i_ = vsigmoid(load_a(gi + j) + load_n(gxp + j, nl));
        const V f = vsigmoid(load_a(gi + Hp + j) + load_n(gxp + H + j, nl));
        const V g = vtanh(load_a(gi + 2 * Hp + j) + load_n(gxp + 2 * H + j, nl));
        const V o = vsigmoid(load_a(gi + 3 * Hp + j) + load_n(gxp + 3 * H + j, nl));
        const V c = f * load_a(ci + j) + i_ * g;
        const V h = o * vtanh(c);
        store_a(ci + j, c);
        store_a(hi_ + j, h);
        store_n(yp + j, h, nl);
        if constexpr (Same<S, bf16>::value)
          if (hbn) store_n(reinterpret_cast<bf16*>(hbn + i * Hp + j), h, nl);
        if (keep) {
          T* gp = at<T>(p.gates, t, b, n);
          store_n(gp + j, i_, nl);
          store_n(gp + H + j, f, nl);
          store_n(gp + 2 * H + j, g, nl);
          store_n(gp + 3 * H + j, o, nl);
          store_n(at<T>(p.cells, t, b, n) + j, c, nl);
        }
        if (last) {
          store_n(at<S>(p.h_n, n, b, j), h, nl);
          store_n(at<S>(p.c_n, n, b, j), c, nl);
        }
      }
    }
    for (int64_t i = na; i < nr; ++i) {  // not running at t: y = 0
      S* yp = at<S>(p.y, t, grp.rows[i], n);
      for (int64_t j = lo; j < hi_h; ++j) yp[j] = S{};
    }
    if (job.barrier) job.barrier->wait();
  }
}

// ----------------------------------------------------------------- backward
// dG of one step for units [j, j + nl) of one row (the pointers are at unit
// j), shared by backward_job and backward_proj_job: from the saved gates
// i, f, g, o (activated), tc = tanh(c_t), cp = c_{t-1}, and dho, the gradient
// reaching h_t = o * tanh(c_t) (before a projection: m_t). dc holds dc_t from
// step t+1 and leaves with dc_{t-1} = dc_t * f. dG goes to dgx (dg, X) and to
// the compact row dgi (A) that the dh GEMM reads.
template <class T, class S>
inline void gate_grads(Vec<T> i_, Vec<T> f, Vec<T> g, Vec<T> o, Vec<T> tc, Vec<T> cp, Vec<T> dho, T* dc, S* dg,
                       T* dgi, int64_t H, int nl) {
  using V = Vec<T>;
  const V dct = load_a(dc) + dho * o * (T(1) - tc * tc);
  const V dgi_ = dct * g * i_ * (T(1) - i_), dgf = dct * cp * f * (T(1) - f);
  const V dgg = dct * i_ * (T(1) - g * g), dgo = dho * tc * o * (T(1) - o);
  store_n(dg, dgi_, nl);
  store_n(dg + H, dgf, nl);
  store_n(dg + 2 * H, dgg, nl);
  store_n(dg + 3 * H, dgo, nl);
  store_n(dgi, dgi_, nl);
  store_n(dgi + H, dgf, nl);
  store_n(dgi + 2 * H, dgg, nl);
  store_n(dgi + 3 * H, dgo, nl);
  store_a(dc, dct * f);
}

// Job: direction n, the rows of its group, hidden units [lo, hi). Per step,
// in the reverse of the direction's forward order:
//   1. elementwise, own units j of the running rows: dG_t from dh + dy_t, dc
//      and the saved gates / cell states -> dgx[t] (the op's output) and the
//      group's dG buffer (compact [4H] rows: the next GEMM's A operand)
//   2. barrier (all of dG_t is written), when several jobs split the units
//   3. dh[:, own units] = dG_t W_hh[:, own units]: one GEMM, K = 4H
// Both phases touch only the job's own units of dh/dc; dG is double-buffered
// so the next step's writes never race this step's GEMM reads on another
// thread (a thread writes half s&1 again only after the next barrier, which
// every thread reaches after its GEMM of this step). Rows that are not
// running keep dh/dc (= dh_n/dc_n until they start, dh0/dc0 after they end).
// S = X; T = A (dh, dc, the dG buffer; gates / cells are read in A).
template <class S>
void backward_job(const BwdParams& p, const RecJob& job, int64_t Hp) {
  using T = Acc<S>;
  using W = Panel<S>;
  constexpr int L = lanes<T>();
  using V = Vec<T>;
  const RowGroup& grp = *job.group;
  const int64_t T_ = p.T, H = p.H, n = job.n, lo = job.lo, hi = job.hi, nr = grp.nrows, G = 4 * H;
  const int64_t hi_h = imin(hi, H), units = hi - lo;
  W* wp = static_cast<W*>(job.wpack);  // [units/NR panels][4H][NR]
  T* dh = static_cast<T*>(grp.h);      // [nr][Hp]
  T* dc = static_cast<T*>(grp.c);      // [nr][Hp]
  T* dgb = static_cast<T*>(grp.g);     // [2][nr][4H]

  pack_nn<T>(imin(units, H - lo), G, [&](int64_t k) { return at<const S>(p.w_hh, n, k, 0); }, lo, wp);
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t b = grp.rows[i];
    for (int64_t j = lo; j < hi; ++j) {
      dh[i * Hp + j] = j < H ? to_acc(*at<const S>(p.dh_n, n, b, j)) : T(0);
      dc[i * Hp + j] = j < H ? to_acc(*at<const S>(p.dc_n, n, b, j)) : T(0);
    }
  }

  int64_t na = p.lengths ? 0 : nr;
  for (int64_t s = T_ - 1; s >= 0; --s) {
    const int64_t t = n == 0 ? s : T_ - 1 - s;
    const int64_t tp = n == 0 ? t - 1 : t + 1;  // the step before t in this direction
    na = active_rows(p.lengths, grp, t, na);
    T* dgs = dgb + (s & 1) * nr * G;
    for (int64_t i = 0; i < na; ++i) {
      const int64_t b = grp.rows[i];
      const bool has_prev = s > 0 && (!p.lengths || tp < p.lengths[b]);
      const T* cprev = has_prev ? at<const T>(p.cells, tp, b, n) : nullptr;  // else c0 (X)
      const S* c0p = at<const S>(p.c0, n, b, 0);
      const T* gt = at<const T>(p.gates, t, b, n);
      const T* ct = at<const T>(p.cells, t, b, n);
      const S* dyp = at<const S>(p.dy, t, b, n);
      S* dg = at<S>(p.dgx, t, b, n);
      T* dgi = dgs + i * G;
      for (int64_t j = lo; j < hi_h; j += L) {
        const int nl = static_cast<int>(imin(L, H - j));
        const V i_ = load_n(gt + j, nl), f = load_n(gt + H + j, nl);
        const V g = load_n(gt + 2 * H + j, nl), o = load_n(gt + 3 * H + j, nl);
        const V tc = vtanh(load_n(ct + j, nl));
        const V dho = load_a(dh + i * Hp + j) + load_n(dyp + j, nl);
        const V cp = cprev ? load_n(cprev + j, nl) : load_n(c0p + j, nl);
        gate_grads<T>(i_, f, g, o, tc, cp, dho, dc + i * Hp + j, dg + j, dgi + j, H, nl);
      }
    }
    for (int64_t i = na; i < nr; ++i) {  // not running at t: dG = 0
      S* dg = at<S>(p.dgx, t, grp.rows[i], n);
      for (int g = 0; g < 4; ++g)
        for (int64_t j = lo; j < hi_h; ++j) dg[g * H + j] = S{};
    }
    if (job.barrier) job.barrier->wait();
    if (na > 0 && lo < H) gemm<T>(na, G, dgs, G, 1, wp, hi_h - lo, dh + lo, Hp, Init::zero, nullptr);
  }
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t b = grp.rows[i];
    for (int64_t j = lo; j < hi_h; ++j) {
      *at<S>(p.dh0, n, b, j) = from_acc<S>(dh[i * Hp + j]);
      *at<S>(p.dc0, n, b, j) = from_acc<S>(dc[i * Hp + j]);
    }
  }
}

// ------------------------------------------------ with a projection (proj_size)
// h_t = m_t W_hr^T with m_t = o * tanh(c_t): h, y, h0, h_n have P < H features
// and W_hh is [4H, P]. Two GEMMs per step instead of one. Jobs split the hidden
// units [lo, hi) for the gate GEMM and the cell update, and the columns
// [plo, phi) of h for the projection GEMM (multiples of NR; either may be
// empty). When several jobs share a group (the threads of one direction split
// its units), each GEMM needs all of the previous phase's output, so they meet
// twice per step; the driver makes such groups only under
// BILSTM_CPU_PROJ_SPLIT=units (docs/cpu.md, "Projection", has the figures).
// Pp = P rounded up to NR.
template <class T>
inline int64_t padded(int64_t x) { return (x + panel_cols<T>() - 1) / panel_cols<T>() * panel_cols<T>(); }

// Forward, per step:
//   1. G[i][gate][j] = h_{t-1}[i] W_hh[gate*H + j]^T, K = P, the job's units j
//   2. the cell update of those units -> c_t, m_t (group buffer m), gates/cells
//   3. barrier (all of m_t is written), when several jobs share the group
//   4. h_t[i][p] = m_t[i] W_hr[p]^T, K = H, the job's columns p, into the other
//      half of the double-buffered h; y and h_n from it
//   5. barrier (all of h_t is written)
template <class T>
void forward_proj_job(const FwdParams& p, const RecJob& job, int64_t Hp) {
  constexpr int L = lanes<T>();
  using V = Vec<T>;
  const RowGroup& grp = *job.group;
  const int64_t T_ = p.T, H = p.H, P = p.P, Pp = padded<T>(P), n = job.n, lo = job.lo, hi = job.hi;
  const int64_t nr = grp.nrows, hi_h = imin(hi, H), units = hi - lo;
  const int64_t plo = job.plo, phi = job.phi, phi_p = imin(phi, P), pcols = phi - plo;
  T* hbuf = static_cast<T*>(grp.h);    // [2][nr][Pp]
  T* cbuf = static_cast<T*>(grp.c);    // [nr][Hp]
  T* gbuf = static_cast<T*>(grp.g);    // [nr][4][Hp]
  T* mbuf = static_cast<T*>(grp.m);    // [nr][Hp]

  // Gate g's panels: wp + g * gstride, [units/NR][P][NR]; then the projection's
  // panels wr, [pcols/NR][H][NR] (column p = row plo + p of W_hr). Packed per
  // call, as in forward_job.
  T* wp = static_cast<T*>(job.wpack);
  const int64_t gstride = units * P;
  T* wr = wp + 4 * gstride;
  for (int g = 0; g < 4; ++g)
    pack_nt<T>(units, H - lo, P, at<const T>(p.w_hh, n, g * H + imin(lo, H - 1), 0), p.w_hh.stride[1],
               wp + g * gstride);
  if (pcols > 0) pack_nt<T>(pcols, P - plo, H, at<const T>(p.w_hr, n, plo, 0), p.w_hr.stride[1], wr);
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t b = grp.rows[i];
    for (int64_t j = plo; j < phi; ++j)
      hbuf[i * Pp + j] = hbuf[(nr + i) * Pp + j] = j < P ? *at<const T>(p.h0, n, b, j) : T(0);
    for (int64_t j = lo; j < hi; ++j) cbuf[i * Hp + j] = j < H ? *at<const T>(p.c0, n, b, j) : T(0);
  }
  if (job.barrier) job.barrier->wait();  // every slice of h0 is in place

  const bool keep = p.gates.ptr != nullptr;
  int64_t na = p.lengths ? 0 : nr;
  for (int64_t s = 0; s < T_; ++s) {
    const int64_t t = n == 0 ? s : T_ - 1 - s;
    na = active_rows(p.lengths, grp, t, na);
    const T* hc = hbuf + (s & 1) * nr * Pp;  // h_{t-1}
    T* hn = hbuf + ((s + 1) & 1) * nr * Pp;  // h_t
    if (na > 0)
      for (int g = 0; g < 4; ++g)
        gemm<T>(na, P, hc, Pp, 1, wp + g * gstride, units, gbuf + g * Hp + lo, 4 * Hp, Init::zero, nullptr);
    for (int64_t i = 0; i < na; ++i) {
      const int64_t b = grp.rows[i];
      const T* gi = gbuf + i * 4 * Hp;
      const T* gxp = at<const T>(p.gx, t, b, n);
      T* ci = cbuf + i * Hp;
      T* mi = mbuf + i * Hp;
      const bool last = n == 0 ? t == (p.lengths ? p.lengths[b] : T_) - 1 : t == 0;
      for (int64_t j = lo; j < hi_h; j += L) {
        const int nl = static_cast<int>(imin(L, H - j));
        const V i_ = vsigmoid(load_a(gi + j) + load_n(gxp + j, nl));
        const V f = vsigmoid(load_a(gi + Hp + j) + load_n(gxp + H + j, nl));
        const V g = vtanh(load_a(gi + 2 * Hp + j) + load_n(gxp + 2 * H + j, nl));
        const V o = vsigmoid(load_a(gi + 3 * Hp + j) + load_n(gxp + 3 * H + j, nl));
        const V c = f * load_a(ci + j) + i_ * g;
        store_a(ci + j, c);
        store_a(mi + j, o * vtanh(c));
        if (keep) {
          T* gp = at<T>(p.gates, t, b, n);
          store_n(gp + j, i_, nl);
          store_n(gp + H + j, f, nl);
          store_n(gp + 2 * H + j, g, nl);
          store_n(gp + 3 * H + j, o, nl);
          store_n(at<T>(p.cells, t, b, n) + j, c, nl);
        }
        if (last) store_n(at<T>(p.c_n, n, b, j), c, nl);
      }
    }
    if (job.barrier) job.barrier->wait();
    if (na > 0 && pcols > 0) gemm<T>(na, H, mbuf, Hp, 1, wr, pcols, hn + plo, Pp, Init::zero, nullptr);
    for (int64_t i = 0; i < na; ++i) {
      const int64_t b = grp.rows[i];
      const T* h = hn + i * Pp;
      T* yp = at<T>(p.y, t, b, n);
      for (int64_t j = plo; j < phi_p; ++j) yp[j] = h[j];
      if (n == 0 ? t == (p.lengths ? p.lengths[b] : T_) - 1 : t == 0) {
        T* hp = at<T>(p.h_n, n, b, 0);
        for (int64_t j = plo; j < phi_p; ++j) hp[j] = h[j];
      }
    }
    for (int64_t i = na; i < nr; ++i) {  // not running at t: y = 0
      T* yp = at<T>(p.y, t, grp.rows[i], n);
      for (int64_t j = plo; j < phi_p; ++j) yp[j] = T(0);
    }
    if (job.barrier) job.barrier->wait();
  }
}

// Backward, per step (reverse order), dh = dL/dh_t (P features), dc = dL/dc_t:
//   1. dr = dh + dy_t for the job's columns p -> the group's r (the A operand
//      of step 3) and the call's dr_seq (for dW_hr); zero where not running
//   2. barrier (all of dr is written), when several jobs share the group
//   3. dm[:, own units] = dr W_hr[:, own units], K = P
//   4. elementwise as in backward_job with dm for dh + dy: dG_t -> dgx[t] and
//      the dG buffer; m_t = o * tanh(c_t) -> m_seq
//   5. barrier (all of dG_t is written)
//   6. dh[:, own columns] = dG_t W_hh[:, own columns], K = 4H
// The driver then computes dW_hr[n] = dr_seq[:, :, n]^T m_seq[:, :, n] as one
// GEMM over all (t, b) (lstm_driver.cpp).
template <class T>
void backward_proj_job(const BwdParams& p, const RecJob& job, int64_t Hp) {
  constexpr int L = lanes<T>();
  using V = Vec<T>;
  const RowGroup& grp = *job.group;
  const int64_t T_ = p.T, H = p.H, P = p.P, Pp = padded<T>(P), n = job.n, lo = job.lo, hi = job.hi;
  const int64_t nr = grp.nrows, G = 4 * H, hi_h = imin(hi, H), units = hi - lo;
  const int64_t plo = job.plo, phi = job.phi, phi_p = imin(phi, P), pcols = phi - plo;
  T* dh = static_cast<T*>(grp.h);      // [nr][Pp]
  T* dc = static_cast<T*>(grp.c);      // [nr][Hp]
  T* dgb = static_cast<T*>(grp.g);     // [2][nr][4H]
  T* dm = static_cast<T*>(grp.m);      // [nr][Hp]
  T* dr = static_cast<T*>(grp.r);      // [nr][Pp]
  // W_hh's columns [plo, phi) ([pcols/NR][4H][NR]), then W_hr's columns [lo, hi) ([units/NR][P][NR]).
  T* wp = static_cast<T*>(job.wpack);
  T* wr = wp + pcols * G;
  if (pcols > 0)
    pack_nn<T>(imin(pcols, P - plo), G, [&](int64_t k) { return at<const T>(p.w_hh, n, k, 0); }, plo, wp);
  pack_nn<T>(imin(units, H - lo), P, [&](int64_t k) { return at<const T>(p.w_hr, n, k, 0); }, lo, wr);
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t b = grp.rows[i];
    for (int64_t j = plo; j < phi; ++j) dh[i * Pp + j] = j < P ? *at<const T>(p.dh_n, n, b, j) : T(0);
    for (int64_t j = lo; j < hi; ++j) dc[i * Hp + j] = j < H ? *at<const T>(p.dc_n, n, b, j) : T(0);
  }

  int64_t na = p.lengths ? 0 : nr;
  for (int64_t s = T_ - 1; s >= 0; --s) {
    const int64_t t = n == 0 ? s : T_ - 1 - s;
    const int64_t tp = n == 0 ? t - 1 : t + 1;
    na = active_rows(p.lengths, grp, t, na);
    for (int64_t i = 0; i < nr; ++i) {
      const int64_t b = grp.rows[i];
      T* rs = at<T>(job.dr_seq, t, b, n);
      if (i < na) {
        const T* dyp = at<const T>(p.dy, t, b, n);
        for (int64_t j = plo; j < phi_p; ++j) rs[j] = dr[i * Pp + j] = dh[i * Pp + j] + dyp[j];
      } else {
        for (int64_t j = plo; j < phi_p; ++j) rs[j] = T(0);
      }
    }
    if (job.barrier) job.barrier->wait();
    if (na > 0) gemm<T>(na, P, dr, Pp, 1, wr, units, dm + lo, Hp, Init::zero, nullptr);
    T* dgs = dgb + (s & 1) * nr * G;
    for (int64_t i = 0; i < na; ++i) {
      const int64_t b = grp.rows[i];
      const bool has_prev = s > 0 && (!p.lengths || tp < p.lengths[b]);
      const T* cprev = has_prev ? at<const T>(p.cells, tp, b, n) : at<const T>(p.c0, n, b, 0);
      const T* gt = at<const T>(p.gates, t, b, n);
      const T* ct = at<const T>(p.cells, t, b, n);
      T* ms = at<T>(job.m_seq, t, b, n);
      T* dg = at<T>(p.dgx, t, b, n);
      T* dgi = dgs + i * G;
      for (int64_t j = lo; j < hi_h; j += L) {
        const int nl = static_cast<int>(imin(L, H - j));
        const V i_ = load_n(gt + j, nl), f = load_n(gt + H + j, nl);
        const V g = load_n(gt + 2 * H + j, nl), o = load_n(gt + 3 * H + j, nl);
        const V tc = vtanh(load_n(ct + j, nl));
        gate_grads<T>(i_, f, g, o, tc, load_n(cprev + j, nl), load_a(dm + i * Hp + j), dc + i * Hp + j, dg + j,
                      dgi + j, H, nl);
        store_n(ms + j, o * tc, nl);
      }
    }
    for (int64_t i = na; i < nr; ++i) {  // not running at t: dG = 0, m = 0
      const int64_t b = grp.rows[i];
      T* dg = at<T>(p.dgx, t, b, n);
      T* ms = at<T>(job.m_seq, t, b, n);
      for (int g = 0; g < 4; ++g)
        for (int64_t j = lo; j < hi_h; ++j) dg[g * H + j] = T(0);
      for (int64_t j = lo; j < hi_h; ++j) ms[j] = T(0);
    }
    if (job.barrier) job.barrier->wait();
    if (na > 0 && pcols > 0) gemm<T>(na, G, dgs, G, 1, wp, pcols, dh + plo, Pp, Init::zero, nullptr);
  }
  for (int64_t i = 0; i < nr; ++i) {
    const int64_t b = grp.rows[i];
    for (int64_t j = plo; j < phi_p; ++j) *at<T>(p.dh0, n, b, j) = dh[i * Pp + j];
    for (int64_t j = lo; j < hi_h; ++j) *at<T>(p.dc0, n, b, j) = dc[i * Hp + j];
  }
}

}  // namespace

}  // namespace BILSTM_ISA

#define BILSTM_CAT2(a, b) a##b
#define BILSTM_CAT(a, b) BILSTM_CAT2(a, b)
#define BILSTM_STR2(a) #a
#define BILSTM_STR(a) BILSTM_STR2(a)

const KernelTable& BILSTM_CAT(kernel_table_, BILSTM_ISA)() {
  static const KernelTable k = {
      BILSTM_STR(BILSTM_ISA), BILSTM_VEC_BYTES,
      {&BILSTM_ISA::gemm_job<float>, &BILSTM_ISA::gemm_job<double>, &BILSTM_ISA::gemm_job<float, BILSTM_ISA::f16>,
       &BILSTM_ISA::gemm_job<float, BILSTM_ISA::bf16>},
      {&BILSTM_ISA::forward_job<float>, &BILSTM_ISA::forward_job<double>, &BILSTM_ISA::forward_job<BILSTM_ISA::f16>,
       &BILSTM_ISA::forward_job<BILSTM_ISA::bf16>},
      {&BILSTM_ISA::backward_job<float>, &BILSTM_ISA::backward_job<double>,
       &BILSTM_ISA::backward_job<BILSTM_ISA::f16>, &BILSTM_ISA::backward_job<BILSTM_ISA::bf16>},
      // the projection runs float32 and float64 (cpu_lstm.unsupported_reason declines f16/bf16)
      {&BILSTM_ISA::forward_proj_job<float>, &BILSTM_ISA::forward_proj_job<double>, nullptr, nullptr},
      {&BILSTM_ISA::backward_proj_job<float>, &BILSTM_ISA::backward_proj_job<double>, nullptr, nullptr},
      &BILSTM_ISA::bf16_dot_supported};
  return k;
}

}  // namespace bilstm_cpu
