"""The on-disk layout every data set of `embtables.datasets` writes and reads, and its small I/O helpers.

A data folder DIR holds:

    DIR/<split>/part-<k>.parquet   split in {train, val, test} (or `all` for --split none); one pyarrow
                                   dataset per split; the whole output is readable as one dataset from
                                   the list of part files
    DIR/counts.npz                 per-feature frequency counts of the training split:
                                   `<feature>/values` (raw ids, int64) and `<feature>/counts` (int64),
                                   sorted by count descending, then by value ascending
    DIR/summary.json               rows read/written, bad rows, per-split rows and clicks, and the kind
                                   of data set (`"kind": "criteo" | "sequences"`)
    DIR/truth.json                 synthetic data only: Bayes-optimal AUC and logloss per split

Criteo-like columns: `label` int8, `I1`..`I13` int32 (missing = `MISSING_INT`), `C1`..`C26` int64 raw
categorical ids (hex parsed as unsigned 32-bit; missing = `MISSING_CAT`).

Every file is written atomically: to a temporary name in the same folder, fsynced, then renamed, so a crash
never leaves a half-written file under a final name.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

# every file is written atomically by the library's helpers, imported here for the modules that read `layout.*`
from embtables.files import atomic_write, read_json, write_json  # noqa: F401

DENSE = [f"I{i}" for i in range(1, 14)]
SPARSE = [f"C{i}" for i in range(1, 27)]
LABEL = "label"
SPLITS = ("train", "val", "test")
MISSING_INT = np.iinfo(np.int32).min  # I1..I13 when the field is empty
MISSING_CAT = -1  # C1..C26 when the field is empty (real values are unsigned 32-bit, so never -1)
COUNTS_FILE = "counts.npz"
SUMMARY_FILE = "summary.json"
TRUTH_FILE = "truth.json"


def save_counts(path: str | os.PathLike, counts: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Save per-feature (values, counts) arrays, sorted by count descending then value ascending."""
    arrays: dict[str, np.ndarray] = {}
    for feature, (values, cnt) in counts.items():
        values, cnt = np.asarray(values, dtype=np.int64), np.asarray(cnt, dtype=np.int64)
        order = np.lexsort((values, -cnt))
        arrays[f"{feature}/values"], arrays[f"{feature}/counts"] = values[order], cnt[order]

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def load_counts(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-feature (values, counts), count-descending, as saved by `save_counts`."""
    with np.load(path) as z:
        features = sorted({k.rsplit("/", 1)[0] for k in z.files}, key=_natural)
        return {f: (z[f"{f}/values"], z[f"{f}/counts"]) for f in features}


def _natural(name: str) -> tuple[str, int]:
    head = name.rstrip("0123456789")
    tail = name[len(head):]
    return head, int(tail) if tail else -1
