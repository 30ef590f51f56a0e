"""The writing side of `embtables preprocess csv` (datasets/tabular.py): turning a piece of input rows into
output rows or bad lines, routing rows to splits, writing part files, counting the training split's values.

Output columns: `label` int8, each dense column float64 (NaN when missing), each categorical column int64
(`MISSING_CAT` when missing), under the input's column names, in the input's column order.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from embtables.datasets.progress import progress_bar
from embtables.datasets.criteo_chunks import MAX_REPORTED, _random_splits, ordered_ranges
from embtables.datasets.frequency import FrequencyCounter
from embtables.datasets.layout import LABEL, MISSING_CAT, SPLITS
from embtables.datasets.parts import PartWriter
from embtables.datasets.tabular_read import Piece
from embtables.datasets.tabular_values import hash_categorical, parse_dense, parse_label


class TabularFormatError(ValueError):
    """A bad input row in strict mode, or too many bad rows: the message names file, line, column and why."""


@dataclass
class Columns:
    """The typing of the input's columns.

    Args:
        label: the label column's name in the input.
        dense, categorical: the feature columns, in input order.
        given_dense: the dense columns the caller named (a bad value in them is blamed on the choice).
    """

    label: str
    dense: list[str]
    categorical: list[str]
    given_dense: set[str] = field(default_factory=set)

    def schema(self) -> pa.Schema:
        return pa.schema([(LABEL, pa.int8())] + [(c, pa.float64()) for c in self.dense]
                         + [(c, pa.int64()) for c in self.categorical])


def convert(piece: Piece, columns: Columns) -> tuple[pa.Table, np.ndarray, list[tuple[str, np.ndarray, str]]]:
    """(rows in the output schema, (N,) bool bad-row mask, per failing column (name, mask, what it expects)).

    Every row of the piece is converted; the bad ones are dropped by the caller, which explains them."""
    t = piece.table
    label, bad_label = parse_label(t.column(columns.label))
    failures = [(columns.label, bad_label, "a label: 0/1, true/false or yes/no")]
    arrays = [pa.array(label)]
    for name in columns.dense:
        values, bad = parse_dense(t.column(name))
        arrays.append(pa.array(values, pa.float64()))  # NaN, not null: the loader reads NaN as missing
        how = "given --dense" if name in columns.given_dense else "inferred dense"
        failures.append((name, bad, f"a finite number (the column is {how})"))
    arrays += [pa.array(hash_categorical(t.column(name))) for name in columns.categorical]
    bad_rows = np.zeros(t.num_rows, dtype=bool)
    for _, mask, _ in failures:
        bad_rows |= mask
    return pa.Table.from_arrays(arrays, schema=columns.schema()), bad_rows, failures


def explain(piece: Piece, failures: list[tuple[str, np.ndarray, str]], row: int, file: str, first_line: int,
            delimiter: str) -> dict[str, Any]:
    """The bad-line record of row `row` of a piece (of every column): file, line, the first failing column in
    input order, why, and the row's fields."""
    order = {name: i for i, name in enumerate(piece.table.column_names)}
    name, _, expected = min((f for f in failures if f[1][row]), key=lambda f: order[f[0]])
    value = piece.table.column(name)[row].as_py()
    shown = "missing" if value is None or str(value).strip() == "" else f"{value!r}, not {expected}"
    reason = "the label is missing" if name == failures[0][0] and shown == "missing" else \
        f"column {name!r} (field {order[name] + 1}) is {shown}"
    content = delimiter.join("" if v is None else str(v) for v in (piece.table.column(c)[row].as_py()
                                                                   for c in piece.table.column_names))
    return {"file": file, "line": int(piece.records[row]) + first_line, "column": name, "reason": reason,
            "content": content if len(content) <= 400 else content[:400] + "..."}


