"""Evaluation metrics: ROC AUC (ties averaged, as scikit-learn's roc_auc_score) and log loss."""

from __future__ import annotations

import torch
from torch import Tensor


def auc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random negative, ties
    counting one half (Mann-Whitney U with average ranks). NaN when only one class is present.

    Args:
        scores: (N,) any real scores (logits or probabilities).
        labels: (N,) 0/1.
    """
    scores, labels = scores.detach().double().flatten(), labels.detach().flatten()
    pos = labels > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()  # 1-based rank of each tie group's last member
    avg_rank = ends - (counts.double() - 1) / 2  # average 1-based rank of the group
    ranks = torch.empty_like(scores)
    ranks[order] = avg_rank[inverse]
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def logloss(logits: Tensor, labels: Tensor) -> float:
    """Mean binary cross-entropy of logits against 0/1 labels (natural log)."""
    return float(torch.nn.functional.binary_cross_entropy_with_logits(logits.double(), labels.double()))
