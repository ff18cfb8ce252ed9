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
`cubin()` the compiled code. The kernels: `CudaKernel` (csrc/cuda/lstm.cu: the
persistent kernels, planned by make_plan, compiled by tools/cuda_resources.py)
and `TritonKernel` (bilstm_fast/ops/triton_kernels.py, planned by triton_plan.py).
A description may also weight code the plan runs only part of the time
(`Guard`), tell template instances apart by their work (`LoopSpec.rank`) and
name the regions the step's time is reported by (`Launch.regions`).
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
    first code line after it). With `block`, every line of the brace block
    that opens on a matched line (from its last `{` to the matching `}`)."""
    pattern: str = ""
    marker: str = ""
    file: Optional[str] = None
    block: bool = False


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
    smem_ways : shared-memory bank-conflict degree of its shared accesses
            (below 1: broadcasts -- a warp's lanes read fewer distinct words
            than 32 x the access width, e.g. an MMA-shaped operand load).
    generic : what its generic loads/stores (LD/ST: the compiler could not
            tell the address space) address: "global" or "shared".
    copies : independent instances of the source loop (the compiler unrolled
            the code around it): the SASS loops it matches are split, in
            address order, into this many equal groups, each one instance
            running `iters` (spread over its unrolled and remainder copies).
    grid_barrier : the loop is a grid barrier's spin (a poll without
            NANOSLEEP): its time, and the code after it up to the next
            BAR.SYNC, count as the grid barrier's.
    rank  : (class, position): template instances of one source loop that
            line info cannot tell apart (nvcc may attribute inlined code of
            one instance to another's call line) are told apart by how many
            instructions of `class` each holds, nested loops included: the
            loops several specs with the same `where` match are sorted by
            that count, and this spec takes the one at `position` (0: the
            fewest).
    instance : the template instance a loop belongs to: a spec with `rank`
            sets it for its loop, and loops nested in that loop take only
            specs of the same instance (or of none).
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
    copies: int = 1
    grid_barrier: bool = False
    rank: Optional[tuple[str, int]] = None
    instance: Optional[int] = None


@dataclass(frozen=True)
class Guard:
    """Code inside the step loop that runs only part of the time: a forward
    branch the launch plan decides (a template instance of a runtime
    dispatch the plan does not take; unrolled copies behind a runtime bound,
    of which the busiest warp runs a fraction). Every instruction whose
    source chain matches `where` (Sites, innermost first, as LoopSpec.where)
    counts `runs` times per pass of its loop (0: never; 0.25: one pass in
    four) -- in the throughput bounds, and in the latency chain as that
    fraction of its waits, latency and stall (the expected time). Several
    guards on one instruction multiply. A loop whose back-branch has weight
    0 does not run (it needs no LoopSpec)."""
    name: str
    where: tuple[Site, ...]
    runs: float


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
    variant: str                 # which compiled variant, e.g. "f16 48x16 regs 512/768" / "streamed BH=32"
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
    guards: list[Guard] = field(default_factory=list)
    generic_shared: tuple[Site, ...] = ()   # generic LD/ST inlined from these lines address shared memory
    regions: dict = field(default_factory=dict)   # name -> {(basename, line)}: the step's time is reported
                                                  # by region (an instruction's innermost frame in one)
    instance_site: Optional[Site] = None   # the call line of a template dispatch whose instances ranked
    instance_runs: dict = field(default_factory=dict)   # LoopSpecs tell apart; its straight-line code
                                           # belongs to the instance whose loops lie nearest, and runs
                                           # instance_runs[instance] times per pass (0 if absent)
    plan: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fixed_us: dict = field(default_factory=dict)   # name -> us per step outside the SASS step loop, added
                                                   # after the bounds (a kernel launch per step: an assumed
                                                   # constant of gpu_specs; its source in notes)


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
    hits = [i for i, text in enumerate(lines) if rx.search(text)]
    if not site.block:
        return frozenset((name, i + 1) for i in hits)
    for i in hits:
        text = lines[i].split("//")[0]
        out.add((name, i + 1))
        if "{" not in text:
            continue
        depth, j, text = 0, i, text[text.rindex("{"):]
        while j < len(lines):
            for ch in text:
                depth += (ch == "{") - (ch == "}")
                if depth == 0:
                    break
            out.add((name, j + 1))
            if depth == 0:          # the closing brace (a `} else {` line ends the block)
                break
            j += 1
            text = lines[j].split("//")[0] if j < len(lines) else ""
    return frozenset(out)


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
    tails: list = field(default_factory=lambda: [0.0] * 8)   # scoreboards still pending when it ends
                                                             # (async copies, loads in flight), cycles
    regions: dict = field(default_factory=dict)  # its cycles (all trips) by Launch.regions name

    bounds: dict = field(default_factory=dict)   # throughput bound per resource, one iteration
    instance: Optional[int] = None               # the template instance it belongs to (LoopSpec.instance)

    @property
    def name(self) -> str:
        return self.spec.name if self.spec else "grid-barrier spin" if self.trips else "?"


def _walk(node: "Node"):
    yield node
    for c in node.children:
        yield from _walk(c)


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
        roots = self.roots = sass.loop_tree(instrs)
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
        self.weight = self._weights()      # addr -> runs per pass (Guards; 0: not executed)
        self.region_of = self._regions()   # addr -> Launch.regions name
        self.skip = {a for a, w in self.weight.items() if w <= 0}
        self.root = self._build(self.step, None, 1, launch.warps)
        self._instance_code()
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
            for lp in sass.all_loops(self.roots):
                if _matches(lp.chain, sites):
                    out |= {i.addr for i in sass.body(self.instrs, lp, own=False) if i.op in ("LD", "ST")}
            if len(sites) > 1:
                out |= {i.addr for i in self.instrs if i.op in ("LD", "ST") and _matches(i.chain, sites[-1:])}
        sites = [resolve(site, self.launch.source) for site in self.launch.generic_shared]
        for i in self.instrs:
            if i.op in ("LD", "ST") and any(_matches(i.chain, [lines]) for lines in sites):
                out.add(i.addr)
        return out

    def _instance_code(self) -> None:
        """Weights of a template dispatch's straight-line code (Launch.instance_site):
        each instruction inlined through the dispatch and outside every ranked
        loop belongs to the instance whose ranked loops lie nearest in the
        address space (nvcc lays an instance out in one piece)."""
        if self.launch.instance_site is None:
            return
        spans: dict = {}
        for n in _walk(self.root):
            if n.spec is not None and n.spec.rank is not None:
                lo, hi = spans.get(n.spec.instance, (n.loop.header, n.loop.end))
                spans[n.spec.instance] = (min(lo, n.loop.header), max(hi, n.loop.end))
        if not spans:
            return
        site = [resolve(self.launch.instance_site, self.launch.source)]
        loops = list(spans.values())
        for i in sass._span(self.instrs, self.step.header, self.step.end):
            if not i.chain or not _matches(i.chain, site):
                continue
            if any(lo <= i.addr <= hi for lo, hi in loops):
                continue
            inst = min(spans, key=lambda k: min(abs(i.addr - spans[k][0]), abs(i.addr - spans[k][1])))
            runs = self.launch.instance_runs.get(inst, 0.0)
            self.weight[i.addr] = self.weight.get(i.addr, 1.0) * runs
            if runs <= 0:
                self.skip.add(i.addr)

    def _regions(self) -> dict:
        """The Launch.regions name of each instruction of the step loop: the
        region holding the innermost frame of its chain that lies in one."""
        if not self.launch.regions:
            return {}
        owner = {key: name for name, keys in self.launch.regions.items() for key in keys}
        out = {}
        for i in sass._span(self.instrs, self.step.header, self.step.end):
            out[i.addr] = next((owner[k] for k in _chain_key(i.chain) if k in owner), "other")
        return out

    def _weights(self) -> dict:
        """Runs per pass of every instruction of the step loop that does not
        always run: the code of loops this plan does not run (_not_executed)
        and the launch's Guards."""
        w = {a: 0.0 for a in self._not_executed()}
        guards = [(g, [resolve(x, self.launch.source) for x in g.where]) for g in self.launch.guards]
        by_chain: dict = {}
        for i in sass._span(self.instrs, self.step.header, self.step.end):
            if not i.chain:
                continue
            f = by_chain.get(i.chain)
            if f is None:
                f = by_chain[i.chain] = math.prod(g.runs for g, sites in guards if _matches(i.chain, sites))
            if f != 1.0:
                w[i.addr] = w.get(i.addr, 1.0) * f
        return w

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
        memo: dict = {}
        for i in sass._span(self.instrs, self.step.header, self.step.end):
            if not i.chain:
                continue
            off = memo.get(i.chain)
            if off is None:
                off = memo[i.chain] = (any(_matches(i.chain, [z]) for z in zero)
                                       and not any(_matches(i.chain, [l]) for l in live))
            if off:
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
        # a described spin loop (LoopSpec.grid_barrier): the loop, then the code
        # after it up to the next BAR.SYNC (the block meeting its polling thread)
        for node in _walk(self.root):
            if node.spec is None or not node.spec.grid_barrier:
                continue
            out.add(node.loop.header)
            after = [k for k, i in enumerate(own) if i.addr > node.loop.end]
            for k in after:
                out.add(own[k].addr)
                if own[k].op == "BAR":
                    break
        return out

    def _specs_for(self, loop: sass.Loop, instance: Optional[int]) -> list[LoopSpec]:
        """The LoopSpecs that describe `loop` (several only for `rank` families)."""
        own = sass.body(self.instrs, loop)
        out = []
        for spec in self.launch.loops:
            if spec.instance is not None and instance is not None and spec.instance != instance:
                continue
            sites = [resolve(s, self.launch.source) for s in spec.where]
            if not _matches(loop.chain, sites):
                continue
            ops = " ".join(i.opcode for i in own)
            if spec.has and not re.search(spec.has, ops):
                continue
            if spec.lacks and re.search(spec.lacks, ops):
                continue
            if spec.rank is None:
                return [spec] if not out else out
            out.append(spec)
        return out

    def _spec_for(self, loop: sass.Loop, instance: Optional[int] = None) -> Optional[LoopSpec]:
        specs = self._specs_for(loop, instance)
        return specs[0] if specs else None

    def _build(self, loop: sass.Loop, spec, trips, warps, instance: Optional[int] = None) -> Node:
        node = self._build_node(loop, spec, trips, warps, instance)
        if trips <= 0:                      # nothing under a loop that does not run runs
            for n in _walk(node):
                n.trips = 0
        return node

    def _build_node(self, loop: sass.Loop, spec, trips, warps, instance: Optional[int] = None) -> Node:
        node = Node(loop, spec, trips, warps)
        node.instance = spec.instance if spec is not None and spec.instance is not None else instance
        groups: dict = {}
        ranked: dict = {}          # a rank family (the specs' where) -> (specs, loops)
        for child in loop.children:
            if self.weight.get(child.back.addr, 1.0) <= 0:
                # in code the plan does not run (a Guard with runs 0): no trips, no LoopSpec needed
                groups.setdefault(("off", id(child)), (None, [child]))
                continue
            specs = self._specs_for(child, node.instance)
            if len(specs) > 1 or (specs and specs[0].rank is not None):
                fam = ranked.setdefault(specs[0].where, (specs, []))
                fam[1].append(child)
                continue
            cs = specs[0] if specs else None
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
        for specs, loops in ranked.values():
            # template instances told apart by their work (LoopSpec.rank)
            cls = specs[0].rank[0]
            count = {id(c): sum(1 for i in sass.body(self.instrs, c, own=False) if i.cls == cls) for c in loops}
            if len(loops) != len(specs) or len(set(count.values())) != len(loops):
                raise LookupError(
                    f"{self.launch.function}: {len(loops)} loops at '{source_text(loops[0].chain)}' for "
                    f"{len(specs)} ranked LoopSpecs ({specs[0].name}, ...), {cls} counts {sorted(count.values())}: "
                    "the instances cannot be told apart")
            by_rank = sorted(loops, key=lambda c: count[id(c)])
            for sp in specs:
                groups.setdefault(sp.name, (sp, []))[1].append(by_rank[sp.rank[1]])
        for key, (cs, versions) in groups.items():
            if cs is None and key[0] == "off":                      # not run under this plan
                node.children.append(self._build(versions[0], None, 0, 1))
                continue
            if cs is None:                                          # spin loop
                n = Node(versions[0], None, self.launch.spin_polls, warps)
                n.children = [self._build(c, None, 0, 1) for c in versions[0].children]
                node.children.append(n)
                continue
            w = cs.warps if cs.warps is not None else warps
            if len(versions) % cs.copies:
                raise LookupError(f"{self.launch.function}: LoopSpec {cs.name!r} says {cs.copies} copies, "
                                  f"the SASS has {len(versions)} loops on its line")
            per = len(versions) // cs.copies
            versions = sorted(versions, key=lambda c: c.header)
            peeled = self._peeled(loop, cs, versions)
            for g in range(cs.copies):
                copy = versions[g * per:(g + 1) * per]
                us = [self._unroll(c, cs) for c in copy]
                # source iterations go to the most-unrolled copy first, the rest to the
                # remainder copies (how nvcc/LLVM split an unrolled loop) or to the
                # iterations it peeled into straight-line code; a fractional count (an
                # average over chunks or warps) stays fractional
                rem = cs.iters
                order = sorted(range(len(copy)), key=lambda k: -us[k])
                trips_of = {}
                for k in order:
                    if k != order[-1] or peeled[1]:
                        trips_of[k] = math.floor(rem / us[k] + 1e-9)
                    elif abs(rem - round(rem)) < 1e-9:
                        trips_of[k] = math.ceil(rem / us[k] - 1e-9)
                    else:
                        trips_of[k] = max(0.0, rem / us[k])
                    rem -= trips_of[k] * us[k]
                if peeled[1]:
                    runs = min(1.0, max(0.0, rem) / peeled[1])
                    if rem > peeled[1]:     # an average past what was peeled: the loop runs the rest
                        trips_of[order[-1]] += (rem - peeled[1]) / us[order[-1]]
                    for addr in (i.addr for i in peeled[0]):
                        self.weight[addr] = self.weight.get(addr, 1.0) * runs
                        if runs <= 0:
                            self.skip.add(addr)
                for k, c in enumerate(copy):
                    child = self._build(c, cs, trips_of[k], w, node.instance)
                    child.unroll = us[k]
                    node.children.append(child)
        node.children.sort(key=lambda n: n.loop.header)
        return node

    def _peeled(self, parent: sass.Loop, spec: LoopSpec, versions: list) -> tuple[list, float]:
        """Iterations of a LoopSpec's loop that the compiler peeled into
        straight-line code of the enclosing loop (the remainder of its
        unrolling): instructions of `parent` outside its inner loops whose
        chain is on the loop's body (the block its Site opens) through the
        spec's call sites -> (their addresses, how many source iterations
        they hold, counted by `work`). ([], 0) without `work`."""
        if not spec.work:
            return [], 0.0
        head = spec.where[0]
        body = resolve(Site(head.pattern, head.marker, head.file, block=True), self.launch.source)
        sites = [body] + [resolve(x, self.launch.source) for x in spec.where[1:]]
        own = [i for i in sass.body(self.instrs, parent) if self.weight.get(i.addr, 1.0) > 0]
        mine = [i for i in own if i.chain and _matches(i.chain, sites)
                and not any(v.contains(i.addr) for v in versions)]
        cls, per_iter = spec.work
        n = sum(1 for i in mine if i.cls == cls) / per_iter
        return (mine, n) if n >= 1 else ([], 0.0)

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

    def _sim_pass(self, node: Node, t: float, sb: list, sbk: list, record: float,
                  acc: Optional[dict] = None) -> float:
        """One pass over a loop body for one warp, from cycle t; nested loops
        take their own time. `record` > 0 accumulates waits / counts with that
        weight; `acc` collects the pass's cycles by region."""
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
                if acc is not None:
                    for r, v in child.regions.items():
                        acc[r] = acc.get(r, 0.0) + v
                if record and child.loop.header in self.barrier_addrs and \
                        (child.spec is None or child.spec.grid_barrier):
                    self.barrier_cycles += child.t * record
                # what the child left in flight (async copies, loads) stays pending after it
                for b in range(len(sb)):
                    sb[b] = max(min(sb[b], t), t + child.tails[b] if child.trips else t)
                    if child.trips and child.tails[b] > 0:
                        sbk[b] = "async copy"
                k = self.by_addr[stops[ins.addr]] + 1
                continue
            w = self.weight.get(ins.addr, 1.0)
            if w > 0:
                seq = [ins] + (self._callee(ins) if ins.calls_subroutine else [])
                t0 = t
                for x in seq:
                    t = self._issue(x, t, sb, sbk, record, w)
                if acc is not None:
                    r = self.region_of.get(ins.addr, "other")
                    acc[r] = acc.get(r, 0.0) + t - t0
                if record and ins.addr in self.barrier_addrs:
                    self.barrier_cycles += (t - t0) * record
            k += 1
        return t

    def _issue(self, ins: sass.Instr, t: float, sb: list, sbk: list, record: float, w: float = 1.0) -> float:
        """Issue one instruction at cycle t or later; -> the cycle the warp may
        issue its next. w < 1 (a Guard): the expected time, that fraction of
        its waits, blocking, result latency and stall."""
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
            self.waits[kind or "?"] = self.waits.get(kind or "?", 0.0) + (ready - t) * record * w
            if kind == "L2/HBM load" and ready - t > 0.5 * m.l2:
                self.round_trips += record * w
        issue = t + (ready - t) * w
        bk, bt = m.blocking(ins)
        if bt:
            issue += bt * w
            if record:
                self.waits[bk] = self.waits.get(bk, 0.0) + bt * record * w
        cls = self.cls(ins)
        lvl = self.level(ins) if cls in ("global_ld", "atomic", "async_copy") else "l2"
        if c.wbar != 7:
            sb[c.wbar] = max(sb[c.wbar], issue + m.latency(ins, lvl, cls) * w)
            sbk[c.wbar] = WAIT_KIND.get(cls, cls)
        if c.rbar != 7:
            sb[c.rbar] = max(sb[c.rbar], issue + m.a["lat_reg_read"] * w)
            sbk[c.rbar] = "register read"
        if ins.op.endswith("GMMA"):
            sb[6] = max(sb[6], issue) + m.pipe(ins)[1] * w
        return issue + max(1, c.stall) * w

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
            f = self.weight.get(ins.addr, 1.0)      # runs per pass (Guards)
            if f <= 0:
                continue
            seq = [ins] + (self._callee(ins) if ins.calls_subroutine else [])
            for x in seq:
                smsp["issue"] += f
                p, cyc = m.pipe(x)
                if p:
                    smsp[p] = smsp.get(p, 0.0) + cyc * f
                cls = self.cls(x)
                # an async global->shared copy (LDGSTS) moves its bytes through L2 and into shared memory
                copy = cls == "async_copy" and x.op == "LDGSTS"
                if cls in ("shared_ld", "shared_st", "shared_atom") or copy:
                    wf = m.wavefronts(x) * ways
                    mio += wf * f
                    if record:
                        self.bytes["shared"] += 32 * sass.access_bytes(x.opcode) * w * record * f
                if cls in ("global_ld", "global_st", "atomic", "local") or copy:
                    nbytes = 32 * sass.access_bytes(x.opcode) * (self.level(x) != "off") * f
                    l2 += nbytes
                    if record:
                        key = "global_store" if cls == "global_st" else self.level(x)
                        if key != "off":
                            self.bytes[key] += nbytes * w * record
                if record:
                    self.counts[cls] = self.counts.get(cls, 0.0) + w * record * f
                    if cls in ("shared_ld", "shared_st", "global_ld", "global_st", "atomic", "mma",
                               "local", "async_copy"):
                        self.opcodes[x.opcode] = self.opcodes.get(x.opcode, 0.0) + w * record * f
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
        a1, a2 = {}, {}
        t1 = self._sim_pass(node, 0.0, sb, sbk, 0.0, a1)
        t2 = self._sim_pass(node, t1, sb, sbk, 0.0, a2)
        steady = t2 - t1
        node.t_lat = steady if is_root else t1 + (n - 1) * steady
        node.t_thr = n * (self._throughput(node, 0.0) + sum(c.t for c in node.children))
        node.t = max(node.t_lat, node.t_thr)
        # its cycles by region: the passes' shares, scaled to node.t when a
        # throughput bound (not the chain) sets it
        parts = {r: (a2.get(r, 0.0) if is_root else a1.get(r, 0.0) + (n - 1) * a2.get(r, 0.0))
                 for r in set(a1) | set(a2)}
        total = sum(parts.values())
        node.regions = ({r: v * node.t / total for r, v in parts.items()} if total > 0 else
                        {self.region_of.get(node.loop.back.addr, "other"): node.t})
        # what is still in flight when the last pass ends (e.g. cp.async groups
        # committed in the loop): waited for by the code after the loop
        node.tails = [max(0.0, x - t2) for x in sb]

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


