"""CUDA C++ backend of the recurrence op (kernels: csrc/cuda/lstm.cu, design:
docs/cuda.md; contract: backends.py).

Legend: T steps, B batch, N directions (1 or 2), H hidden size, G = 4H,
X input dtype (fp32 / fp16 / bf16), f32 accumulation, cell state, workspaces.

One persistent launch runs all T steps of both directions (forward), one the
backward. This file only allocates the outputs and workspaces (on the tensors'
device) and calls: the compiled module (bilstm_fast._cuda, which never links
torch) checks every tensor once at its boundary (csrc/common/tensor_arg.h)
and launches on the caller's current stream with no host sync. The tensors
are passed as the objects themselves and held by this frame for the call.

Emulation: with ``BILSTM_FAST_CUDA_EMULATE=1`` in the environment (read at
each call, so tests can set it with monkeypatch), ``backend="cuda"`` runs the
same kernel source compiled as plain C++ (bilstm_fast._cuda_emu, csrc/cuda/emu.h)
on *CPU* tensors, one OS thread per CUDA thread: the CUDA analogue of
TRITON_INTERPRET. It then accepts CPU tensors only; without it, CUDA tensors only.

Plans: the launcher picks path, blocks, threads and batch tile itself
(``make_plan`` in lstm.cu). A caller can force any of them with a ``Plan``,
passed as an argument (``forward(..., plan=Plan(blocks=2))``) or in the
backend name (``backend="cuda:path=stream,blocks=2"``, parsed by
``parse_plan``); ``plan_for`` says what a call would run.

``backend="auto"`` on CUDA tensors prefers this backend whenever it is
available and ``unsupported_reason`` is None (fp32/fp16/bf16, no proj_size);
float64 and proj_size go to the next backend (triton, then reference).
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
_PATHS = {"auto": 0, "onchip": 1, "stream": 2}


@dataclasses.dataclass(frozen=True)
class Plan:
    """A launch plan forced by the caller; "auto" / 0 leaves a field to the launcher."""
    path: str = "auto"   # "onchip" (W_hh in shared memory) or "stream" (W_hh from L2)
    blocks: int = 0      # blocks per direction
    threads: int = 0     # threads per block
    batch_tile: int = 0  # batch rows staged in shared memory per tile (-1: none, h/dG from L2)

    def __post_init__(self):
        if self.path not in _PATHS:
            raise ValueError(f"plan: path must be one of {list(_PATHS)}, got {self.path!r}")
        for f in ("blocks", "threads"):
            if getattr(self, f) < 0:
                raise ValueError(f"plan: {f} must be >= 0 (0 = automatic), got {getattr(self, f)}")

    def options(self) -> dict:
        """The keyword arguments of the compiled module's forward/backward/plan."""
        return dict(path=_PATHS[self.path], blocks=self.blocks, threads=self.threads,
                    batch_tile=self.batch_tile)


def parse_plan(text: str) -> Plan:
    """"path=stream,blocks=2,threads=16,batch_tile=2" (any subset) -> Plan."""
    fields = {f.name: f.type for f in dataclasses.fields(Plan)}
    values = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"cuda plan: expected key=value with key in {list(fields)}, got {item!r}")
        try:
            values[key] = value if key == "path" else int(value)
        except ValueError:
            raise ValueError(f"cuda plan: {key} must be an integer, got {value!r}") from None
    return Plan(**values)


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


def plan_for(kind: int, N: int, B: int, H: int, dtype: torch.dtype, device,
             plan: Optional[Plan] = None) -> dict:
    """The launch plan a forward (kind 0) or backward (kind 1) call would run
    on ``device``'s limits: path, blocks, slice, threads, batch_tile, smem_bytes, why."""
    mod = _module()
    device = torch.device(device)
    index = (device.index if device.index is not None else torch.cuda.current_device()) \
        if device.type == "cuda" else 0
    sms, smem = mod.device_limits(index)
    return mod.plan(kind, N, B, H, native.DTYPE_CODES[dtype], sms, smem, **(plan or Plan()).options())


