"""Functional (multi-)layer LSTM: input projection GEMM + the fused recurrence op.

Legend (docs/design.md §0): T steps, B batch, D input features, N directions
(1 or 2), H hidden, P = H or proj_size, L layers.

One layer is exactly two things (docs/design.md §3), both inside the op
``bilstm_fast::lstm_layer`` (ops/recurrence.py):
1. ONE GEMM producing both directions' input pre-activations, both biases
   folded in: ``gx = x @ [W_ih_fwd; W_ih_bwd]^T + (b_ih + b_hh)`` -> [T, B, N, 4H];
2. the fused recurrence, both directions at once.

Step 1 needs the directions' weights side by side (``LayerWeights``).
``pack_weights`` builds them from nn.LSTM's per-direction parameters with
torch ops, so autograd routes the gradients back to those parameters;
BiLSTM can also hand over views of its flat weight buffer (module.py).
"""

import contextlib
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import recurrence

MERGE_MODES = ("concat", "sum", "mean", "mul")


def merged_size(hidden: int, num_directions: int, merge_mode: str) -> int:
    """Features of a layer's output: N*P for "concat", P for the others."""
    return hidden * num_directions if merge_mode == "concat" else hidden


class LayerWeights(NamedTuple):
    """One layer's weights, both directions side by side."""
    w_ih: Tensor            # [N*4H, D]  direction 0's rows, then direction 1's
    b_ih: Optional[Tensor]  # [N*4H], or None (bias=False)
    b_hh: Optional[Tensor]  # [N*4H], or None (bias=False)
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
        side_by_side = (lambda ts: torch.cat(ts)) if N > 1 else (lambda ts: ts[0])
        layers.append(LayerWeights(
            w_ih=side_by_side([w[0] for w in dirs]),
            b_ih=side_by_side([w[2] for w in dirs]) if has_bias else None,
            b_hh=side_by_side([w[3] for w in dirs]) if has_bias else None,
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
    if torch.jit.is_scripting():
        # TorchScript cannot run the Python entry point (checks, backend
        # registry): it calls the op through the dispatcher, with "auto"
        # resolved by the op itself, and decides keep_for_backward at run time.
        # BiLSTM's scripted forward has checked the input and lengths.
        b_ih, b_hh, w_hr = lw.b_ih, lw.b_hh, lw.w_hr   # locals: TorchScript refines those
        keep = torch.is_grad_enabled() and (
            x.requires_grad or lw.w_ih.requires_grad or lw.w_hh.requires_grad or h0.requires_grad
            or c0.requires_grad or (b_ih is not None and b_ih.requires_grad)
            or (b_hh is not None and b_hh.requires_grad) or (w_hr is not None and w_hr.requires_grad))
        y, h_n, c_n, _, _ = torch.ops.bilstm_fast.lstm_layer(
            x.contiguous(), lw.w_ih, b_ih, b_hh, lw.w_hh, w_hr, h0.contiguous(), c0.contiguous(),
            lengths, backend, keep)
        return y, h_n, c_n
    return recurrence.lstm_layer(x, lw.w_ih, lw.b_ih, lw.b_hh, lw.w_hh, h0, c0, lengths, lw.w_hr,
                                 backend=backend)


def bilstm_layers(
    x: Tensor,                         # [T, B, D]
    layers: list[LayerWeights],
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
    return _bilstm_layers(x, layers, h0, c0, lengths, dropout, training, merge_mode, backend)


def _bilstm_layers(x: Tensor, layers: list[LayerWeights], h0: Optional[Tensor], c0: Optional[Tensor],
                   lengths: Optional[Tensor], dropout: float, training: bool, merge_mode: str,
                   backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """bilstm_layers with positional arguments: also compiled by torch.jit.script
    (BiLSTM's scripted forward calls it), which takes no keyword-only arguments
    with defaults; the Python-only parts sit in the other branch of
    ``torch.jit.is_scripting()``; merge_mode is checked by the callers."""
    N, G, P = layers[0].w_hh.shape
    H = G // 4
    L = len(layers)
    B = x.shape[1]
    if h0 is None:
        h0 = x.new_zeros(L * N, B, P)
    if c0 is None:
        c0 = x.new_zeros(L * N, B, H)
    h_ns, c_ns = [], []          # each layer's final states
    out = x
    for layer, lw in enumerate(layers):
        h0_l, c0_l = h0[layer * N:(layer + 1) * N], c0[layer * N:(layer + 1) * N]
        if torch.jit.is_scripting():
            y, h_n, c_n = lstm_layer(out, lw, h0_l, c0_l, lengths, backend)
        else:
            # A named range per layer in torch.profiler traces (NVTX under
            # emit_nvtx / nsys); not while compiling, where Dynamo would only warn
            # that it ignores it (every compile: a drop-in compiles quietly).
            with (contextlib.nullcontext() if torch.compiler.is_compiling()
                  else torch.profiler.record_function(f"bilstm_fast.layer{layer}")):
                y, h_n, c_n = lstm_layer(out, lw, h0_l, c0_l, lengths, backend)
        h_ns.append(h_n)
        c_ns.append(c_n)
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
    return out, torch.cat(h_ns), torch.cat(c_ns)


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
