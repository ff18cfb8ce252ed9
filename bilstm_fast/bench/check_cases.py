"""What ``bilstm-bench check`` (check.py) and tests/test_gpu.py run and how
they judge it: the correctness cases, their inputs, one forward + backward
through the op or through BiLSTM, and the error bounds -- one implementation,
so the acceptance run and the tests cannot drift apart.

Legend (docs/design.md §0): T steps, B batch, N directions, H hidden size, D input features,
X the dtype under test. Errors are scaled, ``max|got - want| / max|want|``
per tensor (bilstm_fast.bench.workload.scaled_errors), against the
reference backend run in float64 on the same (X-rounded) inputs. The bound
of every tensor is the three-way one,
``err(kernel) <= 2 * err(reference backend in X) + ATOL[X]``, with a tight
ATOL for fp32 (TF32 off: fp32 is fp32) and bilstm-bench's for fp16/bf16.
A plan that forces the CUDA backend's TF32 engine on fp32 (``plans()``
lists them: the dispatcher takes them when torch allows TF32) is judged
with ATOL["tf32"] (10-bit mantissas of both matmul operands; the bound of
tests/test_cuda_emulated.py).

A case the backend does not support (``unsupported_reason``: e.g. the cuda
backend where W_hh does not fit on chip, docs/cuda.md §3) is not run; its
row checks the contract for such a call instead (docs/design.md §3): naming
the backend raises ValueError with the reason, never a silent fallback, and
``backend="auto"`` serves it with another backend.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .workload import DTYPES, TOLERANCE, scaled_errors

ATOL = {"fp32": 2e-5, "tf32": 3e-3, "fp16": TOLERANCE["fp16"], "bf16": TOLERANCE["bf16"]}
OP_OUTPUTS = ("y", "h_n", "c_n", "d_gx", "d_w_hh", "d_h0", "d_c0")


@dataclass(frozen=True)
class OpCase:
    """One call of the recurrence op. ``lengths``: a list, None (all T), or
    "random" (unsorted, drawn in 1..T with both 1 and T present)."""
    T: int
    B: int
    H: int
    N: int = 2
    lengths: object = "random"

    @property
    def label(self) -> str:
        return f"T{self.T} B{self.B} H{self.H} N{self.N}{'' if self.lengths is None else ' len'}"

    def lengths_tensor(self, seed: int = 0) -> Optional[torch.Tensor]:
        if self.lengths is None:
            return None
        if isinstance(self.lengths, (list, tuple)):
            return torch.tensor(list(self.lengths), dtype=torch.int64)
        g = torch.Generator().manual_seed(seed + 17)
        lens = torch.randint(1, self.T + 1, (self.B,), generator=g)
        lens[torch.randperm(self.B, generator=g)[:2]] = torch.tensor([self.T, 1])[: min(2, self.B)]
        return lens


@dataclass(frozen=True)
class ModuleCase:
    """BiLSTM vs nn.LSTM (float64, CPU) on a PackedSequence of unsorted lengths."""
    T: int
    B: int
    D: int
    H: int
    L: int = 2

    @property
    def label(self) -> str:
        return f"BiLSTM T{self.T} B{self.B} D{self.D} H{self.H} L{self.L} packed"


# Correctness cases of the GPU run. Together: H 17 .. 1040 (> 1024, not a
# power of two), B 1 .. 256 (one batch chunk and several), T 1 .. 33, N 1
# and 2, unsorted lengths with 1 and T, no lengths. H 1040 is past the cuda
# backend's fp32 limit on every GPU of docs/cuda.md §3 (and its fp16/bf16
# limit on an A100): those rows check the refusal. The H values are those the timing sweep and the other
# stages use too, so the Triton compile stage warms one set of kernels.
GPU_CASES = (
    OpCase(1, 1, 17, 2, None),
    OpCase(33, 3, 17, 1, [33, 1, 20]),
    OpCase(16, 256, 128),
    OpCase(24, 5, 256, 2, [24, 3, 17, 1, 24]),
    OpCase(12, 64, 512),
    OpCase(8, 2, 1040, 2, [8, 5]),
    OpCase(6, 130, 1040, 2, None),
)
GPU_MODULE_CASE = ModuleCase(20, 9, 40, 256, 2)
# --full adds larger H, B and T (the largest are past the cuda backend's
# on-chip limit: refusal rows there, the triton backend runs them).
FULL_CASES = GPU_CASES + (
    OpCase(64, 256, 256),
    OpCase(128, 32, 512, 1),
    OpCase(16, 64, 2048),
    OpCase(4, 3, 4096, 2, [4, 1, 3]),
    OpCase(3, 2, 12288, 2, [3, 1]),
)
# --emulate: CPU threads (emulated CUDA) and Triton's interpreter, ~10 ms
# per program-step: tiny, but on the emulated CUDA device (8 SMs, 48 KB)
# one block per direction (H 8) and several (H 9, 17: 2-3; H 104: 4 for
# fp16/bf16), W_hh in registers and in shared memory, every engine through
# plans() (fp32: fma and tf32); fp32 H 104 does not fit on chip there (the
# refusal row); both Triton paths (H <= 64 resident, 104 streamed) run.
EMU_CASES = (
    OpCase(1, 1, 8, 2, None),
    OpCase(3, 3, 9, 2, [3, 1, 2]),
    OpCase(2, 2, 17, 1, [1, 2]),
    OpCase(2, 2, 104, 2, [2, 1]),
)
EMU_MODULE_CASE = ModuleCase(3, 3, 5, 9, 2)
# The H at which the environment stage asks each GPU backend whether it can
# run fp32 / fp16 / bf16 at all: a common size on a GPU; on the emulated
# CUDA device (48 KB of shared memory) one whose W_hh fits, split over blocks.
PROBE_H = 256
EMU_PROBE_H = 9


# ------------------------------------------------------------------- inputs
def op_inputs(case: OpCase, device, seed: int = 0) -> dict:
    """float64 inputs and cotangents of the op on ``device`` (drawn on the
    CPU, so every device gets the same numbers): gx [T, B, N, 4H],
    w_hh [N, 4H, H], h0 / c0 [N, B, H], dy [T, B, N, H], dh_n / dc_n [N, B, H],
    lengths [B] int64 or None."""
    T, B, N, H = case.T, case.B, case.N, case.H
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(device)
    lengths = case.lengths_tensor(seed)
    return dict(gx=r(T, B, N, 4 * H), w_hh=r(N, 4 * H, H, scale=H ** -0.5), h0=r(N, B, H, scale=0.5),
                c0=r(N, B, H, scale=0.5), dy=r(T, B, N, H), dh_n=r(N, B, H), dc_n=r(N, B, H),
                lengths=None if lengths is None else lengths.to(device))


def cast(x: dict, dtype: torch.dtype, upcast: Optional[torch.dtype] = None) -> dict:
    """x's float tensors rounded to ``dtype`` (then cast to ``upcast``, e.g.
    float64 for the reference of exactly those rounded values)."""
    out = {}
    for k, v in x.items():
        if v is not None and v.is_floating_point():
            v = v.to(dtype)
            if upcast is not None:
                v = v.to(upcast)
        out[k] = v
    return out


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------- runs
def run_op(x: dict, backend: str) -> dict:
    """Forward + backward through ``bilstm_fast.lstm_recurrence`` (the custom
    op, autograd, the dW_hh GEMMs) -> {y, h_n, c_n, d_gx, d_w_hh, d_h0, d_c0}."""
    from bilstm_fast.ops import lstm_recurrence

    leaves = {k: x[k].detach().clone().requires_grad_() for k in ("gx", "w_hh", "h0", "c0")}
    y, h_n, c_n = lstm_recurrence(leaves["gx"], leaves["w_hh"], leaves["h0"], leaves["c0"],
                                  lengths=x["lengths"], backend=backend)
    torch.autograd.backward((y, h_n, c_n), (x["dy"], x["dh_n"], x["dc_n"]))
    out = {"y": y.detach(), "h_n": h_n.detach(), "c_n": c_n.detach()}
    out.update({f"d_{k}": v.grad for k, v in leaves.items()})
    return out


def run_kernels(mod, x: dict, plan=None) -> dict:
    """One backend module's forward (keeping the workspace) and backward,
    called directly (no op, no GEMMs): what the kernels alone produce."""
    y, h_n, c_n, gates, cells = mod.forward(x["gx"], x["w_hh"], None, x["h0"], x["c0"], x["lengths"], True, plan)
    dgx, dh0, dc0, _ = mod.backward(x["dy"], x["dh_n"], x["dc_n"], x["w_hh"], None, x["h0"], x["c0"],
                                    x["lengths"], y, gates, cells, plan)
    return {"y": y, "h_n": h_n, "c_n": c_n, "dgx": dgx, "dh0": dh0, "dc0": dc0}


def backend_name(backend: str, plan: Optional[str]) -> str:
    return backend if not plan else f"{backend}:{plan}"


def plans_of(mod, spec) -> tuple[list[str], str]:
    """(the plan texts to force for ``spec``, a note). The backend's
    ``plans(spec)``; a backend without one gets the dispatcher's own
    choice only, and the note says so."""
    fn = getattr(mod, "plans", None)
    if fn is None:
        return [], f"{mod.NAME}: no plans() in {mod.__name__}: only the dispatcher's own choice was run"
    return list(fn(spec)), ""


def plan_used(backend: str, mod, spec, B: int, plan_text: Optional[str]) -> str:
    """What a call actually runs (for the report): the CUDA launcher's plan of
    forward / backward, or the Triton config."""
    try:
        plan = mod.parse_plan(plan_text) if plan_text else None
        if backend == "cuda":
            device = "cuda" if spec.device == "cuda" else "cpu"
            f, b = (mod.plan_for(k, spec.N, B, spec.H, spec.dtype, device, plan) for k in (0, 1))
            return "; ".join(
                f"{kind} {p['engine']} {p['blocks']} blocks x {p['units']} units, {p['warps']} warps, "
                f"W_hh cols in regs {p['reg_cols']}/{p['kpad']}, chunk {p['batch_tile']}"
                for kind, p in (("fwd", f), ("bwd", b)))
        if backend == "triton":
            from bilstm_fast.ops import triton_plan
            cfg = plan or triton_plan.kernel_config(
                spec.H, spec.dtype, triton_plan.smem_bytes_of(torch.device(spec.device)),
                triton_plan.dot_precision(spec.dtype))
            return (f"{'resident' if cfg.resident else 'streamed'} BH={cfg.block_h} BB={cfg.block_b} "
                    f"warps={cfg.num_warps}")
    except Exception as e:  # a description only: never the reason a case fails
        return f"(plan unknown: {type(e).__name__}: {e})"
    return ""


# ---------------------------------------------------------------- judgement
@dataclass
class Judgement:
    ok: bool
    worst: str            # tensor with the largest err / bound
    err: float            # its error
    bound: float          # its bound
    errs: dict            # every tensor's error
    bounds: dict

    @property
    def detail(self) -> str:
        return (f"{self.worst}: err {self.err:.2e} {'<=' if self.ok else '>'} bound {self.bound:.2e}")


def bound_key(backend: str, dtype: str, plan: Optional[str]) -> str:
    """The ATOL key of a run: ``dtype``, or "tf32" for fp32 with a plan text
    that forces the cuda backend's TF32 engine."""
    if dtype == "fp32" and backend == "cuda" and plan:
        from bilstm_fast.ops import cuda_lstm
        if cuda_lstm.parse_plan(plan).engine == "tf32":
            return "tf32"
    return dtype


