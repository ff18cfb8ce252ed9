"""The cpu backend's GEMMs outside the recurrence (ops/cpu_gemm.py on
bilstm_fast._cpu: linear, matmul, recurrent_weight_grad) against torch,
in every ISA build and every thread split, and the layer paths that use
them (input projection forward and backward, dW_hh) against nn.LSTM.

Legend: M rows, K reduction, N columns; T steps, B batch, D input, H hidden.

Thread counts exercise csrc/cpu/lstm_driver.cpp run_gemm: 1 (one job), 2
and 3 (columns cut into 2 jobs per thread, claimed dynamically; 3 splits
unevenly), 5 (more threads than panels for the small shapes).
"""
from __future__ import annotations


import os

import pytest
import torch
from torch import nn

from bilstm_fast import BiLSTM
from bilstm_fast.ops import cpu_gemm
from bilstm_fast.ops.recurrence import _recurrent_weight_grad

from conftest import assert_close, cpu_module as _cpu, lstm_pair

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}


def _tol(dtype):
    """TOL, and for fp16 / bf16 outputs one ulp of X: the float32 sum rounded
    once to X and the float64 truth rounded once to X are at most an ulp apart
    (plus the float32 sum's own error, below 1e-4 at these sizes, near zero)."""
    return TOL.get(dtype) or dict(rtol=torch.finfo(dtype).eps, atol=1e-4)
DTYPES = [torch.float64, torch.float32]
DTYPE_IDS = ["fp64", "fp32"]


GEMM_SHAPES = [  # M, K, N: 1-element, odd sizes, a partial panel, more rows than one block (MC=192),
    (1, 1, 1),   # K over one chunk (KC_MAX = 640 for AVX2 / SSE2, 1024 for AVX-512), one row
                 # (the 4-way k-split tile), 5 rows
    (3, 7, 17),
    (13, 33, 136),
    (200, 300, 40),
    (5, 700, 33),
    (7, 1100, 40),
    (1, 300, 64),
]


