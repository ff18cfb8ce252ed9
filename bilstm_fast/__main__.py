"""`python -m bilstm_fast`: which backends this machine can run, and why not the
others; the NVIDIA driver, torch's CUDA runtime and what bilstm_fast._cuda was
built with (ops/cuda_compat.py has the rules that relate them)."""
import torch

from . import __version__, backend_status
from .ops import cuda_compat, native


def _cuda_build() -> str:
    mod = native.load("_cuda")
    if isinstance(mod, str):
        return "not built (no nvcc at build time)"
    info = mod.info()
    archs = ", ".join(f"sm_{a}" for a in info["archs"])
    return f"CUDA runtime {cuda_compat.version_text(info['cuda_version'])} (static), kernels for {archs}"


def main() -> None:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"bilstm_fast {__version__}, torch {torch.__version__}, CUDA device: {gpu}")
    print(f"  driver: {cuda_compat.driver_facts().describe()}")
    print(f"  torch's CUDA runtime: {torch.version.cuda or 'none (a CPU build of torch)'}")
    print(f"  bilstm_fast._cuda: {_cuda_build()}")
    for name, why in backend_status().items():
        print(f"  {name:10s} {'available' if why is None else 'unavailable: ' + why}")


main()