# Engine tile shapes of csrc/cuda/lstm_api.h engine_shape(): (M, N, K, register tiles per warp, batch tiles per chunk)
CUDA_ENGINES = {"f16": (32, 8, 16, 8, 4), "tf32": (16, 16, 8, 16, 4), "fma": (16, 8, 8, 8, 8)}
CUDA_ENGINE_CODE = {"f16": 1, "tf32": 2, "fma": 3}      # lstm_api.h Engine
CUDA_PAIRS_PER_THREAD = 4                                 # lstm_api.h kPairsPerThread
CUDA_STAGES = 4                                           # lstm_api.h kStages


def tagged_regions(path: Path, function: str) -> dict[str, frozenset]:
    """Regions of a function tagged `// [name]` (csrc/cuda/lstm.cu's step
    functions): {name: {(basename, line)}}, a line belonging to the last tag
    at or above it in the function's body (before the first tag: "setup")."""
    lines = _lines(str(path))
    name = path.name
    start = next((i for i, l in enumerate(lines) if re.search(rf"\b{function}\(", l) and "{" in l
                  and not l.strip().startswith("//")), None)
    if start is None:
        raise LookupError(f"{function} not found in {path}")
    out: dict[str, set] = {}
    cur = "setup"
    for i in range(start, len(lines)):
        m = re.search(r"// \[(\w+)\]", lines[i])
        if m:
            cur = m.group(1)
        out.setdefault(cur, set()).add((name, i + 1))
        if lines[i] == "}":
            break
    return {k: frozenset(v) for k, v in out.items()}


