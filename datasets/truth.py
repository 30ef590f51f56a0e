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

from embtables.datasets import layout

_EPS = 1e-12


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve, with tied scores given their mid-rank (the Mann-Whitney statistic).

    Args:
        labels: (N,) 0/1 labels.
        scores: (N,) real scores; higher means more likely positive.

    Returns:
        The AUC in [0, 1].

    Raises:
        ValueError: on mismatched shapes, or when `labels` has only one class.

    Example:
        >>> auc(np.array([0, 1, 1, 0]), np.array([0.1, 0.8, 0.4, 0.4]))
        0.875
    """
    y = np.asarray(labels).reshape(-1).astype(bool)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"auc: labels {y.shape} and scores {s.shape} differ in shape")
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        raise ValueError(f"auc: needs both classes, got {pos} positives and {neg} negatives")
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    # mid-ranks (1-based) of each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    mid = (starts + ends + 1) / 2.0
    ranks = np.repeat(mid, ends - starts)
    rank_sum = float(ranks[y[order]].sum())
    return (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities `probs` (clipped to [1e-12, 1 - 1e-12]) against 0/1 `labels`.

    Example:
        >>> round(logloss(np.array([1, 0]), np.array([0.5, 0.5])), 6)
        0.693147
    """
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), _EPS, 1 - _EPS)
    if y.shape != p.shape:
        raise ValueError(f"logloss: labels {y.shape} and probabilities {p.shape} differ in shape")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def split_truth(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | int]:
    """The `truth.json` entry of one split: rows, clicks, mean true probability, Bayes AUC and logloss."""
    return {
        "rows": int(labels.size),
        "clicks": int(np.asarray(labels).sum()),
        "mean_probability": float(np.mean(probs)),
        "bayes_auc": auc(labels, probs),
        "bayes_logloss": logloss(labels, probs),
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
