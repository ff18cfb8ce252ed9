"""`bilstm-bench check` (bilstm_fast/bench/check.py), tested on a CPU: the
plans() of the cuda backend that it forces, stage isolation (a hang is
reported as a hang within its timeout, a crash as a failure), the result
file's schema, and `--emulate` end to end at tiny size."""
from __future__ import annotations

import pytest
import torch

from bilstm_fast.ops import backends, cuda_lstm


# ------------------------------------------------------------- plans()
@pytest.fixture
def emulate(monkeypatch):
    monkeypatch.setenv(cuda_lstm.EMULATE_ENV, "1")


def spec(H, dtype=torch.float32, N=2, device="cpu"):
    return backends.CallSpec(device, dtype, N, H, H, False, True)


@pytest.mark.parametrize("H,dtype,want", [
    (9, torch.float32, ["engine=fma,blocks=2,warps=2,batch_tile=16,reg_tiles=8",
                        "engine=fma,blocks=2,warps=2,batch_tile=24,reg_tiles=8",
                        "engine=fma,blocks=2,warps=2,batch_tile=32,reg_tiles=8",
                        "engine=fma,blocks=2,warps=2,batch_tile=8,reg_tiles=8",
                        "engine=tf32,blocks=2,warps=2,batch_tile=16,reg_tiles=16",
                        "engine=tf32,blocks=2,warps=2,batch_tile=32,reg_tiles=16"]),
    (104, torch.bfloat16, ["engine=f16,blocks=4,warps=2,batch_tile=8,reg_tiles=8"]),
    (104, torch.float32, []),        # W_hh does not fit the emulated 48 KB: the check's refusal row
    (20000, torch.float32, []),
])
def test_cuda_plans_today(emulate, H, dtype, want):
    """cuda_lstm.plans on the emulated device (8 SMs, 48 KB, 2 warps), the
    texts the check forces: each one runs for every B and both kinds (engine,
    blocks, warps and the register cap as named, the chunk at most the
    text's), and together they cover every plan the dispatcher picks (TF32
    allowed or not)."""
    got = cuda_lstm.plans(spec(H, dtype))
    print(H, dtype, got)
    assert got == want
    if not want:
        assert "does not fit on chip" in cuda_lstm.unsupported_reason(spec(H, dtype))
        return
    auto = set()
    for allow in (False, True) if dtype == torch.float32 else (False,):
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = allow
        try:
            auto |= {cuda_lstm.plan_for(k, 2, B, H, dtype, "cpu")["text"] for k in (0, 1) for B in range(1, 66)}
            for text in got:
                forced = cuda_lstm.parse_plan(text)
                for kind in (0, 1):
                    for B in (1, 3, 8, 17, 64, 256):
                        p = cuda_lstm.plan_for(kind, 2, B, H, dtype, "cpu", forced)
                        assert (p["engine"], p["blocks"], p["warps"], p["reg_tiles"]) == \
                            (forced.engine, forced.blocks, forced.warps, forced.reg_tiles), (text, kind, B, p)
                        assert p["batch_tile"] <= forced.batch_tile
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
    assert auto == set(got)


def test_cuda_plans_unsupported_call_is_empty(emulate):
    assert cuda_lstm.plans(spec(16, torch.float64)) == []
    assert cuda_lstm.plans(backends.CallSpec("cpu", torch.float32, 2, 16, 8, True, True)) == []


# triton_lstm.plans: tests/test_triton.py (test_plans_cover_the_dispatcher_and_round_trip)


# ------------------------------------------------------- stage isolation
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from bilstm_fast.bench import check, check_cases, check_stages  # noqa: E402

FAKE_STAGES = '''
import os, subprocess, sys, time

def ok(ctx, events):
    events(case="one")
    return {"verdict": "pass", "detail": "fine", "worst": "x", "worst_err": 1.5e-6, "bound": 2e-5}

def hang(ctx, events):
    events(case="fp16 T8 B2 H64 plan=engine=f16,blocks=2")
    while True:
        time.sleep(1)

def hang_with_child(ctx, events):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(ctx["pidfile"], "w").write(str(child.pid))
    events(case="spawned", pid=child.pid)
    time.sleep(600)

def crash(ctx, events):
    events(case="about to raise")
    raise RuntimeError("bilstm_fast cuda: cudaErrorIllegalAddress (700): an illegal memory access")

def die(ctx, events):
    events(case="about to exit")
    os._exit(3)

def bad_verdict(ctx, events):
    return {"verdict": "maybe"}

def environment(ctx, events):
    return {"verdict": "pass", "detail": "fake", "environment": {"device_name": "Fake GPU"},
            "backends": {"cuda": None, "triton": "no Triton here"}}

def per_backend(ctx, events):
    return {"verdict": "pass", "detail": f"ran {ctx['backend']}"}
'''


