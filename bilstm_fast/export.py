"""ONNX export of BiLSTM: each layer becomes one standard ONNX ``LSTM`` node.

Legend (docs/design.md §0): T steps, B batch, D input features, N directions
(1 or 2), H hidden, G = 4H, P = H or proj_size.

Why it maps so directly: BiLSTM runs each layer as one op,
``bilstm_fast::lstm_layer`` (ops/recurrence.py) = the input projection of
both directions + the recurrence, which is exactly what ONNX's LSTM operator
computes. Merge modes, inter-layer reshapes, batch_first transposes and
h_n/c_n concatenation are ordinary torch ops around the op and export as
themselves. The translation, per layer::

    ours (nn.LSTM's layout)                    ONNX LSTM
    x       [T, B, D]                          X              [T, B, D]  (layout=0)
    w_ih    [N*4H, D]  gates i,f,g,o per dir   W              [N, 4H, D] gates i,o,f,c
    w_hh    [N, 4H, H]                         R              [N, 4H, H]
    b_ih, b_hh [N*4H]                          B              [N, 8H] = [Wb, Rb] per direction
    lengths [B] int64, or None                 sequence_lens  [B] int32, or absent
    h0, c0  [N, B, H]                          initial_h, initial_c
    y       [T, B, N, H]                       Transpose(Y [T, N, B, H], perm 0,2,1,3)
    h_n, c_n [N, B, H]                         Y_h, Y_c
    N = 2 / 1                                  direction "bidirectional" / "forward"

The weight reordering is a Reshape/Gather on the initializers, which both
exporters fold into the constants. ONNX's LSTM has no projection: a layer
with proj_size > 0 is refused with an error that says so. With
sequence_lens, ONNX defines (and onnxruntime computes) what we compute:
Y is zero where t >= L_b, the reverse direction of sequence b starts at its
own step L_b - 1, Y_h holds each sequence's state after its own last step
(tests/test_export.py checks this against onnxruntime with lengths).

How torch lets a library supply the translation of its own op:

* TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``):
  ``torch.onnx.register_custom_op_symbolic``, a process-wide registry. The
  op registers ours on its first traced call (ops/recurrence.py), so such an
  export needs nothing from the caller. (Exporting a module that was
  scripted or traced earlier: call ``register_torchscript_symbolics()``.)
* Dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``, torch's
  default): torch 2.13 builds a fresh registry for every export from its own
  ATen table plus the caller's ``custom_translation_table``; it offers a
  library no public process-wide hook. So the caller passes ours::

      torch.onnx.export(model, args, dynamo=True,
                        custom_translation_table=bilstm_fast.export.onnx_translation_table())

This module imports torch.onnx, and onnxscript only inside
``onnx_translation_table()``; ``import bilstm_fast`` imports neither.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.onnx   # ~0.1 s; imports neither onnx nor onnxscript

# ONNX orders the gate blocks i, o, f, c; nn.LSTM (and we) i, f, g, o:
# ONNX's block k is our block ONNX_GATE_ORDER[k].
ONNX_GATE_ORDER = (0, 3, 1, 2)

# The lowest ONNX opset our TorchScript symbolic is registered for: LSTM and
# every op the translation uses exist from opset 7 on, and the registry
# serves each export the highest registered opset <= the one asked for.
_TORCHSCRIPT_MIN_OPSET = 7

_PROJ_REFUSED = ("bilstm_fast: a layer with proj_size={P} (hidden_size={H}) cannot be exported to "
                 "ONNX: ONNX's LSTM operator has no projection (W_hr). Export a model without "
                 "proj_size, or keep this one in PyTorch (TorchScript and torch.export work).")
_RECURRENCE_REFUSED = ("bilstm_fast: the op bilstm_fast::lstm_recurrence (the recurrence alone, on "
                       "precomputed gates gx) has no ONNX operator: ONNX's LSTM includes the input "
                       "projection. Export a model that uses BiLSTM or bilstm_fast.functional "
                       "(one bilstm_fast::lstm_layer op per layer, exported as ONNX's LSTM).")


def _sizes(w_hh_shape, w_ih_shape) -> tuple[int, int, int, int]:
    """(N, H, P, D) from w_hh [N, 4H, P] and w_ih [N*4H, D]."""
    N, G, P = (int(s) for s in w_hh_shape)
    return N, G // 4, P, int(w_ih_shape[1])


# ------------------------------------------------ TorchScript-based exporter
def _ts_optional_absent(g):
    """A missing optional input of an ONNX node (torch's own idiom)."""
    n = g.op("prim::Constant")
    n.setType(torch._C.OptionalType.ofTensor())
    return n


def _ts_is_none(v) -> bool:
    return v is None or v.node().mustBeNone()


def _ts_ints(g, values):
    return g.op("Constant", value_t=torch.tensor(list(values), dtype=torch.int64))


def _ts_onnx_gates(g, w, N: int, H: int, rest: list[int]):
    """w [N*4H, *rest] or [N, 4H, *rest], gates i,f,g,o -> [N, 4H, *rest], gates i,o,f,c."""
    w = g.op("Reshape", w, _ts_ints(g, [N, 4, H, *rest]))
    w = g.op("Gather", w, _ts_ints(g, ONNX_GATE_ORDER), axis_i=1)
    return g.op("Reshape", w, _ts_ints(g, [N, 4 * H, *rest]))


def _lstm_layer_symbolic(g, x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths, backend, keep_for_backward):
    """bilstm_fast::lstm_layer -> ONNX LSTM (module docstring), TorchScript exporter.
    Arguments are the op's (ops/recurrence.py); returns its five outputs."""
    from torch.onnx.errors import SymbolicValueError
    N, H, P, D = _sizes(w_hh.type().sizes(), w_ih.type().sizes())
    if not _ts_is_none(w_hr):
        raise SymbolicValueError(_PROJ_REFUSED.format(P=P, H=H), w_hr)
    W = _ts_onnx_gates(g, w_ih, N, H, [D])
    R = _ts_onnx_gates(g, w_hh, N, H, [H])
    if _ts_is_none(b_ih):
        B = _ts_optional_absent(g)
    else:
        B = g.op("Concat", _ts_onnx_gates(g, b_ih, N, H, []), _ts_onnx_gates(g, b_hh, N, H, []), axis_i=1)
    seq_lens = (_ts_optional_absent(g) if _ts_is_none(lengths)
                else g.op("Cast", lengths, to_i=torch.onnx.TensorProtoDataType.INT32))
    Y, Y_h, Y_c = g.op("LSTM", x, W, R, B, seq_lens, h0, c0, hidden_size_i=H,
                       direction_s="bidirectional" if N == 2 else "forward", outputs=3)
    y = g.op("Transpose", Y, perm_i=[0, 2, 1, 3])
    # The backward workspace (gates, cells) has no meaning in ONNX: two empty
    # tensors nothing reads, removed from the exported graph.
    empty = g.op("Constant", value_t=torch.zeros(0))
    return y, Y_h, Y_c, empty, g.op("Identity", empty)


def _lstm_recurrence_symbolic(g, gx, *args):
    from torch.onnx.errors import SymbolicValueError
    raise SymbolicValueError(_RECURRENCE_REFUSED, gx)


_registered = False


def register_torchscript_symbolics() -> None:
    """Register the ONNX translation of our ops with the TorchScript-based
    exporter (``torch.onnx.register_custom_op_symbolic``). Idempotent; done
    automatically on the first traced call of the op."""
    global _registered
    if _registered:
        return
    torch.onnx.register_custom_op_symbolic("bilstm_fast::lstm_layer", _lstm_layer_symbolic,
                                           _TORCHSCRIPT_MIN_OPSET)
    torch.onnx.register_custom_op_symbolic("bilstm_fast::lstm_recurrence", _lstm_recurrence_symbolic,
                                           _TORCHSCRIPT_MIN_OPSET)
    _registered = True


# ---------------------------------------------------- dynamo-based exporter
def onnx_translation_table() -> dict[Callable, Callable]:
    """The ``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``:
    ``{torch.ops.bilstm_fast.lstm_layer.default: <ONNX LSTM>, ...}``. Needs
    onnxscript (the ``export`` extra: ``pip install "bilstm_fast[export]"``)."""
    from onnxscript import opset18 as op   # torch 2.13's exporter builds its graphs at opset 18
    import onnx_ir as ir                    # onnxscript's IR, a dependency of onnxscript

    def onnx_gates(w, N: int, H: int, rest: list[int]):
        """w [N*4H, *rest] or [N, 4H, *rest], gates i,f,g,o -> [N, 4H, *rest], gates i,o,f,c."""
        w = op.Reshape(w, op.Constant(value_ints=[N, 4, H, *rest]))
        w = op.Gather(w, op.Constant(value_ints=list(ONNX_GATE_ORDER)), axis=1)
        return op.Reshape(w, op.Constant(value_ints=[N, 4 * H, *rest]))

    # Traced (not compiled) by the exporter: plain Python over the op's
    # arguments, with static weight shapes; an absent optional input is None.
    def lstm_layer(x, w_ih, b_ih=None, b_hh=None, w_hh=None, w_hr=None, h0=None, c0=None,
                   lengths=None, backend: str = "auto", keep_for_backward: bool = False):
        """bilstm_fast::lstm_layer -> ONNX LSTM (module docstring); its five outputs."""
        N, H, P, D = _sizes(w_hh.shape, w_ih.shape)
        if w_hr is not None:
            raise NotImplementedError(_PROJ_REFUSED.format(P=P, H=H))
        B = None
        if b_ih is not None:
            B = op.Concat(onnx_gates(b_ih, N, H, []), onnx_gates(b_hh, N, H, []), axis=1)
        seq_lens = None if lengths is None else op.Cast(lengths, to=ir.DataType.INT32)
        Y, Y_h, Y_c = op.LSTM(x, onnx_gates(w_ih, N, H, [D]), onnx_gates(w_hh, N, H, [H]), B,
                              seq_lens, h0, c0, hidden_size=H,
                              direction="bidirectional" if N == 2 else "forward")
        # The backward workspace (gates, cells): empty, unread, removed by the optimizer.
        empty = op.ConstantOfShape(op.Constant(value_ints=[0]))
        return op.Transpose(Y, perm=[0, 2, 1, 3]), Y_h, Y_c, empty, op.Identity(empty)

    def lstm_recurrence(gx, w_hh, w_hr=None, h0=None, c0=None, lengths=None, backend: str = "auto",
                        keep_for_backward: bool = False):
        raise NotImplementedError(_RECURRENCE_REFUSED)

    return {torch.ops.bilstm_fast.lstm_layer.default: lstm_layer,
            torch.ops.bilstm_fast.lstm_recurrence.default: lstm_recurrence}
