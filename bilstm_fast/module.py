"""BiLSTM: a drop-in torch.nn.LSTM whose layers run on bilstm_fast's fused op.

Legend: T steps, B batch, D input_size, N directions (1 or 2), H hidden_size,
P = proj_size or H, L num_layers.

BiLSTM is built by nn.LSTM's own base class (``nn.RNNBase`` in "LSTM"
mode), so the constructor, parameter names, shapes, initialisation,
``all_weights`` and state_dict are nn.LSTM's and weights load both ways. It
deliberately does not subclass nn.LSTM itself: torch.compile refuses to trace
any ``isinstance(m, nn.LSTM)`` module (Dynamo's "Attempted to wrap RNN, GRU,
or LSTM"), and compiling with no graph break is one of the reasons to use
this module. Only ``forward`` is ours: it
normalises the input (batch_first, unbatched, PackedSequence) to seq-first
padded [T, B, D] + lengths, checks it as nn.LSTM does, and calls
functional.bilstm.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional
from .functional import MERGE_MODES, merged_size

_HX = Optional[tuple[Tensor, Tensor]]


class BiLSTM(nn.RNNBase):
    r"""Drop-in replacement for ``torch.nn.LSTM(..., bidirectional=True)``.

    Arguments are nn.LSTM's (note ``bidirectional`` defaults to True here),
    plus, keyword-only:

    * ``backend``: "auto" (fastest available for the input's device; see
      ``bilstm_fast.available_backends()``), "reference", "cpu", "triton" or
      "cuda". A named backend that cannot run the call is an error.
    * ``merge_mode``: how the two directions of each layer's output are
      combined: "concat" (nn.LSTM's behaviour, output size 2*P), or "sum",
      "mean", "mul" (output size P; from Keras' ``Bidirectional``). With a
      non-concat mode, layers after the first take P input features instead
      of 2*P, so their ``weight_ih_l{k}`` is [4H, P] and such a state_dict is
      not interchangeable with nn.LSTM's.

    forward(input, hx=None) -> output, (h_n, c_n), exactly as nn.LSTM:
    input [T, B, D] ([B, T, D] with batch_first), unbatched [T, D], or a
    PackedSequence; hx = (h_0 [L*N, B, P], c_0 [L*N, B, H]) or None for zeros.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = True, proj_size: int = 0, device=None, dtype=None,
                 *, backend: str = "auto", merge_mode: str = "concat") -> None:
        if merge_mode not in MERGE_MODES:
            raise ValueError(f"merge_mode must be one of {MERGE_MODES}, got {merge_mode!r}")
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, got {type(backend).__name__}")
        super().__init__("LSTM", input_size, hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout,
                         bidirectional=bidirectional, proj_size=proj_size,
                         device=device, dtype=dtype)
        self.backend = backend
        self.merge_mode = merge_mode
        if merge_mode != "concat" and bidirectional and num_layers > 1:
            self._resize_inner_input_weights()

    def _resize_inner_input_weights(self) -> None:
        """Layers >= 1 take the merged (P-wide, not 2P-wide) output of the layer below."""
        N = 2
        real_hidden = self.proj_size or self.hidden_size
        in_size = merged_size(real_hidden, N, self.merge_mode)
        ref = self.weight_ih_l0
        for layer in range(1, self.num_layers):
            for suffix in ("", "_reverse"):
                name = f"weight_ih_l{layer}{suffix}"
                w = nn.Parameter(torch.empty(4 * self.hidden_size, in_size,
                                             device=ref.device, dtype=ref.dtype))
                bound = 1.0 / math.sqrt(self.hidden_size)  # nn.LSTM's initialisation
                nn.init.uniform_(w, -bound, bound)
                setattr(self, name, w)  # RNNBase.__setattr__ refreshes _flat_weights

    def flatten_parameters(self) -> None:
        """Kept for nn.LSTM compatibility; a no-op (our kernels do not need
        cuDNN's flat weight buffer)."""

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        if self.merge_mode != "concat":
            s += f", merge_mode={self.merge_mode!r}"
        return s

    # ------------------------------------------------------------------ forward
    def forward(self, input: Union[Tensor, PackedSequence], hx: _HX = None):
        w0 = self.weight_ih_l0
        if isinstance(input, PackedSequence):
            x, lengths, batch_sizes, sorted_idx, unsorted_idx = _unpack(input)
            batched = True
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"input must be a Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"BiLSTM: expected input to be 2-D (unbatched [T, D]) or 3-D "
                                 f"([T, B, D], or [B, T, D] with batch_first), got {input.dim()}-D "
                                 f"of shape {tuple(input.shape)}")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            lengths = sorted_idx = unsorted_idx = None
        T, B, D = x.shape
        if D != self.input_size:
            raise ValueError(f"input: expected input_size={self.input_size} features in the last "
                             f"dimension, got {D} (input shape {tuple(input.shape) if isinstance(input, Tensor) else tuple(input.data.shape)})")
        if T == 0:
            raise ValueError(f"input: expected sequence length > 0, got an empty sequence "
                             f"(input shape {tuple(input.shape)})")
        if x.dtype != w0.dtype:
            raise ValueError(f"input dtype ({x.dtype}) does not match weight dtype ({w0.dtype}). "
                             f"Convert input: input.to({w0.dtype}), or convert model: model.to({x.dtype})")
        if x.device != w0.device:
            raise ValueError(f"input is on {x.device} but the weights are on {w0.device}; "
                             f"move one: input.to({w0.device!s}) or model.to({x.device!s})")
        h0, c0 = self._check_hx(hx, batched, B, x)
        if sorted_idx is not None and h0 is not None:
            h0, c0 = h0.index_select(1, sorted_idx), c0.index_select(1, sorted_idx)
        out, h_n, c_n = functional.bilstm_layers(
            x, self._layer_weights(), h0, c0, None if lengths is None else lengths.to(x.device),
            dropout=self.dropout, training=self.training, merge_mode=self.merge_mode,
            backend=self.backend)
        if isinstance(input, PackedSequence):
            # lengths is still the CPU tensor from batch_sizes: no device->host sync.
            data, _ = torch._VF._pack_padded_sequence(out, lengths, False)
            if unsorted_idx is not None:
                h_n, c_n = h_n.index_select(1, unsorted_idx), c_n.index_select(1, unsorted_idx)
            return PackedSequence(data, batch_sizes, sorted_idx, unsorted_idx), (h_n, c_n)
        if not batched:
            return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, (h_n, c_n)

    def _layer_weights(self) -> list[functional.LayerWeights]:
        """Both directions' weights side by side, per layer (functional.pack_weights).

        Packing copies every weight (4.4 MB per layer at D=300, H=256: ~0.9 ms
        of a 5.4 ms single-thread B=1 call, measured), so when no gradient can
        reach the weights (inference) the packed copy is kept, like cuDNN's flat
        weight buffer, and reused until a parameter is replaced, re-pointed or
        modified in place (its version counter). Costs one extra copy of the
        weights in memory while the module is used for inference.
        """
        params = self._flat_weights
        if torch.compiler.is_compiling() or (
                torch.is_grad_enabled() and any(p.requires_grad for p in params)):
            self._packed = None   # training: pack on the autograd graph, keep nothing
            return functional.pack_weights(self.all_weights, self.bidirectional)
        stamp = [(p, p.data_ptr(), p._version) for p in params]
        cached = getattr(self, "_packed", None)
        if cached is None or len(cached[0]) != len(stamp) or not all(
                a[0] is b[0] and a[1:] == b[1:] for a, b in zip(cached[0], stamp)):
            self._packed = (stamp, functional.pack_weights(self.all_weights, self.bidirectional))
        return self._packed[1]

    def _check_hx(self, hx: _HX, batched: bool, B: int, x: Tensor):
        """(h0 [L*N, B, P], c0 [L*N, B, H]) from the user's hx, checked; (None, None) for zeros."""
        if hx is None:
            return None, None
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2
                and all(isinstance(t, Tensor) for t in hx)):
            raise TypeError("hx: expected a tuple (h_0, c_0) of two tensors (an LSTM needs both "
                            f"the hidden and the cell state), got {type(hx).__name__}"
                            + (f" of length {len(hx)}" if isinstance(hx, (tuple, list)) else ""))
        h0, c0 = hx
        want = 3 if batched else 2
        if h0.dim() != want or c0.dim() != want:
            raise ValueError(f"hx: for {'batched 3-D' if batched else 'unbatched 2-D'} input, "
                             f"h_0 and c_0 should be {want}-D, got ({h0.dim()}-D, {c0.dim()}-D)")
        if not batched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        N = 2 if self.bidirectional else 1
        LN = self.num_layers * N
        P = self.proj_size or self.hidden_size
        for name, t, last in (("h_0", h0, P), ("c_0", c0, self.hidden_size)):
            if tuple(t.shape) != (LN, B, last):
                shown = (LN, B, last) if batched else (LN, last)
                got = tuple(t.shape) if batched else (t.shape[0], t.shape[2])
                raise ValueError(f"hx: expected {name} of size {shown} "
                                 f"(num_layers*num_directions, batch, {'proj_size' if name == 'h_0' and self.proj_size else 'hidden_size'}), got {got}")
            if t.dtype != x.dtype or t.device != x.device:
                raise ValueError(f"hx: expected {name} with dtype {x.dtype} on {x.device} like the "
                                 f"input, got {t.dtype} on {t.device}")
        return h0, c0


