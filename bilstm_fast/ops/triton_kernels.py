"""The Triton kernels of the recurrence op (launchers: triton_lstm.py; design,
paths and the per-step model: docs/triton.md).

Legend: T time steps, B batch, N directions (1 or 2), H hidden size,
X input dtype (fp32 / fp16 / bf16), f32 the accumulation and cell-state dtype.
BB = BLOCK_B (batch rows per tile), BH = BLOCK_H (hidden units per tile),
HP = H rounded up to a power of two (>= 16, the smallest tl.dot tile),
S = programs per direction (SPLIT), Q = barrier groups per direction (SPLIT).

Three paths (triton_plan.py chooses; docs/triton.md has the rule):

* RESIDENT (`_lstm_fwd_kernel` / `_lstm_bwd_kernel`, RESIDENT=True):
  grid = (N, cdiv(B, BB)); program (n, p) owns direction n for batch rows
  p*BB .. p*BB+BB-1, all four gates of every hidden unit, W_hh on chip and
  h, c in registers for all T steps. No program waits for another.
* STREAMED (the same kernels, RESIDENT=False): the same grid; W_hh tiles
  streamed from L2 every step, h through y, c through a scratch.
* SPLIT (`_lstm_fwd_split_kernel` / `_lstm_bwd_split_kernel`): grid =
  (N, Q, S); program (n, q, j) holds the W_hh slice of hidden units
  j*BH .. j*BH+BH-1 (all four gates, all HP inputs) on chip for all steps,
  loops over the batch tiles q, q+Q, ... and exchanges h (dG) with the other
  S-1 programs of its group through y (dgx) in L2, one barrier per step
  (`_arrive_and_wait`). SYNC=True: one launch for all steps, the barrier
  spins (the launcher checks co-residency first). SYNC=False: the launcher
  runs one launch per step (the kernel boundary is the barrier): what the
  interpreter runs, since it runs programs one after another.

Time is per row: at step s row b of direction 0 is at t = s, of direction 1
at t = L_b-1-s; the row is valid while s < L_b (L_b clamped into 1..T in the
kernel: no value of `lengths` makes it read or write out of bounds). T, B and
the step range are runtime arguments (do_not_specialize); H, tiles, N and
flags constexpr. Padded lanes (hidden units >= H) are zero wherever they
enter a dot, so an Inf in a real lane never meets a padded 0 (inf * 0 = NaN).

The per-step loop of every kernel is the `for s in range(...)` (backward:
`for r in range(...)`) over steps; in SASS it is the outermost loop after
the W_hh prologue, with the SPLIT barrier (an atom.add.release.gpu, then a
volatile-load spin) at its end.
"""
import triton
import triton.language as tl


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
    gates,     # [T, B, N, 4H] f32 out (if KEEP_FOR_BACKWARD)
    cells,        # [T, B, N, H]  f32 out (if KEEP_FOR_BACKWARD)
    c_scr,     # [2, N, B, H]  f32 scratch (STREAMED only)
    T, B,      # runtime: never specialized
    H_LOOP,    # = H, as a runtime value: bound of the STREAMED tile loops
    H: tl.constexpr, N: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    RESIDENT: tl.constexpr, HAS_LENGTHS: tl.constexpr, KEEP_FOR_BACKWARD: tl.constexpr,
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
                                   y, h_n, c_n, gates, cells, B, H, KEEP_FOR_BACKWARD)
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
                                               last, n, y, h_n, c_n, gates, cells, B, H, KEEP_FOR_BACKWARD)
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
    cells,        # [T, B, N, H]  f32 cell states from the forward
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
                dy, gates, cells, dgx, dc0, B, H)
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
                    dy, gates, cells, dgx, dc0, B, H)
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


