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


# ------------------------------------------------------------ double backward
def test_gradgradcheck_recurrence_op():
    """create_graph=True through lstm_recurrence (before: "no autograd formula
    registered" from torch): the backward recomputes through the reference."""
    a = _op_inputs(T=3, B=2, H=2, lengths=torch.tensor([3, 1]))
    names = ["gx", "w_hh", "h0", "c0"]
    ins = tuple(a[n].detach().requires_grad_() for n in names)

    def f(*ts):
        return lstm_recurrence(*ts, lengths=a["lengths"], backend="reference")

    assert torch.autograd.gradgradcheck(f, ins)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_gradgradcheck_layer_op(backend):
    """create_graph=True through the layer op (x, W_ih, biases, W_hh, h0, c0)."""
    g = torch.Generator().manual_seed(1)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=F64).requires_grad_()  # noqa: E731
    T, B, D, H, N = 3, 2, 2, 2, 2
    ins = (mk(T, B, D), mk(N * 4 * H, D), mk(N * 4 * H), mk(N * 4 * H), mk(N, 4 * H, H),
           mk(N, B, H), mk(N, B, H))

    def f(x, w_ih, b_ih, b_hh, w_hh, h0, c0):
        return rec.lstm_layer(x, w_ih, b_ih, b_hh, w_hh, h0, c0, torch.tensor([3, 2]), backend=backend)

    assert torch.autograd.gradgradcheck(f, ins)


def test_gradient_penalty_matches_nn_lstm():
    """A gradient penalty (double backward) on BiLSTM gives nn.LSTM's parameter gradients."""
    ref, ours = lstm_pair(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=F64)
    grads = {}
    for name, m in (("nn", ref), ("ours", ours)):
        xi = x.clone().requires_grad_()
        out, (h_n, _) = m(xi)
        (gx,) = torch.autograd.grad(out.square().sum() + h_n.sum(), xi, create_graph=True)
        gx.square().sum().backward()
        grads[name] = {n: p.grad for n, p in m.named_parameters()}
    for n in grads["nn"]:
        assert_close(f"d/d{n} of the penalty", grads["ours"][n], grads["nn"][n], 1e-9, 1e-11)


def test_opcheck_layer_op():
    g = torch.Generator().manual_seed(2)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=F64).requires_grad_()  # noqa: E731
    T, B, D, H, N = 3, 2, 4, 3, 2
    for lengths, bias in ((None, True), (torch.tensor([3, 1]), False)):
        b = (mk(N * 4 * H), mk(N * 4 * H)) if bias else (None, None)
        args = (mk(T, B, D), mk(N * 4 * H, D), *b, mk(N, 4 * H, H), None, mk(N, B, H), mk(N, B, H),
                lengths, "reference", True)
        torch.library.opcheck(rec._lstm_layer_op, args)


# ------------------------------------------- torch.compile on PackedSequence
@pytest.mark.parametrize("enforce_sorted,fullgraph", [(False, True), (True, False)])
def test_torch_compile_packed_sequence_matches_eager(enforce_sorted, fullgraph, caplog):
    """The most common LSTM input in a tagger (before: "The tensor has a
    non-zero number of elements, but its data is not allocated yet" from the
    unpack step). Packed unsorted, B is a static size and the whole forward is
    one graph; packed sorted, B is read from batch_sizes (a graph break).
    Compiling logs nothing about the per-layer profiler ranges."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch._dynamo.reset()
    ref, ours = lstm_pair(4, 6, num_layers=2, dtype=torch.float32, backend="reference")
    lengths = torch.tensor([5, 3, 4]) if not enforce_sorted else torch.tensor([5, 4, 3])
    x = torch.randn(5, 3, 4)
    xc, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    compiled = torch.compile(ours, fullgraph=fullgraph)
    with caplog.at_level("WARNING"):
        out_c, (h_c, c_c) = compiled(pack_padded_sequence(xc, lengths, enforce_sorted=enforce_sorted))
    assert not [r for r in caplog.records if "record_function" in r.getMessage()
                or "Profiler" in r.getMessage()], [r.getMessage() for r in caplog.records]
    out_r, (h_r, c_r) = ref(pack_padded_sequence(xr, lengths, enforce_sorted=enforce_sorted))
    pc, pr = pad_packed_sequence(out_c)[0], pad_packed_sequence(out_r)[0]
    assert_close("compiled packed output vs nn.LSTM", pc, pr, 1e-5, 1e-5)
    assert_close("compiled h_n vs nn.LSTM", h_c, h_r, 1e-5, 1e-5)
    assert_close("compiled c_n vs nn.LSTM", c_c, c_r, 1e-5, 1e-5)
    (g_c,) = torch.autograd.grad(pc.sum() + h_c.sum(), xc)
    (g_r,) = torch.autograd.grad(pr.sum() + h_r.sum(), xr)
    assert_close("compiled packed grad", g_c, g_r, 1e-5, 1e-5)


def test_torch_compile_replace_lstm_model_on_packed_batches():
    """A tagger-like model made by replace_lstm, compiled, fed packed batches of
    different lengths: equal to the nn.LSTM model it came from."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    torch._dynamo.reset()

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(20, 8)
            self.lstm = torch.nn.LSTM(8, 6, num_layers=2, bidirectional=True, batch_first=True)
            self.out = torch.nn.Linear(12, 5)

        def forward(self, tokens, lengths):
            packed = pack_padded_sequence(self.emb(tokens), lengths, batch_first=True, enforce_sorted=False)
            y, _ = self.lstm(packed)
            y, _ = pad_packed_sequence(y, batch_first=True, total_length=tokens.shape[1])
            return self.out(y)

    torch.manual_seed(3)
    ref = Tagger().eval()
    model = bilstm_fast.replace_lstm(Tagger().eval())
    model.load_state_dict(ref.state_dict())
    compiled = torch.compile(model)
    for B, T in ((3, 7), (4, 5)):
        tokens = torch.randint(0, 20, (B, T))
        lengths = torch.randint(1, T + 1, (B,))
        lengths[0] = T
        with torch.no_grad():
            assert_close(f"tagger B={B} T={T}", compiled(tokens, lengths), ref(tokens, lengths), 1e-5, 1e-5)


# ------------------------------------------------------------------ tracing
def test_traced_module_follows_a_later_load_state_dict():
    """torch.jit.trace under no_grad used to bake cached packed weights into
    the trace as constants: a later load_state_dict was ignored."""
    ref, ours = lstm_pair(3, 4, num_layers=2, dtype=torch.float32)
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        ours(x)                  # evaluated first, as a user would before tracing
        traced = torch.jit.trace(ours, (x,), check_trace=False)
    other = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    traced.load_state_dict(other.state_dict())
    with torch.no_grad():
        assert_close("traced after load_state_dict", traced(x)[0], other(x)[0], 1e-5, 1e-5)
