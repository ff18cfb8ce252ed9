// emu_selftest.cpp — standalone check of the CUDA kernels under the CPU
// emulation (no Python, no torch), for the sanitizer runs (tools/sanitize.sh):
// one forward + backward per engine (exact fp32 FMA tiles, tf32, fp16 and bf16
// wmma tiles of both shapes), several blocks per direction (so the
// per-direction barrier and the h / dh-partial exchange through the
// "L2" buffers are exercised), W_hh tiles in registers and in shared memory,
// one chunk and several (B > NB: the state round trip), unsorted lengths
// incl. 1, odd H and B; checked against a plain double-precision reference of
// the same math on the same (rounded) inputs. Exit code 0 only if every value
// matches.
//
//   g++ -std=c++20 -O1 -g -fsanitize=thread -Icsrc -Icsrc/cuda csrc/cuda/emu_selftest.cpp -o selftest && ./selftest
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

void compare(const char* what, const std::vector<float>& got, const V& want, const Problem& p, int last, bool masked,
             double tol) {
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (masked) {  // [T, B, N, last]: only valid t (gates / cells are unspecified elsewhere)
      const size_t t = i / ((size_t)p.B * p.N * last), b = (i / ((size_t)p.N * last)) % p.B;
      if ((int64_t)t >= p.len[b]) continue;
    }
    const double e = std::abs(double(got[i]) - want[i]);
    worst = std::isnan(e) ? INFINITY : std::max(worst, e);
  }
  const bool ok = worst <= tol;
  std::printf("  %-6s max err %.3g %s\n", what, worst, ok ? "ok" : "FAIL");
  g_fail += !ok;
}

// X storage of a double (rounded like the tensor the op would get), and back.
template <class X> X to_x(double v) { return from_f<X>(float(v)); }
template <class X> std::vector<X> to_xs(const V& v) {
  std::vector<X> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = to_x<X>(v[i]);
  return o;
}
template <class X> V to_ds(const std::vector<X>& v) {
  V o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = to_f(v[i]);
  return o;
}
template <class X> std::vector<float> to_fs(const std::vector<X>& v) {
  std::vector<float> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = to_f(v[i]);
  return o;
}

