"""``bilstm-bench`` (also ``python -m bilstm_fast.bench``).

    bilstm-bench [run] [options]      sweep shapes x dtypes x modes, every backend vs nn.LSTM
    bilstm-bench profile [options]    one shape under torch.profiler: Chrome trace, top ops
    bilstm-bench compare A.json B.json ...   merge result files from different machines
    bilstm-bench check [--emulate] [--full]  the GPU acceptance run (check.py, docs/gpu.md)

Every subcommand's --help lists its options; docs/bench.md explains the
columns and the result-file schema.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .shapes import GRID, MODES, QUICK, default_sweep, grid, parse_shape
from .timing import BUDGET_S, MAX_REPEATS, MIN_REPEATS, ROUNDS
from .workload import DTYPES

SUBCOMMANDS = ("run", "profile", "compare", "check")

# Backends timed by default on each device (docs/design.md §3). "reference" is the
# oracle, a Python loop per step: timing it says nothing about our kernels.
# "triton" on a CPU runs in Triton's interpreter (~10 ms per program-step).
# Both run only when named with --backends (or with --backends all).
DEFAULT_BACKENDS = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}


# ------------------------------------------------------------ option types
def _list_of(kind, choices=None):
    """argparse type: comma-separated values; argparse names the option on error."""
    def convert(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
        out = []
        for t in items:
            if choices is not None and t not in choices:
                raise argparse.ArgumentTypeError(f"{t!r} is not one of {', '.join(choices)}")
            try:
                v = kind(t)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{t!r} is not {'an integer' if kind is int else 'valid'}") from None
            if kind is int and v < 1:
                raise argparse.ArgumentTypeError(f"{t!r} must be >= 1")
            out.append(v)
        return out
    convert.__name__ = "list"
    return convert


def _int_at_least(low: int):
    def convert(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"{v} must be >= {low}")
        return v
    convert.__name__ = "integer"
    return convert


def _shape(text: str):
    try:
        return parse_shape(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _device(text: str):
    import torch
    if text not in ("cpu", "cuda") and not text.startswith("cuda:"):
        raise argparse.ArgumentTypeError(f"{text!r} is not cpu, cuda or cuda:N")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: torch sees no CUDA device on this machine")
    return torch.device(text)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", type=_device, default=None,
                   help="cpu, cuda or cuda:N (default: the GPU if there is one, else the CPU)")
    p.add_argument("--threads", type=_int_at_least(1), default=None,
                   help="torch.set_num_threads on a CPU (default: torch's default)")
    p.add_argument("--tf32", action="store_true",
                   help="let fp32 GEMMs use TF32 tensor cores on both sides (default off: fp32 is fp32; "
                        "%% peak then uses the TF32 figure)")
    p.add_argument("--out", type=Path, default=Path("bench_results"),
                   help="directory for the files written (default: ./bench_results)")


def _setup_torch(args) -> None:
    import torch
    from .device import default_device, set_tf32
    args.device = args.device or default_device()
    if args.threads:
        torch.set_num_threads(args.threads)
    set_tf32(args.tf32)


# ---------------------------------------------------------------------- run
def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bilstm-bench",
        description="Time bilstm_fast.BiLSTM (every available backend) against torch.nn.LSTM "
                    "with the same weights, whole module forward (inference) and forward+backward "
                    "(training). Each backend's results are checked against nn.LSTM before it is "
                    "timed. Other subcommands: `bilstm-bench profile --help`, "
                    "`bilstm-bench compare --help`.",
        epilog="Shapes: --shape (repeatable) lists shapes; --seq-len/--batch/--input-size/"
               "--hidden/--layers each replace one dimension of the grid ("
               + ", ".join(f"{d}={','.join(map(str, v))}" for d, v in GRID.items())
               + ") and time the whole product. With neither, the default sweep of the device "
               "runs (docs/bench.md).")
    _add_common(p)
    p.add_argument("--quick", action="store_true",
                   help=f"one small shape ({QUICK.label}), both modes, 3 repeats: seconds (CI)")
    p.add_argument("--shape", type=_shape, action="append", metavar="T=..,B=..,D=..,H=..[,L=..][,N=..][,P=..]",
                   help="a shape to time (repeatable); N=1 for a unidirectional LSTM, P=proj_size")
    for flag, dim, what in (("--seq-len", "T", "sequence lengths"), ("--batch", "B", "batch sizes"),
                            ("--input-size", "D", "input sizes"), ("--hidden", "H", "hidden sizes"),
                            ("--layers", "L", "layer counts")):
        p.add_argument(flag, dest=f"grid_{dim}", type=_list_of(int), metavar="N[,N...]",
                       help=f"{what} of the grid")
    p.add_argument("--modes", type=_list_of(str, MODES), default=list(MODES),
                   help="inference, training (default: both)")
    p.add_argument("--dtypes", type=_list_of(str, tuple(DTYPES)), default=["fp32"],
                   help="fp32, fp16, bf16, fp64 (default: fp32)")
    p.add_argument("--backends", type=_list_of(str), default=None,
                   help="BiLSTM backends to time, or 'all' for every available one "
                        "(default: cuda,triton on a GPU, cpu on a CPU; --quick adds reference). "
                        "nn.LSTM is always timed as the baseline")
    p.add_argument("--peers", type=_list_of(str), default=None,
                   help="peers timed next to nn.LSTM where they apply (peers.py): onnxruntime "
                        "(ONNX Runtime's LSTM op), torch-int8 (torch's dynamic int8 LSTM), 'all', or "
                        "'none' (default: all that are installed on a CPU; --quick: none)")
    p.add_argument("--rounds", type=_int_at_least(1), default=None,
                   help=f"rounds of rotated blocks: each implementation is timed in its own block "
                        f"per round, the order rotated (default: {ROUNDS}; --quick: 1)")
    p.add_argument("--repeats", type=_int_at_least(1), default=None,
                   help=f"timed calls per implementation over all rounds (default: adaptive, "
                        f"{MIN_REPEATS} to {MAX_REPEATS}, until ~{BUDGET_S:g} s)")
    p.add_argument("--warmup", type=_int_at_least(0), default=1,
                   help="untimed calls before timing, after the check call; the first one "
                        "measures peak memory (default: 1)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="do not measure peak memory")
    p.add_argument("--no-plot", dest="plot", action="store_false", help="do not write the PNG")
    return p


def _choose_backends(args, parser) -> tuple[list[str], dict[str, str]]:
    """(backends to time, {backend: why not}) for this run."""
    from bilstm_fast import backend_status
    status = backend_status()
    if args.backends is None:
        wanted = list(DEFAULT_BACKENDS.get(args.device.type, ()))
        if args.quick:
            wanted.append("reference")
        skipped = {n: ("the oracle, a Python loop per step; time it with --backends reference"
                       if n == "reference" else
                       "only Triton's CPU interpreter here; time it with --backends triton"
                       if n == "triton" and args.device.type == "cpu" else
                       f"not a {args.device.type} backend")
                   for n in status if n not in wanted}
    elif args.backends == ["all"]:
        wanted, skipped = list(status), {}
    else:
        unknown = [b for b in args.backends if b not in status]
        if unknown:
            parser.error(f"argument --backends: unknown backend(s) {', '.join(unknown)}; "
                         f"expected 'all' or some of {', '.join(status)}")
        wanted, skipped = list(dict.fromkeys(args.backends)), {}
    for name in list(wanted):
        if status[name] is not None:
            wanted.remove(name)
            skipped[name] = f"unavailable: {status[name]}"
    return wanted, skipped


def _choose_peers(args, parser) -> tuple[list[str], dict[str, str]]:
    """(peers to time, {peer: why not}) for this run."""
    from .peers import PEERS, available_peers
    status = available_peers()
    if args.peers is None:
        if args.quick or args.device.type != "cpu":
            return [], {}
        wanted = list(PEERS)
    elif args.peers == ["none"]:
        return [], {}
    elif args.peers == ["all"]:
        wanted = list(PEERS)
    else:
        unknown = [p for p in args.peers if p not in PEERS]
        if unknown:
            parser.error(f"argument --peers: unknown peer(s) {', '.join(unknown)}; expected 'all', "
                         f"'none' or some of {', '.join(PEERS)}")
        wanted = list(dict.fromkeys(args.peers))
    skipped = {}
    for name in list(wanted):
        if status[name] is not None:
            wanted.remove(name)
            skipped[name] = f"unavailable: {status[name]}"
        elif args.device.type != "cpu":
            wanted.remove(name)
            skipped[name] = "CPU only"
    return wanted, skipped


def _sweep(args, parser):
    grid_dims = {d: getattr(args, f"grid_{d}") for d in "TBDHL"}
    given = [d for d, v in grid_dims.items() if v]
    if args.quick and (args.shape or given):
        parser.error("argument --quick: runs its own shape; do not combine it with --shape or "
                     "--seq-len/--batch/--input-size/--hidden/--layers")
    if args.shape and given:
        parser.error("argument --shape: give either --shape or the grid options "
                     "(--seq-len/--batch/--input-size/--hidden/--layers), not both")
    modes = tuple(dict.fromkeys(args.modes))
    if args.quick:
        return [(QUICK, modes)]
    if args.shape:
        return [(s, modes) for s in dict.fromkeys(args.shape)]
    if given:
        return [(s, modes) for s in grid(**grid_dims)]
    return default_sweep(args.device.type, modes)


def run_main(argv: list[str]) -> int:
    parser = run_parser()
    args = parser.parse_args(argv)
    started = time.perf_counter()
    _setup_torch(args)
    sweep = _sweep(args, parser)
    backends, skipped = _choose_backends(args, parser)
    peers, skipped_peers = _choose_peers(args, parser)
    skipped.update(skipped_peers)
    if args.quick and args.repeats is None:
        args.repeats = 3
    if args.rounds is None:
        args.rounds = 1 if args.quick else ROUNDS

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import plot, report, results, runner
    from .device import device_peak, environment
    from .timing import MEMORY_METHOD

    console, err = report.console_for_tables(), Console(stderr=True)
    dtypes = list(dict.fromkeys(args.dtypes))
    cases = runner.cases_of(sweep, dtypes)
    err.print(f"[bold]bilstm-bench[/]: {len(cases)} cases x (nn.LSTM + {', '.join(backends + peers) or 'no backend'}) "
              f"on {args.device}; measuring the device peak ...")
    peak = device_peak(args.device, dtypes, tf32=args.tf32)
    settings = runner.Settings(args.device, backends, args.warmup, args.repeats, args.memory, peers,
                               args.rounds)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err, transient=True) as progress:
        task = progress.add_task("starting", total=sum(1 + len(backends) + len(runner.peers_for(c, settings))
                                                       for c in cases))

        done = 0

        def advance(what: str) -> None:  # called as each implementation starts
            nonlocal done
            progress.update(task, description=what, completed=done)
            done += 1
        rows = runner.run(cases, settings, advance)
    if peak.source == "measured":  # measured again after the sweep; the better one counts
        peak = device_peak(args.device, dtypes, tf32=args.tf32, earlier=peak)
    runner.add_pct_peak(rows, peak)

    run = {
        "schema": results.SCHEMA,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["bilstm-bench", *argv]),
        "duration_s": None,
        "environment": environment(args.device),
        "peak": peak.as_dict(),
        "settings": {"device": str(args.device), "dtypes": dtypes, "modes": list(dict.fromkeys(args.modes)),
                     "backends": backends, "peers": peers, "rounds": args.rounds,
                     "warmup": args.warmup, "repeats": args.repeats,
                     "tf32": args.tf32, "memory_method": MEMORY_METHOD[args.device.type] if args.memory else None},
        "skipped_backends": skipped,
        "results": results.as_dicts(rows),
    }
    run["duration_s"] = round(time.perf_counter() - started, 2)
    paths = results.write(run, args.out)
    if args.plot:
        paths["png"] = plot.plot_bars(run["results"], lambda r: r["impl"],
                                      f"bilstm-bench: {run['environment']['device_name']}",
                                      paths["json"].with_suffix(".png"))
    report.print_run(run, console)
    console.print(f"run time {run['duration_s']:.1f} s; wrote " + ", ".join(str(p) for p in paths.values()))
    return exit_status(rows)


def exit_status(rows) -> int:
    """1 when a row is a wrong result of ours (or of an exact peer: its
    conversion from nn.LSTM), a bug; errors (e.g. an unsupported dtype) are
    not, nor is an inexact peer's (int8) mismatch, reported in the table but
    never timed."""
    from .peers import PEERS
    return int(any(r.status == "mismatch" and (r.backend not in PEERS or PEERS[r.backend].exact) for r in rows))


# ------------------------------------------------------------------ profile
def profile_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bilstm-bench profile",
        description="Run one shape under torch.profiler for each implementation: write a Chrome "
                    "trace, print the top ops/kernels by self time and the kernel launches (GPU) "
                    "or aten ops (CPU) per forward and per backward.")
    _add_common(p)
    p.add_argument("--shape", type=_shape, default=parse_shape("T=64,B=32,D=300,H=256,L=1"),
                   metavar="T=..,B=..,D=..,H=..[,L=..][,N=..][,P=..]",
                   help="the shape (default: T=64,B=32,D=300,H=256,L=1)")
    p.add_argument("--quick", action="store_true", help=f"the small shape {QUICK.label}, 2 steps")
    p.add_argument("--backends", type=_list_of(str), default=["auto", "torch"],
                   help="implementations to profile: BiLSTM backends, 'auto', and 'torch' for "
                        "nn.LSTM (default: auto,torch)")
    p.add_argument("--mode", choices=MODES, default="inference")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32")
    p.add_argument("--steps", type=_int_at_least(1), default=5, help="profiled steps (default: 5)")
    p.add_argument("--warmup", type=_int_at_least(0), default=2, help="steps before profiling (default: 2)")
    p.add_argument("--row-limit", type=_int_at_least(1), default=15, help="rows of the top-ops table")
    p.add_argument("--nvtx", action="store_true",
                   help="GPU only: also run the steps under emit_nvtx (an NVTX range per op) for "
                        "`nsys profile -t cuda,nvtx bilstm-bench profile --nvtx`")
    args = p.parse_args(argv)
    _setup_torch(args)
    if args.nvtx and args.device.type != "cuda":
        p.error("argument --nvtx: needs a CUDA device (NVTX ranges are read by Nsight Systems)")
    shape, steps = (QUICK, min(args.steps, 2)) if args.quick else (args.shape, args.steps)

    from bilstm_fast import backend_status
    known = ["auto", "torch", *backend_status()]
    unknown = [b for b in args.backends if b not in known]
    if unknown:
        p.error(f"argument --backends: unknown {', '.join(unknown)}; expected some of {', '.join(known)}")

    import json

    from .profiling import profile_model
    from .workload import BASELINE, build_baseline, build_bilstm, impl_label, make_inputs

    from rich.markup import escape

    from .report import console_for_tables
    console = console_for_tables()
    baseline = build_baseline(shape, args.dtype, args.device)
    inputs = make_inputs(shape, args.dtype, args.device)
    stem = f"{shape.label.replace(' ', '_')}_{args.dtype}_{args.mode}"
    summaries = {}
    for backend in dict.fromkeys(args.backends):
        model = baseline if backend == BASELINE else build_bilstm(baseline, backend)
        label = impl_label(backend, args.device.type)
        trace = args.out / f"trace_{backend}_{stem}.json"
        console.rule(escape(f"{label}: {shape.label} {args.dtype} {args.mode}, {steps} steps on {args.device}"))
        try:
            s = profile_model(model, inputs, args.mode, args.device, trace, steps, args.warmup,
                              args.row_limit, args.nvtx)
        except Exception as e:  # report and go on to the next implementation
            console.print(f"[red]{escape(label)} failed:[/] {escape(f'{type(e).__name__}: {e}')}", highlight=False)
            summaries[backend] = {"error": f"{type(e).__name__}: {e}"}
            continue
        console.print(s["top_ops"], markup=False, highlight=False)
        counts = ", ".join(f"{n:g} per {phase}" for phase, n in s["per_step"].items())
        console.print(f"{s['counted']}: {counts}" + (
            f"; GPU kernels per step: {s['gpu_kernels_per_step']:g}" if "gpu_kernels_per_step" in s else ""),
            markup=False, highlight=False)
        console.print(f"Chrome trace: {trace}", markup=False, highlight=False)
        summaries[backend] = {k: v for k, v in s.items() if k != "top_ops"}
    summary_path = args.out / f"profile_{stem}.json"
    summary_path.write_text(json.dumps({"shape": shape.as_dict(), "dtype": args.dtype, "mode": args.mode,
                                        "device": str(args.device), "profiles": summaries}, indent=2) + "\n")
    console.print(f"summary: {summary_path}", markup=False, highlight=False)
    return 0 if all("error" not in s for s in summaries.values()) else 1


# ------------------------------------------------------------------ compare
def compare_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bilstm-bench compare",
        description="Merge bilstm-bench result files (JSON) from different machines/GPUs into one "
                    "table (speedup vs nn.LSTM and GFLOP/s per shape per device) and one plot.")
    p.add_argument("files", nargs="+", type=Path, help="result files written by bilstm-bench (*.json)")
    p.add_argument("--out", type=Path, default=Path("bench_results"),
                   help="directory for compare.csv and compare.png (default: ./bench_results)")
    args = p.parse_args(argv)

    from .compare import compare_files
    from .report import console_for_tables

    console = console_for_tables()
    try:
        written = compare_files(args.files, args.out, console)
    except ValueError as e:
        p.error(f"argument files: {e}")
    console.print("wrote " + ", ".join(str(w) for w in written.values()), highlight=False)
    return 0


# -------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else "run"
    if argv and argv[0] == command:
        argv = argv[1:]
    if command == "profile":
        return profile_main(argv)
    if command == "compare":
        return compare_main(argv)
    if command == "check":
        from .check import main as check_main
        return check_main(argv)
    return run_main(argv)
