"""Plain-PyTorch compositions of the compression methods: what a user writes without this library.

Each composition holds, per logical table, a few `torch.nn.EmbeddingBag(..., mode="sum", sparse=True)` and
tensor ops, sized from the library's plan for the same budget (`et.plan(tables, method, budget,
backend="fbgemm")`), so both sides hold the same weight bytes; it trains with `torch.optim.Adagrad` on the
sparse gradients (the closest stock optimizer to the library's row-wise Adagrad). For a feature with ids x
(N,) and bag offsets (B,):

    hash       EmbeddingBag(m_t, D)(h(x))                   h(x) = x mod m_t          (DLRM's --max-ind-range)
    multihash  EmbeddingBag(m_t, D)([h_0(x), .., h_{k-1}(x)])  the k rows of an id in its bag, summed
                                                            h_j(x) = x mod (m_t - j)  (k = 2)
    qr         prod_j EmbeddingBag(b_j, D)((x // p_j) mod b_j)  pool each partition, then multiply (the DLRM
                                                            reference's QREmbeddingBag; k = 2 is (x // m, x mod m))
    mixed_dim  Linear(d_t, D, bias=False)(EmbeddingBag(r_t, d_t)(h(x)))   h(x) = x mod r_t when r_t < N_t
                                                            (the DLRM reference's md_embedding_bag)
    unified    EmbeddingBag(M, w)((x + o_f) mod M)          one bag shared by all features, o_f the feature's
                                                            offset in the concatenated logical tables

The `mod` hashes are what a PyTorch user writes: one `%` per id (multihash's k moduli stand in for k
independent hashes at the same cost). `hashing="library"` replaces each by the library's `hash_to_range` with
the library's keys, so a composition reads exactly the rows the library's method reads (the tests use it to
check outputs against the library's; `qr` hashes nothing, so both settings read the library's rows there).
Tables a plan keeps whole are looked up directly. Differences from the library kept on purpose: `qr` pools each
partition before multiplying (the library composes each id first; the two agree on bags of at most one id, as
Criteo's); `mixed_dim` uses `nn.Linear`'s default init (the library draws Xavier); the optimizer is
element-wise Adagrad for every parameter, projections included.

    import sys; sys.path.insert(0, "benchmarks")
    from compositions import COMPOSITIONS, composition
    make = composition("qr", 0.01)       # make(setup) -> step(kjt), as lookup_throughput.CONFIGS
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, ClassVar, Protocol, Sequence

import torch
from torch import Tensor, nn
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.hashing import derive_seed, hash_key, hash_to_range

Step = Callable[[KeyedJaggedTensor], None]
HASHINGS = ("mod", "library")


class Setup(Protocol):
    """What `lookup_throughput.Setup` provides (structural, so this file need not import the benchmark)."""

    tables: list[et.TableConfig]
    batch_size: int
    lr: float


@lru_cache(maxsize=None)
def _key(*seed: int) -> int:
    """The library's hash key for `derive_seed(*seed)` (pure Python, so computed once per seed)."""
    return hash_key(derive_seed(*seed))


def _bag(table: et.PhysicalTable) -> nn.EmbeddingBag:
    """`nn.EmbeddingBag(sparse=True)` of a planned physical table, drawn in the plan's init range."""
    bag = nn.EmbeddingBag(table.num_embeddings, table.embedding_dim, mode="sum", sparse=True)
    nn.init.uniform_(bag.weight, table.init_low, table.init_high)
    return bag


def _physical(plan: et.Plan, name: str) -> et.PhysicalTable:
    for t in plan.physical_tables:
        if t.name == name:
            return t
    raise ValueError(
        f"{plan.method} composition expects a physical table {name!r} in the plan; the plan has "
        f"{[t.name for t in plan.physical_tables]}"
    )


