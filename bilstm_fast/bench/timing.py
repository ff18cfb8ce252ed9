"""Timing and peak memory of one step of work.

The device-specific parts are the two small functions ``_elapsed_ms`` and
``peak_memory_mb``: CUDA events / cuda.max_memory_allocated on a GPU,
a synchronous wall clock / sampled RSS on a CPU.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch


def _elapsed_ms(fn: Callable[[], None], device: torch.device) -> float:
    """Time of one call. On a GPU, CUDA events around the call (GPU time from
    the first launch to the last kernel's end); on a CPU, the wall clock around
    a call that returns only when its work is done."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def synchronized(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """``fn`` that returns only when its device work is done, for timers that
    read a wall clock (pytest-benchmark): CUDA launches are asynchronous."""
    if device.type != "cuda":
        return fn

    def call():
        fn()
        torch.cuda.synchronize(device)
    return call


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of an already sorted list."""
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    repeats: int

    @property
    def spread(self) -> float:
        """(p80 - p20) / median: how much the calls disagreed."""
        return (self.p80_ms - self.p20_ms) / self.median_ms if self.median_ms > 0 else 0.0


def timing_of(times: list[float]) -> Timing:
    times = sorted(times)
    return Timing(percentile(times, 50), percentile(times, 20), percentile(times, 80), len(times))


# With no fixed --repeats, an implementation gets at least MIN_REPEATS timed
# calls and more until BUDGET_S of timed work (at most MAX_REPEATS): small
# shapes are cheap and noisy, big ones are slow and steady.
MIN_REPEATS, MAX_REPEATS, BUDGET_S = 5, 50, 0.5


def measure(fn: Callable[[], None], device: torch.device, warmup: int = 1,
            repeats: int | None = None, budget_s: float = BUDGET_S, min_repeats: int = MIN_REPEATS,
            max_repeats: int = MAX_REPEATS) -> list[float]:
    """Times (ms) of consecutive timed calls after ``warmup`` untimed ones:
    ``repeats`` of them, or adaptively min_repeats..max_repeats until
    budget_s of timed work.

    Consecutive, not interleaved with another implementation's calls: a
    backend's after-effects must not be charged to the next one. Measured
    2026-11-24: nn.LSTM (T64 B8 H128) called right after BiLSTM[cpu] took
    2.1 s instead of 15-26 ms (19 ms with a 50 ms pause in between; likely
    that backend's worker threads still spinning); the warm-up call absorbs
    such a hand-over.
    """
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times: list[float] = []
    while True:
        times.append(_elapsed_ms(fn, device))
        if repeats is not None:
            if len(times) >= repeats:
                break
        elif len(times) >= max_repeats or (len(times) >= min_repeats and sum(times) >= budget_s * 1e3):
            break
    return times


# ------------------------------------------------- rotated blocks, trust
# Each implementation is timed in its own block (warm-up, then its timed
# calls back to back), blocks rotated over ROUNDS rounds (round r starts
# with the r-th implementation), so a slow minute of the machine is shared
# by all of them instead of landing on one. A measurement is trusted when
# every implementation's p20-p80 spread is within SPREAD_MAX of its median
# and other processes used at most OTHER_CPUS_MAX CPUs on average while it
# ran (CPU only); otherwise it is repeated up to RETRIES times and the
# attempt with the narrowest spread is kept, marked untrusted if it still
# fails. (A run on a busy machine once printed a 44x speedup, unmarked.)
# An attempt is repeated only while the case's attempts so far took at most
# RETRY_WITHIN_S: on a machine loaded by others every attempt fails, and
# re-measuring every case tripled the sweep (the default CPU sweep ran > 30
# min at a load average of 8 on 2 CPUs, 2026-12-02); the untrusted mark
# says what a retry could not fix.
ROUNDS, RETRIES, SPREAD_MAX, OTHER_CPUS_MAX, RETRY_WITHIN_S = 3, 2, 0.10, 0.5, 10.0


def _cpu_jiffies() -> tuple[float, float] | None:
    """(busy, total) seconds of all CPUs from /proc/stat (busy includes steal:
    time the hypervisor gave to someone else), or None without /proc."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])
    return (total - idle) / hz, total / hz


class OtherLoad:
    """Mean number of CPUs that other processes (and the hypervisor's steal)
    kept busy between start() and stop(): the machine's busy time minus this
    process's CPU time (all its threads: ours, torch's, ONNX Runtime's),
    over the wall time. None where /proc/stat is missing."""

    def start(self) -> "OtherLoad":
        self._stat, self._cpu, self._wall = _cpu_jiffies(), time.process_time(), time.perf_counter()
        return self

    def stop(self) -> float | None:
        stat, cpu, wall = _cpu_jiffies(), time.process_time(), time.perf_counter()
        if stat is None or self._stat is None or wall <= self._wall:
            return None
        others = (stat[0] - self._stat[0]) - (cpu - self._cpu)
        return round(max(0.0, others) / (wall - self._wall), 2)


@dataclass
class Measurement:
    timings: dict[str, Timing]
    other_cpus: float | None  # OtherLoad over the kept attempt
    attempts: int

    def trusted(self, name: str, device: torch.device) -> bool:
        busy = device.type == "cpu" and self.other_cpus is not None and self.other_cpus > OTHER_CPUS_MAX
        return self.timings[name].spread <= SPREAD_MAX and not busy


def measure_rotated(steps: dict[str, Callable[[], None]], device: torch.device, warmup: int = 1,
                    repeats: int | None = None, rounds: int = ROUNDS,
                    retries: int = RETRIES) -> Measurement:
    """Median and p20/p80 of every implementation in ``steps`` (name -> one
    call), each timed in its own block per round, blocks rotated over
    ``rounds`` rounds; ``repeats`` timed calls per implementation in all
    (split over the rounds), or adaptive (MIN/MAX_REPEATS, BUDGET_S, split
    over the rounds)."""
    names = list(steps)
    per_block = None if repeats is None else max(1, -(-repeats // rounds))
    best: Measurement | None = None
    t0 = time.perf_counter()
    for attempt in range(1 + retries):
        load = OtherLoad().start()
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                times[name] += measure(steps[name], device, warmup, per_block, BUDGET_S / rounds,
                                       max(2, -(-MIN_REPEATS // rounds)), max(2, MAX_REPEATS // rounds))
        m = Measurement({n: timing_of(t) for n, t in times.items()}, load.stop(), attempt + 1)
        if all(m.trusted(n, device) for n in names):
            best = m
            break
        if best is None or _worst_spread(m) < _worst_spread(best):
            best = m
        if time.perf_counter() - t0 > RETRY_WITHIN_S:
            break
    best.attempts = attempt + 1
    return best


def _worst_spread(m: Measurement) -> float:
    return max(t.spread for t in m.timings.values())


# ------------------------------------------------------------------ memory
MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated() during one call, minus the memory allocated before it",
    "cpu": "peak resident set size (/proc/self/statm, sampled every 0.2 ms by a thread) during one "
           "call, minus the RSS before it, after malloc_trim(0) returned freed heap to the OS",
}

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_libc_name = ctypes.util.find_library("c")
_libc = ctypes.CDLL(_libc_name) if _libc_name else None


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def peak_memory_mb(fn: Callable[[], None], device: torch.device) -> float | None:
    """Extra memory one call needs on top of what is allocated before it (MiB).

    On a CPU, torch has no allocator statistics, so this is the RSS high-water
    mark during the call (getrusage's maxrss is monotonic over the process, so
    it cannot be reset per call). Freed heap is first returned to the OS
    (malloc_trim), so the call has to grow RSS for what it allocates; memory
    freed and reused within 0.2 ms can be missed: a lower bound, close for the
    large activations that matter. None where /proc is missing.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    if not os.path.exists("/proc/self/statm"):
        return None
    if _libc is not None and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)
    before = peak = _rss_bytes()
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss_bytes())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return (max(peak, _rss_bytes()) - before) / 2**20
