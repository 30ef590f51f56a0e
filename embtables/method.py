"""`Method`: the base class of every compression method.

A method is three small things (see ARCHITECTURE.md):

    solve    (tables, budget, options) -> Plan     pure: physical tables, lookups, parameters, exact bytes
    remap    logical Bags -> Remapped               pure tensor ops: hash, digits, maps, ...; the physical Bags
                                                    and whatever combine needs from the remap of this batch
    combine  store outputs -> one vector per logical bag (pooled) or per id (unpooled)

The store between remap and combine is shared by all methods; a store that can run a method's combine itself
gets it as data (`combine_program`, a `ColumnProgram`). A method's own state (hash keys, maps, projections) lives
in its buffers and parameters and is counted by `state_bytes()`. Methods import nothing from `embtables.stores`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import Tensor, nn

from embtables.bags import Bags
from embtables.config import TableConfig
from embtables.plan import Plan, Target
from embtables.program import ColumnProgram


@dataclass
class Remapped:
    """One batch after a method's remap, given back to the same method's combine.

    Args:
        logical: the logical bags the remap read.
        physical: the physical lookups' bags (pooled lookups first, as the plan lists them): the store's input.
        context: what combine needs from this batch's remap and would otherwise recompute (e.g. multihash's
            per-id components, mixed_dim's sorting permutation); None for most methods.
    """

    logical: Bags
    physical: Bags
    context: Any = None


class Method(nn.Module):
    """Base class; subclasses set `Options` (a frozen dataclass) and implement `solve` and `remap`.

    The default `combine` serves methods with exactly one lookup per logical feature, in feature order.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = type(None)
    Params: ClassVar[type] = type(None)  # the solved parameters of one logical table, as the plan lists them
    # False only for `full`: every other method must reach budgets below 1 from `budget=` alone
    compresses: ClassVar[bool] = True
    # True where the plan is learned in training stages (OptEmbed): `budget=` alone is refused, the stages give the
    # plan (see `carry_over`)
    learned: ClassVar[bool] = False
    # per logical feature, the exclusive upper bound its ids must respect (None: any id), as the remap checks
    # them with `check_ids_in_range`; None when the method takes any id. The collection answers the check while
    # it reads the batch, in the batch's one copy to the host (`embtables.inputs`).
    id_upper: list[int | None] | None = None

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.plan = plan
        self.tables: tuple[TableConfig, ...] = plan.tables
        self.feature_names: list[str] = [f for t in plan.tables for f in t.feature_names]
        self.feature_table: list[int] = [i for i, t in enumerate(plan.tables) for _ in t.feature_names]
        self.pooled = plan.tables[0].pooling != "none"

    # ---- planning -------------------------------------------------------------------------------------
    @classmethod
    def make_options(cls, options: Mapping[str, Any]) -> Any:
        """Validate option names: an unknown name raises TypeError listing the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls.Options)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise TypeError(f"method {cls.name!r} got unknown option(s) {unknown}; valid options: {valid}")
        return cls.Options(**options)

    @classmethod
    def solve(cls, tables: Sequence[TableConfig], budget: float | None, options: Any, target: Target) -> Plan:
        raise NotImplementedError

    @classmethod
    def reads_by_rank(cls, plan: Plan) -> list[bool]:
        """Per logical table, whether the method indexes its rows by id, so that ids must be ranks in [0, N) (a
        vocabulary's, `Plan.index_bytes`, or raw ids hashed there, `raw_ids=True`). Default: every table."""
        return [True] * len(plan.tables)

    @classmethod
    def reads_frequency(cls, plan: Plan) -> list[bool]:
        """Per logical table, whether the layout relies on ids being frequency ranks (id 0 the most frequent:
        frequency blocks, hot rows), which raw ids hashed into [0, N) are not, so `raw_ids=True` is refused there.
        Default: no table."""
        return [False] * len(plan.tables)

    @classmethod
    def relayout(cls, plan: Plan, target: Target) -> Plan:
        """The same plan (physical tables, parameters, bytes) laid out for another store: its lookups may differ
        where a store reads shared tables faster another way (unified). The default keeps the plan."""
        return plan

    @classmethod
    def from_plan(cls, plan: Plan, counts: Mapping[str, Any] | None) -> "Method":
        """Allocate the method's state for a solved plan. Counts are given to methods whose state derives from
        them; None when that state is about to be loaded from a checkpoint."""
        return cls(plan)

    # ---- forward ----------------------------------------------------------------------------------------
    def remap(self, bags: Bags) -> Remapped:
        raise NotImplementedError

    def combine(self, pooled: Tensor | None, rows: Tensor | None, batch: Remapped) -> Tensor:
        """Store outputs -> (B, sum of output dims) sum-pooled bags, or (N, D) rows when unpooled."""
        return pooled if self.pooled else rows  # type: ignore[return-value]

    def combine_program(self, batch: Remapped) -> tuple[ColumnProgram, Tensor | None] | None:
        """The `ColumnProgram` and its flat `matrices` (or None) when `combine` is exactly that program applied to
        the store's pooled output for this batch, so that a store that `combines` may run both in one pass;
        None otherwise (the default)."""
        return None

    def output_dims(self) -> list[int]:
        """Width of the output vector of each logical feature."""
        return [self.tables[t].embedding_dim for t in self.feature_table]

    # ---- training hooks (default: none) -------------------------------------------------------------------
    def regularization(self) -> Tensor | None:
        """A term the trainer adds to the loss (OptEmbed's threshold penalty); None for most methods."""
        return None

    def own_optimizer(self) -> torch.optim.Optimizer | None:
        """An optimizer for the method's parameters that must not train with the model's dense optimizer (OptEmbed's
        thresholds, in their own SGD group); the trainer steps it and leaves these parameters out of its own."""
        return None

    def carry_over(self, weights: Sequence[Tensor], target: Target, **choices: Any) -> "Carried":
        """Turn this trained stage into the next one: a solved plan and what to load into it. Only methods that are a
        training stage of another (OptEmbed's supernet) implement it.

        Args:
            weights: this collection's physical tables (`Store.weights()`), trained.
            target: the next collection's store constraints.
            **choices: what the stage between chose (OptEmbed: the searched dims, the weights to rewind to).
        """
        raise NotImplementedError(f"method {self.name!r} is not a training stage of another method")

    def state_bytes(self) -> int:
        """Bytes of the method's serving state: its parameters and persistent buffers (keys, maps, projections).

        Non-persistent buffers are caches derived from the table shapes and are not counted.
        """
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())


