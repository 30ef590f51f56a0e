"""The `embtables` command line: the only place that knows argparse. Each module adds its subcommands and calls the
library, the application (`embtables.app`) and the data sets (`embtables.datasets`); none of those parses
arguments or prints usage.

    embtables plan --tables criteo-kaggle --method qr --budget 0.01            (here)
    embtables preprocess criteo | synth criteo|sequences | prepare-sequences  (cli/data.py)
    embtables train | sweep | report                                          (cli/runs.py)
    embtables evaluate RUN --data DIR_OR_FILE                                 (cli/evaluate.py)
    embtables demo                                                            (here)

May import: everything (it is the top layer).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from embtables.cli.options import add_method_arguments, parse_options, with_defaults


def _plan(args: argparse.Namespace) -> int:
    import embtables as et
    from embtables.tablesets import TABLE_SETS

    if args.list:
        print("\n".join(et.list_methods()))
        return 0
    if args.tables not in TABLE_SETS:
        raise SystemExit(f"error: unknown table set {args.tables!r}; choose one of {sorted(TABLE_SETS)}")
    tables = TABLE_SETS[args.tables](args.dim)
    try:
        p = et.plan(tables, args.method, args.budget, backend=args.backend, raw_ids=args.raw_ids,
                    **parse_options(args.option))
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: {e}") from None
    print(p.summary())
    return 0


def _register_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="solve a method's parameters for a budget and print them (allocates nothing)")
    p.add_argument("--tables", default="criteo-kaggle", help="built-in table set")
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--list", action="store_true", help="list the registered methods and exit")
    p.add_argument("--raw-ids", action="store_true", help="hash raw ids into [0, N) for the tables the method reads "
                   "by rank, instead of needing a vocabulary (the plan then counts their keys, not index bytes)")
    add_method_arguments(p)
    p.set_defaults(run=_plan)


def _demo(args: argparse.Namespace) -> int:
    """The main job on built-in data: a quick memory-budget sweep of DLRM on the planted synthetic Criteo."""
    return main(["sweep", "--quick", "--out", args.out])


def build_parser() -> argparse.ArgumentParser:
    from embtables.cli import data, evaluate, runs

    parser = argparse.ArgumentParser(prog="embtables", description="Compressed embedding tables: plan, "
                                     "prepare data, train, sweep memory budgets and report.")
    sub = parser.add_subparsers(dest="command", required=True)
    _register_plan(sub)
    data.register(sub)
    runs.register(sub)
    evaluate.register(sub)
    d = sub.add_parser("demo", help="the README's demo: a quick sweep on synthetic data (`sweep --quick`)")
    d.add_argument("--out", default="demo_out", help="sweep folder (default demo_out/)")
    d.set_defaults(run=_demo)
    return with_defaults(parser)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
