"""``bilstm-bench check``: the GPU acceptance run (docs/gpu.md), also what a
user runs on a new GPU; ``--emulate`` runs the same stages on a CPU.

    bilstm-bench check [--emulate] [--full] [--out DIR] [--device cuda:N]
                       [--stages NAME,...] [--backends cuda,triton] [--budget S]

Each stage (check_stages.py) runs in its own subprocess with a timeout, so a
deadlocked persistent kernel is reported as a hang of that stage (with the
case it was running) and the run goes on; a stage that raises or dies is a
failure. After a hang on a GPU, a tiny probe checks that the device still
answers before the next stage starts. Results: one JSON file (schema
"bilstm_fast.check/1": the bench result file's environment / peak /
settings / results, plus the stages and the verdict), a CSV of the timing
rows, the stages' logs, and a verdict table: stage, pass / fail / hang /
skip, the worst error against its bound, the time.

Reading order: STAGES (what runs, its timeout, its expected time on an
H100/H200), run_stage (one isolated stage), run_check (the whole run),
main (the CLI). ``python -m bilstm_fast.bench.check --child SPEC`` is the
stage side of run_stage.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

SCHEMA = "bilstm_fast.check/1"
VERDICTS = ("pass", "fail", "hang", "skip")
GPU_BACKENDS = ("cuda", "triton")
DTYPES = ("fp32", "fp16", "bf16")
STAGE_MODULE = "bilstm_fast.bench.check_stages"
DEFAULT_BUDGET_S = 480     # the whole default run on one H100/H200, compiles included


@dataclass(frozen=True)
class StageDef:
    name: str
    function: str         # in check_stages.py
    per_backend: bool
    timeout_s: float      # a stage still running then is killed and reported as a hang
    expected_s: float     # its share of DEFAULT_BUDGET_S on an H100/H200 (an estimate: never run there yet)
    what: str


# In run order. Expected times are estimates from the work each does (no GPU
# has run them yet); the timing stage takes what is left of --budget.
STAGES = (
    StageDef("environment", "environment", False, 120, 15, "GPU, SMs, driver, CUDA runtimes of torch and _cuda, cuDNN, Triton, "
                                            "backend status, what auto picks per dtype / H"),
    StageDef("compile", "compile_triton", False, 300, 75, "every Triton kernel variant of the later stages, compiled in parallel workers"),
    StageDef("correct", "correct", True, 240, 30, "op and BiLSTM vs float64: fp32 tight, fp16/bf16 three-way, every plan, "
                                       "H 17..1040, B 1..256, unsorted lengths, all gradients"),
    StageDef("determinism", "determinism", True, 180, 15, "kernel outputs bitwise equal over repeated runs at a large shape"),
    StageDef("streams", "streams", True, 180, 10, "two calls on two streams at once plus a GEMM on a third"),
    StageDef("graph", "graph", True, 180, 15, "CUDA-graph capture and replay: op forward, forward+backward, BiLSTM"),
    StageDef("big", "big", True, 300, 30, "more than 2^31 gate elements (T1024 B256 H1040 bf16)"),
    StageDef("timing", "timing", False, 420, 150, "nn.LSTM (cuDNN) vs each GPU backend on the default sweep, "
                                        "padded and packed, fp32/fp16/bf16, medians"),
)


# --------------------------------------------------------------- one stage
def _last_event(path: Path) -> Optional[dict]:
    try:
        lines = path.read_text().strip().splitlines()
        return json.loads(lines[-1]) if lines else None
    except (OSError, json.JSONDecodeError):
        return None


def _tail(path: Path, n: int = 6) -> str:
    try:
        return " | ".join(line.strip() for line in path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return ""


def _kill_group(proc: subprocess.Popen) -> bool:
    """SIGTERM, then SIGKILL, to the stage's process group (it is a session
    leader: its workers go too). True when it is gone."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return True
        try:
            proc.wait(timeout=wait)
            return True
        except subprocess.TimeoutExpired:
            continue
    return False


