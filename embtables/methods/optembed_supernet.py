"""`optembed_supernet`: the first training stage of OptEmbed (Lyu et al., CIKM 2022, arXiv:2208.04482).

Full tables; each looked-up row passes the learned row mask of `_optembed_mask` and, in training, a uniformly
drawn prefix of its width:

    e'(x) = m(x) W_t[x] (+ (1 - m(x)) o_t with pruned="oov"),   m(x) = step(||W_t[x]||_1 - t_t)   (l2, per-value: options)
    e''(x) = e'(x) * [j < w] over columns j,   w = q u, u ~ U{1..D_t/q} per (sample, field) in training;
             w = the candidate's d_t when one is set (`set_dims`, the search), else D_t
    loss' = loss + alpha sum exp(-t)            (`regularization`; t trains with its own SGD, `own_optimizer`)

The mask uses the norm of the whole row, before the width prefix (the reference's "all" mode). With "oov" the
pruned rows read m W + (1 - m) o, equal to the reference's where(m > 0, W, o) in the forward but letting the
straight-through gradient reach t (the reference's where() gives t only the penalty's gradient).

`carry_over` turns the trained supernet into the `optembed` plan: per table the kept ids (norm above threshold on the
trained weights), the searched dims, and the kept rows' first d_t columns of the weights to start from (the trained
ones, or those the stage started from: the reference's rewind). Not listed among the methods: it is a stage of
`optembed`, trained by `embtables.app.stages`.

    bytes = 4 sum_t N_t D_t (tables) + 4 [T or sum_t N_t] (thresholds) + 4 sum_t D_t [oov]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn

from embtables.bags import Bags
from embtables.config import FP32_BYTES, Lookup, TableConfig, uniform_table
from embtables.method import Carried, Method, Remapped, check_ids_in_range
from embtables.methods._optembed_mask import LongTailedStep, RowMask
from embtables.methods.optembed import OptEmbed, OptEmbedOptions
from embtables.options import check_options, option
from embtables.plan import Plan, Target
from embtables.registry import register_method


@dataclass(frozen=True)
class SupernetOptions:
    """Options of `optembed_supernet` (reference defaults).

    Args:
        norm: `"l1"` (the paper) or `"l2"`, the row norm the thresholds compare with.
        per_value: one threshold per row instead of one per table.
        pruned: what pruned rows read: `"zero"` or `"oov"` (one trained row per table).
        alpha: weight of the penalty alpha sum exp(-t) that pushes the thresholds up.
        threshold_lr: SGD learning rate of the thresholds.
        dim_multiple: the width prefixes (and so the searched dims) are multiples of this; None: the store's.
    """

    norm: Literal["l1", "l2"] = "l1"
    per_value: bool = False
    pruned: Literal["zero", "oov"] = "zero"
    alpha: float = option(3e-4, minimum=0)
    threshold_lr: float = option(3e-4, minimum=0)
    dim_multiple: int | None = option(None, minimum=1)

    def __post_init__(self) -> None:
        check_options(self, "optembed_supernet")


@dataclass(frozen=True)
class SupernetParams:
    rows: int
    dim: int
    bytes: int


def multiple_of(options: SupernetOptions, target: Target) -> int:
    return options.dim_multiple or target.dim_multiple


@register_method("optembed_supernet", listed=False)
class OptEmbedSupernet(Method):
    """Full tables behind OptEmbed's row mask and random width prefixes."""

    Options = SupernetOptions
    Params = SupernetParams
    compresses = False

    def __init__(self, plan: Plan) -> None:
        super().__init__(plan)
        o: SupernetOptions = plan.options
        self.options = o
        self.q = o.dim_multiple or 1
        n = [t.num_embeddings for t in self.tables]
        self._base = [sum(n[:t]) for t in range(len(n))]  # a table's first row among all rows (per-value thresholds)
        self.mask = RowMask(len(self.tables), o.norm, o.per_value, sum(n) if o.per_value else None)
        self.oov = nn.Parameter(torch.zeros(sum(t.embedding_dim for t in self.tables))) if o.pruned == "oov" else None
        dims = [t.embedding_dim for t in self.tables]
        self._oov_base = [sum(dims[:t]) for t in range(len(dims))]  # a table's OOV row in the flat `oov`
        self._full = [self.tables[t].embedding_dim for t in self.feature_table]
        self._n = [self.tables[t].num_embeddings for t in self.feature_table]
        self.id_upper = self._n
        self.dims: tuple[int, ...] | None = None
        self._optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def solve(cls, tables: Sequence[TableConfig], budget: float | None, options: SupernetOptions, target: Target) -> Plan:
        q = multiple_of(options, target)
        bad = [t.name for t in tables if t.embedding_dim % q]
        if bad:
            raise ValueError(f"optembed_supernet: tables {bad} have dims that are not a multiple of {q}")
        physical = tuple(uniform_table(t.name, t.num_embeddings, t.embedding_dim) for t in tables)
        lookups = tuple(Lookup(f, i, True) for i, t in enumerate(tables) for f in t.feature_names)
        params = tuple(SupernetParams(t.num_embeddings, t.embedding_dim, t.full_bytes) for t in tables)
        thresholds = sum(t.num_embeddings for t in tables) if options.per_value else len(tables)
        extra = FP32_BYTES * (thresholds + sum(t.embedding_dim for t in tables) * (options.pruned == "oov"))
        opts = SupernetOptions(options.norm, options.per_value, options.pruned, options.alpha, options.threshold_lr, q)
        return Plan("optembed_supernet", opts, budget, tuple(tables), physical, lookups, params, extra)

    # ---- stage hooks ------------------------------------------------------------------------------------
    def set_dims(self, dims: Sequence[int] | None) -> None:
        """Evaluate with d_t columns of each table (a search candidate); None: the full width."""
        if dims is not None:
            dims = tuple(int(d) for d in dims)
            if len(dims) != len(self.tables) or any(not 1 <= d <= t.embedding_dim for d, t in zip(dims, self.tables)):
                raise ValueError(f"optembed_supernet: dims must be one int in 1..D_t per table, got {list(dims)}")
        self.dims = dims

    def regularization(self) -> Tensor:
        return self.mask.penalty(self.options.alpha)

    def own_optimizer(self) -> torch.optim.Optimizer:
        if self._optimizer is None:
            self._optimizer = torch.optim.SGD([self.mask.thresholds], lr=self.options.threshold_lr)
        return self._optimizer

    @torch.no_grad()
    def kept(self, weights: Sequence[Tensor]) -> list[Tensor]:
        """Per table, the (K_t,) sorted ids whose row clears the threshold, from the tables `weights`."""
        out = []
        for t, w in enumerate(weights):
            rows = torch.arange(w.shape[0], device=w.device) + self._base[t]
            out.append(self.mask.kept(w, t, rows if self.options.per_value else None).nonzero().squeeze(1))
        return out

    @torch.no_grad()
    def carry_over(self, weights: Sequence[Tensor], target: Target, dims: Sequence[int] | None = None,
                   budget: float | None = None, start: Sequence[Tensor] | None = None,
                   start_oov: Tensor | None = None, **unknown: Any) -> Carried:
        """The `optembed` plan of the kept rows at `dims` (default: the full widths), and its weights.

        Args:
            weights: the trained tables, which decide the kept rows.
            dims: d_t per table (the search's result).
            budget: checked against the plan (`InfeasibleBudget` when over).
            start, start_oov: the tables (and OOV rows) to take the kept rows' weights from: the ones this stage
                started from (rewind); None: the trained ones.
        """
        if unknown:
            raise TypeError(f"optembed_supernet.carry_over got unknown choices {sorted(unknown)}")
        kept = self.kept(weights)
        dims = tuple(dims) if dims is not None else tuple(t.embedding_dim for t in self.tables)
        options = OptEmbedOptions(dims, tuple(int(k.numel()) for k in kept), self.options.pruned)
        plan = OptEmbed.solve(self.tables, budget, options, target)
        source = list(weights) if start is None else list(start)
        oov = self.oov if start_oov is None else start_oov
        out, ids = [], []
        for t, (w, k, d, p) in enumerate(zip(source, kept, dims, plan.params)):
            rows = w[k.to(w.device), :d]  # (K_t, d_t)
            if self.oov is not None:
                lo = self._oov_base[t]
                rows = torch.cat([rows, oov[lo : lo + d].detach().to(w)[None]])
            elif k.numel() == 0:
                rows = w.new_zeros(1, d)  # a table that keeps nothing: one row no id reads
            out.append(rows.clone())
            if p.mapped:
                ids.append(k.to(torch.int32).cpu())
        state = {"kept_ids": torch.cat(ids) if ids else torch.zeros(0, dtype=torch.int32)}
        return Carried(plan, out, state)

    # ---- forward ----------------------------------------------------------------------------------------
    def remap(self, bags: Bags) -> Remapped:
        check_ids_in_range(bags, self._n, self, "optembed_supernet")
        plain = Bags(bags.values, bags.offsets, None, bags.ids_per_feature, bags.batch_size, bags.longest)
        return Remapped(bags, plain.singletons(max(max(bags.ids_per_feature, default=0), 1)))  # one row per id

    def _masked(self, rows: Tensor, t: int, ids: Tensor) -> Tensor:
        """(N_f, D) rows of table t -> the row mask applied (OOV rows where pruned)."""
        th = self.mask.thresholds
        thr = th[ids + self._base[t]] if self.options.per_value else th[t].expand(ids.shape[0])
        m = LongTailedStep.apply(self.mask.row_norm(rows) - thr)[:, None]  # (N_f, 1)
        if self.oov is None:
            return rows * m
        lo = self._oov_base[t]
        return rows * m + (1 - m) * self.oov[lo : lo + rows.shape[1]]

    def _widths(self, f: int, count: int, device: torch.device) -> Tensor:
        """(count,) the width each of `count` (sample or id) vectors of feature f reads."""
        t, full = self.feature_table[f], self._full[f]
        if self.training:  # a uniform multiple of q in q..D, per (sample, field)
            units = torch.randint(1, full // self.q + 1, (count,), device=device)
            return units * self.q
        return torch.full((count,), self.dims[t] if self.dims is not None else full, device=device)

    def combine(self, pooled: Tensor | None, rows: Tensor | None, batch: Remapped) -> Tensor:
        assert pooled is not None
        bags = batch.logical
        B, starts = bags.batch_size, bags.starts()
        bag = bags.bag_index() if self.pooled else None
        w = bags.per_sample_weights
        parts = []
        for f, x in enumerate(pooled.split(self._full, 1)):
            n = bags.ids_per_feature[f]
            ids = bags.values[starts[f] : starts[f + 1]]
            e = self._masked(x[:n], self.feature_table[f], ids)  # (N_f, D)
            cols = torch.arange(e.shape[1], device=e.device)
            if self.pooled:
                index = bag[starts[f] : starts[f + 1]] - f * B  # type: ignore[index]
                width = self._widths(f, B, e.device)[index]  # one draw per bag
                e = e * (cols < width[:, None])
                if w is not None:
                    e = e * w[starts[f] : starts[f + 1], None]
                parts.append(e.new_zeros(B, e.shape[1]).index_add_(0, index, e))
            else:
                parts.append(e * (cols < self._widths(f, n, e.device)[:, None]))
        return torch.cat(parts, 1 if self.pooled else 0)
