"""Optional peers timed next to nn.LSTM and BiLSTM, from the same weights:
ONNX Runtime's LSTM op and torch's dynamically quantized (int8) LSTM.
Installed with ``pip install ".[peers]"`` (onnxruntime, onnx); a peer that is
not installed is skipped with the reason.

Legend: T steps, B batch, D input features, N directions, H hidden, L layers.

A peer turns an nn.LSTM (the baseline of the run) into an implementation
with the two methods the runner needs: ``step(inputs, mode)`` (one unit of
timed work) and ``results(inputs, mode)`` (output, h_n, c_n in nn.LSTM's
layout, for the check before timing). Each runs the work in its natural
form: a padded batch plus lengths in, padded output out. nn.LSTM and BiLSTM
take a PackedSequence (packing and unpacking are part of their timed work,
workload.forward); ONNX Runtime takes the padded X and ``sequence_lens``.
"""
from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .workload import Inputs, make_step, results_of


@dataclass(frozen=True)
class Peer:
    name: str        # the backend column of its rows
    label: str       # the impl column
    exact: bool      # computes nn.LSTM's fp32 math (counts as a peer for "vs best peer")
    tolerance: float | None  # check bound (scaled error) if not the dtype's default
    modes: tuple[str, ...]
    dtypes: tuple[str, ...]
    needs: tuple[str, ...]   # modules that must be importable
    build: Callable[[nn.LSTM, int], object]   # (baseline, threads) -> implementation
    note: str = ""

    def unavailable_reason(self) -> str | None:
        missing = [m for m in self.needs if importlib.util.find_spec(m) is None]
        if missing:
            return f"{', '.join(missing)} not installed (pip install \".[peers]\")"
        return None

    def unsupported_reason(self, mode: str, dtype: str, device: torch.device) -> str | None:
        if device.type != "cpu":
            return "CPU only here"
        if mode not in self.modes:
            return f"{mode} not supported ({', '.join(self.modes)} only)"
        if dtype not in self.dtypes:
            return f"{dtype} not supported ({', '.join(self.dtypes)} only)"
        return None


# ------------------------------------------------------------- ONNX Runtime
def _iofc(w: torch.Tensor) -> torch.Tensor:
    """nn.LSTM's gate blocks (i, f, g, o) along dim 0 -> ONNX's (i, o, f, c)."""
    i, f, g, o = w.chunk(4, 0)
    return torch.cat([i, o, f, g], 0)


