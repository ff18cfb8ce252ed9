"""pytest-benchmark suite configuration: `pytest benchmarks/ --benchmark-only`.

Cases (shape, dtype, mode) come from bilstm_fast.bench — the same shapes,
FLOP count, models and check as `bilstm-bench`. With --benchmark-disable (CI)
each test runs its step once on the small --quick shape, so the suite keeps
working without costing minutes.

Only tests that ask for the ``bench_case`` / ``impl`` fixtures are
parametrized here; the hooks below leave other benchmarks
(e.g. test_cpu_speed.py) as they are.
"""
from __future__ import annotations

import pytest

from bilstm_fast.bench.cli import DEFAULT_BACKENDS
from bilstm_fast.bench.device import default_device, environment, set_tf32
from bilstm_fast.bench.peers import PEERS
from bilstm_fast.bench.shapes import MODES, QUICK, Shape, default_sweep
from bilstm_fast.bench.workload import (BASELINE, Oracle, build_baseline, build_bilstm, impl_label,
                                        make_inputs, make_step, results_of)

DTYPE = "fp32"


def _quick(config) -> bool:
    return bool(config.getoption("benchmark_disable", default=False))


def pytest_generate_tests(metafunc):
    if "bench_case" not in metafunc.fixturenames:
        return
    device = default_device()
    sweep = [(QUICK, MODES)] if _quick(metafunc.config) else default_sweep(device.type)
    cases = [(s, DTYPE, m) for s, modes in sweep for m in modes]
    metafunc.parametrize("bench_case", cases,
                         ids=[f"{s.label.replace(' ', '-')}-{dt}-{m}" for s, dt, m in cases])
    if "impl" in metafunc.fixturenames:
        # nn.LSTM first: pytest-benchmark lists a group in run order on ties.
        # The peers (bench/peers.py) join the same groups on a CPU; the test
        # skips one that is not installed or does not apply (training).
        impls = [BASELINE, *DEFAULT_BACKENDS.get(device.type, ())]
        if _quick(metafunc.config):
            impls.append("reference")  # cheap at the quick shape; keeps the check path exercised
        if device.type == "cpu":
            impls += list(PEERS)
        metafunc.parametrize("impl", impls)


def checked_step(shape: Shape, dtype: str, mode: str, impl: str, device, threads: int):
    """(step, label) of one implementation for a benchmark: nn.LSTM
    (BASELINE), a BiLSTM backend or a peer (bench/peers.py), checked against
    nn.LSTM with the same weights first, as bilstm-bench does (a wrong result
    fails the test, never gets timed)."""
    peer = PEERS.get(impl)
    baseline = build_baseline(shape, dtype, device)
    inputs = make_inputs(shape, dtype, device)
    label = peer.label if peer else impl_label(impl, device.type)
    if impl == BASELINE:
        return make_step(baseline, inputs, mode), label
    oracle = Oracle(baseline, inputs, mode, dtype)
    if peer:
        ours = peer.build(baseline, threads)
        check = oracle.check(ours.results(inputs, mode), bound=peer.tolerance)
        step = ours.step(inputs, mode)
    else:
        ours = build_bilstm(baseline, impl)
        check = oracle.check(results_of(ours, inputs, mode))
        step = make_step(ours, inputs, mode)
    print(f"{shape.label} {impl}: {check.detail}")
    assert check.ok, f"{label} does not match nn.LSTM: {check.detail}"
    return step, label


@pytest.fixture(autouse=True, scope="session")
def _fp32_is_fp32():
    """As in bilstm-bench: no TF32 in cuDNN/cuBLAS, so nn.LSTM's fp32 is fp32."""
    set_tf32(False)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["bilstm_fast"] = environment(default_device())


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Speedup vs the nn.LSTM of the same group, next to GFLOP/s in extra_info."""
    ours = [b for b in output_json["benchmarks"] if "bilstm_bench" in b.get("extra_info", {})]
    baseline = {b["group"]: b["stats"]["median"] for b in ours
                if b["extra_info"]["backend"] == BASELINE and b.get("stats")}
    for b in ours:
        base = baseline.get(b["group"])
        if base and b.get("stats"):
            b["extra_info"]["speedup_vs_nn_lstm"] = base / b["stats"]["median"]
