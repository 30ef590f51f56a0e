"""The learned row mask of OptEmbed (Lyu et al., CIKM 2022, arXiv:2208.04482) and its supernet dimension masks.

A row e of field f is kept when its norm clears the field's learnable threshold t_f (initialised to 0):

    mask(e) = step(||e||_1 - t_f)          (||e||_2 as an option; one t per row with `per_value`)
    e' = mask(e) * e                       (pruned rows contribute zero)
    loss' = loss + alpha * sum_f exp(-t_f)  (pushes the thresholds up, so rows are pruned)

The step's gradient is the reference's long-tailed straight-through estimator

    d step(z) / dz = g(z) = 2 - 4|z|  for |z| <= 0.4,   0.4  for 0.4 < |z| <= 1,   0  beyond,

continuous at |z| = 0.4. The thresholds go in their own SGD parameter group. While the supernet trains, each
(sample, field) uses a uniformly drawn prefix 1..D of the embedding dimension (`dimension_prefix_mask`); a
candidate architecture's searched dims are evaluated with `apply_dims`, the full width otherwise.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

NORMS = ("l1", "l2")


def step_gradient(z: Tensor) -> Tensor:
    """g(z), the long-tailed straight-through gradient of step(z) = (z > 0), elementwise.

    Args:
        z: any shape.

    Returns:
        The same shape and dtype as `z`.

    Example:
        >>> [round(g, 6) for g in step_gradient(torch.tensor([0.0, 0.2, -0.4, 0.7, 1.0, -1.5])).tolist()]
        [2.0, 1.2, 0.4, 0.4, 0.4, 0.0]
    """
    a = z.abs()
    tail = torch.where(a <= 1, torch.full_like(z, 0.4), torch.zeros_like(z))
    return torch.where(a <= 0.4, 2 - 4 * a, tail)


class LongTailedStep(torch.autograd.Function):
    """step(z) = (z > 0) as 0./1. forward, `step_gradient` backward.

    Example:
        >>> z = torch.tensor([-0.5, 0.0, 0.25], requires_grad=True)
        >>> LongTailedStep.apply(z).tolist()
        [0.0, 0.0, 1.0]
        >>> torch.autograd.grad(LongTailedStep.apply(z).sum(), z)[0].tolist()
        [0.4000000059604645, 2.0, 1.0]
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        ctx.save_for_backward(z)
        return (z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (z,) = ctx.saved_tensors
        return grad * step_gradient(z)


class RowMask(nn.Module):
    """Learnable per-field (or per-row) thresholds that zero the embedding rows whose norm does not clear them.

    Args:
        fields: number of fields F (>= 1).
        norm: "l1" (the paper) or "l2".
        per_value: one threshold per embedding row instead of per field; needs `num_rows`.
        num_rows: rows of the table, indexed by `row_ids` (only with `per_value`).

    Example:
        >>> mask = RowMask(2)
        >>> rows = torch.tensor([[0.5, -0.5], [0.0, 0.0], [1.0, 2.0]])  # (N, D), L1 norms 1, 0, 3
        >>> with torch.no_grad():
        ...     _ = mask.thresholds.copy_(torch.tensor([0.0, 3.0]))
        >>> mask(rows, torch.tensor([0, 0, 1])).tolist()  # row 1: 0 <= 0, row 2: 3 <= 3
        [[0.5, -0.5], [0.0, 0.0], [0.0, 0.0]]
        >>> round(mask.penalty(0.1).item(), 4)  # 0.1 * (exp(0) + exp(-3))
        0.105
    """

    def __init__(self, fields: int, norm: str = "l1", per_value: bool = False, num_rows: int | None = None) -> None:
        super().__init__()
        if fields < 1:
            raise ValueError(f"RowMask: fields must be >= 1, got {fields}")
        if norm not in NORMS:
            raise ValueError(f"RowMask: norm must be one of {NORMS}, got {norm!r}")
        if per_value and (num_rows is None or num_rows < 1):
            raise ValueError(f"RowMask: per_value=True needs num_rows >= 1, got {num_rows}")
        self.fields, self.norm, self.per_value = fields, norm, per_value
        self.thresholds = nn.Parameter(torch.zeros(num_rows if per_value else fields))  # (F,) or (R,)

    def row_norm(self, rows: Tensor) -> Tensor:
        """(N, D) -> (N,) L1 or L2 norms of the rows."""
        return rows.abs().sum(-1) if self.norm == "l1" else rows.norm(dim=-1)

    def _threshold(self, field: Tensor, row_ids: Tensor | None) -> Tensor:
        if field.numel() and (int(field.min()) < 0 or int(field.max()) >= self.fields):
            raise ValueError(f"RowMask: field ids must lie in [0, {self.fields}), got {field.min()}..{field.max()}")
        if not self.per_value:
            return self.thresholds[field]  # (N,)
        if row_ids is None:
            raise ValueError("RowMask: per_value=True needs row_ids")
        n = self.thresholds.numel()
        if row_ids.numel() and (int(row_ids.min()) < 0 or int(row_ids.max()) >= n):
            raise ValueError(f"RowMask: row_ids must lie in [0, {n}) (num_rows), got {row_ids.min()}..{row_ids.max()}")
        return self.thresholds[row_ids]  # (N,)

    def forward(self, rows: Tensor, field: Tensor, row_ids: Tensor | None = None) -> Tensor:
        """rows * step(norm(rows) - t)[:, None].

        Args:
            rows: (N, D) looked-up embedding rows.
            field: (N,) long field id of each row.
            row_ids: (N,) long row of each (needed with `per_value`).

        Returns:
            (N, D), pruned rows exactly zero and kept rows unchanged.
        """
        t = self._threshold(field, row_ids)  # (N,)
        mask = LongTailedStep.apply(self.row_norm(rows) - t)  # (N,)
        return rows * mask[:, None]

    def penalty(self, alpha: float) -> Tensor:
        """alpha * sum(exp(-t)), the term added to the loss."""
        return alpha * torch.exp(-self.thresholds).sum()

    @torch.no_grad()
    def kept(self, weight: Tensor, field: int, row_ids: Tensor | None = None) -> Tensor:
        """The (R,) bool keep vector norm - t > 0 of a field's whole table `weight` (R, D), for export.

        With `per_value`, `row_ids` (R,) are the thresholds' rows of `weight` (default 0..R-1).

        Example:
            >>> RowMask(1).kept(torch.tensor([[1.0, -1.0], [0.0, 0.0]]), 0).tolist()
            [True, False]
        """
        field_ids = torch.full((weight.shape[0],), field, dtype=torch.long, device=weight.device)
        if self.per_value and row_ids is None:
            row_ids = torch.arange(weight.shape[0], device=weight.device)
        return self.row_norm(weight) - self._threshold(field_ids, row_ids) > 0


def dimension_prefix_mask(batch: int, fields: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """(B, F, D) 0./1. masks: each (sample, field) keeps a uniformly drawn prefix of 1..D columns.

    Args:
        batch: samples B.
        fields: fields F.
        dim: embedding dimension D (>= 1).
        generator: the random source (CPU), for reproducible draws.

    Example:
        >>> m = dimension_prefix_mask(2, 3, 4, torch.Generator().manual_seed(0))
        >>> m.shape, bool((m.sum(-1) >= 1).all())
        (torch.Size([2, 3, 4]), True)
    """
    if batch < 0 or fields < 1 or dim < 1:
        raise ValueError(f"dimension_prefix_mask: needs batch >= 0, fields >= 1, dim >= 1; got {batch}, {fields}, {dim}")
    lengths = torch.randint(1, dim + 1, (batch, fields), generator=generator)  # (B, F)
    return (torch.arange(dim) < lengths[..., None]).float()  # (B, F, D)


def apply_dims(x: Tensor, dims: Sequence[int]) -> Tensor:
    """Zero the columns of each field beyond its searched dim (a candidate architecture).

    Args:
        x: (B, F, D) field embeddings.
        dims: F dims, each in 1..D.

    Returns:
        (B, F, D).

    Example:
        >>> apply_dims(torch.ones(1, 2, 3), [1, 3]).tolist()
        [[[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]]
    """
    f, d = x.shape[-2:]
    if len(dims) != f or any(not 1 <= k <= d for k in dims):
        raise ValueError(f"apply_dims: dims must be {f} ints in 1..{d}, got {list(dims)}")
    keep = torch.arange(d, device=x.device) < torch.tensor(list(dims), device=x.device)[:, None]  # (F, D)
    return x * keep.to(x.dtype)
