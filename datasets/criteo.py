"""Criteo Kaggle `train.txt` / Criteo 1TB `day_N` (plain or gzip) -> the Parquet layout of `layout.py`.

`preprocess_criteo` streams the inputs (memory bounded by one 16k-line parse piece and one row group per
split, whatever the file size), parses lines with the vectorised parser of `criteo_parse` (which defines
exactly what a bad line is), and writes `DIR/<split>/part-<k>.parquet`, `DIR/counts.npz` (value counts of the
training split; of `all` for `--split none`) and `DIR/summary.json`.

Splits (lines are physical lines, bad ones included, numbered over the inputs in the order given):
    kaggle-days  the DLRM convention: the N lines cut into 7 consecutive pseudo-days of near-equal length
                 (the first N mod 7 days one line longer); days 1-6 -> train; day 7's first ceil(n7 / 2)
                 lines -> test, the rest -> val. Needs N: a fast first pass counts the lines.
    random       each line goes to train/val/test with probabilities `fractions`, drawn from a seeded hash
                 of its line number, so the assignment does not depend on chunking or on other lines.
    ordered      the N lines cut in file order into consecutive train, val and test ranges of `fractions`
                 (default 0.8, 0.1, 0.1), e.g. an 80/20 split of a sample in time order. Counts lines first.
    none         every line -> `all`.

Resume: chunk k is a fixed range of input lines (files are cut every `chunk_rows` lines, and at kaggle-days
boundaries), written as `<split>/part-<k>.parquet` (one part per split it feeds), so its bytes depend on the
settings alone. It is complete when its marker `DIR/_progress/chunk-<k>.json` exists (written after its parts
are renamed into place); a re-run with the same settings keeps complete chunks, redoes the rest, and produces
byte-identical files. A finished run (summary.json present) returns its summary at once, repeating on stderr the
bad lines the first run reported.

Bad lines: skipped, counted and reported (file, line, reason; the first MAX_REPORTED on stderr and in
summary.json), but more than `max_bad_fraction` of the lines (default 1%) fails the run with `TooManyBadLines`:
the real Criteo files have none, so that many means the wrong file, a damaged download or another format.

Example:
    embtables preprocess criteo train.txt --out data/criteo --split kaggle-days
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

from embtables.datasets.criteo_chunks import (
    MAX_REPORTED, PARSE_THREADS, PROGRESS_DIR, SCHEMA, CriteoFormatError, Run, bad_line_text, kaggle_days, line_ranges,
    run_chunks,
)
from embtables.datasets.layout import (
    COUNTS_FILE, MISSING_CAT, MISSING_INT, SUMMARY_FILE, read_json, save_counts, write_json,
)
from embtables.datasets.lines import count_lines

__all__ = ["SCHEMA", "CriteoFormatError", "TooManyBadLines", "kaggle_days", "preprocess_criteo"]

SPLIT_MODES = ("kaggle-days", "random", "ordered", "none")
COUNTED = ("kaggle-days", "ordered")  # splits that need the line count first
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_CHUNK_ROWS = 1 << 21
# the Kaggle and 1TB files have no bad line at all: a few (a truncated last line of an interrupted download, a
# header someone added) are worth skipping, but more than 1% means the wrong file or format, not noise
DEFAULT_MAX_BAD_FRACTION = 0.01


class TooManyBadLines(ValueError):
    """More bad lines than `max_bad_fraction` allows: names the inputs, the counts and the option."""


def _check_settings(split: str, seed: int | None, fractions: Sequence[float] | None, chunk_rows: int) -> None:
    if split not in SPLIT_MODES:
        raise ValueError(f"split must be one of {SPLIT_MODES}, got {split!r}")
    if split != "random" and seed is not None:
        raise ValueError(f"seed applies to split='random' only, not split={split!r}")
    if split not in ("random", "ordered") and fractions is not None:
        raise ValueError(f"fractions apply to split='random' or 'ordered' only, not split={split!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if fractions is not None:
        if len(fractions) != 3 or any(not f >= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
            raise ValueError(f"fractions must be 3 numbers >= 0 (train, val, test) summing to 1, got {fractions!r}")
        if not fractions[0] > 0:
            raise ValueError(f"fractions: the train fraction must be > 0 (counts come from it), got {fractions!r}")
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be an int >= 1, got {chunk_rows!r}")


def _settings(paths: list[str], split: str, seed: int | None, fractions: tuple[float, ...] | None,
              chunk_rows: int) -> dict[str, Any]:
    """What fixes the output's bytes: a resumed run must match it exactly."""
    files = [{"path": os.path.abspath(p), "bytes": os.path.getsize(p), "mtime_ns": os.stat(p).st_mtime_ns}
             for p in paths]
    return {"kind": "criteo", "format": 1, "inputs": files, "split": split, "seed": seed,
            "fractions": None if fractions is None else list(fractions), "chunk_rows": chunk_rows}


