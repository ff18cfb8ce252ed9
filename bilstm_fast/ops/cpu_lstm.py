"""CPU backend: the fused C++ recurrence kernels of bilstm_fast._cpu (csrc/cpu/).

Legend (docs/design.md §0): T steps, B batch, N directions (1 or 2), H hidden,
P = proj_size (the features of h) with a projection, else H, X input dtype.

Implements the backend contract of backends.py for CPU tensors in float32
and float64, with and without projection (proj_size: w_hr [N, P, H], h_t =
(o * tanh(c_t)) W_hr^T; the backward returns dw_hr, computed in the compiled
module as one GEMM over every step after the recurrence; docs/cpu.md,
"Projection"). What it declines (``unsupported_reason``, so
``backend="auto"`` falls back to "reference"): float16 / bfloat16 (no
fp16/bf16 kernels yet: the accumulate-in-fp32 path would need a convert pass
per step that this first version does not have), non-CPU tensors.

The layer's other GEMMs (input projection, dx, dW_ih, dW_hh) run on the
same micro-GEMM (``gemms`` = ops/cpu_gemm.py). This file only allocates the
outputs and calls: the compiled module checks
every tensor once at its boundary (csrc/common/tensor_arg.h) and raises
ValueError naming the argument. Tensors are passed as the objects themselves
and held by this frame for the whole call, so every pointer outlives the
kernels. No input is modified. The thread count is ``torch.get_num_threads()``.
"""
from __future__ import annotations

import torch

from . import cpu_gemm as gemms  # noqa: F401  the layer op's other GEMMs (backends.py)
from . import native

NAME = "cpu"
_DTYPES = (torch.float32, torch.float64)


def unavailable_reason() -> str | None:
    mod = native.load("_cpu")
    return mod if isinstance(mod, str) else None


def unsupported_reason(spec) -> str | None:
    """``spec`` is a backends.CallSpec (device, dtype, N, H, P, proj, lengths)."""
    if spec.device != "cpu":
        return f"the cpu backend runs CPU tensors only, got device {spec.device!r}"
    if spec.dtype not in _DTYPES:
        return (f"the cpu backend supports float32 and float64, got {spec.dtype} "
                "(float16/bfloat16 are served by the reference backend)")
    return None


def _threads() -> int:
    return max(1, torch.get_num_threads())


def forward(gx, w_hh, w_hr, h0, c0, lengths, keep_for_backward, plan=None):
    """gx [T, B, N, 4H], w_hh [N, 4H, P], w_hr [N, P, H] or None, h0 [N, B, P], c0 [N, B, H],
    lengths [B] int64 or None -> y [T, B, N, P], h_n [N, B, P], c_n [N, B, H],
    gates [T, B, N, 4H], cells [T, B, N, H] (gates/cells have shape (0,) when not
    keep_for_backward). ``plan``: the cpu backend has one plan (the driver splits
    the work by thread count), so only None."""
    _check_call(plan)
    T, B, N, G = gx.shape
    H = G // 4
    P = H if w_hr is None else w_hr.shape[1]
    y = gx.new_empty(T, B, N, P)
    h_n, c_n = gx.new_empty(N, B, P), gx.new_empty(N, B, H)
    if keep_for_backward:
        gates, cells = gx.new_empty(T, B, N, G), gx.new_empty(T, B, N, H)
    else:
        gates, cells = gx.new_empty(0), gx.new_empty(0)  # two tensors: custom op outputs may not alias
    native.require("_cpu").forward(gx, w_hh, h0, c0, lengths, y, h_n, c_n,
                                   gates if keep_for_backward else None, cells if keep_for_backward else None,
                                   _threads(), w_hr)
    return y, h_n, c_n, gates, cells


def backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, gates, cells, plan=None):
    """dy [T, B, N, P], dh_n [N, B, P], dc_n [N, B, H], forward's inputs and workspace
    -> dgx [T, B, N, 4H], dh0 [N, B, P], dc0 [N, B, H], dw_hr [N, P, H] (None
    without projection)."""
    _check_call(plan)
    T, B, N, G = gates.shape
    H = G // 4
    P = H if w_hr is None else w_hr.shape[1]
    dgx = dy.new_empty(T, B, N, G)
    dh0, dc0 = dy.new_empty(N, B, P), dy.new_empty(N, B, H)
    dw_hr = None if w_hr is None else dy.new_empty(N, P, H)
    native.require("_cpu").backward(dy, dh_n, dc_n, w_hh, c0, lengths, gates, cells, dgx, dh0, dc0,
                                    _threads(), w_hr, dw_hr)
    return dgx, dh0, dc0, dw_hr


def parse_plan(text: str):
    """The cpu backend takes no plan: any text is an error (backends.py)."""
    raise ValueError(f"the cpu backend has no plan options (got {text!r}); "
                     "the driver splits the work by torch.get_num_threads()")


def _check_call(plan) -> None:
    """What the compiled module does not see: a plan."""
    if plan is not None:
        raise ValueError(f"the cpu backend takes no plan, got {plan!r}")
