"""Triton backend of the recurrence op: both directions of one LSTM layer in
one persistent launch (forward) and one (backward).

Legend: T time steps, B batch, N directions (1 or 2), H hidden size,
X input dtype (fp32 / fp16 / bf16), f32 the accumulation and cell-state dtype.
BB = BLOCK_B (batch rows per program), BH = BLOCK_H (hidden units per tile),
HP = H rounded up to a power of two (>= 16, the smallest tl.dot tile).

Contract: backends.py (forward/backward/unsupported_reason/unavailable_reason).
Reading order: contract functions -> launchers -> dispatcher -> kernels -> helpers.

Grid and time
-------------
grid = (N, cdiv(B, BB)): program (n, p) owns direction n for batch rows
p*BB .. p*BB+BB-1, runs all T steps inside the kernel and owns all four gates
(i, f, g, o) of every hidden unit of those rows, so the cell update happens in
registers right after the gate GEMM. No program ever waits for another
program, which is why the interpreter (programs run one after another) can run
it and why it cannot deadlock on a GPU. Both directions (and all batch tiles)
run concurrently because they are different programs of the same launch.

Time is per row: at step s the row b of direction 0 is at t = s and of
direction 1 at t = L_b-1-s; the row is *valid* while s < L_b. An invalid step
writes the zeros of y (or dgx) at t = s, which are exactly the positions
t >= L_b, so every element of y / dgx is written once and nothing is memset.
Packed (variable-length) input therefore costs the same as padded input, and
lengths need not be sorted. h_n / c_n are stored at the row's last valid step
(s == L_b-1); the backward takes dh_n / dc_n in at that same step. After that
(or, in the backward, before it) a row's state is garbage that is never read.

The two paths (one kernel source each for forward and backward, switched by
the constexpr RESIDENT; the dispatcher `kernel_config` picks path and tiles
from H, dtype and the arch's shared memory per block)
-------------------------------------------------------------------------
                       sm_80 (163 KB), sm_90 (227 KB)    sm_86 / sm_89 (99 KB)
    RESIDENT  fp32     H <= 64                           H <= 64 (TF32), 32 (tf32x3)
              fp16/bf16 H <= 128                         H <= 64
    STREAMED  larger H: BH = 32, 4 warps, maxnreg 192    same
RESIDENT:
    the program loads W_hh of its direction once, as four [HP, HP] gate
    tiles (W^T for the forward, W for the backward), before the time loop;
    Triton stages these loop-invariant dot operands in shared memory
    (4*HP^2*sizeof(X) + BB*HP*4 bytes, exactly what the compile report
    shows), so W_hh stays on chip for all T steps; h and c (dh, dc) stay in
    registers. One step = 4 tl.dot [BB, HP] x [HP, HP] + the cell. No
    barrier, no scratch.
STREAMED (larger H; tests force it at tiny H with BH = 16):
    per step the program loops over tiles of BH hidden units; for each it
    streams the four [BH, BH] W_hh tiles of every k-tile from L2 and reads
    the previous h (k-tile) from global memory: y[t_prev] holds it already
    in X (the dot operand dtype), h0 at s = 0. c lives in an fp32 scratch,
    double-buffered by step parity. tl.debug_barrier() (= __syncthreads)
    ends each step so that every warp of the program sees h_t before step
    t+1 reads it. Backward: phase 1 writes dG (the gate gradients, into dgx,
    which is the all-gather buffer) per j-tile, barrier, phase 2 computes
    dh = dG W_hh per k-tile into an fp32 scratch, barrier.

Predicted per-step cost of one program (NOT measured: there is no GPU here)
---------------------------------------------------------------------------
FLOPs per step per program, both paths and both passes: 2*BB*4H*H = 128*H^2
(the gate GEMM, or dG W_hh; BB = 16 rows even when B < 16) + ~30*BB*H for
the cell. s = sizeof(X):
    RESIDENT  on-chip: W from shared memory 4*HP^2*s per step (ldmatrix,
              ~128 B/clk/SM: HP=64 fp32 64 KB -> ~0.4 us, HP=128 fp16
              128 KB -> ~0.7 us at 1.4 GHz); global: gx 4H*BB*s in, y H*BB*s
              out (+ workspace 5H*BB*4 when need_ws); backward: gates, cs,
              cs[t_prev] 6H*BB*4 + dy H*BB*s in, dgx 4H*BB*s out.
    STREAMED  the same global traffic, plus W_hh 4*H^2*s from L2 every step
              (both directions' W stay L2-resident up to H=1024 fp16: 16 MB),
              h_{t-1} (H/BH)*BB*H*s re-read per j-tile (L1/L2 hits), the c
              scratch 2*H*BB*4 (backward dh/dc 3*H*BB*4 + dG re-read 4H*BB*s).
A STREAMED step is bound by the L2->SM bandwidth of ONE SM (order 64 B/clk,
~90 GB/s on A100): H=256 fp16 streams 512 KB of W -> ~6 us/step, H=1024 fp16
8 MB -> ~90 us/step (its 134 MFLOP/step would take ~45 us at one SM's peak).
A RESIDENT step is bound by the dependent chain smem W -> dot -> cell -> next
dot: ~1 us/step or less. These are predictions from the counts above.
A multi-program-per-direction variant (hidden units split over SMs with a
grid barrier per step) would divide the STREAMED W traffic by the number of
SMs used, but needs a co-residency guarantee (cooperative launch) that the
interpreter cannot exercise (it runs programs one after another, so a grid
barrier deadlocks there): not built, see docs/triton.md.

dtypes: gates are accumulated in fp32 (tl.dot with an fp32 accumulator),
the cell state and all workspace are fp32; the dot operands are X (fp32 uses
TF32 only when torch.backends.cuda.matmul.allow_tf32 is on). T and B are
runtime arguments with do_not_specialize, so a new sequence length or batch
size never recompiles; H, the tile sizes, N and the flags are constexpr.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from .backends import CallSpec

NAME = "triton"

# Read once, when this module (and so every @triton.jit below) is imported:
# triton.jit builds an interpreted function only if the variable is set then.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Shared memory per block (opt-in) by compute capability, bytes; used when the
# device cannot be asked (the interpreter, ahead-of-time compilation).
SMEM_BYTES = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
_DEFAULT_SMEM = SMEM_BYTES[80]


# ------------------------------------------------------------------ contract
_unavailable: Optional[str] = None
_unavailable_known = False


def unavailable_reason() -> Optional[str]:
    """None when this machine can run Triton kernels (a CUDA GPU, or the
    interpreter enabled before this module was imported). Cached: cheap."""
    global _unavailable, _unavailable_known
    if not _unavailable_known:
        if INTERPRET or torch.cuda.is_available():
            _unavailable = None
        else:
            _unavailable = ("the Triton backend needs a CUDA GPU, or TRITON_INTERPRET=1 set "
                            "before bilstm_fast.ops.triton_lstm is imported (CPU interpreter)")
        _unavailable_known = True
    return _unavailable


def unsupported_reason(spec) -> Optional[str]:
    """``spec`` is a backends.CallSpec (device, dtype, N, H, P, proj, lengths):
    static facts only, never T or B. Tensor-level checks are in `_check_inputs`."""
    device, dtype, N, H, P, proj = spec.device, spec.dtype, spec.N, spec.H, spec.P, spec.proj
    if proj or P != H:
        return ("proj_size (w_hr) is not supported by the Triton backend; "
                "the reference backend serves it")
    if dtype not in _DTYPES:
        return (f"dtype {dtype} is not supported by the Triton backend (float32, float16, "
                "bfloat16 only; float64 is served by the reference and cpu backends)")
    if N not in (1, 2) or H < 1:
        return f"expected N in (1, 2) directions and H >= 1, got N={N}, H={H}"
    if device == "cuda":
        return None
    if device == "cpu" and INTERPRET:
        return None
    return (f"the Triton backend runs on CUDA tensors (it needs a CUDA GPU), or on CPU "
            f"tensors under TRITON_INTERPRET=1 set before bilstm_fast.ops.triton_lstm is "
            f"imported (got {device} tensors, interpreter {'on' if INTERPRET else 'off'})")


def _check_inputs(gx, w_hh, w_hr, h0, c0, lengths) -> None:
    """Raise ValueError naming the tensor when a call breaks the contract."""
    T, B, N, G = gx.shape
    H = G // 4
    why = unsupported_reason(CallSpec(gx.device.type, gx.dtype, N, H, w_hh.shape[-1],
                                      w_hr is not None, lengths is not None))
    if why is not None:
        raise ValueError(why)
    for name, t, shape in (("gx", gx, (T, B, N, G)), ("w_hh", w_hh, (N, G, H)),
                           ("h0", h0, (N, B, H)), ("c0", c0, (N, B, H))):
        if tuple(t.shape) != shape or t.dtype != gx.dtype or t.device != gx.device:
            raise ValueError(f"{name}: expected {gx.dtype} {list(shape)} on {gx.device}, "
                             f"got {t.dtype} {list(t.shape)} on {t.device}")
        if not t.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous tensor")
    if lengths is not None and (lengths.dtype != torch.int64 or tuple(lengths.shape) != (B,)
                                or lengths.device != gx.device or not lengths.is_contiguous()):
        raise ValueError(f"lengths: expected contiguous int64 [{B}] on {gx.device}, got "
                         f"{lengths.dtype} {list(lengths.shape)} on {lengths.device}")


def forward(gx, w_hh, w_hr, h0, c0, lengths, need_ws):
    _check_inputs(gx, w_hh, w_hr, h0, c0, lengths)
    return lstm_fwd_triton(gx, w_hh, h0, c0, lengths, need_ws)


def backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, gates, cs):
    if w_hr is not None:
        raise ValueError("proj_size (w_hr) is not supported by the Triton backend")
    if gates.dim() != 4 or gates.dtype != torch.float32 or cs.dtype != torch.float32:
        raise ValueError("backward needs the fp32 workspace (gates, cs) of a forward run "
                         "with need_ws=True")
    dgx, dh0, dc0 = lstm_bwd_triton(dy, dh_n, dc_n, w_hh, c0, lengths, gates, cs)
    return dgx, dh0, dc0, None


# ----------------------------------------------------------------- launchers
def lstm_fwd_triton(
    gx: torch.Tensor,                 # [T, B, N, 4H] X
    w_hh: torch.Tensor,               # [N, 4H, H]    X
    h0: torch.Tensor,                 # [N, B, H]     X
    c0: torch.Tensor,                 # [N, B, H]     X
    lengths: Optional[torch.Tensor],  # [B] int64, values in 1..T, or None
    need_ws: bool,
    config: Optional["KernelConfig"] = None,
):
    """-> y [T, B, N, H] X, h_n, c_n [N, B, H] X, gates [T, B, N, 4H] f32,
    cs [T, B, N, H] f32 (both shape (0,) when not need_ws). One launch."""
    T, B, N, G = gx.shape
    H = G // 4
    prec = _dot_precision(gx.dtype)
    cfg = config or kernel_config(H, gx.dtype, _smem_bytes(gx.device), prec)
    f32 = torch.float32
    y = gx.new_empty(T, B, N, H)          # every element written by the kernel
    h_n, c_n = h0.new_empty(N, B, H), c0.new_empty(N, B, H)
    gates = gx.new_empty((T, B, N, G) if need_ws else (0,), dtype=f32)
    cs = gx.new_empty((T, B, N, H) if need_ws else (0,), dtype=f32)
    # STREAMED keeps c in global memory, double-buffered by step parity.
    c_scr = gx.new_empty((2, N, B, H) if not cfg.resident else (0,), dtype=f32)
    grid = (N, triton.cdiv(B, cfg.block_b))
    with _device_of(gx):
        _lstm_fwd_kernel[grid](
            gx, w_hh, h0, c0, gx if lengths is None else lengths,
            y, h_n, c_n, gates, cs, c_scr,
            T, B, H,
            H=H, N=N, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, RESIDENT=cfg.resident,
            HAS_LENGTHS=lengths is not None, NEED_WS=bool(need_ws), DOT_PREC=prec,
            F32_DOT=INTERPRET and gx.dtype == torch.bfloat16,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **_maxnreg(cfg))
    return y, h_n, c_n, gates, cs


def lstm_bwd_triton(
    dy: torch.Tensor,                 # [T, B, N, H]  X
    dh_n: torch.Tensor,               # [N, B, H]     X
    dc_n: torch.Tensor,               # [N, B, H]     X
    w_hh: torch.Tensor,               # [N, 4H, H]    X
    c0: torch.Tensor,                 # [N, B, H]     X
    lengths: Optional[torch.Tensor],  # [B] int64 or None
    gates: torch.Tensor,              # [T, B, N, 4H] f32, from the forward
    cs: torch.Tensor,                 # [T, B, N, H]  f32, from the forward
    config: Optional["KernelConfig"] = None,
):
    """-> dgx [T, B, N, 4H] X (zero where t >= L_b), dh0, dc0 [N, B, H] X.
    One launch, no atomics: every output element has exactly one writer."""
    T, B, N, G = gates.shape
    H = G // 4
    prec = _dot_precision(dy.dtype)
    cfg = config or kernel_config(H, dy.dtype, _smem_bytes(dy.device), prec)
    f32 = torch.float32
    dgx = dy.new_empty(T, B, N, G)        # every element written by the kernel
    dh0, dc0 = dy.new_empty(N, B, H), dy.new_empty(N, B, H)
    # STREAMED: dh exchanged through global memory; dc double-buffered by parity.
    dh_scr = dy.new_empty((N, B, H) if not cfg.resident else (0,), dtype=f32)
    dc_scr = dy.new_empty((2, N, B, H) if not cfg.resident else (0,), dtype=f32)
    grid = (N, triton.cdiv(B, cfg.block_b))
    with _device_of(dy):
        _lstm_bwd_kernel[grid](
            dy, dh_n, dc_n, w_hh, c0, dy if lengths is None else lengths,
            gates, cs, dgx, dh0, dc0, dh_scr, dc_scr,
            T, B,
            H=H, N=N, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, RESIDENT=cfg.resident,
            HAS_LENGTHS=lengths is not None, DOT_PREC=prec,
            F32_DOT=INTERPRET and dy.dtype == torch.bfloat16,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **_maxnreg(cfg))
    return dgx, dh0, dc0


# ---------------------------------------------------------------- dispatcher
@dataclass(frozen=True)
class KernelConfig:
    resident: bool   # True: W_hh on chip (smem) and the state in registers for all steps
    block_h: int     # hidden units per tile (HP when resident)
    block_b: int     # batch rows per program
    num_warps: int
    num_stages: int  # software pipelining depth of the STREAMED k-loop
    maxnreg: Optional[int] = None  # ptxas register cap (None: ptxas chooses)


# Tests set this to force a path / tile size at tiny H (None: the rule below).
FORCE_CONFIG: Optional[KernelConfig] = None

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
    if FORCE_CONFIG is not None:
        return FORCE_CONFIG
    size = torch.finfo(dtype).bits // 8
    if dot_prec == "tf32x3":
        size *= 2
    hp = max(16, _next_pow2(H))
    if hp <= _RESIDENT_MAX_HP and w_tiles_smem_bytes(hp, size) <= smem_bytes:
        warps = 8 if hp == 128 or (hp == 64 and dtype == torch.float32) else 4
        return KernelConfig(True, hp, _BLOCK_B, warps, 1)
    return KernelConfig(False, 32, _BLOCK_B, 4, 1, maxnreg=192)


def _smem_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).shared_memory_per_block_optin
    return _DEFAULT_SMEM


def _maxnreg(cfg: KernelConfig) -> dict:
    return {} if cfg.maxnreg is None else {"maxnreg": cfg.maxnreg}


def _device_of(t: torch.Tensor):
    """Launch on the tensors' GPU (Triton launches on the current device),
    on the current stream of that device."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 with TF32 disallowed -> "tf32x3" (three TF32 tensor-core passes on a
    hi/lo split: ~fp32 accuracy). Not "ieee": that is Triton's FMA dot path,
    which in these kernels spills (80 registers, 8-68 B) and makes LLVM's SLP
    vectorizer abort on sm_90 (compile report)."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "tf32x3"
    return "tf32"  # ignored by tl.dot for fp16/bf16 operands


