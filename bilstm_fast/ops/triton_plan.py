"""The Triton backend's dispatcher: which kernel path and tiles a call runs.

Legend: H hidden size, X the input dtype, BB = BLOCK_B batch rows per
program, BH = BLOCK_H hidden units per tile, HP = H rounded up to a power of
two (>= 16, the smallest tl.dot tile). docs/triton.md explains the two paths
(RESIDENT: W_hh on chip for all steps; STREAMED: W_hh tiles from L2 per step).

Pure Python (no Triton import): the compile report (tools/) uses the same rule
for ahead-of-time compiles. The rule sees H, dtype and the arch's shared
memory only -- never T or B, which are runtime values (no recompile). A
caller can force a config: ``KernelConfig`` as the launchers' ``config``
argument, or ``backend="triton:path=streamed,block_h=16"`` (``parse_plan``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

# Shared memory per block (opt-in) by compute capability, bytes; used when the
# device cannot be asked (the interpreter, ahead-of-time compilation).
SMEM_BYTES = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
_DEFAULT_SMEM = SMEM_BYTES[80]


@dataclass(frozen=True)
class KernelConfig:
    resident: bool   # True: W_hh on chip (smem) and the state in registers for all steps
    block_h: int     # hidden units per tile (HP when resident)
    block_b: int     # batch rows per program
    num_warps: int
    num_stages: int  # software pipelining depth of the STREAMED k-loop
    maxnreg: Optional[int] = None  # ptxas register cap (None: ptxas chooses)


_BLOCK_B = 16     # the smallest tl.dot M; B is masked up to a multiple of it
_RESIDENT_MAX_HP = 128


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def w_tiles_smem_bytes(bh: int, size: int) -> int:
    """Shared memory the RESIDENT kernels use: Triton stages the four W^T gate
    tiles (the dot's B operand, `size` bytes per element: 8 for fp32 split
    into hi/lo TF32 halves by tf32x3) in shared memory, plus a [BB, BH]
    layout-conversion buffer of size/2 per element (f32, doubled by the
    split). Exact on sm_80/sm_90: fp32 HP=64 with TF32 -> 69632, with tf32x3
    -> 139264, fp16 HP=128 -> 139264 bytes (compile report)."""
    return 4 * bh * bh * size + _BLOCK_B * bh * max(4, size)


def kernel_config(H: int, dtype: torch.dtype, smem_bytes: int = _DEFAULT_SMEM,
                  dot_prec: str = "tf32") -> KernelConfig:
    """The dispatch rule (docs/triton.md has the resulting H ranges):

    * HP = max(16, next_pow2(H)). RESIDENT when HP <= 128 and the resident
      W_hh fits the arch's shared memory (w_tiles_smem_bytes(HP) <= smem):
      BH = HP; num_warps 8 for HP = 128 and for fp32 HP = 64, else 4;
      num_stages 1 (no k-loop). sm_80 / sm_90: fp32 H <= 64 (TF32 on or
      off), fp16/bf16 H <= 128; sm_86/89 (99 KB): fp32 H <= 64 with TF32,
      H <= 32 without, fp16/bf16 H <= 64.
    * Otherwise STREAMED: BH = 32, 4 warps, num_stages 1, maxnreg 192.
    Why (compile report, sm_80 and sm_90, every flag variant): RESIDENT fp32
    HP=64 spills with 4 warps (344 B), fp16/bf16 HP=64 with 8 warps (16 B);
    STREAMED BH=64 spills in the forward (68-136 B with 8 warps; with
    num_stages=2 the prefetched W tiles sit in registers: 16-144 B), and
    without maxnreg ptxas caps the tf32x3 forward at 128 registers and
    spills 16-112 B (with maxnreg 192 it takes ~177 and none).
    T and B never enter the rule: they are runtime values (no recompile).
    """
    size = torch.finfo(dtype).bits // 8
    if dot_prec == "tf32x3":
        size *= 2
    hp = max(16, _next_pow2(H))
    if hp <= _RESIDENT_MAX_HP and w_tiles_smem_bytes(hp, size) <= smem_bytes:
        warps = 8 if hp == 128 or (hp == 64 and dtype == torch.float32) else 4
        return KernelConfig(True, hp, _BLOCK_B, warps, 1)
    return KernelConfig(False, 32, _BLOCK_B, 4, 1, maxnreg=192)


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


_PATHS = {"resident": True, "streamed": False}


def parse_plan(text: str) -> KernelConfig:
    """"path=streamed,block_h=16" (path required; block_b, num_warps,
    num_stages, maxnreg optional) -> KernelConfig."""
    values: dict = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"triton plan: expected key=value, got {item!r}")
        if key == "path":
            if value not in _PATHS:
                raise ValueError(f"triton plan: path must be one of {list(_PATHS)}, got {value!r}")
            values["resident"] = _PATHS[value]
            continue
        if key not in ("block_h", "block_b", "num_warps", "num_stages", "maxnreg"):
            raise ValueError(f"triton plan: unknown key {key!r}; expected path, block_h, block_b, "
                             "num_warps, num_stages or maxnreg")
        try:
            values[key] = int(value)
        except ValueError:
            raise ValueError(f"triton plan: {key} must be an integer, got {value!r}") from None
    if "resident" not in values or "block_h" not in values:
        raise ValueError(f"triton plan: path= and block_h= are required, got {text!r}")
    pow2 = values["block_h"] >= 16 and values["block_h"] & (values["block_h"] - 1) == 0
    if not pow2:
        raise ValueError(f"triton plan: block_h must be a power of two >= 16, got {values['block_h']}")
    values.setdefault("block_b", _BLOCK_B)
    values.setdefault("num_warps", 4)
    values.setdefault("num_stages", 1)
    return KernelConfig(**values)
