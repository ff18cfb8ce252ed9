"""CPU backend: the fused C++ recurrence kernels of bilstm_fast._cpu (csrc/cpu/).

Legend (docs/design.md §0): T steps, B batch, N directions (1 or 2), H hidden,
X input dtype, A accumulation dtype (backends.acc_dtype: float64 for float64,
else float32), P = proj_size (the features of h) with a projection, else H.

Implements the backend contract of backends.py for CPU tensors in float32,
float64, float16 and bfloat16. For X = float16 / bfloat16 the kernels read
and write X (gx, w_hh, h0, c0, y, h_n, c_n, dy, dgx, ...) and compute in
A = float32: h, the cell state, the gate sums and the workspace (gates,
cells) are float32; W_hh stays in X in the packed panels and is widened in
the micro-kernel (docs/cpu.md, "fp16 / bf16"). With a projection
(proj_size: w_hr [N, P, H], h_t = (o * tanh(c_t)) W_hr^T; float32 and
float64) the backward returns dw_hr, computed in the compiled module as
one GEMM over every step after the recurrence (docs/cpu.md, "Projection").
What it declines (``unsupported_reason``, so ``backend="auto"`` falls
back to "reference"): proj_size in float16 / bfloat16, non-CPU tensors.

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
    if spec.dtype not in _DTYPES:
        return (f"the cpu backend supports float32, float64, float16 and bfloat16, got {spec.dtype}")
    if spec.proj and spec.dtype not in (torch.float32, torch.float64):
        return (f"proj_size on the cpu backend runs float32 and float64, got {spec.dtype} "
                "(the reference backend serves it)")
    return None


def _threads() -> int:
    return max(1, torch.get_num_threads())


def forward(gx, w_hh, w_hr, h0, c0, lengths, keep_for_backward, plan=None):
    """gx [T, B, N, 4H] (X or A), w_hh [N, 4H, P], w_hr [N, P, H] or None, h0 [N, B, P], c0 [N, B, H],
    lengths [B] int64 or None -> y [T, B, N, P], h_n [N, B, P], c_n [N, B, H],
    gates [T, B, N, 4H], cells [T, B, N, H] (gates/cells in A, shape (0,) when not
    keep_for_backward). ``plan``: the cpu backend has one plan (the driver splits
    the work by thread count), so only None."""
    _check_call(plan)
    T, B, N, G = gx.shape
    X = w_hh.dtype
    H, A = G // 4, acc_dtype(X)
    P = H if w_hr is None else w_hr.shape[1]
    # The kernels read gx in A: the layer op's projection hands it over in A
    # (cpu_gemm.linear(workspace=True)); a caller's gx in X is widened here.
    if gx.dtype == X and X != A:
        gx = gx.to(A)
    y = gx.new_empty(T, B, N, P, dtype=X)
    h_n, c_n = gx.new_empty(N, B, P, dtype=X), gx.new_empty(N, B, H, dtype=X)
    if keep_for_backward:
        gates, cells = gx.new_empty(T, B, N, G, dtype=A), gx.new_empty(T, B, N, H, dtype=A)
    else:  # two tensors: custom op outputs may not alias
        gates, cells = gx.new_empty(0, dtype=A), gx.new_empty(0, dtype=A)
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