def run_stage(name: str, target: str, ctx: dict, timeout_s: float, workdir: Path,
              env: Optional[dict] = None) -> dict:
    """Run ``target`` ("module:function", called as fn(ctx, events)) in a
    fresh Python process with ``env``; wait at most ``timeout_s``. Returns
    the stage's record: its own result, or verdict "hang" (killed at the
    timeout; detail names the last event) or "fail" (raised, or died
    without a result)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    paths = {k: workdir / f"{stem}.{k}" for k in ("spec.json", "result.json", "events.jsonl", "log")}
    for p in (paths["result.json"], paths["events.jsonl"]):
        p.unlink(missing_ok=True)
    paths["spec.json"].write_text(json.dumps({"target": target, "ctx": ctx, "result": str(paths["result.json"]),
                                              "events": str(paths["events.jsonl"])}))
    child_env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    with paths["log"].open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bilstm_fast.bench.check", "--child", str(paths["spec.json"])],
                                stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
            hung = False
        except subprocess.TimeoutExpired:
            hung = True
            gone = _kill_group(proc)
            rc = proc.returncode
    seconds = round(time.perf_counter() - t0, 1)
    record = {"name": name, "verdict": "fail", "seconds": seconds, "timeout_s": timeout_s, "detail": "",
              "worst": "", "worst_err": None, "bound": None, "notes": [], "log": str(paths["log"])}
    if hung:
        last = _last_event(paths["events.jsonl"])
        record.update(verdict="hang", detail=f"no result within {timeout_s:g} s: killed"
                      + ("" if gone else " (the process did not exit after SIGKILL)")
                      + (f"; it was running {json.dumps(last)}" if last else "; no event was logged"))
        return record
    try:
        result = json.loads(paths["result.json"].read_text())
    except (OSError, json.JSONDecodeError):
        how = f"signal {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exit code {rc}"
        last = _last_event(paths["events.jsonl"])
        record["detail"] = (f"died without a result ({how})" + (f" while running {json.dumps(last)}" if last else "")
                            + f"; log: {_tail(paths['log'])}")
        return record
    record.update({k: v for k, v in result.items() if k not in ("seconds", "timeout_s", "name", "log")})
    if record.get("verdict") not in VERDICTS:
        record["detail"] = f"stage returned verdict {record.get('verdict')!r}; {record.get('detail', '')}"
        record["verdict"] = "fail"
    return record


def _child(spec_path: str) -> int:
    """The stage side of run_stage: call the target, write its result."""
    spec = json.loads(Path(spec_path).read_text())
    events_path, result_path = Path(spec["events"]), Path(spec["result"])
    t0 = time.perf_counter()

    def events(**fields) -> None:
        with events_path.open("a") as f:
            f.write(json.dumps({"t": round(time.time(), 2), "elapsed": round(time.perf_counter() - t0, 2),
                                **fields}, default=str) + "\n")
    events.path = str(events_path)   # for a stage's worker processes (they append lines themselves)
    try:
        events(step="start", target=spec["target"])
        module, _, fn = spec["target"].partition(":")
        result = getattr(importlib.import_module(module), fn)(spec["ctx"], events)
    except BaseException as e:  # the stage raised: a failure, with what and where
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        result = {"verdict": "fail", "detail": f"raised {type(e).__name__}: {first}"[:500],
                  "traceback": traceback.format_exc()[-4000:]}
        traceback.print_exc()
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, result_path)
    return 0


# ------------------------------------------------------------- the whole run
@dataclass
class Context:
    """The run's settings, passed to every stage as a dict."""
    emulate: bool = False
    full: bool = False
    device: str = "cuda"
    backends: list = field(default_factory=lambda: list(GPU_BACKENDS))
    dtypes: list = field(default_factory=lambda: list(DTYPES))
    seed: int = 0
    jobs: int = 1
    budget_s: Optional[float] = DEFAULT_BUDGET_S

    def for_stage(self, backend: Optional[str] = None, budget_s: Optional[float] = None) -> dict:
        d = dict(self.__dict__, backend=backend)
        d["budget_s"] = budget_s
        return d


