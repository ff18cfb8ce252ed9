"""Loading the compiled modules (bilstm_fast._cpu, _cuda, _cuda_emu).

The modules never link torch: they take torch tensors as plain Python objects
and check each one once at their boundary (csrc/common/tensor_arg.h). This
file only loads them, remembering why one cannot be loaded.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import torch

_REBUILD = "rebuild it with `pip install -e .` from the repository root (see README)"
_cache: dict[str, ModuleType | str] = {}   # dotted name -> module, or why it cannot be imported

# csrc/common/lstm_args.h DType codes (every module exports its table as
# ``dtype_codes``; tests/test_op.py checks this mirror against it).
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3,
               torch.int64: 4, torch.int32: 5}


def import_or_reason(dotted: str, hint: str = "") -> ModuleType | str:
    """The module ``dotted``, or a sentence saying why it cannot be imported
    (cached: the one "module or reason" cache of the package, used for the
    compiled modules here and for the backend modules by backends.py)."""
    if dotted not in _cache:
        try:
            _cache[dotted] = importlib.import_module(dotted)
        except ImportError as e:
            _cache[dotted] = f"cannot import {dotted} ({e}){hint}"
    return _cache[dotted]


def load(name: str) -> ModuleType | str:
    """The compiled module ``bilstm_fast.<name>``, or a sentence saying why it cannot be loaded."""
    return import_or_reason(f"bilstm_fast.{name}", f"; {_REBUILD}")


def require(name: str) -> ModuleType:
    """``bilstm_fast.<name>``; RuntimeError saying how to rebuild when it cannot be loaded."""
    mod = load(name)
    if isinstance(mod, str):
        raise RuntimeError(mod)
    return mod
