"""The C++ CPU backend (bilstm_fast._cpu via ops/cpu_lstm.py) against the
reference backend and torch.nn.LSTM: outputs, states and every gradient.

Legend: T steps, B batch, N directions, H hidden.

The README's install builds bilstm_fast._cpu, so a missing module is a
failure here, not a skip. Thread counts exercise each way the driver splits
work (csrc/cpu/lstm_driver.cpp make_plan): 1 thread (directions one after
another), 2 threads (one direction each), 2 threads with N=1 (hidden units
split, one barrier per step), 2 threads with N=1 and B >= 16 (batch split)
and 4 threads with N=2 (hidden split + barrier, oversubscribed on 2 cores).
"""
from __future__ import annotations


import pytest
import torch
from torch import nn

from bilstm_fast import BiLSTM
from bilstm_fast.ops import backends, cpu_lstm, lstm_recurrence

from conftest import assert_close, cpu_module as _cpu

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def test_module_is_built():
    mod = _cpu()
    assert cpu_lstm.unavailable_reason() is None
    assert mod.isa() in mod.supported_isas()
    print("cpu kernels:", mod.isa(), "supported:", mod.supported_isas())


def _inputs(T, B, N, H, dtype, lengths):
    gx = torch.randn(T, B, N, 4 * H, dtype=dtype)
    w_hh = torch.randn(N, 4 * H, H, dtype=dtype) / H ** 0.5
    h0 = torch.randn(N, B, H, dtype=dtype)
    c0 = torch.randn(N, B, H, dtype=dtype)
    lens = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
    return gx, w_hh, h0, c0, lens


def _run(backend, gx, w_hh, h0, c0, lens, dy, dh_n, dc_n):
    """y, h_n, c_n and the gradients of gx, w_hh, h0, c0 through the op."""
    leaves = [t.detach().clone().requires_grad_() for t in (gx, w_hh, h0, c0)]
    y, h_n, c_n = lstm_recurrence(leaves[0], leaves[1], leaves[2], leaves[3], lens, backend=backend)
    ((y * dy).sum() + (h_n * dh_n).sum() + (c_n * dc_n).sum()).backward()
    return {"y": y, "h_n": h_n, "c_n": c_n, **{f"d{n}": t.grad for n, t in
                                            zip(("gx", "w_hh", "h0", "c0"), leaves)}}


SHAPES = [  # T, B, N, H, lengths
    (1, 1, 2, 1, None),
    (1, 3, 1, 3, [1, 1, 1]),
    (5, 3, 2, 3, [2, 5, 1]),           # unsorted, a length-1 sequence
    (7, 1, 2, 17, None),
    (7, 3, 1, 17, [7, 3, 1]),
    (6, 2, 2, 40, [1, 6]),             # H=40: three 16-wide panels (hidden split 1 + 2 at 2 threads, N=1)
    (4, 3, 1, 70, [4, 2, 3]),          # a partial last vector and a partial last panel
    (5, 17, 1, 9, list(range(1, 6)) * 3 + [5, 5]),  # B=17: batch split at 2 threads, N=1 (rows dealt
                                                    # round-robin in length order)
    (3, 20, 2, 33, None),              # more rows than one register tile (6 rows)
]


