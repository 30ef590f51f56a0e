"""Behaviour sequences for DIN: samples built as in the DIN paper's Amazon setup, written in the data layout.

From per-user, time-ordered interactions s_0 .. s_{T-1} of user u, every position i >= 1 gives two samples:

    history = s_{max(0, i - L)} .. s_{i-1}      (the L most recent items before i; L = max_history)
    positive: (u, history, target = s_i, label 1)
    negative: (u, history, target = x,   label 0)   x uniform over the catalogue, x not in s_0 .. s_i

Splits: position T-1 (each user's last) is `test`, position T-2 is `val`, the others are `train`; a user with
T interactions thus gives 2 (T - 3) train, 2 val and 2 test rows (fewer when T < 3; none when T = 1).

The data folder (kind "sequences", layout of `datasets/layout.py`) holds Parquet parts with columns

    label int8, user int64, position int32 (i), hist list<int64>, target int64
    hist_cat list<int64>, target_cat int64      only when items have categories

raw ids as in the input, `counts.npz` with the features `item`, `user` (and `cat`) counted over the
interactions visible to training (positions 0 .. T-3 of each user) and listing every catalogue item, user and
category (zero counts included, so a vocabulary built from it covers every id a split can hold), and
`summary.json`.

CLI: `embtables prepare-sequences amazon INPUT --out DIR [--max-history 50] [--seed 0]`; the planted
synthetic sequences are `embtables synth sequences --out DIR` (datasets/synthetic_sequences.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embtables.datasets import layout

KIND = "sequences"
PART_ROWS = 500_000
ROW_GROUP_ROWS = 1 << 16  # units of reading on several processes (`shares.py`): a few per part


@dataclass
class DinSamples:
    """DIN samples, positive and negative rows interleaved (row 2k the positive, 2k + 1 its negative).

    Args:
        user: (R,) raw user ids.
        position: (R,) index i of the target in the user's sequence.
        hist_offsets: (R + 1,) int64 offsets into `hist`.
        hist: (sum of history lengths,) raw item ids, oldest first.
        target: (R,) raw item ids.
        label: (R,) int8 1 for positives, 0 for negatives.
        split: (R,) int8 index into `layout.SPLITS` (0 train, 1 val, 2 test).
    """

    user: np.ndarray
    position: np.ndarray
    hist_offsets: np.ndarray
    hist: np.ndarray
    target: np.ndarray
    label: np.ndarray
    split: np.ndarray


def user_blocks(users: np.ndarray, source: str = "input") -> tuple[np.ndarray, np.ndarray]:
    """Start row of each user's block and each row's position in it; users must be grouped (contiguous).

    Raises:
        ValueError: naming the line (1-based) where a user reappears after another user's rows.
    """
    change = np.flatnonzero(users[1:] != users[:-1]) + 1
    starts = np.r_[0, change].astype(np.int64)
    block_users = users[starts]
    _, first = np.unique(block_users, return_index=True)
    if first.size != block_users.size:
        again = np.setdiff1d(np.arange(block_users.size), first)[0]
        raise ValueError(
            f"{source}: line {starts[again] + 1}: user {block_users[again]} reappears after other users; "
            "interactions must be grouped by user, in time order within each user"
        )
    lengths = np.diff(np.r_[starts, users.size])
    position = np.arange(users.size, dtype=np.int64) - np.repeat(starts, lengths)
    return starts, position


def din_samples(
    users: np.ndarray, items: np.ndarray, max_history: int, rng: np.random.Generator,
    catalogue: np.ndarray | None = None, source: str = "input",
) -> DinSamples:
    """Build the DIN samples of time-ordered interactions grouped by user (see the module docstring).

    Args:
        users, items: (n,) int64 raw ids, one interaction per entry, grouped by user, time-ordered.
        max_history: L, the most recent items kept in a history.
        rng: draws the negatives.
        catalogue: the items negatives are drawn from; default the distinct items of `items`.
        source: named in errors.

    Example:
        >>> s = din_samples(np.array([7, 7, 7]), np.array([1, 2, 3]), 2, np.random.default_rng(0), np.arange(1, 6))
        >>> s.target[::2].tolist(), s.label.tolist(), s.split.tolist()
        ([2, 3], [1, 0, 1, 0], [1, 1, 2, 2])
    """
    if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
        raise ValueError(f"max_history must be a positive int, got {max_history!r}")
    users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
    catalogue = np.unique(items) if catalogue is None else np.unique(np.asarray(catalogue, dtype=np.int64))
    outside = ~np.isin(items, catalogue)
    if outside.any():
        raise ValueError(f"{source}: line {np.flatnonzero(outside)[0] + 1}: item not in the catalogue")
    starts, pos = user_blocks(users, source)
    sizes = np.diff(np.r_[starts, users.size])
    block = np.repeat(np.arange(starts.size), sizes)
    last = (starts + sizes - 1)[block]  # last row of each row's user
    rows = np.flatnonzero(pos >= 1)  # one positive per row with a non-empty history
    # first position of each (user block, item): x lies in s_0..s_i iff its first position is <= i
    key = block * catalogue.size + np.searchsorted(catalogue, items)
    order = np.lexsort((pos, key))
    is_first = np.r_[True, key[order][1:] != key[order][:-1]]
    keys, first_pos = key[order][is_first], pos[order][is_first]
    new_item = np.zeros(users.size, dtype=np.int64)
    new_item[order[is_first]] = 1
    cum = np.cumsum(new_item)
    distinct = cum - (cum[starts] - new_item[starts])[block]  # distinct items among s_0..s_i
    full = rows[distinct[rows] >= catalogue.size]
    if full.size:
        r = full[0]
        raise ValueError(f"{source}: line {r + 1}: user {users[r]} has every catalogue item in s_0..s_{pos[r]}, "
                         "so no negative can be drawn")
    negatives = np.empty(rows.size, dtype=np.int64)
    pending = np.arange(rows.size)
    while pending.size:  # rejection sampling: redraw the negatives that hit s_0..s_i
        draw = rng.integers(0, catalogue.size, pending.size)
        k = block[rows[pending]] * catalogue.size + draw
        at = np.minimum(np.searchsorted(keys, k), keys.size - 1)
        seen = (keys[at] == k) & (first_pos[at] <= pos[rows[pending]])
        negatives[pending[~seen]] = catalogue[draw[~seen]]
        pending = pending[seen]
    lengths = np.repeat(np.minimum(pos[rows], max_history), 2)  # (R,), each sample twice
    split = np.where(rows == last[rows], 2, np.where(rows == last[rows] - 1, 1, 0)).astype(np.int8)
    return DinSamples(
        user=np.repeat(users[rows], 2),
        position=np.repeat(pos[rows], 2).astype(np.int32),
        hist_offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        hist=items[_ranges(np.repeat(rows, 2) - lengths, lengths)],
        target=np.stack([items[rows], negatives], 1).reshape(-1),
        label=np.tile(np.array([1, 0], dtype=np.int8), rows.size),
        split=np.repeat(split, 2),
    )


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges [s, s + n) for each (s, n), without a Python loop."""
    keep = lengths > 0
    s, n = starts[keep].astype(np.int64), lengths[keep].astype(np.int64)
    if not n.size:
        return np.zeros(0, dtype=np.int64)
    step = np.ones(int(n.sum()), dtype=np.int64)
    step[0] = s[0]
    step[np.cumsum(n)[:-1]] = s[1:] - (s[:-1] + n[:-1]) + 1  # jump from the end of one range to the next start
    return np.cumsum(step)


