"""From nn.LSTM to BiLSTM in a real model: a BiLSTM-CRF named-entity tagger.

    python examples/tagger.py            # ~3 minutes on 2 CPU cores
    python examples/tagger.py --quick    # a few seconds (what tests/test_examples.py runs)

Embedding -> 2-layer bidirectional LSTM (dropout between layers) -> Linear ->
CRF (pytorch-crf), trained on CPU with packed variable-length batches and
gradient clipping, once with torch.nn.LSTM and once with bilstm_fast.BiLSTM
from the same seed and the same initial weights (the swap is one line:
``bilstm_fast.replace_lstm(model)``). It prints a progress bar, training
tokens/s and the dev-set entity F1 (seqeval) of both side by side, then
exports the BiLSTM model to ONNX (one standard LSTM node per layer) and tags
a sentence with onnxruntime.

The corpus is generated here, deterministically (``make_corpus``): sentences
from templates with person, location and organisation names drawn from
disjoint train/dev name lists, so the dev set is full of names the model has
never seen and it must tag them from context; some names are ambiguous
(Jordan, Washington, Paris are persons and places: a quarter of the
person and place mentions) and 30% of the sentences are lower-cased; in a few templates only the name itself tells its kind. Generated because nothing may be downloaded at run time and no
well-kept PyPI package ships a labelled NER corpus; a generated one also
needs no licence and sizes itself to the time budget.

Legend (docs/design.md §0): T steps (tokens), B batch, K tags.
"""
from __future__ import annotations

import argparse
import copy
import logging
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torchcrf import CRF
from seqeval.metrics import f1_score
from tqdm import tqdm

import bilstm_fast

# ------------------------------------------------------------------ corpus
FIRST = ["Anna", "Bruno", "Chloe", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas",
         "Kofi", "Lena", "Marco", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tariq",
         "Uma", "Viktor", "Wen", "Ximena", "Yusuf", "Zara", "Aiko", "Bela", "Cyrus", "Dalia"]
LAST = ["Novak", "Okafor", "Schmidt", "Tanaka", "Rossi", "Haddad", "Larsen", "Moreau", "Kowalski",
        "Silva", "Nakamura", "Petrov", "Byrne", "Costa", "Lindqvist", "Mensah", "Horvat", "Aziz"]
CITIES = ["Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Quito", "Tbilisi", "Dakar", "Porto",
          "Krakow", "Osaka", "Tunis", "Bergen", "Cusco", "Accra", "Gdansk", "Sapporo", "Sfax"]
ORG_HEAD = ["Acme", "Borealis", "Cobalt", "Delta", "Everest", "Falcon", "Granite", "Helix",
            "Ion", "Juniper", "Keystone", "Lumen", "Meridian", "Nimbus", "Orbit", "Pioneer"]
ORG_TAIL = ["Systems", "Bank", "Airlines", "Group", "Labs", "Motors", "Foods", "Energy"]
AMBIGUOUS = ["Jordan", "Washington", "Paris", "Georgia", "Florence", "Chad"]   # person or place

TEMPLATES = [   # {PER} {LOC} {ORG}: entity slots ({ANY}: any of the three); everything else is O
    "{PER} flew to {LOC} on Monday .",
    "{PER} , who works for {ORG} , lives in {LOC} .",
    "the new office of {ORG} opened in {LOC} last week .",
    "{ORG} hired {PER} as chief engineer .",
    "yesterday {PER} met {PER} in {LOC} .",
    "shares of {ORG} fell after {PER} resigned .",
    "{LOC} and {LOC} signed a trade agreement .",
    "{PER} said {ORG} will build a factory near {LOC} .",
    "a spokesman for {ORG} declined to comment .",
    "in {LOC} , {PER} opened a small bakery .",
    "{PER} visited the {ORG} plant outside {LOC} .",
    "the mayor of {LOC} thanked {PER} for the donation .",
    # The context does not say which kind: a seen name, or an ORG suffix, has to.
    "{ANY} was mentioned twice in the report .",
    "nobody expected {ANY} to win .",
    "the article about {ANY} was long .",
]