@pytest.fixture
def fake_stages(tmp_path, monkeypatch):
    """A module of stage functions the stage processes can import (PYTHONPATH)."""
    (tmp_path / "fake_stages.py").write_text(FAKE_STAGES)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    return tmp_path


def test_stage_that_passes(fake_stages, tmp_path):
    rec = check.run_stage("ok", "fake_stages:ok", {}, 60, tmp_path / "w")
    print(rec)
    assert rec["verdict"] == "pass" and rec["worst_err"] == 1.5e-6 and rec["detail"] == "fine"


def test_stage_that_hangs_is_a_hang_within_its_timeout(fake_stages, tmp_path):
    t0 = time.perf_counter()
    rec = check.run_stage("hang", "fake_stages:hang", {}, 20, tmp_path / "w")   # 20 s: the child imports torch
    took = time.perf_counter() - t0
    print(rec, f"{took:.1f} s")
    assert rec["verdict"] == "hang" and 20 <= took < 20 + 12
    assert "no result within 20 s" in rec["detail"] and "fp16 T8 B2 H64 plan=engine=f16,blocks=2" in rec["detail"]


def test_hung_stage_loses_its_children_too(fake_stages, tmp_path):
    pidfile = tmp_path / "pid"
    rec = check.run_stage("hang_with_child", "fake_stages:hang_with_child", {"pidfile": str(pidfile)}, 20,
                          tmp_path / "w")
    assert rec["verdict"] == "hang"
    pid = int(pidfile.read_text())
    for _ in range(50):        # killed with the stage's process group; reaped by init
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            break              # a zombie: dead, waiting to be reaped
        time.sleep(0.1)
    else:
        pytest.fail(f"the stage's child {pid} is still running")


def test_stage_that_raises_is_a_failure(fake_stages, tmp_path):
    rec = check.run_stage("crash", "fake_stages:crash", {}, 60, tmp_path / "w")
    print(rec["detail"])
    assert rec["verdict"] == "fail" and "RuntimeError" in rec["detail"] and "cudaErrorIllegalAddress" in rec["detail"]
    assert "Traceback" in rec["traceback"]


def test_stage_that_dies_is_a_failure(fake_stages, tmp_path):
    rec = check.run_stage("die", "fake_stages:die", {}, 60, tmp_path / "w")
    print(rec["detail"])
    assert rec["verdict"] == "fail" and "exit code 3" in rec["detail"] and "about to exit" in rec["detail"]


def test_stage_with_an_unknown_verdict_is_a_failure(fake_stages, tmp_path):
    rec = check.run_stage("bad", "fake_stages:bad_verdict", {}, 60, tmp_path / "w")
    assert rec["verdict"] == "fail" and "'maybe'" in rec["detail"]


def test_run_order_skips_and_verdict(fake_stages, tmp_path):
    """The whole run over a fake stage table: the environment's unavailable
    backend skips that backend's stages (with the reason), a hang does not
    stop the run, and it makes the run's verdict a failure."""
    stages = (check.StageDef("environment", "environment", False, 60, 1, ""),
              check.StageDef("correct", "per_backend", True, 60, 1, ""),
              check.StageDef("stuck", "hang", False, 15, 1, ""),
              check.StageDef("after", "ok", False, 60, 1, ""))
    ctx = check.Context(emulate=True, device="cpu")
    run = check.run_check(ctx, tmp_path / "out", stages=stages, stage_module="fake_stages")
    got = {r["name"]: (r["verdict"], r["detail"]) for r in run["stages"]}
    print(json.dumps(got, indent=1))
    assert got["correct:cuda"] == ("pass", "ran cuda")
    assert got["correct:triton"] == ("skip", "triton unavailable: no Triton here")
    assert got["stuck"][0] == "hang" and got["after"][0] == "pass"
    assert run["verdict"] == "fail" and run["environment"] == {"device_name": "Fake GPU"}
    assert run["skipped_backends"] == {"triton": "no Triton here"}
    only = check.run_check(ctx, tmp_path / "out2", wanted=["after"], stages=stages, stage_module="fake_stages")
    assert [r["name"] for r in only["stages"]] == ["environment", "after"] and only["verdict"] == "pass"


