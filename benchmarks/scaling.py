"""A plan on paper for Criteo 1TB: each method's physical tables, as torchrec's own planner would shard them.

No training and no table is allocated: `et.plan` solves each method's physical tables, they become one
`EmbeddingBagConfig` each in an `EmbeddingBagCollection` on the meta device, and torchrec's
`EmbeddingShardingPlanner` (its default enumerator, cost model and proposers, given the constraints `et.shard`
gives it: `embtables.sharding.planner`) places them on a topology of 8 and 64 GPUs of 80 GB (8 per host).
Under row-wise Adagrad `et.shard` lets a table go table-, row- or table-row-wise, never replicated or split by
columns (`embtables/sharding.py` says why), so every table's lookups cross the all-to-all. Per method and budget the table gives: the physical tables, the bytes per rank
(tables + row-wise Adagrad state, the fullest rank; plus the method's dense state, replicated), the sharding types
the planner chose, and the all-to-all volume per sample, from one remapped batch of the method's own remap:
ids sent to the tables' owners (8 bytes each) and pooled rows sent back (4 bytes per float; a row-wise sharded table
sends one partial sum per shard), forward (backward sends the same pooled volume back as gradients). "Why split"
says, of the tables the planner split over several GPUs, how many are larger than one GPU's share (80 GB less the
reserve) and how many it split only because its cost model found that faster (spreading their lookups).

Criteo 1TB: the 26 vocabularies of the MLPerf DLRM benchmark (capped at 40M rows), dim 128. `optembed` learns its
plan: its line is the stand-in plan of its exported shape (`stand_in_options`: half widths, one kept fraction), not
a learned one. Training on GPUs this way is `embtables train --backend torchrec --nproc N` (tested on CPU processes).

    python benchmarks/scaling.py --out benchmarks/results/scaling.md
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig  # noqa: E402
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder  # noqa: E402
from torchrec.distributed.planner import Topology  # noqa: E402

import embtables as et  # noqa: E402
from embtables.app.runinfo import machine, versions  # noqa: E402
from embtables.bags import Bags  # noqa: E402
from embtables.files import atomic_write  # noqa: E402
from embtables.methods.optembed import stand_in_options  # noqa: E402
from embtables.sharding import RESERVED, planner  # noqa: E402
from embtables.stores.torchrec_store import torchrec_name  # noqa: E402

# MLPerf DLRM's Criteo Terabyte vocabularies with --max-ind-range 40000000 (the DLRM reference's ln_emb)
CRITEO_1TB = (39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10, 2208, 11938,
              155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36)
DIM, HBM, PER_HOST, SAMPLES = 128, 80 * 2**30, 8, 64
FP32, ID = 4, 8


LIMITS = [
    "## Why these shardings, and what limits scaling",
    "",
    "- **On 8 GPUs, table-wise wherever a table fits one GPU**: a whole table on one rank sends each sample one "
    "pooled row per feature, the least all-to-all a sharded table can send. At dim 128 no table is larger than one "
    "GPU's share (the 40M-row tables hold ~19 GiB each with their Adagrad state), so every split in the "
    "\"why split\" column is the planner's cost model spreading a table's lookups (\"by cost\"), never room.",
    "- **On 64 GPUs, table-row-wise everywhere**: `et.shard` does not let the planner replicate a table (a "
    "replica leaves torchrec's fused optimizer for the dense one) nor split one by columns (that changes row-wise "
    "Adagrad), and with those out its cost model spreads every table over the 8 GPUs of a host. Each sample then "
    "gets a partial sum from each of 8 shards per feature: about 8x the all-to-all of 8 GPUs (e.g. full 13.5 kB -> "
    "106.7 kB). torchrec's default planner would instead replicate the small tables (no all-to-all for them): "
    "exactness under row-wise Adagrad costs communication at this scale.",
    "- **Communication** is what compression changes least: methods that keep one lookup per feature (hash, "
    "multihash, optembed) send the full tables' volume or less, qr sends one more lookup per split table, and "
    "`unified`, one table that can only be split by rows, sends its 52 pooled chunks per sample as partial sums on "
    "8 GPUs already (107 kB, 8x the full tables' table-wise volume).",
    "- **Dense state** limits `optembed` and `mixed_dim`: the kept-id map and the projections are replicated on "
    "every rank (the dense state column), outside the planner's view.",
    "- **Remap cost** is per sample and data-parallel (hashing, digits, maps), so it scales with the ranks; it "
    "does not move bytes between them.",
    "- **Room** stops mattering below budget 0.1: every method then fits on one GPU (fullest rank on 8 GPUs at 0.1: "
    "at most 2.2 GiB), and sharding buys throughput.",
]


def tables(dim: int = DIM) -> list[et.TableConfig]:
    return [et.TableConfig(f"C{i + 1}", n, dim) for i, n in enumerate(CRITEO_1TB)]


def method_plan(logical: list[et.TableConfig], method: str, budget: float | None) -> et.Plan:
    options = stand_in_options(logical, budget * et.full_bytes(logical)) if et.get_method(method).learned else {}
    return et.plan(logical, method, budget, backend="fbgemm", **options)


def traffic(plan: et.Plan, logical: list[et.TableConfig]) -> tuple[list[float], list[float]]:
    """Per physical table: ids per sample and pooled floats per sample the store reads, from one remapped batch of
    SAMPLES samples with one id per feature (Criteo's), drawn uniformly in range."""
    method = et.get_method(plan.method).from_plan(plan, None)  # its state only: no table is allocated
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randint(0, t.num_embeddings, (SAMPLES,), generator=g) for t in logical])
    F = len(logical)
    bags = Bags(values, torch.arange(F * SAMPLES + 1), None, [SAMPLES] * F, SAMPLES, 1)
    phys = method.remap(bags).physical
    ids, floats = [0.0] * len(plan.physical_tables), [0.0] * len(plan.physical_tables)
    for lookup, n in zip(plan.lookups, phys.ids_per_feature):
        t = plan.physical_tables[lookup.table]
        ids[lookup.table] += n / SAMPLES
        bags_per_sample = phys.batch_size / SAMPLES if lookup.pooled else n / SAMPLES  # stacked/singleton bags
        floats[lookup.table] += bags_per_sample * t.embedding_dim
    return ids, floats


