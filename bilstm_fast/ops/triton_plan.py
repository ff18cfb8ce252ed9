"""The Triton backend's dispatcher: which kernel path and tiles a call runs.

Legend: H hidden size, N directions, X the input dtype, BB = BLOCK_B batch
rows per tile, BH = BLOCK_H hidden units per tile (per program on SPLIT),
HP = H rounded up to a power of two (>= 16, the smallest tl.dot tile),
S = cdiv(H, BH) programs per direction on SPLIT. docs/triton.md explains the
three paths (RESIDENT: one program per direction and batch tile, W_hh on
chip; SPLIT: S programs per direction, each with its W_hh slice on chip, one
barrier per step; STREAMED: W_hh tiles from L2 every step, the fallback).

Pure Python (no Triton import): the compile report (tools/) uses the same rule
for ahead-of-time compiles. The rule sees H, dtype, the dot precision and the
arch's shared memory only -- never T or B, which are runtime values (no
recompile). The one run-time decision, whether a SPLIT launch may spin on a
grid barrier (``sync``), depends on the device and the compiled kernel's
resources (``co_resident_programs``), never on T or B either.

A caller can force a config: ``KernelConfig`` as the launchers' ``config``
argument, or ``backend="triton:path=split,block_h=16,sync=step"``
(``parse_plan``; ``plan_text`` is its inverse).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple, Optional

import torch

# Shared memory per block (opt-in) by compute capability, bytes; used when the
# device cannot be asked (the interpreter, ahead-of-time compilation).
SMEM_BYTES = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
_DEFAULT_SMEM = SMEM_BYTES[80]

PATHS = ("resident", "split", "streamed")
SYNCS = ("auto", "grid", "step")


@dataclass(frozen=True)
class KernelConfig:
    path: str        # "resident" | "split" | "streamed" (PATHS)
    block_h: int     # hidden units per tile: HP on RESIDENT, per program on SPLIT
    block_b: int = 16     # batch rows per tile
    num_warps: int = 4
    num_stages: int = 1   # software pipelining depth of the STREAMED k-loop
    maxnreg: Optional[int] = None  # ptxas register cap (None: ptxas chooses)
    # SPLIT only: "grid" = one cooperative launch for all steps with a spinning
    # barrier per step; "step" = one launch per step (the kernel boundary is
    # the barrier; what the interpreter runs); "auto" = grid when the device
    # passes the co-residency check (co_resident_programs), else step.
    sync: str = "auto"

    @property
    def resident(self) -> bool:
        return self.path == "resident"


_BLOCK_B = 16     # the smallest tl.dot M; B is masked up to a multiple of it
_RESIDENT_MAX_HP = 128
_SPLIT_BLOCK_H = 16   # the smallest tl.dot N: the most programs, the shortest per-step chain
_SPLIT_MAX_HP = 1024  # largest HP compiled and checked for SPLIT (compile report)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def padded_h(H: int) -> int:
    """HP: H rounded up to a power of two, at least 16."""
    return max(16, _next_pow2(H))


def split_block_k(H: int) -> int:
    """BLOCK_K of the SPLIT kernels: the inputs of every dot, HP, but at least
    64, so that each of the kernels' 4 K chunks is a legal tl.dot K (>= 16)."""
    return max(64, padded_h(H))


def w_tiles_smem_bytes(bh: int, size: int) -> int:
    """Shared memory the RESIDENT kernels use: Triton stages the four W^T gate
    tiles (the dot's B operand, `size` bytes per element: 8 for fp32 split
    into hi/lo TF32 halves by tf32x3) in shared memory, plus a [BB, BH]
    layout-conversion buffer of size/2 per element (f32, doubled by the
    split). Exact on sm_80/sm_90: fp32 HP=64 with TF32 -> 69632, with tf32x3
    -> 139264, fp16 HP=128 -> 139264 bytes (compile report)."""
    return 4 * bh * bh * size + _BLOCK_B * bh * max(4, size)


def split_smem_bytes(hp: int, bh: int, size: int) -> int:
    """Shared memory of the SPLIT kernels: the four [HP, BH] W slices (the
    forward's W^T, the backward's W; `size` as above), plus the layout
    conversion of the [BB, HP] dot operand (h in the forward, dG in the
    backward) in X (fp32 for tf32x3). Exact on sm_80/sm_90 (compile report):
    fp16 HP=256 -> 40960, HP=1024 -> 163840; fp32 HP=512 -> 163840; fp32
    tf32x3 HP=256 -> 147456 bytes."""
    return 4 * hp * bh * size + _BLOCK_B * hp * min(size, 4)


def _operand_size(dtype: torch.dtype, dot_prec: str) -> int:
    size = torch.finfo(dtype).bits // 8
    return 2 * size if dot_prec == "tf32x3" else size


