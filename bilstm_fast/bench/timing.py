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


# With no fixed --repeats, an implementation gets at least MIN_REPEATS timed
# calls and more until BUDGET_S of timed work (at most MAX_REPEATS): small
# shapes are cheap and noisy, big ones are slow and steady.
MIN_REPEATS, MAX_REPEATS, BUDGET_S = 5, 50, 0.5


def measure(fn: Callable[[], None], device: torch.device, warmup: int = 1,
            repeats: int | None = None) -> Timing:
    """Median and p20/p80 of ``repeats`` consecutive timed calls after
    ``warmup`` untimed ones.

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
        elif len(times) >= MAX_REPEATS or (len(times) >= MIN_REPEATS and sum(times) >= BUDGET_S * 1e3):
            break
    times.sort()
    return Timing(percentile(times, 50), percentile(times, 20), percentile(times, 80), len(times))


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