def _unpack(seq: PackedSequence):
    """PackedSequence -> padded x [T, B, D] in the packed (length-sorted) batch
    order, lengths [B] int64 on the CPU, and the packing metadata."""
    data, batch_sizes, sorted_idx, unsorted_idx = seq
    T = batch_sizes.shape[0]
    x, lengths = torch._VF._pad_packed_sequence(data, batch_sizes, False, 0.0, T)
    return x, lengths, batch_sizes, sorted_idx, unsorted_idx


def replace_lstm(model: nn.Module, **kwargs) -> nn.Module:
    """Swap every torch.nn.LSTM inside ``model`` (or ``model`` itself) for a
    BiLSTM with the same configuration, weights, device, dtype and train/eval
    mode. Extra keyword arguments (``backend=...``) go to BiLSTM. Returns the
    model (the same object unless ``model`` itself is an nn.LSTM)."""
    def convert(lstm: nn.LSTM) -> BiLSTM:
        w = lstm.weight_ih_l0
        new = BiLSTM(lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias,
                     lstm.batch_first, lstm.dropout, lstm.bidirectional, lstm.proj_size,
                     device=w.device, dtype=w.dtype, **kwargs)
        new.load_state_dict(lstm.state_dict())
        new.train(lstm.training)
        return new

    if isinstance(model, nn.LSTM) and not isinstance(model, BiLSTM):
        return convert(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.LSTM) and not isinstance(child, BiLSTM):
                setattr(parent, name, convert(child))
    return model
