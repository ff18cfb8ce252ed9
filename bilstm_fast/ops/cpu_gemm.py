"""The cpu backend's GEMMs outside the recurrence, on the same micro-GEMM as
its recurrence kernels (bilstm_fast._cpu: linear, matmul, recurrent_weight_grad):
the input projection (``cpu_linear``, a custom op whose backward's dx and
dW_ih run here too) and the recurrent weight gradient (``recurrent_weight_grad``,
which ops/recurrence.py takes from a backend module that has one).

Legend: M = T*B rows, D input features, G = N*4H gate columns, T steps,
B batch, N directions, H hidden.

Why not torch's matmul (MKL): on the CPU these kernels were tuned on (AMD
EPYC Zen 3, AVX2/FMA, 2 cores) torch's sgemm reached ~75-80% of the FMA peak
on one core at these shapes and scaled poorly to two, ours ~88-90% per core
with no synchronization between threads (each packs and computes its own
output columns); docs/cpu.md has the measurements. The custom op has a fake,
so torch.compile traces it as one node.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from . import native

DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def _view(t: Tensor):
    return (native.ptr(t), tuple(t.shape), tuple(t.stride()))


def _threads() -> int:
    return max(1, torch.get_num_threads())


# Packed copies of inference weights, in the panel layout of the active ISA
# build: (kind, w) -> (key, packed 1-d tensor); kind "w_rows" is the
# projection's B = W_ih^T, "w_hh" the forward step's W_hh. Packing both for
# every call was ~11% of a T=64 B=1 inference call (perf, one thread). Weak
# keys: an entry dies with its tensor, so a freed address reused by a new
# tensor can never hit; the key also holds the tensor's version counter
# (in-place changes), data pointer, dtype and ISA. A tensor is cached from
# its second use (BiLSTM keeps its inference weights between calls:
# module.py), so weights built anew on every call (training, or the
# functional API on raw parameters) never pay for an entry.
_packed: dict[str, WeakIdKeyDictionary] = {"w_rows": WeakIdKeyDictionary(), "w_hh": WeakIdKeyDictionary()}


def packed_weight(w: Tensor, kind: str) -> Optional[Tensor]:
    """w's packed copy (kind "w_rows": w [G, D] for linear; "w_hh": w [N, 4H, H]
    for forward), or None on its first use."""
    mod, dt = native.require("_cpu"), DTYPES[w.dtype]
    cache = _packed[kind]
    key = (w._version, w.data_ptr(), w.dtype, mod.isa())
    seen = cache.get(w)
    if seen is not None and seen[0] == key:
        if seen[1] is None:  # second use: pack once, keep it
            if kind == "w_rows":
                packed = w.new_empty(mod.packed_size(dt, *w.shape))
                mod.pack_w(dt, _view(w), _view(packed))
            else:
                packed = w.new_empty(mod.packed_w_hh_size(dt, w.shape[0], w.shape[2]))
                mod.pack_w_hh(dt, _view(w), _view(packed))
            seen = cache[w] = (key, packed)
        return seen[1]
    cache[w] = (key, None)
    return None


def _linear(x: Tensor, w: Tensor, bias: Optional[Tensor], packed: Optional[Tensor] = None) -> Tensor:
    out = x.new_empty(x.shape[0], w.shape[0])
    native.require("_cpu").linear(DTYPES[x.dtype], _view(x), _view(w),
                                  None if bias is None else _view(bias), _view(out), _threads(),
                                  None if packed is None else _view(packed))
    return out


@torch.library.custom_op("bilstm_fast::cpu_linear", mutates_args=())
def cpu_linear(x: Tensor, w: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x [M, D] @ w [G, D]^T + bias [G] -> [M, G]."""
    return _linear(x, w, bias)


def cpu_linear_inference(x: Tensor, w: Tensor, bias: Optional[Tensor]) -> Tensor:
    """cpu_linear for a call that needs no gradient, outside torch.compile:
    the same kernel called directly (the custom op's dispatch was ~40% of
    the Python time of a small BiLSTM call, cProfile) with w's packed copy."""
    return _linear(x, w, bias, packed_weight(w, "w_rows"))


@cpu_linear.register_fake
def _(x, w, bias):
    return x.new_empty(x.shape[0], w.shape[0])


def matmul(a: Tensor, b: Tensor, trans_a: bool = False) -> Tensor:
    """a [M, K] @ b [K, N] -> [M, N], or a^T @ b for a [K, M] (trans_a), on our GEMM."""
    out = a.new_empty(a.shape[1] if trans_a else a.shape[0], b.shape[1])
    native.require("_cpu").matmul(DTYPES[a.dtype], _view(a), _view(b), _view(out), trans_a, _threads())
    return out


def _setup_context(ctx, inputs, output):
    x, w, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, w)


def _backward(ctx, grad):  # grad [M, G]
    x, w = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad
    grad = grad.contiguous()
    dx = matmul(grad, w) if need_x else None                   # [M, G] @ [G, D]
    dw = matmul(grad, x.contiguous(), trans_a=True) if need_w else None   # [M, G]^T @ [M, D]
    db = grad.sum(0) if ctx.has_bias and need_b else None
    return dx, dw, db


cpu_linear.register_autograd(_backward, setup_context=_setup_context)


def recurrent_weight_grad(dgx: Tensor, y: Tensor, h0: Tensor, lengths: Optional[Tensor]) -> Tensor:
    """dW_hh [N, 4H, H] from dgx [T, B, N, 4H] (contiguous, zero where t >= L_b),
    y [T, B, N, H], h0 [N, B, H]: the same sums as ops/recurrence.py's
    _recurrent_weight_grad, one GEMM per direction (threads split between
    them), h_{t-1} packed straight from y and h0."""
    T, B, N, G = dgx.shape
    dw = dgx.new_empty(N, G, G // 4)
    native.require("_cpu").recurrent_weight_grad(
        DTYPES[dgx.dtype], _view(dgx.contiguous()), _view(y.contiguous()), _view(h0.contiguous()),
        None if lengths is None else _view(lengths.contiguous()), _view(dw), _threads())
    return dw
