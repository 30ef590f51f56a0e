"""Sparse Adagrad for PyTorch parameters with sparse gradients: the torch backend's twins of FBGEMM's
EXACT_ROWWISE_ADAGRAD (`RowWiseAdagrad`) and EXACT_ADAGRAD (`SparseAdagrad`), so every backend trains identically.

For each row r touched in a step (duplicate ids summed first, as FBGEMM's "exact" variants do):

    row-wise   G_r  <- G_r + mean_d(g_{r,d}^2)            one fp32 accumulator per row (not per element)
               w_r  <- w_r - lr * g_r / (sqrt(G_r) + eps)
    Adagrad    S_rd <- S_rd + g_{r,d}^2                   one per element: torch.optim.Adagrad's formula with
               w_r  <- w_r - lr * g_r / (sqrt(S_r) + eps)   lr_decay 0 and initial_accumulator_value 0

A sparse gradient of `embedding_bag(..., sparse=True)` holds one row per looked-up id, duplicates included.
`coalesce()` would sort and merge them, but on CUDA it reads the number of distinct rows back to the host (a
synchronisation), and it took 95% of a training step's GPU time on an H200. `sum_duplicates` instead sorts the
row indices, numbers the runs of equal rows, and sums each run into a buffer as long as the gradient (not the
table), padded so that every update applies to all of its slots: no output size depends on the data, so nothing
is read on the host. On the CPU, where sizes set by the data cost nothing (`embtables.bags.reads_are_free`),
`torch.unique` finds the distinct rows in one op and the update touches only them. Dense gradients are accepted
too (every row touched).
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from embtables.bags import reads_are_free


def sum_duplicates(rows: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Sum the gradient rows that share a row index, without reading anything on the host.

    Args:
        rows: (n,) int64 row of each gradient row; any order, duplicates allowed.
        values: (n, D) the gradient rows.

    Returns:
        (n,) rows and (n, D) gradients: with U distinct rows, slot s < U holds the s-th smallest distinct row and
        its summed gradient; slot s >= U holds some touched row and a zero gradient, so that an update applied to
        every slot adds exactly zero there (no branch on U, which only the device knows). On the CPU
        (`reads_are_free`), only the U first slots.

    Example:
        >>> rows, g = sum_duplicates(torch.tensor([4, 1, 4]), torch.tensor([[1.0], [2.0], [3.0]]))
        >>> rows.tolist(), g[:, 0].tolist()
        ([1, 4], [2.0, 4.0])
    """
    if reads_are_free(rows):  # one op, and an update of the distinct rows only
        unique, slot = torch.unique(rows, sorted=True, return_inverse=True)
        return unique, values.new_zeros((unique.numel(), *values.shape[1:])).index_add_(0, slot, values)
    sorted_rows, order = torch.sort(rows)
    starts = torch.ones_like(sorted_rows, dtype=torch.bool)
    starts[1:] = sorted_rows[1:] != sorted_rows[:-1]
    segment = starts.cumsum(0) - 1  # the slot of each sorted entry: its run's number
    slot = torch.empty_like(segment).scatter_(0, order, segment)  # the slot of each entry in the given order
    summed = values.new_zeros(values.shape).index_add_(0, slot, values)
    # slot s < U gets its run's row (every entry of a run writes the same value); the padding slots keep the
    # sorted rows they start with, all touched rows, so their zero updates land on distinct rows, not one
    return sorted_rows.clone().scatter_(0, segment, sorted_rows), summed


class _SparseAdagradBase(torch.optim.Optimizer):
    """Adagrad over 2-D parameters with sparse or dense gradients; subclasses set the accumulator's shape and
    how a row's squared gradient enters it (`_squares`)."""

    def __init__(self, params: Iterable[Tensor], lr: float, eps: float) -> None:
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be > 0, got {lr}")
        super().__init__(params, dict(lr=lr, eps=eps))
        for group in self.param_groups:  # the accumulators up front, as torch.optim.Adagrad: a checkpoint fills them
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"{type(self).__name__}: parameters must be 2-D, got shape {tuple(p.shape)}")
                self.state[p]["sum"] = torch.zeros(self._state_shape(p), dtype=torch.float32, device=p.device)

    def _state_shape(self, p: Tensor) -> tuple[int, ...]:
        raise NotImplementedError

    def _squares(self, g: Tensor) -> Tensor:
        """What a (rows, D) gradient adds to the accumulators of its rows."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                acc, g = self.state[p]["sum"], p.grad
                if not g.is_sparse:
                    acc.add_(self._squares(g))
                    p.add_(self._delta(g, acc.sqrt() + eps, lr))
                elif g._nnz():  # uncoalesced: `indices()` would refuse, `coalesce()` would synchronise
                    rows, g = sum_duplicates(g._indices()[0], g._values())
                    acc.index_add_(0, rows, self._squares(g))
                    p.index_add_(0, rows, self._delta(g, acc[rows].sqrt_().add_(eps), lr))

    def _delta(self, g: Tensor, std: Tensor, lr: float) -> Tensor:
        """The change of (rows, D) weights with gradient g and denominators `std` (sqrt of the sums, plus eps)."""
        raise NotImplementedError


class RowWiseAdagrad(_SparseAdagradBase):
    """Row-wise Adagrad; accepts sparse (COO) or dense gradients of 2-D parameters. State: `state[p]["sum"]` of
    shape (rows,).

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
        super().__init__(params, lr, eps)

    def _state_shape(self, p: Tensor) -> tuple[int, ...]:
        return (p.shape[0],)

    def _squares(self, g: Tensor) -> Tensor:
        return g.pow(2).mean(1)

    def _delta(self, g: Tensor, std: Tensor, lr: float) -> Tensor:
        return -(lr / std).unsqueeze(1) * g


class SparseAdagrad(_SparseAdagradBase):
    """Element-wise Adagrad, `torch.optim.Adagrad`'s update (lr_decay 0, initial_accumulator_value 0, no weight
    decay) without its `coalesce()` of sparse gradients. State: `state[p]["sum"]` of shape (rows, dim).

    Args:
        params: 2-D parameters, typically embedding tables with `sparse=True` lookups.
        lr: learning rate.
        eps: added to the square root of the accumulator.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(10, 4))
        >>> opt = SparseAdagrad([w], lr=0.1)
        >>> torch.nn.functional.embedding(torch.tensor([1, 1, 3]), w, sparse=True).sum().backward()
        >>> opt.step()
        >>> round(float(w.detach()[1, 0]), 4)  # the two duplicates summed to g = 2: -0.1 * 2 / sqrt(4)
        -0.1
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 0.01, eps: float = 1e-10) -> None:
        super().__init__(params, lr, eps)

    def _state_shape(self, p: Tensor) -> tuple[int, ...]:
        return tuple(p.shape)

    def _squares(self, g: Tensor) -> Tensor:
        return g.pow(2)

    def _delta(self, g: Tensor, std: Tensor, lr: float) -> Tensor:
        return g.div(std).mul_(-lr)  # torch.optim.Adagrad's order: g / std, then times -lr
