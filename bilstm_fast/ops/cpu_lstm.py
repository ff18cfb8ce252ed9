"""CPU backend: the fused C++ recurrence kernels of bilstm_fast._cpu (csrc/cpu/).

Legend (docs/design.md §0): T steps, B batch, N directions (1 or 2), H hidden,
X input dtype, A accumulation dtype (backends.acc_dtype: float64 for float64,
else float32).

Implements the backend contract of backends.py for CPU tensors in float32,
float64, float16 and bfloat16 without projection. For X = float16 / bfloat16
the kernels read and write X (gx, w_hh, h0, c0, y, h_n, c_n, dy, dgx, ...)
and compute in A = float32: h, the cell state, the gate sums and the
workspace (gates, cells) are float32; W_hh stays in X in the packed panels
and is widened in the micro-kernel (docs/cpu.md, "fp16 / bf16"). What it
declines (``unsupported_reason``, so ``backend="auto"`` falls back to
"reference"): proj_size (w_hr), non-CPU tensors.

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
from .backends import acc_dtype

NAME = "cpu"
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


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
        return (f"the cpu backend supports float32, float64, float16 and bfloat16, got {spec.dtype}")
    return None


def _threads() -> int:
    return max(1, torch.get_num_threads())


def forward(gx, w_hh, w_hr, h0, c0, lengths, keep_for_backward, plan=None):
    """gx [T, B, N, 4H], w_hh [N, 4H, H], h0/c0 [N, B, H], lengths [B] int64 or None
    -> y [T, B, N, H], h_n, c_n [N, B, H], gates [T, B, N, 4H], cells [T, B, N, H]
    (gates/cells in A, shape (0,) when not keep_for_backward). ``plan``: the cpu backend has
    one plan (the driver splits the work by thread count), so only None."""
    _check_call(w_hr, plan)
    T, B, N, G = gx.shape
    H, A = G // 4, acc_dtype(gx.dtype)
    y = gx.new_empty(T, B, N, H)
    h_n, c_n = gx.new_empty(N, B, H), gx.new_empty(N, B, H)
    if keep_for_backward:
        gates, cells = gx.new_empty(T, B, N, G, dtype=A), gx.new_empty(T, B, N, H, dtype=A)
    else:  # two tensors: custom op outputs may not alias
        gates, cells = gx.new_empty(0, dtype=A), gx.new_empty(0, dtype=A)
    native.require("_cpu").forward(gx, w_hh, h0, c0, lengths, y, h_n, c_n,
                                   gates if keep_for_backward else None, cells if keep_for_backward else None, _threads())
    return y, h_n, c_n, gates, cells


def backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, gates, cells, plan=None):
    """dy [T, B, N, H], dh_n/dc_n [N, B, H], forward's inputs and workspace
    -> dgx [T, B, N, 4H], dh0, dc0 [N, B, H], None (no projection)."""
    _check_call(w_hr, plan)
    T, B, N, G = gates.shape
    dgx = dy.new_empty(T, B, N, G)
    dh0, dc0 = dy.new_empty(N, B, G // 4), dy.new_empty(N, B, G // 4)
    native.require("_cpu").backward(dy, dh_n, dc_n, w_hh, c0, lengths, gates, cells, dgx, dh0, dc0,
                                    _threads())
    return dgx, dh0, dc0, None


def parse_plan(text: str):
    """The cpu backend takes no plan: any text is an error (backends.py)."""
    raise ValueError(f"the cpu backend has no plan options (got {text!r}); "
                     "the driver splits the work by torch.get_num_threads()")


def _check_call(w_hr, plan) -> None:
    """What the compiled module does not see: a projection, a plan."""
    if w_hr is not None:
        raise ValueError("proj_size (w_hr) is not implemented in the cpu backend")
    if plan is not None:
        raise ValueError(f"the cpu backend takes no plan, got {plan!r}")
