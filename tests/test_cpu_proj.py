"""proj_size on the C++ CPU backend (bilstm_fast._cpu, csrc/cpu/lstm_kernel.cpp
forward_proj_job / backward_proj_job): against torch.nn.LSTM(proj_size=...)
and the reference backend, outputs, states and every gradient (weight_hr too).

Legend: T steps, B batch, N directions, H hidden, P proj_size.

Thread counts exercise each way the driver splits the work
(csrc/cpu/lstm_driver.cpp make_plan): 1 thread, 2 threads with N=2 (a
direction each), 2-3 threads with N=1 (one thread per direction: with a
projection the hidden units are not split by default), 2 threads with N=1
and B >= 16 (batch split); and, under BILSTM_CPU_PROJ_SPLIT=units in a
child process, the hidden units and the columns of h split with two
barriers per step (2-4 threads, oversubscribed on 2 cores).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from bilstm_fast import BiLSTM
from bilstm_fast.ops import backends, cpu_gemm, cpu_lstm, lstm_recurrence
from bilstm_fast.ops.recurrence import _recurrent_weight_grad

from conftest import assert_close, cpu_module as _cpu

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}


# ------------------------------------------------------- module vs nn.LSTM
def _module_grads(m, x, h0, c0, lengths, cot):
    """Output (padded), h_n, c_n and the gradients of x, h0, c0 and every parameter."""
    x, h0, c0 = (t.detach().clone().requires_grad_() for t in (x, h0, c0))
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, (h_n, c_n) = m(inp, (h0, c0))
    if lengths is not None:
        out = pad_packed_sequence(out)[0]
    m.zero_grad()
    sum((t * c).sum() for t, c in zip((out, h_n, c_n), cot)).backward()
    return {"y": out, "h_n": h_n, "c_n": c_n, "dx": x.grad, "dh0": h0.grad, "dc0": c0.grad,
            **{f"d_{k}": p.grad for k, p in m.named_parameters()}}


MODULE_CASES = [  # H, P, num_layers, lengths
    (3, 1, 1, [5, 2, 4]),
    (3, 2, 2, None),
    (17, 5, 2, [1, 5, 3]),          # unsorted, a length-1 sequence
    (17, 16, 1, [4, 5, 5]),
    (40, 2, 1, None),               # several panels of hidden units, one of P
]


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("bidirectional", [True, False], ids=["N2", "N1"])
@pytest.mark.parametrize("H,P,layers,lengths", MODULE_CASES,
                         ids=[f"H{c[0]}P{c[1]}L{c[2]}" + ("len" if c[3] else "") for c in MODULE_CASES])
def test_bilstm_matches_nn_lstm(H, P, layers, lengths, dtype, bidirectional, threads):
    """BiLSTM(proj_size=P, backend="cpu") vs nn.LSTM(proj_size=P): output, h_n, c_n,
    dx, dh0, dc0 and every parameter's gradient (weight_hr included)."""
    _cpu()
    T, B, D = 5, 3, 4
    N = 2 if bidirectional else 1
    torch.manual_seed(0)
    ref = nn.LSTM(D, H, num_layers=layers, bidirectional=bidirectional, proj_size=P, dtype=dtype)
    ours = BiLSTM(D, H, num_layers=layers, bidirectional=bidirectional, proj_size=P, dtype=dtype,
                  backend="cpu")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(T, B, D, dtype=dtype)
    h0, c0 = torch.randn(layers * N, B, P, dtype=dtype), torch.randn(layers * N, B, H, dtype=dtype)
    lens = None if lengths is None else torch.tensor(lengths)
    cot = (torch.randn(T, B, N * P, dtype=dtype), torch.randn(layers * N, B, P, dtype=dtype),
           torch.randn(layers * N, B, H, dtype=dtype))
    want = _module_grads(ref, x, h0, c0, lens, cot)
    got = _module_grads(ours, x, h0, c0, lens, cot)
    assert got.keys() == want.keys() and any("weight_hr" in k for k in want)
    for name in want:
        assert_close(name, got[name], want[name], **TOL[dtype])


