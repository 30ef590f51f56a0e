"""multihash's importance weights (Hash Embeddings) as a physical table, and the per-id layout that reads it.

The importance table P of a compressed table is a physical table of the plan, `<table>/importance`: K rows of
width k' = k rounded up to the dim multiple (the padding columns are allocated, initialised and counted, never
read), initialised to ones, read at row h_0(x) of each id x and updated by the store's sparse optimizer like the
embeddings: one step moves only the rows a batch read.

Why every lookup is per id when there is importance: a store runs all lookups of a batch in one call, pooled ones
first, so the per-sample weights of a pooled lookup cannot be rows the same call returns; and its per-id lookups
return one (N, dim) block, so they must share one width, which the pool (D or D / k) and P (k') do not. Here every
lookup is pooled over bags of one id (feature f's ids fill bags 0..N_f - 1 of each of its lookups, the bags up to
the longest feature stay empty), which is a per-id lookup that may have any width; the store returns them side by
side, (max N_f, sum of widths), and `combine` weighs, joins and (for pooled tables) pools them per feature. A
feature reads k lookups of its table's pool, one per component (1 for a whole table under sum or mean), then one of
P when its table is compressed. A hot id under sum or mean reads its hot row in component 0 and nothing in the
others (empty bags, zero rows); every id of a compressed table reads its row of P, a hot id's with zero gradient
unless `append_weights` appends it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from embtables.bags import Bags
from embtables.config import Lookup, PhysicalTable, TableConfig
from embtables.method import Remapped


def importance_tables(tables: Sequence[TableConfig], params: Sequence[Any], width: int) -> list[PhysicalTable]:
    """The importance table P of each compressed table: K rows of `width` (k'), initialised to ones."""
    return [PhysicalTable(f"{t.name}/importance", p.importance_rows, width, 1.0, 1.0)
            for t, p in zip(tables, params) if p.compressed]


def per_id_lookups(tables: Sequence[TableConfig], params: Sequence[Any], k: int, concat: bool) -> list[Lookup]:
    """Per feature: its components' lookups of its table (physical table t), then its lookup of P (the physical
    tables after the logical ones' pools, in table order); all pooled over bags of one id."""
    out, imp = [], len(tables)
    for i, (t, p) in enumerate(zip(tables, params)):
        parts = k if concat or p.compressed else 1
        for f in t.feature_names:
            out += [Lookup(f"{f}/h{j}" if parts > 1 else f, i, True) for j in range(parts)]
            out += [Lookup(f"{f}/importance", imp, True)] if p.compressed else []
        imp += p.compressed
    return out


class PerIdLayout:
    """The per-id layout of a collection with importance: remap and combine, from host constants per feature.

    Args:
        k: components per id.
        mode: `"sum"`, `"mean"` or `"concat"`.
        pooled: whether the logical tables pool.
        features: per logical feature (parts, dim, compressed, append): its component lookups and their width,
            whether a lookup of P follows, whether p(x) is appended to its output.
        width: k', the width of the importance tables.
    """

    def __init__(self, k: int, mode: str, pooled: bool, features: Sequence[tuple[int, int, bool, bool]],
                 width: int) -> None:
        self.k, self.mean, self.concat, self.pooled = k, mode == "mean", mode == "concat", pooled
        self.features, self.width = list(features), width

    def remap(self, bags: Bags, comps: Sequence[Any]) -> Remapped:
        """Each feature's components (`rows`, `keep`, `imp` of multihash's `_Components`) -> one lookup per
        component and one of P, every id in a bag of its own."""
        n = max(1, *bags.ids_per_feature)  # bags per lookup: the most ids of a feature
        values, lengths, sizes = [], [], []
        for c, N in zip(comps, bags.ids_per_feature):
            v = c.rows.t() if c.imp is None else torch.cat([c.rows.t(), c.imp[None]])  # (lookups, N_f)
            read = torch.ones_like(v, dtype=torch.bool) if c.keep is None else c.keep.t()
            if c.imp is not None and c.keep is not None:
                read = torch.cat([read, torch.ones_like(c.imp[None], dtype=torch.bool)])
            values.append((v, read))
            lengths.append(F.pad(read.long(), (0, n - N)).reshape(-1))  # bags N_f..n - 1 stay empty
            sizes += [N] * v.shape[0]
        flat = torch.cat([v.reshape(-1) for v, _ in values])
        length = torch.cat(lengths)
        offsets = torch.cat([length.new_zeros(1), length.cumsum(0)])
        if any(c.keep is not None for c in comps):
            # hot ids under sum or mean read one row: the rows each lookup reads are data, one host read
            sizes = offsets[::n].diff().tolist()
            at = torch.nonzero_static(torch.cat([r.reshape(-1) for _, r in values]), size=sum(sizes)).squeeze(1)
            flat = flat[at]
        return Remapped(bags, Bags(flat, offsets, None, sizes, n, 1), comps)

    def combine(self, pooled: Tensor, batch: Remapped) -> Tensor:
        """(max N_f, sum of lookup widths) rows side by side -> per id e(x) (with p(x) appended), pooled per bag
        with the bags' per-sample weights when the tables pool."""
        k, col, out = self.k, 0, []
        for c, (parts, dim, compressed, append) in zip(batch.context, self.features):
            n = c.rows.shape[0]
            x = pooled[:n, col : col + parts * dim].view(n, parts, dim)  # component j of each id
            col += parts * dim
            p = None
            if compressed:
                p = pooled[:n, col : col + k]  # p(x) = P[h_0(x)], without P's padding columns
                col += self.width
                a = p / k if self.mean else p
                if c.hot is not None:  # hot rows are collision-free: no importance, no 1/k
                    a = torch.where(c.hot[:, None], 1.0, a)
                x = x * a[:, :, None]
            e = x.reshape(n, parts * dim) if self.concat else x.sum(1)
            out.append(torch.cat([e, p], 1) if append else e)
        if not self.pooled:
            return torch.cat(out)
        # each bag the sum of its ids' e(x), weighted by the bags' per-sample weights; empty bags are zeros
        return torch.cat([batch.logical.feature_slice(f, f + 1).sum_rows(e) for f, e in enumerate(out)], 1)

