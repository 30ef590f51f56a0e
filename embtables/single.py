"""Single-table drop-ins for `torch.nn.EmbeddingBag` and `torch.nn.Embedding`, backed by any method.

Each wraps a one-table `Collection`, so it shares the remap, store and combine code (and tests) of the
collection. `EmbeddingBag` and `Embedding` take the method by name. The method-specific drop-ins
(`HashEmbeddingBag`, `QREmbedding`, ...) fix it and take exactly that method's options as keyword arguments:
their signatures are generated from the method's `Options` dataclass, so each option is defined once, shows
in `help()` and `inspect.signature`, and an unknown name raises TypeError listing the valid ones. Unified
Embedding serves many features from one space, so it has no single-table drop-in.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, ClassVar, Literal, Mapping

import torch
from torch import Tensor, nn

from embtables.bags import Bags, upload
from embtables.collection import build_collection
from embtables.config import SparseOptimizer, TableConfig
from embtables.inputs import bags_from_tensors
from embtables.registry import get_method

TABLE = "embedding"


class EmbeddingBag(nn.Module):
    """Drop-in for `torch.nn.EmbeddingBag` with a compression method.

    Args:
        num_embeddings: logical rows N.
        embedding_dim: D.
        mode: `"sum"` or `"mean"`.
        method: a name from `et.list_methods()`.
        budget: fraction of the full table's bytes to use, or None for the method's explicit options.
        include_last_offset: as in `torch.nn.EmbeddingBag`.
        backend, optimizer, counts, device: as in `et.build_collection` (counts keyed by `"embedding"`).
        **options: the method's options.

    Forward: `(input, offsets=None, per_sample_weights=None)` exactly as `torch.nn.EmbeddingBag`: input (B, L),
    or (N,) with offsets (B,) -> (B, D_out).

    Example:
        >>> import torch, embtables as et
        >>> bag = et.EmbeddingBag(1_000_000, 16, method="hash", budget=0.01)
        >>> bag(torch.tensor([[1, 2], [999_999, 5]])).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        mode: Literal["sum", "mean"] = "sum",
        *,
        method: str = "full",
        budget: float | None = None,
        include_last_offset: bool = False,
        backend: str = "torch",
        optimizer: SparseOptimizer | None = None,
        counts: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if mode not in ("sum", "mean"):
            raise ValueError(f"{type(self).__name__}: mode must be 'sum' or 'mean', got {mode!r}")
        self.mode = mode
        self.include_last_offset = include_last_offset
        table = TableConfig(TABLE, num_embeddings, embedding_dim, pooling=mode)
        self.collection = build_collection(
            [table], method, budget, backend=backend, optimizer=optimizer, counts=counts, device=device, **options
        )

    def forward(self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None) -> Tensor:
        where = type(self).__name__
        if per_sample_weights is not None and self.mode != "sum":
            raise ValueError(f"{where}: per_sample_weights is only supported for mode='sum' (as in torch)")
        bags = bags_from_tensors(input, offsets, per_sample_weights, self.include_last_offset, where,
                                 self.collection.id_upper)
        return self.collection.lookup(bags)  # (B, D_out)

    def memory_bytes(self) -> int:
        return self.collection.memory_bytes()


class Embedding(nn.Module):
    """Drop-in for `torch.nn.Embedding` with a compression method: input of any shape -> (*shape, D_out).

    Args: as `EmbeddingBag`, without `mode` and `include_last_offset`.

    Example:
        >>> import torch, embtables as et
        >>> emb = et.Embedding(1_000_000, 16, method="hash", budget=0.01)
        >>> emb(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 16])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        method: str = "full",
        budget: float | None = None,
        backend: str = "torch",
        optimizer: SparseOptimizer | None = None,
        counts: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        table = TableConfig(TABLE, num_embeddings, embedding_dim, pooling="none")
        self.collection = build_collection(
            [table], method, budget, backend=backend, optimizer=optimizer, counts=counts, device=device, **options
        )

    def forward(self, input: Tensor) -> Tensor:
        if input.is_floating_point() or input.dtype == torch.bool:
            raise TypeError(f"{type(self).__name__}: input must hold integer ids, got dtype {input.dtype}")
        values = input.reshape(-1).long()
        n = values.numel()
        bags = Bags(values, upload([0, n], values.device), None, [n], 1, n)
        rows = self.collection.lookup(bags)  # (N, D)
        return rows.view(*input.shape, rows.shape[-1])

    def memory_bytes(self) -> int:
        return self.collection.memory_bytes()


class _MethodDropIn:
    """Mixin of the method-specific drop-ins: `method` fixed, its options as keywords, `counts` a tensor.

    Subclasses set `method`, `fixed` for options the drop-in decides (they are not accepted as keywords), and
    `counts`: whether the method reads id counts ("none": the keyword does not exist, "optional", "required").
    """

    method: ClassVar[str] = ""
    fixed: ClassVar[Mapping[str, Any]] = {}
    counts: ClassVar[Literal["none", "optional", "required"]] = "none"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.method:
            return
        init = inspect.signature(EmbeddingBag.__init__ if issubclass(cls, EmbeddingBag) else Embedding.__init__)
        keep = [p for n, p in init.parameters.items() if n not in ("self", "method", "options", "counts")]
        head = [p for p in keep if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        tail = [p for p in keep if p.kind is inspect.Parameter.KEYWORD_ONLY]
        required = cls.counts == "required"
        counts = [inspect.Parameter(
            "counts", inspect.Parameter.KEYWORD_ONLY, annotation="Tensor" if required else "Tensor | None",
            **({} if required else {"default": None}),
        )] if cls.counts != "none" else []
        options = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for f in dataclasses.fields(get_method(cls.method).Options)
            if f.name not in cls.fixed
        ]
        parameters = head + [tail[0], *counts, *options, *tail[1:]]  # budget, counts, options, then the rest
        cls.__signature__ = init.replace(parameters=parameters)  # type: ignore[attr-defined]

    def _method_arguments(self, counts: Tensor | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keywords for `EmbeddingBag` / `Embedding`: the fixed method and options, counts keyed by table."""
        where = type(self).__name__
        fixed = sorted(set(kwargs) & set(self.fixed))
        if fixed:
            raise TypeError(f"{where} sets {fixed} itself ({dict(self.fixed)}); use et.EmbeddingBag to choose them")
        if counts is not None and self.counts == "none":
            raise TypeError(f"{where} got counts=, but method {self.method!r} reads no id counts")
        if counts is None and self.counts == "required":
            raise ValueError(f"{where} needs counts=: (N,) training counts of ids 0..N-1, frequency-ranked")
        return {"method": self.method, "counts": None if counts is None else {TABLE: counts}, **self.fixed, **kwargs}


