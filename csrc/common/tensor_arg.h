// tensor_arg.h — the one boundary between Python and the native modules
// (bilstm_fast._cpu, _cuda, _cuda_emu).
//
// A binding receives torch tensors as plain Python objects (pybind11 handles;
// nothing links torch: one build serves every torch version) and turns each
// into a View (lstm_args.h) exactly once, here, after checking it: shape with
// the letters of the contract, dtype, device, layout, alignment. Every error
// names the argument and what was expected, as ValueError (TypeError for
// something that is not a tensor). The bindings hold the tensor objects for
// the whole call, so every pointer outlives the kernels that use it.
//
// Reads per tensor: data_ptr(), dtype, get_device(), shape, stride() — a few
// attribute calls (~1-2 us per tensor), negligible next to a recurrence.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <climits>
#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "lstm_args.h"

namespace bilstm {
namespace py = pybind11;

// -1 for CPU memory, else the CUDA device index (torch's Tensor.get_device()).
constexpr int kCpu = -1;

// Whether a whole tensor must be dense, or only its last dimension.
enum class Layout { kLastDimDense, kContiguous };

// One dimension of an expected shape: its letter in the contract and size.
struct Dim {
  const char* letter;
  int64_t size;
};

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "torch.float32";
    case DType::f64: return "torch.float64";
    case DType::f16: return "torch.float16";
    case DType::bf16: return "torch.bfloat16";
    case DType::i64: return "torch.int64";
    default: return "torch.int32";
  }
}

inline std::string device_name(int device) {
  return device == kCpu ? std::string("cpu") : "cuda:" + std::to_string(device);
}

// A tensor argument as read from Python, before its checks.
struct TensorArg {
  const char* name = "";
  py::handle obj;
  std::uintptr_t ptr = 0;
  DType dtype = DType::f32;
  int device = kCpu;
  std::vector<int64_t> shape, strides;
};

namespace detail {

inline std::string join(const std::vector<int64_t>& v) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < v.size(); ++i) s << (i ? ", " : "") << v[i];
  s << "]";
  return s.str();
}

// torch.Tensor and the dtypes the kernels know, looked up once. Leaked on
// purpose: Python objects must not be destroyed after the interpreter is.
struct Torch {
  py::object tensor_type;
  static constexpr int kDtypes = 6;
  py::object dtypes[kDtypes];  // indexed by DType
};

inline const Torch& torch_objects() {
  static const Torch* t = [] {
    py::module_ torch = py::module_::import("torch");
    auto* o = new Torch;
    o->tensor_type = torch.attr("Tensor");
    const char* names[Torch::kDtypes] = {"float32", "float64", "float16", "bfloat16", "int64", "int32"};
    for (int i = 0; i < Torch::kDtypes; ++i) o->dtypes[i] = torch.attr(names[i]);
    return o;
  }();
  return *t;
}

}  // namespace detail

// Reads a tensor argument (TypeError when `obj` is not a torch.Tensor,
// ValueError for a dtype no kernel handles).
inline TensorArg read(const char* name, py::handle obj) {
  const detail::Torch& torch = detail::torch_objects();
  if (!py::isinstance(obj, torch.tensor_type))
    throw py::type_error(std::string(name) + ": expected a torch.Tensor, got " +
                         std::string(py::str(py::type::of(obj).attr("__name__"))));
  TensorArg a;
  a.name = name;
  a.obj = obj;
  py::object dt = obj.attr("dtype");
  int code = -1;
  for (int i = 0; i < detail::Torch::kDtypes; ++i)
    if (dt.is(torch.dtypes[i])) code = i;
  if (code < 0)
    throw py::value_error(std::string(name) + ": unsupported dtype " + std::string(py::str(dt)));
  a.dtype = static_cast<DType>(code);
  a.ptr = obj.attr("data_ptr")().cast<std::uintptr_t>();
  a.device = obj.attr("get_device")().cast<int>();
  a.shape = obj.attr("shape").cast<std::vector<int64_t>>();
  a.strides = obj.attr("stride")().cast<std::vector<int64_t>>();
  return a;
}

// Size of dimension `i` of a tensor that must have `ndim` dims (`layout_text`
// names them for the message, e.g. "[T, B, N, 4H]").
inline int64_t size_of(const TensorArg& a, size_t ndim, size_t i, const char* layout_text) {
  if (a.shape.size() != ndim)
    throw py::value_error(std::string(a.name) + ": expected " + std::to_string(ndim) + " dims " + layout_text +
                          ", got shape " + detail::join(a.shape));
  return a.shape[i];
}

