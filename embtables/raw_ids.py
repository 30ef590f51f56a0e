"""Raw ids for methods that read some tables by rank: `raw_ids=True` hashes those tables' ids into [0, N) first.

`full`, `qr` and `mixed_dim` (and the tables `hash` and `multihash` keep whole) index rows by id, so their ids must
lie in [0, N): the ranks a vocabulary gives raw values, which costs VOCAB_BYTES_PER_ID per row to serve
(`Plan.index_bytes`: ~540 MB for Criteo Kaggle, 25x the whole budget at 0.01). With `raw_ids=True` the collection
instead hashes such a table's ids into its own N rows first, as the DLRM reference's `--max-ind-range` does:

    x -> hash_to_range(x, key_t, N_t)          one stored int64 key per table (KEY_BYTES, in the plan's bytes)

so any int64 id is served without a vocabulary, at the price of collisions between raw values (the table has N
rows for however many distinct values arrive). Tables the method hashes anyway are left alone.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn

from embtables.bags import Bags
from embtables.config import KEY_BYTES
from embtables.hashing import derive_seed, hash_key, hash_to_range
from embtables.plan import VOCAB_BYTES_PER_ID, Plan, full_bytes

_SEED = 0x72617769  # "rawi": raw-id keys differ from every method's own (seeded from options.seed)


def reserve(budget: float, tables: Sequence, keys: int) -> float:
    """The budget a method solves for when `raw_ids` adds `keys` hash keys after it."""
    return budget - KEY_BYTES * keys / full_bytes(tables)


def with_ids(plan: Plan, ranked: Sequence[bool], raw_ids: bool, budget: float | None) -> Plan:
    """`plan` with what serving raw ids costs: the vocabulary of the `ranked` tables, or, with `raw_ids`, their
    hash keys (and no vocabulary)."""
    tables = tuple(t for t, r in enumerate(ranked) if r)
    if raw_ids:
        return dataclasses.replace(plan, budget=budget, raw_tables=tables,
                                   extra_bytes=plan.extra_bytes + KEY_BYTES * len(tables))
    return dataclasses.replace(plan, index_bytes=VOCAB_BYTES_PER_ID * sum(plan.tables[t].num_embeddings
                                                                         for t in tables))


class RawIds(nn.Module):
    """Hashes the ids of the plan's `raw_tables` into [0, N) (see the module docstring); others pass unchanged.

    Args:
        plan: a plan with `raw_tables`.
        method_upper: per feature, the bound the method's remap checks its ids against (`Method.id_upper`).
    """

    def __init__(self, plan: Plan, method_upper: Sequence[int | None] | None) -> None:
        super().__init__()
        feature_table = [i for i, t in enumerate(plan.tables) for _ in t.feature_names]
        raw = set(plan.raw_tables)
        # the hash parameters: one key per table (serving state, counted in memory_bytes); per feature, its table's
        keys = {t: hash_key(derive_seed(_SEED, t)) for t in plan.raw_tables}
        self.register_buffer("keys", torch.tensor(list(keys.values()), dtype=torch.int64))
        self.register_buffer("_key", torch.tensor([keys.get(t, 0) for t in feature_table], dtype=torch.int64),
                             persistent=False)
        self.register_buffer("_rows", torch.tensor([plan.tables[t].num_embeddings for t in feature_table]),
                             persistent=False)
        self.register_buffer("_hashed", torch.tensor([t in raw for t in feature_table]), persistent=False)
        self.method_upper = None if method_upper is None else tuple(method_upper)
        # what the batch's read checks: nothing for the hashed features (any id is valid before hashing)
        self.upper = None if method_upper is None else [None if feature_table[f] in raw else u
                                                          for f, u in enumerate(method_upper)]

    def forward(self, bags: Bags) -> Bags:
        hashed = hash_to_range(bags.values, bags.per_id(self._key), bags.per_id(self._rows))
        out = bags.with_values(torch.where(bags.per_id(self._hashed), hashed, bags.values))
        if bags.checked is not None and self.method_upper is not None:
            # hashed ids are in range by construction: the read's answer holds for the method's own bounds too
            out.checked = (self.method_upper, bags.checked[1])
        return out

    def bytes(self) -> int:
        return self.keys.numel() * self.keys.element_size()
