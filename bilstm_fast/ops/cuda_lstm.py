"""CUDA C++ backend of the recurrence op (kernels: csrc/cuda/lstm.cu, design:
docs/cuda.md; contract: backends.py).

Legend: T steps, B batch, N directions (1 or 2), H hidden size, G = 4H,
X input dtype (fp32 / fp16 / bf16), f32 accumulation, cell state, gates/cells.

One persistent launch runs all T steps of both directions (forward), one the
backward: each direction on its own SMs, W_hh resident on chip, h_t (dh
partials in backward) exchanged through L2 in X, one barrier per step. This
file only plans, allocates the outputs and buffers (on the tensors' device,
with torch: nothing is allocated inside the binding, so the op is
capturable in a CUDA graph) and calls: the compiled module
(bilstm_fast._cuda, which never links torch) checks every tensor once at its
boundary (csrc/common/tensor_arg.h) and launches on the caller's current
stream with no host sync. The tensors are passed as the objects themselves
and held by this frame for the call.

Emulation: with ``BILSTM_FAST_CUDA_EMULATE=1`` in the environment (read at
each call, so tests can set it with monkeypatch), ``backend="cuda"`` runs the
same kernel source compiled as plain C++ (bilstm_fast._cuda_emu, csrc/cuda/emu.h)
on *CPU* tensors, one OS thread per CUDA thread: the CUDA analogue of
TRITON_INTERPRET. It then accepts CPU tensors only; without it, CUDA tensors only.

Plans: the launcher's plan (``make_plan`` in lstm.cu) is the engine (the
per-step matmul: f16 tensor-core tiles for fp16 and bf16, tf32 or exact
fma for fp32), blocks per direction, warps per block, the batch chunk
and the W_hh tiles per warp kept in registers. A caller can force any of
them with a ``Plan``, passed as an argument (``forward(...,
plan=Plan(blocks=2))``) or in the backend name
(``backend="cuda:engine=fma,blocks=2"``, parsed by ``parse_plan``);
``plan_for`` says what a call would run and ``plans`` lists every plan the
dispatcher can choose for a ``backends.CallSpec``. For fp32 the engine
follows ``torch.backends.cuda.matmul.allow_tf32`` at the time of the call
(tf32 when True, exact fma otherwise), like torch's own matmuls.

``backend="auto"`` on CUDA tensors prefers this backend whenever it is
available and ``unsupported_reason`` is None (fp32/fp16/bf16, no proj_size,
W_hh fits on chip); the rest goes to the next backend (triton, then reference).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import torch

from . import cuda_compat, native

NAME = "cuda"
EMULATE_ENV = "BILSTM_FAST_CUDA_EMULATE"

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# csrc/cuda/lstm_api.h Engine codes by name (tests check this mirror against the module's ``engines``).
ENGINES = {"auto": 0, "f16": 1, "tf32": 2, "fma": 3}
# The kernels' batch chunk never exceeds this many rows (lstm_api.h engine_shape: n * max_nt).
_MAX_BATCH_TILE = 64


@dataclasses.dataclass(frozen=True)
class Plan:
    """A launch plan forced by the caller; "auto" / 0 / -1 leaves a field to the launcher."""
    engine: str = "auto"   # "f16" (fp16/bf16), "tf32", "fma" (fp32)
    blocks: int = 0        # blocks per direction (each owns a multiple of 8 hidden units)
    warps: int = 0         # warps per block (at most 8)
    batch_tile: int = 0    # at most this many batch rows per chunk (rounded down to the engine's tile)
    reg_tiles: int = -1    # at most this many W_hh tiles per warp in registers (0: all in shared memory)

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"plan: engine must be one of {list(ENGINES)}, got {self.engine!r}")
        for f in ("blocks", "warps", "batch_tile"):
            if getattr(self, f) < 0:
                raise ValueError(f"plan: {f} must be >= 0 (0 = automatic), got {getattr(self, f)}")
        if self.reg_tiles < -1:
            raise ValueError(f"plan: reg_tiles must be >= -1 (-1 = automatic), got {self.reg_tiles}")

    def options(self, tf32: bool) -> dict:
        """The keyword arguments of the compiled module's forward/backward/plan."""
        return dict(engine=ENGINES[self.engine], blocks=self.blocks, warps=self.warps,
                    batch_tile=self.batch_tile, reg_tiles=self.reg_tiles, tf32=tf32)

    def text(self) -> str:
        """The backend-name form: parse_plan(plan.text()) == plan."""
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(Plan))


def parse_plan(text: str) -> Plan:
    """"engine=fma,blocks=2,warps=2,batch_tile=8,reg_tiles=0" (any subset) -> Plan."""
    fields = {f.name for f in dataclasses.fields(Plan)}
    values = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"cuda plan: expected key=value with key in {sorted(fields)}, got {item!r}")
        try:
            values[key] = value if key == "engine" else int(value)
        except ValueError:
            raise ValueError(f"cuda plan: {key} must be an integer, got {value!r}") from None
    return Plan(**values)


