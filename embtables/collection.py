"""`Collection`, `build_collection` and `plan`: the public entry points that tie method, store and KJT I/O."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchrec import EmbeddingBagConfig, EmbeddingConfig, JaggedTensor, KeyedJaggedTensor, KeyedTensor
from torchrec.modules.embedding_configs import PoolingType

from embtables.bags import Bags
from embtables.config import SparseOptimizer, TableConfig
from embtables.inputs import bags_from_kjt
from embtables.method import Method, check_ids_in_range
from embtables.plan import Plan, Target
from embtables.raw_ids import RawIds, reserve, with_ids
from embtables.registry import get_method
from embtables.stores import Store, store_class
from embtables.stores.quantized_store import QuantizedStore
from embtables.stores.quantized_torch import QuantizedTorchStore


class Collection(nn.Module):
    """A compressed drop-in for `torchrec.EmbeddingBagCollection` (pooled tables) or
    `torchrec.EmbeddingCollection` (tables with `pooling="none"`). Build it with `et.build_collection`.

    Forward: a `KeyedJaggedTensor` of raw ids with (at least) the configured features ->
        pooled:   `KeyedTensor` with keys `feature_names` and values (B, sum of `output_dims`)
        unpooled: dict feature -> `JaggedTensor` with values (N_f, D) and the input's lengths

    Args:
        method: the compression method holding the plan, remap and combine.
        store: the backend holding the physical tables.

    Example:
        >>> import torch, embtables as et
        >>> from torchrec import KeyedJaggedTensor
        >>> tables = [et.TableConfig("C1", 1000, 16), et.TableConfig("C2", 50, 16, pooling="mean")]
        >>> ebc = et.build_collection(tables, method="hash", budget=0.5)
        >>> kjt = KeyedJaggedTensor(["C1", "C2"], torch.tensor([3, 999, 7, 1]), lengths=torch.tensor([2, 0, 1, 1]))
        >>> ebc(kjt).values().shape  # (B=2, 16 + 16)
        torch.Size([2, 32])
    """

    def __init__(self, method: Method, store: Store) -> None:
        super().__init__()
        self.method = method
        self.store = store
        self.plan: Plan = method.plan
        self.tables = method.tables
        self.feature_names: list[str] = method.feature_names
        self.pooled = method.pooled
        self._dims = method.output_dims()
        # `raw_ids`: the tables the method reads by rank take raw ids, hashed into [0, N) before the remap
        self.raw_ids = RawIds(self.plan, method.id_upper) if self.plan.raw_tables else None
        self._id_upper = method.id_upper if self.raw_ids is None else self.raw_ids.upper
        mean = [self.tables[t].pooling == "mean" for t in method.feature_table]
        self._any_mean = any(mean)
        self.register_buffer("_mean", torch.tensor(mean, dtype=torch.bool), persistent=False)
        self.register_buffer("_dims_t", torch.tensor(self._dims), persistent=False)

    @property
    def output_dims(self) -> dict[str, int]:
        """Output width per feature, in output order (the contract models rely on)."""
        return dict(zip(self.feature_names, self._dims))

    def embedding_bag_configs(self) -> list[EmbeddingBagConfig]:
        """The logical tables as `torchrec.EmbeddingBagConfig`s: what torchrec code (e.g. `torchrec.models.dlrm`)
        asks an `EmbeddingBagCollection`, so it takes this collection in its place.

        Raises:
            ValueError: for unpooled tables (see `embedding_configs`), or when a feature's output width is not its
                table's dim (e.g. multihash's concat): torchrec reads a feature's width from its config.
        """
        if not self.pooled:
            raise ValueError("an unpooled collection (pooling='none') stands for torchrec's EmbeddingCollection: "
                             "use embedding_configs()")
        self._check_widths()
        return [EmbeddingBagConfig(num_embeddings=t.num_embeddings, embedding_dim=t.embedding_dim, name=t.name,
                                   feature_names=list(t.feature_names), pooling=PoolingType[t.pooling.upper()])
                for t in self.tables]

    def embedding_configs(self) -> list[EmbeddingConfig]:
        """The logical tables as `torchrec.EmbeddingConfig`s, what torchrec asks an `EmbeddingCollection`
        (unpooled collections; pooled ones answer `embedding_bag_configs`)."""
        if self.pooled:
            raise ValueError("a pooled collection stands for torchrec's EmbeddingBagCollection: use "
                             "embedding_bag_configs()")
        self._check_widths()
        return [EmbeddingConfig(num_embeddings=t.num_embeddings, embedding_dim=t.embedding_dim, name=t.name,
                                feature_names=list(t.feature_names)) for t in self.tables]

    def _check_widths(self) -> None:
        dim = {f: t.embedding_dim for t in self.tables for f in t.feature_names}
        wrong = {f: (w, dim[f]) for f, w in self.output_dims.items() if w != dim[f]}
        if wrong:
            raise ValueError(
                f"method {self.plan.method!r} gives features of another width than their table's dim "
                f"({', '.join(f'{f}: {w} not {d}' for f, (w, d) in wrong.items())}); torchrec code reads a feature's "
                "width from its table's config, so it cannot take this collection (embtables' DLRM and DIN read "
                "`output_dims` and can)")

    @property
    def device(self) -> torch.device:
        """Where the collection's tables and state live."""
        return self._dims_t.device

    def memory_bytes(self) -> int:
        """Every byte the collection holds to serve: physical table weights, the method's state and the raw-id hash
        keys; optimizer state excluded. A vocabulary mapping raw values to ranks, when the method needs one, is
        `plan.index_bytes` on top."""
        return self.store.weight_bytes() + self.method.state_bytes() + (self.raw_ids.bytes() if self.raw_ids else 0)

    @property
    def index_bytes(self) -> int:
        """Bytes of the vocabulary that maps raw values to the ranks this collection reads (`Plan.index_bytes`):
        0 when every table takes raw ids."""
        return self.plan.index_bytes

    @property
    def id_upper(self) -> list[int | None] | None:
        """Per feature, the bound the batch's read checks its ids against (None: any id), as `Method.id_upper`
        but for the features `raw_ids` hashes."""
        return self._id_upper

    def sparse_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer for the physical tables, or None when the backend fuses it into backward (fbgemm)."""
        return self.store.sparse_optimizer()

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor | dict[str, JaggedTensor]:
        bags = bags_from_kjt(features, self.feature_names, type(self).__name__, self._id_upper)
        if bags.values.device != self.device:
            bags = self._from_host(bags)
        out = self.lookup(bags)
        if self.pooled:
            return KeyedTensor(keys=self.feature_names, length_per_key=self._dims, values=out)
        lengths = bags.lengths()
        return {
            f: JaggedTensor(values=v, lengths=lengths[i])
            for i, (f, v) in enumerate(zip(self.feature_names, out.split(bags.ids_per_feature)))
        }

    @torch.no_grad()
    def quantize(self, dtype: str, backend: str = "fbgemm") -> "Collection":
        """An inference-only copy with the physical tables in `"fp16"`, `"int8"` or `"int4"` (row-wise fp16 scale
        and bias, as FBGEMM's IntNBit tables store them; `embtables/stores/quantized_store.py`), the method's remap
        and combine state kept in fp32. Its `memory_bytes()` counts the quantized rows; each output is within the
        rows' quantization error of this collection's.

        Args:
            dtype: `"fp16"`, `"int8"` (even dims) or `"int4"` (dims in multiples of 4).
            backend: what looks the rows up: `"fbgemm"`, FBGEMM's inference kernels (the fastest on the CPU), or
                `"torch"`, the same rows dequantized by PyTorch operations (`stores/quantized_torch.py`), which
                `torch.export` exports and `torch.compile` compiles.

        Raises:
            RuntimeError: in training mode (quantize a trained collection: call `.eval()` first), or sharded.
            ValueError: an unknown dtype, or a table whose dim the dtype's rows cannot hold (naming it).

        Example:
            >>> import torch, embtables as et
            >>> ebc = et.build_collection([et.TableConfig("C1", 10_000, 16)], "hash", budget=0.5).eval()
            >>> q = ebc.quantize("int8")
            >>> q.memory_bytes() < ebc.memory_bytes() / 3
            True
        """
        if self.training:
            raise RuntimeError("quantize() makes an inference-only copy of a trained collection: call .eval() first "
                               "(a quantized collection cannot be trained on)")
        if self.store.sharded:
            raise RuntimeError("quantize() needs the whole tables: save the sharded collection (et.save_collection) "
                               "and quantize it after loading it in one process")
        quantized = assemble_quantized(self.plan, dtype, self.device, backend)
        quantized.method.load_state_dict(self.method.state_dict())
        quantized.store.load_weights(self.store.weights())
        return quantized

    def _from_host(self, bags: Bags) -> Bags:
        """A batch given on the CPU to a collection on an accelerator (as a server builds its requests): read and
        range-checked on the host, where reads are free, then uploaded without the host waiting for the device, so
        that the lookups read nothing back."""
        where = type(self).__name__
        if bags.values.device.type != "cpu":
            raise ValueError(f"{where}: the batch is on {bags.values.device} and the collection on {self.device}: "
                             f"give the batch on {self.device}, or on the CPU (checked there, then uploaded)")
        if self._id_upper is not None:
            check_ids_in_range(bags, self._id_upper, self.method, where)
        return bags.uploaded(self.device, None if self._id_upper is None else (tuple(self._id_upper), False))

    def lookup(self, bags: Bags) -> Tensor:
        """Validated logical bags -> (B, sum D_out) pooled, or (N, D) rows when unpooled."""
        if self.training and torch.is_grad_enabled():
            _refuse_several_processes(self)
        if bags.per_sample_weights is not None:
            if not self.pooled:
                raise ValueError("per-id weights are only defined for pooled tables (pooling='sum')")
            if self._any_mean:
                names = [f for f, m in zip(self.feature_names, self._mean.tolist()) if m]
                raise ValueError(f"per-id weights need pooling='sum'; features {names} use 'mean'")
        if self.raw_ids is not None:
            bags = self.raw_ids(bags)
        batch = self.method.remap(bags)
        program = self.method.combine_program(batch) if self.store.combines else None
        if program is not None:  # lookups and combine in one pass (the fused store)
            out = self.store.pooled_program(batch.physical, *program)
        else:
            pooled, rows = self.store(batch.physical)
            out = self.method.combine(pooled, rows, batch)  # (B, sum D_out) or (N, D)
        if self._any_mean:
            lengths = bags.lengths().t()  # (B, F)
            div = torch.where(self._mean, lengths.clamp(min=1), torch.ones_like(lengths)).to(out.dtype)
            out = out / div.repeat_interleave(self._dims_t, dim=1, output_size=out.shape[1])
        return out


def _refuse_several_processes(c: Collection) -> None:
    """Training on several processes is right only with the tables sharded by torchrec (`et.shard`): otherwise
    DistributedDataParallel broadcasts the fused store's table (a buffer) from rank 0 at every step, FBGEMM's
    in-backward updates drift apart between ranks, and the torch store's sparse gradients are not what DDP reduces."""
    if c.store.sharded:
        problem = c.store.sharding_problem()
        if problem:
            raise RuntimeError(f"{type(c).__name__} (method {c.plan.method!r}): {problem}")
        return
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise RuntimeError(
            f"{type(c).__name__} (method {c.plan.method!r}, backend {c.store.name!r}): training on "
            f"{dist.get_world_size()} processes needs the tables sharded: build the collection with "
            "backend='torchrec' and wrap the model with et.shard(model), which shards it with torchrec's "
            "DistributedModelParallel. Wrapped in DistributedDataParallel, or given to DMP on another store, the "
            "replicated tables would drift apart (each store updates its tables inside backward). Evaluation "
            "(model.eval() or torch.no_grad()) runs on any number of processes."
        )


def _check_tables(tables: Sequence[TableConfig]) -> tuple[TableConfig, ...]:
    tables = tuple(tables)
    if not tables:
        raise ValueError("at least one TableConfig is needed")
    for t in tables:
        if not isinstance(t, TableConfig):
            raise TypeError(f"tables must be TableConfig instances, got {type(t).__name__}")
    names = [t.name for t in tables]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"table names must be unique; repeated: {dupes}")
    features = [f for t in tables for f in t.feature_names]
    dupes = sorted({f for f in features if features.count(f) > 1})
    if dupes:
        raise ValueError(f"each feature may be read by one table only; repeated: {dupes}")
    unpooled = {t.pooling == "none" for t in tables}
    if len(unpooled) > 1:
        raise ValueError(
            "a collection holds either pooled tables (sum/mean) or unpooled ones (none), as torchrec's "
            "EmbeddingBagCollection and EmbeddingCollection do; build two collections"
        )
    return tables


