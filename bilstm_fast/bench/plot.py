"""PNG plots: speedup over nn.LSTM and GFLOP/s per shape, one bar per series.
A run's series are its implementations; a comparison's are (device,
implementation). Drawn on a bare matplotlib Figure (Agg canvas): no display
needed, and pyplot's global backend is left alone for whoever imports us."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from .workload import BASELINE


def plot_bars(rows: list[dict], series_of, title: str, path: Path) -> Path:
    """Two panels over the same x axis (shape · dtype · mode): speedup of each
    non-baseline series and GFLOP/s of every series. ``series_of(row)`` names
    the bar a row belongs to. Rows that are not "ok" have no bar."""
    ok = [r for r in rows if r["status"] == "ok" and r["gflops"] is not None]
    cases = list(dict.fromkeys(f"{r['shape']}\n{r['dtype']} {r['mode']}" for r in rows))
    series = list(dict.fromkeys(series_of(r) for r in ok))
    value = {(series_of(r), f"{r['shape']}\n{r['dtype']} {r['mode']}"): r for r in ok}

    fig = Figure(figsize=(max(8.0, 0.9 * len(cases) + 3), 9))
    ax_s, ax_g = fig.subplots(2, 1, sharex=True)
    width = 0.8 / max(1, len(series))
    speedup_series = list(dict.fromkeys(series_of(r) for r in ok if r["backend"] != BASELINE))
    for ax, names, field in ((ax_s, speedup_series, "speedup"), (ax_g, series, "gflops")):
        for i, name in enumerate(names):
            xs, ys = [], []
            for j, c in enumerate(cases):
                r = value.get((name, c))
                if r is not None and r[field] is not None:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    ys.append(r[field])
            if field == "speedup":  # bars grow from 1: up = faster than nn.LSTM, down = slower
                ax.bar(xs, [y - 1 for y in ys], bottom=1, width=width, label=name)
            else:
                ax.bar(xs, ys, width=width, label=name)
        ax.grid(axis="y", alpha=0.3)
    ax_s.axhline(1.0, color="black", linewidth=0.8)
    if speedup_series:
        ax_s.set_yscale("log")  # ratios: 2x faster and 2x slower are the same distance from 1
    ax_s.set_ylabel("speedup vs nn.LSTM (same device)")
    if not speedup_series:
        ax_s.text(0.5, 0.5, "no BiLSTM backend timed (none available / all failed the check)",
                  ha="center", va="center", transform=ax_s.transAxes)
    ax_g.set_ylabel("GFLOP/s")
    ax_g.set_xticks(range(len(cases)))
    ax_g.set_xticklabels(cases, rotation=60, ha="right", fontsize=7)
    for ax in (ax_s, ax_g):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    ax_s.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
