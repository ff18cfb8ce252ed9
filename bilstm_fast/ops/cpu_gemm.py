"""The cpu backend's GEMMs outside the recurrence, on the same micro-GEMM as
its recurrence kernels (bilstm_fast._cpu: linear, matmul, recurrent_weight_grad).

Legend (docs/design.md §0): M = T*B rows, D input features, G = N*4H gate
columns, T steps, B batch, N directions, H hidden, P = proj_size or H.

The layer op (ops/recurrence.py) takes a backend's ``gemms`` for the input
projection, its backward (dx, dW_ih) and dW_hh; this module is the cpu
backend's (cpu_lstm.gemms). Why not torch's matmul (MKL / oneDNN): on the
CPU these kernels were tuned on (AMD EPYC Zen 3, AVX2/FMA, 2 cores) torch's
sgemm reached ~75-80% of the FMA peak on one core at these shapes and scaled
poorly to two, ours ~88-90% per core with no synchronization between
threads (each packs and computes its own output columns); docs/cpu.md has
the measurements.

The weights are packed into the micro-GEMM's panels on every call, never
cached: a cached copy can go stale (a write through ``.data`` or
``.numpy()`` bumps no version counter; issue 9's stale-cache bug), and
packing W_ih is D*G element copies against the M*D*G FMAs of the product.

Every tensor is passed as itself and checked once by the compiled module
(csrc/common/tensor_arg.h); this frame holds it for the whole call.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import native

DTYPES = (torch.float32, torch.float64)


def _threads() -> int:
    return max(1, torch.get_num_threads())


def linear(x: Tensor, w: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x [M, D] @ w [G, D]^T + bias [G] -> [M, G] (bias may be None)."""
    if x.numel() == 0 or w.numel() == 0:   # nothing for the kernels (they take no empty tensors)
        return torch.addmm(bias, x, w.t()) if bias is not None else x @ w.t()
    out = x.new_empty(x.shape[0], w.shape[0])
    native.require("_cpu").linear(x, w, bias, out, _threads())
    return out


def matmul(a: Tensor, b: Tensor, trans_a: bool = False) -> Tensor:
    """a [M, K] @ b [K, N] -> [M, N], or a^T @ b for a [K, M] (trans_a)."""
    if a.numel() == 0 or b.numel() == 0:
        return (a.t() if trans_a else a) @ b
    out = a.new_empty(a.shape[1] if trans_a else a.shape[0], b.shape[1])
    native.require("_cpu").matmul(a, b, out, trans_a, _threads())
    return out


def recurrent_weight_grad(dgx: Tensor, y: Tensor, h0: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """dW_hh [N, 4H, P] from dgx [T, B, N, 4H] (zero where t >= L_b), y [T, B, N, P],
    h0 [N, B, P] (P = proj_size, or H): the sums of ops/recurrence.py's
    _recurrent_weight_grad, one GEMM per direction (threads split between
    them), h_{t-1} packed straight from y and h0."""
    T, B, N, G = dgx.shape
    dw = dgx.new_empty(N, G, y.shape[-1])
    native.require("_cpu").recurrent_weight_grad(dgx.contiguous(), y.contiguous(), h0.contiguous(),
                                                 lengths, dw, _threads())
    return dw
