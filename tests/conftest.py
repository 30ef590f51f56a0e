"""Shared test helpers: random ragged KJTs, copying weights between collections, hypothesis settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import pytest
import torch

# Triton kernels run in Triton's interpreter where there is no GPU (read when the kernels are defined, so first)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
from hypothesis import HealthCheck, settings
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.config import KEY_BYTES

settings.register_profile(
    "default", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test with a message when the folder is absent (a user's clone)."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent: the real data samples exist on development and CI machines only")
    return path


def random_kjt(
    tables: Sequence[et.TableConfig],
    batch_size: int,
    max_len: int = 4,
    seed: int = 0,
    weighted: bool = False,
    id_range: int | None = None,
) -> KeyedJaggedTensor:
    """Ragged bags (empty ones included) of in-range ids for every feature of `tables`, feature-major."""
    g = torch.Generator().manual_seed(seed)
    keys, values, lengths = [], [], []
    for t in tables:
        for f in t.feature_names:
            lens = torch.randint(0, max_len + 1, (batch_size,), generator=g)
            n = int(lens.sum())
            hi = min(id_range or t.num_embeddings, t.num_embeddings)
            keys.append(f)
            lengths.append(lens)
            values.append(torch.randint(0, hi, (n,), generator=g))
    v = torch.cat(values)
    w = torch.rand(v.numel(), generator=g) if weighted else None
    return KeyedJaggedTensor(keys=keys, values=v, lengths=torch.cat(lengths), weights=w)


def method_options(method: str, tables: Sequence[et.TableConfig], budget: float | None, raw_ids: bool = False) -> dict:
    """The options a registry-generated test adds to build `method` for `tables` at `budget`: {} for a method that
    solves its plan from the budget; for a learned one (`optembed`), the stand-in plan that fills the budget
    (`stand_in_options`: half widths in multiples of 4, so it builds on every store, and one kept fraction), less the
    hash keys `raw_ids` adds (one per table). Over the budget, building raises InfeasibleBudget as for any method.
    """
    if not et.get_method(method).learned:
        return {}
    if budget is None:
        raise ValueError(f"{method} learns its plan: method_options needs the budget the plan must fit")
    from embtables.methods.optembed import stand_in_options

    keys = KEY_BYTES * len(tables) if raw_ids else 0
    return stand_in_options(tables, budget * et.full_bytes(tables) - keys)


def copy_state(src: et.Collection, dst: et.Collection) -> None:
    """Give `dst` the physical weights and method state of `src` (same plan, any backends)."""
    with torch.no_grad():
        for a, b in zip(src.store.weights(), dst.store.weights()):
            b.copy_(a)
    dst.method.load_state_dict(src.method.state_dict())


@pytest.fixture
def small_tables() -> list[et.TableConfig]:
    return [
        et.TableConfig("a", 1000, 8),
        et.TableConfig("b", 37, 8, feature_names=("b1", "b2")),
        et.TableConfig("c", 5000, 8, pooling="mean"),
        et.TableConfig("d", 3, 8),
    ]


@pytest.fixture
def in_process(monkeypatch):
    """A sweep's cells run in this process (fast) instead of child processes; yields the cell ids run."""
    import embtables.app.sweep as sw

    calls = []

    def spawn(cell, folder):
        calls.append(sw.cell_id(cell))
        return sw.run_cell(cell, folder)

    monkeypatch.setattr(sw, "_spawn", spawn)
    return calls