class Composition(nn.Module):
    """Base of the compositions: a KJT of raw ids -> (B, sum of `output_dims`) pooled, features in table order.

    Args:
        plan: the library's plan for the tables and budget (its sizes are allocated here).
        hashing: `"mod"` (the plain `%` hashes of the module docstring) or `"library"` (the library's hash).

    Attributes:
        bags: physical table name -> `nn.EmbeddingBag`, the plan's physical tables.
        features: logical feature names in output order; output_dims: their widths.
    """

    method: ClassVar[str] = ""

    def __init__(self, plan: et.Plan, hashing: str) -> None:
        super().__init__()
        if hashing not in HASHINGS:
            raise ValueError(f"composition option hashing must be one of {HASHINGS}, got {hashing!r}")
        if plan.method != self.method:
            raise ValueError(f"{type(self).__name__} composes {self.method!r}, got a plan of {plan.method!r}")
        for t in plan.tables:
            if t.pooling != "sum":
                raise ValueError(
                    f"compositions cover sum-pooled tables (qr's pool-then-multiply differs for mean); "
                    f"table {t.name!r} has pooling={t.pooling!r}"
                )
        self.plan, self.hashing = plan, hashing
        self.seed: int = plan.options.seed if hasattr(plan.options, "seed") else 0
        self.bags = nn.ModuleDict()
        self.features = [f for t in plan.tables for f in t.feature_names]
        self.output_dims = [t.embedding_dim for t in plan.tables for _ in t.feature_names]

    def parameter_bytes(self) -> int:
        """Bytes of every parameter (tables and projections), as the library's weights plus projections."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def embedding_bytes(self) -> int:
        """Bytes of the embedding tables alone (compare with `plan.weight_bytes`)."""
        return sum(b.weight.numel() * b.weight.element_size() for b in self.bags.values())

    def inputs(self, kjt: KeyedJaggedTensor) -> list[tuple[Tensor, Tensor]]:
        """Per feature in `features` order: (ids (N_f,), bag offsets (B,) into those ids)."""
        if kjt.weights_or_none() is not None:
            raise ValueError("compositions take unweighted bags; the KJT has per-id weights")
        keys = kjt.keys()
        index = {k: i for i, k in enumerate(keys)}
        missing = [f for f in self.features if f not in index]
        if missing:
            raise ValueError(f"the KJT lacks features {missing}; it has {keys}")
        B = kjt.stride()
        values = kjt.values().split(kjt.length_per_key())
        offsets = kjt.offsets()
        out = []
        for f in self.features:
            i = index[f]
            o = offsets[i * B : (i + 1) * B]
            out.append((values[i], o - o[0]))
        return out

    def _hash(self, ids: Tensor, rows: int, *seed: int) -> Tensor:
        """`ids mod rows`, or the library's `hash_to_range` keyed by `derive_seed(seed, *seed parts)`."""
        if self.hashing == "mod":
            return ids % rows
        return hash_to_range(ids, _key(self.seed, *seed), rows)


class HashComposition(Composition):
    """`hash`: one EmbeddingBag of the plan's m_t rows per table on `x mod m_t` (whole tables: on x)."""

    method = "hash"

    def __init__(self, plan: et.Plan, hashing: str = "mod") -> None:
        super().__init__(plan, hashing)
        self._names, self._rows, self._table = [], [], []
        for ti, (t, p, pt) in enumerate(zip(plan.tables, plan.params, plan.physical_tables)):
            self.bags[pt.name] = _bag(pt)
            for _ in t.feature_names:
                self._names.append(pt.name)
                self._rows.append(p.rows if p.hashed else 0)
                self._table.append(ti)

    def forward(self, kjt: KeyedJaggedTensor) -> Tensor:
        out = []
        for (x, offsets), name, rows, ti in zip(self.inputs(kjt), self._names, self._rows, self._table):
            ids = self._hash(x, rows, ti) if rows else x
            out.append(self.bags[name](ids, offsets))  # (B, D)
        return torch.cat(out, 1)  # (B, F*D)


class MultiHashComposition(Composition):
    """`multihash` (k hashes, summed): each id becomes its k hashed rows inside its bag, so one EmbeddingBag
    call per feature sums them with the bag; h_j(x) = x mod (m_t - j), or the library's k seeded hashes."""

    method = "multihash"

    def __init__(self, plan: et.Plan, hashing: str = "mod") -> None:
        super().__init__(plan, hashing)
        o = plan.options
        if o.combine != "sum" or o.importance or o.hot_rows:
            raise ValueError(
                "the multihash composition covers the default plan: combine='sum', no importance, no hot rows"
            )
        self.k: int = o.num_hashes
        self._names, self._rows, self._table = [], [], []
        for ti, (t, p, pt) in enumerate(zip(plan.tables, plan.params, plan.physical_tables)):
            self.bags[pt.name] = _bag(pt)
            for _ in t.feature_names:
                self._names.append(pt.name)
                self._rows.append(p.rows if p.compressed else 0)
                self._table.append(ti)

    def _hashes(self, x: Tensor, m: int, ti: int) -> Tensor:
        """(N,) ids -> (N, k) pool rows."""
        if self.hashing == "mod":
            # distinct moduli: two ids share all k rows only when they agree modulo the moduli's lcm
            return torch.stack([x % max(1, m - j) for j in range(self.k)], 1)
        keys = torch.tensor([_key(self.seed, ti, j) for j in range(self.k)])
        return hash_to_range(x[:, None], keys, m)

    def forward(self, kjt: KeyedJaggedTensor) -> Tensor:
        out = []
        for (x, offsets), name, rows, ti in zip(self.inputs(kjt), self._names, self._rows, self._table):
            bag = self.bags[name]
            if rows:
                out.append(bag(self._hashes(x, rows, ti).reshape(-1), offsets * self.k))  # (B, D)
            else:
                out.append(bag(x, offsets))
        return torch.cat(out, 1)  # (B, F*D)