def judge(got: dict, ref64: dict, ref_x: dict, dtype: str, key: Optional[str] = None) -> Judgement:
    """Every tensor of ``got`` against the float64 reference, within
    2 * (the reference backend's own error in X) + ATOL[key or X]."""
    errs = scaled_errors(got, ref64)
    own = scaled_errors(ref_x, ref64)
    bounds = {k: 2 * own[k] + ATOL[key or dtype] for k in errs}
    worst = max(errs, key=lambda k: errs[k] / bounds[k])
    ok = all(errs[k] <= bounds[k] for k in errs)
    return Judgement(ok, worst, errs[worst], bounds[worst], errs, bounds)


def padding_error(got: dict, lengths: Optional[torch.Tensor]) -> Optional[str]:
    """None when y and dgx (d_gx) are exactly 0 at every t >= L_b, else what is not."""
    if lengths is None:
        return None
    for name in ("y", "d_gx", "dgx"):
        t = got.get(name)
        if t is None:
            continue
        T = t.shape[0]
        pad = torch.arange(T, device=t.device)[:, None] >= lengths.to(t.device)[None, :]   # [T, B]
        bad = t[pad].abs().max().item() if pad.any() else 0.0
        if bad != 0.0:
            return f"{name} is not zero at t >= L_b (max |value| {bad:.3e})"
    return None


