"""`multihash`: k seeded hashes per id into a shared pool of rows per table, and their variants.

For an id x of a compressed table (N rows, dim D), with pool W (m rows) and h_j(x) = hash_to_range(x, key_j, m):

    sum     e(x) = sum_j a_j(x) W[h_j(x)]                        W in R^{m x D}    (default; k = 2 by default)
    mean    e(x) = 1/k sum_j a_j(x) W[h_j(x)]                    W in R^{m x D}    (Bloom embeddings)
    concat  e(x) = [a_1(x) W[h_1(x)], ..., a_k(x) W[h_k(x)]]    W in R^{m x D/k}  (output width stays D)

where a_j(x) = 1 unless `importance=True`. Who does what:

- Bloom embeddings (Serrà & Karatzoglou, RecSys 2017) set the k hashed positions of an id and embed the
  binary code linearly; `"mean"` is that sum scaled by 1/k so that the output scale does not grow with k.
- Hash Embeddings (Svenstrup, Hansen & Winther, NeurIPS 2017), `importance=True`: a learned importance table
  P in R^{K x k}, indexed by a further hash h_0(x) into [0, K), weights the components, a_j(x) = P[h_0(x), j];
  their summed form is `"sum"` and their concatenated form is `"concat"`. `append_weights=True` appends the
  importance vector p(x) = P[h_0(x)] to e(x), as the paper optionally does (output D + k). K = ceil(r m),
  r = `importance_ratio` (default 1), capped at the ids it serves. P starts at ones (a plain multi-hash sum). As
  the paper learns it per bucket with the embeddings, P is a physical table of the plan, `<table>/importance`
  (K rows, width k' below), updated by the store's sparse optimizer: a step moves only the rows a batch read.
- Frequency + double hashing (Zhang et al., "Model Size Reduction Using Frequency Based Double Hashing for
  Recommender Systems", RecSys 2020), `hot_rows=H`: the H most frequent ids of the table (by the per-feature
  `counts`, summed over the table's features) get collision-free rows, e(x) = U[r(x)], U in R^{H x D}; the
  others are multi-hashed (their double hashing is k = 2). Importance does not apply to hot ids; with
  `append_weights` their p(x) is still appended, so every id has the same output layout.

Memory of a compressed table, exactly (fp32 weights, int64 keys and maps):

    bytes = 4 (H D + m D')  +  8 (k + [importance])  +  4 K k' [importance]  +  8 H [hot map]

with D' = D (sum, mean) or D / k (concat), and k' = q ceil(k / q) the width of P: k rounded up to the dim multiple
q (`dim_multiple`, by default the store's: 1, or 4 on fbgemm), whose padding columns are allocated, never read.
The hot map is a sorted array of the H hot ids, stored only when the counts are not frequency-ranked; with ranked
counts (the data pipeline's: non-increasing, id 0 the most frequent) the hot ids are exactly 0..H-1, no map.
A table is compressed only when that takes fewer bytes than storing it whole (4 N D), unless `hash_all`; whole
tables are looked up directly (ids in [0, N)), compressed ones accept any int64 id. A budget sets one cap M on
the pool rows of every table, m_t = min(M, cap_t), the largest that fits (cap_t: k (N_t - H_t) for concat,
N_t - H_t otherwise).

Store layout: one physical table per logical table (hot rows first, then the pool). With sum or mean, each id
becomes 1 (hot) or k physical ids of one pooled lookup, so the store pools all k rows at once (pooling
commutes with the sum) and a mean's 1/k enters as per-sample weights where hot rows (which take none) need them,
else it scales the pooled output per feature. With concat each feature gets k lookups, one per component, so
the store's pooled output already is the concatenation (a hot id's row U[r(x)] is stored as k parts of D/k).
Unpooled tables use per-id lookups and combine the components per id. With importance, P is one more physical
table per compressed table (after all the pools) and every lookup reads one id per bag: combine weighs the
components by P's rows, then pools (`embtables.methods._importance` says why). The remap
works feature by feature on Python constants (keys, rows, offsets of each table): whole tables pass through
untouched and only compressed features are hashed. Hot rows under sum or mean read the host once per batch beyond
the batch's read (`embtables.inputs`), a synchronisation on CUDA: how many rows a feature reads depends on the data.

Example:
    >>> import torch, embtables as et
    >>> bag = et.MultiHashEmbeddingBag(1_000_000, 16, budget=0.01, importance=True)
    >>> bag(torch.tensor([[3, 999_999], [2**40, -5]])).shape  # compressed tables take any int64 id
    torch.Size([2, 16])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import Tensor

from embtables.bags import Bags
from embtables.config import FP32_BYTES, ID_BYTES, KEY_BYTES, Lookup, TableConfig, uniform_table
from embtables.frequency import is_ranked, table_counts, top_ids
from embtables.hashing import derive_seed, hash_key, hash_to_range
from embtables.method import Method, Remapped, check_ids_in_range
from embtables.methods._importance import PerIdLayout, importance_tables, per_id_lookups
from embtables.options import check_options, option
from embtables.plan import InfeasibleBudget, Plan, Target, full_bytes, largest_within, round_up
from embtables.registry import register_method

HOT_ROWS = "multihash option hot_rows"


@dataclass(frozen=True)
class MultiHashOptions:
    """Options of `multihash`.

    Args:
        rows: pool rows m of every compressed table (capped at its ids unless `hash_all`); exclusive with a budget.
        num_hashes: k, hashes (components) per id.
        combine: `"sum"`, `"mean"` or `"concat"` of the k components.
        importance: learned importance weights (Hash Embeddings).
        importance_ratio: K / m, rows of the importance table per pool row (needs `importance`; default 1).
        append_weights: append the k importance weights to each id's vector (needs `importance`).
        hot_rows: H, collision-free rows for each table's H most frequent ids (needs counts); 0 disables.
        seed: base seed of the hash keys.
        hash_all: compress every table, also those a whole table would store in fewer bytes.
        dim_multiple: the widths of P and of the concat parts are multiples of this; default the store's own (1,
            or 4 on fbgemm); must be a multiple of the store's. Set 4 for checkpoints that also load on fbgemm.
    """

    rows: int | None = option(None, minimum=1)
    num_hashes: int = option(2, minimum=1)
    combine: Literal["sum", "mean", "concat"] = "sum"
    importance: bool = False
    importance_ratio: float | None = option(None, above=0)
    append_weights: bool = False
    hot_rows: int = option(0, minimum=0)
    seed: int = 0
    hash_all: bool = False
    dim_multiple: int | None = option(None, minimum=1)

    def __post_init__(self) -> None:
        check_options(self, "multihash")
        for name in ("importance_ratio", "append_weights"):
            if getattr(self, name) not in (None, False) and not self.importance:
                raise ValueError(f"multihash option {name} needs importance=True")


@dataclass(frozen=True)
class MultiHashParams:
    """Per logical table: pool rows m (N when whole), hot rows H, importance rows K, whether it is compressed,
    whether a hot-id map is stored, and its exact bytes."""

    rows: int
    hot: int
    importance_rows: int
    compressed: bool
    hot_map: bool
    bytes: int


@dataclass(frozen=True)
class _Table:
    """Python constants of one logical table, read by the remap feature by feature."""

    compressed: bool
    key_row: int  # its row of `keys`, -1 when whole
    rows: int  # pool rows m
    hot: int  # H
    hot_segment: tuple[int, int] | None  # its slice of `hot_keys` when the hot ids need a map
    imp_rows: int  # K, at least 1
    n: int  # logical rows N


@dataclass(frozen=True)
class _Components:
    """The physical rows of a feature's N_f ids, from remap to combine: `rows` (N_f, c), c = k, or 1 for a whole
    table's id under sum or mean; `keep` (N_f, c), which of them are read (None: all; a hot id reads column 0 only
    under sum or mean); `weights` (N_f, c), 1/k of a mean, 1 for hot ids (None: ones; never with importance);
    `hot` (N_f,), which ids are hot (None: no table's hot rows); `imp` (N_f,) the row h_0(x) of P (None: no P)."""

    rows: Tensor
    keep: Tensor | None
    weights: Tensor | None
    hot: Tensor | None
    imp: Tensor | None


@register_method("multihash")
class MultiHash(Method):
    """Multi-hash embeddings: sum / mean / concat of k hashed pool rows, optional importance and hot rows."""

    Options = MultiHashOptions
    Params = MultiHashParams

    def __init__(self, plan: Plan, counts: Mapping[str, Any] | None = None) -> None:
        super().__init__(plan)
        o: MultiHashOptions = plan.options
        params: tuple[MultiHashParams, ...] = plan.params
        comp_ids = [t for t, p in enumerate(params) if p.compressed]
        self.k, self.mode = o.num_hashes, o.combine
        self.append = o.append_weights and bool(comp_ids)  # only compressed tables have importance weights
        # a mean where every id of a compressed table is multi-hashed: 1/k commutes with pooling, apply it after
        self._scale_after = o.combine == "mean" and not o.importance and not any(p.hot for p in params)

        # serving state, counted in memory_bytes: k hash keys (+ the importance key) per compressed table and the
        # hot ids of tables whose counts are not ranked (sorted, table after table); P is a table of the store
        hashes = list(range(self.k)) + ([-1] if o.importance else [])
        keys = [[hash_key(derive_seed(o.seed, t, j)) for j in hashes] for t in comp_ids]
        self.register_buffer("keys", torch.tensor(keys, dtype=torch.int64).view(len(comp_ids), len(hashes)))
        mapped = [t for t, p in enumerate(params) if p.hot_map]
        hot_ids = [self._hot_ids(t, counts) for t in mapped]
        self.register_buffer("hot_keys", torch.cat(hot_ids) if hot_ids else torch.zeros(0, dtype=torch.int64))
        self._tables, seg = [], 0
        for t, p in enumerate(params):
            segment = (seg, seg + p.hot) if p.hot_map else None
            seg += p.hot * p.hot_map
            key_row = comp_ids.index(t) if p.compressed else -1
            self._tables.append(_Table(p.compressed, key_row, p.rows, p.hot, segment, max(1, p.importance_rows),
                                       self.tables[t].num_embeddings))
        whole_n = [None if params[t].compressed else self.tables[t].num_embeddings for t in self.feature_table]
        self.id_upper = whole_n if len(comp_ids) < len(params) else None  # whole tables index rows directly
        self.register_buffer("_j", torch.arange(self.k), persistent=False)
        # physical ids per logical id of each feature, when no table has hot rows
        self._parts = [self.k if self.mode == "concat" or params[t].compressed else 1 for t in self.feature_table]
        self.register_buffer("_parts_t", torch.tensor(self._parts), persistent=False)
        comp_f = [params[t].compressed for t in self.feature_table]
        scale = [1.0 / self.k if c else 1.0 for c, d in zip(comp_f, self.output_dims()) for _ in range(d)]
        self.register_buffer("_column_scale", torch.tensor(scale), persistent=False)
        # with importance (P a physical table), every lookup reads one id per bag: `_importance`
        self.per_id = None
        if o.importance and comp_ids:
            dims = [plan.physical_tables[t].embedding_dim for t in self.feature_table]
            width = plan.physical_tables[-1].embedding_dim  # P's, k' (the importance tables come last)
            features = [(self.k if self.mode == "concat" or c else 1, d, c, self.append and c)
                        for c, d in zip(comp_f, dims)]
            self.per_id = PerIdLayout(self.k, self.mode, self.pooled, features, width)

    @classmethod
    def from_plan(cls, plan: Plan, counts: Mapping[str, Any] | None) -> "MultiHash":
        return cls(plan, counts)

    def _hot_ids(self, t: int, counts: Mapping[str, Any] | None) -> Tensor:
        """The H most frequent ids of table t (ties to the smaller id), sorted; without counts, room for the H
        ids a checkpoint is about to load (`et.load_collection`)."""
        hot = self.plan.params[t].hot
        if counts is None:
            return torch.zeros(hot, dtype=torch.int64)
        return top_ids(table_counts(self.tables[t], counts, HOT_ROWS, hot), hot)

    @classmethod
    def solve(
        cls, tables: Sequence[TableConfig], budget: float | None, options: MultiHashOptions, target: Target
    ) -> Plan:
        o, k = options, options.num_hashes
        if (budget is None) == (o.rows is None):
            raise ValueError("multihash needs exactly one of budget= or rows=")
        q = o.dim_multiple or target.dim_multiple
        if q % target.dim_multiple:
            raise ValueError(f"multihash option dim_multiple={q} is not a multiple of {target.dim_multiple}, the "
                             f"dim multiple of backend {target.backend!r}")
        concat, width = o.combine == "concat", round_up(k, q) * o.importance  # k', P's width
        for t in tables:
            if concat and (t.embedding_dim % k or (t.embedding_dim // k) % q):
                raise ValueError(
                    f"multihash option combine='concat' splits dim {t.embedding_dim} of table {t.name!r} into "
                    f"num_hashes={k} parts, which must be whole multiples of {q} "
                    + (f"on {target.backend!r}" if o.dim_multiple is None else "(option dim_multiple)"))
        hot = [min(o.hot_rows, t.num_embeddings) for t in tables]
        mapped = [h > 0 and not is_ranked(table_counts(t, target.counts, HOT_ROWS, h)) for t, h in zip(tables, hot)]
        caps = [max(1, t.num_embeddings - h) * (k if concat else 1) for t, h in zip(tables, hot)]
        ratio = o.importance_ratio or 1.0

        def layout(M: int) -> list[MultiHashParams]:
            out = []
            for t, h, mp, cap in zip(tables, hot, mapped, caps):
                m = M if o.hash_all and budget is None else min(M, cap)
                K = min(max(1, t.num_embeddings - h), math.ceil(ratio * m)) if o.importance else 0
                dim = t.embedding_dim // k if concat else t.embedding_dim
                c = FP32_BYTES * (h * t.embedding_dim + m * dim + K * width) + KEY_BYTES * (k + o.importance) + ID_BYTES * h * mp
                if o.hash_all or c < t.full_bytes:
                    out.append(MultiHashParams(m, h, K, True, mp, c))
                else:
                    out.append(MultiHashParams(t.num_embeddings, 0, 0, False, False, t.full_bytes))
            return out

        if budget is None:
            params = layout(o.rows)  # type: ignore[arg-type]
        else:
            limit = budget * full_bytes(tables)
            total = lambda M: sum(p.bytes for p in layout(M))  # noqa: E731
            M = largest_within(total, 1, max(caps), limit)
            if M is None:
                raise InfeasibleBudget("multihash", budget, total(1) / full_bytes(tables), "one pool row per table")
            params = layout(M)
        if tables[0].pooling == "none" and o.append_weights and not all(p.compressed for p in params):
            whole = [t.name for t, p in zip(tables, params) if not p.compressed]
            raise ValueError(
                f"multihash option append_weights: unpooled tables need one output width, but tables {whole} are "
                f"stored whole and have no importance weights; set hash_all=True"
            )
        physical, lookups = [], []
        for i, (t, p) in enumerate(zip(tables, params)):
            parts = k if concat else 1
            name = f"{t.name}/multihash" if p.compressed else t.name
            rows = p.hot * parts + p.rows if p.compressed else t.num_embeddings * parts
            physical.append(uniform_table(name, rows, t.embedding_dim // parts))
            for f in t.feature_names:
                names = [f"{f}/h{j}" for j in range(k)] if concat else [f]
                lookups += [Lookup(n, i, t.pooling != "none") for n in names]
        if o.importance and any(p.compressed for p in params):  # P after the pools; one id per bag (`_importance`)
            physical += importance_tables(tables, params, width)
            lookups = per_id_lookups(tables, params, k, concat)
        extra = sum(p.bytes for p in params) - sum(ph.bytes for ph in physical)
        return Plan("multihash", o, budget, tuple(tables), tuple(physical), tuple(lookups), tuple(params), extra)

    @classmethod
    def reads_by_rank(cls, plan: Plan) -> list[bool]:
        return [not p.compressed for p in plan.params]  # whole tables are indexed directly

    @classmethod
    def reads_frequency(cls, plan: Plan) -> list[bool]:
        return [p.hot > 0 for p in plan.params]  # the hot ids are the most frequent ranks
    def output_dims(self) -> list[int]:
        return [
            self.tables[t].embedding_dim + self.k * (self.append and self.plan.params[t].compressed)
            for t in self.feature_table
        ]

    def _hot(self, s: _Table, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N_f,) whether each id is hot, and its row among the table's hot rows (meaningless where not hot)."""
        if s.hot_segment is None:  # ranked counts: the hot ids are 0..H-1
            return (x >= 0) & (x < s.hot), x
        ids = self.hot_keys[s.hot_segment[0] : s.hot_segment[1]]
        pos = torch.searchsorted(ids, x).clamp_(max=ids.numel() - 1)
        return ids[pos] == x, pos

    def _components(self, t: int, x: Tensor) -> _Components:
        """Ids (N_f,) of a feature of table t -> their physical rows, which are read and with what weights."""
        s, k, concat = self._tables[t], self.k, self.mode == "concat"
        if not s.compressed:  # a plain row; under concat, its k parts j N + x
            return _Components(x[:, None] + s.n * self._j if concat else x[:, None], None, None, None, None)
        keys = self.keys[s.key_row]
        rows = hash_to_range(x[:, None], keys[None, :k], s.rows) + (k * s.hot if concat else s.hot)  # (N_f, k)
        hot = None
        if s.hot:
            hot, idx = self._hot(s, x)
            if concat:  # part j of the hot row
                rows = torch.where(hot[:, None], s.hot * self._j + idx[:, None], rows)
            else:
                rows = torch.cat([torch.where(hot, idx, rows[:, 0])[:, None], rows[:, 1:]], 1)
        imp = a = None
        if self.per_id is not None:  # importance: combine weighs the components by P's rows
            imp = hash_to_range(x, keys[k], s.imp_rows)
        elif self.mode == "mean" and not self._scale_after:  # a mean with hot rows, which take no 1/k
            a = torch.full(rows.shape, 1.0 / k, device=x.device)
            a = a if hot is None else torch.where(hot[:, None], 1.0, a)
        keep = None  # under sum or mean a hot id reads its hot row (column 0) only
        if hot is not None and not concat:
            keep = torch.cat([torch.ones_like(hot[:, None]), ~hot[:, None].expand(-1, k - 1)], 1)
        return _Components(rows, keep, a, hot, imp)

    def _all_components(self, bags: Bags) -> list[_Components]:
        check_ids_in_range(bags, self.id_upper, self, "multihash")
        return [self._components(t, x) for t, x in zip(self.feature_table, bags.values.split(bags.ids_per_feature))]

    def remap(self, bags: Bags) -> Remapped:
        """Context for combine: each feature's `_Components`."""
        comps, B, k = self._all_components(bags), bags.batch_size, self.k
        if self.per_id is not None:
            return self.per_id.remap(bags, comps)
        w = None if bags.per_sample_weights is None else bags.per_sample_weights.split(bags.ids_per_feature)
        weights = None
        if w is not None or any(c.weights is not None for c in comps):
            def weigh(f: int) -> Tensor:  # (N_f, c) weight of each physical id
                rows, a = comps[f].rows, comps[f].weights
                a = torch.ones(rows.shape, device=rows.device) if a is None else a
                return a if w is None else a * w[f][:, None].to(a.dtype)

            weights = [weigh(f) for f in range(len(comps))]
        if self.mode == "concat":  # lookup (f, j) holds component j of feature f's ids
            values = torch.cat([c.rows.t().reshape(-1) for c in comps])
            lengths = bags.lengths().repeat_interleave(k, dim=0).reshape(-1)  # (F k B,)
            flat = None if weights is None else torch.cat([x.t().reshape(-1) for x in weights])
            offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
            sizes = [n for n in bags.ids_per_feature for _ in range(k)]
            return Remapped(bags, Bags(values, offsets, flat, sizes, B), comps)
        values = torch.cat([c.rows.reshape(-1) for c in comps])  # each id's components in order
        flat = None if weights is None else torch.cat([x.reshape(-1) for x in weights])
        if all(c.keep is None for c in comps):
            lengths = (bags.lengths() * self._parts_t[:, None]).reshape(-1)  # (F B,)
            offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
            sizes = [n * p for n, p in zip(bags.ids_per_feature, self._parts)]
            return Remapped(bags, Bags(values, offsets, flat, sizes, B), comps)
        reads = [torch.full_like(c.rows[:, 0], c.rows.shape[1]) if c.keep is None else c.keep.sum(1) for c in comps]
        per_id = torch.cat(reads)  # physical ids of each logical id
        cum = torch.cat([per_id.new_zeros(1), per_id.cumsum(0)])
        offsets = cum[bags.offsets]  # hot ids read one row, multi-hashed ones k
        sizes = offsets[::B].diff().tolist()  # the rows each feature reads: the one host read of hot rows
        keep = torch.cat([(torch.ones_like(c.rows, dtype=torch.bool) if c.keep is None else c.keep).view(-1)
                          for c in comps])
        at = torch.nonzero_static(keep, size=sum(sizes)).squeeze(1)  # sized on the host: no second read
        return Remapped(bags, Bags(values[at], offsets, None if flat is None else flat[at], sizes, B), comps)

    def combine(self, pooled: Tensor | None, rows: Tensor | None, batch: Remapped) -> Tensor:
        comps: list[_Components] = batch.context
        if self.per_id is not None:
            assert pooled is not None
            return self.per_id.combine(pooled, batch)
        if self.pooled:
            assert pooled is not None
            return pooled * self._column_scale if self._scale_after else pooled
        # unpooled: combine each id's physical rows with its weights a_j(x), feature by feature
        assert rows is not None
        out = []
        # without concat each feature is one lookup, whose size the remap read on the host
        sizes = [c.rows.numel() for c in comps] if self.mode == "concat" else batch.physical.ids_per_feature
        for t, c, x, kept in zip(self.feature_table, comps, rows.split(sizes), sizes):
            n, parts = c.rows.shape
            if self.mode == "concat":  # (k N_f, D/k) lookup-major -> (N_f, k, D/k)
                x = x.view(parts, n, x.shape[1]).transpose(0, 1)
            elif c.keep is not None:  # hot ids fill column 0 only
                at = torch.nonzero_static(c.keep.reshape(-1), size=kept).squeeze(1)
                x = x.new_zeros(n * parts, x.shape[1]).index_copy_(0, at, x).view(n, parts, x.shape[1])
            else:
                x = x.view(n, parts, x.shape[1])
            x = x if c.weights is None else x * c.weights[:, :, None]
            if self.mode == "concat":
                out.append(x.reshape(n, parts * x.shape[2]))
            else:  # a mean scaled after summing, as in the pooled case
                out.append(x.sum(1) / self.k if self._scale_after and self._tables[t].compressed else x.sum(1))
        return torch.cat(out)  # (N, D)
