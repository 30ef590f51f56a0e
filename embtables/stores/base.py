"""`Store`: one storage backend holding every physical table of a collection.

The store takes physical Bags (pooled lookups first, then per-id lookups, as the plan lists them) and returns

    pooled: (B, sum of dims of pooled lookups)   each bag summed (weighted by per-id weights when given)
    rows:   (N_rows, D)                           one row per id of the per-id lookups, in order

Backends differ only in how they hold and update weights; tests check they agree to float tolerance.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from embtables.bags import Bags
from embtables.config import Lookup, PhysicalTable, SparseOptimizer
from embtables.program import ColumnProgram


class Store(nn.Module):
    """Base class of storage backends.

    Args:
        tables: physical tables to allocate.
        lookups: physical features; pooled ones first.
        optimizer: how embedding weights are updated (inside backward where the backend can).
        device: where the weights live.
    """

    name: ClassVar[str] = ""
    dim_multiple: ClassVar[int] = 1
    # whether the store runs a method's column program itself (`pooled_program`), see `Method.combine_program`
    combines: ClassVar[bool] = False

    def __init__(
        self,
        tables: Sequence[PhysicalTable],
        lookups: Sequence[Lookup],
        optimizer: SparseOptimizer,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.tables = tuple(tables)
        self.lookups = tuple(lookups)
        self.optimizer = optimizer
        self.num_pooled = sum(lk.pooled for lk in lookups)
        for t in tables:
            if t.embedding_dim % self.dim_multiple:
                raise ValueError(
                    f"{self.name} backend: table {t.name!r} has dim {t.embedding_dim}, "
                    f"which is not a multiple of {self.dim_multiple}"
                )
        unused = set(range(len(tables))) - {lk.table for lk in lookups}
        if unused:
            raise ValueError(f"physical tables {[tables[t].name for t in sorted(unused)]} are read by no lookup")
        pooled_tables = {lk.table for lk in lookups if lk.pooled}
        row_tables = {lk.table for lk in lookups if not lk.pooled}
        both = pooled_tables & row_tables
        if both:
            raise ValueError(f"tables {[tables[t].name for t in both]} are read both pooled and per id")
        row_dims = {tables[t].embedding_dim for t in row_tables}
        if len(row_dims) > 1:
            raise ValueError(f"per-id lookups need one dim for all their tables, got {sorted(row_dims)}")

    @property
    def sharded(self) -> bool:
        """Whether the tables are sharded over processes (only the `torchrec` store can be, by `et.shard`)."""
        return False

    def sharding_problem(self) -> str | None:
        """Sharded: why training would differ from one process (None when it would not)."""
        return None

    def forward(self, bags: Bags) -> tuple[Tensor | None, Tensor | None]:
        P = self.num_pooled
        pooled = self.pooled(bags.feature_slice(0, P)) if P else None
        rows = self.rows(bags.feature_slice(P, bags.num_features)) if P < bags.num_features else None
        return pooled, rows

    def pooled(self, bags: Bags) -> Tensor:
        raise NotImplementedError

    def rows(self, bags: Bags) -> Tensor:
        raise NotImplementedError

    def pooled_program(self, bags: Bags, program: ColumnProgram, matrices: Tensor | None) -> Tensor:
        """Pooled lookups composed by a method's column program: (B, program.width_out). Only stores that
        `combines` implement it."""
        raise NotImplementedError(f"the {self.name} backend does not run column programs")

    def weights(self) -> list[Tensor]:
        """One (rows, dim) tensor per physical table; views of the storage, so writes change the store."""
        raise NotImplementedError

    def weight_bytes(self) -> int:
        return sum(w.numel() * w.element_size() for w in self.weights())

    def full_weights(self) -> list[Tensor] | None:
        """The whole tables, for a checkpoint. A store sharded over processes (`torchrec`) gathers them: a
        collective every rank calls, which gives rank 0 the tensors and the other ranks None."""
        return self.weights()

    @torch.no_grad()
    def load_weights(self, weights: Sequence[Tensor]) -> None:
        """Copy whole (rows, dim) tables (e.g. from a checkpoint) into the store; a sharded store copies each
        rank's shards out of them."""
        views = self.weights()
        if len(weights) != len(views):
            raise ValueError(f"{len(weights)} tables for {len(views)} physical tables")
        for t, view, w in zip(self.tables, views, weights):
            if tuple(view.shape) != tuple(w.shape):
                raise ValueError(f"table {t.name!r} has shape {tuple(w.shape)}, the plan {tuple(view.shape)}")
            view.copy_(w)

    def sparse_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer to step for the weights (the same object at every call), or None when the backend
        applies it inside backward."""
        return None

    def optimizer_state(self) -> list[Tensor | None]:
        """Per physical table, the optimizer's state in the layout every backend shares: (rows,) accumulators of
        row-wise Adagrad, (rows, dim) of Adagrad, None for SGD. Views, so writes change the store."""
        raise NotImplementedError

    def full_optimizer_state(self) -> list[Tensor | None] | None:
        """`optimizer_state()` whole, for a checkpoint; a collective on a sharded store, as `full_weights`."""
        return self.optimizer_state()

    @torch.no_grad()
    def load_optimizer_state(self, states: Sequence[Tensor | None]) -> None:
        """Copy `optimizer_state()`-shaped tensors (e.g. from another backend) into this store's state."""
        views = self.optimizer_state()
        if len(states) != len(views):
            raise ValueError(f"{len(states)} optimizer states for {len(views)} physical tables")
        for t, view, state in zip(self.tables, views, states):
            if view is None and state is None:
                continue
            if view is None or state is None or tuple(view.shape) != tuple(state.shape):
                shape = lambda x: None if x is None else tuple(x.shape)  # noqa: E731
                raise ValueError(f"table {t.name!r}: optimizer state of shape {shape(state)} does not fit "
                                 f"{self.optimizer.name}'s {shape(view)}")
            view.copy_(state)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Draw every table uniformly in its [init_low, init_high], in place (no temporary of table size)."""
        for t, w in zip(self.tables, self.weights()):
            w.uniform_(t.init_low, t.init_high, generator=generator)
