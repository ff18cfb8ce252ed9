"""CPU speed targets of the C++ backend (issue 4) vs torch.nn.LSTM, float32,
2 threads, both sides including the input projection (ours: BiLSTM with
backend="cpu", i.e. one addmm for both directions + the fused recurrence).

    pytest benchmarks/test_cpu_speed.py --benchmark-only      # measure
    pytest benchmarks/test_cpu_speed.py --benchmark-disable   # CI: each function once

One benchmark group per case, nn.LSTM first (the baseline); extra_info has
gflop per call, gflops at the median and, for ours, speedup_vs_nn_lstm.
FLOPs = 2*8*B*T*H*(H+D) per layer forward (bidirectional), x3 with backward.
Targets (ratio of medians): latency >= 4x, small >= 1.5x, train >= 1.3x,
large >= 1.0x; measured values and the CPU are in docs/cpu.md.
"""
from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from bilstm_fast import BiLSTM

THREADS = 2
# name: (T, B, D, H, layers, train, rounds)
CASES = {
    "latency": (64, 1, 300, 256, 1, False, 60),
    "small": (64, 8, 300, 256, 1, False, 40),
    "train": (64, 32, 300, 256, 2, True, 8),
    "large": (128, 128, 512, 512, 1, False, 6),
}
_baseline_median: dict[str, float] = {}


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(old)


def _flops(T, B, D, H, layers, train):
    total, d_in = 0, D
    for _ in range(layers):
        total += 2 * 8 * B * T * H * (H + d_in)
        d_in = 2 * H
    return total * (3 if train else 1)


def _step(model, x, train):
    if train:
        def step():
            y, _ = model(x)
            y.sum().backward()
    else:
        def step():
            with torch.no_grad():
                model(x)
    return step


@pytest.mark.parametrize("impl", ["nn.LSTM", "bilstm_fast cpu"])
@pytest.mark.parametrize("case", list(CASES))
def test_cpu_speed(benchmark, case, impl):
    try:
        importlib.import_module("bilstm_fast._cpu")
    except ImportError as e:
        pytest.fail(f"bilstm_fast._cpu is not built ({e}); run `pip install -e .`")
    T, B, D, H, layers, train, rounds = CASES[case]
    torch.manual_seed(0)
    ref = nn.LSTM(D, H, layers, bidirectional=True)
    x = torch.randn(T, B, D, requires_grad=train)
    model = ref
    if impl != "nn.LSTM":
        model = BiLSTM(D, H, layers, bidirectional=True, backend="cpu")
        model.load_state_dict(ref.state_dict())
        with torch.no_grad():  # same results as the baseline before timing anything
            (y_ref, _), (y, _) = ref(x), model(x)
        err = (y - y_ref).abs().max().item()
        print(f"{case}: max |y - y_nn.LSTM| = {err:.2e}")
        assert err < 1e-4
    gflop = _flops(T, B, D, H, layers, train) / 1e9
    benchmark.group = f"cpu {case}: T={T} B={B} D={D} H={H} layers={layers} " \
                      f"{'fwd+bwd' if train else 'inference'} fp32 {THREADS} threads"
    benchmark.extra_info.update(case=case, impl=impl, gflop=gflop, threads=THREADS)
    benchmark.pedantic(_step(model, x, train), rounds=rounds, warmup_rounds=2)
    if benchmark.stats is None:  # --benchmark-disable: ran once
        return
    median = benchmark.stats.stats.median
    benchmark.extra_info["gflops"] = gflop / median
    if impl == "nn.LSTM":
        _baseline_median[case] = median
    elif case in _baseline_median:
        benchmark.extra_info["speedup_vs_nn_lstm"] = _baseline_median[case] / median
        print(f"{case}: {_baseline_median[case] / median:.2f}x vs nn.LSTM")
