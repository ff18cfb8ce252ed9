"""NaN and Inf behave exactly as in torch.nn.LSTM, on every backend this machine runs.

Legend: T steps, B batch, D input features, H hidden.

nn.LSTM is the oracle: a NaN or Inf placed at the first, a middle or the last
time step of the input, in h0, in c0, or in a weight must give NaN exactly
where nn.LSTM gives NaN, +-Inf exactly where it gives +-Inf, and the same
finite values elsewhere. This is well defined although the GEMMs of the two
sides sum in different orders: a sum that holds an Inf of one sign is that
Inf, one that holds Infs of both signs or a NaN is NaN, whatever the order.

The module-level cases run the reference and the cpu backend (every ISA build
this CPU can run) in float32 and float64. The GPU backends run on CPU
tensors here: the Triton kernels in Triton's interpreter and the CUDA
kernels emulated, in float32, at the op level against the reference (which
the module-level cases check against nn.LSTM).
"""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from bilstm_fast import BiLSTM

T, B, D, H = 6, 3, 4, 5
VALUES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
STEPS = {"first": 0, "middle": T // 2, "last": T - 1}


def _place(where: str, step: str, value: float, x, hx, lstm: nn.LSTM):
    """Put `value` into one element of x (at time `step`), h0, c0 or a weight."""
    t = STEPS[step]
    if where == "x":
        x[t, 1, 2] = value
    elif where == "h0":
        hx[0][1, 1, 3] = value          # layer 0, direction 1, batch row 1
    elif where == "c0":
        hx[1][0, 2, 0] = value          # layer 0, direction 0, batch row 2
    else:                               # a weight: which element depends on `step` (3 places)
        p = getattr(lstm, where)
        with torch.no_grad():
            p.view(-1)[(p.numel() - 1) * t // (T - 1)] = value


def _nonfinite_cases():
    for where, value in itertools.product(("x", "h0", "c0", "weight_ih_l0", "weight_hh_l0_reverse",
                                           "bias_hh_l0"), VALUES):
        # h0/c0 have no time axis: one placement each
        for step in (("first",) if where in ("h0", "c0") else STEPS):
            yield f"{where}-{step}-{value}", (where, step, value)


CASES = dict(_nonfinite_cases())


def assert_same_nonfinite(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float):
    """NaN where want is NaN, the same Inf where want is Inf, close elsewhere."""
    nan_got, nan_want = got.isnan(), want.isnan()
    print(f"{name}: NaN {int(nan_got.sum())} (nn.LSTM {int(nan_want.sum())}), "
          f"Inf {int(got.isinf().sum())} (nn.LSTM {int(want.isinf().sum())})")
    assert torch.equal(nan_got, nan_want), f"{name}: NaN in different places"
    assert torch.equal(got.isinf(), want.isinf()), f"{name}: Inf in different places"
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True,
                               msg=lambda m: f"{name}: {m}")


def _cpu_isas():
    from bilstm_fast.ops import native
    mod = native.load("_cpu")
    return [] if isinstance(mod, str) else mod.supported_isas()


def _backends():
    out = [("reference", None)]
    out += [("cpu", isa) for isa in _cpu_isas()]
    return out


@pytest.fixture
def isa(request):
    """Force one ISA build of the cpu kernels for the test, then restore the default."""
    name = request.param
    if name is None:
        yield None
        return
    from bilstm_fast.ops import native
    mod = native.require("_cpu")
    before = mod.isa()
    mod.set_isa(name)
    yield name
    mod.set_isa(before)


TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("backend,isa", _backends(), ids=[f"{b}-{i}" if i else b for b, i in _backends()],
                         indirect=["isa"])
@pytest.mark.parametrize("case", list(CASES))
def test_nonfinite_matches_nn_lstm(case, backend, isa, dtype):
    where, step, value = CASES[case]
    torch.manual_seed(0)
    ref = nn.LSTM(D, H, bidirectional=True, dtype=dtype)
    x = torch.randn(T, B, D, dtype=dtype)
    hx = (torch.randn(2, B, H, dtype=dtype) * 0.5, torch.randn(2, B, H, dtype=dtype) * 0.5)
    _place(where, step, VALUES[value], x, hx, ref)
    ours = BiLSTM(D, H, dtype=dtype, backend=backend)
    ours.load_state_dict(ref.state_dict())
    with torch.no_grad():
        want_out, (want_h, want_c) = ref(x, hx)
        got_out, (got_h, got_c) = ours(x, hx)
    for name, got, want in (("output", got_out, want_out), ("h_n", got_h, want_h), ("c_n", got_c, want_c)):
        assert_same_nonfinite(f"{case} {backend} {name}", got, want, **TOL[dtype])
