"""The `torchrec` backend: the physical tables held in torchrec's own modules, so that torchrec's
`DistributedModelParallel` (DMP) shards them with its stock planner and sharders (`embtables.sharding`).

    pooled lookups    one `torchrec.EmbeddingBagCollection` (EBC): one `EmbeddingBagConfig` per physical table,
                      its feature names the lookups that read it (a table read by several lookups, unified's one
                      table or qr's partitions, is one config read by several features), sum pooling, weighted
    per-id lookups    one `torchrec.EmbeddingCollection` (EC), one `EmbeddingConfig` per table

The method's remap builds the physical ids and its combine the logical output around these modules, as on every
store; torchrec sees only plain tables. This is the route torchrec's own feature-processed collections take (a
transform in front of an unchanged EBC), but without a module type of our own, so no sharder of our own either.

The optimizer is attached to the tables' weights as torchrec expects it (`_apply_optimizer_in_backward`, with
torchrec's `RowWiseAdagrad`, or torch's `Adagrad`/`SGD`): DMP reads it to build FBGEMM's fused optimizer for
each shard. Unsharded (one process, no DMP) the same optimizer runs in backward on the dense gradient torchrec's
unsharded modules form (a pass over each physical table per step): this store is the way to several processes,
and one process trains faster on `fbgemm` or `fused`. The EBC is weighted so that per-id weights (the user's, or
a method's, e.g. OptEmbed's pruned ids) reach it; bags without weights get ones.

Once sharded, no rank holds a whole table: `weights()` refuses, and checkpoints go through `full_weights()` and
`load_weights()`, collectives that gather to rank 0 and copy each rank's shards out of whole tensors.

Tables are drawn in seeded blocks of rows (`row_init.py`), so any shard can be drawn alone. Built on the meta
device (`et.build_collection(..., backend="torchrec", device="meta")`) the store allocates no table: `et.shard`
then has each rank draw only its own shards (`init_shards`), equal to those rows of the one-process draw with the
same seed, so tables larger than one process's memory can be sharded. Until then it refuses lookups and weights.

Devices: CPU; CUDA with FBGEMM's CUDA build (the fbgemm store's check); meta, until sharded.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec import (
    EmbeddingBagCollection, EmbeddingBagConfig, EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor,
)
from torchrec.modules.embedding_configs import PoolingType
from torchrec.optim import RowWiseAdagrad

from embtables.bags import Bags
from embtables.config import Lookup, PhysicalTable, SparseOptimizer
from embtables.stores.base import Store
from embtables.stores.fbgemm_store import _refuse
from embtables.stores.row_init import fill_rows


ALWAYS = ("table_wise", "row_wise", "table_row_wise")
COLUMNS = ("column_wise", "table_column_wise")


def sharding_types(optimizer: str) -> tuple[str, ...]:
    """The sharding types under which a table trained with `optimizer` trains as on one process: column shards
    only without row-wise Adagrad (FBGEMM keeps its accumulator per row of each shard, the mean of g^2 over the
    shard's columns only), and never `data_parallel` (DMP moves a replicated table to a dense kernel that drops the
    in-backward optimizer, leaving the table to whatever optimizer steps the dense parameters)."""
    return ALWAYS if optimizer == "rowwise_adagrad" else ALWAYS + COLUMNS


def torchrec_name(name: str) -> str:
    """A physical table's or lookup's name as torchrec takes it: module and parameter names cannot hold "/"."""
    return name.replace("/", "_")


class TorchrecStore(Store):
    name = "torchrec"
    dim_multiple = 4  # DMP's kernels are FBGEMM's table-batched ones, which take fp32 dims in multiples of 4

    def __init__(
        self, tables: Sequence[PhysicalTable], lookups: Sequence[Lookup], optimizer: SparseOptimizer, device: torch.device
    ) -> None:
        super().__init__(tables, lookups, optimizer, device)
        self.deferred = torch.device(device).type == "meta"  # no table allocated until et.shard draws the shards
        if not self.deferred:
            _refuse(torch.device(device))
        names = [torchrec_name(t.name) for t in tables]
        if len(set(names)) != len(names):
            raise ValueError(f"torchrec backend: physical table names {[t.name for t in tables]} collide once '/' "
                             "becomes '_'")
        pooled = [lk for lk in lookups if lk.pooled]
        rows = [lk for lk in lookups if not lk.pooled]
        self._pooled_keys = [torchrec_name(lk.name) for lk in pooled]
        self._row_keys = [torchrec_name(lk.name) for lk in rows]
        # where each physical table lives: ("ebc" | "ec", its torchrec name)
        self._where = [("ebc" if any(lk.table == i for lk in pooled) else "ec", n) for i, n in enumerate(names)]

        def features(group: list[Lookup], table: int) -> list[str]:
            return [torchrec_name(lk.name) for lk in group if lk.table == table]

        used = lambda group: sorted({lk.table for lk in group})  # noqa: E731
        # torchrec draws its own initial tables from torch's generator: kept out of it, so that the model around the
        # store draws the same whatever the device (meta allocates and draws nothing); the tables are drawn below
        self._init_seed = _seed(None)
        with torch.random.fork_rng(devices=[]):
            self.ebc = EmbeddingBagCollection(
                tables=[EmbeddingBagConfig(num_embeddings=tables[t].num_embeddings,
                                           embedding_dim=tables[t].embedding_dim, name=names[t],
                                           feature_names=features(pooled, t), pooling=PoolingType.SUM)
                        for t in used(pooled)],
                is_weighted=True, device=torch.device(device),
            ) if pooled else None
            self.ec = EmbeddingCollection(
                tables=[EmbeddingConfig(num_embeddings=tables[t].num_embeddings, embedding_dim=tables[t].embedding_dim,
                                        name=names[t], feature_names=features(rows, t)) for t in used(rows)],
                device=torch.device(device),
            ) if rows else None
        self._problem: str | None = None  # `sharding_problem`, found once
        cls, kwargs = _optimizer(optimizer)
        _apply_optimizer_in_backward(cls, [p for m in (self.ebc, self.ec) if m is not None for p in m.parameters()],
                                     kwargs)
        self._draw()

    @property
    def sharded(self) -> bool:
        """Whether DMP replaced the modules by its sharded ones (each rank then holds only its shards)."""
        return any(m is not None and not isinstance(m, (EmbeddingBagCollection, EmbeddingCollection))
                   for m in (self.ebc, self.ec))

    def sharding_problem(self) -> str | None:
        """Why training these shards would differ from one process (None when it would not): a sharding type
        outside `sharding_types`, as plain DMP's planner may choose (`et.shard` never does)."""
        if self._problem is None:
            plans = {}
            for m in self._modules_of().values():
                plans.update({t: p.sharding_type for t, p in getattr(m, "module_sharding_plan", {}).items()})
            fit = sharding_types(self.optimizer.name)
            wrong = {t: kind for t, kind in plans.items() if kind not in fit}
            self._problem = "" if not wrong else (
                f"torchrec backend: tables sharded as {wrong} would not train as on one process with "
                f"{self.optimizer.name} (it allows {list(fit)}); shard the model with et.shard(model), which "
                "gives torchrec's planner only those")
        return self._problem or None

    def _check_allocated(self) -> None:
        if self.deferred and not self.sharded:
            raise RuntimeError("torchrec backend: the tables were built on the meta device and are not allocated "
                               "yet; et.shard(model) allocates and draws each rank's shards")

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module's signature
        if not (self.deferred and not self.sharded):
            return super()._apply(fn, recurse)
        # moving the model (e.g. .to("cpu")) leaves the meta tables alone: et.shard allocates them
        held = {n: self._modules[n] for n in ("ebc", "ec") if self._modules.get(n) is not None}
        self._modules.update(dict.fromkeys(held))
        try:
            return super()._apply(fn, recurse)
        finally:
            self._modules.update(held)

    def pooled(self, bags: Bags) -> Tensor:
        self._check_allocated()
        weights = bags.per_sample_weights
        if weights is None:
            weights = torch.ones(bags.values.numel(), device=bags.values.device)
        kjt = KeyedJaggedTensor(keys=self._pooled_keys, values=bags.values, offsets=bags.offsets, weights=weights,
                                stride=bags.batch_size)
        by_key = self.ebc(kjt).to_dict()  # sharded: waits for the output all-to-all here
        return torch.cat([by_key[k] for k in self._pooled_keys], dim=1)  # (B, sum D) in lookup order

    def rows(self, bags: Bags) -> Tensor:
        self._check_allocated()
        kjt = KeyedJaggedTensor(keys=self._row_keys, values=bags.values, offsets=bags.offsets, stride=bags.batch_size)
        by_key = self.ec(kjt)
        return torch.cat([by_key[k].values() for k in self._row_keys])  # (N_rows, D) in lookup order

    def _modules_of(self) -> dict[str, nn.Module | None]:
        return {"ebc": self.ebc, "ec": self.ec}

    def _params(self) -> list[Tensor]:
        """Per physical table, its weight: a tensor unsharded, a ShardedTensor (this rank's shards) sharded."""
        states = {g: m.state_dict() for g, m in self._modules_of().items() if m is not None}
        member = {"ebc": "embedding_bags", "ec": "embeddings"}
        return [states[g][f"{member[g]}.{n}.weight"] for g, n in self._where]

    def weights(self) -> list[Tensor]:
        self._check_allocated()
        if self.sharded:
            raise RuntimeError("torchrec backend: the tables are sharded over ranks, so no rank holds them whole; "
                               "use full_weights() (a collective) or the checkpoint functions")
        return [w.detach() for w in self._params()]

    def weight_bytes(self) -> int:
        return sum(t.bytes for t in self.tables)  # the same sharded or not: all ranks' shards together

    def optimizer_state(self) -> list[Tensor | None]:
        if self.sharded:
            raise RuntimeError("torchrec backend: the optimizer state is sharded over ranks; use "
                               "full_optimizer_state() (a collective) or the checkpoint functions")
        if self.optimizer.name == "sgd":
            return [None] * len(self.tables)
        params = {}
        for g, m in self._modules_of().items():
            if m is not None:
                params.update({(g, name.split(".")[1]): p for name, p in m.named_parameters()})
        sums = [params[w]._in_backward_optimizers[0].state[params[w]]["sum"] for w in self._where]
        return [s.view(-1) if self.optimizer.name == "rowwise_adagrad" else s for s in sums]  # row-wise: (rows, 1)

    def _state_shapes(self) -> list[tuple[int, ...]]:
        rowwise = self.optimizer.name == "rowwise_adagrad"
        return [(t.num_embeddings,) if rowwise else (t.num_embeddings, t.embedding_dim) for t in self.tables]

    def _local_shards(self, what: str) -> list[list[tuple[tuple[int, ...], Tensor]]]:
        """Per physical table, this rank's shards of its weight or optimizer state: (offsets, view) pairs.

        A rank holding no shard of a table has none of its state (torchrec's fused optimizer lists only the
        tables it updates), so shards are read per rank rather than through ShardedTensor.gather, which needs
        every rank to hold the tensor."""
        if what == "weights":
            sharded = self._params()
        else:
            state: dict[str, Tensor] = {}
            for m in self._modules_of().values():
                if m is not None:
                    for per_param in m.fused_optimizer.state_dict()["state"].values():
                        state.update(per_param)
            sharded = [state.get(f"{n}.momentum1") for _, n in self._where]
        return [[] if t is None else [(tuple(sh.metadata.shard_offsets), sh.tensor) for sh in t.local_shards()]
                for t in sharded]

    def full_weights(self) -> list[Tensor] | None:
        if not self.sharded:
            return self.weights()
        return _gather(self._local_shards("weights"), [(t.num_embeddings, t.embedding_dim) for t in self.tables])

    def full_optimizer_state(self) -> list[Tensor | None] | None:
        if not self.sharded:
            return self.optimizer_state()
        if self.optimizer.name == "sgd":
            return [None] * len(self.tables)
        return _gather(self._local_shards("state"), self._state_shapes())

    @torch.no_grad()
    def load_weights(self, weights: Sequence[Tensor]) -> None:
        if not self.sharded:
            return super().load_weights(weights)
        _scatter(self._local_shards("weights"), weights, [(t.num_embeddings, t.embedding_dim) for t in self.tables],
                 self.tables)

    @torch.no_grad()
    def load_optimizer_state(self, states: Sequence[Tensor | None]) -> None:
        if not self.sharded:
            return super().load_optimizer_state(states)
        if self.optimizer.name != "sgd":
            _scatter(self._local_shards("state"), states, self._state_shapes(), self.tables)

    @torch.no_grad()
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw every table in seeded row blocks (`row_init.py`) from one seed taken from `generator` (default
        torch's), the same on every rank that seeded alike; a store on the meta device only keeps the seed."""
        if self.sharded:
            raise RuntimeError("torchrec backend: reset the tables before sharding (DMP) or load them with "
                               "load_weights()")
        self._init_seed = _seed(generator)
        self._draw()

    def _draw(self) -> None:
        if not self.deferred:
            for i, (t, w) in enumerate(zip(self.tables, self._params())):
                fill_rows(w, self._init_seed, i, t)

    @torch.no_grad()
    def init_shards(self) -> None:
        """Draw this rank's shards of every table: the rows and columns of the one-process draw they hold."""
        if not self.sharded:
            raise RuntimeError("torchrec backend: init_shards() draws the shards of a sharded store; et.shard first")
        for i, (t, shards) in enumerate(zip(self.tables, self._local_shards("weights"))):
            for offsets, view in shards:
                fill_rows(view, self._init_seed, i, t, *offsets)


def _seed(generator: torch.Generator | None) -> int:
    """The tables' init seed: one draw from `generator` (default torch's), alike on ranks seeded alike."""
    return int(torch.randint(0, 1 << 62, (1,), generator=generator))


def _optimizer(o: SparseOptimizer) -> tuple[type[torch.optim.Optimizer], dict[str, float]]:
    """The optimizer class and arguments DMP turns into FBGEMM's EXACT_ROWWISE_ADAGRAD, EXACT_ADAGRAD, EXACT_SGD."""
    if o.name == "rowwise_adagrad":
        return RowWiseAdagrad, {"lr": o.lr, "eps": o.eps}
    if o.name == "adagrad":
        return torch.optim.Adagrad, {"lr": o.lr, "eps": o.eps}
    return torch.optim.SGD, {"lr": o.lr}


def _where(offsets: tuple[int, ...], shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(o, o + n) for o, n in zip(offsets, shape))


def _gather(shards: list[list[tuple[tuple[int, ...], Tensor]]], shapes: list[tuple[int, ...]]) -> list[Tensor] | None:
    """Whole tensors from every rank's shards: a collective; rank 0 gets them, the other ranks None.

    One table at a time, as flat tensors (`dist.gather`), so that rank 0 holds the whole tables and one table's
    pieces from every rank, never every rank's pieces of every table at once (which gathering pickled objects
    did: 2.5 GB on rank 0 for 515 MB of tables, `benchmarks/shard_memory.py`)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    layouts: list = [None] * world  # every rank's (offsets, shape) pieces per table: small
    dist.all_gather_object(layouts, [[(o, tuple(t.shape)) for o, t in table] for table in shards])
    whole = [torch.zeros(shape) for shape in shapes] if rank == 0 else None
    for i in range(len(shapes)):
        sizes = [sum(math.prod(shape) for _, shape in layout[i]) for layout in layouts]
        n = max(sizes)
        if n == 0:
            continue
        mine = torch.zeros(n)
        if sizes[rank]:
            mine[: sizes[rank]] = torch.cat([t.detach().reshape(-1).cpu() for _, t in shards[i]])
        pieces = [torch.empty(n) for _ in range(world)] if rank == 0 else None
        dist.gather(mine, pieces, dst=0)
        if whole is not None and pieces is not None:
            for layout, flat in zip(layouts, pieces):
                at = 0
                for offsets, shape in layout[i]:
                    size = math.prod(shape)
                    whole[i][_where(offsets, shape)] = flat[at : at + size].view(shape)
                    at += size
    return whole


def _scatter(shards: list[list[tuple[tuple[int, ...], Tensor]]], whole: Sequence[Tensor | None],
             shapes: list[tuple[int, ...]], tables: Sequence[PhysicalTable]) -> None:
    """Copy the parts of whole tensors that this rank holds into its shards."""
    if len(whole) != len(shards):
        raise ValueError(f"{len(whole)} tensors for {len(shards)} physical tables")
    for table, w, shape, t in zip(shards, whole, shapes, tables):
        if w is None or tuple(w.shape) != shape:
            raise ValueError(f"table {t.name!r}: a tensor of shape {None if w is None else tuple(w.shape)} does not "
                             f"fit {shape}")
        for offsets, view in table:
            view.copy_(w[_where(offsets, view.shape)])
