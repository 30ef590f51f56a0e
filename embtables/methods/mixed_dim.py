"""`mixed_dim`: mixed-dimension embeddings (Ginart, Naumov, Mudigere, Yang and Zou, "Mixed Dimension Embeddings
with Application to Memory-Efficient Recommendation Systems", ISIT 2021, arXiv:1909.11810).

The rows of a table are grouped in blocks u (the whole table, or a range of frequency-ranked ids); block u has
n_u rows of its own width d_u <= D, and a bias-free linear map P_u (D x d_u) projects them to the base dim D:

    e(id) = P_u W_u[id - start_u]          (no P_u when d_u = D; W_u[h(id)] when the budget hashes the block)
    bytes = 4 sum_u (r_u d_u + D d_u [d_u < D]) + 8 [r_u < n_u]        r_u = n_u rows unless hashed

Power rule (the paper's alpha-power temperature; `md_solver`): with k_u the lookups per sample that land in
block u and s_u = n_u / k_u (the inverse of a row's popularity p_u = k_u / n_u),

    d_u = lambda s_u^(-alpha),  floor 1, rounded to the nearest integer
    "d0" form:      lambda = d0 min_u(s_u)^alpha          the most popular block gets exactly d0
    "budget" form:  lambda = B / sum_u n_u s_u^(-alpha)   sum_u n_u d_u = B parameters before rounding

alpha = 0 gives every block d0. Granularity `"table"`: one block per table with k = 1, so s is the table size (the
DLRM reference, tricks/md_embedding_bag.py). Granularity `"block"` (the paper's blocking): ids ranked by training
frequency (id 0 the most frequent, as the data pipeline delivers them) are cut at ranks ceil(n^(i/K)),
i = 1..K-1, so that each block holds ids of similar log-popularity, and k_u is the block's share of the table's
counted lookups. It needs `counts`; counts that are not frequency-ranked (non-increasing) are rejected, since
blocks would then not be id ranges and an id -> rank map would cost 8 bytes per id.

Tables of at most `threshold` rows (or at most one dim multiple wide) keep D without a projection and take no
part in the rule (the reference lets its smallest table set the d0 anchor even below the threshold). Every d_u is
rounded to a multiple of `dim_multiple`, at least one multiple and at most D. Its default is 4, what FBGEMM's
training kernels need, on every backend, so that a plan and its checkpoints move between backends. A block keeps
D when its projection would cost more than it saves (n_u d_u + D d_u >= n_u D). `round_to_power_of_two` applies
2^round(log2 d) first (the reference's `round_dim`). Bytes count the dims allocated.

Budget: lambda is the largest (bisection) whose bytes fit. When that is below 0.9 of the budget (one block's
next dim step is too large) or the narrowest dims do not fit, the dims of the next lambda step are kept and
every block of more than R rows is hashed into R rows (seeded SplitMix64 of `embtables.hashing`, one 8-byte key
per hashed block), R the largest that fits: the reference combines `--md-flag` with `--max-ind-range` alike.
Ids must lie in [0, n) (blocks are id ranges).

Initialisation: tables U(+-1/sqrt(n)) as the full table, projections Xavier-uniform; the reference draws both
Xavier-uniform. All projections live in one flat parameter, `projections` (`projection(block)` is a block's
(D, d_u) view), so a dense optimizer steps one tensor. Store layout: one physical table per (table, block), one
lookup per feature reading it. Pooled collections pool each block (projections are linear, so
P_u sum_i W_u[.] = sum_i P_u W_u[.]) and project the pooled (B, d_u) columns straight into the output
(`_layout.ColumnProgram`). Unpooled tables need one dim per collection (torchrec's EmbeddingCollection, and the
store's per-id path): blocks are stored as column blocks of width g = gcd of their dims
(`_layout.column_blocks`, as `qr` does) and projected per id. The power rule and its budget fit live in
`_power_rule`. Host reads (a synchronisation each on CUDA): none beyond the batch's one (`embtables.inputs`),
except with several blocks per table: how many ids fall into each block is read once per batch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embtables.bags import Bags
from embtables.config import FP32_BYTES, KEY_BYTES, Lookup, PhysicalTable, TableConfig
from embtables.frequency import range_shares
from embtables.hashing import derive_seed, hash_key, hash_to_range
from embtables.method import Method, Remapped, check_ids_in_range, per_feature
from embtables.methods._layout import append_blocks
from embtables.methods._power_rule import fit_budget, frequency_blocks, md_solver, popularity, round_dim
from embtables.options import check_options, option
from embtables.plan import Plan, Target
from embtables.program import ColumnProgram, Piece, Term
from embtables.registry import register_method

__all__ = ["MixedDim", "MixedDimOptions", "MixedDimParams", "frequency_blocks", "md_solver", "solve_blocks"]

GRANULARITIES = ("table", "block")


@dataclass(frozen=True)
class MixedDimOptions:
    """Options of `mixed_dim`.

    Args:
        alpha: temperature of the power rule, >= 0 (the reference's `--md-temperature`, default 0.3).
        granularity: `"table"` (one dim per table) or `"block"` (frequency blocks within a table; needs counts).
        blocks: K, frequency blocks per table at granularity "block".
        d0: the dim of the most popular block without a budget (default: the largest table dim); exclusive
            with a budget.
        threshold: tables with at most this many rows keep their dim, without projection.
        round_to_power_of_two: round dims to powers of two before the backend's multiple.
        seed: base seed of the hash keys of blocks that a budget makes hash.
        dim_multiple: every block dim is a multiple of this; default the backend's own (1, or 4 on fbgemm); must
            be a multiple of the backend's. Set 4 for a plan whose checkpoints must also load on fbgemm.
    """

    alpha: float = option(0.3, minimum=0)
    granularity: Literal["table", "block"] = "table"
    blocks: int = option(4, minimum=1)
    d0: int | None = option(None, minimum=1)
    threshold: int = option(200, minimum=0)
    round_to_power_of_two: bool = False
    seed: int = 0
    dim_multiple: int | None = option(None, minimum=1)

    def __post_init__(self) -> None:
        check_options(self, "mixed_dim")


@dataclass(frozen=True)
class MixedDimParams:
    """Solved parameters of one logical table, one entry per block: ids, dim and physical rows (< ids: hashed)."""

    block_ids: tuple[int, ...]
    dims: tuple[int, ...]
    rows: tuple[int, ...]
    bytes: int


def _blocks(t: TableConfig, options: MixedDimOptions, counts: Mapping[str, Any] | None) -> list[tuple[int, int, float]]:
    """(start, ids, lookups per sample) of each block of a table above the threshold."""
    n = t.num_embeddings
    if options.granularity == "table":
        return [(0, n, 1.0)]
    bounds = frequency_blocks(n, options.blocks) + [n]
    shares = range_shares(t, counts, "mixed_dim granularity='block'", bounds)
    return [(a, b - a, k) for a, b, k in zip(bounds[:-1], bounds[1:], shares)]


def _block_bytes(ids: int, rows: int, d: int, dim: int) -> int:
    return FP32_BYTES * (rows * d + dim * d * (d < dim)) + KEY_BYTES * (rows < ids)


def solve_blocks(
    tables: Sequence[TableConfig], budget: float | None, options: MixedDimOptions, target: Target
) -> list[MixedDimParams]:
    """Blocks, dims and rows of every table: the d0 form without a budget, else the budget search above."""
    multiple = options.dim_multiple or target.dim_multiple
    if multiple % target.dim_multiple:
        raise ValueError(
            f"mixed_dim option dim_multiple={multiple} is not a multiple of backend {target.backend!r}'s "
            f"{target.dim_multiple}"
        )
    # tables at or below the threshold, or too narrow to narrow, keep D: one block outside the rule
    narrowed = [t.num_embeddings > options.threshold and t.embedding_dim > multiple for t in tables]
    blocks = [_blocks(t, options, target.counts) if m else [] for t, m in zip(tables, narrowed)]
    units = [(ti, n, k) for ti, bl in enumerate(blocks) for _, n, k in bl]  # (table, ids, lookups per sample)
    fixed = sum(t.full_bytes for t, bl in zip(tables, blocks) if not bl)
    ids = [n for _, n, _ in units]
    most = max(ids, default=1)
    weights = {most: popularity(ids, [k for _, _, k in units], options.alpha) if units else []}

    def dims_at(lam: float, cap: int) -> list[int]:
        if cap not in weights:  # the rule reads the rows a block keeps
            weights[cap] = popularity([min(n, cap) for n in ids], [k for _, _, k in units], options.alpha)
        dims = []
        for (ti, n, _), x in zip(units, weights[cap]):
            dim, r = tables[ti].embedding_dim, min(n, cap)
            d = round_dim(lam * x, options.round_to_power_of_two, multiple, dim - dim % multiple)
            # keep D where the projection would cost more than the narrower rows save
            dims.append(dim if dim % multiple == 0 and d < dim and r * d + dim * d >= r * dim else d)
        return dims

    def bytes_at(dims: list[int], cap: int) -> int:
        return fixed + sum(
            _block_bytes(n, min(n, cap), d, tables[ti].embedding_dim) for (ti, n, _), d in zip(units, dims)
        )

    if budget is None:
        d0 = options.d0 or max([tables[ti].embedding_dim for ti, _, _ in units], default=1)
        dims, cap = dims_at(d0 / max(weights[most], default=1.0), most), most
    else:
        dims, cap = fit_budget(dims_at, bytes_at, ids, multiple, budget, sum(t.full_bytes for t in tables))
    params, it = [], iter(dims)
    for t, bl in zip(tables, blocks):
        if not bl:
            params.append(MixedDimParams((t.num_embeddings,), (t.embedding_dim,), (t.num_embeddings,), t.full_bytes))
            continue
        ids = tuple(n for _, n, _ in bl)
        ds = tuple(next(it) for _ in bl)
        rows = tuple(min(n, cap) for n in ids)
        total = sum(_block_bytes(n, r, d, t.embedding_dim) for n, r, d in zip(ids, rows, ds))
        params.append(MixedDimParams(ids, ds, rows, total))
    return params


def _layout(
    tables: Sequence[TableConfig], params: Sequence[MixedDimParams], pooled: bool
) -> tuple[list[PhysicalTable], list[Lookup], list[tuple[int, int, int]], int]:
    """Physical tables, lookups (in physical-table order, so the store never reorders them), what each lookup
    reads as (table, block, feature index in the table), and the column-block width g of unpooled collections
    (0 pooled)."""
    g = 0 if pooled else math.gcd(*[d for p in params for d in p.dims])
    units = [(t, u) for t, p in enumerate(params) for u in range(len(p.dims))]
    physical: list[PhysicalTable] = []
    lookups: list[Lookup] = []
    reads = []
    for t, u in units:
        tab, p = tables[t], params[t]
        bound = tab.num_embeddings**-0.5
        suffix = "" if len(p.dims) == 1 else f"/b{u}"
        blocks = append_blocks(physical, lookups, tab, suffix, p.rows[u], p.dims[u], g, -bound, bound)
        reads += [(t, u, i) for _ in range(blocks) for i in range(len(tab.feature_names))]
    return physical, lookups, reads, g


@register_method("mixed_dim")
class MixedDim(Method):
    """Mixed-dimension blocks: remap ids to (block, row), look blocks up at their own dims, project to D."""

    Options = MixedDimOptions
    Params = MixedDimParams

    @classmethod
    def reads_frequency(cls, plan: Plan) -> list[bool]:
        return [len(p.dims) > 1 for p in plan.params]  # frequency blocks are ranges of ranks

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        opts: MixedDimOptions = plan.options
        params: tuple[MixedDimParams, ...] = plan.params
        _, lookups, reads, self.g = _layout(self.tables, params, self.pooled)
        self._single_block = all(len(p.dims) == 1 for p in params)
        self._n = [self.tables[t].num_embeddings for t in self.feature_table]
        self.id_upper = self._n
        first = [0]  # first feature of each table
        for t in self.tables:
            first.append(first[-1] + len(t.feature_names))
        # blocks numbered over the tables in order; groups (table, block, feature) are the grouped bags' features
        starts, rows, keys, first_block, group_base = [], [], [], [], []
        for ti, (t, p) in enumerate(zip(self.tables, params)):
            first_block.append(len(starts))
            group_base.append(sum(len(q.dims) * len(x.feature_names) for q, x in zip(params[:ti], self.tables)))
            for u, (n, r) in enumerate(zip(p.block_ids, p.rows)):
                starts.append(sum(p.block_ids[:u]))
                rows.append(r)
                keys.append(hash_key(derive_seed(opts.seed, ti, u)) if r < n else 0)
        hashed = [r < n for p in params for n, r in zip(p.block_ids, p.rows)]
        self._num_groups = sum(len(p.dims) * len(t.feature_names) for t, p in zip(self.tables, params))
        self._chunk_src = [group_base[t] + u * len(self.tables[t].feature_names) + i for t, u, i in reads]
        self._block_shapes = [(len(t.feature_names), d) for t, p in zip(self.tables, params) for d in p.dims]
        self._block_dims = [(t.embedding_dim, d) for t, p in zip(self.tables, params) for d in p.dims]

        # every projection in one flat parameter (one tensor for the dense optimizer to step, not one per block);
        # `_projected[b]` is block b's offset in it, -1 when the block keeps D
        self._projected, total = [], 0
        for D, d in self._block_dims:
            self._projected.append(total if d < D else -1)
            total += D * d * (d < D)
        self.projections = nn.Parameter(torch.empty(total)) if total else None
        with torch.no_grad():
            for P in map(self.projection, range(len(self._block_dims))):
                if P is not None:
                    nn.init.xavier_uniform_(P)

        # the hash parameters: one key per hashed block (serving state, counted in memory_bytes)
        self.register_buffer("keys", torch.tensor([k for k, h in zip(keys, hashed) if h], dtype=torch.int64))
        # one block per table: the features of hashed tables hash slice by slice, (feature, key, rows)
        self._hash_plan = [(f, keys[first_block[t]], rows[first_block[t]]) for f, t in enumerate(self.feature_table)
                           if hashed[first_block[t]]]
        if not self._single_block:
            self._init_grouping(params, starts, rows, keys, hashed, first_block, group_base, first)
        if self.pooled:
            widths = [plan.physical_tables[lk.table].embedding_dim for lk in lookups]
            self._init_pooled(reads, widths, first_block, first)

    def _init_grouping(self, params: Sequence[MixedDimParams], starts: list[int], rows: list[int], keys: list[int],
                       hashed: list[bool], first_block: list[int], group_base: list[int], first: list[int]) -> None:
        """Per-block and per-feature constants of `_grouped` when tables have several blocks."""
        most = max(len(p.dims) for p in params)
        for name, values in (("_key_of", keys), ("_start", starts), ("_rows", rows), ("_hashed", hashed)):
            self.register_buffer(name, torch.tensor(values), persistent=False)
        # block bounds of each table's ids, padded with int64 max: (T, K_max - 1)
        bounds = [list(itertools.accumulate(p.block_ids[:-1])) + [torch.iinfo(torch.int64).max] * (most - len(p.dims))
                  for p in params]
        self.register_buffer("_bounds", torch.tensor(bounds).view(len(params), most - 1), persistent=False)
        self.register_buffer("_first_block", per_feature(self, first_block), persistent=False)
        # group of an id of feature f in block u: gbase[f] + u * gstride[f]
        gbase = torch.tensor([group_base[t] + f - first[t] for f, t in enumerate(self.feature_table)])
        self.register_buffer("_gbase", gbase, persistent=False)
        stride = per_feature(self, [len(t.feature_names) for t in self.tables])
        self.register_buffer("_gstride", stride, persistent=False)
        self.register_buffer("_table", per_feature(self, list(range(len(self.tables)))), persistent=False)

    def _init_pooled(self, reads: list[tuple[int, int, int]], widths: list[int], first_block: list[int],
                     first: list[int]) -> None:
        """Feature f's output: the sum over its blocks of their pooled (B, d_u) columns, each projected to D
        unless the block keeps D."""
        col = [sum(widths[:i]) for i in range(len(widths) + 1)]
        pieces, at = [], 0
        for f, t in enumerate(self.feature_table):
            terms = tuple(
                Term(col[i], widths[i], self._projected[first_block[t] + u])
                for i, (tt, u, k) in enumerate(reads) if tt == t and first[t] + k == f
            )
            pieces.append(Piece(at, self.tables[t].embedding_dim, terms))
            at += self.tables[t].embedding_dim
        self._program = ColumnProgram(col[-1], pieces)

    @classmethod
    def solve(
        cls, tables: Sequence[TableConfig], budget: float | None, options: MixedDimOptions, target: Target
    ) -> Plan:
        if budget is not None and options.d0 is not None:
            raise ValueError("mixed_dim: d0= sets the dims without a budget; give d0= or budget=, not both")
        if tables[0].pooling == "none" and len({t.embedding_dim for t in tables}) > 1:
            raise ValueError(
                "mixed_dim: unpooled tables return (N, D) rows and need one embedding_dim, as torchrec's "
                "EmbeddingCollection"
            )
        params = solve_blocks(tables, budget, options, target)
        physical, lookups, _, _ = _layout(tables, params, tables[0].pooling != "none")
        extra = sum(
            FP32_BYTES * t.embedding_dim * d * (d < t.embedding_dim) + KEY_BYTES * (r < n)
            for t, p in zip(tables, params) for n, r, d in zip(p.block_ids, p.rows, p.dims)
        )
        return Plan("mixed_dim", options, budget, tuple(tables), tuple(physical), tuple(lookups), tuple(params), extra)

    def _grouped(self, bags: Bags) -> tuple[Bags, Tensor | None]:
        """Logical bags -> ids as rows of their blocks' tables, sorted into groups (table, block, feature)
        and bags, with the sorting permutation (None when every table is one block)."""
        B = bags.batch_size
        if self._single_block:
            # hashed tables' features hash slice by slice: cheaper than per-id keys and a where over all N
            local = bags.values
            if self._hash_plan:
                parts = list(bags.values.split(bags.ids_per_feature))
                for f, key, rows in self._hash_plan:
                    parts[f] = hash_to_range(parts[f], key, rows)
                local = torch.cat(parts)
            return bags.with_values(local), None
        values = bags.values
        block = (values.unsqueeze(1) >= self._bounds[bags.per_id(self._table)]).sum(1)  # (N,) block in its table
        unit = bags.per_id(self._first_block) + block
        local = values - self._start[unit]
        if self.keys.numel():
            local = torch.where(self._hashed[unit], hash_to_range(values, self._key_of[unit], self._rows[unit]), local)
        group = bags.per_id(self._gbase) + block * bags.per_id(self._gstride)
        key = group * B + bags.bag_index() % B
        perm = torch.argsort(key, stable=True)
        # counted by index_add, not bincount, which on CUDA reads the largest key on the host
        per_bag = torch.zeros(self._num_groups * B, dtype=torch.long, device=key.device)
        per_bag.index_add_(0, key, torch.ones_like(key))
        offsets = torch.cat([per_bag.new_zeros(1), per_bag.cumsum(0)])
        sizes = per_bag.view(self._num_groups, B).sum(1).tolist()  # ids per group: frequency blocks' one host read
        weights = None if bags.per_sample_weights is None else bags.per_sample_weights[perm]
        return Bags(local[perm], offsets, weights, sizes, B), perm

    def remap(self, bags: Bags) -> Remapped:
        """Context for combine: the grouped bags' ids per group and the sorting permutation (None: unsorted)."""
        check_ids_in_range(bags, self._n, self, "mixed_dim")  # blocks are id ranges
        grouped, perm = self._grouped(bags)
        context = (grouped.ids_per_feature, perm)
        if self._chunk_src == list(range(self._num_groups)):
            return Remapped(bags, grouped, context)
        return Remapped(bags, grouped.select(self._chunk_src), context)  # one copy per column block

    def projection(self, block: int) -> Tensor | None:
        """The (D, d_u) projection of a block (blocks numbered over the tables in order), a view of
        `projections`; None when the block keeps D."""
        at = self._projected[block]
        if at < 0:
            return None
        D, d = self._block_dims[block]
        return self.projections[at : at + D * d].view(D, d)  # type: ignore[index]

    def combine_program(self, batch: Remapped) -> tuple[ColumnProgram, Tensor | None] | None:
        return (self._program, self.projections) if self.pooled else None

    def combine(self, pooled: Tensor | None, rows: Tensor | None, batch: Remapped) -> Tensor:
        if self.pooled:
            assert pooled is not None
            return self._program(pooled, self.projections)  # (B, sum D)
        assert rows is not None
        sizes, perm = batch.context
        pieces, row, group = [], 0, 0
        for block, (features, d) in enumerate(self._block_shapes):
            n = sum(sizes[group : group + features])  # ids in this block, over the table's features
            chunks = d // self.g
            x = rows[row : row + chunks * n].view(chunks, n, self.g).transpose(0, 1).reshape(n, d)  # (n, d)
            P = self.projection(block)
            pieces.append(x if P is None else F.linear(x, P))  # (n, D)
            row, group = row + chunks * n, group + features
        out = torch.cat(pieces)  # (N, D) in group order
        if perm is None:
            return out
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel(), device=perm.device)
        return out[inverse]
