"""The sweep: for every (shape, dtype, mode), check each backend's BiLSTM
against nn.LSTM holding the same weights, then time nn.LSTM and every
backend that passed; one Row per implementation, ratios against the nn.LSTM
of the same run.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from .device import Peak
from .results import Row
from .shapes import Shape, flops
from .timing import measure, peak_memory_mb
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


def cases_of(sweep: Iterable[tuple[Shape, tuple[str, ...]]], dtypes: list[str]) -> list[Case]:
    return [Case(s, dt, m) for s, modes in sweep for dt in dtypes for m in modes]


def _error_text(e: BaseException) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}"[:300]


def run(cases: list[Case], settings: Settings,
        advance: Callable[[str], None] = lambda what: None) -> list[Row]:
    """Rows of every case (pct_peak left for ``add_pct_peak``);
    ``advance(description)`` is called as each implementation of a case is
    checked (1 + len(backends) per case), for a progress bar."""
    rows: list[Row] = []
    device = settings.device
    built: dict = {}  # (shape, dtype) -> (baseline, inputs, {backend: BiLSTM}); reused across modes
    for case in cases:
        key = (case.shape, case.dtype)
        if key not in built:
            built.clear()  # one shape's models at a time: big shapes must not pile up in memory
            base_model = build_baseline(case.shape, case.dtype, device)
            built[key] = (base_model, make_inputs(case.shape, case.dtype, device), {})
        base_model, inputs, ours = built[key]
        gflop = flops(case.shape, case.mode) / 1e9

        def row(backend: str, **kw) -> Row:
            return Row(shape=case.shape.label, **case.shape.as_dict(), dtype=case.dtype,
                       mode=case.mode, backend=backend, impl=impl_label(backend, device.type),
                       gflop=gflop, **kw)

        # Check: nn.LSTM's results are the oracle (computing them is also its
        # first warm-up call); each backend's are compared with them (its first
        # warm-up call). Only what passed is timed.
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
        for backend in settings.backends:
            advance(f"{case.shape.label} {case.dtype} {case.mode}: {backend}")
            if oracle is None:
                case_rows.append(row(backend, status="error", detail="nn.LSTM failed: nothing to check against"))
                continue
            try:
                if backend not in ours:
                    ours[backend] = build_bilstm(base_model, backend)
                check = oracle.check(results_of(ours[backend], inputs, case.mode))
                case_rows.append(row(backend, status="ok" if check.ok else "mismatch",
                                     detail=check.detail, max_err=check.max_err))
                if check.ok:  # a wrong result is reported, never timed
                    steps[backend] = make_step(ours[backend], inputs, case.mode)
            except Exception as e:  # one broken backend must not end the sweep
                case_rows.append(row(backend, status="error", detail=_error_text(e)))

        # Time everything that passed, one implementation after the other,
        # each right after its own warm-up (timing.measure says why).
        by_backend = {r.backend: r for r in case_rows}
        for name, step in steps.items():
            r = by_backend[name]
            try:
                warmup = settings.warmup
                if settings.memory:
                    # The first warm-up call doubles as the memory call: it is
                    # untimed anyway, and an extra call per row would cost ~15%
                    # of the default sweep on a CPU.
                    r.peak_mem_mb = peak_memory_mb(step, device)
                    warmup = max(0, warmup - 1)
                t = measure(step, device, warmup, settings.repeats)
            except Exception as e:  # passed its check, then raised
                r.status, r.detail = "error", _error_text(e)
                continue
            r.ms_median, r.ms_p20, r.ms_p80, r.repeats = t.median_ms, t.p20_ms, t.p80_ms, t.repeats
            r.gflops = gflop / (t.median_ms * 1e-3)
        base_ms = by_backend[BASELINE].ms_median
        for r in case_rows:
            if r.ms_median is not None and base_ms:
                r.speedup = base_ms / r.ms_median
        rows.extend(case_rows)
    return rows


def add_pct_peak(rows: list[Row], peak: Peak) -> list[Row]:
    """Fill every timed row's % of the device peak for its dtype."""
    for r in rows:
        peak_flops = peak.for_dtype(r.dtype)
        r.pct_peak = 100 * r.gflops * 1e9 / peak_flops if r.gflops is not None and peak_flops else None
    return rows
