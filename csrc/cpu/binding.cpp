// pybind11 module bilstm_fast._cpu: checks every tensor description it is
// given, fills the params struct, releases the GIL and runs the kernels.
//
// A tensor crosses as a tuple (data_ptr: int, shape: tuple, strides: tuple)
// (bilstm_fast/ops/cpu_lstm.py builds them); the dtype is passed once as a
// string and the Python side guarantees every tensor has it. No torch headers,
// no torch library: one build serves every torch version.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sstream>
#include <string>
#include <vector>

#include "lstm_driver.h"

namespace py = pybind11;
using namespace bilstm_cpu;

namespace {

struct Arg {
  int64_t ptr = 0;
  std::vector<int64_t> shape, strides;
};

std::string fmt(const std::vector<int64_t>& v) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < v.size(); ++i) s << (i ? ", " : "") << v[i];
  s << "]";
  return s.str();
}

Arg parse(const char* name, const py::handle& h) {
  Arg a;
  try {
    auto t = h.cast<py::tuple>();
    if (t.size() != 3) throw py::cast_error();
    a.ptr = t[0].cast<int64_t>();
    a.shape = t[1].cast<std::vector<int64_t>>();
    a.strides = t[2].cast<std::vector<int64_t>>();
  } catch (const py::cast_error&) {
    throw py::type_error(std::string(name) + ": expected a (data_ptr, shape, strides) tuple");
  }
  if (a.shape.size() != a.strides.size())
    throw py::value_error(std::string(name) + ": shape and strides differ in length");
  return a;
}

// Checks `a` against `expect` (names for the message, e.g. {"T","B","N","4H"})
// and returns its view. Zero-size tensors never reach the kernels.
View check(const char* name, const Arg& a, const std::vector<int64_t>& expect,
           const std::vector<const char*>& letters, int64_t esize) {
  if (a.shape != expect) {
    std::ostringstream s;
    s << name << ": expected shape [";
    for (size_t i = 0; i < expect.size(); ++i)
      s << (i ? ", " : "") << letters[i] << "=" << expect[i];
    s << "], got " << fmt(a.shape);
    throw py::value_error(s.str());
  }
  if (a.ptr == 0) throw py::value_error(std::string(name) + ": null data pointer");
  if (a.ptr % esize != 0)
    throw py::value_error(std::string(name) + ": data pointer not aligned to its element size");
  if (a.strides.back() != 1 && a.shape.back() != 1)
    throw py::value_error(std::string(name) + ": the last dimension must be contiguous (stride 1), got strides " +
                          fmt(a.strides));
  for (int64_t s : a.strides)
    if (s < 0) throw py::value_error(std::string(name) + ": negative strides are not supported, got " + fmt(a.strides));
  View v;
  v.ptr = reinterpret_cast<void*>(a.ptr);
  // Every dim's stride; the last is 1 (a size-1 last dim may report any stride).
  for (size_t i = 0; i < a.strides.size() && i < 4; ++i) v.stride[i] = a.strides[i];
  v.stride[a.strides.size() - 1] = 1;
  return v;
}

DType parse_dtype(const std::string& d, int64_t* esize) {
  if (d == "float32") { *esize = 4; return DType::f32; }
  if (d == "float64") { *esize = 8; return DType::f64; }
  throw py::value_error("dtype: expected 'float32' or 'float64', got '" + d + "'");
}

const int64_t* check_lengths(const py::object& obj, int64_t T, int64_t B) {
  if (obj.is_none()) return nullptr;
  Arg a = parse("lengths", obj);
  View v = check("lengths", a, {B}, {"B"}, 8);
  const int64_t* l = static_cast<const int64_t*>(v.ptr);
  for (int64_t b = 0; b < B; ++b)
    if (l[b] < 1 || l[b] > T)
      throw py::value_error("lengths: values must be in 1..T=" + std::to_string(T) + ", got " +
                            std::to_string(l[b]) + " at index " + std::to_string(b));
  return l;
}

int check_threads(int n) {
  if (n < 1) throw py::value_error("num_threads: expected >= 1, got " + std::to_string(n));
  return n;
}

