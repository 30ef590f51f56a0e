"""The vocabulary a run trained with, kept in its folder, so that the run scores later data without its data folder.

A run's embedding rows are indexed by the ranks of its data folder's counts.npz (cut at min_count): with another
vocabulary the same raw id reads another row. So the run folder keeps

    vocabulary.npz    that counts.npz, hard-linked where the file system allows (no copy, no space; the data
                      writers replace files by renaming, so the link keeps the trained-with bytes even when the
                      data folder is rewritten), else copied: the run is self-contained either way
    vocabulary.json   its absolute source path and sha256, the run's min_count and raw_ids, and the feature
                      columns (dense, categorical) the model reads

`load_run_vocabulary` reads it back, checked against the recorded sha256: the kept file first, then the source
path; a vocabulary whose bytes differ is refused, never used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embtables.datasets.layout import COUNTS_FILE, VOCABULARY_FILE, load_counts
from embtables.datasets.layout import VOCABULARY_RECORD
from embtables.datasets.vocab_from import run_vocabulary_file
from embtables.files import link_or_copy, read_json, sha256_file, write_json


def vocabulary_of(data_path: str | Path) -> dict[str, str] | None:
    """The vocabulary of a data folder: its counts.npz by absolute path and sha256 (None when it has none)."""
    counts = Path(data_path) / COUNTS_FILE
    if not counts.exists():
        return None
    return {"file": str(counts.resolve()), "sha256": sha256_file(counts)}


def keep_vocabulary(out: Path, vocabulary: dict[str, str], min_count: int, raw_ids: bool, data: Any) -> dict[str, Any]:
    """Keep `vocabulary` in the run folder `out` (vocabulary.npz and vocabulary.json); returns the record written.

    Args:
        out: the run folder.
        vocabulary: `vocabulary_of(data folder)`.
        min_count: the run's cut-off (values seen fewer times share the out-of-vocabulary row).
        raw_ids: whether the run feeds raw ids (then scoring needs no vocabulary, only the feature columns).
        data: the opened data folder (its `dense` and `sparse` column names, when it has them).
    """
    stored_as = link_or_copy(vocabulary["file"], out / VOCABULARY_FILE)
    record = {"source": vocabulary["file"], "sha256": vocabulary["sha256"], "file": VOCABULARY_FILE,
              "stored_as": stored_as, "min_count": min_count, "raw_ids": raw_ids,
              "dense": list(getattr(data, "dense", [])), "categorical": list(getattr(data, "sparse", []))}
    write_json(out / VOCABULARY_RECORD, record)
    return record


def read_vocabulary_record(run: str | Path) -> dict[str, Any]:
    """The run's vocabulary.json; ValueError naming the run when it has none."""
    path = Path(run) / VOCABULARY_RECORD
    if not path.exists():
        run_vocabulary_file(run)  # raises the error that says why
    return read_json(path)


def load_run_vocabulary(run: str | Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """The counts (per feature, values and counts) the run trained with, and its vocabulary.json record.

    Args:
        run: a run folder of `embtables train`.

    Raises:
        ValueError: no record, or neither the kept file nor the recorded source has the recorded sha256 (each
            path named with what it holds), so mapping ids through it would read the wrong embedding rows.
    """
    path, record = run_vocabulary_file(run)
    return load_counts(path), record