def training_mask(users: np.ndarray, source: str = "input") -> np.ndarray:
    """(n,) bool: the interactions visible to training, positions 0 .. T-3 of each user (val and test targets
    excluded), over which `counts.npz` is counted."""
    starts, pos = user_blocks(np.asarray(users, dtype=np.int64), source)
    sizes = np.diff(np.r_[starts, len(users)])
    return pos <= np.repeat(sizes, sizes) - 3


def _counts(values: np.ndarray, universe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(universe, count of each universe value in `values`), zero counts included."""
    return universe, np.bincount(np.searchsorted(universe, values), minlength=universe.size).astype(np.int64)


def _table(s: DinSamples, rows: np.ndarray, categories: tuple[np.ndarray, np.ndarray] | None) -> pa.Table:
    lengths = s.hist_offsets[rows + 1] - s.hist_offsets[rows]
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    hist = s.hist[_ranges(s.hist_offsets[rows], lengths)]
    cols: dict[str, pa.Array] = {
        layout.LABEL: pa.array(s.label[rows]),
        "user": pa.array(s.user[rows]),
        "position": pa.array(s.position[rows]),
        "hist": pa.ListArray.from_arrays(pa.array(offsets), pa.array(hist)),
        "target": pa.array(s.target[rows]),
    }
    if categories is not None:
        items, cats = categories
        cat_of = lambda x: cats[np.searchsorted(items, x)]  # noqa: E731
        cols["hist_cat"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(cat_of(hist)))
        cols["target_cat"] = pa.array(cat_of(s.target[rows]))
    return pa.table(cols)


def write_sequences(
    out: Path, samples: DinSamples, users: np.ndarray, items: np.ndarray, catalogue: np.ndarray,
    categories: tuple[np.ndarray, np.ndarray] | None, summary: dict[str, Any], part_rows: int = PART_ROWS,
) -> dict[str, Any]:
    """Write DIN samples in the layout: split parts, counts.npz, summary.json (returned).

    Args:
        out: the data folder.
        samples: from `din_samples`.
        users, items: the interactions the samples were built from (for the training counts).
        catalogue: every item id negatives may be drawn from.
        categories: (item ids ascending, category id of each) or None when items have no categories.
        summary: extra summary.json entries (source, seed, ...).
        part_rows: rows per Parquet part.
    """
    splits = {}
    for code, split in enumerate(layout.SPLITS):
        rows = np.flatnonzero(samples.split == code)
        for k, start in enumerate(range(0, rows.size, part_rows)):
            table = _table(samples, rows[start : start + part_rows], categories)
            layout.atomic_write(out / split / f"part-{k}.parquet",
                                lambda tmp, t=table: pq.write_table(t, tmp, row_group_size=ROW_GROUP_ROWS))
        splits[split] = {"rows": int(rows.size), "clicks": int(samples.label[rows].sum()),
                         "users": int(np.unique(samples.user[rows]).size), "parts": -(-rows.size // part_rows)}
    visible = training_mask(users)
    counts = {"item": _counts(items[visible], catalogue), "user": _counts(users[visible], np.unique(users))}
    if categories is not None:
        cat_items, cats = categories
        cat_of_visible = cats[np.searchsorted(cat_items, items[visible])]
        counts["cat"] = _counts(cat_of_visible, np.unique(cats))
    layout.save_counts(out / layout.COUNTS_FILE, counts)
    features = ["hist", "target", *(["hist_cat", "target_cat"] if categories is not None else []), "user"]
    full = {
        "kind": KIND,
        "rows_written": int(samples.label.size),
        "bad_rows": 0,
        "first_bad_lines": [],
        "users": int(np.unique(users).size),
        "items": int(catalogue.size),
        "categories": int(np.unique(categories[1]).size) if categories is not None else 0,
        "features": features,
        "splits": splits,
        "counts_split": "interactions at positions 0 .. T-3 of each user (the train targets and their histories)",
        **summary,
    }
    layout.write_json(out / layout.SUMMARY_FILE, full)
    return full