def refusal(backend: str, case: OpCase, dtype: str, device, seed: int = 0) -> Optional[dict]:
    """None when ``backend`` supports the case; else the result row of the
    contract for a call it cannot run (docs/design.md §3): ``backend=<name>``
    raises ValueError carrying the reason (never a silent fallback), and
    ``backend="auto"`` resolves to another backend. {ok, plan="unsupported",
    err=None, bound=None, detail, seconds, errs={}}."""
    from bilstm_fast.ops import backends

    X = DTYPES[dtype]
    dev = torch.device(device).type
    spec = backends.CallSpec(dev, X, case.N, case.H, case.H, False, case.lengths is not None)
    why = backends.get(backend).unsupported_reason(spec)
    if why is None:
        return None
    t0 = time.perf_counter()
    problems = []
    try:
        run_op(cast(op_inputs(case, device, seed), X), backend)
        problems.append(f"backend={backend!r} ran a call its unsupported_reason refuses")
    except ValueError as e:
        if why not in str(e):
            problems.append(f"backend={backend!r} raised ValueError without the reason: {str(e)[:200]}")
    except Exception as e:  # noqa: BLE001 -- the wrong exception class is the finding
        problems.append(f"backend={backend!r} raised {type(e).__name__} instead of ValueError: {str(e)[:200]}")
    auto = backends.resolve_backend("auto", dev, X, case.N, case.H, case.H, False, case.lengths is not None)
    if auto == backend:
        problems.append(f"backend='auto' resolves to {backend!r} although it refuses the call")
    detail = "; ".join(problems) if problems else (
        f"not supported by {backend} here ({why}): backend={backend!r} refuses it with ValueError, "
        f"backend='auto' takes {auto}")
    return dict(ok=not problems, plan="unsupported", worst="", err=None, bound=None, detail=detail,
                seconds=round(time.perf_counter() - t0, 3), errs={})


