"""Backend registry: which implementations of the recurrence op exist, which
this machine can run, and which one ``backend="auto"`` picks.

Every backend is a module that implements the op contract of docs/design.md §3
(legend, docs/design.md §0: T time steps, B batch, N directions (1 or 2),
H hidden size, P = H, or proj_size when a projection is used; X is the input
dtype and A the accumulation dtype: float64 for float64 input, else float32)::

    NAME: str
    unavailable_reason() -> str | None
        None when this machine can run the backend, else why not (no GPU,
        extension not built, ...). Cheap; may be called often.
    unsupported_reason(spec: CallSpec) -> str | None
        None when the backend supports a call of this kind (device, dtype,
        sizes, projection), else a sentence saying what it does not support.
        It sees only the static description of the call (no tensors, no T or
        B), so the choice is a compile-time constant under torch.compile and
        never depends on the sequence length or batch size.
    parse_plan(text: str) -> plan
        A backend's launch plan from the text after the colon of a backend
        name such as "cuda:blocks=2" (ValueError for a bad one; backends
        without plan options raise for any text).
    forward(gx, w_hh, w_hr, h0, c0, lengths, keep_for_backward, plan=None) -> y, h_n, c_n, gates, cells
        gx      [T, B, N, 4H]  X  input pre-activations, both biases included
                               (or A where the backend's gemms.linear(workspace=True) returns A)
        w_hh    [N, 4H, P]     X  recurrent weights per direction
        w_hr    [N, P, H]      X  projection weights, or None (no projection)
        h0      [N, B, P]      X
        c0      [N, B, H]      X
        lengths [B] int64 on gx's device, values in 1..T, any order; or None (all T)
        keep_for_backward bool: whether to return the workspace for backward
        plan    the backend's plan object (parse_plan), or None: the backend chooses
        y       [T, B, N, P]   X  hidden output per time step, 0 where t >= L_b
        h_n     [N, B, P]      X  direction 0's state after t = L_b-1, direction 1's after t = 0
        c_n     [N, B, H]      X
        gates   [T, B, N, 4H]  A  activated gates (i, f, g, o) at each valid t    } shape (0,)
        cells      [T, B, N, H]   A  cell state after step t, for each valid t       } if not keep_for_backward
    backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, gates, cells, plan=None) -> dgx, dh0, dc0, dw_hr
        dy [T, B, N, P], dh_n [N, B, P], dc_n [N, B, H] (X); the rest as forward produced it
        dgx [T, B, N, 4H] X, zero where t >= L_b; dh0 [N, B, P], dc0 [N, B, H] X;
        dw_hr [N, P, H] X, or None without projection.

    gemms (optional): a module with the layer's other GEMMs on the backend's
        own kernels, for the calls it supports (same dtypes and device):
        linear(x [M, D], w [G, D], bias [G] or None, workspace=False) -> [M, G]
            the projection; workspace=True: the result may live in a buffer
            the backend reuses (the layer op's gx, dead when the op returns),
            in X or in A -- whichever the backend's forward reads
        linear_rows(x, w, bias, rows) (optional) -> [M, G] with only rows
            ``rows`` computed: the projection at t < lengths[b] only
        matmul(a, b, trans_a=False) -> a @ b or a^T @ b              its backward
        recurrent_weight_grad(dgx, y, h0, lengths) -> dW_hh [N, 4H, H]
        Without it the op uses torch's GEMMs (cuBLAS, MKL / oneDNN).

All tensors reach a backend contiguous. Values of ``gates``/``cells`` at t >= L_b
are unspecified and never read. ``dw_hh`` is not a backend's job: the op
computes it with GEMMs over strided views (ops/recurrence.py), or with the
backend's ``gemms``.
"""
from __future__ import annotations

import functools
from types import ModuleType
from typing import NamedTuple

import torch

