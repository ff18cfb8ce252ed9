// bindings.cpp — pybind11 module over lstm_api.h, built twice:
//   bilstm_fast._cuda      with lstm.cu compiled by nvcc (sm_80, sm_90, sm_90a)
//   bilstm_fast._cuda_emu  with lstm.cu compiled as C++ against emu.h
// Takes raw pointers (int), sizes and strides in elements; never links torch.
// bilstm_fast/ops/cuda_lstm.py checks every tensor (shape, dtype, device,
// contiguity) before a pointer gets here; this file checks the sizes again and
// fills the plain params structs. The GIL is released during a call.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <tuple>

#include "lstm_api.h"

#ifndef BILSTM_CUDA_EMULATE
#include <cuda_runtime_api.h>
#endif

#ifndef BILSTM_MODULE
#error "define BILSTM_MODULE (the Python module name)"
#endif

namespace py = pybind11;
using namespace bilstm_cuda;

namespace {

template <class T>
T* as_ptr(std::uintptr_t p) { return reinterpret_cast<T*>(p); }

void require(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument("bilstm_fast cuda: " + msg);
}

void check_sizes(int T, int B, int N, int H, int dtype) {
  require(T >= 1 && B >= 1 && H >= 1, "need T, B, H >= 1, got T=" + std::to_string(T) + " B=" +
                                          std::to_string(B) + " H=" + std::to_string(H));
  require(N == 1 || N == 2, "N (directions) must be 1 or 2, got " + std::to_string(N));
  require(dtype == kF32 || dtype == kF16 || dtype == kBF16, "dtype code must be 0 (fp32), 1 (fp16) or 2 (bf16)");
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

using Strides = std::tuple<long long, long long, long long>;

}  // namespace

PYBIND11_MODULE(BILSTM_MODULE, m) {
  m.doc() = "bilstm_fast CUDA LSTM recurrence kernels (raw-pointer bindings; see csrc/cuda/lstm.cu)";

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
    check_sizes(1, B, N, H, dtype);
    require(kind == kForward || kind == kBackward, "kind must be 0 (forward) or 1 (backward)");
    return plan_dict(make_plan(kind, N, B, H, dtype, DeviceLimits{sm_count, smem_per_block},
                               options(path, blocks, threads, batch_tile)));
  }, py::arg("kind"), py::arg("N"), py::arg("B"), py::arg("H"), py::arg("dtype"), py::arg("sm_count"),
     py::arg("smem_per_block"), py::arg("path") = 0, py::arg("blocks") = 0, py::arg("threads") = 0,
     py::arg("batch_tile") = 0,
     "The launch plan the dispatcher would choose on a device with these limits (pure host logic).");

  m.def("device_limits", [](int device) {
    DeviceLimits l = device_limits(device);
    return py::make_tuple(l.sm_count, l.smem_per_block);
  }, py::arg("device") = 0, "(SM count, max dynamic shared memory per block) of a device (the emulated one in _cuda_emu).");

  m.def("fwd_workspace_floats", &fwd_workspace_floats);
  m.def("bwd_workspace_floats", &bwd_workspace_floats);

  m.def("forward", [](int dtype, int T, int B, int N, int H,
                      std::uintptr_t gx, Strides gx_strides, std::uintptr_t w_t, std::uintptr_t h0,
                      std::uintptr_t c0, std::uintptr_t lengths, std::uintptr_t y, Strides y_strides,
                      std::uintptr_t h_n, std::uintptr_t c_n, std::uintptr_t gates, std::uintptr_t cs,
                      std::uintptr_t ws, std::uintptr_t barrier, int device, std::uintptr_t stream,
                      int path, int blocks, int threads, int batch_tile) {
    check_sizes(T, B, N, H, dtype);
    require(gx && w_t && h0 && c0 && y && h_n && c_n && ws && barrier, "a required pointer is null");
    require((gates == 0) == (cs == 0), "gates and cs must both be given or both be null");
    FwdParams p{};
    p.T = T; p.B = B; p.N = N; p.H = H;
    std::tie(p.gx_st, p.gx_sb, p.gx_sn) = gx_strides;
    std::tie(p.y_st, p.y_sb, p.y_sn) = y_strides;
    p.gx = as_ptr<const void>(gx); p.w_t = as_ptr<const void>(w_t);
    p.h0 = as_ptr<const void>(h0); p.c0 = as_ptr<const void>(c0);
    p.lengths = as_ptr<const int64_t>(lengths);
    p.y = as_ptr<void>(y); p.h_n = as_ptr<void>(h_n); p.c_n = as_ptr<void>(c_n);
    p.gates = as_ptr<float>(gates); p.cs = as_ptr<float>(cs);
    p.ws = as_ptr<float>(ws); p.barrier = as_ptr<unsigned>(barrier);
    const Options o = options(path, blocks, threads, batch_tile);
    Plan pl;
    {
      py::gil_scoped_release release;
      pl = forward(p, dtype, o, device, as_ptr<void>(stream));
    }
    return plan_dict(pl);
  }, py::arg("dtype"), py::arg("T"), py::arg("B"), py::arg("N"), py::arg("H"), py::arg("gx"),
     py::arg("gx_strides"), py::arg("w_t"), py::arg("h0"), py::arg("c0"), py::arg("lengths"), py::arg("y"),
     py::arg("y_strides"), py::arg("h_n"), py::arg("c_n"), py::arg("gates"), py::arg("cs"), py::arg("ws"),
     py::arg("barrier"), py::arg("device"), py::arg("stream"), py::arg("path") = 0, py::arg("blocks") = 0,
     py::arg("threads") = 0, py::arg("batch_tile") = 0,
     "Forward recurrence (see lstm_api.h FwdParams). Returns the plan used.");

  m.def("backward", [](int dtype, int T, int B, int N, int H,
                       std::uintptr_t dy, Strides dy_strides, std::uintptr_t dh_n, std::uintptr_t dc_n,
                       std::uintptr_t w_hh, std::uintptr_t c0, std::uintptr_t lengths, std::uintptr_t gates,
                       std::uintptr_t cs, std::uintptr_t dgx, Strides dgx_strides, std::uintptr_t dh0,
                       std::uintptr_t dc0, std::uintptr_t ws, std::uintptr_t barrier, int device,
                       std::uintptr_t stream, int path, int blocks, int threads, int batch_tile) {
    check_sizes(T, B, N, H, dtype);
    require(dy && dh_n && dc_n && w_hh && c0 && gates && cs && dgx && dh0 && dc0 && ws && barrier,
            "a required pointer is null");
    BwdParams p{};
    p.T = T; p.B = B; p.N = N; p.H = H;
    std::tie(p.dy_st, p.dy_sb, p.dy_sn) = dy_strides;
    std::tie(p.dgx_st, p.dgx_sb, p.dgx_sn) = dgx_strides;
    p.dy = as_ptr<const void>(dy); p.dh_n = as_ptr<const void>(dh_n); p.dc_n = as_ptr<const void>(dc_n);
    p.w_hh = as_ptr<const void>(w_hh); p.c0 = as_ptr<const void>(c0);
    p.lengths = as_ptr<const int64_t>(lengths);
    p.gates = as_ptr<const float>(gates); p.cs = as_ptr<const float>(cs);
    p.dgx = as_ptr<void>(dgx); p.dh0 = as_ptr<void>(dh0); p.dc0 = as_ptr<void>(dc0);
    p.ws = as_ptr<float>(ws); p.barrier = as_ptr<unsigned>(barrier);
    const Options o = options(path, blocks, threads, batch_tile);
    Plan pl;
    {
      py::gil_scoped_release release;
      pl = backward(p, dtype, o, device, as_ptr<void>(stream));
    }
    return plan_dict(pl);
  }, py::arg("dtype"), py::arg("T"), py::arg("B"), py::arg("N"), py::arg("H"), py::arg("dy"),
     py::arg("dy_strides"), py::arg("dh_n"), py::arg("dc_n"), py::arg("w_hh"), py::arg("c0"), py::arg("lengths"),
     py::arg("gates"), py::arg("cs"), py::arg("dgx"), py::arg("dgx_strides"), py::arg("dh0"), py::arg("dc0"),
     py::arg("ws"), py::arg("barrier"), py::arg("device"), py::arg("stream"), py::arg("path") = 0,
     py::arg("blocks") = 0, py::arg("threads") = 0, py::arg("batch_tile") = 0,
     "Backward recurrence (see lstm_api.h BwdParams). Returns the plan used.");
}
