"""The cpu backend in float16 and bfloat16 (X), computing in A = float32.

Legend (docs/design.md §0): T steps, B batch, D input features, N directions,
H hidden, X input dtype.

Every check is the project's three-way bound (docs/design.md §6) against a
float64 truth: err(cpu in X, truth) <= 2 * err(reference backend in X, truth)
+ atol, with atol half an ulp of X at the largest value compared. The
reference backend computes in float32 from X inputs, so this says the fused
kernels lose nothing beyond the rounding of their X inputs and outputs.
Every ISA build this CPU runs, 1 / 2 / 3 threads (whole directions, and the
hidden split with a barrier), odd H (a partial last vector and panel),
packed unsorted lengths, N = 1 and 2.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from bilstm_fast import BiLSTM
from bilstm_fast.ops import backends, cpu_gemm, cpu_lstm, reference

from conftest import lstm_pair, make_inputs, maxerr, valid_mask
from test_nonfinite import B as NF_B, CASES, D as NF_D, H as NF_H, T as NF_T, VALUES, _place

HALF = [torch.float16, torch.bfloat16]
HALF_IDS = ["fp16", "bf16"]


def _atol(dtype, want: torch.Tensor) -> float:
    """Half an ulp of dtype at the largest magnitude of want."""
    return 0.5 * torch.finfo(dtype).eps * max(want.abs().max().item() if want.numel() else 0.0, 1.0)


def _check_three_way(name, got, ref_lp, truth, dtype, mask=None):
    e_k, e_r = maxerr(got, truth, mask), maxerr(ref_lp, truth, mask)
    atol = _atol(dtype, truth)
    print(f"{name}: err(cpu {dtype})={e_k:.2e} err(reference {dtype})={e_r:.2e} atol={atol:.1e}")
    assert e_k <= 2 * e_r + atol, f"{name}: {e_k} > 2 * {e_r} + {atol}"


def _run_op(mod, x, lengths):
    """Forward (keeping the workspace) and backward of a recurrence backend."""
    y, h_n, c_n, gates, cells = mod.forward(x["gx"], x["w_hh"], None, x["h0"], x["c0"], lengths, True)
    dgx, dh0, dc0, _ = mod.backward(x["dy"], x["dh_n"], x["dc_n"], x["w_hh"], None, x["h0"], x["c0"],
                                    lengths, y, gates, cells)
    return dict(y=y, h_n=h_n, c_n=c_n, gates=gates, cells=cells, dgx=dgx, dh0=dh0, dc0=dc0)


# (T, B, N, H, lengths): odd H, N = 1 and 2, B = 1, packed unsorted lengths
OP_CASES = [
    (5, 1, 2, 1, None),
    (4, 3, 1, 3, [2, 4, 1]),
    (6, 4, 2, 17, [3, 6, 1, 5]),
    (5, 2, 2, 33, [5, 2]),
    (3, 2, 1, 33, None),
    # even H: bf16 takes the AVX512-BF16 dot products where the CPU has them
    # (lstm_kernel.cpp, "bf16 dot products"): B=1 (4 k sets), B=13 (tiles of 7 + 6),
    # H=40 (padded units past H), lengths with rows that start late in direction 1
    (5, 1, 2, 64, None),
    (4, 13, 2, 16, None),
    (6, 4, 2, 40, [3, 6, 1, 5]),
]


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("T,B,N,H,lengths", OP_CASES, ids=[f"T{c[0]}B{c[1]}N{c[2]}H{c[3]}" for c in OP_CASES])
def test_op_three_way_bound(isa, threads, dtype, T, B, N, H, lengths):
    """The recurrence op forward + backward in X: outputs and dgx/dh0/dc0 in X,
    gates/cells in float32, all within the three-way bound of the float64 truth."""
    x = make_inputs(T, B, N, H, dtype=dtype, seed=7)
    L = None if lengths is None else torch.tensor(lengths)
    got = _run_op(cpu_lstm, x, L)
    ref_lp = _run_op(reference, x, L)
    truth = _run_op(reference, {k: v.double() for k, v in x.items()}, L)
    m = valid_mask(T, B, L)
    for n in got:
        want_dtype = torch.float32 if n in ("gates", "cells") else dtype
        assert got[n].dtype == want_dtype, f"{n}: dtype {got[n].dtype}, expected {want_dtype}"
        _check_three_way(n, got[n], ref_lp[n], truth[n], dtype, m if n in ("gates", "cells") else None)
    # positions past a sequence's end are exactly zero, as the contract says
    assert not torch.where(m, 0.0, got["y"].double()).any()
    assert not torch.where(m, 0.0, got["dgx"].double()).any()


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_op_inference_without_workspace(isa, dtype):
    """keep_for_backward=False: the same outputs, empty float32 workspace tensors."""
    x = make_inputs(7, 3, 2, 20, dtype=dtype, seed=3)
    L = torch.tensor([4, 7, 2])
    full = cpu_lstm.forward(x["gx"], x["w_hh"], None, x["h0"], x["c0"], L, True)
    bare = cpu_lstm.forward(x["gx"], x["w_hh"], None, x["h0"], x["c0"], L, False)
    for a, b in zip(full[:3], bare[:3]):
        assert torch.equal(a, b)
    assert bare[3].shape == (0,) and bare[3].dtype == torch.float32 and bare[4].dtype == torch.float32


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_module_gradients_three_way_bound(isa, threads, dtype):
    """BiLSTM(backend="cpu") as an fp16 / bf16 module, 2 layers, a packed
    unsorted batch: outputs, states and the gradients of the input, h0, c0
    and every parameter (the layer's GEMMs: cpu_gemm in X) within the
    three-way bound of the float64 truth."""
    T, B, D, H = 7, 4, 5, 17
    ref64, _ = lstm_pair(D, H, num_layers=2, seed=2)
    lengths = torch.tensor([3, 7, 1, 5])
    torch.manual_seed(5)
    x = torch.randn(T, B, D, dtype=torch.float64)
    h0 = torch.randn(4, B, H, dtype=torch.float64) * 0.5
    c0 = torch.randn(4, B, H, dtype=torch.float64) * 0.5
    dy = torch.randn(T, B, 2 * H, dtype=torch.float64)
    dh, dc = torch.randn(4, B, H, dtype=torch.float64), torch.randn(4, B, H, dtype=torch.float64)

    def run(backend, dt):
        m = BiLSTM(D, H, num_layers=2, bidirectional=True, dtype=dt, backend=backend)
        m.load_state_dict({k: v.to(dt) for k, v in ref64.state_dict().items()})
        xs = [t.to(dt).requires_grad_() for t in (x, h0, c0)]
        packed = pack_padded_sequence(xs[0], lengths, enforce_sorted=False)
        out, (hn, cn) = m(packed, (xs[1], xs[2]))
        y, _ = pad_packed_sequence(out, total_length=T)
        ((y * dy.to(dt)).sum() + (hn * dh.to(dt)).sum() + (cn * dc.to(dt)).sum()).backward()
        return {"y": y, "h_n": hn, "c_n": cn, "dx": xs[0].grad, "dh0": xs[1].grad, "dc0": xs[2].grad,
                **{f"d_{k}": p.grad for k, p in m.named_parameters()}}

    got, ref_lp, truth = run("cpu", dtype), run("reference", dtype), run("reference", torch.float64)
    for n in truth:
        assert got[n].dtype == dtype, n
        _check_three_way(n, got[n], ref_lp[n], truth[n], dtype)


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_gemms_three_way_bound(isa, dtype):
    """cpu_gemm.linear / matmul / recurrent_weight_grad in X: float32
    accumulation, rounded to X once, like torch's own GEMMs in X."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    x, w, b = r(37, 300), r(72, 300) * 0.1, r(72)
    a2, b2 = r(37, 72), r(72, 19)
    cases = {
        "linear": (lambda t: cpu_gemm.linear(*t), lambda t: torch.addmm(t[2], t[0], t[1].t()), (x, w, b)),
        "linear_nobias": (lambda t: cpu_gemm.linear(t[0], t[1], None), lambda t: t[0] @ t[1].t(), (x, w)),
        "matmul": (lambda t: cpu_gemm.matmul(*t), lambda t: t[0] @ t[1], (a2, b2)),
        "matmul_ta": (lambda t: cpu_gemm.matmul(t[0], t[1], True), lambda t: t[0].t() @ t[1], (a2, x)),
    }
    for name, (ours, torch_op, args) in cases.items():
        low = tuple(t.to(dtype) for t in args)
        got = ours(low)
        assert got.dtype == dtype, name
        truth = torch_op(tuple(t.double() for t in low))
        _check_three_way(name, got, torch_op(low), truth, dtype)
    T, B, N, H = 5, 3, 2, 9
    lengths = torch.tensor([5, 2, 4])
    m = valid_mask(T, B, lengths)
    dgx = torch.where(m, r(T, B, N, 4 * H), 0.0)
    y, h0 = torch.where(m, r(T, B, N, H), 0.0), r(N, B, H)
    from bilstm_fast.ops.recurrence import _recurrent_weight_grad
    low = [t.to(dtype) for t in (dgx, y, h0)]
    got = cpu_gemm.recurrent_weight_grad(*low, lengths)
    assert got.dtype == dtype
    _check_three_way("recurrent_weight_grad", got, _recurrent_weight_grad(*low, lengths),
                     _recurrent_weight_grad(*(t.double() for t in low), lengths), dtype)


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_auto_picks_cpu(dtype):
    """backend="auto" runs fp16 / bf16 CPU tensors on the cpu backend (no
    longer the reference backend's Python loop), with lengths or without."""
    assert cpu_lstm.unsupported_reason(backends.CallSpec("cpu", dtype, 2, 8, 8, False, True)) is None
    for N, has_lengths in ((2, True), (1, False)):
        assert backends.resolve_backend("auto", "cpu", dtype, N, 8, 8, False, has_lengths) == "cpu"
    ref, auto = lstm_pair(4, 6, dtype=dtype, backend="auto")
    cpu = BiLSTM(4, 6, bidirectional=True, dtype=dtype, backend="cpu")
    cpu.load_state_dict(auto.state_dict())
    x = torch.randn(5, 2, 4).to(dtype)
    with torch.no_grad():
        assert torch.equal(auto(x)[0], cpu(x)[0])


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
@pytest.mark.parametrize("case", list(CASES))
def test_nonfinite_matches_nn_lstm(isa, dtype, case):
    """NaN / Inf as nn.LSTM in the same dtype (tests/test_nonfinite.py's cases):
    NaN exactly where it has NaN, the same Infs, close elsewhere (nn.LSTM in
    X rounds every intermediate to X, we only inputs and outputs: loose)."""
    where, step, value = CASES[case]
    torch.manual_seed(0)
    ref = nn.LSTM(NF_D, NF_H, bidirectional=True, dtype=torch.float64)
    x = torch.randn(NF_T, NF_B, NF_D, dtype=torch.float64)
    hx = (torch.randn(2, NF_B, NF_H, dtype=torch.float64) * 0.5,
          torch.randn(2, NF_B, NF_H, dtype=torch.float64) * 0.5)
    _place(where, step, VALUES[value], x, hx, ref)
    ref = ref.to(dtype)
    x, hx = x.to(dtype), tuple(t.to(dtype) for t in hx)
    ours = BiLSTM(NF_D, NF_H, bidirectional=True, dtype=dtype, backend="cpu")
    ours.load_state_dict(ref.state_dict())
    with torch.no_grad():
        want_out, (want_h, want_c) = ref(x, hx)
        got_out, (got_h, got_c) = ours(x, hx)
    tol = 8 * torch.finfo(dtype).eps
    for name, got, want in (("output", got_out, want_out), ("h_n", got_h, want_h), ("c_n", got_c, want_c)):
        print(f"{case} {name}: NaN {int(got.isnan().sum())} (nn.LSTM {int(want.isnan().sum())}), "
              f"Inf {int(got.isinf().sum())} (nn.LSTM {int(want.isinf().sum())})")
        assert got.dtype == dtype
        assert torch.equal(got.isnan(), want.isnan()), f"{name}: NaN in different places"
        assert torch.equal(got.isinf(), want.isinf()), f"{name}: Inf in different places"
        assert torch.equal(got[got.isinf()], want[want.isinf()]), f"{name}: Infs of different signs"
        torch.testing.assert_close(got, want, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("dtype", HALF, ids=HALF_IDS)
def test_conversions_round_to_nearest_even(isa, dtype):
    """The kernels' X <-> float32 conversions are torch's: round to nearest
    even, subnormals, the largest finite value, +-Inf, NaN. One step with
    W_hh = 0 and gx = +30 on the i, f, o gates (sigmoid = 1 exactly): units
    with gx_g = 0 (g = 0) give c_n = c0 (a round trip of c0 through the
    kernel), units with gx_g = 30 (g = 1) give c_n = c0 + 1, rounded to X:
    values at the ties between two X values check that they round to even."""
    fi = torch.finfo(dtype)
    eps = fi.eps
    keep = [1.0, -3.5, fi.tiny / 4, -fi.tiny / 8, fi.tiny, fi.max, -fi.max, float("inf"), -float("inf"),
            float("nan"), 0.0, -0.0]
    plus1 = [1.0, 1 + eps, 1 + 3 * eps, -3 + 2 * eps, 0.5 + eps / 4, 2 - eps, fi.max, -float("inf"),
             float("nan"), 1.5, 3 * eps, 100.0]
    H = len(keep) + len(plus1)
    c0 = torch.tensor(keep + plus1, dtype=torch.float32).to(dtype).view(1, 1, H)
    gx = torch.full((1, 1, 1, 4 * H), 30.0)
    gx[0, 0, 0, 2 * H:2 * H + len(keep)] = 0.0   # g = tanh(0) = 0 for the round-trip units
    gx, w_hh, h0 = gx.to(dtype), torch.zeros(1, 4 * H, H).to(dtype), torch.zeros(1, 1, H).to(dtype)
    _, h_n, c_n, _, _ = cpu_lstm.forward(gx, w_hh, None, h0, c0, None, False)
    g = torch.tensor([0.0] * len(keep) + [1.0] * len(plus1)).view(1, 1, H)
    want_c = (c0.float() + g).to(dtype)
    print("c0 ", c0.flatten().tolist(), "\nc_n", c_n.flatten().tolist(), "\nwant", want_c.flatten().tolist())
    assert torch.equal(c_n.isnan(), want_c.isnan())
    ok = ~want_c.isnan()
    assert torch.equal(c_n[ok], want_c[ok])
    assert torch.equal(c_n[ok].signbit(), want_c[ok].signbit())   # -0 stays -0
    want_h = torch.tanh(want_c.float()).to(dtype)
    assert torch.equal(h_n.isnan(), want_h.isnan())
    assert ((h_n.float() - want_h.float()).abs()[ok] <= eps * want_h.float().abs()[ok]).all()