@triton.jit(do_not_specialize=["T", "B", "S_BEGIN", "S_END"])
def _lstm_fwd_split_kernel(
    gx,        # [T, B, N, 4H] X
    w_hh,      # [N, 4H, H]    X
    h0,        # [N, B, H]     X
    c0,        # [N, B, H]     X
    lengths,   # [B] int64 (read only if HAS_LENGTHS)
    y,         # [T, B, N, H]  X   out; also the h exchange: y[t] holds h_t for step t+1
    h_n,       # [N, B, H]     X   out
    c_n,       # [N, B, H]     X   out
    gates,     # [T, B, N, 4H] f32 out (if KEEP_FOR_BACKWARD)
    cells,     # [T, B, N, H]  f32 out (if KEEP_FOR_BACKWARD)
    c_scr,     # [N, B, H]     f32 scratch: c_{t-1} of the program's own units
    bar,       # [N, Q, 32]    int32 arrivals per barrier group (one 128-byte line each), zero at launch
    T, B,      # runtime: never specialized
    S_BEGIN, S_END,   # the steps this launch runs (SYNC: 0, T; else one step per launch)
    H: tl.constexpr, N: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr, HAS_LENGTHS: tl.constexpr, KEEP_FOR_BACKWARD: tl.constexpr,
    DOT_PREC: tl.constexpr, F32_DOT: tl.constexpr, SYNC: tl.constexpr,
):
    n = tl.program_id(0)
    q = tl.program_id(1)
    j = tl.program_id(2)
    Q = tl.num_programs(1)
    S = tl.num_programs(2)
    w_n = w_hh + n * (4 * H * H)
    rj = j * BLOCK_H + tl.arange(0, BLOCK_H)                    # [BH] this program's units
    # The K = HP inputs in KC chunks of BK: the dots are batched over the
    # chunks and summed, so each warp holds a quarter of the [BB, HP] h
    # operand. One [BB, HP] x [HP, BH] dot makes every warp hold all of it
    # (MMA splits warps over M and N only): 256 registers at HP = 1024 fp16,
    # and the forward spilled 72-2904 B at HP >= 512 (compile report).
    KC: tl.constexpr = 4
    BK: tl.constexpr = BLOCK_K // KC
    rk3 = tl.arange(0, KC)[:, None, None] * BK + tl.arange(0, BK)[None, None, :]   # [KC, 1, BK]
    # W^T slices [c, k, j] = w_hh[n, g*H + j, c*BK + k] for the program's j: resident for all steps
    wk = tl.arange(0, KC)[:, None, None] * BK + tl.arange(0, BK)[None, :, None]    # [KC, BK, 1]
    wt_i = _w_tile(w_n, 0, rj[None, None, :], wk, H)
    wt_f = _w_tile(w_n, 1, rj[None, None, :], wk, H)
    wt_g = _w_tile(w_n, 2, rj[None, None, :], wk, H)
    wt_o = _w_tile(w_n, 3, rj[None, None, :], wk, H)
    bar_q = bar + (n * Q + q) * 32
    for s in range(S_BEGIN, S_END):
        for p in range(q, (B + BLOCK_B - 1) // BLOCK_B, Q):     # this group's batch tiles
            rb = p * BLOCK_B + tl.arange(0, BLOCK_B)
            b_ok = rb < B
            L = _row_lengths(lengths, rb, b_ok, T, HAS_LENGTHS)
            t, valid, t_prev, first, last = _step_time(s, L, n)
            row = (t * B + rb) * N + n
            prev_row = (t_prev * B + rb) * N + n
            f0 = first[:, None]
            # h_{t-1} of all H units [KC, BB, BK], written by the group's S programs
            # last step: .cg reads L2 (the point of coherence), never a stale L1 line
            k_ok = b_ok[None, :, None] & (rk3 < H)
            f3 = first[None, :, None]
            hx = tl.load(y + prev_row[None, :, None] * H + rk3,
                         mask=k_ok & valid[None, :, None] & ~f3, other=0.0, cache_modifier=".cg")
            hx += tl.load(h0 + (n * B + rb)[None, :, None] * H + rk3, mask=k_ok & f3, other=0.0)
            j_ok = b_ok[:, None] & (rj < H)[None, :]
            a_i = _load_gx(gx, row, 0, rj, j_ok, H) + _ksum(_dot(hx, wt_i, DOT_PREC, F32_DOT))
            a_f = _load_gx(gx, row, 1, rj, j_ok, H) + _ksum(_dot(hx, wt_f, DOT_PREC, F32_DOT))
            a_g = _load_gx(gx, row, 2, rj, j_ok, H) + _ksum(_dot(hx, wt_g, DOT_PREC, F32_DOT))
            a_o = _load_gx(gx, row, 3, rj, j_ok, H) + _ksum(_dot(hx, wt_o, DOT_PREC, F32_DOT))
            st_off = (n * B + rb)[:, None] * H + rj[None, :]
            c = tl.load(c_scr + st_off, mask=j_ok & ~f0, other=0.0)
            c += tl.load(c0 + st_off, mask=j_ok & f0, other=0.0).to(tl.float32)
            h_new, c_new = _cell_and_store(a_i, a_f, a_g, a_o, c, row, rb, rj, j_ok, valid, last, n,
                                           y, h_n, c_n, gates, cells, B, H, KEEP_FOR_BACKWARD)
            tl.store(c_scr + st_off, c_new, mask=j_ok)
        # y[t] of all S programs is complete before any reads it at step s+1
        _arrive_and_wait(bar_q, S * (s + 1), SYNC)


@triton.jit(do_not_specialize=["T", "B", "S_BEGIN", "S_END"])
def _lstm_bwd_split_kernel(
    dy,        # [T, B, N, H]  X
    dh_n,      # [N, B, H]     X
    dc_n,      # [N, B, H]     X
    w_hh,      # [N, 4H, H]    X
    c0,        # [N, B, H]     X
    lengths,   # [B] int64 (read only if HAS_LENGTHS)
    gates,     # [T, B, N, 4H] f32 activated gates from the forward
    cells,     # [T, B, N, H]  f32 cell states from the forward
    dgx,       # [T, B, N, 4H] X   out; also the dG exchange: dgx[t] feeds dh_{t-1} of every unit
    dh0,       # [N, B, H]     X   out
    dc0,       # [N, B, H]     X   out
    dh_scr,    # [N, B, H]     f32 scratch: dh arriving at h_t, the program's own units
    dc_scr,    # [N, B, H]     f32 scratch: dc arriving at c_t, the program's own units
    bar,       # [N, Q, 32]    int32 arrivals per barrier group, zero at launch
    T, B,      # runtime: never specialized
    S_BEGIN, S_END,   # iterations r this launch runs, of 0 .. T (SYNC: all; else one per launch)
    H: tl.constexpr, N: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr, HAS_LENGTHS: tl.constexpr, DOT_PREC: tl.constexpr,
    F32_DOT: tl.constexpr, SYNC: tl.constexpr,
):
    """Iteration r (0 .. T): phase B of step T-r (if r > 0): dh_{t-1} of the
    program's units from every unit's dG_t, read from dgx; then phase A of
    step T-1-r (if r < T): the cell backward of the program's units, dG into
    dgx; then the barrier (every dG of that step is in dgx before phase B of
    the next iteration reads it). One barrier per step."""
    n = tl.program_id(0)
    q = tl.program_id(1)
    j = tl.program_id(2)
    Q = tl.num_programs(1)
    S = tl.num_programs(2)
    w_n = w_hh + n * (4 * H * H)
    rj = j * BLOCK_H + tl.arange(0, BLOCK_H)                    # [BH] this program's units
    # every unit in KC chunks of BK, batched dots summed over chunks (see the forward)
    KC: tl.constexpr = 4
    BK: tl.constexpr = BLOCK_K // KC
    rk3 = tl.arange(0, KC)[:, None, None] * BK + tl.arange(0, BK)[None, None, :]   # [KC, 1, BK]
    wk = tl.arange(0, KC)[:, None, None] * BK + tl.arange(0, BK)[None, :, None]    # [KC, BK, 1]
    # W slices [c, j, k] = w_hh[n, g*H + c*BK + j, k] for the program's k: dh[k] = sum_g dG_g W_g[:, k]
    w_i = _w_tile(w_n, 0, wk, rj[None, None, :], H)
    w_f = _w_tile(w_n, 1, wk, rj[None, None, :], H)
    w_g = _w_tile(w_n, 2, wk, rj[None, None, :], H)
    w_o = _w_tile(w_n, 3, wk, rj[None, None, :], H)
    bar_q = bar + (n * Q + q) * 32
    for r in range(S_BEGIN, S_END):
        if r > 0:        # phase B of step s = T - r
            s = T - r
            for p in range(q, (B + BLOCK_B - 1) // BLOCK_B, Q):
                rb = p * BLOCK_B + tl.arange(0, BLOCK_B)
                b_ok = rb < B
                L = _row_lengths(lengths, rb, b_ok, T, HAS_LENGTHS)
                t, valid, t_prev, first, last = _step_time(s, L, n)
                row = (t * B + rb) * N + n
                g_off = row[None, :, None] * (4 * H) + rk3                # [KC, BB, BK]
                k_ok = b_ok[None, :, None] & (rk3 < H) & valid[None, :, None]
                # every unit's dG_t, written by the group's S programs (.cg: from L2)
                acc = _dot(tl.load(dgx + g_off, mask=k_ok, other=0.0, cache_modifier=".cg"),
                           w_i, DOT_PREC, F32_DOT)
                acc += _dot(tl.load(dgx + g_off + H, mask=k_ok, other=0.0, cache_modifier=".cg"),
                            w_f, DOT_PREC, F32_DOT)
                acc += _dot(tl.load(dgx + g_off + 2 * H, mask=k_ok, other=0.0, cache_modifier=".cg"),
                            w_g, DOT_PREC, F32_DOT)
                acc += _dot(tl.load(dgx + g_off + 3 * H, mask=k_ok, other=0.0, cache_modifier=".cg"),
                            w_o, DOT_PREC, F32_DOT)
                dh = _ksum(acc)
                st_off = (n * B + rb)[:, None] * H + rj[None, :]
                j_ok = b_ok[:, None] & (rj < H)[None, :]
                tl.store(dh_scr + st_off, dh, mask=j_ok)
                tl.store(dh0 + st_off, dh.to(dh0.dtype.element_ty), mask=j_ok & first[:, None])
            tl.debug_barrier()   # dh_scr (written above by any warp) is read by phase A below
        if r < T:        # phase A of step s = T - 1 - r
            s = T - 1 - r
            for p in range(q, (B + BLOCK_B - 1) // BLOCK_B, Q):
                rb = p * BLOCK_B + tl.arange(0, BLOCK_B)
                b_ok = rb < B
                L = _row_lengths(lengths, rb, b_ok, T, HAS_LENGTHS)
                t, valid, t_prev, first, last = _step_time(s, L, n)
                row = (t * B + rb) * N + n
                enter = last[:, None]                           # the row's last forward step
                j_ok = b_ok[:, None] & (rj < H)[None, :]
                st_off = (n * B + rb)[:, None] * H + rj[None, :]
                dh = tl.load(dh_n + st_off, mask=j_ok & enter, other=0.0).to(tl.float32)
                dh += tl.load(dh_scr + st_off, mask=j_ok & ~enter, other=0.0)
                dc = tl.load(dc_n + st_off, mask=j_ok & enter, other=0.0).to(tl.float32)
                dc += tl.load(dc_scr + st_off, mask=j_ok & ~enter, other=0.0)
                c_first = tl.load(c0 + st_off, mask=j_ok & first[:, None], other=0.0).to(tl.float32)
                dp_i, dp_f, dp_g, dp_o, dc = _cell_bwd_and_store(
                    dh, dc, c_first, row, (t_prev * B + rb) * N + n, rb, rj, j_ok, valid, first, n,
                    dy, gates, cells, dgx, dc0, B, H)
                tl.store(dc_scr + st_off, dc, mask=j_ok)
        _arrive_and_wait(bar_q, S * (r + 1), SYNC)


# -------------------------------------------------------------------- helpers
@triton.jit
def _row_lengths(lengths, rb, b_ok, T, HAS_LENGTHS: tl.constexpr):
    """[BB] int32 valid length of each row, clamped into 1..T (in int64, before
    the int32 cast: 2**32 + 2 must not become 2); 0 for padding rows (never
    valid). The op clamps GPU lengths the same way (docs/design.md §5); the
    clamp here is what keeps every index in bounds whoever calls the kernel."""
    if HAS_LENGTHS:
        L = tl.load(lengths + rb, mask=b_ok, other=1)
        L = tl.minimum(tl.maximum(L, 1), T).to(tl.int32)
        L = tl.where(b_ok, L, 0)
    else:
        L = tl.where(b_ok, T, 0)
    return L


@triton.jit
def _arrive_and_wait(bar, target, SYNC: tl.constexpr):
    """The SPLIT per-step barrier of one group of S programs. `bar` counts
    arrivals and only ever grows (zeroed once, before the launch), so step s
    waits for S*(s+1) and nothing is reset: no ABA, no second counter.
    Arrive: every warp's stores of the step are issued (bar.sync), then one
    release atomic at GPU scope. Wait (SYNC only): spin on volatile loads (no
    atomic per poll), then one acquire atomic that orders this program's
    next reads after every arrival it saw; then bar.sync, so no warp runs
    ahead. Without SYNC (one launch per step; the interpreter) the arrival is
    still counted: tests check the count, S*T per group."""
    tl.debug_barrier()
    tl.atomic_add(bar, 1, sem="release", scope="gpu")
    if SYNC:
        seen = tl.load(bar, volatile=True)
        while seen < target:
            seen = tl.load(bar, volatile=True)
        tl.atomic_add(bar, 0, sem="acquire", scope="gpu")
        tl.debug_barrier()


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
    """[M, K] x [K, N] -> f32 [M, N] (or batched, [C, M, K] x [C, K, N]); operands in X. F32_DOT (interpreter and
    bf16 only): Triton 3.9's interpreter multiplies the raw bits of bf16
    operands, so there the same bf16 values are multiplied in fp32 (exact
    products, fp32 sums: what the bf16 tensor-core dot computes)."""
    if F32_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PREC)


@triton.jit
def _ksum(x):
    """[KC, BB, BH] -> [BB, BH], the sum over K chunks. tl.reduce (a builtin)
    with triton.language's own sum combine, not tl.sum: tl.sum is one of
    triton.language's @jit helpers, which an interpreted kernel cannot call
    (see _sigmoid), while the interpreter (3.6 and 3.9) runs a reduce with
    exactly this combine as one np.sum -- with a combine of ours it reduced
    element by element in Python (26 of 32 s of a tiny SPLIT forward)."""
    return tl.reduce(x, 0, tl.standard._sum_combine)


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
                    y, h_n, c_n, gates, cells, B, H, KEEP_FOR_BACKWARD: tl.constexpr):
    """The LSTM cell on [BB, BH] f32 pre-activations; stores y (0 if invalid),
    h_n/c_n at the row's last valid step, and the workspace. -> h_t, c_t (f32),
    exactly 0 outside `ok`: a padded lane's pre-activation can be NaN (an Inf
    h_{t-1} times a padded zero of W), and RESIDENT feeds h_t to the next dot."""
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
    if KEEP_FOR_BACKWARD:
        g_off = row[:, None] * (4 * H) + rj[None, :]
        tl.store(gates + g_off, i, mask=ok & v)
        tl.store(gates + g_off + H, f, mask=ok & v)
        tl.store(gates + g_off + 2 * H, g, mask=ok & v)
        tl.store(gates + g_off + 3 * H, o, mask=ok & v)
        tl.store(cells + row[:, None] * H + rj[None, :], c, mask=ok & v)
    return tl.where(ok, h, 0.0), tl.where(ok, c, 0.0)


@triton.jit
def _cell_bwd_and_store(dh, dc, c_first, row, prev_row, rb, rj, ok, valid, first, n,
                        dy, gates, cells, dgx, dc0, B, H):
    """Backward of one cell step on a [BB, BH] tile: dh, dc are the gradients
    arriving at h_t, c_t (f32). Stores dG_t into dgx (zero if invalid) and dc0
    at s = 0. -> dG_i, dG_f, dG_g, dG_o (f32, zero if invalid and outside `ok`:
    RESIDENT feeds them to the dh dot, where a padded lane's NaN -- from a
    padded dh column, Inf dG times a padded zero of W -- would meet the real
    lanes), dc_{t-1}."""
    v = ok & valid[:, None]
    ld = v
    g_off = row[:, None] * (4 * H) + rj[None, :]
    i = tl.load(gates + g_off, mask=ld, other=0.0)
    f = tl.load(gates + g_off + H, mask=ld, other=0.0)
    g = tl.load(gates + g_off + 2 * H, mask=ld, other=0.0)
    o = tl.load(gates + g_off + 3 * H, mask=ld, other=0.0)
    c_t = tl.load(cells + row[:, None] * H + rj[None, :], mask=ld, other=0.0)
    # c_{t-1}: cells at the previous step's time, or c0 at s = 0
    f0 = first[:, None]
    c_prev = tl.load(cells + prev_row[:, None] * H + rj[None, :], mask=ld & ~f0, other=0.0)
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
