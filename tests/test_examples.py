"""examples/tagger.py, shortened (--quick): trains the BiLSTM-CRF tagger with
nn.LSTM and with BiLSTM, exports the BiLSTM one to ONNX and tags a sentence
with onnxruntime. pytorch-crf, seqeval and tqdm come with the README's
install (the `examples` extra, part of `test`)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tagger.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("tagger_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_corpus_is_deterministic_and_dev_names_are_unseen():
    tagger = _load_example()
    a, b = tagger.make_corpus(50, "train", 0), tagger.make_corpus(50, "train", 0)
    assert a == b
    assert all(len(w) == len(t) for w, t in a)
    ambiguous = {w.lower() for w in tagger.AMBIGUOUS}
    train_words = {w.lower() for s, _ in tagger.make_corpus(500, "train", 0) for w in s}
    dev_names = {w.lower() for s, t in tagger.make_corpus(200, "dev", 0) for w, tag in zip(s, t)
                 if tag != "O" and w.lower() not in ambiguous}
    assert dev_names and not dev_names & train_words, sorted(dev_names & train_words)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # the TorchScript-based exporter's notice
def test_tagger_example_end_to_end(tmp_path, capsys):
    tagger = _load_example()
    out = tagger.main(["--quick", "--no-bar", "--exporter", "torchscript",
                       "--out", str(tmp_path / "tagger.onnx")])
    printed = capsys.readouterr().out
    print(printed)
    for label in ("nn.LSTM", "BiLSTM"):
        r = out["results"][label]
        assert r["tokens_per_s"] > 0 and 0.0 <= r["dev_f1"] <= 1.0, r
        assert label in printed
    onnx = out["onnx"]
    assert onnx["lstm_nodes"] == 2                  # one ONNX LSTM node per layer
    assert onnx["max_abs_diff"] < 1e-5              # onnxruntime's emissions vs the packed PyTorch model
    assert onnx["same_as_pytorch"], onnx            # the numpy Viterbi on them = crf.decode
    assert "onnxruntime:" in printed
