"""Batches of a Criteo-kind data folder (`layout.py`): dense features, categorical ids as a KeyedJaggedTensor.

    data = CriteoData("data/criteo")                    # preprocessed or synthetic, any split layout
    tables = data.tables(embedding_dim=16)              # one TableConfig per feature, sized by the vocabulary
    for batch in data.batches("train", 4096, shuffle=True, seed=epoch, workers=1):
        logits = model(batch.dense, batch.sparse)       # (B, 13) float32, KJT keyed C1..C26

Rows are read a Parquet row group at a time. Ids are vocabulary indices (`ids="index"`, frequency-ranked, see
`vocab.py`) or the raw hex-parsed ids (`ids="raw"`, for methods that hash raw ids). Shuffling visits the row
groups in a seeded random order and passes rows through a seeded shuffle buffer (`shuffle.py`), so the order
is fixed by (seed, workers). With `workers > 0`, worker w reads every workers-th row group of that order and
the batches of the workers are interleaved round-robin; the partial batches each worker ends with are
merged, so every batch is full except possibly the last (dropped with `drop_last`), as with `workers=0`.

Feature columns: summary.json's "dense" and "categorical" lists when present (a folder of `embtables preprocess
csv`, with the user's column names), else Criteo's I1..I13 and C1..C26. Integer dense columns (Criteo's int32,
`MISSING_INT` when missing) become log(1 + max(x, 0)); floating-point ones (float64, NaN when missing) become
sign(x) log(1 + |x|), which equals the former on counts and keeps the sign of negative values; missing gives 0.

Files from elsewhere are checked as they are read, with a ValueError naming the file: a part that is not
readable Parquet or lacks a column (its footer, when batches are requested), and, with ids="index", an id of
the split counts.npz counted (summary.json's "counts_split") that counts.npz does not list: such counts do not
belong to these parts. Ids of the other splits may be unseen in the counts; they map to the OOV index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from embtables.config import TableConfig
from embtables.datasets.batch import Batch, make_batch
from embtables.datasets.layout import (COUNTS_FILE, DENSE, LABEL, SPARSE, SPLITS, SUMMARY_FILE, load_counts, open_part,
                                       read_json)
from embtables.datasets.shuffle import DEFAULT_BUFFER_ROWS, Rows, ShuffleBuffer, batches_of, concat
from embtables.datasets.shares import Part, part_batches
from embtables.datasets.vocab import Vocabulary

__all__ = ["Batch", "CriteoData", "make_batch", "open_data"]

IdKind = Literal["index", "raw"]
_WRITERS = "`embtables preprocess criteo` or `embtables synth criteo`"
_NEEDS = f"a Criteo data folder's parts hold label, I1..I13 and C1..C26, as written by {_WRITERS}"
_OWN_WRITER = "`embtables preprocess csv`"  # of folders that list their own columns
_OWN_NEEDS = f"this folder's parts hold label and the columns its summary.json lists, as written by {_OWN_WRITER}"


class _FileError(ValueError):
    """A bad data file met while reading rows; a loader worker hands its message to the main process."""


@dataclass
class _Failed:
    """What a worker yields in place of raising `_FileError`, so that the main process raises a ValueError with
    the plain message (DataLoader's re-raise would prefix it with the worker's traceback)."""

    message: str


class _RowGroups(IterableDataset):
    """Streams transformed rows of a list of (file, row group) units as batches; runs in loader workers."""

    def __init__(self, units: list[tuple[str, int]], batch_size: int, shuffle: bool, seed: int, buffer_rows: int,
                 vocabs: list[Vocabulary] | None, counted: tuple[str, str] | None = None,
                 features: tuple[list[str], list[str]] = (DENSE, SPARSE), writers: str = _WRITERS,
                 rank: tuple[int, int] = (0, 1)) -> None:
        self.units, self.batch_size, self.shuffle, self.seed = units, batch_size, shuffle, seed
        self.rank, self.world = rank  # this stream reads units rank, rank + world, ... of the unit order
        self.dense, self.sparse, self.writers = *features, writers
        self.buffer_rows, self.vocabs = buffer_rows, vocabs
        self.counted = counted  # (counts file, split): the units are of the split it counted, so every id is in it

    def _read(self, path: str, group: int) -> Rows:
        try:
            t = pq.ParquetFile(path).read_row_group(group, columns=[LABEL, *self.dense, *self.sparse])
        except (pa.ArrowException, OSError) as e:
            raise _FileError(f"{path}: row group {group} is not readable Parquet ({type(e).__name__}: {e})") from e
        labels = t.column(LABEL).to_numpy().astype(np.float32)
        dense = np.zeros((t.num_rows, len(self.dense)), dtype=np.float32)  # (n, 13) for Criteo
        for j, c in enumerate(self.dense):
            raw = t.column(c).to_numpy()
            if raw.dtype.kind == "f":  # NaN (missing) -> 0; the sign of negative values is kept
                dense[:, j] = np.nan_to_num(np.sign(raw) * np.log1p(np.abs(raw)), nan=0.0)
            else:  # Criteo's int32: negative values and MISSING_INT -> 0; exact int -> float64
                dense[:, j] = np.log1p(np.maximum(raw, 0), dtype=np.float64)
        raw_ids = [t.column(c).to_numpy() for c in self.sparse]
        if self.vocabs is not None:
            raw_ids = [self._lookup(v, col, f, path) for v, col, f in zip(self.vocabs, raw_ids, self.sparse)]
        return labels, dense, np.stack(raw_ids, axis=1)  # ids (n, 26) int64

    def _lookup(self, vocab: Vocabulary, col: np.ndarray, feature: str, path: str) -> np.ndarray:
        idx = vocab.lookup(col)
        if self.counted is not None:
            oov = idx == vocab.oov_index  # only these can be unknown: the common case tests nothing more
            if oov.any() and (bad := vocab.unknown(col[oov])).any():
                ids = col[oov][bad]
                counts, split = self.counted
                raise _FileError(f"{path}: column {feature} holds id {int(ids[0])}, which {counts} never counted "
                                 f"({np.unique(ids).size} such id(s) in this row group), though it counts split "
                                 f"{split!r}, this part's: the counts do not belong to these Parquet files "
                                 f"(rewrite the folder with {self.writers})")
        return idx

    def _rows(self, worker: int, workers: int) -> Iterator[Rows]:
        order = unit_order(len(self.units), self.shuffle, self.seed)[self.rank::self.world]
        # one generator per (rank, worker) stream; [seed, worker] with one rank
        rng = np.random.default_rng([self.seed, worker * self.world + self.rank])
        buffer = ShuffleBuffer(self.buffer_rows, rng) if self.shuffle else None
        for u in order[worker::workers]:
            rows = self._read(*self.units[u])
            if buffer is None:
                yield rows
            elif (out := buffer.push(rows)) is not None:
                yield out
        if buffer is not None:
            yield buffer.drain()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool] | _Failed]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        try:
            for rows, full in batches_of(self._rows(worker, workers), self.batch_size):
                yield (*(torch.from_numpy(np.ascontiguousarray(a)) for a in rows), not full)
        except _FileError as e:
            if info is None:
                raise
            yield _Failed(str(e))


class CriteoData:
    """A Criteo-kind data folder: its splits, vocabularies, table configs, counts and batches.

    Args:
        path: a folder written by `embtables preprocess criteo` or `embtables synth criteo`.

    Raises:
        FileNotFoundError / ValueError: the folder, its summary.json, or its Criteo kind is missing,
            naming the folder and what is missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: no such data folder")
        summary = self.path / SUMMARY_FILE
        if not summary.exists():
            raise ValueError(f"{self.path} is not a Criteo data folder: {SUMMARY_FILE} is missing (write one with "
                             "`embtables preprocess criteo` or `embtables synth criteo`)")
        self.summary = read_json(summary)
        if self.summary.get("kind") != "criteo":
            raise ValueError(f"{self.path} is not a Criteo data folder: {SUMMARY_FILE} has kind "
                             f"{self.summary.get('kind')!r}, expected 'criteo'")
        found = [d.name for d in self.path.iterdir() if d.is_dir() and any(d.glob("part-*.parquet"))]
        known = [s for s in (*SPLITS, "all") if s in found]
        self.splits: tuple[str, ...] = (*known, *sorted(set(found) - set(known)))
        if not self.splits:
            raise ValueError(f"{self.path} is not a Criteo data folder: no <split>/part-*.parquet files")
        self.kind = "criteo"
        # the folder's own feature columns (`preprocess csv`), else Criteo's
        self.dense, self.sparse = (_names(self.path, self.summary, key, default)
                                   for key, default in (("dense", DENSE), ("categorical", SPARSE)))
        self.dense_dim = len(self.dense)
        own = "categorical" in self.summary
        self._writers, self._needs = (_OWN_WRITER, _OWN_NEEDS) if own else (_WRITERS, _NEEDS)
        self._counts: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self._vocabs: dict[tuple[str, int], Vocabulary] = {}

    def parts(self, split: str) -> list[Path]:
        """The part files of `split`, in part order."""
        if split not in self.splits:
            raise ValueError(f"{self.path} has no split {split!r}; it has {list(self.splits)}")
        return sorted((self.path / split).glob("part-*.parquet"), key=lambda p: int(p.stem.split("-")[1]))

    def rows(self, split: str) -> int:
        """Number of rows of `split` (from the Parquet footers; ValueError naming a part that is not Parquet)."""
        return sum(open_part(p).metadata.num_rows for p in self.parts(split))

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        n = self.rows(split)
        return n // batch_size if drop_last else -(-n // batch_size)

    def vocabulary(self, feature: str, min_count: int = 1) -> Vocabulary:
        """The frequency-ranked vocabulary of `feature` (from counts.npz), cached per (feature, min_count)."""
        if feature not in self.sparse:
            known = f"the features of {self.path} are {', '.join(self.sparse)}" if self.sparse != SPARSE else \
                f"Criteo features are {SPARSE[0]}..{SPARSE[-1]}"
            raise ValueError(f"unknown feature {feature!r}; {known}")
        if self._counts is None:
            path = self.path / COUNTS_FILE
            if not path.exists():
                raise ValueError(f"{self.path}: {COUNTS_FILE} is missing; vocabularies (ids='index', tables(), "
                                 "counts()) need it")
            self._counts = load_counts(path)
        if feature not in self._counts:
            raise ValueError(f"{self.path / COUNTS_FILE} has no counts for feature {feature!r}")
        key = (feature, min_count)
        if key not in self._vocabs:
            self._vocabs[key] = Vocabulary(*self._counts[feature], min_count=min_count)
        return self._vocabs[key]

    def tables(self, embedding_dim: int, min_count: int = 1) -> list[TableConfig]:
        """One TableConfig per feature (C1..C26) with num_embeddings = its vocabulary size (kept values + OOV)."""
        return [TableConfig(f, self.vocabulary(f, min_count).num_embeddings, embedding_dim) for f in self.sparse]

    def counts(self, min_count: int = 1) -> dict[str, torch.Tensor]:
        """Per feature, (num_embeddings,) int64 training counts indexed by vocabulary index (the OOV slot last)."""
        return {f: torch.from_numpy(self.vocabulary(f, min_count).index_counts()) for f in self.sparse}

    def batches(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                ids: IdKind = "index", min_count: int = 1, workers: int = 0,
                buffer_rows: int = DEFAULT_BUFFER_ROWS, part: Part | None = None, pad: bool = False) -> Iterator[Batch]:
        """Iterate `split` as `Batch`es.

        Args:
            split: e.g. "train", "val", "test" or "all".
            batch_size: rows B per batch.
            shuffle: visit row groups in a seeded random order through a shuffle buffer; else file order.
            seed: the shuffle seed (use the epoch number for a new order per epoch).
            drop_last: drop the final batch when it has fewer than B rows.
            ids: "index" (vocabulary indices in [0, num_embeddings)) or "raw" (raw int64 ids, -1 = missing).
            min_count: vocabulary cut-off for ids="index" (see `Vocabulary`).
            workers: loader worker processes (0: read in this process).
            buffer_rows: shuffle buffer capacity in rows (~260 bytes each).
            part: read as one of several processes: only this rank's row groups, yielding its B / N rows of each
                global batch (`shares.py`; the order is fixed by (seed, N)). None: every row, in B-row batches.
            pad: with `part`, pad a short last share (see `shares.share_of`).

        Raises:
            ValueError: at the call, a bad option, or a part of `split` that is not Parquet or lacks a column;
                while iterating, a row group that is not readable, or (ids="index") an id of the counted split
                that counts.npz lacks; each naming the file (from a worker too: the same plain message).
        """
        options = dict(ids=ids, min_count=min_count, workers=workers, buffer_rows=buffer_rows)
        if part is not None and part.world > 1:
            return part_batches(self, split, batch_size, part, shuffle, seed, drop_last, pad, **options)
        (stream,), _ = self.rank_streams(split, batch_size, 1, [0], shuffle, seed, **options)
        return (b for b in stream if b.batch_size == batch_size or not drop_last)  # errors above raise at the call

    def rank_streams(self, split: str, share_rows: int, world: int, ranks: Sequence[int], shuffle: bool, seed: int,
                     ids: IdKind = "index", min_count: int = 1, workers: int = 0,
                     buffer_rows: int = DEFAULT_BUFFER_ROWS) -> tuple[list[Iterator[Batch]], list[int]]:
        """Per rank of `ranks` (of `world`), the batches of `share_rows` rows its row groups give (the last may be
        short), and the rows each of the `world` ranks reads (see `shares.py`; the arguments as `batches`)."""
        for name, value, low in (("batch_size", share_rows, 1), ("workers", workers, 0), ("buffer_rows", buffer_rows, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if ids not in ("index", "raw"):
            raise ValueError(f"ids must be 'index' or 'raw', got {ids!r}")
        vocabs = [self.vocabulary(f, min_count) for f in self.sparse] if ids == "index" else None
        columns = [LABEL, *self.dense, *self.sparse]
        files = [(str(p), open_part(p, columns, self._needs).metadata) for p in self.parts(split)]
        units = [(p, g) for p, meta in files for g in range(meta.num_row_groups)]
        unit_rows = np.array([meta.row_group(g).num_rows for _, meta in files for g in range(meta.num_row_groups)])
        counted = None  # the split counts.npz counted holds no id it lacks: check those ids as they are read
        if vocabs is not None and split == self.summary.get("counts_split"):
            counted = (str(self.path / COUNTS_FILE), split)
        order = unit_order(len(units), shuffle, seed)
        rows = [int(unit_rows[order[r::world]].sum()) for r in range(world)]
        streams = [self._iterate(_RowGroups(units, share_rows, shuffle, seed, buffer_rows, vocabs, counted,
                                            (self.dense, self.sparse), self._writers, (r, world)), workers, share_rows)
                   for r in ranks]
        return streams, rows

    def _iterate(self, source: _RowGroups, workers: int, batch_size: int) -> Iterator[Batch]:
        """The source's batches; every one full but the last."""
        stream = iter(source) if workers == 0 else iter(DataLoader(source, batch_size=None, num_workers=workers))
        tails: list[Rows] = []
        for item in stream:
            if isinstance(item, _Failed):
                raise ValueError(item.message)
            *rows, tail = item
            if tail:
                tails.append(tuple(rows))  # a worker's last, partial batch: merged below
            else:
                yield make_batch(tuple(rows), self.sparse)
        merged = [concat([tuple(a.numpy() for a in t) for t in tails])] if tails else []
        for rows, _ in batches_of(iter(merged), batch_size):
            yield make_batch(rows, self.sparse)


def unit_order(units: int, shuffle: bool, seed: int) -> np.ndarray:
    """The order the units (row groups) of a split are read in: seeded random, or file order."""
    return np.random.default_rng(seed).permutation(units) if shuffle else np.arange(units)


def _names(path: Path, summary: dict, key: str, default: list[str]) -> list[str]:
    """summary.json's list of feature columns `key`, checked, or `default` (Criteo's) when it has none."""
    names = summary.get(key, default)
    if not isinstance(names, list) or not all(isinstance(n, str) and n and n != LABEL for n in names):
        raise ValueError(f"{path / SUMMARY_FILE}: {key!r} must be a list of column names other than {LABEL!r}, "
                         f"got {names!r}")
    return names


def open_data(path: str | Path) -> CriteoData:
    """Open a Criteo-kind data folder (same as `CriteoData(path)`)."""
    return CriteoData(path)
