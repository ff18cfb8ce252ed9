// bindings.cpp — pybind11 module over lstm_api.h, built twice:
//   bilstm_fast._cuda      with lstm.cu compiled by nvcc (sm_80, sm_90, sm_90a)
//   bilstm_fast._cuda_emu  with lstm.cu compiled as C++ against emu.h (CPU tensors)
// Takes torch tensors as plain Python objects (never links torch) and checks
// each one once at the boundary (csrc/common/tensor_arg.h, shared with
// bilstm_fast._cpu); bilstm_fast/ops/cuda_lstm.py only allocates and calls.
// The GIL is released during a call.
//
// Legend: T steps, B batch, N directions (1 or 2), H hidden size, G = 4H,
// X the input dtype (fp32, fp16, bf16); gates, cells and the state buffer are fp32, the
// exchange buffer X.
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
  const Geometry& g = pl.geo;
  py::dict d;
  d["engine"] = engine_name(pl.engine);
  d["blocks"] = g.blocks;
  d["units"] = g.U;
  d["warps"] = g.warps;
  d["threads"] = 32 * g.warps;
  d["batch_tile"] = g.NB;
  d["reg_tiles"] = pl.reg_tiles;
  d["reg_cols"] = g.Kr;
  d["kpad"] = g.Kpad;
  d["ksplit"] = g.KS;
  d["smem_bytes"] = pl.smem_bytes;
  d["exchange_elems"] = pl.exchange_elems;
  d["state_floats"] = pl.state_floats;
  d["why"] = pl.why;
  return d;
}

Options options(int engine, int blocks, int warps, int batch_tile, int reg_tiles, bool tf32) {
  require(engine >= kAutoEngine && engine <= kFma, "engine code must be 0..3 (auto, f16, tf32, fma), got " +
                                                      std::to_string(engine));
  require(blocks >= 0 && warps >= 0 && batch_tile >= 0, "blocks, warps and batch_tile must be >= 0 (0 = automatic)");
  Options o;
  o.engine = engine; o.blocks = blocks; o.warps = warps; o.batch_tile = batch_tile; o.reg_tiles = reg_tiles; o.tf32 = tf32;
  return o;
}

DType dtype_from_code(int code) {
  require(code == (int)DType::f32 || code == (int)DType::f16 || code == (int)DType::bf16,
          "dtype code must be " + std::to_string((int)DType::f32) + " (fp32), " + std::to_string((int)DType::f16) +
              " (fp16) or " + std::to_string((int)DType::bf16) + " (bf16), got " + std::to_string(code));
  return static_cast<DType>(code);
}

// The plan of a call on its device, and its buffers checked against it:
// exchange [exchange_elems] X, state [state_floats] fp32, barrier [N * 32] int32.
Plan checked_plan(int kind, int64_t N, int64_t B, int64_t H, DType X, int dev, const Options& o, py::handle exchange,
                  py::handle state, py::handle barrier, void*& xptr, float*& sptr, unsigned*& bptr) {
  const Plan pl = make_plan(kind, (int)N, (int)B, (int)H, X, device_limits(dev < 0 ? 0 : dev), o);
  xptr = bilstm::expect(bilstm::read("exchange", exchange), X, dev, {{"exchange_elems", pl.exchange_elems}}).ptr;
  sptr = static_cast<float*>(
      bilstm::expect(bilstm::read("state", state), DType::f32, dev, {{"state_floats", pl.state_floats}}).ptr);
  bptr = static_cast<unsigned*>(
      bilstm::expect(bilstm::read("barrier", barrier), DType::i32, dev, {{"N*32", N * kBarrierStride}}).ptr);
  return pl;
}

py::dict py_forward(py::handle gx, py::handle w_hh, py::handle h0, py::handle c0, py::handle lengths, py::handle y,
                    py::handle h_n, py::handle c_n, py::handle gates, py::handle cells, py::handle exchange,
                    py::handle state, py::handle barrier, std::uintptr_t stream, int engine, int blocks, int warps,
                    int batch_tile, int reg_tiles, bool tf32) {
  const TensorArg agx = bilstm::read("gx", gx);
  FwdParams p{};
  bilstm::lstm_sizes(agx, p.T, p.B, p.N, p.H);
  const int64_t T = p.T, B = p.B, N = p.N, H = p.H, G = 4 * H;
  const DType X = p.dtype = float_dtype(agx), F = DType::f32;
  const int dev = device_of(agx);
  p.gx = bilstm::expect(agx, X, dev, {{"T", T}, {"B", B}, {"N", N}, {"4H", G}});
  p.w_hh = bilstm::expect(bilstm::read("w_hh", w_hh), X, dev, {{"N", N}, {"4H", G}, {"H", H}}, kDense);
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
  const Options o = options(engine, blocks, warps, batch_tile, reg_tiles, tf32);
  const Plan pl = checked_plan(kForward, N, B, H, X, dev, o, exchange, state, barrier, p.exchange, p.state, p.barrier);
  {
    py::gil_scoped_release release;
    bilstm_cuda::forward(p, pl, dev < 0 ? 0 : dev, reinterpret_cast<void*>(stream));
  }
  return plan_dict(pl);
}

