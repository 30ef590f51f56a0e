"""Configuration dataclasses: what the user asks for (logical tables) and what gets allocated (physical tables).

A *logical* table is the table a user would have had without compression: `num_embeddings` rows of
`embedding_dim` floats, looked up by one or more features. A *physical* table is a plain 2-D table that a
compression method actually allocates in the store. Configs are frozen and validated on construction, so a
bad value fails where it is written, naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

POOLINGS = ("sum", "mean", "none")
OPTIMIZERS = ("rowwise_adagrad", "adagrad", "sgd")
# bytes of what the serving state stores, used in every memory formula (never a literal 4 or 8)
FP32_BYTES = 4  # one fp32 weight
KEY_BYTES = 8  # one int64 hash key
ID_BYTES = 8  # one int64 id kept in a map (multihash's hot ids)

Pooling = Literal["sum", "mean", "none"]


def _check_int(owner: str, field: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}.{field} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}.{field} must be >= {minimum}, got {value}")


def _check_name(owner: str, field: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{owner}.{field} must be a non-empty string, got {value!r}")


@dataclass(frozen=True)
class TableConfig:
    """One logical embedding table.

    Args:
        name: table name, unique within a collection.
        num_embeddings: logical rows N (ids of a `full` table must lie in [0, N)).
        embedding_dim: width D of each embedding.
        feature_names: features looked up in this table; defaults to `(name,)`.
        pooling: `"sum"` or `"mean"` pools each bag to one (D,) vector; `"none"` returns one vector per id.

    Example:
        >>> import embtables as et
        >>> et.TableConfig("C1", num_embeddings=1460, embedding_dim=16)
        TableConfig(name='C1', num_embeddings=1460, embedding_dim=16, feature_names=('C1',), pooling='sum')
    """

    name: str
    num_embeddings: int
    embedding_dim: int
    feature_names: tuple[str, ...] = ()
    pooling: Pooling = "sum"

    def __post_init__(self) -> None:
        _check_name("TableConfig", "name", self.name)
        _check_int(f"TableConfig({self.name!r})", "num_embeddings", self.num_embeddings, 1)
        _check_int(f"TableConfig({self.name!r})", "embedding_dim", self.embedding_dim, 1)
        if isinstance(self.feature_names, str):
            raise ValueError(
                f"TableConfig({self.name!r}).feature_names must be a sequence of names, not the string "
                f"{self.feature_names!r}"
            )
        names = tuple(self.feature_names) or (self.name,)
        for f in names:
            _check_name(f"TableConfig({self.name!r})", "feature_names", f)
        if len(set(names)) != len(names):
            raise ValueError(f"TableConfig({self.name!r}).feature_names has duplicates: {names}")
        object.__setattr__(self, "feature_names", names)
        if self.pooling not in POOLINGS:
            raise ValueError(f"TableConfig({self.name!r}).pooling must be one of {POOLINGS}, got {self.pooling!r}")

    @property
    def full_bytes(self) -> int:
        """Bytes of this table uncompressed in fp32: N * D * 4."""
        return self.num_embeddings * self.embedding_dim * FP32_BYTES


@dataclass(frozen=True)
class PhysicalTable:
    """A plain 2-D table allocated in the store: `num_embeddings` x `embedding_dim` fp32 weights.

    Args:
        name: unique name within the collection, e.g. `"C3/hash"`.
        num_embeddings: rows actually allocated.
        embedding_dim: width of each row.
        init_low, init_high: weights are initialised uniformly in [init_low, init_high].
    """

    name: str
    num_embeddings: int
    embedding_dim: int
    init_low: float
    init_high: float

    def __post_init__(self) -> None:
        _check_name("PhysicalTable", "name", self.name)
        _check_int(f"PhysicalTable({self.name!r})", "num_embeddings", self.num_embeddings, 1)
        _check_int(f"PhysicalTable({self.name!r})", "embedding_dim", self.embedding_dim, 1)
        if not self.init_low <= self.init_high:
            raise ValueError(f"PhysicalTable({self.name!r}): init_low must be <= init_high")

    @property
    def bytes(self) -> int:
        return self.num_embeddings * self.embedding_dim * FP32_BYTES


def uniform_table(name: str, num_embeddings: int, embedding_dim: int, logical_rows: int | None = None) -> PhysicalTable:
    """A physical table with the DLRM/torchrec default init U(-1/sqrt(n), 1/sqrt(n)), n the logical rows."""
    bound = (logical_rows or num_embeddings) ** -0.5
    return PhysicalTable(name, num_embeddings, embedding_dim, -bound, bound)


@dataclass(frozen=True)
class Lookup:
    """One physical feature: the ids of one logical feature, remapped into one physical table.

    Args:
        name: unique name, e.g. `"C3/q"`.
        table: index of the physical table in the plan.
        pooled: True: the store sums each bag into one row; False: the store returns one row per id (for
            methods whose combine is not linear, and for unpooled tables).
    """

    name: str
    table: int
    pooled: bool


@dataclass(frozen=True)
class SparseOptimizer:
    """Optimizer for the embedding weights, applied inside the backward pass on the fbgemm and fused backends.

    Args:
        name: `"rowwise_adagrad"` (one accumulator per row, the DLRM/torchrec default), `"adagrad"` or `"sgd"`.
        lr: learning rate.
        eps: Adagrad epsilon, added to the square root of the accumulator.
    """

    name: Literal["rowwise_adagrad", "adagrad", "sgd"] = "rowwise_adagrad"
    lr: float = 0.01
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"SparseOptimizer.name must be one of {OPTIMIZERS}, got {self.name!r}")
        if not self.lr > 0:
            raise ValueError(f"SparseOptimizer.lr must be > 0, got {self.lr}")
        if not self.eps >= 0:
            raise ValueError(f"SparseOptimizer.eps must be >= 0, got {self.eps}")

