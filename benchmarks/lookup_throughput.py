"""Training-step throughput (forward, backward, update) of embedding lookups on the 26 Criteo Kaggle tables.

    python benchmarks/lookup_throughput.py                       # the committed table (all configs)
    python benchmarks/lookup_throughput.py --scale 0.01 --steps 5  # quick look

Every config sees the same pre-drawn batches: B ids per table, one per bag (Criteo has one value per
feature), drawn Zipf(1)-like (P(rank k) ~ 1/k, ranks scattered over the table by a fixed permutation). One
step = lookup of all 26 features, loss = <output, fixed random tensor>, backward, optimizer update of the
rows touched. Samples/s is the median over repeats after `--warmup` untimed steps (a fresh process first
touches its lazily zeroed optimizer state, which costs page faults that steady training does not pay);
ratios are to the first config, measured in the same run. `--rounds` repeats the whole list (interleaved) and
keeps each config's best round.
Each config runs in a fresh process (`isolated`): measured one after another in one process, a config's speed
depended on what the earlier ones had allocated and freed (2 GB tables, optimizer state), by up to 2.4x.
`--methods` runs every method on both fast backends: `fbgemm` (FBGEMM's TBE, the method's remap and combine in
PyTorch around it) and `fused` (embtables' C++ kernels: lookups, combine and optimizer in one kernel per direction).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.app.runinfo import machine
from embtables.tablesets import criteo_kaggle_tables

Step = Callable[[KeyedJaggedTensor], None]


@dataclass
class Setup:
    tables: list[et.TableConfig]
    batch_size: int
    lr: float = 0.01


def zipf_ranks(n: int, batch_size: int, g: torch.Generator) -> torch.Tensor:
    """(batch_size,) ranks in [0, n) with P(rank k) ~ 1/(k + 1), by inverting the continuous log-uniform CDF."""
    u = torch.rand(batch_size, generator=g, dtype=torch.float64)
    return (torch.exp(u * torch.log(torch.tensor(n + 1.0))) - 1).long().clamp_(0, n - 1)


def draw_batches(tables: list[et.TableConfig], batch_size: int, count: int, seed: int) -> list[KeyedJaggedTensor]:
    g = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(t.num_embeddings, generator=g) for t in tables]
    batches = []
    for _ in range(count):
        ids = [perm[zipf_ranks(t.num_embeddings, batch_size, g)] for t, perm in zip(tables, perms)]
        lengths = torch.ones(len(tables) * batch_size, dtype=torch.long)
        batches.append(KeyedJaggedTensor([t.name for t in tables], torch.cat(ids), lengths=lengths))
    return batches


def _loss_weights(batch_size: int, width: int) -> torch.Tensor:
    return torch.randn(batch_size, width, generator=torch.Generator().manual_seed(1))


def per_table_embedding_bags(optimizer: str) -> Callable[[Setup], Step]:
    """What a user writes by hand: one nn.EmbeddingBag(sparse=True) per table and a sparse optimizer."""

    def make(s: Setup) -> Step:
        bags = torch.nn.ModuleList(
            [torch.nn.EmbeddingBag(t.num_embeddings, t.embedding_dim, mode="sum", sparse=True) for t in s.tables]
        )
        params = list(bags.parameters())
        opt = torch.optim.Adagrad(params, lr=s.lr) if optimizer == "adagrad" else torch.optim.SGD(params, lr=s.lr)
        target = _loss_weights(s.batch_size, sum(t.embedding_dim for t in s.tables))

        def step(kjt: KeyedJaggedTensor) -> None:
            jts = kjt.to_dict()
            out = torch.cat([b(jts[t.name].values(), jts[t.name].offsets()[:-1]) for b, t in zip(bags, s.tables)], 1)
            (out * target).sum().backward()
            opt.step()
            opt.zero_grad()

        return step

    return make


def torchrec_dmp(s: Setup) -> Step:
    """torchrec's production path: EmbeddingBagCollection sharded by DistributedModelParallel on one CPU rank
    (gloo), with row-wise Adagrad fused into backward (FBGEMM TBE underneath)."""
    import torch.distributed as dist
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("gloo", rank=0, world_size=1)
    ebc = EmbeddingBagCollection(
        tables=[EmbeddingBagConfig(name=t.name, num_embeddings=t.num_embeddings, embedding_dim=t.embedding_dim,
                                   feature_names=list(t.feature_names)) for t in s.tables],
        device=torch.device("meta"),
    )
    apply_optimizer_in_backward(RowWiseAdagrad, ebc.parameters(), {"lr": s.lr})

    class Wrap(torch.nn.Module):
        def __init__(self, e: torch.nn.Module) -> None:
            super().__init__()
            self.e = e

        def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
            return self.e(kjt).values()

    model = DistributedModelParallel(Wrap(ebc), device=torch.device("cpu"))
    target = _loss_weights(s.batch_size, sum(t.embedding_dim for t in s.tables))

    def step(kjt: KeyedJaggedTensor) -> None:
        (model(kjt) * target).sum().backward()

    return step


def ours(method: str, budget: float | None, backend: str, **options: object) -> Callable[[Setup], Step]:
    def make(s: Setup) -> Step:
        ebc = et.build_collection(s.tables, method, budget, backend=backend,
                                  optimizer=et.SparseOptimizer("rowwise_adagrad", lr=s.lr), **options)
        sparse = ebc.sparse_optimizer()
        dense_params = list(ebc.method.parameters())
        dense = torch.optim.Adagrad(dense_params, lr=s.lr) if dense_params else None
        target = _loss_weights(s.batch_size, sum(ebc.output_dims.values()))

        def step(kjt: KeyedJaggedTensor) -> None:
            (ebc(kjt).values() * target).sum().backward()
            for o in (sparse, dense):
                if o is not None:
                    o.step()
                    o.zero_grad()

        step.memory_bytes = ebc.memory_bytes()  # type: ignore[attr-defined]
        return step

    return make


BASELINE = "embtables full, fbgemm backend"
CONFIGS: dict[str, Callable[[Setup], Step]] = {
    "nn.EmbeddingBag x26, sparse Adagrad (by hand)": per_table_embedding_bags("adagrad"),
    "nn.EmbeddingBag x26, sparse SGD (by hand)": per_table_embedding_bags("sgd"),
    "torchrec DMP EmbeddingBagCollection, fused row-wise Adagrad": torchrec_dmp,
    "embtables full, torch backend": ours("full", None, "torch"),
    "embtables full, fbgemm backend": ours("full", None, "fbgemm"),
    "embtables full, fused backend": ours("full", None, "fused"),
    "embtables hash 0.1, fbgemm backend": ours("hash", 0.1, "fbgemm"),
    "embtables hash 0.01, fbgemm backend": ours("hash", 0.01, "fbgemm"),
    "embtables hash 0.01, torch backend": ours("hash", 0.01, "torch"),
}


def method_configs(budgets: tuple[float, ...] = (0.1, 0.01, 0.001)) -> dict[str, Callable[[Setup], Step]]:
    """Issue 3's table: every compressed method on fbgemm next to its plain-PyTorch composition."""
    from compositions import COMPOSITIONS, composition

    out: dict[str, Callable[[Setup], Step]] = {}
    for b in budgets:
        for m in COMPOSITIONS:
            out[f"embtables {m} {b}, fbgemm backend"] = ours(m, b, "fbgemm")
            out[f"embtables {m} {b}, fused backend"] = ours(m, b, "fused")
            out[f"plain PyTorch {m} {b} (nn.EmbeddingBag, sparse Adagrad)"] = composition(m, b)
    return out