# -------------------------------------------------------------------- kernels
@triton.jit(do_not_specialize=["T", "B", "H_LOOP"])
def _lstm_fwd_kernel(
    gx,        # [T, B, N, 4H] X
    w_hh,      # [N, 4H, H]    X
    h0,        # [N, B, H]     X
    c0,        # [N, B, H]     X
    lengths,   # [B] int64 (read only if HAS_LENGTHS)
    y,         # [T, B, N, H]  X   out
    h_n,       # [N, B, H]     X   out
    c_n,       # [N, B, H]     X   out
    gates,     # [T, B, N, 4H] f32 out (if NEED_WS)
    cs,        # [T, B, N, H]  f32 out (if NEED_WS)
    c_scr,     # [2, N, B, H]  f32 scratch (STREAMED only)
    T, B,      # runtime: never specialized
    H_LOOP,    # = H, as a runtime value: bound of the STREAMED tile loops
    H: tl.constexpr, N: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    RESIDENT: tl.constexpr, HAS_LENGTHS: tl.constexpr, NEED_WS: tl.constexpr,
    DOT_PREC: tl.constexpr, F32_DOT: tl.constexpr,
):
    n = tl.program_id(0)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)     # [BB] batch rows
    b_ok = rb < B
    L = _row_lengths(lengths, rb, b_ok, T, HAS_LENGTHS)         # [BB], 0 for padding rows
    w_n = w_hh + n * (4 * H * H)

    if RESIDENT:
        rh = tl.arange(0, BLOCK_H)                              # all hidden units (HP)
        h_ok = rh < H
        # W^T tiles [k, j] = w_hh[n, g*H + j, k]; padding (j or k >= H) is 0.
        wt_i = _w_tile(w_n, 0, rh[None, :], rh[:, None], H)
        wt_f = _w_tile(w_n, 1, rh[None, :], rh[:, None], H)
        wt_g = _w_tile(w_n, 2, rh[None, :], rh[:, None], H)
        wt_o = _w_tile(w_n, 3, rh[None, :], rh[:, None], H)
        st_off = (n * B + rb)[:, None] * H + rh[None, :]        # [BB, HP] into [N, B, H]
        st_ok = b_ok[:, None] & h_ok[None, :]
        h = tl.load(h0 + st_off, mask=st_ok, other=0.0).to(tl.float32)
        c = tl.load(c0 + st_off, mask=st_ok, other=0.0).to(tl.float32)
        for s in range(T):
            t, valid, t_prev, first, last = _step_time(s, L, n)
            row = (t * B + rb) * N + n                          # [BB] int64 (t, b, n) row
            hx = h.to(wt_i.dtype)
            a_i = _load_gx(gx, row, 0, rh, st_ok, H) + _dot(hx, wt_i, DOT_PREC, F32_DOT)
            a_f = _load_gx(gx, row, 1, rh, st_ok, H) + _dot(hx, wt_f, DOT_PREC, F32_DOT)
            a_g = _load_gx(gx, row, 2, rh, st_ok, H) + _dot(hx, wt_g, DOT_PREC, F32_DOT)
            a_o = _load_gx(gx, row, 3, rh, st_ok, H) + _dot(hx, wt_o, DOT_PREC, F32_DOT)
            h, c = _cell_and_store(a_i, a_f, a_g, a_o, c, row, rb, rh, st_ok, valid, last, n,
                                   y, h_n, c_n, gates, cs, B, H, NEED_WS)
    else:
        for s in range(T):
            t, valid, t_prev, first, last = _step_time(s, L, n)
            row = (t * B + rb) * N + n
            # the row that holds h_{t-1}: y at the previous step's time, or h0 at s = 0
            prev_row = (t_prev * B + rb) * N + n
            first = first[:, None]
            # The tile loops run to the runtime H_LOOP (= H): with the constant
            # H, LLVM unrolls them fully and the live W tiles spill.
            for j0 in range(0, H_LOOP, BLOCK_H):
                rj = j0 + tl.arange(0, BLOCK_H)
                j_ok = b_ok[:, None] & (rj < H)[None, :]
                a_i = _load_gx(gx, row, 0, rj, j_ok, H)
                a_f = _load_gx(gx, row, 1, rj, j_ok, H)
                a_g = _load_gx(gx, row, 2, rj, j_ok, H)
                a_o = _load_gx(gx, row, 3, rj, j_ok, H)
                for k0 in range(0, H_LOOP, BLOCK_H):
                    rk = k0 + tl.arange(0, BLOCK_H)
                    k_ok = b_ok[:, None] & (rk < H)[None, :]
                    # only valid rows need h_{t-1}; the rest are discarded
                    hx = tl.load(y + prev_row[:, None] * H + rk[None, :],
                                 mask=k_ok & valid[:, None] & ~first, other=0.0)
                    hx += tl.load(h0 + (n * B + rb)[:, None] * H + rk[None, :],
                                  mask=k_ok & first, other=0.0)
                    wt_i = _w_tile(w_n, 0, rj[None, :], rk[:, None], H)
                    wt_f = _w_tile(w_n, 1, rj[None, :], rk[:, None], H)
                    wt_g = _w_tile(w_n, 2, rj[None, :], rk[:, None], H)
                    wt_o = _w_tile(w_n, 3, rj[None, :], rk[:, None], H)
                    a_i += _dot(hx, wt_i, DOT_PREC, F32_DOT)
                    a_f += _dot(hx, wt_f, DOT_PREC, F32_DOT)
                    a_g += _dot(hx, wt_g, DOT_PREC, F32_DOT)
                    a_o += _dot(hx, wt_o, DOT_PREC, F32_DOT)
                st_off = (n * B + rb)[:, None] * H + rj[None, :]
                par = (s % 2) * (N * B * H)                     # c double buffer by parity
                c = tl.load(c_scr + par + st_off, mask=j_ok & ~first, other=0.0)
                c += tl.load(c0 + st_off, mask=j_ok & first, other=0.0).to(tl.float32)
                h_new, c_new = _cell_and_store(a_i, a_f, a_g, a_o, c, row, rb, rj, j_ok, valid,
                                               last, n, y, h_n, c_n, gates, cs, B, H, NEED_WS)
                tl.store(c_scr + (N * B * H - par) + st_off, c_new, mask=j_ok)
            # y[t] (= h_t) and c_scr of every tile are read by all warps next step
            tl.debug_barrier()


