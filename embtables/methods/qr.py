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

Store layout: one physical table per (table, partition), read by one lookup per feature. Pooled collections use
pooled lookups only: for "pool_first", "add" and "concat" each lookup pools its digit's rows and `combine`
composes the pooled partitions; for "mult" with "combine_first", bags of at most one id (DLRM's one value per
feature) compose the same way (the weight w goes to the first partition only: (w W_0) * W_1 = w e), and
longer bags put every id in a bag of its own (`Bags.singletons`) so the store returns one row per id, which
`combine` composes and pools. The composition is one `_layout.ColumnProgram`; for "mult" and "add" the
tables are ordered partition-major, so the pooled output starts with the output's own layout and only the
other partitions are folded in. Unpooled collections use per-id lookups, which must share one width g (a
store returns one (N, g) block of rows): partitions wider than g = gcd of the widths are stored as column
blocks of width g (`_layout.column_blocks`; same bytes, row-wise Adagrad keeps one accumulator per block row).

Budget: one row cap R is shared by all tables (as `hash`'s "cap" allocation). A table with n <= R is kept whole;
a larger one gets the partition of the family with the fewest digits whose rows sum_j b_j reach R, with the
largest m whose rows stay <= R. k = 2 and m >= sqrt(n) cover every row count from 2 sqrt(n) to n to within one
row; k = 3, 4, ... continue down to about e ln(n) rows. R is the largest cap whose bytes fit the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce
from typing import Literal, Sequence

import torch
from torch import Tensor

from embtables import kernels
from embtables.bags import Bags, rows_by_slot, upload
from embtables.config import FP32_BYTES, Lookup, PhysicalTable, TableConfig
from embtables.method import Method, Remapped, check_ids_in_range
from embtables.methods._layout import append_blocks
from embtables.options import check_options, option
from embtables.methods._partitions import partition_codes, place_values, qr_radices, radices_within
from embtables.plan import InfeasibleBudget, Plan, Target, largest_within
from embtables.program import ColumnProgram, Piece, Term
from embtables.registry import register_method

# the partition arithmetic lives in `_partitions`; it is part of this method's public surface
__all__ = ["QR", "QROptions", "QRParams", "partition_codes", "qr_radices", "radices_within", "solve_radices"]

OPERATIONS = ("mult", "add", "concat")
ORDERS = ("combine_first", "pool_first")


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

    collisions: int | None = option(None, minimum=1)
    partitions: int | None = option(None, minimum=2)
    operation: Literal["mult", "add", "concat"] = "mult"
    pooling_order: Literal["combine_first", "pool_first"] = "combine_first"
    threshold: int = option(200, minimum=0)

    def __post_init__(self) -> None:
        check_options(self, "qr")


@dataclass(frozen=True)
class QRParams:
    """Solved parameters of one logical table: `radices` () for a table kept whole, `dims` per partition."""

    radices: tuple[int, ...]
    dims: tuple[int, ...]
    rows: int
    bytes: int


def _widths(dim: int, k: int, operation: str, multiple: int) -> tuple[int, ...]:
    if operation != "concat":
        return (dim,) * k
    q, r = divmod(dim // multiple, k)
    return tuple((q + (j < r)) * multiple for j in range(k))


def _table_bytes(t: TableConfig, radices: Sequence[int], operation: str, multiple: int) -> int:
    if not radices:
        return t.full_bytes
    widths = _widths(t.embedding_dim, len(radices), operation, multiple)
    return FP32_BYTES * sum(b * w for b, w in zip(radices, widths))


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
    """One partition table of a logical table (the whole table when it is kept whole)."""

    suffix: str
    rows: int
    width: int
    low: float
    high: float


def _parts(t: TableConfig, p: QRParams, operation: str) -> list[_Part]:
    n, b = t.num_embeddings, t.num_embeddings**-0.5
    if not p.radices:
        return [_Part("", n, t.embedding_dim, -b, b)]
    k = len(p.radices)
    names = ["q", "r"] if k == 2 else [f"p{j}" for j in range(k)]
    inits = {
        "mult": [(-b, b)] + [(1 - b, 1 + b)] * (k - 1),
        "add": [(-((k * n) ** -0.5), (k * n) ** -0.5)] * k,
        "concat": [(-b, b)] * k,
    }[operation]
    return [_Part(f"/{s}", r, w, lo, hi) for s, r, w, (lo, hi) in zip(names, p.radices, p.dims, inits)]


def _layout(
    tables: Sequence[TableConfig], params: Sequence[QRParams], operation: str
) -> tuple[list[PhysicalTable], list[Lookup], list[tuple[int, int, int]], int]:
    """Physical tables, lookups, what each lookup reads as (feature, partition, column block), and the per-id
    width g (0 for pooled collections). Lookups come in physical-table order, so the store never reorders them
    (FBGEMM 1.8's CPU kernels need each table's lookups contiguous and in table order). Tables are ordered
    partition-major for "mult" and "add" (every table's partition 0, then every partition 1, ...): a pooled
    output then starts with the output's own layout, partition 0 of each feature in place, and `combine` only
    folds the other partitions in; "concat" keeps each table's partitions together, side by side as output."""
    pooled = tables[0].pooling != "none"
    parts = [_parts(t, p, operation) for t, p in zip(tables, params)]
    g = 0 if pooled else math.gcd(*[q.width for ps in parts for q in ps])
    first = [0]
    for t in tables:
        first.append(first[-1] + len(t.feature_names))
    units = [(t, j) for t, ps in enumerate(parts) for j in range(len(ps))]
    if operation != "concat":
        units.sort(key=lambda tj: tj[1])  # stable: table order within each partition
    physical: list[PhysicalTable] = []
    lookups: list[Lookup] = []
    reads = []
    for t, j in units:
        tab, q = tables[t], parts[t][j]
        blocks = append_blocks(physical, lookups, tab, q.suffix, q.rows, q.width, g, q.low, q.high)
        reads += [(first[t] + i, j, c) for c in range(blocks) for i in range(len(tab.feature_names))]
    return physical, lookups, reads, g


@register_method("qr")
class QR(Method):
    """Quotient-remainder / complementary-partition embeddings: remap ids to digits, compose the partition rows."""

    Options = QROptions
    Params = QRParams

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        opts: QROptions = plan.options
        _, lookups, reads, self.g = _layout(self.tables, plan.params, opts.operation)
        self._op = opts.operation
        self._reads = [(f, j) for f, j, _ in reads]
        self._src = [f for f, _, _ in reads]
        self._radices = [plan.params[t].radices for t in self.feature_table]
        self._dims = [self.tables[t].embedding_dim for t in self.feature_table]
        self._n = [self.tables[t].num_embeddings for t in self.feature_table]
        self.id_upper = self._n
        # mult composed per id before pooling: w enters once, on partition 0, and bags longer than one id are
        # looked up as one bag per id
        self._per_id = self.pooled and self._op == "mult" and opts.pooling_order == "combine_first"
        self.register_buffer("_src_t", torch.tensor(self._src, dtype=torch.long), persistent=False)
        # each compressed feature's place values and radices: rows [a, b) of two (sum k, 1) buffers
        ends = [0]
        for r in self._radices:
            ends.append(ends[-1] + len(r))
        self._digit_rows = list(zip(ends[:-1], ends[1:]))
        places = [p for r, n in zip(self._radices, self._n) for p in place_values(r, n)]
        self.register_buffer("_place", torch.tensor(places + [1]).view(-1, 1), persistent=False)
        self.register_buffer("_radix", torch.tensor([b for r in self._radices for b in r] + [1]).view(-1, 1),
                             persistent=False)
        # per lookup: the feature it reads and the row of its digit in `_place`/`_radix` (-1: the id itself)
        digit_reads = [(f, self._digit_rows[f][0] + j if self._radices[f] else -1) for f, j in self._reads]
        self.register_buffer("_digit_reads", torch.tensor(digit_reads, dtype=torch.long).view(-1, 2), persistent=False)
        if self.pooled:
            # feature f's output: its partitions' pooled columns composed, or for concat side by side
            widths = [plan.physical_tables[lk.table].embedding_dim for lk in lookups]
            col = [sum(widths[:i]) for i in range(len(widths) + 1)]
            pieces, at = [], 0
            for f in range(len(self._n)):
                terms = [Term(col[i], widths[i]) for i, g in enumerate(self._src) if g == f]
                for ts in ([[t] for t in terms] if self._op == "concat" else [terms]):
                    pieces.append(Piece(at, ts[0].width, tuple(ts), "mult" if self._op == "mult" else "add"))
                    at += ts[0].width
            self._program = ColumnProgram(col[-1], pieces)
        else:
            # per-id rows regroup into slots of width g: (partition, column block), or for concat the column
            # blocks of the concatenated partitions in order
            per = self.tables[0].embedding_dim // self.g
            self._factors = 1 if self._op == "concat" else max(len(p.radices) or 1 for p in plan.params)
            first_column = [[sum(p.dims[:j]) // self.g for j in range(len(p.dims))] for p in plan.params]
            slots = [
                first_column[self.feature_table[f]][j] + c if self._op == "concat" else j * per + c for f, j, c in reads
            ]
            self.register_buffer("_slot", torch.tensor(slots, dtype=torch.long), persistent=False)
            self._slots = per * self._factors

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
        physical, lookups, _, _ = _layout(tables, params, options.operation)
        return Plan("qr", options, budget, tuple(tables), tuple(physical), tuple(lookups), params, extra_bytes=0)

    def remap(self, bags: Bags) -> Remapped:
        check_ids_in_range(bags, self._n, self, "qr")  # digits are unique only in [0, n)
        phys = self._lookups(bags)
        if self._per_id and bags.max_length > 1:
            phys = phys.singletons(phys.most_ids())
        return Remapped(bags, phys)

    def _lookups(self, bags: Bags) -> Bags:
        """Logical bags -> one lookup per (feature, partition) read, each id replaced by its digit."""
        sizes = [bags.ids_per_feature[f] for f in self._src]
        ops = kernels.ops_for(bags.values) if bags.per_sample_weights is None else None
        if ops is not None:  # the digits of every lookup in one C++ pass; the PyTorch ops below are its reference
            values, offsets = ops.digits_remap(bags.values.contiguous(), bags.offsets.contiguous(), bags.batch_size,
                                               self._digit_reads, self._place.view(-1), self._radix.view(-1))
            return Bags(values, offsets, None, sizes, bags.batch_size)
        ids = bags.values.split(bags.ids_per_feature)
        digits = [self._digits(x, f) for f, x in enumerate(ids)]  # (k, N_f); whole tables read the ids themselves
        values = torch.cat([digits[f][j] for f, j in self._reads])  # one slice per lookup, in lookup order
        weights = None
        if bags.per_sample_weights is not None:
            w = bags.per_sample_weights.split(bags.ids_per_feature)
            first = self._per_id  # a product carries the weight once
            weights = torch.cat([w[f] if j == 0 or not first else torch.ones_like(w[f]) for f, j in self._reads])
        lengths = bags.lengths().index_select(0, self._src_t).reshape(-1)  # (lookups * B,)
        return Bags(values, torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]), weights, sizes, bags.batch_size)

    def _digits(self, x: Tensor, f: int) -> Tensor:
        """(N_f,) ids of feature f, checked in [0, n) -> (k, N_f) digits (id // p_j) mod b_j, as
        `partition_codes` computes them, with one division: Q_j = id // p_j, digit_j = Q_j - b_j Q_{j-1}
        (Q_{j-1} = Q_j // b_j, or 0 where p_{j-1} is capped at n)."""
        a, b = self._digit_rows[f]
        if a == b:
            return x[None]
        q = torch.div(x[None], self._place[a:b], rounding_mode="trunc")  # ids >= 0: trunc is floor, and faster
        q[1:] -= self._radix[a + 1 : b] * q[:-1]
        return q

    def _compose(self, xs: list[Tensor]) -> Tensor:
        if len(xs) == 1:
            return xs[0]
        return reduce(torch.mul if self._op == "mult" else torch.add, xs)

    def combine_program(self, batch: Remapped) -> tuple[ColumnProgram, None] | None:
        if not self.pooled or (self._per_id and batch.logical.max_length > 1):
            return None
        return self._program, None

    def combine(self, pooled: Tensor | None, rows: Tensor | None, batch: Remapped) -> Tensor:
        bags = batch.logical
        if not self.pooled:
            return self._compose_rows(rows, bags)  # type: ignore[arg-type]
        assert pooled is not None
        out = self._program(pooled, None)  # (B, sum D), or (B', sum D) composed rows of singleton bags
        if not (self._per_id and bags.max_length > 1):
            return out
        bag, starts, B = bags.bag_index(), bags.starts(), bags.batch_size
        pooled_f = []
        for f, e in enumerate(out.split(self._dims, 1)):  # row i < N_f: feature f's i-th id, already weighted
            index = bag[starts[f] : starts[f + 1]] - f * B
            pooled_f.append(e.new_zeros(B, e.shape[1]).index_add_(0, index, e[: bags.ids_per_feature[f]]))
        return torch.cat(pooled_f, 1)  # (B, sum D)

    def _compose_rows(self, rows: Tensor, bags: Bags) -> Tensor:
        """Per-id rows (P, g) of every lookup -> (N, D): slots regrouped per id, then composed."""
        N, D = bags.values.numel(), self.tables[0].embedding_dim
        sizes = upload([bags.ids_per_feature[f] for f in self._src], rows.device)
        slot = self._slot.repeat_interleave(sizes, output_size=rows.shape[0])
        fill = 1.0 if self._op == "mult" else 0.0  # the identity of the composition fills missing partitions
        x = rows_by_slot(rows, bags.positions(self._src), slot, N, self._slots, fill)  # (N, S, g)
        return self._compose(list(x.view(N, self._factors, D).unbind(1)))  # (N, D)
