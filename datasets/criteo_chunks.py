"""The chunk machinery of `preprocess_criteo`: cutting the inputs into chunks, parsing pieces ahead in a
thread pool, routing rows to splits, writing each chunk's parts atomically and marking it complete.

A chunk is a fixed range of input lines (see `chunk_sizes`); it is read PIECE_LINES lines at a time, each
piece parsed, split and counted in the pool (numpy and torch release the GIL) while the main thread writes
the previous pieces, so memory stays bounded by a few pieces plus one row group per split.
"""

from __future__ import annotations

import itertools
import sys
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from embtables.datasets.progress import progress_bar
from embtables.datasets.criteo_parse import ParsedLines, explain, parse_lines
from embtables.datasets.frequency import FrequencyCounter
from embtables.datasets.layout import DENSE, LABEL, SPARSE, SPLITS, read_json, write_json
from embtables.datasets.lines import LineReader
from embtables.datasets.parts import PartWriter
from embtables.hashing import hash_key, hash_to_range

PIECE_LINES = 1 << 14  # lines parsed at once: ~4 MB of text, so parser temporaries stay small
PARSE_THREADS = 2  # pool threads preparing pieces while the main thread writes
MAX_REPORTED = 100  # bad lines listed (with reasons) in summary.json and on stderr; all are counted
KAGGLE_DAYS = 7
PROGRESS_DIR = "_progress"  # `_` prefix: pyarrow.dataset ignores it
SCHEMA = pa.schema([(LABEL, pa.int8())] + [(c, pa.int32()) for c in DENSE] + [(c, pa.int64()) for c in SPARSE])


class CriteoFormatError(ValueError):
    """A bad input line in strict mode: the message names the file, the line number, why, and the content."""


def kaggle_days(total_lines: int) -> dict[str, tuple[int, int]]:
    """The `kaggle-days` split of N lines: split -> [first, stop) 0-based global line range.

    Example:
        >>> kaggle_days(45_840_617)
        {'train': (0, 39291958), 'test': (39291958, 42566288), 'val': (42566288, 45840617)}
    """
    q = total_lines // KAGGLE_DAYS
    day7 = total_lines - q  # the N mod 7 longer days are among the first 6, so day 7 has q lines
    mid = day7 + (q + 1) // 2
    return {"train": (0, day7), "test": (day7, mid), "val": (mid, total_lines)}


def ordered_ranges(total_lines: int, fractions: Sequence[float]) -> dict[str, tuple[int, int]]:
    """The `ordered` split of N lines: consecutive train, val, test ranges of `fractions` of N (rounded down,
    test takes the rest), in file order.

    Example:
        >>> ordered_ranges(10_000, (0.8, 0.1, 0.1))
        {'train': (0, 8000), 'val': (8000, 9000), 'test': (9000, 10000)}
    """
    a = int(total_lines * fractions[0])
    b = a + int(total_lines * fractions[1])
    return {"train": (0, a), "val": (a, b), "test": (b, total_lines)}


def line_ranges(split: str, total_lines: int, fractions: Sequence[float]) -> dict[str, tuple[int, int]]:
    """Line ranges of the splits that cut the input in file order (`kaggle-days`, `ordered`)."""
    return kaggle_days(total_lines) if split == "kaggle-days" else ordered_ranges(total_lines, fractions)


def _random_splits(global_lines: np.ndarray, seed: int, fractions: Sequence[float]) -> np.ndarray:
    """(G,) index into SPLITS of each line, from a uniform [0, 1) number hashed from (seed, line number)."""
    u = hash_to_range(torch.from_numpy(global_lines), hash_key(seed), 1 << 53).numpy() * 2.0**-53
    return np.searchsorted(np.cumsum(fractions)[:-1], u, side="right")


def _table(label: np.ndarray, dense: np.ndarray, sparse: np.ndarray) -> pa.Table:
    """Columns (G,), (13, G), (26, G) as a table of SCHEMA."""
    arrays = [pa.array(label)] + [pa.array(c) for c in dense] + [pa.array(c) for c in sparse]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def _by_split(p: ParsedLines, which: np.ndarray | None, splits: list[str]) -> Iterator[tuple[str, tuple]]:
    """(split, (label, dense, sparse)) of the good rows of `p`; `which` (G,) indexes `splits` (None: all in
    splits[0]). Rows keep their order within a split: a stable sort groups them with one gather per column."""
    if which is None:
        yield splits[0], (p.label, p.dense, p.sparse)
        return
    order = np.argsort(which, kind="stable")
    label, dense, sparse = p.label[order], p.dense[:, order], p.sparse[:, order]
    bounds = np.searchsorted(which[order], np.arange(len(splits) + 1))
    for i, s in enumerate(splits):
        sl = slice(bounds[i], bounds[i + 1])
        yield s, (label[sl], dense[:, sl], sparse[:, sl])


