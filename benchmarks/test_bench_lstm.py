"""nn.LSTM vs every BiLSTM backend of the device and the peers (ONNX
Runtime's LSTM op, torch's dynamic int8 LSTM: bench/peers.py, where
installed), one pytest-benchmark group per (shape, dtype, mode), nn.LSTM the
baseline of each group. The default sweep includes packed variable-length
shapes. pytest-benchmark times each implementation in its own test (its own
block after its warm-up) but cannot rotate blocks or re-measure a noisy
one: `bilstm-bench` does (docs/bench.md).

    pytest benchmarks/test_bench_lstm.py --benchmark-only          # the default sweep
    pytest benchmarks/ --benchmark-disable                         # CI: each step once, quick shape

extra_info: gflop (per call), gflops (at the median), backend, and
speedup_vs_nn_lstm (added by conftest.py once the group has run).
"""
from __future__ import annotations

import pytest
import torch

from bilstm_fast import backend_status
from bilstm_fast.bench.device import default_device
from bilstm_fast.bench.peers import PEERS
from bilstm_fast.bench.shapes import flops
from bilstm_fast.bench.timing import synchronized
from bilstm_fast.bench.workload import BASELINE

from conftest import checked_step


def test_lstm(benchmark, bench_case, impl):
    shape, dtype, mode = bench_case
    device = default_device()
    peer = PEERS.get(impl)
    if peer is not None:
        why = peer.unavailable_reason() or peer.unsupported_reason(mode, dtype, device)
        if why:
            pytest.skip(f"peer {impl!r}: {why}")
    elif impl != BASELINE and backend_status()[impl] is not None:
        pytest.skip(f"backend {impl!r} unavailable: {backend_status()[impl]}")
    step, label = checked_step(shape, dtype, mode, impl, device, torch.get_num_threads())
    gflop = flops(shape, mode) / 1e9
    benchmark.group = f"{shape.label} {dtype} {mode}"
    benchmark.extra_info.update(bilstm_bench=1, backend=impl, impl=label, gflop=gflop, **shape.as_dict())
    benchmark(synchronized(step, device))
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gflops"] = gflop / benchmark.stats.stats.median
