"""bilstm_fast: fused bidirectional LSTM kernels behind a drop-in torch.nn.LSTM.

    from bilstm_fast import BiLSTM          # nn.LSTM's constructor, weights, outputs
    lstm = BiLSTM(300, 256, num_layers=2, batch_first=True)

Layers (each calls only the next): module.BiLSTM -> functional.bilstm ->
ops.lstm_recurrence (torch.library op) -> a backend (ops/*.py) -> kernels.
"""
from . import functional
from .module import BiLSTM, replace_lstm
from .ops import available_backends, backend_status, lstm_recurrence

__version__ = "0.1.0"
__all__ = ["BiLSTM", "replace_lstm", "functional", "lstm_recurrence",
           "available_backends", "backend_status", "__version__"]
