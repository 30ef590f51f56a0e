"""Criteo preprocessing throughput: `embtables preprocess criteo` next to two baselines on the same file.

    python benchmarks/preprocess_throughput.py --copies 50 --out benchmarks/results/preprocess_throughput.md

The real Kaggle sample (../shared/data/criteo_kaggle_head10k.tsv, 10,000 lines) is replicated `--copies`
times into a temporary file (never into the repository). Each measurement runs in a fresh subprocess (so peak
memory is its own) with the file in the page cache; methods are interleaved over `--repeats` rounds and the
best round is reported, since other work on the machine can only slow a round down. Baselines:

- DLRM reference loop: the per-line loop of facebookresearch/dlrm `data_utils.getCriteoAdData` (text mode,
  split on tabs, empty -> "0", `np.int32(label)`, `np.array(line[1:14], dtype=np.int32)`, `int(x, 16)` per
  category) into preallocated arrays (int64 categories: numpy 2 rejects hex values >= 2^31 as int32). It
  validates nothing and writes nothing.
- minimal Python loop: bytes split, `int()` and `int(x, 16)` into lists: the least a Python loop can do.
- pandas.read_csv (C engine, tab separator): parses the integers, leaves the hex categories as strings.

`embtables preprocess criteo` does all of the work: validation, Parquet output, training counts, and (for
kaggle-days) a line-counting pass.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from embtables.app.runinfo import machine

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "criteo_kaggle_head10k.tsv"
METHODS = {
    "preprocess-kaggle-days": "`preprocess_criteo(split='kaggle-days')`: count pass, parse, validate, Parquet, counts",
    "preprocess-none": "`preprocess_criteo(split='none')`: parse, validate, Parquet, counts",
    "dlrm-loop": "DLRM reference loop (parse only)",
    "python-loop": "minimal Python loop (parse only)",
    "pandas": "`pandas.read_csv` (hex left as strings)",
}


def dlrm_loop(path: str, n: int) -> None:
    import numpy as np

    y = np.zeros(n, dtype="i4")
    x_int = np.zeros((n, 13), dtype="i4")
    x_cat = np.zeros((n, 26), dtype="i8")
    with open(path) as f:
        for i, line in enumerate(f):
            line = line.split("\t")
            for j in range(len(line)):
                if line[j] == "" or line[j] == "\n":
                    line[j] = "0"
            y[i] = np.int32(line[0])
            x_int[i] = np.array(line[1:14], dtype=np.int32)
            x_cat[i] = np.array(list(map(lambda x: int(x, 16), line[14:])), dtype=np.int64)


def python_loop(path: str, n: int) -> None:
    labels, ints, cats = [], [], []
    with open(path, "rb") as f:
        for line in f:
            fields = line.rstrip(b"\r\n").split(b"\t")
            labels.append(int(fields[0]))
            ints.append([int(x) if x else -1 for x in fields[1:14]])
            cats.append([int(x, 16) if x else -1 for x in fields[14:]])


def job_for(method: str, path: str, lines: int, out: Path):
    if method.startswith("preprocess"):
        from embtables.datasets.criteo import preprocess_criteo

        return lambda: preprocess_criteo(path, out, split=method.split("-", 1)[1], progress=False)
    if method == "pandas":
        import pandas as pd

        return lambda: pd.read_csv(path, sep="\t", header=None)
    loop = {"dlrm-loop": dlrm_loop, "python-loop": python_loop}[method]
    return lambda: loop(path, lines)


def run_one(method: str, path: str, lines: int, work: str, warmup: str) -> dict[str, float]:
    """Time one method in this process after an untimed warm-up on the small sample (first-call costs:
    lazy imports, allocator growth); returns seconds, CPU seconds and peak RSS."""
    job_for(method, warmup, 10_000, Path(work) / "warmup")()
    job = job_for(method, path, lines, Path(work) / "out")
    cpu, wall = time.process_time(), time.perf_counter()
    job()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"seconds": wall, "cpu_seconds": cpu, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sample", default=str(SAMPLE), help="the Criteo sample to replicate")
    p.add_argument("--copies", type=int, default=50, help="times the sample is repeated (50 -> 500,000 lines)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; the best is reported")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--out", help="also write the markdown report here")
    p.add_argument("--one", nargs=5, metavar=("METHOD", "FILE", "LINES", "WORKDIR", "WARMUP"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], int(args.one[2]), args.one[3], args.one[4])))
        return
    if not Path(args.sample).exists():
        sys.exit(f"{args.sample} is absent: the real data samples exist on development and CI machines only")
    methods = args.methods.split(",")
    command = "python benchmarks/preprocess_throughput.py " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.sample).read_bytes()
        path = Path(tmp) / "criteo.tsv"
        path.write_bytes(data * args.copies)
        lines = data.count(b"\n") * args.copies
        load = [os.getloadavg()[0]]
        results: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
        for _ in range(args.repeats):
            for m in methods:
                work = Path(tmp) / "work"
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
                out = subprocess.run([sys.executable, __file__, "--one", m, str(path), str(lines), str(work), args.sample],
                                     check=True, capture_output=True, text=True, cwd=ROOT)
                results[m].append(json.loads(out.stdout.strip().splitlines()[-1]))
        load.append(os.getloadavg()[0])
    report = render(command, lines, len(data) * args.copies, results, load)
    print(report)
    if args.out:
        Path(args.out).write_text(report)


def render(command: str, lines: int, size: int, results: dict[str, list[dict[str, float]]], load: list[float]) -> str:
    best = {m: min(r, key=lambda x: x["seconds"]) for m, r in results.items()}
    out = [
        "# Criteo preprocessing throughput", "",
        f"Command: `{command}`", "",
        f"Machine: {machine()}; load average {load[0]:.2f} at start, {load[1]:.2f} at end "
        "(other jobs were sharing the CPUs: best of the rounds is reported).", "",
        f"Input: {lines:,} lines ({size / 1e6:.0f} MB), the real Criteo Kaggle sample replicated; file in page cache.",
        "",
        "| method | best s | rows/s | CPU s | peak RSS MB | x DLRM loop (wall / CPU) | x minimal loop (wall / CPU) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m, r in best.items():
        ratios = [f"{best[k]['seconds'] / r['seconds']:.1f} / {best[k]['cpu_seconds'] / r['cpu_seconds']:.1f}"
                  if k in best else "-" for k in ("dlrm-loop", "python-loop")]
        out.append(f"| {METHODS[m]} | {r['seconds']:.2f} | {lines / r['seconds']:,.0f} | {r['cpu_seconds']:.2f} | "
                   f"{r['peak_rss_mb']:.0f} | {ratios[0]} | {ratios[1]} |")
    out += ["", "All rounds (seconds): " + "; ".join(
        f"{m} " + ", ".join(f"{x['seconds']:.2f}" for x in r) for m, r in results.items()), ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
