"""`unified`: feature multiplexing / Unified Embedding (Coleman et al., "Unified Embedding: Battle-Tested
Feature Representations for Web-Scale ML Systems", NeurIPS 2023).

Feature multiplexing serves many features from one representation space: T shared tables E_0..E_{T-1},
each M x w. Unified Embedding hashes every feature value into it with a hash salted by the feature, and gives
a feature of width c w ("multi-size") c lookups whose rows are concatenated (Figure 1 of the paper). Here a
feature f with c_f chunks reads, for chunk j,

    h_{f,j}(x) = hash_to_range(x, key_{f,j}, M),    key_{f,j} = hash_key(derive_seed(seed, f, j))
    e_f(x)     = [E_{t(f,0)}[h_{f,0}(x)], ..., E_{t(f,c_f-1)}[h_{f,c_f-1}(x)]]          in R^{c_f w}

with f the feature's index in the collection and t(f, j) = g mod T, g the chunk's index among all chunks
(feature-major): chunks are dealt round-robin over the shared tables so each table serves an equal share of
lookups (the paper's spreading of one big table over several for hardware balance). The store reads the
lookups table by table (FBGEMM 1.8's CPU row-wise Adagrad fails unless each table's lookups are contiguous)
and `combine` puts the columns back in feature, chunk order. The budget sets M:

    bytes = 4 T M w  +  8 sum_f c_f          (shared tables + one stored int64 hash key per (feature, chunk))

Defaults: w = gcd of the logical dims and c_f = D_f / w, so every feature keeps its table's width; `chunks`
sets c_f per feature (its output is then c_f w wide, which may differ from D_f). Every feature is hashed, so
ids may be any int64. Tables keep their pooling: a pooled bag of a chunked feature is the concatenation of
the chunks' pooled bags, which the store computes directly.

Unified Embedding is not per table (one space serves all features), so it has no single-table drop-in: use
`et.build_collection(tables, "unified", budget)`.

Example:
    >>> import embtables as et
    >>> tables = [et.TableConfig("C1", 10_000_000, 16), et.TableConfig("C2", 500, 8)]
    >>> p = et.plan(tables, "unified", budget=0.01)
    >>> [(t.num_embeddings, t.embedding_dim) for t in p.physical_tables], p.total_bytes
    ([(200004, 8)], 6400152)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from embtables.bags import Bags
from embtables.config import Lookup, TableConfig, uniform_table
from embtables.hashing import derive_seed, hash_key, hash_to_range
from embtables.method import Method
from embtables.plan import InfeasibleBudget, Plan, Target, full_bytes
from embtables.registry import register_method

KEY_BYTES = 8


def _check_positive(name: str, value: object, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"unified option {name} must be a positive int, got {value!r}")


@dataclass(frozen=True)
class UnifiedOptions:
    """Options of `unified`.

    Args:
        rows: rows M of each shared table; exclusive with a budget.
        width: width w of a chunk (the shared tables' dim); default gcd of the tables' embedding dims.
        chunks: feature name -> chunk count c_f (output width c_f * w); features not named get D_f / w.
            Stored as sorted (feature, count) pairs.
        num_tables: number T of shared tables the chunks are dealt over round-robin.
        seed: base seed of the (feature, chunk) hash keys.
    """

    rows: int | None = None
    width: int | None = None
    chunks: Mapping[str, int] | tuple[tuple[str, int], ...] | None = None
    num_tables: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _check_positive("rows", self.rows)
        _check_positive("width", self.width)
        _check_positive("num_tables", self.num_tables, optional=False)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"unified option seed must be an int, got {self.seed!r}")
        if self.chunks is not None:
            pairs = tuple(self.chunks.items()) if isinstance(self.chunks, Mapping) else tuple(self.chunks)
            for pair in pairs:
                if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
                    raise ValueError(f"unified option chunks must map feature names to counts, got {self.chunks!r}")
                _check_positive(f"chunks[{pair[0]!r}]", pair[1], optional=False)
            object.__setattr__(self, "chunks", tuple(sorted(pairs)))


@dataclass(frozen=True)
class UnifiedParams:
    """Per logical table: chunks per feature, output width per feature, the shared rows M and width w, and
    `bytes`: the table's hash keys plus its share of the shared tables in proportion to its chunks (floored,
    so the plan's total is the exact figure)."""

    chunks: tuple[int, ...]
    out_dims: tuple[int, ...]
    shared_rows: int
    width: int
    bytes: int


def expansion(bags: Bags, features: Tensor, feature_list: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
    """Where the ids of lookups that each read every bag of logical feature `features[l]` come from.

    Args:
        bags: logical bags, F features.
        features: (L,) int64 logical feature of each lookup (on the bags' device).
        feature_list: the same L indices as Python ints.

    Returns:
        src (P,): the logical position each physical id is copied from, lookups in order;
        lookup (P,): the lookup each physical id belongs to;
        offsets (L*B + 1,): the physical bags' offsets.

    Example:
        >>> import torch
        >>> from embtables.bags import Bags
        >>> bags = Bags(torch.tensor([5, 6, 7]), torch.tensor([0, 2, 3]), None, [2, 1], 1)  # F=2, B=1
        >>> src, lookup, offsets = expansion(bags, torch.tensor([0, 0, 1]), [0, 0, 1])  # feature 0 read twice
        >>> src.tolist(), lookup.tolist(), offsets.tolist()
        ([0, 1, 0, 1, 2], [0, 0, 1, 1, 2], [0, 2, 4, 5])
    """
    dev = bags.values.device
    counts = torch.tensor(bags.counts, device=dev)  # (F,)
    starts = counts.cumsum(0) - counts
    lk_counts = counts[features]  # (L,)
    lk_starts = lk_counts.cumsum(0) - lk_counts
    total = sum(bags.counts[f] for f in feature_list)
    lookup = torch.arange(len(feature_list), device=dev).repeat_interleave(lk_counts, output_size=total)  # (P,)
    src = torch.arange(total, device=dev) + (starts[features] - lk_starts)[lookup]  # (P,)
    lengths = bags.lengths()[features].reshape(-1)  # (L*B,)
    return src, lookup, torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])


