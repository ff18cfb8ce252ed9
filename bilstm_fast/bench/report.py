"""Terminal tables (rich) of a run and of a comparison."""
from __future__ import annotations

import math

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .timing import OTHER_CPUS_MAX, SPREAD_MAX

STATUS_STYLE = {"ok": "green", "mismatch": "bold red", "error": "red"}


def console_for_tables() -> Console:
    """A console that never squeezes a table: when the output is not a terminal
    (a log, a pipe) rich would assume 80 columns and truncate every cell."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _fmt_ms(ms: float) -> str:
    """Three significant digits without exponents: 0.123, 12.3, 1234."""
    return f"{ms:.{max(0, 2 - int(math.floor(math.log10(ms))))}f}" if ms > 0 else "0"


def _untrusted(r: dict) -> bool:
    return r["ms_median"] is not None and r.get("trusted") is False


def _ms(r: dict) -> str:
    if r["ms_median"] is None:
        return "-"
    mark = " !" if _untrusted(r) else ""
    return escape(f"{_fmt_ms(r['ms_median'])} [{_fmt_ms(r['ms_p20'])}-{_fmt_ms(r['ms_p80'])}]{mark}")


def _ratio(r: dict, key: str) -> str:
    """A speedup, with "?" when the row's timing is not trusted."""
    v = r.get(key)
    if v is None:
        return "-"
    return f"{v:.2f}" + ("?" if _untrusted(r) else "")


def run_table(run: dict) -> tuple[Table, list[str]]:
    """The run's table, and the notes its status column points to (why a row
    is a mismatch or an error; one note per distinct reason), printed under
    it so the table stays narrow."""
    env, peak = run["environment"], run["peak"]
    table = Table(title=f"bilstm-bench on {env['device_name']} (torch {env['torch']}, "
                        f"commit {str(env['commit'])[:10]})")
    for col in ("shape", "dtype", "mode", "impl", "status", "ms", "speedup", "vs best peer",
                "GFLOP/s", "% peak", "mem MiB"):
        table.add_column(col, justify="left" if col in ("shape", "dtype", "mode", "impl", "status")
                         else "right", no_wrap=True)
    notes: list[str] = []
    previous_shape = None
    for r in run["results"]:
        if previous_shape is not None and r["shape"] != previous_shape:
            table.add_section()
        previous_shape = r["shape"]
        status = r["status"]
        if status != "ok":
            note = f"{r['impl']}: {r['detail']}"
            if note not in notes:
                notes.append(note)
            status = f"{status} ({notes.index(note) + 1})"
        table.add_row(r["shape"], r["dtype"], r["mode"], escape(r["impl"]),
                      f"[{STATUS_STYLE.get(r['status'], '')}]{status}[/]", _ms(r),
                      _ratio(r, "speedup"), _ratio(r, "vs_best_peer"), _num(r["gflops"], ".1f"),
                      _num(r["pct_peak"], ".1f"), _num(r["peak_mem_mb"], ".1f"))
    untrusted = [r for r in run["results"] if _untrusted(r)]
    if untrusted:
        worst = max(untrusted, key=lambda r: r.get("spread") or 0)
        notes.append(escape(
            f"!/?: {len(untrusted)} row(s) NOT TRUSTED: after {worst.get('attempts')} measurement(s) the "
            f"p20-p80 spread stayed above {SPREAD_MAX:.0%} of the median or other processes kept more "
            f"than {OTHER_CPUS_MAX} CPUs busy while the case was timed (worst: {worst['impl']} "
            f"{worst['shape']}, spread {worst.get('spread') or 0:.0%}, others {worst.get('other_cpus')} "
            f"CPUs); do not quote their times or speedups, rerun on a quiet machine"))
    notes.append(escape(f"ms: median [p20-p80] over repeats in {run['settings'].get('rounds', 1)} rotated "
                        f"rounds; speedup: nn.LSTM median / this median (same run); vs best peer: the "
                        f"fastest of nn.LSTM and the exact peers (ONNX Runtime) / this median; % peak: of the "
                        f"{peak['source']} peak ({peak['description']}); "
                        f"mem: {run['settings'].get('memory_method') or 'not measured'}"))
    return table, notes


def print_run(run: dict, console: Console | None = None) -> None:
    console = console or console_for_tables()
    table, notes = run_table(run)
    console.print(table)
    for i, note in enumerate(notes, 1):
        console.print(f"({i}) {escape(note)}" if i < len(notes) else note, highlight=False)
    from .peers import PEERS
    for name in run["settings"].get("peers", []):
        p = PEERS.get(name)
        if p is not None:
            console.print(f"peer {name}: {escape(p.note)}; timed for {'/'.join(p.modes)} "
                          f"{'/'.join(p.dtypes)} only", style="dim", highlight=False)
    for name, why in run.get("skipped_backends", {}).items():
        console.print(f"not run: {name}: {escape(why)}", style="dim", highlight=False)
    warning = busy_warning(run["environment"])
    if warning:
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)


def busy_warning(env: dict) -> str | None:
    """A warning when other processes competed for the CPU during the run
    (our own threads account for up to torch_threads of the load)."""
    load, cores = env.get("load_avg_1min"), env.get("cpu_count")
    if load is None or not cores or load <= 1.5 * cores:
        return None
    return (f"load average {load:g} on {cores} CPUs at the end of the run: other processes "
            f"competed for the CPU, so times are inflated and noisy (see the p20-p80 spread); "
            f"rerun on a quiet machine before quoting them")


def compare_table(merged: dict) -> Table:
    """merged: compare.merge()'s devices (labels) and rows keyed by case."""
    table = Table(title="bilstm-bench compare: speedup vs nn.LSTM on the same device; "
                        "GFLOP/s (% of that device's peak)")
    for col in ("shape", "dtype", "mode", "impl"):
        table.add_column(col, no_wrap=True)
    for dev in merged["devices"]:
        table.add_column(f"{dev}\nspeedup", justify="right")
        table.add_column(f"{dev}\nGFLOP/s (%)", justify="right")
    for (shape, dtype, mode, impl), per_device in merged["rows"].items():
        cells = []
        for dev in merged["devices"]:
            r = per_device.get(dev)
            if r is None:
                cells += ["", ""]
            elif r["status"] != "ok":
                cells += [f"[{STATUS_STYLE.get(r['status'], '')}]{r['status']}[/]", ""]
            else:
                pct = f" ({r['pct_peak']:.1f})" if r["pct_peak"] is not None else ""
                cells += [_num(r["speedup"], ".2f"), f"{_num(r['gflops'], '.1f')}{pct}"]
        table.add_row(shape, dtype, mode, escape(impl), *cells)
    return table