def stage_env(emulate: bool) -> dict:
    """The stages' environment: --emulate turns on the emulated CUDA kernels
    (before anything imports them); a GPU run turns them off, whatever the
    calling shell had. (Triton needs no switch: CPU tensors run its
    interpreter, CUDA tensors its compiled kernels.)"""
    env = dict(os.environ)
    env.pop("BILSTM_FAST_CUDA_EMULATE", None)
    env.pop("TRITON_INTERPRET", None)   # would only slow the compiled kernels' import down
    if emulate:
        env["BILSTM_FAST_CUDA_EMULATE"] = "1"
    return env


def _gpu_answers(env: dict, device: str) -> bool:
    """After a hang: does the GPU still run a tiny kernel (a fresh process, 60 s)?"""
    code = (f"import torch; x = torch.ones(8, device={device!r}); torch.cuda.synchronize(); "
            "print(float(x.sum()))")
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        return out.returncode == 0 and out.stdout.strip() == "8.0"
    except subprocess.TimeoutExpired:
        return False


def _host_environment(device: str) -> dict:
    """What the run can say without the environment stage (no CUDA in this process)."""
    import torch

    from .device import git_commit, load_average
    return {"device_type": device.split(":")[0], "device_name": "unknown (no environment stage result)",
            "sm_count": None, "torch": torch.__version__, "hostname": platform.node(), "os": platform.platform(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(), "load_avg_1min": load_average(),
            **git_commit()}


def selected(stage: str, backend: Optional[str], wanted: Optional[list]) -> bool:
    if wanted is None or stage == "environment":
        return True
    full = f"{stage}:{backend}" if backend else stage
    return any(w in (stage, full) for w in wanted)


def run_check(ctx: Context, out: Path, wanted: Optional[list] = None, timeout_scale: float = 1.0,
              progress=None, stages: tuple = STAGES, stage_module: str = STAGE_MODULE) -> dict:
    """Every stage in order, each isolated; returns the run (the JSON's content)."""
    progress = progress or (lambda text: None)
    started, t0 = datetime.now(timezone.utc), time.perf_counter()
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    workdir = out / f"check_{stamp}_logs"
    env = stage_env(ctx.emulate)
    records: list[dict] = []
    environment, peak, rows, skipped, memory_method = None, None, [], {}, None
    stop = None     # why every later stage is skipped (no device, or it stopped answering)
    for sd in stages:
        for backend in (ctx.backends if sd.per_backend else [None]):
            name = f"{sd.name}:{backend}" if backend else sd.name
            if not selected(sd.name, backend, wanted):
                continue
            rec = None
            if stop is not None:
                rec = {"verdict": "skip", "detail": stop}
            elif backend is not None and backend in skipped:
                rec = {"verdict": "skip", "detail": f"{backend} unavailable: {skipped[backend]}"}
            budget = None
            if sd.name == "timing" and ctx.budget_s:
                budget = ctx.budget_s - (time.perf_counter() - t0) - 10
                if budget < 30 and rec is None:
                    rec = {"verdict": "skip", "detail": f"left out to fit the {ctx.budget_s:g} s budget "
                                                        "(--budget, or --full for no budget)"}
            if rec is None:
                progress(f"[{time.perf_counter() - t0:5.0f} s] {name} ...")
                rec = run_stage(name, f"{stage_module}:{sd.function}", ctx.for_stage(backend, budget),
                                sd.timeout_s * timeout_scale, workdir, env)
            rec = {"name": name, "stage": sd.name, "backend": backend, "seconds": 0.0,
                   "timeout_s": sd.timeout_s * timeout_scale, "expected_s": sd.expected_s, "worst": "",
                   "worst_err": None, "bound": None, "notes": [], **rec}
            progress(f"[{time.perf_counter() - t0:5.0f} s] {name}: {rec['verdict']} ({rec['seconds']:.1f} s) "
                     f"{rec.get('detail', '')[:160]}")
            if sd.name == "environment":
                environment = rec.pop("environment", None)
                if rec.get("device_ok") is False:
                    stop = f"no device to check: {rec.get('detail', '')}"
                for b, why in (rec.get("backends") or {}).items():
                    if why is not None and b in ctx.backends:
                        skipped[b] = why
            if sd.name == "timing":
                rows, peak = rec.pop("rows", []) or [], rec.pop("peak", None)
                memory_method = (rec.get("settings") or {}).get("memory_method")
            if rec["verdict"] == "hang" and not ctx.emulate:
                answers = _gpu_answers(env, ctx.device)
                rec["notes"].append("after the hang the GPU " + ("still answered" if answers else
                                                                 "did not answer: later stages skipped"))
                if not answers:
                    stop = f"the GPU stopped answering after the hang of {name}"
            records.append(rec)
    bad = [r for r in records if r["verdict"] in ("fail", "hang")]
    return {
        "schema": SCHEMA,
        "created_utc": started.isoformat(timespec="seconds"),
        "command": "",
        "duration_s": round(time.perf_counter() - t0, 1),
        "verdict": "fail" if bad else "pass",
        "environment": environment or _host_environment(ctx.device),
        "peak": peak,
        "settings": {**{k: v for k, v in ctx.__dict__.items()}, "stages": [r["name"] for r in records],
                     "timeout_scale": timeout_scale, "logs": str(workdir), "memory_method": memory_method},
        "skipped_backends": skipped,
        "stages": records,
        "results": rows,
    }


def write(run: dict, out: Path) -> dict:
    """The run's JSON and the timing rows' CSV (bench/results.py's writer)."""
    from . import results
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(run["environment"].get("device_name", ""))).strip("-").lower()[:60]
    stamp = run["created_utc"].replace("-", "").replace(":", "")[:15]
    return results.write(run, out, f"check_{slug or 'device'}_{stamp}")


