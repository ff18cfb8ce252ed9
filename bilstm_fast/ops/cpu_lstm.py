"""CPU backend: the fused C++ recurrence kernels of bilstm_fast._cpu (csrc/cpu/).

Legend: T steps, B batch, N directions (1 or 2), H hidden, X input dtype.

Implements the backend contract of backends.py for CPU tensors in float32
and float64 without projection. What it declines (``unsupported_reason``, so
``backend="auto"`` falls back to "reference"): proj_size (w_hr), float16 /
bfloat16 (no fp16/bf16 kernels yet: the accumulate-in-fp32 path would need a
convert pass per step that this first version does not have), non-CPU tensors.

This file checks dtypes and devices and passes each tensor to C++ as a
``(data_ptr, shape, strides)`` tuple; the C++ binding checks every shape and
stride again and raises ValueError naming the argument. Outputs are allocated
here; no input is modified. The thread count is ``torch.get_num_threads()``.
"""
from __future__ import annotations

import torch

from . import native
from .cpu_gemm import packed_weight, recurrent_weight_grad  # noqa: F401  recurrent_weight_grad: the backend's dW_hh (ops/recurrence.py)

NAME = "cpu"
_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def unavailable_reason() -> str | None:
    mod = native.load("_cpu")
    return mod if isinstance(mod, str) else None


def unsupported_reason(spec) -> str | None:
    """``spec`` is a backends.CallSpec (device, dtype, N, H, P, proj, lengths)."""
    if spec.device != "cpu":
        return f"the cpu backend runs CPU tensors only, got device {spec.device!r}"
    if spec.proj:
        return "proj_size (w_hr) is not implemented in the cpu backend; the reference backend serves it"
    if spec.dtype not in _DTYPES:
        return (f"the cpu backend supports float32 and float64, got {spec.dtype} "
                "(float16/bfloat16 are served by the reference backend)")
    return None


def _view(name: str, t: torch.Tensor | None, dtype: torch.dtype | None = None):
    """(data_ptr, shape, strides) of a CPU tensor whose last dim is contiguous."""
    if t is None:
        return None
    if t.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got {t.device}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if t.dim() > 0 and t.stride(-1) != 1 and t.shape[-1] != 1:
        raise ValueError(f"{name}: the last dimension must be contiguous, got strides {t.stride()}")
    return (native.ptr(t), tuple(t.shape), tuple(t.stride()))


def _lengths(lengths: torch.Tensor | None):
    if lengths is None:
        return None
    if lengths.dtype != torch.int64:
        raise ValueError(f"lengths: expected int64, got {lengths.dtype}")
    return _view("lengths", lengths.contiguous())


def _threads() -> int:
    return max(1, torch.get_num_threads())


def forward(gx, w_hh, w_hr, h0, c0, lengths, need_ws):
    """gx [T, B, N, 4H], w_hh [N, 4H, H], h0/c0 [N, B, H], lengths [B] int64 or None
    -> y [T, B, N, H], h_n, c_n [N, B, H], gates [T, B, N, 4H], cs [T, B, N, H]
    (gates/cs have shape (0,) when not need_ws)."""
    if w_hr is not None:
        raise ValueError("proj_size (w_hr) is not implemented in the cpu backend")
    if gx.dtype not in _DTYPES:
        raise ValueError(f"gx: the cpu backend supports float32 and float64, got {gx.dtype}")
    T, B, N, G = gx.shape
    H = G // 4
    X = gx.dtype
    y = gx.new_empty(T, B, N, H)
    h_n, c_n = gx.new_empty(N, B, H), gx.new_empty(N, B, H)
    if need_ws:
        gates, cs = gx.new_empty(T, B, N, G), gx.new_empty(T, B, N, H)
    else:
        gates, cs = gx.new_empty(0), gx.new_empty(0)  # two tensors: custom op outputs may not alias
    native.require("_cpu").forward(
        _DTYPES[X], _view("gx", gx, X), _view("w_hh", w_hh, X), _view("h0", h0, X),
        _view("c0", c0, X), _lengths(lengths), _view("y", y), _view("h_n", h_n), _view("c_n", c_n),
        _view("gates", gates) if need_ws else None, _view("cs", cs) if need_ws else None,
        _threads(), None if need_ws else _view("w_hh_packed", packed_weight(w_hh, "w_hh")))
    return y, h_n, c_n, gates, cs


def backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, gates, cs):
    """dy [T, B, N, H], dh_n/dc_n [N, B, H], forward's inputs and workspace
    -> dgx [T, B, N, 4H], dh0, dc0 [N, B, H], None (no projection)."""
    if w_hr is not None:
        raise ValueError("proj_size (w_hr) is not implemented in the cpu backend")
    X = dy.dtype
    if X not in _DTYPES:
        raise ValueError(f"dy: the cpu backend supports float32 and float64, got {X}")
    T, B, N, G = gates.shape
    dgx = dy.new_empty(T, B, N, G)
    dh0, dc0 = dy.new_empty(N, B, G // 4), dy.new_empty(N, B, G // 4)
    native.require("_cpu").backward(
        _DTYPES[X], _view("dy", dy, X), _view("dh_n", dh_n, X), _view("dc_n", dc_n, X),
        _view("w_hh", w_hh, X), _view("c0", c0, X), _lengths(lengths),
        _view("gates", gates, X), _view("cs", cs, X), _view("dgx", dgx), _view("dh0", dh0),
        _view("dc0", dc0), _threads())
    return dgx, dh0, dc0, None
