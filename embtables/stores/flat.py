"""`FlatStore`: the physical tables in one flat fp32 buffer, updated inside backward by a store's own kernels.

    weight   every table's rows, table after table: table t's row r starts at offset[t] + r * dim[t]
    state    the optimizer's state in the same order: one accumulator per row (row-wise Adagrad), one per element
             (Adagrad), none (SGD); saved with the weights

The `fused` (C++ CPU) and `triton` (GPU) stores share this layout, so `weights()` and `optimizer_state()` are
views a checkpoint reads and writes the same way on both, and their kernels take the same per-table offsets.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import Tensor

from embtables.bags import Bags
from embtables.config import Lookup, PhysicalTable, SparseOptimizer
from embtables.stores.base import Store

OPTIMIZER_CODES = {"sgd": 0, "adagrad": 1, "rowwise_adagrad": 2}  # as the kernels take them


class FlatStore(Store):
    """Base of the stores with flat storage. Subclasses implement `_pool(bags, per_id)`, the pooled lookups of
    the pooled (`per_id=False`) or per-id (`per_id=True`) group, as (B, width of the group's lookups)."""

    def __init__(
        self, tables: Sequence[PhysicalTable], lookups: Sequence[Lookup], optimizer: SparseOptimizer, device: torch.device
    ) -> None:
        super().__init__(tables, lookups, optimizer, device)
        sizes = [t.num_embeddings * t.embedding_dim for t in tables]
        rows = [t.num_embeddings for t in tables]
        per_row = {"sgd": [0] * len(tables), "adagrad": sizes, "rowwise_adagrad": rows}[optimizer.name]
        self.register_buffer("weight", torch.empty(sum(sizes), device=device))
        self.register_buffer("state", torch.zeros(max(sum(per_row), 1), device=device))
        self._offsets = starts(sizes)  # host copies: views of the tables need no device read
        self._state_offsets = starts(per_row)
        for name, values in (("_offset", self._offsets), ("_state_offset", self._state_offsets), ("_rows", rows),
                             ("_dim", [t.embedding_dim for t in tables])):
            self.register_buffer(name, torch.tensor(values, dtype=torch.long, device=device), persistent=False)
        # an input that needs a gradient, so that autograd calls backward (where the update happens) even when
        # nothing else does, as FBGEMM's TBE does
        self._placeholder = torch.zeros(0, requires_grad=True, device=device)

    def _pool(self, bags: Bags, per_id: bool) -> Tensor:
        raise NotImplementedError

    def pooled(self, bags: Bags) -> Tensor:
        return self._pool(bags, per_id=False)  # (B, sum D)

    def rows(self, bags: Bags) -> Tensor:
        # the most ids of a lookup, at least 1 (a batch without ids looks up empty bags); a symbol under export
        L, n = bags.num_features, bags.most_ids()
        D = self.tables[self.lookups[self.num_pooled].table].embedding_dim
        # every id in a bag of its own; rows unweighted, as every store returns them: a method that weighs per-id
        # rows does so in its combine
        single = dataclasses.replace(bags.singletons(n), per_sample_weights=None)
        out = self._pool(single, per_id=True).view(n, L, D)  # (n, L, D)
        return torch.cat([out[:c, i] for i, c in enumerate(bags.ids_per_feature)])  # (N_rows, D) in lookup order

    def optimizer_state(self) -> list[Tensor | None]:
        name = self.optimizer.name
        if name == "sgd":
            return [None] * len(self.tables)
        out: list[Tensor | None] = []
        for o, t in zip(self._state_offsets, self.tables):
            n, d = t.num_embeddings, t.embedding_dim
            out.append(self.state[o : o + n] if name == "rowwise_adagrad" else self.state[o : o + n * d].view(n, d))
        return out

    def weights(self) -> list[Tensor]:
        return [self.weight[o : o + t.num_embeddings * t.embedding_dim].view(t.num_embeddings, t.embedding_dim)
                for o, t in zip(self._offsets, self.tables)]


def starts(sizes: Sequence[int]) -> list[int]:
    """Where each of consecutive blocks of `sizes` starts: 0, then the running sums."""
    out = [0]
    for s in sizes[:-1]:
        out.append(out[-1] + s)
    return out
