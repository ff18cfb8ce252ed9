"""Registers, spills and shared memory of the CUDA C++ kernels (csrc/cuda/lstm.cu)
for the compile report (``python tools/compile_report.py``), and the SASS
instruction mix of their per-step loops, with no GPU.
A developer tool: it needs the source tree (csrc/), so it lives in tools/, not in the package.

``rows(archs, hs, dtypes)`` compiles lstm.cu once per architecture with
``nvcc -cubin -lineinfo -Xptxas -v`` (a few minutes on 2 cores; the parsed
figures are cached under ~/.cache/bilstm_fast keyed by the source text,
nvcc version and arch) and returns one row per kernel variant the dispatcher
can choose for each (arch, H, dtype): lstm_fwd_kernel and lstm_bwd_kernel,
templated on (X, engine), for every engine ``make_plan`` picks on the arch's
reference GPU (sm_80: A100, 108 SMs, 163 KB shared memory per block;
sm_90/sm_90a: H100 SXM, 132 SMs, 227 KB) over every B (the plan depends on B
only through the batch chunk and, for fp16/bf16, B <= 8) and, for fp32, TF32
allowed or not. ``smem_bytes`` is the kernel's static shared memory plus the
largest dynamic shared memory of those plans. The plans come from the
compiled module itself (bilstm_fast._cuda_emu, the same host code, asked for
the GPU's 8 warps), so the report and the dispatcher cannot disagree. An
(arch, H, dtype) whose W_hh does not fit on the reference GPU has no row
(the dispatcher never runs a kernel there: backend="auto" takes triton).

``step_profile(arch, kind, dtype, engine)`` counts the SASS instructions, by
class, that the compiler attributes to the per-step function (fwd_step /
bwd_step, inlined into its kernel: the -lineinfo inlining records say which
instructions came from it), for docs/cuda.md's per-step cost model.

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
    """lstm.cu -> cubin for sm_<arch> (cached by source, nvcc version and arch): (cubin path, ptxas -v text)."""
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


# ------------------------------------------------------- per-step SASS profile
# Instruction classes of the per-step cost model (docs/cuda.md §4), by SASS opcode.
_CLASSES = (
    ("mma", ("HMMA", "IMMA", "HGMMA")),
    ("fma", ("FFMA", "FMUL", "FADD", "FMNMX", "FSETP", "FSEL", "FCHK")),
    ("sfu", ("MUFU",)),
    ("lds", ("LDS", "LDSM")),
    ("sts", ("STS",)),
    ("ldg", ("LDG", "LD")),
    ("stg", ("STG", "ST")),
    ("cp_async", ("LDGSTS", "LDGDEPBAR", "DEPBAR")),
    ("atomic", ("ATOM", "ATOMG", "RED")),
    ("sync", ("BAR", "MEMBAR", "FENCE", "CCTL", "ERRBAR", "CGAERRBAR", "WARPSYNC", "NANOSLEEP", "YIELD")),
    ("convert", ("F2F", "F2FP", "I2F", "F2I", "HADD2", "HMUL2", "HFMA2", "PRMT")),
    ("branch", ("BRA", "BSSY", "BSYNC", "EXIT", "RET", "CALL", "BREAK", "JMP", "BPT", "WARPSYNC")),
)
_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)(\.[A-Z0-9_.]*)?\s*([^;]*);")
_LINE = re.compile(r'//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')
_LABEL = re.compile(r"^(\.L_x_\d+):")


def insn_class(opcode: str) -> str:
    for name, ops in _CLASSES:
        if opcode in ops:
            return name
    return "int"   # integer / address arithmetic, moves, predicates, ...


def _regions() -> tuple[dict[int, dict[int, str]], dict[int, int]]:
    """lstm.cu: per kind, {line: region} over the step function's body (a line
    belongs to the last `[region]` tag at or above it), and {kind: line of the
    kernel's call of the step function}."""
    lines = (SRC_DIR / "lstm.cu").read_text().splitlines()
    regions, calls = {}, {}
    for kind, (_, _, step) in KERNELS.items():
        first = next(i for i, l in enumerate(lines, 1) if re.match(rf"__device__ __forceinline__ void {step}\(", l))
        cur, table = "setup", {}
        for i in range(first, len(lines) + 1):
            m = re.search(r"// \[(\w+)\]", lines[i - 1])
            if m:
                cur = m.group(1)
            table[i] = cur
            if lines[i - 1] == "}":
                break
        regions[kind] = table
        calls[kind] = next(i for i, l in enumerate(lines, 1) if re.search(rf"\b{step}\(k, \w+\);", l))
    return regions, calls


def _sass(arch: str) -> str:
    cubin, _ = _compile(arch)
    out = cubin.with_suffix(".sass.txt")
    if not out.exists():
        r = subprocess.run([_triton_bin("nvdisasm"), "-gi", str(cubin)], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"nvdisasm failed: {r.stderr[-2000:]}")
        out.write_text(r.stdout)
    return out.read_text()


def _triton_bin(name: str) -> str:
    """A CUDA binary Triton bundles (nvdisasm, cuobjdump): this toolkit ships only nvcc and ptxas."""
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def step_profile(arch, kind: int, dtype, engine: str) -> dict:
    """The SASS of fwd_step / bwd_step (kind 0 / 1) in the kernel <dtype, engine>
    for sm_<arch>, by region and instruction class: {"regions": {region:
    {class: n}}, "loops": [{"region", "depth", "static"}], "total": {class: n}}.
    An instruction belongs to the step when -lineinfo says it was inlined at
    the kernel's call of the step function; its line in the step function
    (nvdisasm reports that level) gives the region, named by the `// [region]`
    tags of lstm.cu. Loops are the backward branches inside the step, each
    with the static mix of its body (inner loops excluded): a per-step count
    is the region's static count plus each loop body times its extra trips."""
    arch = _norm_arch(arch)
    sym = mangled(kind, dtype, engine)
    regions, calls = _regions()
    table, step_line = regions[kind], calls[kind]
    text = _sass(arch)
    start = text.find(f".text.{sym}:")
    if start < 0:
        raise RuntimeError(f"{sym} not in the sm_{arch} SASS")
    end = text.find("\n.text.", start + 1)
    insns, labels, pending = [], {}, []
    inner = outer = 0
    for line in text[start:end if end > 0 else None].splitlines():
        m = _LINE.search(line)
        if m:
            if m.group(4):                       # "line A inlined at line B": A in the step function
                inner, outer = int(m.group(2)), int(m.group(4))
            elif not (inner and outer == int(m.group(2))):
                inner, outer = 0, int(m.group(2))
            continue
        lm = _LABEL.match(line.strip())
        if lm:
            pending.append(lm.group(1))
            continue
        im = _INSN.search(line)
        if im:
            addr = int(im.group(1), 16)
            for lab in pending:
                labels[lab] = addr
            pending = []
            region = table.get(inner, "loop") if outer == step_line else None
            insns.append((addr, insn_class(im.group(3)), im.group(3), region, im.group(5)))
    step = [i for i in insns if i[3] is not None]
    if not step:
        raise RuntimeError(f"no instruction of {KERNELS[kind][2]} (line {step_line}) found in {sym}")
    lo, hi = min(i[0] for i in step), max(i[0] for i in step)
    loops = []
    for addr, cls, op, region, ops in step:
        if op != "BRA":
            continue
        t = re.search(r"(\.L_x_\d+)", ops)
        target = labels.get(t.group(1)) if t else None
        if target is not None and lo <= target <= addr and not (target == lo and addr == hi):
            loops.append(dict(lo=target, hi=addr, region=region))
    for lp in loops:
        lp["depth"] = sum(1 for o in loops if o is not lp and o["lo"] <= lp["lo"] and o["hi"] >= lp["hi"])
        lp["static"] = {}
    by_region, total = {}, {}
    for addr, cls, op, region, ops in step:
        total[cls] = total.get(cls, 0) + 1
        by_region.setdefault(region, {})
        by_region[region][cls] = by_region[region].get(cls, 0) + 1
        inside = [lp for lp in loops if lp["lo"] <= addr <= lp["hi"]]
        if inside:
            lp = max(inside, key=lambda x: x["depth"])
            lp["static"][cls] = lp["static"].get(cls, 0) + 1
    loops.sort(key=lambda lp: lp["lo"])
    for lp in loops:
        lp["leaf"] = not any(o is not lp and lp["lo"] <= o["lo"] and o["hi"] <= lp["hi"] for o in loops)
    return dict(kernel=sym, arch=arch, total=total, regions=by_region,
                loops=[dict(region=lp["region"], depth=lp["depth"], leaf=lp["leaf"], lo=lp["lo"], hi=lp["hi"],
                            static=lp["static"]) for lp in loops])


# ------------------------------------------------------- per-step estimate
# The per-step cost model of docs/cuda.md §4. Every figure it gives is a
# prediction: these constants are leads, each with its source; a GPU run
# (bilstm-bench check) calibrates them.
H100 = dict(
    name="H100 SXM / H200 (GH100)",
    sms=132,                  # NVIDIA H100 whitepaper; the H200 is the same die
    clock_ghz=1.83,           # the boost clock the datasheet's 989 TFLOP/s fp16 = 132 SMs x 2048 FMA x 2 x f uses
    smem_per_block=227 * 1024,
    l2_latency=300,           # cycles, L2 hit load-to-use (Luo et al., "Benchmarking and Dissecting the Nvidia
                              # Hopper GPU Architecture", IPDPS 2024: ~260-300 on H800; the far partition more)
    l2_bytes_per_clk=3000,    # aggregate L2 read bandwidth, ~5.5 TB/s measured on H100 (Chips and Cheese,
                              # "Nvidia's H100: Funny L2, and Tons of Bandwidth", 2023) / 1.83 GHz
    sm_fill_bytes_per_clk=64, # L2 -> one SM (assumed: A100's 5120 B/clk over 108 SMs is ~47; Hopper's is unpublished)
    smem_bytes_per_clk=128,   # 32 banks x 4 B per SM per clock (CUDA C++ Programming Guide)
    # mma.sync (HMMA) throughput per SM: the A100 rate, 1024 fp16 / 512 tf32 FMA per clock (A100 whitepaper:
    # 312 / 156 TFLOP/s dense over 108 SMs at 1.41 GHz); Hopper's wgmma doubles it, mma.sync does not
    # (Luo et al. 2024 measure legacy mma at about half of wgmma's rate).
    hmma_fma_per_clk={"f16": 1024, "tf32": 512},
    hmma_latency=33,          # cycles, dependent HMMA.16816 accumulate (Luo et al. 2024; ~32 on Ampere)
    ffma_per_clk=128,         # 4 SMSPs x 32 lanes
    issue_per_clk=4,          # one warp instruction per SMSP per clock
    syncthreads=24,           # cycles for bar.sync across 8 warps (order of magnitude; calibrate)
    sfu_chain=200,            # cycles: the cell update's dependent chain (LDS, exp, rcp, tanh), per pair
)
_HMMA_FMA = {"HMMA.16816": 2048, "HMMA.1684": 512}
_MMA_PER_TILE = {"f16": 2, "tf32": 4}                   # HMMA per engine tile (wmma m32n8k16 / m16n16k8)
_FMA_PER_TILE = 32                                      # FFMA per lane per FMA-engine tile (4 columns x 8 k)


# Loads per K tile of the weight operand (a) and of each batch tile (b), and
# their SASS class, by (engine, kind, dtype), read off the SASS: nvcc lowers
# fp16 wmma loads from shared memory to LDSM, but bf16 and tf32 ones to 32-bit
# generic LD. They tell a K-tile loop's batch-tile count NNT from its ratio of
# MMA (FFMA) to load instructions, whatever the compiler's unroll factor.
_LOADS = {("f16", "fp16"): (2, 1, "lds"), ("f16", "bf16"): (8, 2, "ldg"),
          ("tf32", "fp32"): (4, 4, "ldg"), ("fma", "fp32"): (2, 8, "lds")}
_LOADS_BWD = {("fma", "fp32"): (8, 8, "lds")}   # col-major W^T tiles: 8 scalar loads


def _tile_costs(prof: dict, engine: str, kind: int, dtype: str, max_nt: int, reg_tiles: int) -> dict[int, dict]:
    """{NNT: {"smem": instructions by class per shared-memory K tile, "reg":
    the same per register tile (with the stage overhead spread over them)}}
    from the step's matmul loops: each batch-tile count NNT has its own copy
    of the loops (with_tiles), the K-tile loop innermost (unrolled by the
    compiler) inside the loop that also runs the register tiles."""
    key = "fma" if engine == "fma" else "mma"
    per = _FMA_PER_TILE if engine == "fma" else _MMA_PER_TILE[engine]
    a, b, ld = (_LOADS_BWD if kind == 1 else {}).get((engine, dtype), _LOADS[(engine, dtype)])
    mm = [lp for lp in prof["loops"] if lp["region"] == "mma" and lp["static"].get(key, 0) > 0]
    out = {}
    for lp in (lp for lp in mm if lp["leaf"] and lp["static"].get(ld, 0) > 0):
        n, loads = lp["static"][key], lp["static"][ld]
        # n = per * NNT * u and loads = (a + b * NNT) * u  =>  NNT = a * n / (per * loads - b * n)
        den = per * loads - b * n
        nnt = round(a * n / den) if den > 0 else 0
        if not 1 <= nnt <= max_nt or nnt in out:
            continue
        unroll = max(1, round(n / (per * nnt)))
        parent = min((o for o in mm if o is not lp and o["lo"] <= lp["lo"] and lp["hi"] <= o["hi"]),
                     key=lambda o: o["hi"] - o["lo"], default=None)
        out[nnt] = dict(smem={c: v / unroll for c, v in lp["static"].items()},
                        reg={c: v / max(1, reg_tiles) for c, v in (parent or lp)["static"].items()})
    return out


def step_estimate(kind: int, dtype, H: int, B: int, N: int = 2, tf32: bool = False, gpu: dict = H100,
                  arch="90") -> dict:
    """Predicted cycles and microseconds of one step (both directions run at
    once on their own SMs, so this is the layer's step) of the kernel the
    dispatcher picks for (kind, dtype, H, B) on `gpu`, with its breakdown:
    the serial chain barrier -> stage -> matmul -> cell update -> publish
    (forward) / barrier -> receive -> sum -> dG -> matmul + send (backward),
    each part the maximum of its issue, tensor, shared-memory, L2 and latency
    bounds. Instruction counts per K tile and register tile come from the
    compiled SASS (step_profile); the rest of the formulas and constants are
    docs/cuda.md §4's. A prediction, never a measurement."""
    dtype = _norm_dtype(dtype)
    mod = _plan_module()
    d = mod.plan(kind, N, B, H, _DTYPE_CODE[dtype], gpu["sms"], gpu["smem_per_block"], warps=mod.gpu_warps,
                 tf32=tf32)
    engine = d["engine"]
    from bilstm_fast.ops import cuda_lstm  # noqa: F401  (engine names)
    shape = dict(f16=(32, 8, 16, 8, 4), tf32=(16, 16, 8, 16, 4), fma=(16, 8, 8, 8, 8))
    M, Nt, K, RT, MAX_NT = shape[engine]
    es = 4 if dtype == "fp32" else 2
    U, blocks, nw, NB, Kr, Kpad, KS = d["units"], d["blocks"], d["warps"], d["batch_tile"], d["reg_cols"], d["kpad"], d["ksplit"]
    Hx, threads = blocks * U, 32 * nw
    costs = _tile_costs(step_profile(arch, kind, dtype, engine), engine, kind, dtype, MAX_NT, RT)
    share = min(gpu["sm_fill_bytes_per_clk"], gpu["l2_bytes_per_clk"] / (N * blocks))  # B/clk into one SM
    fma_rate = gpu["ffma_per_clk"] if engine == "fma" else gpu["hmma_fma_per_clk"][engine]
    lat, sync = gpu["l2_latency"], gpu["syncthreads"]
    barrier = 2.5 * lat + sync     # release (fence + atomic to L2) + a poll's round trip + half a poll + bar.sync
    parts = dict(barrier=barrier)
    chunks = [min(NB, B - b0) for b0 in range(0, B, NB)]

    def mma(slots_per_warp, kcount, qr_tiles, nnt, active_warps, mtiles_total):
        c = costs[nnt]
        instr = qr_tiles * sum(c["reg"].values()) + (kcount - qr_tiles) * sum(c["smem"].values())
        instr *= slots_per_warp
        issue = active_warps * instr / gpu["issue_per_clk"]
        fmas = mtiles_total * kcount * nnt * M * Nt * K
        tensor = fmas / fma_rate
        a_bytes = M * K * es
        b_bytes = K * Nt * es
        smem = mtiles_total * ((kcount - qr_tiles) * a_bytes + kcount * nnt * b_bytes) / gpu["smem_bytes_per_clk"]
        chain = slots_per_warp * kcount * (gpu["hmma_latency"] if engine != "fma" else 8 * 4)
        return dict(issue=issue, tensor=tensor, smem=smem, chain=chain, time=max(issue, tensor, smem, chain))

    total = barrier
    detail = []
    for nb in chunks:
        nnt = -(-nb // Nt)
        pairs = -(-nb * U // threads)
        xfer = nb * Hx * es / share
        if kind == 0:
            MT, KT = 4 * U // M, Kpad // K
            slots = MT * KS
            G = min(4, KT) if slots <= nw else 1
            kcount = -(-KT // KS)
            qr = min(RT, Kr // (KS * K)) if slots <= nw else 0
            mm = mma(-(-slots // nw), kcount, qr, nnt, min(slots, nw), slots)
            stage_first = lat + xfer / G
            overlap = max(mm["time"], xfer * (G - 1) / G)
            cell = max(nw * pairs * (150 + 24 * KS) / gpu["issue_per_clk"], gpu["sfu_chain"])
            publish = 40
            syncs = (G + 3) * sync
            t = stage_first + overlap + cell + publish + syncs
            detail.append(dict(rows=nb, nnt=nnt, stage_first=stage_first, stage_bytes=nb * Hx * es,
                               stage_rest=xfer * (G - 1) / G, mma=mm, cell=cell, publish=publish, syncs=syncs))
        else:
            MT, KT = Kpad // M, 4 * U // K
            rho = Kr // (nw * M)
            slots_w = -(-MT // nw)
            mm = mma(1, KT, 0, nnt, nw, MT)      # shape of the work; register slots only save shared-memory bytes
            smem_saved = rho * nw * KT * M * K * es / gpu["smem_bytes_per_clk"]
            mm["smem"] = max(0.0, mm["smem"] - smem_saved)
            c = costs[nnt]
            instr = (rho * KT * sum(c["reg"].values()) + (slots_w - rho) * KT * sum(c["smem"].values()))
            mm["issue"] = nw * instr / gpu["issue_per_clk"]
            mm["chain"] = slots_w * (KT * gpu["hmma_latency"] + lat / 2)   # per slot: the K chain, then its stores
            mm["time"] = max(mm["issue"], mm["tensor"], mm["smem"], mm["chain"])
            receive = lat + xfer
            rsum = blocks / 2 * 4 + 40 + nw * pairs * blocks * 2 / gpu["issue_per_clk"]
            dgates = max(nw * pairs * 120 / gpu["issue_per_clk"], gpu["sfu_chain"] * 0.75)
            send = max(mm["time"], xfer)        # stores drain while the matmul runs
            syncs = 4 * sync
            t = receive + rsum + dgates + send + syncs
            detail.append(dict(rows=nb, nnt=nnt, receive=receive, receive_bytes=nb * Hx * es, sum=rsum,
                               dgates=dgates, mma=mm, send_bytes=nb * Hx * es, send=send, syncs=syncs))
        total += t
    cycles = total
    return dict(kind=kind, dtype=dtype, H=H, B=B, N=N, engine=engine, plan=d, gpu=gpu["name"], cycles=cycles,
                us=cycles / (gpu["clock_ghz"] * 1e3), barrier=barrier, chunks=detail,
                l2_bytes_per_step=N * blocks * B * Hx * es * (1 if kind == 0 else 2))


TARGETS = [(16, 768)] + [(B, H) for H in (256, 512, 1024) for B in (1, 8, 32, 64)] + [(128, 1024), (256, 1024)]


def estimate_table(dtypes=("fp16", "bf16", "fp32-tf32", "fp32"), targets=TARGETS, gpu=H100) -> list[dict]:
    """step_estimate for forward and backward at each target (B, H) and dtype
    ("fp32-tf32": fp32 with TF32 allowed): one row each, for docs/cuda.md §4."""
    rows = []
    for name in dtypes:
        dtype, tf32 = name.split("-")[0], name.endswith("tf32")
        for B, H in targets:
            try:
                f, b = (step_estimate(kind, dtype, H, B, tf32=tf32, gpu=gpu) for kind in (0, 1))
            except RuntimeError as e:
                rows.append(dict(dtype=name, B=B, H=H, error=str(e).split(":")[1][:60]))
                continue
            macs = 2 * 4 * H * H * B            # both directions' recurrent matmul per step
            peak = 2 * 989e12 / 2               # dense fp16 FMA/s of the datasheet (wgmma)
            rows.append(dict(dtype=name, B=B, H=H, engine=f["engine"], fwd_us=f["us"], bwd_us=b["us"],
                             fwd=f, bwd=b, tc_frac=macs / (f["us"] * 1e-6) / peak))
    return rows


def _fmt_part(e: dict) -> str:
    c = e["chunks"]
    if e["kind"] == 0:
        mm = max(x["mma"]["time"] for x in c)
        bound = max(c[0]["mma"], key=lambda k: c[0]["mma"][k] if k != "time" else -1)
        return (f"bar {e['barrier']:.0f} + stage {sum(x['stage_first'] for x in c):.0f} + mma {sum(x['mma']['time'] for x in c):.0f} "
                f"({bound}) + cell {sum(x['cell'] for x in c):.0f} + rest {sum(x['publish'] + x['syncs'] for x in c):.0f}")
    bound = max(c[0]["mma"], key=lambda k: c[0]["mma"][k] if k != "time" else -1)
    return (f"bar {e['barrier']:.0f} + recv {sum(x['receive'] for x in c):.0f} + sum {sum(x['sum'] for x in c):.0f} "
            f"+ dG {sum(x['dgates'] for x in c):.0f} + mma/send {sum(x['send'] for x in c):.0f} ({bound}) "
            f"+ sync {sum(x['syncs'] for x in c):.0f}")


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="CUDA kernel resources and per-step estimates (docs/cuda.md §4)")
    ap.add_argument("--estimate", action="store_true", help="print the per-step estimate table (markdown)")
    ap.add_argument("--arch", default="90")
    args = ap.parse_args()
    if args.estimate:
        print("| dtype | B | H | engine | fwd µs/step | bwd µs/step | (f+b)/f | fwd breakdown (cycles) | bwd breakdown (cycles) |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in estimate_table():
            if "error" in r:
                print(f"| {r['dtype']} | {r['B']} | {r['H']} | — | no plan: {r['error']} | | | | |")
                continue
            print(f"| {r['dtype']} | {r['B']} | {r['H']} | {r['engine']} | {r['fwd_us']:.2f} | {r['bwd_us']:.2f} | "
                  f"{(r['fwd_us'] + r['bwd_us']) / r['fwd_us']:.2f} | {_fmt_part(r['fwd'])} | {_fmt_part(r['bwd'])} |")