def timed_rate(step: Callable[[object], None], batches: list, batch_size: int, steps: int, repeats: int,
               warmup: int) -> float:
    """Median samples/s of `step` over `repeats` x `steps` calls cycling through `batches`, after `warmup`
    untimed calls (a fresh process page-faults its lazily zeroed optimizer state and grows its allocator)."""
    for i in range(warmup):
        step(batches[i % len(batches)])
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            step(batches[(r * steps + i) % len(batches)])
        rates.append(steps * batch_size / (time.perf_counter() - t0))
    return statistics.median(rates)


def measure(make: Callable[[Setup], Step], setup: Setup, batches: list[KeyedJaggedTensor], steps: int, repeats: int,
            warmup: int) -> tuple[float, int | None]:
    step = make(setup)
    return timed_rate(step, batches, setup.batch_size, steps, repeats, warmup), getattr(step, "memory_bytes", None)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="scale the table rows (1.0 = real Criteo Kaggle)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--steps", type=int, default=50, help="steps per repeat")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=2, help="rounds over all configs; the best round is reported")
    p.add_argument("--baseline-rounds", type=int, default=0,
                   help="rounds of the full table on fbgemm, the targets' baseline (at least --rounds): its speed "
                        "varies most from process to process here, so it gets more chances to show its best")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated substrings: run only matching configs")
    p.add_argument("--methods", action="store_true", help="every method at budgets 0.1/0.01/0.001 and its "
                   "plain-PyTorch composition, after the full-table baselines")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: measure this one config
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tables = criteo_kaggle_tables(16, args.scale)
    every = {**CONFIGS, **(method_configs() if args.methods else {})}
    if args.child is not None:
        setup = Setup(tables, args.batch_size)
        batches = draw_batches(tables, args.batch_size, count=args.steps * args.repeats, seed=0)
        try:
            rate, mem = measure(every[args.child], setup, batches, args.steps, args.repeats, args.warmup)
            print(json.dumps({"rate": rate, "memory_bytes": mem}))
        except et.InfeasibleBudget as e:
            print(json.dumps({"infeasible": str(e)}))
        return
    configs = [k for k in every if not args.only or any(s in k for s in args.only.split(","))]
    full = et.full_bytes(tables)
    print(f"command: python {' '.join(sys.argv)}")
    print(f"machine: {machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"tables: 26 Criteo Kaggle, {sum(t.num_embeddings for t in tables):,} rows, dim 16, "
          f"{full / 1e9:.3f} GB; batch {args.batch_size}; median of {args.repeats} x {args.steps} steps after "
          f"{args.warmup} untimed; "
          f"each config in a fresh process, best of {args.rounds} interleaved rounds"
          f"{f' ({BASELINE}: {args.baseline_rounds})' if args.baseline_rounds > args.rounds else ''}\n")
    print("| config | samples/s | vs first | table bytes | of full |")
    print("|---|---|---|---|---|")
    # rounds interleave the configs, so a slow spell of the machine hits one round of several configs, and the
    # best round of each config is kept (other load can only slow a round down)
    child_argv = list(argv if argv is not None else sys.argv[1:])
    results: dict[str, list[dict]] = {name: [] for name in configs}
    for r in range(max(args.rounds, args.baseline_rounds)):
        for name in configs:
            if r < args.rounds or name == BASELINE:
                results[name].append(isolated(__file__, [*child_argv, "--child", name]))
    base = None
    rates: dict[str, float] = {}
    for name, rs in results.items():
        if "infeasible" in rs[0]:
            print(f"| {name} | infeasible: {rs[0]['infeasible']} | | | |", flush=True)
            continue
        rate, mem = max(r["rate"] for r in rs), rs[0]["memory_bytes"]
        rates[name] = rate
        base = base or rate
        mem_s = f"{mem:,} | {mem / full:.4g}" if mem is not None else f"{full:,} | 1"
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f}x | {mem_s} |", flush=True)
    if BASELINE in results and "rate" in results[BASELINE][0]:
        spread = sorted(r["rate"] for r in results[BASELINE])
        print(f"\n{BASELINE}: {len(spread)} fresh processes, samples/s min {spread[0]:,.0f}, median "
              f"{statistics.median(spread):,.0f}, max {spread[-1]:,.0f} (the ratios use the max)")
    if args.methods:
        print_method_summary(rates)


