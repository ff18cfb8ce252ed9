"""Registers, spills and shared memory of the CUDA C++ kernels (csrc/cuda/lstm.cu)
for the compile report (``python tools/compile_report.py``), with no GPU; and
the one compile of lstm.cu to a cubin that tools/cost_model.py reads too.
A developer tool: it needs the source tree (csrc/), so it lives in tools/, not in the package.

``rows(archs, hs, dtypes)`` compiles lstm.cu once per architecture with
``nvcc -cubin -lineinfo -Xptxas -v`` (a few minutes on 2 cores; the cubin and
the ptxas figures are cached under ~/.cache/bilstm_fast/cuda_resources keyed
by the source text, nvcc version and arch) and returns one row per kernel
variant the dispatcher can choose for each (arch, H, dtype): lstm_fwd_kernel
and lstm_bwd_kernel, templated on (X, engine), for every engine
``make_plan`` picks on the arch's reference GPU (sm_80: A100, 108 SMs, 163 KB
shared memory per block; sm_90/sm_90a: H100 SXM, 132 SMs, 227 KB) over every
B (the plan depends on B only through the batch chunk) and, for fp32, TF32
allowed or not. ``smem_bytes`` is the kernel's static shared memory plus the
largest dynamic shared memory of those plans. The plans come from the
compiled module itself (bilstm_fast._cuda_emu, the same host code, asked for
the GPU's 8 warps), so the report and the dispatcher cannot disagree. An
(arch, H, dtype) whose W_hh does not fit on the reference GPU has no row
(the dispatcher never runs a kernel there: backend="auto" takes triton).

``cubin(arch)`` is the compiled lstm.cu (-O3 -lineinfo) for any sm_XX[a]:
the per-step cost model (tools/cost_model.py, docs/cost_model.md) reads its
SASS; there is no second estimate here.

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

from bilstm_fast.ops import cuda_lstm, native

SRC_DIR = Path(__file__).resolve().parents[1] / "csrc" / "cuda"   # tools/ -> the checkout root
# Reference GPU per arch: (name, SM count, opt-in shared memory per block in bytes).
REFERENCE_GPU = {
    "80": ("A100", 108, 163 * 1024),
    "90": ("H100 SXM", 132, 227 * 1024),
    "90a": ("H100 SXM", 132, 227 * 1024),
}
_DTYPE_CODE = {"fp32": native.DTYPE_CODES[torch.float32], "fp16": native.DTYPE_CODES[torch.float16],
               "bf16": native.DTYPE_CODES[torch.bfloat16]}
_KERNEL_TYPE = {"fp32": "f", "fp16": "6__half", "bf16": "13__nv_bfloat16"}   # Itanium mangling of X
KERNELS = {0: ("lstm_fwd_kernel", "FwdParams", "fwd_step"), 1: ("lstm_bwd_kernel", "BwdParams", "bwd_step")}
_MAX_B = 65  # one past the largest batch chunk (lstm_api.h engine_shape): every B-dependent choice


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


def _compile(arch: str) -> tuple[Path, str]:
    """lstm.cu -> cubin for sm_<arch> (any "80", "89", "90", "90a", ...;
    cached by source, nvcc version and arch): (cubin path, ptxas -v text)."""
    arch = str(arch).lower().removeprefix("sm_").removeprefix("compute_")
    if not re.fullmatch(r"\d{2,3}a?", arch):
        raise ValueError(f"unknown arch {arch!r}")
    why = unavailable_reason()
    if why is not None:
        raise RuntimeError(f"cannot compile the CUDA kernels: {why}")
    nvcc = nvcc_path()
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    h = hashlib.sha256(version.encode() + arch.encode())
    for name in sorted(os.listdir(SRC_DIR)):
        if name.endswith((".cu", ".h", ".cuh")):
            h.update(name.encode() + (SRC_DIR / name).read_bytes())
    for name in sorted(os.listdir(SRC_DIR.parent / "common")):
        h.update(name.encode() + (SRC_DIR.parent / "common" / name).read_bytes())
    base = _cache_dir() / f"sm_{arch}-{h.hexdigest()[:20]}"
    cubin, log = base.with_suffix(".cubin"), base.with_suffix(".ptxas.txt")
    if cubin.exists() and log.exists():
        return cubin, log.read_text()
    base.parent.mkdir(parents=True, exist_ok=True)
    cmd = [nvcc, "-cubin", f"-arch=sm_{arch}", "-std=c++17", "-O3", "-lineinfo", "-Xptxas", "-v",
           f"-I{SRC_DIR.parent}", f"-I{SRC_DIR}", str(SRC_DIR / "lstm.cu"), "-o", str(cubin)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"nvcc failed ({' '.join(cmd)}):\n{r.stderr[-4000:]}")
    log.write_text(r.stdout + r.stderr)
    return cubin, r.stdout + r.stderr


def cubin(arch) -> Path:
    """The cubin of lstm.cu for sm_<arch>, with -lineinfo (compiled once, cached)."""
    return _compile(str(arch))[0]


def kernel_resources(arch) -> dict[str, dict]:
    """Per-kernel ptxas figures of lstm.cu for one arch (compiled once, cached)."""
    arch = _norm_arch(arch)
    res = _parse_ptxas(_compile(arch)[1])
    if not res:
        raise RuntimeError(f"no kernels found in the ptxas output of lstm.cu for sm_{arch}")
    return res


def mangled(kind: int, dtype: str, engine: str) -> str:
    """The symbol of lstm_fwd_kernel / lstm_bwd_kernel<X, engine> (engine codes: lstm_api.h Engine)."""
    name, params, _ = KERNELS[kind]
    code = cuda_lstm.ENGINES[engine]
    return f"_ZN11bilstm_cuda{len(name)}{name}I{_KERNEL_TYPE[_norm_dtype(dtype)]}Li{code}EEEvNS_{len(params)}{params}E"


def _plan_module():
    for name in ("_cuda_emu", "_cuda"):
        mod = native.load(name)
        if not isinstance(mod, str):
            return mod
    raise RuntimeError(f"neither bilstm_fast._cuda_emu nor _cuda can be loaded: {mod}")


def dispatcher_plans(arch, H: int, dtype) -> list[dict]:
    """Every distinct plan make_plan chooses for (kind, H, dtype) on the arch's
    reference GPU with N = 2, over every B and TF32 setting; each dict gets
    ``kind``. [] if W_hh does not fit on that GPU."""
    arch, dtype = _norm_arch(arch), _norm_dtype(dtype)
    mod = _plan_module()
    _, sms, smem = REFERENCE_GPU[arch]
    seen, out = set(), []
    for kind in (0, 1):
        for tf32 in ((False, True) if dtype == "fp32" else (False,)):
            for B in range(1, _MAX_B + 1):
                try:
                    d = mod.plan(kind, 2, B, int(H), _DTYPE_CODE[dtype], sms, smem, warps=mod.gpu_warps, tf32=tf32)
                except RuntimeError:
                    return []
                key = (kind, d["engine"], d["blocks"], d["batch_tile"], d["reg_cols"])
                if key not in seen:
                    seen.add(key)
                    out.append(dict(d, kind=kind))
    return out


def rows(archs, hs, dtypes) -> list[dict]:
    """One row per (kernel, engine, arch, H, dtype) the dispatcher can choose: keys
    backend, kernel, arch (int for 80/90, "90a" for sm_90a), H, dtype, registers,
    spills, stack, smem_bytes, threads, note (engine first). Empty (with a
    message on stderr) if nvcc is not installed."""
    why = unavailable_reason()
    if why is not None:
        print(f"tools/cuda_resources.py: no CUDA C++ rows: {why}", file=sys.stderr)
        return []
    out = []
    for a in archs:
        arch = _norm_arch(a)
        res = kernel_resources(arch)
        gpu, sms, _ = REFERENCE_GPU[arch]
        for H in hs:
            for d in dtypes:
                dtype = _norm_dtype(d)
                plans = dispatcher_plans(arch, H, dtype)
                if not plans:
                    print(f"tools/cuda_resources.py: sm_{arch} H={H} {dtype}: W_hh does not fit on a {gpu}; "
                          "no cuda kernel is chosen there", file=sys.stderr)
                for kind in (0, 1):
                    for engine in sorted({p["engine"] for p in plans if p["kind"] == kind}):
                        mine = [p for p in plans if p["kind"] == kind and p["engine"] == engine]
                        sym = mangled(kind, dtype, engine)
                        if sym not in res:
                            raise RuntimeError(f"kernel {sym} not in the ptxas output for sm_{arch}")
                        r, worst = res[sym], max(mine, key=lambda p: p["smem_bytes"])
                        out.append(dict(
                            backend="cuda", kernel=KERNELS[kind][0], arch=int(arch) if arch.isdigit() else arch,
                            H=int(H), dtype=dtype, registers=r["registers"], spills=r["spills"],
                            stack=r["stack"], smem_bytes=r["smem_bytes"] + worst["smem_bytes"],
                            threads=worst["threads"],
                            note=(f"{engine} N=2: {worst['blocks']} blocks/dir x {worst['units']} units, "
                                  f"W_hh cols in regs {worst['reg_cols']}/{worst['kpad']}, "
                                  f"B-chunks {'/'.join(str(p['batch_tile']) for p in mine)} ({gpu} {sms} SMs)")))
    return out
