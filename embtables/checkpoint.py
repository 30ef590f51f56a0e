"""Checkpoints that move between stores: `et.save_collection` and `et.load_collection`.

A collection file holds what serving raw ids needs, under names no store chooses, and apart from it what training
needs to go on:

    format, version    "embtables.collection", 1
    plan               JSON: method, options, budget, logical tables, physical tables, lookups, the solved
                       parameters of each table and the extra bytes; loading never solves again (no counts needed)
    dtype              "fp32", or "fp16" / "int8" / "int4" for a quantized collection (`Collection.quantize`)
    tables             physical table name -> its (rows, dim) fp32 weights; quantized, its rows as the quantized
                       store holds them: (rows, row bytes) uint8, values then fp16 scale and bias
    method             the method's state_dict: hash keys, hot-id maps, projections (multihash's importance
                       weights are a physical table, under tables)
    optimizer          JSON: the `SparseOptimizer` (name, lr, eps) the tables were trained with
    optimizer_state    physical table name -> row-wise Adagrad's (rows,) or Adagrad's (rows, dim) accumulators;
                       empty for SGD or when saved with `optimizer_state=False` (serving needs none of it)

It is written with `torch.save`, atomically, and read with `torch.load(weights_only=True)`: tensors, strings and
numbers only, so loading runs no code from the file. Any store loads what any store saved: the physical tables
are the same on every store, and only how lookups read shared tables may differ (`Method.relayout`).

Example:
    >>> import tempfile, torch, embtables as et
    >>> from torchrec import KeyedJaggedTensor
    >>> tables = [et.TableConfig("C1", 10_000, 16), et.TableConfig("C2", 500, 16)]
    >>> trained = et.build_collection(tables, "qr", budget=0.1, backend="fbgemm")
    >>> path = tempfile.mkdtemp() + "/qr.pt"
    >>> et.save_collection(trained, path)
    >>> served = et.load_collection(path, backend="torch")
    >>> kjt = KeyedJaggedTensor(["C1", "C2"], torch.tensor([3, 9_999, 7]), lengths=torch.tensor([2, 0, 1, 0]))
    >>> with torch.no_grad():
    ...     torch.testing.assert_close(served(kjt).values(), trained(kjt).values())
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import torch
from torch import Tensor

from embtables.collection import QUANTIZED_STORES, Collection, assemble, assemble_quantized
from embtables.config import Lookup, PhysicalTable, SparseOptimizer, TableConfig
from embtables.files import as_json, atomic_write
from embtables.plan import Plan
from embtables.stores.quantized_store import FP32, QuantizedRows
from embtables.registry import get_method

FORMAT = "embtables.collection"
VERSION = 1


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    """A JSON-ready dict of everything in the plan."""
    return {
        "method": plan.method,
        "options": dataclasses.asdict(plan.options),
        "budget": plan.budget,
        "tables": [dataclasses.asdict(t) for t in plan.tables],
        "physical_tables": [dataclasses.asdict(t) for t in plan.physical_tables],
        "lookups": [dataclasses.asdict(lk) for lk in plan.lookups],
        "params": [dataclasses.asdict(p) for p in plan.params],
        "extra_bytes": plan.extra_bytes,
        "raw_tables": list(plan.raw_tables),
        "index_bytes": plan.index_bytes,
    }


def plan_from_dict(d: dict[str, Any]) -> Plan:
    """The `Plan` of `plan_to_dict`, with the method's own Options and Params classes (validated again)."""
    cls = get_method(d["method"])
    return Plan(
        method=d["method"],
        options=cls.Options(**_tuples(d["options"])),
        budget=d["budget"],
        tables=tuple(TableConfig(**_tuples(t)) for t in d["tables"]),
        physical_tables=tuple(PhysicalTable(**t) for t in d["physical_tables"]),
        lookups=tuple(Lookup(**lk) for lk in d["lookups"]),
        params=tuple(cls.Params(**_tuples(p)) for p in d["params"]),
        extra_bytes=d["extra_bytes"],
        raw_tables=tuple(d.get("raw_tables", ())),
        index_bytes=d.get("index_bytes", 0),
    )


