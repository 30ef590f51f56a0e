"""Stores: one storage backend holds every physical table of a collection, looks them up and updates them.

    base.py          `Store`: the interface every backend implements (lookups, weights, optimizer state)
    torch_store.py   `torch`: one nn.Parameter per table, sparse gradients, PyTorch optimizers (the reference)
    fbgemm_store.py  `fbgemm`: FBGEMM's table-batched embedding, the optimizer applied inside backward
    flat.py          `FlatStore`: every table in one flat buffer, updated inside backward (fused and triton)
    fused_store.py   `fused`: embtables' C++ CPU kernels: lookups, the method's column program and the optimizer
    triton_store.py  `triton`: embtables' Triton GPU kernels: lookups and the optimizer, one launch per direction
    torchrec_store.py `torchrec`: torchrec's EmbeddingBagCollection / EmbeddingCollection, so DMP shards the tables
    quantized_store.py the tables of `Collection.quantize` in fp16/int8/int4 on FBGEMM's inference kernels (serving
                     only: not a backend to build or train on)

May import: the core library below it (config, bags, program, optim, kernels) and each other; never
embtables.methods (a method's combine reaches a store as data, a `ColumnProgram`), nor embtables.app,
embtables.cli, embtables.models or embtables.datasets.
"""

from __future__ import annotations

from embtables.stores.base import Store
from embtables.stores.fbgemm_store import FbgemmStore
from embtables.stores.fused_store import FusedStore
from embtables.stores.torch_store import TorchStore
from embtables.stores.torchrec_store import TorchrecStore
from embtables.stores.triton_store import TritonStore

BACKENDS: dict[str, type[Store]] = {
    "torch": TorchStore, "fbgemm": FbgemmStore, "fused": FusedStore, "triton": TritonStore,
    "torchrec": TorchrecStore,
}


def store_class(backend: str) -> type[Store]:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[backend]


__all__ = ["BACKENDS", "FbgemmStore", "FusedStore", "Store", "TorchStore", "TorchrecStore", "TritonStore", "store_class"]