class QRComposition(Composition):
    """`qr` as the DLRM reference's QREmbeddingBag: per compressed table one EmbeddingBag per digit
    (x // p_j) mod b_j (k = 2: quotient x // m and remainder x mod m), each pooled, then multiplied."""

    method = "qr"

    def __init__(self, plan: et.Plan, hashing: str = "mod") -> None:
        super().__init__(plan, hashing)
        if plan.options.operation != "mult":
            raise ValueError("the qr composition covers operation='mult' (the default)")
        # per table: [(physical name, place p_j, radix b_j)], one entry (name, 0, 0) when kept whole
        self._parts: list[list[tuple[str, int, int]]] = []
        for t, p in zip(plan.tables, plan.params):
            k = len(p.radices)
            if not k:
                self.bags[t.name] = _bag(_physical(plan, t.name))
                parts = [(t.name, 0, 0)]
            else:
                names = ["q", "r"] if k == 2 else [f"p{j}" for j in range(k)]
                places, place = [], 1
                for b in reversed(p.radices):
                    places.append(place)
                    place *= b
                parts = []
                for suffix, b, pl, d in zip(names, p.radices, reversed(places), p.dims):
                    name = f"{t.name}/{suffix}"
                    # the library may store a partition as column blocks "name#c" (same bytes); a user writes one bag
                    found = [x for x in plan.physical_tables if x.name == name or x.name.startswith(name + "#")]
                    if not found:
                        _physical(plan, name)  # raises naming what the plan has
                    self.bags[name] = _bag(et.PhysicalTable(name, b, d, found[0].init_low, found[0].init_high))
                    parts.append((name, pl, b))
            self._parts += [parts] * len(t.feature_names)

    def forward(self, kjt: KeyedJaggedTensor) -> Tensor:
        out = []
        for (x, offsets), parts in zip(self.inputs(kjt), self._parts):
            e = None
            for name, place, radix in parts:
                digit = x if not radix else torch.div(x, place, rounding_mode="floor") % radix
                pooled = self.bags[name](digit, offsets)  # (B, D)
                e = pooled if e is None else e * pooled
            out.append(e)
        return torch.cat(out, 1)  # (B, F*D)


class MixedDimComposition(Composition):
    """`mixed_dim` (granularity "table") as the DLRM reference's md_embedding_bag: an EmbeddingBag of the
    plan's r_t x d_t, hashed `x mod r_t` when r_t < N_t, then a bias-free Linear(d_t, D) when d_t < D."""

    method = "mixed_dim"

    def __init__(self, plan: et.Plan, hashing: str = "mod") -> None:
        super().__init__(plan, hashing)
        self.projections = nn.ModuleDict()
        self._names, self._rows, self._table = [], [], []
        for ti, (t, p) in enumerate(zip(plan.tables, plan.params)):
            if len(p.dims) != 1:
                raise ValueError(
                    f"the mixed_dim composition covers one block per table (granularity='table'); table "
                    f"{t.name!r} has {len(p.dims)}"
                )
            self.bags[t.name] = _bag(_physical(plan, t.name))
            d = p.dims[0]
            if d < t.embedding_dim:
                self.projections[t.name] = nn.Linear(d, t.embedding_dim, bias=False)
            for _ in t.feature_names:
                self._names.append(t.name)
                self._rows.append(p.rows[0] if p.rows[0] < p.block_ids[0] else 0)
                self._table.append(ti)

    def forward(self, kjt: KeyedJaggedTensor) -> Tensor:
        out = []
        for (x, offsets), name, rows, ti in zip(self.inputs(kjt), self._names, self._rows, self._table):
            ids = self._hash(x, rows, ti, 0) if rows else x
            e = self.bags[name](ids, offsets)  # (B, d_t)
            out.append(self.projections[name](e) if name in self.projections else e)  # (B, D)
        return torch.cat(out, 1)  # (B, F*D)


