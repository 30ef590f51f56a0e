"""Calibrate the planted synthetic sequences: does attention over the history beat a sum-pooled history?

    .venv/bin/python benchmarks/synthetic_sequences_calibration.py [--users 20000] [--epochs 2] [--out DIR]

Generates the default synthetic sequences (`embtables synth sequences`), then trains two small DIN-like
models that differ only in how the history is pooled: DIN's local activation unit (an MLP on
[q, k, q - k, q * k] giving one unnormalised weight per history item, padding masked) against the plain sum
of the history embeddings. Items are represented by [item embedding, category embedding]; the head is an MLP
on [user, pooled history, target] (`--pooled-categories`: attention over item embeddings only, the
categories summed next to the user). Embeddings use `embtables.build_collection` (full tables) with the
collection's row-wise Adagrad; dense parameters use Adam. Prints validation and test AUC of both (at the epoch
with the best validation AUC) next to the Bayes-optimal AUC of `truth.json`.

The models are written inline so this script depends only on the data layout, `SequenceData` and
`embtables.build_collection`.
"""

from __future__ import annotations

import argparse
import ast
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

import embtables as et
from embtables.datasets.sequence_loader import SequenceBatch, SequenceData
from embtables.datasets.synthetic_sequences import synth_sequences
from embtables.datasets.truth import probability_scores


def padded(values: Tensor, lengths: Tensor, max_len: int) -> tuple[Tensor, Tensor]:
    """Jagged rows (N, D) with per-row lengths (B,) -> (B, L, D) zero-padded and a (B, L) bool mask."""
    B = lengths.numel()
    offsets = torch.cumsum(lengths, 0) - lengths
    row = torch.repeat_interleave(torch.arange(B), lengths, output_size=values.shape[0])  # (N,)
    pos = torch.arange(values.shape[0]) - offsets[row]  # (N,)
    out = values.new_zeros(B, max_len, values.shape[1])
    out[row, pos] = values
    mask = torch.arange(max_len).unsqueeze(0) < lengths.unsqueeze(1)  # (B, L)
    return out, mask


class SmallDIN(nn.Module):
    """Target attention (`attention=True`) or sum pooling over the history, then an MLP head -> logit."""

    def __init__(self, data: SequenceData, dim: int, attention: bool, item_categories: bool = True) -> None:
        super().__init__()
        tables = data.tables(dim)  # categories pooled, next to the user
        self.cats = data.has_categories and item_categories
        if self.cats:  # an item is [item, category]: the category table made unpooled, as in the DIN paper
            tables = [replace(t, pooling="none") if t.name == "cat" else t for t in tables]
        self.items = et.build_collection([t for t in tables if t.pooling == "none"], "full", backend="fbgemm")
        self.others = et.build_collection([t for t in tables if t.pooling != "none"], "full", backend="fbgemm")
        width = dim * (2 if self.cats else 1)
        self.attention = attention
        self.unit = nn.Sequential(nn.Linear(4 * width, 36), nn.PReLU(), nn.Linear(36, 1)) if attention else None
        others = sum(self.others.output_dims.values())
        self.head = nn.Sequential(nn.Linear(others + 2 * width, 200), nn.PReLU(), nn.Linear(200, 80), nn.PReLU(),
                                  nn.Linear(80, 1))
        self.max_len = data.max_history

    def forward(self, batch: SequenceBatch) -> Tensor:
        rows = self.items(batch.sparse)  # feature -> JaggedTensor of (N_f, D)
        hist, lengths = rows["hist"].values(), rows["hist"].lengths()
        target = rows["target"].values()  # (B, D)
        if self.cats:
            hist = torch.cat([hist, rows["hist_cat"].values()], 1)  # (N, 2D)
            target = torch.cat([target, rows["target_cat"].values()], 1)  # (B, 2D)
        keys, mask = padded(hist, lengths, self.max_len)  # (B, L, W), (B, L)
        if self.attention:
            q = target.unsqueeze(1).expand_as(keys)
            w = self.unit(torch.cat([q, keys, q - keys, q * keys], 2)).squeeze(2)  # (B, L)
            w = w.masked_fill(~mask, 0.0)
        else:
            w = mask.to(keys.dtype)
        pooled = torch.bmm(w.unsqueeze(1), keys).squeeze(1)  # (B, W)
        others = self.others(batch.sparse).values()  # (B, user [+ summed history categories, target category])
        return self.head(torch.cat([others, pooled, target], 1)).squeeze(1)