@triton.jit(do_not_specialize=["T", "B"])
def _lstm_bwd_kernel(
    dy,        # [T, B, N, H]  X
    dh_n,      # [N, B, H]     X
    dc_n,      # [N, B, H]     X
    w_hh,      # [N, 4H, H]    X
    c0,        # [N, B, H]     X
    lengths,   # [B] int64 (read only if HAS_LENGTHS)
    gates,     # [T, B, N, 4H] f32 activated gates from the forward
    cs,        # [T, B, N, H]  f32 cell states from the forward
    dgx,       # [T, B, N, 4H] X   out (also the dG all-gather buffer when STREAMED)
    dh0,       # [N, B, H]     X   out
    dc0,       # [N, B, H]     X   out
    dh_scr,    # [N, B, H]     f32 scratch (STREAMED only)
    dc_scr,    # [2, N, B, H]  f32 scratch (STREAMED only)
    T, B,      # runtime: never specialized
    H: tl.constexpr, N: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    RESIDENT: tl.constexpr, HAS_LENGTHS: tl.constexpr, DOT_PREC: tl.constexpr,
    F32_DOT: tl.constexpr,
):
    n = tl.program_id(0)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
    b_ok = rb < B
    L = _row_lengths(lengths, rb, b_ok, T, HAS_LENGTHS)
    w_n = w_hh + n * (4 * H * H)

    if RESIDENT:
        rh = tl.arange(0, BLOCK_H)
        h_ok = rh < H
        # W tiles [j, k] = w_hh[n, g*H + j, k]: dh_{t-1} = sum_g dG_g W_g
        w_i = _w_tile(w_n, 0, rh[:, None], rh[None, :], H)
        w_f = _w_tile(w_n, 1, rh[:, None], rh[None, :], H)
        w_g = _w_tile(w_n, 2, rh[:, None], rh[None, :], H)
        w_o = _w_tile(w_n, 3, rh[:, None], rh[None, :], H)
        st_off = (n * B + rb)[:, None] * H + rh[None, :]
        st_ok = b_ok[:, None] & h_ok[None, :]
        dh_in = tl.load(dh_n + st_off, mask=st_ok, other=0.0).to(tl.float32)
        dc_in = tl.load(dc_n + st_off, mask=st_ok, other=0.0).to(tl.float32)
        c_first = tl.load(c0 + st_off, mask=st_ok, other=0.0).to(tl.float32)
        dh = dh_in
        dc = dc_in
        for r in range(T):
            s = T - 1 - r
            t, valid, t_prev, first, last = _step_time(s, L, n)
            enter = last[:, None]                               # the row's last forward step
            dh = tl.where(enter, dh_in, dh)
            dc = tl.where(enter, dc_in, dc)
            row = (t * B + rb) * N + n
            dp_i, dp_f, dp_g, dp_o, dc = _cell_bwd_and_store(
                dh, dc, c_first, row, (t_prev * B + rb) * N + n, rb, rh, st_ok, valid, first, n,
                dy, gates, cs, dgx, dc0, B, H)
            dpx = dp_i.to(w_i.dtype)
            dh = _dot(dpx, w_i, DOT_PREC, F32_DOT)
            dh += _dot(dp_f.to(w_i.dtype), w_f, DOT_PREC, F32_DOT)
            dh += _dot(dp_g.to(w_i.dtype), w_g, DOT_PREC, F32_DOT)
            dh += _dot(dp_o.to(w_i.dtype), w_o, DOT_PREC, F32_DOT)
            tl.store(dh0 + st_off, dh.to(dh0.dtype.element_ty), mask=st_ok & first[:, None])
    else:
        for r in range(T):
            s = T - 1 - r
            t, valid, t_prev, first, last = _step_time(s, L, n)
            enter = last[:, None]
            row = (t * B + rb) * N + n
            par = (s % 2) * (N * B * H)
            # phase 1, per j-tile: dG_t (into dgx) and dc_{t-1}
            for j0 in range(0, H, BLOCK_H):
                rj = j0 + tl.arange(0, BLOCK_H)
                j_ok = b_ok[:, None] & (rj < H)[None, :]
                st_off = (n * B + rb)[:, None] * H + rj[None, :]
                dh = tl.load(dh_n + st_off, mask=j_ok & enter, other=0.0).to(tl.float32)
                dh += tl.load(dh_scr + st_off, mask=j_ok & ~enter, other=0.0)
                dc = tl.load(dc_n + st_off, mask=j_ok & enter, other=0.0).to(tl.float32)
                dc += tl.load(dc_scr + par + st_off, mask=j_ok & ~enter, other=0.0)
                c_first = tl.load(c0 + st_off, mask=j_ok & first[:, None], other=0.0).to(tl.float32)
                dp_i, dp_f, dp_g, dp_o, dc = _cell_bwd_and_store(
                    dh, dc, c_first, row, (t_prev * B + rb) * N + n, rb, rj, j_ok, valid, first, n,
                    dy, gates, cs, dgx, dc0, B, H)
                tl.store(dc_scr + (N * B * H - par) + st_off, dc, mask=j_ok)
            tl.debug_barrier()       # dG_t of every j-tile is in dgx
            # phase 2, per k-tile: dh_{t-1}[k] = sum_j sum_g dG_g[:, j] W_g[j, k]
            for k0 in range(0, H, BLOCK_H):
                rk = k0 + tl.arange(0, BLOCK_H)
                k_ok = b_ok[:, None] & (rk < H)[None, :]
                acc = tl.full([BLOCK_B, BLOCK_H], 0.0, tl.float32)  # (not tl.zeros: see _sigmoid)
                for j0 in range(0, H, BLOCK_H):
                    rj = j0 + tl.arange(0, BLOCK_H)
                    j_ok = b_ok[:, None] & (rj < H)[None, :]
                    g_off = row[:, None] * (4 * H) + rj[None, :]
                    acc += _dot(tl.load(dgx + g_off, mask=j_ok, other=0.0),
                                  _w_tile(w_n, 0, rj[:, None], rk[None, :], H), DOT_PREC, F32_DOT)
                    acc += _dot(tl.load(dgx + g_off + H, mask=j_ok, other=0.0),
                                  _w_tile(w_n, 1, rj[:, None], rk[None, :], H), DOT_PREC, F32_DOT)
                    acc += _dot(tl.load(dgx + g_off + 2 * H, mask=j_ok, other=0.0),
                                  _w_tile(w_n, 2, rj[:, None], rk[None, :], H), DOT_PREC, F32_DOT)
                    acc += _dot(tl.load(dgx + g_off + 3 * H, mask=j_ok, other=0.0),
                                  _w_tile(w_n, 3, rj[:, None], rk[None, :], H), DOT_PREC, F32_DOT)
                st_off = (n * B + rb)[:, None] * H + rk[None, :]
                tl.store(dh_scr + st_off, acc, mask=k_ok)
                tl.store(dh0 + st_off, acc.to(dh0.dtype.element_ty), mask=k_ok & first[:, None])
            tl.debug_barrier()       # dh_{t-1} of every k-tile is in dh_scr


