"""`hash`: the hashing trick (Weinberger et al., ICML 2009), as the DLRM reference's `--max-ind-range`.

    e(id) = W[h(id) mod m],    W in R^{m x D},    bytes = 4 m D + 8 (one int64 hash key per hashed table)

with h the seeded SplitMix64 of `embtables.hashing`. A table with at most m logical rows is not hashed: it is
stored whole and looked up directly (ids in [0, N) as for `full`), as DLRM's `id mod max_ind_range` leaves
such tables untouched. Hashed tables accept any int64 id. `hash_all=True` hashes every table, for callers
whose ids are raw 64-bit values rather than indices.

Budget allocation (the method's parameter is the rows m_t of each table):
    cap           m_t = min(N_t, M) with one M for all tables, the largest that fits (default; DLRM's)
    proportional  m_t = min(N_t, ceil(s N_t)) with one scale s, the largest that fits
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from embtables.bags import Bags
from embtables.config import FP32_BYTES, KEY_BYTES, Lookup, TableConfig, uniform_table
from embtables.hashing import derive_seed, hash_key, hash_to_range
from embtables.method import Method, Remapped, check_ids_in_range, per_feature
from embtables.options import check_options, option
from embtables.plan import InfeasibleBudget, Plan, Target, largest_within
from embtables.registry import register_method

_SCALE_STEPS = 1 << 40


@dataclass(frozen=True)
class HashOptions:
    """Options of `hash`.

    Args:
        buckets: rows of every hashed table (tables with fewer logical rows stay whole unless `hash_all`);
            exclusive with a budget.
        seed: base seed; each table gets its own key derived from it.
        allocation: `"cap"` or `"proportional"`, how a budget is spread over tables.
        hash_all: hash every table, also those that would fit whole (with `buckets`, into exactly that many rows).
    """

    buckets: int | None = option(None, minimum=1)
    seed: int = 0
    allocation: Literal["cap", "proportional"] = "cap"
    hash_all: bool = False

    def __post_init__(self) -> None:
        check_options(self, "hash")


@dataclass(frozen=True)
class HashParams:
    rows: int
    hashed: bool
    bytes: int


def hashed_rows(tables: Sequence[TableConfig], rows: Sequence[int], hash_all: bool) -> tuple[list[bool], int]:
    """Which tables are hashed, and the plan's total bytes for these row counts."""
    hashed = [hash_all or r < t.num_embeddings for t, r in zip(tables, rows)]
    total = sum(FP32_BYTES * r * t.embedding_dim for t, r in zip(tables, rows)) + KEY_BYTES * sum(hashed)
    return hashed, total


def solve_rows(tables: Sequence[TableConfig], budget: float, allocation: str, hash_all: bool, method: str) -> list[int]:
    """Rows per table for a budget under `allocation`: the largest allocation whose bytes fit."""
    limit = budget * sum(t.full_bytes for t in tables)
    n = [t.num_embeddings for t in tables]
    if allocation == "cap":
        rows_of = lambda M: [min(x, M) for x in n]  # noqa: E731
        hi = max(n)
    else:
        rows_of = lambda s: [min(x, max(1, -(-s * x // _SCALE_STEPS))) for x in n]  # noqa: E731
        hi = _SCALE_STEPS
    best = largest_within(lambda v: hashed_rows(tables, rows_of(v), hash_all)[1], 1 if allocation == "cap" else 0, hi, limit)
    if best is None:
        smallest = hashed_rows(tables, [1] * len(tables), hash_all)[1] / sum(t.full_bytes for t in tables)
        raise InfeasibleBudget(method, budget, smallest, "every table at one row")
    return rows_of(best)


@register_method("hash")
class Hash(Method):
    """Hashing trick: hashed tables map ids to `h(id) mod m_t`; other tables are looked up directly."""

    Options = HashOptions
    Params = HashParams

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        hashed = [p.hashed for p in plan.params]
        opts: HashOptions = plan.options
        # the hash parameters: one key per hashed table (serving state, counted in memory_bytes)
        keys = [hash_key(derive_seed(opts.seed, t)) for t, h in enumerate(hashed) if h]
        self.register_buffer("keys", torch.tensor(keys, dtype=torch.int64))
        key_index = [sum(hashed[:t]) if hashed[t] else 0 for t in range(len(hashed))]
        self.register_buffer("_key_index", per_feature(self, key_index), persistent=False)
        self.register_buffer("_hashed", per_feature(self, hashed, torch.bool), persistent=False)
        self.register_buffer("_rows", per_feature(self, [p.rows for p in plan.params]), persistent=False)
        self._whole_n = [None if hashed[t] else self.tables[t].num_embeddings for t in self.feature_table]
        self.id_upper = self._whole_n

    @classmethod
    def solve(cls, tables: Sequence[TableConfig], budget: float | None, options: HashOptions, target: Target) -> Plan:
        if (budget is None) == (options.buckets is None):
            raise ValueError("hash needs exactly one of budget= or buckets=")
        if budget is None:
            # hash_all hashes raw ids into exactly `buckets` rows, even more rows than N
            rows = [options.buckets if options.hash_all else min(t.num_embeddings, options.buckets) for t in tables]
        else:
            rows = solve_rows(tables, budget, options.allocation, options.hash_all, "hash")
        hashed, _ = hashed_rows(tables, rows, options.hash_all)
        physical = tuple(
            uniform_table(f"{t.name}/hash" if h else t.name, r, t.embedding_dim) for t, r, h in zip(tables, rows, hashed)
        )
        lookups = tuple(Lookup(f, i, t.pooling != "none") for i, t in enumerate(tables) for f in t.feature_names)
        params = tuple(
            HashParams(r, h, FP32_BYTES * r * t.embedding_dim + KEY_BYTES * h) for t, r, h in zip(tables, rows, hashed)
        )
        return Plan("hash", options, budget, tuple(tables), physical, lookups, params, KEY_BYTES * sum(hashed))

    @classmethod
    def reads_by_rank(cls, plan: Plan) -> list[bool]:
        return [not p.hashed for p in plan.params]  # whole tables are indexed directly

    def remap(self, bags: Bags) -> Remapped:
        check_ids_in_range(bags, self._whole_n, self, "hash")
        if self.keys.numel() == 0:
            return Remapped(bags, bags)
        key = bags.per_id(self.keys[self._key_index])
        hashed = hash_to_range(bags.values, key, bags.per_id(self._rows))
        values = torch.where(bags.per_id(self._hashed), hashed, bags.values)
        return Remapped(bags, bags.with_values(values))
