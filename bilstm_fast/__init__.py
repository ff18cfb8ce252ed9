"""bilstm_fast: fused bidirectional LSTM kernels behind a drop-in torch.nn.LSTM."""
__version__ = "0.1.0"