def expand_lookups(bags: Bags, features: Tensor, feature_list: Sequence[int]) -> tuple[Bags, Tensor, Tensor]:
    """Physical Bags whose lookup l holds the ids (and weights) of logical feature `features[l]`; see
    `expansion` for the arguments. Returns (bags, src, lookup)."""
    src, lookup, offsets = expansion(bags, features, feature_list)
    weights = None if bags.weights is None else bags.weights[src]
    out = Bags(bags.values[src], offsets, weights, [bags.counts[f] for f in feature_list], bags.batch_size)
    return out, src, lookup


def rows_by_id(rows: Tensor, src: Tensor, chunk: Tensor, num_ids: int, chunks: int) -> Tensor:
    """Regroup the per-id rows of an expansion by logical id.

    Args:
        rows: (P, D) one row per physical id, in lookup order.
        src: (P,) the logical id each physical id was copied from (from `expansion`).
        chunk: (P,) which of its feature's lookups each physical id belongs to, in [0, chunks).
        num_ids: N logical ids; chunks: lookups per feature (the same for every feature).

    Returns:
        (N, chunks, D): entry (i, j) is logical id i's row from its feature's j-th lookup.
    """
    perm = torch.empty(num_ids, chunks, dtype=torch.long, device=rows.device)
    perm[src, chunk] = torch.arange(src.numel(), device=rows.device)
    return rows[perm]  # (N, chunks, D)


def chunk_order(chunks: Sequence[int], num_tables: int) -> list[tuple[int, int, int]]:
    """The lookups as (feature, chunk, g) in store order: table g mod T major, then g (feature-major index).

    Example:
        >>> chunk_order([2, 1], num_tables=2)  # chunks g = 0, 2 read table 0; g = 1 reads table 1
        [(0, 0, 0), (1, 0, 2), (0, 1, 1)]
    """
    flat = [(f, j) for f, c in enumerate(chunks) for j in range(c)]
    order = sorted(range(len(flat)), key=lambda g: (g % num_tables, g))
    return [(*flat[g], g) for g in order]


