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
lookups (the paper's spreading of one big table over several for hardware balance). The budget sets M:

    bytes = 4 T M w  +  8 sum_f c_f          (shared tables + one stored int64 hash key per (feature, chunk))

Chunking is part of the solve (`probes`; g = gcd of the logical dims D_t, N_t a table's rows):

    probes=c:                w = g / c,   c_f = c D_t / g     (all dims D: c chunks of width D / c, output D)
    probes="by_vocabulary":  w = g / 4,   c_f = s_t D_t / g,
                             s_t = max(1, 4 / 2^k_t),   k_t = floor(log_16(N_max / N_t))

The default is 2 probes (1 where the store's dim multiple does not divide g / 2): on the planted synthetic Criteo
it beat single-probe multiplexing (probes=1, one full-width lookup per feature) by +0.0105 AUC at budget 0.1 and
+0.0158 at 0.01, and 4 probes by +0.012 at 0.1; by_vocabulary was +0.004 better than 2 at 0.01 but 0.002 worse at
0.1 and changes output widths (benchmarks/results/unified_ablation.md, one seed). by_vocabulary gives the
largest vocabularies 4 chunks (output width D_t) and halves that per 16x fewer rows, down to 1 chunk (output
D_t / 4): s_t is 4 (N_t / N_max)^(1/4) rounded up to a power of two, the fourth-root rule of thumb for
embedding widths. It depends on the tables only, not on M (so the budget fit below stays one division); a
feature whose output c_f w differs from D_t is pooled to that width (DLRM projects it to D), and unpooled
tables, which return one width for all features, refuse mixed widths. `width=w` instead sets the chunk width
directly (c_f = D_t / w); `chunks` sets c_f per named feature, overriding both (output c_f w). Every feature
is hashed, so ids may be any int64. Tables keep their pooling: a pooled bag of a chunked feature is the
concatenation of the chunks' pooled bags, which the store computes directly.

Store layout. Pooled collections read each shared table with ONE lookup whose bags are the bags of all the
chunks it serves, sample-major (`Bags.stack`: bag b n + i is sample b's i-th chunk on that table, batch B n).
FBGEMM 1.8's CPU row-wise Adagrad takes a slow scalar path for a table read by several lookups (it keeps its
vectorised kernel for tables read by one), so this is ~2x faster in backward than one lookup per chunk, and
the store's (B n, T w) output already is (B, n T w) in feature, chunk order: `combine` is a view. On the fused
backend, which has no such slow path, pooled collections take one lookup per (feature, chunk) instead, table by
table: each feature's ids are then pooled together, while its own hot rows are in the cache (stacked, sample
b's 26 features would take turns over the whole shared table), and the store writes each chunk straight to its
output columns. Unpooled collections use one per-id lookup per (feature, chunk), table by table, and regroup
the rows per id.

Unified Embedding is not per table (one space serves all features), so it has no single-table drop-in: use
`et.build_collection(tables, "unified", budget)`.

Example:
    >>> import embtables as et
    >>> tables = [et.TableConfig("C1", 10_000_000, 16), et.TableConfig("C2", 500, 8)]
    >>> p = et.plan(tables, "unified", budget=0.01)  # 2 probes: w = 8 / 2, C1 16 = 4 x 4, C2 8 = 2 x 4
    >>> [(t.num_embeddings, t.embedding_dim) for t in p.physical_tables], [q.chunks for q in p.params]
    ([(400007, 4)], [(4,), (2,)])
    >>> one = et.plan(tables, "unified", budget=0.01, probes=1)  # single probe: one lookup of width 8 per 8 columns
    >>> [(t.num_embeddings, t.embedding_dim) for t in one.physical_tables], one.total_bytes
    ([(200004, 8)], 6400152)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch
from torch import Tensor

from embtables.bags import Bags, rows_by_slot, upload
from embtables.config import FP32_BYTES, KEY_BYTES, Lookup, TableConfig, uniform_table
from embtables.hashing import derive_seed, hash_key, hash_to_range
from embtables.method import Method, Remapped
from embtables.methods._unified_chunks import check_probes, chunk_layout
from embtables.options import check_options, option
from embtables.plan import InfeasibleBudget, Plan, Target, full_bytes
from embtables.program import ColumnProgram, Piece, Term
from embtables.registry import register_method



@dataclass(frozen=True)
class UnifiedOptions:
    """Options of `unified`.

    Args:
        rows: rows M of each shared table; exclusive with a budget.
        probes: chunks per feature: an int c (c D_t / g chunks of width w = g / c, g the gcd of the tables'
            dims: c chunks of width D / c when all dims are D), or "by_vocabulary" (4, 2 or 1 chunks of width
            g / 4 per g columns by the table's rows, see the module docstring); default 2 (1 where the store's
            dim multiple does not divide g / 2).
        width: width w of a chunk (the shared tables' dim), then c_f = D_t / w; exclusive with `probes`.
        chunks: feature name -> chunk count c_f (output width c_f * w), overriding `probes` for the named features.
            Stored as sorted (feature, count) pairs.
        num_tables: number T of shared tables the chunks are dealt over round-robin.
        seed: base seed of the (feature, chunk) hash keys.
    """

    rows: int | None = option(None, minimum=1)
    probes: int | Literal["by_vocabulary"] | None = None
    width: int | None = option(None, minimum=1)
    chunks: Mapping[str, int] | tuple[tuple[str, int], ...] | None = None
    num_tables: int = option(1, minimum=1)
    seed: int = 0

    def __post_init__(self) -> None:
        check_options(self, "unified")
        check_probes(self.probes)
        if self.chunks is not None:
            pairs = tuple(self.chunks.items()) if isinstance(self.chunks, Mapping) else tuple(self.chunks)
            for pair in pairs:
                if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)):
                    raise ValueError(f"unified option chunks must map feature names to counts, got {self.chunks!r}")
                if isinstance(pair[1], bool) or not isinstance(pair[1], int) or pair[1] < 1:
                    raise ValueError(f"unified option chunks[{pair[0]!r}] must be an int >= 1, got {pair[1]!r}")
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


def chunk_order(chunks: Sequence[int], num_tables: int) -> list[tuple[int, int, int]]:
    """The lookups as (feature, chunk, g) in store order: table g mod T major, then g (feature-major index).

    Example:
        >>> chunk_order([2, 1], num_tables=2)  # chunks g = 0, 2 read table 0; g = 1 reads table 1
        [(0, 0, 0), (1, 0, 2), (0, 1, 1)]
    """
    flat = [(f, j) for f, c in enumerate(chunks) for j in range(c)]
    order = sorted(range(len(flat)), key=lambda g: (g % num_tables, g))
    return [(*flat[g], g) for g in order]


def _lookups(features: Sequence[str], chunks: Sequence[int], num_tables: int, pooled: bool, stacked: bool
             ) -> list[Lookup]:
    """Stacked: one pooled lookup per shared table (its chunks stacked); else one per (feature, chunk)."""
    if stacked:
        return [Lookup(f"unified/{s}", s, True) for s in range(num_tables)]
    return [Lookup(f"{features[f]}/c{j}", g % num_tables, pooled) for f, j, g in chunk_order(chunks, num_tables)]


def _stacks(pooled: bool, target: Target) -> bool:
    """Whether pooled chunks are stacked into one lookup per shared table (every store but the fused one)."""
    return pooled and target.backend != "fused"


@register_method("unified")
class Unified(Method):
    """Unified Embedding: every (feature, chunk) hashed into shared tables; chunks concatenated per feature."""

    Options = UnifiedOptions
    Params = UnifiedParams

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        opts: UnifiedOptions = plan.options
        self.chunks: list[int] = [c for p in plan.params for c in p.chunks]
        self.width: int = plan.physical_tables[0].embedding_dim
        self.shared_rows: int = plan.physical_tables[0].num_embeddings
        order = chunk_order(self.chunks, opts.num_tables)
        self._lookup_list = [f for f, _, _ in order]  # the feature each chunk copies, in store order
        self._one_chunk_each = self._lookup_list == list(range(len(self.chunks)))
        # the hash parameters: one key per (feature, chunk) in store order, serving state counted in memory_bytes
        keys = [hash_key(derive_seed(opts.seed, f, j)) for f, j, _ in order]
        self.register_buffer("keys", torch.tensor(keys, dtype=torch.int64))
        self.register_buffer("_chunk", torch.tensor([j for _, j, _ in order], dtype=torch.int64), persistent=False)
        T = opts.num_tables
        self._groups = [[i for i, (_, _, g) in enumerate(order) if g % T == s] for s in range(T)]
        self._per_table = max(len(g) for g in self._groups)  # chunks per stacked lookup, padded to the most
        self._stacked = [lk.name for lk in plan.lookups] == [f"unified/{s}" for s in range(T)]
        # pooled, one lookup per chunk (the fused backend): chunk i of the store is output chunk g
        w, C = self.width, len(order)
        self._program = ColumnProgram(C * w, sorted((Piece(g * w, w, (Term(i * w, w),)) for i, (_, _, g) in
                                                     enumerate(order)), key=lambda p: p.start))

    @classmethod
    def solve(
        cls, tables: Sequence[TableConfig], budget: float | None, options: UnifiedOptions, target: Target
    ) -> Plan:
        if (budget is None) == (options.rows is None):
            raise ValueError("unified needs exactly one of budget= or rows=")
        width, chunks = chunk_layout(tables, options.probes, options.width, dict(options.chunks or ()), target)
        out_dims = [c * width for c in chunks]
        if tables[0].pooling == "none" and len(set(out_dims)) > 1:
            raise ValueError(
                f"unified: unpooled tables return one row width for all features, but the chunks give widths "
                f"{dict(zip([f for t in tables for f in t.feature_names], out_dims))}"
            )
        total_chunks, T = sum(chunks), options.num_tables
        if T > total_chunks:
            raise ValueError(
                f"unified option num_tables={T} exceeds the {total_chunks} chunks, so a table would be unread"
            )
        key_bytes = KEY_BYTES * total_chunks
        row_bytes = FP32_BYTES * T * width  # one row in every shared table
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
        lookups = _lookups(features, chunks, T, pooled, _stacks(pooled, target))
        params, i = [], 0
        for t in tables:
            c = tuple(chunks[i : i + len(t.feature_names)])
            share = row_bytes * M * sum(c) // total_chunks
            params.append(UnifiedParams(c, tuple(x * width for x in c), M, width, KEY_BYTES * sum(c) + share))
            i += len(t.feature_names)
        return Plan("unified", options, budget, tuple(tables), physical, tuple(lookups), tuple(params), key_bytes)

    @classmethod
    def reads_by_rank(cls, plan: Plan) -> list[bool]:
        return [False] * len(plan.tables)  # every feature is hashed: any int64 id

    @classmethod
    def relayout(cls, plan: Plan, target: Target) -> Plan:
        features = [f for t in plan.tables for f in t.feature_names]
        chunks = [c for p in plan.params for c in p.chunks]
        pooled, T = plan.tables[0].pooling != "none", len(plan.physical_tables)
        return dataclasses.replace(plan, lookups=tuple(_lookups(features, chunks, T, pooled, _stacks(pooled, target))))

    def output_dims(self) -> list[int]:
        return [c * self.width for c in self.chunks]

    def remap(self, bags: Bags) -> Remapped:
        # one copy of a feature's ids per chunk (none to make with one chunk each), hashed with the chunk's key
        phys = bags if self._one_chunk_each else bags.select(self._lookup_list)
        values = hash_to_range(phys.values, phys.per_id(self.keys), self.shared_rows)
        phys = phys.with_values(values)
        return Remapped(bags, phys.stack(self._groups) if self._stacked else phys)

    def combine_program(self, batch: Remapped) -> tuple[ColumnProgram, None] | None:
        return (self._program, None) if self.pooled and not self._stacked else None

    def combine(self, pooled: Tensor | None, rows: Tensor | None, batch: Remapped) -> Tensor:
        bags = batch.logical
        B, C, w = bags.batch_size, len(self._lookup_list), self.width
        if self.pooled and not self._stacked:  # one lookup per chunk, in store order: put them in output order
            assert pooled is not None
            return self._program(pooled, None)
        if self.pooled:
            assert pooled is not None
            # row b n + i, columns s w..(s+1) w: chunk g = i T + s of sample b (round-robin, stacked sample-major),
            # so row b of the (B, n T w) view holds chunks g = 0, 1, ... in order; padded ones (g >= C) come last
            n, T = self._per_table, len(self._groups)
            out = pooled.view(B, n * T * w)
            return out if n * T == C else out[:, : C * w].contiguous()  # models may view the values
        # unpooled: every feature has the same chunk count c (checked by solve); rows are in store order
        assert rows is not None
        c = self.chunks[0]
        sizes = upload([bags.ids_per_feature[f] for f in self._lookup_list], rows.device)
        slot = self._chunk.repeat_interleave(sizes, output_size=rows.shape[0])
        out = rows_by_slot(rows, bags.positions(self._lookup_list), slot, bags.values.numel(), c, 0.0)  # (N, c, w)
        return out.reshape(-1, c * w)  # (N, c w)
