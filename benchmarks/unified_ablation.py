"""Ablation of `unified`'s chunking: probes per feature 1, 2, 4 and by_vocabulary, DLRM on the planted data.

    .venv/bin/python benchmarks/unified_ablation.py                # the committed table (about 10 cells of 1-2 min)
    .venv/bin/python benchmarks/unified_ablation.py --dry-run      # tiny data and a few steps, into a temporary folder

Each variant is one `embtables sweep` (the same machinery: one child process per cell, results appended after
each cell) of `unified` with `--option unified:probes=<variant>` into its own folder `OUT/probes-<variant>`,
so a re-run resumes every variant where it stopped. The recipe is the committed synthetic sweep's
(`benchmarks/results/sweep_synthetic`: built-in planted Criteo of 3,000,000 rows, D = 16, batch 1024, one
epoch, fbgemm, row-wise Adagrad) at budgets 0.1 and 0.01, seed 0. The full table, the reference of the gaps,
trains once, in the first variant's folder. Then writes `--report` (default
benchmarks/results/unified_ablation.md): per variant its chunk width and chunks per feature, and per budget
its test AUC (at the best validation step), gap to full, bytes (`memory_bytes()`) and training samples/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import embtables as et
from embtables.app.results import load_results
from embtables.app.runinfo import machine, versions
from embtables.app.sweep import SweepConfig, sweep
from embtables.app.trainer import TrainConfig, open_data
from embtables.datasets.builtin import synthetic_criteo
from embtables.datasets.synthetic import SynthCriteoConfig

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("1", "2", "4", "by_vocabulary")
DRY = dict(rows=3000, max_steps=3, batch_size=128)


@dataclass(frozen=True)
class VariantSweep(SweepConfig):
    """A sweep whose `full` reference may be left out (it trains once, in the first variant's folder)."""

    with_full: bool = True

    def cells(self) -> list[TrainConfig]:
        return [c for c in super().cells() if self.with_full or c.method != "full"]


def probes_value(variant: str) -> int | str:
    return int(variant) if variant.isdigit() else variant


def chunking(tables: list[et.TableConfig], variant: str, backend: str) -> str:
    """'w 4; chunks 4 x 5 features, 2 x 14, 1 x 7' for the data's tables (the chunks do not depend on the budget)."""
    plan = et.plan(tables, "unified", rows=1, probes=probes_value(variant), backend=backend)
    counts = Counter(c for p in plan.params for c in p.chunks)
    parts = [f"{c} x {n} feature{'s' if n != 1 else ''}" for c, n in sorted(counts.items(), reverse=True)]
    return f"w {plan.physical_tables[0].embedding_dim}; chunks {', '.join(parts)}"


def finished(folder: Path) -> pd.DataFrame:
    df = load_results(folder)
    return df[df["status"] == "ok"].drop_duplicates("cell", keep="last") if len(df) else df


def report(out: Path, variants: list[str], budgets: list[float], tables: list[et.TableConfig], backend: str,
           command: str, data: Path) -> str:
    """The markdown table of the ablation from the variants' results."""
    rows = {v: finished(out / f"probes-{v}") for v in variants}
    everything = pd.concat([df for df in rows.values() if len(df)] or [pd.DataFrame({"method": []})])
    full = everything[everything["method"] == "full"]
    full_auc = float(full["test_auc_best"].iloc[-1]) if len(full) else None
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    lines = [
        "# Unified Embedding: probes per feature (ablation)", "",
        f"Command: `{command}`", "",
        f"Machine: {machine()}; versions: {vers}.", "",
        f"Data: `{data}`. Test AUC at the best validation step; gap to the full table's test AUC"
        + (f" ({full_auc:.4f}, {int(full['memory_bytes'].iloc[-1]):,} bytes, "
           f"{float(full['train_samples_per_s'].iloc[-1]):,.0f} samples/s)" if full_auc is not None else "")
        + "; bytes are `memory_bytes()` of the embeddings; a variant is `--option unified:probes=<variant>`.", "",
        "| probes | chunking | budget | bytes | test AUC | gap to full | train samples/s |",
        "|---|---|---|---|---|---|---|",
    ]
    best: dict[float, tuple[float, str]] = {}
    for v in variants:
        shape = chunking(tables, v, backend)
        for b in budgets:
            df = rows[v]
            hit = df[(df["method"] == "unified") & ((df["budget"] - b).abs() < 1e-12)] if len(df) else df
            if not len(hit):
                lines.append(f"| {v} | {shape} | {b:g} | - | not run | - | - |")
                continue
            r = hit.iloc[-1]
            auc = float(r["test_auc_best"])
            gap = f"{auc - full_auc:+.4f}" if full_auc is not None else "-"
            lines.append(f"| {v} | {shape} | {b:g} | {int(r['memory_bytes']):,} | {auc:.4f} | {gap} | "
                         f"{float(r['train_samples_per_s']):,.0f} |")
            if b not in best or auc > best[b][0]:
                best[b] = (auc, v)
    lines.append("")
    for b in budgets:
        if b in best:
            lines.append(f"- budget {b:g}: highest test AUC with probes={best[b][1]} ({best[b][0]:.4f})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="root of the variants' sweep folders (default "
                   "benchmarks/results/unified_ablation; with --dry-run a temporary folder)")
    p.add_argument("--report", default=None, help="markdown file to write (default "
                   "benchmarks/results/unified_ablation.md; with --dry-run OUT/unified_ablation.md)")
    p.add_argument("--probes", default=",".join(VARIANTS), help="comma-separated variants (default %(default)s)")
    p.add_argument("--budgets", default="0.1,0.01")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", type=int, default=SynthCriteoConfig.rows, help="planted synthetic rows over all splits")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--backend", default="fbgemm")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dry-run", action="store_true",
                   help=f"tiny: {DRY['rows']:,} rows, {DRY['max_steps']} steps of batch {DRY['batch_size']}")
    args = p.parse_args(argv)
    if args.dry_run:
        args.rows, args.max_steps, args.batch_size = DRY["rows"], DRY["max_steps"], DRY["batch_size"]
    out = Path(args.out or (tempfile.mkdtemp(prefix="unified-ablation-") if args.dry_run
                            else ROOT / "benchmarks" / "results" / "unified_ablation"))
    target = Path(args.report or (out / "unified_ablation.md" if args.dry_run
                                  else ROOT / "benchmarks" / "results" / "unified_ablation.md"))
    variants = [v.strip() for v in args.probes.split(",") if v.strip()]
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    data = synthetic_criteo(rows=args.rows)
    tables = open_data(data).tables(16, 1)
    for v in variants:
        chunking(tables, v, args.backend)  # a bad variant fails here, before any training
    train = TrainConfig(model="dlrm", data=str(data), backend=args.backend, embedding_dim=16, epochs=args.epochs,
                        batch_size=args.batch_size, max_steps=args.max_steps, device=args.device)
    command = "python benchmarks/unified_ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for i, v in enumerate(variants):
        config = VariantSweep(train=train, methods=("unified",), budgets=tuple(budgets), seeds=(args.seed,),
                              options={"unified": {"probes": probes_value(v)}}, with_full=i == 0)
        print(f"probes={v}: {out / f'probes-{v}'}", flush=True)
        sweep(config, out / f"probes-{v}", command=command, progress=False)
    text = report(out, variants, budgets, tables, args.backend, command, data)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(text)
    print(f"report: {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
