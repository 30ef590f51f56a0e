"""DLRM training samples/s: embtables' DLRM on each method next to torchrec's own `torchrec.models.dlrm.DLRM`.

    python benchmarks/dlrm_throughput.py                                  # the committed table
    python benchmarks/dlrm_throughput.py --tables synthetic --steps 10     # quick look

Every config trains the same DLRM (Criteo Kaggle reference sizes: D = 16, bottom 13-512-256-64-16, top
512-256-1) on the same pre-drawn batches (batch 4096 by default): dense features N(0,1), one id per feature per
sample drawn Zipf(1)-like over each table (as in lookup_throughput.py). One step = forward, BCE loss,
backward, Adam on the dense parameters and the embedding optimizer (row-wise Adagrad: fused into backward on
FBGEMM, a sparse optimizer on the torch backend). Samples/s is the median over repeats; ratios are to the
first config of the same run; each config runs in a fresh process, so none inherits another's allocations.
`--tables criteo` uses Criteo Kaggle's real cardinalities (33.8M rows,
2.16 GB); `--tables synthetic` the scaled ones of the built-in synthetic data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

import torch
from torchrec import KeyedJaggedTensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lookup_throughput import draw_batches, isolated, timed_rate  # noqa: E402

import embtables as et  # noqa: E402
from embtables.models import DLRM  # noqa: E402
from embtables.app.runinfo import machine  # noqa: E402
from embtables.tablesets import criteo_kaggle_tables  # noqa: E402

Batch = tuple[torch.Tensor, KeyedJaggedTensor, torch.Tensor]
Step = Callable[[Batch], None]
BOTTOM, TOP = (512, 256, 64, 16), (512, 256)


def ours(method: str, budget: float | None, backend: str = "fbgemm") -> Callable[[list[et.TableConfig]], Step]:
    def make(tables: list[et.TableConfig]) -> Step:
        ebc = et.build_collection(tables, method, budget, backend=backend,
                                  optimizer=et.SparseOptimizer("rowwise_adagrad", lr=0.05))
        model = DLRM(ebc, dense_in=13, bottom=BOTTOM, top=TOP)
        in_store = {id(p) for p in ebc.store.parameters()}
        dense = torch.optim.Adam([p for p in model.parameters() if id(p) not in in_store], lr=1e-3)
        sparse = ebc.sparse_optimizer()

        def step(b: Batch) -> None:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b[0], b[1]), b[2])
            dense.zero_grad()
            loss.backward()
            dense.step()
            if sparse is not None:
                sparse.step()
                sparse.zero_grad()

        return step

    return make


def torchrec_dlrm(sharded: bool) -> Callable[[list[et.TableConfig]], Step]:
    """torchrec's DLRM: unsharded (its EmbeddingBagCollection has dense weights, so every table gets a dense
    gradient and a dense optimizer step) or sharded by DistributedModelParallel on one CPU rank (FBGEMM with
    row-wise Adagrad fused into backward, as torchrec trains at scale)."""

    def make(tables: list[et.TableConfig]) -> Step:
        import torch.distributed as dist
        from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
        from torchrec.models.dlrm import DLRM as TorchrecDLRM

        configs = [EmbeddingBagConfig(name=t.name, num_embeddings=t.num_embeddings, embedding_dim=t.embedding_dim,
                                      feature_names=list(t.feature_names)) for t in tables]
        if not sharded:
            model = TorchrecDLRM(EmbeddingBagCollection(tables=configs), 13, list(BOTTOM), [*TOP, 1])
            dense = torch.optim.Adam([p for n, p in model.named_parameters() if "embedding_bags" not in n], lr=1e-3)
            emb = torch.optim.Adagrad([p for n, p in model.named_parameters() if "embedding_bags" in n], lr=0.05)
            opts = [dense, emb]
        else:
            from torchrec.distributed.model_parallel import DistributedModelParallel
            from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
            from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

            if not dist.is_initialized():
                os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
                os.environ.setdefault("MASTER_PORT", "29534")
                dist.init_process_group("gloo", rank=0, world_size=1)
            ebc = EmbeddingBagCollection(tables=configs, device=torch.device("meta"))
            apply_optimizer_in_backward(RowWiseAdagrad, ebc.parameters(), {"lr": 0.05})
            model = DistributedModelParallel(TorchrecDLRM(ebc, 13, list(BOTTOM), [*TOP, 1], dense_device=torch.device("cpu")),
                                             device=torch.device("cpu"))
            dense_params = [p for n, p in model.named_parameters() if "embedding_bags" not in n]
            opts = [torch.optim.Adam(dense_params, lr=1e-3)]

        def step(b: Batch) -> None:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(b[0], b[1]).squeeze(1), b[2])
            for o in opts:
                o.zero_grad()
            loss.backward()
            for o in opts:
                o.step()

        return step

    return make


CONFIGS: dict[str, Callable[[list[et.TableConfig]], Step]] = {
    "embtables DLRM, full, fbgemm": ours("full", None),
    "torchrec DLRM, EmbeddingBagCollection (unsharded, dense grads)": torchrec_dlrm(sharded=False),
    "torchrec DLRM, DistributedModelParallel (1 CPU rank, fused)": torchrec_dlrm(sharded=True),
    "embtables DLRM, full, torch backend": ours("full", None, "torch"),
    **{f"embtables DLRM, {m} 0.01, fbgemm": ours(m, 0.01) for m in ("hash", "multihash", "qr", "mixed_dim", "unified")},
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tables", choices=["criteo", "synthetic"], default="criteo")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated substrings: run only matching configs")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: measure this one config
    args = p.parse_args(argv)
    if args.tables == "criteo":
        tables = criteo_kaggle_tables(16)
    else:
        from embtables.datasets.synthetic import SynthCriteoConfig

        tables = [et.TableConfig(f"C{i + 1}", n, 16) for i, n in enumerate(SynthCriteoConfig().cardinalities())]
    if args.child is not None:
        print(json.dumps(measure_one(CONFIGS[args.child], tables, args)))
        return
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"tables: {args.tables}, {sum(t.num_embeddings for t in tables):,} rows, dim 16; batch {args.batch_size}; "
          f"median of {args.repeats} x {args.steps} steps after {args.warmup} untimed; each config in a fresh process\n")
    print("| config | samples/s | vs first |")
    print("|---|---|---|")
    base = None
    child_argv = list(argv if argv is not None else sys.argv[1:])
    for name in CONFIGS:
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        r = isolated(__file__, [*child_argv, "--child", name])
        if "infeasible" in r:
            print(f"| {name} | infeasible: {r['infeasible']} | |", flush=True)
            continue
        base = base or r["rate"]
        print(f"| {name} | {r['rate']:,.0f} | {r['rate'] / base:.2f}x |", flush=True)


def measure_one(make: Callable[[list[et.TableConfig]], Step], tables: list[et.TableConfig], args: argparse.Namespace) -> dict:
    """Median samples/s of one config over `args.repeats` x `args.steps` steps on pre-drawn batches."""
    kjts = draw_batches(tables, args.batch_size, count=args.steps * args.repeats, seed=0)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch_size, 13, generator=g), k,
                torch.randint(0, 2, (args.batch_size,), generator=g).float()) for k in kjts]
    try:
        step = make(tables)
    except et.InfeasibleBudget as e:
        return {"infeasible": str(e)}
    return {"rate": timed_rate(step, batches, args.batch_size, args.steps, args.repeats, args.warmup)}


if __name__ == "__main__":
    main()