void forward(const std::string& dtype, py::object gx, py::object w_hh, py::object h0, py::object c0,
             py::object lengths, py::object y, py::object h_n, py::object c_n, py::object gates,
             py::object cs, int num_threads, py::object w_hh_packed) {
  int64_t es;
  const DType dt = parse_dtype(dtype, &es);
  const Arg agx = parse("gx", gx);
  if (agx.shape.size() != 4 || agx.shape[3] % 4 != 0 || agx.shape[3] == 0 ||
      (agx.shape[2] != 1 && agx.shape[2] != 2) || agx.shape[0] < 1 || agx.shape[1] < 1)
    throw py::value_error("gx: expected shape [T>=1, B>=1, N in (1, 2), 4H>=4], got " + fmt(agx.shape));
  FwdParams p;
  p.T = agx.shape[0], p.B = agx.shape[1], p.N = agx.shape[2], p.H = agx.shape[3] / 4;
  const int64_t T = p.T, B = p.B, N = p.N, H = p.H;
  p.gx = check("gx", agx, {T, B, N, 4 * H}, {"T", "B", "N", "4H"}, es);
  p.w_hh = check("w_hh", parse("w_hh", w_hh), {N, 4 * H, H}, {"N", "4H", "H"}, es);
  p.h0 = check("h0", parse("h0", h0), {N, B, H}, {"N", "B", "H"}, es);
  p.c0 = check("c0", parse("c0", c0), {N, B, H}, {"N", "B", "H"}, es);
  p.lengths = check_lengths(lengths, T, B);
  p.y = check("y", parse("y", y), {T, B, N, H}, {"T", "B", "N", "H"}, es);
  p.h_n = check("h_n", parse("h_n", h_n), {N, B, H}, {"N", "B", "H"}, es);
  p.c_n = check("c_n", parse("c_n", c_n), {N, B, H}, {"N", "B", "H"}, es);
  if (gates.is_none() != cs.is_none())
    throw py::value_error("gates, cs: pass both workspace tensors or neither");
  if (!gates.is_none()) {
    p.gates = check("gates", parse("gates", gates), {T, B, N, 4 * H}, {"T", "B", "N", "4H"}, es);
    p.cs = check("cs", parse("cs", cs), {T, B, N, H}, {"T", "B", "N", "H"}, es);
  }
  if (!w_hh_packed.is_none()) {
    const View v = check("w_hh_packed", parse("w_hh_packed", w_hh_packed), {packed_w_hh_size(dt, N, H)},
                         {"packed_w_hh_size(N, H)"}, es);
    if (reinterpret_cast<uintptr_t>(v.ptr) % 64 != 0)
      throw py::value_error("w_hh_packed: expected a 64-byte aligned buffer");
    p.w_hh_packed = v.ptr;
  }
  const int nt = check_threads(num_threads);
  py::gil_scoped_release nogil;
  run_forward(p, dt, nt);
}

int64_t packed_w_hh_size_py(const std::string& dtype, int64_t N, int64_t H) {
  int64_t es;
  return packed_w_hh_size(parse_dtype(dtype, &es), N, H);
}

void pack_w_hh_py(const std::string& dtype, py::object w_hh, py::object out) {
  int64_t es;
  const DType dt = parse_dtype(dtype, &es);
  const Arg aw = parse("w_hh", w_hh);
  if (aw.shape.size() != 3 || aw.shape[1] % 4 != 0 || aw.shape[1] != 4 * aw.shape[2] || aw.shape[2] < 1)
    throw py::value_error("w_hh: expected shape [N, 4H, H], got " + fmt(aw.shape));
  const int64_t N = aw.shape[0], H = aw.shape[2];
  const View vw = check("w_hh", aw, {N, 4 * H, H}, {"N", "4H", "H"}, es);
  const View vo = check("out", parse("out", out), {packed_w_hh_size(dt, N, H)}, {"packed_w_hh_size(N, H)"}, es);
  if (reinterpret_cast<uintptr_t>(vo.ptr) % 64 != 0) throw py::value_error("out: expected a 64-byte aligned buffer");
  py::gil_scoped_release nogil;
  pack_w_hh(vw, N, H, vo.ptr, dt);
}