# -------------------------------------------------------------------- helpers
@triton.jit
def _row_lengths(lengths, rb, b_ok, T, HAS_LENGTHS: tl.constexpr):
    """[BB] int32 valid length of each row; 0 for padding rows (never valid)."""
    if HAS_LENGTHS:
        L = tl.load(lengths + rb, mask=b_ok, other=0).to(tl.int32)
    else:
        L = tl.where(b_ok, T, 0)
    return L


@triton.jit
def _step_time(s, L, n):
    """Step s -> per-row [BB] time t (int64), valid (s < L_b), the previous
    step's time, first (s == 0) and last (s == L_b-1, the row's last valid step).

    Direction 0: t = s. Direction 1: t = L_b-1-s (starts at its own end).
    Invalid rows (s >= L_b) get t = s, the position whose zero they write.
    All are [BB] vectors (masks built from a scalar s would be scalars)."""
    s_b = L * 0 + s                                         # [BB] int32, all s
    valid = s_b < L
    rev = valid & (n == 1)
    t = tl.where(rev, L - 1 - s_b, s_b).to(tl.int64)
    t_prev = tl.where(rev, t + 1, t - 1)                    # only used where valid & s > 0
    return t, valid, t_prev, s_b == 0, s_b == L - 1


@triton.jit
def _w_tile(w_n, gate, rj, rk, H):
    """W_hh[n, gate*H + j, k] at broadcastable index tensors rj, rk; 0 outside H."""
    return tl.load(w_n + (gate * H + rj) * H + rk, mask=(rj < H) & (rk < H), other=0.0)


