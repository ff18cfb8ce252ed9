// pybind11 module bilstm_fast._cpu: the CPU recurrence kernels and the GEMMs around them.
//
// Takes torch tensors (as plain Python objects: no torch headers, no torch
// library, one build for every torch version), checks each one once at the
// boundary (csrc/common/tensor_arg.h), fills the argument struct, releases
// the GIL and runs the kernels. Python (bilstm_fast/ops/cpu_lstm.py) only
// allocates the outputs and calls (ops/cpu_gemm.py for the GEMMs).
//
// Legend (docs/design.md §0): T steps, B batch, N directions (1 or 2), H hidden size, P
// proj_size (or H without projection), X the input dtype (float32, float64, float16,
// bfloat16), A the accumulation / workspace dtype (float64 for float64, else float32).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "common/tensor_arg.h"
#include "lstm_driver.h"

namespace py = pybind11;
using namespace bilstm_cpu;
using bilstm::Dim;
using bilstm::kCpu;

namespace {

// X from the first sequence tensor of the recurrence: float32, float64, float16, bfloat16.
DType float_dtype(const bilstm::TensorArg& a) {
  if (a.dtype != DType::f32 && a.dtype != DType::f64 && a.dtype != DType::f16 && a.dtype != DType::bf16)
    throw py::value_error(std::string(a.name) +
                          ": the cpu kernels run torch.float32, torch.float64, torch.float16 and "
                          "torch.bfloat16, got " + bilstm::dtype_name(a.dtype));
  return a.dtype;
}

// A = acc_dtype(X): the workspace (gates, cells) and all accumulation.
DType acc_dtype(DType x) { return x == DType::f64 ? DType::f64 : DType::f32; }

// The GEMMs' dtypes: A (of the A operand, bias and C) from `a`, float32 or
// float64; B (`b`) in A, or in float16 / bfloat16 when A is float32 (B is
// converted while packed; cpu_gemm.py passes fp16/bf16 layers' other operands
// as float32). Returns B's dtype, the kernel's index.
DType gemm_dtype(const bilstm::TensorArg& a, const bilstm::TensorArg& b) {
  if (a.dtype != DType::f32 && a.dtype != DType::f64)
    throw py::value_error(std::string(a.name) + ": the cpu GEMMs take torch.float32 and torch.float64, got " +
                          bilstm::dtype_name(a.dtype));
  if (b.dtype == a.dtype || (a.dtype == DType::f32 && (b.dtype == DType::f16 || b.dtype == DType::bf16)))
    return b.dtype;
  throw py::value_error(std::string(b.name) + ": expected dtype " + bilstm::dtype_name(a.dtype) +
                        (a.dtype == DType::f32 ? " (or torch.float16 / torch.bfloat16)" : "") + ", got " +
                        bilstm::dtype_name(b.dtype));
}

// P from w_hr [N, P, H] (proj_size), or H when w_hr is None: the features of h.
int64_t proj_features(py::handle w_hr, int64_t H) {
  if (w_hr.is_none()) return H;
  const int64_t P = bilstm::size_of(bilstm::read("w_hr", w_hr), 3, 1, "[N, P, H]");
  if (P < 1) throw py::value_error("w_hr: expected [N, P>=1, H], got P=" + std::to_string(P));
  return P;
}

// The projected kernels run float32 and float64 (cpu_lstm.unsupported_reason).
void check_projection_dtype(py::handle w_hr, DType X) {
  if (!w_hr.is_none() && X != DType::f32 && X != DType::f64)
    throw py::value_error(std::string("w_hr: proj_size on the cpu kernels runs torch.float32 and torch.float64, got ") +
                          bilstm::dtype_name(X));
}

int check_threads(int n) {
  if (n < 1) throw py::value_error("num_threads: expected >= 1, got " + std::to_string(n));
  return n;
}

void forward(py::handle gx, py::handle w_hh, py::handle h0, py::handle c0, py::handle lengths,
             py::handle y, py::handle h_n, py::handle c_n, py::handle gates, py::handle cells, int num_threads,
             py::handle w_hr) {
  const bilstm::TensorArg agx = bilstm::read("gx", gx);
  FwdParams p;
  bilstm::lstm_sizes(agx, p.T, p.B, p.N, p.H);
  const int64_t T = p.T, B = p.B, N = p.N, H = p.H, P = p.P = proj_features(w_hr, H);
  const char* Pl = w_hr.is_none() ? "H" : "P";
  // X from w_hh; gx is in A (float32 for fp16 / bf16 models): the input
  // projection's float32 sums go to the cell update unrounded, with no
  // conversion pass between the GEMM and the recurrence (cpu_lstm.py).
  const DType X = p.dtype = float_dtype(bilstm::read("w_hh", w_hh));
  if (agx.dtype != acc_dtype(X))
    throw py::value_error(std::string("gx: expected dtype ") + bilstm::dtype_name(acc_dtype(X)) +
                          " (the accumulation dtype of w_hh's " + bilstm::dtype_name(X) + "), got " +
                          bilstm::dtype_name(agx.dtype));
  check_projection_dtype(w_hr, X);
  p.gx = bilstm::expect(agx, acc_dtype(X), kCpu, {{"T", T}, {"B", B}, {"N", N}, {"4H", 4 * H}});
  p.w_hh = bilstm::expect(bilstm::read("w_hh", w_hh), X, kCpu, {{"N", N}, {"4H", 4 * H}, {Pl, P}});
  p.w_hr = bilstm::expect_optional("w_hr", w_hr, X, kCpu, {{"N", N}, {"P", P}, {"H", H}});
  p.h0 = bilstm::expect(bilstm::read("h0", h0), X, kCpu, {{"N", N}, {"B", B}, {Pl, P}});
  p.c0 = bilstm::expect(bilstm::read("c0", c0), X, kCpu, {{"N", N}, {"B", B}, {"H", H}});
  p.lengths = bilstm::expect_lengths(lengths, kCpu, B, T);
  p.y = bilstm::expect(bilstm::read("y", y), X, kCpu, {{"T", T}, {"B", B}, {"N", N}, {Pl, P}});
  p.h_n = bilstm::expect(bilstm::read("h_n", h_n), X, kCpu, {{"N", N}, {"B", B}, {Pl, P}});
  p.c_n = bilstm::expect(bilstm::read("c_n", c_n), X, kCpu, {{"N", N}, {"B", B}, {"H", H}});
  if (gates.is_none() != cells.is_none())
    throw py::value_error("gates, cells: pass both workspace tensors or neither");
  p.gates = bilstm::expect_optional("gates", gates, acc_dtype(X), kCpu, {{"T", T}, {"B", B}, {"N", N}, {"4H", 4 * H}});
  p.cells = bilstm::expect_optional("cells", cells, acc_dtype(X), kCpu, {{"T", T}, {"B", B}, {"N", N}, {"H", H}});
  const int nt = check_threads(num_threads);
  py::gil_scoped_release nogil;
  run_forward(p, nt);
}

void backward(py::handle dy, py::handle dh_n, py::handle dc_n, py::handle w_hh, py::handle c0,
              py::handle lengths, py::handle gates, py::handle cells, py::handle dgx, py::handle dh0,
              py::handle dc0, int num_threads, py::handle w_hr, py::handle dw_hr) {
  const bilstm::TensorArg ag = bilstm::read("gates", gates), ady = bilstm::read("dy", dy);
  BwdParams p;
  bilstm::lstm_sizes(ag, p.T, p.B, p.N, p.H);
  const int64_t T = p.T, B = p.B, N = p.N, H = p.H, P = p.P = proj_features(w_hr, H);
  const char* Pl = w_hr.is_none() ? "H" : "P";
  const DType X = p.dtype = float_dtype(ady);
  check_projection_dtype(w_hr, X);
  p.gates = bilstm::expect(ag, acc_dtype(X), kCpu, {{"T", T}, {"B", B}, {"N", N}, {"4H", 4 * H}});
  p.cells = bilstm::expect(bilstm::read("cells", cells), acc_dtype(X), kCpu, {{"T", T}, {"B", B}, {"N", N}, {"H", H}});
  p.dy = bilstm::expect(ady, X, kCpu, {{"T", T}, {"B", B}, {"N", N}, {Pl, P}});
  p.dh_n = bilstm::expect(bilstm::read("dh_n", dh_n), X, kCpu, {{"N", N}, {"B", B}, {Pl, P}});
  p.dc_n = bilstm::expect(bilstm::read("dc_n", dc_n), X, kCpu, {{"N", N}, {"B", B}, {"H", H}});
  p.w_hh = bilstm::expect(bilstm::read("w_hh", w_hh), X, kCpu, {{"N", N}, {"4H", 4 * H}, {Pl, P}});
  p.w_hr = bilstm::expect_optional("w_hr", w_hr, X, kCpu, {{"N", N}, {"P", P}, {"H", H}});
  if (w_hr.is_none() != dw_hr.is_none())
    throw py::value_error("w_hr, dw_hr: pass both (a projection) or neither");
  p.dw_hr = bilstm::expect_optional("dw_hr", dw_hr, X, kCpu, {{"N", N}, {"P", P}, {"H", H}});
  p.c0 = bilstm::expect(bilstm::read("c0", c0), X, kCpu, {{"N", N}, {"B", B}, {"H", H}});
  p.lengths = bilstm::expect_lengths(lengths, kCpu, B, T);
  p.dgx = bilstm::expect(bilstm::read("dgx", dgx), X, kCpu, {{"T", T}, {"B", B}, {"N", N}, {"4H", 4 * H}});
  p.dh0 = bilstm::expect(bilstm::read("dh0", dh0), X, kCpu, {{"N", N}, {"B", B}, {Pl, P}});
  p.dc0 = bilstm::expect(bilstm::read("dc0", dc0), X, kCpu, {{"N", N}, {"B", B}, {"H", H}});
  const int nt = check_threads(num_threads);
  py::gil_scoped_release nogil;
  run_backward(p, nt);
}

// out [M, G] = x [M, D] @ w [G, D]^T + bias [G]: the input projection of the
// layer op on the recurrence's micro-GEMM (bilstm_fast/ops/cpu_gemm.py says
// why not torch's). x and w: last dim dense; bias and out contiguous.
void linear(py::handle x, py::handle w, py::handle bias, py::handle out, int num_threads) {
  const bilstm::TensorArg ax = bilstm::read("x", x), aw = bilstm::read("w", w);
  // bf16 x with bf16 w: the dot-product kernels, C and bias in float32.
  const bool a_bf16 = ax.dtype == DType::bf16;
  if (a_bf16 && !(aw.dtype == DType::bf16 && active_kernels().bf16_dot()))
    throw py::value_error("x: torch.bfloat16 x needs torch.bfloat16 w and a CPU with AVX512-BF16 "
                          "(cpu_gemm.py passes x in float32 otherwise)");
  const DType X = a_bf16 ? DType::f32 : ax.dtype;
  const DType WB = a_bf16 ? DType::bf16 : gemm_dtype(ax, aw);
  GemmParams p;
  p.M = bilstm::size_of(ax, 2, 0, "[M, D]"), p.K = ax.shape[1];
  p.N = bilstm::size_of(aw, 2, 0, "[G, D]");
  const View vx = bilstm::expect(ax, ax.dtype, kCpu, {{"M", p.M}, {"D", p.K}});
  const View vw = bilstm::expect(aw, WB, kCpu, {{"G", p.N}, {"D", p.K}});
  if (a_bf16 && (p.K % 2 || vx.stride[0] % 2 || vw.stride[0] % 2 || vx.stride[1] != 1 || vw.stride[1] != 1 ||
                 reinterpret_cast<uintptr_t>(vx.ptr) % 4 || reinterpret_cast<uintptr_t>(vw.ptr) % 4))
    throw py::value_error("x, w: the bf16 dot products take an even D, rows with unit stride, even row "
                          "strides and 4-byte aligned data, got D=" + std::to_string(p.K));
  p.a_bf16 = a_bf16;
  p.a = vx.ptr, p.lda = vx.stride[0], p.ldk = 1;
  p.bkind = BKind::w_rows, p.b = vw.ptr, p.ldb = vw.stride[0];
  p.bias = bilstm::expect_optional("bias", bias, X, kCpu, {{"G", p.N}}).ptr;
  const View vo = bilstm::expect(bilstm::read("out", out), X, kCpu, {{"M", p.M}, {"G", p.N}},
                                 bilstm::Layout::kContiguous);
  p.c = vo.ptr, p.ldc = vo.stride[0];
  const int nt = check_threads(num_threads);
  py::gil_scoped_release nogil;
  run_gemm({p}, WB, nt);
}

// out [M, N] = a [M, K] @ b [K, N], or a^T @ b with a [K, M] (trans_a): the
// backward GEMMs of the input projection (dx = dG W_ih, dW_ih = dG^T x).
void matmul(py::handle a, py::handle b, py::handle out, bool trans_a, int num_threads) {
  const bilstm::TensorArg aa = bilstm::read("a", a), ab = bilstm::read("b", b);
  const DType X = aa.dtype, WB = gemm_dtype(aa, ab);
  GemmParams p;
  const int64_t r0 = bilstm::size_of(aa, 2, 0, trans_a ? "[K, M]" : "[M, K]"), r1 = aa.shape[1];
  p.M = trans_a ? r1 : r0, p.K = trans_a ? r0 : r1;
  p.N = bilstm::size_of(ab, 2, 1, "[K, N]");
  // a^T is read through a's strides: a needs no dense dimension of its own
  // beyond the last (checked), which is the K stride of a^T.
  const View va = trans_a ? bilstm::expect(aa, X, kCpu, {{"K", p.K}, {"M", p.M}})
                          : bilstm::expect(aa, X, kCpu, {{"M", p.M}, {"K", p.K}});
  const View vb = bilstm::expect(ab, WB, kCpu, {{"K", p.K}, {"N", p.N}});
  p.a = va.ptr;
  p.lda = trans_a ? 1 : va.stride[0];
  p.ldk = trans_a ? va.stride[0] : 1;
  p.bkind = BKind::k_rows, p.b = vb.ptr, p.ldb = vb.stride[0];
  const View vo = bilstm::expect(bilstm::read("out", out), X, kCpu, {{"M", p.M}, {"N", p.N}},
                                 bilstm::Layout::kContiguous);
  p.c = vo.ptr, p.ldc = vo.stride[0];
  const int nt = check_threads(num_threads);
  py::gil_scoped_release nogil;
  run_gemm({p}, WB, nt);
}

// dw [N, 4H, P] = for each direction n, sum over (t, b) of dgx[t, b, n]^T h_{t-1}[b]
// (ops/recurrence.py's _recurrent_weight_grad says which h_{t-1}); dgx contiguous.
// dgx and dw in A (float32 / float64); y and h0 in A, or fp16 / bf16 with A = float32.
// P = y's last dimension (proj_size, or H).
void recurrent_weight_grad(py::handle dgx, py::handle y, py::handle h0, py::handle lengths, py::handle dw,
                           int num_threads) {
  const bilstm::TensorArg ag = bilstm::read("dgx", dgx), ay = bilstm::read("y", y);
  int64_t T, B, N, H;
  bilstm::lstm_sizes(ag, T, B, N, H);
  const DType X = ag.dtype, WB = gemm_dtype(ag, ay);
  const int64_t es = bilstm::dtype_size(X);
  const View vg = bilstm::expect(ag, X, kCpu, {{"T", T}, {"B", B}, {"N", N}, {"4H", 4 * H}},
                                 bilstm::Layout::kContiguous);
  const int64_t P = bilstm::size_of(ay, 4, 3, "[T, B, N, P]");
  const View vy = bilstm::expect(ay, WB, kCpu, {{"T", T}, {"B", B}, {"N", N}, {"P", P}});
  const View vh = bilstm::expect(bilstm::read("h0", h0), WB, kCpu, {{"N", N}, {"B", B}, {"P", P}});
  const View vw = bilstm::expect(bilstm::read("dw", dw), X, kCpu, {{"N", N}, {"4H", 4 * H}, {"P", P}});
  const int64_t* lens = bilstm::expect_lengths(lengths, kCpu, B, T);
  std::vector<GemmParams> problems(N);
  for (int64_t n = 0; n < N; ++n) {
    GemmParams& p = problems[n];
    p.M = 4 * H, p.N = P, p.K = T * B;
    p.a = static_cast<const char*>(vg.ptr) + es * n * 4 * H, p.lda = 1, p.ldk = N * 4 * H;
    p.bkind = BKind::prev_hidden, p.y = vy, p.h0 = vh, p.lengths = lens, p.T = T, p.batch = B, p.dir = n;
    p.c = static_cast<char*>(vw.ptr) + es * n * vw.stride[0], p.ldc = vw.stride[1];
  }
  const int nt = check_threads(num_threads);
  py::gil_scoped_release nogil;
  run_gemm(problems, WB, nt);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "bilstm_fast C++ CPU kernels: the recurrence and its GEMMs (takes torch tensors; see bilstm_fast/ops/cpu_lstm.py, cpu_gemm.py)";
  m.def("forward", &forward,
        "LSTM recurrence forward on CPU tensors (X = float32 / float64 / float16 / bfloat16; the last dim of\n"
        "each dense; gates/cells in A = float32, float64 for float64):\n"
        "gx [T,B,N,4H], w_hh [N,4H,P], h0 [N,B,P], c0 [N,B,H], lengths [B] int64 (1..T) or None;\n"
        "outputs (written) y [T,B,N,P], h_n [N,B,P], c_n [N,B,H], gates [T,B,N,4H] and cells [T,B,N,H]\n"
        "(or both None); w_hr [N,P,H] (proj_size; float32 / float64) or None (then P = H).",
        py::arg("gx"), py::arg("w_hh"), py::arg("h0"), py::arg("c0"), py::arg("lengths"), py::arg("y"),
        py::arg("h_n"), py::arg("c_n"), py::arg("gates"), py::arg("cells"), py::arg("num_threads"),
        py::arg("w_hr") = py::none());
  m.def("backward", &backward,
        "LSTM recurrence backward: dy [T,B,N,P], dh_n [N,B,P], dc_n [N,B,H], w_hh [N,4H,P], c0 [N,B,H],\n"
        "lengths [B] or None, gates [T,B,N,4H], cells [T,B,N,H]; outputs dgx [T,B,N,4H], dh0 [N,B,P],\n"
        "dc0 [N,B,H]; w_hr [N,P,H] and the output dw_hr [N,P,H] (proj_size), or both None (P = H).",
        py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("w_hh"), py::arg("c0"), py::arg("lengths"),
        py::arg("gates"), py::arg("cells"), py::arg("dgx"), py::arg("dh0"), py::arg("dc0"), py::arg("num_threads"),
        py::arg("w_hr") = py::none(), py::arg("dw_hr") = py::none());
  m.def("linear", &linear,
        "out [M,G] = x [M,D] @ w [G,D]^T + bias [G] (bias may be None): the input projection.",
        py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("out"), py::arg("num_threads"));
  m.def("matmul", &matmul,
        "out [M,N] = a [M,K] @ b [K,N], or a^T @ b for a [K,M] with trans_a (the projection's backward).",
        py::arg("a"), py::arg("b"), py::arg("out"), py::arg("trans_a"), py::arg("num_threads"));
  m.def("recurrent_weight_grad", &recurrent_weight_grad,
        "dw [N,4H,P] = sum over (t, b) of dgx[t,b,n]^T h_{t-1}[b] per direction n: dgx [T,B,N,4H] contiguous,\n"
        "y [T,B,N,P], h0 [N,B,P], lengths [B] or None (P = proj_size, or H).",
        py::arg("dgx"), py::arg("y"), py::arg("h0"), py::arg("lengths"), py::arg("dw"), py::arg("num_threads"));
  m.attr("dtype_codes") = bilstm::dtype_codes();
  m.def("isa", [] { return std::string(active_kernels().isa); },
        "The kernel build in use: 'avx512', 'avx2' or 'baseline' (SSE2).");
  m.def("supported_isas", &supported_isas, "Kernel builds this CPU can run, fastest first.");
  m.def("bf16_dot", [] { return active_kernels().bf16_dot(); },
        "Whether the active build runs bf16 GEMMs on AVX512-BF16 dot products (then linear takes bf16 x).");
  m.def("set_bf16_dot", [](const std::string& mode) {
    try { set_bf16_dot(mode); } catch (const std::invalid_argument& e) { throw py::value_error(e.what()); }
  }, py::arg("mode"),
        "'auto' (default: the dot products where they beat the float FMAs on this CPU, measured once),\n"
        "'on' (needs AVX512-BF16) or 'off': force the bf16 GEMM path (tests, benchmarks).");
  m.def("set_isa", [](const std::string& name) {
    try { set_isa(name); } catch (const std::invalid_argument& e) { throw py::value_error(e.what()); }
  }, py::arg("name"), "Force a kernel build (tests, benchmarks).");
}
