// A/B timing of builds of lstm_kernel.cpp that differ in compile-time knobs
// (BILSTM_MC_ROWS, BILSTM_KC, ...): each variant is compiled into its own
// namespace (BILSTM_ISA=v0..v3, AVX2) and linked into this one program, and
// the variants are called alternately, call by call, on one thread, so a
// slow spell of a shared machine hits all of them alike. Times are the
// thread's CPU time (CLOCK_THREAD_CPUTIME_ID): on this 2-vCPU guest other
// processes only time-slice the cores -- an FMA loop ran at 99-100 GFLOP/s
// per CPU-second at a load average of 30, while its wall-clock rate fell to
// 28-31 -- so CPU time stays comparable when the wall clock does not.
// Prints the min, p20 and median per variant. Build and run with kernel_ab.sh (next to this
// file); docs/cpu.md lists the sweeps it ran.
//
//   fwd T B H: the forward recurrence of both directions (no lengths)
//   lin T B H [D]: the input projection [T*B, D] x [D, 8H] + bias
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cpu_kernels.h"

namespace bilstm_cpu {
const KernelTable& kernel_table_v0();
const KernelTable& kernel_table_v1();
const KernelTable& kernel_table_v2();
const KernelTable& kernel_table_v3();
}  // namespace bilstm_cpu
using namespace bilstm_cpu;

static double now() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}
static View view(void* p, std::vector<int64_t> shape) {
  View v;
  v.ptr = p;
  int64_t s = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) v.stride[i] = s, s *= shape[i];
  return v;
}
static std::vector<float> noise(int64_t n, float scale) {
  std::vector<float> v(n);
  for (auto& x : v) x = (rand() / static_cast<float>(RAND_MAX) - 0.5f) * scale;
  return v;
}
static float* aligned(int64_t n) { return static_cast<float*>(aligned_alloc(64, (n * 4 + 63) / 64 * 64)); }

int main(int argc, char** argv) {
  if (argc < 7) {
    fprintf(stderr, "usage: kernel_ab NVARIANTS fwd|lin T B H REPS [D]\n");
    return 2;
  }
  const int nv = atoi(argv[1]);
  const std::string what = argv[2];
  const int64_t T = atol(argv[3]), B = atol(argv[4]), H = atol(argv[5]);
  const int reps = atoi(argv[6]);
  const KernelTable* tabs[4] = {&kernel_table_v0(), &kernel_table_v1(), &kernel_table_v2(), &kernel_table_v3()};
  // NR: the float panel width of the build (2 vectors; kernel_ab.sh's ISA)
  const int64_t D = argc > 7 ? atol(argv[7]) : 300, N = 2, NR = 2 * tabs[0]->vec_bytes / 4,
                Hp = (H + NR - 1) / NR * NR;

  // forward recurrence: one row group of all B rows per direction
  std::vector<int64_t> rows(B);
  for (int64_t i = 0; i < B; ++i) rows[i] = i;
  RowGroup grp;
  grp.rows = rows.data(), grp.nrows = B;
  grp.h = aligned(2 * B * Hp), grp.c = aligned(B * Hp), grp.g = aligned(B * 4 * Hp);
  float* wpack = aligned(4 * Hp * H);
  auto gx = noise(T * B * N * 4 * H, 1.f), w = noise(N * 4 * H * H, 0.1f);
  std::vector<float> h0(N * B * H), c0(N * B * H), y(T * B * N * H), hn(N * B * H), cn(N * B * H);
  FwdParams fp;
  fp.T = T, fp.B = B, fp.N = N, fp.H = H;
  fp.gx = view(gx.data(), {T, B, N, 4 * H}), fp.w_hh = view(w.data(), {N, 4 * H, H});
  fp.h0 = view(h0.data(), {N, B, H}), fp.c0 = view(c0.data(), {N, B, H});
  fp.y = view(y.data(), {T, B, N, H}), fp.h_n = view(hn.data(), {N, B, H}), fp.c_n = view(cn.data(), {N, B, H});

  // input projection
  const int64_t M = T * B;
  auto x = noise(M * D, 1.f), wi = noise(8 * H * D, 0.1f), bias = noise(8 * H, 0.1f);
  std::vector<float> out(M * 8 * H);
  float* bpack = aligned((8 * H + NR) * D);
  GemmParams gp;
  gp.M = M, gp.K = D, gp.N = 8 * H, gp.a = x.data(), gp.lda = D, gp.ldk = 1;
  gp.bkind = BKind::w_rows, gp.b = wi.data(), gp.ldb = D, gp.bias = bias.data(), gp.c = out.data(), gp.ldc = 8 * H;

  std::vector<double> times[4];
  for (int r = 0; r < reps + 2; ++r)
    for (int v = 0; v < nv; ++v) {
      const double t0 = now();
      if (what == "fwd") {
        for (int64_t n = 0; n < N; ++n) {
          RecJob j;
          j.n = n, j.lo = 0, j.hi = Hp, j.group = &grp, j.wpack = wpack;
          tabs[v]->forward[0](fp, j, Hp);
        }
      } else {
        GemmJob j;
        j.p = &gp, j.n0 = 0, j.n1 = 8 * H, j.bpack = bpack;
        tabs[v]->gemm[0](j);
      }
      if (r >= 2) times[v].push_back(now() - t0);
    }
  const double flop = (what == "fwd" ? 16.0 * T * B * H * H : 16.0 * T * B * H * D);
  for (int v = 0; v < nv; ++v) {
    auto& t = times[v];
    std::sort(t.begin(), t.end());
    printf("v%d %s T%ld B%ld H%ld: min %.3f ms (%.1f GFLOP/s) p20 %.3f median %.3f\n", v, what.c_str(),
           static_cast<long>(T), static_cast<long>(B), static_cast<long>(H), t[0] * 1e3, flop / t[0] / 1e9,
           t[t.size() / 5] * 1e3, t[t.size() / 2] * 1e3);
  }
}
