"""What is timed: nn.LSTM and BiLSTM with the same weights, their inputs, one
step of work (inference or training), and the check that must pass before a
backend is timed.

Both sides run the whole module forward — the input projection included —
on the same input, and in training the same backward (same dy, input that
requires grad, every parameter's grad). A packed shape (variable lengths)
is fed as a PackedSequence and its output unpacked to padded [T, B, N*H]:
both conversions are part of the timed work, as in a user's model.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .shapes import Shape, lengths as shape_lengths

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
BASELINE = "torch"  # the backend column of the nn.LSTM rows (cuDNN on GPU, native/oneDNN on CPU)


def impl_label(backend: str, device_type: str) -> str:
    if backend == BASELINE:
        return "nn.LSTM (cuDNN)" if device_type == "cuda" else "nn.LSTM"
    return f"BiLSTM[{backend}]"


def build_baseline(shape: Shape, dtype: str, device: torch.device, seed: int = 0) -> nn.LSTM:
    torch.manual_seed(seed)
    return nn.LSTM(shape.D, shape.H, num_layers=shape.L, bidirectional=shape.N == 2, proj_size=shape.P,
                   device=device, dtype=DTYPES[dtype])


def build_bilstm(baseline: nn.LSTM, backend: str) -> nn.Module:
    """A BiLSTM configured like ``baseline`` and holding a copy of its weights."""
    from bilstm_fast import BiLSTM  # imported late: `bilstm-bench --help` must not need it

    w = baseline.weight_ih_l0
    ours = BiLSTM(baseline.input_size, baseline.hidden_size, num_layers=baseline.num_layers,
                  bidirectional=baseline.bidirectional, proj_size=baseline.proj_size, device=w.device,
                  dtype=w.dtype, backend=backend)
    ours.load_state_dict(baseline.state_dict())
    return ours


@dataclass
class Inputs:
    x: torch.Tensor    # [T, B, D]
    dy: torch.Tensor   # [T, B, N*P]  upstream grad of the output (P = proj_size, or H)
    dh: torch.Tensor   # [L*N, B, P]  upstream grad of h_n (check only)
    dc: torch.Tensor   # [L*N, B, H]  upstream grad of c_n (check only)
    lengths: torch.Tensor | None = None  # [B] int64 on the CPU (packed shapes), else None


def make_inputs(shape: Shape, dtype: str, device: torch.device, seed: int = 1) -> Inputs:
    g = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*size):  # drawn on the CPU so every device gets the same numbers
        return torch.randn(*size, generator=g).to(device=device, dtype=DTYPES[dtype])

    T, B, D, H, LN, P = shape.T, shape.B, shape.D, shape.H, shape.L * shape.N, shape.out_features
    lengths = shape_lengths(shape)
    return Inputs(randn(T, B, D), randn(T, B, shape.N * P), randn(LN, B, P), randn(LN, B, H),
                  None if lengths is None else torch.tensor(lengths, dtype=torch.int64))


def forward(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None):
    """``model(x)`` -> (output [T, B, N*H], (h_n, c_n)); with lengths, through a
    PackedSequence (enforce_sorted=False: the lengths are in no order) and
    back to padded output (zero past each length)."""
    if lengths is None:
        return model(x)
    out, state = model(pack_padded_sequence(x, lengths, enforce_sorted=False))
    return pad_packed_sequence(out, total_length=x.shape[0])[0], state


def _no_range(name: str):
    return contextlib.nullcontext()


def make_step(model: nn.Module, inputs: Inputs, mode: str,
              annotate: Callable[[str], ContextManager] = _no_range) -> Callable[[], None]:
    """One unit of timed work. Inference: forward under no_grad. Training:
    forward + backward of the output with dy, grads of the input and of every
    parameter (reset to None first so no step accumulates into the last).
    ``annotate("forward" | "backward")`` wraps each phase (the profiler's ranges)."""
    lengths = inputs.lengths
    if mode == "inference":
        def step():
            with torch.no_grad(), annotate("forward"):
                forward(model, inputs.x, lengths)
        return step

    x = inputs.x.detach().clone().requires_grad_(True)

    def step():
        x.grad = None
        model.zero_grad(set_to_none=True)
        with annotate("forward"):
            out, _ = forward(model, x, lengths)
        with annotate("backward"):
            out.backward(inputs.dy)
    return step


# ------------------------------------------------------------------- check
# Scaled error: max|got - want| / max|want|, so that weight gradients (sums
# over T·B terms) and outputs (|h| < 1) share one tolerance. fp32/fp64 compare
# with nn.LSTM in the same dtype. fp16/bf16 use the three-way bound of
# The three-way bound (docs/design.md §6): err(ours, fp32 ref) <= 2 * err(nn.LSTM same dtype, fp32 ref) + atol,
# because half-precision error grows with T and fixed tolerances get flaky.
# TOLERANCE is the bound for fp32/fp64 and the atol of the bound for fp16/bf16.
TOLERANCE = {"fp64": 1e-9, "fp32": 2e-4, "fp16": 2e-3, "bf16": 1.6e-2}


@dataclass
class Check:
    ok: bool
    max_err: float      # worst scaled error over all compared tensors
    bound: float        # what it had to stay under
    worst: str          # name of the tensor with the worst error

    @property
    def detail(self) -> str:
        verdict = "<=" if self.ok else ">"
        return f"max scaled err {self.max_err:.2e} ({self.worst}) {verdict} {self.bound:.2e}"


def results_of(model: nn.Module, inputs: Inputs, mode: str, dtype: torch.dtype | None = None
               ) -> dict[str, torch.Tensor]:
    """Every tensor the check compares: output, h_n, c_n and, in training, the
    grads of the input and of every parameter (by nn.LSTM's parameter name)."""
    x = inputs.x if dtype is None else inputs.x.to(dtype)
    if mode == "inference":
        with torch.no_grad():
            out, (h, c) = forward(model, x, inputs.lengths)
        return {"output": out, "h_n": h, "c_n": c}
    x = x.detach().clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    out, (h, c) = forward(model, x, inputs.lengths)
    grads = [g if dtype is None else g.to(dtype) for g in (inputs.dy, inputs.dh, inputs.dc)]
    torch.autograd.backward((out, h, c), grads)
    got = {"output": out.detach(), "h_n": h.detach(), "c_n": c.detach(), "input.grad": x.grad}
    got.update({f"{n}.grad": p.grad for n, p in model.named_parameters()})
    return got


def scaled_errors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> dict[str, float]:
    errs = {}
    for name, w in want.items():
        g = got.get(name)
        if g is None or g.shape != w.shape:
            errs[name] = float("inf")  # a missing grad or a wrong shape is a mismatch too
            continue
        w64, g64 = w.double(), g.double()
        err = ((g64 - w64).abs().max() / w64.abs().max().clamp_min(1e-30)).item()
        errs[name] = err if err == err else float("inf")  # NaN compares False: make it the worst
    return errs


class Oracle:
    """The expected results of one (shape, dtype, mode), computed once and
    shared by every backend's check."""

    def __init__(self, baseline: nn.Module, inputs: Inputs, mode: str, dtype: str):
        self.mode, self.dtype = mode, dtype
        self.want = results_of(baseline, inputs, mode)
        self.baseline_err = 0.0
        if dtype in ("fp16", "bf16"):
            ref32 = copy.deepcopy(baseline).float()
            want32 = results_of(ref32, inputs, mode, dtype=torch.float32)
            self.baseline_err = max(scaled_errors(self.want, want32).values())
            self.want = want32

    def check(self, got: dict[str, torch.Tensor], bound: float | None = None) -> Check:
        """``bound``: a peer's own bound (peers.Peer.tolerance), else the dtype's."""
        errs = scaled_errors(got, self.want)
        worst = max(errs, key=errs.get)
        bound = bound if bound is not None else TOLERANCE[self.dtype] + 2 * self.baseline_err
        return Check(ok=errs[worst] <= bound, max_err=errs[worst], bound=bound, worst=worst)
