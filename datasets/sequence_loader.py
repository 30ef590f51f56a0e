"""Batches of a sequence data folder (kind "sequences", `datasets/sequences.py`) for DIN-style models.

    data = SequenceData("data/amazon")
    tables = data.tables(embedding_dim=16)                 # item table unpooled; category and user tables pooled
    for batch in data.batches("train", 1024, shuffle=True, seed=epoch, drop_last=True):
        logits = model(batch.dense, batch.sparse)          # batch.dense is (B, 0): no dense features

A batch's `sparse` KeyedJaggedTensor holds, in this key order,

    hist        jagged item indices (the history, oldest first; lengths 1 .. max_history)
    target      one item index per row
    hist_cat, target_cat   the same for item categories, when the data set has them
    user        one user index per row

Indices come from the frequency-ranked `Vocabulary` (datasets/vocab.py) of each of `counts.npz`'s features
`item`, `cat` and `user`, as for Criteo: index 0 the most frequent id, ids seen fewer than `min_count` times
in training (items only in val/test targets or negatives, with min_count 1) share the last,
out-of-vocabulary index. `hist` and `target` share the unpooled item table (DIN looks both up in the same
table, one vector per history item); `hist_cat` (summed) and `target_cat` share a pooled category table, so a
trainer can put every pooled table in one collection. A split is held in memory as flat numpy arrays (the
history as values + offsets), and a batch is gathered from them with vectorised index arithmetic. On several
processes (`part`, `shares.py`) each holds only its own row groups: units r, r + N, ... in file order, its rows
shuffled with its own seed [seed, r].

counts.npz lists every id a split can hold (the whole catalogue, zero counts included), so a part that is not
readable Parquet, lacks a column, or holds an id counts.npz does not list raises a ValueError naming the file
when its split is first loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchrec import KeyedJaggedTensor

from embtables.config import TableConfig
from embtables.datasets import layout
from embtables.datasets.din_samples import KIND, _ranges
from embtables.datasets.batch import Batch
from embtables.datasets.shares import Part, part_batches
from embtables.datasets.vocab import Vocabulary

ITEM, CAT, USER = "item", "cat", "user"
_VOCAB = {"user": USER, "target": ITEM, "hist": ITEM, "target_cat": CAT, "hist_cat": CAT}  # column -> vocabulary
_WRITERS = "`embtables prepare-sequences` or `embtables synth sequences`"


# One batch of DIN samples is the Criteo loader's `Batch`: dense (B, 0) float32 (sequence data sets have no
# dense features), sparse a KeyedJaggedTensor keyed hist, target, [hist_cat, target_cat,] user (see the module
# docstring), labels (B,) float32 clicks.
SequenceBatch = Batch


class SequenceData:
    """A sequence data folder: its splits, vocabularies, table configs, counts and batches.

    Args:
        path: a folder written by `embtables prepare-sequences` or `embtables synth sequences`.

    Raises:
        FileNotFoundError / ValueError: the folder or its files are missing, or its kind is not "sequences".

    Example:
        >>> import tempfile
        >>> from embtables.datasets.synthetic_sequences import synth_sequences
        >>> d = tempfile.mkdtemp(); _ = synth_sequences(d, users=100, items=200, clusters=10, clusters_per_category=2)
        >>> b = next(SequenceData(d).batches("train", 8))
        >>> b.sparse.keys(), b.dense.shape, b.labels.shape
        (['hist', 'target', 'hist_cat', 'target_cat', 'user'], torch.Size([8, 0]), torch.Size([8]))
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: no such data folder")
        summary = self.path / layout.SUMMARY_FILE
        if not summary.exists():
            raise ValueError(f"{self.path} is not a sequence data folder: {layout.SUMMARY_FILE} is missing")
        self.summary = layout.read_json(summary)
        if self.summary.get("kind") != KIND:
            raise ValueError(f"{self.path} is not a sequence data folder: {layout.SUMMARY_FILE} has kind "
                             f"{self.summary.get('kind')!r}, expected {KIND!r}")
        counts_path = self.path / layout.COUNTS_FILE
        if not counts_path.exists():
            raise ValueError(f"{self.path}: {layout.COUNTS_FILE} is missing")
        self._counts = layout.load_counts(counts_path)
        self.has_categories = CAT in self._counts
        for name in (ITEM, USER):
            if name not in self._counts:
                raise ValueError(f"{counts_path} has no counts for {name!r}")
        self.kind = KIND
        self.dense_dim = 0
        self.max_history = int(self.summary["max_history"])
        self.splits = tuple(s for s in layout.SPLITS if any((self.path / s).glob("part-*.parquet")))
        self._vocabs: dict[tuple[str, int], Vocabulary] = {}
        # keyed by (split, rank, world): a process holds its own row groups only
        self._raw: dict[tuple[str, int, int], dict[str, np.ndarray]] = {}
        self._indexed: dict[tuple[str, int, int, int], dict[str, np.ndarray]] = {}
        self._part_ends: dict[tuple[str, int, int], tuple[list[Path], np.ndarray]] = {}  # their parts, end rows
        self._unit_lists: dict[str, list[tuple[Path, int, int]]] = {}  # split -> `_units`

    def vocabulary(self, name: str, min_count: int = 1) -> Vocabulary:
        """The frequency-ranked vocabulary of `item`, `user` or `cat`, cached per (name, min_count)."""
        if name not in self._counts:
            raise ValueError(f"{self.path} has no vocabulary {name!r}; it has {sorted(self._counts)}")
        key = (name, min_count)
        if key not in self._vocabs:
            self._vocabs[key] = Vocabulary(*self._counts[name], min_count=min_count)
        return self._vocabs[key]

    @property
    def features(self) -> list[str]:
        """KJT keys of a batch, in order."""
        return ["hist", "target", *(["hist_cat", "target_cat"] if self.has_categories else []), "user"]

    def tables(self, embedding_dim: int, min_count: int = 1) -> list[TableConfig]:
        """The unpooled item table shared by `hist` and `target`, the unpooled category table shared by
        `hist_cat` and `target_cat` (when the data has categories), then the pooled user table.

        Sizes are the vocabulary sizes (kept ids + one out-of-vocabulary row). DIN builds two collections from
        these: the unpooled tables (attention needs one vector per history position: item and category
        vectors concatenated, as the DIN paper's goods_id + cate_id) and the pooled others.
        """
        def rows(name: str) -> int:
            return self.vocabulary(name, min_count).num_embeddings

        tables = [TableConfig(ITEM, rows(ITEM), embedding_dim, ("hist", "target"), "none")]
        if self.has_categories:
            tables.append(TableConfig(CAT, rows(CAT), embedding_dim, ("hist_cat", "target_cat"), "none"))
        tables.append(TableConfig(USER, rows(USER), embedding_dim))
        return tables

    def counts(self, min_count: int = 1) -> dict[str, torch.Tensor]:
        """(num_embeddings,) int64 training counts indexed by vocabulary index (the OOV slot last), per table
        name and per feature name (`hist` and `target` give the item counts)."""
        out = {}
        for t in self.tables(1, min_count):
            c = torch.from_numpy(self.vocabulary(t.name, min_count).index_counts())
            out[t.name] = c
            out.update({f: c for f in t.feature_names})
        return out

    def parts(self, split: str) -> list[Path]:
        if split not in self.splits:
            raise ValueError(f"{self.path} has no split {split!r}; it has {list(self.splits)}")
        return sorted((self.path / split).glob("part-*.parquet"), key=lambda p: int(p.stem.split("-")[1]))

    def rows(self, split: str) -> int:
        return sum(layout.open_part(p).metadata.num_rows for p in self.parts(split))

    def _units(self, split: str) -> list[tuple[Path, int, int]]:
        """(part, row group, rows) of each unit of the split, in file order, after checking each part's footer for
        the columns loading needs; read once per split, as the rows are."""
        if split in self._unit_lists:
            return self._unit_lists[split]
        needs = (f"a sequence data folder{' with categories' if self.has_categories else ''} has parts with "
                 f"columns {', '.join(self._columns)}, as written by {_WRITERS}")
        units = []
        for p in self.parts(split):
            meta = layout.open_part(p, self._columns, needs).metadata
            units += [(p, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        self._unit_lists[split] = units
        return units

    @property
    def _columns(self) -> list[str]:
        return [layout.LABEL, "user", "target", "hist", *(["target_cat", "hist_cat"] if self.has_categories else [])]

    def _read(self, key: tuple[str, int, int]) -> pa.Table:
        """Rank `rank` of `world`'s row groups of the split (`key`) as one table."""
        split, rank, world = key
        units = self._units(split)[rank::world]
        tables = []
        for p, g, _ in units:
            try:
                tables.append(pq.ParquetFile(p).read_row_group(g, columns=self._columns))
            except (pa.ArrowException, OSError) as e:
                raise ValueError(f"{p} is not a readable Parquet file ({type(e).__name__}: {e})") from e
        self._part_ends[key] = ([p for p, _, _ in units], np.cumsum([t.num_rows for t in tables]))
        if not tables:  # more processes than row groups
            return pq.read_schema(self.parts(split)[0]).empty_table().select(self._columns)
        return pa.concat_tables(tables)

    def _load(self, split: str, min_count: int, rank: int = 0, world: int = 1) -> dict[str, np.ndarray]:
        """The split's rows (rank `rank` of `world`'s) as arrays: float labels, vocabulary indices of user, target,
        hist (values + offsets), cats."""
        key = (split, rank, world)
        if (*key, min_count) in self._indexed:
            return self._indexed[(*key, min_count)]
        if key not in self._raw:
            table = self._read(key)
            hist = table.column("hist").combine_chunks()
            raw = {
                "label": table.column(layout.LABEL).to_numpy().astype(np.float32),
                "user": table.column("user").to_numpy(),
                "target": table.column("target").to_numpy(),
                "offsets": (hist.offsets.to_numpy() - hist.offsets[0].as_py()).astype(np.int64),
                "hist": hist.flatten().to_numpy(),
            }
            if self.has_categories:
                raw["target_cat"] = table.column("target_cat").to_numpy()
                raw["hist_cat"] = table.column("hist_cat").combine_chunks().flatten().to_numpy()
            self._raw[key] = raw
        raw = self._raw[key]
        out = {k: self._lookup(key, k, v, min_count) if k in _VOCAB else v for k, v in raw.items()}
        self._indexed[(*key, min_count)] = out
        return out

    def _lookup(self, key: tuple[str, int, int], column: str, ids: np.ndarray, min_count: int) -> np.ndarray:
        """Vocabulary indices of a raw column; ValueError naming the part and id if counts.npz lacks one."""
        vocab = self.vocabulary(_VOCAB[column], min_count)
        idx = vocab.lookup(ids)
        oov = idx == vocab.oov_index  # only these can be unknown: the common case tests nothing more
        if oov.any() and (bad := vocab.unknown(ids[oov])).any():
            at = np.flatnonzero(oov)[bad]  # positions in the column (history: in the flat values)
            row = at[0]
            if column in ("hist", "hist_cat"):
                row = np.searchsorted(self._raw[key]["offsets"], row, side="right") - 1
            parts, ends = self._part_ends[key]
            part = parts[int(np.searchsorted(ends, row, side="right"))]
            counts = self.path / layout.COUNTS_FILE
            what = {CAT: "category"}.get(_VOCAB[column], _VOCAB[column])
            raise ValueError(f"{part}: column {column} holds {what} id {int(ids[at[0]])}, which {counts} does not "
                             f"list ({np.unique(ids[at]).size} such id(s) in split {key[0]!r}), though it lists every "
                             f"{what} a split can hold: the counts do not belong to these Parquet files (rewrite "
                             f"the folder with {_WRITERS})")
        return idx

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        n = self.rows(split)
        return n // batch_size if drop_last else -(-n // batch_size)

    def batches(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False, min_count: int = 1, part: Part | None = None,
                pad: bool = False) -> Iterator[SequenceBatch]:
        """Iterate `split` as `SequenceBatch`es.

        Args:
            split: "train", "val" or "test".
            batch_size: rows B per batch.
            shuffle: a seeded random row order (else file order).
            seed: the shuffle seed (use the epoch number for a new order per epoch).
            drop_last: drop the final batch when it has fewer than B rows.
            min_count: vocabulary cut-off (see `Vocabulary`).
            part: read as one of several processes: only this rank's row groups, yielding its B / N rows of each
                global batch (`shares.py`; the order is fixed by (seed, N)). None: every row, in B-row batches.
            pad: with `part`, pad a short last share (see `shares.share_of`).
        """
        if part is not None and part.world > 1:
            return part_batches(self, split, batch_size, part, shuffle, seed, drop_last, pad, min_count=min_count)
        (stream,), _ = self.rank_streams(split, batch_size, 1, [0], shuffle, seed, min_count)
        return (b for b in stream if b.batch_size == batch_size or not drop_last)

    def rank_streams(self, split: str, share_rows: int, world: int, ranks: Sequence[int], shuffle: bool, seed: int,
                     min_count: int = 1) -> tuple[list[Iterator[SequenceBatch]], list[int]]:
        """Per rank of `ranks` (of `world`), the batches of `share_rows` rows of its row groups (the last may be
        short), and the rows each of the `world` ranks holds (see `shares.py`; the arguments as `batches`)."""
        if isinstance(share_rows, bool) or not isinstance(share_rows, int) or share_rows < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {share_rows!r}")
        units = self._units(split)
        rows = [sum(n for _, _, n in units[r::world]) for r in range(world)]
        streams = []
        for r in ranks:
            data = self._load(split, min_count, r, world)
            n = data["label"].size
            rng = np.random.default_rng(seed if world == 1 else [seed, r])
            streams.append(self._iterate(data, rng.permutation(n) if shuffle else np.arange(n), share_rows))
        return streams, rows

    def _iterate(self, data: dict[str, np.ndarray], order: np.ndarray, batch_size: int) -> Iterator[SequenceBatch]:
        for start in range(0, order.size, batch_size):
            yield self._batch(data, order[start : start + batch_size])

    def _batch(self, data: dict[str, np.ndarray], rows: np.ndarray) -> SequenceBatch:
        B = rows.size
        lengths = data["offsets"][rows + 1] - data["offsets"][rows]  # (B,)
        gather = _ranges(data["offsets"][rows], lengths)  # (N,) positions of the batch's history items
        ones = np.ones(B, dtype=np.int64)
        values = [data["hist"][gather], data["target"][rows]]
        lens = [lengths, ones]
        if self.has_categories:
            values += [data["hist_cat"][gather], data["target_cat"][rows]]
            lens += [lengths, ones]
        values.append(data["user"][rows])
        lens.append(ones)
        kjt = KeyedJaggedTensor(
            keys=self.features,
            values=torch.from_numpy(np.concatenate(values)),
            lengths=torch.from_numpy(np.concatenate(lens)),
            stride=B,
        )
        return SequenceBatch(torch.zeros(B, 0), kjt, torch.from_numpy(data["label"][rows]))
