"""The Triton backend (bilstm_fast/ops/triton_lstm.py) against the reference
backend: on CPU tensors the kernels run in Triton's interpreter, on CUDA
tensors (tests marked `gpu`, skipped without a GPU) the compiled kernels --
the same process runs both (triton_lstm.kernels(interpret) loads each kind).
Plus the no-recompile property (T and B are not specialized) checked with
the JIT's own cache-key function for a CUDA target, NaN/Inf and bad lengths,
the SPLIT barrier bookkeeping and launch-mode rule, and plans().

Legend: T steps, B batch, N directions, H hidden. Shapes stay tiny on CPU:
the interpreter runs programs one after another (~10 ms per program-step).
All three kernel paths run: RESIDENT (the dispatcher's choice at these H),
SPLIT (16 units per program, so H = 17..48 runs 2..3 programs per direction
exchanging h and dG through L2) and STREAMED (16-unit tiles, so the tile
loops, the global h/c exchange and the barriers all execute).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from bilstm_fast.ops import backends, lstm_recurrence, reference
from bilstm_fast.ops import triton_lstm
from bilstm_fast.ops import triton_plan as tp
from conftest import make_inputs, maxerr, valid_mask

CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU: the compiled Triton kernels run on "
                                          "CUDA tensors only (CPU tensors run the interpreter)")

FP32_RTOL, FP32_ATOL = 1e-5, 1e-5


def rounding_atol(dtype, want):
    """The atol of the three-way bound: half an ulp of dtype at the largest
    magnitude of the output. Both sides round their result to dtype last, and
    two fp32 values closer than any tolerance can land on neighbouring dtype
    values, so less than one final rounding cannot be asked for."""
    return 0.5 * torch.finfo(dtype).eps * want.abs().max().item()


@pytest.fixture(scope="module")
def kt():
    """bilstm_fast.ops.triton_lstm: no environment variable needed."""
    assert triton_lstm.unavailable_reason() is None
    return triton_lstm


def forced(path):
    """("streamed", bh) / ("split", bh) / ("resident", hp) -> the plan text of
    a forced kernel config, or None (the dispatcher chooses)."""
    return None if path is None else f"path={path[0]},block_h={path[1]}"


def run_backend(mod, x, lengths, plan=None):
    """forward(keep_for_backward=True) + backward of one backend module -> dict of outputs."""
    cfg = None if plan is None else mod.parse_plan(plan)
    y, hn, cn, gates, cells = mod.forward(x["gx"], x["w_hh"], None, x["h0"], x["c0"], lengths, True, cfg)
    dgx, dh0, dc0, dw_hr = mod.backward(x["dy"], x["dh_n"], x["dc_n"], x["w_hh"], None, x["h0"], x["c0"],
                                        lengths, y, gates, cells, cfg)
    assert dw_hr is None
    return dict(y=y, h_n=hn, c_n=cn, gates=gates, cells=cells, dgx=dgx, dh0=dh0, dc0=dc0)


OUTPUTS = ("y", "h_n", "c_n", "gates", "cells", "dgx", "dh0", "dc0")

# (T, B, N, H, lengths, forced path or None = dispatcher). Together: H in
# {1, 17, 32, 48}, B in {1, 3, 17} (17 = two batch tiles, the second 1/16
# full), T in {1, 2, 7}, N in {1, 2}, lengths unsorted with length 1, all
# three paths (SPLIT at H = 17: the second program holds 1 real unit, 15 padded).
CASES = {
    "T1_B1_H1": (1, 1, 2, 1, None, None),
    "H17_B3_T7_unsorted_len1": (7, 3, 2, 17, [7, 1, 4], None),
    "H32_B17_T2_N1": (2, 17, 1, 32, None, None),
    "H48_B3_T7_lengths": (7, 3, 2, 48, [2, 7, 1], None),
    "N1_H17_lengths": (7, 3, 1, 17, [3, 7, 1], None),
    "streamed_H17_B3_T7_unsorted_len1": (7, 3, 2, 17, [7, 1, 4], ("streamed", 16)),
    "streamed_H48_B17_T2_N1_lengths": (2, 17, 1, 48, [2, 1] * 8 + [2], ("streamed", 16)),
    "streamed_H32_B1_T1": (1, 1, 2, 32, None, ("streamed", 16)),
    "resident_forced_H48_B3": (2, 3, 2, 48, [1, 2, 2], ("resident", 64)),
    "split_H17_B3_T7_unsorted_len1": (7, 3, 2, 17, [7, 1, 4], ("split", 16)),
    "split_H48_B17_T2_N1_lengths": (2, 17, 1, 48, [2, 1] * 8 + [2], ("split", 16)),
    "split_H32_B1_T1": (1, 1, 2, 32, None, ("split", 16)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fp32_forward_backward_vs_reference(kt, case):
    T, B, N, H, lengths, path = CASES[case]
    lengths = None if lengths is None else torch.tensor(lengths)
    x = make_inputs(T, B, N, H)
    before = {k: v.clone() for k, v in x.items()}
    k, r = run_backend(kt, x, lengths, forced(path)), run_backend(reference, x, lengths)
    cfg = kt.kernel_config(H, torch.float32) if path is None else kt.parse_plan(forced(path))
    print(f"\n{case}: config {cfg}")
    m = valid_mask(T, B, lengths)
    for n in OUTPUTS:
        ws = n in ("gates", "cells")            # workspace: unspecified where t >= L_b
        print(f"  {n}: max abs err {maxerr(k[n], r[n], m if ws else None):.2e}")
    for n in OUTPUTS:
        got, want = k[n], r[n]
        assert got.dtype == want.dtype and got.shape == want.shape, n
        if n in ("gates", "cells"):
            got, want = torch.where(m, got, 0.0), torch.where(m, want, 0.0)
        torch.testing.assert_close(got, want, rtol=FP32_RTOL, atol=FP32_ATOL, msg=lambda s: f"{case} {n}: {s}")
    # positions t >= L_b are exactly zero; the caller's tensors are untouched
    assert (k["y"] * ~m).abs().max().item() == 0.0
    assert (k["dgx"] * ~m).abs().max().item() == 0.0
    for name, t in x.items():
        assert torch.equal(t, before[name]), f"{name} was modified"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("path", [None, ("split", 16), ("streamed", 16)],
                         ids=["dispatch", "split", "streamed"])
def test_low_precision_three_way_bound(kt, dtype, path):
    """err(kernel, ref_fp32) <= 2 * err(reference fed dtype, ref_fp32) + atol.

    ref_fp32 is the reference on the fp32 inputs; both others get the same
    inputs rounded to dtype (the reference then computes in fp32, so its error
    is the input/output rounding a perfect dtype kernel cannot avoid; the
    kernel adds rounding h and dG to dtype for the tensor-core dots)."""
    T, B, N, H, lengths = 7, 3, 2, 17, torch.tensor([7, 1, 4])
    x32 = make_inputs(T, B, N, H, seed=1)
    xlo = {n: t.to(dtype) for n, t in x32.items()}
    ref32 = run_backend(reference, x32, lengths)
    ref_lo = run_backend(reference, xlo, lengths)
    ker = run_backend(kt, xlo, lengths, forced(path))
    m = valid_mask(T, B, lengths)
    errs = {}
    for n in OUTPUTS:
        mask = m if n in ("gates", "cells") else None
        atol = rounding_atol(dtype, ref32[n] if mask is None else torch.where(mask, ref32[n], 0.0))
        errs[n] = (maxerr(ker[n], ref32[n], mask), maxerr(ref_lo[n], ref32[n], mask), atol)
        e_k, e_t, _ = errs[n]
        print(f"{n}: kernel {e_k:.2e}  reference-{dtype} {e_t:.2e}  atol {atol:.2e}  "
              f"bound {2 * e_t + atol:.2e}")
    for n, (e_k, e_t, atol) in errs.items():
        assert ker[n].dtype == ref_lo[n].dtype, n
        assert e_k <= 2 * e_t + atol, f"{n}: {e_k} > 2 * {e_t} + {atol}"
    assert (ker["y"] * ~m).abs().max().item() == 0.0
    assert (ker["dgx"] * ~m).abs().max().item() == 0.0


def _op_grads(x, lengths, backend, gx_offset_buffer=False):
    """Outputs and gradients of (gx, w_hh, h0, c0) through lstm_recurrence."""
    leaves = {n: x[n].detach().clone().requires_grad_() for n in ("gx", "w_hh", "h0", "c0")}
    gx = leaves["gx"]
    if gx_offset_buffer:   # a contiguous view at a storage offset, as a slice of a bigger batch gives
        gx = torch.cat([gx[:1] * 0, gx])[1:]
    y, hn, cn = lstm_recurrence(gx, leaves["w_hh"], leaves["h0"], leaves["c0"], lengths=lengths,
                                backend=backend)
    loss = (y * x["dy"]).sum() + (hn * x["dh_n"]).sum() + (cn * x["dc_n"]).sum()
    loss.backward()
    return dict(y=y, h_n=hn, c_n=cn, **{f"d_{n}": t.grad for n, t in leaves.items()})


@pytest.mark.parametrize("path", [None, ("split", 16), ("streamed", 16)],
                         ids=["dispatch", "split", "streamed"])
def test_op_gradients_vs_reference(kt, path):
    """Through the custom op (autograd, dw_hh GEMM): dgx, dw_hh, dh0, dc0; a
    forced path travels in the backend name ("triton:path=streamed,block_h=16")."""
    T, B, N, H, lengths = 7, 3, 2, 17, torch.tensor([4, 1, 7])
    x = make_inputs(T, B, N, H, seed=2)
    backend = "triton" if path is None else f"triton:{forced(path)}"
    got = _op_grads(x, lengths, backend, gx_offset_buffer=True)
    want = _op_grads(x, lengths, "reference")
    for n in want:
        print(f"{n}: max abs err {maxerr(got[n], want[n]):.2e}")
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=FP32_RTOL, atol=FP32_ATOL, msg=lambda s: f"{n}: {s}")


# ------------------------------------------------------------ no recompile
class _Recorder:
    """Stands in for a kernel: records each launch (grid, args, kwargs), then runs it."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((grid, args, kwargs))
            return self.kernel[grid](*args, **kwargs)
        return launch


