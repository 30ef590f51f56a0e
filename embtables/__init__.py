"""embtables: compressed embedding tables for recommender models.

    import embtables as et
    tables = [et.TableConfig("C1", 10_000_000, 16), et.TableConfig("C2", 500, 16)]
    ebc = et.build_collection(tables, method="hash", budget=0.01, backend="fbgemm")
    pooled = ebc(kjt)                      # torchrec.KeyedTensor, like EmbeddingBagCollection
    ebc.memory_bytes(), et.full_bytes(tables)
"""

from embtables.collection import Collection, build_collection, plan
from embtables.config import Lookup, PhysicalTable, SparseOptimizer, TableConfig
from embtables.optim import RowWiseAdagrad
from embtables.plan import InfeasibleBudget, Plan, full_bytes
from embtables.registry import get_method, list_methods, register_method
from embtables.single import (
    Embedding,
    EmbeddingBag,
    HashEmbedding,
    HashEmbeddingBag,
    MixedDimEmbedding,
    MixedDimEmbeddingBag,
    MultiHashEmbedding,
    MultiHashEmbeddingBag,
    QREmbedding,
    QREmbeddingBag,
)

__version__ = "0.1.0"

__all__ = [
    "Collection",
    "Embedding",
    "EmbeddingBag",
    "HashEmbedding",
    "HashEmbeddingBag",
    "InfeasibleBudget",
    "Lookup",
    "MixedDimEmbedding",
    "MixedDimEmbeddingBag",
    "MultiHashEmbedding",
    "MultiHashEmbeddingBag",
    "PhysicalTable",
    "Plan",
    "QREmbedding",
    "QREmbeddingBag",
    "RowWiseAdagrad",
    "SparseOptimizer",
    "TableConfig",
    "build_collection",
    "full_bytes",
    "get_method",
    "list_methods",
    "plan",
    "register_method",
]