def check_op_case(backend: str, case: OpCase, dtype: str, device, plans: Sequence[Optional[str]],
                  seed: int = 0, refs: Optional[tuple] = None) -> list[dict]:
    """One op case in one dtype: the reference in float64 and in X once, then
    every plan (None = the dispatcher's choice). One result dict per plan:
    {ok, plan, worst, err, bound, detail, seconds}; a case the backend does
    not support gives its one refusal row instead (``refusal``)."""
    X = DTYPES[dtype]
    refused = refusal(backend, case, dtype, device, seed)
    if refused is not None:
        return [refused]
    x = op_inputs(case, device, seed)
    ref64, ref_x = refs if refs is not None else (run_op(cast(x, X, torch.float64), "reference"),
                                                  run_op(cast(x, X), "reference"))
    rows = []
    for plan in plans:
        t0 = time.perf_counter()
        got = run_op(cast(x, X), backend_name(backend, plan))
        sync(device)
        seconds = time.perf_counter() - t0
        j = judge(got, ref64, ref_x, dtype, bound_key(backend, dtype, plan))
        pad = padding_error(got, x["lengths"])
        rows.append(dict(ok=j.ok and pad is None, plan=plan or "auto", worst=j.worst, err=j.err,
                         bound=j.bound, detail=pad or j.detail, seconds=round(seconds, 3),
                         errs={k: float(f"{v:.3e}") for k, v in j.errs.items()}))
    return rows