def kernel_config(H: int, dtype: torch.dtype, smem_bytes: int = _DEFAULT_SMEM,
                  dot_prec: str = "tf32") -> KernelConfig:
    """The dispatch rule (docs/triton.md has the resulting H ranges):

    * RESIDENT when HP <= 128 and its W_hh fits the arch's shared memory
      (w_tiles_smem_bytes(HP) <= smem): BH = HP; num_warps 8 for HP = 128 and
      for fp32 HP = 64, else 4. sm_80 / sm_90: fp32 H <= 64, fp16/bf16
      H <= 128; sm_86/89 (99 KB): fp32 H <= 64 with TF32, <= 32 without,
      fp16/bf16 H <= 64.
    * SPLIT when HP <= 1024 and a 16-unit W slice fits
      (split_smem_bytes(HP, 16) <= smem): BH = 16, S = cdiv(H, 16) programs
      per direction, 4 warps (8 for tf32x3: with 4 its backward spills
      112 B at HP = 256), sync "auto" (grid barrier when co-resident,
      else one launch per step). sm_80 / sm_90: fp16/bf16 H <= 1024, fp32
      <= 512 (TF32) / <= 256 (tf32x3); sm_86/89: fp16/bf16 <= 512, fp32
      <= 256 / <= 128.
    * Otherwise STREAMED: BH = 32, 4 warps, num_stages 1, maxnreg 192.
    Why (compile report, sm_80 and sm_90, every flag variant): RESIDENT fp32
    HP=64 spills with 4 warps (344 B), fp16/bf16 HP=64 with 8 warps (16 B);
    STREAMED BH=64 spills in the forward (68-136 B with 8 warps; with
    num_stages=2 the prefetched W tiles sit in registers: 16-144 B), and
    without maxnreg ptxas caps the tf32x3 forward at 128 registers and
    spills 16-112 B (with maxnreg 192 it takes ~177 and none). SPLIT's BH=16
    is the smallest dot N: the per-step chain of a program is 4 gates x HP/16
    dependent MMA k-steps, shortest at the smallest BH, and the W_hh of both
    directions at H = 1024 (16 MB fp16) spreads over 128 programs, which an
    H100/H200 (132 SMs) holds at once.
    T and B never enter the rule: they are runtime values (no recompile).
    """
    size = _operand_size(dtype, dot_prec)
    hp = padded_h(H)
    if hp <= _RESIDENT_MAX_HP and w_tiles_smem_bytes(hp, size) <= smem_bytes:
        warps = 8 if hp == 128 or (hp == 64 and dtype == torch.float32) else 4
        return KernelConfig("resident", hp, _BLOCK_B, warps, 1)
    if hp <= _SPLIT_MAX_HP and split_smem_bytes(hp, _SPLIT_BLOCK_H, size) <= smem_bytes:
        return KernelConfig("split", _SPLIT_BLOCK_H, _BLOCK_B, 8 if size == 8 else 4, 1)
    return KernelConfig("streamed", 32, _BLOCK_B, 4, 1, maxnreg=192)