# ----------------------------------------------------------------- report
STYLE = {"pass": "green", "fail": "bold red", "hang": "bold magenta", "skip": "dim"}


def _err(r: dict) -> str:
    if r.get("worst_err") is None:
        return "-"
    return f"{r['worst_err']:.2e}" + (f" / {r['bound']:.2e}" if r.get("bound") else "")


def print_run(run: dict, console=None) -> None:
    from rich.markup import escape
    from rich.table import Table

    from .report import console_for_tables
    console = console or console_for_tables()
    env = run["environment"]
    table = Table(title=f"bilstm-bench check on {env.get('device_name')} "
                        f"(torch {env.get('torch', '?')}, commit {str(env.get('commit'))[:10]})")
    for col in ("stage", "verdict", "worst err / bound", "time s", "detail"):
        table.add_column(col, justify="right" if col == "time s" else "left", no_wrap=col != "detail")
    for r in run["stages"]:
        table.add_row(r["name"], f"[{STYLE[r['verdict']]}]{r['verdict']}[/]", _err(r), f"{r['seconds']:.1f}",
                      escape(str(r.get("detail", ""))[:400]))
    console.print(table)
    for r in run["stages"]:
        for note in r.get("notes") or []:
            console.print(f"note ({r['name']}): {escape(str(note))}", highlight=False)
    if run["results"]:
        from .report import run_table
        t, notes = run_table({**run, "peak": run["peak"] or {"source": "-", "description": "-"}})
        console.print(t)
        for i, note in enumerate(notes, 1):
            console.print(f"({i}) {escape(note)}" if i < len(notes) else note, highlight=False)
    console.print(f"[bold]{run['verdict'].upper()}[/] in {run['duration_s']:.0f} s", highlight=False)


