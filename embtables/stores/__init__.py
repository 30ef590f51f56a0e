"""Storage backends: `torch` (reference), `fbgemm` (table-batched kernels with fused optimizers) and `fused`
(C++ CPU kernels that also run the method's combine and the optimizer)."""

from __future__ import annotations

from embtables.stores.base import Store
from embtables.stores.fbgemm_store import FbgemmStore
from embtables.stores.fused_store import FusedStore
from embtables.stores.torch_store import TorchStore

BACKENDS: dict[str, type[Store]] = {"torch": TorchStore, "fbgemm": FbgemmStore, "fused": FusedStore}


def store_class(backend: str) -> type[Store]:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[backend]


__all__ = ["BACKENDS", "FbgemmStore", "FusedStore", "Store", "TorchStore", "store_class"]
