"""BiLSTM: a drop-in torch.nn.LSTM whose layers run on bilstm_fast's fused op.

Legend (docs/design.md §0): T steps, B batch, D input_size, N directions
(1 or 2), H hidden_size, P = proj_size or H, L num_layers.

BiLSTM is built by nn.LSTM's own base class (``nn.RNNBase`` in "LSTM"
mode), so the constructor, parameter names, shapes, initialisation,
``all_weights`` and state_dict are nn.LSTM's and weights load both ways. It
deliberately does not subclass nn.LSTM itself: torch.compile refuses to trace
any ``isinstance(m, nn.LSTM)`` module (Dynamo's "Attempted to wrap RNN, GRU,
or LSTM"), and compiling with no graph break is one of the reasons to use
this module. Only ``forward`` is ours: it
normalises the input (batch_first, unbatched, PackedSequence) to seq-first
padded [T, B, D] + lengths, checks it as nn.LSTM does (errors: bilstm_fast/errors.py), and calls
functional.bilstm_layers.

Weights live in one flat buffer per module, as cuDNN's do for nn.LSTM: every
parameter is a view of it, laid out so that each layer's packed operands
(both directions' W_ih rows side by side, W_hh stacked, ...) are views too.
Inference then hands the kernels those views with no copy, and nothing can
go stale: an in-place change of a parameter, through ``.data``, ``.numpy()``
or an optimizer, writes the very memory the views read.
"""

