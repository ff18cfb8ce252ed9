"""Registers, spills and shared memory of the CUDA C++ kernels (csrc/cuda/lstm.cu)
for the compile report (``python tools/compile_report.py``), with no GPU.
A developer tool: it needs the source tree (csrc/), so it lives in tools/, not in the package.

``rows(archs, hs, dtypes)`` compiles lstm.cu once per architecture with
``nvcc -cubin -Xptxas -v`` (a few seconds each; the parsed figures are cached
under ~/.cache/bilstm_fast keyed by the source text, nvcc version and arch)
and returns one row per kernel the dispatcher chooses for each (arch, H,
dtype): the forward and the backward kernel, on the path (on-chip W_hh or
streaming) that ``make_plan`` in lstm.cu picks on the arch's reference GPU
(sm_80: A100, 108 SMs, 163 KB shared memory per block; sm_90/sm_90a: H100
SXM, 132 SMs, 227 KB). ``smem_bytes`` is the kernel's static shared memory
plus the dynamic shared memory of that plan at the largest batch tile (32
rows, i.e. any B >= 32: the worst case). The plan comes from the compiled
module itself (bilstm_fast._cuda_emu, the same host code), so the report and
the dispatcher cannot disagree.

    archs  : 80, 90, "90a", "sm_80", ...     hs: hidden sizes
    dtypes : "fp32" / "fp16" / "bf16" (or torch dtypes)
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bilstm_fast.ops import native

SRC_DIR = Path(__file__).resolve().parents[1] / "csrc" / "cuda"   # tools/ -> the checkout root
# Reference GPU per arch: (name, SM count, opt-in shared memory per block in bytes).
REFERENCE_GPU = {
    "80": ("A100", 108, 163 * 1024),
    "90": ("H100 SXM", 132, 227 * 1024),
    "90a": ("H100 SXM", 132, 227 * 1024),
}
_DTYPE_CODE = {"fp32": native.DTYPE_CODES[torch.float32], "fp16": native.DTYPE_CODES[torch.float16],
               "bf16": native.DTYPE_CODES[torch.bfloat16]}
_KERNEL_TYPE = {"fp32": "f", "fp16": "6__half", "bf16": "13__nv_bfloat16"}
_PLAN_B = 32  # batch rows of the plan: the largest batch tile (worst-case smem)


def nvcc_path() -> str | None:
    """nvcc from $CUDACXX, PATH or /usr/local/cuda/bin, or None."""
    cand = os.environ.get("CUDACXX") or shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    return cand if cand and os.path.exists(cand) else None


def unavailable_reason() -> str | None:
    if nvcc_path() is None:
        return "nvcc not found (set CUDACXX or put the CUDA toolkit's bin on PATH)"
    if not (SRC_DIR / "lstm.cu").exists():
        return f"kernel source {SRC_DIR / 'lstm.cu'} not found (run from a source checkout)"
    return None


def _norm_arch(a) -> str:
    s = str(a).lower().removeprefix("sm_").removeprefix("compute_")
    if s not in REFERENCE_GPU:
        raise ValueError(f"unknown arch {a!r}; expected one of {list(REFERENCE_GPU)}")
    return s


def _norm_dtype(d) -> str:
    s = str(d).removeprefix("torch.")
    s = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16", "bfloat16": "bf16"}.get(s, s)
    if s not in _DTYPE_CODE:
        raise ValueError(f"unknown dtype {d!r}; expected fp32, fp16 or bf16")
    return s


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bilstm_fast" / "cuda_resources"


def _parse_ptxas(text: str) -> dict[str, dict]:
    """ptxas -v output -> {mangled kernel name: {registers, spills, stack, smem_bytes}}."""
    out: dict[str, dict] = {}
    cur = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = out.setdefault(m.group(1), dict(registers=0, spills=0, stack=0, smem_bytes=0))
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"] = int(m.group(1))
            cur["spills"] = int(m.group(2)) + int(m.group(3))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["registers"] = int(m.group(1))
        m = re.search(r"(\d+) bytes smem", line)
        if m:
            cur["smem_bytes"] = int(m.group(1))
    return out


def kernel_resources(arch) -> dict[str, dict]:
    """Per-kernel ptxas figures of lstm.cu for one arch (compiled once, cached)."""
    arch = _norm_arch(arch)
    why = unavailable_reason()
    if why is not None:
        raise RuntimeError(f"cannot report CUDA kernel resources: {why}")
    nvcc = nvcc_path()
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    h = hashlib.sha256(version.encode() + arch.encode())
    for name in sorted(os.listdir(SRC_DIR)):
        if name.endswith((".cu", ".h", ".cuh")):
            h.update(name.encode() + (SRC_DIR / name).read_bytes())
    cache = _cache_dir() / f"sm_{arch}-{h.hexdigest()[:20]}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    with tempfile.TemporaryDirectory() as d:
        cmd = [nvcc, "-cubin", f"-arch=sm_{arch}", "-std=c++17", "-O3", "-Xptxas", "-v",
               f"-I{SRC_DIR.parent}", f"-I{SRC_DIR}", str(SRC_DIR / "lstm.cu"), "-o", os.path.join(d, "k.cubin")]
        r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"nvcc failed ({' '.join(cmd)}):\n{r.stderr[-4000:]}")
    res = _parse_ptxas(r.stdout + r.stderr)
    if not res:
        raise RuntimeError(f"no kernels found in the ptxas output of {' '.join(cmd)}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(res, indent=1, sort_keys=True))
    return res


def _plan_module():
    for name in ("_cuda_emu", "_cuda"):
        mod = native.load(name)
        if not isinstance(mod, str):
            return mod
    raise RuntimeError(f"neither bilstm_fast._cuda_emu nor _cuda can be loaded: {mod}")


def rows(archs, hs, dtypes) -> list[dict]:
    """One row per (kernel, arch, H, dtype) the dispatcher chooses: keys backend,
    kernel, arch (int for 80/90, "90a" for sm_90a), H, dtype, registers, spills,
    stack, smem_bytes, threads, note. Empty (with a message on stderr) if nvcc
    is not installed."""
    why = unavailable_reason()
    if why is not None:
        print(f"tools/cuda_resources.py: no CUDA C++ rows: {why}", file=sys.stderr)
        return []
    mod = _plan_module()
    out = []
    for a in archs:
        arch = _norm_arch(a)
        res = kernel_resources(arch)
        gpu, sms, smem_limit = REFERENCE_GPU[arch]
        for H in hs:
            for d in dtypes:
                dtype = _norm_dtype(d)
                for kind, kname, params in ((0, "lstm_fwd_kernel", "FwdParams"), (1, "lstm_bwd_kernel", "BwdParams")):
                    plan = mod.plan(kind, 2, _PLAN_B, int(H), _DTYPE_CODE[dtype], sms, smem_limit)
                    onchip = plan["path"] == "onchip"
                    mangled = (f"_ZN11bilstm_cuda{len(kname)}{kname}I{_KERNEL_TYPE[dtype]}"
                               f"Lb{int(onchip)}EEEvNS_{len(params)}{params}E")
                    if mangled not in res:
                        raise RuntimeError(f"kernel {mangled} not in the ptxas output for sm_{arch}")
                    r = res[mangled]
                    out.append(dict(
                        backend="cuda", kernel=kname, arch=int(arch) if arch.isdigit() else arch,
                        H=int(H), dtype=dtype, registers=r["registers"], spills=r["spills"],
                        stack=r["stack"], smem_bytes=r["smem_bytes"] + plan["smem_bytes"],
                        threads=plan["threads"],
                        note=(f"{plan['path']} N=2: {plan['blocks']} blocks/dir x {plan['slice']} units, "
                              f"B-tile {plan['batch_tile']} ({gpu} {sms} SMs)")))
    return out