void backward(const std::string& dtype, py::object dy, py::object dh_n, py::object dc_n, py::object w_hh,
              py::object c0, py::object lengths, py::object gates, py::object cs, py::object dgx,
              py::object dh0, py::object dc0, int num_threads) {
  int64_t es;
  const DType dt = parse_dtype(dtype, &es);
  const Arg ag = parse("gates", gates);
  if (ag.shape.size() != 4 || ag.shape[3] % 4 != 0 || ag.shape[3] == 0 ||
      (ag.shape[2] != 1 && ag.shape[2] != 2) || ag.shape[0] < 1 || ag.shape[1] < 1)
    throw py::value_error("gates: expected shape [T>=1, B>=1, N in (1, 2), 4H>=4], got " + fmt(ag.shape));
  BwdParams p;
  p.T = ag.shape[0], p.B = ag.shape[1], p.N = ag.shape[2], p.H = ag.shape[3] / 4;
  const int64_t T = p.T, B = p.B, N = p.N, H = p.H;
  p.gates = check("gates", ag, {T, B, N, 4 * H}, {"T", "B", "N", "4H"}, es);
  p.cs = check("cs", parse("cs", cs), {T, B, N, H}, {"T", "B", "N", "H"}, es);
  p.dy = check("dy", parse("dy", dy), {T, B, N, H}, {"T", "B", "N", "H"}, es);
  p.dh_n = check("dh_n", parse("dh_n", dh_n), {N, B, H}, {"N", "B", "H"}, es);
  p.dc_n = check("dc_n", parse("dc_n", dc_n), {N, B, H}, {"N", "B", "H"}, es);
  p.w_hh = check("w_hh", parse("w_hh", w_hh), {N, 4 * H, H}, {"N", "4H", "H"}, es);
  p.c0 = check("c0", parse("c0", c0), {N, B, H}, {"N", "B", "H"}, es);
  p.lengths = check_lengths(lengths, T, B);
  p.dgx = check("dgx", parse("dgx", dgx), {T, B, N, 4 * H}, {"T", "B", "N", "4H"}, es);
  p.dh0 = check("dh0", parse("dh0", dh0), {N, B, H}, {"N", "B", "H"}, es);
  p.dc0 = check("dc0", parse("dc0", dc0), {N, B, H}, {"N", "B", "H"}, es);
  const int nt = check_threads(num_threads);
  py::gil_scoped_release nogil;
  run_backward(p, dt, nt);
}

const void* check_packed(const char* name, const py::object& obj, int64_t N, int64_t K, DType dt, int64_t es);

void linear(const std::string& dtype, py::object x, py::object w, py::object bias, py::object out,
            int num_threads, py::object wpacked) {
  int64_t es;
  const DType dt = parse_dtype(dtype, &es);
  const Arg ax = parse("x", x), aw = parse("w", w);
  if (ax.shape.size() != 2 || ax.shape[0] < 1 || ax.shape[1] < 1)
    throw py::value_error("x: expected shape [M>=1, K>=1], got " + fmt(ax.shape));
  if (aw.shape.size() != 2 || aw.shape[0] < 1)
    throw py::value_error("w: expected shape [N>=1, K], got " + fmt(aw.shape));
  GemmParams p;
  p.M = ax.shape[0], p.K = ax.shape[1], p.N = aw.shape[0];
  const View vx = check("x", ax, {p.M, p.K}, {"M", "K"}, es);
  const View vw = check("w", aw, {p.N, p.K}, {"N", "K"}, es);
  p.a = vx.ptr, p.lda = vx.stride[0], p.ldk = 1;
  p.bkind = BKind::w_rows, p.b = vw.ptr, p.ldb = vw.stride[0];
  if (!bias.is_none()) p.bias = check("bias", parse("bias", bias), {p.N}, {"N"}, es).ptr;
  if (!wpacked.is_none()) p.bpacked = check_packed("wpacked", wpacked, p.N, p.K, dt, es);
  const View vo = check("out", parse("out", out), {p.M, p.N}, {"M", "N"}, es);
  p.c = vo.ptr, p.ldc = vo.stride[0];
  const int nt = check_threads(num_threads);
  py::gil_scoped_release nogil;
  run_gemm({p}, dt, nt);
}

// A buffer for W [N, K] packed by pack_w_rows in the active build: 1-d,
// packed_size(N, K) elements, 64-byte aligned.
int64_t packed_size(const std::string& dtype, int64_t N, int64_t K) {
  int64_t es;
  const int64_t nr = panel_cols(parse_dtype(dtype, &es));
  return (N + nr - 1) / nr * nr * K;
}

const void* check_packed(const char* name, const py::object& obj, int64_t N, int64_t K, DType dt, int64_t es) {
  const Arg a = parse(name, obj);
  const int64_t nr = panel_cols(dt), size = (N + nr - 1) / nr * nr * K;
  const View v = check(name, a, {size}, {"packed_size(N, K)"}, es);
  if (reinterpret_cast<uintptr_t>(v.ptr) % 64 != 0)
    throw py::value_error(std::string(name) + ": expected a 64-byte aligned buffer");
  return v.ptr;
}

