"""The Triton backend (bilstm_fast/ops/triton_lstm.py) against the reference
backend, run on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1), plus
the no-recompile property (T and B are not specialized) checked with the JIT's
own cache-key function for a CUDA target.

Legend: T steps, B batch, N directions, H hidden. Shapes stay tiny: the
interpreter runs programs one after another (~10 ms per program-step).
Both kernel paths run: RESIDENT (the dispatcher's choice at these H) and
STREAMED, forced at tiny H with 16-unit tiles so the hidden-unit tile loops,
the global h/c exchange and the barriers all execute.
"""
from __future__ import annotations

import os

# Must be set before bilstm_fast.ops.triton_lstm is imported: triton.jit
# decides at decoration time whether a kernel is interpreted. The module is
# imported lazily in the `kt` fixture (and reloaded if something imported it
# earlier without the interpreter), so this holds in a whole-suite run too.
os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from bilstm_fast.ops import backends, lstm_recurrence, reference  # noqa: E402
from conftest import make_inputs, maxerr, valid_mask  # noqa: E402

FP32_RTOL, FP32_ATOL = 1e-5, 1e-5


def rounding_atol(dtype, want):
    """The atol of the three-way bound: half an ulp of dtype at the largest
    magnitude of the output. Both sides round their result to dtype last, and
    two fp32 values closer than any tolerance can land on neighbouring dtype
    values, so less than one final rounding cannot be asked for."""
    return 0.5 * torch.finfo(dtype).eps * want.abs().max().item()


@pytest.fixture(scope="module")
def kt():
    """bilstm_fast.ops.triton_lstm with interpreted kernels."""
    kernels = importlib.import_module("bilstm_fast.ops.triton_kernels")
    mod = importlib.import_module("bilstm_fast.ops.triton_lstm")
    if not kernels.INTERPRET and not torch.cuda.is_available():
        # imported earlier in this process without the interpreter: reload in
        # place, kernels first (the backend registry holds the same module objects)
        importlib.reload(kernels)
        mod = importlib.reload(mod)
    assert mod.INTERPRET, "TRITON_INTERPRET=1 did not reach triton_lstm"
    assert mod.unavailable_reason() is None
    return mod


def forced(path):
    """("streamed", bh) / ("resident", hp) -> the plan text of a forced kernel config, or None."""
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
# full), T in {1, 2, 7}, N in {1, 2}, lengths unsorted with length 1, both paths.
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
@pytest.mark.parametrize("path", [None, ("streamed", 16)], ids=["dispatch", "streamed"])
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


@pytest.mark.parametrize("path", [None, ("streamed", 16)], ids=["dispatch", "streamed"])
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
    """Stands in for a kernel: records each launch, then runs the kernel."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((args, kwargs))
            return self.kernel[grid](*args, **kwargs)
        return launch


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


def test_new_T_and_B_do_not_recompile(kt, monkeypatch):
    rec = {n: _Recorder(getattr(kt, n)) for n in ("_lstm_fwd_kernel", "_lstm_bwd_kernel")}
    for n, r in rec.items():
        monkeypatch.setattr(kt, n, r)
    H = 17
    for T, B, lengths in ((2, 3, [2, 1, 2]), (7, 17, [7] * 16 + [1]), (16, 16, [16] * 16)):
        x = make_inputs(T, B, 2, H, seed=T)
        run_backend(kt, x, torch.tensor(lengths))
    for n, r in rec.items():
        keys = {_jit_cache_key(r.kernel, a, kw) for a, kw in r.launches}
        print(f"{n}: {len(r.launches)} launches (T, B) in (2, 3), (7, 17), (16, 16) -> {len(keys)} cache key(s)")
        assert len(r.launches) == 3
        assert len(keys) == 1, f"{n}: a new T or B would recompile"
        # the check can fail: without do_not_specialize, T=16/B=16 (divisible
        # by 16) would be a different specialization than T=7/B=17
        plain = {_jit_cache_key(r.kernel, a, kw, do_not_specialize=[]) for a, kw in r.launches}
        assert len(plain) > 1
    # and a new H (a constexpr) is a new kernel, as documented
    a, kw = rec["_lstm_fwd_kernel"].launches[0]
    assert _jit_cache_key(rec["_lstm_fwd_kernel"].kernel, a, dict(kw, H=H + 1)) not in keys


# --------------------------------------------------------- what it refuses
def test_unsupported_and_unavailable_reasons(kt, monkeypatch):
    spec = backends.CallSpec
    assert kt.unsupported_reason(spec("cpu", torch.float32, 2, 8, 8, False, True)) is None
    assert kt.unsupported_reason(spec("cuda", torch.bfloat16, 1, 8, 8, False, False)) is None
    why = kt.unsupported_reason(spec("cpu", torch.float64, 2, 8, 8, False, False))
    print(why)
    assert "float64" in why and "reference" in why
    why = kt.unsupported_reason(spec("cpu", torch.float32, 2, 8, 4, True, False))
    print(why)
    assert "proj_size" in why and "reference" in why
    monkeypatch.setattr(kt, "INTERPRET", False)
    why = kt.unsupported_reason(spec("cpu", torch.float32, 2, 8, 8, False, False))
    print(why)
    assert "CUDA GPU" in why and "TRITON_INTERPRET=1" in why
    monkeypatch.setattr(kt, "_unavailable_known", False)   # (both restored by undo)
    monkeypatch.setattr(kt, "_unavailable", None)
    why = kt.unavailable_reason()
    print(why)
    assert "CUDA GPU" in why and "TRITON_INTERPRET=1" in why
    monkeypatch.undo()
    assert kt.unavailable_reason() is None
    # through the op: an explicit backend that cannot serve the call is an error
    x = make_inputs(2, 2, 2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        lstm_recurrence(x["gx"], x["w_hh"], x["h0"], x["c0"], backend="triton")
    x = make_inputs(2, 2, 2, 4)
    with pytest.raises(ValueError, match="h0"):
        kt.forward(x["gx"], x["w_hh"], None, x["h0"][:, :1], x["c0"], None, False)


def test_no_workspace_without_grad(kt):
    x = make_inputs(3, 2, 2, 5)
    y, hn, cn, gates, cells = kt.forward(x["gx"], x["w_hh"], None, x["h0"], x["c0"], None, False)
    r = reference.forward(x["gx"], x["w_hh"], None, x["h0"], x["c0"], None, False)
    assert gates.shape == cells.shape == (0,) and gates.dtype == cells.dtype == torch.float32
    for n, a, b in zip(("y", "h_n", "c_n"), (y, hn, cn), r[:3]):
        print(f"{n}: max abs err {maxerr(a, b):.2e}")
        torch.testing.assert_close(a, b, rtol=FP32_RTOL, atol=FP32_ATOL)