import math
from typing import NamedTuple, Optional, Union, overload

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional
from .errors import HiddenStateArityError, InputError, InputTypeError, NotATensorError
from .functional import MERGE_MODES, LayerWeights, merged_size

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
        _check_real(dtype, "dtype")
        super().__init__("LSTM", input_size, hidden_size, num_layers=num_layers, bias=bias,
                         batch_first=batch_first, dropout=dropout,
                         bidirectional=bidirectional, proj_size=proj_size,
                         device=device, dtype=dtype)
        self.backend = backend
        self.merge_mode = merge_mode
        if merge_mode != "concat" and bidirectional and num_layers > 1:
            self._resize_inner_input_weights()
            self.flatten_parameters()

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

    # ------------------------------------------------------------ flat weights
    def flatten_parameters(self) -> None:
        """Put every parameter into one flat buffer, laid out per layer as the
        kernels take them (nn.LSTM does the same for cuDNN). Called by
        nn.RNNBase at construction and after ``.to()`` / ``.half()``, and by
        the user after replacing a parameter. Parameters keep their identity
        (optimizers keep working); only their storage moves.

        Per layer, in the buffer: W_ih of both directions [N*4H, D], W_hh
        [N, 4H, P], b_ih [N*4H], b_hh [N*4H], W_hr [N, P, H]: exactly
        functional.LayerWeights, as views, so inference packs nothing (packing
        copied every weight per call: ~0.9 ms of a 5.4 ms single-thread
        T=64, B=1, D=300, H=256 forward, measured). A no-op while every
        parameter still lives in the buffer (e.g. after share_memory(), which
        moves the buffer's storage as a whole).
        """
        if self._flat_views() is not None:
            return
        self._flat = None
        params = self._flat_weights
        if not params or any(p is None for p in params):
            return
        first = params[0]
        if first.is_meta or any(p.dtype != first.dtype or p.device != first.device for p in params):
            return   # mixed dtypes/devices: each call packs (functional.pack_weights)
        layout = self._flat_layout()
        total = sum(n for n, _ in layout)
        buffer = torch.empty(total, dtype=first.dtype, device=first.device)
        views, offset = [], 0
        with torch.no_grad():
            for p, (numel, shape) in zip(self._param_order(), layout):
                view = buffer[offset:offset + numel].view(shape)
                view.copy_(p)
                p.data = view
                views.append((p, offset))
                offset += numel
        # (the buffer, where each parameter lives in it, each layer's packed
        # operands, the parameters in _flat_weights order)
        self._flat = (buffer, views, self._layer_slices(buffer), list(params))

    def _dims(self):
        N = 2 if self.bidirectional else 1
        H, P = self.hidden_size, self.proj_size or self.hidden_size
        return N, H, P

    def _param_order(self) -> list[nn.Parameter]:
        """The parameters in buffer order: per layer, each kind for every direction."""
        N, _, _ = self._dims()
        out = []
        for layer in range(self.num_layers):
            dirs = [self._all_weights[layer * N + n] for n in range(N)]
            kinds = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if self.bias else []) \
                + (["weight_hr"] if self.proj_size else [])
            for kind in kinds:
                for names in dirs:
                    out.append(getattr(self, next(n for n in names if n.startswith(kind + "_l"))))
        return out

    def _flat_layout(self) -> list[tuple[int, tuple[int, ...]]]:
        """(numel, shape) of every parameter in buffer order."""
        return [(p.numel(), tuple(p.shape)) for p in self._param_order()]

    def _layer_slices(self, buffer: Tensor) -> list[LayerWeights]:
        """Each layer's LayerWeights as views of ``buffer`` (the layout of flatten_parameters)."""
        N, H, P = self._dims()
        G = 4 * H
        out, offset = [], 0

        def take(shape):
            nonlocal offset
            numel = math.prod(shape)
            view = buffer[offset:offset + numel].view(shape)
            offset += numel
            return view

        for layer in range(self.num_layers):
            D = getattr(self, f"weight_ih_l{layer}").shape[1]
            w_ih = take((N * G, D))
            w_hh = take((N, G, P))
            b_ih = take((N * G,)) if self.bias else None
            b_hh = take((N * G,)) if self.bias else None
            w_hr = take((N, P, H)) if self.proj_size else None
            out.append(LayerWeights(w_ih, b_ih, b_hh, w_hh, w_hr))
        return out

    def _flat_views(self) -> Optional[list[LayerWeights]]:
        """The buffer's per-layer views if every parameter still lives where
        flatten_parameters put it (compared against the buffer's address now,
        so share_memory_() and the like keep them valid), else None."""
        flat = getattr(self, "_flat", None)
        if flat is None:
            return None
        buffer, views, layers, owners = flat
        # The same Parameter objects (RNNBase keeps _flat_weights current on
        # `module.weight = ...`), each still at its place in the buffer.
        if len(self._flat_weights) != len(owners) or any(
                p is not q for p, q in zip(self._flat_weights, owners)):
            return None
        base, size = buffer.data_ptr(), buffer.element_size()
        for p, offset in views:
            if p.data_ptr() != base + offset * size or p.dtype != buffer.dtype:
                return None
        return layers

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_flat", None)   # views of the parameters' own storage: rebuilt on load
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.flatten_parameters()

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.backend != "auto":
            s += f", backend={self.backend!r}"
        if self.merge_mode != "concat":
            s += f", merge_mode={self.merge_mode!r}"
        return s

    # ------------------------------------------------------------------ forward
    # nn.LSTM's two signatures, spelled out for torch.jit.script, which
    # compiles forward once per overload (a Tensor in and out, or a
    # PackedSequence in and out). Python sees only the definition after them.
    @overload
    @torch._jit_internal._overload_method
    def forward(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]] = None,
                lengths: Optional[Tensor] = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        pass

    @overload
    @torch._jit_internal._overload_method
    def forward(self, input: PackedSequence, hx: Optional[tuple[Tensor, Tensor]] = None,
                lengths: Optional[Tensor] = None) -> tuple[PackedSequence, tuple[Tensor, Tensor]]:
        pass

    def forward(self, input: Union[Tensor, PackedSequence], hx: _HX = None,
                lengths: Optional[Tensor] = None):
        """nn.LSTM's forward. ``lengths`` ([B] ints in 1..T, batched padded input
        only) is the padded equivalent of a PackedSequence: output zero where
        t >= L_b, h_n/c_n at each sequence's own last step; it is also how a
        model exports with per-sequence lengths (docs: README, "Deploy")."""
        if torch.jit.is_scripting():
            # TorchScript compiles only this branch: _forward_eager (its
            # messages, the flat-buffer views, the backend registry) is not
            # TorchScript. Same steps, same op, nn.LSTM's scripted checks.
            if isinstance(input, PackedSequence):   # static per overload
                return self._forward_packed_scripted(input, hx, lengths)
            return self._forward_padded_scripted(input, hx, lengths)
        return self._forward_eager(input, hx, lengths)

    def _forward_eager(self, input: Union[Tensor, PackedSequence], hx: _HX, lengths: Optional[Tensor]):
        w0 = self.weight_ih_l0
        _check_real(w0.dtype, "the weights' dtype")
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise InputError("lengths: a PackedSequence carries its own lengths; pass either "
                                 "a PackedSequence or a padded tensor with lengths=")
            x, lengths, packing = _unpack(input)
            batched = True
        else:
            if not isinstance(input, Tensor):
                raise NotATensorError(f"input must be a Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"BiLSTM: expected input to be 2-D (unbatched [T, D]) or 3-D "
                                 f"([T, B, D], or [B, T, D] with batch_first), got {input.dim()}-D "
                                 f"of shape {tuple(input.shape)}")
            batched = input.dim() == 3
            if lengths is not None and not batched:
                raise InputError(f"lengths: expected batched 3-D input with lengths=, got "
                                 f"{input.dim()}-D input of shape {tuple(input.shape)}")
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            packing = None
        T, B, D = x.shape
        shown = tuple(input.shape) if isinstance(input, Tensor) else tuple(input.data.shape)
        if D != self.input_size:
            raise InputError(f"input: expected input_size={self.input_size} features in the last "
                             f"dimension, got {D} (input shape {shown})")
        if T == 0:
            raise InputError(f"input: expected sequence length > 0, got an empty sequence "
                             f"(input shape {shown})")
        if x.dtype != w0.dtype:
            raise ValueError(f"input dtype ({x.dtype}) does not match weight dtype ({w0.dtype}). "
                             f"Convert input: input.to({w0.dtype}), or convert model: model.to({x.dtype})")
        if x.device != w0.device:
            raise InputError(f"input is on {x.device} but the weights are on {w0.device}; "
                             f"move one: input.to({w0.device!s}) or model.to({x.device!s})")
        h0, c0 = self._check_hx(hx, batched, B, x)
        if packing is not None and packing.sorted_indices is not None and h0 is not None:
            h0 = h0.index_select(1, packing.sorted_indices)
            c0 = c0.index_select(1, packing.sorted_indices)
        out, h_n, c_n = functional.bilstm_layers(
            x, self._layer_weights(), h0, c0, lengths, dropout=self.dropout, training=self.training,
            merge_mode=self.merge_mode, backend=self.backend)
        if packing is not None:
            if packing.unsorted_indices is not None:
                h_n = h_n.index_select(1, packing.unsorted_indices)
                c_n = c_n.index_select(1, packing.unsorted_indices)
            return _repack(out, packing), (h_n, c_n)
        if not batched:
            return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, (h_n, c_n)

    def _layer_weights(self) -> list[LayerWeights]:
        """Both directions' weights side by side, per layer: the flat buffer's
        views (no copy) when no gradient can reach the weights, else a packed
        copy on the autograd graph (functional.pack_weights), so gradients
        flow to the parameters. Also packed while compiling or tracing, where
        the parameters, not a buffer the tracer would bake in as a constant,
        must be the graph's inputs."""
        params = self._flat_weights
        needs_graph = torch.is_grad_enabled() and any(p.requires_grad for p in params)
        if not (needs_graph or torch.compiler.is_compiling() or torch.jit.is_tracing()
                or torch.jit.is_scripting()):
            views = self._flat_views()
            if views is not None:
                return views
        return functional.pack_weights(self.all_weights, self.bidirectional)

    def _check_hx(self, hx: _HX, batched: bool, B: int, x: Tensor):
        """(h0 [L*N, B, P], c0 [L*N, B, H]) from the user's hx, checked; (None, None) for zeros."""
        if hx is None:
            return None, None
        if not (isinstance(hx, (tuple, list)) and all(isinstance(t, Tensor) for t in hx)):
            raise InputTypeError("hx: expected a tuple (h_0, c_0) of two tensors (an LSTM needs both "
                                 f"the hidden and the cell state), got {type(hx).__name__}")
        if len(hx) != 2:
            raise HiddenStateArityError("hx: expected a tuple (h_0, c_0) of two tensors (an LSTM needs "
                                        f"both the hidden and the cell state), got {type(hx).__name__} "
                                        f"of length {len(hx)}")
        h0, c0 = hx
        want = 3 if batched else 2
        if h0.dim() != want or c0.dim() != want:
            raise InputError(f"hx: for {'batched 3-D' if batched else 'unbatched 2-D'} input, "
                             f"h_0 and c_0 should be {want}-D, got ({h0.dim()}-D, {c0.dim()}-D)")
        if not batched:
            h0, c0 = h0.unsqueeze(1), c0.unsqueeze(1)
        N, H, P = self._dims()
        LN = self.num_layers * N
        for name, t, last in (("h_0", h0, P), ("c_0", c0, H)):
            if tuple(t.shape) != (LN, B, last):
                shown = (LN, B, last) if batched else (LN, last)
                got = tuple(t.shape) if batched else (t.shape[0], t.shape[2])
                raise InputError(f"hx: expected {name} of size {shown} "
                                 f"(num_layers*num_directions, batch, {'proj_size' if name == 'h_0' and self.proj_size else 'hidden_size'}), got {got}")
            if t.dtype != x.dtype or t.device != x.device:
                raise InputError(f"hx: expected {name} with dtype {x.dtype} on {x.device} like the "
                                 f"input, got {t.dtype} on {t.device}")
        return h0, c0

    # ---------------------------------------------------------- TorchScript
    # forward under torch.jit.script. It calls the op through the dispatcher
    # (torch.ops.bilstm_fast.lstm_layer, in functional.lstm_layer), so a
    # scripted module saves with torch.jit.save and loads in any process that
    # has imported bilstm_fast. Checks are nn.LSTM's own scripted ones
    # (RNNBase.check_input / check_hidden_size): in TorchScript every error
    # surfaces as torch.jit.Error (a RuntimeError), for nn.LSTM too.
    def _forward_padded_scripted(self, input: Tensor, hx: Optional[tuple[Tensor, Tensor]],
                                 lengths: Optional[Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        if input.dim() not in [2, 3]:
            raise ValueError("BiLSTM: expected input to be 2-D (unbatched [T, D]) or 3-D ([T, B, D], "
                             "or [B, T, D] with batch_first), got {}-D".format(input.dim()))
        batched = input.dim() == 3
        if lengths is not None and not batched:
            raise ValueError("lengths: expected batched 3-D input with lengths=")
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        if hx is not None and not batched:
            hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        out, h_n, c_n = self._layers_scripted(x, hx, lengths, None)
        if not batched:
            return out.squeeze(1), (h_n.squeeze(1), c_n.squeeze(1))
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, (h_n, c_n)

    def _forward_packed_scripted(self, input: PackedSequence, hx: Optional[tuple[Tensor, Tensor]],
                                 lengths: Optional[Tensor]) -> tuple[PackedSequence, tuple[Tensor, Tensor]]:
        if lengths is not None:
            raise ValueError("lengths: a PackedSequence carries its own lengths")
        x, seq_lengths, packing = _unpack(input)
        out, h_n, c_n = self._layers_scripted(x, hx, seq_lengths, packing.sorted_indices)
        unsorted = packing.unsorted_indices   # a local: TorchScript refines those
        if unsorted is not None:
            h_n = h_n.index_select(1, unsorted)
            c_n = c_n.index_select(1, unsorted)
        return _repack(out, packing), (h_n, c_n)

    def _layers_scripted(self, x: Tensor, hx: Optional[tuple[Tensor, Tensor]], lengths: Optional[Tensor],
                         sorted_indices: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """x [T, B, D] seq-first; hx = (h_0 [L*N, B, P], c_0 [L*N, B, H]) or None;
        lengths [B] or None. Returns functional.bilstm_layers' (out, h_n, c_n)."""
        self.check_input(x, None)
        T, B = x.size(0), x.size(1)
        if T == 0:
            raise RuntimeError("input: expected sequence length > 0, got an empty sequence")
        N = 2 if self.bidirectional else 1
        H = self.hidden_size
        P = self.proj_size if self.proj_size > 0 else H
        h0: Optional[Tensor] = None
        c0: Optional[Tensor] = None
        if hx is not None:
            h0, c0 = hx
            self.check_hidden_size(h0, (self.num_layers * N, B, P), "Expected hidden[0] size {}, got {}")
            self.check_hidden_size(c0, (self.num_layers * N, B, H), "Expected hidden[1] size {}, got {}")
            if sorted_indices is not None:
                h0 = h0.index_select(1, sorted_indices)
                c0 = c0.index_select(1, sorted_indices)
        if lengths is not None:
            if lengths.shape != [B] or lengths.is_floating_point():
                raise ValueError("lengths: expected an integer tensor of shape [B={}]".format(B))
            lengths = lengths.to(device=x.device, dtype=torch.int64).contiguous()
            if lengths.device.type == "cpu" and bool(((lengths < 1) | (lengths > T)).any()):
                raise ValueError("lengths: values must be in 1..T={}".format(T))
        return functional._bilstm_layers(x, self._layer_weights_scripted(), h0, c0, lengths,
                                         self.dropout, self.training, self.merge_mode, self.backend)

    def _layer_weights_scripted(self) -> list[LayerWeights]:
        """functional.pack_weights in TorchScript: from ``_flat_weights`` (nn.LSTM's
        parameter list: per layer and direction w_ih, w_hh, [b_ih, b_hh], [w_hr]),
        with torch ops, so the parameters are the scripted graph's inputs."""
        N = 2 if self.bidirectional else 1
        per_dir = len(self._flat_weights) // (self.num_layers * N)
        layers: list[LayerWeights] = []
        for layer in range(self.num_layers):
            first = layer * N * per_dir
            dirs = [self._flat_weights[first + n * per_dir:first + (n + 1) * per_dir] for n in range(N)]
            b_ih: Optional[Tensor] = None
            b_hh: Optional[Tensor] = None
            w_hr: Optional[Tensor] = None
            if self.bias:
                b_ih = torch.cat([w[2] for w in dirs])
                b_hh = torch.cat([w[3] for w in dirs])
            if self.proj_size > 0:
                w_hr = torch.stack([w[per_dir - 1] for w in dirs])
            layers.append(LayerWeights(torch.cat([w[0] for w in dirs]), b_ih, b_hh,
                                       torch.stack([w[1] for w in dirs]), w_hr))
        return layers


def _check_real(dtype: Optional[torch.dtype], what: str) -> None:
    """BiLSTM computes in real floating point: a complex (or integer) model is
    refused with a clear error (nn.LSTM runs complex64, with gradients by
    Wirtinger calculus that our backward formulas do not implement)."""
    if dtype is not None and (dtype.is_complex or not dtype.is_floating_point):
        raise InputTypeError(f"{what}: BiLSTM supports real floating-point dtypes (float32, float64, "
                             f"float16, bfloat16), got {dtype}")


class _Packing(NamedTuple):
    """How a PackedSequence maps onto the padded [T, B, *] layout."""
    rows: Tensor                       # [R] index of each packed row in the flattened [T*B]
    batch_sizes: Tensor                # [T] int64, on the CPU (PackedSequence's own)
    sorted_indices: Optional[Tensor]   # [B] or None
    unsorted_indices: Optional[Tensor]


def _unpack(seq: PackedSequence) -> tuple[Tensor, Tensor, _Packing]:
    """PackedSequence -> padded x [T, B, D] in the packed (length-sorted) batch
    order, lengths [B] int64 on the data's device, and the packing.

    Written with index arithmetic on the data's device (no
    pad_packed_sequence): traceable by torch.compile, differentiable, and
    without a blocking host-to-device copy — batch_sizes lives on the CPU
    and goes to a GPU through pinned memory, asynchronously. B is the length
    of sorted_indices when the sequence was packed unsorted (a static size);
    packed sorted, it is batch_sizes[0], read on the host (a graph break
    under torch.compile, and never a device sync: batch_sizes is a CPU tensor).
    """
    data, batch_sizes, sorted_idx, unsorted_idx = seq
    device = data.device
    T, R = batch_sizes.shape[0], data.shape[0]
    B = sorted_idx.shape[0] if sorted_idx is not None else int(batch_sizes[0])
    sizes = batch_sizes.to(torch.int64)
    if device.type == "cuda":
        sizes = sizes.pin_memory().to(device, non_blocking=True)
    else:
        sizes = sizes.to(device)
    ends = sizes.cumsum(0)                                         # [T] rows up to and incl. step t
    r = torch.arange(R, device=device)
    t_of_r = torch.searchsorted(ends, r, right=True)                # step of each packed row
    rows = t_of_r * B + (r - (ends - sizes)[t_of_r])                # its place in [T*B]
    x = data.new_zeros(T * B, data.shape[1]).index_copy(0, rows, data).view(T, B, -1)
    lengths = (sizes[None, :] > torch.arange(B, device=device)[:, None]).sum(1)   # [B]
    return x, lengths, _Packing(rows, batch_sizes, sorted_idx, unsorted_idx)


def _repack(out: Tensor, packing: _Packing) -> PackedSequence:
    """Padded output [T, B, F] -> a PackedSequence with the input's packing."""
    T, B, F = out.shape
    data = out.reshape(T * B, F).index_select(0, packing.rows)
    return PackedSequence(data, packing.batch_sizes, packing.sorted_indices, packing.unsorted_indices)


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