def _entity(kind: str, rng: random.Random, split: str) -> list[str]:
    """One entity's tokens; train and dev draw from disjoint halves of the lists."""
    def pick(names):
        half = len(names) // 2
        return rng.choice(names[:half] if split == "train" else names[half:])
    if kind == "PER":
        if rng.random() < 0.25:
            return [rng.choice(AMBIGUOUS)]
        return [pick(FIRST)] + ([pick(LAST)] if rng.random() < 0.7 else [])
    if kind == "LOC":
        return [rng.choice(AMBIGUOUS)] if rng.random() < 0.25 else [pick(CITIES)]
    return [pick(ORG_HEAD)] + ([pick(ORG_TAIL)] if rng.random() < 0.6 else [])


def make_corpus(n: int, split: str, seed: int) -> list[tuple[list[str], list[str]]]:
    """n (tokens, BIO tags) sentences, the same for the same (n, split, seed)."""
    rng = random.Random(f"{seed}-{split}")
    out = []
    for _ in range(n):
        words, tags = [], []
        for piece in rng.choice(TEMPLATES).split():
            if piece in ("{PER}", "{LOC}", "{ORG}", "{ANY}"):
                kind = rng.choice(["PER", "LOC", "ORG"]) if piece == "{ANY}" else piece[1:-1]
                ent = _entity(kind, rng, split)
                words += ent
                tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(ent) - 1)
            else:
                words.append(piece)
                tags.append("O")
        if rng.random() < 0.3:            # no capitalisation cue in 30% of the sentences
            words = [w.lower() for w in words]
        out.append((words, tags))
    return out


class Vocab:
    def __init__(self, items, specials=()):
        self.itos = list(specials) + sorted(set(items) - set(specials))
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    def __len__(self):
        return len(self.itos)

    def encode(self, seq, unk: int = 1) -> list[int]:
        return [self.stoi.get(s, unk) for s in seq]


def batches(data, words: Vocab, tags: Vocab, batch_size: int, shuffle: random.Random | None):
    """(tokens [B, T], tags [B, T], lengths [B]) padded with 0 (= <pad> and, for tags, masked)."""
    order = list(range(len(data)))
    if shuffle is not None:
        shuffle.shuffle(order)
    for i in range(0, len(order), batch_size):
        chunk = [data[j] for j in order[i:i + batch_size]]
        lengths = torch.tensor([len(w) for w, _ in chunk])
        T = int(lengths.max())
        tok = torch.zeros(len(chunk), T, dtype=torch.long)
        tag = torch.zeros(len(chunk), T, dtype=torch.long)
        for b, (w, t) in enumerate(chunk):
            tok[b, :len(w)] = torch.tensor(words.encode(w))
            tag[b, :len(t)] = torch.tensor(tags.encode(t, unk=0))
        yield tok, tag, lengths


