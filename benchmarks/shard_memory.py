"""Memory of `et.shard` per rank: tables built whole on every rank, then copied into the shards, against tables built
on the meta device, each rank drawing only its shards (`embtables/stores/row_init.py`); and of resuming from a
checkpoint of those tables, its file read whole by every rank against mapped (`load_tensor_file`, what `--resume`
does), each rank copying its shards' rows out.

    python benchmarks/shard_memory.py --scale 0.25 --out benchmarks/results/shard_memory.md

The 26 Criteo Kaggle tables (`full`, dim 16, the torchrec store, row-wise Adagrad) in a DLRM on two gloo processes
on this machine, table-wise as torchrec's planner places them. Per rank: the peak resident memory after `et.shard`,
its resident memory before building the model, and the bytes of the shards it holds.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import embtables as et  # noqa: E402
from embtables.app.distributed import Ranks, launch  # noqa: E402
from embtables.app.runinfo import machine, peak_rss_bytes, versions  # noqa: E402
from embtables.checkpoint import load_collection_state, load_tensor_file  # noqa: E402
from embtables.files import atomic_write  # noqa: E402
from embtables.models import DLRM  # noqa: E402
from embtables.tablesets import criteo_kaggle_tables  # noqa: E402

MB = 1 << 20


def _rank(scale: float, how: str, out: str) -> None:
    """One rank of configuration `how`: "cpu" or "meta" (where the tables are built), or "read" / "mapped" (built
    on meta, then resumed from the checkpoint the "meta" run saved)."""
    start = peak_rss_bytes()
    torch.manual_seed(0)
    tables = criteo_kaggle_tables(16, scale)
    device = "cpu" if how == "cpu" else "meta"
    model = DLRM(et.build_collection(tables, "full", None, backend="torchrec", device=device), dense_in=13)
    et.shard(model)
    store = model.embeddings.store
    checkpoint = Path(out, "collection.pt")
    if how in ("read", "mapped"):
        state = load_tensor_file(checkpoint, "collection") if how == "mapped" else \
            torch.load(checkpoint, map_location="cpu", weights_only=True)
        load_collection_state(model.embeddings, state, str(checkpoint))
    held = sum(v.numel() * v.element_size() for table in store._local_shards("weights") for _, v in table)
    rank = Ranks.current().rank
    Path(out, f"{how}-{rank}.json").write_text(json.dumps({"start": start, "peak": peak_rss_bytes(), "held": held}))
    if how == "meta":
        et.save_collection(model.embeddings, checkpoint)  # for the resumed runs (rank 0 gathers and writes)
        Path(out, f"saved-{rank}.json").write_text(json.dumps({"start": start, "peak": peak_rss_bytes(), "held": held}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.25, help="rows of each table times this")
    parser.add_argument("--out", type=Path, default=None, help="write the table here (markdown)")
    args = parser.parse_args()
    tables = criteo_kaggle_tables(16, args.scale)
    total = sum(t.num_embeddings * t.embedding_dim * 4 for t in tables)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for key, how in (("cpu", "built whole, copied into the shards"), ("meta", "built on meta, shards drawn"),
                         ("read", "resumed: file read whole"), ("mapped", "resumed: file mapped (--resume)")):
            launch(2, "cpu", _rank, args.scale, key, d)  # one configuration at a time
            done = [(key, how)] + ([("saved", "built on meta, then a checkpoint written")] if key == "meta" else [])
            for (k, what), r in ((kh, r) for kh in done for r in range(2)):
                m = json.loads(Path(d, f"{k}-{r}.json").read_text())
                rows.append(f"| {what} | {r} | {m['held'] / MB:,.0f} | {m['start'] / MB:,.0f} | {m['peak'] / MB:,.0f} | "
                            f"{(m['peak'] - m['start']) / MB:,.0f} |")
    v = versions()
    text = "\n".join([
        "# Memory of et.shard per rank: whole tables on every rank against tables drawn per shard", "",
        f"Machine: {machine()}; torch {v.get('torch')}, torchrec {v.get('torchrec')}, "
        f"fbgemm-gpu-cpu {v.get('fbgemm-gpu-cpu')}.",
        f"The 26 Criteo Kaggle tables at scale {args.scale} ({sum(t.num_embeddings for t in tables):,} rows, dim 16: "
        f"{total / MB:,.0f} MB of fp32 tables), `full` on the torchrec store in a DLRM, two gloo processes, "
        "torchrec's planner (table-wise).", "",
        f"Command: `python benchmarks/shard_memory.py --scale {args.scale} --out benchmarks/results/shard_memory.md`",
        "", "| tables | rank | shards held (MB) | RSS before the model (MB) | peak RSS after et.shard (and load) (MB) "
        "| growth (MB) |",
        "|---|---:|---:|---:|---:|---:|", *rows, ""])
    print(text)
    if args.out:
        atomic_write(args.out, lambda tmp: Path(tmp).write_text(text))


if __name__ == "__main__":
    main()
