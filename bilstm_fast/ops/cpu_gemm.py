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

float16 / bfloat16 (X): the products run on the same micro-GEMM in float32
(A) and are rounded to X once, as torch's own CPU GEMMs for these dtypes
accumulate in float32 too. The operand that is packed (B: W_ih, W_ih again
for dx, x for dW_ih, y / h0 for dW_hh) is read in X and converted while
packed; the other one (A: x, dG) and the output go through a float32 copy
here. Why not torch's fp16/bf16 GEMMs: on this CPU (Zen 3, no AVX512-FP16 /
BF16) they are ~10x slower than fp32 -- the input projection of T64 B1 D300
H256 ([64, 300] x [300, 2048]), one thread, CPU time, medians of 30, 2 Dec
2026, load average ~4 on 2 cores: torch fp16 12.9 ms, bf16 14.6 ms; fp32
copies + this micro-GEMM 1.5-2.2 ms (fp32 itself 1.1-1.2 ms); at [512, 300]
(B8) torch fp16 95-99 ms, bf16 109-111 ms, fp32 copies + ours 9.5-11.5 ms.

Every tensor is passed as itself and checked once by the compiled module
(csrc/common/tensor_arg.h); this frame holds it for the whole call.

The layer op's gx (``linear(..., workspace=True)``) goes into one buffer per
thread, kept and reused (as cuDNN keeps a workspace): a fresh tensor of 32 MB
or more is a fresh mmap from glibc (its mmap threshold stops growing at 32
MB), and first-touch page faults then cost more than the GEMM that fills it
-- T64 B32 D300 H512 (gx 32 MB) on a Zen 5 KVM guest, 2 threads, min of 60:
the projection 23.4 ms fresh vs 12.5 ms into reused memory (2 Dec 2026).
``release_workspace()`` frees this thread's buffer.
"""
from __future__ import annotations

import threading
from typing import Optional

import torch
from torch import Tensor

from . import native

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_HALF = (torch.float16, torch.bfloat16)


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _acc(t: Optional[Tensor]) -> Optional[Tensor]:
    """A float32 copy of an fp16 / bf16 operand that is not packed (A, bias)."""
    return t if t is None or t.dtype not in _HALF else t.float()


_workspace = threading.local()


def _workspace_tensor(rows: int, cols: int, dtype: torch.dtype, slot: str = "buf") -> Tensor:
    """[rows, cols] at the start of this thread's workspace ``slot`` (grown when too small)."""
    need = rows * cols
    buf = getattr(_workspace, slot, None)
    if buf is None or buf.dtype != dtype or buf.numel() < need:
        setattr(_workspace, slot, None)  # free the old one before allocating the new
        # A normal tensor even when the first call runs under inference_mode: an
        # inference tensor could not be written in place by a later call outside it.
        with torch.inference_mode(False):
            buf = torch.empty(need, dtype=dtype)
        setattr(_workspace, slot, buf)
    return buf[:need].view(rows, cols)


def release_workspace() -> None:
    """Free this thread's workspace (the next workspace call allocates again)."""
    _workspace.buf = _workspace.rows = None


def linear(x: Tensor, w: Tensor, bias: Optional[Tensor], workspace: bool = False, *,
           _slot: str = "buf") -> Tensor:
    """x [M, D] @ w [G, D]^T + bias [G] -> [M, G] (bias may be None), in x's
    dtype. workspace: the result is written into this thread's reused buffer
    (module docstring), valid until the next workspace call on this thread,
    and left in A (float32 for fp16 / bf16 x): the layer op's gx, which the
    recurrence reads in A (cpu_lstm.forward), so no conversion pass runs
    between the two and the projection's sums reach the cell update unrounded."""
    if x.numel() == 0 or w.numel() == 0:   # nothing for the kernels (they take no empty tensors)
        return torch.addmm(bias, x, w.t()) if bias is not None else x @ w.t()
    acc = torch.float32 if x.dtype in _HALF else x.dtype
    out = (_workspace_tensor(x.shape[0], w.shape[0], acc, _slot) if workspace
           else x.new_empty(x.shape[0], w.shape[0], dtype=acc))
    mod = native.require("_cpu")
    a = x if _bf16_dot(mod, x, w) else _acc(x)
    mod.linear(a, w, _acc(bias), out, _threads())
    return out if workspace else out.to(x.dtype)


def _bf16_dot(mod, x: Tensor, w: Tensor) -> bool:
    """x and w go to the bf16 dot-product kernels as they are (AVX512-BF16:
    the products of bf16 pairs are exact in float32, as in the float32 path)."""
    return (x.dtype == w.dtype == torch.bfloat16 and mod.bf16_dot() and x.shape[1] % 2 == 0
            and x.stride(1) == 1 and w.stride(1) == 1 and x.stride(0) % 2 == 0 and w.stride(0) % 2 == 0
            and x.data_ptr() % 4 == 0 and w.data_ptr() % 4 == 0)


def linear_rows(x: Tensor, w: Tensor, bias: Optional[Tensor], rows: Tensor) -> Tensor:
    """[M, G] whose rows ``rows`` (int64 [R], increasing) are x[rows] @ w^T + bias
    and whose other rows are undefined (in this thread's workspace, in A as
    linear(workspace=True)): the
    layer's input projection over the positions inside the sequences only --
    the recurrence never reads gx past a sequence's end. One GEMM over the R
    gathered rows, then a copy of its output into place. A BiLSTM on a
    PackedSequence, T64 D300 H256, lengths drawn from T/4..T, Zen 5, 2
    threads, min of 60, 2 runs: B8 2.70-2.72 -> 1.97-2.02 ms, B32 9.9-10.2
    -> 8.5-9.4 ms (2 Dec 2026; ONNX Runtime projects every padded row too)."""
    inside = linear(x.index_select(0, rows), w, bias, workspace=True, _slot="rows")
    out = _workspace_tensor(x.shape[0], w.shape[0], inside.dtype)
    return out.index_copy_(0, rows, inside)


def matmul(a: Tensor, b: Tensor, trans_a: bool = False) -> Tensor:
    """a [M, K] @ b [K, N] -> [M, N], or a^T @ b for a [K, M] (trans_a)."""
    if a.numel() == 0 or b.numel() == 0:
        return (a.t() if trans_a else a) @ b
    out = a.new_empty(a.shape[1] if trans_a else a.shape[0], b.shape[1],
                      dtype=torch.float32 if a.dtype in _HALF else a.dtype)
    native.require("_cpu").matmul(_acc(a), b, out, trans_a, _threads())
    return out.to(a.dtype)


def recurrent_weight_grad(dgx: Tensor, y: Tensor, h0: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """dW_hh [N, 4H, P] from dgx [T, B, N, 4H] (zero where t >= L_b), y [T, B, N, P],
    h0 [N, B, P] (P = proj_size, or H): the sums of ops/recurrence.py's
    _recurrent_weight_grad, one GEMM per direction (threads split between
    them), h_{t-1} packed straight from y and h0."""
    T, B, N, G = dgx.shape
    dw = dgx.new_empty(N, G, y.shape[-1], dtype=torch.float32 if dgx.dtype in _HALF else dgx.dtype)
    native.require("_cpu").recurrent_weight_grad(_acc(dgx).contiguous(), y.contiguous(), h0.contiguous(),
                                                 lengths, dw, _threads())
    return dw.to(dgx.dtype)