def bad_line_text(bad: dict[str, Any]) -> str:
    """How a skipped line is reported on stderr: `file:line: bad line skipped: reason`."""
    return f"{bad['file']}:{bad['line']}: bad line skipped: {bad['reason']}"


def _snippet(line: bytes) -> str:
    text = line.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")
    return text if len(text) <= 400 else text[:400] + "..."


class Run:
    """State of one preprocessing run: settings, counts, totals, progress bar, parse pool."""

    def __init__(self, inputs: list[str], out: Path, split: str, seed: int, fractions: tuple[float, ...],
                 strict: bool, chunk_rows: int, progress: bool) -> None:
        self.inputs, self.out, self.split, self.seed, self.fractions = inputs, out, split, seed, fractions
        self.strict, self.chunk_rows = strict, chunk_rows
        self.splits = ["all"] if split == "none" else list(SPLITS)
        self.count_split = "all" if split == "none" else "train"
        self.counter = FrequencyCounter(SPARSE)
        self.totals = {s: {"rows": 0, "clicks": 0, "parts": 0} for s in self.splits}
        self.rows_read = self.bad_rows = self.printed = 0
        self.bad_lines: list[dict[str, Any]] = []
        self.file_lines: list[int] | None = None  # lines per input: counted for kaggle-days only
        self.pool: ThreadPoolExecutor  # parses pieces ahead; set for the duration of the run
        self.bar = progress_bar(None, 0, progress, desc="criteo", unit="rows", unit_scale=True)

    def part_path(self, split: str, k: int) -> Path:
        return self.out / split / f"part-{k:05d}.parquet"

    def marker_path(self, k: int) -> Path:
        return self.out / PROGRESS_DIR / f"chunk-{k:05d}.json"

    def print_bad(self, bad: dict[str, Any]) -> None:
        if self.printed < MAX_REPORTED:
            tqdm.write(bad_line_text(bad), file=sys.stderr)
            self.printed += 1

    def add(self, marker: dict[str, Any]) -> None:
        """Fold a completed chunk's statistics into the run totals."""
        self.rows_read += marker["lines"]
        self.bad_rows += marker["bad_rows"]
        self.bad_lines += marker["bad_lines"][: MAX_REPORTED - len(self.bad_lines)]
        for s, st in marker["splits"].items():
            for key in ("rows", "clicks"):
                self.totals[s][key] += st[key]
            self.totals[s]["parts"] += 1

    def count(self, sparse_columns: Sequence[np.ndarray]) -> None:
        for name, col in zip(SPARSE, sparse_columns):
            self.counter.add(name, col)


def chunk_sizes(run: Run, first_global: int, file_lines: int | None) -> Iterator[tuple[str | None, int]]:
    """(split, or None for random; lines) of the successive chunks of one file: unbounded when streaming
    (`file_lines` None), else the file's share of the kaggle-days or ordered ranges cut every `chunk_rows` lines."""
    if file_lines is None or run.file_lines is None:
        while True:
            yield ("all" if run.split == "none" else None), run.chunk_rows
    for s, (a, b) in line_ranges(run.split, sum(run.file_lines), run.fractions).items():
        lo, hi = max(a, first_global), min(b, first_global + file_lines)
        for c in range(lo, hi, run.chunk_rows):
            yield s, min(run.chunk_rows, hi - c)


@dataclass
class _Piece:
    """Up to PIECE_LINES lines, parsed and made ready to write (by a pool thread)."""

    data: bytes
    lines: int
    bad: np.ndarray  # (K,) indices of bad lines in `data`
    tables: dict[str, pa.Table]  # good rows per split, in file order
    clicks: dict[str, int]  # per split
    counts: list[tuple[np.ndarray, np.ndarray]] | None  # (values, counts) per feature of the counted split


def _prepare(run: Run, data: bytes, lines: int, global_line: int, split: str | None) -> _Piece:
    """Parse a piece, route its rows to splits, and count the values of the counted split. Runs in the
    pool, so everything but writing overlaps across pieces (numpy and torch release the GIL)."""
    parsed = parse_lines(data)
    which = None if split is not None else _random_splits(global_line + parsed.good, run.seed, run.fractions)
    tables, clicks, counts = {}, {}, None
    for s, (label, dense, sparse) in _by_split(parsed, which, [split] if split is not None else run.splits):
        tables[s], clicks[s] = _table(label, dense, sparse), int(label.sum())
        if s == run.count_split:
            counts = [np.unique(col, return_counts=True) for col in sparse]
    return _Piece(data, lines, parsed.bad, tables, clicks, counts)


