// bindings.cpp — pybind11 module over lstm_api.h, built twice:
//   bilstm_fast._cuda      with lstm.cu compiled by nvcc (sm_80, sm_90, sm_90a)
//   bilstm_fast._cuda_emu  with lstm.cu compiled as C++ against emu.h (CPU tensors)
// Takes torch tensors as plain Python objects (never links torch) and checks
// each one once at the boundary (csrc/common/tensor_arg.h, shared with
// bilstm_fast._cpu); bilstm_fast/ops/cuda_lstm.py only allocates and calls.
// The GIL is released during a call.
//
// Legend: T steps, B batch, N directions (1 or 2), H hidden size, G = 4H,
// X the input dtype (fp32, fp16, bf16); gates, cells and the workspace are fp32.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/tensor_arg.h"
#include "lstm_api.h"

#ifndef BILSTM_CUDA_EMULATE
#include <cuda_runtime_api.h>
#endif

#ifndef BILSTM_MODULE
#error "define BILSTM_MODULE (the Python module name)"
#endif

namespace py = pybind11;
using namespace bilstm_cuda;
using bilstm::Dim;
using bilstm::Layout;
using bilstm::TensorArg;

namespace {

constexpr auto kDense = Layout::kContiguous;

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("bilstm_fast cuda: " + msg);
}

// The tensors' device: a CUDA device for _cuda, CPU memory for _cuda_emu.
int device_of(const TensorArg& a) {
#ifdef BILSTM_CUDA_EMULATE
  if (a.device != bilstm::kCpu)
    throw py::value_error(std::string(a.name) + ": the emulated CUDA kernels run on CPU tensors, got one on " +
                          bilstm::device_name(a.device));
#else
  if (a.device == bilstm::kCpu)
    throw py::value_error(std::string(a.name) + ": expected a CUDA tensor, got a CPU tensor");
#endif
  return a.device;
}

// X of a call: these kernels run fp32, fp16 and bf16.
DType float_dtype(const TensorArg& a) {
  if (a.dtype != DType::f32 && a.dtype != DType::f16 && a.dtype != DType::bf16)
    throw py::value_error(std::string(a.name) + ": the cuda kernels run torch.float32, torch.float16 and "
                          "torch.bfloat16, got " + bilstm::dtype_name(a.dtype));
  return a.dtype;
}

py::dict plan_dict(const Plan& pl) {
  py::dict d;
  d["path"] = pl.path == kOnChip ? "onchip" : "stream";
  d["blocks"] = pl.blocks;
  d["slice"] = pl.slice;
  d["threads"] = pl.threads;
  d["batch_tile"] = pl.batch_tile;
  d["smem_bytes"] = pl.smem_bytes;
  d["why"] = pl.why;
  return d;
}

Options options(int path, int blocks, int threads, int batch_tile) {
  require(path >= 0 && path <= 2, "path must be 0 (auto), 1 (onchip) or 2 (stream)");
  Options o;
  o.path = path; o.blocks = blocks; o.threads = threads; o.batch_tile = batch_tile;
  return o;
}

DType dtype_from_code(int code) {
  require(code == (int)DType::f32 || code == (int)DType::f16 || code == (int)DType::bf16,
          "dtype code must be " + std::to_string((int)DType::f32) + " (fp32), " + std::to_string((int)DType::f16) +
              " (fp16) or " + std::to_string((int)DType::bf16) + " (bf16), got " + std::to_string(code));
  return static_cast<DType>(code);
}

