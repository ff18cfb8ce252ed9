"""bilstm_fast: fused bidirectional LSTM kernels behind a drop-in torch.nn.LSTM.

    from bilstm_fast import BiLSTM          # nn.LSTM's constructor, weights, outputs
    lstm = BiLSTM(300, 256, num_layers=2, batch_first=True)

Layers (each calls only the next): module.BiLSTM -> functional.bilstm ->
ops.lstm_recurrence (torch.library op) -> a backend (ops/*.py) -> kernels.
bilstm_fast.export (imported on first use): the ops' ONNX translations.
"""
from . import functional
from .module import BiLSTM, replace_lstm
from .ops import available_backends, backend_status, lstm_recurrence

__version__ = "0.1.0"
__all__ = ["BiLSTM", "replace_lstm", "functional", "lstm_recurrence",
           "available_backends", "backend_status", "export", "__version__"]


def __getattr__(name: str):
    # bilstm_fast.export (ONNX translations) on first use: it imports torch.onnx,
    # which `import bilstm_fast` should not pay for.
    if name == "export":
        import importlib
        return importlib.import_module(".export", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
