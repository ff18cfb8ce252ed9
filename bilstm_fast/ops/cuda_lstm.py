"""CUDA C++ backend of the recurrence op (kernels: csrc/cuda/lstm.cu, design:
docs/cuda.md; contract: backends.py).

Legend: T steps, B batch, N directions (1 or 2), H hidden size, G = 4H,
X input dtype (fp32 / fp16 / bf16), f32 accumulation, cell state, workspaces.

One persistent launch runs all T steps of both directions (forward), one the
backward. Tensors cross into the compiled module as raw pointers, sizes and
strides (bilstm_fast._cuda never links torch); every tensor is checked here
first. Outputs and workspaces are allocated here, on the tensors' device, and
the kernels run on the caller's current stream with no host sync.

Emulation: with ``BILSTM_FAST_CUDA_EMULATE=1`` in the environment (read at
each call, so tests can set it with monkeypatch), ``backend="cuda"`` runs the
same kernel source compiled as plain C++ (bilstm_fast._cuda_emu, csrc/cuda/emu.h)
on *CPU* tensors, one OS thread per CUDA thread: the CUDA analogue of
TRITON_INTERPRET. It then accepts CPU tensors only; without it, CUDA tensors only.

``backend="auto"`` on CUDA tensors prefers this backend whenever it is
available and ``unsupported_reason`` is None (fp32/fp16/bf16, no proj_size);
float64 and proj_size go to the next backend (triton, then reference).
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch

from . import native

NAME = "cuda"
EMULATE_ENV = "BILSTM_FAST_CUDA_EMULATE"

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

# Plan overrides (0 = automatic), for tests and experiments: path 1 = on-chip
# W_hh, 2 = streaming; blocks per direction; threads per block; batch rows per
# shared-memory tile (-1: no tile, h / dG read from L2 as for huge H).
# Use `plan_override(...)`.
_overrides = {"path": 0, "blocks": 0, "threads": 0, "batch_tile": 0}
_PATHS = {None: 0, "auto": 0, "onchip": 1, "stream": 2}

# The plan of the most recent forward / backward call (dicts from the module:
# path, blocks, slice, threads, batch_tile, smem_bytes, why).
last_plan: dict[str, dict] = {}

_status_cache: dict[str, Optional[str]] = {}


def emulating() -> bool:
    """True when BILSTM_FAST_CUDA_EMULATE asks for the CPU emulation."""
    return os.environ.get(EMULATE_ENV, "0") not in ("", "0")


@contextlib.contextmanager
def plan_override(path: Optional[str] = None, blocks: int = 0, threads: int = 0, batch_tile: int = 0):
    """Force the kernel path ("onchip" / "stream"), blocks per direction,
    threads per block or batch tile inside the ``with`` block."""
    if path not in _PATHS:
        raise ValueError(f"path must be one of {list(_PATHS)}, got {path!r}")
    saved = dict(_overrides)
    _overrides.update(path=_PATHS[path], blocks=blocks, threads=threads, batch_tile=batch_tile)
    try:
        yield
    finally:
        _overrides.clear()
        _overrides.update(saved)


def _module_name() -> str:
    return "_cuda_emu" if emulating() else "_cuda"


def _module():
    return native.require(_module_name())


def unavailable_reason() -> Optional[str]:
    name = _module_name()
    if name not in _status_cache:
        mod = native.load(name)
        if isinstance(mod, str):
            why = mod
            if name == "_cuda":
                why += (" (it is built only when nvcc is found at build time; "
                        f"{EMULATE_ENV}=1 runs the kernels emulated on CPU tensors)")
        elif name == "_cuda_emu":
            why = None
        else:
            st = mod.device_status()
            if st["code"] != 0:
                why = (f"no CUDA device: {st['name']} ({st['code']}): {st['message']} "
                       f"(set {EMULATE_ENV}=1 to run the CUDA kernels emulated on CPU tensors)")
            elif st["count"] == 0:
                why = "no CUDA device: cudaGetDeviceCount found none"
            else:
                why = None
        _status_cache[name] = why
    return _status_cache[name]


def unsupported_reason(spec) -> Optional[str]:
    """``spec`` is a backends.CallSpec (device, dtype, N, H, P, proj, lengths)."""
    device, dtype, N, H, proj = spec.device, spec.dtype, spec.N, spec.H, spec.proj
    if proj:
        return ("proj_size (w_hr) is not supported by the cuda backend; "
                "backend='auto' serves it with the next backend (triton, then reference)")
    if emulating():
        if device != "cpu":
            return (f"{EMULATE_ENV}=1: the cuda backend runs emulated on CPU tensors only "
                    f"(got {device} tensors); unset it to run on the GPU")
    elif device != "cuda":
        return (f"the cuda backend needs CUDA tensors (got {device}); set {EMULATE_ENV}=1 "
                "to run its kernels emulated on CPU tensors")
    if dtype not in _DTYPE_CODES:
        return (f"dtype {dtype} is not supported by the cuda backend (float32, float16, "
                "bfloat16 only); backend='auto' serves it with the reference backend")
    if N not in (1, 2):
        return f"N must be 1 or 2 directions, got {N}"
    if unavailable_reason() is not None:
        return None  # nothing more to ask a module that cannot run; resolve_backend reports it
    mod = _module()
    device_index = torch.cuda.current_device() if device == "cuda" else 0
    sms, smem = mod.device_limits(device_index)
    for kind in (0, 1):
        try:
            mod.plan(kind, N, 1, H, _DTYPE_CODES[dtype], sms, smem)
        except RuntimeError as e:  # H too large even for the streaming path
            return str(e)
    return None


# ------------------------------------------------------------------ helpers
def _check(t: torch.Tensor, name: str, shape: tuple, dtype, device) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"cuda backend: {name}: expected shape {list(shape)}, got {list(t.shape)}")
    if t.dtype != dtype:
        raise ValueError(f"cuda backend: {name}: expected dtype {dtype}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"cuda backend: {name}: expected device {device}, got {t.device}")


def _check_contig(t: torch.Tensor, name: str) -> None:
    if not t.is_contiguous():
        raise ValueError(f"cuda backend: {name} must be contiguous")


def _seq_strides(t: torch.Tensor, name: str) -> tuple[int, int, int]:
    """Strides (elements) of a [T, B, N, *] tensor whose last dim is dense."""
    if t.stride(3) != 1:
        raise ValueError(f"cuda backend: {name}: the last dimension must have stride 1, "
                         f"got strides {t.stride()}")
    return t.stride(0), t.stride(1), t.stride(2)


def _launch_args(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"device": device.index if device.index is not None else torch.cuda.current_device(),
                "stream": torch.cuda.current_stream(device).cuda_stream}
    return {"device": 0, "stream": 0}


def _lengths(lengths: Optional[torch.Tensor], B: int, device) -> Optional[torch.Tensor]:
    if lengths is None:
        return None
    _check(lengths, "lengths", (B,), torch.int64, device)
    return lengths.contiguous()


# ----------------------------------------------------------------- contract
def forward(gx, w_hh, w_hr, h0, c0, lengths, need_ws):
    """-> y [T, B, N, H], h_n, c_n [N, B, H] (X); gates [T, B, N, 4H], cs [T, B, N, H] (f32)
    when need_ws, else empty."""
    if w_hr is not None:
        raise ValueError("cuda backend: proj_size (w_hr) is not supported")
    mod = _module()
    T, B, N, G = gx.shape
    H = G // 4
    dev, X = gx.device, gx.dtype
    if X not in _DTYPE_CODES:
        raise ValueError(f"cuda backend: unsupported dtype {X}")
    _check(w_hh, "w_hh", (N, G, H), X, dev)
    _check(h0, "h0", (N, B, H), X, dev)
    _check(c0, "c0", (N, B, H), X, dev)
    for name, t in (("w_hh", w_hh), ("h0", h0), ("c0", c0)):
        _check_contig(t, name)
    lengths = _lengths(lengths, B, dev)
    f32 = torch.float32
    w_t = w_hh.transpose(1, 2).contiguous()                 # [N, H, 4H]: coalesced over units
    y = gx.new_empty(T, B, N, H)                             # every element written by the kernel
    h_n, c_n = torch.empty_like(h0), torch.empty_like(c0)
    gates = gx.new_empty((T, B, N, G) if need_ws else (0,), dtype=f32)
    cs = gx.new_empty((T, B, N, H) if need_ws else (0,), dtype=f32)
    ws = gx.new_empty(mod.fwd_workspace_floats(N, B, H), dtype=f32)
    barrier = torch.zeros(N, dtype=torch.int32, device=dev)
    last_plan["forward"] = mod.forward(
        dtype=_DTYPE_CODES[X], T=T, B=B, N=N, H=H,
        gx=gx.data_ptr(), gx_strides=_seq_strides(gx, "gx"), w_t=w_t.data_ptr(),
        h0=h0.data_ptr(), c0=c0.data_ptr(), lengths=native.ptr(lengths),
        y=y.data_ptr(), y_strides=_seq_strides(y, "y"), h_n=h_n.data_ptr(), c_n=c_n.data_ptr(),
        gates=gates.data_ptr() if need_ws else 0, cs=cs.data_ptr() if need_ws else 0,
        ws=ws.data_ptr(), barrier=barrier.data_ptr(), **_launch_args(dev), **_overrides)
    return y, h_n, c_n, gates, cs


def backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, gates, cs):
    """-> dgx [T, B, N, 4H] (0 where t >= L_b), dh0, dc0 [N, B, H] (X), None (no dw_hr)."""
    if w_hr is not None:
        raise ValueError("cuda backend: proj_size (w_hr) is not supported")
    mod = _module()
    T, B, N, G = gates.shape
    H = G // 4
    dev, X = dy.device, dy.dtype
    if X not in _DTYPE_CODES:
        raise ValueError(f"cuda backend: unsupported dtype {X}")
    _check(dy, "dy", (T, B, N, H), X, dev)
    _check(dh_n, "dh_n", (N, B, H), X, dev)
    _check(dc_n, "dc_n", (N, B, H), X, dev)
    _check(w_hh, "w_hh", (N, G, H), X, dev)
    _check(c0, "c0", (N, B, H), X, dev)
    _check(gates, "gates", (T, B, N, G), torch.float32, dev)
    _check(cs, "cs", (T, B, N, H), torch.float32, dev)
    for name, t in (("dh_n", dh_n), ("dc_n", dc_n), ("w_hh", w_hh), ("c0", c0), ("gates", gates), ("cs", cs)):
        _check_contig(t, name)
    lengths = _lengths(lengths, B, dev)
    dgx = dy.new_empty(T, B, N, G)                           # every element written by the kernel
    dh0, dc0 = torch.empty_like(dh_n), torch.empty_like(dc_n)
    ws = dy.new_empty(mod.bwd_workspace_floats(N, B, H), dtype=torch.float32)
    barrier = torch.zeros(N, dtype=torch.int32, device=dev)
    last_plan["backward"] = mod.backward(
        dtype=_DTYPE_CODES[X], T=T, B=B, N=N, H=H,
        dy=dy.data_ptr(), dy_strides=_seq_strides(dy, "dy"), dh_n=dh_n.data_ptr(), dc_n=dc_n.data_ptr(),
        w_hh=w_hh.data_ptr(), c0=c0.data_ptr(), lengths=native.ptr(lengths),
        gates=gates.data_ptr(), cs=cs.data_ptr(), dgx=dgx.data_ptr(), dgx_strides=_seq_strides(dgx, "dgx"),
        dh0=dh0.data_ptr(), dc0=dc0.data_ptr(), ws=ws.data_ptr(), barrier=barrier.data_ptr(),
        **_launch_args(dev), **_overrides)
    return dgx, dh0, dc0, None
