"""The LSTM recurrence op (docs/design.md §3) and its backends.

recurrence.py  the op: validation, torch.library registration, autograd, dispatch
backends.py    the backend contract and registry (which backend runs a call)
reference.py   pure torch, the oracle
triton_lstm.py Triton kernels (GPU; CPU tensors in Triton's interpreter)
cpu_lstm.py    the C++ CPU kernels (bilstm_fast._cpu)
cuda_lstm.py   the CUDA C++ kernels (bilstm_fast._cuda, or its CPU emulation)
"""
from .backends import available_backends, backend_status
from .recurrence import lstm_recurrence

__all__ = ["lstm_recurrence", "available_backends", "backend_status"]
