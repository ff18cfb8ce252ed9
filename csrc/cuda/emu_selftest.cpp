// emu_selftest.cpp — standalone check of the CUDA kernels under the CPU
// emulation (no Python, no torch), for the sanitizer runs (tools/sanitize.sh):
// one forward + backward per path (on-chip and streaming W_hh, and streaming
// with h / dG read from L2 instead of a shared-memory tile), several
// blocks per direction (so the per-direction grid barrier is exercised),
// several batch tiles, fewer threads than (batch, unit) pairs and more
// (dot products split over threads), unsorted
// lengths incl. 1, odd H and B; checked against a plain double-precision
// reference of the same math. Exit code 0 only if every value matches.
//
//   g++ -std=c++20 -O1 -g -fsanitize=thread -Icsrc csrc/cuda/emu_selftest.cpp -o selftest && ./selftest
#define BILSTM_CUDA_EMULATE 1
#include "lstm.cu"

#include <cstdio>
#include <random>
#include <vector>

using namespace bilstm_cuda;
using V = std::vector<double>;

namespace {

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

struct Problem {
  int T = 6, B = 3, N = 2, H = 13, G = 52;
  std::vector<int64_t> len{6, 1, 4};
  V gx, w, h0, c0, dy, dhn, dcn;  // w: [N, 4H, H]
};

size_t idx4(const Problem& p, int t, int b, int n, int j, int last) { return (((size_t)t * p.B + b) * p.N + n) * last + j; }

// Double-precision reference forward + backward (docs/design.md §2, reference.py).
void reference(const Problem& p, V& y, V& hn, V& cn, V& gates, V& cells, V& dgx, V& dh0, V& dc0) {
  const int T = p.T, B = p.B, N = p.N, H = p.H, G = p.G;
  y.assign((size_t)T * B * N * H, 0); gates.assign((size_t)T * B * N * G, 0); cells.assign((size_t)T * B * N * H, 0);
  hn.assign((size_t)N * B * H, 0); cn = hn; dgx.assign((size_t)T * B * N * G, 0); dh0 = hn; dc0 = hn;
  for (int n = 0; n < N; ++n)
    for (int b = 0; b < B; ++b) {
      const int L = (int)p.len[b];
      V h(p.h0.begin() + ((size_t)n * B + b) * H, p.h0.begin() + ((size_t)n * B + b + 1) * H);
      V c(p.c0.begin() + ((size_t)n * B + b) * H, p.c0.begin() + ((size_t)n * B + b + 1) * H);
      std::vector<int> order;
      for (int s = 0; s < L; ++s) order.push_back(n == 0 ? s : L - 1 - s);
      for (int t : order) {
        V hnew(H);
        for (int u = 0; u < H; ++u) {
          double a[4];
          for (int g = 0; g < 4; ++g) {
            a[g] = p.gx[idx4(p, t, b, n, g * H + u, G)];
            for (int k = 0; k < H; ++k) a[g] += h[k] * p.w[((size_t)n * G + g * H + u) * H + k];
          }
          const double i = sig(a[0]), f = sig(a[1]), gg = std::tanh(a[2]), o = sig(a[3]);
          c[u] = f * c[u] + i * gg;
          hnew[u] = o * std::tanh(c[u]);
          gates[idx4(p, t, b, n, u, G)] = i; gates[idx4(p, t, b, n, H + u, G)] = f;
          gates[idx4(p, t, b, n, 2 * H + u, G)] = gg; gates[idx4(p, t, b, n, 3 * H + u, G)] = o;
          cells[idx4(p, t, b, n, u, H)] = c[u];
          y[idx4(p, t, b, n, u, H)] = hnew[u];
        }
        h = hnew;
      }
      for (int u = 0; u < H; ++u) { hn[((size_t)n * B + b) * H + u] = h[u]; cn[((size_t)n * B + b) * H + u] = c[u]; }
      // backward over the same steps in reverse
      V dh(p.dhn.begin() + ((size_t)n * B + b) * H, p.dhn.begin() + ((size_t)n * B + b + 1) * H);
      V dc(p.dcn.begin() + ((size_t)n * B + b) * H, p.dcn.begin() + ((size_t)n * B + b + 1) * H);
      for (int si = L - 1; si >= 0; --si) {
        const int t = order[si];
        V dpre(G);
        for (int u = 0; u < H; ++u) {
          const double i = gates[idx4(p, t, b, n, u, G)], f = gates[idx4(p, t, b, n, H + u, G)];
          const double gg = gates[idx4(p, t, b, n, 2 * H + u, G)], o = gates[idx4(p, t, b, n, 3 * H + u, G)];
          const double ct = cells[idx4(p, t, b, n, u, H)];
          const double cp = si == 0 ? p.c0[((size_t)n * B + b) * H + u] : cells[idx4(p, order[si - 1], b, n, u, H)];
          const double dho = dh[u] + p.dy[idx4(p, t, b, n, u, H)];
          const double tc = std::tanh(ct);
          const double dct = dc[u] + dho * o * (1 - tc * tc);
          dpre[u] = dct * gg * i * (1 - i);
          dpre[H + u] = dct * cp * f * (1 - f);
          dpre[2 * H + u] = dct * i * (1 - gg * gg);
          dpre[3 * H + u] = dho * tc * o * (1 - o);
          dc[u] = dct * f;
        }
        for (int r = 0; r < G; ++r) dgx[idx4(p, t, b, n, r, G)] = dpre[r];
        for (int k = 0; k < H; ++k) {
          double acc = 0;
          for (int r = 0; r < G; ++r) acc += dpre[r] * p.w[((size_t)n * G + r) * H + k];
          dh[k] = acc;
        }
      }
      for (int u = 0; u < H; ++u) { dh0[((size_t)n * B + b) * H + u] = dh[u]; dc0[((size_t)n * B + b) * H + u] = dc[u]; }
    }
}

int g_fail = 0;

void compare(const char* what, const std::vector<float>& got, const V& want, const Problem& p, int last, bool masked) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (masked) {  // [T, B, N, last]: only valid t (gates / cells are unspecified elsewhere)
      const size_t t = i / ((size_t)p.B * p.N * last), b = (i / ((size_t)p.N * last)) % p.B;
      if ((int64_t)t >= p.len[b]) continue;
    }
    worst = std::max(worst, std::abs(double(got[i]) - want[i]));
  }
  const bool ok = worst <= 2e-5;
  std::printf("  %-6s max err %.3g %s\n", what, worst, ok ? "ok" : "FAIL");
  g_fail += !ok;
}

