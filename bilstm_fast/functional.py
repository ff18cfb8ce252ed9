"""Functional (multi-)layer LSTM: input projection GEMM + the fused recurrence op.

Legend: T steps, B batch, D input features, N directions (1 or 2), H hidden,
P = H or proj_size, L layers.

One layer is exactly two things (DESIGN.md §3):
1. ONE GEMM producing both directions' input pre-activations, both biases
   folded in: ``gx = x @ [W_ih_fwd; W_ih_bwd]^T + (b_ih + b_hh)`` -> [T, B, N, 4H];
2. the recurrence op (ops/recurrence.py), both directions at once.

Step 1 needs the directions' weights side by side (``LayerWeights``), which
``pack_weights`` builds from nn.LSTM's per-direction parameters with torch
ops, so autograd routes the gradients back to those parameters.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import lstm_recurrence
from .ops.backends import resolve_backend
from .ops.projection import input_projection

MERGE_MODES = ("concat", "sum", "mean", "mul")


def merged_size(hidden: int, num_directions: int, merge_mode: str) -> int:
    """Features of a layer's output: N*P for "concat", P for the others."""
    return hidden * num_directions if merge_mode == "concat" else hidden


class LayerWeights(NamedTuple):
    """One layer's weights, both directions side by side."""
    w_ih: Tensor            # [N*4H, D]  direction 0's rows, then direction 1's
    bias: Optional[Tensor]  # [N*4H]     b_ih + b_hh, or None (bias=False)
    w_hh: Tensor            # [N, 4H, P]
    w_hr: Optional[Tensor]  # [N, P, H], or None (no projection)


def pack_weights(weights: Sequence[Sequence[Tensor]], bidirectional: bool = True) -> list[LayerWeights]:
    """nn.LSTM.all_weights (one list per layer and direction: ``[w_ih, w_hh]``,
    plus ``[b_ih, b_hh]`` when biased, plus ``[w_hr]`` with proj_size) ->
    one LayerWeights per layer."""
    N = 2 if bidirectional else 1
    if len(weights) == 0 or len(weights) % N:
        raise ValueError(f"weights: expected num_layers*{N} lists of layer weights, got {len(weights)}")
    has_bias = len(weights[0]) in (4, 5)
    has_proj = len(weights[0]) in (3, 5)
    layers = []
    for k in range(0, len(weights), N):
        dirs = weights[k:k + N]
        layers.append(LayerWeights(
            w_ih=torch.cat([w[0] for w in dirs]) if N > 1 else dirs[0][0],
            bias=torch.cat([w[2] + w[3] for w in dirs]) if has_bias else None,
            w_hh=torch.stack([w[1] for w in dirs]),
            w_hr=torch.stack([w[-1] for w in dirs]) if has_proj else None))
    return layers


def lstm_layer(
    x: Tensor,                         # [T, B, D]
    lw: LayerWeights,
    h0: Tensor,                        # [N, B, P]
    c0: Tensor,                        # [N, B, H]
    lengths: Optional[Tensor] = None,  # [B] int on x.device, or None
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer of N directions. Returns y [T, B, N, P], h_n [N, B, P], c_n [N, B, H]."""
    T, B, D = x.shape
    N, G, P = lw.w_hh.shape
    # Resolved once here: the backend may also do the projection (ops/projection.py).
    backend = resolve_backend(backend, x.device.type, x.dtype, N, G // 4, P, lw.w_hr is not None,
                              lengths is not None)
    gx = input_projection(x.reshape(T * B, D), lw.w_ih, lw.bias, backend)
    return lstm_recurrence(gx.view(T, B, N, G), lw.w_hh, h0, c0, lengths, lw.w_hr, backend=backend)


def bilstm_layers(
    x: Tensor,                         # [T, B, D]
    layers: Sequence[LayerWeights],
    h0: Optional[Tensor] = None,       # [L*N, B, P] or None (zeros)
    c0: Optional[Tensor] = None,       # [L*N, B, H] or None (zeros)
    lengths: Optional[Tensor] = None,  # [B] int (values 1..T), or None = all T
    *,
    dropout: float = 0.0,
    training: bool = False,
    merge_mode: str = "concat",
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """``bilstm`` on weights already packed by ``pack_weights``."""
    if merge_mode not in MERGE_MODES:
        raise ValueError(f"merge_mode must be one of {MERGE_MODES}, got {merge_mode!r}")
    N, G, P = layers[0].w_hh.shape
    H = G // 4
    L = len(layers)
    B = x.shape[1]
    if h0 is None:
        h0 = x.new_zeros(L * N, B, P)
    if c0 is None:
        c0 = x.new_zeros(L * N, B, H)
    hs, cs = [], []
    out = x
    for layer, lw in enumerate(layers):
        sl = slice(layer * N, (layer + 1) * N)
        # A named range per layer in torch.profiler traces (NVTX under emit_nvtx / nsys).
        with torch.profiler.record_function(f"bilstm_fast.layer{layer}"):
            y, h_n, c_n = lstm_layer(out, lw, h0[sl], c0[sl], lengths, backend)
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


def bilstm(
    x: Tensor,                         # [T, B, D]
    weights: Sequence[Sequence[Tensor]],  # L*N lists in nn.LSTM.all_weights order: [w_ih, w_hh, (b_ih, b_hh), (w_hr)]
    h0: Optional[Tensor] = None,       # [L*N, B, P] or None (zeros)
    c0: Optional[Tensor] = None,       # [L*N, B, H] or None (zeros)
    lengths: Optional[Tensor] = None,  # [B] int (values 1..T), or None = all T
    *,
    bidirectional: bool = True,
    dropout: float = 0.0,
    training: bool = False,
    merge_mode: str = "concat",
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Multi-layer (bi)LSTM on seq-first padded input, nn.LSTM's math.

    ``weights`` is ``nn.LSTM.all_weights`` (or ``BiLSTM.all_weights``).
    Dropout (``training`` only) is applied to every layer's output but the
    last. ``merge_mode`` combines the directions of each layer's output:
    "concat" (nn.LSTM), "sum", "mean", "mul".

    Returns ``output [T, B, N*P or P]`` (zero where t >= L_b), ``h_n [L*N, B, P]``,
    ``c_n [L*N, B, H]``.
    """
    return bilstm_layers(x, pack_weights(weights, bidirectional), h0, c0, lengths,
                         dropout=dropout, training=training, merge_mode=merge_mode,
                         backend=backend)
