"""`embtables preprocess csv`: a user's own CSV or Parquet table to the data layout (datasets/tabular.py).

`register(datasets)` adds the subcommand to the `preprocess` subparsers of `cli/data.py`.
"""

from __future__ import annotations

import argparse
import sys

from embtables.cli.options import add_quiet_argument, add_split_arguments
from embtables.datasets import tabular
from embtables.datasets.tabular import (DEFAULT_MAX_BAD_FRACTION, DEFAULT_PART_ROWS, SPLIT_MODES, TabularFormatError,
                                        describe_columns, preprocess_tabular)

SEQUENCE_REFUSAL = (
    "--sequence: behaviour sequences are not read from a CSV; write the interactions as `user<TAB>item` lines "
    "(integer ids, grouped by user, in time order within each user) and run `embtables prepare-sequences amazon "
    "FILE --out DIR`, then train with `--model din`")


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def register(datasets: argparse._SubParsersAction) -> None:
    """Add `csv` to the subparsers of `embtables preprocess`."""

    p = datasets.add_parser("csv", help="your own table: CSV (plain or .gz) or Parquet, with a 0/1 label column",
                            description=tabular.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="FILE", help="CSV or Parquet files with the same columns, read in order")
    p.add_argument("--label", required=True, metavar="COLUMN", help="the column of 0/1 outcomes (clicks)")
    p.add_argument("--out", required=True, metavar="DIR", help="output data folder")
    for flag, what in (("--categorical", "categorical features (embedded)"), ("--dense", "dense (numeric) features"),
                       ("--ignore", "columns left out")):
        p.add_argument(flag, type=_names, action="extend", default=[], metavar="COLS",
                       help=f"comma-separated {what}; repeatable; the columns named nowhere are typed automatically")
    p.add_argument("--sequence", metavar="SPEC", default=None, help="not supported: says how to prepare sequences")
    p.add_argument("--split", choices=SPLIT_MODES, default="random",
                   help="random (default), ordered (file order is time order) or none")
    add_split_arguments(p, f"fail when bad lines exceed this share of the lines (default {DEFAULT_MAX_BAD_FRACTION})")
    p.add_argument("--delimiter", default=None, help="CSV field separator (default: tab for .tsv/.tab, else comma)")
    p.add_argument("--part-rows", type=int, default=DEFAULT_PART_ROWS, help="rows per part file")
    p.add_argument("--force", action="store_true", help="replace the data set already in --out")
    add_quiet_argument(p, "reading progress")
    p.set_defaults(run=_preprocess_csv)


def _preprocess_csv(args: argparse.Namespace) -> int:
    if args.sequence is not None:
        print(f"embtables preprocess csv: error: {SEQUENCE_REFUSAL}", file=sys.stderr)
        return 2
    delimiter = "\t" if args.delimiter in ("\\t", "tab") else args.delimiter
    try:
        s = preprocess_tabular(args.inputs, args.out, args.label, categorical=args.categorical, dense=args.dense,
                               ignore=args.ignore, split=args.split, seed=args.seed, fractions=args.fractions,
                               strict=args.strict, max_bad_fraction=args.max_bad_fraction, delimiter=delimiter,
                               part_rows=args.part_rows, force=args.force, progress=not args.quiet)
    except (TabularFormatError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"embtables preprocess csv: error: {e}", file=sys.stderr)
        return 2
    print(describe_columns(s))
    per_split = ", ".join(f"{k} {v['rows']:,} rows ({v['clicks']:,} clicks)" for k, v in s["splits"].items())
    print(f"{args.out}: {s['rows_written']:,} rows written of {s['rows_read']:,} read, {s['bad_rows']:,} bad; "
          f"{per_split}")
    return 0
