"""Bad input gets the exception class nn.LSTM raises for the same mistake
(bilstm_fast/errors.py), with a message naming the argument; lengths follow
one rule on every backend; complex models are refused.

Legend: T steps, B batch, D input features, H hidden.
"""
from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import bilstm_fast
from bilstm_fast import BiLSTM
from bilstm_fast.ops import backends

T, B, D, H = 5, 2, 3, 4
x = torch.randn(T, B, D)

# (what goes wrong, the call, a pattern our message must match)
CASES = {
    "wrong input size": (lambda m: m(torch.randn(T, B, 7)), r"input_size=3.*got 7"),
    "1-D input": (lambda m: m(torch.randn(T)), r"got 1-D"),
    "4-D input": (lambda m: m(torch.randn(T, B, D, 1)), r"got 4-D"),
    "zero-length sequence": (lambda m: m(torch.randn(0, B, D)), r"sequence length > 0"),
    "input dtype mismatch": (lambda m: m(x.double()), r"input dtype \(torch.float64\) does not match"),
    "integer input": (lambda m: m(torch.ones(T, B, D, dtype=torch.int64)), r"torch.int64"),
    "complex input": (lambda m: m(x.to(torch.complex64)), r"torch.complex64"),
    "hx not a tuple": (lambda m: m(x, torch.zeros(2, B, H)), r"hx: expected a tuple \(h_0, c_0\)"),
    "hx of length 1": (lambda m: m(x, (torch.zeros(2, B, H),)), r"hx: expected a tuple.*length 1"),
    "h0 wrong batch": (lambda m: m(x, (torch.zeros(2, 3, H), torch.zeros(2, B, H))), r"h_0 of size \(2, 2, 4\)"),
    "c0 wrong hidden": (lambda m: m(x, (torch.zeros(2, B, H), torch.zeros(2, B, 5))), r"c_0 of size \(2, 2, 4\)"),
    "h0 wrong layers": (lambda m: m(x, (torch.zeros(1, B, H), torch.zeros(2, B, H))), r"h_0 of size \(2, 2, 4\)"),
    "h0 2-D for batched input": (lambda m: m(x, (torch.zeros(2, H), torch.zeros(2, H))), r"should be 3-D"),
    "h0 3-D for unbatched input": (lambda m: m(torch.randn(T, D), (torch.zeros(2, 1, H), torch.zeros(2, 1, H))),
                                   r"should be 2-D"),
    "h0 dtype": (lambda m: m(x, (torch.zeros(2, B, H, dtype=torch.float64), torch.zeros(2, B, H))),
                 r"h_0 with dtype torch.float32"),
    "input not a tensor": (lambda m: m([1.0, 2.0, 3.0]), r"input must be a Tensor or PackedSequence"),
}


def _raised(f, m):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            f(m)
        except Exception as e:  # the exception object is the result under test
            return e
    return None


@pytest.mark.parametrize("case", list(CASES))
def test_same_exception_class_as_nn_lstm(case):
    """Every mistake nn.LSTM rejects, we reject with an exception that is an
    instance of nn.LSTM's class (code that catches RuntimeError, IndexError,
    ... for nn.LSTM keeps working), and a message that names the argument."""
    f, pattern = CASES[case]
    torch.manual_seed(0)
    ref = nn.LSTM(D, H, bidirectional=True)
    ours = BiLSTM(D, H)
    want, got = _raised(f, ref), _raised(f, ours)
    print(f"{case}: nn.LSTM {type(want).__name__}: {want}\n  ours {type(got).__name__}: {got}")
    assert want is not None, "nn.LSTM accepts this: the case is wrong"
    assert got is not None, "BiLSTM accepted what nn.LSTM rejects"
    assert isinstance(got, type(want)), f"{type(got).__mro__} is not a {type(want).__name__}"
    assert re.search(pattern, str(got)), str(got)


def test_error_classes_derive_from_the_descriptive_ones():
    """Besides nn.LSTM's class, each error keeps the class that describes it
    (ValueError for a bad value, TypeError for a wrong kind)."""
    from bilstm_fast import errors
    assert issubclass(errors.InputError, ValueError) and issubclass(errors.InputError, RuntimeError)
    assert issubclass(errors.InputTypeError, TypeError) and issubclass(errors.InputTypeError, RuntimeError)
    assert issubclass(errors.HiddenStateArityError, IndexError)
    assert issubclass(errors.NotATensorError, AttributeError)


