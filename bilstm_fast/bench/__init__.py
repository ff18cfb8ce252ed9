"""Benchmark and profiling tools for bilstm_fast (``bilstm-bench``; docs/bench.md).

Read top to bottom:

shapes.py    Shape, the FLOP count, the default sweeps (shared with benchmarks/)
workload.py  nn.LSTM / BiLSTM pairs with the same weights, inputs, the timed
             step (inference or training), the check before timing
timing.py    median/p20/p80 of repeats; peak memory (the device-specific bits)
device.py    environment of a run; peak FLOP/s (datasheet table or measured)
runner.py    the sweep: one Row per implementation per case
results.py   Row, the JSON/CSV result files
report.py    rich tables;  plot.py  the PNG
profiling.py ``bilstm-bench profile``;  compare.py  ``bilstm-bench compare``
cli.py       argument parsing and the three subcommands
"""
from .shapes import GRID, MODES, QUICK, Shape, default_sweep, flops, parse_shape

__all__ = ["GRID", "MODES", "QUICK", "Shape", "default_sweep", "flops", "parse_shape"]
