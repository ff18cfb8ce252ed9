"""``bilstm-bench compare A.json B.json ...``: result files from different
machines in one table and one plot.

Each file keeps its own ratios: a speedup is always against nn.LSTM measured
in the same run on the same device (never across files), and % peak against
that device's peak. What is merged is the layout: one row per (shape, dtype,
mode, implementation), one column group per device.
"""
from __future__ import annotations

import csv
from pathlib import Path

from . import plot, report, results


def device_labels(runs: list[dict], paths: list[Path]) -> list[str]:
    """The device name of each run; made unique with the file name when two
    files come from the same kind of device."""
    names = [r["environment"]["device_name"] for r in runs]
    return [n if names.count(n) == 1 else f"{n} [{p.stem}]" for n, p in zip(names, paths)]


def merge(runs: list[dict], labels: list[str]) -> dict:
    """{"devices": labels, "rows": {(shape, dtype, mode, impl): {label: row}}}, rows in
    first-seen order. The baseline's impl is "nn.LSTM" on every device (its cuDNN
    suffix dropped) so the baselines of a CPU and a GPU line up."""
    rows: dict[tuple, dict] = {}
    for run, label in zip(runs, labels):
        for r in run["results"]:
            impl = "nn.LSTM" if r["backend"] == "torch" else r["impl"]
            rows.setdefault((r["shape"], r["dtype"], r["mode"], impl), {})[label] = r
    return {"devices": labels, "rows": rows}


def write_csv(merged: dict, path: Path) -> Path:
    fields = ["device", *results.ROW_FIELDS]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for per_device in merged["rows"].values():
            for label, r in per_device.items():
                w.writerow({"device": label, **r})
    return path


def compare_files(paths: list[Path], out_dir: Path, console) -> dict[str, Path]:
    """Read the result files (ValueError naming a bad one), print the merged
    table, write compare.csv and compare.png in out_dir; returns their paths."""
    runs = [results.read(path) for path in paths]
    labels = device_labels(runs, paths)
    merged = merge(runs, labels)
    console.print(report.compare_table(merged))
    for run, label in zip(runs, labels):
        env, peak = run["environment"], run["peak"]
        console.print(f"{label}: torch {env['torch']}, commit {str(env['commit'])[:10]}, "
                      f"{env['torch_threads']} threads, SMs {env['sm_count']}; peak {peak['source']}: "
                      f"{peak['description']}", highlight=False, markup=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = [{**r, "impl": impl, "device": label}
            for (_, _, _, impl), per_device in merged["rows"].items() for label, r in per_device.items()]
    return {"csv": write_csv(merged, out_dir / "compare.csv"),
            "png": plot.plot_bars(flat, lambda r: f"{r['device']}: {r['impl']}",
                                  "bilstm-bench compare: " + " vs ".join(labels),
                                  out_dir / "compare.png")}
