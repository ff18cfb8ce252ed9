"""The stages of ``bilstm-bench check`` (docs/gpu.md). check.py runs each one
in its own subprocess with a timeout; a stage is ``fn(ctx, events) -> dict``:

    ctx     the run's settings (check.py's Context as a dict): emulate, full,
            device ("cuda:0" or "cpu"), backend (per-backend stages), backends,
            dtypes, seed, jobs, budget_s
    events  events(**fields) appends one line to the stage's event log; on a
            hang the parent reports the last one (which case was running)
    ->      {"verdict": "pass" | "fail" | "skip", "detail": str, "worst": str,
             "worst_err": float | None, "bound": float | None, "cases": [...],
             "notes": [...], ...stage-specific keys}

Legend (docs/design.md §0): T steps, B batch, N directions, H hidden size, X the dtype.
Under --emulate the device is the CPU: the cuda backend runs its kernels
compiled against csrc/cuda/emu.h (BILSTM_FAST_CUDA_EMULATE=1, set by
check.py), the triton backend in Triton's interpreter (CPU tensors)
in the stage's environment before anything is imported.
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Optional

import torch

from . import check_cases as cc
from .workload import DTYPES

GPU_BACKENDS = ("cuda", "triton")
AUTO_HS = (17, 64, 128, 256, 512, 1024, 4096)


# ----------------------------------------------------------------- helpers
def _device(ctx) -> torch.device:
    return torch.device(ctx["device"])


def _setup(ctx) -> None:
    from .device import set_tf32
    set_tf32(False)                      # fp32 is fp32, in our kernels and in cuBLAS / cuDNN
    torch.manual_seed(ctx.get("seed", 0))
    if _device(ctx).type == "cuda" and _device(ctx).index is not None:
        torch.cuda.set_device(_device(ctx))


def _backend(ctx):
    from bilstm_fast.ops import backends
    return backends.get(ctx["backend"])


def _spec(device: torch.device, dtype: torch.dtype, N: int, H: int, lengths: bool):
    from bilstm_fast.ops import backends
    return backends.CallSpec(device.type, dtype, N, H, H, False, lengths)


def summarize(cases: list, what: str = "cases") -> dict:
    """Stage verdict from case dicts {ok, err, bound, worst, detail, label}."""
    if not cases:
        return dict(verdict="skip", detail=f"no {what} to run", worst="", worst_err=None, bound=None)
    scored = [c for c in cases if c.get("bound")]
    top = max(scored, key=lambda c: c["err"] / c["bound"]) if scored else cases[0]
    bad = [c for c in cases if not c["ok"]]
    if bad:
        detail = f"{len(bad)} of {len(cases)} {what} failed; first: {bad[0]['label']}: {bad[0]['detail']}"
    elif scored:
        detail = f"{len(cases)} {what} passed; closest to its bound: {top['label']}: {top['detail']}"
    else:
        detail = f"{len(cases)} {what} passed; e.g. {top['label']}: {top['detail']}"
    return dict(verdict="fail" if bad else "pass", detail=detail, worst=top.get("label", ""),
                worst_err=top.get("err"), bound=top.get("bound"))


def _cases(ctx) -> tuple:
    if ctx["emulate"]:
        return cc.EMU_CASES
    return cc.FULL_CASES if ctx["full"] else cc.GPU_CASES


def _plans(mod, spec, notes: list) -> list:
    texts, note = cc.plans_of(mod, spec)
    if note and note not in notes:
        notes.append(note)
    return [None] + texts


# ------------------------------------------------------------- environment
def environment(ctx, events) -> dict:
    """The machine and what the dispatcher makes of it: GPU, SMs, driver,
    the CUDA runtime of torch and of bilstm_fast._cuda, cuDNN, Triton, every
    backend's status, which backend backend="auto" takes per dtype and H
    (and its plan), whether each GPU backend provides plans(). Fails when a
    GPU backend cannot run here (so the run cannot prove it)."""
    from bilstm_fast.ops import backends, cuda_compat, native

    from .device import environment as env_of

    device = _device(ctx)
    if device.type == "cuda" and not torch.cuda.is_available():
        return dict(verdict="fail", environment=env_of(torch.device("cpu")), backends={}, device_ok=False,
                    detail=f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device; "
                           f"driver: {cuda_compat.driver_facts().describe()}")
    _setup(ctx)
    env = env_of(device)
    facts: dict = {"driver": cuda_compat.driver_facts().describe(),
                   "driver_cuda": cuda_compat.version_text(cuda_compat.driver_facts().cuda),
                   "torch_cuda": torch.version.cuda}
    for name in ("_cuda", "_cuda_emu"):
        mod = native.load(name)
        facts[name] = mod if isinstance(mod, str) else {
            k: (cuda_compat.version_text(v) if k == "cuda_version" and v else v)
            for k, v in mod.info().items() if k != "kernels"}
    if device.type == "cuda":
        d = cuda_compat.device_facts(device.index or 0)
        built = native.load("_cuda")
        archs = [] if isinstance(built, str) else built.info()["archs"]
        facts["device"] = None if d is None else dict(
            name=d.name, cc=f"{d.cc[0]}.{d.cc[1]}", sm_count=d.sm_count, smem_optin=d.smem_optin,
            cooperative=d.cooperative, cuda_kernels=cuda_compat.cuda_arch_note(d, archs))
    status = backends.backend_status()
    facts["backends"] = status
    gpu = [b for b in ctx["backends"] if b in GPU_BACKENDS]
    problems, notes = [], []
    for b in gpu:
        if status.get(b) is not None:
            problems.append(f"{b}: {status[b]}")
            continue
        mod = backends.get(b)
        probe = cc.EMU_PROBE_H if ctx["emulate"] else cc.PROBE_H
        for dt in ("fp32", "fp16", "bf16"):
            why = mod.unsupported_reason(_spec(device, DTYPES[dt], 2, probe, True))
            if why:
                problems.append(f"{b} {dt}: {why}")
        if getattr(mod, "plans", None) is None:
            notes.append(f"{b}: no plans() in {mod.__name__}: only the dispatcher's own choice is checked")
    auto = {}
    for dt in ("fp32", "fp16", "bf16", "fp64"):
        for H in AUTO_HS:
            try:
                name = backends.resolve_backend("auto", device.type, DTYPES[dt], 2, H, H, False, True)
                auto[f"{dt} H{H}"] = name
                if name in GPU_BACKENDS:    # and what it runs at B=32, and what plans() offers
                    mod, spec = backends.get(name), _spec(device, DTYPES[dt], 2, H, True)
                    auto[f"{dt} H{H}"] += (f" ({cc.plan_used(name, mod, spec, 32, None)}; "
                                           f"plans: {cc.plans_of(mod, spec)[0]})")
            except Exception as e:  # reported, and a failure: auto must always resolve
                auto[f"{dt} H{H}"] = f"error: {type(e).__name__}: {e}"
                problems.append(f"auto {dt} H{H}: {type(e).__name__}: {e}")
    facts["auto"] = auto
    events(step="facts", device=env.get("device_name"))
    usable = [b for b in gpu if status.get(b) is None]
    detail = (f"{env.get('device_name')}; {facts['driver']}; torch CUDA {torch.version.cuda or 'none'}; "
              f"GPU backends usable: {', '.join(usable) or 'none'}")
    return dict(verdict="fail" if problems else "pass", environment=env, facts=facts, backends=status,
                detail=("; ".join(problems) + " | " + detail) if problems else detail, notes=notes,
                worst="", worst_err=None, bound=None)


# ------------------------------------------------------------------ compile
def triton_variants(ctx) -> list:
    """Every Triton kernel specialisation the later stages launch: (H, X, N,
    lengths, keep_for_backward) -- H, dtype, N and the flags are compile-time
    (T and B are not: tests/test_triton.py checks no recompile)."""
    dtypes = ctx["dtypes"]
    out = set()
    for case in _cases(ctx):
        for dt in dtypes:
            out.add((case.H, dt, case.N, case.lengths is not None, True))
    mcase = cc.EMU_MODULE_CASE if ctx["emulate"] else cc.GPU_MODULE_CASE
    for dt in dtypes:
        out.add((mcase.H, dt, 2, True, True))
    for shape in determinism_shapes(ctx):
        out.add((shape[0].H, shape[1], shape[0].N, shape[0].lengths is not None, True))
    graphs = [] if ctx["emulate"] else graph_shapes(ctx)      # no CUDA graphs under --emulate
    for stage_shapes in (streams_shapes(ctx), graphs, [big_shape(ctx)]):
        for case, dt in stage_shapes:
            out.add((case.H, dt, case.N, case.lengths is not None, True))
            out.add((case.H, dt, case.N, case.lengths is not None, False))
    if not ctx["emulate"]:
        from .shapes import default_sweep
        for shape, modes in default_sweep("cuda"):
            for dt in dtypes:
                for packed in (False, True):
                    for mode in modes:
                        out.add((shape.H, dt, shape.N, packed, mode == "training"))
    return sorted(out)


def append_event(path: Optional[str], **fields) -> None:
    """One line of a stage's event log (also from its worker processes)."""
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"t": round(time.time(), 2), **fields}, default=str) + "\n")