# --------------------------------------------------------- op vs reference
def _inputs(T, B, N, H, P, dtype, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)  # noqa: E731
    ins = dict(gx=r(T, B, N, 4 * H), w_hh=r(N, 4 * H, P, scale=P ** -0.5), w_hr=r(N, P, H, scale=H ** -0.5),
               h0=r(N, B, P), c0=r(N, B, H))
    cot = dict(dy=r(T, B, N, P), dh_n=r(N, B, P), dc_n=r(N, B, H))
    return ins, cot, None if lengths is None else torch.tensor(lengths, dtype=torch.int64)


def _run(backend, ins, cot, lens):
    """y, h_n, c_n and the gradients of gx, w_hh, w_hr, h0, c0 through the op."""
    leaf = {k: v.detach().clone().requires_grad_() for k, v in ins.items()}
    y, h_n, c_n = lstm_recurrence(leaf["gx"], leaf["w_hh"], leaf["h0"], leaf["c0"], lens, w_hr=leaf["w_hr"],
                                  backend=backend)
    ((y * cot["dy"]).sum() + (h_n * cot["dh_n"]).sum() + (c_n * cot["dc_n"]).sum()).backward()
    return {"y": y, "h_n": h_n, "c_n": c_n, **{f"d{k}": v.grad for k, v in leaf.items()}}


OP_SHAPES = [  # T, B, N, H, P, lengths
    (1, 1, 2, 1, 1, None),             # H=1 (the op allows P = H; nn.LSTM needs P < H)
    (5, 3, 2, 3, 2, [2, 5, 1]),        # unsorted, a length-1 sequence
    (7, 3, 1, 17, 1, [7, 3, 1]),
    (7, 1, 2, 17, 16, None),
    (6, 2, 2, 40, 17, [1, 6]),         # H=40: 3 panels of units, P=17: 2 panels of h (split 1 + 1)
    (4, 3, 1, 70, 33, [4, 2, 3]),      # partial last vectors and panels of both
    (5, 17, 1, 9, 2, list(range(1, 6)) * 3 + [5, 5]),  # B=17: batch split at 2 threads, N=1
    (3, 20, 2, 33, 20, None),          # more rows than one register tile
    (4, 2, 1, 5, 9, [4, 3]),           # P > H: the op does not forbid it
]


