"""`bilstm-bench check` (bilstm_fast/bench/check.py), tested on a CPU: the
plans() of today's kernels that it forces, stage isolation (a hang is
reported as a hang within its timeout, a crash as a failure), the result
file's schema, and `--emulate` end to end at tiny size."""
from __future__ import annotations

import pytest
import torch

from bilstm_fast.ops import backends, cuda_lstm


# ------------------------------------------------------------- plans()
@pytest.fixture
def emulate(monkeypatch):
    monkeypatch.setenv(cuda_lstm.EMULATE_ENV, "1")


def spec(H, dtype=torch.float32, N=2, device="cpu"):
    return backends.CallSpec(device, dtype, N, H, H, False, True)


@pytest.mark.parametrize("H,dtype,want", [
    (9, torch.float32, ["path=onchip"]),
    (104, torch.float32, ["path=stream"]),       # on-chip only for some B / kinds: left to the auto plan
    (104, torch.bfloat16, ["path=onchip"]),
    (20000, torch.float32, ["path=stream,batch_tile=-1"]),
])
def test_cuda_plans_today(emulate, H, dtype, want):
    """cuda_lstm.plans on the emulated device (8 SMs, 48 KB): the texts, each
    forcing the path it names for every B and both kinds."""
    got = cuda_lstm.plans(spec(H, dtype))
    auto = {(k, B): cuda_lstm.plan_for(k, 2, B, H, dtype, "cpu")["path"] for k in (0, 1) for B in (1, 8)}
    print(H, dtype, got, auto)
    assert got == want
    for text in got:
        forced = cuda_lstm.parse_plan(text)
        for kind in (0, 1):
            for B in (1, 3, 8, 256):
                p = cuda_lstm.plan_for(kind, 2, B, H, dtype, "cpu", forced)
                assert p["path"] == forced.path
                assert (p["batch_tile"] == 0) == (forced.batch_tile < 0)
    if H == 104 and dtype == torch.float32:   # the dispatcher does take both paths here
        assert set(auto.values()) == {"onchip", "stream"}


def test_cuda_plans_unsupported_call_is_empty(emulate):
    assert cuda_lstm.plans(spec(16, torch.float64)) == []
    assert cuda_lstm.plans(backends.CallSpec("cpu", torch.float32, 2, 16, 8, True, True)) == []


@pytest.mark.parametrize("H,dtype,resident", [(17, torch.float32, True), (128, torch.bfloat16, True),
                                              (128, torch.float32, False), (1040, torch.float16, False)])
def test_triton_plans_today(monkeypatch, H, dtype, resident):
    """triton_lstm.plans: the dispatcher's one config as a text that
    parse_plan turns back into exactly that config."""
    from bilstm_fast.ops import triton_lstm, triton_plan
    monkeypatch.setattr(triton_lstm, "INTERPRET", True)     # CPU tensors are then supported
    monkeypatch.setattr(triton_lstm, "_unavailable", None)
    monkeypatch.setattr(triton_lstm, "_unavailable_known", True)
    got = triton_lstm.plans(spec(H, dtype))
    want = triton_plan.kernel_config(H, dtype, triton_plan.smem_bytes_of(torch.device("cpu")),
                                     triton_plan.dot_precision(dtype))
    print(H, dtype, got, want)
    assert len(got) == 1 and triton_lstm.parse_plan(got[0]) == want
    assert want.resident == resident and got[0].startswith(f"path={'resident' if resident else 'streamed'},")
    assert triton_lstm.plans(spec(H, torch.float64)) == []