def onnx_lstm_model(lstm: nn.LSTM, with_lengths: bool):
    """An ONNX graph of ``lstm`` (all layers, one LSTM node each): inputs
    X [T, B, D] (and sequence_lens [B] int32), outputs Y [T, N, B, H] of the
    last layer and Y_h<l>, Y_c<l> [N, B, H] of every layer l. Between layers
    Y is transposed and reshaped to [T, B, N*H] (the next layer's X)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if lstm.proj_size or not lstm.bias or lstm.batch_first:
        raise ValueError("the ONNX peer covers nn.LSTM with bias, without proj_size, seq-first")
    N, H = 2 if lstm.bidirectional else 1, lstm.hidden_size
    suffixes = ["", "_reverse"][:N]
    inits, nodes, outputs = [], [], []
    x_name = "X"
    for layer in range(lstm.num_layers):
        def param(kind):
            return [getattr(lstm, f"{kind}_l{layer}{s}").detach() for s in suffixes]
        W = torch.stack([_iofc(w) for w in param("weight_ih")])                 # [N, 4H, D_l]
        R = torch.stack([_iofc(w) for w in param("weight_hh")])                 # [N, 4H, H]
        Bias = torch.stack([torch.cat([_iofc(bi), _iofc(bh)])                   # [N, 8H]
                            for bi, bh in zip(param("bias_ih"), param("bias_hh"))])
        for name, t in (("W", W), ("R", R), ("B", Bias)):
            inits.append(numpy_helper.from_array(t.float().numpy(), f"{name}{layer}"))
        y = "Y" if layer == lstm.num_layers - 1 else f"Y{layer}"
        nodes.append(helper.make_node(
            "LSTM", [x_name, f"W{layer}", f"R{layer}", f"B{layer}", "sequence_lens" if with_lengths else ""],
            [y, f"Y_h{layer}", f"Y_c{layer}"], hidden_size=H,
            direction="bidirectional" if N == 2 else "forward"))
        outputs += [f"Y_h{layer}", f"Y_c{layer}"]
        if layer < lstm.num_layers - 1:  # [T, N, B, H] -> [T, B, N, H] -> [T, B, N*H]
            nodes.append(helper.make_node("Transpose", [y], [f"Yt{layer}"], perm=[0, 2, 1, 3]))
            inits.append(numpy_helper.from_array(torch.tensor([0, 0, N * H]).numpy(), f"shape{layer}"))
            nodes.append(helper.make_node("Reshape", [f"Yt{layer}", f"shape{layer}"], [f"X{layer + 1}"]))
            x_name = f"X{layer + 1}"
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", lstm.input_size])]
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["B"]))
    graph = helper.make_graph(nodes, "lstm", inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                               for o in ["Y", *outputs]], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


class OnnxRuntimeLSTM:
    """ONNX Runtime's CPU LSTM op holding ``lstm``'s weights.

    Session options: ``threads`` intra-op threads (torch's count, so both
    sides get the same cores), one inter-op thread, and the pools' spinning
    off: ORT's workers spin-wait after every run by default, which would
    charge a spinning core to whatever runs next (docs/bench.md)."""

    def __init__(self, lstm: nn.LSTM, threads: int):
        import onnxruntime as ort
        self.lstm, self.threads, self._ort, self._sessions = lstm, threads, ort, {}

    def _session(self, with_lengths: bool):
        if with_lengths not in self._sessions:
            ort = self._ort
            so = ort.SessionOptions()
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
            model = onnx_lstm_model(self.lstm, with_lengths)
            self._sessions[with_lengths] = ort.InferenceSession(
                model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return self._sessions[with_lengths]

    def _feeds(self, inputs: Inputs) -> dict:
        feeds = {"X": inputs.x.detach().float().contiguous().numpy()}
        if inputs.lengths is not None:
            feeds["sequence_lens"] = inputs.lengths.to(torch.int32).numpy()
        return feeds

    def step(self, inputs: Inputs, mode: str) -> Callable[[], None]:
        session, feeds = self._session(inputs.lengths is not None), self._feeds(inputs)
        return lambda: session.run(None, feeds)

    def results(self, inputs: Inputs, mode: str) -> dict[str, torch.Tensor]:
        outs = self._session(inputs.lengths is not None).run(None, self._feeds(inputs))
        y = torch.from_numpy(outs[0])                               # [T, N, B, H]
        T, N, B, H = y.shape
        return {"output": y.permute(0, 2, 1, 3).reshape(T, B, N * H),
                "h_n": torch.cat([torch.from_numpy(o) for o in outs[1::2]]),
                "c_n": torch.cat([torch.from_numpy(o) for o in outs[2::2]])}


# ------------------------------------------------------ torch dynamic int8
class TorchModule:
    """A torch module run like nn.LSTM (workload.make_step / results_of)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def step(self, inputs: Inputs, mode: str) -> Callable[[], None]:
        return make_step(self.model, inputs, mode)

    def results(self, inputs: Inputs, mode: str) -> dict[str, torch.Tensor]:
        return results_of(self.model, inputs, mode)


def _int8_dynamic(lstm: nn.LSTM, threads: int) -> TorchModule:
    from torch.ao.nn.quantized.dynamic import LSTM as DynamicQuantizedLSTM
    from torch.ao.quantization import default_dynamic_qconfig

    float_model = copy.deepcopy(lstm)
    float_model.qconfig = default_dynamic_qconfig
    return TorchModule(DynamicQuantizedLSTM.from_float(float_model))


PEERS = {
    "onnxruntime": Peer(
        "onnxruntime", "ONNX Runtime LSTM", exact=True, tolerance=None, modes=("inference",),
        dtypes=("fp32",), needs=("onnxruntime", "onnx"), build=OnnxRuntimeLSTM,
        note="ONNX Runtime's CPU LSTM op (MLAS GEMMs), spinning off"),
    "torch-int8": Peer(
        # The bound guards the conversion only (a wrong gate order or scale is an
        # O(1) error); int8 weights alone reached a scaled error of 5.5e-2 -
        # 7.8e-2 at T64 D300 H128 (B 8-128, CI run of 2026-12-02), over the 5e-2
        # this bound had.
        "torch-int8", "nn.LSTM int8 dynamic", exact=False, tolerance=0.2, modes=("inference",),
        dtypes=("fp32",), needs=("torch.ao.nn.quantized.dynamic",), build=_int8_dynamic,
        note="torch.ao.nn.quantized.dynamic.LSTM (int8 weights, fbgemm): a different model "
             "numerically; its check only guards the conversion"),
}


def available_peers() -> dict[str, str | None]:
    """Every peer -> None if it can run here, else why not."""
    return {name: peer.unavailable_reason() for name, peer in PEERS.items()}
