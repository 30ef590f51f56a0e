"""`Plan`: a method's solved parameters and exact byte count, computed without allocating anything.

A plan lists the physical tables to allocate, the lookups (physical features) that read them, the method's
per-table parameters and the bytes of any extra state the remap/combine needs. `build_collection` allocates
exactly what the plan says, and tests check `memory_bytes()` of the built module against `plan.total_bytes`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from embtables.config import Lookup, PhysicalTable, TableConfig


class InfeasibleBudget(ValueError):
    """The method cannot fit the budget; `smallest_budget` is the smallest it can reach."""

    def __init__(self, method: str, budget: float, smallest_budget: float, why: str = "") -> None:
        self.method, self.budget, self.smallest_budget = method, budget, smallest_budget
        extra = f" ({why})" if why else ""
        super().__init__(
            f"method {method!r} cannot fit budget {budget:g} of the full bytes; "
            f"the smallest feasible budget is {smallest_budget:.6g}{extra}"
        )


@dataclass(frozen=True)
class Target:
    """What the solver must respect besides the budget.

    Args:
        backend: store backend name.
        dim_multiple: every physical table's dim must be a multiple of this (4 for FBGEMM's training kernels).
        counts: per-feature id frequency counts (feature name -> (N,) counts indexed by id), for the
            frequency-based options of some methods; None when the caller has none.
    """

    backend: str = "torch"
    dim_multiple: int = 1
    counts: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Plan:
    """Solved parameters of one method on a set of logical tables.

    Args:
        method: registered method name.
        options: the method's validated options dataclass.
        budget: the budget asked for (fraction of full bytes), or None.
        tables: the logical tables.
        physical_tables: what the store allocates.
        lookups: physical features, pooled ones first.
        params: one solved-parameter dataclass per logical table.
        extra_bytes: bytes of the remap/combine state (hash keys, maps, projections).
        raw_tables: the tables whose ids are hashed into [0, N) before the remap (`raw_ids=True`), so that they take
            raw ids although the method reads them by rank; their hash keys are in `extra_bytes`.
        index_bytes: bytes of the vocabulary that maps raw values to ranks for the tables the method reads by rank
            (and `raw_ids` does not hash): VOCAB_BYTES_PER_ID per logical row. Not part of `total_bytes`, which
            counts what the collection holds; `total_bytes + index_bytes` is what serving raw ids costs.
    """

    method: str
    options: Any
    budget: float | None
    tables: tuple[TableConfig, ...]
    physical_tables: tuple[PhysicalTable, ...]
    lookups: tuple[Lookup, ...]
    params: tuple[Any, ...]
    extra_bytes: int
    raw_tables: tuple[int, ...] = ()
    index_bytes: int = 0

    def __post_init__(self) -> None:
        seen_rows = False
        for lk in self.lookups:
            if not 0 <= lk.table < len(self.physical_tables):
                raise ValueError(f"lookup {lk.name!r} refers to physical table {lk.table}, which does not exist")
            if lk.pooled and seen_rows:
                raise ValueError("plan lookups must list pooled lookups before per-id lookups")
            seen_rows = seen_rows or not lk.pooled
        names = [t.name for t in self.physical_tables]
        if len(set(names)) != len(names):
            raise ValueError(f"physical table names must be unique: {names}")

    @property
    def weight_bytes(self) -> int:
        return sum(t.bytes for t in self.physical_tables)

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.extra_bytes

    @property
    def full_bytes(self) -> int:
        return full_bytes(self.tables)

    @property
    def ratio(self) -> float:
        """total_bytes / full_bytes."""
        return self.total_bytes / self.full_bytes

    def summary(self) -> str:
        """A markdown table: one row per logical table with the method's solved parameters, then totals."""
        fields = [f.name for f in dataclasses.fields(self.params[0])] if self.params else []
        head = ["table", "rows N", "dim D", *fields]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for t, p in zip(self.tables, self.params):
            vals = [str(getattr(p, f)) for f in fields]
            lines.append("| " + " | ".join([t.name, str(t.num_embeddings), str(t.embedding_dim), *vals]) + " |")
        lines.append("")
        lines.append(
            f"method {self.method}, budget {self.budget}: {self.total_bytes:,} bytes "
            f"({self.weight_bytes:,} weights + {self.extra_bytes:,} other) of {self.full_bytes:,} full "
            f"= {self.ratio:.6g} of full, {len(self.physical_tables)} physical tables"
        )
        lines.append("(a budget is a fraction of the full bytes, N x D x 4 summed over the tables; the table above is "
                     "how this method spread it)")
        lines.append(
            f"vocabulary to serve raw ids: {self.index_bytes:,} bytes"
            + (f" ({len(self.raw_tables)} tables take raw ids hashed into [0, N) instead)" if self.raw_tables else "")
            + f"; tables + vocabulary = {(self.total_bytes + self.index_bytes) / self.full_bytes:.6g} of full"
        )
        return "\n".join(lines)


# a vocabulary maps a raw value to its rank with a sorted array of the values and the rank of each (int64 both)
VOCAB_BYTES_PER_ID = 16


def full_bytes(tables: Sequence[TableConfig]) -> int:
    """Bytes of the logical tables uncompressed in fp32: sum of N * D * 4."""
    return sum(t.full_bytes for t in tables)


def largest_within(bytes_of: Callable[[int], int], lo: int, hi: int, limit: float) -> int | None:
    """Largest integer x in [lo, hi] with bytes_of(x) <= limit, for non-decreasing bytes_of; None if none."""
    if bytes_of(lo) > limit:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if bytes_of(mid) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return lo


def round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple
