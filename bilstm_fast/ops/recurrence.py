"""The ops: one LSTM layer, and its recurrence alone (docs/design.md §3).

Legend (docs/design.md §0): T steps, B batch, D input features, N directions,
H hidden, G = 4H, P = H or proj_size, X input dtype, A accumulation dtype.

Two torch.library custom ops, both differentiable:

``lstm_layer(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths)``
    what BiLSTM runs per layer: the input projection of both directions as
    one GEMM followed by the fused recurrence. Its backward is the
    recurrence backward plus the GEMMs dx, dW_ih, db. The GEMMs are the
    backend's own where it brings them (``gemms``, backends.py: the cpu
    backend's micro-GEMM), else torch's (``torch.addmm``: cuBLAS, MKL).
    One op per layer is also what an exporter maps to ONNX's LSTM node.
``lstm_recurrence(gx, w_hh, h0, c0, lengths, w_hr)``
    the recurrence alone, for callers with their own projection.

Each forward is one call into the chosen backend (contract: backends.py),
each backward one more, and dW_hh is GEMMs over strided views here. Fake
(meta) implementations and registered autograd formulas let
``torch.compile(fullgraph=True)`` trace through with no graph break; nothing
here reads a tensor's values on the host for GPU tensors (no sync: CUDA-graph
friendly). A backward asked for with ``create_graph=True`` (double backward)
recomputes the layer through the reference backend's torch ops, which
autograd can differentiate again.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import backends, reference
from ..errors import InputError, InputTypeError


# ------------------------------------------------------------ shared pieces
def _fake_outputs(T, B, N, G, P, like: Tensor, h0: Tensor, c0: Tensor, keep: bool):
    """Empty y [T, B, N, P], h_n, c_n and the workspace (gates, cells) of a forward."""
    A = backends.acc_dtype(like.dtype)
    y = like.new_empty(T, B, N, P)
    gates = like.new_empty((T, B, N, G) if keep else (0,), dtype=A)
    cells = like.new_empty((T, B, N, G // 4) if keep else (0,), dtype=A)
    return y, h0.new_empty(h0.shape), c0.new_empty(c0.shape), gates, cells


def _concrete(backend: str, like: Tensor, w_hh: Tensor, w_hr: Optional[Tensor],
              lengths: Optional[Tensor]) -> str:
    """The op's ``backend`` argument as a backend to run. The Python entry
    points below pass a name they resolved (a constant under torch.compile);
    a caller that reaches the op through the dispatcher (TorchScript:
    torch.ops.bilstm_fast.lstm_layer) passes the module's "auto", resolved
    here by the same rule. like: x, gx or dy ([T, B, ...])."""
    if backends.split_name(backend)[0] != "auto":
        return backend
    N, G, P = w_hh.shape
    return _resolve(backend, like, N, G // 4, P, w_hr, lengths, like.shape[1])


def _run_forward(mod, plan, gx, w_hh, w_hr, h0, c0, lengths, keep):
    return tuple(mod.forward(gx, w_hh, w_hr, h0, c0, lengths, keep, plan))


def _inside(T: int, lengths: Tensor) -> Tensor:
    """[T*B] bool, row t*B + b of a [T*B, F] view: t < lengths[b] (inside a sequence)."""
    return (torch.arange(T, device=lengths.device)[:, None] < lengths[None, :]).view(-1)


def _input_gates(x: Tensor, w_ih: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], N: int,
                 gemms=None, lengths: Optional[Tensor] = None) -> Tensor:
    """gx [T, B, N, 4H] = x W_ih^T + b_ih + b_hh for both directions: one GEMM,
    the backend's (``gemms``, backends.py; into its workspace: gx dies with
    the layer op) or torch's. With ``lengths`` and a backend's
    ``linear_rows``, only at t < lengths[b] (gx is undefined past a
    sequence's end, where no backend reads it)."""
    T, B, D = x.shape
    x2 = x.reshape(T * B, D)
    bias = None if b_ih is None else b_ih + b_hh
    if gemms is not None and lengths is not None and hasattr(gemms, "linear_rows") \
            and int(lengths.min()) < T:
        gx = gemms.linear_rows(x2, w_ih, bias, _inside(T, lengths).nonzero().squeeze(1))
    elif gemms is not None:
        gx = gemms.linear(x2, w_ih, bias, workspace=True)
    elif bias is None:
        gx = torch.mm(x2, w_ih.t())
    else:
        gx = torch.addmm(bias, x2, w_ih.t())
    return gx.view(T, B, N, w_ih.shape[0] // N)


# ---------------------------------------------------------------- layer op
@torch.library.custom_op("bilstm_fast::lstm_layer", mutates_args=())
def _lstm_layer_op(
    x: Tensor,                  # [T, B, D]
    w_ih: Tensor,               # [N*4H, D]  direction 0's rows, then direction 1's
    b_ih: Optional[Tensor],     # [N*4H] or None (bias=False; then b_hh is None too)
    b_hh: Optional[Tensor],     # [N*4H] or None
    w_hh: Tensor,               # [N, 4H, P]
    w_hr: Optional[Tensor],     # [N, P, H] or None
    h0: Tensor,                 # [N, B, P]
    c0: Tensor,                 # [N, B, H]
    lengths: Optional[Tensor],  # [B] int64 or None
    backend: str,
    keep_for_backward: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    mod, plan = backends.parse(_concrete(backend, x, w_hh, w_hr, lengths))
    gx = _input_gates(x, w_ih, b_ih, b_hh, w_hh.shape[0], getattr(mod, "gemms", None), lengths)
    return _run_forward(mod, plan, gx, w_hh, w_hr, h0, c0, lengths, keep_for_backward)


@_lstm_layer_op.register_fake
def _(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths, backend, keep_for_backward):
    T, B, _ = x.shape
    N, G, P = w_hh.shape
    return _fake_outputs(T, B, N, G, P, x, h0, c0, keep_for_backward)


# ------------------------------------------------------------ recurrence op
@torch.library.custom_op("bilstm_fast::lstm_recurrence", mutates_args=())
def _lstm_recurrence_op(
    gx: Tensor,                 # [T, B, N, 4H]
    w_hh: Tensor,               # [N, 4H, P]
    w_hr: Optional[Tensor],     # [N, P, H] or None
    h0: Tensor,                 # [N, B, P]
    c0: Tensor,                 # [N, B, H]
    lengths: Optional[Tensor],  # [B] int64 or None
    backend: str,
    keep_for_backward: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    mod, plan = backends.parse(_concrete(backend, gx, w_hh, w_hr, lengths))
    return _run_forward(mod, plan, gx, w_hh, w_hr, h0, c0, lengths, keep_for_backward)


@_lstm_recurrence_op.register_fake
def _(gx, w_hh, w_hr, h0, c0, lengths, backend, keep_for_backward):
    T, B, N, G = gx.shape
    return _fake_outputs(T, B, N, G, w_hh.shape[-1], gx, h0, c0, keep_for_backward)


# --------------------------------------------------- the backward of both
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
    cells: Tensor,              # [T, B, N, H] A
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    mod, plan = backends.parse(_concrete(backend, dy, w_hh, w_hr, lengths))
    dgx, dh0, dc0, dw_hr = mod.backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, gates, cells, plan)
    if dw_hr is None:  # a custom op cannot return None: an empty tensor stands for "no projection"
        dw_hr = dy.new_empty(0)
    return dgx, dh0, dc0, dw_hr


@_lstm_recurrence_backward_op.register_fake
def _(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, gates, cells, backend):
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

    def rows(t: Tensor, n: int) -> Tensor:   # [T', B, N, F] -> [T'*B, F] view of direction n
        return t[:, :, n].reshape(-1, t.shape[-1])

    dw = [torch.addmm(dgx[0, :, 0].t() @ h0[0], rows(dgx[1:], 0).t(), rows(y[:-1], 0))]
    if N == 2:
        first = (dgx[T - 1, :, 1] if lengths is None
                 else dgx[lengths - 1, torch.arange(B, device=dgx.device), 1])   # [B, 4H]
        dw.append(torch.addmm(first.t() @ h0[1], rows(dgx[:-1], 1).t(), rows(y[1:], 1)))
    return torch.stack(dw)


def _recurrence_grads(ctx, dy, dh_n, dc_n):
    """(dgx, dw_hh, dw_hr or None, dh0, dc0) of a forward that kept its workspace."""
    if not ctx.keep_for_backward:
        raise RuntimeError("bilstm_fast: the recurrence ran without its backward workspace "
                           "(keep_for_backward=False) and cannot be differentiated")
    w_hh, w_hr, h0, c0, lengths, y, gates, cells = ctx.saved_tensors[-8:]
    dgx, dh0, dc0, dw_hr = _lstm_recurrence_backward_op(
        dy.contiguous(), dh_n.contiguous(), dc_n.contiguous(),
        w_hh, w_hr, h0, c0, lengths, y, gates, cells, ctx.backend)
    gemms = _gemms(ctx.backend, dy, w_hh, w_hr, lengths)
    dw_hh = (gemms.recurrent_weight_grad if gemms is not None else _recurrent_weight_grad)(dgx, y, h0, lengths)
    return dgx, dw_hh, (dw_hr if w_hr is not None else None), dh0, dc0


def _gemms(backend: str, like: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], lengths: Optional[Tensor]):
    """The backend's own GEMMs (backends.py: ``gemms``), or None for torch's."""
    return getattr(backends.parse(_concrete(backend, like, w_hh, w_hr, lengths))[0], "gemms", None)


def _double_backward(forward, inputs: Sequence[Optional[Tensor]], grads: Sequence[Tensor]):
    """Gradients of ``forward(*inputs)`` (y, h_n, c_n) against ``grads``, as a
    graph that autograd can differentiate again (create_graph=True):
    ``forward`` recomputes the layer with the reference backend's torch ops."""
    with torch.enable_grad():
        outs = forward(*inputs)
        wanted = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
        got = iter(torch.autograd.grad(outs, wanted, grads, create_graph=True, allow_unused=True))
    return [next(got) if isinstance(t, Tensor) and t.requires_grad else None for t in inputs]


def _reference_recurrence(gx, w_hh, w_hr, h0, c0, lengths):
    return reference.forward(gx, w_hh, w_hr, h0, c0, lengths, False)[:3]


# autograd of the layer op: inputs (x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths, backend, keep)
def _layer_setup_context(ctx, inputs, output):
    x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths, backend, keep = inputs
    y, h_n, c_n, gates, cells = output
    ctx.backend, ctx.keep_for_backward = backend, keep
    ctx.save_for_backward(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths, y, gates, cells)


def _layer_backward(ctx, dy, dh_n, dc_n, _dgates, _dcells):
    x, w_ih, b_ih, b_hh = ctx.saved_tensors[:4]
    if torch.is_grad_enabled():   # create_graph=True: differentiate a recomputation
        w_hh, w_hr, h0, c0, lengths = ctx.saved_tensors[4:9]

        def layer(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0):
            gx = _input_gates(x, w_ih, b_ih, b_hh, w_hh.shape[0])
            return _reference_recurrence(gx, w_hh, w_hr, h0, c0, lengths)

        grads = _double_backward(layer, (x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0), (dy, dh_n, dc_n))
        return (*grads, None, None, None)
    dgx, dw_hh, dw_hr, dh0, dc0 = _recurrence_grads(ctx, dy, dh_n, dc_n)
    T, B, D = x.shape
    need = ctx.needs_input_grad
    lengths = ctx.saved_tensors[8]
    dg2 = dgx.reshape(T * B, w_ih.shape[0])                       # [T*B, N*4H], zero past each length
    x2 = x.reshape(T * B, D)
    gemms = _gemms(ctx.backend, dy, ctx.saved_tensors[4], ctx.saved_tensors[5], lengths)
    mm = gemms.matmul if gemms is not None else (lambda a, b, trans_a=False: (a.t() if trans_a else a) @ b)
    rows = None   # with lengths: the positions inside the sequences
    if lengths is not None:
        inside = _inside(T, lengths)
        if gemms is not None and hasattr(gemms, "linear_rows"):
            # The GEMMs over those rows only (dG is zero elsewhere: fewer FLOPs).
            rows = inside.nonzero().squeeze(1)
            dg2, x2 = dg2.index_select(0, rows), x2.index_select(0, rows)
        else:
            # x past a sequence's end is never an input of the LSTM: zeros there,
            # so that a NaN / Inf in the padding cannot turn 0 * x into NaN in dW_ih.
            x2 = x2.masked_fill(~inside[:, None], 0)
    # Only the GEMMs someone needs (layer 0's x is data: its dx would be a
    # [T*B, N*4H] x [N*4H, D] GEMM for nothing).
    dx = None
    if need[0]:
        dx = mm(dg2, w_ih)
        if rows is not None:
            dx = dx.new_zeros(T * B, D).index_copy_(0, rows, dx)
        dx = dx.view(T, B, D)
    dw_ih = mm(dg2, x2, trans_a=True) if need[1] else None
    db = dg2.sum(0) if b_ih is not None and (need[2] or need[3]) else None
    return dx, dw_ih, db, db, dw_hh, dw_hr, dh0, dc0, None, None, None


_lstm_layer_op.register_autograd(_layer_backward, setup_context=_layer_setup_context)


# autograd of the recurrence op: inputs (gx, w_hh, w_hr, h0, c0, lengths, backend, keep)
def _recurrence_setup_context(ctx, inputs, output):
    gx, w_hh, w_hr, h0, c0, lengths, backend, keep = inputs
    y, h_n, c_n, gates, cells = output
    ctx.backend, ctx.keep_for_backward = backend, keep
    # gx only for a double backward's recomputation (lstm_layer keeps x and
    # W_ih instead, which its first-order backward needs anyway).
    ctx.save_for_backward(gx, w_hh, w_hr, h0, c0, lengths, y, gates, cells)


def _recurrence_backward(ctx, dy, dh_n, dc_n, _dgates, _dcells):
    if torch.is_grad_enabled():   # create_graph=True: differentiate a recomputation
        gx, w_hh, w_hr, h0, c0, lengths = ctx.saved_tensors[:6]
        grads = _double_backward(lambda *t: _reference_recurrence(*t, lengths),
                                 (gx, w_hh, w_hr, h0, c0), (dy, dh_n, dc_n))
        return (*grads, None, None, None)
    dgx, dw_hh, dw_hr, dh0, dc0 = _recurrence_grads(ctx, dy, dh_n, dc_n)
    return dgx, dw_hh, dw_hr, dh0, dc0, None, None, None


_lstm_recurrence_op.register_autograd(_recurrence_backward, setup_context=_recurrence_setup_context)


# ------------------------------------------------------------- python entry
def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise InputError(msg)


def _check_recurrence(T, B, N, G, w_hh, w_hr, h0, c0, like: Tensor) -> tuple[int, int]:
    """Shapes, dtypes and devices of the recurrence's tensors; returns (H, P)."""
    H = G // 4
    P = w_hh.shape[-1] if w_hh.dim() == 3 else -1
    _check(tuple(w_hh.shape) == (N, G, P) and (w_hr is not None or P == H),
           f"w_hh: expected [N={N}, 4H={G}, {'P' if w_hr is not None else f'H={H}'}], "
           f"got {tuple(w_hh.shape)}")
    _check(w_hr is None or tuple(w_hr.shape) == (N, P, H),
           f"w_hr: expected [N={N}, P={P}, H={H}], got {None if w_hr is None else tuple(w_hr.shape)}")
    _check(tuple(h0.shape) == (N, B, P), f"h0: expected [N={N}, B={B}, P={P}], got {tuple(h0.shape)}")
    _check(tuple(c0.shape) == (N, B, H), f"c0: expected [N={N}, B={B}, H={H}], got {tuple(c0.shape)}")
    _check(T > 0, f"expected at least one time step, got T={T}")
    for name, t in (("w_hh", w_hh), ("w_hr", w_hr), ("h0", h0), ("c0", c0)):
        if t is not None and (t.dtype != like.dtype or t.device != like.device):
            raise InputError(f"{name}: expected dtype {like.dtype} on {like.device} like the input, "
                             f"got {t.dtype} on {t.device}")
    if like.is_complex() or not like.is_floating_point():
        raise InputTypeError(f"bilstm_fast runs real floating-point tensors (float32, float64, float16, "
                             f"bfloat16), got {like.dtype}")
    return H, P


def check_lengths(lengths: Union[Tensor, Sequence[int], None], B: int, T: int,
                  device: torch.device) -> Optional[Tensor]:
    """The one lengths rule of every backend (docs/design.md §5): lengths as a
    contiguous int64 [B] tensor on ``device``, or None.

    CPU tensors (and lists) are checked: each value in 1..T, else InputError
    naming the value and its index (reading CPU memory costs no sync; under
    torch.compile a run-time assertion, RuntimeError, keeps the graph). On a
    GPU the values are clamped into 1..T instead: checking them would read
    device memory on the host (a sync, and illegal in CUDA-graph capture).
    The contiguous tensor returned is held by the op for the whole call, so
    what reaches native code outlives it.
    """
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError) as e:
            raise InputTypeError(f"lengths: expected a tensor or a sequence of ints, got "
                                 f"{type(lengths).__name__} ({e})") from None
    if (lengths.dtype == torch.bool or lengths.is_floating_point() or lengths.is_complex()
            or tuple(lengths.shape) != (B,)):
        raise InputError(f"lengths: expected an integer tensor of shape [B={B}], got "
                         f"{lengths.dtype} {tuple(lengths.shape)}")
    if lengths.device.type == "cpu" and torch.compiler.is_compiling():
        # Reading the values would break the graph: a run-time assertion instead.
        torch._assert_async(((lengths >= 1) & (lengths <= T)).all(),
                            f"lengths: values must be in 1..T={T}")
        return lengths.to(device=device, dtype=torch.int64).contiguous()
    if lengths.device.type == "cpu":
        bad = ((lengths < 1) | (lengths > T)).nonzero()
        if bad.numel():
            i = int(bad[0, 0])
            raise InputError(f"lengths: values must be in 1..T={T}, got {int(lengths[i])} at index {i}")
        return lengths.to(device=device, dtype=torch.int64).contiguous()
    return lengths.to(device=device, dtype=torch.int64).clamp(1, T).contiguous()


def _resolve(backend: str, like: Tensor, N: int, H: int, P: int, w_hr, lengths, B: int) -> str:
    name = backends.resolve_backend(  # fields of backends.CallSpec
        backend, like.device.type, like.dtype, N, H, P, w_hr is not None, lengths is not None)
    # An empty batch has nothing to compute; the reference returns the empty
    # outputs on any device, so no kernel needs a B == 0 special case.
    return "reference" if B == 0 else name


def _keep(*ts: Optional[Tensor]) -> bool:
    """Whether the forward keeps its backward workspace. A torch.jit.trace
    bakes the answer into the graph as a constant, and nothing at trace time
    says how the graph will run (under no_grad even the packed weights stop
    requiring grad, and trace's own check re-traces under no_grad): a traced
    op always keeps it, so the traced module can be trained like eager."""
    if torch.jit.is_tracing():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _register_onnx_when_tracing() -> None:
    """torch.onnx.export(dynamo=False) traces the model, then translates the
    trace with the symbolic functions registered by then: register ours
    (bilstm_fast/export.py) on the first traced call. Importing it costs
    nothing outside a trace, and `import bilstm_fast` stays free of torch.onnx."""
    if torch.jit.is_tracing():
        from .. import export
        export.register_torchscript_symbolics()


def _opt(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.contiguous()


def lstm_layer(
    x: Tensor,                         # [T, B, D]
    w_ih: Tensor,                      # [N*4H, D]  direction 0's rows, then direction 1's
    b_ih: Optional[Tensor],            # [N*4H] or None (no bias)
    b_hh: Optional[Tensor],            # [N*4H] or None (no bias)
    w_hh: Tensor,                      # [N, 4H, P]
    h0: Tensor,                        # [N, B, P]
    c0: Tensor,                        # [N, B, H]
    lengths: Optional[Tensor] = None,  # [B] int, values in 1..T, any order; None = all T
    w_hr: Optional[Tensor] = None,     # [N, P, H] projection (proj_size), or None
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer of N directions (projection + recurrence), nn.LSTM's math.

    Returns ``y [T, B, N, P]`` (zero where t >= L_b), ``h_n [N, B, P]`` and
    ``c_n [N, B, H]``. Differentiable in every tensor argument (twice, too).
    """
    _check(x.dim() == 3, f"x: expected [T, B, D], got {tuple(x.shape)}")
    T, B, D = x.shape
    N = w_hh.shape[0] if w_hh.dim() == 3 else -1
    _check(N in (1, 2) and w_ih.dim() == 2 and w_ih.shape[1] == D and w_ih.shape[0] % (4 * N) == 0,
           f"w_ih: expected [N*4H, D={D}] with N in (1, 2) from w_hh {tuple(w_hh.shape)}, got {tuple(w_ih.shape)}")
    G = w_ih.shape[0] // N
    H, P = _check_recurrence(T, B, N, G, w_hh, w_hr, h0, c0, x)
    _check((b_ih is None) == (b_hh is None), "b_ih, b_hh: pass both biases or neither")
    for name, t in (("w_ih", w_ih), ("b_ih", b_ih), ("b_hh", b_hh)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise InputError(f"{name}: expected dtype {x.dtype} on {x.device} like the input, "
                             f"got {t.dtype} on {t.device}")
    for name, t in (("b_ih", b_ih), ("b_hh", b_hh)):
        _check(t is None or tuple(t.shape) == (N * G,), f"{name}: expected [N*4H={N * G}], got "
               f"{None if t is None else tuple(t.shape)}")
    lengths = check_lengths(lengths, B, T, x.device)
    name = _resolve(backend, x, N, H, P, w_hr, lengths, B)
    keep = _keep(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0)
    _register_onnx_when_tracing()
    y, h_n, c_n, _, _ = _lstm_layer_op(
        x.contiguous(), w_ih.contiguous(), _opt(b_ih), _opt(b_hh), w_hh.contiguous(), _opt(w_hr),
        h0.contiguous(), c0.contiguous(), lengths, name, keep)
    return y, h_n, c_n


def lstm_recurrence(
    gx: Tensor,                        # [T, B, N, 4H]
    w_hh: Tensor,                      # [N, 4H, P]
    h0: Tensor,                        # [N, B, P]
    c0: Tensor,                        # [N, B, H]
    lengths: Optional[Tensor] = None,  # [B] int, values in 1..T, any order; None = all T
    w_hr: Optional[Tensor] = None,     # [N, P, H] projection (proj_size), or None
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """Run the LSTM recurrence of N directions at once (docs/design.md §3).

    Returns ``y [T, B, N, P]`` (zero where t >= L_b), ``h_n [N, B, P]`` and
    ``c_n [N, B, H]``. Differentiable in gx, w_hh, w_hr, h0 and c0 (twice,
    too; for that it keeps gx alive until the backward).
    """
    _check(gx.dim() == 4 and gx.shape[2] in (1, 2) and gx.shape[3] % 4 == 0,
           f"gx: expected [T, B, N, 4H] with N in (1, 2), got {tuple(gx.shape)}")
    T, B, N, G = gx.shape
    H, P = _check_recurrence(T, B, N, G, w_hh, w_hr, h0, c0, gx)
    lengths = check_lengths(lengths, B, T, gx.device)
    name = _resolve(backend, gx, N, H, P, w_hr, lengths, B)
    keep = _keep(gx, w_hh, w_hr, h0, c0)
    _register_onnx_when_tracing()
    y, h_n, c_n, _, _ = _lstm_recurrence_op(
        gx.contiguous(), w_hh.contiguous(), _opt(w_hr), h0.contiguous(), c0.contiguous(), lengths,
        name, keep)
    return y, h_n, c_n
