"""embtables: compressed embedding tables for recommender models. This package is the library a user imports.

    import embtables as et
    tables = [et.TableConfig("C1", 10_000_000, 16), et.TableConfig("C2", 500, 16)]
    ebc = et.build_collection(tables, method="hash", budget=0.01, backend="fbgemm")
    pooled = ebc(kjt)                      # torchrec.KeyedTensor, like EmbeddingBagCollection
    ebc.memory_bytes(), et.full_bytes(tables)
    et.save_collection(ebc, "ebc.pt"); et.load_collection("ebc.pt", backend="torch")

Layers, each importing only those above it in this list (the data flow is remap -> store -> combine):

    config, options, files, hashing, bags, frequency, metrics, tablesets   leaves
    kernels/                 C++ CPU kernels and their loader (imports torch only)
    plan, registry, method, program, optim                                  what every method and store shares
    inputs                   a batch (KJT or EmbeddingBag arguments) -> validated Bags, one host read
    methods/                 one file per method: solve, remap, combine    (never imports stores/)
    stores/                  torch, fbgemm, fused, triton, torchrec: the physical tables (never imports methods/)
    collection, checkpoint, single, stages, sharding                        the public entry points

Apart from the library: `embtables.app` (training, sweeps, reports), `embtables.cli` (the command line),
`embtables.models` (DLRM, DIN) and `embtables.datasets` (data pipelines).

May import: torch, torchrec, fbgemm_gpu and the standard library; never embtables.app, embtables.cli,
embtables.models or embtables.datasets.
"""

from embtables.checkpoint import load_collection, save_collection
from embtables.collection import Collection, build_collection, plan
from embtables.config import Lookup, PhysicalTable, SparseOptimizer, TableConfig
from embtables.optim import RowWiseAdagrad, SparseAdagrad
from embtables.plan import InfeasibleBudget, Plan, full_bytes
from embtables.registry import get_method, list_methods, register_method
from embtables.sharding import shard, sharding_table
from embtables.stages import next_stage
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
    "SparseAdagrad",
    "SparseOptimizer",
    "TableConfig",
    "build_collection",
    "full_bytes",
    "get_method",
    "list_methods",
    "load_collection",
    "next_stage",
    "plan",
    "register_method",
    "save_collection",
    "shard",
    "sharding_table",
]