@dataclass
class Carried:
    """What `Method.carry_over` hands to the next stage.

    Args:
        plan: the next stage's solved plan.
        weights: one tensor per physical table of `plan`, its initial weights.
        state: the next method's buffers by name (e.g. OptEmbed's kept-id map), loaded after it is built.
    """

    plan: Plan
    weights: list[Tensor]
    state: dict[str, Tensor]


def check_ids_in_range(bags: Bags, upper: Sequence[int | None] | None, method: Method, where: str) -> None:
    """Raise ValueError naming table, feature and value when an id of feature f is outside [0, upper[f]).

    Args:
        bags: logical bags.
        upper: exclusive upper bound per feature; None where any id is valid (hashed features); None: no check
            (`Method.id_upper`). Answered from `Bags.checked` when the batch's one read did it.
    """
    if upper is None or not bags.outside(upper):  # the fast path: one min/max per feature
        return
    for f, (ids, n) in enumerate(zip(bags.values.split(bags.ids_per_feature), upper)):
        bad = ((ids < 0) | (ids >= n)).nonzero() if n is not None and ids.numel() else None
        if bad is not None and bad.numel():
            table = method.tables[method.feature_table[f]]
            raise ValueError(
                f"{where}: id {int(ids[bad[0, 0]])} of feature {method.feature_names[f]!r} is outside "
                f"[0, {table.num_embeddings}) of table {table.name!r} (method {method.name!r})"
            )


def per_feature(method: Method, values: Sequence[int], dtype: torch.dtype = torch.int64) -> Tensor:
    """A (F,) tensor from one value per logical *table*, expanded to its features."""
    return torch.tensor([values[t] for t in method.feature_table], dtype=dtype)
