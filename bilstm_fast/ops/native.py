"""Loading the compiled modules (bilstm_fast._cpu, _cuda, _cuda_emu) and
handing them tensors.

The modules never link torch (DESIGN.md §5): they take raw pointers, sizes and
strides. The Python side of each backend (cpu_lstm.py, cuda_lstm.py) checks
every tensor before its pointer crosses over; this file only loads modules and
turns tensors into pointers.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import torch

_REBUILD = "rebuild it with `pip install -e .` from the repository root (see README)"
_cache: dict[str, ModuleType | str] = {}


def load(name: str) -> ModuleType | str:
    """``bilstm_fast.<name>``, or a sentence saying why it cannot be loaded."""
    if name not in _cache:
        try:
            _cache[name] = importlib.import_module(f"bilstm_fast.{name}")
        except ImportError as e:
            _cache[name] = f"the compiled module bilstm_fast.{name} is not importable ({e}); {_REBUILD}"
    return _cache[name]


def require(name: str) -> ModuleType:
    """``bilstm_fast.<name>``; RuntimeError saying how to rebuild when it cannot be loaded."""
    mod = load(name)
    if isinstance(mod, str):
        raise RuntimeError(mod)
    return mod


def ptr(t: torch.Tensor | None) -> int:
    """Address of a tensor's first element (0 for None)."""
    return 0 if t is None else t.data_ptr()
