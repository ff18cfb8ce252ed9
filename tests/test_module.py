"""BiLSTM beyond plain parity: bad input, merge modes, dropout in training,
replace_lstm, the functional API."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import bilstm_fast
from bilstm_fast import BiLSTM, replace_lstm
from conftest import assert_close, lstm_pair

F64 = torch.float64


# ------------------------------------------------------------------ bad input
def _model(**kw):
    return BiLSTM(3, 4, num_layers=2, **kw)


@pytest.mark.parametrize("make_input,hx,exc,pattern", [
    (lambda: torch.randn(5, 2, 7), None, ValueError, r"input_size=3.*got 7"),
    (lambda: torch.randn(5, 2, 2, 3), None, ValueError, r"2-D .* or 3-D .* got 4-D"),
    (lambda: torch.randn(5), None, ValueError, r"got 1-D"),
    (lambda: torch.randn(0, 2, 3), None, ValueError, r"sequence length > 0"),
    (lambda: torch.randn(5, 2, 3, dtype=F64), None, ValueError, r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
    (lambda: torch.randn(5, 2, 3), (torch.zeros(4, 3, 4), torch.zeros(4, 3, 4)), ValueError, r"h_0 of size \(4, 2, 4\).*got \(4, 3, 4\)"),
    (lambda: torch.randn(5, 2, 3), (torch.zeros(4, 2, 4), torch.zeros(4, 2, 5)), ValueError, r"c_0 of size \(4, 2, 4\).*got \(4, 2, 5\)"),
    (lambda: torch.randn(5, 2, 3), (torch.zeros(2, 2, 4), torch.zeros(2, 2, 4)), ValueError, r"h_0 of size \(4, 2, 4\)"),
    (lambda: torch.randn(5, 2, 3), (torch.zeros(4, 4), torch.zeros(4, 4)), ValueError, r"batched 3-D input, h_0 and c_0 should be 3-D"),
    (lambda: torch.randn(5, 3), (torch.zeros(4, 1, 4), torch.zeros(4, 1, 4)), ValueError, r"unbatched 2-D input, h_0 and c_0 should be 2-D"),
    (lambda: torch.randn(5, 2, 3), torch.zeros(4, 2, 4), TypeError, r"hx: expected a tuple \(h_0, c_0\)"),
    (lambda: torch.randn(5, 2, 3), (torch.zeros(4, 2, 4),), TypeError, r"hx: expected a tuple \(h_0, c_0\).*length 1"),
    (lambda: torch.randn(5, 2, 3), (torch.zeros(4, 2, 4, dtype=F64), torch.zeros(4, 2, 4)), ValueError, r"h_0 with dtype torch.float32"),
    (lambda: [1, 2, 3], None, TypeError, r"input must be a Tensor or PackedSequence"),
])
def test_bad_input_is_a_clear_error(make_input, hx, exc, pattern):
    with pytest.raises(exc, match=pattern):
        _model()(make_input(), hx)


def test_nn_lstm_rejects_the_same_inputs():
    """Each case above that nn.LSTM also rejects: we must not accept more than it does."""
    ref = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
    for x, hx in [(torch.randn(5, 2, 7), None), (torch.randn(0, 2, 3), None),
                  (torch.randn(5, 2, 3, dtype=F64), None),
                  (torch.randn(5, 2, 3), (torch.zeros(4, 3, 4), torch.zeros(4, 3, 4)))]:
        with pytest.raises((RuntimeError, ValueError)):
            ref(x, hx)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="merge_mode must be one of"):
        BiLSTM(3, 4, merge_mode="avg")
    with pytest.raises(TypeError, match="backend must be a str"):
        BiLSTM(3, 4, backend=None)
    with pytest.raises(ValueError, match="proj_size"):
        BiLSTM(3, 4, proj_size=4)   # nn.LSTM's own check: proj_size < hidden_size


def test_functional_rejects_bad_shapes():
    gx, w = torch.randn(3, 2, 2, 8), torch.randn(2, 8, 2)
    h0, c0 = torch.zeros(2, 2, 2), torch.zeros(2, 2, 2)
    with pytest.raises(ValueError, match=r"gx: expected \[T, B, N, 4H\]"):
        bilstm_fast.lstm_recurrence(gx[..., :7], w, h0, c0)
    with pytest.raises(ValueError, match=r"w_hh: expected \[N=2, 4H=8, H=2\]"):
        bilstm_fast.lstm_recurrence(gx, w[:, :, :1], h0, c0)
    with pytest.raises(ValueError, match=r"c0: expected \[N=2, B=2, H=2\]"):
        bilstm_fast.lstm_recurrence(gx, w, h0, c0[:, :1])
    with pytest.raises(ValueError, match=r"lengths: expected an integer tensor of shape \[B=2\]"):
        bilstm_fast.lstm_recurrence(gx, w, h0, c0, lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"h0: expected dtype torch.float32"):
        bilstm_fast.lstm_recurrence(gx, w, h0.double(), c0)


# ---------------------------------------------------------------- merge modes
@pytest.mark.parametrize("mode,combine", [
    ("sum", lambda f, b: f + b), ("mean", lambda f, b: (f + b) / 2), ("mul", lambda f, b: f * b)])
def test_merge_modes_single_layer(mode, combine):
    ref, _ = lstm_pair(3, 4)
    ours = BiLSTM(3, 4, dtype=F64, merge_mode=mode)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 2, 3, dtype=F64)
    want, (h1, c1) = ref(x)
    got, (h2, c2) = ours(x)
    assert_close(f"{mode} output", got, combine(want[..., :4], want[..., 4:]), 1e-12, 1e-12)
    assert_close(f"{mode} h_n", h2, h1, 1e-12, 1e-12)


def test_merge_mode_changes_inner_layer_input_size():
    m = BiLSTM(3, 4, num_layers=3, merge_mode="sum", proj_size=2)
    assert m.weight_ih_l0.shape == (16, 3)
    assert m.weight_ih_l1.shape == (16, 2) and m.weight_ih_l2_reverse.shape == (16, 2)
    out, (h, c) = m(torch.randn(5, 2, 3))
    assert out.shape == (5, 2, 2) and h.shape == (6, 2, 2) and c.shape == (6, 2, 4)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


# --------------------------------------------------------- dropout (training)
def test_training_dropout_reproducible_and_differs_from_eval():
    m = BiLSTM(3, 8, num_layers=3, dropout=0.5)
    x = torch.randn(6, 4, 3)
    m.train()
    torch.manual_seed(11)
    a = m(x)[0]
    torch.manual_seed(11)
    b = m(x)[0]
    torch.manual_seed(12)
    c = m(x)[0]
    m.eval()
    e1, e2 = m(x)[0], m(x)[0]
    assert torch.equal(a, b), "same seed must give the same dropout masks"
    assert not torch.equal(a, c), "a different seed must give different masks"
    assert not torch.allclose(a, e1), "training-mode dropout must change the output"
    assert torch.equal(e1, e2), "eval mode is deterministic"


def test_dropout_is_not_applied_after_the_last_layer():
    ref, ours = lstm_pair(3, 4, num_layers=1)
    ours.dropout = 0.9   # a single layer has no inter-layer dropout, even in training
    ours.train()
    x = torch.randn(5, 2, 3, dtype=F64)
    assert_close("single layer train", ours(x)[0], ref(x)[0], 1e-12, 1e-12)


# -------------------------------------------------------------- replace_lstm
class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 6)
        self.enc = nn.Sequential(nn.Identity())
        self.lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(10, 3)

    def forward(self, tokens):
        return self.head(self.lstm(self.emb(tokens))[0])


def test_replace_lstm_swaps_every_lstm_with_the_same_weights():
    model = _Tagger().double().eval()
    model.enc.append(nn.LSTM(4, 3))   # nested, unidirectional
    tokens = torch.randint(0, 20, (3, 7))
    want = model(tokens)
    same = replace_lstm(model)
    assert same is model
    assert isinstance(model.lstm, BiLSTM) and isinstance(model.enc[1], BiLSTM)
    assert model.enc[1].bidirectional is False and model.lstm.batch_first
    assert not model.lstm.training
    assert_close("replaced model", model(tokens), want, 1e-12, 1e-12)
    assert not any(type(m) is nn.LSTM for m in model.modules())


def test_replace_lstm_on_a_bare_lstm_and_backend_kwarg():
    lstm = nn.LSTM(3, 4, proj_size=2)
    new = replace_lstm(lstm, backend="reference")
    assert isinstance(new, BiLSTM) and new.backend == "reference" and new.proj_size == 2
    x = torch.randn(5, 2, 3)
    assert_close("bare replace", new(x)[0], lstm(x)[0], 1e-6, 1e-6)


def test_functional_bilstm_matches_module():
    ref, ours = lstm_pair(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=F64)
    lengths = torch.tensor([5, 3])
    out, h, c = bilstm_fast.functional.bilstm(x, ours.all_weights, lengths=lengths)
    packed = pack_padded_sequence(x, lengths)
    want, (hw, cw) = ref(packed)
    want_padded = nn.utils.rnn.pad_packed_sequence(want)[0]
    assert_close("functional output", out, want_padded, 1e-12, 1e-12)
    assert_close("functional h_n", h, hw, 1e-12, 1e-12)


# ------------------------------------------------- packed weights for inference
def test_inference_weight_cache_follows_every_weight_change():
    """BiLSTM keeps its packed weights between no-grad calls; every way of changing
    a weight must be seen by the next call (compared with nn.LSTM each time)."""
    ref, ours = lstm_pair(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=F64)

    def check(what):
        with torch.no_grad():
            assert_close(what, ours(x)[0], ref(x)[0], 1e-12, 1e-12)

    check("first call")
    check("cached call")
    with torch.no_grad():                      # in-place update (an optimizer step)
        ref.weight_hh_l1.mul_(0.5), ours.weight_hh_l1.mul_(0.5)
    check("after in-place update")
    ref2 = nn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=F64)
    ref.load_state_dict(ref2.state_dict()), ours.load_state_dict(ref2.state_dict())
    check("after load_state_dict")
    new = torch.randn_like(ours.bias_ih_l0)
    ref.bias_ih_l0 = nn.Parameter(new.clone())
    ours.bias_ih_l0 = nn.Parameter(new.clone())  # a new Parameter object
    check("after replacing a parameter")
    ours.weight_ih_l0.data = ref.weight_ih_l0.data.clone() * 2
    ref.weight_ih_l0.data = ref.weight_ih_l0.data * 2
    check("after re-pointing .data")


def test_grad_enabled_call_does_not_use_the_cache():
    _, ours = lstm_pair(3, 4)
    x = torch.randn(5, 2, 3, dtype=F64)
    with torch.no_grad():
        ours(x)
    out = ours(x)[0]
    out.sum().backward()
    assert ours.weight_ih_l0.grad is not None and ours.weight_ih_l0.grad.abs().sum() > 0
    assert ours._packed is None, "a grad-enabled call must drop the packed copy"