template <class X>
void run(Problem p, DType dtype, const Options& opt, const char* name, double tol) {
  const int T = p.T, B = p.B, N = p.N, H = p.H, G = p.G;
  // The reference sees exactly the X-rounded inputs the kernels see.
  std::vector<X> gx = to_xs<X>(p.gx), w = to_xs<X>(p.w), h0 = to_xs<X>(p.h0), c0 = to_xs<X>(p.c0);
  std::vector<X> dy = to_xs<X>(p.dy), dhn = to_xs<X>(p.dhn), dcn = to_xs<X>(p.dcn);
  p.gx = to_ds(gx); p.w = to_ds(w); p.h0 = to_ds(h0); p.c0 = to_ds(c0);
  p.dy = to_ds(dy); p.dhn = to_ds(dhn); p.dcn = to_ds(dcn);
  std::vector<X> y((size_t)T * B * N * H, to_x<X>(-7.0)), hn((size_t)N * B * H), cn(hn.size());
  std::vector<float> gates((size_t)T * B * N * G), cells((size_t)T * B * N * H);

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
  const DeviceLimits lim = device_limits(0);
  const Plan pf = make_plan(kForward, N, B, H, dtype, lim, opt);
  std::vector<X> xf(pf.exchange_elems);
  std::vector<float> sf(pf.state_floats);
  std::vector<unsigned> bar(N * kBarrierStride, 0);
  FwdParams fp{};
  fp.T = T; fp.B = B; fp.N = N; fp.H = H; fp.dtype = dtype;
  fp.gx = seq(gx.data(), G); fp.w_hh = state(w.data(), G, H);
  fp.h0 = state(h0.data(), B, H); fp.c0 = state(c0.data(), B, H); fp.lengths = p.len.data();
  fp.y = seq(y.data(), H); fp.h_n = state(hn.data(), B, H); fp.c_n = state(cn.data(), B, H);
  fp.gates = seq(gates.data(), G); fp.cells = seq(cells.data(), H);
  fp.exchange = xf.data(); fp.state = sf.data(); fp.barrier = bar.data();
  forward(fp, pf, 0, nullptr);

  std::vector<X> dgx((size_t)T * B * N * G, to_x<X>(-7.0)), dh0(hn.size()), dc0(hn.size());
  const Plan pb = make_plan(kBackward, N, B, H, dtype, lim, opt);
  std::vector<X> xb(pb.exchange_elems);
  std::vector<float> sb(pb.state_floats);
  std::vector<unsigned> barb(N * kBarrierStride, 0);
  BwdParams bp{};
  bp.T = T; bp.B = B; bp.N = N; bp.H = H; bp.dtype = dtype;
  bp.dy = seq(dy.data(), H); bp.dh_n = state(dhn.data(), B, H); bp.dc_n = state(dcn.data(), B, H);
  bp.w_hh = state(w.data(), G, H); bp.c0 = state(c0.data(), B, H); bp.lengths = p.len.data();
  bp.gates = seq(gates.data(), G); bp.cells = seq(cells.data(), H);
  bp.dgx = seq(dgx.data(), G); bp.dh0 = state(dh0.data(), B, H); bp.dc0 = state(dc0.data(), B, H);
  bp.exchange = xb.data(); bp.state = sb.data(); bp.barrier = barb.data();
  backward(bp, pb, 0, nullptr);

  auto desc = [](const Plan& pl) {
    const Geometry& g = pl.geo;
    char buf[200];
    std::snprintf(buf, sizeof buf, "%s blocks=%d U=%d warps=%d NB=%d KS=%d Kr=%d/%d", engine_name(pl.engine),
                  g.blocks, g.U, g.warps, g.NB, g.KS, g.Kr, g.Kpad);
    return std::string(buf);
  };
  std::printf("%s: forward %s | backward %s\n", name, desc(pf).c_str(), desc(pb).c_str());
  V ry, rhn, rcn, rg, rcells, rdgx, rdh0, rdc0;
  reference(p, ry, rhn, rcn, rg, rcells, rdgx, rdh0, rdc0);
  compare("y", to_fs(y), ry, p, H, false, tol);
  compare("h_n", to_fs(hn), rhn, p, H, false, tol);
  compare("c_n", to_fs(cn), rcn, p, H, false, tol);
  compare("gates", gates, rg, p, G, true, tol);
  compare("cells", cells, rcells, p, H, true, tol);
  compare("dgx", to_fs(dgx), rdgx, p, G, false, tol);
  compare("dh0", to_fs(dh0), rdh0, p, H, false, tol);
  compare("dc0", to_fs(dc0), rdc0, p, H, false, tol);
}

Problem make_problem(int T, int B, int N, int H, std::vector<int64_t> len, unsigned seed) {
  Problem p;
  p.T = T; p.B = B; p.N = N; p.H = H; p.G = 4 * H; p.len = std::move(len);
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  auto fill = [&](V& v, size_t n, double scale) { v.resize(n); for (auto& x : v) x = nd(rng) * scale; };
  fill(p.gx, (size_t)T * B * N * p.G, 1.0);
  fill(p.w, (size_t)N * p.G * H, 1.0 / std::sqrt(double(H)));
  fill(p.h0, (size_t)N * B * H, 0.5);
  fill(p.c0, (size_t)N * B * H, 0.5);
  fill(p.dy, (size_t)T * B * N * H, 1.0);
  fill(p.dhn, (size_t)N * B * H, 1.0);
  fill(p.dcn, (size_t)N * B * H, 1.0);
  return p;
}

Options plan_opts(int engine, int blocks, int batch_tile, int reg_tiles) {
  Options o;
  o.engine = engine; o.blocks = blocks; o.warps = 2; o.batch_tile = batch_tile; o.reg_tiles = reg_tiles;
  return o;
}

}  // namespace

