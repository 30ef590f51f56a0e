"""`qr`: compositional embeddings from complementary partitions (Shi, Mudigere, Naumov and Yang, "Compositional
Embeddings Using Complementary Partitions for Memory-Efficient Recommendation Systems", KDD 2020).

An id in [0, n) is written in a mixed radix (b_0, ..., b_{k-1}) with b_0 * ... * b_{k-1} >= n; digit j indexes
its own table W_j of b_j rows:

    digit_j(id) = (id // p_j) mod b_j,      p_j = b_{j+1} * ... * b_{k-1}       (integer division: exact for all int64)

    mult    e(id) = W_0[digit_0] * ... * W_{k-1}[digit_{k-1}]      elementwise (default), every W_j of width D
    add     e(id) = W_0[digit_0] + ... + W_{k-1}[digit_{k-1}]
    concat  e(id) = [W_0[digit_0], ..., W_{k-1}[digit_{k-1}]]       widths D_j (multiples of the backend's) sum to D

    bytes = 4 * sum_j b_j D_j

The default radices are the quotient-remainder trick, k = 2 and (ceil(n/m), m): id -> (id // m, id mod m). k > 2
generalises it to (ceil(n / m^(k-1)), m, ..., m). The mixed-radix representation is unique below the product of
the radices, so distinct ids in [0, n) get distinct digit tuples (the partitions are complementary). Ids must lie
in [0, n), since uniqueness depends on the range: anything else raises naming the table. Tables of at most
`threshold` rows are kept whole, as the DLRM reference's `--qr-threshold`.

Bags longer than one: the paper defines e(id) per id, so a bag is sum_i w_i e(id_i) ("combine_first", default;
for mult the store returns one row per id). The DLRM reference (tricks/qr_embedding_bag.py) pools each partition
first, e.g. (sum_i w_i W_0[q_i]) * (sum_i w_i W_1[r_i]) ("pool_first"). The orders agree for add and concat
(sums commute) and differ for mult.

Where the DLRM reference differs: it divides in floating point, `(id / m).long()`, which is wrong above 2^24;
it initialises every table U(1/sqrt(n), 1) (`uniform_(w, a)` sets the lower bound); its concat joins two
D-wide vectors into 2D. Here concat splits D so the output stays D, and the init gives each composed coordinate
the full table's scale 1/sqrt(n) (a product of k tables each U(+-1/sqrt(n)) would start at n^(-k/2)):
mult W_0 ~ U(+-1/sqrt(n)) and W_j ~ U(1 +- 1/sqrt(n)) for j >= 1; add W_j ~ U(+-1/sqrt(k n)); concat
W_j ~ U(+-1/sqrt(n)).

Per-id lookups of one collection must share one width (a store returns one (N, g) block of rows): tables wider
than g = gcd of those widths are stored as column blocks of width g, one physical table each (same bytes;
row-wise Adagrad then keeps one accumulator per block row).

Budget: one row cap R is shared by all tables (as `hash`'s "cap" allocation). A table with n <= R is kept whole;
a larger one gets the partition of the family with the fewest digits whose rows sum_j b_j reach R, with the
largest m whose rows stay <= R. k = 2 and m >= sqrt(n) cover every row count from 2 sqrt(n) to n to within one
row; k = 3, 4, ... continue down to about e ln(n) rows. R is the largest cap whose bytes fit the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Sequence

import torch
from torch import Tensor

from embtables.bags import Bags
from embtables.config import FP32_BYTES, Lookup, PhysicalTable, SparseOptimizer, TableConfig
from embtables.method import Method, check_ids_in_range, per_feature
from embtables.plan import InfeasibleBudget, Plan, Target, largest_within
from embtables.registry import register_method
from embtables.single import Embedding, EmbeddingBag

OPERATIONS = ("mult", "add", "concat")
ORDERS = ("combine_first", "pool_first")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"qr option {name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class QROptions:
    """Options of `qr`.

    Args:
        collisions: m, the rows of every partition table but the first (the DLRM reference's `num_collisions`):
            with k = 2, id -> (id // m, id mod m). Exclusive with a budget.
        partitions: k, the number of digits; default 2 with `collisions`, and with a budget the fewest that fit.
        operation: how the k partition vectors compose: `"mult"` (elementwise product), `"add"` or `"concat"`.
        pooling_order: `"combine_first"` (compose each id, then pool; the paper) or `"pool_first"` (pool each
            partition, then compose; the DLRM reference).
        threshold: tables with at most this many rows are kept whole.
    """

    collisions: int | None = None
    partitions: int | None = None
    operation: Literal["mult", "add", "concat"] = "mult"
    pooling_order: Literal["combine_first", "pool_first"] = "combine_first"
    threshold: int = 200

    def __post_init__(self) -> None:
        if self.collisions is not None:
            _check_int("collisions", self.collisions, 1)
        if self.partitions is not None:
            _check_int("partitions", self.partitions, 2)
        if self.operation not in OPERATIONS:
            raise ValueError(f"qr option operation must be one of {OPERATIONS}, got {self.operation!r}")
        if self.pooling_order not in ORDERS:
            raise ValueError(f"qr option pooling_order must be one of {ORDERS}, got {self.pooling_order!r}")
        _check_int("threshold", self.threshold, 0)


@dataclass(frozen=True)
class QRParams:
    """Solved parameters of one logical table: `radices` () for a table kept whole, `dims` per partition."""

    radices: tuple[int, ...]
    dims: tuple[int, ...]
    rows: int
    bytes: int


# ---- partitions ---------------------------------------------------------------------------------------------
def qr_radices(n: int, m: int, k: int = 2) -> tuple[int, ...]:
    """Radices (ceil(n / m^(k-1)), m, ..., m) of the k-digit quotient-remainder partition of [0, n).

    Example:
        >>> qr_radices(10, 4)
        (3, 4)
    """
    return (-(-n // m ** (k - 1)),) + (m,) * (k - 1)


def place_values(radices: Sequence[int], n: int) -> tuple[int, ...]:
    """p_j = b_{j+1} * ... * b_{k-1}, capped at n (a digit whose place is >= n is 0 for every id below n)."""
    places, p = [], 1
    for b in reversed(radices):
        places.append(min(p, n))
        p *= b
    return tuple(reversed(places))


def partition_codes(ids: Tensor, radices: Sequence[int], n: int) -> Tensor:
    """Digits of ids in [0, n): (N,) int64 -> (k, N), digit_j = (id // p_j) mod b_j in exact integer arithmetic.

    Example:
        >>> partition_codes(torch.tensor([0, 5, 9]), (3, 4), 10).tolist()
        [[0, 1, 2], [0, 1, 1]]
    """
    places = place_values(radices, n)
    return torch.stack([torch.div(ids, p, rounding_mode="floor") % b for p, b in zip(places, radices)])


def _rows(n: int, m: int, k: int) -> int:
    return -(-n // m ** (k - 1)) + (k - 1) * m


@lru_cache(maxsize=None)
def _fewest_rows(n: int, k: int) -> tuple[int, int]:
    """(rows, m) of the k-digit partition of [0, n) with the fewest rows (m near n^(1/k), where it is least)."""
    m0 = max(1, round(n ** (1 / k)))
    return min((_rows(n, m, k), m) for m in range(max(1, m0 - 3), m0 + 4))


def _root_ceil(n: int, p: int) -> int:
    """The smallest r with r^p >= n."""
    r = max(1, round(n ** (1 / p)))
    while r**p < n:
        r += 1
    while r > 1 and (r - 1) ** p >= n:
        r -= 1
    return r


def radices_within(n: int, cap: int, digits: Sequence[int]) -> tuple[int, ...]:
    """The partition of [0, n) with the fewest digits (from `digits`) whose rows fit `cap`, with the largest m
    that keeps them <= cap; the family's smallest partition when none fits.

    Example:
        >>> radices_within(10_000, 250, [2, 3])  # 2 sqrt(n) = 200 rows is the least with two digits
        (50, 200)
    """
    for k in digits:
        low, m_low = _fewest_rows(n, k)
        if low <= cap:
            # beyond n^(1/(k-1)) the first digit is constantly 0: k - 1 digits do better there
            m_high = n if k == 2 else max(m_low, _root_ceil(n, k - 1))
            m = largest_within(lambda m: _rows(n, m, k), m_low, m_high, cap)
            return qr_radices(n, m, k)  # type: ignore[arg-type]
    k = min(digits, key=lambda k: _fewest_rows(n, k))
    return qr_radices(n, _fewest_rows(n, k)[1], k)


def _widths(dim: int, k: int, operation: str, multiple: int) -> tuple[int, ...]:
    if operation != "concat":
        return (dim,) * k
    q, r = divmod(dim // multiple, k)
    return tuple((q + (j < r)) * multiple for j in range(k))


def _table_bytes(t: TableConfig, radices: Sequence[int], operation: str, multiple: int) -> int:
    if not radices:
        return t.full_bytes
    return FP32_BYTES * sum(b * w for b, w in zip(radices, _widths(t.embedding_dim, len(radices), operation, multiple)))


def _digit_choices(t: TableConfig, options: QROptions, multiple: int) -> list[int]:
    """Digit counts k the solver may use for table t ([] when the table is kept whole)."""
    if t.num_embeddings <= options.threshold:
        return []
    most = max(2, t.num_embeddings.bit_length() - 1)  # radices of at least 2
    if options.operation == "concat":
        if t.embedding_dim % multiple:
            raise ValueError(f"qr concat: table {t.name!r} has dim {t.embedding_dim}, not a multiple of {multiple}")
        most = min(most, t.embedding_dim // multiple)
        if most < (options.partitions or 2):
            raise ValueError(
                f"qr concat splits the dim over the partitions: table {t.name!r} has dim {t.embedding_dim}, too "
                f"narrow for {options.partitions or 2} partitions of a multiple of {multiple}"
            )
    return [options.partitions] if options.partitions else list(range(2, most + 1))


def solve_radices(
    tables: Sequence[TableConfig], budget: float, options: QROptions, multiple: int
) -> list[tuple[int, ...]]:
    """Radices per table (() = kept whole) for the largest shared row cap whose bytes fit `budget`."""
    digits = [_digit_choices(t, options, multiple) for t in tables]
    full = sum(t.full_bytes for t in tables)

    def radices_at(cap: int) -> list[tuple[int, ...]]:
        return [
            radices_within(t.num_embeddings, cap, ks) if ks and cap < t.num_embeddings else ()
            for t, ks in zip(tables, digits)
        ]

    def bytes_at(cap: int) -> int:
        return sum(_table_bytes(t, r, options.operation, multiple) for t, r in zip(tables, radices_at(cap)))

    cap = largest_within(bytes_at, 1, max(t.num_embeddings for t in tables), budget * full)
    if cap is None:
        raise InfeasibleBudget("qr", budget, bytes_at(1) / full, "every compressed table at its fewest rows")
    return radices_at(cap)


# ---- layout: physical tables and lookups ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Part:
    suffix: str
    rows: int
    width: int
    place: int
    low: float
    high: float


@dataclass(frozen=True)
class _Spec:
    """What one lookup reads: `feature`'s digit (id // place) mod radix; where its columns (pooled) or column
    blocks of width g (per id) go in the feature's output (`offset`), and which factor of the composition it is
    (`slot`)."""

    feature: int
    place: int
    radix: int
    slot: int
    offset: int
    pooled: bool


def _parts(t: TableConfig, p: QRParams, operation: str) -> list[_Part]:
    n, b = t.num_embeddings, t.num_embeddings**-0.5
    if not p.radices:
        return [_Part("", n, t.embedding_dim, 1, -b, b)]
    k = len(p.radices)
    names = ["q", "r"] if k == 2 else [f"p{j}" for j in range(k)]
    inits = {
        "mult": [(-b, b)] + [(1 - b, 1 + b)] * (k - 1),
        "add": [(-((k * n) ** -0.5), (k * n) ** -0.5)] * k,
        "concat": [(-b, b)] * k,
    }[operation]
    places = place_values(p.radices, n)
    return [_Part(f"/{s}", r, w, pl, lo, hi) for s, r, w, pl, (lo, hi) in zip(names, p.radices, p.dims, places, inits)]


def _layout(
    tables: Sequence[TableConfig], params: Sequence[QRParams], options: QROptions
) -> tuple[list[PhysicalTable], list[Lookup], list[_Spec], int, list[bool]]:
    """Physical tables, lookups (pooled first) and their specs, the per-id width g, and which tables are per id."""
    pooled = tables[0].pooling != "none"
    op = options.operation
    combine_first = op == "mult" and options.pooling_order == "combine_first"
    per_id = [not pooled or (bool(p.radices) and combine_first) for p in params]
    parts = [_parts(t, p, op) for t, p in zip(tables, params)]
    widths = [q.width for ps, r in zip(parts, per_id) if r for q in ps]
    g = math.gcd(*widths) if widths else 0
    physical: list[PhysicalTable] = []
    where: list[list[list[int]]] = []  # [table][partition] -> physical index of each column block
    for t, ps, rows in zip(tables, parts, per_id):
        where.append([])
        for q in ps:
            blocks = q.width // g if rows else 1
            where[-1].append(list(range(len(physical), len(physical) + blocks)))
            for c in range(blocks):
                name = t.name + q.suffix + (f"#{c}" if blocks > 1 else "")
                physical.append(PhysicalTable(name, q.rows, q.width // blocks, q.low, q.high))
    first = [0]
    for tab in tables:
        first.append(first[-1] + len(tab.feature_names))
    lookups, specs = [], []
    # ordered by physical table: FBGEMM 1.8's CPU per-id (PoolingMode.NONE) kernel bounds-checks ids against
    # the wrong table when the lookups of one table are not contiguous in its feature_table_map
    for want_rows in (False, True):
        for t, tab in enumerate(tables):
            if per_id[t] != want_rows:
                continue
            offset = 0
            for j, q in enumerate(parts[t]):
                slot = j if params[t].radices and op != "concat" else 0
                for c, phys in enumerate(where[t][j]):
                    for i, name in enumerate(tab.feature_names):
                        lk = name + q.suffix + (f"#{c}" if len(where[t][j]) > 1 else "")
                        lookups.append(Lookup(lk, phys, not want_rows))
                        out = offset // g + c if want_rows else offset
                        specs.append(_Spec(first[t] + i, q.place, q.rows, slot, out, not want_rows))
                offset += q.width if op == "concat" else 0
    return physical, lookups, specs, g, per_id


def repeat_features(bags: Bags, src: Sequence[int]) -> Bags:
    """Bags whose feature i is a copy of feature `src[i]` of `bags`: its ids, bag lengths and weights.

    Example:
        >>> b = Bags(torch.tensor([7, 8, 9]), torch.tensor([0, 2, 3]), None, [2, 1], 1)
        >>> repeat_features(b, [1, 0, 1]).values.tolist()
        [9, 7, 8, 9]
    """
    device = bags.values.device
    starts = [0]
    for c in bags.counts:
        starts.append(starts[-1] + c)
    counts = [bags.counts[f] for f in src]
    shifts, total = [], 0
    for f, c in zip(src, counts):
        shifts.append(starts[f] - total)
        total += c
    idx = torch.tensor(shifts, device=device).repeat_interleave(torch.tensor(counts, device=device), output_size=total)
    idx = idx + torch.arange(total, device=device)  # (N',) position of each copied id in bags.values
    lengths = bags.lengths()[torch.tensor(list(src), device=device)]  # (F', B)
    offsets = torch.cat([lengths.new_zeros(1), lengths.reshape(-1).cumsum(0)])
    weights = None if bags.weights is None else bags.weights[idx]
    return Bags(bags.values[idx], offsets, weights, counts, bags.batch_size)


@register_method("qr")
class QR(Method):
    """Quotient-remainder / complementary-partition embeddings: remap ids to digits, compose the partition rows."""

    Options = QROptions

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        opts: QROptions = plan.options
        _, lookups, specs, self.g, per_id = _layout(self.tables, plan.params, opts)
        self._mult = opts.operation == "mult"
        self._src = [s.feature for s in specs]
        self.register_buffer("_upper", per_feature(self, [t.num_embeddings for t in self.tables]), persistent=False)
        self.register_buffer("_place", torch.tensor([s.place for s in specs]), persistent=False)
        self.register_buffer("_radix", torch.tensor([s.radix for s in specs]), persistent=False)
        dims = [self.tables[t].embedding_dim for t in self.feature_table]
        rows_f = [f for f, t in enumerate(self.feature_table) if per_id[t]]
        pooled_f = [f for f, t in enumerate(self.feature_table) if not per_id[t]]
        # pooled lookups: output column -> one input column per factor (the appended identity column elsewhere)
        pooled_specs = [(s, lk.table) for s, lk in zip(specs, lookups) if s.pooled]
        start, out_start = {}, 0
        for f in pooled_f:
            start[f], out_start = out_start, out_start + dims[f]
        width_in = sum(plan.physical_tables[t].embedding_dim for _, t in pooled_specs)
        factors = max([s.slot + 1 for s, _ in pooled_specs], default=1)
        gather = torch.full((factors, out_start), width_in, dtype=torch.long)
        col = 0
        for s, t in pooled_specs:
            w = plan.physical_tables[t].embedding_dim
            gather[s.slot, start[s.feature] + s.offset : start[s.feature] + s.offset + w] = torch.arange(col, col + w)
            col += w
        self.register_buffer("_pooled_gather", gather, persistent=False)
        self._row_specs = [s for s in specs if not s.pooled]
        self._row_factors = max([s.slot + 1 for s in self._row_specs], default=1)
        self._row_blocks = {f: dims[f] // self.g for f in rows_f}  # column blocks of width g per feature
        self._sub_src = [f for f in rows_f for _ in range(self._row_blocks[f])]
        # outputs come as [pooled features | per-id features]; put them back in feature order
        position, at = {}, 0
        for f in pooled_f + rows_f:
            position[f], at = at, at + dims[f]
        columns = [c for f in range(len(dims)) for c in range(position[f], position[f] + dims[f])]
        self._columns = None if columns == sorted(columns) else columns

    @classmethod
    def solve(cls, tables: Sequence[TableConfig], budget: float | None, options: QROptions, target: Target) -> Plan:
        if (budget is None) == (options.collisions is None):
            raise ValueError("qr needs exactly one of budget= or collisions=")
        if tables[0].pooling == "none" and len({t.embedding_dim for t in tables}) > 1:
            raise ValueError(
                "qr: unpooled tables return (N, D) rows and need one embedding_dim, as torchrec's EmbeddingCollection"
            )
        mult = target.dim_multiple
        if budget is None:
            radices = [
                qr_radices(t.num_embeddings, options.collisions, options.partitions or 2)  # type: ignore[arg-type]
                if _digit_choices(t, options, mult) else ()
                for t in tables
            ]
        else:
            radices = solve_radices(tables, budget, options, mult)
        params = tuple(
            QRParams(
                r,
                _widths(t.embedding_dim, len(r), options.operation, mult) if r else (t.embedding_dim,),
                sum(r) if r else t.num_embeddings,
                _table_bytes(t, r, options.operation, mult),
            )
            for t, r in zip(tables, radices)
        )
        physical, lookups, _, _, _ = _layout(tables, params, options)
        return Plan("qr", options, budget, tuple(tables), tuple(physical), tuple(lookups), params, extra_bytes=0)

    def remap(self, bags: Bags) -> Bags:
        check_ids_in_range(bags, self._upper, torch.ones_like(self._upper, dtype=torch.bool), self, "qr")
        phys = repeat_features(bags, self._src)  # one copy of a feature's ids per lookup
        digits = torch.div(phys.values, phys.per_id(self._place), rounding_mode="floor") % phys.per_id(self._radix)
        return Bags(digits, phys.offsets, phys.weights, phys.counts, phys.batch_size)

    def _reduce(self, x: Tensor, dim: int) -> Tensor:
        if x.shape[dim] == 1:
            return x.squeeze(dim)
        return x.prod(dim) if self._mult else x.sum(dim)

    def _compose_rows(self, rows: Tensor, bags: Bags) -> Tensor:
        """Per-id partition rows (N_rows, g) -> composed column blocks (N_sub, g), ordered (feature, block, id)
        for pooled collections (to pool as features of width g) and (id, block) for unpooled ones."""
        n = bags.counts
        base, total = {}, 0
        for f, blocks in self._row_blocks.items():
            base[f], total = total, total + blocks * n[f]
        a, b, slot, lens, row = [], [], [], [], 0
        for s in self._row_specs:  # row i of this lookup goes to a + b * (position in rows)
            step = 1 if self.pooled else self._row_blocks[s.feature]
            first = base[s.feature] + (s.offset * n[s.feature] if self.pooled else s.offset)
            a.append(first - step * row)
            b.append(step)
            slot.append(s.slot)
            lens.append(n[s.feature])
            row += n[s.feature]
        device = rows.device
        lens_t = torch.tensor(lens, device=device)
        x = torch.tensor([a, b, slot], device=device).repeat_interleave(lens_t, dim=1, output_size=row)  # (3, N_rows)
        r = torch.arange(row, device=device)
        gather = torch.full((self._row_factors, total), row, dtype=torch.long, device=device)
        gather[x[2], x[0] + x[1] * r] = r
        ext = torch.cat([rows, rows.new_full((1, rows.shape[1]), float(self._mult))])  # identity of the composition
        return self._reduce(ext[gather], 0)  # (factors, N_sub, g) -> (N_sub, g)

    def combine(self, pooled: Tensor | None, rows: Tensor | None, bags: Bags) -> Tensor:
        parts = []
        if pooled is not None:
            ext = torch.cat([pooled, pooled.new_full((pooled.shape[0], 1), float(self._mult))], 1)
            parts.append(self._reduce(ext[:, self._pooled_gather], 1))  # (B, factors, W) -> (B, W)
        if rows is not None:
            composed = self._compose_rows(rows, bags)  # (N_sub, g)
            if not self.pooled:
                return composed.view(-1, self.tables[0].embedding_dim)  # (N, D)
            parts.append(repeat_features(bags, self._sub_src).sum_rows(composed))  # (B, sum of per-id D)
        out = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
        return out if self._columns is None else out[:, self._columns]


class QREmbeddingBag(EmbeddingBag):
    """`torch.nn.EmbeddingBag` with quotient-remainder (complementary partition) compression; see
    `embtables.methods.qr`. Give `collisions` (m) or `budget`.

    Example:
        >>> import torch
        >>> from embtables.methods.qr import QREmbeddingBag
        >>> bag = QREmbeddingBag(10_000_000, 16, collisions=4096)
        >>> bag(torch.tensor([[3, 9_999_999]])).shape
        torch.Size([1, 16])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        mode: Literal["sum", "mean"] = "sum",
        *,
        collisions: int | None = None,
        budget: float | None = None,
        partitions: int | None = None,
        operation: Literal["mult", "add", "concat"] = "mult",
        pooling_order: Literal["combine_first", "pool_first"] = "combine_first",
        threshold: int = 200,
        include_last_offset: bool = False,
        backend: str = "torch",
        optimizer: SparseOptimizer | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, mode, method="qr", budget=budget, include_last_offset=include_last_offset,
            backend=backend, optimizer=optimizer, device=device, collisions=collisions, partitions=partitions,
            operation=operation, pooling_order=pooling_order, threshold=threshold,
        )


class QREmbedding(Embedding):
    """`torch.nn.Embedding` with quotient-remainder compression; arguments as `QREmbeddingBag` (no pooling)."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        collisions: int | None = None,
        budget: float | None = None,
        partitions: int | None = None,
        operation: Literal["mult", "add", "concat"] = "mult",
        threshold: int = 200,
        backend: str = "torch",
        optimizer: SparseOptimizer | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, method="qr", budget=budget, backend=backend, optimizer=optimizer,
            device=device, collisions=collisions, partitions=partitions, operation=operation, threshold=threshold,
        )
