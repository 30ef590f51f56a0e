"""Helpers of the generated (planted) data sets: Bayes scores of known probabilities, and the output folder.

For a synthetic data set whose labels are drawn as y ~ Bernoulli(p) with p known, scoring p itself gives the
Bayes-optimal AUC and logloss of the split: no model can beat them in expectation, so `truth.json` stores
them as the ceiling a trained model is measured against.

    AUC     = P(score of a random positive > score of a random negative), ties counted 1/2
            = (sum of the positives' mid-ranks - P (P + 1) / 2) / (P Q)        P positives, Q negatives
    logloss = -mean(y log p + (1 - y) log(1 - p))

A generator refuses to write over an existing data set unless forced, and then removes only the files a
generator writes (`check_out`), so stale part files of a larger earlier run never mix with the new ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from embtables import metrics
from embtables.datasets import layout

_EPS = 1e-12


def probability_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC and logloss of known probabilities `probs` (N,) against 0/1 `labels` (N,), through `embtables.metrics`
    (probabilities clipped to [1e-12, 1 - 1e-12] and scored as logits, so the logloss is finite).

    Example:
        >>> probability_scores(np.array([0, 1, 1, 0]), np.array([0.1, 0.8, 0.4, 0.4]))["auc"]
        0.875
    """
    y = torch.from_numpy(np.asarray(labels, dtype=np.float64).reshape(-1))
    p = torch.from_numpy(np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), _EPS, 1 - _EPS))
    if y.shape != p.shape:
        raise ValueError(f"probability_scores: labels {tuple(y.shape)} and probabilities {tuple(p.shape)} differ")
    return {"auc": metrics.auc(p, y), "logloss": metrics.logloss(torch.logit(p), y)}


def split_truth(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | int]:
    """The `truth.json` entry of one split: rows, clicks, mean true probability, Bayes AUC and logloss."""
    scores = probability_scores(labels, probs)
    return {
        "rows": int(labels.size),
        "clicks": int(np.asarray(labels).sum()),
        "mean_probability": float(np.mean(probs)),
        "bayes_auc": scores["auc"],
        "bayes_logloss": scores["logloss"],
    }


def clear(out: Path) -> None:
    """Remove what an earlier generated data set wrote in `out` (and nothing else)."""
    for split in layout.SPLITS:
        for part in (out / split).glob("part-*.parquet"):
            part.unlink()
    for name in (layout.COUNTS_FILE, layout.SUMMARY_FILE, layout.TRUTH_FILE):
        (out / name).unlink(missing_ok=True)


def check_out(out: Path, force: bool) -> None:
    """Refuse to write over an existing data set unless `force` (then clear it)."""
    if not force and any((out / n).exists() for n in (layout.SUMMARY_FILE, layout.TRUTH_FILE, *layout.SPLITS)):
        raise FileExistsError(f"{out} already holds a data set; pass force=True (--force) to replace it")
    clear(out)
