"""A user's own table (CSV or Parquet) -> the Parquet layout of `layout.py`, so that `embtables train`, `sweep`
and `report` run on it unchanged (a Criteo-kind folder whose summary.json lists its own columns).

    embtables preprocess csv events.csv --label click --out data/events
        [--categorical user,item] [--dense price] [--ignore ts] [--split random|ordered|none] [--seed 0]
        [--fractions 0.8,0.1,0.1] [--strict] [--max-bad-fraction 0.01] [--delimiter ,] [--force]

Every column but the label and the --ignore ones is a feature: dense or categorical as given, else inferred over
the whole input (a first pass) by the rules of `tabular_values.py`, which also define missing values, labels,
numbers and the categorical ids (a stable hash of the value's text). The typing is saved in summary.json
("columns", with the reason of each inference) and printed by the command with the flags that reproduce it.

Rows (`tabular_read.py` reads them): a row with the wrong number of fields, a label that is not 0/1,
true/false or yes/no, or a dense value that is not a finite number is bad: skipped, counted, and the first 100
listed (file, line, column, reason, content) in summary.json and on stderr, as Criteo's bad lines are; with
`strict`, the first one stops the run. A run whose bad rows exceed `max_bad_fraction` of the rows fails.

Splits, over the records of the inputs in order (bad ones included, the header excluded), as `preprocess criteo`'s:
    random   each record to train/val/test with probabilities `fractions`, from a seeded hash of its index
    ordered  consecutive train, val, test ranges of `fractions` of the records, in file order (time-ordered logs)
    none     every record to `all`
`kaggle-days` is Criteo's own calendar and is refused. counts.npz counts the categorical values of `train`
(of `all` for none). Loaded, a dense value x becomes sign(x) log(1 + |x|) and missing 0 (see `loader.py`).

The folder is written under a temporary name beside `out` and renamed into place when complete, so a failed or
interrupted run leaves nothing under `out` (a run is not resumed: it starts again).
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

from embtables.datasets.criteo import DEFAULT_CHUNK_ROWS, DEFAULT_FRACTIONS, DEFAULT_MAX_BAD_FRACTION, _check_settings
from embtables.datasets.layout import COUNTS_FILE, LABEL, MISSING_CAT, SUMMARY_FILE, save_counts, write_json
from embtables.datasets.tabular_read import TableFile
from embtables.datasets.tabular_values import ColumnStats
from embtables.datasets.tabular_write import Columns, Output, TabularFormatError

__all__ = ["SPLIT_MODES", "TabularFormatError", "describe_columns", "preprocess_tabular"]

SPLIT_MODES = ("random", "ordered", "none")
DEFAULT_PART_ROWS = DEFAULT_CHUNK_ROWS


def _typing(file: TableFile, label: str, given: dict[str, Sequence[str]]) -> tuple[dict[str, dict], list[str]]:
    """The columns' entries as given (label, --categorical, --dense, --ignore) and the features left to infer."""
    known = file.columns
    entries: dict[str, dict] = {}
    for option, names in (("--label", [label]), *given.items()):
        for name in names:
            if name not in known:
                raise ValueError(f"{option}: {file.path} has no column {name!r}; its columns are {', '.join(known)}")
            if name in entries:
                raise ValueError(f"column {name!r} is named by both {entries[name]['how']} and {option}")
            kind = {"--label": "label", "--ignore": "ignored", "--dense": "dense"}.get(option, "categorical")
            entries[name] = {"type": kind, "how": option}
    if label != LABEL and LABEL in known and LABEL not in entries:
        raise ValueError(f"{file.path}: column {LABEL!r} would be a feature, but the output's label column is "
                         f"named {LABEL!r}; pass --ignore {LABEL}, or --label {LABEL} if it holds the clicks")
    return entries, [c for c in known if c not in entries]


