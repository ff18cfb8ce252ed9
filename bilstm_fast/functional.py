"""Functional (multi-)layer LSTM: input projection GEMM + the fused recurrence op.

Legend: T steps, B batch, D input features, N directions (1 or 2), H hidden,
P = H or proj_size, L layers.

One layer is exactly two things (DESIGN.md §3):
1. ONE GEMM producing both directions' input pre-activations, both biases
   folded in: ``gx = x @ [W_ih_fwd; W_ih_bwd]^T + (b_ih + b_hh)`` -> [T, B, N, 4H];
2. the recurrence op (ops/recurrence.py), both directions at once.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import lstm_recurrence

MERGE_MODES = ("concat", "sum", "mean", "mul")


def merged_size(hidden: int, num_directions: int, merge_mode: str) -> int:
    """Features of a layer's output: N*P for "concat", P for the others."""
    return hidden * num_directions if merge_mode == "concat" else hidden


def lstm_layer(
    x: Tensor,                        # [T, B, D]
    weights: Sequence[Sequence[Tensor]],  # per direction: (w_ih [4H, D], w_hh [4H, P], b_ih [4H] | None, b_hh [4H] | None, w_hr [P, H] | None)
    h0: Tensor,                       # [N, B, P]
    c0: Tensor,                       # [N, B, H]
    lengths: Optional[Tensor] = None,  # [B] int on x.device, or None
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer of N directions. Returns y [T, B, N, P], h_n [N, B, P], c_n [N, B, H]."""
    T, B, D = x.shape
    N = len(weights)
    w_ih = torch.cat([w[0] for w in weights]) if N > 1 else weights[0][0]  # [N*4H, D]
    G = w_ih.shape[0] // N
    x2 = x.reshape(T * B, D)
    if weights[0][2] is not None:
        bias = torch.cat([w[2] + w[3] for w in weights])                    # [N*4H]
        gx = torch.addmm(bias, x2, w_ih.t())
    else:
        gx = torch.mm(x2, w_ih.t())
    gx = gx.view(T, B, N, G)
    w_hh = torch.stack([w[1] for w in weights])                             # [N, 4H, P]
    w_hr = torch.stack([w[4] for w in weights]) if weights[0][4] is not None else None  # [N, P, H]
    return lstm_recurrence(gx, w_hh, h0, c0, lengths, w_hr, backend=backend)


def bilstm(
    x: Tensor,                        # [T, B, D]
    weights: Sequence[Sequence[Tensor]],  # L*N lists in nn.LSTM.all_weights order: [w_ih, w_hh, (b_ih, b_hh), (w_hr)]
    h0: Optional[Tensor] = None,      # [L*N, B, P] or None (zeros)
    c0: Optional[Tensor] = None,      # [L*N, B, H] or None (zeros)
    lengths: Optional[Tensor] = None,  # [B] int (values 1..T), or None = all T
    *,
    bidirectional: bool = True,
    dropout: float = 0.0,
    training: bool = False,
    merge_mode: str = "concat",
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Multi-layer (bi)LSTM on seq-first padded input, nn.LSTM's math.

    ``weights`` is ``nn.LSTM.all_weights`` (or ``BiLSTM.all_weights``): one
    list per layer and direction, ``[w_ih, w_hh]`` plus ``[b_ih, b_hh]`` when
    biased plus ``[w_hr]`` with proj_size. Dropout (``training`` only) is
    applied to every layer's output but the last. ``merge_mode`` combines the
    directions of each layer's output: "concat" (nn.LSTM), "sum", "mean", "mul".

    Returns ``output [T, B, N*P or P]`` (zero where t >= L_b), ``h_n [L*N, B, P]``,
    ``c_n [L*N, B, H]``.
    """
    if merge_mode not in MERGE_MODES:
        raise ValueError(f"merge_mode must be one of {MERGE_MODES}, got {merge_mode!r}")
    N = 2 if bidirectional else 1
    if len(weights) == 0 or len(weights) % N:
        raise ValueError(f"weights: expected num_layers*{N} lists of layer weights, got {len(weights)}")
    L = len(weights) // N
    w_hh0 = weights[0][1]
    G, P = w_hh0.shape
    H = G // 4
    has_bias = len(weights[0]) in (4, 5)
    has_proj = len(weights[0]) in (3, 5)
    B = x.shape[1]
    if h0 is None:
        h0 = x.new_zeros(L * N, B, P)
    if c0 is None:
        c0 = x.new_zeros(L * N, B, H)
    hs, cs = [], []
    out = x
    for layer in range(L):
        per_dir = []
        for w in weights[layer * N:(layer + 1) * N]:
            b_ih, b_hh = (w[2], w[3]) if has_bias else (None, None)
            per_dir.append((w[0], w[1], b_ih, b_hh, w[-1] if has_proj else None))
        sl = slice(layer * N, (layer + 1) * N)
        y, h_n, c_n = lstm_layer(out, per_dir, h0[sl], c0[sl], lengths, backend)
        hs.append(h_n)
        cs.append(c_n)
        T = y.shape[0]
        if merge_mode == "concat":
            out = y.reshape(T, B, N * P)
        elif merge_mode == "sum":
            out = y.sum(dim=2)
        elif merge_mode == "mean":
            out = y.mean(dim=2)
        else:
            out = y.prod(dim=2)
        if dropout > 0 and training and layer < L - 1:
            out = F.dropout(out, p=dropout, training=True)
    return out, torch.cat(hs), torch.cat(cs)