py::dict py_forward(py::handle gx, py::handle w_hh, py::handle w_t, py::handle h0, py::handle c0, py::handle lengths,
                 py::handle y, py::handle h_n, py::handle c_n, py::handle gates, py::handle cells, py::handle scratch,
                 py::handle barrier, std::uintptr_t stream, int path, int blocks, int threads, int batch_tile) {
  const TensorArg agx = bilstm::read("gx", gx);
  FwdParams p{};
  bilstm::lstm_sizes(agx, p.T, p.B, p.N, p.H);
  const int64_t T = p.T, B = p.B, N = p.N, H = p.H, G = 4 * H;
  const DType X = p.dtype = float_dtype(agx), F = DType::f32;
  const int dev = device_of(agx);
  p.gx = bilstm::expect(agx, X, dev, {{"T", T}, {"B", B}, {"N", N}, {"4H", G}});
  // w_hh itself is not read by the forward kernel (it reads w_t), but it is the
  // contract's tensor: checked so that w_t is known to be its transpose's shape.
  bilstm::expect(bilstm::read("w_hh", w_hh), X, dev, {{"N", N}, {"4H", G}, {"H", H}}, kDense);
  p.w_t = bilstm::expect(bilstm::read("w_t", w_t), X, dev, {{"N", N}, {"H", H}, {"4H", G}}, kDense).ptr;
  p.h0 = bilstm::expect(bilstm::read("h0", h0), X, dev, {{"N", N}, {"B", B}, {"H", H}}, kDense);
  p.c0 = bilstm::expect(bilstm::read("c0", c0), X, dev, {{"N", N}, {"B", B}, {"H", H}}, kDense);
  p.lengths = bilstm::expect_lengths(lengths, dev, B, T);
  p.y = bilstm::expect(bilstm::read("y", y), X, dev, {{"T", T}, {"B", B}, {"N", N}, {"H", H}});
  p.h_n = bilstm::expect(bilstm::read("h_n", h_n), X, dev, {{"N", N}, {"B", B}, {"H", H}}, kDense);
  p.c_n = bilstm::expect(bilstm::read("c_n", c_n), X, dev, {{"N", N}, {"B", B}, {"H", H}}, kDense);
  if (gates.is_none() != cells.is_none())
    throw py::value_error("gates, cells: pass both workspace tensors or neither");
  p.gates = bilstm::expect_optional("gates", gates, F, dev, {{"T", T}, {"B", B}, {"N", N}, {"4H", G}}, kDense);
  p.cells = bilstm::expect_optional("cells", cells, F, dev, {{"T", T}, {"B", B}, {"N", N}, {"H", H}}, kDense);
  p.scratch = static_cast<float*>(
      bilstm::expect(bilstm::read("scratch", scratch), F, dev, {{"fwd_scratch_floats", fwd_scratch_floats(N, B, H)}}).ptr);
  p.barrier = static_cast<unsigned*>(bilstm::expect(bilstm::read("barrier", barrier), DType::i32, dev, {{"N", N}}).ptr);
  const Options o = options(path, blocks, threads, batch_tile);
  Plan pl;
  {
    py::gil_scoped_release release;
    pl = bilstm_cuda::forward(p, o, dev < 0 ? 0 : dev, reinterpret_cast<void*>(stream));
  }
  return plan_dict(pl);
}

py::dict py_backward(py::handle dy, py::handle dh_n, py::handle dc_n, py::handle w_hh, py::handle c0, py::handle lengths,
                  py::handle gates, py::handle cells, py::handle dgx, py::handle dh0, py::handle dc0, py::handle scratch,
                  py::handle barrier, std::uintptr_t stream, int path, int blocks, int threads, int batch_tile) {
  const TensorArg ag = bilstm::read("gates", gates);
  const TensorArg ady = bilstm::read("dy", dy);
  BwdParams p{};
  bilstm::lstm_sizes(ag, p.T, p.B, p.N, p.H);
  const int64_t T = p.T, B = p.B, N = p.N, H = p.H, G = 4 * H;
  const DType X = p.dtype = float_dtype(ady), F = DType::f32;
  const int dev = device_of(ag);
  p.gates = bilstm::expect(ag, F, dev, {{"T", T}, {"B", B}, {"N", N}, {"4H", G}}, kDense);
  p.cells = bilstm::expect(bilstm::read("cells", cells), F, dev, {{"T", T}, {"B", B}, {"N", N}, {"H", H}}, kDense);
  p.dy = bilstm::expect(ady, X, dev, {{"T", T}, {"B", B}, {"N", N}, {"H", H}});
  p.dh_n = bilstm::expect(bilstm::read("dh_n", dh_n), X, dev, {{"N", N}, {"B", B}, {"H", H}}, kDense);
  p.dc_n = bilstm::expect(bilstm::read("dc_n", dc_n), X, dev, {{"N", N}, {"B", B}, {"H", H}}, kDense);
  p.w_hh = bilstm::expect(bilstm::read("w_hh", w_hh), X, dev, {{"N", N}, {"4H", G}, {"H", H}}, kDense);
  p.c0 = bilstm::expect(bilstm::read("c0", c0), X, dev, {{"N", N}, {"B", B}, {"H", H}}, kDense);
  p.lengths = bilstm::expect_lengths(lengths, dev, B, T);
  p.dgx = bilstm::expect(bilstm::read("dgx", dgx), X, dev, {{"T", T}, {"B", B}, {"N", N}, {"4H", G}});
  p.dh0 = bilstm::expect(bilstm::read("dh0", dh0), X, dev, {{"N", N}, {"B", B}, {"H", H}}, kDense);
  p.dc0 = bilstm::expect(bilstm::read("dc0", dc0), X, dev, {{"N", N}, {"B", B}, {"H", H}}, kDense);
  p.scratch = static_cast<float*>(
      bilstm::expect(bilstm::read("scratch", scratch), F, dev, {{"bwd_scratch_floats", bwd_scratch_floats(N, B, H)}}).ptr);
  p.barrier = static_cast<unsigned*>(bilstm::expect(bilstm::read("barrier", barrier), DType::i32, dev, {{"N", N}}).ptr);
  const Options o = options(path, blocks, threads, batch_tile);
  Plan pl;
  {
    py::gil_scoped_release release;
    pl = bilstm_cuda::backward(p, o, dev < 0 ? 0 : dev, reinterpret_cast<void*>(stream));
  }
  return plan_dict(pl);
}

}  // namespace