_KERNELS = ("_lstm_fwd_kernel", "_lstm_bwd_kernel", "_lstm_fwd_split_kernel", "_lstm_bwd_split_kernel")


def record_launches(kt, monkeypatch, interpret=True):
    """Replace the launchers' kernel module by recorders of its kernels -> {name: _Recorder}."""
    real = kt.kernels(interpret)
    rec = {n: _Recorder(getattr(real, n)) for n in _KERNELS}
    fake = SimpleNamespace(**rec)
    monkeypatch.setattr(kt, "kernels", lambda i: fake if i == interpret else kt.kernels(i))
    return rec


def _jit_cache_key(kernel, args, kwargs, do_not_specialize=None):
    """The key JITFunction.run looks up in its kernel cache for these
    arguments, with the real CUDA backend (no GPU needed)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, compute_cache_key, create_function_from_signature

    dns = kernel.kwargs["do_not_specialize"] if do_not_specialize is None else do_not_specialize
    jf = JITFunction(kernel.fn, do_not_specialize=dns)
    binder = create_function_from_signature(jf.signature, jf.params, make_backend(GPUTarget("cuda", 80, 32)))
    _, specialization, options = binder(*args, **kwargs)
    return compute_cache_key({}, specialization, options)


@pytest.mark.parametrize("plan", [None, "path=split,block_h=16"], ids=["dispatch", "split"])
def test_new_T_and_B_do_not_recompile(kt, monkeypatch, plan):
    rec = record_launches(kt, monkeypatch)
    used = ("_lstm_fwd_kernel", "_lstm_bwd_kernel") if plan is None else \
        ("_lstm_fwd_split_kernel", "_lstm_bwd_split_kernel")
    H = 17
    shapes = ((2, 3, [2, 1, 2]), (7, 17, [7] * 16 + [1]), (16, 16, [16] * 16))
    for T, B, lengths in shapes:
        x = make_inputs(T, B, 2, H, seed=T)
        run_backend(kt, x, torch.tensor(lengths), plan)
    for n in used:
        r = rec[n]
        keys = {_jit_cache_key(r.kernel, a, kw) for _, a, kw in r.launches}
        print(f"{n}: {len(r.launches)} launches (T, B) in (2, 3), (7, 17), (16, 16) -> {len(keys)} cache key(s)")
        # SPLIT in the interpreter: one launch per step (+1 backward), step range runtime
        want = 3 if plan is None else sum(T + (n.startswith("_lstm_bwd")) for T, _, _ in shapes)
        assert len(r.launches) == want
        assert len(keys) == 1, f"{n}: a new T or B would recompile"
        # the check can fail: without do_not_specialize, T=16/B=16 (divisible
        # by 16) would be a different specialization than T=7/B=17
        plain = {_jit_cache_key(r.kernel, a, kw, do_not_specialize=[]) for _, a, kw in r.launches}
        assert len(plain) > 1
    # and a new H (a constexpr) is a new kernel, as documented
    _, a, kw = rec[used[0]].launches[0]
    assert _jit_cache_key(rec[used[0]].kernel, a, dict(kw, H=H + 1)) not in keys


# --------------------------------------------------------- what it refuses
def test_unsupported_and_unavailable_reasons(kt):
    spec = backends.CallSpec
    assert kt.unavailable_reason() is None            # no environment variable needed
    assert kt.unsupported_reason(spec("cpu", torch.float32, 2, 8, 8, False, True)) is None
    assert kt.unsupported_reason(spec("cuda", torch.bfloat16, 1, 8, 8, False, False)) is None
    why = kt.unsupported_reason(spec("cpu", torch.float64, 2, 8, 8, False, False))
    print(why)
    assert "float64" in why and "reference" in why
    why = kt.unsupported_reason(spec("cpu", torch.float32, 2, 8, 4, True, False))
    print(why)
    assert "proj_size" in why and "reference" in why
    why = kt.unsupported_reason(spec("mps", torch.float32, 2, 8, 8, False, False))
    print(why)
    assert "CUDA tensors" in why and "interpreter" in why
    # auto never picks the interpreter for CPU tensors
    assert backends.resolve_backend("auto", "cpu", torch.float32, 2, 8, 8, False, False) != "triton"
    # through the op: an explicit backend that cannot serve the call is an error
    x = make_inputs(2, 2, 2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        lstm_recurrence(x["gx"], x["w_hh"], x["h0"], x["c0"], backend="triton")
    x = make_inputs(2, 2, 2, 4)
    with pytest.raises(ValueError, match="h0"):
        kt.forward(x["gx"], x["w_hh"], None, x["h0"][:, :1], x["c0"], None, False)


def test_interpreted_and_compiled_kernels_in_one_process(kt):
    """The interpreter is a per-call choice: both kinds of every kernel and of
    the nested @triton.jit helpers exist side by side, whatever TRITON_INTERPRET is."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction
    for interpret, kind in ((True, InterpretedFunction), (False, JITFunction)):
        mod = kt.kernels(interpret)
        for name in _KERNELS + ("_cell_and_store", "_dot", "_arrive_and_wait", "_row_lengths"):
            assert isinstance(getattr(mod, name), kind), (interpret, name)
    assert kt.kernels(True) is not kt.kernels(False)