from . import native


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """A, the accumulation / cell-state / workspace dtype for input dtype X."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class CallSpec(NamedTuple):
    """What a backend may look at to decide whether it supports a call."""
    device: str          # "cpu", "cuda", ...
    dtype: torch.dtype   # X
    N: int               # directions, 1 or 2
    H: int               # hidden size
    P: int               # proj_size, or H
    proj: bool           # w_hr given
    lengths: bool        # per-sequence lengths given

# name -> module implementing the contract. Order within a device's list is
# the preference of backend="auto" (fastest first); "reference" is last.
_MODULES = {
    "reference": "bilstm_fast.ops.reference",
    "triton": "bilstm_fast.ops.triton_lstm",
    "cuda": "bilstm_fast.ops.cuda_lstm",
    "cpu": "bilstm_fast.ops.cpu_lstm",
}
_AUTO_ORDER = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}

def _load(name: str) -> ModuleType | str:
    """The backend's module, or a string saying why it cannot be imported."""
    return native.import_or_reason(_MODULES[name])


def _unavailable(name: str) -> str | None:
    """None if this machine can run backend ``name``, else the reason."""
    mod = _load(name)
    return mod if isinstance(mod, str) else mod.unavailable_reason()


def backend_status() -> dict[str, str | None]:
    """Every known backend -> None if this machine can run it, else the reason."""
    return {name: _unavailable(name) for name in _MODULES}


def available_backends() -> list[str]:
    """Names of the backends this machine can run (``backend_status()`` says why
    the others cannot)."""
    return [name for name, why in backend_status().items() if why is None]


def _status_summary() -> str:
    return "; ".join(f"{n}: {'available' if why is None else why}"
                     for n, why in backend_status().items())


def split_name(backend: str) -> tuple[str, str]:
    """"cuda:blocks=2" -> ("cuda", "blocks=2"); "cpu" -> ("cpu", "")."""
    name, _, plan = backend.partition(":")
    return name.strip(), plan.strip()


def resolve_backend(backend: str, *spec_fields) -> str:
    """The concrete backend that will run a call described by
    ``CallSpec(*spec_fields)`` (plain constants, as Dynamo passes them): a
    name, or "name:plan" when the caller forced a launch plan.

    A constant for torch.compile (Dynamo runs it once while tracing, never
    traces into it). Not cached: availability can depend on environment
    variables (BILSTM_FAST_CUDA_EMULATE) that may change.

    ``backend="auto"`` takes the first backend in the device's preference
    order that is available and supports the call; "reference" supports
    everything, so auto never fails. An explicitly named backend that is
    unknown, unavailable or does not support the call is an error (never a
    silent fallback), and so is a plan it cannot parse.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, got {type(backend).__name__}")
    spec = CallSpec(*spec_fields)
    name, plan = split_name(backend)
    if name == "auto":
        if plan:
            raise ValueError(f"backend {backend!r}: a plan needs a named backend, e.g. 'cuda:{plan}'")
        for name in _AUTO_ORDER.get(spec.device, ("reference",)):
            if _unavailable(name) is None and _load(name).unsupported_reason(spec) is None:
                return name
        return "reference"
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; expected 'auto' or one of "
                         f"{list(_MODULES)} ({_status_summary()})")
    why = _unavailable(name)
    if why is not None:
        raise RuntimeError(f"backend {name!r} is not available on this machine: {why}. "
                           f"Available: {available_backends()}")
    why = _load(name).unsupported_reason(spec)
    if why is not None:
        raise ValueError(f"backend {name!r} does not support this call: {why}. "
                         "Use backend='auto' or 'reference'.")
    if plan:
        parse(f"{name}:{plan}")   # a bad plan fails here, before any work
        return f"{name}:{plan}"
    return name


# = torch.compiler.assume_constant_result(resolve_backend), which only sets this
# attribute but imports torch._dynamo to do so: 1.4 s added to `import
# bilstm_fast` (measured with -X importtime). tests/test_op.py's fullgraph
# compile test fails if Dynamo stops honouring it.
resolve_backend._dynamo_marked_constant = True


def get(name: str) -> ModuleType:
    """The module of an already-resolved backend name."""
    mod = _load(name)
    if isinstance(mod, str):
        raise RuntimeError(mod)
    return mod


@functools.lru_cache(maxsize=64)
def parse(backend: str):
    """A resolved backend ("name" or "name:plan") -> (module, plan object or None)."""
    name, plan = split_name(backend)
    mod = get(name)
    return mod, (mod.parse_plan(plan) if plan else None)
