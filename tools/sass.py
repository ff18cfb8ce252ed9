"""SASS of a cubin, read for the cost model (tools/cost_model.py): instructions
with their source lines and control codes, classified, and the loop tree.

    funcs = disassemble(cubin_bytes)          # {function name: [Instr]}
    tree = loop_tree(funcs[name])             # [Loop], outermost first, children nested
    classify("LDG.E.128.CONSTANT")            # -> "global_ld"

``disassemble`` runs ``nvdisasm -c -gi -hex`` (CUDA's, else the one Triton
bundles): ``-gi`` prints the source line of each instruction with the chain
of inlined call sites (cubins need line info: ``nvcc -lineinfo``; Triton emits
it by default), ``-hex`` the two 64-bit words of each instruction, whose high
word holds the control code the compiler set for the warp scheduler
(Jia et al., "Dissecting the NVIDIA Volta GPU Architecture via
Microbenchmarking", arXiv:1804.06826, §2; unchanged on sm_80, sm_86, sm_89,
sm_90): bits 41-44 stall cycles before the next instruction issues, 45 yield,
46-48 the scoreboard this instruction sets when its result is written
(7 = none), 49-51 the one set when its operands have been read, 52-57 the
scoreboards it waits for, 58-61 register-reuse flags.

A loop is a backward branch: its body runs from the branch target (the
header) to the last branch back to it. Loops nest by address ranges, which
holds for the structured code nvcc and Triton emit.
"""
from __future__ import annotations

import bisect
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Optional

# ----------------------------------------------------------------- tools
def _triton_bin(name: str) -> Optional[str]:
    try:
        import triton
    except ImportError:
        return None
    p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(p) if p.exists() else None


