"""Building blocks shared by the models: MLPs, Dice, and reading an embedding collection's output contract."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


def output_dims(embeddings: nn.Module) -> dict[str, int]:
    """Feature name -> output width of a collection, in output order.

    Works for `embtables` collections (their `output_dims` contract) and for torchrec's
    `EmbeddingBagCollection`/`EmbeddingCollection` (from their table configs).
    """
    dims = getattr(embeddings, "output_dims", None)
    if isinstance(dims, dict):
        return dict(dims)
    for getter in ("embedding_bag_configs", "embedding_configs"):
        if hasattr(embeddings, getter):
            return {f: c.embedding_dim for c in getattr(embeddings, getter)() for f in c.feature_names}
    raise TypeError(
        f"{type(embeddings).__name__} states no output dims: pass an embtables collection or a torchrec "
        "EmbeddingBagCollection/EmbeddingCollection"
    )


def mlp(sizes: Sequence[int], last_activation: bool = True) -> nn.Sequential:
    """Linear layers sizes[0] -> ... -> sizes[-1] with ReLU between (and after the last if asked).

    Initialised as the DLRM reference: W ~ N(0, sqrt(2 / (fan_in + fan_out))), b ~ N(0, sqrt(1 / fan_out)).
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.normal_(0.0, math.sqrt(2.0 / (a + b)))
            lin.bias.normal_(0.0, math.sqrt(1.0 / b))
        layers.append(lin)
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Dice(nn.Module):
    """Dice activation (Zhou et al., DIN, KDD 2018): f(s) = p(s) s + (1 - p(s)) alpha s, with
    p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps)) from batch statistics in training and running ones in eval.

    Args:
        features: channel count C; input (..., C).
    """

    def __init__(self, features: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(features, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(features))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # (*, C)
        p = torch.sigmoid(self.bn(flat)).view(shape)
        return p * x + (1 - p) * self.alpha * x


class PReLU(nn.Module):
    """PReLU with one slope per channel of the *last* dim (torch's nn.PReLU uses dim 1): input (..., C)."""

    def __init__(self, features: int, init: float = 0.25) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((features,), init))

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x >= 0, x, self.alpha * x)


def activation_mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers with Dice or PReLU after each hidden layer, no activation after the last."""
    if activation not in ("dice", "prelu"):
        raise ValueError(f"activation must be 'dice' or 'prelu', got {activation!r}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(Dice(b) if activation == "dice" else PReLU(b))
    return nn.Sequential(*layers)
