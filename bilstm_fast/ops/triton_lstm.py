"""Triton backend of the recurrence op: both directions of one LSTM layer in
one persistent launch forward and one backward (SPLIT without a co-resident
grid: one launch per step).

Contract: backends.py. Reading order: this file (the contract, then the
launchers), triton_plan.py (the dispatcher: path and tiles), then
triton_kernels.py (the kernels). Design, the three paths and the per-step
cost model: docs/triton.md.

CUDA tensors run the compiled kernels; CPU tensors run the same kernels in
Triton's interpreter (slow, ~10 ms per program-step: for tests; ``auto``
never picks it). The choice is per call, from the tensors' device: the
kernel source is loaded twice (``kernels(interpret)``), once as JIT
functions and once as interpreted functions, so one process runs both.

Legend: T time steps, B batch, N directions (1 or 2), H hidden size,
X input dtype (fp32 / fp16 / bf16), f32 the accumulation and cell-state dtype.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch
import triton

from . import cuda_compat
from .backends import CallSpec
from .triton_plan import (SMEM_BYTES, KernelConfig, co_resident_programs, device_facts,
                          dot_precision, kernel_config, maxnreg_kwargs, parse_plan, plan_text,
                          resolved_configs, smem_bytes_of, split_block_k,
                          split_launch_groups)

NAME = "triton"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
__all__ = ["NAME", "unavailable_reason", "unsupported_reason", "parse_plan", "plans", "forward",
           "backward", "lstm_fwd_triton", "lstm_bwd_triton", "KernelConfig", "kernel_config",
           "kernels"]


# ------------------------------------------------------------ the kernels
@contextlib.contextmanager
def _interpret_mode(on: bool):
    """Triton's interpreter switch while a kernel module is executed:
    @triton.jit reads it at decoration time. `triton.knobs.runtime.interpret`
    in Triton 3.6 and 3.9 (its scope() restores the knob and the variable);
    the TRITON_INTERPRET variable in older releases."""
    knobs = getattr(getattr(triton, "knobs", None), "runtime", None)
    if knobs is not None and hasattr(knobs, "interpret") and hasattr(knobs, "scope"):
        with knobs.scope():
            knobs.interpret = on
            yield
        return
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if on else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = before


def _interpreter_numpy_compat() -> None:
    """Triton 3.6's interpreter converts a runtime scalar (a 1-element numpy
    array) to an index with int(array), which NumPy 2.4 made an error (only
    0-d arrays convert): every `range(T)` of a kernel fails there, and the GPU
    machine this project is lent has Triton 3.6 with NumPy 2.5. Triton 3.9
    squeezes the array first; do the same where the old conversion fails."""
    import numpy as np
    from triton.runtime import interpreter
    try:
        int(np.ones(1, dtype=np.int32))
        return
    except TypeError:
        pass
    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "_bilstm_fast_squeeze", False):
        return

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
    patched._bilstm_fast_squeeze = True
    interpreter._patch_lang_tensor = patched


@functools.cache
def kernels(interpret: bool) -> ModuleType:
    """triton_kernels.py as compiled kernels (JITFunction) or as kernels for
    Triton's CPU interpreter (InterpretedFunction). Each is its own module
    object, executed under its own interpreter setting, so the nested
    @triton.jit helpers a kernel calls are of the same kind as the kernel
    (an interpreted kernel cannot call a JITFunction, nor the reverse).
    Loaded once per kind (a cache of the source, not a setting)."""
    path = Path(__file__).with_name("triton_kernels.py")
    name = f"{__package__}._triton_kernels_{'interpreted' if interpret else 'compiled'}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod      # inspect (the JIT reads the source) finds it by name
    with _interpret_mode(interpret):
        spec.loader.exec_module(mod)
    if interpret:
        _interpreter_numpy_compat()
    return mod


def unavailable_reason() -> Optional[str]:
    """None: with Triton importable, CUDA tensors run the compiled kernels
    (when torch sees a GPU) and CPU tensors the interpreter."""
    return None


def _device_reason(index: int) -> Optional[str]:
    """Why CUDA device ``index`` cannot run the Triton kernels, or None."""
    dev = cuda_compat.device_facts(index)
    return None if dev is None else cuda_compat.triton_arch_reason(dev)


def unsupported_reason(spec) -> Optional[str]:
    """``spec`` is a backends.CallSpec (device, dtype, N, H, P, proj, lengths):
    static facts only, never T or B. Tensor-level checks are in `_check_inputs`."""
    device, dtype, N, H, P, proj = spec.device, spec.dtype, spec.N, spec.H, spec.P, spec.proj
    if proj or P != H:
        return ("proj_size (w_hr) is not supported by the Triton backend; "
                "the reference backend serves it")
    if dtype not in _DTYPES:
        return (f"dtype {dtype} is not supported by the Triton backend (float32, float16, "
                "bfloat16 only; float64 is served by the reference and cpu backends)")
    if N not in (1, 2) or H < 1:
        return f"expected N in (1, 2) directions and H >= 1, got N={N}, H={H}"
    if device == "cuda":
        # the current device: on one older than sm_80, backend="auto" passes to the next backend
        # (no device facts to read where torch has no CUDA: then there are no CUDA tensors either)
        return _device_reason(torch.cuda.current_device()) if torch.cuda.is_available() else None
    if device == "cpu":
        return None   # Triton's interpreter (slow: for tests; auto never picks it)
    return f"the Triton backend runs on CUDA tensors (compiled) or CPU tensors (interpreter), got {device}"


def plans(spec) -> list[str]:
    """Every distinct plan text the dispatcher can choose for a call of this
    kind (a backends.CallSpec), for forcing each one in a check run
    (``backend="triton:" + text``). On CUDA: over every arch in the
    dispatcher's table (sm_80, sm_86, sm_89, sm_90 shared memory), both fp32
    dot precisions (TF32 allowed or not), and for SPLIT both launch modes
    (grid barrier, one launch per step). On CPU: what the interpreter runs."""
    if unsupported_reason(spec) is not None:
        return []
    on_gpu = spec.device == "cuda"
    precs = ("tf32", "tf32x3") if spec.dtype == torch.float32 else ("tf32",)
    smems = sorted(set(SMEM_BYTES.values())) if on_gpu else [smem_bytes_of(torch.device("cpu"))]
    out = []
    for smem in smems:
        for prec in precs:
            for cfg in resolved_configs(kernel_config(spec.H, spec.dtype, smem, prec), on_gpu):
                out.append(plan_text(cfg))
    return list(dict.fromkeys(out))


def _check_inputs(gx, w_hh, w_hr, h0, c0, lengths) -> None:
    """Raise ValueError naming the tensor when a call breaks the contract."""
    T, B, N, G = gx.shape
    H = G // 4
    why = unsupported_reason(CallSpec(gx.device.type, gx.dtype, N, H, w_hh.shape[-1],
                                      w_hr is not None, lengths is not None))
    if why is not None:
        raise ValueError(why)
    for name, t, shape in (("gx", gx, (T, B, N, G)), ("w_hh", w_hh, (N, G, H)),
                           ("h0", h0, (N, B, H)), ("c0", c0, (N, B, H))):
        if tuple(t.shape) != shape or t.dtype != gx.dtype or t.device != gx.device:
            raise ValueError(f"{name}: expected {gx.dtype} {list(shape)} on {gx.device}, "
                             f"got {t.dtype} {list(t.shape)} on {t.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous tensor")
    if lengths is not None and (lengths.dtype != torch.int64 or tuple(lengths.shape) != (B,)
                                or lengths.device != gx.device or not lengths.is_contiguous()):
        raise ValueError(f"lengths: expected contiguous int64 [{B}] on {gx.device}, got "
                         f"{lengths.dtype} {list(lengths.shape)} on {lengths.device}")


def forward(gx, w_hh, w_hr, h0, c0, lengths, keep_for_backward, plan: Optional[KernelConfig] = None):
    _check_inputs(gx, w_hh, w_hr, h0, c0, lengths)
    return lstm_fwd_triton(gx, w_hh, h0, c0, lengths, keep_for_backward, plan)


def backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, gates, cells,
             plan: Optional[KernelConfig] = None):
    if w_hr is not None:
        raise ValueError("proj_size (w_hr) is not supported by the Triton backend")
    if gates.dim() != 4 or gates.dtype != torch.float32 or cells.dtype != torch.float32:
        raise ValueError("backward needs the fp32 workspace (gates, cells) of a forward run "
                         "with keep_for_backward=True")
    dgx, dh0, dc0 = lstm_bwd_triton(dy, dh_n, dc_n, w_hh, c0, lengths, gates, cells, plan)
    return dgx, dh0, dc0, None


# ------------------------------------------------------------ launchers
def _choose(config: Optional[KernelConfig], H: int, x: torch.Tensor) -> tuple[KernelConfig, str]:
    prec = dot_precision(x.dtype)
    return config or kernel_config(H, x.dtype, smem_bytes_of(x.device), prec), prec


def lstm_fwd_triton(
    gx: torch.Tensor,                 # [T, B, N, 4H] X
    w_hh: torch.Tensor,               # [N, 4H, H]    X
    h0: torch.Tensor,                 # [N, B, H]     X
    c0: torch.Tensor,                 # [N, B, H]     X
    lengths: Optional[torch.Tensor],  # [B] int64 (any values: the kernels clamp into 1..T), or None
    keep_for_backward: bool,
    config: Optional[KernelConfig] = None,
):
    """-> y [T, B, N, H] X, h_n, c_n [N, B, H] X, gates [T, B, N, 4H] f32,
    cells [T, B, N, H] f32 (both shape (0,) when not keep_for_backward)."""
    T, B, N, G = gx.shape
    H = G // 4
    cfg, prec = _choose(config, H, gx)
    interpret = gx.device.type != "cuda"
    k = kernels(interpret)
    f32 = torch.float32
    y = gx.new_empty(T, B, N, H)          # every element written by the kernel
    h_n, c_n = h0.new_empty(N, B, H), c0.new_empty(N, B, H)
    gates = gx.new_empty((T, B, N, G) if keep_for_backward else (0,), dtype=f32)
    cells = gx.new_empty((T, B, N, H) if keep_for_backward else (0,), dtype=f32)
    lens = gx if lengths is None else lengths
    flags = dict(H=H, N=N, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h,
                 HAS_LENGTHS=lengths is not None, KEEP_FOR_BACKWARD=bool(keep_for_backward),
                 DOT_PREC=prec, F32_DOT=interpret and gx.dtype == torch.bfloat16,
                 num_warps=cfg.num_warps, num_stages=cfg.num_stages, **maxnreg_kwargs(cfg))
    with _device_of(gx):
        if cfg.path == "split":
            c_scr = gx.new_empty(N, B, H, dtype=f32)
            args = (gx, w_hh, h0, c0, lens, y, h_n, c_n, gates, cells, c_scr)
            _launch_split(k._lstm_fwd_split_kernel, args, T, T, B, N, H, cfg,
                          dict(flags, BLOCK_K=split_block_k(H)), interpret)
        else:
            # STREAMED keeps c in global memory, double-buffered by step parity.
            c_scr = gx.new_empty((2, N, B, H) if not cfg.resident else (0,), dtype=f32)
            k._lstm_fwd_kernel[(N, triton.cdiv(B, cfg.block_b))](
                gx, w_hh, h0, c0, lens, y, h_n, c_n, gates, cells, c_scr,
                T, B, H, RESIDENT=cfg.resident, **flags)
    return y, h_n, c_n, gates, cells


def lstm_bwd_triton(
    dy: torch.Tensor,                 # [T, B, N, H]  X
    dh_n: torch.Tensor,               # [N, B, H]     X
    dc_n: torch.Tensor,               # [N, B, H]     X
    w_hh: torch.Tensor,               # [N, 4H, H]    X
    c0: torch.Tensor,                 # [N, B, H]     X
    lengths: Optional[torch.Tensor],  # [B] int64 or None
    gates: torch.Tensor,              # [T, B, N, 4H] f32, from the forward
    cells: torch.Tensor,              # [T, B, N, H]  f32, from the forward
    config: Optional[KernelConfig] = None,
):
    """-> dgx [T, B, N, 4H] X (zero where t >= L_b), dh0, dc0 [N, B, H] X.
    No atomics on data: every output element has exactly one writer."""
    T, B, N, G = gates.shape
    H = G // 4
    cfg, prec = _choose(config, H, dy)
    interpret = dy.device.type != "cuda"
    k = kernels(interpret)
    f32 = torch.float32
    dgx = dy.new_empty(T, B, N, G)        # every element written by the kernel
    dh0, dc0 = dy.new_empty(N, B, H), dy.new_empty(N, B, H)
    lens = dy if lengths is None else lengths
    flags = dict(H=H, N=N, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h,
                 HAS_LENGTHS=lengths is not None, DOT_PREC=prec,
                 F32_DOT=interpret and dy.dtype == torch.bfloat16,
                 num_warps=cfg.num_warps, num_stages=cfg.num_stages, **maxnreg_kwargs(cfg))
    with _device_of(dy):
        if cfg.path == "split":
            dh_scr, dc_scr = dy.new_empty(N, B, H, dtype=f32), dy.new_empty(N, B, H, dtype=f32)
            args = (dy, dh_n, dc_n, w_hh, c0, lens, gates, cells, dgx, dh0, dc0, dh_scr, dc_scr)
            # T + 1 iterations: phase B of a step runs in the iteration after its phase A
            _launch_split(k._lstm_bwd_split_kernel, args, T, T + 1, B, N, H, cfg,
                          dict(flags, BLOCK_K=split_block_k(H)), interpret)
        else:
            # STREAMED: dh exchanged through global memory; dc double-buffered by parity.
            dh_scr = dy.new_empty((N, B, H) if not cfg.resident else (0,), dtype=f32)
            dc_scr = dy.new_empty((2, N, B, H) if not cfg.resident else (0,), dtype=f32)
            k._lstm_bwd_kernel[(N, triton.cdiv(B, cfg.block_b))](
                dy, dh_n, dc_n, w_hh, c0, lens, gates, cells, dgx, dh0, dc0, dh_scr, dc_scr,
                T, B, RESIDENT=cfg.resident, **flags)
    return dgx, dh0, dc0


def _launch_split(kernel, args, T: int, iters: int, B: int, N: int, H: int, cfg: KernelConfig,
                  flags: dict, interpret: bool) -> torch.Tensor:
    """Launch a SPLIT kernel over `iters` step iterations: grid (N, Q, S).
    sync "grid": one cooperative launch, Q = barrier groups per direction the
    GPU holds at once next to each other (co-residency check on the compiled
    kernel's registers and shared memory; a forced "grid" that does not fit
    is an error, never a launch that could deadlock). sync "step" (and
    "auto" when the check fails, and always in the interpreter): one launch
    per iteration, every batch tile its own group. -> the arrival counters
    [N, Q, 32] int32 (S per group per iteration; what tests check)."""
    S = triton.cdiv(H, cfg.block_h)
    tiles = triton.cdiv(B, cfg.block_b)
    Q = split_launch_groups(cfg.sync, interpret, N, S, tiles,
                            lambda: _capacity(kernel, args, T, B, flags, args[0].device))
    dev = args[0].device
    if Q > 0:
        bar = torch.zeros(N, Q, 32, dtype=torch.int32, device=dev)
        kernel[(N, Q, S)](*args, bar, T, B, 0, iters, SYNC=True, launch_cooperative_grid=True,
                          **flags)
        return bar
    bar = torch.zeros(N, tiles, 32, dtype=torch.int32, device=dev)
    for r in range(iters):
        kernel[(N, tiles, S)](*args, bar, T, B, r, r + 1, SYNC=False, **flags)
    return bar


def _capacity(kernel, args, T, B, flags, device) -> int:
    """Programs of the compiled SYNC kernel the device holds at once."""
    # an empty counter stands in: no memset (this also runs inside CUDA-graph capture)
    ck = kernel.warmup(*args, torch.empty(32, dtype=torch.int32, device=device), T, B, 0, 1,
                       SYNC=True, launch_cooperative_grid=True, grid=(1,), **flags)
    ck._init_handles()
    return _capacity_of(device.index if device.index is not None else torch.cuda.current_device(),
                        ck.n_regs, ck.metadata.shared, ck.metadata.num_warps)


@functools.lru_cache(maxsize=256)
def _capacity_of(device_index: int, regs: int, smem: int, warps: int) -> int:
    return co_resident_programs(device_facts(torch.device("cuda", device_index)), regs, smem, warps)


def _device_of(t: torch.Tensor):
    """Launch on the tensors' GPU (Triton launches on the current device),
    on the current stream of that device."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
