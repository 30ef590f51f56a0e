"""Training stages: a collection trained in one stage becomes the next stage's collection (OptEmbed's supernet becomes
its compact tables). The method decides the next plan and what to carry over (`Method.carry_over`); this builds it
on a store and loads the carried weights and state.
"""

from __future__ import annotations

from typing import Any

import torch

from embtables.collection import Collection, assemble
from embtables.config import SparseOptimizer
from embtables.method import Carried
from embtables.plan import Target
from embtables.stores import store_class


def next_stage(collection: Collection, backend: str | None = None, optimizer: SparseOptimizer | None = None,
               device: torch.device | str | None = None, **choices: Any) -> Collection:
    """The collection of the next training stage, built from a trained one.

    Args:
        collection: the trained stage (e.g. method `optembed_supernet`).
        backend: the next collection's store (default: the same as `collection`'s).
        optimizer: its embedding optimizer (default: the same as `collection`'s).
        device: where to allocate (default: where `collection`'s tables are).
        **choices: what the method's `carry_over` takes (OptEmbed: `dims`, `budget`, `start`, `start_oov`).

    Returns:
        A new collection whose tables hold the carried weights; `collection` is unchanged.

    Example:
        >>> import torch, embtables as et
        >>> supernet = et.build_collection([et.TableConfig("C1", 100, 8)], "optembed_supernet")
        >>> with torch.no_grad():
        ...     _ = supernet.method.mask.thresholds.fill_(0.5)  # as if trained: prune rows of L1 norm <= 0.5
        >>> small = et.next_stage(supernet, dims=[4])
        >>> small.plan.method, small.output_dims, small.memory_bytes() < et.full_bytes(small.tables)
        ('optembed', {'C1': 8}, True)
    """
    backend = backend or collection.store.name
    device = device or (collection.store.weights()[0].device if collection.store.weights() else "cpu")
    target = Target(backend=backend, dim_multiple=store_class(backend).dim_multiple)
    carried = collection.method.carry_over(collection.store.weights(), target, **choices)
    nxt = assemble(carried.plan, backend, optimizer or collection.store.optimizer, None, device)
    load_carried(nxt, carried)
    return nxt


@torch.no_grad()
def load_carried(collection: Collection, carried: Carried) -> None:
    """Copy a `Carried`'s weights and state into a collection built for its plan (e.g. by a trainer).

    Raises:
        ValueError: the collection's plan is not the carried one, or a shape differs (naming the table).
    """
    if collection.plan.params != carried.plan.params or collection.plan.method != carried.plan.method:
        raise ValueError(f"the collection (method {collection.plan.method!r}) was built for another plan than the "
                         f"carried one (method {carried.plan.method!r}, params {carried.plan.params})")
    weights = collection.store.weights()
    if len(weights) != len(carried.weights):
        raise ValueError(f"{len(carried.weights)} carried tables for {len(weights)} physical tables")
    for table, w, src in zip(collection.plan.physical_tables, weights, carried.weights):
        if tuple(w.shape) != tuple(src.shape):
            raise ValueError(f"carried weights of {table.name!r} have shape {tuple(src.shape)}, the table {tuple(w.shape)}")
        w.copy_(src)
    buffers = dict(collection.method.named_buffers())
    for name, value in carried.state.items():
        buffers[name].copy_(value)
