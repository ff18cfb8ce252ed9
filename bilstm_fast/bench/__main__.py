"""``python -m bilstm_fast.bench`` = the ``bilstm-bench`` console script."""
import sys

from .cli import main

sys.exit(main())