# -------------------------------------------------------------------- CLI
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bilstm-bench check",
        description="The GPU acceptance run: each stage in its own process with a timeout (a hang is "
                    "reported as a hang of that stage), the GPU backends on CUDA tensors against the "
                    "float64 reference, then timed against nn.LSTM (cuDNN). Writes one JSON and prints "
                    "a verdict table (docs/gpu.md). Exit code 1 when a stage failed or hung.",
        epilog="Stages: " + "; ".join(f"{s.name}{' (per backend)' if s.per_backend else ''}: {s.what}"
                                      for s in STAGES))
    p.add_argument("--emulate", action="store_true",
                   help="run the same stages on the CPU: emulated CUDA kernels, Triton's interpreter, tiny "
                        "shapes, no timing and no CUDA graphs (what CI runs)")
    p.add_argument("--full", action="store_true",
                   help="more cases (H to 12288, T to 128), 20 determinism runs, bilstm-bench's adaptive "
                        "repeats, no time budget")
    p.add_argument("--out", type=Path, default=Path("bench_results"),
                   help="directory for the JSON, the CSV and the stage logs (default: ./bench_results)")
    p.add_argument("--device", default=None, help="cuda or cuda:N (default: cuda; the CPU with --emulate)")
    p.add_argument("--stages", default=None,
                   help="comma list of stages to run (NAME or NAME:BACKEND, e.g. correct,graph:cuda); "
                        "environment always runs")
    p.add_argument("--backends", default="cuda,triton", help="GPU backends to check (default: cuda,triton)")
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                   help=f"seconds the whole run may take; the timing stage gets what is left "
                        f"(default {DEFAULT_BUDGET_S}; 0: none)")
    p.add_argument("--jobs", type=int, default=None,
                   help="parallel Triton compile workers (default: half the CPUs, at most 8)")
    p.add_argument("--timeout-scale", type=float, default=1.0,
                   help="multiply every stage's timeout (--full multiplies them by 3 more)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p


def main(argv: Optional[list] = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        return _child(args.child)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in GPU_BACKENDS]
    if unknown:
        parser().error(f"argument --backends: {', '.join(unknown)} is not one of {', '.join(GPU_BACKENDS)}")
    device = args.device or ("cpu" if args.emulate else "cuda")
    if args.emulate and device != "cpu":
        parser().error("argument --device: --emulate runs on the CPU")
    if not args.emulate and not device.startswith("cuda"):
        parser().error("argument --device: cuda or cuda:N (use --emulate for the CPU)")
    jobs = args.jobs or (2 if args.emulate else max(1, min(8, (os.cpu_count() or 2) // 2)))
    ctx = Context(emulate=args.emulate, full=args.full, device=device, backends=backends, jobs=jobs,
                  budget_s=None if args.full or not args.budget else args.budget)
    wanted = [w.strip() for w in args.stages.split(",") if w.strip()] if args.stages else None
    known = {s.name for s in STAGES} | {f"{s.name}:{b}" for s in STAGES if s.per_backend for b in GPU_BACKENDS}
    if wanted and set(wanted) - known:
        parser().error(f"argument --stages: unknown {', '.join(sorted(set(wanted) - known))}; "
                       f"expected some of {', '.join(s.name for s in STAGES)} (or NAME:cuda, NAME:triton)")

    from rich.console import Console
    err = Console(stderr=True)
    scale = args.timeout_scale * (3 if args.full else 1)   # --full's cases are far larger
    run = run_check(ctx, args.out, wanted, scale,
                    progress=lambda text: err.print(text, highlight=False, markup=False))
    run["command"] = " ".join(["bilstm-bench", "check", *(sys.argv[1:] if argv is None else argv)])
    paths = write(run, args.out)
    print_run(run)
    print("wrote " + ", ".join(str(p) for p in paths.values()) + f"; stage logs in {run['settings']['logs']}")
    return 0 if run["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