def _manifest(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Load and check the run's manifest, or start one in an empty (or new) folder."""
    path = out / PROGRESS_DIR / "manifest.json"
    if path.exists():
        stored = read_json(path)
        for key, value in settings.items():
            if stored.get(key) != value:
                raise ValueError(f"{out} holds a run with other settings ({key}: {stored.get(key)!r}, now "
                                 f"{value!r}); remove the folder or choose another --out")
        return stored
    if out.exists() and any(out.glob("*/part-*.parquet")) or (out / SUMMARY_FILE).exists():
        raise ValueError(f"{out} already holds data that `preprocess criteo` did not start (no "
                         f"{PROGRESS_DIR}/manifest.json); remove the folder or choose another --out")
    write_json(path, settings)
    return dict(settings)


def preprocess_criteo(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    split: str = "kaggle-days",
    seed: int | None = None,
    fractions: Sequence[float] | None = None,
    strict: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool = True,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
) -> dict[str, Any]:
    """Convert Criteo TSV files to `out`'s Parquet layout; resumes an interrupted run with the same settings.

    Args:
        inputs: one or more files (plain or gzip), read in this order as one stream of lines.
        out: the data folder to write.
        split: `"kaggle-days"`, `"random"`, `"ordered"` or `"none"` (see the module docstring).
        seed: hash seed of `split="random"` (default 0); an error with other splits.
        fractions: (train, val, test) shares of `split="random"` or `"ordered"` (default (0.8, 0.1, 0.1)).
        strict: stop at the first bad line with CriteoFormatError (file, line number, reason, content);
            otherwise bad lines are skipped, counted, and the first 100 listed.
        chunk_rows: input lines per part file: the unit of resume (memory does not grow with it).
        progress: show a tqdm bar with rows/s on stderr.
        max_bad_fraction: the share of bad lines (of the lines read) above which the run fails; it is not one of
            the settings a resumed run must repeat, so a finished run re-run with a larger value is accepted.

    Raises:
        TooManyBadLines: more than `max_bad_fraction` of the lines are bad (raised after summary.json is written,
            and again by every re-run that does not raise the limit).
        the summary also written to `out/summary.json`: rows_read == rows_written + bad_rows, first_bad_lines
        (file, 1-based line, reason, content), per-split rows/clicks/parts, and the settings.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp(); src = os.path.join(d, "day.tsv")
        >>> _ = open(src, "w").write("1\\t3" + "\\t" * 12 + "\\t68fd1e64" * 26 + "\\n" + "oops\\n")
        >>> s = preprocess_criteo(src, os.path.join(d, "out"), split="none", progress=False,
        ...                       max_bad_fraction=0.5)  # stderr: day.tsv:2: ...
        >>> s["rows_read"], s["rows_written"], s["bad_rows"], s["splits"]["all"]["clicks"]
        (2, 1, 1, 1)
    """
    paths = [str(inputs)] if isinstance(inputs, (str, os.PathLike)) else [str(p) for p in inputs]
    if not paths:
        raise ValueError("inputs: give at least one Criteo file")
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: no such input file")
    _check_settings(split, seed, fractions, chunk_rows)
    if (isinstance(max_bad_fraction, bool) or not isinstance(max_bad_fraction, (int, float))
            or not 0 <= max_bad_fraction <= 1):
        raise ValueError(f"max_bad_fraction (--max-bad-fraction) must be a number in [0, 1], got {max_bad_fraction!r}")
    if split in ("random", "ordered"):
        seed = (0 if seed is None else seed) if split == "random" else None
        fractions = tuple(float(f) for f in (DEFAULT_FRACTIONS if fractions is None else fractions))
    out = Path(out)
    manifest = _manifest(out, _settings(paths, split, seed, fractions, chunk_rows))  # type: ignore[arg-type]
    if (out / SUMMARY_FILE).exists():  # this exact run already completed: say again what it said of bad lines
        summary = read_json(out / SUMMARY_FILE)
        listed = summary.get("first_bad_lines", [])[:MAX_REPORTED]
        for bad in listed:
            print(bad_line_text(bad), file=sys.stderr)
        _print_total(summary["bad_rows"], len(listed), out)
        return _check_bad_fraction(summary, out, max_bad_fraction)

    run = Run(paths, out, split, seed or 0, tuple(fractions or ()), strict, chunk_rows, progress)
    if split in COUNTED:
        if manifest.get("lines") is None:
            manifest["lines"] = [count_lines(p) for p in paths]
            write_json(out / PROGRESS_DIR / "manifest.json", manifest)
        run.file_lines = manifest["lines"]
        run.bar.total = sum(run.file_lines)
    try:
        with ThreadPoolExecutor(max_workers=min(PARSE_THREADS, os.cpu_count() or 1)) as run.pool:
            run_chunks(run)
    finally:
        run.bar.close()
    return _check_bad_fraction(_finish(run), out, max_bad_fraction)


def _print_total(bad_rows: int, printed: int, out: Path) -> None:
    if bad_rows > printed:
        print(f"{bad_rows} bad lines skipped in total; the first {min(bad_rows, MAX_REPORTED)} are listed in "
              f"{out / SUMMARY_FILE}", file=sys.stderr)


def _check_bad_fraction(summary: dict[str, Any], out: Path, max_bad_fraction: float) -> dict[str, Any]:
    """`summary`, or TooManyBadLines when more than `max_bad_fraction` of its lines are bad."""
    read, bad, good = summary["rows_read"], summary["bad_rows"], summary["rows_written"]
    if bad <= max_bad_fraction * read:
        return summary
    keep = (f"To keep the {good:,} good rows anyway, run again with a larger --max-bad-fraction: the conversion is "
            "kept, not redone." if good else "No line is good: there is nothing to keep.")
    raise TooManyBadLines(
        f"{', '.join(summary['inputs'])}: {bad:,} of {read:,} lines are bad ({bad / read:.1%}), more than "
        f"--max-bad-fraction (max_bad_fraction) {max_bad_fraction:g} allows. Is it a Criteo TSV file (a 0/1 label, "
        f"13 integer and 26 hexadecimal columns, tab-separated)? The first bad lines and their reasons are listed "
        f"above and in {out / SUMMARY_FILE}. {keep}")


def _finish(run: Run) -> dict[str, Any]:
    written = sum(t["rows"] for t in run.totals.values())
    if run.rows_read != written + run.bad_rows:
        raise RuntimeError(f"internal error: {run.rows_read} lines read != {written} written + {run.bad_rows} bad")
    _print_total(run.bad_rows, run.printed, run.out)
    save_counts(run.out / COUNTS_FILE, run.counter.result())
    summary: dict[str, Any] = {
        "kind": "criteo", "inputs": run.inputs, "split": run.split, "chunk_rows": run.chunk_rows,
        "rows_read": run.rows_read, "rows_written": written, "bad_rows": run.bad_rows,
        "first_bad_lines": run.bad_lines, "splits": run.totals, "counts_split": run.count_split,
        "missing": {"dense": int(MISSING_INT), "sparse": MISSING_CAT},
    }
    if run.split == "random":
        summary.update(seed=run.seed, fractions=list(run.fractions))
    if run.split == "ordered":
        summary.update(fractions=list(run.fractions))
    if run.file_lines is not None:
        ranges = line_ranges(run.split, sum(run.file_lines), run.fractions)
        summary["line_ranges"] = {s: list(r) for s, r in ranges.items()}
    write_json(run.out / SUMMARY_FILE, summary)
    return summary
