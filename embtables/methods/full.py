"""`full`: the uncompressed table, the reference every compressed method is measured against.

    e(id) = W[id],    W in R^{N x D},    bytes = 4 N D

Ids must lie in [0, N); anything else raises a ValueError naming the table, feature and id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


from embtables.bags import Bags
from embtables.config import Lookup, TableConfig, uniform_table
from embtables.method import Method, Remapped, check_ids_in_range
from embtables.plan import InfeasibleBudget, Plan, Target
from embtables.registry import register_method


@dataclass(frozen=True)
class FullOptions:
    """`full` takes no options."""


@dataclass(frozen=True)
class FullParams:
    rows: int
    bytes: int


@register_method("full")
class Full(Method):
    """Plain tables: physical table t is logical table t; remap and combine are the identity."""

    Options = FullOptions
    Params = FullParams
    compresses = False

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        self._n = [self.tables[t].num_embeddings for t in self.feature_table]
        self.id_upper = self._n

    @classmethod
    def solve(cls, tables: Sequence[TableConfig], budget: float | None, options: FullOptions, target: Target) -> Plan:
        if budget is not None and budget < 1.0:
            raise InfeasibleBudget("full", budget, 1.0, "the full table is not compressed")
        physical = tuple(uniform_table(t.name, t.num_embeddings, t.embedding_dim) for t in tables)
        lookups = tuple(
            Lookup(f, i, t.pooling != "none") for i, t in enumerate(tables) for f in t.feature_names
        )
        params = tuple(FullParams(t.num_embeddings, t.full_bytes) for t in tables)
        return Plan("full", options, budget, tuple(tables), physical, lookups, params, extra_bytes=0)

    def remap(self, bags: Bags) -> Remapped:
        check_ids_in_range(bags, self._n, self, "full")
        return Remapped(bags, bags)
