"""Data subcommands: `preprocess criteo`, `synth criteo|sequences`, `prepare-sequences amazon|log`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from embtables.cli import tabular
from embtables.cli.options import add_quiet_argument, add_split_arguments
from embtables.datasets import criteo, interaction_log
from embtables.datasets.criteo import (
    DEFAULT_CHUNK_ROWS, DEFAULT_MAX_BAD_FRACTION, SPLIT_MODES, CriteoFormatError, preprocess_criteo,
)
from embtables.datasets.sequences import MAX_HISTORY, prepare_amazon, prepare_log
from embtables.datasets.tabular_write import TabularFormatError
from embtables.datasets.synthetic import SynthCriteoConfig, synth_criteo
from embtables.datasets.vocab_from import use_vocabulary, vocabulary_file


def register(sub: argparse._SubParsersAction) -> None:
    pre = sub.add_parser("preprocess", help="convert raw data sets to the Parquet layout")
    datasets = pre.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    p = datasets.add_parser("criteo", help="Criteo Kaggle train.txt or Criteo 1TB day_N files (plain or .gz)",
                            description=criteo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="TSV files, read in order as one stream")
    p.add_argument("--out", required=True, metavar="DIR", help="output data folder (resumed if it exists)")
    p.add_argument("--split", choices=SPLIT_MODES, default=None,
                   help="default kaggle-days; none with --vocab-from")
    add_split_arguments(p, f"fail when more than this share of the lines is bad (default {DEFAULT_MAX_BAD_FRACTION:g}: "
                        "the Criteo files have none, so more means the wrong file or format); 1 accepts any")
    p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="input lines per part file")
    add_quiet_argument(p, "reading progress")
    p.add_argument("--vocab-from", default=None, metavar="DIR",
                   help="map ids with the vocabulary of DIR (the training data folder, or a run folder of `embtables "
                   "train`) instead of the input's own counts: for scoring a later file with a trained model")
    p.set_defaults(run=_preprocess_criteo)
    tabular.register(datasets)  # `embtables preprocess csv`

    synth = sub.add_parser("synth", help="write a synthetic data set with a planted truth (Bayes AUC in truth.json)")
    kinds = synth.add_subparsers(dest="synth_kind", required=True)
    defaults = SynthCriteoConfig()
    c = kinds.add_parser("criteo", help="Criteo layout (13 dense, 26 categorical) with a planted click model")
    c.add_argument("--rows", type=int, default=defaults.rows, help=f"rows over all splits (default {defaults.rows:,})")
    c.add_argument("--vocab-scale", type=float, default=defaults.scale,
                   help="table rows as a fraction of Criteo Kaggle's (33.8M rows in all at 1), each at least "
                        f"{defaults.min_rows} (default %(default)s: {sum(defaults.cardinalities()):,} rows)")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--force", action="store_true", help="replace an earlier data set in --out")
    c.set_defaults(run=_synth_criteo)
    s = kinds.add_parser("sequences", help="DIN samples of users with planted interests")
    s.add_argument("--users", type=int, default=20_000)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="replace an earlier data set in --out")
    s.set_defaults(run=_synth_sequences)

    q = sub.add_parser("prepare-sequences", help="DIN samples of an interactions file (Amazon TSV, or any log)")
    sources = q.add_subparsers(dest="source", required=True, metavar="SOURCE")
    a = sources.add_parser("amazon", help="Amazon / SASRec user<TAB>item lines: integer ids, grouped by user, in "
                           "time order")
    a.add_argument("input", type=Path)
    _sequence_arguments(a)
    a.set_defaults(run=_prepare_sequences)
    g = sources.add_parser("log", help="a CSV, TSV or Parquet log with user, item (and time, category) columns",
                           description=interaction_log.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("input", type=Path, metavar="FILE", help=".csv, .tsv/.tab/.txt (header line; plain or .gz) or .parquet")
    g.add_argument("--user", required=True, metavar="COL", help="the column of user ids (text or integers)")
    g.add_argument("--item", required=True, metavar="COL", help="the column of item ids (text or integers)")
    g.add_argument("--time", default=None, metavar="COL", help="the column ordering each user's rows (numbers or "
                   "ISO 8601 dates; equal times keep file order); without it the file order is the time order")
    g.add_argument("--features", type=_names, default=[], metavar="COLS",
                   help="comma-separated item side feature columns, e.g. category; the layout holds one "
                   "(hist_cat/target_cat, read by DIN), so more are refused")
    _sequence_arguments(g)
    g.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping it")
    g.add_argument("--max-bad-fraction", type=float, default=DEFAULT_MAX_BAD_FRACTION, metavar="FRACTION",
                   help="fail, writing nothing, when more than this share of the rows is bad; 1 accepts any")
    add_quiet_argument(g, "reading progress")
    g.set_defaults(run=_prepare_log)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _sequence_arguments(p: argparse.ArgumentParser) -> None:
    """The output options `prepare-sequences amazon` and `log` share."""
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output data folder")
    p.add_argument("--max-history", type=int, default=MAX_HISTORY, help="most recent items kept in a history")
    p.add_argument("--seed", type=int, default=0, help="seeds the negative items")
    p.add_argument("--force", action="store_true", help="replace an earlier data set in --out")


def _preprocess_criteo(args: argparse.Namespace) -> int:
    split = args.split or ("none" if args.vocab_from else "kaggle-days")
    try:
        if args.vocab_from:  # refused before the conversion when it holds no vocabulary
            vocabulary_file(args.vocab_from)
        s = preprocess_criteo(args.inputs, args.out, split=split, seed=args.seed, fractions=args.fractions,
                              strict=args.strict, chunk_rows=args.chunk_rows, max_bad_fraction=args.max_bad_fraction,
                              progress=not args.quiet)
        if args.vocab_from:
            s = use_vocabulary(args.out, args.vocab_from)
    except (CriteoFormatError, ValueError, FileNotFoundError) as e:
        print(f"embtables preprocess criteo: error: {e}", file=sys.stderr)
        return 2
    per_split = ", ".join(f"{k} {v['rows']:,} rows ({v['clicks']:,} clicks)" for k, v in s["splits"].items())
    print(f"{args.out}: {s['rows_written']:,} rows written of {s['rows_read']:,} read, {s['bad_rows']:,} bad; "
          f"{per_split}")
    if args.vocab_from:
        print(f"ids map with the vocabulary {s['vocabulary_from']['file']}")
    return 0


def _synth_criteo(args: argparse.Namespace) -> int:
    return _synth(lambda: synth_criteo(args.out, rows=args.rows, seed=args.seed, force=args.force,
                                       scale=args.vocab_scale), args.out)


def _synth_sequences(args: argparse.Namespace) -> int:
    from embtables.datasets.synthetic_sequences import synth_sequences

    return _synth(lambda: synth_sequences(args.out, users=args.users, seed=args.seed, force=args.force), args.out)


def _synth(make: Callable[[], dict], out: Path) -> int:
    try:
        truth = make()
    except (ValueError, FileExistsError) as e:
        raise SystemExit(f"error: {e}") from None
    for split, t in truth["splits"].items():
        print(f"{split}: {t['rows']:,} rows, {t['clicks']:,} clicks, Bayes AUC {t['bayes_auc']:.4f}, "
              f"Bayes logloss {t['bayes_logloss']:.4f}")
    print(f"written to {out}")
    return 0


def _prepare_sequences(args: argparse.Namespace) -> int:
    try:
        s = prepare_amazon(args.input, args.out, args.max_history, args.seed, args.force)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    splits = ", ".join(f"{k} {v['rows']:,} rows" for k, v in s["splits"].items())
    print(f"{s['rows_read']:,} interactions of {s['users']:,} users and {s['items']:,} items -> {splits} in {args.out}")
    return 0


def _prepare_log(args: argparse.Namespace) -> int:
    try:
        s = prepare_log(args.input, args.out, args.user, args.item, time=args.time, features=args.features,
                        max_history=args.max_history, seed=args.seed, force=args.force, strict=args.strict,
                        max_bad_fraction=args.max_bad_fraction, progress=not args.quiet)
    except (TabularFormatError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"embtables prepare-sequences log: error: {e}", file=sys.stderr)
        return 2
    splits = ", ".join(f"{k} {v['rows']:,} rows" for k, v in s["splits"].items())
    tied = f", {s['tied_rows']:,} tied (kept in file order)" if args.time else ""
    conflicts = "".join(f", {n:,} items with differing {name}" for name, n in s["feature_conflicts"].items())
    print(f"{s['rows_read']:,} rows read ({s['bad_rows']:,} bad{tied}{conflicts}): {s['rows_used']:,} interactions "
          f"of {s['users']:,} users and {s['items']:,} items -> {splits} in {args.out}")
    return 0