def _first_pass(files: list[TableFile], infer: list[str], count: bool) -> dict[str, ColumnStats]:
    """Infer the types of `infer` over every row; with `count`, also count the records of CSV files."""
    stats = {name: ColumnStats() for name in infer}
    for f in files:
        if not infer and (f.is_parquet or not count):
            continue
        for piece in f.pieces(infer or f.columns[:1]):
            lines = piece.records + f.first_line
            for name in infer:
                stats[name].add(piece.table.column(name), f.path, lines)
    return stats


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished folder `tmp` to `out`, replacing an earlier data set there."""
    if out.exists() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def preprocess_tabular(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    label: str,
    categorical: Sequence[str] = (),
    dense: Sequence[str] = (),
    ignore: Sequence[str] = (),
    split: str = "random",
    seed: int | None = None,
    fractions: Sequence[float] | None = None,
    strict: bool = False,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    delimiter: str | None = None,
    part_rows: int = DEFAULT_PART_ROWS,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert CSV or Parquet files to `out`'s Parquet layout (see the module docstring for the rules).

    Args:
        inputs: one or more files with the same columns (CSV with a header line, plain or gzip, or Parquet),
            read in this order as one table.
        out: the data folder to write; it must not exist or be empty, unless `force` and it holds a data set.
        label: the column of 0/1 outcomes.
        categorical, dense: columns typed as given; the other columns (but `label` and `ignore`) are inferred.
        ignore: columns left out.
        split: `"random"`, `"ordered"` or `"none"`.
        seed: hash seed of `split="random"` (default 0); an error with other splits.
        fractions: (train, val, test) shares of `split="random"` or `"ordered"` (default (0.8, 0.1, 0.1)).
        strict: stop at the first bad row with TabularFormatError (file, line, column, reason, content).
        max_bad_fraction: fail (TabularFormatError, nothing written) when bad rows exceed this share of the rows.
        delimiter: the CSV field separator (default: a tab for .tsv / .tab files, else a comma).
        part_rows: rows per part file of a split.
        force: replace the data set already in `out`.
        progress: show a tqdm bar on stderr.

    Raises:
        FileNotFoundError: an input is missing. FileExistsError: `out` holds data (see `out`).
        ValueError: a bad setting, header or column name (naming file, line 1 and the column), no categorical
            column, or no good row. TabularFormatError: a bad row with `strict`, or too many bad rows.

    Returns:
        the summary also written to `out/summary.json`: "dense", "categorical" (the loader's feature columns),
        "columns" (each column's type, how it was chosen, missing values, distinct training values), rows read,
        written and bad, first_bad_lines, per-split rows/clicks/parts, and the settings.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp(); src = os.path.join(d, "log.csv")
        >>> _ = open(src, "w").write("click,user,price\\n1,u1,2.5\\n0,7,\\nmaybe,u2,1\\n")
        >>> s = preprocess_tabular(src, os.path.join(d, "out"), "click", split="none", max_bad_fraction=0.5,
        ...                        progress=False)  # stderr: log.csv:4: column 'click' (field 1) is 'maybe', ...
        >>> s["rows_read"], s["rows_written"], s["bad_rows"], s["categorical"], s["dense"]
        (3, 2, 1, ['user'], ['price'])
    """
    paths = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(p) for p in inputs]
    if not paths:
        raise ValueError("inputs: give at least one CSV or Parquet file")
    if split == "kaggle-days":
        raise ValueError("split 'kaggle-days' is the calendar of Criteo's 7 days and means nothing for another "
                         "table: use 'ordered' (rows in time order: train on the past, test on the future), "
                         "'random' or 'none'")
    if split not in SPLIT_MODES:
        raise ValueError(f"split must be one of {SPLIT_MODES}, got {split!r}")
    if isinstance(part_rows, bool) or not isinstance(part_rows, int) or part_rows < 1:
        raise ValueError(f"part_rows must be an int >= 1, got {part_rows!r}")
    _check_settings(split, seed, fractions, part_rows)
    if not 0 <= max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction!r}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not (force and (out / SUMMARY_FILE).exists()):
            raise FileExistsError(f"{out} already exists and is not empty; " + (
                "pass force=True (--force) to replace the data set in it" if (out / SUMMARY_FILE).exists()
                else "it holds no data set, so it is never replaced: choose another --out"))

    files = [TableFile(p, delimiter) for p in paths]
    for f in files[1:]:
        if set(f.columns) != set(files[0].columns):
            raise ValueError(f"{f.path}: columns {f.columns} differ from those of {files[0].path}: {files[0].columns}")
    entries, infer = _typing(files[0], label, {"--categorical": categorical, "--dense": dense, "--ignore": ignore})
    features = [c for c in files[0].columns if entries.get(c, {}).get("type") not in ("label", "ignored")]
    for f in files:
        f.check_types([label, *features])
    stats = _first_pass(files, infer, count=split == "ordered")
    entries.update({name: s.inferred() for name, s in stats.items()})
    typed = {kind: [c for c in features if entries[c]["type"] == kind] for kind in ("dense", "categorical")}
    if not typed["categorical"]:
        raise ValueError(f"{paths[0]}: no categorical column (the models embed at least one); name one with "
                         "--categorical, or --ignore columns that are not features")
    columns = Columns(label, typed["dense"], typed["categorical"], set(dense))
    if split in ("random", "ordered"):
        seed = (0 if seed is None else seed) if split == "random" else None
        fractions = tuple(float(x) for x in (DEFAULT_FRACTIONS if fractions is None else fractions))
    rows = [f.rows for f in files]
    total = None if None in rows else sum(rows)  # type: ignore[arg-type]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        output = Output(tmp, columns, split, seed or 0, tuple(fractions or ()), total, strict, max_bad_fraction,
                        part_rows, progress)
        try:
            offset = 0
            for f in files:
                for piece in f.pieces():  # every column: a bad line is shown whole, its fields numbered
                    output.add(piece, f.path, f.first_line, offset, "," if f.is_parquet else f.delimiter)
                offset += f.rows or 0
            output.finish()
            if output.rows_read == output.bad_rows:
                raise ValueError(f"{', '.join(paths)}: no good row to write ({output.rows_read} read)")
        except BaseException:
            output.abort()
            raise
        counts = output.counter.result()
        save_counts(tmp / COUNTS_FILE, counts)
        for name in features:
            entries[name]["missing"] = output.missing[name]
            if name in counts:
                entries[name]["distinct"] = int(counts[name][0].size)
        summary = _summary(paths, output, entries, files[0].columns, ignore, seed, fractions)
        write_json(tmp / SUMMARY_FILE, summary)
        _replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return summary


