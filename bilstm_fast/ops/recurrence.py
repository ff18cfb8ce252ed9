"""The recurrence op: torch.library registration, autograd, backend dispatch.

Legend: T steps, B batch, N directions (1 or 2), H hidden, P = H or proj_size,
X input dtype, A accumulation dtype (float64 for float64, else float32).

``lstm_recurrence`` is what functional.py calls. It validates shapes, picks
the backend (backends.resolve_backend) and calls the custom op
``bilstm_fast::lstm_recurrence``, whose forward and backward are each one
call into the chosen backend (contract: backends.py). Because the op is a
torch.library custom op with fake (meta) implementations and a registered
autograd formula, ``torch.compile(fullgraph=True)`` traces through it with
no graph break, and nothing here reads a tensor's values on the host (no
sync: CUDA-graph friendly).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import backends


# ---------------------------------------------------------------- forward op
@torch.library.custom_op("bilstm_fast::lstm_recurrence", mutates_args=())
def _lstm_recurrence_op(
    gx: Tensor,                 # [T, B, N, 4H]
    w_hh: Tensor,               # [N, 4H, P]
    w_hr: Optional[Tensor],     # [N, P, H] or None
    h0: Tensor,                 # [N, B, P]
    c0: Tensor,                 # [N, B, H]
    lengths: Optional[Tensor],  # [B] int64 or None
    backend: str,
    need_ws: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return tuple(backends.get(backend).forward(gx, w_hh, w_hr, h0, c0, lengths, need_ws))


@_lstm_recurrence_op.register_fake
def _(gx, w_hh, w_hr, h0, c0, lengths, backend, need_ws):
    T, B, N, G = gx.shape
    P = w_hh.shape[-1]
    A = backends.acc_dtype(gx.dtype)
    y = gx.new_empty(T, B, N, P)
    ws_gates = gx.new_empty((T, B, N, G) if need_ws else (0,), dtype=A)
    ws_cs = gx.new_empty((T, B, N, G // 4) if need_ws else (0,), dtype=A)
    return y, h0.new_empty(h0.shape), c0.new_empty(c0.shape), ws_gates, ws_cs


# --------------------------------------------------------------- backward op
@torch.library.custom_op("bilstm_fast::lstm_recurrence_backward", mutates_args=())
def _lstm_recurrence_backward_op(
    dy: Tensor,                 # [T, B, N, P]
    dh_n: Tensor,               # [N, B, P]
    dc_n: Tensor,               # [N, B, H]
    w_hh: Tensor,               # [N, 4H, P]
    w_hr: Optional[Tensor],     # [N, P, H] or None
    h0: Tensor,                 # [N, B, P]
    c0: Tensor,                 # [N, B, H]
    lengths: Optional[Tensor],  # [B] or None
    y: Tensor,                  # [T, B, N, P]
    gates: Tensor,              # [T, B, N, 4H] A
    cs: Tensor,                 # [T, B, N, H] A
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dgx, dh0, dc0, dw_hr = backends.get(backend).backward(
        dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, gates, cs)
    if dw_hr is None:  # a custom op cannot return None: an empty tensor stands for "no projection"
        dw_hr = dy.new_empty(0)
    return dgx, dh0, dc0, dw_hr


@_lstm_recurrence_backward_op.register_fake
def _(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, gates, cs, backend):
    T, B, N, G = gates.shape
    dw_hr = dy.new_empty(0) if w_hr is None else w_hr.new_empty(w_hr.shape)
    return dy.new_empty(T, B, N, G), h0.new_empty(h0.shape), c0.new_empty(c0.shape), dw_hr


def _recurrent_weight_grad(dgx: Tensor, y: Tensor, h0: Tensor,
                           lengths: Optional[Tensor]) -> Tensor:
    """dW_hh[n] = sum over (t, b) of dG[t, b, n]^T h_{t-1}: [N, 4H, P].

    dgx [T, B, N, 4H] is zero where t >= L_b; y [T, B, N, P]; h0 [N, B, P].
    Direction 0 at time t saw y[t-1], and h0 at t = 0. Direction 1 at t saw
    y[t+1], and h0 at t = L_b-1 (where y[t+1] is padding, i.e. zero, so the
    y-term adds nothing there). Each term is one GEMM over strided views of
    dgx and y (no copies of the big tensors; the copies an einsum made cost
    ~15% of a CPU training step); the h0 term of direction 1 gathers dG at
    each sequence's first step with a device-side index: no host sync, no
    atomics, deterministic.
    """
    T, B, N, G = dgx.shape
    P = y.shape[-1]

    def rows(t: Tensor, n: int) -> Tensor:   # [T', B, N, F] -> [T'*B, F] view of direction n
        return t[:, :, n].reshape(-1, t.shape[-1])

    dw = [torch.addmm(dgx[0, :, 0].t() @ h0[0], rows(dgx[1:], 0).t(), rows(y[:-1], 0))]
    if N == 2:
        first = (dgx[T - 1, :, 1] if lengths is None
                 else dgx[lengths - 1, torch.arange(B, device=dgx.device), 1])   # [B, 4H]
        dw.append(torch.addmm(first.t() @ h0[1], rows(dgx[:-1], 1).t(), rows(y[1:], 1)))
    return torch.stack(dw)


def _setup_context(ctx, inputs, output):
    gx, w_hh, w_hr, h0, c0, lengths, backend, need_ws = inputs
    y, h_n, c_n, gates, cs = output
    ctx.backend = backend
    ctx.need_ws = need_ws
    ctx.save_for_backward(w_hh, w_hr, h0, c0, lengths, y, gates, cs)


def _backward(ctx, dy, dh_n, dc_n, _dgates, _dcs):
    if not ctx.need_ws:
        raise RuntimeError("bilstm_fast: the recurrence ran without its backward workspace "
                           "(need_ws=False) and cannot be differentiated")
    w_hh, w_hr, h0, c0, lengths, y, gates, cs = ctx.saved_tensors
    dgx, dh0, dc0, dw_hr = _lstm_recurrence_backward_op(
        dy.contiguous(), dh_n.contiguous(), dc_n.contiguous(),
        w_hh, w_hr, h0, c0, lengths, y, gates, cs, ctx.backend)
    # A backend may bring its own dW_hh (the cpu backend: ops/cpu_gemm.py).
    weight_grad = getattr(backends.get(ctx.backend), "recurrent_weight_grad", _recurrent_weight_grad)
    dw_hh = weight_grad(dgx, y, h0, lengths)
    return dgx, dw_hh, (dw_hr if w_hr is not None else None), dh0, dc0, None, None, None


_lstm_recurrence_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------- python entry
def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def lstm_recurrence(
    gx: Tensor,                        # [T, B, N, 4H]
    w_hh: Tensor,                      # [N, 4H, P]
    h0: Tensor,                        # [N, B, P]
    c0: Tensor,                        # [N, B, H]
    lengths: Optional[Tensor] = None,  # [B] int, values in 1..T, any order; None = all T
    w_hr: Optional[Tensor] = None,     # [N, P, H] projection (proj_size), or None
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the LSTM recurrence of N directions at once (DESIGN.md §3).

    Returns ``y [T, B, N, P]`` (zero where t >= L_b), ``h_n [N, B, P]`` and
    ``c_n [N, B, H]``. Differentiable in gx, w_hh, w_hr, h0 and c0.
    """
    _check(gx.dim() == 4 and gx.shape[2] in (1, 2) and gx.shape[3] % 4 == 0,
           f"gx: expected [T, B, N, 4H] with N in (1, 2), got {tuple(gx.shape)}")
    T, B, N, G = gx.shape
    H = G // 4
    P = w_hh.shape[-1] if w_hh.dim() == 3 else -1
    _check(w_hh.shape == (N, G, P) and (w_hr is not None or P == H),
           f"w_hh: expected [N={N}, 4H={G}, {'P' if w_hr is not None else f'H={H}'}], "
           f"got {tuple(w_hh.shape)}")
    _check(w_hr is None or tuple(w_hr.shape) == (N, P, H),
           f"w_hr: expected [N={N}, P={P}, H={H}], got {None if w_hr is None else tuple(w_hr.shape)}")
    _check(tuple(h0.shape) == (N, B, P), f"h0: expected [N={N}, B={B}, P={P}], got {tuple(h0.shape)}")
    _check(tuple(c0.shape) == (N, B, H), f"c0: expected [N={N}, B={B}, H={H}], got {tuple(c0.shape)}")
    _check(T > 0, f"gx: expected at least one time step, got T={T}")
    for name, t in (("w_hh", w_hh), ("w_hr", w_hr), ("h0", h0), ("c0", c0)):
        if t is not None and (t.dtype != gx.dtype or t.device != gx.device):
            raise ValueError(f"{name}: expected dtype {gx.dtype} on {gx.device} like gx, "
                             f"got {t.dtype} on {t.device}")
    if lengths is not None:
        _check(lengths.shape == (B,) and not lengths.is_floating_point(),
               f"lengths: expected an integer tensor of shape [B={B}], got "
               f"{lengths.dtype} {tuple(lengths.shape)}")
        lengths = lengths.to(device=gx.device, dtype=torch.int64)
    name = backends.resolve_backend(  # fields of backends.CallSpec
        backend, gx.device.type, gx.dtype, N, H, P, w_hr is not None, lengths is not None)
    if B == 0:
        # An empty batch has nothing to compute; the reference returns the empty
        # outputs on any device, so no kernel needs a B == 0 special case.
        name = "reference"
    need_ws = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (gx, w_hh, w_hr, h0, c0))
    args = (gx.contiguous(), w_hh.contiguous(), None if w_hr is None else w_hr.contiguous(),
            h0.contiguous(), c0.contiguous(), lengths)
    if not need_ws and not torch.compiler.is_compiling():
        # Nothing to differentiate and nothing traced: the backend directly.
        # The custom op's dispatch (autograd wrapper, redispatch) was ~40% of
        # the Python time of a small inference call (cProfile, T=1 B=1 H=4).
        y, h_n, c_n, _, _ = backends.get(name).forward(*args, False)
        return y, h_n, c_n
    y, h_n, c_n, _, _ = _lstm_recurrence_op(*args, name, need_ws)
    return y, h_n, c_n