@torch.no_grad()
def predict(model: SmallDIN, data: SequenceData, split: str) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    p, y = [], []
    for b in data.batches(split, 4096):
        p.append(torch.sigmoid(model(b)))
        y.append(b.labels)
    model.train()
    return torch.cat(y).numpy(), torch.cat(p).numpy()


def train(args: argparse.Namespace, data: SequenceData, attention: bool) -> dict:
    torch.manual_seed(args.seed)
    model = SmallDIN(data, args.dim, attention, not args.pooled_categories)
    dense = [p for n, p in model.named_parameters() if not n.startswith(("items.", "others."))]
    opt = torch.optim.Adam(dense, lr=args.lr)
    name = "DIN (attention)" if attention else "sum-pooled history"
    loss_fn = nn.BCEWithLogitsLoss()
    start, seen, best = time.perf_counter(), 0, None
    for epoch in range(args.epochs):
        for b in data.batches("train", args.batch_size, shuffle=True, seed=args.seed + epoch, drop_last=True):
            loss = loss_fn(model(b), b.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += b.batch_size
        scores = {}
        for split in ("val", "test"):  # test is only reported at the epoch chosen on val
            y, p = predict(model, data, split)
            scores[split] = probability_scores(y, p)
        print(f"  {name} epoch {epoch + 1}: val AUC {scores['val']['auc']:.4f}", flush=True)
        if best is None or scores["val"]["auc"] > best["val"]["auc"]:
            best = {**scores, "epoch": epoch + 1}
    return {"samples_per_s": seen / (time.perf_counter() - start), "best": best, "last": scores}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/embtables-synthetic-sequences-calibration"))
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pooled-categories", action="store_true",
                    help="attend over item embeddings only; categories summed next to the user, as other features")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                    help="a SynthSequencesConfig field other than users, e.g. -p copy=0.5 (repeatable)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    params = {k: ast.literal_eval(v) for k, _, v in (p.partition("=") for p in args.param)}
    t0 = time.perf_counter()
    truth = synth_sequences(args.out, users=args.users, seed=args.seed, force=True, **params)
    data = SequenceData(args.out)
    print(f"generated {data.rows('train'):,} train rows in {time.perf_counter() - t0:.0f} s")
    runs = {"DIN (attention)": train(args, data, True), "sum-pooled history": train(args, data, False)}
    bayes = truth["splits"]
    print(f"\n{args.users:,} users, seed {args.seed}, params {params or 'default'}, {args.epochs} epochs, batch "
          f"{args.batch_size}, {platform.machine()}, {torch.get_num_threads()} threads")
    print("\n| model | best epoch | val AUC | val logloss | test AUC | test logloss | last-epoch val AUC "
          "| train samples/s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| Bayes (true p) | | {bayes['val']['bayes_auc']:.4f} | {bayes['val']['bayes_logloss']:.4f} "
          f"| {bayes['test']['bayes_auc']:.4f} | {bayes['test']['bayes_logloss']:.4f} | | |")
    for name, r in runs.items():
        b = r["best"]
        print(f"| {name} | {b['epoch']} | {b['val']['auc']:.4f} | {b['val']['logloss']:.4f} | {b['test']['auc']:.4f} "
              f"| {b['test']['logloss']:.4f} | {r['last']['val']['auc']:.4f} | {r['samples_per_s']:,.0f} |")
    margin = runs["DIN (attention)"]["best"]["val"]["auc"] - runs["sum-pooled history"]["best"]["val"]["auc"]
    print(f"\nval, best epochs: DIN - sum-pooled = {margin:.4f}; total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