class UnifiedComposition(Composition):
    """`unified` (one shared table): all features' ids, salted per (feature, chunk), in one EmbeddingBag call
    over the F*B bags; a feature with c chunks gets c salted lookups, concatenated."""

    method = "unified"

    def __init__(self, plan: et.Plan, hashing: str = "mod") -> None:
        super().__init__(plan, hashing)
        if len(plan.physical_tables) != 1:
            raise ValueError("the unified composition covers one shared table (num_tables=1, the default)")
        shared = plan.physical_tables[0]
        self.bags[shared.name] = self.shared = _bag(shared)
        self.rows, self.width = shared.num_embeddings, shared.embedding_dim
        chunks = [c for p in plan.params for c in p.chunks]
        self.output_dims = [c * self.width for c in chunks]
        # lookups (feature, chunk), feature-major; "mod" salts a lookup by its offset in the tables laid end to end
        self._lookups = [(f, j) for f, c in enumerate(chunks) for j in range(c)]
        rows = [t.num_embeddings for t in plan.tables for _ in t.feature_names]
        offsets, at = [], 0
        for f, _ in self._lookups:
            offsets.append(at)
            at += rows[f]
        salts = offsets if hashing == "mod" else [_key(self.seed, f, j) for f, j in self._lookups]
        self.register_buffer("_salt", torch.tensor(salts, dtype=torch.int64), persistent=False)

    def forward(self, kjt: KeyedJaggedTensor) -> Tensor:
        B = kjt.stride()
        if len(self._lookups) == len(self.features) and kjt.keys() == self.features and kjt.weights_or_none() is None:
            # one lookup per feature, in the KJT's order: its ids and offsets already are the L*B bags
            ids, offsets, counts = kjt.values(), kjt.offsets()[:-1], torch.tensor(kjt.length_per_key())
        else:
            inputs = self.inputs(kjt)
            ids = torch.cat([inputs[f][0] for f, _ in self._lookups])  # (N',) lookup-major
            counts = torch.tensor([inputs[f][0].numel() for f, _ in self._lookups])
            starts = (counts.cumsum(0) - counts).tolist()
            offsets = torch.cat([inputs[f][1] + s for (f, _), s in zip(self._lookups, starts)])  # (L*B,)
        salt = self._salt.repeat_interleave(counts, output_size=ids.numel())  # (N',)
        if self.hashing == "mod":
            rows = (ids + salt) % self.rows
        else:
            rows = hash_to_range(ids, salt, self.rows)
        e = self.shared(rows, offsets)  # (L*B, w)
        return e.view(len(self._lookups), B, self.width).transpose(0, 1).reshape(B, -1)  # (B, L*w)


COMPOSITIONS: dict[str, type[Composition]] = {
    c.method: c for c in (HashComposition, MultiHashComposition, QRComposition, MixedDimComposition, UnifiedComposition)
}


def build(tables: Sequence[et.TableConfig], method: str, budget: float, hashing: str = "mod") -> Composition:
    """The composition of `method` sized by `et.plan(tables, method, budget, backend="fbgemm")`.

    Args:
        tables: logical tables (sum-pooled).
        method: a key of `COMPOSITIONS`.
        budget: fraction of the full bytes, as for `et.plan`.
        hashing: `"mod"` or `"library"` (see the module docstring).

    Example:
        >>> from embtables.tablesets import criteo_kaggle_tables
        >>> c = build(criteo_kaggle_tables(16, scale=0.001), "qr", 0.1)
        >>> c.embedding_bytes() == c.plan.weight_bytes
        True
    """
    if method not in COMPOSITIONS:
        raise ValueError(f"no composition for method {method!r}; there are {sorted(COMPOSITIONS)}")
    return COMPOSITIONS[method](et.plan(tables, method, budget, backend="fbgemm"), hashing)


def trainer(module: Composition, setup: Setup) -> Step:
    """step(kjt): forward, loss = <output, fixed random (B, width) tensor>, backward, Adagrad step, zero_grad.
    The target is `lookup_throughput._loss_weights`'s (seed 1). `step.memory_bytes` is the parameter bytes."""
    opt = torch.optim.Adagrad(module.parameters(), lr=setup.lr)
    target = torch.randn(setup.batch_size, sum(module.output_dims), generator=torch.Generator().manual_seed(1))

    def step(kjt: KeyedJaggedTensor) -> None:
        (module(kjt) * target).sum().backward()
        opt.step()
        opt.zero_grad()

    step.memory_bytes = module.parameter_bytes()  # type: ignore[attr-defined]
    step.module = module  # type: ignore[attr-defined]
    return step


def composition(method: str, budget: float, hashing: str = "mod") -> Callable[[Setup], Step]:
    """`make(setup) -> step` for `lookup_throughput.CONFIGS`: the plain-PyTorch `method` at `budget`.

    Example:
        >>> CONFIGS = {f"torch composition {m} {b}": composition(m, b) for m in COMPOSITIONS for b in (0.1, 0.01)}
    """
    if method not in COMPOSITIONS:
        raise ValueError(f"no composition for method {method!r}; there are {sorted(COMPOSITIONS)}")
    if hashing not in HASHINGS:
        raise ValueError(f"composition option hashing must be one of {HASHINGS}, got {hashing!r}")

    def make(s: Setup) -> Step:
        return trainer(build(s.tables, method, budget, hashing), s)

    return make