# ------------------------------------------------------------ module case
def module_inputs(case: ModuleCase, seed: int = 0):
    """(x [T, B, D] float64 CPU, lengths [B] unsorted with T and 1, dy, dh, dc)."""
    g = torch.Generator().manual_seed(seed + 5)
    T, B, D, H, L = case.T, case.B, case.D, case.H, case.L
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0], lengths[-1] = 1, T
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return r(T, B, D), lengths, r(T, B, 2 * H), r(2 * L, B, H), r(2 * L, B, H)


def run_module(model, x, lengths, dy, dh, dc) -> dict:
    """A (Bi)LSTM on pack_padded_sequence(x, lengths, enforce_sorted=False):
    output (padded back to T), h_n, c_n and the grads of x and every parameter."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    x = x.detach().clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    out, (h, c) = model(pack_padded_sequence(x, lengths, enforce_sorted=False))
    out, _ = pad_packed_sequence(out, total_length=x.shape[0])
    torch.autograd.backward((out, h, c), (dy, dh, dc))
    got = {"output": out.detach(), "h_n": h.detach(), "c_n": c.detach(), "input.grad": x.grad}
    got.update({f"{n}.grad": p.grad for n, p in model.named_parameters()})
    return got


def check_module_case(backend: str, case: ModuleCase, dtype: str, device, seed: int = 0) -> dict:
    """BiLSTM(backend) in X on ``device`` against nn.LSTM in float64 on the
    CPU with the same (X-rounded) weights and inputs, bound by
    BiLSTM(reference) in X."""
    from torch import nn

    from bilstm_fast import BiLSTM

    X = DTYPES[dtype]
    torch.manual_seed(seed)
    x, lengths, dy, dh, dc = module_inputs(case, seed)
    ours = BiLSTM(case.D, case.H, num_layers=case.L, device=device, dtype=X, backend=backend)
    ref = BiLSTM(case.D, case.H, num_layers=case.L, device=device, dtype=X, backend="reference")
    ref.load_state_dict(ours.state_dict())
    base = nn.LSTM(case.D, case.H, num_layers=case.L, bidirectional=True, dtype=torch.float64)
    base.load_state_dict({k: v.double().cpu() for k, v in ours.state_dict().items()})
    t0 = time.perf_counter()
    on = lambda *t: [v.to(device=device, dtype=X) for v in t]  # noqa: E731
    got = run_module(ours, *on(x), lengths, *on(dy, dh, dc))
    sync(device)
    seconds = time.perf_counter() - t0
    ref_x = run_module(ref, *on(x), lengths, *on(dy, dh, dc))
    xr = [v.to(X).double() for v in (x, dy, dh, dc)]
    ref64 = run_module(base, xr[0], lengths, *xr[1:])
    j = judge(got, ref64, ref_x, dtype)
    return dict(ok=j.ok, plan="auto", worst=j.worst, err=j.err, bound=j.bound, detail=j.detail,
                seconds=round(seconds, 3), errs={k: float(f"{v:.3e}") for k, v in j.errs.items()})