@pytest.mark.parametrize("threads", [1, 2, 3, 4], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("T,B,N,H,P,lengths", OP_SHAPES, ids=[f"T{s[0]}B{s[1]}N{s[2]}H{s[3]}P{s[4]}"
                                                             + ("L" if s[5] else "") for s in OP_SHAPES])
def test_op_matches_reference(T, B, N, H, P, lengths, dtype, threads):
    _cpu()
    ins, cot, lens = _inputs(T, B, N, H, P, dtype, lengths)
    got = _run("cpu", ins, cot, lens)
    want = _run("reference", ins, cot, lens)
    for name in want:
        assert_close(name, got[name], want[name], **TOL[dtype])
    if lens is not None:  # positions past each length are exactly zero
        t = torch.arange(T)[:, None]
        assert (got["y"][t >= lens[None, :]] == 0).all()


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_forward_without_workspace(dtype, threads):
    """keep_for_backward=False (inference) gives the same y, h_n, c_n as with the workspace."""
    _cpu()
    ins, _, lens = _inputs(6, 5, 2, 37, 11, dtype, [6, 1, 3, 6, 2])
    args = (ins["gx"], ins["w_hh"], ins["w_hr"], ins["h0"], ins["c0"], lens)
    y0, hn0, cn0, g0, c_0 = cpu_lstm.forward(*args, False)
    y1, hn1, cn1, g1, c_1 = cpu_lstm.forward(*args, True)
    assert g0.numel() == 0 and c_0.numel() == 0 and g1.shape == (6, 5, 2, 4 * 37) and c_1.shape == (6, 5, 2, 37)
    assert torch.equal(y0, y1) and torch.equal(hn0, hn1) and torch.equal(cn0, cn1)
    want = backends.get("reference").forward(*args, False)
    for name, a, b in zip(("y", "h_n", "c_n"), (y0, hn0, cn0), want[:3]):
        assert_close(name, a, b, **TOL[dtype])
    with torch.no_grad():
        y, h_n, c_n = lstm_recurrence(ins["gx"], ins["w_hh"], ins["h0"], ins["c0"], lens, w_hr=ins["w_hr"],
                                      backend="cpu")
    assert torch.equal(y, y0) and torch.equal(h_n, hn0) and torch.equal(c_n, cn0)


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_every_isa_build(isa):
    mod = _cpu()
    if isa not in mod.supported_isas():
        pytest.skip(f"this CPU cannot run the {isa} build (supported: {mod.supported_isas()})")
    old, old_threads = mod.isa(), torch.get_num_threads()
    mod.set_isa(isa)
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for dtype in (torch.float64, torch.float32):
                for N in (1, 2):
                    ins, cot, lens = _inputs(6, 5, N, 37, 11, dtype, [6, 1, 3, 6, 2])
                    got = _run("cpu", ins, cot, lens)
                    want = _run("reference", ins, cot, lens)
                    for name in want:
                        assert_close(f"{isa} {dtype} N{N} t{threads} {name}", got[name], want[name], **TOL[dtype])
    finally:
        mod.set_isa(old)
        torch.set_num_threads(old_threads)


def test_gradcheck_float64():
    _cpu()
    ins, _, lens = _inputs(4, 3, 2, 5, 3, torch.float64, [4, 1, 3])
    args = [ins[k].requires_grad_() for k in ("gx", "w_hh", "w_hr", "h0", "c0")]

    def f(gx, w_hh, w_hr, h0, c0):
        return lstm_recurrence(gx, w_hh, h0, c0, lens, w_hr=w_hr, backend="cpu")

    assert torch.autograd.gradcheck(f, args)


# ------------------------------------------------------ dW_hh with h of P
@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("lengths", [None, [3, 5, 1, 4]], ids=["full", "lengths"])
@pytest.mark.parametrize("N", [1, 2])
def test_recurrent_weight_grad_with_projection(N, lengths, threads):
    """cpu_gemm.recurrent_weight_grad (dW_hh [N, 4H, P]: h_{t-1} has P features)
    against the op's torch GEMMs (recurrence._recurrent_weight_grad)."""
    _cpu()
    T, B, H, P = 5, 4, 9, 3
    g = torch.Generator().manual_seed(1)
    dgx = torch.randn(T, B, N, 4 * H, generator=g, dtype=torch.float64)
    lens = None if lengths is None else torch.tensor(lengths)
    y = torch.randn(T, B, N, P, generator=g, dtype=torch.float64)
    if lens is not None:  # as the forward leaves them: zero past each length
        dgx[torch.arange(T)[:, None] >= lens[None, :]] = 0
        y[torch.arange(T)[:, None] >= lens[None, :]] = 0
    h0 = torch.randn(N, B, P, generator=g, dtype=torch.float64)
    got = cpu_gemm.recurrent_weight_grad(dgx, y, h0, lens)
    want = _recurrent_weight_grad(dgx, y, h0, lens)
    assert got.shape == (N, 4 * H, P)
    assert_close("dW_hh", got, want, **TOL[torch.float64])


# ------------------------------------------------------------- dispatch
def test_auto_picks_cpu_for_proj_size():
    _cpu()
    for dtype in (torch.float32, torch.float64):
        for N in (1, 2):
            assert backends.resolve_backend("auto", "cpu", dtype, N, 8, 4, True, True) == "cpu"
    # and a BiLSTM with proj_size on CPU tensors runs the cpu kernels, forward and backward
    calls = []
    fwd, bwd = cpu_lstm.forward, cpu_lstm.backward
    try:
        cpu_lstm.forward = lambda *a, **k: calls.append("forward") or fwd(*a, **k)
        cpu_lstm.backward = lambda *a, **k: calls.append("backward") or bwd(*a, **k)
        m = BiLSTM(4, 6, proj_size=2)
        y, _ = m(torch.randn(3, 2, 4))
        y.sum().backward()
    finally:
        cpu_lstm.forward, cpu_lstm.backward = fwd, bwd
    assert calls == ["forward", "backward"]


def test_bad_projection_input_is_a_clear_error():
    mod = _cpu()
    T, B, N, H, P = 3, 2, 2, 4, 3
    ins, _, _ = _inputs(T, B, N, H, P, torch.float32, None)
    y, hn, cn = torch.empty(T, B, N, P), torch.empty(N, B, P), torch.empty(N, B, H)

    def call(**over):
        args = dict(gx=ins["gx"], w_hh=ins["w_hh"], h0=ins["h0"], c0=ins["c0"], lengths=None, y=y, h_n=hn,
                    c_n=cn, gates=None, cells=None, num_threads=1, w_hr=ins["w_hr"])
        args.update(over)
        mod.forward(**args)

    call()  # the good call works
    with pytest.raises(ValueError, match=r"w_hr: expected shape \[N=2, P=3, H=4\], got \[2, 3, 5\]"):
        call(w_hr=torch.empty(N, P, H + 1))
    with pytest.raises(ValueError, match=r"w_hh: expected shape \[N=2, 4H=16, P=3\], got \[2, 16, 4\]"):
        call(w_hh=torch.empty(N, 4 * H, H))
    with pytest.raises(ValueError, match=r"y: expected shape \[T=3, B=2, N=2, P=3\]"):
        call(y=torch.empty(T, B, N, H))
    with pytest.raises(ValueError, match=r"h0: expected shape \[N=2, B=2, P=3\]"):
        call(h0=torch.empty(N, B, H))
    with pytest.raises(ValueError, match=r"w_hr: expected dtype torch.float32, got torch.float64"):
        call(w_hr=ins["w_hr"].double())
    gates, cells = torch.empty(T, B, N, 4 * H), torch.empty(T, B, N, H)
    call(gates=gates, cells=cells)
    dgx, dh0, dc0 = torch.empty(T, B, N, 4 * H), torch.empty(N, B, P), torch.empty(N, B, H)
    with pytest.raises(ValueError, match=r"w_hr, dw_hr: pass both"):
        mod.backward(torch.zeros(T, B, N, P), hn, cn, ins["w_hh"], ins["c0"], None, gates, cells, dgx, dh0,
                     dc0, 1, ins["w_hr"], None)
    with pytest.raises(ValueError, match=r"dw_hr: expected shape \[N=2, P=3, H=4\]"):
        mod.backward(torch.zeros(T, B, N, P), hn, cn, ins["w_hh"], ins["c0"], None, gates, cells, dgx, dh0,
                     dc0, 1, ins["w_hr"], torch.empty(N, H, P))


def test_nan_in_one_sequence_matches_the_reference():
    """A NaN in one sequence's input: NaN where the reference has NaN (that
    sequence's outputs, and the weight gradients, dW_hr included), the other
    sequences untouched; masked steps of the dW_hr GEMM's operands are zero,
    not garbage."""
    _cpu()
    ins, cot, lens = _inputs(5, 3, 2, 9, 4, torch.float64, [5, 2, 4])
    ins["gx"][1, 0, 0, 3] = float("nan")
    got = _run("cpu", ins, cot, lens)
    want = _run("reference", ins, cot, lens)
    assert got["y"][:, 0].isnan().any() and not got["y"][:, 1:].isnan().any()
    assert got["dw_hr"].isnan().any()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12, equal_nan=True,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_hidden_unit_split_with_two_barriers():
    """The split the driver does not choose by default (docs/cpu.md,
    "Projection"), BILSTM_CPU_PROJ_SPLIT=units, read once per process: the op
    tests above again in a child process, 2-4 threads splitting the hidden
    units and the columns of h."""
    _cpu()
    here = Path(__file__).resolve()
    env = {**os.environ, "BILSTM_CPU_PROJ_SPLIT": "units",
           "PYTHONPATH": os.pathsep.join([str(here.parents[1]), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(here),
                        "-k", "test_op_matches_reference or test_every_isa_build or test_nan_in_one"],
                       env=env, capture_output=True, text=True, timeout=900)
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_proj_size_runs_on_the_reference(dtype):
    """proj_size in fp16/bf16: the cpu kernels decline it (the projected kernels
    are float32/float64), so auto runs the reference backend, and naming cpu is
    a clear error, never a null kernel call."""
    torch.manual_seed(0)
    auto = BiLSTM(5, 6, proj_size=3, dtype=dtype)
    ref = BiLSTM(5, 6, proj_size=3, dtype=dtype, backend="reference")
    ref.load_state_dict(auto.state_dict())
    x = torch.randn(4, 2, 5, dtype=dtype)
    got, want = auto(x), ref(x)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="proj_size on the cpu backend runs float32 and float64"):
        BiLSTM(5, 6, proj_size=3, dtype=dtype, backend="cpu")(x)
