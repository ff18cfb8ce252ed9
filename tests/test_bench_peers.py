"""bilstm-bench's peers (ONNX Runtime's LSTM op, torch's dynamic int8 LSTM),
packed (variable-length) shapes, and the trust marks of the timing: real
numbers against nn.LSTM, no timed assertions."""
from __future__ import annotations

import importlib.util
import time

import pytest
import torch
from torch import nn

from bilstm_fast.bench import report, runner, timing
from bilstm_fast.bench.peers import PEERS, onnx_lstm_model
from bilstm_fast.bench.shapes import Shape, flops, lengths, parse_shape
from bilstm_fast.bench.workload import build_baseline, make_inputs, results_of, scaled_errors

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime/onnx not installed (pip install \".[peers]\")")


# ------------------------------------------------------------ packed shapes
def test_packed_lengths_are_fixed_unsorted_and_reach_T():
    s = Shape(T=64, B=32, D=300, H=256, packed=True)
    got = lengths(s)
    print(got)
    assert got == lengths(s) and len(got) == 32  # deterministic
    assert max(got) == 64 and min(got) >= 16 and got != sorted(got) and got != sorted(got, reverse=True)
    assert lengths(Shape(T=64, B=32, D=300, H=256)) is None
    assert s.label == "T64 B32 D300 H256 L1 packed"


def test_packed_flops_count_the_valid_steps():
    s = Shape(T=6, B=3, D=5, H=4, L=2, packed=True)
    full = Shape(T=6, B=3, D=5, H=4, L=2)
    assert flops(s, "inference") == flops(full, "inference") * sum(lengths(s)) // (6 * 3)
    assert flops(s, "training") == 3 * flops(s, "inference")


def test_parse_shape_packed():
    assert parse_shape("T=64,B=8,D=300,H=256,packed=1") == Shape(64, 8, 300, 256, packed=True)
    assert parse_shape("T=64,B=8,D=300,H=256,packed=0") == Shape(64, 8, 300, 256)
    with pytest.raises(ValueError, match="packed=2"):
        parse_shape("T=64,B=8,D=300,H=256,packed=2")


# -------------------------------------------------------------------- peers
PEER_SHAPES = [Shape(T=7, B=3, D=5, H=17), Shape(T=1, B=1, D=4, H=8), Shape(T=6, B=4, D=5, H=9, L=2),
               Shape(T=5, B=3, D=4, H=6, N=1), Shape(T=9, B=5, D=6, H=7, L=2, packed=True)]


@needs_ort
@pytest.mark.parametrize("shape", PEER_SHAPES, ids=lambda s: s.label.replace(" ", "-"))
def test_onnxruntime_peer_matches_nn_lstm(shape):
    base = build_baseline(shape, "fp32", torch.device("cpu"))
    inputs = make_inputs(shape, "fp32", torch.device("cpu"))
    want = results_of(base, inputs, "inference")
    got = PEERS["onnxruntime"].build(base, 2).results(inputs, "inference")
    errs = scaled_errors(got, want)
    print(errs)
    assert set(errs) == {"output", "h_n", "c_n"} and max(errs.values()) < 1e-5


