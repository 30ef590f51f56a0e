"""DIN: Deep Interest Network (Zhou et al., KDD 2018, arXiv:1706.06978).

    q        = [e(target item), e(target category), ...]            (B, D), side features concatenated
    k_l      = [e(history item l), e(history category l), ...]      (B, L, D), padding masked
    a_l      = unit([q, k_l, q - k_l, q * k_l])                     local activation unit, Dice or PReLU
    u        = sum_l a_l k_l                                        no softmax (paper); softmax optional
    p        = mlp([others, u, q])                                  (B,) logit

The history and the target are looked up in the same (possibly compressed) item table: an unpooled
collection with features `hist` and `target`; side information of each item (its category, as the paper's
goods_id + cate_id) comes as further feature pairs (`hist_cat`, `target_cat`) whose vectors are concatenated
to the item's before attention. `pooling="sum"` replaces the attention by a plain sum over the
history: the baseline that shows what attention buys. Mini-batch aware regularisation (the paper's section
4.3) adds lambda * sum over the distinct items j of the batch of ||e(j)||^2 / n_j, n_j the item's training
frequency, instead of an L2 penalty over the whole table.

Serving: everything after the lookups is `DINHead`, which `torch.jit.script` compiles; the lookups stay in the
collection (a KeyedJaggedTensor in, per-id rows out), as in DLRM.

On CUDA, beyond the collections' own reads of the batch, the forward reads one value on the host (the longest
history, the padded width) and mini-batch aware regularisation the batch's distinct items (`unique`): each a
synchronisation per batch, as the shapes depend on them.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor, nn
from torchrec import JaggedTensor, KeyedJaggedTensor

from embtables.inputs import bags_from_kjt
from embtables.models.layers import activation_mlp, output_dims


def padded(jt: JaggedTensor, max_len: int | None = None) -> tuple[Tensor, Tensor]:
    """JaggedTensor of rows (N, D) -> padded (B, L, D) and mask (B, L) (True on real positions)."""
    lengths = jt.lengths()
    B = lengths.numel()
    L = int(lengths.max()) if max_len is None and B else (max_len or 0)  # the padded width: a host read
    values = jt.values()
    starts = lengths.cumsum(0) - lengths  # not jt.offsets(): an FBGEMM operator, absent from its CPU build on CUDA
    bag = torch.arange(B, device=values.device).repeat_interleave(lengths, output_size=values.shape[0])
    pos = torch.arange(values.shape[0], device=values.device) - starts[bag]
    out = values.new_zeros(B, L, values.shape[1])
    out[bag, pos] = values
    mask = torch.arange(L, device=values.device).unsqueeze(0) < lengths.unsqueeze(1)
    return out, mask


class DIN(nn.Module):
    """Deep Interest Network over any item collection.

    Args:
        items: unpooled collection (`pooling="none"`) holding the history and target features, e.g.
            `et.build_collection([TableConfig("item", N, D, feature_names=("hist", "target"), pooling="none")])`
            or a `torchrec.EmbeddingCollection`.
        others: optional pooled collection for the remaining sparse features (user, context).
        history: the history feature(s): the item first, then side features of the same items.
        target: the target feature(s), in the same order as `history`.
        dense_in: number of dense features appended to the MLP input (0 for none).
        pooling: `"attention"` (DIN) or `"sum"` (the same model with the history sum-pooled).
        attention_hidden: hidden sizes of the local activation unit.
        mlp: hidden sizes of the head (a final layer to 1 logit is added).
        activation: `"dice"` or `"prelu"`.
        softmax: normalise attention weights over the history (the authors' code does; the paper does not).
        mba_lambda: weight of mini-batch aware regularisation (0 disables it); needs `item_counts`.
        item_counts: (N,) training frequency per item id, for mini-batch aware regularisation.

    Example:
        >>> import torch, embtables as et
        >>> from embtables.models import DIN
        >>> from torchrec import KeyedJaggedTensor
        >>> items = et.build_collection([et.TableConfig("item", 100, 8, ("hist", "target"), "none")])
        >>> model = DIN(items)
        >>> kjt = KeyedJaggedTensor(["hist", "target"], torch.tensor([1, 2, 3, 7, 9]), lengths=torch.tensor([2, 1, 1, 1]))
        >>> model(torch.zeros(2, 0), kjt).shape
        torch.Size([2])
    """

    def __init__(
        self,
        items: nn.Module,
        others: nn.Module | None = None,
        history: str | Sequence[str] = "hist",
        target: str | Sequence[str] = "target",
        dense_in: int = 0,
        pooling: Literal["attention", "sum"] = "attention",
        attention_hidden: Sequence[int] = (80, 40),
        mlp: Sequence[int] = (200, 80),
        activation: Literal["dice", "prelu"] = "dice",
        softmax: bool = False,
        mba_lambda: float = 0.0,
        item_counts: Tensor | None = None,
    ) -> None:
        super().__init__()
        dims = output_dims(items)
        history = [history] if isinstance(history, str) else list(history)
        target = [target] if isinstance(target, str) else list(target)
        if len(history) != len(target) or not history:
            raise ValueError(f"DIN: history {history} and target {target} must pair up one to one")
        for h, t in zip(history, target):
            for f in (h, t):
                if f not in dims:
                    raise ValueError(f"DIN: the item collection has no feature {f!r} (it has {list(dims)})")
            if dims[h] != dims[t]:
                raise ValueError(f"DIN: widths of {h!r} and {t!r} differ ({dims[h]} vs {dims[t]})")
        if mba_lambda < 0 or (mba_lambda > 0 and item_counts is None):
            raise ValueError("DIN: mba_lambda must be >= 0, and > 0 needs item_counts")
        D = sum(dims[h] for h in history)
        self.items, self.others = items, others
        self.history, self.target, self.pooling = history, target, pooling
        other_width = sum(output_dims(others).values()) if others is not None else 0
        self.head = DINHead(D, dense_in + other_width, pooling, attention_hidden, mlp, activation, softmax)
        self.mba_lambda = mba_lambda
        if item_counts is not None:
            self.register_buffer("item_counts", torch.as_tensor(item_counts, dtype=torch.float32), persistent=False)

    def forward(self, dense: Tensor, sparse: KeyedJaggedTensor) -> Tensor:
        """dense (B, dense_in), sparse KJT with the history, target and other features -> (B,) logits."""
        rows = self.items(sparse)
        q = torch.cat([rows[t].values() for t in self.target], dim=1)  # (B, D): one target per sample
        # the history features describe the same positions: concatenate their rows, then pad once
        history = JaggedTensor(values=torch.cat([rows[h].values() for h in self.history], dim=1),
                               lengths=rows[self.history[0]].lengths())
        k, mask = padded(history)  # (B, L, D), (B, L)
        if q.shape[0] != mask.shape[0]:
            raise ValueError(f"DIN: features {self.target} must hold exactly one id per sample")
        side = [dense] if dense.shape[1] else []
        if self.others is not None:
            side.append(self.others(sparse).values())
        return self.head(q, k, mask, torch.cat(side, dim=1) if side else q.new_zeros(q.shape[0], 0))

    def regularization(self, sparse: KeyedJaggedTensor) -> Tensor:
        """Mini-batch aware L2: lambda * sum over distinct batch items j of ||e(j)||^2 / n_j (0 when disabled)."""
        if self.mba_lambda == 0:
            return torch.zeros((), device=sparse.values().device)
        hist, target = self.history[0], self.target[0]  # the item features
        ids = bags_from_kjt(sparse, [hist, target], "DIN").values.unique()
        features = [*self.history, *self.target]
        lengths = torch.zeros(len(features), dtype=torch.long, device=ids.device)
        lengths[0] = ids.numel()
        kjt = KeyedJaggedTensor(features, torch.cat([ids] + [ids[:0]] * (len(features) - 1)), lengths=lengths)
        e = self.items(kjt)[hist].values()  # (U, D_item)
        n = self.item_counts[ids].clamp(min=1.0)
        return self.mba_lambda * (e.pow(2).sum(1) / n).sum()


class DINHead(nn.Module):
    """DIN after the lookups: attention (or sum) over the padded history, then the MLP. It holds no embedding
    and no jagged input, so it scripts for serving: `torch.jit.script(model.head)` behind any collection.

    Args:
        dim: D, the width of a history position and of the target (item and side features concatenated).
        side_width: S, width of the other inputs of the MLP (dense features, then pooled other features).
        pooling, attention_hidden, mlp, activation, softmax: as `DIN`.

    Forward: q (B, D) target, k (B, L, D) padded history, mask (B, L) bool, side (B, S) -> (B,) logits.

    Example:
        >>> import torch
        >>> head = torch.jit.script(DINHead(8, 3, "attention", (8,), (16,), "prelu", False))
        >>> head(torch.randn(2, 8), torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool), torch.randn(2, 3)).shape
        torch.Size([2])
    """

    def __init__(self, dim: int, side_width: int, pooling: str, attention_hidden: Sequence[int], mlp: Sequence[int],
                 activation: str, softmax: bool) -> None:
        super().__init__()
        if pooling not in ("attention", "sum"):
            raise ValueError(f"DIN: pooling must be 'attention' or 'sum', got {pooling!r}")
        self.use_attention, self.softmax = pooling == "attention", softmax
        # an Identity placeholder keeps the attribute's type fixed for TorchScript when pooling is "sum"
        self.attention = activation_mlp([4 * dim, *attention_hidden, 1], activation) if self.use_attention else nn.Identity()
        self.mlp = activation_mlp([side_width + 2 * dim, *mlp, 1], activation)

    def forward(self, q: Tensor, k: Tensor, mask: Tensor, side: Tensor) -> Tensor:
        if self.use_attention:
            qe = q.unsqueeze(1).expand_as(k)  # (B, L, D)
            a = self.attention(torch.cat([qe, k, qe - k, qe * k], dim=-1)).squeeze(-1)  # (B, L)
            if self.softmax:
                a = torch.softmax(a.masked_fill(~mask, float("-inf")), dim=1).nan_to_num(0.0)
            else:
                a = a * mask
            u = torch.bmm(a.unsqueeze(1), k).squeeze(1)  # (B, D)
        else:
            u = (k * mask.unsqueeze(-1)).sum(1)  # (B, D)
        return self.mlp(torch.cat([side, u, q], dim=1)).squeeze(1)
