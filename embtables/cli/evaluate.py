"""`embtables evaluate RUN --data DIR_OR_FILE`: score a trained run's best checkpoint on new data."""

from __future__ import annotations

import argparse
import json
import sys

from embtables.cli.options import add_quiet_argument
from embtables.datasets.criteo import DEFAULT_MAX_BAD_FRACTION

DESCRIPTION = """Score a run of `embtables train` on new data: a raw Criteo TSV file (parsed as `preprocess criteo`
does, bad lines skipped and counted) or a data folder. Raw ids are mapped through the vocabulary the run trained
with (kept in RUN), never the new data's own; values training never saw (or cut by --min-count) go to the
out-of-vocabulary row, counted per feature. Prints and writes AUC, log loss, calibration (mean predicted vs
observed CTR), rows scored, bad lines and the OOV counts."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a trained run's best checkpoint on new data (raw file or folder)",
                       description=DESCRIPTION)
    p.add_argument("folder", metavar="RUN", help="the run folder of `embtables train` (its --out)")
    p.add_argument("--data", required=True, metavar="DIR_OR_FILE", help="a raw Criteo TSV file (plain or .gz) or a "
                   "data folder")
    p.add_argument("--split", default=None, help="score only this split of a data folder (default: every split)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="best: the best validation step's (default); last: the end of training")
    p.add_argument("--out", default=None, metavar="FILE", help="the JSON result (default RUN/evaluate.json)")
    p.add_argument("--device", default=None, help="where to score (default: where the run trained)")
    p.add_argument("--max-bad-fraction", type=float, default=DEFAULT_MAX_BAD_FRACTION, metavar="FRACTION",
                   help=f"of a raw file: refuse it when more than this share of its lines is bad (default "
                   f"{DEFAULT_MAX_BAD_FRACTION:g})")
    add_quiet_argument(p, "preprocessing progress (of a raw file)")
    p.set_defaults(run=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from embtables.app.evaluate import evaluate_run

    try:
        result = evaluate_run(args.folder, args.data, out=args.out, split=args.split, checkpoint=args.checkpoint,
                              device=args.device, max_bad_fraction=args.max_bad_fraction, progress=not args.quiet)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    shown = {k: v for k, v in result.items() if k != "warnings"}
    if result["oov"] is not None:  # per feature, the values on the OOV row (the output file has unseen / rare too)
        shown["oov"] = {f: o["values"] for f, o in result["oov"].items() if o["values"]}
    print(json.dumps(shown, indent=2))
    for warning in result["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)  # stderr: stdout stays one JSON document
    return 0
