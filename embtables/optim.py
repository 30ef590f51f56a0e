"""Row-wise Adagrad for PyTorch parameters with sparse gradients: the torch backend's twin of FBGEMM's
EXACT_ROWWISE_ADAGRAD, so both backends train identically.

For each row r touched in a step (duplicate ids summed first, as FBGEMM's "exact" variants do):

    G_r  <- G_r + mean_d(g_{r,d}^2)                  one fp32 accumulator per row (not per element)
    w_r  <- w_r - lr * g_r / (sqrt(G_r) + eps)
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor


class RowWiseAdagrad(torch.optim.Optimizer):
    """Row-wise Adagrad; accepts sparse (COO) or dense gradients of 2-D parameters.

    Args:
        params: 2-D parameters, typically embedding tables with `sparse=True` lookups.
        lr: learning rate.
        eps: added to the square root of the accumulator.

    Example:
        >>> import torch, embtables as et
        >>> w = torch.nn.Parameter(torch.zeros(10, 4))
        >>> opt = et.RowWiseAdagrad([w], lr=0.1)
        >>> torch.nn.functional.embedding(torch.tensor([1, 1, 3]), w, sparse=True).sum().backward()
        >>> opt.step()
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 0.01, eps: float = 1e-8) -> None:
        if not lr > 0:
            raise ValueError(f"RowWiseAdagrad: lr must be > 0, got {lr}")
        super().__init__(params, dict(lr=lr, eps=eps))
        for group in self.param_groups:  # the accumulators up front, as torch.optim.Adagrad: a checkpoint fills them
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"RowWiseAdagrad: parameters must be 2-D, got shape {tuple(p.shape)}")
                self.state[p]["sum"] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                acc = self.state[p]["sum"]
                g = p.grad
                if g.is_sparse:
                    g = g.coalesce()
                    rows, values = g.indices()[0], g.values()
                    if rows.numel() == 0:
                        continue
                    acc.index_add_(0, rows, values.pow(2).mean(1))
                    scale = lr / (acc[rows].sqrt() + eps)
                    p.index_add_(0, rows, -scale.unsqueeze(1) * values)
                else:
                    acc.add_(g.pow(2).mean(1))
                    p.add_(-(lr / (acc.sqrt() + eps)).unsqueeze(1) * g)