def _summary(paths: list[str], output: Output, entries: dict[str, dict], order: list[str], ignore: Sequence[str],
             seed: int | None, fractions: Sequence[float] | None) -> dict[str, Any]:
    c = output.columns
    summary: dict[str, Any] = {
        "kind": "criteo", "format": "tabular", "inputs": paths, "label": c.label, "dense": c.dense,
        "categorical": c.categorical, "ignored": [n for n in order if n in ignore],
        "columns": {n: entries[n] for n in order}, "split": output.split,
        "rows_read": output.rows_read, "rows_written": output.rows_read - output.bad_rows,
        "bad_rows": output.bad_rows, "first_bad_lines": output.bad_lines, "splits": output.totals,
        "counts_split": output.count_split, "missing": {"dense": "NaN", "sparse": MISSING_CAT},
        "categorical_ids": "BLAKE2b-64 of the value's UTF-8 text, little-endian, top bit cleared",
        "dense_transform": "sign(x) * log(1 + |x|), missing -> 0 (applied by the loader)",
    }
    if output.split == "random":
        summary.update(seed=seed, fractions=list(fractions or ()))
    if output.split == "ordered":
        summary.update(fractions=list(fractions or ()))
    return summary


def describe_columns(summary: dict[str, Any]) -> str:
    """The typing of a `preprocess_tabular` summary as a table, and the flags that reproduce it.

    Example:
        >>> print(describe_columns({"label": "y", "columns": {"y": {"type": "label", "how": "--label"},
        ...     "n": {"type": "dense", "how": "inferred", "because": "every value is a number", "integers": True,
        ...           "missing": 0}}}))
        column  type   how       why
        y       label  --label
        n       dense  inferred  every value is a number; all integers: if they are ids, pass --categorical n
        reproduce with: --label y --dense n
    """
    rows = [("column", "type", "how", "why")]
    for name, e in summary["columns"].items():
        why = [e["because"]] if "because" in e else []
        if e.get("integers"):
            why.append(f"all integers: if they are ids, pass --categorical {shlex.quote(name)}")
        if e.get("distinct") is not None:
            why.append(f"{e['distinct']:,} distinct in {summary.get('counts_split', 'train')}")
        if e.get("missing"):
            why.append(f"{e['missing']:,} missing")
        rows.append((name, e["type"], e["how"], "; ".join(why)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join([*(r[i].ljust(widths[i]) for i in range(3)), r[3]]).rstrip() for r in rows]
    flags = [f"--label {shlex.quote(summary['label'])}"]
    for kind, flag in (("categorical", "--categorical"), ("dense", "--dense"), ("ignored", "--ignore")):
        names = [n for n, e in summary["columns"].items() if e["type"] == kind]
        if names:
            flags.append(f"{flag} {shlex.quote(','.join(names))}")
    return "\n".join(lines + ["reproduce with: " + " ".join(flags)])
