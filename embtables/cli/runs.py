"""Run subcommands: `train` one configuration, `sweep` methods x budgets x seeds, `report` a sweep."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from embtables.app.sweep import DEFAULT_BUDGETS, QUICK
from embtables.app.trainer import TrainConfig
from embtables.cli.options import add_method_arguments, parse_options
from embtables.stores import BACKENDS

# fewer optimizer steps than this and the model has barely left its initialisation: an embedding row moves only in
# the steps whose batch holds its id, and the dense layers' Adam takes on the order of a hundred steps to settle
FEW_STEPS = 100
DEVICE_HELP = ("where the model, the tables and the batches live: cpu (default), cuda, cuda:1, ...; the fused "
               "backend runs on the CPU only, fbgemm on CUDA needs FBGEMM's CUDA build")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train DLRM or DIN with one compression method and write metrics.json")
    p.add_argument("--model", default="dlrm", choices=["dlrm", "din"], help="the model (its options: -m, below)")
    p.add_argument("--data", required=True, help="a data folder, or 'synthetic' for the built-in planted data")
    add_method_arguments(p)
    p.add_argument("--epochs", type=int, default=1, help="passes over the train split")
    p.add_argument("--batch-size", type=int, default=1024, help="samples per training step")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default: the epochs' end)")
    p.add_argument("--dim", type=int, default=16, help="embedding dim D of every table")
    p.add_argument("--min-count", type=int, default=TrainConfig.min_count,
                   help="values seen fewer times in training share one trained out-of-vocabulary row (default %(default)s)")
    p.add_argument("--raw-ids", action="store_true",
                   help="feed raw ids hashed into each table instead of vocabulary ranks: no vocabulary to serve")
    p.add_argument("--dense-optimizer", default="adam", choices=["adam", "adagrad"], help="optimizer of the MLPs")
    p.add_argument("--dense-lr", type=float, default=1e-3, help="its learning rate")
    p.add_argument("--embedding-optimizer", default="rowwise_adagrad", choices=["rowwise_adagrad", "adagrad", "sgd"],
                   help="optimizer of the embedding tables (fused into backward on fbgemm, fused, triton)")
    p.add_argument("--embedding-lr", type=float, default=0.05, help="its learning rate")
    p.add_argument("--eval-every", type=int, default=0, help="validate every this many steps (0: at each epoch's end)")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="checkpoint every this many steps (0: at each evaluation and epoch end)")
    p.add_argument("--seed", type=int, default=0, help="seeds the initialisation and the data order")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("-m", "--model-option", action="append", default=[], metavar="NAME=VALUE",
                   help="a model option, e.g. -m pooling=sum for DIN (repeatable; the options are listed below)")
    p.add_argument("--nproc", type=int, default=1,
                   help="train on this many local processes, the tables sharded by torchrec's planner (needs "
                        "--backend torchrec; gloo on CPU, nccl on CUDA); under torchrun its WORLD_SIZE decides")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--quiet", action="store_true", help="no progress (on a terminal a bar, in a log a line every 5%%)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    again.add_argument("--force", action="store_true", help="replace an earlier run in --out (without it, or "
                       "--resume, a folder holding a run is refused)")
    p.epilog = model_options_text()
    p.set_defaults(run=_train)

    s = sub.add_parser("sweep", help="train every method at every budget and seed; write results and a report")
    s.add_argument("--model", default="dlrm", choices=["dlrm", "din"], help="the model every cell trains")
    s.add_argument("--data", default="synthetic", help="a data folder, or 'synthetic' for the built-in planted data")
    s.add_argument("--methods", default=None, help="comma-separated; default: every registered method")
    s.add_argument("--budgets", default=None, help=f"comma-separated fractions of all tables' full fp32 bytes (see `train --help`'s --budget); default "
                   f"{','.join(map(str, DEFAULT_BUDGETS))}")
    s.add_argument("--seeds", default=None, help="comma-separated; default 0")
    s.add_argument("--epochs", type=int, default=None, help="passes over the train split (default 1; --quick: 1)")
    s.add_argument("--batch-size", type=int, default=1024, help="samples per training step")
    s.add_argument("--max-steps", type=int, default=None, help="stop each cell after this many steps")
    s.add_argument("--backend", default="fbgemm", choices=sorted(BACKENDS), help="the store every cell trains on")
    s.add_argument("--dim", type=int, default=16, help="embedding dim D of every table")
    s.add_argument("--min-count", type=int, default=TrainConfig.min_count,
                   help="values seen fewer times in training share one trained out-of-vocabulary row (default %(default)s)")
    s.add_argument("--raw-ids", action="store_true",
                   help="every cell feeds raw ids hashed into each table instead of vocabulary ranks")
    s.add_argument("--embedding-lr", type=float, default=TrainConfig.embedding_lr)
    s.add_argument("--dense-lr", type=float, default=TrainConfig.dense_lr)
    s.add_argument("--eval-every", type=int, default=0)
    s.add_argument("--device", default="cpu", help=DEVICE_HELP + "; every cell trains there")
    s.add_argument("--option", action="append", default=[], metavar="METHOD:NAME=VALUE",
                   help="a method option, e.g. --option qr:operation=add (repeatable)")
    s.add_argument("--dtypes", default="fp32",
                   help="comma-separated: fp32 (every cell trains in it), plus fp16, int8, int4 to score each finished "
                        "cell's best checkpoint quantized after training, one more results row each (no training)")
    s.add_argument("--quick", action="store_true",
                   help=f"the demo preset: budgets {QUICK['budgets']}, one seed, one epoch, {QUICK['rows']:,} synthetic rows, "
                        f"method options {QUICK['options']} unless given")
    s.add_argument("--out", required=True, help="sweep folder (re-run with the same arguments to resume)")
    s.add_argument("--quiet", action="store_true", help="no progress; each cell's result line still prints")
    s.set_defaults(run=_sweep)

    r = sub.add_parser("report", help="regenerate report.md and figures of a sweep folder from results.parquet")
    r.add_argument("folder")
    r.set_defaults(run=lambda a: _report(a.folder) or 0)


def model_options_text() -> str:
    """The models' options (`-m NAME=VALUE`) with their defaults, read from the models' signatures."""
    import inspect

    from embtables.models import DIN, DLRM

    lines = ["model options (-m NAME=VALUE, Python literals):"]
    skip = {"embeddings", "items", "others", "history", "target", "dense_in", "item_counts"}  # set by the data
    for name, cls in (("dlrm", DLRM), ("din", DIN)):
        params = [p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name != "self" and p.name not in skip and p.default is not inspect.Parameter.empty]
        lines.append(f"  {name}: " + ", ".join(f"{p.name}={p.default!r}" for p in params))
    return "\n".join(lines)


def _train(args: argparse.Namespace) -> int:
    from embtables.app.train import train, train_on_ranks
    from embtables.datasets.builtin import resolve_data

    try:
        config = TrainConfig(
            model=args.model, data=str(resolve_data(args.data, args.model)), method=args.method, budget=args.budget,
            options=parse_options(args.option), backend=args.backend, embedding_dim=args.dim, min_count=args.min_count,
            raw_ids=args.raw_ids,
            epochs=args.epochs, batch_size=args.batch_size, max_steps=args.max_steps,
            dense_optimizer=args.dense_optimizer, dense_lr=args.dense_lr, embedding_optimizer=args.embedding_optimizer,
            embedding_lr=args.embedding_lr, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
            seed=args.seed, model_options=parse_options(args.model_option), device=args.device,
        )
        if args.nproc > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            metrics = train_on_ranks(config, args.out, args.nproc, resume=args.resume, force=args.force,
                                     progress=not args.quiet)
            if int(os.environ.get("RANK", "0")) != 0:
                return 0  # under torchrun: rank 0 prints the summary
        else:
            metrics = train(config, args.out, resume=args.resume, force=args.force, progress=not args.quiet)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    summary = {k: metrics[k] for k in ("method", "budget", "steps", "best_step", "memory_bytes", "compression",
                                       "train_samples_per_s")}
    summary.update({s: metrics[s]["best"] for s in ("val", "test") if s in metrics})
    # the best validation step's checkpoint (what `embtables evaluate` scores) and the last (what --resume continues)
    summary["checkpoints"] = {k: str(Path(args.out) / metrics["checkpoints"][k]) for k in ("best", "last")}
    summary["metrics"] = str(Path(args.out) / "metrics.json")
    print(json.dumps(summary, indent=2))
    note = few_steps_note(config, metrics)
    if note:
        print(f"note: {note}", file=sys.stderr)  # stderr: stdout stays one JSON document
    return 0


def few_steps_note(config: TrainConfig, metrics: dict[str, Any]) -> str | None:
    """Advice when the schedule ran out after fewer than FEW_STEPS steps (None otherwise, or when --max-steps
    was what stopped it: then the user chose the length).

    Args:
        config: the run's configuration (epochs, batch size, max steps).
        metrics: its metrics (steps, steps_per_epoch, train_rows).
    """
    steps, per_epoch, rows = metrics["steps"], metrics.get("steps_per_epoch"), metrics.get("train_rows")
    if steps >= FEW_STEPS or not per_epoch or rows is None or (config.max_steps is not None and steps >= config.max_steps):
        return None
    epochs = config.epochs
    more = [f"--epochs {math.ceil(FEW_STEPS / per_epoch)}"]
    # the largest power-of-two batch that reaches FEW_STEPS over the same epochs; below 32 a batch says little
    batch = next((b for b in (1 << k for k in range(12, 4, -1))
                  if b < config.batch_size and rows // b * epochs >= FEW_STEPS), None)
    if batch is not None:
        more.append(f"--batch-size {batch}")
    return (f"{epochs} epoch{'s' if epochs != 1 else ''} of {per_epoch:,} step{'s' if per_epoch != 1 else ''} "
            f"(batch {config.batch_size:,} over {rows:,} rows): {steps:,} steps in all, few for the embeddings to "
            f"learn (fewer than {FEW_STEPS}); try {' or '.join(more)}")


def _report(folder: str) -> None:
    """Write the report of a sweep folder and say where it and its figures went."""
    from embtables.app.report import build_report

    try:
        written = build_report(folder)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"report: {written.report}")
    print(f"figures: {', '.join(str(f) for f in written.figures) if written.figures else 'none (no finished run)'}")


def _split(text: str | None, cast: Any, default: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(cast(x) for x in text.split(",") if x.strip()) if text else tuple(default)


def _sweep(args: argparse.Namespace) -> int:
    import embtables as et
    from embtables.app.sweep import SweepConfig, sweep
    from embtables.datasets.builtin import resolve_data, synthetic_criteo

    quick = args.quick
    if quick and args.data == "synthetic" and args.model == "dlrm":
        data = synthetic_criteo(rows=QUICK["rows"])
    else:
        data = resolve_data(args.data, args.model)
    options: dict[str, dict[str, Any]] = {}
    for item in args.option:
        method, sep, rest = item.partition(":")
        if not sep:
            raise SystemExit(f"error: --option {item!r} must look like METHOD:NAME=VALUE")
        options.setdefault(method, {}).update(parse_options([rest]))
    try:
        train = TrainConfig(
            model=args.model, data=str(data), backend=args.backend, embedding_dim=args.dim,
            min_count=args.min_count, raw_ids=args.raw_ids,
            epochs=args.epochs or (QUICK["epochs"] if quick else 1), batch_size=args.batch_size,
            max_steps=args.max_steps, embedding_lr=args.embedding_lr, dense_lr=args.dense_lr, eval_every=args.eval_every,
            device=args.device,
        )
        methods = _split(args.methods, str, et.list_methods())
        if quick:  # the preset's options of the methods it runs, unless given
            options = {**{m: dict(o) for m, o in QUICK["options"].items() if m in methods}, **options}
        config = SweepConfig(
            train=train,
            methods=methods,
            budgets=_split(args.budgets, float, QUICK["budgets"] if quick else DEFAULT_BUDGETS),
            seeds=_split(args.seeds, int, QUICK["seeds"] if quick else (0,)),
            options=options,
            dtypes=_split(args.dtypes, str, ("fp32",)),
        )
        sweep(config, args.out, command="embtables " + " ".join(sys.argv[1:]), progress=not args.quiet)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    _report(args.out)
    return 0