def isolated(script: str, argv: list[str]) -> dict:
    """Run `script argv` in a fresh Python process and return the JSON object its last stdout line holds."""
    out = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_method_summary(rates: dict[str, float]) -> None:
    """Issue 3's two targets as ratios of rates measured above, in the same run: each method on both fast
    backends, against the full table on FBGEMM (the production baseline), on the fused backend, and against its
    plain-PyTorch composition."""
    full = {be: rates.get(f"embtables full, {be} backend") for be in ("fbgemm", "fused")}  # fbgemm: BASELINE
    print("\n| method | budget | fbgemm samples/s | fused samples/s | fbgemm vs full fbgemm | fused vs full fbgemm "
          "| fused vs full fused | fbgemm vs plain PyTorch | fused vs plain PyTorch |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    seen = []
    for name in rates:
        parts = name.removeprefix("embtables ").split(", ")[0].split(" ")
        if name.startswith("embtables ") and len(parts) == 2 and parts not in seen:
            seen.append(parts)
    for method, budget in seen:
        r = {be: rates.get(f"embtables {method} {budget}, {be} backend") for be in ("fbgemm", "fused")}
        plain = rates.get(f"plain PyTorch {method} {budget} (nn.EmbeddingBag, sparse Adagrad)")

        def ratio(a: float | None, b: float | None) -> str:
            return f"{a / b:.2f}x" if a and b else "-"

        cells = [f"{v:,.0f}" if v else "-" for v in (r["fbgemm"], r["fused"])]
        cells += [ratio(r["fbgemm"], full["fbgemm"]), ratio(r["fused"], full["fbgemm"]), ratio(r["fused"], full["fused"]),
                  ratio(r["fbgemm"], plain), ratio(r["fused"], plain)]
        print(f"| {method} | {budget} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
