"""The sweep: for every (shape, dtype, mode), check each backend's BiLSTM
and each peer (peers.py) against nn.LSTM holding the same weights, then time
nn.LSTM and everything that passed in rotated blocks (timing.measure_rotated);
one Row per implementation, ratios against the nn.LSTM of the same run and,
for our rows, against the fastest exact peer (nn.LSTM or ONNX Runtime).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from .device import Peak
from .peers import PEERS
from .results import Row
from .shapes import Shape, flops
from .timing import ROUNDS, measure_rotated, peak_memory_mb
from .workload import (BASELINE, Oracle, build_baseline, build_bilstm, impl_label,
                       make_inputs, make_step, results_of)


@dataclass
class Case:
    shape: Shape
    dtype: str
    mode: str


@dataclass
class Settings:
    device: torch.device
    backends: list[str]        # BiLSTM backends to time (the baseline is always timed)
    warmup: int = 1
    repeats: int | None = None  # None: adaptive (timing.measure)
    memory: bool = True
    peers: list[str] = field(default_factory=list)  # names in peers.PEERS to time where they apply
    rounds: int = ROUNDS


def cases_of(sweep: Iterable[tuple[Shape, tuple[str, ...]]], dtypes: list[str]) -> list[Case]:
    return [Case(s, dt, m) for s, modes in sweep for dt in dtypes for m in modes]


def peers_for(case: Case, settings: Settings) -> list[str]:
    """The peers that apply to ``case`` (mode, dtype, device)."""
    return [n for n in settings.peers
            if PEERS[n].unsupported_reason(case.mode, case.dtype, settings.device) is None]


def _error_text(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}"[:300]


def run(cases: list[Case], settings: Settings,
        advance: Callable[[str], None] = lambda what: None) -> list[Row]:
    """Rows of every case (pct_peak left for ``add_pct_peak``);
    ``advance(description)`` is called as each implementation of a case is
    checked (1 + len(backends) + the case's peers per case), for a progress bar."""
    rows: list[Row] = []
    device = settings.device
    built: dict = {}  # (shape, dtype) -> (baseline, inputs, {name: BiLSTM or peer}); reused across modes
    for case in cases:
        key = (case.shape, case.dtype)
        if key not in built:
            built.clear()  # one shape's models at a time: big shapes must not pile up in memory
            base_model = build_baseline(case.shape, case.dtype, device)
            built[key] = (base_model, make_inputs(case.shape, case.dtype, device), {})
        base_model, inputs, impls = built[key]
        gflop = flops(case.shape, case.mode) / 1e9

        def row(backend: str, label: str | None = None, **kw) -> Row:
            return Row(shape=case.shape.label, **case.shape.as_dict(), dtype=case.dtype,
                       mode=case.mode, backend=backend, impl=label or impl_label(backend, device.type),
                       gflop=gflop, **kw)

        # Check: nn.LSTM's results are the oracle (computing them is also its
        # first warm-up call); each backend's and peer's are compared with them
        # (its first warm-up call). Only what passed is timed.
        advance(f"{case.shape.label} {case.dtype} {case.mode}: nn.LSTM")
        case_rows: list[Row] = []
        steps: dict[str, Callable[[], None]] = {}
        try:
            oracle = Oracle(base_model, inputs, case.mode, case.dtype)
            case_rows.append(row(BASELINE, status="ok"))
            steps[BASELINE] = make_step(base_model, inputs, case.mode)
        except Exception as e:  # e.g. a dtype nn.LSTM does not support on this device
            oracle = None
            case_rows.append(row(BASELINE, status="error", detail=_error_text(e)))
        candidates = [(b, None) for b in settings.backends] + [(p, PEERS[p]) for p in peers_for(case, settings)]
        for name, peer in candidates:
            label = peer.label if peer else None
            advance(f"{case.shape.label} {case.dtype} {case.mode}: {name}")
            if oracle is None:
                case_rows.append(row(name, label, status="error", detail="nn.LSTM failed: nothing to check against"))
                continue
            try:
                if name not in impls:
                    impls[name] = (peer.build(base_model, torch.get_num_threads()) if peer
                                   else build_bilstm(base_model, name))
                impl = impls[name]
                got = impl.results(inputs, case.mode) if peer else results_of(impl, inputs, case.mode)
                check = oracle.check(got, bound=peer.tolerance if peer else None)
                case_rows.append(row(name, label, status="ok" if check.ok else "mismatch",
                                     detail=check.detail, max_err=check.max_err))
                if check.ok:  # a wrong result is reported, never timed
                    steps[name] = impl.step(inputs, case.mode) if peer else make_step(impl, inputs, case.mode)
            except Exception as e:  # one broken backend or peer must not end the sweep
                case_rows.append(row(name, label, status="error", detail=_error_text(e)))

        by_name = {r.backend: r for r in case_rows}
        if settings.memory:
            # The first warm-up call doubles as the memory call: it is untimed
            # anyway, and an extra call per row would cost ~15% of the default
            # sweep on a CPU.
            for name, step in list(steps.items()):
                try:
                    by_name[name].peak_mem_mb = peak_memory_mb(step, device)
                except Exception as e:  # passed its check, then raised
                    by_name[name].status, by_name[name].detail = "error", _error_text(e)
                    del steps[name]
        try:
            m = measure_rotated(steps, device, settings.warmup, settings.repeats, settings.rounds)
        except Exception as e:
            for name in steps:
                by_name[name].status, by_name[name].detail = "error", _error_text(e)
            m = None
        if m is not None:
            for name, t in m.timings.items():
                r = by_name[name]
                r.ms_median, r.ms_p20, r.ms_p80, r.repeats = t.median_ms, t.p20_ms, t.p80_ms, t.repeats
                r.gflops = gflop / (t.median_ms * 1e-3)
                r.spread, r.other_cpus, r.trusted = round(t.spread, 3), m.other_cpus, m.trusted(name, device)
                r.attempts = m.attempts
        _add_ratios(case_rows)
        rows.extend(case_rows)
    return rows


def _add_ratios(case_rows: list[Row]) -> None:
    """speedup (nn.LSTM median / this median) on every timed row; on our rows
    also vs_best_peer against the fastest exact peer (nn.LSTM or a peer that
    computes the same fp32 math: not the int8 one)."""
    timed = [r for r in case_rows if r.ms_median is not None]
    base = next((r for r in timed if r.backend == BASELINE), None)
    exact = [r for r in timed if r.backend == BASELINE or (r.backend in PEERS and PEERS[r.backend].exact)]
    best = min(exact, key=lambda r: r.ms_median, default=None)
    for r in timed:
        if base is not None:
            r.speedup = base.ms_median / r.ms_median
        if best is not None and r.backend != BASELINE and r.backend not in PEERS:
            r.vs_best_peer, r.best_peer = best.ms_median / r.ms_median, best.impl


def add_pct_peak(rows: list[Row], peak: Peak) -> list[Row]:
    """Fill every timed row's % of the device peak for its dtype."""
    for r in rows:
        peak_flops = peak.for_dtype(r.dtype)
        r.pct_peak = 100 * r.gflops * 1e9 / peak_flops if r.gflops is not None and peak_flops else None
    return rows
