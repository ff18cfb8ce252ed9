"""The machine a run happened on, and the peak its figures are compared with.

``environment()`` is what a result file records about the device and the
software; ``device_peak()`` gives the FLOP/s per dtype used for the "% peak"
column: a datasheet figure for known GPUs (PEAKS below), else measured with a
large torch.matmul on the device (always on a CPU), and says which.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

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
@dataclass(frozen=True)
class GpuPeak:
    """Dense (no structured sparsity) peak throughput, TFLOP/s, and memory
    bandwidth, GB/s. fp16/bf16 are tensor-core figures with FP32 accumulate
    (what our kernels do); tf32 is the tensor-core TF32 figure; fp32 is the
    CUDA-core (non-tensor) figure. None = the GPU has no such unit."""
    name: str
    pattern: str  # regex on torch.cuda.get_device_name(); first match in PEAKS wins
    fp32: float
    tf32: float | None
    fp16: float
    bf16: float | None
    bandwidth_gbs: float
    source: str


_A100 = "NVIDIA A100 Tensor Core GPU datasheet (2021); TF32/FP16/BF16 dense figures"
_H100 = "NVIDIA H100 Tensor Core GPU datasheet; its tensor figures are 'with sparsity', halved here"
PEAKS = [
    GpuPeak("A100 SXM4 80GB", r"A100.*SXM.*80GB", 19.5, 156, 312, 312, 2039, _A100),
    GpuPeak("A100 SXM4 40GB", r"A100.*SXM", 19.5, 156, 312, 312, 1555, _A100),
    GpuPeak("A100 PCIe 80GB", r"A100.*(80GB.*PCI|PCI.*80GB)", 19.5, 156, 312, 312, 1935, _A100),
    GpuPeak("A100 PCIe 40GB", r"A100.*PCI", 19.5, 156, 312, 312, 1555, _A100),
    GpuPeak("H100 NVL", r"H100 NVL", 60, 417.5, 835.5, 835.5, 3900, _H100),
    GpuPeak("H100 PCIe", r"H100.*PCI", 51, 378, 756.5, 756.5, 2000, _H100),
    GpuPeak("H100 SXM5", r"H100", 67, 494.5, 989.5, 989.5, 3350, _H100),
    GpuPeak("H200 SXM", r"H200", 67, 494.5, 989.5, 989.5, 4800,
            "NVIDIA H200 Tensor Core GPU datasheet; tensor figures 'with sparsity', halved here"),
    GpuPeak("L40S", r"L40S", 91.6, 183, 362, 362, 864,
            "NVIDIA L40S GPU datasheet; tensor figures 'with sparsity', halved here"),
    GpuPeak("L4", r"\bL4\b", 30.3, 60, 121, 121, 300,
            "NVIDIA L4 Tensor Core GPU datasheet; tensor figures 'with sparsity', halved here"),
    GpuPeak("A10", r"A10(?![0-9G])", 31.2, 62.5, 125, 125, 600,
            "NVIDIA A10 Tensor Core GPU datasheet; tensor figures 'with sparsity', halved here"),
    GpuPeak("T4", r"\bT4\b", 8.1, None, 65, None, 320,
            "NVIDIA T4 Tensor Core GPU datasheet (FP16/FP32 mixed precision 65 TFLOPS)"),
    GpuPeak("V100 SXM2", r"V100.*SXM", 15.7, None, 125, None, 900,
            "NVIDIA Tesla V100 GPU datasheet (tensor performance 125 TFLOPS)"),
    GpuPeak("V100S PCIe", r"V100S", 16.4, None, 130, None, 1134, "NVIDIA V100S datasheet"),
    GpuPeak("V100 PCIe", r"V100", 14, None, 112, None, 900,
            "NVIDIA Tesla V100 GPU datasheet (tensor performance 112 TFLOPS)"),
    GpuPeak("RTX A6000", r"RTX A6000", 38.7, 77.4, 154.8, 154.8, 768,
            "NVIDIA Ampere GA102 GPU architecture whitepaper (RTX A6000, FP32 accumulate, dense)"),
    GpuPeak("GeForce RTX 3090", r"RTX 3090", 35.6, 35.6, 71, 71, 936,
            "NVIDIA Ampere GA102 GPU architecture whitepaper (RTX 3090, FP32 accumulate, dense)"),
    GpuPeak("GeForce RTX 4090", r"RTX 4090", 82.6, 82.6, 165.2, 165.2, 1008,
            "NVIDIA Ada GPU architecture whitepaper (RTX 4090, FP32 accumulate, dense)"),
]


def lookup_peak(device_name: str) -> GpuPeak | None:
    for peak in PEAKS:
        if re.search(peak.pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None


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
MATMUL_MAX_N = {"cuda": 8192, "cpu": 2048}
MATMUL_MIN_MS, MATMUL_TRIES = 50.0, 5


def measured_matmul_flops(device: torch.device, dtype: str) -> tuple[float, int]:
    """(FLOP/s of the best of MATMUL_TRIES n x n matmuls, n)."""
    from .timing import _elapsed_ms
    n = 256
    while True:
        a = torch.randn(n, n, device=device).to(DTYPES[dtype])
        b = torch.randn(n, n, device=device).to(DTYPES[dtype])
        _elapsed_ms(lambda: a @ b, device)  # warm-up: library init, autotuning
        if _elapsed_ms(lambda: a @ b, device) >= MATMUL_MIN_MS or n >= MATMUL_MAX_N.get(device.type, 2048):
            break
        n *= 2
    best = min(_elapsed_ms(lambda: a @ b, device) for _ in range(MATMUL_TRIES))
    return 2 * n**3 / (best * 1e-3), n


def device_peak(device: torch.device, dtypes: list[str], tf32: bool = False,
                earlier: Peak | None = None) -> Peak:
    """Peak FLOP/s per dtype for the "% peak" column: the datasheet figure of a
    GPU in PEAKS, else measured. ``tf32``: fp32 GEMMs run on TF32 tensor cores
    (--tf32), so fp32 is compared with the TF32 figure. ``earlier``: a measured
    peak from before the sweep; the result is the better of the two (one
    measurement on a busy machine can be low)."""
    if device.type == "cuda":
        row = lookup_peak(torch.cuda.get_device_name(device))
        if row is not None:
            flops = {"fp32": (row.tf32 if tf32 and row.tf32 else row.fp32) * 1e12,
                     "fp16": row.fp16 * 1e12, "bf16": row.bf16 * 1e12 if row.bf16 else None}
            return Peak("datasheet", f"{row.name}: {row.source}", flops, row.bandwidth_gbs)
    measured = {dt: measured_matmul_flops(device, dt) for dt in dtypes}
    flops = {dt: f for dt, (f, _) in measured.items()}
    if earlier is not None:  # the better of two moments: one on a busy machine can be low
        flops = {dt: max(f, earlier.flops.get(dt) or 0.0) for dt, f in flops.items()}
    where = (f"this CPU, {torch.get_num_threads()} threads" if device.type == "cpu"
             else "GPU not in the datasheet table")
    sizes = ", ".join(f"{dt} n={n}" for dt, (_, n) in measured.items())
    when = "; better of before and after the sweep" if earlier is not None else ""
    return Peak("measured", f"best of {MATMUL_TRIES} torch.matmul n x n ({sizes}; {where}{when})",
                flops, None)