def _check_budget(budget: float | None) -> None:
    if budget is None:
        return
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ValueError(f"budget must be a fraction of the full bytes in (0, 1], got {budget!r}")


def plan(
    tables: Sequence[TableConfig],
    method: str = "full",
    budget: float | None = None,
    *,
    backend: str = "torch",
    counts: Mapping[str, Any] | None = None,
    raw_ids: bool = False,
    **options: Any,
) -> Plan:
    """Solve a method's parameters for `tables` and `budget` without allocating anything.

    Args:
        tables: logical tables.
        method: a name from `et.list_methods()`.
        budget: fraction of `et.full_bytes(tables)` the result may use, in (0, 1]; None for the method's
            explicit options (e.g. `buckets=` for `hash`).
        backend: `"torch"`, `"fbgemm"` or `"fused"`; constrains dims (multiples of 4 on fbgemm).
        counts: per-feature id counts, for frequency-based options.
        raw_ids: take raw int64 ids in the tables the method reads by rank, by hashing them into [0, N) first
            (one key per table; `embtables.raw_ids`); else those tables need ids that a vocabulary ranked, whose
            bytes the plan reports as `index_bytes`.
        **options: the method's options; unknown names raise TypeError.

    Returns:
        The `Plan`: physical tables, per-table parameters and exact bytes.

    Raises:
        InfeasibleBudget: (a ValueError) with `smallest_budget` when the budget cannot be met.

    Example:
        >>> import embtables as et
        >>> p = et.plan([et.TableConfig("C1", 10_000, 16)], "hash", budget=0.1)
        >>> p.physical_tables[0].num_embeddings, p.total_bytes
        (999, 63944)
    """
    tables = _check_tables(tables)
    _check_budget(budget)
    cls = get_method(method)
    opts = cls.make_options(options)
    if not isinstance(raw_ids, bool):
        raise ValueError(f"raw_ids must be a bool, got {raw_ids!r}")
    target = Target(backend=backend, dim_multiple=store_class(backend).dim_multiple, counts=counts)
    p = cls.solve(tables, budget, opts, target)
    by_frequency = [t.name for t, r in zip(tables, cls.reads_frequency(p)) if r]
    if raw_ids and by_frequency:
        raise ValueError(
            f"{method} with raw_ids=True: tables {by_frequency} are laid out by frequency rank (id 0 the most "
            f"frequent), which raw ids are not; use vocabulary ranks, or options without frequency blocks/hot rows"
        )
    ranked = cls.reads_by_rank(p)
    if raw_ids and any(ranked) and budget is not None and cls.compresses:
        # room for the keys: a smaller budget can only hash more tables, so this many keys is enough
        p = cls.solve(tables, reserve(budget, tables, sum(ranked)), opts, target)
        ranked = cls.reads_by_rank(p)
    return with_ids(p, ranked, raw_ids, budget)


