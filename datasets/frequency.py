"""Exact per-feature value counts over a stream of id arrays, in memory proportional to the distinct values.

Each added array is reduced to its (distinct values, counts) at once; the reduced pieces are merged into the
running totals only when they outgrow them, so the total merge work stays O(D log D) over a stream with D
distinct values (a log-structured merge) instead of one full merge per added array.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def _merge(pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    values = np.concatenate([v for v, _ in pieces])
    counts = np.concatenate([c for _, c in pieces])
    distinct, inverse = np.unique(values, return_inverse=True)
    return distinct, np.bincount(inverse, weights=counts, minlength=distinct.size).astype(np.int64)


class FrequencyCounter:
    """Counts how often each int64 value occurs, per feature.

    Args:
        features: feature names, in the order `result()` returns them.

    Example:
        >>> c = FrequencyCounter(["C1"])
        >>> c.add("C1", np.array([5, 7, 5])); c.add("C1", np.array([7, 7, -1]))
        >>> {k: (v.tolist(), n.tolist()) for k, (v, n) in c.result().items()}
        {'C1': ([-1, 5, 7], [1, 2, 3])}
    """

    def __init__(self, features: Iterable[str]) -> None:
        empty = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
        self._total = {f: empty for f in features}
        self._pending: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {f: [] for f in self._total}
        self._pending_size = dict.fromkeys(self._total, 0)

    def add(self, feature: str, ids: np.ndarray) -> None:
        """Count the values of `ids` ((N,) int64) for `feature`."""
        self.add_counted(feature, *np.unique(np.asarray(ids, dtype=np.int64), return_counts=True))

    def add_counted(self, feature: str, values: np.ndarray, counts: np.ndarray) -> None:
        """Add counts already reduced elsewhere (e.g. by `np.unique(ids, return_counts=True)` in a worker
        thread): `values` (D,) distinct int64, `counts` (D,)."""
        if feature not in self._total:
            raise KeyError(f"FrequencyCounter: unknown feature {feature!r}; known: {list(self._total)}")
        if values.size == 0:
            return
        self._pending[feature].append((values.astype(np.int64, copy=False), counts.astype(np.int64, copy=False)))
        self._pending_size[feature] += values.size
        if self._pending_size[feature] > max(self._total[feature][0].size, 1 << 16):
            self._flush(feature)

    def _flush(self, feature: str) -> None:
        if self._pending[feature]:
            self._total[feature] = _merge([self._total[feature], *self._pending[feature]])
            self._pending[feature], self._pending_size[feature] = [], 0

    def result(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per feature: (distinct values ascending, (D,) int64 counts)."""
        for f in self._total:
            self._flush(f)
        return dict(self._total)
