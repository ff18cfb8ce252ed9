"""The exceptions bilstm_fast raises for bad input (docs/design.md §5).

torch.nn.LSTM reports most bad input as RuntimeError (wrong input size, hx
shape or batch, zero-length sequence, ...), some as ValueError (input rank,
dtype mismatch), a wrong-length hx as IndexError and a non-tensor input as
AttributeError. Code written for nn.LSTM catches those classes, so each of
our errors derives from the class nn.LSTM raises for the same mistake as
well as from the class that describes it; tests/test_errors.py checks them
case by case against nn.LSTM.
"""
from __future__ import annotations


class InputError(ValueError, RuntimeError):
    """A bad value or shape: ValueError, and RuntimeError as nn.LSTM raises."""


class InputTypeError(TypeError, RuntimeError):
    """An argument of the wrong kind: TypeError, and RuntimeError as nn.LSTM raises."""


class HiddenStateArityError(InputTypeError, IndexError):
    """hx is not a pair (nn.LSTM indexes hx[1] and raises IndexError)."""


class NotATensorError(TypeError, AttributeError):
    """input is neither a Tensor nor a PackedSequence (nn.LSTM calls .dim() on it)."""