def shard(plan: et.Plan, world: int) -> dict[str, object]:
    """torchrec's planner on `plan`'s physical tables: per-rank bytes, sharding types, all-to-all bytes per sample."""
    configs, features = [], {}
    for lk in plan.lookups:
        features.setdefault(lk.table, []).append(torchrec_name(lk.name))
    for i, t in enumerate(plan.physical_tables):
        configs.append(EmbeddingBagConfig(name=torchrec_name(t.name), embedding_dim=t.embedding_dim,
                                          num_embeddings=t.num_embeddings, feature_names=features[i]))
    ebc = EmbeddingBagCollection(tables=configs, device=torch.device("meta"))
    topology = Topology(world_size=world, compute_device="cuda", hbm_cap=HBM, local_world_size=min(world, PER_HOST))
    sharded = planner([(plan.physical_tables, "rowwise_adagrad")], topology, batch_size=8192).plan(
        ebc, [EmbeddingBagCollectionSharder()])
    per_rank = [0] * world
    kinds: Counter[str] = Counter()
    shards_of, too_big, by_cost = {}, 0, 0
    share = HBM * (1 - RESERVED)  # what one GPU offers the tables
    for name, option in sharded.plan[""].items():  # type: ignore[union-attr]
        kinds[option.sharding_type] += 1
        specs = option.sharding_spec.shards  # never data_parallel: et.shard's constraints
        shards_of[name] = len(specs) if option.sharding_type in ("row_wise", "table_row_wise") else 1
        if len({s.placement.rank() for s in specs}) > 1:
            t = next(c for c in configs if c.name == name)
            whole = t.num_embeddings * (t.embedding_dim + 1) * FP32  # weights + row-wise Adagrad state
            too_big, by_cost = too_big + (whole > share), by_cost + (whole <= share)
        for s in specs:
            rows, cols = s.shard_sizes
            per_rank[s.placement.rank()] += rows * cols * FP32 + rows * FP32  # weights + row-wise Adagrad state
    ids, floats = traffic(plan, list(plan.tables))
    shards = [shards_of[torchrec_name(t.name)] for t in plan.physical_tables]
    a2a = sum(i * ID + f * FP32 * k for k, i, f in zip(shards, ids, floats))
    why = ", ".join(x for x in (f"{too_big} larger than a GPU" if too_big else "",
                                f"{by_cost} by cost" if by_cost else "") if x) or "-"
    return {"max_rank": max(per_rank), "kinds": dict(kinds), "a2a": a2a, "why": why}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", default="1,0.1,0.01,0.001")
    p.add_argument("--worlds", default="8,64")
    p.add_argument("--methods", default=",".join(m for m in et.list_methods() if m != "full"))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    logging.getLogger("torchrec").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    logical = tables()
    worlds = [int(w) for w in args.worlds.split(",")]
    lines = ["# Criteo 1TB on paper: physical tables as torchrec's planner shards them", "",
             f"Command: `python benchmarks/scaling.py --budgets {args.budgets} --worlds {args.worlds}"
             + (f" --out {args.out}`" if args.out else "`"), "",
             f"26 tables (MLPerf vocabularies capped at 40M, {sum(CRITEO_1TB):,} rows), dim {DIM}: "
             f"{et.full_bytes(logical) / 2**30:,.1f} GiB in fp32. Topology: 80 GB GPUs, {PER_HOST} per host; planner "
             f"batch 8192 per rank; plans on the fbgemm store's layout. Machine: {machine()}; torchrec "
             f"{versions().get('torchrec')}. Bytes per rank: tables + row-wise Adagrad state on the fullest rank "
             "(+ dense state, replicated). All-to-all: forward bytes per sample (ids out, pooled rows back).", "",
             "| method | budget | physical tables | dense state | " + " | ".join(
                 f"{w} GPUs: fullest rank, GiB | {w} GPUs: shardings | {w} GPUs: why split | "
                 f"{w} GPUs: all-to-all per sample" for w in worlds) + " |",
             "|---|---|---|---|" + "---|---|---|---|" * len(worlds)]
    cells = [("full", None)] + [(m, float(b)) for m in args.methods.split(",") for b in args.budgets.split(",")
                                if float(b) < 1]
    for method, budget in cells:
        try:
            plan = method_plan(logical, method, budget)
        except et.InfeasibleBudget as e:
            lines.append(f"| {method} | {budget:g} | infeasible (smallest {e.smallest_budget:.3g}) |")
            print(lines[-1], flush=True)
            continue
        dense = et.get_method(plan.method).from_plan(plan, None).state_bytes()
        row = [method, "1" if budget is None else f"{budget:g}", str(len(plan.physical_tables)), f"{dense:,} B"]
        for w in worlds:
            r = shard(plan, w)
            row += [f"{r['max_rank'] / 2**30:.2f}", ", ".join(f"{k} {v}" for k, v in sorted(r["kinds"].items())),
                    str(r["why"]), f"{r['a2a']:,.0f} B"]
        lines.append("| " + " | ".join(row) + " |")
        print(lines[-1], flush=True)
    lines += ["", *LIMITS]
    if args.out:
        atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


if __name__ == "__main__":
    main()