# ------------------------------------------------------------------- model
class Tagger(nn.Module):
    """Embedding -> LSTM (packed) -> Linear -> CRF. Written for nn.LSTM; works unchanged with BiLSTM."""

    def __init__(self, n_words: int, n_tags: int, emb: int = 64, hidden: int = 64, dropout: float = 0.3):
        super().__init__()
        self.emb = nn.Embedding(n_words, emb, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(emb, hidden, num_layers=2, bidirectional=True, batch_first=True,
                            dropout=dropout)
        self.proj = nn.Linear(2 * hidden, n_tags)
        self.crf = CRF(n_tags, batch_first=True)

    def emissions(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """tokens [B, T], lengths [B] (CPU) -> per-tag scores [B, T, K] (padding rows are Linear(0))."""
        x = self.drop(self.emb(tokens))
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        y, _ = self.lstm(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=tokens.shape[1])
        return self.proj(self.drop(y))

    def loss(self, tokens, tags, lengths) -> Tensor:
        mask = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
        return -self.crf(self.emissions(tokens, lengths), tags, mask, reduction="mean")

    def decode(self, tokens, lengths) -> list[list[int]]:
        mask = torch.arange(tokens.shape[1])[None, :] < lengths[:, None]
        return self.crf.decode(self.emissions(tokens, lengths), mask)


class ExportedEmissions(nn.Module):
    """The trained tagger's emissions as an exportable graph: the same weights,
    BiLSTM called with lengths= on the padded batch, which computes what the
    packed path computes (zeros past each sequence's end, each direction
    within its own length) and exports as ONNX LSTM with sequence_lens.
    (torch cannot export pack_padded_sequence itself: tests/test_export.py.)"""

    def __init__(self, tagger: Tagger):
        super().__init__()
        self.emb, self.lstm, self.proj = tagger.emb, tagger.lstm, tagger.proj

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        y, _ = self.lstm(self.emb(tokens), None, lengths)
        return self.proj(y)


def viterbi(emissions: np.ndarray, crf: CRF) -> list[int]:
    """The CRF's best tag path for one sentence's emissions [T, K] (what crf.decode does)."""
    start, end = crf.start_transitions.detach().numpy(), crf.end_transitions.detach().numpy()
    trans = crf.transitions.detach().numpy()                 # [K, K]: from tag i to tag j
    score, back = start + emissions[0], []
    for e in emissions[1:]:
        cand = score[:, None] + trans + e[None, :]           # [K_prev, K]
        back.append(cand.argmax(0))
        score = cand.max(0)
    path = [int((score + end).argmax())]
    for b in reversed(back):
        path.append(int(b[path[-1]]))
    return path[::-1]


# ---------------------------------------------------------------- training
def train(model: Tagger, data, words, tags, args, label: str) -> dict:
    """Adam, gradient clipping, packed batches; returns tokens/s and dev F1."""
    torch.manual_seed(args.seed)                              # same dropout masks for both LSTMs
    shuffle = random.Random(args.seed)                        # same batch order
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    n_tokens, seconds = 0, 0.0
    for epoch in range(args.epochs):
        model.train()
        bar = tqdm(list(batches(data["train"], words, tags, args.batch, shuffle)),
                   desc=f"{label:>9} epoch {epoch + 1}/{args.epochs}", unit="batch",
                   disable=args.no_bar, leave=False)
        for tok, tag, lengths in bar:
            t0 = time.perf_counter()
            loss = model.loss(tok, tag, lengths)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            seconds += time.perf_counter() - t0
            n_tokens += int(lengths.sum())
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{n_tokens / seconds:,.0f}")
    model.eval()
    gold, pred = [], []
    with torch.no_grad():
        for tok, tag, lengths in batches(data["dev"], words, tags, 256, None):
            for b, path in enumerate(model.decode(tok, lengths)):
                gold.append([tags.itos[i] for i in tag[b, :lengths[b]].tolist()])
                pred.append([tags.itos[i] for i in path])
    return {"tokens_per_s": n_tokens / seconds, "dev_f1": f1_score(gold, pred), "train_s": seconds}


def export_and_tag(model: Tagger, words: Vocab, tags: Vocab, sentence: list[str], path: Path,
                   exporter: str) -> dict:
    """ONNX export of the emissions (dynamic B and T), then tag `sentence` with onnxruntime."""
    import onnx
    import onnxruntime

    # Quiet: torch's exporter logs each torchvision op it skips, and tracing
    # warns about our input checks' shape comparisons (harmless: README, "Deploy").
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
    warnings.filterwarnings("ignore", message="# The axis name")     # B names two inputs' axis: intended
    warnings.filterwarnings("ignore", category=FutureWarning)        # from inside torch.export
    graph = ExportedEmissions(model).eval()
    tok = torch.tensor([words.encode(sentence)])
    lengths = torch.tensor([len(sentence)])
    # The example batch: B=2 and two lengths, so no size specialises to 1 or to T.
    example = (torch.cat([tok, torch.cat([tok[:, :3], torch.zeros_like(tok[:, 3:])], 1)]),
               torch.tensor([len(sentence), 3]))
    if exporter == "dynamo":
        B, T = torch.export.Dim("B"), torch.export.Dim("T")
        torch.onnx.export(graph, example, str(path), dynamo=True, verbose=False,
                          input_names=["tokens", "lengths"], output_names=["emissions"],
                          dynamic_shapes=({0: B, 1: T}, {0: B}),
                          custom_translation_table=bilstm_fast.export.onnx_translation_table())
    else:
        torch.onnx.export(graph, example, str(path), dynamo=False,
                          input_names=["tokens", "lengths"], output_names=["emissions"],
                          dynamic_axes={"tokens": {0: "B", 1: "T"}, "lengths": {0: "B"},
                                        "emissions": {0: "B", 1: "T"}})
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options)
    emissions = session.run(None, {"tokens": tok.numpy(), "lengths": lengths.numpy()})[0]
    with torch.no_grad():
        want = model.emissions(tok, lengths)                  # the packed PyTorch path
        want_tags = model.decode(tok, lengths)[0]
    got_tags = viterbi(emissions[0], model.crf)
    return {"lstm_nodes": ops.count("LSTM"), "max_abs_diff": float(np.abs(emissions - want.numpy()).max()),
            "tags": [tags.itos[i] for i in got_tags], "same_as_pytorch": got_tags == want_tags}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=3000, help="training sentences")
    p.add_argument("--dev", type=int, default=600, help="dev sentences")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=5.0, help="gradient-norm clipping")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    p.add_argument("--out", type=Path, default=Path("tagger.onnx"))
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine two OpenMP threads wait for "
                        "each other at every step; measured 17x slower there)")
    p.add_argument("--no-bar", action="store_true", help="no progress bar")
    p.add_argument("--quick", action="store_true", help="tiny run (the test): 200 sentences, 1 epoch")
    args = p.parse_args(argv)
    if args.quick:
        args.train, args.dev, args.epochs = 200, 50, 1
    torch.set_num_threads(args.threads)

    data = {"train": make_corpus(args.train, "train", args.seed),
            "dev": make_corpus(args.dev, "dev", args.seed)}
    words = Vocab((w for s, _ in data["train"] for w in s), specials=("<pad>", "<unk>"))
    tags = Vocab((t for _, s in data["train"] for t in s), specials=("O",))
    n_tok = sum(len(s) for s, _ in data["train"])
    print(f"corpus: {args.train} train / {args.dev} dev sentences (generated, seed {args.seed}), "
          f"{n_tok} train tokens, {len(words)} words, tags {tags.itos}")

    torch.manual_seed(args.seed)
    reference = Tagger(len(words), len(tags))
    ours = bilstm_fast.replace_lstm(copy.deepcopy(reference))   # the one-line swap, same weights
    results = {}
    for label, model in (("nn.LSTM", reference), ("BiLSTM", ours)):
        results[label] = train(model, data, words, tags, args, label)

    print(f"\n{'':10}{'train tokens/s':>16}{'train time':>12}{'dev F1':>9}   "
          f"({torch.get_num_threads()} threads, torch {torch.__version__})")
    for label, r in results.items():
        print(f"{label:10}{r['tokens_per_s']:>16,.0f}{r['train_s']:>11.1f}s{r['dev_f1']:>9.3f}")
    speedup = results["BiLSTM"]["tokens_per_s"] / results["nn.LSTM"]["tokens_per_s"]
    print(f"BiLSTM / nn.LSTM training throughput: {speedup:.2f}x")

    sentence = "yesterday Jordan met Priya Haddad in Sapporo .".split()
    tagged = export_and_tag(ours, words, tags, sentence, args.out, args.exporter)
    print(f"\nONNX ({args.exporter} exporter): {args.out}, {tagged['lstm_nodes']} LSTM nodes, "
          f"emissions within {tagged['max_abs_diff']:.1e} of PyTorch, "
          f"decoded tags {'equal' if tagged['same_as_pytorch'] else 'DIFFER FROM'} PyTorch's")
    print("onnxruntime: " + " ".join(f"{w}/{t}" for w, t in zip(sentence, tagged["tags"])))
    return {"results": results, "onnx": tagged}


if __name__ == "__main__":
    main()