class CudaKernel(KernelModel):
    """csrc/cuda/lstm.cu: the persistent kernels lstm_fwd_kernel /
    lstm_bwd_kernel<X, engine>, their plan from make_plan (through the
    compiled module, bilstm_fast._cuda_emu: the same host code as the GPU
    build). One block per SM, N * blocks blocks; block (n, j) keeps its W_hh
    slice (4U rows) on chip -- the first Kr columns as MMA fragments in
    registers, the rest in shared memory -- so no weight byte is loaded from
    L2 in a step. Per step and direction: one grid barrier (a release-add,
    then thread 0 polls with acquire loads); h_{t-1} [B, Hx] (forward) or the
    dh partials [blocks, B, U] (backward) staged from L2 with 16-byte
    cp.async copies; the step matmul on the engine's tiles (with_tiles: one
    code instance per batch-tile count NNT of a chunk); the cell update;
    h_t / the partials published with 16-byte stores. What a plan does not
    run is a Guard: the with_tiles instances of other NNT, the other of the
    forward's two matmul paths (K stages with one slot per warp, or several
    slots per warp), the register tiles a slot does not hold (the unrolled
    tile code is guarded per tile), the cell-update pairs a thread does not
    own, the per-chunk state round trip when one chunk holds the batch."""
    backend = "cuda"
    SRC = ROOT / "csrc" / "cuda" / "lstm.cu"
    _TYPE = {"fp32": "f", "fp16": "6__half", "bf16": "13__nv_bfloat16"}   # Itanium mangling of X
    _ES = {"fp32": 4, "fp16": 2, "bf16": 2}

    def __init__(self, pass_: str, plan: str = ""):
        self.pass_ = pass_
        self.name = f"cuda.{pass_}"
        self.plan = plan   # a forced plan (cuda_lstm.parse_plan text, e.g. "engine=tf32"); "" = the dispatcher's

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

    def make_plan(self, gpu: GpuSpec, dtype: str, H: int, B: int, N: int = 2) -> dict:
        """make_plan's choice for this pass on `gpu` (its SMs and opt-in shared
        memory, 8 warps as on every GPU), with TF32 off (torch's default) unless
        the forced plan names an engine. RuntimeError when W_hh does not fit."""
        from bilstm_fast.ops import cuda_lstm
        mod = self._plan_module()
        forced = cuda_lstm.parse_plan(self.plan) if self.plan else cuda_lstm.Plan()
        opts = forced.options(tf32=False)
        if not forced.warps:
            opts["warps"] = mod.gpu_warps
        return dict(mod.plan(0 if self.pass_ == "fwd" else 1, N, B, H, self._dtype_code(dtype), gpu.sms,
                             gpu.smem_per_block, **opts))

    # --------------------------------------------------------------- launch
    def launch(self, gpu, dtype, H, B, N=2, T=T_DEFAULT) -> Launch:
        fwd = self.pass_ == "fwd"
        pl = self.make_plan(gpu, dtype, H, B, N)
        engine = pl["engine"]
        M, NT, K, RT, MAX_NT = CUDA_ENGINES[engine]
        U, blocks, nw, NB = pl["units"], pl["blocks"], pl["warps"], pl["batch_tile"]
        Kr, Kpad, KS = pl["reg_cols"], pl["kpad"], pl["ksplit"]
        threads, Hx, es = 32 * nw, pl["blocks"] * pl["units"], self._ES[dtype]
        vec = 16 // es                                        # X elements per 16-byte copy
        kP = CUDA_PAIRS_PER_THREAD
        chunks = [min(NB, B - b0) for b0 in range(0, B, NB)]
        nch = len(chunks)

        def avg(f):
            return sum(f(nb) for nb in chunks) / nch

        def nnt_of(nb):
            return -(-nb // NT)
        nnts = sorted({nnt_of(nb) for nb in chunks})
        # the busiest thread (thread 0, in warp 0: the one the model walks) owns pairs
        # tid + k * threads < nb * U of a chunk
        pair_runs = avg(lambda nb: min(kP, -(-nb * U // threads))) / kP
        pair_warps = lambda nb: max(1, min(nw, -(-nb * U // 32)))   # noqa: E731
        step = Site(r"for \(int s = 0; s < k\.T; \+\+s\) fwd_step\(k, s\);" if fwd else
                    r"for \(int it = 0; it < k\.T; \+\+it\) bwd_step\(k, it\);")
        q_loop = Site(r"for \(int q = imax\(q_lo, qreg\); q < q_hi; \+\+q\)")
        slots_loop = Site(r"for \(int j = warp, i = 0; j < S; j \+= nw, \+\+i\)")
        slot_in_warp = Site(r"slot_mma<Eng, L>\(acc, a_reg")
        warp_call = Site(r"warp_mma<Eng, wm::row_major" if fwd else r"warp_mma<Eng, wm::col_major")
        reg_block = Site(r"for \(int f = 0; f < RT; \+\+f\) \{", block=True)

        def tile_work(n):       # what one K tile of n batch tiles issues: HMMAs, or the FMA engine's FFMAs
            return ("fp32", 32 * n) if engine == "fma" else ("mma", (2 if engine == "f16" else 4) * n)
        # The FMA engine's 16-byte shared loads are broadcasts: a B load serves 16
        # lanes per address (2 addresses, 1 wavefront, not 4), an A row load 2 lanes
        # (16 rows, 2 wavefronts): per register tile 8 B loads (0.25 of the all-lanes
        # count), per shared tile 8 B + 2 A loads (12 of 40 wavefronts)
        ways_reg, ways_sh = (0.25, 0.3) if engine == "fma" else (1.0, 1.0)

        # with_tiles instantiates the chunk's matmul once per batch-tile count n = 1..MAX_NT;
        # an instance is told apart by its work (LoopSpec.rank: line info may name the
        # wrong case), and runs in the fraction of chunks that have n tiles
        work_cls = "fp32" if engine == "fma" else "mma"

        def share(n):
            return sum(nnt_of(nb) == n for nb in chunks) / nch

        loops = [
            # thread 0 polls the direction's counter: the successful poll, plus half a
            # failed one on average (the last block's release lands in L2 half a round
            # trip after its fence, and a poll samples L2 on average half a round trip later)
            LoopSpec("barrier poll", (Site(r"while \(c\.load\(cuda::memory_order_acquire\) < target\)"),),
                     1 + 0.5 * 1, warps=1, grid_barrier=True),
            LoopSpec("batch chunks", (Site(r"for \(int b0 = 0; b0 < k\.B; b0 \+= g\.NB\) \{"),), nch),
            # B > chunk: each chunk visit reloads its rows' lengths into shared memory
            # (load_lengths, in load_chunk / chunk_state), one row per thread
            LoopSpec("state: the chunk's lengths", (Site(r"for \(int r = threadIdx\.x; r < imin\(g\.NB, B - b0\); "
                                                         r"r \+= blockDim\.x\) len_s"),),
                     avg(lambda nb: -(-nb // threads)), warps=max(1, min(nw, -(-NB // 32)))),
        ]
        guards = [Guard("pairs of thread 0", (Site(r"for \(int k = 0; k < kP; \+\+k\) \{", block=True),), pair_runs),
                   Guard("state round trip (B > chunk)", (Site(r"if \(k\.nchunks > 1\) \{", block=True),),
                         float(nch > 1))]
        if fwd:
            # the chunk's gx loads in load_chunk: nvcc's line info drops the outer frames
            # (the [state] call) of part of this inlined copy, so its own line tells it
            guards.append(Guard("state: the chunk's gx (B > chunk)", (Site(marker="chunk gx"),), float(nch > 1)))
        notes = [f"{engine} {blocks} blocks/dir x {U} units, {nw} warps, W_hh columns 0..{Kr} of {Kpad} in "
                 f"registers, chunks {chunks} (batch tiles {nnts})"]
        if fwd:
            MT, KT = 4 * U // M, Kpad // K
            slots = MT * KS
            groups = min(CUDA_STAGES, KT) if slots <= nw else 1
            qr = Kr // (KS * K) if KS * K else 0
            guards += [Guard("one K stage (several slots per warp)", (Site(r"if \(g\.groups == 1\) \{", block=True),),
                             float(groups == 1)),
                       Guard("K stages (one slot per warp)", (Site(r"\} else \{  // one slot \(mt, ks\) per warp",
                                                                   block=True),), float(groups > 1)),
                       Guard("state / outputs after the arrival (one chunk)",
                             (Site(r"if \(k\.nchunks == 1\) \{", block=True),), float(nch == 1))]
            # stage h_{t-1}: group i copies columns [c_i, c_{i+1}) of nb rows, 16 bytes a thread
            cols = [min(Hx, i * KT // groups * K) for i in range(groups + 1)]
            stage = avg(lambda nb: sum(-(-nb * (cols[i + 1] - cols[i]) // vec // threads)
                                       for i in range(groups)) / groups)
            # warps that copy (all warps' copies = the chunk's rows, for the bytes)
            copy_warps = max(1, min(nw, round(avg(lambda nb: nb * Hx / vec / 32) / max(stage * groups, 1e-9))))
            loops += [LoopSpec("stage h: K groups", (Site(r"for \(int i = 0; i < g\.groups; \+\+i\)\s*$"),), groups),
                      LoopSpec("stage h: 16-byte copies", (Site(r"for \(int i = threadIdx\.x; i < total; i \+= "
                                                                 r"blockDim\.x\)"), Site(r"stage_rows\(k\.h_s")),
                               stage, warps=copy_warps)]
            if groups > 1:
                # warp 0 runs slot (mt 0, ks 0): kcount K tiles, its first qr in registers
                kcount = -(-KT // KS)
                reg_runs = min(qr, kcount) / (groups * RT)
                shared = (kcount - min(qr, kcount)) / groups
                mma_note = (f"K stages {groups}, one slot per warp ({slots} of {nw} warps busy), slot 0: "
                            f"{kcount} K tiles, {min(qr, kcount)} from registers")
                for n in range(1, MAX_NT + 1):
                    loops += [LoopSpec(f"mma K stages NNT={n}", (Site(r"for \(int i = 0; i < g\.groups; \+\+i\) \{"),),
                                       groups * share(n), warps=min(slots, nw), rank=(work_cls, n - 1), instance=n,
                                       smem_ways=ways_reg),
                              LoopSpec(f"mma shared K tiles NNT={n}", (q_loop, Site(r"slot_mma<Eng, wm::row_major>"
                                                                                     r"\(acc, k\.a_reg")),
                                       shared, warps=min(slots, nw), generic="shared", work=tile_work(n),
                                       instance=n, smem_ways=ways_sh)]
            else:
                passes = list(range(0, slots, nw))            # warp 0's slots j = 0, nw, 2 nw, ...
                reg, sh = 0, 0
                for i, j in enumerate(passes):
                    ks = j % KS
                    kc = -(-(KT - ks) // KS)
                    r = min(kc, max(0, qr - i * kc))
                    reg, sh = reg + r, sh + kc - r
                reg_runs = reg / (len(passes) * RT)
                shared = sh / len(passes)
                mma_note = f"one K stage, {len(passes)} slots per warp, {reg} register tiles"
                for n in range(1, MAX_NT + 1):
                    loops += [LoopSpec(f"mma slots NNT={n}", (slots_loop, warp_call), len(passes) * share(n),
                                       rank=(work_cls, n - 1), instance=n, smem_ways=ways_reg),
                              LoopSpec(f"mma shared K tiles NNT={n}", (q_loop, slot_in_warp, warp_call),
                                       shared, generic="shared", work=tile_work(n), instance=n, smem_ways=ways_sh)]
            guards.append(Guard("register tiles a slot does not hold", (reg_block,), reg_runs))
            loops += [LoopSpec("cell: sum of the K splits", (Site(r"for \(int ks = 0; ks < g\.KS; \+\+ks\) v \+= "
                                                                  r"r\[ks \* red_ks\];"),),
                               KS, warps=max(pair_warps(nb) for nb in chunks), copies=kP * 4, generic="shared",
                               work=("fp32", 1)),
                      LoopSpec("publish h_t: 16-byte stores", (Site(r"for \(int i = threadIdx\.x; i < nb \* \(int\)g\.u_vec\.d; "
                                                                     r"i \+= blockDim\.x\)"),),
                               avg(lambda nb: -(-nb * (U // vec) // threads)),
                               warps=max(1, min(nw, -(-chunks[0] * (U // vec) // 32))))]
            mem = [MemHint(Site(r"gx\[k\]\[gt\] = to_f\(q\["), gx_level(gpu, T, B, N, H, dtype))]
            notes.append(f"forward: KS={KS}, {mma_note}; h staged: {B * Hx * es} B per block per step")
        else:
            MT, KT = Kpad // M, 4 * U // K
            rho = Kr // (nw * M) if nw * M else 0
            passes = -(-MT // nw)                             # warp 0's m-tiles 0, nw, 2 nw, ...
            reg_runs = rho * KT / (passes * RT)
            shared = (passes - min(rho, passes)) * KT / passes
            guards.append(Guard("register tiles a slot does not hold", (reg_block,), reg_runs))
            guards.append(Guard("prefetch after the arrival (one chunk)",
                                (Site(r"if \(k\.nchunks == 1 && it \+ 1 < k\.T\)"),), float(nch == 1)))
            recv = avg(lambda nb: -(-blocks * nb * (U // vec) // threads))
            recv_warps = max(1, min(nw, round(avg(lambda nb: blocks * nb * U / vec / 32) / max(recv, 1e-9))))
            loops += [LoopSpec("receive dh partials: 16-byte copies",
                               (Site(r"for \(int i = threadIdx\.x; i < total; i \+= blockDim\.x\)"),
                                Site(r"stage_rows\(rx, g\.U, g\.blocks \* nb")),
                               recv, warps=recv_warps),
                      LoopSpec("receive: sum over source blocks", (Site(r"for \(; j \+ 1 < g\.blocks; j \+= 2\) \{"),),
                               blocks // 2, warps=max(pair_warps(nb) for nb in chunks), copies=kP)]
            for n in range(1, MAX_NT + 1):
                loops += [LoopSpec(f"mma slots NNT={n}", (slots_loop, warp_call), passes * share(n),
                                   rank=(work_cls, n - 1), instance=n, smem_ways=ways_reg),
                          LoopSpec(f"mma shared K tiles NNT={n}", (q_loop, slot_in_warp, warp_call),
                                   shared, generic="shared", work=tile_work(n), instance=n, smem_ways=ways_sh),
                          LoopSpec(f"send partials NNT={n}", (Site(r"for \(int e = lane_id\(\); e < nb \* "
                                                                   r"\(C::S\.m / 8\); e \+= 32\)"),),
                                   avg(lambda nb: -(-nb * (M // 8) // 32)), instance=n)]
            # the saved forward values were written long before (the rest of the network ran in between): HBM
            mem = [MemHint(Site(r"act\[k\]\[gt\] = gates\[|cell\[k\] = cells\[|cprev\[k\] = |: to_f\(c0\[|"
                                r"dy\[k\] = to_f\(dyp\["), "hbm")]
            notes.append(f"backward: {passes} m-tile slots per warp, {rho} in registers; partials: "
                         f"{B * Hx * es} B received per block per step")
        kname = "lstm_fwd_kernel" if fwd else "lstm_bwd_kernel"
        regions = tagged_regions(self.SRC, "fwd_step" if fwd else "bwd_step")
        plan = dict(pl, chunks=chunks, nnt=nnts, staged_bytes_per_block=B * Hx * es)   # h, or the dh partials
        return Launch(variant=f"{engine} {blocks}x{U}" + (f" regs {Kr}/{Kpad}" if Kr else " smem"),
                      function=rf"{kname}I{self._TYPE[dtype]}Li{CUDA_ENGINE_CODE[engine]}EE",
                      source=self.SRC, blocks=N * blocks, warps=nw, step=step, loops=loops, mem=mem,
                      guards=guards, regions=regions, instance_site=Site(r"with_tiles<(1, )?C::S\.max_nt>\("),
                      instance_runs={n: share(n) for n in range(1, MAX_NT + 1)},
                      generic_shared=(Site(r"struct WmmaEngine \{", block=True), Site(r"struct FmaEngine \{", block=True)),
                      gemm_flops=2.0 * N * B * 4 * H * H, plan=plan, notes=notes)

    def cubin(self, gpu, dtype, H, launch) -> bytes:
        """lstm.cu for sm_<cc>, compiled once per source text and nvcc version
        by tools/cuda_resources.py (the same cubin as the compile report's rows)."""
        import cuda_resources
        return cuda_resources.cubin(str(gpu.cc)).read_bytes()


def _triton_adapter(compiler: bool = False, planner: bool = False):
    """Everything taken from the Triton backend, in one place:
    -> (kernel_config(H, dtype, smem, dot_prec) -> KernelConfig, the kernels'
    source file), or with compiler=True the ahead-of-time compile
    (kernel, arch, H, dtype, dot_prec, plan, sync) -> (Triton's compiled
    kernel, its resources), which tools/compile_report.py does (imported only
    in the compiling process: it clears TRITON_INTERPRET on import), or with
    planner=True the dispatcher's module, triton_plan (SPLIT's launch rule:
    split_launch_groups, split_groups, co_resident_programs, DeviceFacts)."""
    if compiler:
        import compile_report

        def compile_(kernel, arch, H, dtype, prec, plan="", sync=True):
            """-> (compiled kernel, its resources: registers per thread (cuobjdump, as
            the compile report reads them), dynamic shared memory and warps (metadata))."""
            v = compile_report.Variant(kernel, arch, H, dtype, 2, True, kernel == "fwd", prec, sync=sync,
                                       plan=plan)
            k = compile_report.compile_triton(v)[0]
            regs, stack = compile_report._cubin_usage(k.asm["cubin"])
            return k, dict(registers=regs, stack=stack, shared=k.metadata.shared,
                           num_warps=k.metadata.num_warps)
        return compile_
    import torch
    from bilstm_fast.ops import triton_kernels, triton_plan
    if planner:
        return triton_plan

    def config(H, dtype, smem, prec, plan=""):
        if plan:
            return triton_plan.parse_plan(plan)
        tdt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
        return triton_plan.kernel_config(H, tdt, smem, prec)
    return config, Path(triton_kernels.__file__)


def _py_function_lines(path: Path) -> dict[str, tuple[int, int]]:
    """Top-level Python functions of a source file -> (first, last) line of each
    (the `def` line to the last line before the next decorator or def)."""
    lines = _lines(str(path))
    starts = [(i, m.group(1)) for i, text in enumerate(lines) if (m := re.match(r"def (\w+)\(", text))]
    out = {}
    for k, (i, name) in enumerate(starts):
        j = starts[k + 1][0] if k + 1 < len(starts) else len(lines)
        while j - 1 > i and (not lines[j - 1].strip() or lines[j - 1].startswith("@")):
            j -= 1
        out[name] = (i + 1, j)
    return out


def _split_regions(path: Path, fwd: bool) -> dict:
    """The parts a SPLIT step is reported by (Launch.regions): whole helper
    functions, and lines of the kernel's own body found by their text."""
    fn = _py_function_lines(path)
    lines = _lines(str(path))
    name = path.name

    def funcs(*names):
        return {(name, l) for f in names if f in fn for l in range(fn[f][0], fn[f][1] + 1)}

    lo, hi = fn["_lstm_fwd_split_kernel" if fwd else "_lstm_bwd_split_kernel"]

    def body(pattern):
        rx = re.compile(pattern)
        return {(name, l) for l in range(lo, hi + 1) if rx.search(lines[l - 1])}

    regions = {"grid barrier": funcs("_arrive_and_wait"), "dots": funcs("_dot"), "k-sum": funcs("_ksum"),
               "rows, time, lengths": funcs("_row_lengths", "_step_time")}
    if fwd:
        regions.update({
            "h load": body(r"hx \+?= tl\.load|mask=k_ok & valid\[None|k_ok = b_ok\[None|f3 = first"),
            "gx": funcs("_load_gx"),
            "cell, stores": funcs("_cell_and_store", "_sigmoid", "_tanh") | body(r"tl\.(load|store)\(c_scr|"
                                                                                  r"c \+= tl\.load\(c0")})
    else:
        regions.update({
            "dG load (phase B)": body(r"tl\.load\(dgx \+ g_off|g_off = row\[None|k_ok = b_ok\[None"),
            "dh store (phase B)": body(r"tl\.store\((dh_scr|dh0) \+|tl\.debug_barrier\(\)"),
            "cell backward (phase A)": funcs("_cell_bwd_and_store", "_tanh")
            | body(r"d[hc] \+?= tl\.load\(d[hc]_(n|scr)|c_first = tl\.load|tl\.store\(dc_scr")})
    return regions


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
            return self._split_launch(gpu, dtype, H, B, N, T, cfg, src)
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

    # ------------------------------------------------------------ SPLIT
    # _lstm_fwd_split_kernel / _lstm_bwd_split_kernel (docs/triton.md, "Grid and
    # time", "The three paths"): grid (N, Q, S), program (n, q, j) holds the W_hh
    # slice of units 16j..16j+15 in shared memory for all steps; per step it runs
    # the batch tiles q, q+Q, ... (`for p in range(q, cdiv(B, BB), Q)`) and meets
    # its group's S programs at the barrier (_arrive_and_wait: bar.sync, one
    # release-add, a volatile-load poll without nanosleep, bar.sync).
    SPLIT_TILES = r"for p in range\(q, \(B \+ BLOCK_B - 1\) // BLOCK_B, Q\):"
    SPLIT_POLL = r"while seen < target:"
    # the barrier poll: the first volatile load is peeled before the loop (the
    # successful one of the last program to arrive); the loop runs half a failed
    # poll on average (the last arrival lands half a poll period before the poll
    # that sees it), as CudaKernel's "barrier poll" counts 1 + 0.5 polls
    SPLIT_POLL_TRIPS = 0.5

    def _split_launch(self, gpu, dtype, H, B, N, T, cfg, src) -> Launch:
        """The SPLIT launch the Triton launcher (triton_lstm._launch_split) makes:
        Q from triton_plan.split_launch_groups with the capacity of the compiled
        SYNC kernel (its registers and shared memory, triton_plan's occupancy
        arithmetic on the GPU's limits from gpu_specs); Q == 0: one launch per
        step (sync=step), the SYNC=False kernel, every batch tile its own group,
        plus the per-launch gap (an assumed constant) and the W slices' reload."""
        tp = _triton_adapter(planner=True)
        fwd = self.pass_ == "fwd"
        a = gpu_specs.arch_facts(gpu.cc)
        facts = tp.DeviceFacts(gpu.sms, gpu.smem_per_sm, int(a["regs_per_sm"]), int(a["threads_per_sm"]),
                               int(a["blocks_per_sm"]))
        S = -(-H // cfg.block_h)
        tiles = -(-B // cfg.block_b)
        rs = self._compiled(gpu, dtype, H, sync=True)[1]        # the launcher asks the SYNC kernel
        capacity = tp.co_resident_programs(facts, rs["registers"], rs["shared"], rs["num_warps"])
        if capacity <= 0:
            raise RuntimeError(f"triton {self.pass_} H={H} {dtype}: one program ({rs['shared']} B shared "
                               f"memory, {rs['registers']} registers) does not fit an SM of the {gpu.name}")
        Q = tp.split_launch_groups(cfg.sync, False, N, S, tiles, lambda: capacity)
        grid = Q > 0
        # the kernel that runs: the SYNC one, or the SYNC=False one launched once per step
        res = rs if grid else self._compiled(gpu, dtype, H, sync=False)[1]
        per_sm = tp.co_resident_programs(facts, res["registers"], res["shared"], res["num_warps"]) // gpu.sms
        groups = Q if grid else tiles
        trips = -(-tiles // groups)                              # the busiest program (q = 0)
        blocks = N * groups * S
        bk = tp.split_block_k(H)
        tile_loop = Site(self.SPLIT_TILES)
        if fwd:
            step = Site(r"for s in range\(S_BEGIN, S_END\):")
            loops = [LoopSpec("batch tiles p = q, q+Q, ...", (tile_loop,), trips, unroll=1)]
        else:
            # the two batch-tile loops share one source text: phase B holds the dG x W dots, phase A the cell
            step = Site(r"for r in range\(S_BEGIN, S_END\):")
            loops = [LoopSpec("phase B tiles (dh = dG W)", (tile_loop,), trips, has=r"\bHMMA", unroll=1),
                     LoopSpec("phase A tiles (cell backward)", (tile_loop,), trips, lacks=r"\bHMMA", unroll=1)]
        if grid:
            loops.append(LoopSpec("barrier poll", (Site(self.SPLIT_POLL),), self.SPLIT_POLL_TRIPS,
                                  grid_barrier=True))
        # gx: L2 or HBM (gx_level); the backward's saved gates / cell states and dy:
        # HBM; loads masked to the first or the last step (h0, c0, dh_n, dc_n) are
        # off in the steady state; the h (dG) exchange, .cg loads of y (dgx) that the
        # group's S programs wrote one step before: L2
        mem = [MemHint(Site(r"tl\.load\(gx \+"), gx_level(gpu, T, B, N, H, dtype)),
               MemHint(Site(r"tl\.load\((gates|cells|dy) \+"), "hbm"),
               MemHint(Site(r"tl\.load\((h0|c0|dh_n|dc_n) \+"), "off"),
               MemHint(Site(r"hx = tl\.load\(y \+|tl\.load\(dgx \+ g_off"), "l2")]
        sync = "grid" if grid else "step"
        notes = [f"path=split BLOCK_H={cfg.block_h} BLOCK_B={cfg.block_b} BLOCK_K={bk} num_warps={cfg.num_warps}: "
                 f"grid (N, Q, S) = ({N}, {groups}, {S}), {blocks} programs, sync={sync}",
                 f"capacity {capacity} co-resident programs of the SYNC kernel ({gpu.sms} SMs x "
                 f"{capacity // gpu.sms}: {rs['registers']} registers x {32 * rs['num_warps']} threads, "
                 f"{rs['shared']} B shared memory; triton_plan.co_resident_programs, sm_{gpu.cc} limits "
                 f"from gpu_specs)",
                 f"Q = split_groups(N={N}, S={S}, batch tiles={tiles}, capacity) = {Q}"
                 + ("" if grid else f" (N x S = {N * S} > capacity: one launch per step, {tiles} group(s) "
                                    f"per direction)")
                 + f"; the busiest program runs {trips} batch tile(s) per step"]
        if grid and -(-blocks // gpu.sms) > 1:
            notes.append(f"{-(-blocks // gpu.sms)} programs share an SM: the model times one program per SM "
                         f"(their throughput is not summed; docs/cost_model.md §6)")
        fixed = {}
        if not grid:
            gap = a["launch_gap_us"]
            es = DTYPE_BYTES[dtype]
            w_prog = 4 * H * min(cfg.block_h, H) * es                # the program's 4 W slices, real units
            w_all = w_prog * blocks
            per_sm_bytes = -(-blocks // gpu.sms) * w_prog
            m_cyc = max(per_sm_bytes / a["l2_sm_bytes_clk"], w_all / (gpu.sms * a["l2_gpu_bytes_clk_per_sm"]))
            reload = (m_cyc + a["lat_l2_near"] * a["l2_far_factor"]) / gpu.clock_hz * 1e6
            fixed = {"kernel launch (assumed)": gap, "W slice reload (estimate)": reload}
            notes.append(f"sync=step: + {gap:g} us per launch (gpu_specs launch_gap_us, assumed: CUDA-graph "
                         f"replay; an eager launch adds ~5-20 us of Python) + {reload:.2f} us to reload the W "
                         f"slices each launch ({w_all} B over the L2 bandwidth / {per_sm_bytes} B through one "
                         f"SM's L2 port, + one far L2 hit; an estimate from bytes, not the SASS walk)")
        variant = (f"split BH={cfg.block_h} S={S} Q={Q} grid" if grid else
                   f"split BH={cfg.block_h} S={S} sync=step: a launch per step (+{a['launch_gap_us']:g} us "
                   f"assumed, +{fixed['W slice reload (estimate)']:.2f} us W reload estimated)")
        plan = dict(path="split", block_h=cfg.block_h, block_b=cfg.block_b, block_k=bk, num_warps=cfg.num_warps,
                    S=S, Q=Q, sync=sync, groups=groups, batch_tiles=tiles, tiles_per_program=trips,
                    capacity=capacity, registers=res["registers"], smem_bytes=res["shared"], programs=blocks)
        return Launch(variant=variant, function=r"_lstm_(fwd|bwd)_split_kernel", source=src, blocks=blocks,
                      warps=cfg.num_warps, step=step, loops=loops, mem=mem, blocks_per_sm=max(1, per_sm),
                      regions=_split_regions(src, fwd),
                      gemm_flops=2.0 * N * B * 4 * H * H, plan=plan, notes=notes, fixed_us=fixed)

    def _compiled(self, gpu, dtype, H, sync: bool = True, resources: bool = True) -> tuple[Path, dict]:
        """Compiled in a fresh process (python tools/cost_model.py --compile-triton):
        the kernels must be JIT functions, not the interpreter's (a test session
        may have set TRITON_INTERPRET=1), and a compiler crash stays there.
        -> (the cached cubin, its resources: registers, shared, num_warps; {}
        without `resources`). sync=False: SPLIT's kernel for one launch per step."""
        import triton
        _, src = _triton_adapter()
        key = _hash_files([src, ROOT / "tools" / "compile_report.py"],
                          f"{triton.__version__}{gpu.cc}{self.pass_}{H}{dtype}{self.prec(dtype)}{self.plan}"
                          + ("" if sync else "SYNC=False"))
        path = cache_dir() / f"triton-{self.pass_}-sm{gpu.cc}-{dtype}-H{H}{'' if sync else '-step'}-{key}.cubin"
        info = path.with_suffix(".json")
        if not path.exists() or (resources and not info.exists()):
            path.parent.mkdir(parents=True, exist_ok=True)
            job = json.dumps(dict(kernel=self.pass_, arch=gpu.cc, H=H, dtype=dtype, prec=self.prec(dtype),
                                  plan=self.plan, sync=sync, out=str(path)))
            env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
            r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--compile-triton", job],
                               capture_output=True, text=True, env=env)
            if r.returncode != 0 or not path.exists():
                raise RuntimeError(f"triton.compile failed for {job}: "
                                   f"{(r.stderr.strip().splitlines() or ['no output'])[-1][:300]}")
        return path, (json.loads(info.read_text()) if resources else {})

    def cubin(self, gpu, dtype, H, launch) -> bytes:
        """The compiled variant the launch runs (SPLIT: the SYNC kernel, or the
        per-step one when launch.plan says sync=step), from the cache."""
        sync = launch.plan.get("sync") != "step"
        return self._compiled(gpu, dtype, H, sync, resources=False)[0].read_bytes()


def _compile_triton_job(job: str) -> int:
    d = json.loads(job)
    compile_ = _triton_adapter(compiler=True)
    k, resources = compile_(d["kernel"], d["arch"], d["H"], d["dtype"], d["prec"], d.get("plan", ""),
                            d.get("sync", True))
    out = Path(d["out"])
    # the resources first (TritonKernel._compiled takes a cubin with its .json beside it)
    tmp = out.with_suffix(f".{os.getpid()}.json.tmp")
    tmp.write_text(json.dumps(resources))
    os.replace(tmp, out.with_suffix(".json"))
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
    an = StepAnalysis(Machine(gpu, "near"), funcs[fname], launch)
    # the same step with every L2 hit in the near / the far partition: the range
    # that the L2 latency's uncertainty alone gives (the same structure, timed again)
    span = []
    for l2 in ("near", "far"):
        an.m = Machine(gpu, l2)
        span.append(an.run(record=False).root.t)
    m = an.m = Machine(gpu)
    an.run()
    clock = m.clock
    sm_cycles = an.root.t
    # the GPU-wide bandwidth bounds: every block's bytes through L2, the HBM-hinted ones from HBM
    waves = math.ceil(launch.blocks / (gpu.sms * launch.blocks_per_sm))
    l2_bytes = (an.bytes["l2"] + an.bytes["hbm"] + an.bytes["global_store"]) * launch.blocks
    l2_bw = gpu.sms * m.a["l2_gpu_bytes_clk_per_sm"] * clock
    t_l2 = l2_bytes / l2_bw
    t_hbm = an.bytes["hbm"] * launch.blocks / (gpu.hbm_gbs * 1e9)
    t_sm = sm_cycles / clock
    fixed = sum(launch.fixed_us.values()) * 1e-6     # outside the step loop (e.g. a launch per step)
    per_step = max(t_sm, t_l2, t_hbm) * waves + fixed
    per_step_range = [(max(c / clock, t_l2, t_hbm) * waves + fixed) * 1e6 for c in span]
    bound = "SM (see loops)" if t_sm >= max(t_l2, t_hbm) else ("L2 bandwidth" if t_l2 >= t_hbm else "HBM bandwidth")
    if launch.fixed_us:
        bound += " + " + " + ".join(launch.fixed_us)
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
        fixed_us=dict(launch.fixed_us),
        throughput_bounds_cycles={k: round(v) for k, v in sorted(an.thr_totals.items(), key=lambda kv: -kv[1])},
        serial_chain={"dependent_global_round_trips": round(an.round_trips, 1),
                      "grid_barrier_cycles": round(an.barrier_cycles),
                      "waits_cycles": {k: round(v) for k, v in sorted(w.items(), key=lambda kv: -kv[1])},
                      "l2_hit_cycles": round(m.l2), "l2_hit_range": [round(x) for x in m.l2_range]},
        loops=an.loops(),
        regions_cycles={k: round(v) for k, v in sorted(an.root.regions.items(), key=lambda kv: -kv[1])},
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
    a forced plan, as the backend name takes it (Triton: triton_plan.parse_plan
    text; CUDA: cuda_lstm.parse_plan text, e.g. "engine=tf32" for fp32 with
    TF32 allowed; "" = the dispatcher's, with TF32 off)."""
    gpu = gpu_specs.lookup(gpu_name)
    if gpu is None:
        raise KeyError(f"GPU {gpu_name!r} is not in bilstm_fast/bench/gpu_specs.py")
    if gpu.cc not in gpu_specs.ARCH:
        raise KeyError(f"{gpu.name}: no architecture facts for sm_{gpu.cc}")
    k = KERNELS[kernel]
    if plan:
        k = type(k)(k.pass_, plan)
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
    if "unsupported" in r:
        why = r["unsupported"].removeprefix("bilstm_fast cuda: ")
        return (f"{r['gpu']:<17} {r['kernel']:<11} {r['dtype']:<5} H={r['H']:<5} B={r['B']:<4} "
                f"no plan: {why[:110]}")
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
    if "error" in r or "unsupported" in r:
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
    if r.get("regions_cycles"):
        out.append("  the step by region of the source (cycles of the simulated warp): " +
                   ", ".join(f"{k} {v}" for k, v in r["regions_cycles"].items()))
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
    g, k, d, (b, h), plan = item
    try:
        return predict(g, k, d, h, b, plan=plan)
    except RuntimeError as e:
        if "does not fit on chip" in str(e):   # no plan for this shape: the dispatcher takes another backend
            return dict(gpu=gpu_specs.lookup(g).name, kernel=k, dtype=d, H=h, B=b, unsupported=str(e))
        return dict(gpu=gpu_specs.lookup(g).name, kernel=k, dtype=d, H=h, B=b, error=f"{type(e).__name__}: {e}")
    except Exception as e:      # a row that cannot be predicted says why; the run goes on
        return dict(gpu=gpu_specs.lookup(g).name, kernel=k, dtype=d, H=h, B=b, error=f"{type(e).__name__}: {e}")


def run_rows(gpus, kernels, dtypes, shapes, jobs: int = 1, plan: str = "") -> list[dict]:
    """Predict every (GPU, kernel, dtype, (B, H)); jobs > 1: compile the missing
    cubins, then predict, in that many worker processes (cubins land in
    cache_dir(); consecutive rows share a cubin, so they go to one worker)."""
    todo = [(*it, plan) for it in itertools.product(gpus, kernels, dtypes, shapes)]
    if jobs <= 1:
        return [_row(it) for it in todo]
    from concurrent.futures import ProcessPoolExecutor
    warm = {}
    for g, k, d, (b, h), _ in todo:
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
    ap.add_argument("--plan", default="", help="a forced plan for every row (cuda: 'engine=tf32', ...; "
                                               "triton: 'path=streamed,block_h=32'); default: the dispatcher's")
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
    rows = run_rows(args.gpu, args.kernel, args.dtype, shapes, args.jobs, args.plan)
    for r in rows:
        if args.json:
            print(json.dumps(r, default=float))
        else:
            print(_verbose(r) if args.verbose else _row_line(r))
    missed = check_targets(rows)
    errors = [r for r in rows if "error" in r]
    nope = [r for r in rows if "unsupported" in r]
    print(f"\n{len(rows)} rows ({len(errors)} not predicted, {len(nope)} without a plan: W_hh does not fit on "
          f"chip); all figures are predictions from compiled SASS, not measurements", file=sys.stderr)
    if missed:
        print(f"{len(missed)} target(s) of issue 12 missed:", file=sys.stderr)
        for x in missed:
            print(f"  {x}", file=sys.stderr)
    if errors and not args.report_only:
        return 2
    return 1 if missed and not args.report_only else 0


if __name__ == "__main__":
    sys.exit(main())
