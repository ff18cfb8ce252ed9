"""nn.LSTM vs every BiLSTM backend of the device, one pytest-benchmark group
per (shape, dtype, mode), nn.LSTM the baseline of each group.

    pytest benchmarks/test_bench_lstm.py --benchmark-only          # the default sweep
    pytest benchmarks/ --benchmark-disable                         # CI: each step once, quick shape

extra_info: gflop (per call), gflops (at the median), backend, and
speedup_vs_nn_lstm (added by conftest.py once the group has run).
"""
from __future__ import annotations

import pytest

from bilstm_fast import backend_status
from bilstm_fast.bench.device import default_device
from bilstm_fast.bench.shapes import flops
from bilstm_fast.bench.timing import synchronized
from bilstm_fast.bench.workload import (BASELINE, Oracle, build_baseline, build_bilstm, impl_label,
                                        make_inputs, make_step, results_of)


def test_lstm(benchmark, bench_case, impl):
    shape, dtype, mode = bench_case
    device = default_device()
    if impl != BASELINE and backend_status()[impl] is not None:
        pytest.skip(f"backend {impl!r} unavailable: {backend_status()[impl]}")
    baseline = build_baseline(shape, dtype, device)
    inputs = make_inputs(shape, dtype, device)
    model = baseline
    if impl != BASELINE:
        model = build_bilstm(baseline, impl)
        check = Oracle(baseline, inputs, mode, dtype).check(results_of(model, inputs, mode))
        print(check.detail)
        assert check.ok, f"{impl_label(impl, device.type)} does not match nn.LSTM: {check.detail}"

    gflop = flops(shape, mode) / 1e9
    benchmark.group = f"{shape.label} {dtype} {mode}"
    benchmark.extra_info.update(bilstm_bench=1, backend=impl, impl=impl_label(impl, device.type),
                                gflop=gflop, **shape.as_dict())
    benchmark(synchronized(make_step(model, inputs, mode), device))
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["gflops"] = gflop / benchmark.stats.stats.median