// Checks `a` (shape `dims`, `dtype`, on `device`, `layout`) and returns its view.
inline View expect(const TensorArg& a, DType dtype, int device, std::initializer_list<Dim> dims,
                   Layout layout = Layout::kLastDimDense) {
  const std::string name = a.name;
  std::vector<int64_t> want;
  for (const Dim& d : dims) want.push_back(d.size);
  if (a.shape != want) {
    std::ostringstream s;
    s << name << ": expected shape [";
    size_t i = 0;
    for (const Dim& d : dims) s << (i++ ? ", " : "") << d.letter << "=" << d.size;
    s << "], got " << detail::join(a.shape);
    throw py::value_error(s.str());
  }
  if (a.dtype != dtype)
    throw py::value_error(name + ": expected dtype " + dtype_name(dtype) + ", got " + dtype_name(a.dtype));
  if (a.device != device)
    throw py::value_error(name + ": expected a tensor on " + device_name(device) + ", got one on " +
                          device_name(a.device));
  int64_t numel = 1;
  for (int64_t s : a.shape) numel *= s;
  if (numel == 0) throw py::value_error(name + ": empty tensors never reach the kernels, got shape " +
                                        detail::join(a.shape));
  if (a.ptr == 0) throw py::value_error(name + ": null data pointer");
  if (a.ptr % dtype_size(dtype) != 0) throw py::value_error(name + ": data pointer not aligned to its element size");
  // Strides of size-1 dimensions are meaningless (torch may report anything).
  int64_t dense = 1;
  for (size_t i = a.shape.size(); i-- > 0;) {
    if (a.shape[i] == 1) continue;
    if (a.strides[i] < 0)
      throw py::value_error(name + ": negative strides are not supported, got strides " + detail::join(a.strides));
    const bool last = i + 1 == a.shape.size();
    if ((last || layout == Layout::kContiguous) && a.strides[i] != dense)
      throw py::value_error(name + (layout == Layout::kContiguous ? ": must be contiguous"
                                                                   : ": the last dimension must be contiguous") +
                            ", got shape " + detail::join(a.shape) + " strides " + detail::join(a.strides));
    dense *= a.shape[i];
  }
  View v;
  v.ptr = reinterpret_cast<void*>(a.ptr);
  const size_t nd = a.strides.size() < 4 ? a.strides.size() : 4;
  for (size_t i = 0; i < nd; ++i) v.stride[i] = a.strides[i];
  v.stride[nd - 1] = 1;
  return v;
}

// expect() for an optional argument: a null view for None.
inline View expect_optional(const char* name, py::handle obj, DType dtype, int device,
                            std::initializer_list<Dim> dims, Layout layout = Layout::kLastDimDense) {
  if (obj.is_none()) return View{};
  return expect(read(name, obj), dtype, device, dims, layout);
}

// lengths [B] int64, or None. Values are checked (1..T) only when they live
// in CPU memory; on a GPU the kernels clamp them (no host sync here).
inline const int64_t* expect_lengths(py::handle obj, int device, int64_t B, int64_t T) {
  if (obj.is_none()) return nullptr;
  const View v = expect(read("lengths", obj), DType::i64, device, {{"B", B}}, Layout::kContiguous);
  const int64_t* l = static_cast<const int64_t*>(v.ptr);
  if (device == kCpu)
    for (int64_t b = 0; b < B; ++b)
      if (l[b] < 1 || l[b] > T)
        throw py::value_error("lengths: values must be in 1..T=" + std::to_string(T) + ", got " +
                              std::to_string(l[b]) + " at index " + std::to_string(b));
  return l;
}

// The sizes of a recurrence call from its first sequence tensor
// [T >= 1, B >= 1, N in (1, 2), 4H >= 4] (gx forward, gates backward). The
// kernels index steps, rows and gate columns with int (element offsets with
// 64 bits), so T, B and 4H must each be < 2^31.
inline void lstm_sizes(const TensorArg& a, int64_t& T, int64_t& B, int64_t& N, int64_t& H) {
  T = size_of(a, 4, 0, "[T, B, N, 4H]");
  B = a.shape[1], N = a.shape[2];
  if (T < 1 || B < 1 || (N != 1 && N != 2) || a.shape[3] < 4 || a.shape[3] % 4)
    throw py::value_error(std::string(a.name) + ": expected shape [T>=1, B>=1, N in (1, 2), 4H>=4], got " +
                          detail::join(a.shape));
  if (T > INT32_MAX || B > INT32_MAX || a.shape[3] > INT32_MAX)
    throw py::value_error(std::string(a.name) + ": T, B and 4H must each be < 2^31, got shape " +
                          detail::join(a.shape));
  H = a.shape[3] / 4;
}

// {"torch.float32": 0, ...}: the DType codes, for bilstm_fast.ops.native to check its mirror against.
inline py::dict dtype_codes() {
  py::dict d;
  for (int i = 0; i < detail::Torch::kDtypes; ++i) d[dtype_name(static_cast<DType>(i))] = i;
  return d;
}

}  // namespace bilstm