PYBIND11_MODULE(BILSTM_MODULE, m) {
  m.doc() = "bilstm_fast CUDA LSTM recurrence kernels (takes torch tensors; see csrc/cuda/lstm.cu)";

  m.attr("dtype_codes") = bilstm::dtype_codes();
  m.def("info", [] {
    py::dict d;
#ifdef BILSTM_CUDA_EMULATE
    d["emulated"] = true;
    d["archs"] = py::list();
    d["cuda_version"] = py::none();
#else
    d["emulated"] = false;
    py::list archs;
    std::string s = BILSTM_CUDA_ARCHS, cur;
    for (char c : s + ",") {
      if (c == ',') { if (!cur.empty()) archs.append(cur); cur.clear(); } else cur += c;
    }
    d["archs"] = archs;
    d["cuda_version"] = CUDART_VERSION;
#endif
    d["kernels"] = py::make_tuple("lstm_fwd_kernel", "lstm_bwd_kernel");
    return d;
  }, "Build facts: emulated or not, the SASS architectures compiled, the CUDA runtime version.");

  m.def("device_status", [] {
    py::dict d;
#ifdef BILSTM_CUDA_EMULATE
    d["code"] = 0; d["name"] = "cudaSuccess"; d["message"] = "emulated device"; d["count"] = 1;
#else
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    cudaGetLastError();  // do not leave a sticky "last error" behind
    d["code"] = (int)e;
    d["name"] = cudaGetErrorName(e);
    d["message"] = cudaGetErrorString(e);
    d["count"] = e == cudaSuccess ? n : 0;
#endif
    return d;
  }, "cudaGetDeviceCount's result: {code, name, message, count}. Never raises.");

  m.def("plan", [](int kind, int N, int B, int H, int dtype, int sm_count, long smem_per_block,
                   int path, int blocks, int threads, int batch_tile) {
    require(N == 1 || N == 2, "N (directions) must be 1 or 2, got " + std::to_string(N));
    require(B >= 1 && H >= 1, "need B, H >= 1, got B=" + std::to_string(B) + " H=" + std::to_string(H));
    require(kind == kForward || kind == kBackward, "kind must be 0 (forward) or 1 (backward)");
    return plan_dict(make_plan(kind, N, B, H, dtype_from_code(dtype), DeviceLimits{sm_count, smem_per_block},
                               options(path, blocks, threads, batch_tile)));
  }, py::arg("kind"), py::arg("N"), py::arg("B"), py::arg("H"), py::arg("dtype"), py::arg("sm_count"),
     py::arg("smem_per_block"), py::arg("path") = 0, py::arg("blocks") = 0, py::arg("threads") = 0,
     py::arg("batch_tile") = 0,
     "The launch plan the dispatcher would choose on a device with these limits (pure host logic).\n"
     "dtype is a code of csrc/common/lstm_args.h DType (0 fp32, 2 fp16, 3 bf16).");

  m.def("device_limits", [](int device) {
    DeviceLimits l = device_limits(device);
    return py::make_tuple(l.sm_count, l.smem_per_block);
  }, py::arg("device") = 0, "(SM count, max dynamic shared memory per block) of a device (the emulated one in _cuda_emu).");

  m.def("fwd_scratch_floats", &fwd_scratch_floats);
  m.def("bwd_scratch_floats", &bwd_scratch_floats);

  m.def("forward", &py_forward, py::arg("gx"), py::arg("w_hh"), py::arg("w_t"), py::arg("h0"), py::arg("c0"),
        py::arg("lengths"), py::arg("y"), py::arg("h_n"), py::arg("c_n"), py::arg("gates"), py::arg("cells"),
        py::arg("scratch"), py::arg("barrier"), py::arg("stream"), py::arg("path") = 0, py::arg("blocks") = 0,
        py::arg("threads") = 0, py::arg("batch_tile") = 0,
        "Forward recurrence (lstm_api.h FwdParams): gx [T,B,N,4H] X, w_hh [N,4H,H] X, w_t [N,H,4H] X,\n"
        "h0/c0 [N,B,H] X, lengths [B] int64 or None; writes y [T,B,N,H] X, h_n/c_n [N,B,H] X,\n"
        "gates [T,B,N,4H] and cells [T,B,N,H] fp32 (or both None); scratch fp32, barrier [N] int32 zeros.\n"
        "Runs on `stream` (cudaStream_t as int). Returns the plan used.");

  m.def("backward", &py_backward, py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("w_hh"), py::arg("c0"),
        py::arg("lengths"), py::arg("gates"), py::arg("cells"), py::arg("dgx"), py::arg("dh0"), py::arg("dc0"),
        py::arg("scratch"), py::arg("barrier"), py::arg("stream"), py::arg("path") = 0, py::arg("blocks") = 0,
        py::arg("threads") = 0, py::arg("batch_tile") = 0,
        "Backward recurrence (lstm_api.h BwdParams); writes dgx [T,B,N,4H] X, dh0/dc0 [N,B,H] X. Returns the plan used.");
}
