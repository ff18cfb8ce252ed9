"""Shared test helpers: nn.LSTM / BiLSTM pairs with identical weights, and a
closeness check that prints its errors before asserting."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bilstm_fast import BiLSTM


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> None:
    """allclose with the max/mean error printed first (pytest shows it on failure)."""
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.double() - want.double()).abs()
    print(f"{name}: max err {err.max().item() if err.numel() else 0:.3e} "
          f"mean err {err.mean().item() if err.numel() else 0:.3e}")
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def lstm_pair(input_size: int, hidden_size: int, dtype=torch.float64, seed: int = 0, **kwargs):
    """(nn.LSTM, BiLSTM) with the same configuration and weights (bidirectional by default)."""
    kwargs.setdefault("bidirectional", True)
    backend = kwargs.pop("backend", "auto")
    torch.manual_seed(seed)
    ref = nn.LSTM(input_size, hidden_size, dtype=dtype, **kwargs)
    ours = BiLSTM(input_size, hidden_size, dtype=dtype, backend=backend, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(1234)