// FastDiv (lstm_api.h) against '/' and '%': every numerator below 2^16 for
// every divisor up to 512 and larger ones up to 2^15, powers of two and their
// neighbours.
void check_fastdiv() {
  std::vector<unsigned> ds;
  for (unsigned d = 1; d <= 512; ++d) ds.push_back(d);
  for (unsigned e = 10; e <= 16; ++e)
    for (unsigned d : {(1u << e) - 1, 1u << e, (1u << e) + 1}) if (d <= (unsigned)kFastDivMaxD) ds.push_back(d);
  for (unsigned d : {641u, 1000u, 3000u, 12345u, 32749u}) ds.push_back(d);
  long bad = 0;
  for (unsigned d : ds) {
    const FastDiv f(d);
    for (int n = 0; n < kFastDivMax; ++n) {
      const int q = f.div(n);
      if (q != n / (int)d || f.mod(n, q) != n % (int)d) ++bad;
    }
  }
  std::printf("fastdiv: %zu divisors x %d numerators, %ld wrong\n", ds.size(), kFastDivMax, bad);
  g_fail += bad != 0;
}

int main() {
  check_fastdiv();
  // H = 21 over 3 blocks of 8 units (3 padding units), B = 3, unsorted lengths incl. 1.
  const Problem p = make_problem(6, 3, 2, 21, {6, 1, 4}, 1234);
  run<float>(p, DType::f32, plan_opts(kFma, 3, 0, -1), "fma-registers", 2e-5);
  run<float>(p, DType::f32, plan_opts(kFma, 3, 0, 0), "fma-shared-memory", 2e-5);
  run<float>(p, DType::f32, plan_opts(kTF32, 3, 0, 1), "tf32-split", 5e-3);          // forward Kr 8 of 24
  run<bl_half>(p, DType::f16, plan_opts(kF16, 3, 0, -1), "f16-ksplit", 1e-2);        // forward KS = 2
  Options one_warp = plan_opts(kF16, 3, 0, 1);
  one_warp.warps = 1;
  run<bl_bf16>(p, DType::bf16, one_warp, "bf16-1warp-split", 5e-2);                  // forward Kr 16 of 32, KS 1
  // H = 60: U = 24, 4 warps; forward rows over several slots per warp, backward Kr 64 of 80.
  const Problem w = make_problem(3, 3, 2, 60, {3, 1, 2}, 7);
  Options wide = plan_opts(kTF32, 3, 0, 12);
  wide.warps = 4;
  run<float>(w, DType::f32, wide, "tf32-wide", 5e-3);                                 // backward Kr 64 of 80
  wide.engine = kF16; wide.reg_tiles = 2;                                             // forward Kr 32 of 80
  run<bl_bf16>(w, DType::bf16, wide, "bf16-wide", 5e-2);
  // H = 120 over 4 blocks of 32 units: backward Kr 64 of 128 (one register slot per warp).
  const Problem r = make_problem(3, 3, 2, 120, {2, 3, 1}, 5);
  run<bl_half>(r, DType::f16, plan_opts(kF16, 4, 0, 8), "f16-bwd-split", 1e-2);
  // Several chunks (B = 19 > NB = 16 and 8): c, dh, dc round-trip through the state buffer.
  const Problem q = make_problem(4, 19, 2, 13, {4, 1, 3, 2, 4, 4, 1, 2, 3, 4, 2, 1, 3, 4, 4, 2, 1, 3, 2}, 99);
  run<bl_bf16>(q, DType::bf16, plan_opts(kF16, 2, 16, 0), "bf16-chunks", 5e-2);
  run<float>(q, DType::f32, plan_opts(kFma, 2, 8, 1), "fma-chunks", 2e-5);
  std::printf("%s\n", g_fail ? "FAILED" : "all ok");
  return g_fail ? 1 : 0;
}
