"""Per-step cost model of the recurrence kernels, from their compiled SASS:
the proof of speed we can give without a GPU (issue 12). Every figure it
prints is a PREDICTION, with its breakdown; none is a measurement.

    python tools/cost_model.py                       # the issue's shapes, 5 GPUs; exit 1 if a target is missed
    python tools/cost_model.py --report-only         # same table, exit 0 (CI while kernels are in flux)
    python tools/cost_model.py --gpu H100 --kernel cuda.fwd --dtype fp16 --H 768 --B 16 -v
    python tools/cost_model.py --json                # one JSON object per row
    python tools/cost_model.py --constants           # every constant used, with its source

From Python (bilstm-bench prints it beside the measured time, from a checkout):

    sys.path.insert(0, "<checkout>/tools"); import cost_model
    cost_model.predict("NVIDIA H100 80GB HBM3", "cuda.fwd", "fp16", 768, 16)["us_per_step"]

Method (docs/cost_model.md has the full write-up):
1. The kernel variant the dispatcher would launch for (GPU, dtype, H, B) is
   compiled ahead of time for the GPU's architecture (nvcc -cubin -lineinfo /
   triton.compile) and disassembled (tools/sass.py).
2. Its step loop is found (a source line named by the kernel's description,
   or a `cost-model: step loop` marker comment), and every loop inside it gets
   a trip count from the launch plan (the description's LoopSpecs).
3. One warp is simulated through one step: it issues in order, waits for the
   scoreboards the compiler's control codes name, and each variable-latency
   operation (shared/L2/HBM loads, atomics, fences, barriers) releases its
   scoreboard after the latency in bilstm_fast/bench/gpu_specs.py. That is
   the serial latency chain.
4. The same instructions, times their trip counts and active warps, give the
   SM's throughput bounds: issue slots, each pipe (FP32, ALU, SFU, tensor),
   shared-memory wavefronts, the SM's L2 port; and the GPU's L2 / HBM bounds.
5. Per loop, time = max(latency chain, throughput bound); a step is the sum of
   its parts in program order.

The interface a kernel variant provides is `KernelModel` (below): `launch()`
returns a `Launch` (the plan, grid, warps, the step loop's `Site`, one
`LoopSpec` per loop inside it, `MemHint`s for loads served by HBM), and
`cubin()` the compiled code. Today's kernels: `CudaKernel` (csrc/cuda/lstm.cu)
and `TritonKernel` (bilstm_fast/ops/triton_kernels.py, planned by triton_plan.py).
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))            # tools/: sass, compile_report
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))        # the checkout: bilstm_fast

import sass  # noqa: E402
from bilstm_fast.bench import gpu_specs  # noqa: E402
from bilstm_fast.bench.gpu_specs import GpuSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("fp32", "fp16", "bf16")
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
MARKER = "cost-model:"   # `// cost-model: step loop` (C++) or `# cost-model: step loop` (Python)
T_DEFAULT = 100          # sequence length assumed for cache residency (gx of all T steps in L2 or not)


def gx_level(gpu: GpuSpec, T: int, B: int, N: int, H: int, dtype: str) -> str:
    """Where the forward reads gx: the input projection (one GEMM) writes all T
    steps just before the recurrence, so they are L2 hits while they fit in
    half the L2 (the rest: the exchange buffers, weights, other traffic)."""
    size = T * B * N * 4 * H * DTYPE_BYTES[dtype]
    return "l2" if gpu.l2_bytes and size <= gpu.l2_bytes / 2 else "hbm"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bilstm_fast" / "cost_model"


# =============================================================== interface
@dataclass(frozen=True)
class Site:
    """A source line, found by its text: the lines of `file` (None: the
    kernel's source) that match the regex `pattern`; or, with
    `marker`, the line that carries the comment `cost-model: <marker>` (or the
    first code line after it)."""
    pattern: str = ""
    marker: str = ""
    file: Optional[str] = None


@dataclass(frozen=True)
class LoopSpec:
    """Trip count of one source loop inside the step loop.

    where : Sites, innermost first: the loop's own line, then (optionally) the
            call sites it is inlined through; the loop's back-branch must have
            each in its chain of source lines, in that order.
    iters : source iterations per iteration of the enclosing loop, for the
            busiest warp (0: not executed under this plan).
    warps : warps of the block that run it (None: as the enclosing loop).
    has / lacks : regexes on opcodes of the loop's own body, to tell apart
            copies of one source line (e.g. a template instantiated twice).
    work  : (class, count) executed once per source iteration, to read the
            compiler's unroll factor exactly; unroll: the factor itself
            (None for both: sass.unroll_factor, or 1 for a loop holding loops).
    smem_ways : shared-memory bank-conflict degree of its shared accesses.
    generic : what its generic loads/stores (LD/ST: the compiler could not
            tell the address space) address: "global" or "shared".
    """
    name: str
    where: tuple[Site, ...]
    iters: float
    warps: Optional[int] = None
    has: str = ""
    lacks: str = ""
    work: Optional[tuple[str, int]] = None
    unroll: Optional[int] = None
    smem_ways: float = 1.0
    generic: str = "global"


@dataclass(frozen=True)
class MemHint:
    """Global loads on a source line (Site) served by `level`: "hbm", "l2"
    (the default for every global access: exchange buffers and weights that
    stay L2-resident), or "off": predicated off in the steady state (a load
    masked to the first or last step), so it returns at once and moves no bytes."""
    where: Site
    level: str


@dataclass
class Launch:
    """What a kernel variant tells the model about one launch."""
    variant: str                 # which compiled variant, e.g. "onchip" / "streamed BH=32"
    function: str                # regex on the mangled function name in the cubin
    source: Path                 # the kernel's source file (line matching)
    blocks: int                  # blocks (programs) in the grid
    warps: int                   # warps per block
    step: Site                   # the step loop
    loops: list[LoopSpec]
    mem: list[MemHint] = field(default_factory=list)
    blocks_per_sm: int = 1       # co-resident blocks per SM (more blocks than that run in waves)
    gemm_flops: float = 0.0      # recurrent-GEMM FLOPs per step, whole grid (for the tensor-core target)
    spin_polls: int = 1          # failed polls of a grid-barrier spin loop (a NANOSLEEP loop): the
                                 # last block arrives one poll period after the others
    plan: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class KernelModel:
    """A kernel variant family the dispatcher can choose: name "<backend>.<pass>"."""
    name = ""
    backend = ""
    pass_ = ""

    def launch(self, gpu: GpuSpec, dtype: str, H: int, B: int, N: int = 2, T: int = 100) -> Launch:
        """T: the sequence length, only for what stays in L2 (gx of all steps)."""
        raise NotImplementedError

    def cubin(self, gpu: GpuSpec, dtype: str, H: int, launch: Launch) -> bytes:
        raise NotImplementedError

    def unavailable_reason(self) -> Optional[str]:
        return None


# ========================================================== source lines
@lru_cache(maxsize=None)
def _lines(path: str) -> tuple[str, ...]:
    try:
        return tuple(Path(path).read_text().splitlines())
    except OSError:
        return ()


@lru_cache(maxsize=None)
def resolve(site: Site, default: Path) -> frozenset[tuple[str, int]]:
    """(basename, line) pairs a Site names."""
    path = str(ROOT / site.file) if site.file else str(default)
    lines = _lines(path)
    name = Path(path).name
    out = set()
    if site.marker:
        tag = re.compile(re.escape(MARKER) + r"\s*" + re.escape(site.marker) + r"\b")
        for i, text in enumerate(lines):
            if tag.search(text):
                code = text.split("//")[0].split("#")[0].strip()
                j = i
                while not code and j + 1 < len(lines):      # a comment line: the next code line
                    j += 1
                    code = lines[j].split("//")[0].split("#")[0].strip()
                out.add((name, j + 1))
        return frozenset(out)
    rx = re.compile(site.pattern)
    return frozenset((name, i + 1) for i, text in enumerate(lines) if rx.search(text))


@lru_cache(maxsize=None)
def _chain_key(chain) -> tuple[tuple[str, int], ...]:
    return tuple((Path(f).name, l) for f, l in chain)


def _matches(chain, sites: list[set]) -> bool:
    """Each site set hits the chain, in order, innermost first."""
    key = _chain_key(chain)
    pos = 0
    for s in sites:
        while pos < len(key) and key[pos] not in s:
            pos += 1
        if pos == len(key):
            return False
        pos += 1
    return True


def source_text(chain) -> str:
    f, l = chain[0]
    lines = _lines(f)
    return lines[l - 1].strip() if 0 < l <= len(lines) else "?"


# =========================================================== the machine
class Machine:
    """A GPU's SM as the model sees it (bilstm_fast/bench/gpu_specs.py)."""

    def __init__(self, gpu: GpuSpec, l2: str = "mean"):
        """l2: the L2 hit latency used, "near" / "far" partition or their "mean"
        (an exchange buffer's lines are spread over both partitions)."""
        self.gpu = gpu
        self.a = gpu_specs.arch_facts(gpu.cc)
        self.clock = gpu.clock_hz
        a = self.a
        self.l2_range = (a["lat_l2_near"], a["lat_l2_near"] * a["l2_far_factor"])
        self.l2 = {"near": self.l2_range[0], "far": self.l2_range[1], "mean": sum(self.l2_range) / 2}[l2]
        self.hbm = self.l2 + a["lat_hbm_extra"]
        self.tc = {d: gpu_specs.tensor_fma_per_clk(gpu, d) for d in ("fp16", "bf16", "tf32")}
        self.tc_wgmma = {d: gpu_specs.tensor_fma_per_clk(gpu, d, wgmma=True) for d in ("fp16", "bf16", "tf32")}

    def pipe(self, ins: sass.Instr) -> tuple[str, float]:
        """(pipe, cycles one warp instruction holds it on its SM sub-partition);
        ("", 0) for instructions only the issue slot and the memory bounds count."""
        a, c = self.a, ins.cls
        lanes = {"fp32": a["fp32_lanes"], "fp16": a["fp16x2_lanes"], "imad": a["imad_lanes"],
                 "alu": a["int_lanes"], "move": a["int_lanes"], "sfu": a["sfu_lanes"],
                 "conv": a["conv_lanes"]}.get(c)
        if ins.op == "F2FP":             # f32 -> f16/bf16 pack: assumed at the integer-ALU rate
            lanes = a["int_lanes"]
        if lanes:
            return c if c != "move" else "alu", 32 / (lanes / 4)
        if c == "mma":
            m, n, k = sass.mma_shape(ins.opcode)
            kind = "tf32" if "TF32" in ins.opcode else ("bf16" if "BF16" in ins.opcode else "fp16")
            if ins.op.endswith("GMMA"):
                return "tensor", m * n * k / 4 / (self.tc_wgmma[kind] / 4)
            return "tensor", m * n * k / (self.tc[kind] / 4)
        return "", 0.0

    def wavefronts(self, ins: sass.Instr) -> float:
        """Shared-memory wavefronts (128 B per clock per SM) of one warp access."""
        return max(1.0, 32 * sass.access_bytes(ins.opcode) / self.a["smem_bytes_clk"])

    def latency(self, ins: sass.Instr, level: str, cls: str = "") -> float:
        """Cycles until a variable-latency result is written (its scoreboard released)."""
        a, c = self.a, cls or ins.cls
        if c in ("global_ld", "atomic", "async_copy"):
            if level == "off":
                return a["lat_reg_read"]
            base = self.hbm if level == "hbm" else self.l2
            return base + (a["lat_atomic"] if c == "atomic" else 0)
        if c in ("shared_ld", "shared_atom", "local"):
            return a["lat_smem"] + self.wavefronts(ins) - 1
        return {"sfu": a["lat_mufu"], "conv": a["lat_conv"], "special": a["lat_s2r"],
                "const": a["lat_ldc"], "shuffle": a["lat_shfl"], "mma": a["lat_hmma"]}.get(c, a["lat_conv"])

    def blocking(self, ins: sass.Instr) -> tuple[str, float]:
        """Instructions that hold the warp for a while themselves (not via a scoreboard)."""
        a = self.a
        if ins.op == "BAR" and ".SYNC" in ins.opcode or ins.opcode.startswith("BAR.RED"):
            return "bar.sync", a["lat_bar"]
        if ins.op == "MEMBAR":
            return "fence", self.l2 * a["lat_membar"] if (".GPU" in ins.opcode or ".SYS" in ins.opcode) \
                else a["lat_smem"]
        if ins.op == "CCTL":
            return "fence", a["lat_cctl"]
        if ins.op == "NANOSLEEP":
            m = re.search(r"0x([0-9a-f]+)|(\d+)", ins.operands)
            ns = int(m.group(1), 16) if m and m.group(1) else int(m.group(2)) if m else 0
            return "sleep", ns * 1e-9 * self.clock * a["nanosleep_ns"]
        return "", 0.0


WAIT_KIND = {"global_ld": "L2/HBM load", "atomic": "atomic", "async_copy": "async copy",
             "shared_ld": "shared load", "shared_atom": "shared load", "local": "local load"}


# ============================================================== analysis
@dataclass
class Node:
    """A loop of the step loop's body, with its trip count and results."""
    loop: sass.Loop
    spec: Optional[LoopSpec]
    trips: float                  # SASS iterations per iteration of the parent node
    warps: int
    unroll: int = 1
    children: list["Node"] = field(default_factory=list)
    t_lat: float = 0.0            # latency-chain cycles of all its trips
    t_thr: float = 0.0            # throughput-bound cycles of all its trips
    t: float = 0.0                # max of the two: its contribution to the parent

    bounds: dict = field(default_factory=dict)   # throughput bound per resource, one iteration

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else "grid-barrier spin" if self.trips else "?"


class StepAnalysis:
    """One step of one kernel variant on one GPU: the step loop of the SASS,
    its loops with trip counts (a tree of Nodes), one warp simulated through
    it, the throughput bounds of all warps. After run(): root.t is the SM's
    cycles per step; counts / opcodes / bytes / waits / round_trips the
    per-step breakdown (counts and bytes for the whole block, waits and round
    trips along the simulated warp's path)."""

    def __init__(self, m: Machine, instrs: list[sass.Instr], launch: Launch):
        self.m, self.instrs, self.launch = m, instrs, launch
        self.by_addr = {i.addr: n for n, i in enumerate(instrs)}
        roots = sass.loop_tree(instrs)
        self.step = self._find_step(roots)
        self.mem_lines: dict = {}            # (file, line) -> "hbm" / "off"
        for h in launch.mem:
            for key in resolve(h.where, launch.source):
                self.mem_lines[key] = h.level
        self.counts: dict = {}             # class -> warp instructions per step (whole block)
        self.opcodes: dict = {}            # memory opcode -> warp instructions per step
        self.bytes = {"shared": 0.0, "l2": 0.0, "hbm": 0.0, "global_store": 0.0}
        self.waits: dict = {}              # what the simulated warp waited for, cycles per step
        self.round_trips = 0.0             # dependent global round trips on the simulated warp's path
        self.barrier_cycles = 0.0          # the simulated warp's time in grid barriers, per step
        self.thr_totals: dict = {}         # throughput bound per resource, cycles per step (all loops)
        self.shared_generic = self._generic_shared()   # addresses of LD/ST that address shared memory
        self.skip = self._not_executed()
        self.root = self._build(self.step, None, 1, launch.warps)
        self.barrier_addrs = self._grid_barriers()

    # ---------------------------------------------------------- structure
    def _find_step(self, roots: list[sass.Loop]) -> sass.Loop:
        lines = resolve(self.launch.step, self.launch.source)
        found = [l for l in sass.all_loops(roots) if _matches(l.chain, [lines])]
        if not found:
            # a marker the kernel may carry, then the loop that holds the grid barrier's atomic
            mark = resolve(Site(marker="step loop"), self.launch.source)
            found = [l for l in sass.all_loops(roots) if mark and _matches(l.chain, [mark])]
        if not found:
            atomics = [i.addr for i in self.instrs if i.cls == "atomic"]
            found = [l for l in sass.all_loops(roots) if any(l.contains(a) for a in atomics)]
            found = [l for l in found if not any(c.contains(a) for c in l.children for a in atomics)]
        if not found:
            raise LookupError(f"no step loop in {self.launch.function}: no loop's back-branch is on "
                              f"{self.launch.step} and none carries a '{MARKER} step loop' marker")
        return min(found, key=lambda l: l.header)        # the outermost (first) such loop

    def _generic_shared(self) -> set:
        """LD/ST of LoopSpecs with generic="shared": in their SASS loops, and in
        code peeled out of them (which keeps the call-site line, the spec's
        outermost Site, when it has one)."""
        out = set()
        for spec in self.launch.loops:
            if spec.generic != "shared":
                continue
            sites = [resolve(s, self.launch.source) for s in spec.where]
            for lp in sass.all_loops(sass.loop_tree(self.instrs)):
                if _matches(lp.chain, sites):
                    out |= {i.addr for i in sass.body(self.instrs, lp, own=False) if i.op in ("LD", "ST")}
            if len(sites) > 1:
                out |= {i.addr for i in self.instrs if i.op in ("LD", "ST") and _matches(i.chain, sites[-1:])}
        return out

    def _not_executed(self) -> set:
        """Straight-line code of loops this plan does not run: the prologue and
        remainder iterations the compiler peeled out of a loop sit outside its
        SASS loop but keep the loop's call-site line. An instruction inside the
        step loop whose source chain hits the outermost Site of a LoopSpec with
        iters == 0, and of none with iters > 0, is skipped."""
        zero, live = [], []
        for spec in self.launch.loops:
            (zero if spec.iters <= 0 else live).append(resolve(spec.where[-1], self.launch.source))
        out = set()
        for i in self.instrs:
            if not self.step.contains(i.addr) or not i.chain:
                continue
            if any(_matches(i.chain, [z]) for z in zero) and not any(_matches(i.chain, [l]) for l in live):
                out.add(i.addr)
        return out

    def _grid_barriers(self) -> set:
        """Addresses of the step loop's grid barriers: from the last BAR.SYNC
        before a global atomic (the arrival) to the first BAR.SYNC after it
        (the spin loop between them is timed as its own node)."""
        own = [i for i in sass.body(self.instrs, self.step, own=False)]
        out = set()
        for n, ins in enumerate(own):
            if ins.cls != "atomic":
                continue
            lo = max((k for k in range(n) if own[k].op == "BAR"), default=n)
            hi = min((k for k in range(n + 1, len(own)) if own[k].op == "BAR"), default=n)
            out |= {own[k].addr for k in range(lo, hi + 1)}
        return out

    def _spec_for(self, loop: sass.Loop) -> Optional[LoopSpec]:
        own = sass.body(self.instrs, loop)
        for spec in self.launch.loops:
            sites = [resolve(s, self.launch.source) for s in spec.where]
            if not _matches(loop.chain, sites):
                continue
            ops = " ".join(i.opcode for i in own)
            if spec.has and not re.search(spec.has, ops):
                continue
            if spec.lacks and re.search(spec.lacks, ops):
                continue
            return spec
        return None

    def _build(self, loop: sass.Loop, spec, trips, warps) -> Node:
        node = Node(loop, spec, trips, warps)
        groups: dict = {}
        for child in loop.children:
            cs = self._spec_for(child)
            if cs is None and any(i.op == "NANOSLEEP" for i in sass.body(self.instrs, child)):
                # an undescribed loop that sleeps: a grid barrier's spin loop (Launch.spin_polls)
                groups.setdefault(("spin", id(child)), (None, []))[1].append(child)
                continue
            if cs is None:
                raise LookupError(
                    f"{self.launch.function}: no LoopSpec for the loop at {child.header:#x} "
                    f"({' <- '.join(f'{f}:{l}' for f, l in _chain_key(child.chain))}: "
                    f"'{source_text(child.chain)}'); the kernel's description must give its trip count")
            groups.setdefault(cs.name, (cs, []))[1].append(child)
        for key, (cs, versions) in groups.items():
            if cs is None:                                          # spin loop
                n = Node(versions[0], None, self.launch.spin_polls, warps)
                n.children = [self._build(c, None, 0, 1) for c in versions[0].children]
                node.children.append(n)
                continue
            w = cs.warps if cs.warps is not None else warps
            us = [self._unroll(c, cs) for c in versions]
            # source iterations go to the most-unrolled copy first, the rest to the
            # remainder copies (how nvcc/LLVM split an unrolled loop)
            rem = cs.iters
            order = sorted(range(len(versions)), key=lambda k: -us[k])
            trips_of = {}
            for k in order:
                trips_of[k] = math.floor(rem / us[k] + 1e-9) if k != order[-1] else math.ceil(rem / us[k] - 1e-9)
                rem -= trips_of[k] * us[k]
            for k, c in enumerate(versions):
                child = self._build(c, cs, trips_of[k], w)
                child.unroll = us[k]
                node.children.append(child)
        node.children.sort(key=lambda n: n.loop.header)
        return node

    def _unroll(self, loop: sass.Loop, spec: LoopSpec) -> int:
        own = sass.body(self.instrs, loop)
        if spec.unroll:
            return spec.unroll
        if spec.work:
            cls, per_iter = spec.work
            n = sum(1 for i in own if i.cls == cls)
            return max(1, round(n / per_iter))
        if loop.children:
            return 1
        return sass.unroll_factor(self.instrs, loop)

    # ---------------------------------------------------------- timing
    def cls(self, ins: sass.Instr) -> str:
        """The instruction's class, generic loads/stores resolved by the LoopSpec."""
        c = ins.cls
        if ins.op in ("LD", "ST") and ins.addr in self.shared_generic:
            return "shared_ld" if ins.op == "LD" else "shared_st"
        return c

    def level(self, ins: sass.Instr) -> str:
        """Where a global access is served: the innermost source line with a MemHint, else L2."""
        for k in _chain_key(ins.chain):
            if k in self.mem_lines:
                return self.mem_lines[k]
        return "l2"

    def _own(self, node: Node) -> list[sass.Instr]:
        return sass.body(self.instrs, node.loop)

    def _callee(self, ins: sass.Instr) -> list[sass.Instr]:
        k = self.by_addr.get(ins.target)
        out = []
        while k is not None and k < len(self.instrs) and self.instrs[k].op != "RET":
            out.append(self.instrs[k])
            k += 1
        return out

    def _sim_pass(self, node: Node, t: float, sb: list, sbk: list, record: float) -> float:
        """One pass over a loop body for one warp, from cycle t; nested loops
        take their own time. `record` > 0 accumulates waits / counts with that weight."""
        m = self.m
        kids = {c.loop.header: c for c in node.children}
        stops = {c.loop.header: c.loop.end for c in node.children}
        k = self.by_addr[node.loop.header]
        end = node.loop.end
        while k < len(self.instrs) and self.instrs[k].addr <= end:
            ins = self.instrs[k]
            if ins.addr in kids:
                child = kids[ins.addr]
                t += child.t
                if record and child.spec is None and child.loop.header in self.barrier_addrs:
                    self.barrier_cycles += child.t * record
                for b in range(len(sb)):
                    sb[b] = min(sb[b], t)
                k = self.by_addr[stops[ins.addr]] + 1
                continue
            if ins.addr not in self.skip:
                seq = [ins] + (self._callee(ins) if ins.calls_subroutine else [])
                t0 = t
                for x in seq:
                    t = self._issue(x, t, sb, sbk, record)
                if record and ins.addr in self.barrier_addrs:
                    self.barrier_cycles += (t - t0) * record
            k += 1
        return t

    def _issue(self, ins: sass.Instr, t: float, sb: list, sbk: list, record: float) -> float:
        m = self.m
        c = ins.ctrl or sass.Ctrl(1, 0, 7, 7, 0, 0)
        ready = t
        kind = None
        for b in range(6):
            if c.wait >> b & 1 and sb[b] > ready:
                ready, kind = sb[b], sbk[b]
        if ins.op == "DEPBAR":                           # DEPBAR.LE SBn, k: wait for scoreboard n
            mm = re.search(r"SB(\d)", ins.operands)
            if mm and sb[int(mm.group(1))] > ready:
                ready, kind = sb[int(mm.group(1))], sbk[int(mm.group(1))]
        if ins.op == "WARPGROUP" and "DEPBAR" in ins.opcode and sb[6] > ready:
            ready, kind = sb[6], "tensor"
        if record and ready > t:
            self.waits[kind or "?"] = self.waits.get(kind or "?", 0.0) + (ready - t) * record
            if kind == "L2/HBM load" and ready - t > 0.5 * m.l2:
                self.round_trips += record
        issue = ready
        bk, bt = m.blocking(ins)
        if bt:
            issue += bt
            if record:
                self.waits[bk] = self.waits.get(bk, 0.0) + bt * record
        cls = self.cls(ins)
        lvl = self.level(ins) if cls in ("global_ld", "atomic") else "l2"
        if c.wbar != 7:
            sb[c.wbar] = max(sb[c.wbar], issue + m.latency(ins, lvl, cls))
            sbk[c.wbar] = WAIT_KIND.get(cls, cls)
        if c.rbar != 7:
            sb[c.rbar] = max(sb[c.rbar], issue + m.a["lat_reg_read"])
            sbk[c.rbar] = "register read"
        if ins.op.endswith("GMMA"):
            sb[6] = max(sb[6], issue) + m.pipe(ins)[1]
        return issue + max(1, c.stall)

    def _throughput(self, node: Node, record: float) -> float:
        """SM cycles one iteration of a node's own instructions needs, all its warps."""
        m = self.m
        w = node.warps
        per_smsp = math.ceil(w / 4)
        smsp = {"issue": 0.0}
        mio = 0.0
        l2 = 0.0
        ways = node.spec.smem_ways if node.spec else 1.0
        for ins in self._own(node):
            if ins.addr in self.skip:
                continue
            seq = [ins] + (self._callee(ins) if ins.calls_subroutine else [])
            for x in seq:
                smsp["issue"] += 1
                p, cyc = m.pipe(x)
                if p:
                    smsp[p] = smsp.get(p, 0.0) + cyc
                cls = self.cls(x)
                if cls in ("shared_ld", "shared_st", "shared_atom"):
                    wf = m.wavefronts(x) * ways
                    mio += wf
                    if record:
                        self.bytes["shared"] += 32 * sass.access_bytes(x.opcode) * w * record
                if cls in ("global_ld", "global_st", "atomic", "local"):
                    nbytes = 32 * sass.access_bytes(x.opcode) * (self.level(x) != "off")
                    l2 += nbytes
                    if record:
                        key = "global_store" if cls == "global_st" else self.level(x)
                        if key != "off":
                            self.bytes[key] += nbytes * w * record
                if record:
                    self.counts[cls] = self.counts.get(cls, 0.0) + w * record
                    if cls in ("shared_ld", "shared_st", "global_ld", "global_st", "atomic", "mma",
                               "local", "async_copy"):
                        self.opcodes[x.opcode] = self.opcodes.get(x.opcode, 0.0) + w * record
        bounds = {k: v * per_smsp for k, v in smsp.items()}
        bounds["shared"] = mio * w
        bounds["l2_port"] = l2 * w / m.a["l2_sm_bytes_clk"]
        node.bounds = bounds
        return max(bounds.values())

    def _time(self, node: Node) -> None:
        """node.t: cycles of all its trips (children first). A loop costs the
        larger of its warp's latency chain and its warps' throughput bound."""
        for c in node.children:
            self._time(c)
        is_root = node is self.root
        n = 1 if is_root else node.trips
        if n <= 0:
            node.t = node.t_lat = node.t_thr = 0.0
            return
        sb, sbk = [0.0] * 8, [None] * 8
        # two passes: the first warms the scoreboards, the second is the steady state
        t1 = self._sim_pass(node, 0.0, sb, sbk, 0.0)
        t2 = self._sim_pass(node, t1, sb, sbk, 0.0)
        steady = t2 - t1
        node.t_lat = steady if is_root else t1 + (n - 1) * steady
        node.t_thr = n * (self._throughput(node, 0.0) + sum(c.t for c in node.children))
        node.t = max(node.t_lat, node.t_thr)

    def _record(self, node: Node, weight: float) -> None:
        """Per-step instruction counts, bytes and the simulated warp's waits;
        weight = passes of the parent's body per step."""
        n = 1 if node is self.root else node.trips
        if n <= 0:
            return
        self._throughput(node, weight * n)
        for k, v in node.bounds.items():
            self.thr_totals[k] = self.thr_totals.get(k, 0.0) + v * weight * n
        sb, sbk = [0.0] * 8, [None] * 8
        t1 = self._sim_pass(node, 0.0, sb, sbk, 0.0)          # warm-up pass, then the counted one
        self._sim_pass(node, t1, sb, sbk, weight * n)
        for c in node.children:
            self._record(c, weight * n)

    def run(self, record: bool = True) -> "StepAnalysis":
        self._time(self.root)
        if record:
            self._record(self.root, 1.0)
        return self

    # ---------------------------------------------------------- report
    def loops(self) -> list[dict]:
        out = []

        def walk(n: Node, depth: int):
            key = _chain_key(n.loop.chain)
            bounds = getattr(n, "bounds", {})
            thr_only = max(bounds.items(), key=lambda kv: kv[1])[0] if bounds else "-"
            out.append(dict(
                name="step loop" if n is self.root else n.name, depth=depth,
                line=f"{key[0][0]}:{key[0][1]}" if key else "?",
                trips=1 if n is self.root else n.trips, unroll=n.unroll, warps=n.warps,
                latency_cycles=round(n.t_lat), throughput_cycles=round(n.t_thr), cycles=round(n.t),
                bound="latency chain" if n.t_lat >= n.t_thr else f"throughput ({thr_only})"))
            for c in n.children:
                walk(c, depth + 1)
        walk(self.root, 0)
        return out


# ============================================================== kernels
def _nvcc() -> Optional[str]:
    return sass.tool_path("nvcc")


def _hash_files(paths, extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in paths:
        h.update(Path(p).name.encode() + Path(p).read_bytes())
    return h.hexdigest()[:20]


class CudaKernel(KernelModel):
    """csrc/cuda/lstm.cu: lstm_fwd_kernel / lstm_bwd_kernel, plan from make_plan."""
    backend = "cuda"
    SRC = ROOT / "csrc" / "cuda" / "lstm.cu"
    _TYPE = {"fp32": "If", "fp16": "I6__half", "bf16": "I13__nv_bfloat16"}

    def __init__(self, pass_: str):
        self.pass_ = pass_
        self.name = f"cuda.{pass_}"

    def unavailable_reason(self) -> Optional[str]:
        if _nvcc() is None:
            return "nvcc not found (CUDA toolkit bin/ or PATH)"
        if not self.SRC.exists():
            return f"{self.SRC} not found (run from a source checkout)"
        try:
            self._plan_module()
        except RuntimeError as e:
            return str(e)
        return None

    @staticmethod
    def _dtype_code(dtype: str) -> int:
        import torch
        from bilstm_fast.ops import native
        return native.DTYPE_CODES[{"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]]

    @staticmethod
    def _plan_module():
        """The host-side plan logic (make_plan in lstm.cu) through the compiled module."""
        from bilstm_fast.ops import native
        for name in ("_cuda_emu", "_cuda"):
            mod = native.load(name)
            if not isinstance(mod, str):
                return mod
        raise RuntimeError("neither bilstm_fast._cuda_emu nor _cuda can be loaded (pip install -e .)")

    def launch(self, gpu, dtype, H, B, N=2, T=T_DEFAULT) -> Launch:
        fwd = self.pass_ == "fwd"
        pl = self._plan_module().plan(0 if fwd else 1, N, B, H, self._dtype_code(dtype), gpu.sms, gpu.smem_per_block)
        onchip = pl["path"] == "onchip"
        blocks, hs, nth, tile = pl["blocks"], pl["slice"], pl["threads"], pl["batch_tile"]
        staged = tile > 0
        K = H if fwd else 4 * H                             # length of one dot product
        warps = nth // 32
        # The batch-tile loop runs full tiles and maybe one partial tile; each
        # tile picks its own k-split (ks = threads / items, lstm.cu). Per loop:
        # iterations averaged over the tiles, warps weighted by iterations.
        rows = [tile] * (B // tile) + ([B % tile] if B % tile else []) if staged else [B]
        per_tile = []
        for nb in rows:
            items = nb * hs
            ks = min(nth // items, K)
            ks = ks if ks >= 2 else 1
            wi = min(warps, math.ceil(min(items, nth) / 32))
            per_tile.append(dict(
                stage=(math.ceil(nb * K / nth) if staged else 0, warps),
                items=(math.ceil(items / nth), wi),
                split=(math.ceil(K / ks) if ks >= 2 else 0, min(warps, math.ceil(min(items * ks, nth) / 32))),
                full=(K if ks < 2 else 0, wi),
                kp=(ks if ks >= 2 else 0, wi), ks=ks))

        def agg(key):
            its = [t[key][0] for t in per_tile]
            total = sum(its)
            w = math.ceil(sum(t[key][0] * t[key][1] for t in per_tile) / total) if total else warps
            return total / len(per_tile), w
        n_tiles = len(rows)
        kss = sorted({t["ks"] for t in per_tile})
        kname = "lstm_fwd_kernel" if fwd else "lstm_bwd_kernel"
        if fwd:
            dot_line, dot = r"for \(int k = 0; k < K; \+\+k\)", "gate_dots"
            stage_line = r"for \(int i = tid; i < nb \* H; i \+= nth\) h_s\[i\]"
            split_sites = (r"gate_dots\(hb, w, wk, wg, k1 - k0, LoadPlain", r"gate_dots\(hb, w, wk, wg, k1 - k0, LoadL2")
            full_sites = (r"gate_dots\(hb, w, wk, wg, H, LoadPlain", r"gate_dots\(hb, w, wk, wg, H, LoadL2")
            kp_line = r"for \(int kp = 0; kp < ks; \+\+kp\) \{"
            step = Site(r"for \(int s = 0; s < T_; \+\+s\)")
        else:
            dot_line, dot = r"for \(int row = 0; row < rows; \+\+row\)", "column_dot"
            stage_line = r"for \(int i = tid; i < nb \* G; i \+= nth\) g_s\[i\]"
            split_sites = (r"\? column_dot\(gr, wc, wstride, r1 - r0, LoadPlain", r": column_dot\(gr, wc, wstride, r1 - r0, LoadL2")
            full_sites = (r"column_dot\(gr, wc, wstride, G, LoadPlain", r"column_dot\(gr, wc, wstride, G, LoadL2")
            kp_line = r"for \(int kp = 0; kp < ks; \+\+kp\) acc \+="
            step = Site(r"for \(int s = T_ - 1; s >= 0; --s\)")
        per_dot = ("fp32", 4 if fwd else 1)        # FMAs (adds) per source iteration: one per gate forward
        # The exchange vector (h, or dG) as ld.global.cg: LDG...STRONG.GPU in SASS.
        l2_vec = r"LDG\S*STRONG\.GPU"
        loops = [
            LoopSpec("batch tiles", (Site(r"for \(int b0 = 0; b0 < B; b0 \+= tile\)"),), n_tiles),
            LoopSpec("stage h/dG tile from L2", (Site(stage_line),), *agg("stage")),
            LoopSpec("items", (Site(r"for \(int i = tid; i < items; i \+= nth\)"),), *agg("items")),
            LoopSpec("k-split reduce", (Site(kp_line),), *agg("kp"), work=per_dot),
        ]
        # The dot product: staged (vector from shared memory) or not (from L2),
        # full length per thread or split over ks threads. In the backward the two
        # full-length calls share one source line: told apart by the L2 load.
        for split in (True, False):
            sites = split_sites if split else full_sites
            n, w = agg("split" if split else "full")
            loops.append(LoopSpec(f"{dot} ({'split' if split else 'full'}, staged)", (Site(dot_line), Site(sites[0])),
                                  n if staged else 0, warps=w, lacks=l2_vec, work=per_dot, generic="shared",
                                  smem_ways=1.0 if split else self._conflicts(fwd, hs, H, onchip)))
            loops.append(LoopSpec(f"{dot} ({'split' if split else 'full'}, from L2)", (Site(dot_line), Site(sites[1])),
                                  0 if staged else n, warps=w, has=l2_vec, work=per_dot))
        if not fwd:
            loops.insert(0, LoopSpec("dG of own units", (Site(r"for \(int i = tid; i < B \* hs; i \+= nth\)"),),
                                     math.ceil(B * hs / nth), warps=min(warps, math.ceil(min(B * hs, nth) / 32))))
        # gx: L2 or HBM (gx_level); the backward's saved gates / cell states and dy
        # were written long before (the rest of the network ran in between): HBM
        mem = [MemHint(Site(r"to_f\(gxp\["), gx_level(gpu, T, B, N, H, dtype)),
               MemHint(Site(r"to_f\(dy\[|gates_out \+ tbn|cells_out\[tbn|cells_out\[\(\(\(size_t\)t_prev"), "hbm")]
        gemm = 2.0 * N * B * 4 * H * H
        return Launch(variant=pl["path"], function=rf"{kname}{self._TYPE[dtype]}Lb{int(onchip)}E",
                      source=self.SRC, blocks=N * blocks, warps=warps, step=step, loops=loops, mem=mem,
                      gemm_flops=gemm, plan=dict(pl),
                      notes=[f"{blocks} blocks/dir x {hs} units, batch tiles {rows}, k-split {kss}"])

    @staticmethod
    def _conflicts(fwd: bool, hs: int, H: int, onchip: bool) -> float:
        """Shared-memory bank conflicts of the full-length dot products'
        shared loads (from the kernel's index arithmetic in lstm.cu): a warp's
        threads cover ceil(32 / hs) batch rows of the staged vector, rows H
        (forward) or 4H (backward) floats apart; when that stride is a multiple
        of 32 banks, the vector load conflicts that many ways. The weight
        loads (unit index fastest) are broadcasts or conflict-free. Averaged
        over the shared loads of one iteration: the vector plus, on chip, the
        weights (4 forward, 1 backward). The k-split dots are not modelled (1)."""
        rows = math.ceil(32 / max(1, hs))
        stride = H if fwd else 4 * H
        ways = rows if stride % 32 == 0 else 1
        loads = 1 + ((4 if fwd else 1) if onchip else 0)
        return (ways + loads - 1) / loads

    def cubin(self, gpu, dtype, H, launch) -> bytes:
        arch = f"sm_{gpu.cc}"
        nvcc = _nvcc()
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
        # lstm.cu and every header it can include (csrc/cuda, csrc/common): the cache key
        srcs = sorted(p for d in (self.SRC.parent, self.SRC.parent.parent / "common") if d.is_dir()
                      for p in d.iterdir() if p.suffix in (".cu", ".h", ".cuh"))
        path = cache_dir() / f"lstm-{arch}-{_hash_files(srcs, version + arch)}.cubin"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as d:
                out = os.path.join(d, "k.cubin")
                cmd = [nvcc, "-cubin", f"-arch={arch}", "-std=c++17", "-O3", "-lineinfo",
                       f"-I{self.SRC.parent.parent}", f"-I{self.SRC.parent}", str(self.SRC), "-o", out]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    raise RuntimeError(f"nvcc failed ({' '.join(cmd)}):\n{r.stderr[-3000:]}")
                os.replace(out, path)
        return path.read_bytes()


def _triton_adapter(compiler: bool = False):
    """Everything taken from the Triton backend, in one place:
    -> (kernel_config(H, dtype, smem, dot_prec) -> KernelConfig, the kernels'
    source file), or with compiler=True the ahead-of-time compile
    (kernel, arch, H, dtype, dot_prec) -> Triton's compiled kernel, which
    tools/compile_report.py does (imported only in the compiling process: it
    clears TRITON_INTERPRET on import)."""
    if compiler:
        import compile_report

        def compile_(kernel, arch, H, dtype, prec, plan=""):
            v = compile_report.Variant(kernel, arch, H, dtype, 2, True, kernel == "fwd", prec, plan=plan)
            return compile_report.compile_triton(v)[0]
        return compile_
    import torch
    from bilstm_fast.ops import triton_kernels, triton_plan

    def config(H, dtype, smem, prec, plan=""):
        if plan:
            return triton_plan.parse_plan(plan)
        tdt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        return triton_plan.kernel_config(H, tdt, smem, prec)
    return config, Path(triton_kernels.__file__)


class TritonKernel(KernelModel):
    """bilstm_fast/ops/triton_kernels.py: _lstm_fwd_kernel / _lstm_bwd_kernel,
    config from triton_plan.kernel_config. fp32 uses tf32x3 (torch's default: TF32 off)."""
    backend = "triton"

    def __init__(self, pass_: str, plan: str = ""):
        self.pass_ = pass_
        self.name = f"triton.{pass_}"
        self.plan = plan   # a forced config (triton_plan.parse_plan text); "" = the dispatcher's

    def unavailable_reason(self) -> Optional[str]:
        try:
            import triton  # noqa: F401
        except ImportError:
            return "triton is not installed"
        return None

    @staticmethod
    def prec(dtype: str) -> str:
        return "tf32x3" if dtype == "fp32" else "tf32"

    def launch(self, gpu, dtype, H, B, N=2, T=T_DEFAULT) -> Launch:
        config, src = _triton_adapter()
        smem = gpu.smem_per_block
        cfg = config(H, dtype, smem, self.prec(dtype), self.plan)
        if cfg.path == "split":
            raise NotImplementedError(
                f"triton {self.pass_} H={H} {dtype}: the SPLIT path is not described to the cost "
                "model yet (docs/triton.md has its hand estimate); force another path with plan=")
        fwd = self.pass_ == "fwd"
        nt = math.ceil(H / cfg.block_h)
        programs = N * math.ceil(B / cfg.block_b)
        if fwd:
            step = Site(r"for s in range\(T\):")
        else:
            step = Site(r"for r in range\(T\):")
        loops = []
        if not cfg.resident:
            # Triton does not unroll these runtime-bounded loops (one SASS copy each)
            loops = ([LoopSpec("h tiles j", (Site(r"for j0 in range\(0, H_LOOP, BLOCK_H\)"),), nt, unroll=1),
                      LoopSpec("k tiles", (Site(r"for k0 in range\(0, H_LOOP, BLOCK_H\)"),), nt, unroll=1)]
                     if fwd else
                     [LoopSpec("j tiles (dG; inner loop of dh)", (Site(r"for j0 in range\(0, H, BLOCK_H\)"),), nt,
                               unroll=1),
                      LoopSpec("k tiles (dh)", (Site(r"for k0 in range\(0, H, BLOCK_H\)"),), nt, unroll=1)])
        # gx: L2 or HBM (gx_level); the backward's saved gates / cell states and dy:
        # HBM; loads masked to the first or the last step (h0, c0, dh_n, dc_n)
        # are off in the steady state
        mem = [MemHint(Site(r"tl\.load\(gx \+"), gx_level(gpu, T, B, N, H, dtype)),
               MemHint(Site(r"tl\.load\((gates|cells|dy) \+"), "hbm"),
               MemHint(Site(r"tl\.load\((h0|c0|dh_n|dc_n) \+"), "off")]
        return Launch(variant=("resident" if cfg.resident else "streamed") + f" BH={cfg.block_h}",
                      function=r"_lstm_(fwd|bwd)_kernel", source=src, blocks=programs, warps=cfg.num_warps,
                      step=step, loops=loops, mem=mem,
                      gemm_flops=2.0 * N * B * 4 * H * H,
                      plan=dict(resident=cfg.resident, block_h=cfg.block_h, block_b=cfg.block_b,
                                num_warps=cfg.num_warps, maxnreg=cfg.maxnreg, programs=programs),
                      notes=[f"{programs} programs (N x ceil(B/{cfg.block_b})), {cfg.num_warps} warps"])

    def cubin(self, gpu, dtype, H, launch) -> bytes:
        """Compiled in a fresh process (python tools/cost_model.py --compile-triton):
        the kernels must be JIT functions, not the interpreter's (a test session
        may have set TRITON_INTERPRET=1), and a compiler crash stays there."""
        import triton
        _, src = _triton_adapter()
        key = _hash_files([src, ROOT / "tools" / "compile_report.py"],
                          f"{triton.__version__}{gpu.cc}{self.pass_}{H}{dtype}{self.prec(dtype)}{self.plan}")
        path = cache_dir() / f"triton-{self.pass_}-sm{gpu.cc}-{dtype}-H{H}-{key}.cubin"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            job = json.dumps(dict(kernel=self.pass_, arch=gpu.cc, H=H, dtype=dtype, prec=self.prec(dtype),
                                  plan=self.plan, out=str(path)))
            env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
            r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--compile-triton", job],
                               capture_output=True, text=True, env=env)
            if r.returncode != 0 or not path.exists():
                raise RuntimeError(f"triton.compile failed for {job}: "
                                   f"{(r.stderr.strip().splitlines() or ['no output'])[-1][:300]}")
        return path.read_bytes()


def _compile_triton_job(job: str) -> int:
    d = json.loads(job)
    compile_ = _triton_adapter(compiler=True)
    k = compile_(d["kernel"], d["arch"], d["H"], d["dtype"], d["prec"], d.get("plan", ""))
    out = Path(d["out"])
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(k.asm["cubin"])
    os.replace(tmp, out)
    return 0


KERNELS: dict[str, KernelModel] = {k.name: k for k in (CudaKernel("fwd"), CudaKernel("bwd"),
                                                       TritonKernel("fwd"), TritonKernel("bwd"))}


# ============================================================= prediction
@lru_cache(maxsize=64)
def _disassemble(digest: str, cubin: bytes) -> dict:
    return sass.disassemble(cubin)


def _function(funcs: dict, pattern: str) -> str:
    names = [n for n in funcs if re.search(pattern, n)]
    if len(names) != 1:
        raise LookupError(f"expected one function matching {pattern!r} in the cubin, found {names}")
    return names[0]


def analyze(kernel: KernelModel, gpu: GpuSpec, dtype: str, H: int, B: int, N: int = 2,
            T: int = T_DEFAULT) -> dict:
    """The prediction for one (GPU, kernel, dtype, H, B), with its breakdown."""
    launch = kernel.launch(gpu, dtype, H, B, N, T)
    cub = kernel.cubin(gpu, dtype, H, launch)
    funcs = _disassemble(hashlib.sha256(cub).hexdigest(), cub)
    fname = _function(funcs, launch.function)
    m = Machine(gpu)
    an = StepAnalysis(m, funcs[fname], launch).run()
    clock = m.clock
    sm_cycles = an.root.t
    # the same step with every L2 hit in the near / the far partition: the range
    # that the L2 latency's uncertainty alone gives
    span = [StepAnalysis(Machine(gpu, l2), funcs[fname], launch).run(record=False).root.t
            for l2 in ("near", "far")]
    # the GPU-wide bandwidth bounds: every block's bytes through L2, the HBM-hinted ones from HBM
    waves = math.ceil(launch.blocks / (gpu.sms * launch.blocks_per_sm))
    l2_bytes = (an.bytes["l2"] + an.bytes["hbm"] + an.bytes["global_store"]) * launch.blocks
    l2_bw = gpu.sms * m.a["l2_gpu_bytes_clk_per_sm"] * clock
    t_l2 = l2_bytes / l2_bw
    t_hbm = an.bytes["hbm"] * launch.blocks / (gpu.hbm_gbs * 1e9)
    t_sm = sm_cycles / clock
    per_step = max(t_sm, t_l2, t_hbm) * waves
    per_step_range = [max(c / clock, t_l2, t_hbm) * waves * 1e6 for c in span]
    bound = "SM (see loops)" if t_sm >= max(t_l2, t_hbm) else ("L2 bandwidth" if t_l2 >= t_hbm else "HBM bandwidth")
    peak = gpu.tensor_flops(dtype)
    gemm_frac = launch.gemm_flops / per_step / peak if peak else None
    w = an.waits
    return dict(
        gpu=gpu.name, kernel=kernel.name, variant=launch.variant, dtype=dtype, H=H, B=B, N=N, T=T,
        us_per_step=per_step * 1e6, us_per_step_range=per_step_range, prediction=True,
        cycles_per_step=sm_cycles, clock_mhz=gpu.boost_mhz, waves=waves, bound=bound,
        blocks=launch.blocks, warps_per_block=launch.warps, function=fname, plan=launch.plan,
        notes=launch.notes,
        step_instructions={k: round(v) for k, v in sorted(an.counts.items())},
        memory_opcodes={k: round(v) for k, v in sorted(an.opcodes.items())},
        bytes_per_step_per_block={k: round(v) for k, v in an.bytes.items()},
        bytes_per_step_gpu={"l2": round(l2_bytes), "hbm": round(an.bytes["hbm"] * launch.blocks)},
        bounds_us={"sm": t_sm * 1e6, "l2_bandwidth": t_l2 * 1e6, "hbm_bandwidth": t_hbm * 1e6},
        throughput_bounds_cycles={k: round(v) for k, v in sorted(an.thr_totals.items(), key=lambda kv: -kv[1])},
        serial_chain={"dependent_global_round_trips": round(an.round_trips, 1),
                      "grid_barrier_cycles": round(an.barrier_cycles),
                      "waits_cycles": {k: round(v) for k, v in sorted(w.items(), key=lambda kv: -kv[1])},
                      "l2_hit_cycles": round(m.l2), "l2_hit_range": [round(x) for x in m.l2_range]},
        loops=an.loops(),
        gemm_tensor_fraction=gemm_frac,
    )


def predict(gpu_name: str, kernel: str, dtype: str, H: int, B: int, N: int = 2, T: int = T_DEFAULT,
            plan: str = "") -> dict:
    """PREDICTED µs per time step (both directions together) of one kernel
    ("cuda.fwd", "cuda.bwd", "triton.fwd", "triton.bwd") on a GPU (a
    torch.cuda.get_device_name() string or a short name: A100, H100, H200,
    L4, RTX4090), with the breakdown. Keys: us_per_step, variant, bound,
    loops, step_instructions, bytes_per_step_*, serial_chain, ... (analyze).
    N: directions; T: sequence length, used only for what fits in L2; plan:
    a forced Triton config (triton_plan.parse_plan text; "" = the dispatcher's)."""
    gpu = gpu_specs.lookup(gpu_name)
    if gpu is None:
        raise KeyError(f"GPU {gpu_name!r} is not in bilstm_fast/bench/gpu_specs.py")
    if gpu.cc not in gpu_specs.ARCH:
        raise KeyError(f"{gpu.name}: no architecture facts for sm_{gpu.cc}")
    k = KERNELS[kernel]
    if plan:
        if not isinstance(k, TritonKernel):
            raise ValueError(f"{kernel}: plan= is supported for the Triton kernels only")
        k = TritonKernel(k.pass_, plan)
    why = k.unavailable_reason()
    if why:
        raise RuntimeError(f"{kernel}: {why}")
    return analyze(k, gpu, dtype, int(H), int(B), N, T)


# ================================================================ targets
TARGET_GPUS = ("H100", "H200")
MAIN_SHAPE = (16, 768)                                   # (B, H): <= 2.0 us/step
GRID_SHAPES = [(b, h) for b in (1, 8, 32, 64) for h in (256, 512, 1024)]   # <= 2.5 us/step
LARGE_B_SHAPES = [(128, 512), (256, 1024)]               # recurrent GEMM >= 60% of tensor peak
DEFAULT_SHAPES = [MAIN_SHAPE] + GRID_SHAPES + LARGE_B_SHAPES


def check_targets(rows: list[dict]) -> list[str]:
    """Issue 12's targets, on the best available backend per (GPU, pass,
    dtype, shape) (what backend='auto' should choose); -> the missed ones."""
    best: dict = {}
    for r in rows:
        if "us_per_step" not in r:
            continue
        key = (r["gpu"], r["kernel"].split(".")[1], r["dtype"], r["H"], r["B"])
        if key not in best or r["us_per_step"] < best[key]["us_per_step"]:
            best[key] = r
    missed = []
    short = {gpu_specs.lookup(g).name: g for g in TARGET_GPUS}
    for (gname, pass_, dtype, H, B), r in sorted(best.items()):
        if gname not in short or pass_ != "fwd":
            continue
        us = r["us_per_step"]
        tag = f"{short[gname]} {dtype} B={B} H={H}"
        if dtype in ("fp16", "bf16") and (B, H) == MAIN_SHAPE and us > 2.0:
            missed.append(f"{tag}: forward {us:.2f} us/step > 2.0 ({r['kernel']} {r['variant']})")
        if dtype in ("fp16", "bf16") and (B, H) in GRID_SHAPES and us > 2.5:
            missed.append(f"{tag}: forward {us:.2f} us/step > 2.5 ({r['kernel']} {r['variant']})")
        bwd = best.get((gname, "bwd", dtype, H, B))
        if bwd and us + bwd["us_per_step"] > 3 * us:
            missed.append(f"{tag}: forward+backward {us + bwd['us_per_step']:.2f} us/step > 3 x forward "
                          f"{3 * us:.2f}")
        if dtype == "fp32":
            half = best.get((gname, "fwd", "fp16", H, B))
            if half and us > 2 * half["us_per_step"]:
                missed.append(f"{tag}: fp32 forward {us:.2f} > 2 x fp16 {2 * half['us_per_step']:.2f} us/step")
        if B >= 128 and r.get("gemm_tensor_fraction") is not None and r["gemm_tensor_fraction"] < 0.6:
            missed.append(f"{tag}: recurrent GEMM at {100 * r['gemm_tensor_fraction']:.1f}% of the tensor-core "
                          f"peak < 60%")
    return missed


# ==================================================================== CLI
def _row_line(r: dict) -> str:
    if "error" in r:
        return f"{r['gpu']:<17} {r['kernel']:<11} {r['dtype']:<5} H={r['H']:<5} B={r['B']:<4} ERROR: {r['error']}"
    ch = r["serial_chain"]
    top = sorted(r["loops"][1:], key=lambda l: -l["cycles"])[:2] if len(r["loops"]) > 1 else []
    loops = "; ".join(f"{l['name']} {l['cycles']} cyc ({l['bound']})" for l in top)
    return (f"{r['gpu']:<17} {r['kernel']:<11} {r['dtype']:<5} H={r['H']:<5} B={r['B']:<4} "
            f"{r['us_per_step']:8.2f} us/step ({r['us_per_step_range'][0]:.2f}-{r['us_per_step_range'][1]:.2f})  "
            f"[{r['variant']}; {r['bound']}; "
            f"{ch['dependent_global_round_trips']:g} dependent L2 trips; {loops}]")


def _verbose(r: dict) -> str:
    out = [_row_line(r)]
    if "error" in r:
        return out[0]
    out.append(f"  predicted, not measured: {r['cycles_per_step']:.0f} cycles at {r['clock_mhz']:.0f} MHz "
               f"x {r['waves']} wave(s); {r['blocks']} blocks x {r['warps_per_block']} warps; {r['function']}")
    for n in r["notes"]:
        out.append(f"  plan: {n}")
    out.append("  loops inside the step (cycles per step for all trips; trips per parent iteration):")
    for l in r["loops"]:
        out.append(f"    {'  ' * l['depth']}{l['name']:<34} {l['line']:<16} trips {l['trips']:<6g} x{l['unroll']} "
                   f"warps {l['warps']:<2} latency {l['latency_cycles']:>7} thr {l['throughput_cycles']:>7} "
                   f"-> {l['cycles']:>7}  {l['bound']}")
    out.append("  warp instructions per step per block, by class: " +
               ", ".join(f"{k} {v}" for k, v in r["step_instructions"].items()))
    out.append("  memory/MMA opcodes per step per block: " +
               ", ".join(f"{k} {v}" for k, v in r["memory_opcodes"].items()))
    b = r["bytes_per_step_per_block"]
    out.append(f"  bytes per step per block (all lanes): shared {b['shared']}, global loads from L2 {b['l2']}, "
               f"from HBM {b['hbm']}, stores {b['global_store']}; GPU: L2 {r['bytes_per_step_gpu']['l2']}, "
               f"HBM {r['bytes_per_step_gpu']['hbm']}")
    bu = r["bounds_us"]
    out.append(f"  bounds (us/step): SM {bu['sm']:.2f}, L2 bandwidth {bu['l2_bandwidth']:.3f}, "
               f"HBM bandwidth {bu['hbm_bandwidth']:.3f}")
    out.append("  SM throughput bounds per step if nothing waited (cycles, summed over the loops): " +
               ", ".join(f"{k} {v}" for k, v in r["throughput_bounds_cycles"].items()))
    ch = r["serial_chain"]
    out.append(f"  serial chain of the simulated warp: {ch['dependent_global_round_trips']} dependent global "
               f"round trips (L2 hit {ch['l2_hit_cycles']} cycles, range {ch['l2_hit_range']}); grid barrier "
               f"{ch['grid_barrier_cycles']} cycles; waits: " +
               ", ".join(f"{k} {v}" for k, v in ch["waits_cycles"].items()))
    if r.get("gemm_tensor_fraction") is not None:
        out.append(f"  recurrent GEMM at {100 * r['gemm_tensor_fraction']:.2f}% of the dense tensor-core peak")
    return "\n".join(out)


def constants_table() -> str:
    lines = ["GPUs (bilstm_fast/bench/gpu_specs.py):"]
    for short, name in gpu_specs.COST_MODEL_GPUS.items():
        g = gpu_specs.lookup(name)
        lines.append(f"  {short}: {g.name} sm_{g.cc} {g.sms} SMs {g.boost_mhz:.0f} MHz, FP32 {g.fp32} TF, "
                     f"TF32/FP16/BF16 {g.tf32}/{g.fp16}/{g.bf16} TF dense, {g.hbm_gbs} GB/s, "
                     f"L2 {g.l2_bytes // gpu_specs.MB} MB, smem {g.smem_per_sm // 1024}/{g.smem_per_block // 1024} KB "
                     f"[{g.checked}] {g.source}")
    for cc, a in sorted(gpu_specs.ARCH.items()):
        lines.append(f"sm_{cc}:")
        for k, f in a.facts.items():
            lines.append(f"  {k:<18} {f.value:>8g} {f.unit:<42} [{f.checked}] {f.source}")
    return "\n".join(lines)


def _row(item) -> dict:
    g, k, d, (b, h) = item
    try:
        return predict(g, k, d, h, b)
    except Exception as e:      # a row that cannot be predicted says why; the run goes on
        return dict(gpu=gpu_specs.lookup(g).name, kernel=k, dtype=d, H=h, B=b, error=f"{type(e).__name__}: {e}")


def run_rows(gpus, kernels, dtypes, shapes, jobs: int = 1) -> list[dict]:
    """Predict every (GPU, kernel, dtype, (B, H)); jobs > 1: compile the missing
    cubins, then predict, in that many worker processes (cubins land in
    cache_dir(); consecutive rows share a cubin, so they go to one worker)."""
    todo = list(itertools.product(gpus, kernels, dtypes, shapes))
    if jobs <= 1:
        return [_row(it) for it in todo]
    from concurrent.futures import ProcessPoolExecutor
    warm = {}
    for g, k, d, (b, h) in todo:
        gpu = gpu_specs.lookup(g)
        kern = KERNELS[k]
        key = (kern.backend, gpu.cc) if kern.backend == "cuda" else (k, gpu.cc, d, h)
        warm.setdefault(key, (g, k, d, (b, h)))
    with ProcessPoolExecutor(jobs) as ex:
        list(ex.map(_warm, *zip(*warm.values())))
        return list(ex.map(_row, todo, chunksize=max(1, len(todo) // (4 * jobs))))


def _warm(g, k, d, shape):
    try:
        gpu = gpu_specs.lookup(g)
        kern = KERNELS[k]
        if kern.unavailable_reason() is None:
            kern.cubin(gpu, d, shape[1], kern.launch(gpu, d, shape[1], shape[0]))
    except Exception:
        pass            # the row itself reports the error


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python tools/cost_model.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", nargs="+", default=list(gpu_specs.COST_MODEL_GPUS),
                    help=f"short names or device names (default: {' '.join(gpu_specs.COST_MODEL_GPUS)})")
    ap.add_argument("--kernel", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    ap.add_argument("--dtype", nargs="+", default=list(DTYPES), choices=DTYPES)
    ap.add_argument("--H", type=int, nargs="+", help="hidden sizes (with --B: their product; "
                                                     "default: the issue's shapes)")
    ap.add_argument("--B", type=int, nargs="+", help="batch sizes")
    ap.add_argument("--json", action="store_true", help="one JSON object per row on stdout")
    ap.add_argument("-v", "--verbose", action="store_true", help="the full breakdown of every row")
    ap.add_argument("--report-only", action="store_true",
                    help="exit 0 even when a target of issue 12 is missed (CI while kernels are in flux)")
    ap.add_argument("--constants", action="store_true", help="print every constant with its source and exit")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (compiles and rows)")
    ap.add_argument("--compile-triton", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.compile_triton:
        os.environ.pop("TRITON_INTERPRET", None)
        return _compile_triton_job(args.compile_triton)
    if args.constants:
        print(constants_table())
        return 0
    if args.H or args.B:
        shapes = [(b, h) for b in (args.B or [16]) for h in (args.H or [768])]
    else:
        shapes = DEFAULT_SHAPES
    rows = run_rows(args.gpu, args.kernel, args.dtype, shapes, args.jobs)
    for r in rows:
        if args.json:
            print(json.dumps(r, default=float))
        else:
            print(_verbose(r) if args.verbose else _row_line(r))
    missed = check_targets(rows)
    errors = [r for r in rows if "error" in r]
    print(f"\n{len(rows)} rows ({len(errors)} not predicted); all figures are predictions from compiled SASS, "
          f"not measurements", file=sys.stderr)
    if missed:
        print(f"{len(missed)} target(s) of issue 12 missed:", file=sys.stderr)
        for x in missed:
            print(f"  {x}", file=sys.stderr)
    if errors and not args.report_only:
        return 2
    return 1 if missed and not args.report_only else 0


if __name__ == "__main__":
    sys.exit(main())
