"""DIN against its sum-pooled baseline, with the full and compressed item tables.

    python benchmarks/din_compare.py --out benchmarks/results/din.md
    python benchmarks/din_compare.py --data DIR --out ...     # one data set only

Data sets: the planted synthetic sequences (`--data synthetic`, Bayes AUC known) and the real Amazon Video
Games sequences prepared by `embtables prepare-sequences amazon ../shared/data/amazon_video_games_interactions.tsv
--out DIR` (the DIN paper's construction: history before position i, target = item i or a sampled negative,
each user's last position is the test split). Every run is the same recipe (`RECIPE`), over `--seeds`; the
table reports the test AUC at the best-validation step, mean over seeds (min..max). The baseline is the same model with `pooling="sum"`: the
history summed instead of weighted by the activation unit, everything else identical.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
AMAZON = ROOT.parent / "shared" / "data" / "amazon_video_games_interactions.tsv"

RECIPE: dict[str, Any] = dict(model="din", epochs=2, batch_size=256, embedding_lr=0.01)
# (label, method, budget, model options)
RUNS: list[tuple[str, str, float | None, dict[str, Any]]] = [
    ("DIN (attention)", "full", None, {"activation": "prelu"}),
    ("sum-pooled history (baseline)", "full", None, {"activation": "prelu", "pooling": "sum"}),
    ("DIN (attention)", "hash", 0.1, {"activation": "prelu"}),
    ("DIN (attention)", "hash", 0.01, {"activation": "prelu"}),
    ("DIN (attention)", "qr", 0.1, {"activation": "prelu"}),
    ("DIN (attention)", "multihash", 0.1, {"activation": "prelu"}),
]


def datasets(requested: list[str], work: Path) -> list[tuple[str, Path]]:
    from embtables.datasets.builtin import synthetic_sequences
    from embtables.datasets.layout import SUMMARY_FILE
    from embtables.datasets.sequences import prepare_amazon

    out = []
    for spec in requested:
        if spec == "synthetic":
            out.append(("synthetic sequences (planted interests)", synthetic_sequences()))
        elif spec == "amazon":
            if not AMAZON.exists():
                print(f"skipping Amazon: {AMAZON} is absent", file=sys.stderr)
                continue
            folder = work / "amazon"
            if not (folder / SUMMARY_FILE).exists():
                prepare_amazon(AMAZON, folder)
            out.append(("Amazon Video Games (real)", folder))
        else:
            out.append((spec, Path(spec)))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="synthetic,amazon", help="comma-separated: synthetic, amazon, or folders")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds of every run")
    p.add_argument("--work", type=Path, default=None, help="folder for prepared data and runs (default: a temp dir)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from embtables.datasets.layout import atomic_write
    from embtables.app.runinfo import machine
    from embtables.app.trainer import TrainConfig
    from embtables.app.train import train

    work = args.work or Path(tempfile.mkdtemp(prefix="din-compare-"))
    seeds = [int(x) for x in args.seeds.split(",")]
    lines = [
        "# DIN: attention vs sum-pooled history, full vs compressed item table",
        "",
        f"Command: `python benchmarks/din_compare.py{' --data ' + args.data if args.data != 'synthetic,amazon' else ''}"
        f"{' --seeds ' + args.seeds if args.seeds != '0,1' else ''}{' --out ' + str(args.out) if args.out else ''}`",
        "",
        f"Machine: {machine()}. Recipe: {', '.join(f'{k}={v}' for k, v in RECIPE.items() if k != 'model')}, "
        "fbgemm backend, row-wise Adagrad on the tables, Adam on the rest; test AUC at the best-validation step, mean "
        f"over seeds {args.seeds} (min..max); samples/s is the mean over seeds.",
        "",
    ]
    for title, folder in datasets(args.data.split(","), work):
        lines += [f"## {title}", "", "| model | item table | bytes | test AUC | gap to DIN full (mean) | Bayes AUC | train samples/s |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        print("\n".join(lines[-4:]), flush=True)
        ref = None
        for i, (label, method, budget, model_options) in enumerate(RUNS):
            runs = [train(TrainConfig(data=str(folder), method=method, budget=budget, model_options=model_options,
                                      seed=seed, **RECIPE), work / f"{folder.name}-{i}-s{seed}", progress=False)
                    for seed in seeds]
            aucs = [m["test"]["best"]["auc"] for m in runs]
            auc = sum(aucs) / len(aucs)
            ref = ref if ref is not None else auc
            bayes = runs[0].get("bayes", {}).get("test", {}).get("auc")
            speed = sum(m["train_samples_per_s"] for m in runs) / len(runs)
            table = "full" if budget is None else f"{method} {budget}"
            row = (f"| {label} | {table} | {runs[0]['memory_bytes']:,} | {auc:.4f} ({min(aucs):.4f}..{max(aucs):.4f}) | "
                   f"{auc - ref:+.4f} | {f'{bayes:.4f}' if bayes else '-'} | {speed:,.0f} |")
            lines.append(row)
            print(row, flush=True)
        lines.append("")
    if args.out:
        atomic_write(args.out, lambda tmp: Path(tmp).write_text("\n".join(lines)))


if __name__ == "__main__":
    main()
