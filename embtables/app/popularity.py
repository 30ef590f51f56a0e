"""The popularity ranking: a DIN reference that learns no embeddings, and its lines in a sweep's report.

Each sample is scored by how often its target item occurs among the interactions visible to training (the data
folder's `counts.npz`, feature `item`: positions 0 .. T-3 of each user's sequence, see datasets/din_samples.py),
and the score's test AUC is computed with the AUC the trainer uses (`embtables.metrics.auc`: ties count one half,
which matters here, since many items share a count). It costs no embedding bytes, so a compressed model below it
is worse than not learning embeddings at all. Its log loss is not reported: a count is a ranking, not a
probability. `embtables sweep --model din` computes it once into sweep.json (key `popularity`), and the report
reads it from there, without the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from embtables.datasets.sequence_loader import ITEM, SequenceData
from embtables.metrics import auc

COUNTED = ("training count of the target item: its occurrences among the interactions visible to training "
           "(positions 0 .. T-3 of each user's sequence, counts.npz feature 'item'); items never seen score 0")
BELOW = "below popularity"


def popularity_auc(data: SequenceData | str | Path, split: str = "test") -> dict[str, Any]:
    """The AUC of scoring each sample of `split` by the training popularity of its target item.

    Args:
        data: a sequence data folder (kind "sequences") or its `SequenceData`.
        split: the split scored ("test", as the reports' AUC; "val" or "train" also work).

    Returns:
        `auc` (ties half credit, `embtables.metrics.auc`), `split`, `rows`, `positives`, `unseen_targets` (rows
        whose target item has count 0), `tied_pairs` (fraction of positive-negative pairs with equal counts) and
        `counted` (how popularity was counted).

    Raises:
        FileNotFoundError / ValueError: `data` is not a sequence data folder, or has no such split.

    Example:
        >>> import tempfile
        >>> from embtables.datasets.synthetic_sequences import synth_sequences
        >>> d = tempfile.mkdtemp(); _ = synth_sequences(d, users=100, items=200, clusters=10, clusters_per_category=2)
        >>> p = popularity_auc(d)
        >>> 0 < p["auc"] < 1, p["rows"]
        (True, 200)
    """
    data = data if isinstance(data, SequenceData) else SequenceData(data)
    # min_count 1: every item with a training count keeps its own index; only count-0 items share the OOV slot,
    # whose count is then 0 (a larger min_count would give every rare item the dropped items' total)
    counts = torch.from_numpy(data.vocabulary(ITEM, min_count=1).index_counts())
    scores, labels = [], []
    for b in data.batches(split, 1 << 16, min_count=1):
        scores.append(counts[b.sparse["target"].values()])
        labels.append(b.labels)
    s, y = torch.cat(scores), torch.cat(labels)
    pos = y > 0.5
    # pairs tied: per distinct count, its positives x its negatives (no N^2 pair matrix: 62k test rows on Amazon)
    values, which = torch.unique(s, return_inverse=True)
    per_pos = torch.bincount(which[pos], minlength=values.numel()).double()
    per_neg = torch.bincount(which[~pos], minlength=values.numel()).double()
    tied = float((per_pos * per_neg).sum() / max(per_pos.sum() * per_neg.sum(), 1))
    return {"auc": auc(s, y), "split": split, "rows": int(y.numel()), "positives": int(pos.sum()),
            "unseen_targets": int((s == 0).sum()), "tied_pairs": tied,
            "counted": COUNTED}


def below(value: float, popularity: dict[str, Any] | None) -> bool:
    """Whether an AUC is below the popularity reference (False without one)."""
    return popularity is not None and value < popularity["auc"]


def reference_lines(popularity: dict[str, Any] | None) -> list[str]:
    """The report's lines under the results: the reference and how it was computed; none without one (DLRM)."""
    if popularity is None:
        return []
    tied = f", {popularity['tied_pairs']:.1%} of positive-negative pairs tied" if "tied_pairs" in popularity else ""
    return [f"Popularity ranking (no embeddings): AUC {popularity['auc']:.4f} on the {popularity['split']} split "
            f"({popularity['rows']:,} rows{tied}). Each sample is scored by the {popularity['counted']}; ties count "
            "one half, as in every AUC here. It learns nothing and costs no embedding bytes, so a method marked "
            f"\"{BELOW}\" ranks worse than not learning embeddings at all. No log loss: a count is a ranking, not a "
            "probability.", ""]