void pack_w(const std::string& dtype, py::object w, py::object out) {
  int64_t es;
  const DType dt = parse_dtype(dtype, &es);
  const Arg aw = parse("w", w);
  if (aw.shape.size() != 2 || aw.shape[0] < 1 || aw.shape[1] < 1)
    throw py::value_error("w: expected shape [N>=1, K>=1], got " + fmt(aw.shape));
  const View vw = check("w", aw, {aw.shape[0], aw.shape[1]}, {"N", "K"}, es);
  void* dst = const_cast<void*>(check_packed("out", out, aw.shape[0], aw.shape[1], dt, es));
  py::gil_scoped_release nogil;
  pack_w_rows(vw.ptr, aw.shape[0], aw.shape[1], vw.stride[0], dst, dt);
}

// out [M, N] = a [M, K] @ b [K, N], or a^T @ b with a [K, M] (trans_a): the
// backward GEMMs of the input projection (dx = dG W_ih, dW_ih = dG^T x).
void matmul(const std::string& dtype, py::object a, py::object b, py::object out, bool trans_a,
            int num_threads) {
  int64_t es;
  const DType dt = parse_dtype(dtype, &es);
  const Arg aa = parse("a", a), ab = parse("b", b);
  if (aa.shape.size() != 2 || ab.shape.size() != 2)
    throw py::value_error("a, b: expected 2-d tensors, got " + fmt(aa.shape) + " and " + fmt(ab.shape));
  GemmParams p;
  p.M = trans_a ? aa.shape[1] : aa.shape[0], p.K = trans_a ? aa.shape[0] : aa.shape[1], p.N = ab.shape[1];
  const View va = trans_a ? check("a", aa, {p.K, p.M}, {"K", "M"}, es) : check("a", aa, {p.M, p.K}, {"M", "K"}, es);
  const View vb = check("b", ab, {p.K, p.N}, {"K", "N"}, es);
  p.a = va.ptr;
  p.lda = trans_a ? 1 : va.stride[0];
  p.ldk = trans_a ? va.stride[0] : 1;
  p.bkind = BKind::k_rows, p.b = vb.ptr, p.ldb = vb.stride[0];
  const View vo = check("out", parse("out", out), {p.M, p.N}, {"M", "N"}, es);
  p.c = vo.ptr, p.ldc = vo.stride[0];
  const int nt = check_threads(num_threads);
  py::gil_scoped_release nogil;
  run_gemm({p}, dt, nt);
}