@pytest.mark.parametrize("threads", [1, 2, 3, 5], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("M,K,N", GEMM_SHAPES, ids=[f"M{m}K{k}N{n}" for m, k, n in GEMM_SHAPES])
def test_linear_and_matmul_match_torch(M, K, N, dtype, threads):
    _cpu()
    # B scaled by 1/sqrt(K): outputs O(1) at every K, so one fp32 tolerance
    # fits (at K = 1100 unscaled sums of ~30 differ by 3e-5 between any two
    # summation orders, torch's included).
    x, w, b = torch.randn(M, K, dtype=dtype), torch.randn(N, K, dtype=dtype) / K ** 0.5, torch.randn(N, dtype=dtype)
    assert_close("x w^T + b", cpu_gemm.linear(x, w, b), torch.addmm(b, x, w.t()), **TOL[dtype])
    assert_close("x w^T", cpu_gemm.linear(x, w, None), x @ w.t(), **TOL[dtype])
    kn = torch.randn(K, N, dtype=dtype) / K ** 0.5
    assert_close("a @ b", cpu_gemm.matmul(x, kn), x @ kn, **TOL[dtype])
    km = torch.randn(K, M, dtype=dtype)
    assert_close("a^T @ b", cpu_gemm.matmul(km, kn, trans_a=True), km.t() @ kn, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_every_isa_build(isa, dtype):
    for M, K, N in GEMM_SHAPES:
        x, w, b = (torch.randn(M, K, dtype=dtype), torch.randn(N, K, dtype=dtype) / K ** 0.5,
                   torch.randn(N, dtype=dtype))
        assert_close(f"{isa} M{M}K{K}N{N}", cpu_gemm.linear(x, w, b), torch.addmm(b, x, w.t()), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES + [torch.float16, torch.bfloat16],
                         ids=DTYPE_IDS + ["fp16", "bf16"])
def test_every_tile_height_and_packing_block(isa, dtype):
    """M = 1..25 rows: every register-tile height of each build (MR = 6 rows
    for AVX2 / SSE2, 12 for AVX-512, lstm_kernel.cpp) alone and in balanced
    splits; K = 1..17 with N = 64 (whole panels of 16 / 32 columns): W's
    8 x 8 register-transpose blocks of pack_nt (AVX2, AVX-512) with and
    without a tail of k, and N = 70 (a partial panel, the element loop).
    fp16 / bf16: W converted while packed; compared with the float32 product
    of the same rounded operands, rounded once."""
    tol = _tol(dtype)
    for M in range(1, 26):
        for K, N in ((17, 64), (8, 70), (1, 64), (16, 64)):
            x, w, b = (torch.randn(M, K, dtype=dtype), torch.randn(N, K, dtype=dtype),
                       torch.randn(N, dtype=dtype))
            want = torch.addmm(b.double(), x.double(), w.double().t()).to(dtype)
            assert_close(f"{isa} M{M}K{K}N{N}", cpu_gemm.linear(x, w, b), want, **tol)


def test_strided_inputs_are_read_in_place():
    big = torch.randn(9, 40, dtype=torch.float64)
    x = big[2:7, 3:30]                      # rows 40 apart, offset start
    w = torch.randn(20, 60, dtype=torch.float64)[:, 5:32]
    assert not x.is_contiguous() and not w.is_contiguous()
    assert_close("strided x w^T", cpu_gemm.linear(x, w, None), x @ w.t(), **TOL[torch.float64])
    a = torch.randn(30, 12, dtype=torch.float64)[::2, 1:9]     # rows 24 apart
    b = torch.randn(15, 20, dtype=torch.float64)[:, 3:10]
    kn = torch.randn(8, 7, dtype=torch.float64)
    assert_close("strided a @ b", cpu_gemm.matmul(a, kn), a @ kn, **TOL[torch.float64])
    assert_close("strided a^T @ b", cpu_gemm.matmul(a, b, trans_a=True), a.t() @ b, **TOL[torch.float64])


def test_shapes_are_checked():
    mod = _cpu()
    x, w = torch.randn(3, 4), torch.randn(5, 6)
    with pytest.raises(ValueError, match=r"w: expected shape \[G=5, D=4\]"):
        mod.linear(x, w, None, torch.empty(3, 5), 1)
    with pytest.raises(ValueError, match=r"out: expected shape \[M=3, G=5\]"):
        mod.linear(x, torch.randn(5, 4), None, torch.empty(3, 4), 1)
    with pytest.raises(ValueError, match=r"bias: expected dtype torch.float32, got torch.float64"):
        mod.linear(x, torch.randn(5, 4), torch.randn(5, dtype=torch.float64), torch.empty(3, 5), 1)
    # A (and C, bias) in float32 / float64; only B may be fp16 / bf16 (cpu_gemm.py converts A)
    with pytest.raises(ValueError, match=r"a: the cpu GEMMs take torch.float32 and torch.float64, got torch.float16"):
        mod.matmul(x.half(), x.half().t(), torch.empty(3, 3, dtype=torch.half), False, 1)
    with pytest.raises(ValueError, match=r"b: expected dtype torch.float64, got torch.float16"):
        mod.matmul(x.double(), x.half().t().contiguous(), torch.empty(3, 3, dtype=torch.double), False, 1)
    with pytest.raises(ValueError, match=r"out: expected dtype torch.float32, got torch.float16"):
        mod.matmul(x, x.half().t().contiguous(), torch.empty(3, 3, dtype=torch.half), False, 1)
    with pytest.raises(TypeError, match=r"b: expected a torch.Tensor"):
        mod.matmul(x, [1.0], torch.empty(3, 3), False, 1)


RWG_SHAPES = [  # T, B, N, H, lengths
    (1, 1, 2, 1, None),
    (5, 3, 2, 7, [5, 2, 4]),
    (4, 2, 1, 17, [1, 4]),
    (6, 4, 2, 33, None),
    (3, 1, 2, 1, [3]),
    (2, 40, 2, 18, None),   # K = T*B = 80 rows of dG
]


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("T,B,N,H,lengths", RWG_SHAPES, ids=[f"T{s[0]}B{s[1]}N{s[2]}H{s[3]}" + ("L" if s[4] else "")
                                                            for s in RWG_SHAPES])
def test_recurrent_weight_grad_matches_the_torch_gemms(T, B, N, H, lengths, dtype, threads):
    _cpu()
    dgx, y, h0 = torch.randn(T, B, N, 4 * H, dtype=dtype), torch.randn(T, B, N, H, dtype=dtype), \
        torch.randn(N, B, H, dtype=dtype)
    lens = None if lengths is None else torch.tensor(lengths)
    if lens is not None:  # the op's contract: dgx and y are zero past each length
        mask = (torch.arange(T)[:, None] < lens[None, :])[:, :, None, None]
        dgx, y = dgx * mask, y * mask
    assert_close("dW_hh", cpu_gemm.recurrent_weight_grad(dgx, y, h0, lens),
                 _recurrent_weight_grad(dgx, y, h0, lens), **TOL[dtype])


LAYER_SHAPES = [  # T, B, D, H, layers, lengths
    (1, 1, 1, 1, 1, None),
    (5, 3, 7, 17, 2, [5, 1, 3]),
    (6, 8, 300, 16, 1, None),
    (4, 13, 5, 9, 2, [4, 4, 1, 2, 3, 4, 1, 2, 3, 4, 2, 2, 1]),
]


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("T,B,D,H,layers,lengths", LAYER_SHAPES,
                         ids=[f"T{s[0]}B{s[1]}D{s[2]}H{s[3]}L{s[4]}" + ("len" if s[5] else "") for s in LAYER_SHAPES])
def test_module_with_our_gemms_matches_nn_lstm(T, B, D, H, layers, lengths, dtype, threads):
    """Every GEMM of a training step on the cpu backend (projection, dx, dW_ih,
    dW_hh) against nn.LSTM: outputs, states, the input's and every weight's
    gradient, with nonzero upstream grads of h_n and c_n."""
    ref, ours = lstm_pair(D, H, dtype=dtype, num_layers=layers, backend="cpu")
    x = torch.randn(T, B, D, dtype=dtype)
    lens = None if lengths is None else torch.tensor(lengths)
    results = []
    for model in (ref, ours):
        xi = x.detach().clone().requires_grad_()
        inp = xi if lens is None else nn.utils.rnn.pack_padded_sequence(xi, lens, enforce_sorted=False)
        out, (h, c) = model(inp)
        if lens is not None:
            out = nn.utils.rnn.pad_packed_sequence(out, total_length=T)[0]
        g = torch.Generator().manual_seed(7)
        loss = sum((t * torch.randn(t.shape, generator=g, dtype=dtype)).sum() for t in (out, h, c))
        loss.backward()
        results.append({"out": out.detach(), "h_n": h.detach(), "c_n": c.detach(), "dx": xi.grad,
                        **{n: p.grad for n, p in model.named_parameters()}})
    want, got = results
    for name in want:
        assert_close(name, got[name], want[name], **TOL[dtype])


def test_bilstm_uses_our_gemms_on_the_cpu_backend(monkeypatch):
    """The layer op takes the cpu backend's GEMMs (backends.py: gemms) for the
    projection, dx, dW_ih and dW_hh, and torch's on the reference backend."""
    calls = []
    for name in ("linear", "matmul", "recurrent_weight_grad"):
        real = getattr(cpu_gemm, name)
        monkeypatch.setattr(cpu_gemm, name, lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))
    x = torch.randn(2, 1, 4, requires_grad=True)
    model = BiLSTM(4, 3, backend="cpu")
    with torch.no_grad():
        model(x)
    assert calls == ["linear"]
    model(x)[0].sum().backward()
    assert calls == ["linear", "linear", "recurrent_weight_grad", "matmul", "matmul"]  # dW_hh, dx, dW_ih
    calls.clear()
    BiLSTM(4, 3, backend="reference")(x)[0].sum().backward()
    assert calls == []


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_weights_changed_between_calls_are_used(dtype):
    """Nothing packed outlives a call: inference calls after in-place changes
    through .data, .numpy() and an optimizer-style mul_ (none of which a
    cache keyed on the version counter would all see) match nn.LSTM."""
    ref, ours = lstm_pair(7, 9, dtype=dtype, num_layers=2, backend="cpu")
    x = torch.randn(5, 3, 7, dtype=dtype)
    changes = [lambda p: p.data.copy_(torch.randn_like(p) * 0.3),
               lambda p: p.detach().numpy().__imul__(0.5),
               lambda p: p.data.mul_(-1.5)]
    for step in range(4):
        with torch.no_grad():
            got, want = ours(x), ref(x)
        assert_close(f"step {step} out", got[0], want[0], **TOL[dtype])
        assert_close(f"step {step} h_n", got[1][0], want[1][0], **TOL[dtype])
        if step < 3:
            for (_, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
                changes[step](p)
                q.data.copy_(p.data)


@pytest.mark.parametrize("threads", [1, 2, 3], indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("T,B,N,H", [(1, 1, 2, 1), (5, 3, 2, 17), (4, 2, 1, 40), (3, 7, 2, 33)])
def test_forward_recurrence_every_unit_split(T, B, N, H, dtype, threads):
    """The forward recurrence (W_hh packed per job and call) against the
    reference, for every split of the hidden units (N=1 at 2-3 threads) and
    an in-place change between calls."""
    from bilstm_fast.ops import cpu_lstm, reference
    g = torch.Generator().manual_seed(3)
    gx, h0, c0 = (torch.randn(*s, generator=g, dtype=dtype) for s in ((T, B, N, 4 * H), (N, B, H), (N, B, H)))
    w_hh = torch.randn(N, 4 * H, H, generator=g, dtype=dtype) / H ** 0.5
    lens = torch.tensor([T] + [max(1, T - i) for i in range(1, B)])
    for step in range(4):
        if step == 2:
            w_hh.mul_(0.5)      # in place: the packed copy must be redone
        want = reference.forward(gx, w_hh, None, h0, c0, lens, False)[:3]
        got = cpu_lstm.forward(gx, w_hh, None, h0, c0, lens, False)[:3]
        for name, a, b in zip(("y", "h_n", "c_n"), got, want):
            assert_close(f"call {step} {name}", a, b, **TOL[dtype])


def test_own_pool_runs_every_job_once():
    """BILSTM_CPU_POOL=own (independent jobs on our pool, thread_pool.cpp: the
    caller never waits for a worker that has not started): a fresh process
    runs projection, forward and backward at 1-4 threads against torch."""
    import subprocess
    import sys
    script = """
import torch
from bilstm_fast.ops import cpu_gemm, cpu_lstm, reference
torch.manual_seed(0)
for threads in (1, 2, 3, 4):
    torch.set_num_threads(threads)
    for _ in range(50):
        x, w = torch.randn(37, 11, dtype=torch.float64), torch.randn(70, 11, dtype=torch.float64)
        assert torch.allclose(cpu_gemm.linear(x, w, None), x @ w.t(), rtol=1e-12, atol=1e-12)
    gx, h0, c0 = torch.randn(5, 9, 2, 68, dtype=torch.float64), torch.randn(2, 9, 17, dtype=torch.float64), \\
        torch.randn(2, 9, 17, dtype=torch.float64)
    w_hh = torch.randn(2, 68, 17, dtype=torch.float64) / 4
    lens = torch.tensor([5, 1, 3, 5, 2, 4, 4, 1, 5])
    got = cpu_lstm.forward(gx, w_hh, None, h0, c0, lens, True)
    want = reference.forward(gx, w_hh, None, h0, c0, lens, True)
    for a, b in zip(got[:3], want[:3]):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
print("ok")
"""
    env = {**__import__("os").environ, "BILSTM_CPU_POOL": "own"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    print(out.stdout, out.stderr)
    assert out.returncode == 0 and "ok" in out.stdout


def test_layer_gx_workspace_is_reused_and_private():
    """The layer op's gx goes into one reused buffer per thread (cpu_gemm.py):
    the same memory on the next call, grown for a bigger one, never aliased
    by an output, and two layers of different widths, calls of different
    sizes and two threads at once all still match nn.LSTM."""
    from concurrent.futures import ThreadPoolExecutor

    cpu_gemm.release_workspace()
    ref, ours = lstm_pair(6, 5, dtype=torch.float64, num_layers=2, backend="cpu")
    with torch.no_grad():
        for T, B in ((4, 3), (2, 1), (9, 4)):   # smaller (reused), then bigger (grown)
            x = torch.randn(T, B, 6, dtype=torch.float64)
            want, got = ref(x), ours(x)
            buf = cpu_gemm._workspace.buf
            assert buf is not None and buf.numel() >= T * B * 2 * 4 * 5
            for name, g, w in zip(("out", "h_n", "c_n"), (got[0], *got[1]), (want[0], *want[1])):
                assert_close(name, g, w, **TOL[torch.float64])
                assert g.untyped_storage().data_ptr() != buf.untyped_storage().data_ptr(), name
        ptr = cpu_gemm._workspace.buf.data_ptr()
        ours(torch.randn(3, 2, 6, dtype=torch.float64))
        assert cpu_gemm._workspace.buf.data_ptr() == ptr, "a smaller call reallocated the workspace"

    def run(x):   # another thread: its own workspace
        with torch.no_grad():
            for _ in range(20):
                assert_close("threaded out", ours(x)[0], ref(x)[0], **TOL[torch.float64])

    with ThreadPoolExecutor(2) as pool:   # .result() re-raises a thread's failure here
        for f in [pool.submit(run, torch.randn(7, 3, 6, dtype=torch.float64)) for _ in range(2)]:
            f.result()
    cpu_gemm.release_workspace()
    assert cpu_gemm._workspace.buf is None


def test_workspace_made_under_inference_mode_serves_training_calls():
    """The workspace may be created by a call under torch.inference_mode and
    reused by a training call outside it (and back), with and without lengths:
    an inference tensor there made the next call's in-place copy raise."""
    cpu_gemm.release_workspace()
    ref, ours = lstm_pair(5, 4, dtype=torch.float64, backend="cpu")
    x, lens = torch.randn(6, 3, 5, dtype=torch.float64), torch.tensor([6, 2, 4])
    with torch.no_grad():
        packed = ref(nn.utils.rnn.pack_padded_sequence(x, lens, enforce_sorted=False))[0]
        want = nn.utils.rnn.pad_packed_sequence(packed, total_length=6)[0]
        want_full = ref(x)[0]
    for _ in range(2):
        with torch.inference_mode():
            assert_close("inference, lengths", ours(x, lengths=lens)[0], want, **TOL[torch.float64])
            assert_close("inference", ours(x)[0], want_full, **TOL[torch.float64])
        out = ours(x.clone().requires_grad_(), lengths=lens)[0]
        out.sum().backward()
        assert_close("training, lengths", out.detach(), want, **TOL[torch.float64])
        out = ours(x)[0]
        out.sum().backward()
        assert_close("training", out.detach(), want_full, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", DTYPES + [torch.bfloat16], ids=DTYPE_IDS + ["bf16"])
def test_linear_rows_computes_exactly_the_rows_asked(dtype):
    """linear_rows: the rows asked for are x[rows] w^T + b (the others are not
    read by anyone), in the thread's workspace and in A (float32 for bf16 x:
    the sums unrounded, as the recurrence reads gx)."""
    x, w, b = torch.randn(13, 7, dtype=dtype), torch.randn(9, 7, dtype=dtype), torch.randn(9, dtype=dtype)
    rows = torch.tensor([0, 2, 3, 7, 12])
    got = cpu_gemm.linear_rows(x, w, b, rows)
    assert got.shape == (13, 9)
    assert got.dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
    want = torch.addmm(b.double(), x.double(), w.double().t())
    assert_close("asked rows", got[rows], want[rows].to(got.dtype), **TOL[got.dtype])


def test_variable_lengths_project_only_the_steps_inside(monkeypatch):
    """With lengths the cpu layer op projects only t < lengths[b] (linear_rows):
    NaN in x past every sequence's end then never reaches a GEMM, and outputs
    and gradients still match nn.LSTM on the packed sequence; without padding
    (all lengths T) the plain projection runs."""
    seen = []
    real = cpu_gemm.linear_rows
    monkeypatch.setattr(cpu_gemm, "linear_rows", lambda x, w, b, rows: seen.append(rows.numel()) or real(x, w, b, rows))
    T, B, D, H = 6, 4, 5, 7
    ref, ours = lstm_pair(D, H, dtype=torch.float64, num_layers=2, backend="cpu")
    lens = torch.tensor([6, 2, 4, 1])
    x = torch.randn(T, B, D, dtype=torch.float64)
    x[torch.arange(T)[:, None] >= lens[None, :]] = float("nan")   # padding only
    results = []
    for model in (ref, ours):   # nn.LSTM on the packed sequence, ours on the padded x with lengths=
        xi = x.detach().clone().requires_grad_()
        if model is ref:
            out, (h, c) = model(nn.utils.rnn.pack_padded_sequence(xi, lens, enforce_sorted=False))
            out = nn.utils.rnn.pad_packed_sequence(out, total_length=T)[0]
        else:
            out, (h, c) = model(xi, lengths=lens)
        (out.sum() + h.sum() + c.sum()).backward()
        dx = xi.grad.masked_fill(torch.arange(T)[:, None, None] >= lens[None, :, None], 0)
        results.append({"out": out.detach(), "h": h.detach(), "c": c.detach(), "dx inside": dx,
                        **{n: p.grad for n, p in model.named_parameters()}})
    for name in results[0]:
        assert_close(name, results[1][name], results[0][name], **TOL[torch.float64])
    assert seen == [int(lens.sum())] * 2, seen   # both layers
    seen.clear()
    with torch.no_grad():
        ours(torch.randn(T, B, D, dtype=torch.float64), lengths=torch.full((B,), T))
    assert seen == []


def test_nonfinite_padding_never_reaches_the_gradients_on_torch_gemms():
    """The same NaN-in-padding case on a backend without its own GEMMs
    (reference: torch's): dW_ih = dG^T x with x's padding zeroed, so 0 * NaN
    never turns a weight gradient into NaN (it did before: dW_ih was all NaN)."""
    T, B, D, H = 5, 3, 4, 6
    ref, ours = lstm_pair(D, H, dtype=torch.float64, backend="reference")
    lens = torch.tensor([5, 2, 3])
    x = torch.randn(T, B, D, dtype=torch.float64)
    x[torch.arange(T)[:, None] >= lens[None, :]] = float("inf")
    out_r, (h_r, _) = ref(nn.utils.rnn.pack_padded_sequence(x, lens, enforce_sorted=False))
    (nn.utils.rnn.pad_packed_sequence(out_r, total_length=T)[0].sum() + h_r.sum()).backward()
    out_o, (h_o, _) = ours(x, lengths=lens)
    (out_o.sum() + h_o.sum()).backward()
    for (name, p_r), p_o in zip(ref.named_parameters(), ours.parameters()):
        assert_close(name, p_o.grad, p_r.grad, **TOL[torch.float64])


def test_bf16_dot_linear_refuses_what_it_cannot_run():
    """_cpu.linear with a bf16 x (the AVX512-BF16 dot products): an odd D, or
    a build without them, is a ValueError naming the argument -- never a
    silently wrong product; with an even D it matches the float32 product."""
    mod = _cpu()
    if mod.isa() != "avx512":
        pytest.skip(f"the {mod.isa()} build has no bf16 dot products: bf16 x is always passed in float32")
    try:
        mod.set_bf16_dot("on")
    except ValueError as e:
        pytest.skip(str(e))   # this CPU has no AVX512-BF16
    x, w = torch.randn(4, 6).bfloat16(), torch.randn(8, 6).bfloat16()
    out = torch.empty(4, 8)
    mod.linear(x, w, None, out, 1)
    assert_close("bf16 dot", out, x.float() @ w.float().t(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="even D"):
        mod.linear(torch.randn(4, 5).bfloat16(), torch.randn(8, 5).bfloat16(), None, out, 1)
    old = mod.isa()
    mod.set_isa("avx2")
    try:
        with pytest.raises(ValueError, match="AVX512-BF16"):
            mod.linear(x, w, None, out, 1)
    finally:
        mod.set_isa(old)
    mod.set_bf16_dot("off")   # dot products turned off: the same refusal
    try:
        with pytest.raises(ValueError, match="AVX512-BF16"):
            mod.linear(x, w, None, out, 1)
    finally:
        mod.set_bf16_dot("auto")


def test_set_bf16_dot_modes():
    """set_bf16_dot: 'off' turns the dot products off, 'auto' decides by
    itself (a bool, the same on every call), any other name is a ValueError
    naming the choices; 'on' works exactly where the CPU has AVX512-BF16."""
    mod = _cpu()
    try:
        mod.set_bf16_dot("off")
        assert mod.bf16_dot() is False
        mod.set_bf16_dot("auto")
        assert mod.bf16_dot() is mod.bf16_dot()
        with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
            mod.set_bf16_dot("fast")
        has = "avx512_bf16" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else None
        if has is False:
            with pytest.raises(ValueError, match="AVX512-BF16"):
                mod.set_bf16_dot("on")
        elif has and mod.isa() == "avx512":
            mod.set_bf16_dot("on")
            assert mod.bf16_dot() is True
    finally:
        mod.set_bf16_dot("auto")
