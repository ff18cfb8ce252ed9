"""``bilstm-bench profile``: one shape under torch.profiler.

Per implementation: a Chrome trace (open in chrome://tracing or
https://ui.perfetto.dev), the top ops/kernels by self time, and how many
kernel launches (GPU) or aten ops (CPU) one forward — and one backward, in
training — issues. Every step, forward and backward is a named range
(``annotate``): a record_function range in the trace and, on a GPU, an NVTX
range for Nsight Systems.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .workload import Inputs, make_step

RANGE = "bilstm_bench"  # prefix of our ranges in traces and Nsight timelines

# CPU-side runtime calls that launch work on the GPU: counting them, rather
# than the kernels on the GPU timeline, lets a launch be attributed to the
# forward or the backward range that issued it.
LAUNCH_EVENTS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                 "cudaLaunchCooperativeKernel", "cudaGraphLaunch")


@contextlib.contextmanager
def annotate(name: str, device: torch.device):
    """A named range: record_function (torch.profiler trace) and, on a GPU,
    torch.cuda.nvtx (Nsight Systems) — the one device-specific bit here."""
    with torch.profiler.record_function(name):
        if device.type == "cuda":
            with torch.cuda.nvtx.range(name):
                yield
        else:
            yield


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_model(model: torch.nn.Module, inputs: Inputs, mode: str, device: torch.device,
                  trace_path: Path, steps: int = 5, warmup: int = 2, row_limit: int = 15,
                  nvtx_ops: bool = False) -> dict:
    """Profile ``steps`` steps after ``warmup``; write the Chrome trace; return a
    summary: per-phase launch (GPU) or op (CPU) counts per step and the
    top-ops table (text)."""
    step = make_step(model, inputs, mode, annotate=lambda phase: annotate(f"{RANGE}.{phase}", device))
    for _ in range(warmup):
        step()
    _sync(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for i in range(steps):
            with annotate(f"{RANGE}.step{i}", device):
                step()
        _sync(device)
    trace_path.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace_path))

    events = list(prof.events())
    cpu_events = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    phases = ("forward",) if mode == "inference" else ("forward", "backward")
    if device.type == "cuda":
        what = "kernel launches"
        counted = [e for e in cpu_events if e.name in LAUNCH_EVENTS]
    else:
        what = "aten ops (nested ones included)"
        counted = [e for e in cpu_events if e.name.startswith("aten::")]
    per_step = {}
    for phase in phases:
        # By time, not by parent: on a GPU the backward runs on autograd's
        # device thread, outside the parent chain of our backward range.
        spans = [(e.time_range.start, e.time_range.end) for e in cpu_events if e.name == f"{RANGE}.{phase}"]
        n = sum(any(s <= e.time_range.start <= t for s, t in spans) for e in counted)
        per_step[phase] = n / steps
    summary = {"trace": str(trace_path), "steps": steps, "counted": what, "per_step": per_step}
    if device.type == "cuda":
        # GPU-timeline events minus copies/fills and the GPU mirror of our ranges.
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                   and not e.name.startswith(RANGE) and "Memcpy" not in e.name and "Memset" not in e.name]
        summary["gpu_kernels_per_step"] = len(kernels) / steps
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    summary["top_ops"] = prof.key_averages().table(sort_by=sort_by, row_limit=row_limit)

    if nvtx_ops and device.type == "cuda":
        # One NVTX range per op too, for `nsys profile -t cuda,nvtx`; separate
        # steps, because emit_nvtx cannot run inside torch.profiler.
        with torch.autograd.profiler.emit_nvtx():
            for i in range(steps):
                with annotate(f"{RANGE}.nvtx_step{i}", device):
                    step()
            _sync(device)
    return summary
