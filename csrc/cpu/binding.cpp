// pybind11 module bilstm_fast._cpu: the CPU recurrence kernels.
//
// Takes torch tensors (as plain Python objects: no torch headers, no torch
// library, one build for every torch version), checks each one once at the
// boundary (csrc/common/tensor_arg.h), fills the argument struct, releases
// the GIL and runs the kernels. Python (bilstm_fast/ops/cpu_lstm.py) only
// allocates the outputs and calls.
//
// Legend (docs/design.md §0): T steps, B batch, N directions (1 or 2), H hidden size, X the
// input dtype (float32 or float64, also the workspace dtype here).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "common/tensor_arg.h"
#include "lstm_driver.h"

namespace py = pybind11;
using namespace bilstm_cpu;
using bilstm::Dim;
using bilstm::kCpu;

namespace {

// X from the first sequence tensor; the cpu kernels run float32 and float64.
DType float_dtype(const bilstm::TensorArg& a) {
  if (a.dtype != DType::f32 && a.dtype != DType::f64)
    throw py::value_error(std::string(a.name) + ": the cpu kernels run torch.float32 and torch.float64, got " +
                          bilstm::dtype_name(a.dtype));
  return a.dtype;
}

int check_threads(int n) {
  if (n < 1) throw py::value_error("num_threads: expected >= 1, got " + std::to_string(n));
  return n;
}

void forward(py::handle gx, py::handle w_hh, py::handle h0, py::handle c0, py::handle lengths,
             py::handle y, py::handle h_n, py::handle c_n, py::handle gates, py::handle cells, int num_threads) {
  const bilstm::TensorArg agx = bilstm::read("gx", gx);
  FwdParams p;
  bilstm::lstm_sizes(agx, p.T, p.B, p.N, p.H);
  const int64_t T = p.T, B = p.B, N = p.N, H = p.H;
  const DType X = p.dtype = float_dtype(agx);
  p.gx = bilstm::expect(agx, X, kCpu, {{"T", T}, {"B", B}, {"N", N}, {"4H", 4 * H}});
  p.w_hh = bilstm::expect(bilstm::read("w_hh", w_hh), X, kCpu, {{"N", N}, {"4H", 4 * H}, {"H", H}});
  p.h0 = bilstm::expect(bilstm::read("h0", h0), X, kCpu, {{"N", N}, {"B", B}, {"H", H}});
  p.c0 = bilstm::expect(bilstm::read("c0", c0), X, kCpu, {{"N", N}, {"B", B}, {"H", H}});
  p.lengths = bilstm::expect_lengths(lengths, kCpu, B, T);
  p.y = bilstm::expect(bilstm::read("y", y), X, kCpu, {{"T", T}, {"B", B}, {"N", N}, {"H", H}});
  p.h_n = bilstm::expect(bilstm::read("h_n", h_n), X, kCpu, {{"N", N}, {"B", B}, {"H", H}});
  p.c_n = bilstm::expect(bilstm::read("c_n", c_n), X, kCpu, {{"N", N}, {"B", B}, {"H", H}});
  if (gates.is_none() != cells.is_none())
    throw py::value_error("gates, cells: pass both workspace tensors or neither");
  p.gates = bilstm::expect_optional("gates", gates, X, kCpu, {{"T", T}, {"B", B}, {"N", N}, {"4H", 4 * H}});
  p.cells = bilstm::expect_optional("cells", cells, X, kCpu, {{"T", T}, {"B", B}, {"N", N}, {"H", H}});
  const int nt = check_threads(num_threads);
  py::gil_scoped_release nogil;
  run_forward(p, nt);
}

void backward(py::handle dy, py::handle dh_n, py::handle dc_n, py::handle w_hh, py::handle c0,
              py::handle lengths, py::handle gates, py::handle cells, py::handle dgx, py::handle dh0,
              py::handle dc0, int num_threads) {
  const bilstm::TensorArg ag = bilstm::read("gates", gates);
  BwdParams p;
  bilstm::lstm_sizes(ag, p.T, p.B, p.N, p.H);
  const int64_t T = p.T, B = p.B, N = p.N, H = p.H;
  const DType X = p.dtype = float_dtype(ag);
  p.gates = bilstm::expect(ag, X, kCpu, {{"T", T}, {"B", B}, {"N", N}, {"4H", 4 * H}});
  p.cells = bilstm::expect(bilstm::read("cells", cells), X, kCpu, {{"T", T}, {"B", B}, {"N", N}, {"H", H}});
  p.dy = bilstm::expect(bilstm::read("dy", dy), X, kCpu, {{"T", T}, {"B", B}, {"N", N}, {"H", H}});
  p.dh_n = bilstm::expect(bilstm::read("dh_n", dh_n), X, kCpu, {{"N", N}, {"B", B}, {"H", H}});
  p.dc_n = bilstm::expect(bilstm::read("dc_n", dc_n), X, kCpu, {{"N", N}, {"B", B}, {"H", H}});
  p.w_hh = bilstm::expect(bilstm::read("w_hh", w_hh), X, kCpu, {{"N", N}, {"4H", 4 * H}, {"H", H}});
  p.c0 = bilstm::expect(bilstm::read("c0", c0), X, kCpu, {{"N", N}, {"B", B}, {"H", H}});
  p.lengths = bilstm::expect_lengths(lengths, kCpu, B, T);
  p.dgx = bilstm::expect(bilstm::read("dgx", dgx), X, kCpu, {{"T", T}, {"B", B}, {"N", N}, {"4H", 4 * H}});
  p.dh0 = bilstm::expect(bilstm::read("dh0", dh0), X, kCpu, {{"N", N}, {"B", B}, {"H", H}});
  p.dc0 = bilstm::expect(bilstm::read("dc0", dc0), X, kCpu, {{"N", N}, {"B", B}, {"H", H}});
  const int nt = check_threads(num_threads);
  py::gil_scoped_release nogil;
  run_backward(p, nt);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "bilstm_fast C++ CPU recurrence kernels (takes torch tensors; see bilstm_fast/ops/cpu_lstm.py)";
  m.def("forward", &forward,
        "LSTM recurrence forward on CPU tensors (float32 / float64; the last dim of each dense):\n"
        "gx [T,B,N,4H], w_hh [N,4H,H], h0/c0 [N,B,H], lengths [B] int64 (1..T) or None;\n"
        "outputs (written) y [T,B,N,H], h_n/c_n [N,B,H], gates [T,B,N,4H] and cells [T,B,N,H] (or both None).",
        py::arg("gx"), py::arg("w_hh"), py::arg("h0"), py::arg("c0"), py::arg("lengths"), py::arg("y"),
        py::arg("h_n"), py::arg("c_n"), py::arg("gates"), py::arg("cells"), py::arg("num_threads"));
  m.def("backward", &backward,
        "LSTM recurrence backward: dy [T,B,N,H], dh_n/dc_n [N,B,H], w_hh [N,4H,H], c0 [N,B,H],\n"
        "lengths [B] or None, gates [T,B,N,4H], cells [T,B,N,H]; outputs dgx [T,B,N,4H], dh0/dc0 [N,B,H].",
        py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("w_hh"), py::arg("c0"), py::arg("lengths"),
        py::arg("gates"), py::arg("cells"), py::arg("dgx"), py::arg("dh0"), py::arg("dc0"), py::arg("num_threads"));
  m.attr("dtype_codes") = bilstm::dtype_codes();
  m.def("isa", [] { return std::string(active_kernels().isa); },
        "The kernel build in use: 'avx512', 'avx2' or 'baseline' (SSE2).");
  m.def("supported_isas", &supported_isas, "Kernel builds this CPU can run, fastest first.");
  m.def("set_isa", [](const std::string& name) {
    try { set_isa(name); } catch (const std::invalid_argument& e) { throw py::value_error(e.what()); }
  }, py::arg("name"), "Force a kernel build (tests, benchmarks).");
}
