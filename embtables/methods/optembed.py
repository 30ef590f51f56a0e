"""`optembed`: the compact tables OptEmbed exports (Lyu et al., "OptEmbed: Learning Optimal Embedding Table for
Click-through Rate Prediction", CIKM 2022, arXiv:2208.04482): the rows a supernet learned to keep, each table at
its searched width.

    e(x) = [W_t[r(x)], 0, ..., 0]   (D_t wide: d_t searched columns, then zeros)  when x is kept
         = 0 ("zero") or [o_t, 0...] ("oov", one trained row per table)            when x was pruned

    W_t in R^{R_t x d_t},  r(x) = rank of x among the K_t kept ids (a sorted int32 map),
    R_t = max(K_t, 1) ("zero") or K_t + 1 ("oov", row K_t is o_t)

    bytes = sum_t 4 R_t d_t + 4 K_t [K_t < N_t]     (a table that keeps every row needs no map)

The plan is learned, not solved from a budget: `dims` (d_t) and `rows` (K_t) come from the training stages
(`optembed_supernet`, then the evolutionary search; `embtables.app.stages`), which also give the kept ids and carry the
weights over (`export`). Built by hand with `dims` and `rows` but no learned map, a table keeps its first K_t ids
(under vocabulary ranks, the most frequent). A budget, when given, is checked, not met: over it is an
`InfeasibleBudget`. The output stays D_t wide (zeros past d_t, as the masked model reads), so the collection is a
drop-in for the full one. d_t must be a multiple of the store's dim multiple (4 on fbgemm).

Store layout: every id reads one bag of its own (`Bags.singletons` for unpooled tables) or, pooled, the id's bag of
one pooled lookup per feature; a pruned id in "zero" reads row 0 with weight 0 (no row is spent on it and no
gradient reaches row 0), so pooling, mean pooling and empty bags behave as in the masked model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import math

import torch
from torch import Tensor

from embtables.bags import Bags
from embtables.config import FP32_BYTES, Lookup, TableConfig, uniform_table
from embtables.method import Method, Remapped, check_ids_in_range
from embtables.options import check_options
from embtables.plan import InfeasibleBudget, Plan, Target
from embtables.registry import register_method

MAP_BYTES = 4  # one int32 kept id in a table's sorted map
PRUNED = ("zero", "oov")


@dataclass(frozen=True)
class OptEmbedOptions:
    """Options of `optembed` (the exported tables; the training stages produce `dims` and `rows`).

    Args:
        dims: d_t per logical table, in 1..D_t and a multiple of the store's dim multiple.
        rows: K_t per logical table, the kept ids (0..N_t).
        pruned: what a pruned id reads: `"zero"` (nothing) or `"oov"` (one trained row per table).
    """

    dims: tuple[int, ...] | None = None
    rows: tuple[int, ...] | None = None
    pruned: Literal["zero", "oov"] = "zero"

    def __post_init__(self) -> None:
        check_options(self, "optembed")
        for name in ("dims", "rows"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, (str, bytes)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                    raise ValueError(f"optembed option {name} must be a sequence of ints (one per table), got {value!r}")
                object.__setattr__(self, name, tuple(value))


@dataclass(frozen=True)
class OptEmbedParams:
    dim: int  # d_t
    kept: int  # K_t
    rows: int  # R_t, physical rows
    mapped: bool  # K_t < N_t: the sorted id map is stored
    bytes: int


def table_bytes(dim: int, kept: int, logical_rows: int, pruned: str) -> int:
    """Bytes of one exported table (module formula)."""
    rows = kept + 1 if pruned == "oov" else max(kept, 1)
    return FP32_BYTES * rows * dim + MAP_BYTES * kept * (kept < logical_rows)


def stand_in_options(tables: Sequence[TableConfig], limit_bytes: float, dim_multiple: int = 4,
                     pruned: str = "zero") -> dict[str, tuple[int, ...]]:
    """`dims` and `rows` of an exported plan of the learned shape with nothing learned, for measurements of speed and
    memory (benchmarks, the registry's tests): each table at half its width (a multiple of `dim_multiple`, at least
    one multiple, at most D_t) and K_t = min(N_t, ceil(s N_t)) with one scale s, the largest whose bytes fit
    `limit_bytes`; s = 0 when nothing fits (the plan is then over the limit). Not what training would learn.

    Example:
        >>> stand_in_options([TableConfig("C1", 1000, 16)], 0.1 * 1000 * 16 * 4)
        {'dims': (8,), 'rows': (177,)}
    """
    q = dim_multiple
    dims = tuple(min(t.embedding_dim, max(q, t.embedding_dim // (2 * q) * q)) for t in tables)

    def rows(s: float) -> tuple[int, ...]:
        return tuple(min(t.num_embeddings, math.ceil(s * t.num_embeddings)) for t in tables)

    def fits(s: float) -> bool:
        return sum(table_bytes(d, k, t.num_embeddings, pruned) for d, k, t in zip(dims, rows(s), tables)) <= limit_bytes

    lo, hi = 0.0, 1.0
    if fits(hi):
        return {"dims": dims, "rows": rows(hi)}
    for _ in range(40):  # bisection: s = lo fits (or is 0), s = hi does not
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return {"dims": dims, "rows": rows(lo)}


def _check(tables: Sequence[TableConfig], o: OptEmbedOptions, multiple: int) -> None:
    if o.dims is None or o.rows is None:
        raise ValueError(
            "optembed learns its plan: train it (`embtables train --method optembed --budget B`, which runs the "
            "supernet, the search and the retraining), or give both dims= and rows= (one int per table)"
        )
    for name, values in (("dims", o.dims), ("rows", o.rows)):
        if len(values) != len(tables):
            raise ValueError(f"optembed option {name} has {len(values)} values for {len(tables)} tables")
    for t, d, k in zip(tables, o.dims, o.rows):
        if not 1 <= d <= t.embedding_dim or d % multiple:
            raise ValueError(f"optembed: table {t.name!r} dim {d} must lie in 1..{t.embedding_dim} and be a multiple "
                             f"of {multiple} (the store's dim multiple)")
        if not 0 <= k <= t.num_embeddings:
            raise ValueError(f"optembed: table {t.name!r} keeps {k} rows, outside 0..{t.num_embeddings}")


@register_method("optembed")
class OptEmbed(Method):
    """Kept rows at searched widths behind a sorted id map per pruned table; outputs padded to D_t."""

    Options = OptEmbedOptions
    Params = OptEmbedParams
    learned = True

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        params: tuple[OptEmbedParams, ...] = plan.params
        self.oov = plan.options.pruned == "oov"
        # the sorted kept ids of the mapped tables, one after the other (serving state: counted)
        segments, start = [], 0
        for p in params:
            segments.append((start, start + p.kept) if p.mapped else None)
            start += p.kept if p.mapped else 0
        self._segments = segments
        self.register_buffer("kept_ids", torch.zeros(start, dtype=torch.int32))
        self._n = [self.tables[t].num_embeddings for t in self.feature_table]
        self.id_upper = self._n
        self._dims = [params[t].dim for t in self.feature_table]
        self._full = [self.tables[t].embedding_dim for t in self.feature_table]
        cols, base = [], 0  # each feature's d_t columns inside its D_t-wide output block
        for d, full in zip(self._dims, self._full):
            cols.extend(range(base, base + d))
            base += full
        self.register_buffer("_cols", torch.tensor(cols, dtype=torch.long), persistent=False)

    @classmethod
    def solve(cls, tables: Sequence[TableConfig], budget: float | None, options: OptEmbedOptions, target: Target) -> Plan:
        _check(tables, options, target.dim_multiple)
        assert options.dims is not None and options.rows is not None
        params = tuple(
            OptEmbedParams(d, k, k + 1 if options.pruned == "oov" else max(k, 1), k < t.num_embeddings,
                           table_bytes(d, k, t.num_embeddings, options.pruned))
            for t, d, k in zip(tables, options.dims, options.rows)
        )
        physical = tuple(uniform_table(f"{t.name}/kept", p.rows, p.dim, t.num_embeddings) for t, p in zip(tables, params))
        lookups = tuple(Lookup(f, i, True) for i, t in enumerate(tables) for f in t.feature_names)
        extra = sum(MAP_BYTES * p.kept for p in params if p.mapped)
        plan = Plan("optembed", options, budget, tuple(tables), physical, lookups, params, extra)
        if budget is not None and plan.total_bytes > budget * plan.full_bytes:
            raise InfeasibleBudget("optembed", budget, plan.ratio, "these dims and kept rows; prune more or narrow")
        return plan

    @classmethod
    def from_plan(cls, plan: Plan, counts: Mapping[str, Any] | None) -> "OptEmbed":
        m = cls(plan)
        for t, seg in enumerate(m._segments):  # by hand, without a learned map: the first K_t ids
            if seg is not None:
                m.kept_ids[seg[0] : seg[1]] = torch.arange(seg[1] - seg[0], dtype=torch.int32)
        return m

    @torch.no_grad()
    def set_kept(self, table: int, ids: Tensor) -> None:
        """Set table `table`'s kept ids (K_t distinct ids in [0, N_t), any order), e.g. from a supernet's mask."""
        seg, p, name = self._segments[table], self.plan.params[table], self.tables[table].name
        ids = ids.to(torch.int64).sort().values
        if ids.numel() != p.kept or (ids.numel() and (int(ids[0]) < 0 or int(ids[-1]) >= self.tables[table].num_embeddings)):
            raise ValueError(f"optembed: table {name!r} needs {p.kept} kept ids in [0, {self.tables[table].num_embeddings})")
        if ids.numel() > 1 and bool((ids[1:] == ids[:-1]).any()):
            raise ValueError(f"optembed: table {name!r} kept ids repeat")
        if seg is not None:
            self.kept_ids[seg[0] : seg[1]] = ids.to(torch.int32)

    def kept(self, table: int) -> Tensor:
        """(K_t,) the sorted kept ids of a table (all ids when it keeps every row)."""
        seg = self._segments[table]
        if seg is None:
            return torch.arange(self.tables[table].num_embeddings, device=self.kept_ids.device)
        return self.kept_ids[seg[0] : seg[1]].long()

    def remap(self, bags: Bags) -> Remapped:
        check_ids_in_range(bags, self._n, self, "optembed")
        values, hits = [], []
        for f, ids in enumerate(bags.values.split(bags.ids_per_feature)):
            t = self.feature_table[f]
            seg = self._segments[t]
            if seg is None:  # every row kept: the id is the row
                values.append(ids)
                hits.append(torch.ones_like(ids, dtype=torch.bool))
                continue
            kept = self.kept_ids[seg[0] : seg[1]]  # (K_t,) sorted
            pos = torch.searchsorted(kept, ids.to(torch.int32)).clamp(max=max(kept.numel() - 1, 0))  # (N_f,)
            hit = kept[pos] == ids if kept.numel() else torch.zeros_like(ids, dtype=torch.bool)
            pruned_row = self.plan.params[t].kept if self.oov else 0
            values.append(torch.where(hit, pos.long(), torch.full_like(ids, pruned_row)))
            hits.append(hit)
        hit = torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool, device=bags.values.device)
        weights = bags.per_sample_weights
        if not self.oov and self.pooled:  # a pruned id reads row 0 with weight 0
            weights = hit.to(torch.float32) if weights is None else weights * hit
        phys = Bags(torch.cat(values) if values else bags.values, bags.offsets, weights, bags.ids_per_feature,
                    bags.batch_size, bags.longest)
        if not self.pooled:
            phys = phys.singletons(bags.most_ids())
        return Remapped(bags, phys, context=hit)

    def combine(self, pooled: Tensor | None, rows: Tensor | None, batch: Remapped) -> Tensor:
        assert pooled is not None  # every lookup is pooled (unpooled tables read singleton bags)
        if self.pooled:  # (B, sum d_t) -> (B, sum D_t)
            if sum(self._dims) == sum(self._full):
                return pooled
            return pooled.new_zeros(pooled.shape[0], sum(self._full)).index_copy_(1, self._cols, pooled)
        sizes, parts = batch.logical.ids_per_feature, []
        for x, n, full in zip(pooled.split(self._dims, 1), sizes, self._full):  # row i < N_f: the i-th id
            parts.append(torch.nn.functional.pad(x[:n], (0, full - x.shape[1])))
        out = torch.cat(parts)  # (N, D)
        return out if self.oov else out * batch.context.unsqueeze(1).to(out.dtype)