# ------------------------------------------------------------ judgement
def test_judge_and_padding_catch_wrong_results():
    """The bound is per tensor (2 * the reference's own error in X + ATOL);
    an error just over it fails, NaN fails, a non-zero pad fails."""
    g = torch.Generator().manual_seed(0)
    want = {"y": torch.randn(4, 3, 2, 5, generator=g, dtype=torch.float64), "h_n": torch.randn(2, 3, 5, generator=g,
                                                                                             dtype=torch.float64)}
    own = {k: v + 1e-4 * v.abs().max() for k, v in want.items()}            # the reference's own error: 1e-4
    bound = 2 * 1e-4 + check_cases.ATOL["fp16"]
    near = {k: v + 0.99 * bound * v.abs().max() for k, v in want.items()}
    over = dict(near, h_n=want["h_n"] + 1.01 * bound * want["h_n"].abs().max())
    j_near, j_over = check_cases.judge(near, want, own, "fp16"), check_cases.judge(over, want, own, "fp16")
    print(j_near.detail, "|", j_over.detail)
    assert j_near.ok and j_near.bound == pytest.approx(bound)
    assert not j_over.ok and j_over.worst == "h_n"
    assert not check_cases.judge(dict(near, y=near["y"] * float("nan")), want, own, "fp16").ok
    lengths = torch.tensor([4, 1, 2])
    y = torch.where(check_cases.torch.arange(4)[:, None, None, None] < lengths[None, :, None, None], want["y"], 0.0)
    assert check_cases.padding_error({"y": y}, lengths) is None
    y[3, 1, 0, 0] = 1e-30
    assert "y is not zero at t >= L_b" in check_cases.padding_error({"y": y}, lengths)


def test_correct_stage_fails_a_wrong_kernel(emulate, monkeypatch):
    """The correctness stage in-process with the emulated cuda backend whose
    forward is made wrong by 1e-3 in one element of h_n (1e-2 under a plan of
    the TF32 engine, whose bound is 3e-3): a failure naming h_n, every plan."""
    real = cuda_lstm.forward

    def off(*a, **k):
        y, h_n, c_n, gates, cells = real(*a, **k)
        plan = k.get("plan", a[7] if len(a) > 7 else None)
        h_n = h_n.clone()
        h_n.view(-1)[0] += 1e-2 if plan is not None and plan.engine == "tf32" else 1e-3
        return y, h_n, c_n, gates, cells
    monkeypatch.setattr(cuda_lstm, "forward", off)
    monkeypatch.setattr(check_stages, "_cases", lambda ctx: (check_cases.OpCase(3, 2, 9, 2, [3, 1]),))
    monkeypatch.setattr(check_cases, "EMU_MODULE_CASE", check_cases.ModuleCase(2, 2, 3, 5, 1))
    ctx = check.Context(emulate=True, device="cpu", dtypes=["fp32"]).for_stage("cuda")
    out = check_stages.correct(ctx, lambda **kw: None)
    print(out["detail"])
    assert out["verdict"] == "fail" and "h_n" in out["detail"]
    assert all(not c["ok"] for c in out["cases"] if "plan=" in c["label"])


def test_plans_fallback_is_reported():
    class NoPlans:
        NAME = "cuda"
        __name__ = "bilstm_fast.ops.cuda_lstm"
    texts, note = check_cases.plans_of(NoPlans(), spec(16))
    assert texts == [] and "no plans()" in note and "dispatcher's own choice" in note


# --------------------------------------------------------------- timing
def test_packed_timing_rows_on_cpu():
    """The packed half of the timing stage (GPU-only in a run: bilstm-bench's
    packed shapes through runner.run), on the CPU with the cpu backend:
    checked first, then timed, ratios against nn.LSTM."""
    from dataclasses import replace

    from bilstm_fast.bench import runner
    from bilstm_fast.bench.shapes import QUICK
    settings = runner.Settings(torch.device("cpu"), ["cpu"], warmup=1, repeats=3, memory=True, rounds=1)
    packed = replace(QUICK, packed=True)
    for mode in ("inference", "training"):
        rows = runner.run([runner.Case(packed, "fp32", mode)], settings)
        for r in rows:
            print(r.impl, r.mode, r.status, r.detail, r.ms_median, r.speedup)
        assert [r.backend for r in rows] == ["torch", "cpu"]
        assert all(r.status == "ok" and r.shape == packed.label and r.packed and r.repeats == 3 for r in rows)
        assert rows[1].max_err <= 2e-4 and rows[0].speedup == 1.0
        assert rows[1].speedup == pytest.approx(rows[0].ms_median / rows[1].ms_median)


