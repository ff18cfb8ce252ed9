"""A short training run of Embedding -> BiLSTM -> Linear matches the same run
with torch.nn.LSTM step by step (float64), alone and under
DistributedDataParallel with 2 CPU processes on gloo."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from bilstm_fast import replace_lstm

STEPS = 5


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 8)
        self.lstm = nn.LSTM(8, 6, num_layers=2, bidirectional=True, batch_first=True, dropout=0.0)
        self.head = nn.Linear(12, 5)

    def forward(self, tokens):
        return self.head(self.lstm(self.emb(tokens))[0])


def _data(step: int, rank: int = 0):
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randint(0, 30, (4, 7), generator=g), torch.randint(0, 5, (4, 7), generator=g)


def _train(model: nn.Module, rank: int = 0):
    """STEPS of SGD with momentum; returns the loss and a parameter snapshot per step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    history = []
    for step in range(STEPS):
        tokens, tags = _data(step, rank)
        loss = nn.functional.cross_entropy(model(tokens).reshape(-1, 5), tags.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append((loss.item(), [p.detach().clone() for p in model.parameters()]))
    return history


def _pair():
    torch.manual_seed(0)
    base = Tagger().double()
    ours = replace_lstm(Tagger().double())
    ours.load_state_dict(base.state_dict())
    return base, ours


def _assert_same_history(h_ref, h_ours):
    for step, ((l1, p1), (l2, p2)) in enumerate(zip(h_ref, h_ours)):
        print(f"step {step}: loss nn.LSTM {l1:.12f} BiLSTM {l2:.12f}")
        assert abs(l1 - l2) <= 1e-10 * max(1.0, abs(l1)), f"step {step}: loss {l2} != {l1}"
        for a, b in zip(p1, p2):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)


def test_training_run_matches_nn_lstm():
    base, ours = _pair()
    _assert_same_history(_train(base), _train(ours))


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        base, ours = _pair()
        hist = {}
        for name, model in (("ref", base), ("ours", ours)):
            ddp = nn.parallel.DistributedDataParallel(model)
            hist[name] = [(loss, [p for p in params]) for loss, params in _train(ddp, rank)]
        torch.save(hist, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_training_run_matches_nn_lstm_under_ddp(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    hists = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for h in hists:
        _assert_same_history(h["ref"], h["ours"])
    # DDP averaged the gradients: both ranks hold the same parameters after every step,
    # although each saw different data.
    for (_, p0), (_, p1) in zip(hists[0]["ours"], hists[1]["ours"]):
        for a, b in zip(p0, p1):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert hists[0]["ours"][0][0] != hists[1]["ours"][0][0], "ranks must have seen different data"