def _pieces(run: Run, reader: LineReader, size: int, global_line: int, split: str | None) -> Iterator[_Piece]:
    """The next `size` lines (fewer at end of file) as prepared pieces, in order, prepared ahead in the pool."""
    ahead: deque[Future[_Piece]] = deque()
    read = 0
    while True:
        while len(ahead) <= PARSE_THREADS and read < size:
            data, n = reader.read_lines(min(PIECE_LINES, size - read))
            if not n:
                size = read  # end of file
                break
            ahead.append(run.pool.submit(_prepare, run, data, n, global_line + read, split))
            read += n
        if not ahead:
            return
        yield ahead.popleft().result()


def process_chunk(run: Run, reader: LineReader, k: int, file_index: int, file_line: int, global_line: int,
                   split: str | None, size: int) -> dict[str, Any] | None:
    """Parse and write chunk k (at most `size` lines); its marker, or None at end of file."""
    byte_start = reader.offset
    pieces = _pieces(run, reader, size, global_line, split)
    first = next(pieces, None)
    if first is None:
        return None
    stats = {s: {"rows": 0, "clicks": 0} for s in first.tables}
    bad_rows, bad_lines, lines = 0, [], 0
    writers = {s: PartWriter(run.part_path(s, k), SCHEMA) for s in first.tables}
    try:
        for piece in itertools.chain([first], pieces):
            if piece.bad.size:
                bad_rows += piece.bad.size
                _bad_lines(run, piece.data, piece.bad[: MAX_REPORTED - len(bad_lines)], file_index,
                           file_line + lines, bad_lines)
            for s, table in piece.tables.items():
                writers[s].write(table)
                stats[s]["rows"] += table.num_rows
                stats[s]["clicks"] += piece.clicks[s]
            for name, (values, counts) in zip(SPARSE, piece.counts or ()):
                run.counter.add_counted(name, values, counts)
            lines += piece.lines
            run.bar.update(piece.lines)
        for w in writers.values():
            w.commit()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    marker = {"chunk": k, "file": file_index, "first_line": file_line, "lines": lines, "byte_start": byte_start,
              "byte_end": reader.offset, "splits": stats, "bad_rows": bad_rows, "bad_lines": bad_lines}
    finish_chunk(run, k, marker)
    return marker


def finish_chunk(run: Run, k: int, marker: dict[str, Any]) -> None:
    """Record chunk k as complete (after its parts are in place)."""
    write_json(run.marker_path(k), marker)


def _bad_lines(run: Run, data: bytes, bad: np.ndarray, file_index: int, file_line: int,
               out: list[dict[str, Any]]) -> None:
    """Describe the bad lines `bad` (indices into `data`): append to `out`, print, or raise in strict mode."""
    if bad.size == 0:
        return
    ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
    for i in bad.tolist():
        lo = 0 if i == 0 else int(ends[i - 1]) + 1
        line = data[lo: int(ends[i]) if i < ends.size else len(data)]
        record = {"file": run.inputs[file_index], "line": file_line + i + 1, "reason": explain(line),
                  "content": _snippet(line)}
        if run.strict:
            raise CriteoFormatError(f"{record['file']}:{record['line']}: {record['reason']}\n"
                                    f"  line: {record['content']!r}")
        out.append(record)
        run.print_bad(record)


def run_chunks(run: Run) -> None:
    """Process (or, when already complete, account for) every chunk of every input, in order."""
    k = global_line = 0
    for fi, path in enumerate(run.inputs):
        file_lines = None if run.file_lines is None else run.file_lines[fi]
        file_line = 0
        with LineReader(path) as reader:
            for split, size in chunk_sizes(run, global_line, file_lines):
                marker = read_json(run.marker_path(k)) if run.marker_path(k).exists() else None
                if marker is not None and marker["file"] == fi and marker["first_line"] == file_line and all(
                        run.part_path(s, k).exists() for s in marker["splits"]):
                    reader.seek(marker["byte_end"])  # a completed part: keep it, count its training rows
                    run.bar.update(marker["lines"])
                    for bad in marker["bad_lines"]:  # as the run that wrote it printed them
                        run.print_bad(bad)
                    if run.count_split in marker["splits"]:
                        table = pq.read_table(run.part_path(run.count_split, k), columns=SPARSE)
                        run.count([table.column(c).to_numpy() for c in SPARSE])
                else:
                    marker = process_chunk(run, reader, k, fi, file_line, global_line, split, size)
                    if marker is None:
                        break  # end of a streamed file
                run.add(marker)
                file_line += marker["lines"]
                global_line += marker["lines"]
                k += 1
                if marker["lines"] < size:
                    break
            if file_lines is not None and (file_line != file_lines or reader.read_lines(1)[1]):
                raise ValueError(f"{path}: the file changed since its {file_lines} lines were counted; "
                                 f"remove {run.out} and run again")