def _chunk_counts(tables: Sequence[TableConfig], options: UnifiedOptions, width: int) -> list[int]:
    """c_f for every feature, feature-major; raises naming the option when a width does not divide."""
    given = dict(options.chunks or ())
    features = [f for t in tables for f in t.feature_names]
    unknown = sorted(set(given) - set(features))
    if unknown:
        raise ValueError(f"unified option chunks names features {unknown} that no table has; features: {features}")
    out = []
    for t in tables:
        for f in t.feature_names:
            if f in given:
                out.append(given[f])
            elif t.embedding_dim % width:
                raise ValueError(
                    f"unified option width={width} does not divide dim {t.embedding_dim} of table {t.name!r}; "
                    f"give chunks for feature {f!r} or another width"
                )
            else:
                out.append(t.embedding_dim // width)
    return out


@register_method("unified")
class Unified(Method):
    """Unified Embedding: every (feature, chunk) hashed into shared tables; chunks concatenated per feature."""

    Options = UnifiedOptions

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        opts: UnifiedOptions = plan.options
        self.chunks: list[int] = [c for p in plan.params for c in p.chunks]
        self.width: int = plan.physical_tables[0].embedding_dim
        self.shared_rows: int = plan.physical_tables[0].num_embeddings
        order = chunk_order(self.chunks, opts.num_tables)
        self._lookup_list = [f for f, _, _ in order]
        self._one_lookup_per_feature = self._lookup_list == list(range(len(self.chunks)))
        # the hash parameters: one key per (feature, chunk) in lookup order, serving state counted in memory_bytes
        keys = [hash_key(derive_seed(opts.seed, f, j)) for f, j, _ in order]
        self.register_buffer("keys", torch.tensor(keys, dtype=torch.int64))
        self.register_buffer("_lookup_feature", torch.tensor(self._lookup_list, dtype=torch.int64), persistent=False)
        self.register_buffer("_lookup_chunk", torch.tensor([j for _, j, _ in order], dtype=torch.int64), persistent=False)
        # the store's w-wide column blocks (lookup order) taken in feature, chunk order; [] when they agree
        position = {g: i for i, (_, _, g) in enumerate(order)}
        perm = [position[g] for g in range(len(order))]
        self._perm = [] if perm == list(range(len(perm))) else perm

    @classmethod
    def solve(cls, tables: Sequence[TableConfig], budget: float | None, options: UnifiedOptions, target: Target) -> Plan:
        if (budget is None) == (options.rows is None):
            raise ValueError("unified needs exactly one of budget= or rows=")
        width = options.width if options.width is not None else math.gcd(*[t.embedding_dim for t in tables])
        if width % target.dim_multiple:
            raise ValueError(
                f"unified option width={width} must be a multiple of {target.dim_multiple} on the "
                f"{target.backend!r} backend (the default is the gcd of the tables' dims)"
            )
        chunks = _chunk_counts(tables, options, width)
        out_dims = [c * width for c in chunks]
        if tables[0].pooling == "none" and len(set(out_dims)) > 1:
            raise ValueError(
                f"unified: unpooled tables return one row width for all features, but the chunks give widths "
                f"{dict(zip([f for t in tables for f in t.feature_names], out_dims))}"
            )
        total_chunks, T = sum(chunks), options.num_tables
        if T > total_chunks:
            raise ValueError(f"unified option num_tables={T} exceeds the {total_chunks} chunks, so a table would be unread")
        key_bytes = KEY_BYTES * total_chunks
        row_bytes = 4 * T * width  # one row in every shared table
        if budget is not None:
            limit = budget * full_bytes(tables)
            M = int((limit - key_bytes) // row_bytes)
            if M < 1:
                raise InfeasibleBudget(
                    "unified", budget, (row_bytes + key_bytes) / full_bytes(tables), "one row per shared table"
                )
        else:
            M = options.rows  # type: ignore[assignment]
        physical = tuple(uniform_table(f"unified/{i}", M, width) for i in range(T))
        features = [f for t in tables for f in t.feature_names]
        pooled = tables[0].pooling != "none"
        lookups = [Lookup(f"{features[f]}/c{j}", g % T, pooled) for f, j, g in chunk_order(chunks, T)]
        params, i = [], 0
        for t in tables:
            c = tuple(chunks[i : i + len(t.feature_names)])
            share = row_bytes * M * sum(c) // total_chunks
            params.append(UnifiedParams(c, tuple(x * width for x in c), M, width, KEY_BYTES * sum(c) + share))
            i += len(t.feature_names)
        return Plan("unified", options, budget, tuple(tables), physical, tuple(lookups), tuple(params), key_bytes)

    def output_dims(self) -> list[int]:
        return [c * self.width for c in self.chunks]

    def remap(self, bags: Bags) -> Bags:
        if self._one_lookup_per_feature:
            # one chunk per feature, one table: the physical bags are the logical ones, only the ids change
            values = hash_to_range(bags.values, bags.per_id(self.keys), self.shared_rows)
            return Bags(values, bags.offsets, bags.weights, bags.counts, bags.batch_size)
        phys, _, lookup = expand_lookups(bags, self._lookup_feature, self._lookup_list)
        values = hash_to_range(phys.values, self.keys[lookup], self.shared_rows)
        return Bags(values, phys.offsets, phys.weights, phys.counts, phys.batch_size)

    def combine(self, pooled: Tensor | None, rows: Tensor | None, bags: Bags) -> Tensor:
        if self.pooled:
            if not self._perm:
                return pooled  # type: ignore[return-value]
            # split + cat: views and one copy each way, cheaper on CPU than a column gather or slices
            blocks = pooled.split(self.width, dim=1)  # type: ignore[union-attr]
            return torch.cat([blocks[i] for i in self._perm], 1)
        # unpooled: every feature has the same chunk count c (checked by solve); rows are lookup-major
        c = self.chunks[0]
        src, lookup, _ = expansion(bags, self._lookup_feature, self._lookup_list)
        out = rows_by_id(rows, src, self._lookup_chunk[lookup], bags.values.numel(), c)  # (N, c, w)
        return out.reshape(-1, c * self.width)  # (N, c*w)
