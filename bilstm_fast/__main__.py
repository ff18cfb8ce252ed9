"""`python -m bilstm_fast`: which backends this machine can run, and why not the others."""
import torch

from . import __version__, backend_status

print(f"bilstm_fast {__version__}, torch {torch.__version__}, "
      f"CUDA device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
for name, why in backend_status().items():
    print(f"  {name:10s} {'available' if why is None else 'unavailable: ' + why}")