def build_collection(
    tables: Sequence[TableConfig],
    method: str = "full",
    budget: float | None = None,
    *,
    backend: str = "torch",
    optimizer: SparseOptimizer | None = None,
    counts: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    raw_ids: bool = False,
    **options: Any,
) -> Collection:
    """Build a compressed embedding collection: a drop-in for `torchrec.EmbeddingBagCollection`.

    Args:
        tables: logical tables (all pooled, or all `pooling="none"`).
        method: a name from `et.list_methods()`.
        budget: fraction of the full fp32 bytes that `memory_bytes()` may use, in (0, 1].
        backend: `"torch"` (reference, sparse gradients), `"fbgemm"` (TBE kernels, optimizer inside backward) or
            `"fused"` (embtables' C++ CPU kernels: lookups, combine and optimizer in one kernel per direction).
        optimizer: embedding optimizer; default row-wise Adagrad with lr 0.01.
        counts: per-feature id counts, for frequency-based options.
        device: where to allocate; default CPU. `"meta"` with backend="torchrec": the tables are not allocated
            until `et.shard` draws each rank's shards (the method's state is built on the CPU); other backends
            allocate everything on meta or refuse it.
        raw_ids: take raw int64 ids everywhere (see `plan`).
        **options: the method's options; unknown names raise TypeError.

    Example:
        >>> import embtables as et
        >>> ebc = et.build_collection([et.TableConfig("C1", 10_000, 16)], method="hash", budget=0.1)
        >>> ebc.memory_bytes() <= 0.1 * et.full_bytes(ebc.tables)
        True
    """
    p = plan(tables, method, budget, backend=backend, counts=counts, raw_ids=raw_ids, **options)
    return assemble(p, backend, optimizer or SparseOptimizer(), counts, device)


