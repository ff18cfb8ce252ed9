"""BiLSTM (reference backend) against torch.nn.LSTM with copied weights, float64:
outputs, h_n, c_n and the gradients of input, h0, c0 and every parameter."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import assert_close, lstm_pair

RTOL, ATOL = 1e-10, 1e-12   # float64: both sides compute the same math in a different order

# (name, constructor kwargs, T, B, D, H, hx given, unbatched)
CASES = [
    ("base", {}, 5, 3, 4, 6, True, False),
    ("hx_none", {}, 5, 3, 4, 6, False, False),
    ("batch_first", {"batch_first": True}, 5, 3, 4, 6, True, False),
    ("unbatched", {}, 5, 1, 4, 6, True, True),
    ("unbatched_batch_first", {"batch_first": True}, 4, 1, 3, 5, False, True),
    ("two_layers", {"num_layers": 2}, 4, 3, 4, 5, True, False),
    ("three_layers", {"num_layers": 3}, 3, 2, 3, 4, True, False),
    ("no_bias", {"bias": False, "num_layers": 2}, 4, 3, 4, 5, True, False),
    ("proj", {"proj_size": 3}, 5, 3, 4, 6, True, False),
    ("proj_two_layers", {"proj_size": 2, "num_layers": 2, "batch_first": True}, 4, 2, 3, 5, True, False),
    ("dropout_eval", {"num_layers": 2, "dropout": 0.5}, 4, 3, 4, 5, True, False),
    ("unidirectional", {"bidirectional": False, "num_layers": 2}, 5, 3, 4, 6, True, False),
    ("H1", {}, 4, 3, 2, 1, True, False),
    ("H3", {}, 4, 3, 5, 3, True, False),
    ("H17", {}, 3, 2, 4, 17, True, False),
    ("T1", {}, 1, 3, 4, 5, True, False),
    ("B1", {"num_layers": 2}, 6, 1, 4, 5, True, False),
]


def _grads(module: nn.Module, x: torch.Tensor, hx, packed_lengths=None, enforce_sorted=True):
    """Forward + backward with fixed random cotangents; returns outputs and all grads."""
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else tuple(t.detach().clone().requires_grad_() for t in hx)
    inp = x
    if packed_lengths is not None:
        inp = pack_padded_sequence(x, packed_lengths, batch_first=module.batch_first,
                                   enforce_sorted=enforce_sorted)
    out, (h_n, c_n) = module(inp, hx)
    out_t = out.data if packed_lengths is not None else out
    g = torch.Generator().manual_seed(7)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum()
               for t in (out_t, h_n, c_n))
    module.zero_grad()
    loss.backward()
    grads = {"dx": x.grad}
    if hx is not None:
        grads["dh0"], grads["dc0"] = hx[0].grad, hx[1].grad
    for name, p in module.named_parameters():
        grads[name] = p.grad
    return (out_t, h_n, c_n), grads, out


def _compare(ref, ours, x, hx, **kw):
    (o1, h1, c1), g1, raw1 = _grads(ref, x, hx, **kw)
    (o2, h2, c2), g2, raw2 = _grads(ours, x, hx, **kw)
    assert_close("output", o2, o1, RTOL, ATOL)
    assert_close("h_n", h2, h1, RTOL, ATOL)
    assert_close("c_n", c2, c1, RTOL, ATOL)
    assert g1.keys() == g2.keys()
    for k in g1:
        assert_close(f"grad {k}", g2[k], g1[k], RTOL, ATOL)
    return raw1, raw2


# "reference" pins the oracle itself to nn.LSTM; "auto" is what a user gets on
# this machine (the C++ kernel for CPU tensors wherever it supports the call).
@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("name,kw,T,B,D,H,give_hx,unbatched", CASES, ids=[c[0] for c in CASES])
def test_matches_nn_lstm(name, kw, T, B, D, H, give_hx, unbatched, backend):
    ref, ours = lstm_pair(D, H, backend=backend, **kw)
    ref.eval(), ours.eval()
    N = 2 if kw.get("bidirectional", True) else 1
    L = kw.get("num_layers", 1)
    P = kw.get("proj_size", 0) or H
    if unbatched:
        x = torch.randn(T, D, dtype=torch.float64)
        hx = (torch.randn(L * N, P, dtype=torch.float64), torch.randn(L * N, H, dtype=torch.float64))
    else:
        x = torch.randn(*((B, T) if kw.get("batch_first") else (T, B)), D, dtype=torch.float64)
        hx = (torch.randn(L * N, B, P, dtype=torch.float64), torch.randn(L * N, B, H, dtype=torch.float64))
    _compare(ref, ours, x, hx if give_hx else None)


@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_packed_sequence(enforce_sorted, batch_first, num_layers):
    lengths = torch.tensor([6, 4, 4, 1, 1]) if enforce_sorted else torch.tensor([1, 6, 3, 1, 4])
    T, B, D, H = 6, 5, 3, 4
    ref, ours = lstm_pair(D, H, num_layers=num_layers, batch_first=batch_first)
    x = torch.randn(*((B, T) if batch_first else (T, B)), D, dtype=torch.float64)
    hx = (torch.randn(2 * num_layers, B, H, dtype=torch.float64),
          torch.randn(2 * num_layers, B, H, dtype=torch.float64))
    raw1, raw2 = _compare(ref, ours, x, hx, packed_lengths=lengths, enforce_sorted=enforce_sorted)
    assert torch.equal(raw2.batch_sizes, raw1.batch_sizes)
    for a, b in ((raw2.sorted_indices, raw1.sorted_indices), (raw2.unsorted_indices, raw1.unsorted_indices)):
        assert (a is None and b is None) or torch.equal(a, b)


def test_packed_sequence_without_hx():
    ref, ours = lstm_pair(3, 4)
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    _compare(ref, ours, x, None, packed_lengths=torch.tensor([2, 5, 1, 3]), enforce_sorted=False)


def test_state_dict_round_trip_both_ways():
    ref, ours = lstm_pair(4, 5, num_layers=2, proj_size=3)
    assert list(ref.state_dict()) == list(ours.state_dict())
    fresh = nn.LSTM(4, 5, num_layers=2, proj_size=3, bidirectional=True, dtype=torch.float64)
    fresh.load_state_dict(ours.state_dict())
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    assert_close("round trip", fresh(x)[0], ours(x)[0], RTOL, ATOL)
    assert [n for n, _ in ref.named_parameters()] == [n for n, _ in ours.named_parameters()]
    assert [[t.shape for t in ws] for ws in ref.all_weights] == [[t.shape for t in ws] for ws in ours.all_weights]


def test_initialisation_matches_nn_lstm():
    torch.manual_seed(3)
    a = nn.LSTM(6, 5, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    b = __import__("bilstm_fast").BiLSTM(6, 5, num_layers=2)
    for (n1, p1), (n2, p2) in zip(a.named_parameters(), b.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2), n1


def test_flatten_parameters_is_harmless():
    ref, ours = lstm_pair(3, 4)
    ours.flatten_parameters()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    assert_close("after flatten_parameters", ours(x)[0], ref(x)[0], RTOL, ATOL)


def test_empty_batch():
    ref, ours = lstm_pair(3, 4, num_layers=2)
    x = torch.randn(5, 0, 3, dtype=torch.float64, requires_grad=True)
    o1, (h1, c1) = ref(x)
    o2, (h2, c2) = ours(x)
    assert o2.shape == o1.shape and h2.shape == h1.shape and c2.shape == c1.shape
    (o2.sum() + h2.sum() + c2.sum()).backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None and not p.grad.any() for p in ours.parameters())


def test_nan_in_gives_nan_out():
    _, ours = lstm_pair(3, 4)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    x[1, 0, 0] = float("nan")
    out, (h_n, _) = ours(x)
    assert out[:, 0].isnan().any() and h_n[:, 0].isnan().all()
    assert not out[:, 1].isnan().any(), "a NaN in one sequence must not leak into another"


def test_inputs_not_modified():
    _, ours = lstm_pair(3, 4, num_layers=2)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    hx = (torch.randn(4, 2, 4, dtype=torch.float64), torch.randn(4, 2, 4, dtype=torch.float64))
    copies = [t.clone() for t in (x, *hx)]
    ours(x, hx)
    for t, c in zip((x, *hx), copies):
        assert torch.equal(t, c)


def test_float32_matches_nn_lstm():
    ref, ours = lstm_pair(8, 16, dtype=torch.float32, num_layers=2)
    x = torch.randn(7, 3, 8)
    o1, (h1, c1) = ref(x)
    o2, (h2, c2) = ours(x)
    assert_close("fp32 output", o2, o1, 1e-5, 1e-6)
    assert_close("fp32 c_n", c2, c1, 1e-5, 1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_within_three_way_bound(dtype):
    """err(ours in dtype, fp64 truth) <= 2 * err(nn.LSTM in dtype, fp64 truth) + atol:
    our fp32 cell state and accumulation must be no worse than torch's own path."""
    ref, ours = lstm_pair(16, 32, num_layers=2, backend="reference")
    x = torch.randn(12, 4, 16, dtype=torch.float64)
    truth = ref(x)[0]
    ours_lp, ref_lp = ours.to(dtype), ref.to(dtype)
    with torch.no_grad():
        err_ours = (ours_lp(x.to(dtype))[0].double() - truth).abs().max().item()
        err_torch = (ref_lp(x.to(dtype))[0].double() - truth).abs().max().item()
    print(f"{dtype}: ours {err_ours:.3e}, nn.LSTM {err_torch:.3e}")
    assert err_ours <= 2 * err_torch + 1e-3