# Batch sizes plans() looks at: make_plan's on-chip test depends on B only
# below 8 (the minimum tile is min(B, 8)), so 1..8 and one large B cover
# every choice it can make.
_PLAN_BATCHES = (1, 2, 3, 4, 5, 6, 7, 8, 256)
_PLAN_TEXTS = ("path=onchip", "path=stream", "path=stream,batch_tile=-1")


def _plan_text(chosen: dict) -> str:
    """A plan_for() result -> the text that forces its path and tile mode."""
    if chosen["path"] == "onchip":
        return "path=onchip"
    return "path=stream" if chosen["batch_tile"] > 0 else "path=stream,batch_tile=-1"


def plans(spec) -> list:
    """Every distinct plan text the dispatcher can choose for a call like
    ``spec`` (a backends.CallSpec) on the current device, over any B and both
    forward and backward: "path=onchip", "path=stream" (h / dG staged in
    shared memory) and "path=stream,batch_tile=-1" (unstaged, h / dG from L2;
    only for very large H). A text is listed only when it can be forced for
    every B and both kinds: a path the dispatcher takes only for one of them
    is exercised by the automatic plan (no text). [] when the backend cannot
    run the call. (Today's kernels; the kernel owner keeps this in step with
    make_plan.)"""
    if unavailable_reason() is not None or unsupported_reason(spec) is not None:
        return []
    device = "cuda" if spec.device == "cuda" else "cpu"
    chosen = {_plan_text(plan_for(kind, spec.N, B, spec.H, spec.dtype, device))
              for kind in (0, 1) for B in _PLAN_BATCHES}

    def forceable(text: str) -> bool:
        forced = parse_plan(text)
        try:
            for kind in (0, 1):
                for B in _PLAN_BATCHES:
                    plan_for(kind, spec.N, B, spec.H, spec.dtype, device, forced)
        except RuntimeError:
            return False
        return True
    return [t for t in _PLAN_TEXTS if t in chosen and forceable(t)]


def _stream(device: torch.device) -> int:
    """The caller's current stream on ``device`` (0 in emulation)."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


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
    w_t = w_hh.transpose(1, 2).contiguous()                 # [N, H, 4H]: coalesced over units
    y = gx.new_empty(T, B, N, H)                             # every element written by the kernel
    h_n, c_n = torch.empty_like(h0), torch.empty_like(c0)
    gates = gx.new_empty((T, B, N, G) if keep_for_backward else (0,), dtype=f32)
    cells = gx.new_empty((T, B, N, H) if keep_for_backward else (0,), dtype=f32)
    scratch = gx.new_empty(mod.fwd_scratch_floats(N, B, H), dtype=f32)
    barrier = torch.zeros(N, dtype=torch.int32, device=gx.device)
    mod.forward(gx, w_hh, w_t, h0, c0, lengths, y, h_n, c_n, gates if keep_for_backward else None,
                cells if keep_for_backward else None, scratch, barrier, _stream(gx.device), **(plan or Plan()).options())
    return y, h_n, c_n, gates, cells


def backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, gates, cells, plan: Optional[Plan] = None):
    """-> dgx [T, B, N, 4H] (0 where t >= L_b), dh0, dc0 [N, B, H] (X), None (no dw_hr)."""
    if w_hr is not None:
        raise ValueError("cuda backend: proj_size (w_hr) is not supported")
    mod = _module()
    T, B, N, G = gates.shape
    H = G // 4
    dgx = dy.new_empty(T, B, N, G)                           # every element written by the kernel
    dh0, dc0 = torch.empty_like(dh_n), torch.empty_like(dc_n)
    scratch = dy.new_empty(mod.bwd_scratch_floats(N, B, H), dtype=torch.float32)
    barrier = torch.zeros(N, dtype=torch.int32, device=dy.device)
    mod.backward(dy, dh_n, dc_n, w_hh, c0, lengths, gates, cells, dgx, dh0, dc0, scratch, barrier,
                 _stream(dy.device), **(plan or Plan()).options())
    return dgx, dh0, dc0, None
