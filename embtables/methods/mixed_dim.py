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
Xavier-uniform. Unpooled tables need one dim per collection (torchrec's EmbeddingCollection, and the store's
per-id path): blocks are stored as column blocks of width g = gcd of their dims, as `qr` does, and projected per id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from embtables.bags import Bags
from embtables.config import FP32_BYTES, Lookup, PhysicalTable, SparseOptimizer, TableConfig, uniform_table
from embtables.hashing import derive_seed, hash_key, hash_to_range
from embtables.method import Method, check_ids_in_range, per_feature
from embtables.methods.qr import repeat_features
from embtables.plan import InfeasibleBudget, Plan, Target, largest_within
from embtables.registry import register_method
from embtables.single import TABLE, Embedding, EmbeddingBag

KEY_BYTES = 8
GRANULARITIES = ("table", "block")


def _round_dim(x: float, power_of_two: bool, multiple: int, max_dim: int | None) -> int:
    d = min(max(1.0, x), 2.0**62)
    d = math.floor(d + 0.5)
    if power_of_two:
        d = 2 ** math.floor(math.log2(d) + 0.5)
    d = max(multiple, multiple * math.floor(d / multiple + 0.5))
    return d if max_dim is None else min(d, max_dim)


def _popularity(rows: Sequence[int], queries: Sequence[float], alpha: float) -> list[float]:
    """s^(-alpha) = (k / n)^alpha per block; all ones when every block is unseen (they tie)."""
    w = [(k / n) ** alpha for n, k in zip(rows, queries)]
    return w if max(w) > 0 else [1.0] * len(w)