def test_timing_shapes_are_the_default_sweep():
    from bilstm_fast.bench.shapes import default_sweep
    got = check_stages.timing_shapes()
    assert sorted(got, key=str) == sorted(default_sweep("cuda"), key=str)
    assert got[0][0].L == 1 and got[-1][0].L == 2


def test_compile_stage_covers_every_case():
    ctx = check.Context(device="cuda").for_stage()
    variants = set(check_stages.triton_variants(ctx))
    for case in check_cases.GPU_CASES:
        for dt in ("fp32", "fp16", "bf16"):
            assert (case.H, dt, case.N, case.lengths is not None, True) in variants
    assert (1040, "bf16", 2, True, True) in variants          # the > 2^31 case
    assert (512, "fp16", 2, True, False) in variants          # timing: packed inference


# --------------------------------------------------- end to end, --emulate
# The result file as docs/gpu.md documents it (written out, not imported, so
# a key renamed in code but not in the docs fails here).
DOC_TOP = {"schema", "created_utc", "command", "duration_s", "verdict", "environment", "peak", "settings",
           "skipped_backends", "stages", "results"}
DOC_STAGE = {"name", "stage", "backend", "verdict", "seconds", "timeout_s", "expected_s", "worst", "worst_err",
             "bound", "detail", "notes", "log"}
DOC_SETTINGS = {"emulate", "full", "device", "backends", "dtypes", "seed", "jobs", "budget_s", "stages",
                "timeout_scale", "logs", "memory_method"}
DOC_CASE = {"label", "ok", "plan", "worst", "err", "bound", "detail", "seconds", "errs"}


@pytest.fixture(scope="module")
def emulated_run(tmp_path_factory):
    """`bilstm-bench check --emulate` through the CLI, at tiny size, with the
    stages of the emulated cuda backend (the whole --emulate run, Triton's
    interpreter included, is a step of .ci/run)."""
    from bilstm_fast.bench import cli
    out = tmp_path_factory.mktemp("check")
    rc = cli.main(["check", "--emulate", "--out", str(out), "--stages",
                   "correct:cuda,determinism:cuda,streams:cuda,graph:cuda,big:cuda,timing"])
    (path,) = out.glob("check_*.json")
    return rc, json.loads(path.read_text()), path


def test_emulate_end_to_end(emulated_run, capsys):
    rc, run, path = emulated_run
    for r in run["stages"]:
        print(r["name"], r["verdict"], r["seconds"], r["detail"])
    assert rc == 0 and run["verdict"] == "pass"
    verdicts = {r["name"]: r["verdict"] for r in run["stages"]}
    assert verdicts == {"environment": "pass", "correct:cuda": "pass", "determinism:cuda": "pass",
                        "streams:cuda": "pass", "graph:cuda": "skip", "big:cuda": "pass", "timing": "skip"}
    correct = next(r for r in run["stages"] if r["name"] == "correct:cuda")
    cases = correct["cases"]
    # every dtype, every case, every engine forced (plans()), one and several blocks
    # per direction, the module case; real, non-zero errors within bounds
    assert {c["label"].split()[0] for c in cases} == {"fp32", "fp16", "bf16"}
    forced = [c["plan"] for c in cases if c["plan"] not in ("auto", "unsupported")]
    assert {cuda_lstm.parse_plan(p).engine for p in forced} == {"fma", "tf32", "f16"}
    assert {cuda_lstm.parse_plan(p).blocks for p in forced} >= {1, 2, 3, 4}
    assert sum("BiLSTM" in c["label"] for c in cases) == 3
    # fp32 H104 does not fit the emulated chip: refused by name, served by auto
    refused = [c for c in cases if c["plan"] == "unsupported"]
    assert [c["label"] for c in refused] == ["fp32 T2 B2 H104 N2 len plan=unsupported"]
    assert refused[0]["ok"] and "does not fit on chip" in refused[0]["detail"]
    assert "refuses it with ValueError" in refused[0]["detail"] and "backend='auto' takes cpu" in refused[0]["detail"]
    for c in cases:
        if c["plan"] == "unsupported":
            assert c["err"] is None and c["bound"] is None, c
            continue
        assert c["ok"] and 0 < c["err"] <= c["bound"], c
        if c["label"].startswith("fp32"):
            tf32 = c["plan"] != "auto" and cuda_lstm.parse_plan(c["plan"]).engine == "tf32"
            assert c["err"] < (check_cases.ATOL["tf32"] if tf32 else 1e-5), c
    ran = [c for c in cases if c["plan"] != "unsupported"]
    assert correct["worst_err"] == max(ran, key=lambda c: c["err"] / c["bound"])["err"]