def smem_bytes_of(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    return _DEFAULT_SMEM


def maxnreg_kwargs(cfg: KernelConfig) -> dict:
    return {} if cfg.maxnreg is None else {"maxnreg": cfg.maxnreg}


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 with TF32 disallowed -> "tf32x3" (three TF32 tensor-core passes on a
    hi/lo split: ~fp32 accuracy). Not "ieee": that is Triton's FMA dot path,
    which in these kernels spills (80 registers, 8-68 B) and makes LLVM's SLP
    vectorizer abort on sm_90 (compile report)."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "tf32x3"
    return "tf32"  # ignored by tl.dot for fp16/bf16 operands


# ------------------------------------------------------------ co-residency
class DeviceFacts(NamedTuple):
    """What the co-residency check needs of a GPU (torch.cuda.get_device_properties)."""
    sms: int                 # multiprocessors
    smem_per_sm: int         # bytes of shared memory per multiprocessor
    regs_per_sm: int         # 32-bit registers per multiprocessor
    threads_per_sm: int      # resident threads per multiprocessor
    blocks_per_sm: int = 32  # resident blocks per multiprocessor (sm_80 / sm_90: 32)


# Per block, the CUDA runtime reserves 1 KB of shared memory on sm_80 and later
# (CUDA C++ Programming Guide, "Shared Memory" in the compute capability 8.x /
# 9.0 sections); registers are allocated per warp in units of 256.
_SMEM_RESERVED_PER_BLOCK = 1024
_REG_ALLOC_UNIT = 256


def device_facts(device: torch.device) -> DeviceFacts:
    p = torch.cuda.get_device_properties(device)
    return DeviceFacts(p.multi_processor_count,
                       getattr(p, "shared_memory_per_multiprocessor", 228 * 1024),
                       getattr(p, "regs_per_multiprocessor", 65536),
                       getattr(p, "max_threads_per_multi_processor", 2048))


def co_resident_programs(facts: DeviceFacts, regs_per_thread: int, smem_per_block: int,
                         num_warps: int) -> int:
    """How many programs of a compiled kernel the GPU holds at once: SMs x
    blocks per SM, the latter limited by shared memory, registers, threads
    and the block limit (the CUDA occupancy calculation)."""
    threads = 32 * num_warps
    by_smem = facts.smem_per_sm // (smem_per_block + _SMEM_RESERVED_PER_BLOCK)
    regs_per_warp = -(-max(1, regs_per_thread) * 32 // _REG_ALLOC_UNIT) * _REG_ALLOC_UNIT
    by_regs = facts.regs_per_sm // (regs_per_warp * num_warps)
    by_threads = facts.threads_per_sm // threads
    return facts.sms * max(0, min(by_smem, by_regs, by_threads, facts.blocks_per_sm))


def split_groups(N: int, S: int, batch_tiles: int, capacity: int) -> int:
    """Q, the barrier groups per direction of a SPLIT grid launch (N, Q, S)
    that the GPU holds at once (N * Q * S <= capacity), at most one per batch
    tile; 0 when even one group per direction does not fit (then the launch
    must not spin: one launch per step instead). Depends on B only through
    the number of batch tiles, and only as a launch size: never a new kernel."""
    return max(0, min(batch_tiles, capacity // (N * S)))


def split_launch_groups(sync: str, interpret: bool, N: int, S: int, batch_tiles: int,
                        capacity) -> int:
    """How a SPLIT launch runs: Q > 0 = one launch with Q spinning barrier
    groups per direction; 0 = one launch per step. `capacity()` gives the
    co-resident programs of the compiled kernel on this device (called only
    when it matters). A forced "grid" that cannot run raises: the
    interpreter runs programs one after another (a spin would never end),
    and a grid the GPU cannot hold at once could deadlock."""
    if sync not in SYNCS:
        raise ValueError(f"triton plan: sync must be one of {list(SYNCS)}, got {sync!r}")
    if interpret:
        if sync == "grid":
            raise ValueError("triton plan sync=grid spins on a grid barrier, which Triton's "
                             "interpreter (programs run one after another) cannot run: use "
                             "sync=step or sync=auto on CPU tensors")
        return 0
    if sync == "step":
        return 0
    cap = capacity()
    Q = split_groups(N, S, batch_tiles, cap)
    if Q == 0 and sync == "grid":
        raise RuntimeError(f"triton plan sync=grid: {N} x {S} programs of this kernel do not fit "
                           f"on the GPU at once (it holds {cap}); use sync=step or sync=auto")
    return Q


# ------------------------------------------------------------ plan texts
_INT_KEYS = ("block_h", "block_b", "num_warps", "num_stages", "maxnreg")


def parse_plan(text: str) -> KernelConfig:
    """"path=split,block_h=16,sync=step" (path and block_h required; block_b,
    num_warps, num_stages, maxnreg, sync optional) -> KernelConfig."""
    values: dict = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"triton plan: expected key=value, got {item!r}")
        if key == "path":
            if value not in PATHS:
                raise ValueError(f"triton plan: path must be one of {list(PATHS)}, got {value!r}")
            values["path"] = value
            continue
        if key == "sync":
            if value not in SYNCS:
                raise ValueError(f"triton plan: sync must be one of {list(SYNCS)}, got {value!r}")
            values["sync"] = value
            continue
        if key not in _INT_KEYS:
            raise ValueError(f"triton plan: unknown key {key!r}; expected path, block_h, block_b, "
                             "num_warps, num_stages, maxnreg or sync")
        try:
            values[key] = int(value)
        except ValueError:
            raise ValueError(f"triton plan: {key} must be an integer, got {value!r}") from None
    if "path" not in values or "block_h" not in values:
        raise ValueError(f"triton plan: path= and block_h= are required, got {text!r}")
    pow2 = values["block_h"] >= 16 and values["block_h"] & (values["block_h"] - 1) == 0
    if not pow2:
        raise ValueError(f"triton plan: block_h must be a power of two >= 16, got {values['block_h']}")
    if values.get("sync", "auto") != "auto" and values["path"] != "split":
        raise ValueError("triton plan: sync= applies to path=split only")
    return KernelConfig(**values)


def plan_text(cfg: KernelConfig) -> str:
    """The canonical plan text of a config: parse_plan(plan_text(c)) == c."""
    parts = [f"path={cfg.path}", f"block_h={cfg.block_h}"]
    if cfg.block_b != _BLOCK_B:
        parts.append(f"block_b={cfg.block_b}")
    parts.append(f"num_warps={cfg.num_warps}")
    if cfg.num_stages != 1:
        parts.append(f"num_stages={cfg.num_stages}")
    if cfg.maxnreg is not None:
        parts.append(f"maxnreg={cfg.maxnreg}")
    if cfg.path == "split" and cfg.sync != "auto":
        parts.append(f"sync={cfg.sync}")
    return ",".join(parts)


def resolved_configs(cfg: KernelConfig, on_gpu: bool) -> list[KernelConfig]:
    """The configs a launch of `cfg` can actually run: SPLIT with sync "auto"
    becomes "grid" or "step" at run time ("step" only in the interpreter)."""
    if cfg.path != "split" or cfg.sync != "auto":
        return [cfg]
    return [replace(cfg, sync="grid"), replace(cfg, sync="step")] if on_gpu else [replace(cfg, sync="step")]
