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


# ------------------------------------------------------ the flat weight buffer
def _same_as_nn(ref, ours, x, what):
    with torch.no_grad():
        assert_close(what, ours(x)[0], ref(x)[0], 1e-12, 1e-12)


def test_inference_follows_every_weight_change():
    """Inference reads the parameters' own memory (views of the flat buffer),
    so every way of changing a weight is seen by the next call, compared with
    nn.LSTM each time. Before the flat buffer, a packed copy kept between
    no-grad calls missed p.data.copy_(), p.data.mul_() and writes through
    p.detach().numpy() (max diff 0.17-0.77 vs nn.LSTM)."""
    ref, ours = lstm_pair(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=F64)
    _same_as_nn(ref, ours, x, "first call")
    _same_as_nn(ref, ours, x, "second call")
    with torch.no_grad():                      # in-place update (an optimizer step)
        ref.weight_hh_l1.mul_(0.5), ours.weight_hh_l1.mul_(0.5)
    _same_as_nn(ref, ours, x, "after in-place update")
    w = torch.randn_like(ref.weight_ih_l0)
    ref.weight_ih_l0.data.copy_(w), ours.weight_ih_l0.data.copy_(w)
    _same_as_nn(ref, ours, x, "after p.data.copy_")
    ref.bias_hh_l1_reverse.data.mul_(3), ours.bias_hh_l1_reverse.data.mul_(3)
    _same_as_nn(ref, ours, x, "after p.data.mul_")
    ref.weight_hh_l0_reverse.detach().numpy()[:] += 0.25
    ours.weight_hh_l0_reverse.detach().numpy()[:] += 0.25
    _same_as_nn(ref, ours, x, "after a write through .numpy()")
    ref2 = nn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=F64)
    ref.load_state_dict(ref2.state_dict()), ours.load_state_dict(ref2.state_dict())
    _same_as_nn(ref, ours, x, "after load_state_dict")
    new = torch.randn_like(ours.bias_ih_l0)
    ref.bias_ih_l0 = nn.Parameter(new.clone())
    ours.bias_ih_l0 = nn.Parameter(new.clone())  # a new Parameter object
    _same_as_nn(ref, ours, x, "after replacing a parameter")
    ours.weight_ih_l0.data = ref.weight_ih_l0.data.clone() * 2
    ref.weight_ih_l0.data = ref.weight_ih_l0.data * 2
    _same_as_nn(ref, ours, x, "after re-pointing .data")
    ours.flatten_parameters()
    assert ours._flat_views() is not None
    _same_as_nn(ref, ours, x, "after flatten_parameters")


def test_parameters_are_views_of_one_buffer():
    """Like cuDNN's flat weights: every parameter lives in one buffer, and
    inference hands the kernels views of it (no packing copy)."""
    _, ours = lstm_pair(3, 4, num_layers=2, proj_size=2)
    buffer, _, layers, _ = ours._flat
    base = buffer.untyped_storage().data_ptr()
    for p in ours.parameters():
        assert p.untyped_storage().data_ptr() == base
    assert ours._flat_views() is layers
    with torch.no_grad():
        got = ours._layer_weights()
    assert got is layers
    for lw in got:
        for t in lw:
            assert t is None or t.untyped_storage().data_ptr() == base
    assert sum(p.numel() for p in ours.parameters()) == buffer.numel()


def test_flat_buffer_survives_to_half_and_share_memory():
    ref, ours = lstm_pair(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=F64)
    ours.share_memory()
    assert ours._flat_views() is not None and ours.weight_ih_l0.is_shared()
    _same_as_nn(ref, ours, x, "after share_memory")
    ours.float()
    assert ours._flat_views() is not None and ours._flat[0].dtype == torch.float32
    with torch.no_grad():
        assert_close("after .float()", ours(x.float())[0], ref.float()(x.float())[0], 1e-5, 1e-5)


def test_grad_enabled_call_packs_on_the_autograd_graph():
    """With gradients, the weights are packed on the graph (gradients reach the
    parameters), and equal nn.LSTM's."""
    ref, ours = lstm_pair(3, 4)
    x = torch.randn(5, 2, 3, dtype=F64)
    with torch.no_grad():
        ours(x)
    ours(x)[0].square().sum().backward()
    ref(x)[0].square().sum().backward()
    for (n, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert_close(f"d{n}", a.grad, b.grad, 1e-10, 1e-12)


def test_pickle_carries_no_second_copy_of_the_weights(tmp_path):
    """torch.save(module) stores the weights once (the buffer is the
    parameters' own storage, and is not pickled itself), and loads back to a
    module with a working flat buffer."""
    import os
    _, ours = lstm_pair(300, 256, num_layers=1, dtype=torch.float32)
    path = tmp_path / "m.pt"
    torch.save(ours, path)
    nbytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    size = os.path.getsize(path)
    print(f"parameters {nbytes / 1e6:.1f} MB, file {size / 1e6:.1f} MB")
    assert size < 1.1 * nbytes
    back = torch.load(path, weights_only=False)
    assert back._flat_views() is not None
    x = torch.randn(4, 2, 300)
    with torch.no_grad():
        assert torch.equal(back(x)[0], ours(x)[0])


def test_one_module_called_from_many_threads():
    """No-grad and grad calls of one module from several threads at once
    (a thread switch every microsecond): no error, and every result equals
    nn.LSTM's. A cache of packed weights that a grad-mode call reset to None
    made a no-grad thread fail with "'NoneType' object is not subscriptable";
    the weight lookup of each call (_layer_weights) is hammered on its own as
    well, as that window is a few bytecodes wide."""
    import sys
    import threading
    ref, ours = lstm_pair(3, 4, num_layers=2)
    x = torch.randn(5, 2, 3, dtype=F64)
    with torch.no_grad():
        want = ref(x)[0]
    errors = []

    def work(grad: bool):
        try:
            with torch.set_grad_enabled(grad):
                for _ in range(3000):
                    layers = ours._layer_weights()
                    assert len(layers) == 2 and layers[0].w_ih.shape == (32, 3)   # [N*4H, D]
            for _ in range(10):
                with torch.set_grad_enabled(grad):
                    out = ours(x)[0]
                if grad:
                    out.sum().backward()
                torch.testing.assert_close(out.detach(), want, rtol=1e-12, atol=1e-12)
        except Exception as e:  # collected and re-raised below, in the test's thread
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, repr(errors[0])
