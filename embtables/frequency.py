"""Per-feature id counts, as frequency-based options read them: validated, summed per table, rank checked.

The data pipeline delivers `counts` keyed by feature name: feature f -> (N_f,) non-negative training counts of
ids 0..N_f-1, with N_f at most the rows N of the feature's table (ids beyond N_f were never seen: count 0). It
ranks ids by frequency, so its counts are non-increasing: id 0 is the most frequent. Methods that need counts
(`multihash` hot rows, `mixed_dim` frequency blocks) read them through these helpers, so every method rejects
bad counts with the same messages, naming the option, the feature and the table.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from embtables.config import TableConfig


def feature_counts(table: TableConfig, counts: Mapping[str, Any] | None, needed_by: str) -> list[Tensor]:
    """The validated counts of each feature of `table`: int64, or float64 when given as floats.

    Args:
        table: the logical table.
        counts: feature name -> (N_f,) array-like of non-negative counts, N_f <= `table.num_embeddings`.
        needed_by: the option that reads them, for error messages (e.g. `"multihash option hot_rows"`).

    Raises:
        ValueError: counts are absent, miss one of the table's features, or are not a 1-D non-negative numeric
            array of at most N entries.

    Example:
        >>> import torch, embtables as et
        >>> t = et.TableConfig("t", 10, 4, feature_names=("a", "b"))
        >>> [c.tolist() for c in feature_counts(t, {"a": [3, 1], "b": [0, 2, 5]}, "demo")]
        [[3, 1], [0, 2, 5]]
    """
    if counts is None:
        raise ValueError(
            f"{needed_by} needs per-feature id counts (counts={{feature: (N,) id counts}}); none were given"
        )
    out = []
    for f in table.feature_names:
        if f not in counts:
            raise ValueError(
                f"{needed_by} needs counts for feature {f!r} of table {table.name!r}; counts has {sorted(counts)}"
            )
        c = torch.as_tensor(counts[f])
        if c.dim() != 1 or c.numel() > table.num_embeddings or c.is_complex() or c.dtype == torch.bool:
            raise ValueError(
                f"counts of feature {f!r} must be a 1-D numeric array of at most {table.num_embeddings} ids "
                f"(table {table.name!r}), got shape {tuple(c.shape)} and dtype {c.dtype}"
            )
        if c.numel() and bool((c < 0).any()):
            raise ValueError(f"counts of feature {f!r} (table {table.name!r}) must be non-negative")
        out.append(c.double() if c.is_floating_point() else c.long())
    return out


def table_counts(table: TableConfig, counts: Mapping[str, Any] | None, needed_by: str, length: int = 0) -> Tensor:
    """The table's id counts: its features' validated counts summed, zero-padded to at least `length` ids.

    Example:
        >>> import torch, embtables as et
        >>> t = et.TableConfig("t", 10, 4, feature_names=("a", "b"))
        >>> table_counts(t, {"a": torch.tensor([3, 1]), "b": torch.tensor([0, 2, 5])}, "demo", length=4).tolist()
        [3, 3, 5, 0]
    """
    parts = feature_counts(table, counts, needed_by)
    dtype = torch.float64 if any(p.is_floating_point() for p in parts) else torch.int64
    total = torch.zeros(max([length] + [p.numel() for p in parts]), dtype=dtype)
    for p in parts:
        total[: p.numel()] += p
    return total


def first_rise(counts: Tensor) -> int | None:
    """The first id i whose successor is more frequent (counts[i + 1] > counts[i]); None when ranked."""
    rising = (counts[1:] > counts[:-1]).nonzero()
    return int(rising[0]) if rising.numel() else None


def is_ranked(counts: Tensor) -> bool:
    """Counts are frequency-ranked (non-increasing), so the H most frequent ids are 0..H-1."""
    return first_rise(counts) is None


def require_ranked(table: TableConfig, counts: Mapping[str, Any] | None, needed_by: str) -> list[Tensor]:
    """Each feature's validated counts, which must be frequency-ranked; raises naming the first rise.

    Example:
        >>> import embtables as et
        >>> require_ranked(et.TableConfig("t", 4, 4), {"t": [5, 3, 4]}, "demo")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: demo needs frequency-ranked ids, but counts of feature 't' rise from id 1 (3) to id 2 (4); ...
    """
    parts = feature_counts(table, counts, needed_by)
    for f, c in zip(table.feature_names, parts):
        i = first_rise(c)
        if i is not None:
            raise ValueError(
                f"{needed_by} needs frequency-ranked ids, but counts of feature {f!r} rise from id {i} "
                f"({float(c[i]):g}) to id {i + 1} ({float(c[i + 1]):g}); rank the ids by frequency first (the data "
                "pipeline does)"
            )
    return parts


def top_ids(counts: Tensor, h: int) -> Tensor:
    """The h most frequent ids (ties to the smaller id), in increasing id order.

    Example:
        >>> top_ids(torch.tensor([0, 50, 0, 30, 50]), 2).tolist()
        [1, 4]
    """
    return torch.sort(counts, descending=True, stable=True).indices[:h].sort().values


def range_shares(
    table: TableConfig, counts: Mapping[str, Any] | None, needed_by: str, bounds: list[int]
) -> list[float]:
    """Each id range [bounds[i], bounds[i + 1])'s share of the table's counted lookups (its features' counts
    summed); the counts must be frequency-ranked. All zeros when nothing was counted.

    Example:
        >>> import embtables as et
        >>> range_shares(et.TableConfig("t", 4, 4), {"t": [5, 3, 2]}, "demo", [0, 1, 4])
        [0.5, 0.5]
    """
    parts = require_ranked(table, counts, needed_by)
    sums = [sum(float(c[a:b].sum(dtype=torch.float64)) for c in parts) for a, b in zip(bounds[:-1], bounds[1:])]
    total = sum(sums)
    return [x / total if total else 0.0 for x in sums]