class Output:
    """The data folder being written: part writers per split, totals, value counts, bad-line accounting.

    Args:
        folder: where the parts go (a temporary folder renamed into place by the caller).
        columns: the typing, hence the schema.
        split: "random", "ordered" or "none"; seed and fractions as in `preprocess_tabular`.
        total: records over all inputs (needed by "ordered"; else None, or a count that enables an early stop).
        strict: raise at the first bad row; max_bad_fraction: raise once bad rows exceed it of all rows.
        part_rows: rows per part file and split.
    """

    def __init__(self, folder: Path, columns: Columns, split: str, seed: int, fractions: Sequence[float],
                 total: int | None, strict: bool, max_bad_fraction: float, part_rows: int, progress: bool) -> None:
        self.folder, self.columns, self.split, self.seed, self.fractions = folder, columns, split, seed, fractions
        self.total, self.strict, self.max_bad_fraction, self.part_rows = total, strict, max_bad_fraction, part_rows
        self.splits = ["all"] if split == "none" else list(SPLITS)
        self.count_split = "all" if split == "none" else "train"
        self.counter = FrequencyCounter(columns.categorical)
        self.totals = {s: {"rows": 0, "clicks": 0, "parts": 0} for s in self.splits}
        self.missing = dict.fromkeys(columns.dense + columns.categorical, 0)
        self.writers: dict[str, PartWriter] = {}
        self.rows_read = self.bad_rows = 0
        self.bad_lines: list[dict[str, Any]] = []
        self.bar = progress_bar(total, 0, progress, desc="csv", unit="rows", unit_scale=True)

    def add(self, piece: Piece, file: str, first_line: int, offset: int, delimiter: str) -> None:
        """Convert, route and write a piece of `file` whose records start at global record `offset`."""
        table, bad, failures = convert(piece, self.columns)
        room = max(MAX_REPORTED - len(self.bad_lines), int(self.strict))  # strict: the first one raises
        records = [{"file": file, **r} for r in piece.invalid[:room]] + [
            explain(piece, failures, row, file, first_line, delimiter) for row in np.flatnonzero(bad)[:room].tolist()]
        for record in sorted(records, key=lambda r: r["line"])[:room]:
            self._bad(record)
        self.bad_rows += len(piece.invalid) + int(bad.sum())
        self.rows_read += piece.read
        self.bar.update(piece.read)
        self._check_fraction(final=False)
        good = ~bad
        table, index = table.filter(pa.array(good)), piece.records[good] + offset  # global record indices
        for name in self.missing:
            col = table.column(name).to_numpy()
            self.missing[name] += int(np.isnan(col).sum() if col.dtype.kind == "f" else (col == MISSING_CAT).sum())
        for s, rows in self._route(table, index):
            self._write(s, rows)

    def _bad(self, record: dict[str, Any]) -> None:
        where = f"{record['file']}:{record['line']}: {record['reason']}"
        if self.strict:
            raise TabularFormatError(f"{where}\n  line: {record['content']!r}")
        if len(self.bad_lines) < MAX_REPORTED:
            self.bad_lines.append(record)
            tqdm.write(f"{where}: bad line skipped", file=sys.stderr)

    def _check_fraction(self, final: bool) -> None:
        """Stop once the bad rows exceed the allowed fraction of all rows (of those read, at the end)."""
        total = self.rows_read if final else self.total
        if total is None or self.bad_rows <= self.max_bad_fraction * total:
            return
        first = self.bad_lines[0] if self.bad_lines else {}
        raise TabularFormatError(
            f"{self.bad_rows:,} bad rows of {self.rows_read if final else total:,} ({self.bad_rows / total:.2%}) "
            f"exceed --max-bad-fraction {self.max_bad_fraction:g}; the first: {first.get('file')}:{first.get('line')}: "
            f"{first.get('reason')} (fix the input or the column types, or raise the fraction)")

    def _route(self, table: pa.Table, records: np.ndarray):
        """(split, rows) of the good rows, each split's rows in input order."""
        if self.split == "none":
            yield "all", table
            return
        if self.split == "random":
            which = _random_splits(records, self.seed, self.fractions)
        else:
            bounds = [b for _, b in ordered_ranges(self.total or 0, self.fractions).values()][:-1]
            which = np.searchsorted(np.asarray(bounds), records, side="right")
        for i, s in enumerate(self.splits):
            mask = which == i
            if mask.any():
                yield s, table.filter(pa.array(mask))

    def _write(self, split: str, rows: pa.Table) -> None:
        while rows.num_rows:
            w = self.writers.get(split)
            if w is None or w.rows >= self.part_rows:
                if w is not None:
                    w.commit()
                w = self.writers[split] = PartWriter(self.folder / split / f"part-{self.totals[split]['parts']:05d}"
                                                     ".parquet", self.columns.schema())
                self.totals[split]["parts"] += 1
            take = rows.slice(0, self.part_rows - w.rows)
            w.write(take)
            self.totals[split]["rows"] += take.num_rows
            self.totals[split]["clicks"] += int(np.asarray(take.column(LABEL)).sum())
            if split == self.count_split:
                for name in self.columns.categorical:
                    self.counter.add(name, take.column(name).to_numpy())
            rows = rows.slice(take.num_rows)

    def finish(self) -> None:
        """Check the bad fraction and close the parts; every split gets a part, an empty one if no row fell in it."""
        self.bar.close()
        self._check_fraction(final=True)
        for s in self.splits:
            if s not in self.writers:
                self._write_empty(s)
        for w in self.writers.values():
            w.commit()
        if self.bad_rows > len(self.bad_lines):
            print(f"{self.bad_rows} bad lines skipped in total; the first {len(self.bad_lines)} are listed in "
                  f"summary.json", file=sys.stderr)

    def _write_empty(self, split: str) -> None:
        self.writers[split] = PartWriter(self.folder / split / "part-00000.parquet", self.columns.schema())
        self.totals[split]["parts"] = 1

    def abort(self) -> None:
        self.bar.close()
        for w in self.writers.values():
            w.abort()