class _MethodEmbeddingBag(_MethodDropIn, EmbeddingBag):
    def __init__(
        self, num_embeddings: int, embedding_dim: int, mode: Literal["sum", "mean"] = "sum", *,
        counts: Tensor | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(num_embeddings, embedding_dim, mode, **self._method_arguments(counts, kwargs))


class _MethodEmbedding(_MethodDropIn, Embedding):
    def __init__(self, num_embeddings: int, embedding_dim: int, *, counts: Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(num_embeddings, embedding_dim, **self._method_arguments(counts, kwargs))


class HashEmbeddingBag(_MethodEmbeddingBag):
    """`torch.nn.EmbeddingBag` with the hashing trick: ids hashed into `buckets` rows (or rows solved from
    `budget`). Options as `embtables.methods.hash.HashOptions`.

    Example:
        >>> import torch, embtables as et
        >>> bag = et.HashEmbeddingBag(10_000_000, 16, buckets=100_000)
        >>> bag(torch.tensor([123456789]), torch.tensor([0])).shape
        torch.Size([1, 16])
    """

    method = "hash"


class HashEmbedding(_MethodEmbedding):
    """`torch.nn.Embedding` with the hashing trick; arguments as `HashEmbeddingBag` without `mode` and
    `include_last_offset`."""

    method = "hash"


class MultiHashEmbeddingBag(_MethodEmbeddingBag):
    """`torch.nn.EmbeddingBag` with multi-hash embeddings (Bloom, Hash Embeddings, frequency + double hashing);
    options as `embtables.methods.multihash.MultiHashOptions`; `counts`: (N,) id counts, needed by `hot_rows`.

    Forward: as `torch.nn.EmbeddingBag` -> (B, D), or (B, D + k) with `append_weights`.

    Example:
        >>> import torch, embtables as et
        >>> bag = et.MultiHashEmbeddingBag(1_000_000, 16, budget=0.01, importance=True)
        >>> bag(torch.tensor([[3, 999_999], [2**40, -5]])).shape  # compressed tables take any int64 id
        torch.Size([2, 16])
    """

    method = "multihash"
    counts = "optional"  # for hot_rows


class MultiHashEmbedding(_MethodEmbedding):
    """`torch.nn.Embedding` with multi-hash embeddings: ids of any shape -> (*shape, D) (D + k with
    `append_weights`); arguments as `MultiHashEmbeddingBag` without `mode` and `include_last_offset`.

    Example:
        >>> import torch, embtables as et
        >>> emb = et.MultiHashEmbedding(10_000_000, 16, rows=50_000, num_hashes=3)
        >>> emb(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 16])
    """

    method = "multihash"
    counts = "optional"  # for hot_rows


class QREmbeddingBag(_MethodEmbeddingBag):
    """`torch.nn.EmbeddingBag` with quotient-remainder (complementary partition) compression; give `collisions`
    (m) or `budget`; options as `embtables.methods.qr.QROptions`.

    Example:
        >>> import torch, embtables as et
        >>> bag = et.QREmbeddingBag(10_000_000, 16, collisions=4096)
        >>> bag(torch.tensor([[3, 9_999_999]])).shape
        torch.Size([1, 16])
    """

    method = "qr"


class QREmbedding(_MethodEmbedding):
    """`torch.nn.Embedding` with quotient-remainder compression; arguments as `QREmbeddingBag` without `mode` and
    `include_last_offset` (`pooling_order` has no effect without pooling)."""

    method = "qr"


class MixedDimEmbeddingBag(_MethodEmbeddingBag):
    """`torch.nn.EmbeddingBag` with mixed-dimension frequency blocks (granularity "block": within one table the
    method needs the ids' training counts); options as `embtables.methods.mixed_dim.MixedDimOptions`.

    Args:
        counts: (N,) training counts of ids 0..N-1, frequency-ranked (non-increasing); required.
        budget: fraction of the full table's bytes; without it, the most popular block gets `d0` (default D).

    Example:
        >>> import torch, embtables as et
        >>> counts = 1e6 / torch.arange(1, 100_001)  # Zipf
        >>> bag = et.MixedDimEmbeddingBag(100_000, 16, counts=counts, alpha=0.5)
        >>> bag.collection.plan.params[0].dims, bag(torch.tensor([[0, 99_999]])).shape
        ((16, 4, 1, 1), torch.Size([1, 16]))
    """

    method = "mixed_dim"
    fixed = {"granularity": "block"}
    counts = "required"


class MixedDimEmbedding(_MethodEmbedding):
    """`torch.nn.Embedding` with mixed-dimension frequency blocks; arguments as `MixedDimEmbeddingBag` without
    `mode` and `include_last_offset`."""

    method = "mixed_dim"
    fixed = {"granularity": "block"}
    counts = "required"
