"""Criteo loader throughput (batches/s, rows/s at batch 4096) next to the DLRM training step it feeds.

    python benchmarks/loader_throughput.py --out benchmarks/results/loader_throughput.md

The data folder is generated with Criteo Kaggle's cardinalities (33.8M distinct ids over C1..C26 at
--scale 1), so vocabulary lookups search vocabularies of the real sizes: ids are drawn log-uniformly over
each feature's vocabulary of random 32-bit raw values, dense values log-uniformly in [0, 10^5) with 20%
missing. Loader configurations are timed over all rows of the split; the training step is a DLRM (the
reference 13-512-256-64-16 / 512-256-1 MLPs, dot interaction) over full tables on the fbgemm backend with
fused row-wise Adagrad, timed on pre-loaded batches, so the two numbers can be compared: the loader is not
the bottleneck when it delivers more rows/s than the step consumes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from embtables.datasets.criteo import SCHEMA
from embtables.datasets.layout import DENSE, LABEL, MISSING_INT, SPARSE, save_counts, write_json
from embtables.datasets.loader import CriteoData
from embtables.datasets.parts import ROW_GROUP_ROWS, PartWriter
from embtables.tablesets import CRITEO_KAGGLE_ROWS
from embtables.app.runinfo import machine


def make_data(out: Path, rows: int, scale: float, seed: int = 0) -> None:
    """A Criteo-kind folder: `rows` training rows in parts of 2^20 rows, counts.npz over full vocabularies."""
    rng = np.random.default_rng(seed)
    sizes = [max(1, round(n * scale)) for n in CRITEO_KAGGLE_ROWS]
    vocab = [rng.choice(1 << 32, size=n, replace=False).astype(np.int64) for n in sizes]
    counts = {c: (v, np.zeros(v.size, dtype=np.int64)) for c, v in zip(SPARSE, vocab)}
    part_rows = 1 << 20
    for k, start in enumerate(range(0, rows, part_rows)):
        with PartWriter(out / "train" / f"part-{k:05d}.parquet", SCHEMA) as w:
            for lo in range(start, min(start + part_rows, rows), ROW_GROUP_ROWS):
                n = min(ROW_GROUP_ROWS, rows - lo, start + part_rows - lo)
                cols = {LABEL: (rng.random(n) < 0.25).astype(np.int8)}
                for c in DENSE:
                    x = np.exp(rng.random(n) * np.log(1e5)).astype(np.int32) - 1
                    cols[c] = np.where(rng.random(n) < 0.2, MISSING_INT, x).astype(np.int32)
                for c, v in zip(SPARSE, vocab):
                    rank = np.minimum((np.exp(rng.random(n) * np.log(v.size + 1)) - 1).astype(np.int64), v.size - 1)
                    cols[c] = v[rank]
                    np.add.at(counts[c][1], rank, 1)
                w.write(pa.table(cols, schema=SCHEMA))
    save_counts(out / "counts.npz", {c: (v, cnt + 1) for c, (v, cnt) in counts.items()})  # +1: every id kept
    write_json(out / "summary.json", {"kind": "criteo", "synthetic": "loader benchmark", "rows_written": rows})


def time_loader(data: CriteoData, batch_size: int, **kw) -> tuple[float, int, int]:
    start, rows, batches = time.perf_counter(), 0, 0
    for b in data.batches("train", batch_size, **kw):
        rows += b.batch_size
        batches += 1
    return time.perf_counter() - start, rows, batches


def time_step(data: CriteoData, batch_size: int, steps: int) -> float:
    """Seconds per DLRM training step on pre-loaded batches."""
    import embtables as et
    from embtables.models import DLRM

    torch.manual_seed(0)
    model = DLRM(et.build_collection(data.tables(16), "full", backend="fbgemm"), dense_in=13)
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    batches = []
    for b in data.batches("train", batch_size, drop_last=True):
        batches.append(b)
        if len(batches) == steps + 2:
            break
    times = []
    for b in batches:
        t = time.perf_counter()
        loss_fn(model(b.dense, b.sparse), b.labels).backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return float(np.median(times[2:]))  # the first steps warm up allocators


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1 << 20, help="training rows generated")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of Criteo Kaggle's cardinalities")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=20, help="DLRM training steps timed (0: skip)")
    p.add_argument("--out", help="also write the markdown report here")
    args = p.parse_args()
    command = "python benchmarks/loader_throughput.py " + " ".join(sys.argv[1:])
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        make_data(Path(tmp), args.rows, args.scale)
        made = time.perf_counter() - t
        data = CriteoData(tmp)
        t = time.perf_counter()
        vocab_rows = sum(data.vocabulary(c).num_embeddings for c in SPARSE)
        vocab_s = time.perf_counter() - t
        configs = [dict(ids="index"), dict(ids="raw"), dict(ids="index", shuffle=True),
                   dict(ids="index", shuffle=True, workers=1), dict(ids="index", shuffle=True, workers=2)]
        rows_out = []
        for kw in configs:
            seconds, rows, batches = time_loader(data, args.batch_size, **kw)
            rows_out.append((kw, seconds, rows, batches))
        step = time_step(data, args.batch_size, args.steps) if args.steps else None
    load.append(os.getloadavg()[0])
    lines = [
        "# Criteo loader throughput", "",
        f"Command: `{command}`", "",
        f"Machine: {machine()}; load average {load[0]:.2f} at start, {load[1]:.2f} at end (other jobs shared the "
        "CPUs).", "",
        f"Data: {args.rows:,} generated training rows, Criteo Kaggle cardinalities x {args.scale} ({vocab_rows:,} "
        f"vocabulary rows over 26 features; building the vocabularies took {vocab_s:.1f} s, generating the data "
        f"{made:.0f} s). Batch size {args.batch_size}.", "",
        "| loader configuration | batches/s | rows/s |", "|---|---:|---:|",
    ]
    for kw, seconds, rows, batches in rows_out:
        desc = ", ".join(f"{k}={v!r}" for k, v in kw.items())
        lines.append(f"| `batches('train', {args.batch_size}, {desc})` | {batches / seconds:.1f} | {rows / seconds:,.0f} |")
    if step is not None:
        lines += ["", f"DLRM training step (full tables, fbgemm, fused row-wise Adagrad; Adam on the MLPs), batch "
                  f"{args.batch_size}, on pre-loaded batches: {step * 1e3:.0f} ms per step = "
                  f"{args.batch_size / step:,.0f} rows/s ({1 / step:.1f} steps/s, median of {args.steps})."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)


if __name__ == "__main__":
    main()