def md_solver(
    counts: Sequence[int] | Tensor,
    alpha: float,
    d0: int | None = None,
    budget: float | None = None,
    round_to_power_of_two: bool = False,
    *,
    queries: Sequence[float] | Tensor | None = None,
    multiple: int = 1,
    max_dim: int | None = None,
) -> list[int]:
    """Dims by the alpha-power rule d = lambda (n / k)^(-alpha) (see the module docstring for both forms).

    Args:
        counts: (T,) rows n of each table or block (the reference's `n`).
        alpha: temperature >= 0; 0 gives every block the same dim.
        d0: the dim of the most popular block (the "d0" form); exclusive with `budget`.
        budget: total parameters sum n d before rounding (the "budget" form, the reference's `B`).
        round_to_power_of_two: round each dim to 2^round(log2 d) (the reference's `round_dim`).
        queries: (T,) lookups per sample into each block (the reference's `k`); default 1 each.
        multiple: round to a multiple of this, at least one multiple (4 for fbgemm).
        max_dim: clamp to at most this.

    Returns:
        T ints, in the order of `counts`.

    Example:
        >>> md_solver([10, 1000, 100000], alpha=0.5, d0=64)  # 64 * (10 / n)^0.5 = 64, 6.4, 0.64 -> floor 1
        [64, 6, 1]
    """
    rows = [int(n) for n in counts]
    k = [1.0] * len(rows) if queries is None else [float(q) for q in queries]
    if not rows or min(rows) < 1 or len(k) != len(rows) or min(k) < 0:
        raise ValueError("md_solver: counts must be >= 1 and queries >= 0, one of each per table")
    if not alpha >= 0:
        raise ValueError(f"md_solver: alpha must be >= 0, got {alpha}")
    if (d0 is None) == (budget is None):
        raise ValueError("md_solver needs exactly one of d0= or budget=")
    w = _popularity(rows, k, alpha)
    lam = d0 / max(w) if d0 is not None else budget / sum(n * x for n, x in zip(rows, w))  # type: ignore[operator]
    return [_round_dim(lam * x, round_to_power_of_two, multiple, max_dim) for x in w]


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
        dim_multiple: every block dim is a multiple of this; default 4 (FBGEMM's) on every backend, so that a
            plan and its checkpoints move between backends; must be a multiple of the backend's.
    """

    alpha: float = 0.3
    granularity: Literal["table", "block"] = "table"
    blocks: int = 4
    d0: int | None = None
    threshold: int = 200
    round_to_power_of_two: bool = False
    seed: int = 0
    dim_multiple: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha < math.inf:
            raise ValueError(f"mixed_dim option alpha must be a finite number >= 0, got {self.alpha!r}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"mixed_dim option granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        for name, low in (("blocks", 1), ("threshold", 0), ("d0", 1), ("dim_multiple", 1)):
            v = getattr(self, name)
            optional = name in ("d0", "dim_multiple") and v is None
            if not optional and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ValueError(f"mixed_dim option {name} must be an int >= {low}, got {v!r}")
        if not isinstance(self.round_to_power_of_two, bool):
            raise ValueError(
                f"mixed_dim option round_to_power_of_two must be a bool, got {self.round_to_power_of_two!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"mixed_dim option seed must be an int, got {self.seed!r}")


@dataclass(frozen=True)
class MixedDimParams:
    """Solved parameters of one logical table, one entry per block: ids, dim and physical rows (< ids: hashed)."""

    block_ids: tuple[int, ...]
    dims: tuple[int, ...]
    rows: tuple[int, ...]
    bytes: int


def frequency_blocks(n: int, blocks: int) -> list[int]:
    """Block starts of ids 0..n-1 ranked by frequency: 0 and ceil(n^(i/K)) for i = 1..K-1, deduplicated.

    Example:
        >>> frequency_blocks(10_000, 4)
        [0, 10, 100, 1000]
    """
    cuts = {math.ceil(round(n ** (i / blocks), 9)) for i in range(1, blocks)}
    return [0] + sorted(c for c in cuts if 0 < c < n)


def _block_lookups(t: TableConfig, bounds: list[int], counts: Mapping[str, Any] | None) -> list[float]:
    """Each block's share of the table's counted lookups, summed over the table's features."""
    sums = [0.0] * (len(bounds) - 1)
    for f in t.feature_names:
        if counts is None or f not in counts:
            raise ValueError(f"mixed_dim granularity='block' needs counts for feature {f!r} of table {t.name!r} "
                             "(pass counts={feature: (N,) id counts})")
        c = torch.as_tensor(counts[f]).reshape(-1)
        if c.numel() != t.num_embeddings:
            raise ValueError(
                f"counts of feature {f!r} have {c.numel()} entries; table {t.name!r} has {t.num_embeddings} rows"
            )
        if bool((c < 0).any()):
            raise ValueError(f"counts of feature {f!r} must be >= 0")
        rising = (c[1:] > c[:-1]).nonzero()
        if rising.numel():
            i = int(rising[0])
            raise ValueError(
                f"mixed_dim blocks need frequency-ranked ids, but counts of feature {f!r} rise from id {i} "
                f"({float(c[i]):g}) to id {i + 1} ({float(c[i + 1]):g}); rank the ids by frequency first (the data "
                "pipeline does)"
            )
        sums = [s + float(c[a:b].sum(dtype=torch.float64)) for s, a, b in zip(sums, bounds[:-1], bounds[1:])]
    total = sum(sums)
    return [s / total if total else 0.0 for s in sums]


def _blocks(t: TableConfig, options: MixedDimOptions, counts: Mapping[str, Any] | None) -> list[tuple[int, int, float]]:
    """(start, ids, lookups per sample) of each block of a table above the threshold."""
    n = t.num_embeddings
    if options.granularity == "table":
        return [(0, n, 1.0)]
    bounds = frequency_blocks(n, options.blocks) + [n]
    shares = _block_lookups(t, bounds, counts)
    return [(a, b - a, k) for a, b, k in zip(bounds[:-1], bounds[1:], shares)]


def _block_bytes(ids: int, rows: int, d: int, dim: int) -> int:
    return FP32_BYTES * (rows * d + dim * d * (d < dim)) + KEY_BYTES * (rows < ids)


def solve_blocks(
    tables: Sequence[TableConfig], budget: float | None, options: MixedDimOptions, target: Target
) -> list[MixedDimParams]:
    """Blocks, dims and rows of every table: the d0 form without a budget, else the budget search above."""
    multiple = options.dim_multiple or max(4, target.dim_multiple)
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
    w = _popularity([n for _, n, _ in units], [k for _, _, k in units], options.alpha) if units else []

    def dims_at(lam: float) -> list[int]:
        dims = []
        for (ti, n, _), x in zip(units, w):
            dim = tables[ti].embedding_dim
            d = _round_dim(lam * x, options.round_to_power_of_two, multiple, dim - dim % multiple)
            # keep D where the projection would cost more than the narrower rows save
            dims.append(dim if dim % multiple == 0 and d < dim and n * d + dim * d >= n * dim else d)
        return dims

    def bytes_at(dims: list[int], cap: int) -> int:
        return fixed + sum(
            _block_bytes(n, min(n, cap), d, tables[ti].embedding_dim) for (ti, n, _), d in zip(units, dims)
        )

    most = max([n for _, n, _ in units], default=1)
    if budget is None:
        d0 = options.d0 or max([tables[ti].embedding_dim for ti, _, _ in units], default=1)
        dims, cap = dims_at(d0 / max(w, default=1.0)), most
    else:
        widest = max(t.embedding_dim for t in tables)
        dims, cap = _fit(dims_at, bytes_at, w, most, widest, budget, sum(t.full_bytes for t in tables))
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


def _fit(
    dims_at: Callable[[float], list[int]],
    bytes_at: Callable[[list[int], int], int],
    w: list[float],
    most: int,
    widest: int,
    budget: float,
    full: int,
) -> tuple[list[int], int]:
    """(dims, row cap) within budget * full bytes and, wherever a row cap allows, >= 0.9 of it."""
    limit = budget * full
    if not w:
        if bytes_at([], most) > limit:
            raise InfeasibleBudget("mixed_dim", budget, 1.0, "every table keeps its dim")
        return [], most
    lo, hi = 0.5 / max(w), 2.0 * widest / min(x for x in w if x > 0)  # every dim at its floor / at its cap
    if bytes_at(dims_at(lo), most) > limit:  # the narrowest dims need hashed rows
        dims = dims_at(lo)
        cap = largest_within(lambda c: bytes_at(dims, c), 1, most, limit)
        if cap is None:
            raise InfeasibleBudget("mixed_dim", budget, bytes_at(dims, 1) / full, "narrowest dims, one row per block")
        return dims, cap
    if bytes_at(dims_at(hi), most) <= limit:
        return dims_at(hi), most
    for _ in range(200):  # bisection in log(lambda); bytes only grow with lambda
        mid = math.sqrt(lo * hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if bytes_at(dims_at(mid), most) <= limit else (lo, mid)
    below, above = dims_at(lo), dims_at(hi)
    if bytes_at(below, most) >= 0.9 * limit:
        return below, most
    cap = largest_within(lambda c: bytes_at(above, c), 1, most, limit)
    return (below, most) if cap is None else (above, cap)


def _layout(
    tables: Sequence[TableConfig], params: Sequence[MixedDimParams], pooled: bool
) -> tuple[list[PhysicalTable], list[Lookup], list[int], int]:
    """Physical tables, lookups (ordered by physical table, as FBGEMM 1.8's CPU per-id kernel needs), the group
    (table, block, feature) each lookup reads, and the column-block width g of unpooled collections (0 pooled)."""
    g = 0 if pooled else math.gcd(*[d for p in params for d in p.dims])
    physical: list[PhysicalTable] = []
    lookups, src, group = [], [], 0
    for t, p in zip(tables, params):
        single = len(p.dims) == 1
        for u, (rows, d) in enumerate(zip(p.rows, p.dims)):
            chunks = 1 if pooled else d // g
            for c in range(chunks):
                part = ("" if single else f"/b{u}") + (f"#{c}" if chunks > 1 else "")
                lookups += [Lookup(f + part, len(physical), pooled) for f in t.feature_names]
                src += [group + i for i in range(len(t.feature_names))]
                physical.append(uniform_table(t.name + part, rows, d // chunks, t.num_embeddings))
            group += len(t.feature_names)
    return physical, lookups, src, g


@register_method("mixed_dim")
class MixedDim(Method):
    """Mixed-dimension blocks: remap ids to (block, row), look blocks up at their own dims, project to D."""

    Options = MixedDimOptions

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        opts: MixedDimOptions = plan.options
        params: tuple[MixedDimParams, ...] = plan.params
        _, _, self._chunk_src, self.g = _layout(self.tables, params, self.pooled)
        first = [0]
        for t in self.tables:
            first.append(first[-1] + len(t.feature_names))
        self._blocks_of = [len(p.dims) for p in params]
        most = max(self._blocks_of)
        starts, rows, hashed, keys, bounds, first_block, gbase = [], [], [], [], [], [], []
        self.projections = nn.ParameterList()
        self._projected: list[int] = []  # index into `projections` per block, -1 when it keeps D
        group = 0
        for ti, (t, p) in enumerate(zip(self.tables, params)):
            first_block.append(len(starts))
            gbase.append(group)
            group += len(p.dims) * len(t.feature_names)
            s = [0]
            for n in p.block_ids[:-1]:
                s.append(s[-1] + n)
            bounds.append(s[1:] + [torch.iinfo(torch.int64).max] * (most - len(s)))
            for u, (a, n, r, d) in enumerate(zip(s, p.block_ids, p.rows, p.dims)):
                starts.append(a)
                rows.append(r)
                hashed.append(r < n)
                keys.append(hash_key(derive_seed(opts.seed, ti, u)) if r < n else 0)
                self._projected.append(len(self.projections) if d < t.embedding_dim else -1)
                if d < t.embedding_dim:
                    proj = nn.Parameter(torch.empty(t.embedding_dim, d))  # nn.Linear's (out, in) layout
                    nn.init.xavier_uniform_(proj)
                    self.projections.append(proj)
        self._num_groups = group
        self._block_shapes = [(len(t.feature_names), d) for t, p in zip(self.tables, params) for d in p.dims]
        # the hash parameters: one key per hashed block (serving state, counted in memory_bytes)
        self.register_buffer("keys", torch.tensor([k for k, h in zip(keys, hashed) if h], dtype=torch.int64))
        self.register_buffer("_key_of", torch.tensor(keys, dtype=torch.int64), persistent=False)
        self.register_buffer("_start", torch.tensor(starts), persistent=False)
        self.register_buffer("_rows", torch.tensor(rows), persistent=False)
        self.register_buffer("_hashed", torch.tensor(hashed), persistent=False)
        inner = torch.tensor([b[: most - 1] for b in bounds]).view(len(bounds), most - 1)  # (T, K_max - 1)
        self.register_buffer("_bounds", inner, persistent=False)
        self.register_buffer("_first_block", per_feature(self, first_block), persistent=False)
        # group of an id of feature f in block u: gbase[f] + u * gstride[f], groups ordered (table, block, feature)
        group_base = torch.tensor([gbase[t] + f - first[t] for f, t in enumerate(self.feature_table)])
        self.register_buffer("_gbase", group_base, persistent=False)
        stride = per_feature(self, [len(t.feature_names) for t in self.tables])
        self.register_buffer("_gstride", stride, persistent=False)
        self.register_buffer("_table", per_feature(self, list(range(len(self.tables)))), persistent=False)
        self.register_buffer("_upper", per_feature(self, [t.num_embeddings for t in self.tables]), persistent=False)
        if self.pooled:
            self._init_pooled_projection(params, first)

    def _init_pooled_projection(self, params: Sequence[MixedDimParams], first: list[int]) -> None:
        """Index maps that turn the pooled blocks (B, sum of block dims) into one batched matmul
        (F, B, w) @ (F, w, D_max): feature f's blocks side by side in its row of width w, their projections
        (or identities) stacked in W."""
        dims = [t.embedding_dim for t in self.tables]
        F, d_max = len(self.feature_names), max(dims)
        w = max(sum(p.dims) for p in params)
        self._identity = all(len(p.dims) == 1 and p.dims[0] == d for p, d in zip(params, dims))
        col_pos, w_pos, w_src = [], [], []
        w0 = torch.zeros(F, w, d_max)
        sizes = [p.numel() for p in self.projections]
        base = [sum(sizes[:i]) for i in range(len(sizes))]
        block = 0
        for ti, (t, p) in enumerate(zip(self.tables, params)):
            off = 0
            for d in p.dims:
                j = self._projected[block]
                for i in range(len(t.feature_names)):
                    f = first[ti] + i
                    col_pos += [f * w + off + c for c in range(d)]
                    if j < 0:
                        w0[f, off : off + d, :d] = torch.eye(d)
                    else:  # W[f, off + r, o] = P[o, r]
                        w_pos += [(f * w + off + r) * d_max + o for r in range(d) for o in range(t.embedding_dim)]
                        w_src += [base[j] + o * d + r for r in range(d) for o in range(t.embedding_dim)]
                off += d
                block += 1
        self._shape = (F, w, d_max)
        self.register_buffer("_col_pos", torch.tensor(col_pos), persistent=False)
        self.register_buffer("_w0", w0.reshape(-1), persistent=False)
        self.register_buffer("_w_pos", torch.tensor(w_pos, dtype=torch.long), persistent=False)
        self.register_buffer("_w_src", torch.tensor(w_src, dtype=torch.long), persistent=False)
        cols = [f * d_max + o for f, ti in enumerate(self.feature_table) for o in range(dims[ti])]
        self._out_cols = None if cols == list(range(F * d_max)) else cols

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
        values = bags.values
        table = bags.per_id(self._table)
        block = torch.zeros_like(values)
        if self._bounds.shape[1]:
            block = (values.unsqueeze(1) >= self._bounds[table]).sum(1)  # (N,) block within its table
        unit = bags.per_id(self._first_block) + block
        local = values - self._start[unit]
        if self.keys.numel():
            local = torch.where(self._hashed[unit], hash_to_range(values, self._key_of[unit], self._rows[unit]), local)
        B = bags.batch_size
        if max(self._blocks_of) == 1:
            return Bags(local, bags.offsets, bags.weights, bags.counts, B), None
        group = bags.per_id(self._gbase) + block * bags.per_id(self._gstride)
        key = group * B + bags.bag_index() % B
        perm = torch.argsort(key, stable=True)
        per_bag = torch.bincount(key, minlength=self._num_groups * B)
        offsets = torch.cat([per_bag.new_zeros(1), per_bag.cumsum(0)])
        counts = torch.bincount(group, minlength=self._num_groups).tolist()
        weights = None if bags.weights is None else bags.weights[perm]
        return Bags(local[perm], offsets, weights, counts, B), perm

    def remap(self, bags: Bags) -> Bags:
        check_ids_in_range(bags, self._upper, torch.ones_like(self._upper, dtype=torch.bool), self, "mixed_dim")
        grouped, _ = self._grouped(bags)
        if self.pooled or len(self._chunk_src) == self._num_groups:
            return grouped
        return repeat_features(grouped, self._chunk_src)  # one copy per column block

    def projection(self, block: int) -> Tensor | None:
        """The (D, d_u) projection of a block (blocks numbered over the tables in order), None when it keeps D."""
        j = self._projected[block]
        return None if j < 0 else self.projections[j]

    def combine(self, pooled: Tensor | None, rows: Tensor | None, bags: Bags) -> Tensor:
        if self.pooled:
            assert pooled is not None
            if self._identity:
                return pooled
            F, w, d_max = self._shape
            B = pooled.shape[0]
            x = pooled.new_zeros(B, F * w).index_copy(1, self._col_pos, pooled)  # (B, F * w)
            x = x.view(B, F, w).transpose(0, 1)  # (F, B, w)
            W = self._w0
            if len(self.projections):
                W = W.index_put((self._w_pos,), torch.cat([p.reshape(-1) for p in self.projections])[self._w_src])
            out = torch.bmm(x, W.view(F, w, d_max)).transpose(0, 1).reshape(B, F * d_max)  # (B, F * D_max)
            return out if self._out_cols is None else out[:, self._out_cols]
        assert rows is not None
        counts, perm = bags.counts, None
        if max(self._blocks_of) > 1:
            grouped, perm = self._grouped(bags)
            counts = grouped.counts
        pieces, row, group = [], 0, 0
        for block, (features, d) in enumerate(self._block_shapes):
            n = sum(counts[group : group + features])  # ids in this block, over the table's features
            chunks = d // self.g
            x = rows[row : row + chunks * n].view(chunks, n, self.g).transpose(0, 1).reshape(n, d)  # (n, d)
            P = self.projection(block)
            pieces.append(x if P is None else x @ P.t())  # (n, D)
            row, group = row + chunks * n, group + features
        out = torch.cat(pieces)  # (N, D) in group order
        if perm is None:
            return out
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel(), device=perm.device)
        return out[inverse]


class MixedDimEmbeddingBag(EmbeddingBag):
    """`torch.nn.EmbeddingBag` with mixed-dimension frequency blocks (granularity "block": within one table the
    method needs the ids' training counts); see `embtables.methods.mixed_dim`.

    Args:
        counts: (N,) training counts of ids 0..N-1, ranked (non-increasing).
        budget: fraction of the full table's bytes; without it, the most popular block gets `d0` (default D).
        Others as `MixedDimOptions` and `torch.nn.EmbeddingBag`.

    Example:
        >>> import torch
        >>> from embtables.methods.mixed_dim import MixedDimEmbeddingBag
        >>> counts = 1e6 / torch.arange(1, 100_001)  # Zipf
        >>> bag = MixedDimEmbeddingBag(100_000, 16, counts=counts, alpha=0.5)
        >>> bag.collection.plan.params[0].dims, bag(torch.tensor([[0, 99_999]])).shape
        ((16, 4, 4, 4), torch.Size([1, 16]))
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        mode: Literal["sum", "mean"] = "sum",
        *,
        counts: Tensor,
        budget: float | None = None,
        alpha: float = 0.3,
        blocks: int = 4,
        d0: int | None = None,
        threshold: int = 200,
        round_to_power_of_two: bool = False,
        seed: int = 0,
        dim_multiple: int | None = None,
        include_last_offset: bool = False,
        backend: str = "torch",
        optimizer: SparseOptimizer | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, mode, method="mixed_dim", budget=budget,
            include_last_offset=include_last_offset, backend=backend, optimizer=optimizer, counts={TABLE: counts},
            device=device, granularity="block", alpha=alpha, blocks=blocks, d0=d0, threshold=threshold,
            round_to_power_of_two=round_to_power_of_two, seed=seed, dim_multiple=dim_multiple,
        )


class MixedDimEmbedding(Embedding):
    """`torch.nn.Embedding` with mixed-dimension frequency blocks; arguments as `MixedDimEmbeddingBag`."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        counts: Tensor,
        budget: float | None = None,
        alpha: float = 0.3,
        blocks: int = 4,
        d0: int | None = None,
        threshold: int = 200,
        round_to_power_of_two: bool = False,
        seed: int = 0,
        dim_multiple: int | None = None,
        backend: str = "torch",
        optimizer: SparseOptimizer | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, method="mixed_dim", budget=budget, backend=backend, optimizer=optimizer,
            counts={TABLE: counts}, device=device, granularity="block", alpha=alpha, blocks=blocks, d0=d0,
            threshold=threshold, round_to_power_of_two=round_to_power_of_two, seed=seed, dim_multiple=dim_multiple,
        )
