"""Any interactions log (CSV, TSV or Parquet) -> DIN samples in the sequence layout (`embtables prepare-sequences log`).

    embtables prepare-sequences log FILE --user COL --item COL [--time COL] [--features COLS] --out DIR
        [--max-history 50] [--seed 0] [--strict] [--max-bad-fraction 0.01] [--force] [--quiet]

The rules, in the order they apply:

Format, by the file name (a `.gz` after it allowed for text): `.csv` comma-separated, `.tsv`, `.tab` or `.txt`
tab-separated, both with a header line naming the columns (read by `tabular_read.TableFile`: UTF-8,
double-quote quoting); `.parquet`. Line numbers count the header as line 1 (Parquet: the 1-based row number).

Bad rows: a record with the wrong number of fields, an empty or missing user or item, or (with a time column) a
time not of the column's kind (below). They are skipped, counted (`bad_rows`) and the first 100 listed (stderr
and summary.json `first_bad_lines`); `strict` stops at the first, and more than `max_bad_fraction` of the rows
fails the run; either way nothing is written. Every record is accounted for: rows_read = rows_used + bad_rows.

Ids: values are read as text, surrounding whitespace removed (a Parquet number as its text). A column whose
values are all integers (an optional `-` and 1 to 18 digits) keeps them as its int64 ids; otherwise a value's id
is its 1-based rank among the column's distinct values sorted by their UTF-8 bytes (ASINs like "B00X4WHP5E"):
the same distinct values give the same ids whatever the row order. The same rule maps the side feature.

Time: a column where more values are numbers (integers or decimals, e.g. Unix seconds) than ISO 8601 dates is
numeric; otherwise its values must be ISO 8601 dates or date-times (`2020-01-31`, `2020-01-31 12:00:05`,
`...T12:00:05Z`, `...+02:00`; no offset means UTC). A value not of the column's kind is a bad row.

Order: users come in the order of their first row in the file; each user's interactions are sorted by time, and
TIES (equal times of one user) keep their order in the file: a stable sort, the later line is the later
interaction. `tied_rows` counts the rows sharing their time with another row of the same user: the rows the tie
rule ordered. Without a time column the file order is the time order within each user (users may interleave).

Side feature: at most one column. The layout carries one item side feature, `hist_cat`/`target_cat` with the
`cat` vocabulary, which the loader reads and DIN concatenates to the item vector (as synthetic sequences'
categories). An item's value is that of its first row in the file with a non-empty value; `feature_conflicts`
counts the items whose rows disagree; an item with no value gets `MISSING_CAT` (-1). An empty value is no bad row.

Samples, splits (each user's last interaction `test`, the one before `val`), seeded negatives, counts.npz and
the layout are those of `din_samples.py`, shared with `prepare-sequences amazon` (`sequences.py`), the preset of
this path for a header-less `user<TAB>item` file without time: both end in `write_log_sequences`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embtables.datasets.criteo import DEFAULT_MAX_BAD_FRACTION
from embtables.datasets.criteo_chunks import MAX_REPORTED, bad_line_text
from embtables.datasets.din_samples import din_samples, user_blocks, write_sequences
from embtables.datasets.layout import MISSING_CAT
from embtables.datasets.progress import progress_bar
from embtables.datasets.tabular_read import PARQUET_MAGIC, TableFile
from embtables.datasets.tabular_write import TabularFormatError
from embtables.datasets.truth import check_out

__all__ = ["MAX_HISTORY", "TIE_RULE", "TabularFormatError", "log_order", "map_ids", "parse_times", "prepare_log",
           "write_log_sequences"]

MAX_HISTORY = 50
TIE_RULE = "equal times of one user keep their order in the file (stable sort)"
INTEGER_IDS = "the integers as written"
RANKED_IDS = "1-based rank among the column's distinct values sorted by UTF-8 bytes"
_INTEGER = r"^-?[0-9]{1,18}$"  # 18 digits always fit int64
_NUMBER = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_TEXT = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}


def map_ids(text: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, str]:
    """(int64 id of each value, the rule used) for non-empty text values (see the module docstring).

    Example:
        >>> ids, rule = map_ids(pa.array(["B0b", "A3J", "B0b", "B00"])); ids.tolist(), rule == RANKED_IDS
        ([3, 1, 3, 2], True)
        >>> map_ids(pa.array(["7", "-2"]))[0].tolist()
        [7, -2]
    """
    if len(text) and pc.all(pc.match_substring_regex(text, _INTEGER)).as_py():
        return np.asarray(pc.cast(text, pa.int64())).astype(np.int64), INTEGER_IDS
    distinct = pc.unique(text)
    distinct = distinct.take(pc.sort_indices(distinct))  # Arrow compares strings bytewise
    return np.asarray(pc.index_in(text, value_set=distinct)).astype(np.int64) + 1, RANKED_IDS


def parse_times(text: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray, str]:
    """(sortable values, (n,) bool bad mask, the column's kind) of time texts: numbers as int64 (all integers)
    or float64, dates as int64 nanoseconds since 1970 UTC; bad entries hold 0.

    Example:
        >>> v, bad, kind = parse_times(pa.array(["2020-01-02", "2020-01-01T00:00:01Z", "x"]))
        >>> int(v[1] - v[0]) // 10**9, bad.tolist(), kind
        (-86399, [False, False, True], 'ISO 8601 dates')
        >>> v, bad, kind = parse_times(pa.array(["1.5", "2", ""])); v.tolist(), bad.tolist(), kind
        ([1.5, 2.0, 0.0], [False, False, True], 'numbers')
    """
    number = np.asarray(pc.match_substring_regex(text, _NUMBER), dtype=bool)
    if number.sum() < len(text):  # some values are no numbers: a column of dates?
        series = pd.Series(np.asarray(text, dtype=object))
        stamps = pd.to_datetime(series, format="ISO8601", errors="coerce", utc=True)
        dated = stamps.notna().to_numpy()
        if dated.sum() > number.sum():
            ns = stamps.dt.tz_convert(None).to_numpy().astype("datetime64[ns]").view(np.int64)
            return np.where(dated, ns, 0), ~dated, "ISO 8601 dates"
    whole = number & np.asarray(pc.match_substring_regex(text, _INTEGER), dtype=bool)
    kind = pa.int64() if (whole == number).all() else pa.float64()  # exact int64 unless some are decimals
    values = np.zeros(len(text), dtype=kind.to_pandas_dtype())
    values[number] = np.asarray(pc.cast(pc.filter(text, pa.array(number)), kind))
    bad = ~number | ~np.isfinite(values)  # 1e999 parses as inf
    return np.where(bad, 0, values), bad, "numbers"


def log_order(users: np.ndarray, times: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """(row order grouping users by their first row and sorting each by time, ties in row order; tied rows).

    Example:
        >>> order, tied = log_order(np.array([5, 3, 5, 3, 5]), np.array([9, 2, 9, 1, 4])); order.tolist(), tied
        ([4, 0, 2, 3, 1], 2)
    """
    _, first, inverse = np.unique(users, return_index=True, return_inverse=True)
    block = first[inverse]  # each row's user, as the row of its first appearance: orders users by appearance
    row = np.arange(users.size)
    if times is None:
        return np.lexsort((row, block)), 0
    order = np.lexsort((row, times, block))  # the row index last: equal times keep file order
    same = (block[order][1:] == block[order][:-1]) & (times[order][1:] == times[order][:-1])
    tied = np.zeros(users.size, dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    return order, int(tied.sum())


def write_log_sequences(out: Path, users: np.ndarray, items: np.ndarray,
                        categories: tuple[np.ndarray, np.ndarray] | None, max_history: int, seed: int, force: bool,
                        source: str, summary: dict[str, Any], lines: np.ndarray | None = None) -> dict[str, Any]:
    """DIN samples of time-ordered interactions grouped by user, written to `out`; the summary (see
    `write_sequences`). `lines` (default row + 1) names a user's first line in errors; `summary` is the
    caller's extra summary.json entries."""
    catalogue = np.unique(items)
    starts, _ = user_blocks(users, source)
    sizes = np.diff(np.r_[starts, users.size])
    pairs = np.unique(np.repeat(np.arange(starts.size), sizes) * catalogue.size + np.searchsorted(catalogue, items))
    distinct = np.bincount(pairs // catalogue.size, minlength=starts.size)  # distinct items per user
    full = np.flatnonzero((sizes >= 2) & (distinct == catalogue.size))
    if full.size:  # checked here to name the file's line: din_samples sees the rows after sorting
        r = starts[full[0]]
        line = int(lines[r]) if lines is not None else int(r) + 1
        raise ValueError(f"{source}: line {line}: user {users[r]} has every catalogue item ({catalogue.size}) in "
                         "their interactions, so no negative can be drawn for them")
    check_out(out, force)
    rng = np.random.default_rng(np.random.SeedSequence([seed]))
    samples = din_samples(users, items, max_history, rng, source=source)
    return write_sequences(out, samples, users, items, catalogue, categories, summary)


def _format(path: Path) -> str:
    """"csv", "tsv", "tab", "txt" or "parquet", by the file's name."""
    name = path.name.lower()
    suffix = Path(name.removesuffix(".gz")).suffix
    if name.endswith(".parquet") or suffix in _TEXT:
        return "parquet" if name.endswith(".parquet") else suffix[1:]
    raise ValueError(f"{path}: cannot tell the format from the name: expected .csv, .tsv, .tab or .txt (plain or "
                     ".gz, with a header line) or .parquet")


def _read(file: TableFile, names: list[str], progress: bool) -> tuple[dict[str, pa.ChunkedArray], np.ndarray,
                                                                     list[dict], int]:
    """The named columns as trimmed text ("" when missing), the line of each record read, the records with the
    wrong field count, and the records read."""
    chunks: dict[str, list] = {n: [] for n in names}
    lines, invalid, read = [], [], 0
    bar = progress_bar(None, 0, progress, desc="read", unit="rows", unit_scale=True, delay=2)
    try:
        for piece in file.pieces(names):
            for n in names:
                text = pc.cast(piece.table.column(n), pa.large_string()).fill_null("")  # large: no 2 GB limit
                chunks[n] += pc.utf8_trim_whitespace(text).chunks
            lines.append(piece.records + file.first_line)
            invalid += [{"file": file.path, **r} for r in piece.invalid]
            read += piece.read
            bar.update(piece.read)
    finally:
        bar.close()
    text = {n: pa.chunked_array(c, pa.large_string()) for n, c in chunks.items()}
    return text, np.concatenate(lines or [np.zeros(0, np.int64)]), invalid, read


def _side_feature(items: np.ndarray, values: pa.ChunkedArray) -> tuple[tuple[np.ndarray, np.ndarray], str, int]:
    """((catalogue, category of each item), id rule, items whose rows disagree) for rows in file order."""
    catalogue = np.unique(items)
    cats = np.full(catalogue.size, MISSING_CAT, dtype=np.int64)
    given = np.asarray(pc.not_equal(values, ""), dtype=bool)
    if not given.any():
        return (catalogue, cats), "no value", 0
    codes, rule = map_ids(pc.filter(values, pa.array(given)))
    at = np.searchsorted(catalogue, items[given])
    _, first = np.unique(at, return_index=True)  # an item's first row holding a value
    cats[at[first]] = codes[first]
    return (catalogue, cats), rule, int(np.unique(at[codes != cats[at]]).size)


def prepare_log(
    input: str | Path,
    out: str | Path,
    user: str,
    item: str,
    time: str | None = None,
    features: Sequence[str] = (),
    max_history: int = MAX_HISTORY,
    seed: int = 0,
    force: bool = False,
    strict: bool = False,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the DIN samples of an interactions log to `out` (kind "sequences") and return its summary.

    Args:
        input: a .csv, .tsv/.tab/.txt (header line; plain or .gz) or .parquet file (see the module docstring).
        out: the data folder; it must not hold a data set already unless `force`.
        user, item: the columns of user and item ids (any text or integers).
        time: the column ordering each user's interactions (numbers or ISO 8601); None: the file order.
        features: at most one column of a per-item categorical feature (e.g. a category): `hist_cat`/`target_cat`.
        max_history: L, the most recent items kept in each history.
        seed: seeds the negative items; the same (input, settings, seed) give the same bytes.
        force: replace an earlier data set in `out`.
        strict: stop at the first bad row (TabularFormatError naming file and line) instead of skipping it.
        max_bad_fraction: fail (TabularFormatError, nothing written) when bad rows exceed this share of the rows.
        progress: show reading progress on stderr (after 2 s on a terminal; a line a minute in a log).

    Raises:
        FileNotFoundError, FileExistsError (`out` holds a data set), ValueError: a missing column (naming the file
        and its columns), a format, a setting, no good row. TabularFormatError: see `strict`, `max_bad_fraction`.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "log.csv"
        >>> _ = f.write_text("u,i,t\\nb,x,3\\na,y,1\\nb,y,1\\nb,z,1\\na,z,2\\na,w,5\\n")
        >>> s = prepare_log(f, f.parent / "out", "u", "i", time="t", max_history=2, progress=False)
        >>> s["rows_read"], s["bad_rows"], s["tied_rows"], s["users"], s["splits"]["test"]["rows"]
        (6, 0, 2, 2, 4)
    """
    input, out = Path(input), Path(out)
    features = [n.strip() for n in features.split(",")] if isinstance(features, str) else list(features)
    if len(features) > 1:
        raise ValueError(f"features: the sequence layout carries one item side feature (hist_cat/target_cat, the "
                         f"`cat` vocabulary DIN reads), got {len(features)}: {', '.join(features)}")
    if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 1:
        raise ValueError(f"max_history (--max-history) must be a positive int, got {max_history!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed (--seed) must be an int >= 0, got {seed!r}")
    if isinstance(max_bad_fraction, bool) or not isinstance(max_bad_fraction, (int, float)) \
            or not 0 <= max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction (--max-bad-fraction) must be a number in [0, 1], got {max_bad_fraction!r}")
    fmt = _format(input)
    if input.is_file():  # else TableFile says it is missing
        with open(input, "rb") as f:
            if (f.read(4) == PARQUET_MAGIC) != (fmt == "parquet"):
                raise ValueError(f"{input}: named .{fmt} but {'is not' if fmt == 'parquet' else 'holds'} Parquet")
    file = TableFile(input, _TEXT.get(f".{fmt}"))
    named: dict[str, str] = {}
    for option, name in (("--user", user), ("--item", item), ("--time", time), *(("--features", f) for f in features)):
        if name is None:
            continue
        if name not in file.columns:
            raise ValueError(f"{option}: {input} has no column {name!r}; its columns are {', '.join(file.columns)}")
        if name in named:
            raise ValueError(f"column {name!r} is named by both {named[name]} and {option}")
        named[name] = option
    if file.is_parquet:
        schema = pq.read_schema(input)
        for name in named:
            if pa.types.is_nested(t := schema.field(name).type):
                raise ValueError(f"{input}: column {name!r} holds {t}, not ids, times or categories")

    text, lines, invalid, rows_read = _read(file, list(named), progress)
    failures = [(user, pc.equal(text[user], ""), "missing"), (item, pc.equal(text[item], ""), "missing")]
    times = kind = None
    if time is not None:
        times, bad_time, kind = parse_times(text[time])
        failures.append((time, bad_time, f"not {'a number' if kind == 'numbers' else 'an ISO 8601 date'} (the "
                                          f"column holds {kind})"))
    bad = np.zeros(lines.size, dtype=bool)
    records = list(invalid[:MAX_REPORTED])
    for name, mask, why in failures:
        mask = np.asarray(mask, dtype=bool) & ~bad  # a row is blamed on its first failing column
        bad |= mask
        for r in np.flatnonzero(mask)[:MAX_REPORTED].tolist():
            value = text[name][r].as_py()
            content = ", ".join(f"{n}={text[n][r].as_py()!r}" for n in named)
            records.append({"file": str(input), "line": int(lines[r]), "column": name, "content": content,
                            "reason": f"column {name!r} is " + ("missing" if why == "missing" else f"{value!r}, {why}")})
    records = sorted(records, key=lambda r: r["line"])[:MAX_REPORTED]
    bad_rows = len(invalid) + int(bad.sum())
    if strict and records:
        raise TabularFormatError(f"{records[0]['file']}:{records[0]['line']}: {records[0]['reason']}\n"
                                 f"  line: {records[0]['content']!r}")
    for r in records:
        print(bad_line_text(r), file=sys.stderr)
    if bad_rows > len(records):
        print(f"{bad_rows} bad lines skipped in total; the first {len(records)} are listed above", file=sys.stderr)
    if bad_rows > max_bad_fraction * rows_read:
        first = records[0]
        raise TabularFormatError(
            f"{input}: {bad_rows:,} bad rows of {rows_read:,} ({bad_rows / rows_read:.2%}) exceed --max-bad-fraction "
            f"(max_bad_fraction) {max_bad_fraction:g}; the first: {first['file']}:{first['line']}: {first['reason']} "
            "(fix the input or the column names, or raise the fraction); nothing was written")
    good = ~bad
    if not good.any():
        raise ValueError(f"{input}: no good row to use ({rows_read} read)")
    keep = pa.array(good)
    users, user_rule = map_ids(pc.filter(text[user], keep))
    items, item_rule = map_ids(pc.filter(text[item], keep))
    order, tied_rows = log_order(users, None if times is None else times[good])
    ids = {"user": user_rule, "item": item_rule}
    categories, conflicts = None, {}
    if features:
        categories, ids["feature"], conflicts[features[0]] = _side_feature(items, pc.filter(text[features[0]], keep))
    rows_used = int(good.sum())
    if rows_read != rows_used + bad_rows:
        raise RuntimeError(f"internal error: {rows_read} rows read != {rows_used} used + {bad_rows} bad")
    summary = {
        "source": "log", "input": str(input), "format": fmt, "seed": seed, "max_history": max_history,
        "columns": {"user": user, "item": item, "time": time, "features": features}, "ids": ids,
        "time_kind": kind, "order": "users by first row; each user's rows by time" if time else
        "users by first row; each user's rows in file order", "tie_rule": TIE_RULE, "tied_rows": tied_rows,
        "feature_conflicts": conflicts, "feature_rule": "an item's first non-empty value in the file; none: -1",
        "rows_read": rows_read, "rows_used": rows_used, "bad_rows": bad_rows, "first_bad_lines": records,
        "max_bad_fraction": max_bad_fraction,
    }
    return write_log_sequences(out, users[order], items[order], categories, max_history, seed, force, str(input),
                               summary, lines[good][order])
