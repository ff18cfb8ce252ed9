"""The machine a run happened on, and the peak its figures are compared with.

``environment()`` is what a result file records about the device and the
software; ``device_peak()`` gives the FLOP/s per dtype used for the "% peak"
column: a datasheet figure for known GPUs (gpu_specs.GPUS), else measured with a
large torch.matmul on the device (always on a CPU), and says which.
"""
from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .gpu_specs import GPUS, GpuSpec
from .gpu_specs import lookup as lookup_gpu
from .workload import DTYPES


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def set_tf32(enabled: bool) -> None:
    """Whether fp32 GEMMs may run on TF32 tensor cores — in cuBLAS and in
    cuDNN, whose default is on (so nn.LSTM's fp32 would silently be TF32 and
    fail an fp32 check). Off by default in every bilstm-bench entry point:
    fp32 means fp32 on both sides. No effect on a CPU."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def load_average() -> float | None:
    """1-minute load average: above the core count, other processes were
    competing for the CPU and every time is inflated and noisy."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str:
    """The driver version from nvidia-smi; torch does not expose it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def git_commit() -> dict:
    """Commit of the bilstm_fast checkout being run, or "unknown" (installed
    from a wheel, or git missing). ``dirty`` = uncommitted changes in it."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or broken: the result file says so
        return "unavailable"


def environment(device: torch.device) -> dict:
    """Everything a result file records about where it was measured."""
    import bilstm_fast

    env = {
        "device_type": device.type,
        "hostname": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "bilstm_fast": bilstm_fast.__version__,
        **git_commit(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1min": load_average(),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update({
            "device_name": p.name,
            "sm_count": p.multi_processor_count,
            "compute_capability": f"{p.major}.{p.minor}",
            "memory_gb": round(p.total_memory / 1e9, 1),
            "driver": _nvidia_driver(),
            "cuda": torch.version.cuda,
            "cudnn": str(torch.backends.cudnn.version()),
        })
    else:
        env.update({
            "device_name": f"{env['cpu_model']} ({env['torch_threads']} threads)",
            "sm_count": None,
            "mkldnn": torch.backends.mkldnn.is_available(),
        })
    return env


# ----------------------------------------------------------------- peak table
# The datasheet figures live in one table with their sources, shared with the
# cost model (tools/cost_model.py): gpu_specs.GPUS. GpuPeak / PEAKS keep their
# old names for callers of this module.
GpuPeak = GpuSpec
PEAKS = GPUS


def lookup_peak(device_name: str) -> GpuSpec | None:
    """The gpu_specs.GPUS row for a device name (first pattern match), or None."""
    return lookup_gpu(device_name)


@dataclass
class Peak:
    source: str                     # "datasheet" or "measured"
    description: str                # what exactly: table row + source, or the matmul measured
    flops: dict = field(default_factory=dict)    # dtype name -> FLOP/s (None: no such unit)
    bandwidth_gbs: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def for_dtype(self, dtype: str) -> float | None:
        return self.flops.get(dtype)


# Measured peak: the best of a few large square matmuls — the most a GEMM
# reaches here, which is what an LSTM's GEMMs could reach (not the
# theoretical peak, which a VM's CPU does not reliably report). The size
# doubles from 256 until one matmul takes MATMUL_MIN_MS (or hits the cap):
# large enough to be efficient, and bounded in time even for a dtype with
# no fast kernel on the device (CPU fp16: ~1 GFLOP/s, 7 s per 1536^3).
# On a CPU the cpu backend's own GEMM (ops/cpu_gemm.py) is timed too and the
# faster of the two counts: on a Zen 5 (AVX-512) torch.matmul reached ~188
# GFLOP/s at n=2048 on 2 threads and ours ~400, so "% peak" against torch's
# alone printed 146-189% (2 Dec 2026).
MATMUL_MAX_N = {"cuda": 8192, "cpu": 2048}
MATMUL_MIN_MS, MATMUL_TRIES = 50.0, 5


def _our_cpu_matmul(dtype: str):
    """The cpu backend's a @ b for this dtype, or None (not built, or no such dtype)."""
    from ..ops import cpu_gemm, cpu_lstm
    if cpu_lstm.unavailable_reason() is not None or DTYPES[dtype] not in cpu_gemm.DTYPES:
        return None
    return cpu_gemm.matmul


def measured_matmul_flops(device: torch.device, dtype: str) -> tuple[float, int, str]:
    """(FLOP/s of the best of MATMUL_TRIES n x n matmuls, n, whose matmul:
    "torch.matmul" or, on a CPU where it was faster, "bilstm_fast cpu GEMM")."""
    from .timing import _elapsed_ms
    n = 256
    while True:
        a = torch.randn(n, n, device=device).to(DTYPES[dtype])
        b = torch.randn(n, n, device=device).to(DTYPES[dtype])
        _elapsed_ms(lambda: a @ b, device)  # warm-up: library init, autotuning
        if _elapsed_ms(lambda: a @ b, device) >= MATMUL_MIN_MS or n >= MATMUL_MAX_N.get(device.type, 2048):
            break
        n *= 2
    best, who = min(_elapsed_ms(lambda: a @ b, device) for _ in range(MATMUL_TRIES)), "torch.matmul"
    ours = _our_cpu_matmul(dtype) if device.type == "cpu" else None
    if ours is not None:
        _elapsed_ms(lambda: ours(a, b), device)
        mine = min(_elapsed_ms(lambda: ours(a, b), device) for _ in range(MATMUL_TRIES))
        if mine < best:
            best, who = mine, "bilstm_fast cpu GEMM"
    return 2 * n**3 / (best * 1e-3), n, who


def device_peak(device: torch.device, dtypes: list[str], tf32: bool = False,
                earlier: Peak | None = None) -> Peak:
    """Peak FLOP/s per dtype for the "% peak" column: the datasheet figure of a
    GPU in gpu_specs.GPUS, else measured. ``tf32``: fp32 GEMMs run on TF32 tensor cores
    (--tf32), so fp32 is compared with the TF32 figure. ``earlier``: a measured
    peak from before the sweep; the result is the better of the two (one
    measurement on a busy machine can be low)."""
    if device.type == "cuda":
        row = lookup_peak(torch.cuda.get_device_name(device))
        if row is not None:
            flops = {"fp32": (row.tf32 if tf32 and row.tf32 else row.fp32) * 1e12,
                     "fp16": row.fp16 * 1e12, "bf16": row.bf16 * 1e12 if row.bf16 else None}
            return Peak("datasheet", f"{row.name}: {row.source} ({row.checked})", flops, row.hbm_gbs)
    measured = {dt: measured_matmul_flops(device, dt) for dt in dtypes}
    flops = {dt: f for dt, (f, _, _) in measured.items()}
    if earlier is not None:  # the better of two moments: one on a busy machine can be low
        flops = {dt: max(f, earlier.flops.get(dt) or 0.0) for dt, f in flops.items()}
    where = (f"this CPU, {torch.get_num_threads()} threads" if device.type == "cpu"
             else "GPU not in the datasheet table")
    sizes = ", ".join(f"{dt} n={n}: {who}" for dt, (_, n, who) in measured.items())
    when = "; better of before and after the sweep" if earlier is not None else ""
    which = "torch.matmul or the cpu backend's GEMM, the faster" if device.type == "cpu" else "torch.matmul"
    return Peak("measured", f"best of {MATMUL_TRIES} n x n matmuls ({which}; {sizes}; {where}{when})",
                flops, None)
