"""The GPU backends' real kernels on CUDA tensors (skipped on a machine
without CUDA, with that reason): each backend against the float64 reference
through the op and through BiLSTM, every plan its plans() lists forced and
the dispatcher's own, unsorted lengths, all gradients, fp16/bf16 by the
three-way bound, no host sync inside the op, CUDA graph capture and replay.

The cases, the inputs and the bounds are bilstm-bench check's
(bilstm_fast/bench/check_cases.py), so a pass here and a pass of the
acceptance run mean the same thing. TF32 is off: fp32 is fp32.

Triton: these tests call backend="triton" on CUDA tensors, which runs the
compiled kernels (CPU tensors run the interpreter; the choice is per call).
"""
from __future__ import annotations

import pytest
import torch

from bilstm_fast.bench import check_cases as cc
from bilstm_fast.bench import check_stages
from bilstm_fast.bench.device import set_tf32
from bilstm_fast.ops import backends, cuda_compat, cuda_lstm

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason=f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, "
           f"CUDA {torch.version.cuda}; driver: {cuda_compat.driver_facts().describe()})")

DEVICE = torch.device("cuda")
DTYPES = ("fp32", "fp16", "bf16")
BACKENDS = ("cuda", "triton")


@pytest.fixture(autouse=True)
def _fp32_is_fp32(monkeypatch):
    monkeypatch.delenv(cuda_lstm.EMULATE_ENV, raising=False)
    allow = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    set_tf32(False)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = allow


@pytest.fixture(params=BACKENDS)
def backend(request):
    """A GPU backend that can run here (else skip, with its reason)."""
    name = request.param
    why = backends.backend_status()[name]
    if why is not None:
        pytest.skip(f"{name} unavailable: {why}")
    return name


def _plans(name, case, dtype):
    mod = backends.get(name)
    spec = backends.CallSpec("cuda", cc.DTYPES[dtype], case.N, case.H, case.H, False, case.lengths is not None)
    texts, note = cc.plans_of(mod, spec)
    if note:
        print(note)
    return [None] + texts


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", cc.GPU_CASES, ids=lambda c: c.label.replace(" ", "_"))
def test_op_every_plan_vs_float64(backend, case, dtype):
    """lstm_recurrence forward + backward (y, h_n, c_n and the grads of gx,
    w_hh, h0, c0) against the reference in float64, every plan; y and dgx
    exactly 0 past each length."""
    rows = cc.check_op_case(backend, case, dtype, DEVICE, _plans(backend, case, dtype))
    for r in rows:
        print(f"{backend} {dtype} {case.label} plan={r['plan']}: {r['detail']} ({r['seconds']} s) {r['errs']}")
    assert rows and all(r["ok"] for r in rows), [r["detail"] for r in rows if not r["ok"]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_bilstm_packed_vs_nn_lstm_float64(backend, dtype):
    """BiLSTM(backend) on a PackedSequence of unsorted lengths, 2 layers,
    against nn.LSTM in float64: output, h_n, c_n, grads of the input and of
    every parameter."""
    r = cc.check_module_case(backend, cc.GPU_MODULE_CASE, dtype, DEVICE)
    print(f"{backend} {dtype} {cc.GPU_MODULE_CASE.label}: {r['detail']} {r['errs']}")
    assert r["ok"], r["detail"]


def test_op_makes_no_host_sync(backend):
    """Forward and backward of the op with device lengths under
    torch.cuda.set_sync_debug_mode("error"): nothing inside synchronises with
    the host (what CUDA-graph capture and async streams need)."""
    case = cc.OpCase(6, 5, 64, 2, [6, 1, 3, 6, 2])
    x = cc.cast(cc.op_inputs(case, DEVICE), torch.float16)
    cc.run_op(x, backend)                   # warm-up: compiles, workspace, handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = cc.run_op(x, backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(out["y"]).all() and torch.isfinite(out["d_w_hh"]).all()


@pytest.mark.parametrize("dtype", ("bf16", "fp32"))
def test_cuda_graph_capture_and_replay(backend, dtype):
    """Capture the op forward, the op forward + backward and BiLSTM inference
    in CUDA graphs; replay with new inputs (lengths too); equal to eager."""
    case = cc.OpCase(16, 8, 256, 2, "random")
    rows = check_stages._graph_case(backend, case, dtype, DEVICE, seed=0)
    for r in rows:
        print(r["label"], r["detail"])
    assert len(rows) == 3 and all(r["ok"] for r in rows), [r["detail"] for r in rows if not r["ok"]]


def test_auto_picks_the_cuda_backend():
    """On a device the cuda backend supports, backend="auto" takes it for
    fp32 / fp16 / bf16 (and never for fp64 or proj_size)."""
    why = backends.backend_status()["cuda"]
    if why is not None:
        pytest.skip(f"cuda unavailable: {why}")
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert backends.resolve_backend("auto", "cuda", dtype, 2, 256, 256, False, True) == "cuda"
    assert backends.resolve_backend("auto", "cuda", torch.float64, 2, 256, 256, False, True) != "cuda"
    assert backends.resolve_backend("auto", "cuda", torch.float32, 2, 256, 128, True, True) != "cuda"
