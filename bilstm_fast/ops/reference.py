"""Reference backend: the recurrence op in pure torch — the oracle every other
backend is tested against (it is itself tested against torch.nn.LSTM).

Legend (docs/design.md §0): T steps, B batch, N directions (1 or 2), H hidden,
P = H or proj_size, X input dtype, A accumulation dtype (float64 for float64,
else float32).

Both directions advance together: at step s direction 0 is at time t = s and
direction 1 at t = T-1-s, so one batched matmul per step ([N, B, P] x
[N, P, 4H]) serves both. Variable lengths are masks: a sequence's state is
frozen while t >= L_b, which for direction 1 means it keeps h0/c0 until
t = L_b-1 — exactly "start at L_b-1". The backward is written like a kernel
(explicit dh/dc recurrence), not autograd through the loop, so that it pins
down the backward contract the fast backends implement.
"""
from __future__ import annotations

import torch

from .backends import acc_dtype

NAME = "reference"


def unavailable_reason() -> str | None:
    return None


def unsupported_reason(spec) -> str | None:
    return None


def parse_plan(text: str):
    raise ValueError(f"the reference backend has no plan options, got {text!r}")


def _step_order(t: torch.Tensor) -> torch.Tensor:
    """[T, B, N, ...] in time order -> step order (direction 1 reversed in time).
    The map is its own inverse."""
    if t.shape[2] == 1:
        return t
    return torch.stack((t[:, :, 0], t[:, :, 1].flip(0)), dim=2)


def _step_masks(T: int, B: int, N: int, lengths, device) -> torch.Tensor:
    """[T, N, B, 1] bool: True where step s of direction n is a valid time step."""
    t = torch.arange(T, device=device)
    if lengths is None:
        return torch.ones(T, N, B, 1, dtype=torch.bool, device=device)
    valid = t[:, None] < lengths[None, :]                     # [T, B] in time order
    per_dir = [valid, valid.flip(0)][:N]                      # step order per direction
    return torch.stack(per_dir, dim=1)[..., None]


def forward(gx, w_hh, w_hr, h0, c0, lengths, keep_for_backward, plan=None):
    T, B, N, G = gx.shape
    H = G // 4
    A = acc_dtype(gx.dtype)
    gx_s = _step_order(gx).to(A)                              # [T, B, N, 4H]
    w_t = w_hh.to(A).transpose(1, 2)                          # [N, P, 4H]
    w_r = None if w_hr is None else w_hr.to(A).transpose(1, 2)  # [N, H, P]
    masks = _step_masks(T, B, N, lengths, gx.device)          # [T, N, B, 1]
    h, c = h0.to(A), c0.to(A)                                 # [N, B, P], [N, B, H]
    ys, gates, cells = [], [], []
    for s in range(T):
        pre = gx_s[s].transpose(0, 1) + torch.bmm(h, w_t)      # [N, B, 4H]
        i, f, g, o = pre.chunk(4, dim=-1)
        i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
        c_new = f * c + i * g
        h_new = o * c_new.tanh()
        if w_r is not None:
            h_new = torch.bmm(h_new, w_r)
        m = masks[s]
        h = torch.where(m, h_new, h)
        c = torch.where(m, c_new, c)
        ys.append(torch.where(m, h_new, 0.0))
        if keep_for_backward:
            gates.append(torch.cat((i, f, g, o), dim=-1))
            cells.append(c_new)
    y = _step_order(torch.stack(ys).transpose(1, 2)).to(gx.dtype)  # [T, B, N, P]
    if keep_for_backward:
        gates = _step_order(torch.stack(gates).transpose(1, 2))      # [T, B, N, 4H]
        cells = _step_order(torch.stack(cells).transpose(1, 2))            # [T, B, N, H]
    else:
        gates, cells = gx.new_empty(0, dtype=A), gx.new_empty(0, dtype=A)  # two tensors: outputs may not alias
    return y, h.to(gx.dtype), c.to(gx.dtype), gates, cells


def backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, gates, cells, plan=None):
    T, B, N, G = gates.shape
    A = gates.dtype
    X = y.dtype
    w = w_hh.to(A)                                            # [N, 4H, P]
    w_r = None if w_hr is None else w_hr.to(A)                # [N, P, H]
    masks = _step_masks(T, B, N, lengths, y.device)           # [T, N, B, 1]
    dy_s = _step_order(dy).to(A)                              # step order, [T, B, N, P]
    gates_s = _step_order(gates)
    cells_s = _step_order(cells)
    c0a = c0.to(A)
    dh, dc = dh_n.to(A), dc_n.to(A)                           # [N, B, P], [N, B, H]
    dgx = torch.zeros(T, N, B, G, dtype=A, device=y.device)
    dr_all = [] if w_r is not None else None                  # grads of projected h, for dw_hr
    for s in reversed(range(T)):
        m = masks[s]
        i, f, g, o = gates_s[s].transpose(0, 1).chunk(4, dim=-1)  # [N, B, H] each
        c_t = cells_s[s].transpose(0, 1)
        # The previous valid cell state: step s-1 where that step was valid, else c0
        # (for direction 1 the steps before L_b-1 are masked, so this is c0 there).
        c_prev = c0a if s == 0 else torch.where(masks[s - 1], cells_s[s - 1].transpose(0, 1), c0a)
        dh_out = dh + dy_s[s].transpose(0, 1)                 # grad of this step's output
        if w_r is not None:
            dr_all.append(torch.where(m, dh_out, 0.0))
            dh_out = torch.bmm(dh_out, w_r)                   # [N, B, H]
        tc = c_t.tanh()
        do = dh_out * tc
        dct = dc + dh_out * o * (1 - tc * tc)
        di, dg, df = dct * g, dct * i, dct * c_prev
        dpre = torch.cat((di * i * (1 - i), df * f * (1 - f),
                          dg * (1 - g * g), do * o * (1 - o)), dim=-1)
        dpre = torch.where(m, dpre, 0.0)                      # [N, B, 4H]
        dgx[s] = dpre
        dh = torch.where(m, torch.bmm(dpre, w), dh)
        dc = torch.where(m, dct * f, dc)
    dgx = _step_order(dgx.transpose(1, 2)).to(X)              # [T, B, N, 4H]
    dw_hr = None
    if w_r is not None:
        # dw_hr[n] = sum_t dh_out[t, n]^T r[t, n], r = o * tanh(c): one batched GEMM.
        dr = torch.stack(dr_all[::-1])                        # [T, N, B, P], step order
        o = gates_s[..., 3 * (G // 4):].transpose(1, 2)       # [T, N, B, H]
        r = torch.where(masks, o * cells_s.transpose(1, 2).tanh(), 0.0)  # unspecified where masked
        dw_hr = torch.einsum("tnbp,tnbh->nph", dr, r).to(X)
    return dgx, dh.to(X), dc.to(X), dw_hr
