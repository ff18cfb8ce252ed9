"""Shared test helpers: nn.LSTM / BiLSTM pairs with identical weights, a
closeness check that prints its errors before asserting, and the cpu
backend's module and its thread-count / ISA-build fixtures."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bilstm_fast import BiLSTM

# The developer tools (tools/: compile report, CUDA resource counts) need the
# source tree and are not part of the installed package; tests import them from here.
TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> None:
    """allclose with the max/mean error printed first (pytest shows it on failure)."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.double() - want.double()).abs()
    print(f"{name}: max err {err.max().item() if err.numel() else 0:.3e} "
          f"mean err {err.mean().item() if err.numel() else 0:.3e}")
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def cpu_module():
    """bilstm_fast._cpu. The README's install builds it: missing is a failure, not a skip."""
    try:
        return importlib.import_module("bilstm_fast._cpu")
    except ImportError as e:
        pytest.fail(f"bilstm_fast._cpu is not built ({e}); build it with `pip install -e .` "
                    "from the repository root")


@pytest.fixture
def threads(request):
    """torch.set_num_threads(request.param) for one test (parametrize it with indirect=True)."""
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


@pytest.fixture(params=["avx512", "avx512-bf16dot", "avx2", "baseline"])
def isa(request):
    """Each ISA build of the cpu kernels, restored after the test; a build this
    CPU cannot run is skipped, saying so. "avx512" runs bf16 on the float
    FMAs, "avx512-bf16dot" on the AVX512-BF16 dot products (where the CPU has
    them): both paths are tested whichever one "auto" picks on this CPU."""
    mod = cpu_module()
    build, _, dot = request.param.partition("-")
    if build not in mod.supported_isas():
        pytest.skip(f"this CPU cannot run the {build} build (supported: {mod.supported_isas()})")
    old = mod.isa()
    mod.set_isa(build)
    if dot:
        try:
            mod.set_bf16_dot("on")
        except ValueError as e:
            mod.set_isa(old)
            pytest.skip(str(e))
    else:
        mod.set_bf16_dot("off")
    yield build
    mod.set_bf16_dot("auto")
    mod.set_isa(old)


def lstm_pair(input_size: int, hidden_size: int, dtype=torch.float64, seed: int = 0, **kwargs):
    """(nn.LSTM, BiLSTM) with the same configuration and weights (bidirectional by default)."""
    kwargs.setdefault("bidirectional", True)
    backend = kwargs.pop("backend", "auto")
    torch.manual_seed(seed)
    ref = nn.LSTM(input_size, hidden_size, dtype=dtype, **kwargs)
    ours = BiLSTM(input_size, hidden_size, dtype=dtype, backend=backend, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def make_inputs(T, B, N, H, dtype=torch.float32, seed=0):
    """Inputs and cotangents of the recurrence op (backends.py contract):
    gx [T, B, N, 4H], w_hh [N, 4H, H], h0/c0 [N, B, H], dy [T, B, N, H], dh_n/dc_n [N, B, H]."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(dtype)  # noqa: E731
    return dict(gx=r(T, B, N, 4 * H), w_hh=r(N, 4 * H, H, scale=H ** -0.5), h0=r(N, B, H, scale=0.5),
                c0=r(N, B, H, scale=0.5), dy=r(T, B, N, H), dh_n=r(N, B, H), dc_n=r(N, B, H))


def valid_mask(T, B, lengths):
    """[T, B, 1, 1] bool: True where t < L_b."""
    L = torch.full((B,), T) if lengths is None else lengths
    return (torch.arange(T)[:, None] < L[None, :])[:, :, None, None]


def maxerr(a, b, mask=None):
    """Max |a - b| (where mask is True), 0 for empty tensors."""
    d = (a.double() - b.double()).abs()
    if mask is not None:
        d = torch.where(mask, d, 0.0)
    return d.max().item() if d.numel() else 0.0


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(1234)
