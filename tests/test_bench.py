"""bilstm-bench: result schema, compare, FLOP formula, check-before-timing,
profile, CLI errors. Runs the real CLI in --quick mode on the reference
backend (always available), so it tests the tool, not any one kernel.
No timed assertions."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from bilstm_fast.bench import cli, runner, workload
from bilstm_fast.bench.device import lookup_peak
from bilstm_fast.bench.results import ENV_COLUMNS, SCHEMA
from bilstm_fast.bench.shapes import QUICK, Shape, flops, parse_shape

# The schema as docs/bench.md documents it (written out, not imported, so a
# field renamed in code but not in the docs fails here).
DOC_TOP = {"schema", "created_utc", "command", "duration_s", "environment", "peak", "settings",
           "skipped_backends", "results"}
DOC_ENV = {"device_type", "device_name", "sm_count", "cpu_model", "cpu_count", "torch_threads",
           "torch", "triton", "bilstm_fast", "commit", "dirty", "python", "os", "hostname",
           "load_avg_1min"}
DOC_ENV_CUDA = {"driver", "cuda", "cudnn", "compute_capability", "memory_gb"}
DOC_PEAK = {"source", "description", "flops", "bandwidth_gbs"}
DOC_SETTINGS = {"device", "dtypes", "modes", "backends", "peers", "rounds", "warmup", "repeats", "tf32",
                "memory_method"}
DOC_ROW = ["shape", "T", "B", "D", "H", "L", "N", "packed", "dtype", "mode", "backend", "impl", "status",
           "detail", "max_err", "gflop", "ms_median", "ms_p20", "ms_p80", "repeats", "gflops",
           "pct_peak", "speedup", "peak_mem_mb", "vs_best_peer", "best_peer", "spread", "other_cpus",
           "trusted", "attempts", "P"]


def _quick_run(out: Path) -> Path:
    rc = cli.main(["--quick", "--backends", "reference", "--out", str(out)])
    assert rc == 0
    (json_path,) = out.glob("*.json")
    return json_path


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    return [_quick_run(tmp_path_factory.mktemp(f"run{i}")) for i in range(2)]


# ------------------------------------------------------------ result schema
def test_quick_run_writes_documented_json_csv_png(two_runs):
    path = two_runs[0]
    run = json.loads(path.read_text())
    assert set(run) == DOC_TOP and run["schema"] == SCHEMA
    env = run["environment"]
    assert DOC_ENV <= set(env)
    if env["device_type"] == "cuda":
        assert DOC_ENV_CUDA <= set(env)
    assert env["commit"] == "unknown" or len(env["commit"]) == 40
    assert set(run["peak"]) == DOC_PEAK and run["peak"]["source"] in ("datasheet", "measured")
    assert set(run["settings"]) == DOC_SETTINGS

    rows = run["results"]
    assert rows and all(list(r) == DOC_ROW for r in rows)
    # one case per mode, each with the nn.LSTM baseline and the reference backend
    assert {(r["mode"], r["backend"]) for r in rows} == {
        (m, b) for m in ("inference", "training") for b in ("torch", "reference")}
    for r in rows:
        print(r["impl"], r["mode"], r["status"], r["detail"], r["ms_median"])
        assert r["status"] == "ok"
        assert r["shape"] == QUICK.label and r["gflop"] == flops(QUICK, r["mode"]) / 1e9
        assert r["ms_p20"] <= r["ms_median"] <= r["ms_p80"] and r["repeats"] == 3
        assert r["gflops"] == pytest.approx(r["gflop"] / (r["ms_median"] * 1e-3))
    for mode in ("inference", "training"):
        base, ours = (next(r for r in rows if r["mode"] == mode and r["backend"] == b)
                      for b in ("torch", "reference"))
        assert base["speedup"] == 1.0 and base["max_err"] is None
        assert ours["speedup"] == pytest.approx(base["ms_median"] / ours["ms_median"])
        assert ours["max_err"] is not None and ours["max_err"] <= 2e-4

    with path.with_suffix(".csv").open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ENV_COLUMNS + DOC_ROW
        assert len(list(reader)) == len(rows)
    assert path.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ compare
def test_compare_merges_two_result_files(two_runs, tmp_path, capsys):
    assert cli.main(["compare", *map(str, two_runs), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "compare" in printed and QUICK.label in printed
    with (tmp_path / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    devices = {r["device"] for r in rows}
    assert len(devices) == 2  # same machine twice: labels made unique by file name
    assert len(rows) == 2 * 4  # 2 files x 2 modes x (nn.LSTM, reference)
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_rejects_a_file_that_is_not_a_result(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(SystemExit) as e:
        cli.main(["compare", str(bad)])
    assert e.value.code == 2
    assert "argument files" in capsys.readouterr().err


# ------------------------------------------------------------- FLOP formula
def test_flops_match_a_hand_count():
    # One layer, one direction, one (t, b): 4 gates x H outputs, each a dot
    # product over D inputs + H recurrent inputs = 4*4*(5+4) = 144 multiply-adds.
    s = Shape(T=2, B=3, D=5, H=4, L=1, N=2)
    assert flops(s, "inference") == 2 * 144 * (2 * 3) * 2                  # x T*B x 2 directions
    # Layer 2 reads both directions' outputs (2H = 8): 4*4*(8+4) = 192 multiply-adds.
    s2 = Shape(T=2, B=3, D=5, H=4, L=2, N=2)
    assert flops(s2, "inference") == 2 * (144 + 192) * (2 * 3) * 2
    assert flops(s2, "training") == 3 * flops(s2, "inference")
    # Unidirectional: half the first layer; layer 2 reads H = 4 features.
    assert flops(Shape(T=2, B=3, D=5, H=4, L=2, N=1), "inference") == 2 * (144 + 4 * 4 * 8) * 6
    # docs/design.md §2's 2*8*B*T*H*(H+D) for one bidirectional layer
    assert flops(Shape(T=64, B=8, D=300, H=256), "inference") == 2 * 8 * 8 * 64 * 256 * (256 + 300)
    # proj_size P=2: gates 4*4*(5+2) multiply-adds + the projection 2*4 per (t, b, direction);
    # layer 2 reads both directions' projected outputs (2P = 4): 4*4*(4+2) + 2*4.
    assert flops(Shape(T=2, B=3, D=5, H=4, L=1, N=2, P=2), "inference") == 2 * (112 + 8) * (2 * 3) * 2
    assert flops(Shape(T=2, B=3, D=5, H=4, L=2, N=2, P=2), "inference") == 2 * (120 + 96 + 8) * (2 * 3) * 2


def test_parse_shape():
    assert parse_shape("t=64, b=8,D=300,H=256,L=2") == Shape(64, 8, 300, 256, 2)
    assert parse_shape("T=64,B=8,D=300,H=256,P=128") == Shape(64, 8, 300, 256, P=128)
    assert Shape(64, 8, 300, 256, P=128).label == "T64 B8 D300 H256 P128 L1"
    for bad, says in (("T=64,B=8", "missing D, H"), ("T=64,B=8,D=3,H=x", "not an integer"),
                      ("T=1,B=1,D=1,H=4,P=4", "must be < H"),
                      ("T=0,B=1,D=1,H=1", "must be >= 1"), ("T=1,B=1,D=1,H=1,N=3", "N=3"),
                      ("T=1,B=1,D=1,H=1,Q=2", "KEY=VALUE")):
        with pytest.raises(ValueError, match=says):
            parse_shape(bad)


# -------------------------------------------------------- check before timing
def _run_one(backends, shape=Shape(T=5, B=3, D=7, H=6, L=2), modes=("inference", "training")):
    cases = runner.cases_of([(shape, modes)], ["fp32"])
    settings = runner.Settings(torch.device("cpu"), backends, warmup=0, repeats=2, memory=False)
    return runner.run(cases, settings)


def test_a_wrong_result_is_reported_as_mismatch_and_not_timed(monkeypatch):
    real_build = workload.build_bilstm

    def build_wrong(baseline, backend):
        model = real_build(baseline, backend)
        forward = model.forward

        def off_by_a_bit(x, hx=None):
            out, state = forward(x, hx)
            return out + 1e-3, state   # 1e-3 on |h| < 1: far over the fp32 tolerance
        model.forward = off_by_a_bit
        return model
    monkeypatch.setattr(runner, "build_bilstm", build_wrong)
    rows = _run_one(["reference"])
    ours = [r for r in rows if r.backend == "reference"]
    assert [r.status for r in ours] == ["mismatch", "mismatch"]
    for r in ours:
        print(r.detail)
        assert "output" in r.detail and r.max_err > 2e-4
        assert r.ms_median is None and r.repeats == 0 and r.speedup is None
    assert all(r.status == "ok" and r.ms_median is not None for r in rows if r.backend == "torch")


def test_a_wrong_gradient_alone_is_a_mismatch(monkeypatch):
    real_build = workload.build_bilstm

    def build_wrong_grad(baseline, backend):
        model = real_build(baseline, backend)
        model.weight_hh_l1_reverse.register_hook(lambda g: g * 1.01)  # 1% off, outputs exact
        return model
    monkeypatch.setattr(runner, "build_bilstm", build_wrong_grad)
    inference, training = [r for r in _run_one(["reference"]) if r.backend == "reference"]
    assert inference.status == "ok"
    assert training.status == "mismatch" and "weight_hh_l1_reverse.grad" in training.detail


def test_nan_anywhere_is_a_mismatch():
    want = {"output": torch.ones(3), "h_n": torch.ones(2)}
    got = {"output": torch.tensor([1.0, float("nan"), 1.0]), "h_n": torch.full((2,), 1.5)}
    errs = workload.scaled_errors(got, want)
    assert errs["output"] == float("inf") and max(errs, key=errs.get) == "output"


def test_a_proj_size_shape_is_checked_and_timed():
    """P=... builds nn.LSTM(proj_size) and BiLSTM alike: the cpu and reference
    backends match it (every gradient, weight_hr too) and are timed."""
    shape = Shape(T=5, B=3, D=7, H=6, L=2, P=2)
    rows = _run_one(["cpu", "reference"], shape=shape)
    assert {(r.backend, r.mode) for r in rows} == {(b, m) for b in ("torch", "cpu", "reference")
                                                   for m in ("inference", "training")}
    for r in rows:
        assert r.status == "ok" and r.ms_median is not None, (r.backend, r.mode, r.detail)
        assert r.P == 2 and r.shape == "T5 B3 D7 H6 P2 L2" and r.gflop == flops(shape, r.mode) / 1e9


def test_a_backend_that_raises_is_reported_as_error():
    rows = _run_one(["no_such_backend"], modes=("inference",))
    (ours,) = [r for r in rows if r.backend == "no_such_backend"]
    assert ours.status == "error" and "no_such_backend" in ours.detail and ours.ms_median is None


# ------------------------------------------------------------------ profile
def test_profile_writes_a_chrome_trace_and_counts_ops(tmp_path):
    assert cli.main(["profile", "--quick", "--mode", "training", "--backends", "reference,torch",
                     "--out", str(tmp_path)]) == 0
    (summary_path,) = tmp_path.glob("profile_*.json")
    summary = json.loads(summary_path.read_text())
    for backend in ("reference", "torch"):
        prof = summary["profiles"][backend]
        assert prof["per_step"]["forward"] > 0 and prof["per_step"]["backward"] > 0
        trace = json.loads(Path(prof["trace"]).read_text())
        names = {e.get("name") for e in trace["traceEvents"]}
        assert "bilstm_bench.forward" in names and "bilstm_bench.backward" in names


# -------------------------------------------------------------- CLI errors
@pytest.mark.parametrize("argv, says", [
    (["--hidden", "0"], "argument --hidden"),
    (["--dtypes", "fp8"], "argument --dtypes"),
    (["--shape", "T=4,B=2"], "argument --shape"),
    (["--backends", "gpu9000"], "argument --backends"),
    (["--quick", "--hidden", "64"], "argument --quick"),
    (["--repeats", "-1"], "argument --repeats"),
    (["profile", "--nvtx", "--device", "cpu"], "argument --nvtx"),
])
def test_bad_cli_input_names_the_option(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["profile", "--help"], ["compare", "--help"]])
def test_help_of_every_subcommand(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0 and "usage: bilstm-bench" in capsys.readouterr().out


def test_peak_table_matches_device_names():
    assert lookup_peak("NVIDIA A100-SXM4-80GB").name == "A100 SXM4 80GB"
    assert lookup_peak("NVIDIA A100-PCIE-40GB").name == "A100 PCIe 40GB"
    assert lookup_peak("NVIDIA A100 80GB PCIe").name == "A100 PCIe 80GB"
    assert lookup_peak("NVIDIA H100 80GB HBM3").name == "H100 SXM5"
    assert lookup_peak("NVIDIA H100 PCIe").name == "H100 PCIe"
    assert lookup_peak("NVIDIA A10").name == "A10"
    assert lookup_peak("NVIDIA A10G") is None   # not in the table: measured peak
    assert lookup_peak("NVIDIA L40S").name == "L40S"
    assert lookup_peak("Tesla T4").name == "T4"
    assert lookup_peak("NVIDIA GeForce RTX 4090").name == "GeForce RTX 4090"


def test_cpu_peak_is_the_faster_of_torch_and_our_gemm(monkeypatch):
    """On a CPU the measured peak counts the cpu backend's GEMM too (device.py):
    with ours made slow it is torch.matmul's figure, with ours made instant it
    is ours (and the description says which)."""
    import time
    from bilstm_fast.bench import device
    monkeypatch.setattr(device, "MATMUL_MAX_N", {"cpu": 256})
    real = device._our_cpu_matmul("fp32")
    assert real is not None

    def slow(a, b):
        time.sleep(0.05)
        return real(a, b)

    monkeypatch.setattr(device, "_our_cpu_matmul", lambda dt: slow)
    f_torch, n, who = device.measured_matmul_flops(torch.device("cpu"), "fp32")
    assert (n, who) == (256, "torch.matmul") and f_torch > 0
    monkeypatch.setattr(device, "_our_cpu_matmul", lambda dt: (lambda a, b: a))
    f_ours, _, who = device.measured_matmul_flops(torch.device("cpu"), "fp32")
    assert who == "bilstm_fast cpu GEMM" and f_ours > f_torch
    assert "bilstm_fast cpu GEMM" in device.device_peak(torch.device("cpu"), ["fp32"]).description
