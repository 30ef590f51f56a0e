"""DLRM: Deep Learning Recommendation Model (Naumov et al., 2019, arXiv:1906.00091).

    x   = bottom_mlp(dense)                                   (B, D)
    e_f = embeddings(sparse)[f]                               (B, D) for each of F features
    z   = [x] + [<v_i, v_j> for i > j over v = (x, e_1..e_F)]  dot interaction, strictly lower triangle
    p   = top_mlp(z)                                          (B,) logit

Defaults follow the reference configuration for Criteo Kaggle: D = 16, bottom 13-512-256-64-16, top 512-256-1.
The model never knows which compression method produced the embeddings: it reads their output widths from
the collection's contract, and a feature whose width differs from D (e.g. a concat combine) gets a bias-free
linear map to D so the dot interaction stays defined.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor, nn
from torchrec import KeyedJaggedTensor

from embtables.models.layers import mlp, output_dims


class DLRMHead(nn.Module):
    """Everything after the lookup: bottom MLP, interaction, top MLP. Pure tensor code: scripts with
    `torch.jit.script` for serving behind any embedding collection.

    Args:
        widths: output width of each sparse feature, in the collection's output order.
        dense_in, bottom, top, interaction, self_interaction: as `DLRM`.
    """

    def __init__(
        self,
        widths: Sequence[int],
        dense_in: int = 13,
        bottom: Sequence[int] = (512, 256, 64, 16),
        top: Sequence[int] = (512, 256),
        interaction: Literal["dot", "cat"] = "dot",
        self_interaction: bool = False,
    ) -> None:
        super().__init__()
        if interaction not in ("dot", "cat"):
            raise ValueError(f"DLRM: interaction must be 'dot' or 'cat', got {interaction!r}")
        if self_interaction and interaction != "dot":
            raise ValueError("DLRM: self_interaction applies to interaction='dot' only")
        if not widths:
            raise ValueError("DLRM: the embedding collection has no features")
        D = bottom[-1]
        self.dim, self.widths, self.dot = D, list(widths), interaction == "dot"
        self.project = self.dot and any(w != D for w in widths)
        self.bottom = mlp([dense_in, *bottom])
        # a bias-free map to D for each feature whose width differs (identity otherwise)
        self.projections = nn.ModuleList(
            [nn.Linear(w, D, bias=False) if self.project and w != D else nn.Identity() for w in widths]
        )
        F = len(widths)
        rows, cols = torch.tril_indices(F + 1, F + 1, offset=0 if self_interaction else -1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        top_in = D + (rows.numel() if self.dot else sum(widths))
        self.top = mlp([top_in, *top, 1], last_activation=False)

    def forward(self, dense: Tensor, pooled: Tensor) -> Tensor:
        """dense (B, dense_in), pooled (B, sum of widths) -> (B,) logits."""
        x = self.bottom(dense)  # (B, D)
        if not self.dot:
            return self.top(torch.cat([x, pooled], dim=1)).squeeze(1)
        B = x.shape[0]
        if self.project:
            parts = pooled.split(self.widths, dim=1)
            projected = [m(parts[i]) for i, m in enumerate(self.projections)]
            e = torch.stack(projected, dim=1)  # (B, F, D)
        else:
            e = pooled.view(B, -1, self.dim)  # (B, F, D)
        v = torch.cat([x.unsqueeze(1), e], dim=1)  # (B, F+1, D)
        z = torch.bmm(v, v.transpose(1, 2))  # (B, F+1, F+1)
        pairs = z[:, self.rows, self.cols]  # (B, P)
        return self.top(torch.cat([x, pairs], dim=1)).squeeze(1)


class DLRM(nn.Module):
    """DLRM over any pooled embedding collection.

    Args:
        embeddings: anything mapping a KeyedJaggedTensor to a KeyedTensor of pooled embeddings:
            `et.build_collection(...)` or a `torchrec.EmbeddingBagCollection`.
        dense_in: number of dense features (13 on Criteo).
        bottom: hidden and output sizes of the bottom MLP; the last is the interaction width D.
        top: hidden sizes of the top MLP (a final layer to 1 logit is added).
        interaction: `"dot"` (pairwise dot products) or `"cat"` (concatenate all vectors).
        self_interaction: with `"dot"`, also keep each vector's dot with itself (the diagonal).

    Example:
        >>> import torch, embtables as et
        >>> from embtables.models import DLRM
        >>> from torchrec import KeyedJaggedTensor
        >>> ebc = et.build_collection([et.TableConfig("C1", 100, 16), et.TableConfig("C2", 10, 16)], "hash", budget=0.5)
        >>> model = DLRM(ebc, dense_in=13)
        >>> kjt = KeyedJaggedTensor(["C1", "C2"], torch.tensor([1, 2, 3, 4]), lengths=torch.ones(4, dtype=torch.long))
        >>> model(torch.randn(2, 13), kjt).shape  # (B,)
        torch.Size([2])
    """

    def __init__(
        self,
        embeddings: nn.Module,
        dense_in: int = 13,
        bottom: Sequence[int] = (512, 256, 64, 16),
        top: Sequence[int] = (512, 256),
        interaction: Literal["dot", "cat"] = "dot",
        self_interaction: bool = False,
    ) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.features = output_dims(embeddings)
        self.head = DLRMHead(list(self.features.values()), dense_in, bottom, top, interaction, self_interaction)

    def forward(self, dense: Tensor, sparse: KeyedJaggedTensor) -> Tensor:
        """dense (B, dense_in) float, sparse KJT of ids -> (B,) logits."""
        return self.head(dense, self.embeddings(sparse).values())
