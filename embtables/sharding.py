"""`et.shard`: a model's collections sharded over processes by torchrec's `DistributedModelParallel` (DMP).

Every collection of the model must be on the `torchrec` store: its physical tables are then plain torchrec
modules, and torchrec's own planner and stock sharders place them (`embtables/stores/torchrec_store.py`). Remap
and combine run data-parallel, and their dense parameters (projections) are averaged like any dense parameter.

The planner may choose, per physical table:

    table_wise, row_wise, table_row_wise       always
    column_wise, table_column_wise             only with SGD or Adagrad

Column shards are left out under row-wise Adagrad because FBGEMM keeps one accumulator per row of each shard,
the mean of g^2 over that shard's columns: a different optimizer from the one a single process runs (the mean over
the whole row). Replicating a table (`data_parallel`) is left out because DMP moves a replicated table to a dense
kernel that drops the in-backward optimizer, leaving it to the dense one: the table would train with Adam.

DMP builds its shards with new weights. A collection built on the meta device (`build_collection(...,
backend="torchrec", device="meta")`) holds no table before: each rank draws only its own shards, the rows and
columns of the one-process draw with the same seed (`stores/row_init.py`), so no rank ever holds a whole table.
Otherwise `shard` copies each rank's shards out of the tables as they were (trained or loaded ones too), and
each rank holds the whole tables until then. Either way every rank must build the model alike (the same seed),
and training on N ranks with global batch B (B / N per rank, the loss a mean over each rank's rows) equals one
process with batch B, as torchrec divides the embedding gradients by N.

Example:
    >>> import torch.distributed as dist, embtables as et  # doctest: +SKIP
    >>> dist.init_process_group("gloo")  # doctest: +SKIP
    >>> model = DLRM(et.build_collection(tables, "qr", budget=0.1, backend="torchrec"), dense_in=13)  # doctest: +SKIP
    >>> dmp = et.shard(model)  # doctest: +SKIP
    >>> print(et.sharding_table(dmp))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.types import ShardingEnv

from embtables.collection import Collection
from embtables.config import PhysicalTable
from embtables.stores.torchrec_store import TorchrecStore, sharding_types, torchrec_name

RESERVED = 0.15  # of each device's memory, for what is not an embedding table (torchrec's default share)
SHARDERS = [EmbeddingBagCollectionSharder(), EmbeddingCollectionSharder()]  # torchrec's stock ones


def shard(
    model: nn.Module,
    device: torch.device | str | None = None,
    group: dist.ProcessGroup | None = None,
    types: Sequence[str] | None = None,
) -> DistributedModelParallel:
    """Shard every collection of `model` over the processes of `group` with torchrec's planner and DMP.

    Args:
        model: a model whose collections are all on the `torchrec` store, built alike on every rank.
        device: where the shards live; default CPU.
        group: the process group; default the world.
        types: the sharding types the planner may choose from (e.g. `["row_wise"]`); default every type that
            trains as one process does with the tables' optimizer (`sharding_types`).

    Returns:
        The DMP; call it as the model. The model's collections now hold their shards (`store.sharded`).

    Raises:
        ValueError: naming a collection on another store, when the model has none, or a sharding type in
            `types` that would not train as one process does.
    """
    device = torch.device(device or "cpu")
    group = group or dist.GroupMember.WORLD
    collections = [m for m in model.modules() if isinstance(m, Collection)]
    if not collections:
        raise ValueError("et.shard: the model holds no embtables collection")
    others = [f"{c.plan.method} on {c.store.name!r}" for c in collections if not isinstance(c.store, TorchrecStore)]
    if others:
        raise ValueError(f"et.shard: collections {others} are not on the torchrec store; build them with "
                         "backend='torchrec' so that torchrec can shard their tables")
    stores = [c.store for c in collections]
    # a store built on the meta device draws its shards after DMP; the others' tables are copied into the shards
    before = [None if s.deferred else (s.full_weights(), s.full_optimizer_state()) for s in stores]
    world = dist.get_world_size(group)
    topology = Topology(world_size=world, compute_device=device.type, local_world_size=world)
    plan = planner([(s.tables, s.optimizer.name) for s in stores], topology, types).collective_plan(
        model, SHARDERS, group)
    dmp = DistributedModelParallel(model, env=ShardingEnv.from_process_group(group), device=device, plan=plan,
                                   sharders=SHARDERS)
    for s, kept in zip(stores, before):
        if kept is None:
            s.init_shards()
            continue
        weights, state = kept
        s.load_weights(weights)
        if s.optimizer.name != "sgd":
            s.load_optimizer_state(state)
    return dmp


def planner(
    tables: Sequence[tuple[Sequence[PhysicalTable], str]],
    topology: Topology,
    types: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> EmbeddingShardingPlanner:
    """torchrec's planner, told which sharding types each physical table may take (`sharding_types`).

    Args:
        tables: (physical tables, the name of the optimizer that trains them), per collection.
        topology: the devices to plan for.
        types: as `shard`'s.
        batch_size: samples per rank per step, for the planner's cost model (default torchrec's).
    """
    constraints = {torchrec_name(t.name): ParameterConstraints(sharding_types=_allowed(optimizer, types))
                   for group, optimizer in tables for t in group}
    # a fixed share of each device kept for dense tensors and inputs: torchrec's default reservation estimates it
    # from the model and warns that the estimate is unreliable
    return EmbeddingShardingPlanner(topology=topology, constraints=constraints, batch_size=batch_size,
                                    storage_reservation=FixedPercentageStorageReservation(RESERVED))


def _allowed(optimizer: str, types: Sequence[str] | None) -> list[str]:
    fit = sharding_types(optimizer)
    if types is None:
        return list(fit)
    wrong = [t for t in types if t not in fit]
    if wrong or not types:
        raise ValueError(f"et.shard: sharding types {list(types)}: tables trained with {optimizer} shard as "
                         f"{list(fit)} (column shards keep row-wise Adagrad's accumulator per shard, and "
                         "data_parallel drops the tables' optimizer)")
    return list(types)


def sharding_table(dmp: DistributedModelParallel) -> list[tuple[str, str, list[int]]]:
    """(physical table, sharding type, ranks) of every table DMP placed, in the plan's order."""
    return [(table, p.sharding_type, list(p.ranks or []))
            for module in dmp.plan.plan.values() for table, p in module.items()]