def _tuples(x: Any) -> Any:
    """JSON lists back to the tuples the frozen dataclasses hold."""
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def collection_state(collection: Collection, optimizer_state: bool = True) -> dict[str, Any]:
    """The checkpoint of `collection` as a dict of tensors, strings and numbers (what `save_collection` writes).

    Args:
        collection: any collection, on any store. Sharded over processes (`torchrec`), every rank calls it and
            rank 0 gets the state, the other ranks an empty dict.
        optimizer_state: include the tables' optimizer state (to continue training); serving does not need it.
    """
    names = [t.name for t in collection.plan.physical_tables]
    store = collection.store
    if isinstance(store, QuantizedRows):  # the rows as stored, bit for bit; nothing of an optimizer
        weights, states, dtype = store.quantized_rows(), [], store.dtype
    else:  # whole tables even when sharded over processes (a collective there; rank 0 gets them)
        weights, dtype = store.full_weights(), FP32
        states = store.full_optimizer_state() if optimizer_state else []
    if weights is None or states is None:
        return {}  # a rank other than 0 of a sharded store: rank 0 writes the checkpoint
    return {
        "format": FORMAT,
        "version": VERSION,
        "plan": json.dumps(plan_to_dict(collection.plan)),
        "dtype": dtype,
        "tables": {n: w.detach().cpu() for n, w in zip(names, weights)},
        "method": {k: v.detach().cpu() for k, v in collection.method.state_dict().items()},
        "optimizer": json.dumps(dataclasses.asdict(collection.store.optimizer)),
        "optimizer_state": {n: s.detach().cpu() for n, s in zip(names, states) if s is not None},
    }


def save_collection(collection: Collection, path: str | os.PathLike, *, optimizer_state: bool = True) -> None:
    """Write `collection` to `path` (atomically), loadable on any store by `load_collection`. Sharded over
    processes (`et.shard`), every rank calls it and rank 0 writes the whole tables.

    Args:
        collection: the collection to save.
        path: the file to write.
        optimizer_state: also save the tables' optimizer state, to continue training after loading.
    """
    state = collection_state(collection, optimizer_state)
    if state:  # empty on the ranks other than 0 of a sharded store
        save_tensor_file(path, state)