py::dict py_backward(py::handle dy, py::handle dh_n, py::handle dc_n, py::handle w_hh, py::handle c0,
                     py::handle lengths, py::handle gates, py::handle cells, py::handle dgx, py::handle dh0,
                     py::handle dc0, py::handle exchange, py::handle state, py::handle barrier, std::uintptr_t stream,
                     int engine, int blocks, int warps, int batch_tile, int reg_tiles, bool tf32) {
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
  const Options o = options(engine, blocks, warps, batch_tile, reg_tiles, tf32);
  const Plan pl = checked_plan(kBackward, N, B, H, X, dev, o, exchange, state, barrier, p.exchange, p.state, p.barrier);
  {
    py::gil_scoped_release release;
    bilstm_cuda::backward(p, pl, dev < 0 ? 0 : dev, reinterpret_cast<void*>(stream));
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
    d["step_functions"] = py::make_tuple("fwd_step", "bwd_step");
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

  m.def("plan", [](int kind, int N, int B, int H, int dtype, int sm_count, long smem_per_block, int engine,
                   int blocks, int warps, int batch_tile, int reg_tiles, bool tf32) {
    require(N == 1 || N == 2, "N (directions) must be 1 or 2, got " + std::to_string(N));
    require(B >= 1 && H >= 1, "need B, H >= 1, got B=" + std::to_string(B) + " H=" + std::to_string(H));
    require(kind == kForward || kind == kBackward, "kind must be 0 (forward) or 1 (backward)");
    return plan_dict(make_plan(kind, N, B, H, dtype_from_code(dtype), DeviceLimits{sm_count, smem_per_block},
                               options(engine, blocks, warps, batch_tile, reg_tiles, tf32)));
  }, py::arg("kind"), py::arg("N"), py::arg("B"), py::arg("H"), py::arg("dtype"), py::arg("sm_count"),
     py::arg("smem_per_block"), py::arg("engine") = 0, py::arg("blocks") = 0, py::arg("warps") = 0,
     py::arg("batch_tile") = 0, py::arg("reg_tiles") = -1, py::arg("tf32") = false,
     "The launch plan the dispatcher chooses on a device with these limits (pure host logic).\n"
     "dtype is a code of csrc/common/lstm_args.h DType (0 fp32, 2 fp16, 3 bf16); engine a code of `engines`.");

  py::dict engines;
  for (int e = kAutoEngine; e <= kFma; ++e) engines[engine_name(e)] = e;
  m.attr("engines") = engines;
  m.attr("gpu_warps") = kGpuWarps;            // what warps=0 means on a GPU (the compile report plans for it)
  m.attr("default_warps") = default_warps();  // what warps=0 means in this module

  m.def("device_limits", [](int device) {
    DeviceLimits l = device_limits(device);
    return py::make_tuple(l.sm_count, l.smem_per_block);
  }, py::arg("device") = 0, "(SM count, max dynamic shared memory per block) of a device (the emulated one in _cuda_emu).");


  m.def("forward", &py_forward, py::arg("gx"), py::arg("w_hh"), py::arg("h0"), py::arg("c0"), py::arg("lengths"),
        py::arg("y"), py::arg("h_n"), py::arg("c_n"), py::arg("gates"), py::arg("cells"), py::arg("exchange"),
        py::arg("state"), py::arg("barrier"), py::arg("stream"), py::arg("engine") = 0, py::arg("blocks") = 0,
        py::arg("warps") = 0, py::arg("batch_tile") = 0, py::arg("reg_tiles") = -1, py::arg("tf32") = false,
        "Forward recurrence (lstm_api.h FwdParams): gx [T,B,N,4H] X, w_hh [N,4H,H] X, h0/c0 [N,B,H] X,\n"
        "lengths [B] int64 or None; writes y [T,B,N,H] X, h_n/c_n [N,B,H] X, gates [T,B,N,4H] and\n"
        "cells [T,B,N,H] fp32 (or both None). exchange [plan exchange_elems] X, state [plan state_floats]\n"
        "fp32, barrier [N*32] int32 zeros: sized by `plan` with the same options. Runs on `stream`\n"
        "(cudaStream_t as int), no host sync. Returns the plan used.");

  m.def("backward", &py_backward, py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("w_hh"), py::arg("c0"),
        py::arg("lengths"), py::arg("gates"), py::arg("cells"), py::arg("dgx"), py::arg("dh0"), py::arg("dc0"),
        py::arg("exchange"), py::arg("state"), py::arg("barrier"), py::arg("stream"), py::arg("engine") = 0,
        py::arg("blocks") = 0, py::arg("warps") = 0, py::arg("batch_tile") = 0, py::arg("reg_tiles") = -1,
        py::arg("tf32") = false,
        "Backward recurrence (lstm_api.h BwdParams); writes dgx [T,B,N,4H] X, dh0/dc0 [N,B,H] X. Buffers as\n"
        "forward's, sized by `plan(kind=1, ...)`. Returns the plan used.");
}