@needs_ort
def test_onnx_graph_reorders_the_gates_to_iofc():
    lstm = nn.LSTM(2, 3)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.arange(12.0)[:, None].expand(12, 2))  # row r holds r
    model = onnx_lstm_model(lstm, with_lengths=False)
    W = next(t for t in model.graph.initializer if t.name == "W0")
    from onnx import numpy_helper
    rows = numpy_helper.to_array(W)[0, :, 0].tolist()   # [4H] first column
    # torch blocks i=0..2, f=3..5, g=6..8, o=9..11 -> ONNX i, o, f, c
    assert rows == [0, 1, 2, 9, 10, 11, 3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize("shape", [Shape(T=7, B=3, D=5, H=16), Shape(T=6, B=4, D=5, H=8, L=2, packed=True)],
                         ids=lambda s: s.label.replace(" ", "-"))
def test_int8_peer_is_close_to_nn_lstm(shape):
    base = build_baseline(shape, "fp32", torch.device("cpu"))
    inputs = make_inputs(shape, "fp32", torch.device("cpu"))
    want = results_of(base, inputs, "inference")
    errs = scaled_errors(PEERS["torch-int8"].build(base, 2).results(inputs, "inference"), want)
    print(errs)
    assert max(errs.values()) < PEERS["torch-int8"].tolerance
    assert max(errs.values()) > 0   # int8 weights: not the fp32 numbers


@needs_ort
def test_runner_times_peers_in_the_same_case_and_ranks_our_rows():
    cases = runner.cases_of([(Shape(T=5, B=3, D=7, H=6, packed=True), ("inference", "training"))], ["fp32"])
    settings = runner.Settings(torch.device("cpu"), ["cpu"], warmup=0, repeats=2, memory=False,
                               peers=["onnxruntime"], rounds=2)
    rows = runner.run(cases, settings)
    by = {(r.mode, r.backend): r for r in rows}
    for r in rows:
        print(r.mode, r.impl, r.status, r.detail, r.ms_median, r.vs_best_peer, r.best_peer)
    assert ("training", "onnxruntime") not in by    # inference only
    ort, ours, base = by["inference", "onnxruntime"], by["inference", "cpu"], by["inference", "torch"]
    assert ort.status == ours.status == "ok" and ort.max_err < 1e-5 and ort.repeats == 2
    best = min((base, ort), key=lambda r: r.ms_median)
    assert ours.vs_best_peer == pytest.approx(best.ms_median / ours.ms_median) and ours.best_peer == best.impl
    assert ort.vs_best_peer is None and base.vs_best_peer is None
    assert by["training", "cpu"].best_peer == "nn.LSTM"


# -------------------------------------------------------------- trust marks
def test_a_wide_spread_is_remeasured_then_marked_untrusted():
    calls = {"n": 0}

    def jittery():  # every other call 4x as long: p20-p80 spread far over 10%
        calls["n"] += 1
        time.sleep(0.004 if calls["n"] % 2 else 0.001)

    def steady():
        time.sleep(0.002)

    m = timing.measure_rotated({"jittery": jittery, "steady": steady}, torch.device("cpu"),
                               warmup=0, repeats=6, rounds=2, retries=1)
    print(m.timings, m.other_cpus, m.attempts)
    assert m.attempts == 2 and m.timings["jittery"].repeats == 6
    assert m.timings["jittery"].spread > timing.SPREAD_MAX
    assert not m.trusted("jittery", torch.device("cpu"))


def test_a_slow_case_is_not_remeasured(monkeypatch):
    """Re-measuring stops once a case's attempts took RETRY_WITHIN_S: on a
    machine loaded by others every attempt fails its trust check."""
    calls = {"n": 0}

    def jittery():
        calls["n"] += 1
        time.sleep(0.004 if calls["n"] % 2 else 0.001)

    monkeypatch.setattr(timing, "RETRY_WITHIN_S", 0.0)
    m = timing.measure_rotated({"jittery": jittery}, torch.device("cpu"), warmup=0, repeats=6, rounds=2, retries=2)
    assert m.attempts == 1 and not m.trusted("jittery", torch.device("cpu"))


def test_other_load_is_measured_from_proc_stat():
    load = timing.OtherLoad().start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.05:
        pass
    others = load.stop()
    print(others)
    assert others is None or 0.0 <= others <= (__import__("os").cpu_count() or 1)


def test_untrusted_rows_are_marked_in_the_table():
    base = dict(shape="T1 B1 D1 H1 L1", T=1, B=1, D=1, H=1, L=1, N=2, packed=False, dtype="fp32",
                mode="inference", status="ok", detail="", max_err=None, gflop=1.0, ms_p20=1.0,
                ms_p80=3.0, repeats=5, gflops=1.0, pct_peak=1.0, peak_mem_mb=None, best_peer=None,
                spread=2.0, other_cpus=1.5, attempts=3)
    run = {"environment": {"device_name": "cpu", "torch": "x", "commit": "unknown"},
           "peak": {"source": "measured", "description": "d"}, "settings": {"rounds": 3},
           "results": [dict(base, backend="torch", impl="nn.LSTM", ms_median=44.0, speedup=1.0,
                            vs_best_peer=None, trusted=False),
                       dict(base, backend="cpu", impl="BiLSTM[cpu]", ms_median=1.0, speedup=44.0,
                            vs_best_peer=44.0, trusted=False)]}
    from rich.console import Console
    table, notes = report.run_table(run)
    console = Console(width=250, record=True)
    console.print(table)
    text = console.export_text()
    print(text, notes)
    assert "44.00?" in text and "!" in text
    assert any("NOT TRUSTED" in n for n in notes)


def test_exit_status_counts_our_mismatches_not_an_inexact_peers():
    from types import SimpleNamespace as Row

    from bilstm_fast.bench import cli
    assert cli.exit_status([Row(backend="torch-int8", status="mismatch"), Row(backend="cpu", status="ok")]) == 0
    assert cli.exit_status([Row(backend="onnxruntime", status="mismatch")]) == 1
    assert cli.exit_status([Row(backend="cpu", status="mismatch")]) == 1
    assert cli.exit_status([Row(backend="cpu", status="error")]) == 0