@triton.jit
def _load_gx(gx, row, gate, rj, ok, H):
    """[BB, BH] f32 pre-activation of one gate at rows `row` of [T*B*N, 4H]."""
    return tl.load(gx + row[:, None] * (4 * H) + gate * H + rj[None, :], mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _dot(a, b, DOT_PREC: tl.constexpr, F32_DOT: tl.constexpr):
    """[M, K] x [K, N] -> f32 [M, N]; operands in X. F32_DOT (interpreter and
    bf16 only): Triton 3.9's interpreter multiplies the raw bits of bf16
    operands, so there the same bf16 values are multiplied in fp32 (exact
    products, fp32 sums: what the bf16 tensor-core dot computes)."""
    if F32_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PREC)


@triton.jit
def _sigmoid(x):
    # not tl.sigmoid: triton.language's own @jit helpers are JIT functions
    # whenever triton was imported before TRITON_INTERPRET was set (importing
    # torch imports triton), and an interpreted kernel cannot call them.
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # exp of a non-positive argument: no overflow; libdevice tanh is not
    # available in the interpreter.
    e = tl.exp(-2.0 * tl.abs(x))
    r = (1.0 - e) / (1.0 + e)
    return tl.where(x >= 0, r, -r)


@triton.jit
def _cell_and_store(a_i, a_f, a_g, a_o, c_prev, row, rb, rj, ok, valid, last, n,
                    y, h_n, c_n, gates, cs, B, H, NEED_WS: tl.constexpr):
    """The LSTM cell on [BB, BH] f32 pre-activations; stores y (0 if invalid),
    h_n/c_n at the row's last valid step, and the workspace. -> h_t, c_t (f32)."""
    i = _sigmoid(a_i)
    f = _sigmoid(a_f)
    g = _tanh(a_g)
    o = _sigmoid(a_o)
    c = f * c_prev + i * g
    h = o * _tanh(c)
    v = valid[:, None]
    tl.store(y + row[:, None] * H + rj[None, :], tl.where(v, h, 0.0).to(y.dtype.element_ty), mask=ok)
    st_off = (n * B + rb)[:, None] * H + rj[None, :]
    at_last = ok & last[:, None]
    tl.store(h_n + st_off, h.to(h_n.dtype.element_ty), mask=at_last)
    tl.store(c_n + st_off, c.to(c_n.dtype.element_ty), mask=at_last)
    if NEED_WS:
        g_off = row[:, None] * (4 * H) + rj[None, :]
        tl.store(gates + g_off, i, mask=ok & v)
        tl.store(gates + g_off + H, f, mask=ok & v)
        tl.store(gates + g_off + 2 * H, g, mask=ok & v)
        tl.store(gates + g_off + 3 * H, o, mask=ok & v)
        tl.store(cs + row[:, None] * H + rj[None, :], c, mask=ok & v)
    return h, c