def _tf32_allowed() -> bool:
    """Whether fp32 calls may use TF32 tensor cores (torch's matmul switch, read at each call)."""
    return bool(torch.backends.cuda.matmul.allow_tf32)


_status_cache: dict[str, Optional[str]] = {}


def emulating() -> bool:
    """True when BILSTM_FAST_CUDA_EMULATE asks for the CPU emulation."""
    return os.environ.get(EMULATE_ENV, "0") not in ("", "0")


def _module_name() -> str:
    return "_cuda_emu" if emulating() else "_cuda"


def _module():
    return native.require(_module_name())


def unavailable_reason() -> Optional[str]:
    """None when this machine can run the backend: the module loads and, for
    the real build, the driver runs its CUDA runtime and at least one visible
    device can run its kernels (cuda_compat.py has the rules; the reason names
    the driver and runtime versions when they do not match). Cached."""
    name = _module_name()
    if name not in _status_cache:
        mod = native.load(name)
        if isinstance(mod, str):
            why = mod
            if name == "_cuda":
                why += (" (it is built only when nvcc is found at build time; "
                        f"{EMULATE_ENV}=1 runs the kernels emulated on CPU tensors)")
        elif name == "_cuda_emu":
            why = None
        else:
            why = _native_reason(mod)
        _status_cache[name] = why
    return _status_cache[name]


def _native_reason(mod) -> Optional[str]:
    """unavailable_reason of the real build ``mod`` (bilstm_fast._cuda)."""
    st, info = mod.device_status(), mod.info()
    if st["code"] != 0 or st["count"] == 0:
        why = cuda_compat.no_device_reason(st, info.get("cuda_version"), cuda_compat.driver_facts(),
                                           cuda_compat.torch_cuda_version())
        return f"{why} (set {EMULATE_ENV}=1 to run the CUDA kernels emulated on CPU tensors)"
    reasons = []
    for i in range(st["count"]):
        dev = cuda_compat.device_facts(i)
        reasons.append(f"device {i}: no facts from the driver API" if dev is None
                       else cuda_compat.cuda_arch_reason(dev, info["archs"]))
    if all(reasons):
        return "no CUDA device can run the cuda backend: " + "; ".join(reasons)
    return None


def device_reason(index: int) -> Optional[str]:
    """Why CUDA device ``index`` cannot run the real build's kernels
    (compute capability, cooperative launch), or None."""
    dev = cuda_compat.device_facts(index)
    if dev is None:
        return f"no facts about CUDA device {index} from the driver API"
    return cuda_compat.cuda_arch_reason(dev, _module().info()["archs"])


def unsupported_reason(spec) -> Optional[str]:
    """``spec`` is a backends.CallSpec (device, dtype, N, H, P, proj, lengths).
    On CUDA tensors it also checks the current device (compute capability,
    cooperative launch), so that backend="auto" passes such a device on to
    the next backend instead of failing at the launch."""
    device, dtype, N, H, proj = spec.device, spec.dtype, spec.N, spec.H, spec.proj
    if proj:
        return ("proj_size (w_hr) is not supported by the cuda backend; "
                "backend='auto' serves it with the next backend (triton, then reference)")
    if emulating():
        if device != "cpu":
            return (f"{EMULATE_ENV}=1: the cuda backend runs emulated on CPU tensors only "
                    f"(got {device} tensors); unset it to run on the GPU")
    elif device != "cuda":
        return (f"the cuda backend needs CUDA tensors (got {device}); set {EMULATE_ENV}=1 "
                "to run its kernels emulated on CPU tensors")
    if dtype not in _DTYPES:
        return (f"dtype {dtype} is not supported by the cuda backend (float32, float16, "
                "bfloat16 only); backend='auto' serves it with the reference backend")
    if N not in (1, 2):
        return f"N must be 1 or 2 directions, got {N}"
    if unavailable_reason() is not None:
        return None  # nothing more to ask a module that cannot run; resolve_backend reports it
    if device == "cuda":
        why = device_reason(torch.cuda.current_device())
        if why is not None:
            return why
    for kind in (0, 1):
        try:
            plan_for(kind, N, 1, H, dtype, "cuda" if device == "cuda" else "cpu")
        except RuntimeError as e:  # H too large even for the streaming path
            return str(e)
    return None


