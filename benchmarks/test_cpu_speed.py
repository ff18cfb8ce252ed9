"""CPU speed targets of the C++ backend (issue 13) vs torch.nn.LSTM and the
peers (ONNX Runtime's LSTM op, torch's dynamic int8 LSTM, where installed),
float32, 2 threads, every side including the input projection.

    pytest benchmarks/test_cpu_speed.py --benchmark-only      # measure
    pytest benchmarks/test_cpu_speed.py --benchmark-disable   # CI: each function once

One benchmark group per case, nn.LSTM first (the baseline), then BiLSTM
[cpu] and the peers that apply; extra_info has gflop per call, gflops at the
median and speedup_vs_nn_lstm. Models, inputs, the check and the FLOP count
come from bilstm_fast.bench (the same code as `bilstm-bench`; packed cases
draw lengths T/4..T, unsorted). Targets (ratio of medians, docs/cpu.md has
the measured values and the CPU): B <= 32 and packed inference >= 1.1x
both nn.LSTM and ONNX Runtime; B=128 at >= 95% of the measured sgemm rate;
training >= 1.3x nn.LSTM, packed training >= 2x. pytest-benchmark cannot
rotate blocks or re-measure a noisy one; `bilstm-bench` (the commands in
docs/cpu.md) does, and marks untrusted rows.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from bilstm_fast.bench.peers import PEERS
from bilstm_fast.bench.shapes import Shape, flops
from bilstm_fast.bench.workload import BASELINE

from conftest import checked_step

THREADS = 2
# name: (shape, mode, rounds)
CASES = {
    "latency": (Shape(64, 1, 300, 256), "inference", 60),
    "small": (Shape(64, 8, 300, 256), "inference", 40),
    "medium": (Shape(64, 32, 300, 256), "inference", 15),
    "packed": (Shape(64, 32, 300, 256, packed=True), "inference", 15),
    "large": (Shape(128, 128, 512, 512), "inference", 3),
    "train": (Shape(64, 32, 300, 256, 2), "training", 6),
    "train_packed": (Shape(64, 32, 300, 256, 2, packed=True), "training", 4),
}
_baseline_median: dict[str, float] = {}


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("impl", [BASELINE, "cpu", *PEERS])
@pytest.mark.parametrize("case", list(CASES))
def test_cpu_speed(benchmark, case, impl):
    try:
        importlib.import_module("bilstm_fast._cpu")
    except ImportError as e:
        pytest.fail(f"bilstm_fast._cpu is not built ({e}); run `pip install -e .`")
    shape, mode, rounds = CASES[case]
    device = torch.device("cpu")
    peer = PEERS.get(impl)
    if peer is not None:
        why = peer.unavailable_reason() or peer.unsupported_reason(mode, "fp32", device)
        if why:
            pytest.skip(f"peer {impl!r}: {why}")
    step, _ = checked_step(shape, "fp32", mode, impl, device, THREADS)
    gflop = flops(shape, mode) / 1e9
    benchmark.group = f"cpu {case}: {shape.label} {mode} fp32 {THREADS} threads"
    benchmark.extra_info.update(case=case, impl=impl, gflop=gflop, threads=THREADS)
    benchmark.pedantic(step, rounds=rounds, warmup_rounds=2)
    if benchmark.stats is None:  # --benchmark-disable: ran once
        return
    median = benchmark.stats.stats.median
    benchmark.extra_info["gflops"] = gflop / median
    if impl == BASELINE:
        _baseline_median[case] = median
    elif case in _baseline_median:
        benchmark.extra_info["speedup_vs_nn_lstm"] = _baseline_median[case] / median
        print(f"{case} {impl}: {_baseline_median[case] / median:.2f}x vs nn.LSTM")
