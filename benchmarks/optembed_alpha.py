"""How many rows OptEmbed's supernet keeps as its penalty alpha grows, and what that costs the supernet's AUC.

For each alpha, trains the supernet stage alone (`optembed_supernet`, one run each, one at a time) on the same data
and recipe as the committed synthetic sweep, and writes a markdown table: rows kept (all tables, the largest three
tables and the median table), the thresholds' mean, the supernet's test AUC at full width, and the smallest budget
the kept rows allow (every table at dim 1: 4 bytes a row plus 4 for the id map, where some rows are pruned).

    python benchmarks/optembed_alpha.py --data synthetic --alphas 0,0.01,0.03,0.1,0.3 --out benchmarks/results/optembed_alpha.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import embtables as et  # noqa: E402
from embtables.app.runinfo import machine, versions  # noqa: E402
from embtables.app.stages import supernet_config  # noqa: E402
from embtables.app.trainer import TrainConfig, Trainer  # noqa: E402
from embtables.datasets.builtin import resolve_data  # noqa: E402
from embtables.files import atomic_write  # noqa: E402
from embtables.methods.optembed import table_bytes  # noqa: E402


def measure(data: str, alpha: float, threshold_lr: float, backend: str, max_steps: int | None) -> dict:
    config = TrainConfig(data=data, method="optembed", budget=1.0, backend=backend, max_steps=max_steps,
                         options={"alpha": alpha, "threshold_lr": threshold_lr})
    trainer = Trainer(supernet_config(config), progress=False)
    t0 = time.perf_counter()
    metrics = trainer.fit()
    c = trainer.collections[0]
    kept = [int(k.numel()) for k in c.method.kept(c.store.weights())]
    rows = [t.num_embeddings for t in c.tables]
    largest = sorted(range(len(rows)), key=lambda t: -rows[t])[:3]
    smallest = sum(table_bytes(1, k, n, "zero") for k, n in zip(kept, rows)) / et.full_bytes(c.tables)
    return {"alpha": alpha, "kept": sum(kept) / sum(rows), "largest": [kept[t] / rows[t] for t in largest],
            "median": statistics.median(k / n for k, n in zip(kept, rows)),
            "threshold": float(c.method.mask.thresholds.detach().mean()), "auc": metrics["test"]["best"]["auc"],
            "smallest_budget": smallest, "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="synthetic")
    p.add_argument("--alphas", default="0,0.01,0.03,0.1,0.3")
    p.add_argument("--threshold-lr", type=float, default=0.1)
    p.add_argument("--backend", default="fused")
    p.add_argument("--max-steps", type=int, default=None, help="stop each supernet early (for a quick check)")
    p.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    args = p.parse_args()
    data = str(resolve_data(args.data, "dlrm"))
    lines = [f"# OptEmbed: rows kept against alpha (supernet stage only, threshold_lr {args.threshold_lr:g})", "",
             f"Command: `python benchmarks/optembed_alpha.py --data {args.data} --alphas {args.alphas} --threshold-lr "
             f"{args.threshold_lr:g} --backend {args.backend}" + (f" --max-steps {args.max_steps}" if args.max_steps else "")
             + (f" --out {args.out}`" if args.out else "`"), "",
             f"Data `{data}`; default recipe of `embtables train` (1 epoch, batch 1024); machine {machine()}; torch "
             f"{versions().get('torch')}.", "",
             "| alpha | rows kept | largest 3 tables | median table | mean threshold | supernet test AUC | smallest "
             "budget reachable | seconds |", "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for alpha in (float(a) for a in args.alphas.split(",")):
        r = measure(data, alpha, args.threshold_lr, args.backend, args.max_steps)
        line = (f"| {r['alpha']:g} | {r['kept']:.1%} | {', '.join(f'{x:.0%}' for x in r['largest'])} | "
                f"{r['median']:.0%} | {r['threshold']:.3f} | {r['auc']:.4f} | {r['smallest_budget']:.3g} | "
                f"{r['seconds']:.0f} |")
        print(line, flush=True)
        lines.append(line)
    if args.out:
        atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
