"""The recurrence op itself: gradcheck, torch.library.opcheck, torch.compile with
no graph break, the backend registry, and the reference against a plain
autograd loop written from nn.LSTM's equations."""
from __future__ import annotations

import pytest
import torch

import bilstm_fast
from bilstm_fast.ops import lstm_recurrence
from bilstm_fast.ops import recurrence as rec
from conftest import assert_close, lstm_pair

F64 = torch.float64


def _op_inputs(T=4, B=3, N=2, H=5, P=None, lengths=None, dtype=F64, requires_grad=True):
    P = P or H
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_(requires_grad)
    w_hr = mk(N, P, H) if P != H else None
    return dict(gx=mk(T, B, N, 4 * H), w_hh=mk(N, 4 * H, P) * 0.5, h0=mk(N, B, P), c0=mk(N, B, H),
                lengths=lengths, w_hr=w_hr)


@pytest.mark.parametrize("lengths", [None, torch.tensor([4, 1, 2])], ids=["full", "lengths"])
@pytest.mark.parametrize("N", [1, 2])
@pytest.mark.parametrize("P", [None, 3], ids=["noproj", "proj"])
def test_gradcheck(lengths, N, P):
    a = _op_inputs(N=N, P=P, lengths=lengths)
    a["w_hh"] = a["w_hh"].detach().requires_grad_()
    names = ["gx", "w_hh", "h0", "c0"] + (["w_hr"] if P else [])

    def f(*ts):
        kw = dict(a, **dict(zip(names, ts)))
        return lstm_recurrence(**kw, backend="reference")

    assert torch.autograd.gradcheck(f, tuple(a[n] for n in names))


def _loop_lstm(gx, w_hh, h0, c0, lengths):
    """nn.LSTM's equations as a plain autograd loop, one direction at a time."""
    T, B, N, G = gx.shape
    H = G // 4
    ys = torch.zeros(T, B, N, H, dtype=gx.dtype)
    hn, cn = [], []
    for n in range(N):
        h_rows, c_rows = [], []
        for b in range(B):
            L = T if lengths is None else int(lengths[b])
            h, c = h0[n, b], c0[n, b]
            for t in (range(L) if n == 0 else reversed(range(L))):
                z = gx[t, b, n] + w_hh[n] @ h
                i, f, g, o = z.split(H)
                c = f.sigmoid() * c + i.sigmoid() * g.tanh()
                h = o.sigmoid() * c.tanh()
                ys[t, b, n] = h
            h_rows.append(h), c_rows.append(c)
        hn.append(torch.stack(h_rows)), cn.append(torch.stack(c_rows))
    return ys, torch.stack(hn), torch.stack(cn)


def test_reference_matches_plain_loop_with_lengths():
    lengths = torch.tensor([2, 5, 1, 4])
    a = _op_inputs(T=5, B=4, H=3, lengths=lengths, requires_grad=False)
    want = _loop_lstm(a["gx"], a["w_hh"], a["h0"], a["c0"], lengths)
    got = lstm_recurrence(**a, backend="reference")
    for name, g_, w_ in zip(("y", "h_n", "c_n"), got, want):
        assert_close(name, g_, w_, 1e-12, 1e-12)


def test_opcheck():
    for lengths in (None, torch.tensor([3, 1, 2])):
        a = _op_inputs(T=3, lengths=lengths)
        args = (a["gx"], a["w_hh"], None, a["h0"], a["c0"], lengths, "reference", True)
        torch.library.opcheck(rec._lstm_recurrence_op, args)


def test_no_workspace_without_grad():
    a = _op_inputs(requires_grad=False)
    out = rec._lstm_recurrence_op(a["gx"], a["w_hh"], None, a["h0"], a["c0"], None, "reference", False)
    assert out[3].numel() == 0 and out[4].numel() == 0


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    _, model = lstm_pair(4, 6, num_layers=2, dtype=torch.float32, backend="reference")
    x = torch.randn(5, 3, 4, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)  # inductor, as a user would
    out_c, (h_c, c_c) = compiled(x)
    out_e, (h_e, c_e) = model(x)
    assert_close("compiled output", out_c, out_e, 1e-6, 1e-6)
    assert_close("compiled c_n", c_c, c_e, 1e-6, 1e-6)
    (gc,) = torch.autograd.grad(out_c.sum() + h_c.sum(), x)
    (ge,) = torch.autograd.grad(out_e.sum() + h_e.sum(), x)
    assert_close("compiled grad", gc, ge, 1e-6, 1e-6)
    # A new sequence length and batch size: same results as eager (dynamic shapes, no error).
    x2 = torch.randn(7, 2, 4)
    assert_close("compiled new shape", compiled(x2)[0], model(x2)[0], 1e-6, 1e-6)


def test_backend_registry():
    status = bilstm_fast.backend_status()
    assert set(status) >= {"reference", "cpu", "triton", "cuda"}
    assert status["reference"] is None
    assert "reference" in bilstm_fast.available_backends()
    for name, why in status.items():
        assert why is None or (isinstance(why, str) and why), name


def test_unknown_backend_lists_the_available_ones():
    a = _op_inputs(requires_grad=False)
    with pytest.raises(ValueError, match=r"unknown backend 'nope'.*reference"):
        lstm_recurrence(**a, backend="nope")
    with pytest.raises(ValueError, match=r"unknown backend 'nope'"):
        bilstm_fast.BiLSTM(3, 4, backend="nope")(torch.randn(2, 1, 3))


def test_unavailable_backend_is_a_clear_error():
    unavailable = [n for n, why in bilstm_fast.backend_status().items() if why is not None]
    if not unavailable:
        pytest.skip("every backend is available on this machine")
    a = _op_inputs(requires_grad=False)
    with pytest.raises(RuntimeError, match=rf"backend '{unavailable[0]}' is not available"):
        lstm_recurrence(**a, backend=unavailable[0])


def test_dtype_codes_mirror_the_native_table():
    """bilstm_fast.ops.native.DTYPE_CODES is the Python mirror of
    csrc/common/lstm_args.h's DType, which every compiled module exports."""
    from bilstm_fast.ops import native
    want = {str(dt): code for dt, code in native.DTYPE_CODES.items()}
    for name in ("_cpu", "_cuda_emu", "_cuda"):
        mod = native.load(name)
        if isinstance(mod, str):
            assert name == "_cuda", mod   # _cuda is built only where nvcc is found
            continue
        print(name, mod.dtype_codes)
        assert dict(mod.dtype_codes) == want
