"""Peak process memory of building and training each method on the full-size Criteo Kaggle tables.

    python benchmarks/peak_memory.py --out benchmarks/results/peak_memory.md

The 26 Criteo Kaggle tables hold 33.8M logical rows, 2.16 GB at dim 16. A compressed method must never
allocate a tensor of that logical size: at budget 0.001 the process should grow by megabytes, not gigabytes.
Each configuration runs in a fresh subprocess (so its peak RSS is its own): import, record RSS, build the
collection on the fbgemm backend with fused row-wise Adagrad, run `--steps` training steps at batch 4096,
record the peak RSS. "grown" is peak minus the RSS after imports; `memory_bytes()` is what the collection
says it needs to serve; optimizer state is on top of it (one float per row for row-wise Adagrad).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys
import torch, embtables as et
from embtables.tablesets import criteo_kaggle_tables
from torchrec import KeyedJaggedTensor
sys.path.insert(0, "benchmarks")
from lookup_throughput import zipf_ranks
method, budget, steps = sys.argv[1], (None if sys.argv[2] == "none" else float(sys.argv[2])), int(sys.argv[3])
tables = criteo_kaggle_tables(16)
g = torch.Generator().manual_seed(0)
def draw():
    # Zipf-like ranks scattered by a multiplicative bijection mod n: no table-sized permutation in memory
    ids = [zipf_ranks(t.num_embeddings, 4096, g) * 1_000_003 % t.num_embeddings for t in tables]
    return KeyedJaggedTensor([t.name for t in tables], torch.cat(ids), lengths=torch.ones(26 * 4096, dtype=torch.long))
batches = [draw() for _ in range(steps)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
ebc = et.build_collection(tables, method, budget, backend="fbgemm",
                          optimizer=et.SparseOptimizer("rowwise_adagrad", lr=0.01))
sparse = ebc.sparse_optimizer()
dense = list(ebc.method.parameters())
opt = torch.optim.Adagrad(dense, lr=0.01) if dense else None
for kjt in batches:
    ebc(kjt).values().sum().backward()
    for o in (sparse, opt):
        if o is not None:
            o.step()
            o.zero_grad()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"before": before, "peak": peak, "memory_bytes": ebc.memory_bytes(),
                  "full_bytes": et.full_bytes(tables)}))
"""

CONFIGS = [("full", None)] + [(m, 0.001) for m in ("hash", "multihash", "qr", "mixed_dim", "unified")]


def run(method: str, budget: float | None, steps: int) -> dict[str, int] | str:
    out = subprocess.run([sys.executable, "-c", CHILD, method, str(budget).lower(), str(steps)],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        return out.stderr.strip().splitlines()[-1]
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from embtables.datasets.layout import atomic_write
    from embtables.app.runinfo import machine

    lines = [
        "# Peak memory: building and training on the full-size Criteo Kaggle tables",
        "",
        f"Command: `python benchmarks/peak_memory.py{' --steps ' + str(args.steps) if args.steps != 5 else ''}"
        f"{' --out ' + str(args.out) if args.out else ''}`",
        "",
        f"Machine: {machine()}. 26 tables, 33.8M logical rows, dim 16; fbgemm backend, fused row-wise Adagrad, "
        f"{args.steps} training steps at batch 4096; each row a fresh process.",
        "",
        "| method | budget | memory_bytes() | of full | RSS after imports MB | peak RSS MB | grown MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    for method, budget in CONFIGS:
        r = run(method, budget, args.steps)
        if isinstance(r, str):
            row = f"| {method} | {budget} | failed: {r} | | | | |"
        else:
            row = (f"| {method} | {budget if budget is not None else 1} | {r['memory_bytes']:,} | "
                   f"{r['memory_bytes'] / r['full_bytes']:.4g} | {r['before'] / 2**20:,.0f} | "
                   f"{r['peak'] / 2**20:,.0f} | {(r['peak'] - r['before']) / 2**20:,.0f} |")
        lines.append(row)
        print(row, flush=True)
    if args.out:
        atomic_write(args.out, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