@triton.jit
def _cell_bwd_and_store(dh, dc, c_first, row, prev_row, rb, rj, ok, valid, first, n,
                        dy, gates, cs, dgx, dc0, B, H):
    """Backward of one cell step on a [BB, BH] tile: dh, dc are the gradients
    arriving at h_t, c_t (f32). Stores dG_t into dgx (zero if invalid) and dc0
    at s = 0. -> dG_i, dG_f, dG_g, dG_o (f32, zero if invalid), dc_{t-1}."""
    v = valid[:, None]
    ld = ok & v
    g_off = row[:, None] * (4 * H) + rj[None, :]
    i = tl.load(gates + g_off, mask=ld, other=0.0)
    f = tl.load(gates + g_off + H, mask=ld, other=0.0)
    g = tl.load(gates + g_off + 2 * H, mask=ld, other=0.0)
    o = tl.load(gates + g_off + 3 * H, mask=ld, other=0.0)
    c_t = tl.load(cs + row[:, None] * H + rj[None, :], mask=ld, other=0.0)
    # c_{t-1}: cs at the previous step's time, or c0 at s = 0
    f0 = first[:, None]
    c_prev = tl.load(cs + prev_row[:, None] * H + rj[None, :], mask=ld & ~f0, other=0.0)
    c_prev = tl.where(f0, c_first, c_prev)
    dh_out = dh + tl.load(dy + row[:, None] * H + rj[None, :], mask=ld, other=0.0).to(tl.float32)
    tc = _tanh(c_t)
    dct = dc + dh_out * o * (1.0 - tc * tc)
    dp_i = tl.where(v, dct * g * i * (1.0 - i), 0.0)
    dp_f = tl.where(v, dct * c_prev * f * (1.0 - f), 0.0)
    dp_g = tl.where(v, dct * i * (1.0 - g * g), 0.0)
    dp_o = tl.where(v, dh_out * tc * o * (1.0 - o), 0.0)
    X = dgx.dtype.element_ty
    tl.store(dgx + g_off, dp_i.to(X), mask=ok)
    tl.store(dgx + g_off + H, dp_f.to(X), mask=ok)
    tl.store(dgx + g_off + 2 * H, dp_g.to(X), mask=ok)
    tl.store(dgx + g_off + 3 * H, dp_o.to(X), mask=ok)
    dc_prev = dct * f
    tl.store(dc0 + (n * B + rb)[:, None] * H + rj[None, :], dc_prev.to(dc0.dtype.element_ty),
             mask=ok & f0)
    return dp_i, dp_f, dp_g, dp_o, dc_prev