def test_no_workspace_without_grad(kt):
    x = make_inputs(3, 2, 2, 5)
    y, hn, cn, gates, cells = kt.forward(x["gx"], x["w_hh"], None, x["h0"], x["c0"], None, False)
    r = reference.forward(x["gx"], x["w_hh"], None, x["h0"], x["c0"], None, False)
    assert gates.shape == cells.shape == (0,) and gates.dtype == cells.dtype == torch.float32
    for n, a, b in zip(("y", "h_n", "c_n"), (y, hn, cn), r[:3]):
        print(f"{n}: max abs err {maxerr(a, b):.2e}")
        torch.testing.assert_close(a, b, rtol=FP32_RTOL, atol=FP32_ATOL)


# ----------------------------------------------------------- NaN and Inf
# docs/design.md §5: NaN and Inf propagate exactly as in nn.LSTM. Here at the
# op level against the reference backend, which tests/test_nonfinite.py checks
# against nn.LSTM. H = 20 puts padded lanes beside real ones on every path
# (RESIDENT HP = 32; SPLIT's second program 4 real units of 16; STREAMED's
# second tile likewise): an Inf must never meet a padded zero in a dot.
NF_T, NF_B, NF_H = 5, 3, 20
NF_VALUES = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
NF_STEPS = {"first": 0, "middle": NF_T // 2, "last": NF_T - 1}
NF_PATHS = {"resident": None, "split": ("split", 16), "streamed": ("streamed", 16)}


def _nf_cases():
    for where in ("gx", "h0", "c0", "w_hh"):
        for step in (("first",) if where in ("h0", "c0") else NF_STEPS):   # h0/c0: no time axis
            for value in NF_VALUES:
                yield f"{where}-{step}-{value}"


def _place_nonfinite(x, where, step, value):
    t = NF_STEPS[step]
    if where == "gx":
        x["gx"][t, 1, 0, 3] = value                 # direction 0, batch row 1, gate i unit 3
        x["gx"][NF_T - 1 - t, 2, 1, 2 * NF_H + 17] = value  # direction 1 at its own step t, gate g, padded tile
    elif where == "h0":
        x["h0"][1, 1, 3] = value                    # direction 1, batch row 1
    elif where == "c0":
        x["c0"][0, 2, 17] = value                   # direction 0, batch row 2, unit in the last tile
    else:                                           # a weight: which element depends on `step`
        w = x["w_hh"].view(-1)
        w[(w.numel() - 1) * t // (NF_T - 1)] = value


def assert_same_nonfinite(name, got, want, rtol=2e-5, atol=2e-5):
    """NaN where want is NaN, the same Inf where want is Inf, close elsewhere."""
    print(f"{name}: NaN {int(got.isnan().sum())} (reference {int(want.isnan().sum())}), "
          f"Inf {int(got.isinf().sum())} (reference {int(want.isinf().sum())})")
    assert torch.equal(got.isnan(), want.isnan()), f"{name}: NaN in different places"
    assert torch.equal(got.isinf(), want.isinf()), f"{name}: Inf in different places"
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("path", list(NF_PATHS))
@pytest.mark.parametrize("case", list(_nf_cases()))
def test_nonfinite_matches_reference(kt, case, path):
    where, step, value = case.split("-", 2)
    x = make_inputs(NF_T, NF_B, 2, NF_H, seed=3)
    _place_nonfinite(x, where, step, NF_VALUES[value])
    k = run_backend(kt, x, None, forced(NF_PATHS[path]))
    r = run_backend(reference, x, None)
    for n in ("y", "h_n", "c_n", "dgx", "dh0", "dc0"):
        assert_same_nonfinite(f"{case} {path} {n}", k[n], r[n])


# -------------------------------------------------- lengths outside 1..T
@pytest.mark.parametrize("path", list(NF_PATHS))
def test_lengths_out_of_range_are_clamped_in_the_kernel(kt, path):
    """The kernels clamp every length into 1..T themselves (docs/design.md §5:
    the op raises for CPU tensors and clamps GPU ones; the kernels must stay
    in bounds and write every output whoever calls them): 0 and -3 run as 1,
    T+5 and 2**32+2 (not 2: clamped before the int32 cast) as T. Before the
    clamp, L <= 0 left h_n/c_n unwritten and L > T read and wrote past y."""
    T, N, H = 4, 2, 20
    bad = torch.tensor([0, -3, T + 5, 2 ** 32 + 2, 2])
    x = make_inputs(T, len(bad), N, H, seed=4)
    k = run_backend(kt, x, bad, forced(NF_PATHS[path]))
    clamped = bad.clamp(1, T)
    r = run_backend(reference, x, clamped)
    m = valid_mask(T, len(bad), clamped)
    for n in OUTPUTS:
        got, want = k[n], r[n]
        if n in ("gates", "cells"):
            got, want = torch.where(m, got, 0.0), torch.where(m, want, 0.0)
        print(f"{path} {n}: max abs err {maxerr(got, want):.2e}")
        assert torch.isfinite(got).all(), f"{n}: not every element written"
        torch.testing.assert_close(got, want, rtol=FP32_RTOL, atol=FP32_ATOL, msg=lambda s: f"{path} {n}: {s}")


# ------------------------------------------------ SPLIT: barrier and launches
@pytest.mark.parametrize("N,H,B", [(2, 40, 17), (1, 17, 3)])
def test_split_barrier_bookkeeping(kt, monkeypatch, N, H, B):
    """The interpreter runs SPLIT one launch per step (no spin), with the same
    per-step code and the same arrivals as the grid-barrier launch: every one
    of the S programs of a group arrives once per step, so each group's
    counter ends at S*T forward and S*(T+1) backward (its T+1 iterations),
    the rest of its 128-byte line untouched; the grid is (N, batch tiles, S)
    and launch r runs exactly iteration r."""
    rec = record_launches(kt, monkeypatch)
    T = 3
    S, tiles = math.ceil(H / 16), math.ceil(B / 16)
    x = make_inputs(T, B, N, H, seed=5)
    lengths = torch.tensor(([3, 1, 2] * B)[:B])
    k = run_backend(kt, x, lengths, "path=split,block_h=16")
    r = run_backend(reference, x, lengths)
    for n in ("y", "h_n", "c_n", "dgx", "dh0", "dc0"):
        torch.testing.assert_close(k[n], r[n], rtol=FP32_RTOL, atol=FP32_ATOL)
    for name, iters in (("_lstm_fwd_split_kernel", T), ("_lstm_bwd_split_kernel", T + 1)):
        launches = rec[name].launches
        assert len(launches) == iters
        bars = {id(a[11 if name.startswith("_lstm_fwd") else 13]) for _, a, _ in launches}
        assert len(bars) == 1, "one counter buffer per call"
        for i, (grid, args, kw) in enumerate(launches):
            assert grid == (N, tiles, S)
            assert kw["SYNC"] is False
            assert args[-2:] == (i, i + 1), "launch i runs iteration i only"
        bar = launches[0][1][11 if name.startswith("_lstm_fwd") else 13]
        print(f"{name}: counters {bar[..., 0].tolist()} (S={S}, iterations {iters})")
        assert bar.shape == (N, tiles, 32)
        assert (bar[..., 0] == S * iters).all()
        assert (bar[..., 1:] == 0).all()


class _NoCall:
    def __call__(self):
        raise AssertionError("the co-residency check must not run here")


def test_split_launch_mode_rule():
    """When SPLIT may spin: never in the interpreter; "step" never asks the
    device; "auto" spins when one barrier group per direction fits, else one
    launch per step; a forced "grid" that cannot run is an error."""
    rule = tp.split_launch_groups
    assert rule("auto", True, 2, 3, 4, _NoCall()) == 0
    assert rule("step", True, 2, 3, 4, _NoCall()) == 0
    assert rule("step", False, 2, 3, 4, _NoCall()) == 0
    with pytest.raises(ValueError, match="interpreter"):
        rule("grid", True, 2, 3, 4, _NoCall())
    # H = 1024: S = 64 per direction; 132 co-resident programs (an H100/H200 at
    # one program per SM) hold both directions once; 108 (an A100) do not
    assert rule("auto", False, 2, 64, 4, lambda: 132) == 1
    assert rule("auto", False, 2, 64, 4, lambda: 108) == 0
    assert rule("auto", False, 1, 64, 4, lambda: 108) == 1
    with pytest.raises(RuntimeError, match="do not fit"):
        rule("grid", False, 2, 64, 1, lambda: 108)
    # batch tiles become more groups while they fit, never more than there are tiles
    assert rule("grid", False, 2, 16, 8, lambda: 132) == 4
    assert rule("grid", False, 2, 16, 3, lambda: 528) == 3


def test_co_resident_programs():
    """The occupancy arithmetic with injected device facts (H100/H200 SXM:
    132 SMs, 228 KB shared memory, 64 K registers, 2048 threads per SM)."""
    h100 = tp.DeviceFacts(sms=132, smem_per_sm=228 * 1024, regs_per_sm=65536, threads_per_sm=2048)
    # 139264 B of shared memory (RESIDENT fp16 H = 128): one block per SM
    assert tp.co_resident_programs(h100, 151, 139264, 8) == 132
    # small smem, 4 warps at 128 registers: registers allow 4 blocks per SM
    assert tp.co_resident_programs(h100, 128, 40000, 4) == 132 * 4
    # shared memory binds: 5 x (40 KB + 1 KB reserved) <= 228 KB < 6 x
    assert tp.co_resident_programs(h100, 32, 40 * 1024, 4) == 132 * 5
    # a kernel that does not fit at all
    assert tp.co_resident_programs(h100, 64, 240 * 1024, 4) == 0


# ------------------------------------------------------------------ plans
def test_plans_cover_the_dispatcher_and_round_trip(kt):
    spec = backends.CallSpec
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for H in (17, 64, 128, 256, 768, 1024, 2048):
            texts = kt.plans(spec("cuda", dtype, 2, H, H, False, True))
            print(dtype, H, texts)
            assert texts and len(texts) == len(set(texts))
            for text in texts:
                cfg = kt.parse_plan(text)
                assert tp.plan_text(cfg) == text and (cfg.path != "split" or cfg.sync != "auto")
            for smem in tp.SMEM_BYTES.values():
                for prec in ("tf32", "tf32x3"):
                    for cfg in tp.resolved_configs(kt.kernel_config(H, dtype, smem, prec), True):
                        assert tp.plan_text(cfg) in texts
    fp16 = kt.plans(spec("cuda", torch.float16, 2, 256, 256, False, False))
    assert "path=split,block_h=16,num_warps=4,sync=grid" in fp16
    assert "path=split,block_h=16,num_warps=4,sync=step" in fp16
    # CPU tensors: the interpreter, which never spins
    cpu = kt.plans(spec("cpu", torch.float16, 2, 256, 256, False, False))
    assert cpu == ["path=split,block_h=16,num_warps=4,sync=step"]
    assert kt.plans(spec("cpu", torch.float64, 2, 8, 8, False, False)) == []
    with pytest.raises(ValueError, match="sync= applies to path=split"):
        kt.parse_plan("path=resident,block_h=16,sync=grid")
    with pytest.raises(ValueError, match="sync must be"):
        kt.parse_plan("path=split,block_h=16,sync=spin")


def test_dispatch_rule_ranges(kt):
    """The H ranges docs/triton.md states, per arch shared memory and dtype."""
    def path(H, dtype, arch, prec="tf32"):
        return kt.kernel_config(H, dtype, tp.SMEM_BYTES[arch], prec).path
    f16, f32 = torch.float16, torch.float32
    for arch in (80, 90):
        assert path(128, f16, arch) == "resident" and path(129, f16, arch) == "split"
        assert path(64, f32, arch) == "resident" and path(65, f32, arch) == "split"
    assert path(1024, f16, 90) == "split" and path(1025, f16, 90) == "streamed"
    assert path(1024, f16, 80) == "split" and path(1025, f16, 80) == "streamed"
    assert path(512, f16, 86) == "split" and path(513, f16, 86) == "streamed"
    assert path(512, f32, 90) == "split" and path(513, f32, 90) == "streamed"
    assert path(256, f32, 90, "tf32x3") == "split" and path(257, f32, 90, "tf32x3") == "streamed"


# ------------------------------------------------ GPU: the compiled kernels
def _cuda(x):
    return {k: v.cuda() for k, v in x.items()}


GPU_SHAPES = [(17, 3, [3, 1, 2]), (64, 17, None), (256, 5, [5, 2, 1, 4, 3]), (768, 16, None)]


@gpu
@pytest.mark.parametrize("H,B,lengths", GPU_SHAPES, ids=[f"H{s[0]}" for s in GPU_SHAPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_gpu_every_plan_vs_reference(kt, H, B, lengths, dtype, monkeypatch):
    """Every plan the dispatcher can choose for this call, forced, on CUDA
    tensors: fp32 (TF32 off: tf32x3) to 1e-4 of the reference, fp16 by the
    three-way bound; bitwise the same on a second run (a race shows here)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    T, N = 6, 2
    lengths = None if lengths is None else torch.tensor(lengths, device="cuda")
    x32 = _cuda(make_inputs(T, B, N, H, seed=H))
    x = {k: v.to(dtype) for k, v in x32.items()}
    ref32 = run_backend(reference, x32, lengths)
    ref_lo = run_backend(reference, x, lengths)
    for text in kt.plans(backends.CallSpec("cuda", dtype, N, H, H, False, lengths is not None)):
        got = run_backend(kt, x, lengths, text)
        again = run_backend(kt, x, lengths, text)
        m = valid_mask(T, B, None if lengths is None else lengths.cpu()).cuda()
        for n in OUTPUTS:
            mask = m if n in ("gates", "cells") else None
            e_k = maxerr(got[n], ref32[n], mask)
            bound = (1e-4 * max(1.0, ref32[n].abs().max().item()) if dtype == torch.float32 else
                     2 * maxerr(ref_lo[n], ref32[n], mask)
                     + rounding_atol(dtype, ref32[n] if mask is None else torch.where(mask, ref32[n], 0.0)))
            print(f"{text} {n}: err {e_k:.2e} bound {bound:.2e}")
            assert e_k <= bound, f"{text} {n}: {e_k} > {bound}"
            a, b = (got[n], again[n]) if mask is None else (torch.where(mask, got[n], 0.0),
                                                            torch.where(mask, again[n], 0.0))
            assert torch.equal(a, b), f"{text} {n}: not deterministic (a race?)"


@gpu
@pytest.mark.parametrize("H", [48, 256])
def test_gpu_op_gradients_every_plan(kt, H, monkeypatch):
    """Through the op on CUDA tensors, every plan forced by name; fp32 with
    TF32 off (tf32x3 dots, about fp32 accuracy)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    T, B, N = 5, 3, 2
    lengths = torch.tensor([5, 1, 3], device="cuda")
    x = _cuda(make_inputs(T, B, N, H, seed=7))
    want = _op_grads(x, lengths, "reference")
    for text in kt.plans(backends.CallSpec("cuda", torch.float32, N, H, H, False, True)):
        got = _op_grads(x, lengths, f"triton:{text}")
        for n in want:
            print(f"{text} {n}: max abs err {maxerr(got[n], want[n]):.2e}")
            torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-4, msg=lambda s: f"{text} {n}: {s}")


@gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_low_precision_three_way_bound(kt, dtype):
    T, B, N, H = 7, 3, 2, 300
    lengths = torch.tensor([7, 1, 4], device="cuda")
    x32 = _cuda(make_inputs(T, B, N, H, seed=1))
    xlo = {n: t.to(dtype) for n, t in x32.items()}
    ref32, ref_lo = run_backend(reference, x32, lengths), run_backend(reference, xlo, lengths)
    ker = run_backend(kt, xlo, lengths)
    m = valid_mask(T, B, lengths.cpu()).cuda()
    for n in OUTPUTS:
        mask = m if n in ("gates", "cells") else None
        atol = rounding_atol(dtype, ref32[n] if mask is None else torch.where(mask, ref32[n], 0.0))
        e_k, e_t = maxerr(ker[n], ref32[n], mask), maxerr(ref_lo[n], ref32[n], mask)
        print(f"{n}: kernel {e_k:.2e} reference-{dtype} {e_t:.2e} bound {2 * e_t + atol:.2e}")
        assert e_k <= 2 * e_t + atol, n


@gpu
@pytest.mark.parametrize("H", [64, 256])
def test_gpu_cuda_graph_capture_and_replay(kt, H):
    """Forward of every plan captured in a CUDA graph (the SPLIT counters are a
    memset node; sync=step is T kernel nodes) and replayed on new inputs."""
    T, B, N = 5, 4, 2
    lengths = torch.tensor([5, 2, 4, 1], device="cuda")
    for text in kt.plans(backends.CallSpec("cuda", torch.float16, N, H, H, False, True)):
        cfg = kt.parse_plan(text)
        static = _cuda(make_inputs(T, B, N, H, dtype=torch.float16, seed=1))
        args = lambda: (static["gx"], static["w_hh"], None, static["h0"], static["c0"], lengths, False, cfg)  # noqa: E731
        kt.forward(*args())                       # compile and the co-residency check, outside capture
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = kt.forward(*args())
        fresh = _cuda(make_inputs(T, B, N, H, dtype=torch.float16, seed=2))
        for k in ("gx", "h0", "c0"):
            static[k].copy_(fresh[k])
        g.replay()
        torch.cuda.synchronize()
        want = kt.forward(*args())
        for n, a, b in zip(("y", "h_n", "c_n"), out[:3], want[:3]):
            print(f"{text} {n}: replay vs eager max abs err {maxerr(a, b):.2e}")
            assert torch.equal(a, b), f"{text} {n}"