def _device_index(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    return device.index if device.index is not None else torch.cuda.current_device()


def _plan(mod, kind: int, N: int, B: int, H: int, dtype: torch.dtype, device, plan: Optional[Plan],
          tf32: bool) -> dict:
    sms, smem = mod.device_limits(_device_index(torch.device(device)))
    d = mod.plan(kind, N, B, H, native.DTYPE_CODES[dtype], sms, smem, **(plan or Plan()).options(tf32))
    d["text"] = Plan(engine=d["engine"], blocks=d["blocks"], warps=d["warps"], batch_tile=d["batch_tile"],
                     reg_tiles=d["reg_tiles"]).text()
    return d


def plan_for(kind: int, N: int, B: int, H: int, dtype: torch.dtype, device,
             plan: Optional[Plan] = None) -> dict:
    """The launch plan a forward (kind 0) or backward (kind 1) call would run
    on ``device``'s limits: engine, blocks, units, warps, threads, batch_tile,
    reg_tiles, reg_cols, kpad, ksplit, smem_bytes, exchange_elems,
    state_floats, why, and ``text``: the plan text that forces exactly this
    plan. RuntimeError when nothing fits (W_hh too large for the chip)."""
    return _plan(_module(), kind, N, B, H, dtype, device, plan, _tf32_allowed())


def plans(spec) -> list[str]:
    """Every distinct plan text the dispatcher can choose for calls described
    by ``spec`` (a backends.CallSpec) on the current device (the emulated one
    under BILSTM_FAST_CUDA_EMULATE), forward and backward, any T and B, TF32
    allowed or not: what a GPU check forces one by one. Each text is valid for
    every B and both kernels (batch_tile and reg_tiles are upper bounds). []
    when the backend cannot run here (no device) or does not support the call."""
    if unavailable_reason() is not None or unsupported_reason(spec) is not None:
        return []
    device = "cuda" if spec.device == "cuda" else "cpu"
    mod = _module()
    tf32s = (False, True) if spec.dtype == torch.float32 else (False,)
    # The plan depends on B only through the batch chunk: every B up to one
    # past the largest chunk reaches every choice.
    texts = {_plan(mod, kind, spec.N, B, spec.H, spec.dtype, device, None, tf32)["text"]
             for kind in (0, 1) for tf32 in tf32s for B in range(1, _MAX_BATCH_TILE + 2)}
    return sorted(texts)


def _stream(device: torch.device) -> int:
    """The caller's current stream on ``device`` (0 in emulation)."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


def _buffers(mod, kind: int, like: torch.Tensor, N: int, B: int, H: int, plan: Optional[Plan], tf32: bool):
    """exchange [exchange_elems] X, state [state_floats] f32 and barrier [N * 32]
    int32 zeros for a call, sized by its plan (the binding checks them against it)."""
    d = _plan(mod, kind, N, B, H, like.dtype, like.device, plan, tf32)
    exchange = like.new_empty(d["exchange_elems"])       # fully written before it is read
    state = like.new_empty(d["state_floats"], dtype=torch.float32)
    barrier = torch.zeros(N * 32, dtype=torch.int32, device=like.device)
    return exchange, state, barrier


# ----------------------------------------------------------------- contract
def forward(gx, w_hh, w_hr, h0, c0, lengths, keep_for_backward, plan: Optional[Plan] = None):
    """-> y [T, B, N, H], h_n, c_n [N, B, H] (X); gates [T, B, N, 4H], cells [T, B, N, H] (f32)
    when keep_for_backward, else empty."""
    if w_hr is not None:
        raise ValueError("cuda backend: proj_size (w_hr) is not supported")
    mod = _module()
    T, B, N, G = gx.shape
    H = G // 4
    f32 = torch.float32
    tf32 = _tf32_allowed()
    y = gx.new_empty(T, B, N, H)                             # every element written by the kernel
    h_n, c_n = torch.empty_like(h0), torch.empty_like(c0)
    gates = gx.new_empty((T, B, N, G) if keep_for_backward else (0,), dtype=f32)
    cells = gx.new_empty((T, B, N, H) if keep_for_backward else (0,), dtype=f32)
    exchange, state, barrier = _buffers(mod, 0, gx, N, B, H, plan, tf32)
    mod.forward(gx, w_hh, h0, c0, lengths, y, h_n, c_n, gates if keep_for_backward else None,
                cells if keep_for_backward else None, exchange, state, barrier, _stream(gx.device),
                **(plan or Plan()).options(tf32))
    return y, h_n, c_n, gates, cells


def backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, gates, cells, plan: Optional[Plan] = None):
    """-> dgx [T, B, N, 4H] (0 where t >= L_b), dh0, dc0 [N, B, H] (X), None (no dw_hr)."""
    if w_hr is not None:
        raise ValueError("cuda backend: proj_size (w_hr) is not supported")
    mod = _module()
    T, B, N, G = gates.shape
    H = G // 4
    tf32 = _tf32_allowed()
    dgx = dy.new_empty(T, B, N, G)                           # every element written by the kernel
    dh0, dc0 = torch.empty_like(dh_n), torch.empty_like(dc_n)
    exchange, state, barrier = _buffers(mod, 1, dy, N, B, H, plan, tf32)
    mod.backward(dy, dh_n, dc_n, w_hh, c0, lengths, gates, cells, dgx, dh0, dc0, exchange, state, barrier,
                 _stream(dy.device), **(plan or Plan()).options(tf32))
    return dgx, dh0, dc0, None
