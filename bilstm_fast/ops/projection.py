"""The input projection of one layer: ``gx = x W_ih^T + bias``, both directions
in one product (functional.lstm_layer).

Legend: M = T*B rows, D input features, G = N*4H output columns.

Every backend takes torch's ``addmm`` (cuBLAS / MKL), except ``cpu``, which
runs its own GEMM (ops/cpu_gemm.py says why).
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor
import torch

from . import cpu_gemm


def input_projection(x: Tensor, w_ih: Tensor, bias: Optional[Tensor], backend: str) -> Tensor:
    """``x [M, D] @ w_ih [G, D]^T + bias [G]`` -> [M, G] for the resolved ``backend``."""
    if backend == "cpu" and x.device.type == "cpu" and x.dtype in cpu_gemm.DTYPES and x.shape[0] > 0:
        args = (x.contiguous(), w_ih.contiguous(), None if bias is None else bias.contiguous())
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args)
        if not needs_grad and not torch.compiler.is_compiling():
            return cpu_gemm.cpu_linear_inference(*args)
        return cpu_gemm.cpu_linear(*args)
    return torch.addmm(bias, x, w_ih.t()) if bias is not None else torch.mm(x, w_ih.t())