def tool_path(name: str) -> Optional[str]:
    """nvdisasm / cuobjdump / nvcc: $CUDA_HOME/bin, PATH, /usr/local/cuda/bin,
    then (disassemblers only) the copy Triton bundles."""
    cands = [os.path.join(os.environ[v], "bin", name) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    cands += [shutil.which(name) or "", f"/usr/local/cuda/bin/{name}"]
    for c in cands:
        if c and os.path.exists(c):
            return c
    return _triton_bin(name) if name in ("nvdisasm", "cuobjdump") else None


# ------------------------------------------------------------ instructions
@dataclass(frozen=True)
class Ctrl:
    stall: int      # cycles before the warp's next instruction may issue
    yld: int
    wbar: int       # scoreboard set on result write (7 = none)
    rbar: int       # scoreboard set on operand read (7 = none)
    wait: int       # bit mask of scoreboards waited for before issue
    reuse: int

    @staticmethod
    def decode(hi: int) -> "Ctrl":
        return Ctrl((hi >> 41) & 0xF, (hi >> 45) & 1, (hi >> 46) & 7, (hi >> 49) & 7,
                    (hi >> 52) & 0x3F, (hi >> 58) & 0xF)


SrcLine = tuple[str, int]   # (file path, line)


@dataclass
class Instr:
    addr: int
    pred: str                     # "", "@P0", "@!P1", ...
    opcode: str                   # full mnemonic with modifiers, e.g. LDG.E.128.STRONG.GPU
    operands: str
    chain: tuple[SrcLine, ...] = ()   # source line, innermost (inlined callee) first
    ctrl: Optional[Ctrl] = None
    target: Optional[int] = None  # branch / call target address
    target_label: str = ""

    @property
    def calls_subroutine(self) -> bool:
        """A CALL to a named subroutine ($__internal_...: 64-bit division), not
        nvcc's CALL.REL.NOINC to a local label (warp reconvergence), nor to a
        `..._slowpath` (the rare operands of a division or reciprocal --
        denormals, zero, infinity -- that a branch around the call skips
        otherwise)."""
        return (self.op == "CALL" and self.target is not None and self.target_label.startswith("$")
                and "slowpath" not in self.target_label)

    @cached_property
    def op(self) -> str:
        return self.opcode.split(".")[0]

    @cached_property
    def cls(self) -> str:
        return classify(self.opcode, self.operands)

    def __str__(self) -> str:
        src = f"  // {Path(self.chain[0][0]).name}:{self.chain[0][1]}" if self.chain else ""
        return f"/*{self.addr:04x}*/ {self.pred + ' ' if self.pred else ''}{self.opcode} {self.operands};{src}"


_INSTR = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(.*?)\s*;\s*(?:/\*\s*0x([0-9a-f]{16})\s*\*/)?\s*$")
_HI = re.compile(r"^\s*/\*\s*0x([0-9a-f]{16})\s*\*/\s*$")
_LABEL = re.compile(r"^(\.L_x_\d+|\$[\w$.]+):")
_FUNC = re.compile(r"^\.text\.(\S+):$")
_LINE = re.compile(r'^\s*//## File "([^"]+)", line (\d+)(?: inlined at "([^"]+)", line (\d+))?')
_TARGET = re.compile(r"`\(([^)]+)\)")


def parse_nvdisasm(text: str) -> dict[str, list[Instr]]:
    """nvdisasm -c [-gi] [-hex] output -> {function: [Instr]} in address order."""
    funcs: dict[str, list[Instr]] = {}
    labels: dict[str, dict[str, int]] = {}
    pending_targets: list[tuple[str, Instr, str]] = []
    cur: Optional[list[Instr]] = None
    fname = ""
    chain: tuple[SrcLine, ...] = ()
    chain_acc: list[SrcLine] = []
    pending_labels: list[str] = []
    last: Optional[Instr] = None
    for line in text.splitlines():
        m = _FUNC.match(line.strip())
        if m:
            fname = m.group(1)
            cur = funcs.setdefault(fname, [])
            labels[fname] = {}
            chain, chain_acc, pending_labels, last = (), [], [], None
            continue
        if cur is None:
            continue
        m = _LINE.match(line)
        if m:
            chain_acc.append((m.group(1), int(m.group(2))))
            if m.group(3) is None:         # the outermost frame ends a chain
                chain, chain_acc = tuple(chain_acc), []
            continue
        m = _HI.match(line)
        if m and last is not None and last.ctrl is None:
            last.ctrl = Ctrl.decode(int(m.group(1), 16))
            continue
        m = _LABEL.match(line.strip())
        if m:
            pending_labels.append(m.group(1))
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        if chain_acc:                      # a chain whose outermost line was not printed
            chain, chain_acc = tuple(chain_acc), []
        body = m.group(2).strip()
        pred = ""
        if body.startswith("@"):
            pred, body = body.split(None, 1)
        parts = body.split(None, 1)
        ins = Instr(int(m.group(1), 16), pred, parts[0], parts[1] if len(parts) > 1 else "", chain)
        for lab in pending_labels:
            labels[fname][lab] = ins.addr
        pending_labels = []
        t = _TARGET.search(ins.operands)
        if t:
            pending_targets.append((fname, ins, t.group(1)))
        cur.append(ins)
        last = ins
    for fname, ins, lab in pending_targets:
        ins.target = labels[fname].get(lab)
        ins.target_label = lab
    return funcs


def disassemble(cubin: bytes) -> dict[str, list[Instr]]:
    tool = tool_path("nvdisasm")
    if tool is None:
        raise RuntimeError("nvdisasm not found (CUDA toolkit bin/, PATH, or Triton's bundled copy)")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-c", "-gi", "-hex", f.name], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"nvdisasm failed: {out.stderr.strip()[-2000:]}")
    return parse_nvdisasm(out.stdout)


# ---------------------------------------------------------- classification
CLASSES = ("mma", "fp32", "fp16", "fp64", "imad", "alu", "sfu", "conv", "uniform", "move",
           "shared_ld", "shared_st", "shared_atom", "global_ld", "global_st", "local",
           "atomic", "async_copy", "const", "shuffle", "special", "barrier", "fence", "sleep",
           "control")
_OPS = {
    "mma": {"HMMA", "IMMA", "DMMA", "BMMA", "HGMMA", "IGMMA", "QGMMA", "BGMMA"},
    "fp32": {"FFMA", "FADD", "FMUL", "FMNMX", "FSEL", "FSET", "FSETP", "FSWZADD", "FCHK", "FFMA32I",
             "FADD32I", "FMUL32I"},
    "fp16": {"HFMA2", "HADD2", "HMUL2", "HSET2", "HSETP2", "HMNMX2", "HFMA2_32I", "HADD2_32I", "HMUL2_32I"},
    "fp64": {"DFMA", "DADD", "DMUL", "DSETP", "DMNMX"},
    "imad": {"IMAD", "IMUL", "IDP", "IMADSP", "IMAD32I"},
    "sfu": {"MUFU"},
    "conv": {"F2F", "F2I", "I2F", "I2I", "FRND", "I2FP", "F2IP"},
    "shared_ld": {"LDS", "LDSM"},
    "shared_st": {"STS", "STSM"},
    "shared_atom": {"ATOMS"},
    "global_ld": {"LDG", "LD"},
    "global_st": {"STG", "ST"},
    "local": {"LDL", "STL"},
    "atomic": {"ATOMG", "ATOM", "RED", "REDG", "REDUX.G"},
    "async_copy": {"LDGSTS", "LDGDEPBAR", "UBLKCP", "UTMALDG", "UTMASTG", "UTMAPF", "UBLKRED",
                   "UTMACCTL", "UTMACMDFLUSH", "UBLKPF"},
    "const": {"LDC", "ULDC"},
    "shuffle": {"SHFL", "VOTE", "VOTEU", "MATCH", "REDUX"},
    "special": {"S2R", "S2UR", "B2R", "R2B"},
    "barrier": {"BAR", "WARPSYNC", "SYNCS", "DEPBAR", "WARPGROUP", "BSSY", "BSYNC", "ARRIVES"},
    "fence": {"MEMBAR", "ERRBAR", "CGAERRBAR", "CCTL", "CCTLL", "FENCE"},
    "sleep": {"NANOSLEEP"},
    "control": {"BRA", "BRX", "JMP", "JMX", "CALL", "RET", "EXIT", "BREAK", "NOP", "BPT", "KILL",
                "YIELD", "ACQBULK", "ELECT", "ENDCOLLECTIVE"},
}
_OP_CLASS = {op: c for c, ops in _OPS.items() for op in ops}
_MOVES = {"MOV", "MOV32I", "UMOV", "SEL", "CS2R", "PRMT"}


def classify(opcode: str, operands: str = "") -> str:
    """Class of a SASS opcode (full mnemonic): one of CLASSES. "uniform" is the
    uniform datapath (U* ops), "alu" every other integer/logic/predicate op."""
    op = opcode.split(".")[0]
    if op == "CS2R":            # CS2R Rx, SRZ clears a register pair; other sources are clocks
        return "move" if "SRZ" in operands else "special"
    if op == "HFMA2" and ".MMA" in opcode and re.match(r"R\d+, -?RZ, RZ", operands):
        return "move"           # HFMA2.MMA Rx, -RZ, RZ, ... : a register clear on the FMA pipe
    if op in _OP_CLASS:
        return _OP_CLASS[op]
    if op in _MOVES:
        return "move"
    if op.startswith("U") and op not in ("UBLKCP",):
        return "uniform"
    return "alu"


def access_bytes(opcode: str) -> int:
    """Bytes per thread of a load/store/atomic (LDSM/STSM: per thread of the
    warp's 8x8 b16 matrices)."""
    parts = opcode.split(".")
    if parts[0] in ("LDSM", "STSM"):     # LDSM.16.M88.4: four 8x8 b16 matrices, 4 B each per thread
        n = next((int(p) for p in reversed(parts) if p in ("1", "2", "4")), 1)
        return 4 * n
    for p in parts[1:]:
        if p in ("U8", "S8"):
            return 1
        if p in ("U16", "S16"):
            return 2
        if p == "64":
            return 8
        if p == "128":
            return 16
    return 4


def mma_shape(opcode: str, operands: str = "") -> tuple[int, int, int]:
    """(M, N, K) of one HMMA/IMMA/HGMMA instruction (per warp for mma.sync,
    per warpgroup for wgmma)."""
    parts = opcode.split(".")
    if parts[0].endswith("GMMA"):
        m = re.match(r"(\d+)x(\d+)x(\d+)", parts[1]) if len(parts) > 1 else None
        return tuple(int(x) for x in m.groups()) if m else (64, 64, 16)
    digits = parts[1] if len(parts) > 1 else "1688"
    if digits == "16816":
        return 16, 8, 16
    if digits == "1688":
        return 16, 8, 8
    if digits == "884":
        return 8, 8, 4
    if digits == "16832":
        return 16, 8, 32
    return 16, 8, 8


# -------------------------------------------------------------------- loops
@dataclass
class Loop:
    header: int                   # address of the first instruction of the body
    end: int                      # address of the last backward branch to the header
    back: Instr                   # that branch: its source line names the loop
    children: list["Loop"] = field(default_factory=list)
    parent: Optional["Loop"] = None

    def contains(self, addr: int) -> bool:
        return self.header <= addr <= self.end

    @property
    def chain(self) -> tuple[SrcLine, ...]:
        return self.back.chain

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()

    def __repr__(self) -> str:
        src = f"{Path(self.chain[0][0]).name}:{self.chain[0][1]}" if self.chain else "?"
        return f"Loop({self.header:#x}-{self.end:#x} {src}, {len(self.children)} inner)"


_JUMPS = ("BRA", "BRX", "JMP", "JMX")


def _cold_returns(instrs: list[Instr]) -> set:
    """Addresses of backward branches that return from an out-of-line block,
    not close a loop: nvcc places slow paths (e.g. `BRA.DIV` to the divergent
    case of a __syncwarp) after the function's EXIT, and their last BRA jumps
    back to just after the branch that left. Such a branch's region -- the
    code from the last unconditional transfer before it up to it -- starts
    after its target and is entered only from before its target: nothing
    between target and region reaches it, so no loop closes there."""
    jumps = sorted((i.target, i.addr) for i in instrs if i.op in _JUMPS and i.target is not None)
    targets = [t for t, _ in jumps]
    out = set()
    for k, ins in enumerate(instrs):
        if ins.op not in ("BRA", "JMP") or ins.target is None or ins.target >= ins.addr:
            continue
        r = k
        while r > 0 and not (instrs[r - 1].op in _JUMPS + ("EXIT", "RET") and instrs[r - 1].pred in ("", "@PT")
                             and ".DIV" not in instrs[r - 1].opcode):
            r -= 1
        lo = instrs[r].addr
        if lo <= ins.target:
            continue
        inside = [a for _, a in jumps[bisect.bisect_left(targets, lo):bisect.bisect_right(targets, ins.addr)]
                  if not lo <= a <= ins.addr]
        if inside and all(a < ins.target for a in inside):
            out.add(ins.addr)
    return out


def loop_tree(instrs: list[Instr]) -> list[Loop]:
    """The function's loops as a forest (outermost first), nested by address
    range; backward branches that return from out-of-line code are no loops
    (_cold_returns)."""
    ends: dict[int, Instr] = {}
    cold = _cold_returns(instrs)
    for ins in instrs:
        if ins.op in ("BRA", "JMP") and ins.target is not None and ins.target < ins.addr and ins.addr not in cold:
            if ins.target not in ends or ins.addr > ends[ins.target].addr:
                ends[ins.target] = ins
    loops = sorted((Loop(h, b.addr, b) for h, b in ends.items()), key=lambda l: (l.header, -l.end))
    roots: list[Loop] = []
    stack: list[Loop] = []
    for lp in loops:
        while stack and not (stack[-1].header <= lp.header and lp.end <= stack[-1].end):
            stack.pop()
        if stack:
            lp.parent = stack[-1]
            stack[-1].children.append(lp)
        else:
            roots.append(lp)
        stack.append(lp)
    return roots


def all_loops(roots: list[Loop]) -> list[Loop]:
    return [l for r in roots for l in r.walk()]


def _span(instrs: list[Instr], lo: int, hi: int) -> list[Instr]:
    """instrs (in address order) with lo <= addr <= hi."""
    key = _addrs(instrs)
    return instrs[bisect.bisect_left(key, lo):bisect.bisect_right(key, hi)]


_ADDRS: dict = {}


def _addrs(instrs: list[Instr]) -> list[int]:
    k = id(instrs)
    got = _ADDRS.get(k)
    if got is None or got[0] is not instrs or len(got[1]) != len(instrs):
        got = _ADDRS[k] = (instrs, [i.addr for i in instrs])
    return got[1]


def body(instrs: list[Instr], loop: Loop, own: bool = True) -> list[Instr]:
    """Instructions of a loop; own=True leaves out those of its inner loops."""
    out = _span(instrs, loop.header, loop.end)
    if own and loop.children:
        kids = sorted((c.header, c.end) for c in loop.children)
        keep, k = [], 0
        for i in out:
            while k < len(kids) and kids[k][1] < i.addr:
                k += 1
            if k < len(kids) and kids[k][0] <= i.addr <= kids[k][1]:
                continue
            keep.append(i)
        out = keep
    return out


WORK_CLASSES = ("mma", "fp32", "fp16", "fp64", "sfu", "shared_ld", "shared_st", "global_ld",
                "global_st", "atomic", "local", "async_copy")


def unroll_factor(instrs: list[Instr], loop: Loop) -> int:
    """How many source iterations one pass of a loop body does: the most common
    number of work instructions (arithmetic, memory) of one class on one
    source line, in the loop's own body. A loop unrolled u times repeats each
    line's work u times; loads merged into wider ones count less, so the mode
    (ties: the smaller) is u in the code nvcc and Triton emit
    (tests/test_cost_model.py checks a synthetic case)."""
    per_line = Counter((i.chain, i.cls) for i in body(instrs, loop) if i.cls in WORK_CLASSES and i.chain)
    if not per_line:
        return 1
    counts = Counter(per_line.values())
    best = max(counts.items(), key=lambda kv: (kv[1], -kv[0]))
    return max(1, best[0])
