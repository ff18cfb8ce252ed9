"""The input projection of one layer: ``gx = x W_ih^T + bias``, both directions
in one product (functional.lstm_layer).

Legend: M = T*B rows, D input features, G = N*4H output columns.

Every backend takes torch's ``addmm`` (cuBLAS / MKL), except ``cpu``, which
runs the same micro-GEMM as its recurrence kernels (bilstm_fast._cpu.linear):
on the CPU these figures were measured for (AMD EPYC Zen 3, AVX2, 2 cores)
torch's sgemm reached ~75-80% of the FMA peak per core at these shapes and
scaled poorly to 2 threads, ours ~88-90% per core with no synchronization
between threads (each packs and computes its own columns). docs/cpu.md has
the measurements. The op is a torch.library custom op with a fake and an
autograd formula (the backward GEMMs are torch's), so torch.compile traces it
as one node.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import native

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


def _view(t: Tensor):
    return (native.ptr(t), tuple(t.shape), tuple(t.stride()))


@torch.library.custom_op("bilstm_fast::cpu_linear", mutates_args=())
def cpu_linear(x: Tensor, w: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x [M, D] @ w[G, D]^T + bias [G] -> [M, G] on the cpu backend's GEMM."""
    out = x.new_empty(x.shape[0], w.shape[0])
    native.require("_cpu").linear(
        _DTYPES[x.dtype], _view(x), _view(w), None if bias is None else _view(bias), _view(out),
        max(1, torch.get_num_threads()))
    return out


@cpu_linear.register_fake
def _(x, w, bias):
    return x.new_empty(x.shape[0], w.shape[0])


def _setup_context(ctx, inputs, output):
    x, w, bias = inputs
    ctx.has_bias = bias is not None
    ctx.save_for_backward(x, w)


def _backward(ctx, grad):  # grad [M, G]
    x, w = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad
    dx = grad @ w if need_x else None
    dw = grad.t() @ x if need_w else None
    db = grad.sum(0) if ctx.has_bias and need_b else None
    return dx, dw, db


cpu_linear.register_autograd(_backward, setup_context=_setup_context)


def input_projection(x: Tensor, w_ih: Tensor, bias: Optional[Tensor], backend: str) -> Tensor:
    """``x [M, D] @ w_ih [G, D]^T + bias [G]`` -> [M, G] for the resolved ``backend``."""
    if backend == "cpu" and x.device.type == "cpu" and x.dtype in _DTYPES and x.shape[0] > 0:
        return cpu_linear(x.contiguous(), w_ih.contiguous(), None if bias is None else bias.contiguous())
    return torch.addmm(bias, x, w_ih.t()) if bias is not None else torch.mm(x, w_ih.t())
