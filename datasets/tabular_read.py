"""Reading a user's table for `embtables preprocess csv` (datasets/tabular.py): CSV (plain or gzip) or Parquet,
streamed in pieces of rows that carry their line numbers, with the CSV rows that do not split into the
header's number of fields set aside as bad.

CSV: the first line is the header (UTF-8, a byte-order mark allowed); fields split on the delimiter (`,`, or a
tab for .tsv / .tab files) with double-quote quoting, and a quoted value may hold the delimiter, quotes (doubled)
and line breaks. Line numbers count the header as line 1; a record whose quoted value spans lines counts as one,
so after it the numbers count records. An empty line is a record of empty fields (its label is missing: a bad
line, as in Criteo's files). The text must be UTF-8: other bytes stop the run with pyarrow's message.

Parquet: recognised by its `PAR1` magic bytes whatever the file name; "line" is the 1-based row number. Columns
of nested types (lists, structs, maps) cannot be features: name them in --ignore.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from embtables.datasets.lines import open_input

PIECE_BYTES = 4 << 20  # CSV text parsed at once: ~40k rows of a typical log, small against memory
PIECE_ROWS = 1 << 16  # Parquet rows read at once
PARQUET_MAGIC = b"PAR1"


@dataclass
class Piece:
    """Consecutive records of one input file.

    Args:
        table: the good rows (CSV: every column as text; Parquet: as stored), in file order.
        records: (N,) int64 0-based index of each row among the file's records (the header is no record).
        invalid: the records with the wrong number of fields: dicts of line, reason and content.
        read: records the piece covers, good and invalid.
    """

    table: pa.Table
    records: np.ndarray
    invalid: list[dict] = field(default_factory=list)
    read: int = 0


class TableFile:
    """One input file: its format, columns and pieces.

    Args:
        path: a CSV (plain or gzip) or Parquet file.
        delimiter: the CSV field separator (None: a tab for .tsv / .tab names, else a comma).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty CSV, or a header with an unnamed or repeated column, naming file, line and column.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "t.csv"); _ = open(p, "w").write("y,x\\n1,a\\n1\\n0,b\\n")
        >>> f = TableFile(p)
        >>> f.columns, [(x.table.num_rows, x.records.tolist(), x.invalid[0]["line"], x.read) for x in f.pieces()]
        (['y', 'x'], [(2, [0, 2], 3, 3)])
    """

    def __init__(self, path: str | os.PathLike, delimiter: str | None = None) -> None:
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: no such input file")
        with open(self.path, "rb") as f:
            self.is_parquet = f.read(4) == PARQUET_MAGIC
        self.first_line = 1 if self.is_parquet else 2  # the line of record 0
        if self.is_parquet:
            self._parquet = pq.ParquetFile(self.path)
            self.columns = list(self._parquet.schema_arrow.names)
            self.rows: int | None = self._parquet.metadata.num_rows
        else:
            name = self.path.lower().removesuffix(".gz")
            self.delimiter = delimiter or ("\t" if name.endswith((".tsv", ".tab")) else ",")
            self.columns = self._header()
            self.rows = None  # known after a pass
        for i, name in enumerate(self.columns):
            if not name:
                raise ValueError(f"{self.path}:1: column {i + 1} of the header has no name")
            if name in self.columns[:i]:
                raise ValueError(f"{self.path}:1: columns {self.columns.index(name) + 1} and {i + 1} of the header "
                                 f"are both named {name!r}")

    def _header(self) -> list[str]:
        with open_input(self.path) as f:
            first = f.readline().decode("utf-8-sig", errors="replace").rstrip("\r\n")
        if not first:
            raise ValueError(f"{self.path}:1: expected a header line naming the columns, found "
                             f"{'an empty line' if os.path.getsize(self.path) else 'an empty file'}")
        return [name.strip() for name in next(csv.reader([first], delimiter=self.delimiter))]

    def check_types(self, used: list[str]) -> None:
        """Refuse Parquet columns in `used` that hold neither text nor numbers, naming file and column."""
        if not self.is_parquet:
            return
        schema = self._parquet.schema_arrow
        for name in used:
            t = schema.field(name).type
            if pa.types.is_nested(t):
                raise ValueError(f"{self.path}: column {name!r} holds {t}, which is neither text nor a number; "
                                 f"leave it out with --ignore {name}")

    def pieces(self, columns: list[str] | None = None) -> Iterator[Piece]:
        """The file's records in pieces, in order; `columns` limits the columns read (default: all)."""
        yield from (self._parquet_pieces(columns) if self.is_parquet else self._csv_pieces(columns))

    def _parquet_pieces(self, columns: list[str] | None) -> Iterator[Piece]:
        start = 0
        for batch in self._parquet.iter_batches(batch_size=PIECE_ROWS, columns=columns):
            n = batch.num_rows
            yield Piece(pa.Table.from_batches([batch]), np.arange(start, start + n, dtype=np.int64), [], n)
            start += n

    def _csv_pieces(self, columns: list[str] | None) -> Iterator[Piece]:
        invalid: list[tuple[int, int, int, str]] = []

        def handler(row: pcsv.InvalidRow) -> str:
            invalid.append((row.number, row.expected_columns, row.actual_columns, row.text))
            return "skip"

        read = pcsv.ReadOptions(skip_rows=1, column_names=self.columns, block_size=PIECE_BYTES,
                                use_threads=False)  # one thread: the handler then knows the line numbers
        parse = pcsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True, ignore_empty_lines=False,
                                  invalid_row_handler=handler)
        convert = pcsv.ConvertOptions(column_types={c: pa.string() for c in self.columns}, strings_can_be_null=False,
                                      include_columns=columns or self.columns)
        start = self.first_line  # the line of the next record
        with open_input(self.path) as f:
            try:
                reader = pcsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
                for batch in reader:
                    pending = np.array(sorted(n for n, *_ in invalid), dtype=np.int64)
                    candidates = np.arange(start, start + batch.num_rows + pending.size)
                    lines = candidates[~np.isin(candidates, pending)][: batch.num_rows]
                    end = int(lines[-1]) + 1 if lines.size else start
                    yield self._csv_piece(pa.Table.from_batches([batch]), lines, invalid, start, end)
                    start = end
            except pa.ArrowInvalid as e:
                raise ValueError(f"{self.path}: cannot read it as CSV text ({e})") from None
        end = max([start] + [n + 1 for n, *_ in invalid])  # invalid records after the last good one
        if end > start:
            yield self._csv_piece(pa.table({c: pa.array([], pa.string()) for c in columns or self.columns}),
                                  np.empty(0, np.int64), invalid, start, end)
        self.rows = end - self.first_line

    def _csv_piece(self, table: pa.Table, lines: np.ndarray, invalid: list, start: int, end: int) -> Piece:
        """A piece of the records on lines [start, end): the good ones in `table`, and the invalid ones taken
        out of `invalid` (rows the reader set aside)."""
        mine = sorted(r for r in invalid if r[0] < end)
        invalid[:] = [r for r in invalid if r[0] >= end]
        bad = [{"line": n, "column": None, "reason": f"expected {want} fields (the header's), found {got}",
                "content": text} for n, want, got, text in mine]
        return Piece(table, lines - self.first_line, bad, end - start)