def assemble(
    plan: Plan,
    backend: str,
    optimizer: SparseOptimizer,
    counts: Mapping[str, Any] | None,
    device: torch.device | str | None,
) -> Collection:
    """Allocate the collection of a solved plan on `backend` (laid out for it by `Method.relayout`); counts as in
    `build_collection`, or None when the method's state is loaded next (`et.load_collection`)."""
    cls = get_method(plan.method)
    target = Target(backend=backend, dim_multiple=store_class(backend).dim_multiple)
    plan = cls.relayout(plan, target)
    device = torch.device(device or "cpu")
    m = cls.from_plan(plan, counts)  # on the CPU: the store below refuses a device it cannot use first
    store = store_class(backend)(plan.physical_tables, plan.lookups, optimizer, device)
    if device.type == "meta" and backend == "torchrec":  # only the tables wait (for et.shard): the state is real
        return Collection(m, store)
    return Collection(m, store).to(device)


# what looks a quantized collection's rows up: FBGEMM's inference kernels, or PyTorch operations (which export)
QUANTIZED_STORES: dict[str, type[Store]] = {"fbgemm": QuantizedStore, "torch": QuantizedTorchStore}


def assemble_quantized(plan: Plan, dtype: str, device: torch.device | str | None, backend: str = "fbgemm") -> Collection:
    """An inference-only collection of a solved plan on a quantized store (`backend` "fbgemm": FBGEMM's IntNBit TBE,
    "torch": PyTorch operations), its tables and method state still to be loaded (`Collection.quantize`,
    `et.load_collection`)."""
    if backend not in QUANTIZED_STORES:
        raise ValueError(f"quantized tables are looked up by backend 'fbgemm' or 'torch', not {backend!r}")
    cls = get_method(plan.method)
    plan = cls.relayout(plan, Target(backend=QUANTIZED_STORES[backend].name, dim_multiple=1))
    device = torch.device(device or "cpu")
    store = QUANTIZED_STORES[backend](plan.physical_tables, plan.lookups, dtype, device)
    collection = Collection(cls.from_plan(plan, None), store)
    return collection.to(device).eval()
