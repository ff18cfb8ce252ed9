"""Triton backend of the recurrence op: both directions of one LSTM layer in
one persistent launch (forward) and one (backward).

Contract: backends.py. Reading order: this file (the contract, then the
launchers), triton_plan.py (the dispatcher: path and tiles), then
triton_kernels.py (the kernels). Design, the two paths and the predicted
per-step cost: docs/triton.md.

Legend: T time steps, B batch, N directions (1 or 2), H hidden size,
X input dtype (fp32 / fp16 / bf16), f32 the accumulation and cell-state dtype.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import triton

from . import cuda_compat
from .backends import CallSpec
from .triton_kernels import INTERPRET, _lstm_bwd_kernel, _lstm_fwd_kernel
from .triton_plan import (KernelConfig, dot_precision, kernel_config, maxnreg_kwargs, parse_plan,
                          smem_bytes_of)

NAME = "triton"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
__all__ = ["NAME", "unavailable_reason", "unsupported_reason", "parse_plan", "plans", "forward", "backward",
           "lstm_fwd_triton", "lstm_bwd_triton", "KernelConfig", "kernel_config"]


_unavailable: Optional[str] = None
_unavailable_known = False


def unavailable_reason() -> Optional[str]:
    """None when this machine can run Triton kernels (a CUDA GPU, or the
    interpreter enabled before this module was imported). Cached: cheap."""
    global _unavailable, _unavailable_known
    if not _unavailable_known:
        if INTERPRET:
            _unavailable = None
        elif torch.cuda.is_available():
            # a GPU older than sm_80 cannot run the kernels (cuda_compat.triton_arch_reason)
            reasons = [_device_reason(i) for i in range(torch.cuda.device_count())]
            _unavailable = ("no CUDA device can run the Triton kernels: " + "; ".join(reasons)
                            if reasons and all(reasons) else None)
        else:
            _unavailable = ("the Triton backend needs a CUDA GPU, or TRITON_INTERPRET=1 set "
                            "before bilstm_fast.ops.triton_lstm is imported (CPU interpreter)")
        _unavailable_known = True
    return _unavailable


def _device_reason(index: int) -> Optional[str]:
    """Why CUDA device ``index`` cannot run the Triton kernels, or None."""
    dev = cuda_compat.device_facts(index)
    return None if dev is None else cuda_compat.triton_arch_reason(dev)


def unsupported_reason(spec) -> Optional[str]:
    """``spec`` is a backends.CallSpec (device, dtype, N, H, P, proj, lengths):
    static facts only, never T or B. Tensor-level checks are in `_check_inputs`."""
    device, dtype, N, H, P, proj = spec.device, spec.dtype, spec.N, spec.H, spec.P, spec.proj
    if proj or P != H:
        return ("proj_size (w_hr) is not supported by the Triton backend; "
                "the reference backend serves it")
    if dtype not in _DTYPES:
        return (f"dtype {dtype} is not supported by the Triton backend (float32, float16, "
                "bfloat16 only; float64 is served by the reference and cpu backends)")
    if N not in (1, 2) or H < 1:
        return f"expected N in (1, 2) directions and H >= 1, got N={N}, H={H}"
    if device == "cuda":
        # the current device: on one older than sm_80, backend="auto" passes to the next backend
        return None if INTERPRET else _device_reason(torch.cuda.current_device())
    if device == "cpu" and INTERPRET:
        return None
    return (f"the Triton backend runs on CUDA tensors (it needs a CUDA GPU), or on CPU "
            f"tensors under TRITON_INTERPRET=1 set before bilstm_fast.ops.triton_lstm is "
            f"imported (got {device} tensors, interpreter {'on' if INTERPRET else 'off'})")


def _plan_text(cfg: KernelConfig) -> str:
    """A KernelConfig -> the parse_plan text that forces exactly it."""
    text = (f"path={'resident' if cfg.resident else 'streamed'},block_h={cfg.block_h},"
            f"block_b={cfg.block_b},num_warps={cfg.num_warps},num_stages={cfg.num_stages}")
    return text + (f",maxnreg={cfg.maxnreg}" if cfg.maxnreg is not None else "")


def plans(spec) -> list:
    """Every distinct plan text the dispatcher can choose for a call like
    ``spec`` (a backends.CallSpec) on the current device under the current
    TF32 setting: the one kernel_config() picks (resident or streamed; T and
    B never change it), as a text parse_plan turns back into that config.
    [] when the backend cannot run the call. (Today's dispatcher; the kernel
    owner keeps this in step with triton_plan.kernel_config.)"""
    if unavailable_reason() is not None or unsupported_reason(spec) is not None:
        return []
    device = torch.device("cuda" if spec.device == "cuda" else "cpu")
    cfg = kernel_config(spec.H, spec.dtype, smem_bytes_of(device), dot_precision(spec.dtype))
    return [_plan_text(cfg)]


def _check_inputs(gx, w_hh, w_hr, h0, c0, lengths) -> None:
    """Raise ValueError naming the tensor when a call breaks the contract."""
    T, B, N, G = gx.shape
    H = G // 4
    why = unsupported_reason(CallSpec(gx.device.type, gx.dtype, N, H, w_hh.shape[-1],
                                      w_hr is not None, lengths is not None))
    if why is not None:
        raise ValueError(why)
    for name, t, shape in (("gx", gx, (T, B, N, G)), ("w_hh", w_hh, (N, G, H)),
                           ("h0", h0, (N, B, H)), ("c0", c0, (N, B, H))):
        if tuple(t.shape) != shape or t.dtype != gx.dtype or t.device != gx.device:
            raise ValueError(f"{name}: expected {gx.dtype} {list(shape)} on {gx.device}, "
                             f"got {t.dtype} {list(t.shape)} on {t.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous tensor")
    if lengths is not None and (lengths.dtype != torch.int64 or tuple(lengths.shape) != (B,)
                                or lengths.device != gx.device or not lengths.is_contiguous()):
        raise ValueError(f"lengths: expected contiguous int64 [{B}] on {gx.device}, got "
                         f"{lengths.dtype} {list(lengths.shape)} on {lengths.device}")


def forward(gx, w_hh, w_hr, h0, c0, lengths, keep_for_backward, plan: Optional[KernelConfig] = None):
    _check_inputs(gx, w_hh, w_hr, h0, c0, lengths)
    return lstm_fwd_triton(gx, w_hh, h0, c0, lengths, keep_for_backward, plan)


def backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, gates, cells,
             plan: Optional[KernelConfig] = None):
    if w_hr is not None:
        raise ValueError("proj_size (w_hr) is not supported by the Triton backend")
    if gates.dim() != 4 or gates.dtype != torch.float32 or cells.dtype != torch.float32:
        raise ValueError("backward needs the fp32 workspace (gates, cells) of a forward run "
                         "with keep_for_backward=True")
    dgx, dh0, dc0 = lstm_bwd_triton(dy, dh_n, dc_n, w_hh, c0, lengths, gates, cells, plan)
    return dgx, dh0, dc0, None


def lstm_fwd_triton(
    gx: torch.Tensor,                 # [T, B, N, 4H] X
    w_hh: torch.Tensor,               # [N, 4H, H]    X
    h0: torch.Tensor,                 # [N, B, H]     X
    c0: torch.Tensor,                 # [N, B, H]     X
    lengths: Optional[torch.Tensor],  # [B] int64, values in 1..T, or None
    keep_for_backward: bool,
    config: Optional[KernelConfig] = None,
):
    """-> y [T, B, N, H] X, h_n, c_n [N, B, H] X, gates [T, B, N, 4H] f32,
    cells [T, B, N, H] f32 (both shape (0,) when not keep_for_backward). One launch."""
    T, B, N, G = gx.shape
    H = G // 4
    prec = dot_precision(gx.dtype)
    cfg = config or kernel_config(H, gx.dtype, smem_bytes_of(gx.device), prec)
    f32 = torch.float32
    y = gx.new_empty(T, B, N, H)          # every element written by the kernel
    h_n, c_n = h0.new_empty(N, B, H), c0.new_empty(N, B, H)
    gates = gx.new_empty((T, B, N, G) if keep_for_backward else (0,), dtype=f32)
    cells = gx.new_empty((T, B, N, H) if keep_for_backward else (0,), dtype=f32)
    # STREAMED keeps c in global memory, double-buffered by step parity.
    c_scr = gx.new_empty((2, N, B, H) if not cfg.resident else (0,), dtype=f32)
    grid = (N, triton.cdiv(B, cfg.block_b))
    with _device_of(gx):
        _lstm_fwd_kernel[grid](
            gx, w_hh, h0, c0, gx if lengths is None else lengths,
            y, h_n, c_n, gates, cells, c_scr,
            T, B, H,
            H=H, N=N, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, RESIDENT=cfg.resident,
            HAS_LENGTHS=lengths is not None, KEEP_FOR_BACKWARD=bool(keep_for_backward), DOT_PREC=prec,
            F32_DOT=INTERPRET and gx.dtype == torch.bfloat16,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **maxnreg_kwargs(cfg))
    return y, h_n, c_n, gates, cells


def lstm_bwd_triton(
    dy: torch.Tensor,                 # [T, B, N, H]  X
    dh_n: torch.Tensor,               # [N, B, H]     X
    dc_n: torch.Tensor,               # [N, B, H]     X
    w_hh: torch.Tensor,               # [N, 4H, H]    X
    c0: torch.Tensor,                 # [N, B, H]     X
    lengths: Optional[torch.Tensor],  # [B] int64 or None
    gates: torch.Tensor,              # [T, B, N, 4H] f32, from the forward
    cells: torch.Tensor,              # [T, B, N, H]  f32, from the forward
    config: Optional[KernelConfig] = None,
):
    """-> dgx [T, B, N, 4H] X (zero where t >= L_b), dh0, dc0 [N, B, H] X.
    One launch, no atomics: every output element has exactly one writer."""
    T, B, N, G = gates.shape
    H = G // 4
    prec = dot_precision(dy.dtype)
    cfg = config or kernel_config(H, dy.dtype, smem_bytes_of(dy.device), prec)
    f32 = torch.float32
    dgx = dy.new_empty(T, B, N, G)        # every element written by the kernel
    dh0, dc0 = dy.new_empty(N, B, H), dy.new_empty(N, B, H)
    # STREAMED: dh exchanged through global memory; dc double-buffered by parity.
    dh_scr = dy.new_empty((N, B, H) if not cfg.resident else (0,), dtype=f32)
    dc_scr = dy.new_empty((2, N, B, H) if not cfg.resident else (0,), dtype=f32)
    grid = (N, triton.cdiv(B, cfg.block_b))
    with _device_of(dy):
        _lstm_bwd_kernel[grid](
            dy, dh_n, dc_n, w_hh, c0, dy if lengths is None else lengths,
            gates, cells, dgx, dh0, dc0, dh_scr, dc_scr,
            T, B,
            H=H, N=N, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, RESIDENT=cfg.resident,
            HAS_LENGTHS=lengths is not None, DOT_PREC=prec,
            F32_DOT=INTERPRET and dy.dtype == torch.bfloat16,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **maxnreg_kwargs(cfg))
    return dgx, dh0, dc0



def _device_of(t: torch.Tensor):
    """Launch on the tensors' GPU (Triton launches on the current device),
    on the current stream of that device."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
