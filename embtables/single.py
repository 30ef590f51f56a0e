"""Single-table drop-ins for `torch.nn.EmbeddingBag` and `torch.nn.Embedding`, backed by any method.

Each wraps a one-table `Collection`, so it shares the remap, store and combine code (and tests) of the
collection; `HashEmbeddingBag` and `HashEmbedding` fix the method to `hash` with its options spelled out.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import torch
from torch import Tensor, nn

from embtables.bags import Bags, bags_from_tensors
from embtables.collection import build_collection
from embtables.config import SparseOptimizer, TableConfig

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
        bags = bags_from_tensors(input, offsets, per_sample_weights, self.include_last_offset, where)
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
        bags = Bags(values, torch.tensor([0, n], device=values.device), None, [n], 1)
        rows = self.collection.lookup(bags)  # (N, D)
        return rows.view(*input.shape, rows.shape[-1])

    def memory_bytes(self) -> int:
        return self.collection.memory_bytes()


class HashEmbeddingBag(EmbeddingBag):
    """`torch.nn.EmbeddingBag` with the hashing trick: ids hashed into `buckets` rows (or rows solved from
    `budget`). See `embtables.methods.hash`.

    Example:
        >>> import torch, embtables as et
        >>> bag = et.HashEmbeddingBag(10_000_000, 16, buckets=100_000)
        >>> bag(torch.tensor([123456789]), torch.tensor([0])).shape
        torch.Size([1, 16])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        mode: Literal["sum", "mean"] = "sum",
        *,
        buckets: int | None = None,
        budget: float | None = None,
        seed: int = 0,
        hash_all: bool = False,
        include_last_offset: bool = False,
        backend: str = "torch",
        optimizer: SparseOptimizer | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, mode, method="hash", budget=budget, include_last_offset=include_last_offset,
            backend=backend, optimizer=optimizer, device=device, buckets=buckets, seed=seed, hash_all=hash_all,
        )


class HashEmbedding(Embedding):
    """`torch.nn.Embedding` with the hashing trick; arguments as `HashEmbeddingBag`."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        buckets: int | None = None,
        budget: float | None = None,
        seed: int = 0,
        hash_all: bool = False,
        backend: str = "torch",
        optimizer: SparseOptimizer | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            num_embeddings, embedding_dim, method="hash", budget=budget, backend=backend, optimizer=optimizer,
            device=device, buckets=buckets, seed=seed, hash_all=hash_all,
        )