void run(const Problem& p, const Options& opt, const char* name) {
  const int T = p.T, B = p.B, N = p.N, H = p.H, G = p.G;
  auto f = [](const V& v) { return std::vector<float>(v.begin(), v.end()); };
  std::vector<float> gx = f(p.gx), w = f(p.w), h0 = f(p.h0), c0 = f(p.c0), dy = f(p.dy), dhn = f(p.dhn), dcn = f(p.dcn);
  std::vector<float> wt((size_t)N * H * G);  // [N, H, 4H]
  for (int n = 0; n < N; ++n)
    for (int r = 0; r < G; ++r)
      for (int k = 0; k < H; ++k) wt[((size_t)n * H + k) * G + r] = w[((size_t)n * G + r) * H + k];
  std::vector<float> y((size_t)T * B * N * H, -7.f), hn((size_t)N * B * H), cn(hn.size());
  std::vector<float> gates((size_t)T * B * N * G), cells((size_t)T * B * N * H);
  std::vector<float> scratch(fwd_scratch_floats(N, B, H));
  std::vector<unsigned> bar(N, 0);

  // Dense [T, B, N, F] / [N, ...] views (strides in elements).
  auto seq = [&](void* ptr, int last) {
    bilstm::View v; v.ptr = ptr;
    v.stride[0] = (int64_t)B * N * last; v.stride[1] = (int64_t)N * last; v.stride[2] = last; v.stride[3] = 1;
    return v;
  };
  auto state = [&](void* ptr, int rows, int last) {
    bilstm::View v; v.ptr = ptr;
    v.stride[0] = (int64_t)rows * last; v.stride[1] = last; v.stride[2] = 1;
    return v;
  };
  FwdParams fp{};
  fp.T = T; fp.B = B; fp.N = N; fp.H = H; fp.dtype = DType::f32;
  fp.gx = seq(gx.data(), G); fp.w_hh = state(w.data(), G, H); fp.w_t = wt.data();
  fp.h0 = state(h0.data(), B, H); fp.c0 = state(c0.data(), B, H); fp.lengths = p.len.data();
  fp.y = seq(y.data(), H); fp.h_n = state(hn.data(), B, H); fp.c_n = state(cn.data(), B, H);
  fp.gates = seq(gates.data(), G); fp.cells = seq(cells.data(), H);
  fp.scratch = scratch.data(); fp.barrier = bar.data();
  const Plan pf = forward(fp, opt, 0, nullptr);

  std::vector<float> dgx((size_t)T * B * N * G, -7.f), dh0(hn.size()), dc0(hn.size());
  std::vector<float> wsb(bwd_scratch_floats(N, B, H));
  std::vector<unsigned> barb(N, 0);
  BwdParams bp{};
  bp.T = T; bp.B = B; bp.N = N; bp.H = H; bp.dtype = DType::f32;
  bp.dy = seq(dy.data(), H); bp.dh_n = state(dhn.data(), B, H); bp.dc_n = state(dcn.data(), B, H);
  bp.w_hh = state(w.data(), G, H); bp.c0 = state(c0.data(), B, H); bp.lengths = p.len.data();
  bp.gates = seq(gates.data(), G); bp.cells = seq(cells.data(), H);
  bp.dgx = seq(dgx.data(), G); bp.dh0 = state(dh0.data(), B, H); bp.dc0 = state(dc0.data(), B, H);
  bp.scratch = wsb.data(); bp.barrier = barb.data();
  const Plan pb = backward(bp, opt, 0, nullptr);

  std::printf("%s: forward %s blocks=%d slice=%d threads=%d tile=%d | backward %s blocks=%d tile=%d\n", name,
              pf.path == kOnChip ? "onchip" : "stream", pf.blocks, pf.slice, pf.threads, pf.batch_tile,
              pb.path == kOnChip ? "onchip" : "stream", pb.blocks, pb.batch_tile);
  V ry, rhn, rcn, rg, rcells, rdgx, rdh0, rdc0;
  reference(p, ry, rhn, rcn, rg, rcells, rdgx, rdh0, rdc0);
  compare("y", y, ry, p, H, false);
  compare("h_n", hn, rhn, p, H, false);
  compare("c_n", cn, rcn, p, H, false);
  compare("gates", gates, rg, p, G, true);
  compare("cells", cells, rcells, p, H, true);
  compare("dgx", dgx, rdgx, p, G, false);
  compare("dh0", dh0, rdh0, p, H, false);
  compare("dc0", dc0, rdc0, p, H, false);
}

}  // namespace