def _compile_chunk(variants: list, ctx: dict, events_path: Optional[str] = None) -> list:
    """In a worker process: launch each variant once at T=2, B=1 (compiles it
    into Triton's on-disk cache, which the later stages then hit), with every
    plan text plans() gives for it."""
    _setup(ctx)
    from bilstm_fast.ops import backends
    mod = backends.get("triton")
    device = _device(ctx)
    out = []
    for H, dt, N, has_lengths, keep in variants:
        spec = _spec(device, DTYPES[dt], N, H, has_lengths)
        for text in [None] + cc.plans_of(mod, spec)[0]:
            label = f"{dt} H{H} N{N}{' len' if has_lengths else ''}{' keep' if keep else ''} {text or 'auto'}"
            append_event(events_path, worker=os.getpid(), variant=label)
            t0 = time.perf_counter()
            try:
                x = cc.cast(cc.op_inputs(cc.OpCase(2, 1, H, N, [2] if has_lengths else None), device), DTYPES[dt])
                plan = mod.parse_plan(text) if text else None
                if keep:
                    cc.run_kernels(mod, x, plan)
                else:
                    mod.forward(x["gx"], x["w_hh"], None, x["h0"], x["c0"], x["lengths"], False, plan)
                cc.sync(device)
                out.append(dict(label=label, ok=True, seconds=round(time.perf_counter() - t0, 2), detail="ok"))
            except Exception as e:  # a compile error is a finding: report it, go on
                out.append(dict(label=label, ok=False, seconds=round(time.perf_counter() - t0, 2),
                                detail=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"))
    return out


def compile_triton(ctx, events) -> dict:
    """Compile (and launch once, tiny) every Triton kernel variant the later
    stages use, in ``jobs`` parallel worker processes, so that no later stage
    -- and no timing -- pays for a compile, and a compile error shows up
    here, named. Under --emulate the interpreter compiles nothing; the same
    launches still run."""
    from bilstm_fast.ops import backends

    if "triton" not in ctx["backends"] or backends.backend_status()["triton"] is not None:
        return dict(verdict="skip", detail="the triton backend is not run here", worst="",
                    worst_err=None, bound=None)
    variants = triton_variants(ctx)
    jobs = max(1, min(ctx.get("jobs", 1), len(variants)))
    chunks = [variants[i::jobs] for i in range(jobs)]
    events(step="compile", variants=len(variants), jobs=jobs)
    t0 = time.perf_counter()
    path = getattr(events, "path", None)
    if jobs == 1:
        results = _compile_chunk(variants, ctx, path)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            results = [r for part in pool.map(_compile_chunk, chunks, [ctx] * jobs, [path] * jobs) for r in part]
    bad = [r for r in results if not r["ok"]]
    slowest = max(results, key=lambda r: r["seconds"]) if results else None
    detail = (f"{len(results)} launches ({len(variants)} variants) in {time.perf_counter() - t0:.0f} s "
              f"on {jobs} workers; slowest {slowest['label']} {slowest['seconds']} s" if slowest else "nothing")
    if bad:
        detail = f"{len(bad)} of {len(results)} failed; first: {bad[0]['label']}: {bad[0]['detail']} | {detail}"
    return dict(verdict="fail" if bad else "pass", detail=detail, cases=results, worst="",
                worst_err=None, bound=None)


# -------------------------------------------------------------- correctness
def correct(ctx, events) -> dict:
    """The backend on the stage's device against the float64 reference:
    every case x dtype x plan (the dispatcher's and every one plans() lists),
    forward and backward through the op (outputs and the grads of gx, w_hh,
    h0, c0), y and dgx exactly 0 past each length; then BiLSTM on a
    PackedSequence (unsorted lengths, 2 layers) against nn.LSTM in float64,
    outputs and the grads of the input and every parameter."""
    _setup(ctx)
    device, backend, mod = _device(ctx), ctx["backend"], _backend(ctx)
    notes, rows = [], []
    for dt in ctx["dtypes"]:
        X = DTYPES[dt]
        for case in _cases(ctx):
            spec = _spec(device, X, case.N, case.H, case.lengths is not None)
            plans = _plans(mod, spec, notes)
            events(case=f"{dt} {case.label}", plans=[p or "auto" for p in plans])
            for r in cc.check_op_case(backend, case, dt, device, plans, seed=ctx.get("seed", 0)):
                r["label"] = f"{dt} {case.label} plan={r['plan']}"
                r["ran"] = "" if r["plan"] == "unsupported" else cc.plan_used(
                    backend, mod, spec, case.B, None if r["plan"] == "auto" else r["plan"])
                rows.append(r)
        mcase = cc.EMU_MODULE_CASE if ctx["emulate"] else cc.GPU_MODULE_CASE
        events(case=f"{dt} {mcase.label}")
        r = cc.check_module_case(backend, mcase, dt, device, seed=ctx.get("seed", 0))
        r["label"] = f"{dt} {mcase.label}"
        rows.append(r)
    return dict(summarize(rows), cases=rows, notes=notes)


# -------------------------------------------------------------- determinism
def determinism_shapes(ctx) -> list:
    if ctx["emulate"]:
        return [(cc.OpCase(3, 3, 13, 2, [3, 1, 2]), "fp32")]
    shapes = [(cc.OpCase(64, 128, 1040), "bf16"), (cc.OpCase(64, 7, 256), "fp32")]
    return shapes + ([(cc.OpCase(64, 256, 512), "fp16")] if ctx["full"] else [])


def determinism(ctx, events) -> dict:
    """The kernels' outputs (y, h_n, c_n, dgx, dh0, dc0) over repeated runs
    on the same inputs, every plan: bitwise equal (the kernels use no float
    atomics, so any difference is a race)."""
    _setup(ctx)
    device, mod = _device(ctx), _backend(ctx)
    reps = 3 if ctx["emulate"] else (20 if ctx["full"] else 5)
    notes, rows = [], []
    for case, dt in determinism_shapes(ctx):
        refused = cc.refusal(ctx["backend"], case, dt, device)
        if refused is not None:     # e.g. H past the cuda backend's on-chip limit on this GPU
            rows.append(dict(refused, label=f"{dt} {case.label} plan=unsupported"))
            continue
        x = cc.cast(cc.op_inputs(case, device, ctx.get("seed", 0)), DTYPES[dt])
        for text in _plans(mod, _spec(device, DTYPES[dt], case.N, case.H, case.lengths is not None), notes):
            label = f"{dt} {case.label} plan={text or 'auto'}"
            events(case=label, reps=reps)
            plan = mod.parse_plan(text) if text else None
            first = cc.run_kernels(mod, x, plan)
            diffs = {}
            for _ in range(reps - 1):
                again = cc.run_kernels(mod, x, plan)
                for k, v in again.items():
                    if not torch.equal(v, first[k]):
                        d = (v.double() - first[k].double()).abs()
                        n = int((d != 0).sum()) + int(torch.isnan(d).sum())
                        prev = diffs.get(k, (0, 0.0))
                        diffs[k] = (max(prev[0], n), max(prev[1], float(d.nan_to_num(float("inf")).max())))
            cc.sync(device)
            ok = not diffs
            detail = (f"{reps} runs bitwise equal" if ok else "differs between runs (a race): " + ", ".join(
                f"{k}: {n} elements, max {m:.2e}" for k, (n, m) in diffs.items()))
            rows.append(dict(label=label, ok=ok, detail=detail, err=0.0 if ok else max(m for _, m in diffs.values()),
                             bound=None))
    out = summarize(rows, "shapes x plans")
    return dict(out, cases=rows, notes=notes, worst_err=None if out["verdict"] == "pass" else out["worst_err"])


# ------------------------------------------------------------------ streams
def streams_shapes(ctx) -> list:
    if ctx["emulate"]:
        return [(cc.OpCase(3, 2, 9, 2, [3, 2]), "fp32")]
    return [(cc.OpCase(32, 32, 512), "fp16"), (cc.OpCase(32, 8, 256), "fp32")]


def streams(ctx, events) -> dict:
    """Two calls of the backend at once on two streams, plus a large GEMM
    on a third, three rounds: each result bitwise equal to the same call
    run alone (the persistent kernels' co-residency and their barriers under
    contention). --emulate: three host threads instead of streams."""
    if ctx["emulate"] and ctx["backend"] == "triton":
        return dict(verdict="skip", detail="Triton's interpreter runs one program at a time in Python: "
                    "nothing concurrent to check under --emulate", worst="", worst_err=None, bound=None)
    _setup(ctx)
    device, mod = _device(ctx), _backend(ctx)
    rows = []
    for case, dt in streams_shapes(ctx):
        X = DTYPES[dt]
        refused = cc.refusal(ctx["backend"], case, dt, device)
        if refused is not None:
            rows.append(dict(refused, label=f"{dt} {case.label}"))
            continue
        xa = cc.cast(cc.op_inputs(case, device, 1), X)
        xb = cc.cast(cc.op_inputs(case, device, 2), X)
        alone = [cc.run_kernels(mod, xa), cc.run_kernels(mod, xb)]
        cc.sync(device)
        n = 512 if device.type == "cpu" else 8192
        m = torch.randn(n, n, device=device, dtype=X if device.type == "cuda" else torch.float32)
        label = f"{dt} {case.label}"
        events(case=label)
        results = []
        for _ in range(3):
            if device.type == "cuda":
                s1, s2, s3 = (torch.cuda.Stream(device) for _ in range(3))
                for s in (s1, s2, s3):
                    s.wait_stream(torch.cuda.current_stream(device))
                out = [None, None]
                with torch.cuda.stream(s3):     # results freed at once: the allocator orders reuse on s3
                    for _ in range(8):
                        torch.mm(m, m)
                with torch.cuda.stream(s1):
                    out[0] = cc.run_kernels(mod, xa)
                with torch.cuda.stream(s2):
                    out[1] = cc.run_kernels(mod, xb)
                torch.cuda.synchronize(device)
            else:
                out = [None, None]

                def call(i, x):
                    out[i] = cc.run_kernels(mod, x)
                threads = [threading.Thread(target=call, args=(0, xa)), threading.Thread(target=call, args=(1, xb)),
                           threading.Thread(target=lambda: [m @ m for _ in range(4)])]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
            results.append(out)
        bad = [f"round {r} call {'ab'[i]} {k}" for r, out in enumerate(results) for i in (0, 1)
               for k, v in out[i].items() if not torch.equal(v, alone[i][k])]
        rows.append(dict(label=label, ok=not bad, err=None, bound=None,
                         detail="3 rounds bitwise equal to the calls alone" if not bad
                         else f"differs from the call alone: {', '.join(bad[:4])}"))
    return dict(summarize(rows, "shapes"), cases=rows, worst_err=None, bound=None)


# -------------------------------------------------------------------- graph
def graph_shapes(ctx) -> list:
    return [(cc.OpCase(16, 8, 256, 2, "random"), "bf16"), (cc.OpCase(16, 8, 256, 2, "random"), "fp32")]


def _capture(fn, device, side, reset=lambda: None):
    """(graph, outputs) of ``fn`` captured in a CUDA graph, after two warm-up
    calls on the side stream ``side`` (torch's recipe: the warm-up allocations
    and any lazy initialisation happen outside the capture); ``reset`` runs
    before every call (e.g. clearing .grad)."""
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            reset()
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    reset()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        outs = fn()
    return g, outs


def _graph_case(mod_name: str, case, dt: str, device, seed: int) -> list:
    """Capture (1) the op forward without grad, (2) the op forward + backward,
    (3) BiLSTM inference, in CUDA graphs; replay each with new values copied
    into the captured inputs (lengths included); compare with eager runs on
    those values."""
    from bilstm_fast import BiLSTM
    from bilstm_fast.ops import lstm_recurrence

    X = DTYPES[dt]
    rows = []
    x0 = cc.cast(cc.op_inputs(case, device, seed), X)
    static = {k: v.clone() for k, v in x0.items()}
    side = torch.cuda.Stream(device)

    def fresh(i):
        return cc.cast(cc.op_inputs(case, device, seed + 100 + i), X)

    # (1) forward, no grad
    def fwd():
        with torch.no_grad():
            return lstm_recurrence(static["gx"], static["w_hh"], static["h0"], static["c0"],
                                   lengths=static["lengths"], backend=mod_name)
    g, outs = _capture(fwd, device, side)
    rows.append(_replays("op forward", g, static, outs, fresh,
                         lambda x: lstm_recurrence(x["gx"], x["w_hh"], x["h0"], x["c0"], lengths=x["lengths"],
                                                   backend=mod_name), case, dt))

    # (2) forward + backward of the op
    leaves = {k: static[k].detach().clone().requires_grad_() for k in ("gx", "w_hh", "h0", "c0")}

    def train():
        y, h, c = lstm_recurrence(leaves["gx"], leaves["w_hh"], leaves["h0"], leaves["c0"],
                                  lengths=static["lengths"], backend=mod_name)
        torch.autograd.backward((y, h, c), (static["dy"], static["dh_n"], static["dc_n"]))
        return y, h, c

    def no_grads():
        for v in leaves.values():
            v.grad = None
    g2, (y, h, c) = _capture(train, device, side, reset=no_grads)
    captured = (y, h, c, *(leaves[k].grad for k in ("gx", "w_hh", "h0", "c0")))

    def fill(x):
        with torch.no_grad():
            for k in ("gx", "w_hh", "h0", "c0"):
                leaves[k].copy_(x[k])
            for k in ("dy", "dh_n", "dc_n", "lengths"):
                if static[k] is not None:
                    static[k].copy_(x[k])

    def eager_train(x):
        r = cc.run_op(x, mod_name)
        return tuple(r[k] for k in ("y", "h_n", "c_n", "d_gx", "d_w_hh", "d_h0", "d_c0"))
    rows.append(_replays("op forward+backward", g2, None, captured, fresh, eager_train, case, dt, fill=fill,
                         gemm=(4,)))    # d_w_hh

    # (3) BiLSTM inference, padded input
    torch.manual_seed(seed)
    model = BiLSTM(32, case.H, num_layers=2, device=device, dtype=X, backend=mod_name)
    xs = torch.randn(case.T, case.B, 32, device=device, dtype=X)

    def infer():
        with torch.no_grad():
            out, (hh, cc_) = model(xs)
        return out, hh, cc_
    g3, mout = _capture(infer, device, side)

    def fill3(x):
        xs.copy_(x["x"])

    def fresh3(i):
        return {"x": torch.randn(case.T, case.B, 32, device=device, dtype=X)}

    def eager3(x):
        with torch.no_grad():
            out, (hh, cc_) = model(x["x"])
        return out, hh, cc_
    rows.append(_replays("BiLSTM inference", g3, None, mout, fresh3, eager3, case, dt, fill=fill3,
                         gemm=(0, 1, 2)))   # everything depends on the input-projection GEMMs
    return rows


def _replays(what, graph, static, captured, fresh, eager, case, dt, fill=None, gemm=()) -> dict:
    """Replay ``graph`` twice with new inputs; every captured output must
    equal an eager run on those inputs: bitwise where our kernels produce it
    (same kernels, same plans), within 4 eps of X (scaled) for the outputs at
    positions ``gemm``, which come from cuBLAS GEMMs (dW_hh, the module's
    input projections) whose algorithm may differ under capture."""
    tol = 4 * torch.finfo(DTYPES[dt]).eps
    worst, ok, inexact = 0.0, True, False
    for i in range(2):
        x = fresh(i)
        if fill is not None:
            fill(x)
        else:
            for k, v in x.items():
                if static.get(k) is not None:
                    static[k].copy_(v)
        graph.replay()
        want = eager(x)
        torch.cuda.synchronize()
        for j, (got, w) in enumerate(zip(captured, want)):
            if torch.equal(got, w):
                continue
            err = float((got.double() - w.double()).abs().max() / w.double().abs().max().clamp_min(1e-30))
            worst = max(worst, err if err == err else float("inf"))
            if j in gemm and err <= tol:
                inexact = True
            else:
                ok = False
    detail = ("2 replays with new inputs equal to eager" + (f" (GEMM outputs within {tol:.1e})" if inexact
                                                            else ", bitwise") if ok
              else f"replay differs from eager: scaled {worst:.2e}")
    return dict(label=f"{dt} {case.label} {what}", ok=ok, err=worst, bound=None, detail=detail)


def graph(ctx, events) -> dict:
    """CUDA-graph capture and replay through the op (forward; forward +
    backward) and through BiLSTM, with new input values (lengths included)
    between replays. No host sync inside the op is what makes capture
    possible; a sync or a host read of a device tensor fails the capture."""
    if ctx["emulate"] or _device(ctx).type != "cuda":
        return dict(verdict="skip", detail="CUDA graphs need a GPU (not run under --emulate)",
                    worst="", worst_err=None, bound=None)
    _setup(ctx)
    rows = []
    for case, dt in graph_shapes(ctx):
        events(case=f"{dt} {case.label}")
        try:
            rows += _graph_case(ctx["backend"], case, dt, _device(ctx), ctx.get("seed", 0))
        except Exception as e:  # a capture error is this stage's finding: say which case
            rows.append(dict(label=f"{dt} {case.label}", ok=False, err=None, bound=None,
                             detail=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"))
            torch.cuda.synchronize()
    return dict(summarize(rows, "captures"), cases=rows, worst_err=None, bound=None)


# ---------------------------------------------------------------------- big
def big_shape(ctx) -> tuple:
    """More than 2^31 gate elements ([T, B, N, 4H]: 1024*256*2*4160 =
    2.18e9) on a GPU; tiny under --emulate (the same code path, 2^31 not
    reached)."""
    if ctx["emulate"]:
        return cc.OpCase(3, 4, 8, 2, "random"), "bf16"
    return cc.OpCase(1024, 256, 1040, 2, "random"), "bf16"


def big(ctx, events) -> dict:
    """One forward + backward of the kernels with more than 2^31 elements in
    gx / gates / dgx (32-bit index overflow would show past t ~ 1008), then
    rows spread over the batch, the last one included, compared with the
    float64 reference run on just those rows (three-way bound)."""
    _setup(ctx)
    device, mod = _device(ctx), _backend(ctx)
    case, dt = big_shape(ctx)
    X = DTYPES[dt]
    T, B, N, H = case.T, case.B, case.N, case.H
    refused = cc.refusal(ctx["backend"], case, dt, device)
    if refused is not None:        # the backend does not run this H on this GPU (docs/cuda.md §3)
        row = dict(refused, label=f"{dt} {case.label}")
        return dict(summarize([row], "cases"), cases=[row],
                    notes=[f"{ctx['backend']} does not support {dt} H={H} here: 2^31 elements not reached"])
    events(case=f"{dt} {case.label}", gate_elements=T * B * N * 4 * H)
    g = torch.Generator(device=device).manual_seed(ctx.get("seed", 0))
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g, device=device, dtype=torch.float32) * scale).to(X)  # noqa: E731
    gx = torch.empty(T, B, N, 4 * H, device=device, dtype=X)
    for t in range(T):   # drawn per step: no fp32 temporary of the whole tensor
        gx[t] = r(B, N, 4 * H)
    x = dict(gx=gx, w_hh=r(N, 4 * H, H, scale=H ** -0.5), h0=r(N, B, H, scale=0.5), c0=r(N, B, H, scale=0.5),
             dy=r(T, B, N, H), dh_n=r(N, B, H), dc_n=r(N, B, H))
    lengths = torch.randint(T // 2, T + 1, (B,), generator=torch.Generator().manual_seed(3))
    rows_idx = sorted({0, 1, B // 2, B - 2, B - 1})
    lengths[rows_idx[0]] = lengths[rows_idx[-1]] = T          # these reach the largest offsets
    x["lengths"] = lengths.to(device)
    t0 = time.perf_counter()
    got = cc.run_kernels(mod, x)
    cc.sync(device)
    seconds = time.perf_counter() - t0
    idx = torch.tensor(rows_idx, device=device)
    pick = {"gx": 1, "h0": 1, "c0": 1, "dy": 1, "dh_n": 1, "dc_n": 1, "lengths": 0}
    sub = {k: (v if k not in pick else v.index_select(pick[k], idx)) for k, v in x.items()}
    got_sub = {k: v.index_select(1 if k in ("y", "dgx", "h_n", "c_n", "dh0", "dc0") else 0, idx)
               for k, v in got.items()}
    del got, x, gx
    from bilstm_fast.ops import reference
    ref64 = cc.run_kernels(reference, cc.cast(sub, X, torch.float64))
    ref_x = cc.run_kernels(reference, sub)
    j = cc.judge(got_sub, ref64, ref_x, dt)
    pad = cc.padding_error(got_sub, sub["lengths"])
    row = dict(label=f"{dt} {case.label} rows {rows_idx}", ok=j.ok and pad is None, err=j.err, bound=j.bound,
               detail=pad or j.detail, seconds=round(seconds, 2),
               gate_elements=T * B * N * 4 * H, errs={k: float(f"{v:.3e}") for k, v in j.errs.items()})
    notes = [] if not ctx["emulate"] else ["--emulate: tiny shape, 2^31 elements not reached"]
    return dict(summarize([row], "cases"), cases=[row], notes=notes)


# ------------------------------------------------------------------- timing
def timing_shapes() -> list:
    """The default GPU sweep (bilstm_fast/bench/shapes.py GRID, both modes),
    in an order that keeps a run cut short by its budget representative:
    L=1 before L=2, and within each the H / B pairs spread out."""
    from .shapes import default_sweep
    order = {(H, B): i for i, (H, B) in enumerate(
        (H, B) for B in (32, 1, 128, 8) for H in (256, 512, 128))}
    return sorted(default_sweep("cuda"), key=lambda sm: (sm[0].L, order[(sm[0].H, sm[0].B)]))


def timing(ctx, events) -> dict:
    """bilstm-bench's check-then-time (runner.run: each implementation in its
    own block after its warm-up, medians) on the default GPU sweep, fp32 /
    fp16 / bf16, padded and packed (unsorted lengths in T/4..T), nn.LSTM
    (cuDNN) and every GPU backend; stops starting cases at its budget and
    says how many it left out. Fails on a mismatch (a wrong result)."""
    from dataclasses import asdict, replace

    from bilstm_fast.ops import backends

    from . import runner
    from .device import device_peak
    from .timing import MEMORY_METHOD

    if ctx["emulate"]:
        return dict(verdict="skip", detail="no timing under --emulate", worst="", worst_err=None, bound=None)
    _setup(ctx)
    device = _device(ctx)
    status = backends.backend_status()
    bks = [b for b in ctx["backends"] if status.get(b) is None]
    full = ctx["full"]
    # 12 timed calls: 4 per block in each of the runner's 3 rotated rounds.
    settings = runner.Settings(device, bks, warmup=1 if full else 2, repeats=None if full else 12, memory=True)
    cases = runner.cases_of(timing_shapes(), ctx["dtypes"])
    # Each case padded, then packed: bilstm-bench's packed shapes (shapes.py:
    # unsorted lengths in T/4..T, fed as a PackedSequence).
    work = [c if not packed else runner.Case(replace(c.shape, packed=True), c.dtype, c.mode)
            for c in cases for packed in (False, True)]
    budget = ctx.get("budget_s") or float("inf")
    t0, rows, left = time.perf_counter(), [], 0
    for case in work:
        if time.perf_counter() - t0 > budget:
            left += 1
            continue
        events(case=f"{case.shape.label} {case.dtype} {case.mode}")
        rows += runner.run([case], settings)
    peak = device_peak(device, ctx["dtypes"])
    runner.add_pct_peak(rows, peak)
    bad = [r for r in rows if r.status == "mismatch"]
    errors = [r for r in rows if r.status == "error"]
    ours = [r for r in rows if r.backend != "torch" and r.speedup]
    spread = (f"speedup vs cuDNN {min(r.speedup for r in ours):.2f}x .. {max(r.speedup for r in ours):.2f}x"
              if ours else "nothing timed")
    detail = (f"{len(work) - left} of {len(work)} cases timed ({left} left out at the {budget:.0f} s budget); "
              f"{spread}; {len(bad)} mismatches, {len(errors)} errors")
    if bad:
        detail = f"mismatch: {bad[0].impl} {bad[0].shape} {bad[0].dtype} {bad[0].mode}: {bad[0].detail} | {detail}"
    return dict(verdict="fail" if bad else "pass", detail=detail, rows=[asdict(r) for r in rows],
                peak=peak.as_dict(), settings={"warmup": settings.warmup, "repeats": settings.repeats, "rounds": settings.rounds,
                                               "left_out": left, "backends": bks,
                                               "memory_method": MEMORY_METHOD[device.type]},
                worst="", worst_err=None, bound=None,
                notes=[f"{r.impl} {r.shape} {r.dtype} {r.mode}: {r.detail}" for r in errors[:10]])