# ------------------------------------------------------------------- complex
def test_complex_model_is_refused():
    """nn.LSTM runs complex64; BiLSTM used to cast to real and return another
    answer with only a torch warning. It refuses complex models instead."""
    with pytest.raises(TypeError, match=r"dtype: BiLSTM supports real floating-point dtypes.*complex64"):
        BiLSTM(D, H, dtype=torch.complex64)
    model = BiLSTM(D, H)
    model.to(torch.complex64)
    with pytest.raises(TypeError, match=r"weights' dtype: BiLSTM supports real.*complex64"):
        model(x.to(torch.complex64))
    gx = torch.randn(T, B, 2, 4 * H, dtype=torch.complex64)
    w = torch.randn(2, 4 * H, H, dtype=torch.complex64)
    h = torch.zeros(2, B, H, dtype=torch.complex64)
    with pytest.raises(TypeError, match=r"real floating-point.*complex64"):
        bilstm_fast.lstm_recurrence(gx, w, h, h)


# ------------------------------------------------------------------- lengths
def _op_args(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return r(T, 3, 2, 4 * H), r(2, 4 * H, H) * 0.5, r(2, 3, H), r(2, 3, H)


def _cpu_backends():
    return [n for n in ("reference", "cpu") if backends.backend_status()[n] is None]


@pytest.mark.parametrize("backend", _cpu_backends())
@pytest.mark.parametrize("bad,index", [([T, 0, 2], 1), ([T, 2, -1], 2), ([T + 1, 2, 3], 0),
                                       ([1, 2**32 + 2, 3], 1)])
def test_lengths_outside_1_to_T_are_an_error_naming_value_and_index(backend, bad, index):
    """One rule on every backend: a CPU lengths value outside 1..T is an
    InputError (ValueError) naming the value and its index. Before, cpu raised,
    reference clamped, emulated CUDA truncated 2**32+2 to 2, Triton read out
    of bounds."""
    gx, w, h0, c0 = _op_args()
    with pytest.raises(ValueError, match=rf"lengths: values must be in 1..T={T}, got {bad[index]} at index {index}"):
        bilstm_fast.lstm_recurrence(gx, w, h0, c0, torch.tensor(bad), backend=backend)


@pytest.mark.parametrize("backend", _cpu_backends())
def test_lengths_kinds(backend):
    gx, w, h0, c0 = _op_args()
    want = bilstm_fast.lstm_recurrence(gx, w, h0, c0, torch.tensor([5, 1, 3]), backend="reference")
    for given in ([5, 1, 3], (5, 1, 3), torch.tensor([5, 1, 3], dtype=torch.int32)):
        got = bilstm_fast.lstm_recurrence(gx, w, h0, c0, given, backend=backend)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"lengths: expected an integer tensor of shape \[B=3\], got torch.bool"):
        bilstm_fast.lstm_recurrence(gx, w, h0, c0, torch.tensor([True, True, False]), backend=backend)
    with pytest.raises(ValueError, match=r"lengths: expected an integer tensor of shape \[B=3\].*\(2,\)"):
        bilstm_fast.lstm_recurrence(gx, w, h0, c0, [5, 1], backend=backend)
    with pytest.raises(TypeError, match=r"lengths: expected a tensor or a sequence of ints"):
        bilstm_fast.lstm_recurrence(gx, w, h0, c0, "five", backend=backend)


def test_lengths_error_before_any_gradient_work():
    """A bad length used to surface as an IndexError from inside the dW_hh
    GEMM (dgx[lengths - 1]) in backward; now the forward refuses it."""
    gx, w, h0, c0 = (t.requires_grad_() for t in _op_args())
    with pytest.raises(ValueError, match="lengths"):
        bilstm_fast.lstm_recurrence(gx, w, h0, c0, torch.tensor([9, 1, 1]), backend="reference")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (GPU lengths are clamped)")
def test_gpu_lengths_are_clamped_into_1_to_T():
    gx, w, h0, c0 = (t.cuda() for t in _op_args(torch.float32))
    got = bilstm_fast.lstm_recurrence(gx, w, h0, c0, torch.tensor([0, 9, -3], device="cuda"),
                                      backend="reference")
    want = bilstm_fast.lstm_recurrence(gx, w, h0, c0, torch.tensor([1, T, 1], device="cuda"),
                                       backend="reference")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