@pytest.mark.parametrize("threads", [1, 2, 4], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("T,B,N,H,lengths", SHAPES, ids=[f"T{s[0]}B{s[1]}N{s[2]}H{s[3]}"
                                                           + ("L" if s[4] else "") for s in SHAPES])
def test_matches_reference(T, B, N, H, lengths, dtype, threads):
    _cpu()
    gx, w_hh, h0, c0, lens = _inputs(T, B, N, H, dtype, lengths)
    dy = torch.randn(T, B, N, H, dtype=dtype)
    dh_n, dc_n = torch.randn(N, B, H, dtype=dtype), torch.randn(N, B, H, dtype=dtype)
    got = _run("cpu", gx, w_hh, h0, c0, lens, dy, dh_n, dc_n)
    want = _run("reference", gx, w_hh, h0, c0, lens, dy, dh_n, dc_n)
    for name in want:
        assert_close(name, got[name], want[name], **TOL[dtype])
    if lens is not None:  # positions past each length are exactly zero
        t = torch.arange(T)[:, None]
        assert (got["y"][t >= lens[None, :]] == 0).all()


@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
def test_every_isa_build(isa):
    mod = _cpu()
    if isa not in mod.supported_isas():
        pytest.skip(f"this CPU cannot run the {isa} build (supported: {mod.supported_isas()})")
    old = mod.isa()
    mod.set_isa(isa)
    try:
        for dtype in (torch.float64, torch.float32):
            gx, w_hh, h0, c0, lens = _inputs(6, 5, 2, 37, dtype, [6, 1, 3, 6, 2])
            dy = torch.randn(6, 5, 2, 37, dtype=dtype)
            dh_n, dc_n = torch.randn(2, 5, 37, dtype=dtype), torch.randn(2, 5, 37, dtype=dtype)
            got = _run("cpu", gx, w_hh, h0, c0, lens, dy, dh_n, dc_n)
            want = _run("reference", gx, w_hh, h0, c0, lens, dy, dh_n, dc_n)
            for name in want:
                assert_close(f"{isa} {dtype} {name}", got[name], want[name], **TOL[dtype])
    finally:
        mod.set_isa(old)


def test_gradcheck_float64():
    _cpu()
    T, B, N, H = 4, 3, 2, 5
    gx, w_hh, h0, c0, lens = _inputs(T, B, N, H, torch.float64, [4, 1, 3])
    args = [t.requires_grad_() for t in (gx, w_hh, h0, c0)]

    def f(gx, w_hh, h0, c0):
        return lstm_recurrence(gx, w_hh, h0, c0, lens, backend="cpu")

    assert torch.autograd.gradcheck(f, args)


def test_non_contiguous_inputs_are_not_modified():
    """Slices of bigger buffers (offset, strided rows) straight into the backend,
    which passes strides to C++; the inputs are unchanged afterwards."""
    _cpu()
    T, B, N, H = 5, 3, 2, 11
    big = torch.randn(T + 2, B + 1, N, 4 * H + 8, dtype=torch.float64)
    gx = big[1:T + 1, 1:, :, 4:4 * H + 4]                      # offset + padded rows
    w_big = torch.randn(N, 4 * H, H + 3, dtype=torch.float64) / H ** 0.5
    w_hh = w_big[:, :, 2:H + 2]
    st_big = torch.randn(2, N, B + 2, H, dtype=torch.float64)
    h0, c0 = st_big[0, :, 1:B + 1], st_big[1, :, 2:]
    lens = torch.tensor([5, 2, 1])
    assert not any(t.is_contiguous() for t in (gx, w_hh, h0, c0))
    before = [t.clone() for t in (gx, w_hh, h0, c0, lens)]
    got = cpu_lstm.forward(gx, w_hh, None, h0, c0, lens, True)
    want = backends.get("reference").forward(*(t.contiguous() for t in (gx, w_hh)), None,
                                             h0.contiguous(), c0.contiguous(), lens, True)
    for name, g, w in zip(("y", "h_n", "c_n"), got[:3], want[:3]):
        assert_close(name, g, w, **TOL[torch.float64])
    for t, b in zip((gx, w_hh, h0, c0, lens), before):
        assert torch.equal(t, b), "the cpu backend modified an input"
    # The same through the op (which makes them contiguous) with gradients.
    dy = torch.randn(T, B, N, H, dtype=torch.float64)
    z = torch.zeros(N, B, H, dtype=torch.float64)
    g = _run("cpu", gx, w_hh, h0, c0, lens, dy, z, z)
    r = _run("reference", gx, w_hh, h0, c0, lens, dy, z, z)
    for name in r:
        assert_close(name, g[name], r[name], **TOL[torch.float64])


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("bidirectional", [True, False], ids=["N2", "N1"])
def test_bilstm_matches_nn_lstm(dtype, bidirectional, threads):
    """BiLSTM(backend="cpu") vs nn.LSTM: output, h_n, c_n, dx, dh0, dc0 and every parameter."""
    _cpu()
    T, B, D, H = 6, 3, 7, 17
    torch.manual_seed(0)
    ref = nn.LSTM(D, H, num_layers=2, bidirectional=bidirectional, dtype=dtype)
    ours = BiLSTM(D, H, num_layers=2, bidirectional=bidirectional, dtype=dtype, backend="cpu")
    ours.load_state_dict(ref.state_dict())
    N = 2 if bidirectional else 1
    x = torch.randn(T, B, D, dtype=dtype)
    h0, c0 = torch.randn(2 * N, B, H, dtype=dtype), torch.randn(2 * N, B, H, dtype=dtype)
    dy = torch.randn(T, B, N * H, dtype=dtype)
    dh, dc = torch.randn(2 * N, B, H, dtype=dtype), torch.randn(2 * N, B, H, dtype=dtype)
    res = {}
    for name, m in (("ref", ref), ("ours", ours)):
        xs = [t.clone().requires_grad_() for t in (x, h0, c0)]
        y, (hn, cn) = m(xs[0], (xs[1], xs[2]))
        ((y * dy).sum() + (hn * dh).sum() + (cn * dc).sum()).backward()
        res[name] = {"y": y, "h_n": hn, "c_n": cn, "dx": xs[0].grad, "dh0": xs[1].grad,
                     "dc0": xs[2].grad, **{f"d_{k}": p.grad for k, p in m.named_parameters()}}
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for name in res["ref"]:
        assert_close(name, res["ours"][name], res["ref"][name], **tol)


def test_auto_picks_cpu_and_declines_what_it_does_not_do():
    _cpu()
    spec = backends.CallSpec(device="cpu", dtype=torch.float32, N=2, H=8, P=8, proj=False, lengths=True)
    assert cpu_lstm.unsupported_reason(spec) is None
    for dt in (torch.float64, torch.float16, torch.bfloat16):   # fp16/bf16: tests/test_cpu_half.py
        assert cpu_lstm.unsupported_reason(spec._replace(dtype=dt)) is None
    for dt in (torch.float32, torch.float64):                    # tests/test_cpu_proj.py
        assert cpu_lstm.unsupported_reason(spec._replace(proj=True, P=4, dtype=dt)) is None
    for bad in (spec._replace(proj=True, P=4, dtype=torch.float16), spec._replace(proj=True, P=4, dtype=torch.bfloat16),
                spec._replace(device="cuda")):
        why = cpu_lstm.unsupported_reason(bad)
        print(bad, "->", why)
        assert isinstance(why, str) and why
    # and auto then runs them on the reference backend (proj_size in fp16 here), fp32 proj_size on cpu
    spec_proj = (spec.device, torch.float16, spec.N, spec.H, 4, True, spec.lengths)
    assert backends.resolve_backend("auto", *spec_proj) == "reference"
    assert backends.resolve_backend("auto", spec.device, torch.float32, spec.N, spec.H, 4, True, True) == "cpu"


def test_bad_input_is_a_clear_error():
    """The compiled module checks every tensor once at its boundary
    (csrc/common/tensor_arg.h): a bad one is a ValueError naming it."""
    mod = _cpu()
    T, B, N, H = 3, 2, 2, 4
    gx, w_hh, h0, c0, _ = _inputs(T, B, N, H, torch.float32, None)
    y = torch.empty(T, B, N, H)
    hn, cn = torch.empty(N, B, H), torch.empty(N, B, H)

    def call(**over):
        args = dict(gx=gx, w_hh=w_hh, h0=h0, c0=c0, lengths=None, y=y, h_n=hn, c_n=cn, gates=None,
                    cells=None, num_threads=1)
        args.update(over)
        mod.forward(**args)

    call()  # the good call works
    bad_w = torch.empty(N, 4 * H, H + 1)
    with pytest.raises(ValueError, match=r"w_hh: expected shape \[N=2, 4H=16, H=4\], got \[2, 16, 5\]"):
        call(w_hh=bad_w)
    with pytest.raises(ValueError, match=r"gx: expected shape"):
        call(gx=torch.empty(T, B, 3, 4 * H))
    with pytest.raises(ValueError, match=r"lengths: values must be in 1..T=3, got 4 at index 1"):
        call(lengths=torch.tensor([1, 4]))
    with pytest.raises(ValueError, match=r"h0: the last dimension must be contiguous"):
        call(h0=torch.empty(N, B, 2 * H)[..., ::2])
    with pytest.raises(ValueError, match=r"w_hh: the cpu kernels run torch.float32, torch.float64, "
                                         r"torch.float16 and torch.bfloat16, got torch.int32"):
        call(w_hh=w_hh.int())
    # gx is read in A (float32 for every X but float64): never X = fp16 / bf16
    with pytest.raises(ValueError, match=r"gx: expected dtype torch.float32 \(the accumulation dtype of "
                                         r"w_hh's torch.float16\), got torch.float16"):
        call(gx=gx.half(), w_hh=w_hh.half(), h0=h0.half(), c0=c0.half(), y=y.half(), h_n=hn.half(),
             c_n=cn.half())
    with pytest.raises(ValueError, match=r"gx: expected dtype torch.float32 .*, got torch.int32"):
        call(gx=gx.int())
    with pytest.raises(ValueError, match=r"h0: expected dtype torch.float16, got torch.float32"):
        call(w_hh=w_hh.half())
    with pytest.raises(ValueError, match=r"h_n: expected dtype torch.float32, got torch.float64"):
        call(h_n=hn.double())
    with pytest.raises(ValueError, match=r"num_threads"):
        call(num_threads=0)
    with pytest.raises(ValueError, match=r"gates, cells"):
        call(gates=torch.empty(T, B, N, 4 * H))
    with pytest.raises(TypeError, match=r"c0: expected a torch.Tensor, got tuple"):
        call(c0=(c0.data_ptr(), tuple(c0.shape), tuple(c0.stride())))
    with pytest.raises(ValueError, match=r"lengths: must be contiguous"):
        call(lengths=torch.tensor([[3, 0], [2, 0]])[:, 0])
    # and through the Python backend module: a wrong dtype names the tensor
    with pytest.raises(ValueError, match=r"gx: expected dtype torch.float64 \(the accumulation dtype of "
                                         r"w_hh's torch.float64\), got torch.float32"):
        cpu_lstm.forward(gx, w_hh.double(), None, h0, c0, None, False)
    with pytest.raises(ValueError, match=r"h0: expected dtype torch.float64, got torch.float32"):
        cpu_lstm.forward(gx.double(), w_hh.double(), None, h0, c0, None, False)


def test_non_contiguous_lengths_through_the_op():
    """lengths as a column of a [B, 2] tensor (issue: the pointer of a
    temporary .contiguous() copy reached C++ after the copy was freed, so
    valid lengths were rejected with heap garbage)."""
    T, B, N, H = 5, 3, 2, 4
    gx, w_hh, h0, c0, _ = _inputs(T, B, N, H, torch.float64, None)
    table = torch.tensor([[5, 0], [1, 0], [3, 0]])
    lengths = table[:, 0]
    assert not lengths.is_contiguous()
    got = lstm_recurrence(gx, w_hh, h0, c0, lengths, backend="cpu")
    want = lstm_recurrence(gx, w_hh, h0, c0, lengths.contiguous(), backend="reference")
    for n, a, b in zip(("y", "h_n", "c_n"), got, want):
        assert_close(n, a, b, **TOL[torch.float64])


def _forward_in_child(q):
    # torch's own OpenMP is not fork-safe once the parent used it (hence
    # DataLoader workers run torch with 1 thread): keep torch at 1 thread and
    # ask our module for 2 directly.
    torch.set_num_threads(1)
    mod = _cpu()
    gx, w_hh, h0, c0, _ = _inputs(4, 2, 2, 40, torch.float64, None)
    y, h_n, c_n = torch.empty(4, 2, 2, 40, dtype=torch.float64), torch.empty_like(h0), torch.empty_like(c0)
    mod.forward(gx=gx, w_hh=w_hh, h0=h0, c0=c0, lengths=None, y=y, h_n=h_n, c_n=c_n, gates=None,
                cells=None, num_threads=2)
    want = backends.get("reference").forward(gx, w_hh, None, h0, c0, None, False)
    q.put(max((g - w).abs().max().item() for g, w in zip((y, h_n, c_n), want[:3])))


def test_works_in_a_forked_child():
    """DataLoader-style fork after the parent used the thread pool: the child
    gets a fresh pool instead of waiting forever on the parent's workers."""
    import multiprocessing as mp
    _cpu()
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    p = None
    try:
        gx, w_hh, h0, c0, _ = _inputs(4, 2, 2, 40, torch.float64, None)
        cpu_lstm.forward(gx, w_hh, None, h0, c0, None, False)  # parent's workers exist now
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_forward_in_child, args=(q,))
        p.start()
        p.join(timeout=120)
        assert p.exitcode == 0, f"child exit code {p.exitcode} (None = hung)"
        err = q.get(timeout=5)
        print(f"child max err {err:.3e}")
        assert err < 1e-12
    finally:
        if p is not None and p.is_alive():
            p.kill()
        torch.set_num_threads(old)
