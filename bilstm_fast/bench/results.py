"""Result rows and the files they are written to (JSON, CSV) — the schema
docs/bench.md documents and tests/test_bench.py checks.

A result file (JSON) holds one run::

    schema        "bilstm_fast.bench/3"
    created_utc   ISO 8601 time the run finished
    command       the command line
    duration_s    wall time of the whole run
    environment   device.environment(): device name, SM count / CPU model and
                  threads, driver/CUDA/cuDNN/torch/triton/bilstm_fast versions,
                  git commit (or "unknown") and whether the checkout was dirty
    peak          device.Peak: source ("datasheet" | "measured"), description,
                  flops {dtype: FLOP/s}, bandwidth_gbs
    settings      device, dtypes, modes, backends, peers, rounds, warmup, repeats (null = adaptive),
                  tf32, memory_method
    skipped_backends  {backend or peer: why it was not run (or not everywhere)}
    results       [Row, ...]

The CSV has one line per Row (columns ROW_FIELDS) prefixed by ENV_COLUMNS, so
a CSV from each machine can be concatenated as is.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

SCHEMA = "bilstm_fast.bench/3"
# /1: before peers and trust marks; /2: before the P (proj_size) column
READABLE_SCHEMAS = ("bilstm_fast.bench/1", "bilstm_fast.bench/2", SCHEMA)
STATUSES = ("ok", "mismatch", "error")


@dataclass
class Row:
    """One implementation on one (shape, dtype, mode)."""
    shape: str          # Shape.label, e.g. "T64 B8 D300 H256 L1"
    T: int
    B: int
    D: int
    H: int
    L: int
    N: int              # directions
    packed: bool        # variable lengths (shapes.lengths), fed as a PackedSequence
    dtype: str          # fp32 | fp16 | bf16 | fp64
    mode: str           # inference | training
    backend: str        # "torch" for the nn.LSTM baseline, a BiLSTM backend, or a peer (peers.py)
    impl: str           # display name: "nn.LSTM", "nn.LSTM (cuDNN)", "BiLSTM[cpu]", "ONNX Runtime LSTM", ...
    status: str         # ok | mismatch (checked, wrong: not timed) | error (raised: not timed)
    detail: str = ""    # check result or error message
    max_err: float | None = None   # worst scaled error against nn.LSTM (baseline: None)
    gflop: float = 0.0             # FLOPs of one call / 1e9 (shapes.flops)
    ms_median: float | None = None
    ms_p20: float | None = None
    ms_p80: float | None = None
    repeats: int = 0
    gflops: float | None = None    # gflop / median seconds
    pct_peak: float | None = None  # gflops as % of peak.flops[dtype]
    speedup: float | None = None   # baseline median / this median, same run (baseline: 1.0)
    peak_mem_mb: float | None = None  # extra memory of one call, MiB (settings.memory_method)
    vs_best_peer: float | None = None  # our rows: the fastest exact peer's median / this median
    best_peer: str | None = None   # ... and which peer that was (impl name)
    spread: float | None = None    # (p80 - p20) / median
    other_cpus: float | None = None  # CPUs other processes kept busy while the case was timed
    trusted: bool | None = None    # spread and other_cpus within timing.SPREAD_MAX / OTHER_CPUS_MAX
    attempts: int = 0              # measurements of the case (re-measured while untrusted)
    P: int = 0                     # proj_size of the shape (0 = none); last: older files lack it


ROW_FIELDS = [f.name for f in fields(Row)]
ENV_COLUMNS = ["device_name", "device_type", "sm_count", "torch_threads", "torch", "commit"]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "device"


def write(run: dict, out_dir: Path, stem: str | None = None) -> dict[str, Path]:
    """Write ``run`` as <stem>.json and <stem>.csv in out_dir; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if stem is None:
        stamp = run["created_utc"].replace("-", "").replace(":", "")[:15]
        stem = f"bench_{_slug(run['environment']['device_name'])}_{stamp}"
    paths = {"json": out_dir / f"{stem}.json", "csv": out_dir / f"{stem}.csv"}
    paths["json"].write_text(json.dumps(run, indent=2) + "\n")
    env = run["environment"]
    with paths["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=ENV_COLUMNS + ROW_FIELDS)
        w.writeheader()
        for row in run["results"]:
            w.writerow({**{k: env.get(k) for k in ENV_COLUMNS}, **row})
    return paths


def read(path: Path) -> dict:
    """A result file, checked to be one (clear error otherwise)."""
    try:
        run = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON result file ({e})") from None
    if not isinstance(run, dict) or run.get("schema") not in READABLE_SCHEMAS:
        raise ValueError(f"{path}: not a bilstm-bench result file (expected schema {SCHEMA!r}, "
                         f"got {run.get('schema') if isinstance(run, dict) else type(run).__name__!r})")
    missing = [k for k in ("environment", "peak", "results") if k not in run]
    if missing:
        raise ValueError(f"{path}: result file lacks {missing}")
    return run


def as_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