// dw [N, 4H, H] = for each direction n, sum over (t, b) of dgx[t, b, n]^T h_{t-1}[b]
// (ops/recurrence.py says which h_{t-1}); dgx must be contiguous.
void recurrent_weight_grad(const std::string& dtype, py::object dgx, py::object y, py::object h0,
                           py::object lengths, py::object dw, int num_threads) {
  int64_t es;
  const DType dt = parse_dtype(dtype, &es);
  const Arg ag = parse("dgx", dgx);
  if (ag.shape.size() != 4 || ag.shape[3] % 4 != 0 || ag.shape[3] == 0 || (ag.shape[2] != 1 && ag.shape[2] != 2))
    throw py::value_error("dgx: expected shape [T, B, N in (1, 2), 4H], got " + fmt(ag.shape));
  const int64_t T = ag.shape[0], B = ag.shape[1], N = ag.shape[2], H = ag.shape[3] / 4;
  const View vg = check("dgx", ag, {T, B, N, 4 * H}, {"T", "B", "N", "4H"}, es);
  if (vg.stride[0] != B * N * 4 * H || vg.stride[1] != N * 4 * H || vg.stride[2] != 4 * H)
    throw py::value_error("dgx: expected a contiguous tensor, got strides " + fmt(ag.strides));
  const View vy = check("y", parse("y", y), {T, B, N, H}, {"T", "B", "N", "H"}, es);
  const View vh = check("h0", parse("h0", h0), {N, B, H}, {"N", "B", "H"}, es);
  const View vw = check("dw", parse("dw", dw), {N, 4 * H, H}, {"N", "4H", "H"}, es);
  const int64_t* lens = check_lengths(lengths, T, B);
  std::vector<GemmParams> problems(N);
  for (int64_t n = 0; n < N; ++n) {
    GemmParams& p = problems[n];
    p.M = 4 * H, p.N = H, p.K = T * B;
    p.a = static_cast<const char*>(vg.ptr) + es * n * 4 * H, p.lda = 1, p.ldk = N * 4 * H;
    p.bkind = BKind::prev_hidden, p.y = vy, p.h0 = vh, p.lengths = lens, p.T = T, p.batch = B, p.dir = n;
    p.c = static_cast<char*>(vw.ptr) + es * n * vw.stride[0], p.ldc = vw.stride[1];
  }
  const int nt = check_threads(num_threads);
  py::gil_scoped_release nogil;
  run_gemm(problems, dt, nt);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "bilstm_fast C++ CPU recurrence kernels (raw pointers; see bilstm_fast/ops/cpu_lstm.py)";
  m.def("forward", &forward,
        "LSTM recurrence forward. Tensors are (data_ptr, shape, strides) tuples:\n"
        "gx [T,B,N,4H], w_hh [N,4H,H], h0/c0 [N,B,H], lengths [B] int64 or None;\n"
        "outputs y [T,B,N,H], h_n/c_n [N,B,H], gates [T,B,N,4H] and cs [T,B,N,H] (or both None).",
        py::arg("dtype"), py::arg("gx"), py::arg("w_hh"), py::arg("h0"), py::arg("c0"),
        py::arg("lengths"), py::arg("y"), py::arg("h_n"), py::arg("c_n"), py::arg("gates"),
        py::arg("cs"), py::arg("num_threads"), py::arg("w_hh_packed") = py::none());
  m.def("packed_w_hh_size", &packed_w_hh_size_py,
        "Elements of w_hh [N, 4H, H] packed for forward's w_hh_packed in the active build.",
        py::arg("dtype"), py::arg("N"), py::arg("H"));
  m.def("pack_w_hh", &pack_w_hh_py,
        "out [packed_w_hh_size(N, H)] (64-byte aligned) = w_hh [N, 4H, H] packed for forward's w_hh_packed.",
        py::arg("dtype"), py::arg("w_hh"), py::arg("out"));
  m.def("backward", &backward,
        "LSTM recurrence backward: dy [T,B,N,H], dh_n/dc_n [N,B,H], w_hh [N,4H,H], c0 [N,B,H],\n"
        "lengths [B] or None, gates [T,B,N,4H], cs [T,B,N,H]; outputs dgx [T,B,N,4H], dh0/dc0 [N,B,H].",
        py::arg("dtype"), py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("w_hh"),
        py::arg("c0"), py::arg("lengths"), py::arg("gates"), py::arg("cs"), py::arg("dgx"),
        py::arg("dh0"), py::arg("dc0"), py::arg("num_threads"));
  m.def("linear", &linear,
        "out [M,N] = x [M,K] @ w [N,K]^T + bias [N] (bias may be None): the input projection.\n"
        "Tensors are (data_ptr, shape, strides) tuples; bias contiguous.",
        py::arg("dtype"), py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("out"),
        py::arg("num_threads"), py::arg("wpacked") = py::none());
  m.def("packed_size", &packed_size,
        "Elements of W [N, K] packed for linear's wpacked in the active build (its panel width).",
        py::arg("dtype"), py::arg("N"), py::arg("K"));
  m.def("pack_w", &pack_w, "out [packed_size(N, K)] (64-byte aligned) = w [N, K] packed for linear's wpacked.",
        py::arg("dtype"), py::arg("w"), py::arg("out"));
  m.def("matmul", &matmul,
        "out [M,N] = a [M,K] @ b [K,N], or a^T @ b for a [K,M] with trans_a (the projection's backward).",
        py::arg("dtype"), py::arg("a"), py::arg("b"), py::arg("out"), py::arg("trans_a"), py::arg("num_threads"));
  m.def("recurrent_weight_grad", &recurrent_weight_grad,
        "dw [N,4H,H] = sum over (t, b) of dgx[t,b,n]^T h_{t-1}[b] per direction n: dgx [T,B,N,4H] contiguous,\n"
        "y [T,B,N,H], h0 [N,B,H], lengths [B] or None.",
        py::arg("dtype"), py::arg("dgx"), py::arg("y"), py::arg("h0"), py::arg("lengths"), py::arg("dw"),
        py::arg("num_threads"));
  m.def("isa", [] { return std::string(active_kernels().isa); },
        "The kernel build in use: 'avx512', 'avx2' or 'baseline' (SSE2).");
  m.def("supported_isas", &supported_isas, "Kernel builds this CPU can run, fastest first.");
  m.def("set_isa", [](const std::string& name) {
    try { set_isa(name); } catch (const std::invalid_argument& e) { throw py::value_error(e.what()); }
  }, py::arg("name"), "Force a kernel build (tests, benchmarks).");
}