def test_result_file_schema(emulated_run):
    rc, run, path = emulated_run
    assert set(run) == DOC_TOP and run["schema"] == "bilstm_fast.check/1"
    assert set(run["settings"]) == DOC_SETTINGS and run["settings"]["emulate"] is True
    for r in run["stages"]:
        assert DOC_STAGE <= set(r), r["name"]
        assert r["verdict"] in ("pass", "fail", "hang", "skip")
    correct = next(r for r in run["stages"] if r["name"] == "correct:cuda")
    assert all(DOC_CASE <= set(c) for c in correct["cases"] if "plan=" in c["label"])
    env = run["environment"]
    assert {"device_type", "device_name", "torch", "commit", "python"} <= set(env)
    assert run["results"] == [] and run["peak"] is None      # no timing under --emulate
    assert path.with_suffix(".csv").exists()
    assert Path(run["settings"]["logs"]).is_dir()


def test_timing_stage_on_cpu(monkeypatch, capsys):
    """The timing stage's body (GPU-only in a run) on the CPU with the cpu
    backend at the quick shape: padded rows from bilstm-bench's runner,
    packed rows, the peak, and the verdict table with the timing table."""
    from bilstm_fast.bench.shapes import MODES, QUICK
    monkeypatch.setattr(check_stages, "timing_shapes", lambda: [(QUICK, MODES)])
    ctx = check.Context(device="cpu", backends=["cpu"], dtypes=["fp32"]).for_stage(None, budget_s=600)
    out = check_stages.timing(ctx, lambda **kw: None)
    print(out["detail"])
    rows = out["rows"]
    assert out["verdict"] == "pass" and out["settings"]["left_out"] == 0
    assert {(r["shape"], r["mode"], r["backend"]) for r in rows} == {
        (QUICK.label + p, m, b) for p in ("", " packed") for m in MODES for b in ("torch", "cpu")}
    assert all(r["status"] == "ok" and r["ms_median"] > 0 and r["repeats"] == 12 for r in rows)
    run = {"environment": {"device_name": "CPU", "torch": torch.__version__, "commit": "x"}, "peak": out["peak"],
           "settings": {"memory_method": out["settings"]["memory_method"]}, "results": rows, "verdict": "pass",
           "duration_s": 1.0, "stages": [dict(name="timing", verdict="pass", seconds=1.0, detail=out["detail"],
                                              worst_err=None, bound=None, notes=[])]}
    check.print_run(run)
    printed = capsys.readouterr().out
    assert "timing" in printed and "packed" in printed and "BiLSTM[cpu]" in printed and "PASS" in printed
    # a budget of 0 s leaves every case out, and says so
    out = check_stages.timing(dict(ctx, budget_s=1e-9), lambda **kw: None)
    assert out["settings"]["left_out"] == 4 and "4 left out" in out["detail"]


def test_cli_rejects_bad_arguments(capsys):
    from bilstm_fast.bench import cli
    for argv, text in ((["check", "--stages", "corect"], "unknown corect"),
                       (["check", "--backends", "cpu"], "cpu is not one of cuda, triton"),
                       (["check", "--emulate", "--device", "cuda"], "--emulate runs on the CPU"),
                       (["check", "--device", "cpu"], "cuda or cuda:N")):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2 and text in capsys.readouterr().err, argv


def test_no_gpu_run_stops_after_the_environment(tmp_path):
    """`bilstm-bench check` (not --emulate) on a machine where torch sees no
    GPU: the environment stage fails saying so, every later stage is skipped
    with that reason, the run fails."""
    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA device here")
    from bilstm_fast.bench import cli
    rc = cli.main(["check", "--out", str(tmp_path)])
    (path,) = tmp_path.glob("check_*.json")
    run = json.loads(path.read_text())
    for r in run["stages"]:
        print(r["name"], r["verdict"], r["detail"][:120])
    env, *rest = run["stages"]
    assert rc == 1 and run["verdict"] == "fail"
    assert env["verdict"] == "fail" and "sees no CUDA device" in env["detail"]
    assert rest and all(r["verdict"] == "skip" and r["detail"].startswith("no device to check") for r in rest)
