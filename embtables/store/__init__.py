"""Storage backends: `torch` (reference) and `fbgemm` (table-batched kernels with fused optimizers)."""

from __future__ import annotations

from embtables.store.base import Store
from embtables.store.fbgemm_store import FbgemmStore
from embtables.store.torch_store import TorchStore

BACKENDS: dict[str, type[Store]] = {"torch": TorchStore, "fbgemm": FbgemmStore}


def store_class(backend: str) -> type[Store]:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[backend]


__all__ = ["BACKENDS", "FbgemmStore", "Store", "TorchStore", "store_class"]