int main() {
  Problem p;
  std::mt19937 rng(1234);
  std::normal_distribution<double> nd(0.0, 1.0);
  auto fill = [&](V& v, size_t n, double scale) { v.resize(n); for (auto& x : v) x = float(nd(rng) * scale); };
  fill(p.gx, (size_t)p.T * p.B * p.N * p.G, 1.0);
  fill(p.w, (size_t)p.N * p.G * p.H, 0.3);
  fill(p.h0, (size_t)p.N * p.B * p.H, 1.0);
  fill(p.c0, (size_t)p.N * p.B * p.H, 1.0);
  fill(p.dy, (size_t)p.T * p.B * p.N * p.H, 1.0);
  fill(p.dhn, (size_t)p.N * p.B * p.H, 1.0);
  fill(p.dcn, (size_t)p.N * p.B * p.H, 1.0);
  Options on; on.path = kOnChip; on.blocks = 3; on.threads = 16; on.batch_tile = 2;
  Options st = on; st.path = kStream;
  Options st_l2 = st; st_l2.batch_tile = -1;  // h / dG read from L2 (the mode for huge H)
  run(p, on, "onchip");
  run(p, st, "stream");
  run(p, st_l2, "stream-unstaged");
  // 64 threads for 10 (row, unit) items per tile: each dot product split over 6 threads
  Options on_ks = on; on_ks.threads = 64;
  Options st_l2_ks = st_l2; st_l2_ks.threads = 64;
  run(p, on_ks, "onchip-ksplit");
  run(p, st_l2_ks, "stream-unstaged-ksplit");
  std::printf("%s\n", g_fail ? "FAILED" : "all ok");
  return g_fail ? 1 : 0;
}
