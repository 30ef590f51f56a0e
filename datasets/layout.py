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
categorical ids (hex parsed as unsigned 32-bit; missing = `MISSING_CAT`). A folder of `embtables preprocess
csv` (`tabular.py`) is of kind "criteo" with the user's columns instead, which its summary.json lists ("dense":
float64, NaN when missing; "categorical": int64 hashed ids, `MISSING_CAT` when missing).

Every file is written atomically: to a temporary name in the same folder, fsynced, then renamed, so a crash
never leaves a half-written file under a final name.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# every file is written atomically by the library's helpers, imported here for the modules that read `layout.*`
from embtables.files import atomic_write, read_json, write_json  # noqa: F401

DENSE = [f"I{i}" for i in range(1, 14)]
SPARSE = [f"C{i}" for i in range(1, 27)]
LABEL = "label"
SPLITS = ("train", "val", "test")
MISSING_INT = np.iinfo(np.int32).min  # I1..I13 when the field is empty
MISSING_CAT = -1  # C1..C26 when the field is empty (real values are unsigned 32-bit, so never -1)
COUNTS_FILE = "counts.npz"
# a training run's folder keeps the counts.npz it trained with as its vocabulary, with a record of its source
VOCABULARY_FILE = "vocabulary.npz"
VOCABULARY_RECORD = "vocabulary.json"
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
    """Per-feature (values, counts), count-descending, as saved by `save_counts`.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: the file is not a readable counts file (not an .npz, truncated, corrupt, pickled data) or
            its arrays are missing or mismatched, naming the file.
    """
    def bad(why: str) -> ValueError:
        return ValueError(f"{path} is not a valid counts file: {why}; rewrite the data folder with the command "
                          "that wrote it (`embtables preprocess criteo`, `synth criteo`, `prepare-sequences`, "
                          "`synth sequences`)")

    with open(path, "rb") as f:  # FileNotFoundError as is
        head = f.read(4)
    if head != b"PK\x03\x04":  # an .npz is a zip archive; anything else (empty, garbage, pickle) is refused
        raise bad("it is empty (0 bytes)" if not head else "it is not an .npz (zip) archive")
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise bad(f"{type(e).__name__}: {e}") from e
    with z:
        try:
            arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise bad(f"{type(e).__name__}: {e}") from e
    features = sorted({k.rsplit("/", 1)[0] for k in arrays}, key=_natural)
    out = {}
    for f in features:
        values, cnt = arrays.get(f"{f}/values"), arrays.get(f"{f}/counts")
        if values is None or cnt is None:
            raise bad(f"feature {f!r} lacks its {'values' if values is None else 'counts'} array")
        if values.ndim != 1 or values.shape != cnt.shape or not (np.issubdtype(values.dtype, np.integer)
                                                                 and np.issubdtype(cnt.dtype, np.integer)):
            raise bad(f"feature {f!r} has values {values.dtype}{list(values.shape)} and counts "
                      f"{cnt.dtype}{list(cnt.shape)}; expected 1-D integer arrays of equal length")
        out[f] = (values, cnt)
    return out


def open_part(path: str | os.PathLike, columns: Sequence[str] = (), needs: str = "") -> pq.ParquetFile:
    """Open a Parquet part's footer, checking that its schema holds `columns`.

    Raises:
        ValueError: naming the file, when it is not readable Parquet (pyarrow's error type and message quoted)
            or lacks some of `columns` (named, followed by `needs`: what the folder's parts hold, who writes them).
    """
    try:
        part = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path} is not a readable Parquet file ({type(e).__name__}: {e})") from e
    have = set(part.schema_arrow.names)
    missing = [c for c in columns if c not in have]
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(missing)}; {needs or 'the loader needs them'}")
    return part


def _natural(name: str) -> tuple[str, int]:
    head = name.rstrip("0123456789")
    tail = name[len(head):]
    return head, int(tail) if tail else -1
