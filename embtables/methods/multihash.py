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
  r = `importance_ratio` (default 1), capped at the ids it serves. P starts at ones (a plain multi-hash sum)
  and is a dense parameter of the method: train it with the model's dense optimizer (`ebc.method.parameters()`).
- Frequency + double hashing (Zhang et al., "Model Size Reduction Using Frequency Based Double Hashing for
  Recommender Systems", RecSys 2020), `hot_rows=H`: the H most frequent ids of the table (by the per-feature
  `counts`, summed over the table's features) get collision-free rows, e(x) = U[r(x)], U in R^{H x D}; the
  others are multi-hashed (their double hashing is k = 2). Importance does not apply to hot ids; with
  `append_weights` their p(x) is still appended, so every id has the same output layout.

Memory of a compressed table, exactly (fp32 weights, int64 keys and maps):

    bytes = 4 (H D + m D')  +  8 (k + [importance])  +  4 K k [importance]  +  8 H [hot map]

with D' = D (sum, mean) or D / k (concat). The hot map is a sorted array of the H hot ids, stored only when
the counts are not frequency-ranked; with ranked counts (the data pipeline's: non-increasing, id 0 the most
frequent) the hot ids are exactly 0..H-1 and need no map. A table is compressed only when that takes fewer
bytes than storing it whole (4 N D), unless `hash_all`; whole tables are looked up directly (ids in [0, N)),
compressed ones accept any int64 id. A budget sets one cap M on the pool rows of every table, m_t = min(M,
cap_t), the largest that fits (cap_t: k (N_t - H_t) for concat, N_t - H_t otherwise).

Store layout: one physical table per logical table (hot rows first, then the pool). With sum or mean, each id
becomes 1 (hot) or k physical ids of one pooled lookup, so the store pools all k rows at once (pooling
commutes with the sum) and importance and 1/k enter as per-sample weights, which both backends differentiate
(FBGEMM 1.8 on CPU returns gradients w.r.t. per_sample_weights); a mean without importance or hot rows is
instead scaled by 1/k after pooling, per feature, which needs no weights. With concat each feature gets k
lookups, one per component, so the store's pooled output already is the concatenation (a hot id's row U[r(x)]
is stored as k parts of D/k). Unpooled tables use per-id lookups and combine the components per id.

Example:
    >>> import torch
    >>> from embtables.methods.multihash import MultiHashEmbeddingBag
    >>> bag = MultiHashEmbeddingBag(1_000_000, 16, budget=0.01, importance=True)
    >>> bag(torch.tensor([[3, 999_999], [2**40, -5]])).shape  # compressed tables take any int64 id
    torch.Size([2, 16])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from embtables.bags import Bags
from embtables.config import Lookup, SparseOptimizer, TableConfig, uniform_table
from embtables.hashing import derive_seed, hash_key, hash_to_range
from embtables.method import Method, check_ids_in_range, per_feature
from embtables.methods.unified import expansion, rows_by_id
from embtables.plan import InfeasibleBudget, Plan, Target, full_bytes, largest_within
from embtables.registry import register_method
from embtables.single import TABLE, Embedding, EmbeddingBag

KEY_BYTES = 8
COMBINES = ("sum", "mean", "concat")


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
    """

    rows: int | None = None
    num_hashes: int = 2
    combine: Literal["sum", "mean", "concat"] = "sum"
    importance: bool = False
    importance_ratio: float | None = None
    append_weights: bool = False
    hot_rows: int = 0
    seed: int = 0
    hash_all: bool = False

    def __post_init__(self) -> None:
        def positive(name: str, value: object, minimum: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"multihash option {name} must be an int >= {minimum}, got {value!r}")

        if self.rows is not None:
            positive("rows", self.rows, 1)
        positive("num_hashes", self.num_hashes, 1)
        positive("hot_rows", self.hot_rows, 0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"multihash option seed must be an int, got {self.seed!r}")
        if self.combine not in COMBINES:
            raise ValueError(f"multihash option combine must be one of {COMBINES}, got {self.combine!r}")
        for name in ("importance", "append_weights", "hash_all"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"multihash option {name} must be a bool, got {getattr(self, name)!r}")
        for name in ("importance_ratio", "append_weights"):
            if getattr(self, name) not in (None, False) and not self.importance:
                raise ValueError(f"multihash option {name} needs importance=True")
        r = self.importance_ratio
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < math.inf):
            raise ValueError(f"multihash option importance_ratio must be a positive number, got {r!r}")


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


def table_counts(table: TableConfig, counts: Mapping[str, Any] | None, hot: int) -> Tensor:
    """The table's id counts: its features' counts summed, zero-padded to at least `hot` ids.

    Args:
        table: the logical table.
        counts: feature name -> (N_f,) id counts, N_f <= the table's rows (array-like, non-negative).
        hot: the hot rows H the counts will rank.

    Raises:
        ValueError: counts are absent, miss one of the table's features, or are not a valid 1-D array.

    Example:
        >>> import torch, embtables as et
        >>> t = et.TableConfig("t", 10, 4, feature_names=("a", "b"))
        >>> table_counts(t, {"a": torch.tensor([3, 1]), "b": torch.tensor([0, 2, 5])}, hot=4).tolist()
        [3, 3, 5, 0]
    """
    if counts is None:
        raise ValueError(f"multihash option hot_rows needs per-feature id counts (counts=), none were given")
    parts = []
    for f in table.feature_names:
        if f not in counts:
            raise ValueError(
                f"multihash option hot_rows needs counts for feature {f!r} of table {table.name!r}; "
                f"counts has {sorted(counts)}"
            )
        c = torch.as_tensor(counts[f])
        if c.dim() != 1 or c.numel() > table.num_embeddings or c.is_complex() or c.dtype == torch.bool:
            raise ValueError(
                f"counts of feature {f!r} must be a 1-D numeric array of at most {table.num_embeddings} ids "
                f"(table {table.name!r}), got shape {tuple(c.shape)} and dtype {c.dtype}"
            )
        if c.numel() and bool((c < 0).any()):
            raise ValueError(f"counts of feature {f!r} (table {table.name!r}) must be non-negative")
        parts.append(c.double() if c.is_floating_point() else c.long())
    dtype = torch.float64 if any(p.is_floating_point() for p in parts) else torch.int64
    total = torch.zeros(max([hot] + [p.numel() for p in parts]), dtype=dtype)
    for p in parts:
        total[: p.numel()] += p
    return total


def is_ranked(counts: Tensor) -> bool:
    """Counts are frequency-ranked (non-increasing), so the H most frequent ids are 0..H-1."""
    return bool((counts[1:] <= counts[:-1]).all())


@register_method("multihash")
class MultiHash(Method):
    """Multi-hash embeddings: sum / mean / concat of k hashed pool rows, optional importance and hot rows."""

    Options = MultiHashOptions

    def __init__(self, plan: Plan, counts: Mapping[str, Any] | None = None) -> None:
        super().__init__(plan)
        o: MultiHashOptions = plan.options
        params: tuple[MultiHashParams, ...] = plan.params
        comp = [p.compressed for p in params]
        comp_ids = [t for t, c in enumerate(comp) if c]
        mapped = [t for t, p in enumerate(params) if p.hot_map]
        self.k, self.mode = o.num_hashes, o.combine
        self.append = o.append_weights and bool(comp_ids)  # only compressed tables have importance weights
        self._any_hot = any(p.hot for p in params)
        self._all_compressed = all(comp)
        # a mean where every id of a compressed table is multi-hashed: 1/k commutes with pooling, apply it after
        self._scale_after = o.combine == "mean" and not o.importance and not self._any_hot

        # serving state, counted in memory_bytes: k hash keys (+ the importance key) per compressed table, the
        # importance table P and the hot-id map
        hashes = list(range(self.k)) + ([-1] if o.importance else [])
        keys = [[hash_key(derive_seed(o.seed, t, j)) for j in hashes] for t in comp_ids]
        self.register_buffer("keys", torch.tensor(keys, dtype=torch.int64).view(len(comp_ids), len(hashes)))
        K = [p.importance_rows for p in params]
        # P starts at ones, so a fresh hash embedding is the plain multi-hash combination
        self.importance = nn.Parameter(torch.ones(sum(K), self.k)) if o.importance else None
        self._bits = max([self.tables[t].num_embeddings.bit_length() for t in mapped], default=0)
        if len(mapped) >= 1 << (63 - self._bits):
            raise ValueError("multihash: too many tables with hot-id maps to pack their keys into int64")
        self.register_buffer("hot_keys", self._hot_keys(mapped, counts))

        # per-feature constants derived from the plan (not state)
        def constant(name: str, per_table: list, dtype: torch.dtype = torch.int64) -> None:
            self.register_buffer(name, per_feature(self, per_table, dtype), persistent=False)

        T = range(len(params))
        constant("_compressed", comp, torch.bool)
        constant("_key_index", [comp_ids.index(t) if comp[t] else 0 for t in T])
        constant("_rows", [p.rows if p.compressed else 1 for p in params])
        constant("_hot", [p.hot for p in params])
        constant("_mapped", [p.hot_map for p in params], torch.bool)
        constant("_slot", [mapped.index(t) if t in mapped else 0 for t in T])
        constant("_seg", [sum(params[s].hot for s in mapped[: mapped.index(t)]) if t in mapped else 0 for t in T])
        constant("_imp_offset", [sum(K[:t]) if comp[t] else 0 for t in T])  # whole tables read row 0, unused
        constant("_imp_rows", [max(1, x) for x in K])
        constant("_upper", [t.num_embeddings for t in self.tables])
        constant("_feature_scale", [1.0 / self.k if c else 1.0 for c in comp], torch.float32)
        self.register_buffer("_feature", torch.arange(len(self.feature_names)), persistent=False)
        dims = torch.tensor(self.output_dims())
        self.register_buffer("_column_scale", self._feature_scale.repeat_interleave(dims), persistent=False)
        self._lookup_list = [f for f in range(len(self.feature_names)) for _ in range(self.k)]
        self.register_buffer("_lookup_feature", torch.tensor(self._lookup_list), persistent=False)
        self.register_buffer("_lookup_chunk", torch.arange(self.k).repeat(len(self.feature_names)), persistent=False)
        self._core_dims = [self.tables[t].embedding_dim for t in self.feature_table]
        self._appends = [self.append and comp[t] for t in self.feature_table]

    @classmethod
    def from_plan(cls, plan: Plan, counts: Mapping[str, Any] | None) -> "MultiHash":
        return cls(plan, counts)

    def _hot_keys(self, mapped: list[int], counts: Mapping[str, Any] | None) -> Tensor:
        """Sorted packed keys (slot << bits | id) of the hot ids of tables whose counts are not ranked."""
        parts = []
        for slot, t in enumerate(mapped):
            H = self.plan.params[t].hot
            c = table_counts(self.tables[t], counts, H)
            ids = torch.sort(c, descending=True, stable=True).indices[:H].sort().values
            parts.append((slot << self._bits) | ids)
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)

    # ---- planning -------------------------------------------------------------------------------------
    @classmethod
    def solve(cls, tables: Sequence[TableConfig], budget: float | None, options: MultiHashOptions, target: Target) -> Plan:
        o, k = options, options.num_hashes
        if (budget is None) == (o.rows is None):
            raise ValueError("multihash needs exactly one of budget= or rows=")
        concat = o.combine == "concat"
        for t in tables:
            if concat and (t.embedding_dim % k or (t.embedding_dim // k) % target.dim_multiple):
                raise ValueError(
                    f"multihash option combine='concat' splits dim {t.embedding_dim} of table {t.name!r} into "
                    f"num_hashes={k} parts, which must be whole multiples of {target.dim_multiple} on {target.backend!r}"
                )
        hot = [min(o.hot_rows, t.num_embeddings) for t in tables]
        mapped = [h > 0 and not is_ranked(table_counts(t, target.counts, h)) for t, h in zip(tables, hot)]
        caps = [max(1, t.num_embeddings - h) * (k if concat else 1) for t, h in zip(tables, hot)]
        ratio = o.importance_ratio or 1.0

        def layout(M: int) -> list[MultiHashParams]:
            out = []
            for t, h, mp, cap in zip(tables, hot, mapped, caps):
                m = M if o.hash_all and budget is None else min(M, cap)
                K = min(max(1, t.num_embeddings - h), math.ceil(ratio * m)) if o.importance else 0
                dim = t.embedding_dim // k if concat else t.embedding_dim
                c = 4 * (h * t.embedding_dim + m * dim) + 4 * K * k + KEY_BYTES * (k + o.importance + h * mp)
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
        extra = sum(p.bytes - 4 * ph.num_embeddings * ph.embedding_dim for p, ph in zip(params, physical))
        return Plan("multihash", o, budget, tuple(tables), tuple(physical), tuple(lookups), tuple(params), extra)

    # ---- forward ----------------------------------------------------------------------------------------
    def output_dims(self) -> list[int]:
        return [
            self.tables[t].embedding_dim + self.k * (self.append and self.plan.params[t].compressed)
            for t in self.feature_table
        ]

    def _hot_lookup(self, x: Tensor, at: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """(N,) whether each id is hot, and its row among its table's hot rows; `at` expands per-feature buffers."""
        hot = (x >= 0) & (x < at(self._hot)) & ~at(self._mapped)
        idx = x
        if self.hot_keys.numel():
            mapped = at(self._mapped) & (x >= 0) & (x < at(self._upper))
            q = torch.where(mapped, (at(self._slot) << self._bits) | x, -1)
            pos = torch.searchsorted(self.hot_keys, q).clamp_(max=self.hot_keys.numel() - 1)
            found = mapped & (self.hot_keys[pos] == q)
            hot, idx = hot | found, torch.where(found, pos - at(self._seg), idx)
        return hot, idx

    def _components(self, bags: Bags, feat: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Each id's k components: (N, k) physical rows, (N,) bool `multi` (the id is multi-hashed, i.e. of a
        compressed table and not hot) and (N, k) weights a_j(x) (importance, 1/k for mean; 1 elsewhere) or None.
        `feat` (N,) is each id's feature."""
        x, k = bags.values, self.k
        at = lambda t: t.index_select(0, feat)  # noqa: E731  (per-feature buffer -> per id)
        if not self._all_compressed:
            bad = ~at(self._compressed) & ((x < 0) | (x >= at(self._upper)))
            if bool(bad.any()):  # ids of whole tables index rows directly: name the culprit
                check_ids_in_range(bags, self._upper, ~self._compressed, self, "multihash")
        if self._any_hot:
            hot, hot_idx = self._hot_lookup(x, at)
        else:
            hot, hot_idx = torch.zeros_like(x, dtype=torch.bool), x
        multi = at(self._compressed) & ~hot
        keys = at(self.keys[self._key_index]) if self.keys.numel() else None  # (N, k [+1])
        if keys is None:
            hashed = x.new_zeros(x.numel(), k)
        else:
            hashed = hash_to_range(x[:, None], keys[:, :k], at(self._rows)[:, None])  # (N, k)
        H, j = at(self._hot)[:, None], torch.arange(k, device=x.device)
        if self.mode == "concat":
            # component j of: a hot id -> its row's j-th part; a whole table's id -> part j of row x
            other = torch.where(hot[:, None], j * H + hot_idx[:, None], j * at(self._upper)[:, None] + x[:, None])
            rows = torch.where(multi[:, None], k * H + hashed, other)  # (N, k)
        else:
            rows = hashed + H  # (N, k); only column 0 is read for hot and whole-table ids
            rows[:, 0] = torch.where(multi, rows[:, 0], torch.where(hot, hot_idx, x))
        a = None
        if self.importance is not None and keys is not None:
            p = self.importance[at(self._imp_offset) + hash_to_range(x, keys[:, k], at(self._imp_rows))]  # (N, k)
            a = torch.where(multi[:, None], p / k if self.mode == "mean" else p, torch.ones_like(p))
        elif self.mode == "mean" and not self._scale_after:
            a = torch.where(multi, 1.0 / k, 1.0)[:, None].expand(-1, k)
        return rows, multi, a

    def _importance_of(self, bags: Bags) -> Tensor:
        """(N, k) importance vectors p(x) = P[h_0(x)] (rows of whole-table ids are never read)."""
        feat = bags.per_id(self._feature)
        at = lambda t: t.index_select(0, feat)  # noqa: E731
        keys = at(self.keys[self._key_index, self.k])
        return self.importance[at(self._imp_offset) + hash_to_range(bags.values, keys, at(self._imp_rows))]  # type: ignore[index]

    def remap(self, bags: Bags) -> Bags:
        rows, multi, a = self._components(bags, bags.per_id(self._feature))
        w = bags.weights
        if w is not None:
            a = w[:, None].expand(-1, self.k) if a is None else a * w[:, None].to(a.dtype)
        if self.mode == "concat":
            src, lookup, offsets = expansion(bags, self._lookup_feature, self._lookup_list)
            j = self._lookup_chunk[lookup]
            counts = [bags.counts[f] for f in self._lookup_list]
            return Bags(rows[src, j], offsets, None if a is None else a[src, j], counts, bags.batch_size)
        keep = torch.cat([torch.ones_like(multi[:, None]), multi[:, None].expand(-1, self.k - 1)], 1)  # (N, k)
        mult = 1 + (self.k - 1) * multi.long()  # physical ids per logical id
        cum = torch.cat([mult.new_zeros(1), mult.cumsum(0)])
        offsets = cum[bags.offsets]
        counts = offsets[:: bags.batch_size].diff().tolist()
        values = rows.masked_select(keep)  # each id's kept components, in id order
        return Bags(values, offsets, None if a is None else a.masked_select(keep), counts, bags.batch_size)

    def combine(self, pooled: Tensor | None, rows: Tensor | None, bags: Bags) -> Tensor:
        if self.pooled:
            if self._scale_after:
                return pooled * self._column_scale  # type: ignore[operator]
            if not self.append:
                return pooled  # type: ignore[return-value]
            appended = bags.sum_rows(self._importance_of(bags)).split(self.k, 1)  # F x (B, k)
            core = pooled.split(self._core_dims, 1)  # type: ignore[union-attr]
            # each feature's vector, then its weights when its table has them (split + cat: cheap both ways)
            pieces = [x for f, c in enumerate(core) for x in ((c, appended[f]) if self._appends[f] else (c,))]
            return torch.cat(pieces, 1)
        # unpooled: combine each id's physical rows with its weights a_j(x)
        _, multi, a = self._components(bags, bags.per_id(self._feature))
        N = bags.values.numel()
        if self.mode == "concat":
            src, lookup, _ = expansion(bags, self._lookup_feature, self._lookup_list)
            parts = rows_by_id(rows, src, self._lookup_chunk[lookup], N, self.k)  # (N, k, D/k)
            out = (parts if a is None else parts * a[:, :, None]).flatten(1)  # (N, D)
        else:
            keep = torch.cat([torch.ones_like(multi[:, None]), multi[:, None].expand(-1, self.k - 1)], 1)
            owner = torch.arange(N, device=multi.device)[:, None].expand(-1, self.k).masked_select(keep)  # (N_rows,)
            rows = rows if a is None else rows * a.masked_select(keep)[:, None]
            out = rows.new_zeros(N, rows.shape[1]).index_add_(0, owner, rows)  # (N, D)
            if self._scale_after:
                out = out * bags.per_id(self._feature_scale)[:, None]
        return torch.cat([out, self._importance_of(bags)], 1) if self.append else out


class MultiHashEmbeddingBag(EmbeddingBag):
    """`torch.nn.EmbeddingBag` with multi-hash embeddings; see `embtables.methods.multihash`.

    Args:
        num_embeddings, embedding_dim, mode: as `torch.nn.EmbeddingBag` (mode `"sum"` or `"mean"`).
        rows, budget: pool rows, or a fraction of the full table's bytes (exactly one).
        num_hashes, combine, importance, importance_ratio, append_weights, hot_rows, seed, hash_all: the
            method's options.
        counts: (N,) id counts of the table, needed by `hot_rows`.
        include_last_offset, backend, optimizer, device: as `et.EmbeddingBag`.

    Forward: input (B, L), or (N,) ids with (B,) offsets -> (B, D), or (B, D + k) with `append_weights`.

    Example:
        >>> import torch
        >>> from embtables.methods.multihash import MultiHashEmbeddingBag
        >>> bag = MultiHashEmbeddingBag(10_000_000, 16, rows=50_000, combine="concat")
        >>> bag(torch.tensor([1, 2, 3]), torch.tensor([0, 1])).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        mode: Literal["sum", "mean"] = "sum",
        *,
        rows: int | None = None,
        budget: float | None = None,
        num_hashes: int = 2,
        combine: Literal["sum", "mean", "concat"] = "sum",
        importance: bool = False,
        importance_ratio: float | None = None,
        append_weights: bool = False,
        hot_rows: int = 0,
        counts: Tensor | None = None,
        seed: int = 0,
        hash_all: bool = False,
        include_last_offset: bool = False,
        backend: str = "torch",
        optimizer: SparseOptimizer | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, mode, method="multihash", budget=budget,
            include_last_offset=include_last_offset, backend=backend, optimizer=optimizer,
            counts=None if counts is None else {TABLE: counts}, device=device, rows=rows, num_hashes=num_hashes,
            combine=combine, importance=importance, importance_ratio=importance_ratio,
            append_weights=append_weights, hot_rows=hot_rows, seed=seed, hash_all=hash_all,
        )


class MultiHashEmbedding(Embedding):
    """`torch.nn.Embedding` with multi-hash embeddings: ids of any shape -> (*shape, D) (D + k with
    `append_weights`); arguments as `MultiHashEmbeddingBag` without `mode` and `include_last_offset`.

    Example:
        >>> import torch
        >>> from embtables.methods.multihash import MultiHashEmbedding
        >>> emb = MultiHashEmbedding(10_000_000, 16, rows=50_000, num_hashes=3)
        >>> emb(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 16])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        rows: int | None = None,
        budget: float | None = None,
        num_hashes: int = 2,
        combine: Literal["sum", "mean", "concat"] = "sum",
        importance: bool = False,
        importance_ratio: float | None = None,
        append_weights: bool = False,
        hot_rows: int = 0,
        counts: Tensor | None = None,
        seed: int = 0,
        hash_all: bool = False,
        backend: str = "torch",
        optimizer: SparseOptimizer | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, method="multihash", budget=budget, backend=backend, optimizer=optimizer,
            counts=None if counts is None else {TABLE: counts}, device=device, rows=rows, num_hashes=num_hashes,
            combine=combine, importance=importance, importance_ratio=importance_ratio,
            append_weights=append_weights, hot_rows=hot_rows, seed=seed, hash_all=hash_all,
        )
