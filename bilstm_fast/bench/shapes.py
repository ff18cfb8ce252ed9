"""Benchmark shapes, the FLOP count, and the default sweeps — the one place
the CLI, the profiler and the pytest-benchmark suite (benchmarks/) get them.

Legend: T steps, B batch, D input_size, H hidden_size, L layers,
N directions (2 = bidirectional, the project's case; 1 is supported),
P proj_size (0 = no projection; h then has H features).
A "packed" shape runs variable-length sequences (a PackedSequence, lengths
T/4..T in no particular order: ``lengths``).
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

MODES = ("inference", "training")


@dataclass(frozen=True)
class Shape:
    T: int
    B: int
    D: int
    H: int
    L: int = 1
    N: int = 2
    packed: bool = False  # variable lengths (``lengths``), fed as a PackedSequence
    P: int = 0            # proj_size (nn.LSTM's), 0 = none; last so positional Shapes keep their meaning

    @property
    def label(self) -> str:
        """Short, unique, sortable-by-eye name used in tables, plots and CSV."""
        uni = " N1" if self.N == 1 else ""
        proj = f" P{self.P}" if self.P else ""
        return f"T{self.T} B{self.B} D{self.D} H{self.H}{proj} L{self.L}{uni}{' packed' if self.packed else ''}"

    @property
    def out_features(self) -> int:
        """Features of h per direction: P with a projection, else H."""
        return self.P or self.H

    def as_dict(self) -> dict:
        return asdict(self)


def lengths(shape: Shape) -> list[int] | None:
    """Sequence lengths of a packed shape: drawn uniformly from T/4..T with a
    fixed seed (the same on every run and machine), unsorted, the longest
    forced to T so the padded output keeps T steps; None when not packed."""
    if not shape.packed:
        return None
    import random
    rng = random.Random(1000 * shape.T + shape.B)
    out = [rng.randint(max(1, shape.T // 4), shape.T) for _ in range(shape.B)]
    out[rng.randrange(shape.B)] = shape.T
    return out


def flops(shape: Shape, mode: str) -> int:
    """FLOPs of one call of the whole module (docs/design.md §2).

    Per layer forward: 2 (mul+add) · 4 gates · N directions · B·T·H·(H + D_l),
    i.e. 2·8·B·T·H·(H+D) when bidirectional; D_0 = D and D_l = N·H for l > 0
    (the layer below's concatenated output). Training (forward + backward)
    counts 3x the forward: the backward does two GEMM-shaped products per
    forward one (grad of the inputs and grad of the weights). Elementwise gate
    math is not counted: it is O(B·T·H), negligible next to the GEMMs.
    A packed shape counts the valid steps only (sum of the lengths instead
    of B*T): the work an implementation has to do, whatever it spends on the
    padding.

    With a projection (P = proj_size) the recurrent product has P inputs,
    each step adds the projection h_t = m_t W_hr^T (2·N·B·T·P·H), and the
    layers above read N·P features: 2·N·B·T·(4H·(P + D_l) + P·H).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    steps = sum(lengths(shape)) if shape.packed else shape.B * shape.T
    total = 0
    F = shape.out_features
    for layer in range(shape.L):
        d = shape.D if layer == 0 else shape.N * F
        total += 2 * 4 * shape.N * steps * shape.H * (F + d)
        if shape.P:
            total += 2 * shape.N * steps * shape.P * shape.H
    return total * (3 if mode == "training" else 1)


# ------------------------------------------------------------------ sweeps
# NER-sized: a sentence of 64 tokens, 300-d word vectors (GloVe/fastText).
GRID = dict(T=(64,), B=(1, 8, 32, 128), D=(300,), H=(128, 256, 512), L=(1, 2))

# On a 2-core CPU, nn.LSTM alone takes ~25 s for one training + one inference
# call of every GRID shape, far over the 2-minute budget once the check,
# warm-up, >= 5 repeats and a second implementation are added. The CPU
# default keeps every H at B = 1, 8, 32 for inference and training, B=128
# inference at H = 128, 256, and a 2-layer column at H=256. Left out, and
# reachable with --shape: H=512 at B=128 and H=512 B=32 training, where
# nn.LSTM takes 3-8 s per call on this machine (measured 2026-11-24: T64 B32
# H512 training 7.1 s [4.6-8.0] vs 1.4 s for BiLSTM[cpu]), so those two rows
# alone would cost a minute.
_CPU_DEFAULT = (
    [(Shape(64, B, 300, H, 1), MODES) for H in (128, 256) for B in (1, 8, 32)]
    + [(Shape(64, B, 300, 512, 1), MODES) for B in (1, 8)]
    + [(Shape(64, 32, 300, 512, 1), ("inference",))]
    + [(Shape(64, 128, 300, H, 1), ("inference",)) for H in (128, 256)]
    + [(Shape(64, B, 300, 256, 2), MODES) for B in (1, 8, 32)]
    # variable lengths (T/4..T, unsorted): nn.LSTM runs a PackedSequence step
    # by step over the shrinking batch, ONNX Runtime takes sequence_lens
    + [(Shape(64, B, 300, 256, 1, packed=True), MODES) for B in (8, 32)]
    + [(Shape(64, 32, 300, 256, 2, packed=True), ("training",))]
)

QUICK = Shape(T=16, B=4, D=32, H=32, L=1)  # --quick: the whole run in seconds


def grid(**override) -> list[Shape]:
    """Cartesian product of GRID with some dimensions replaced, e.g. grid(H=(64,))."""
    dims = {**GRID, **{k: v for k, v in override.items() if v}}
    unknown = set(dims) - set(GRID)
    if unknown:
        raise ValueError(f"unknown shape dimension(s) {sorted(unknown)}; expected {list(GRID)}")
    return [Shape(T, B, D, H, L) for L, H, B, T, D in
            itertools.product(dims["L"], dims["H"], dims["B"], dims["T"], dims["D"])]


def default_sweep(device_type: str, modes=MODES) -> list[tuple[Shape, tuple[str, ...]]]:
    """(shape, modes) pairs of the no-argument run on this kind of device: the
    whole GRID on a GPU, the CPU subset above on a CPU."""
    if device_type == "cpu":
        pairs = _CPU_DEFAULT
    else:
        pairs = [(s, MODES) for s in grid()]
    pairs = [(s, tuple(m for m in ms if m in modes)) for s, ms in pairs]
    return [(s, ms) for s, ms in pairs if ms]


_SPEC_KEYS = ("T", "B", "D", "H", "L", "N", "P", "PACKED")


def parse_shape(spec: str) -> Shape:
    """'T=64,B=8,D=300,H=256[,L=2][,N=1][,P=128][,packed=1]' -> Shape (keys in any
    order and case; P = proj_size, < H as nn.LSTM requires)."""
    values: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, val = part.partition("=")
        key = key.strip().upper()
        if not sep or key not in _SPEC_KEYS:
            raise ValueError(f"{part!r} is not KEY=VALUE with KEY one of T, B, D, H, L, N, P, packed "
                             f"(example: T=64,B=8,D=300,H=256,L=1)")
        try:
            values[key] = int(val)
        except ValueError:
            raise ValueError(f"{key}={val!r} is not an integer") from None
        if key == "PACKED":
            if values[key] not in (0, 1):
                raise ValueError(f"packed={values[key]} must be 0 or 1")
            continue
        if values[key] < 1:
            raise ValueError(f"{key}={values[key]} must be >= 1")
    missing = [k for k in "TBDH" if k not in values]
    if missing:
        raise ValueError(f"{spec!r} is missing {', '.join(missing)} (example: T=64,B=8,D=300,H=256)")
    if values.get("N", 2) not in (1, 2):
        raise ValueError(f"N={values['N']} must be 1 or 2 (directions)")
    if values.get("P", 0) >= values["H"]:
        raise ValueError(f"P={values['P']} must be < H={values['H']} (nn.LSTM's proj_size < hidden_size)")
    packed = bool(values.pop("PACKED", 0))
    return Shape(**values, packed=packed)