def save_tensor_file(path: str | os.PathLike, obj: Any) -> None:
    """`torch.save(obj)` into `path` atomically (through a temporary file, not an in-memory copy of the whole
    file); `load_tensor_file` reads it back."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_tensor_file(path: str | os.PathLike, what: str) -> Any:
    """A file written by `torch.save`, read with `torch.load(weights_only=True, mmap=True)`: only tensors, strings,
    numbers and containers of them are built, so no code in the file runs, and the tensors are mapped from the file
    (read as they are used; writing to them changes a private copy, never the file). ValueError naming the file and `what` it should be
    when it is empty, truncated, not a torch file, or holds anything else (e.g. a pickled object or function).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "empty.pt"; path.write_bytes(b"")
        0
        >>> load_tensor_file(path, "training checkpoint")
        Traceback (most recent call last):
        ...
        ValueError: .../empty.pt: not a readable training checkpoint: the file is empty (0 bytes)
    """
    size = os.path.getsize(path)  # FileNotFoundError names the path itself
    if size == 0:
        raise ValueError(f"{path}: not a readable {what}: the file is empty (0 bytes)")
    try:
        # mapped, not read: a rank resuming a sharded run copies only its shards' rows out of the whole tables
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))  # what the restricted unpickler would not build
        if refused:
            raise ValueError(f"{path}: refused: it asks to build {refused.group(1)}, not only tensors and plain values, "
                             "and building objects from a file can run code; embtables never writes such files"
                             ) from None
        # torch's text around the cause advises loading unsafely: keep the cause only
        cause = [p.strip() for p in str(e).split("\n\n") if p.strip() and not p.startswith("Weights only load failed")
                 and not p.strip().startswith("Check the documentation")]
        raise ValueError(f"{path}: not a readable {what}: truncated, damaged or not written by torch.save "
                         f"({type(e).__name__}: {(cause[0] if cause else str(e))[:200]})") from None


def read_collection_file(path: str | os.PathLike) -> dict[str, Any]:
    """The dict of a collection file, read without running code from it; ValueError naming the file otherwise."""
    state = load_tensor_file(path, "embtables collection file")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not an embtables collection file (no format {FORMAT!r})")
    if state.get("version") != VERSION:
        raise ValueError(f"{path}: collection file version {state.get('version')!r}; this embtables reads {VERSION}")
    return state


def load_collection(
    path: str | os.PathLike,
    backend: str | None = None,
    device: torch.device | str | None = None,
    optimizer: SparseOptimizer | None = None,
) -> Collection:
    """Rebuild a saved collection on any store, with its plan, weights, method state and optimizer state.

    Args:
        path: a file written by `save_collection`.
        backend: the store to build, whatever store saved it (default `"torch"`, which serves on any device); a
            quantized collection loads on FBGEMM's inference kernels (`"fbgemm"`, its default) or on PyTorch
            operations (`"torch"`, which export), whichever saved it.
        device: where to allocate; default CPU.
        optimizer: the tables' optimizer from now on; default the saved one. Its state is restored when it is
            the saved optimizer (any lr or eps), and starts fresh for another.

    Raises:
        ValueError: naming the file, when it is not a collection file or its parts do not fit its plan.
    """
    return collection_from_state(read_collection_file(path), str(path), backend, device, optimizer)


def collection_from_state(
    state: dict[str, Any],
    where: str,
    backend: str | None = None,
    device: torch.device | str | None = None,
    optimizer: SparseOptimizer | None = None,
) -> Collection:
    """`load_collection` of a `collection_state` already read (e.g. one of a training checkpoint's collections).

    Args:
        state: from `collection_state` or `read_collection_file`.
        where: the file or run it came from, for error messages.
        backend, device, optimizer: as `load_collection`'s.
    """
    try:
        plan = plan_from_dict(json.loads(state["plan"]))
        saved = SparseOptimizer(**json.loads(state["optimizer"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: its plan or optimizer does not describe a collection ({e})") from None
    dtype = state.get("dtype", FP32)
    if dtype != FP32:
        if (backend is not None and backend not in QUANTIZED_STORES) or optimizer is not None:
            raise ValueError(f"{where}: a {dtype}-quantized collection serves on backend 'fbgemm' (FBGEMM's "
                             f"inference kernels) or 'torch', not {backend!r}, and trains with nothing: optimizer= "
                             "does not apply")
        collection = assemble_quantized(plan, dtype, device, backend or "fbgemm")
        collection.method.load_state_dict(state["method"])
        try:
            collection.store.load_quantized_rows([state["tables"][t.name] for t in collection.plan.physical_tables])
        except (KeyError, ValueError) as e:
            raise ValueError(f"{where}: its {dtype} tables do not fit its plan: {e}") from None
        return collection
    backend = backend or "torch"
    try:
        collection = assemble(plan, backend, optimizer or saved, None, device)
    except ValueError as e:  # e.g. a plan with dims the backend cannot hold (fbgemm: multiples of 4)
        raise ValueError(f"{where}: cannot be built on backend {backend!r}: {e}") from None
    restore = optimizer is None or optimizer.name == saved.name
    load_collection_state(collection, state if restore else {**state, "optimizer_state": {}}, where)
    return collection


@torch.no_grad()
def load_collection_state(collection: Collection, state: dict[str, Any], where: str) -> None:
    """Copy a `collection_state` into a collection built for the same plan (on any store).

    Args:
        collection: the destination; its plan must equal the saved one but for lookups (`Method.relayout`).
        state: from `collection_state` or `read_collection_file`.
        where: the file or run it came from, for error messages.
    """
    if state.get("dtype", FP32) != FP32:
        raise ValueError(f"{where}: holds {state['dtype']}-quantized tables, which load as their own inference-only "
                         "collection (et.load_collection), not into an fp32 one")
    mine, theirs = plan_to_dict(collection.plan), json.loads(state["plan"])
    for key in mine:
        if key != "lookups" and as_json(mine[key]) != theirs.get(key):
            raise ValueError(f"{where}: its plan differs from this collection's in {key!r}: saved "
                             f"{_short(theirs.get(key))}, here {_short(mine[key])}")
    names = [t.name for t in collection.plan.physical_tables]
    tables: dict[str, Tensor] = state["tables"]
    if sorted(tables) != sorted(names):
        raise ValueError(f"{where}: holds tables {sorted(tables)}, the plan has {sorted(names)}")
    try:
        collection.store.load_weights([tables[name] for name in names])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    try:
        collection.method.load_state_dict(state["method"])
    except RuntimeError as e:
        raise ValueError(f"{where}: the method state does not fit method {collection.plan.method!r}: {e}") from None
    saved: dict[str, Tensor] = state["optimizer_state"]
    if saved and collection.store.optimizer.name != "sgd":  # SGD keeps no state
        missing = [n for n in names if n not in saved]
        if missing:
            raise ValueError(f"{where}: no optimizer state for tables {missing}")
        try:
            collection.store.load_optimizer_state([saved[n] for n in names])
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


def _short(x: Any) -> str:
    text = json.dumps(x)
    return text if len(text) <= 200 else text[:200] + "..."
