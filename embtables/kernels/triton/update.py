"""Backward of the triton store: each touched row's gradient summed once, and the optimizer applied to it.

The gradient of the pooled output is (B, width); id i of bag (l, b) contributes w_i * grad[b, col[l] : + dim] to
its row (w_i its per-sample weight, 1 without). FBGEMM's TBE backward scheme, written as:

  1. with PyTorch ops, no host read: each id's bag, its row's global key (row_base[table] + id), the ids sorted
     by key (stable, so duplicates sum in batch order), and at every run of equal keys (a segment) its length;
  2. `_per_sample_weight_grad_kernel` (when weights need a gradient): d out / d w_i = <grad row of its bag, W[id]>,
     before any row changes;
  3. `_update_kernel`: a program takes BLOCK_N sorted positions; where a segment starts, it sums the segment's
     gradient rows (as many steps as its longest segment) and applies the optimizer to that row, once:

        sgd               w -= lr g
        adagrad           s += g * g;           w -= lr g / (sqrt(s) + eps)        (s per element)
        rowwise_adagrad   s += mean_d(g * g);   w -= lr g / (sqrt(s) + eps)        (s per row)

     the torch backend's formulas (`embtables.optim`). Each row belongs to one segment, so updates need no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_N = 32  # sorted positions per program


@triton.jit
def _update_kernel(weight, state, table_offset, state_offset, table_dim, lookup_table, lookup_col, values, id_bag,
                   psw, grad, grad_stride, order, seg_len, N, B, lr, eps, OPTIMIZER: tl.constexpr,
                   HAS_PSW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    p = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) sorted positions
    n = tl.load(seg_len + p, mask=p < N, other=0)  # ids in the segment starting at p; 0 where none starts
    starts = n > 0
    first = tl.load(order + p, mask=starts, other=0)  # the segment's first id: its table and row are the segment's
    t = tl.load(lookup_table + tl.load(id_bag + first, mask=starts, other=0) // B, mask=starts, other=0)
    dim = tl.load(table_dim + t, mask=starts, other=0)
    d = tl.arange(0, BLOCK_D)
    row_mask = starts[:, None] & (d[None, :] < dim[:, None])
    acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    longest = tl.max(n, axis=0)
    j = longest * 0
    while j < longest:
        live = j < n
        i = tl.load(order + p + j, mask=live, other=0)
        bag = tl.load(id_bag + i, mask=live, other=0)
        col = tl.load(lookup_col + bag // B, mask=live, other=0)
        g = tl.load(grad + (bag % B)[:, None] * grad_stride + col[:, None] + d[None, :],
                    mask=live[:, None] & (d[None, :] < dim[:, None]), other=0.0)
        if HAS_PSW:
            g = g * tl.load(psw + i, mask=live, other=0.0)[:, None]
        acc += g
        j += 1
    row = tl.load(values + first, mask=starts, other=0)
    w_ptr = weight + tl.load(table_offset + t, mask=starts, other=0)[:, None] + row[:, None] * dim[:, None] + d[None, :]
    w = tl.load(w_ptr, mask=row_mask, other=0.0)
    if OPTIMIZER == 0:
        w -= lr * acc
    elif OPTIMIZER == 1:
        s_ptr = state + tl.load(state_offset + t, mask=starts, other=0)[:, None] + row[:, None] * dim[:, None] + d[None, :]
        s = tl.load(s_ptr, mask=row_mask, other=0.0) + acc * acc
        tl.store(s_ptr, s, mask=row_mask)
        w -= lr * acc / (tl.sqrt(s) + eps)
    else:
        s_ptr = state + tl.load(state_offset + t, mask=starts, other=0) + row
        s = tl.load(s_ptr, mask=starts, other=0.0) + tl.sum(acc * acc, axis=1) / tl.maximum(dim, 1).to(tl.float32)
        tl.store(s_ptr, s, mask=starts)
        w -= lr * acc / (tl.sqrt(s)[:, None] + eps)
    tl.store(w_ptr, w, mask=row_mask)


@triton.jit
def _per_sample_weight_grad_kernel(weight, table_offset, table_dim, lookup_table, lookup_col, values, id_bag, grad,
                                   grad_stride, out, N, B, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    i = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) ids
    live = i < N
    bag = tl.load(id_bag + i, mask=live, other=0)
    t = tl.load(lookup_table + bag // B, mask=live, other=0)
    dim = tl.load(table_dim + t, mask=live, other=0)
    col = tl.load(lookup_col + bag // B, mask=live, other=0)
    d = tl.arange(0, BLOCK_D)
    mask = live[:, None] & (d[None, :] < dim[:, None])
    g = tl.load(grad + (bag % B)[:, None] * grad_stride + col[:, None] + d[None, :], mask=mask, other=0.0)
    row = tl.load(values + i, mask=live, other=0)
    w = tl.load(weight + tl.load(table_offset + t, mask=live, other=0)[:, None] + row[:, None] * dim[:, None]
                + d[None, :], mask=mask, other=0.0)
    tl.store(out + i, tl.sum(g * w, axis=1), mask=live)


def segments(values: Tensor, offsets: Tensor, lookup_table: Tensor, row_base: Tensor, batch_size: int
             ) -> tuple[Tensor, Tensor, Tensor]:
    """(id_bag, order, seg_len), with PyTorch ops and no host read: each id's bag l * B + b; the ids in order of
    their rows' global keys (stable); at each sorted position where a run of one key starts, its length, else 0."""
    N = values.numel()
    bags = torch.arange(offsets.numel() - 1, device=values.device)
    id_bag = bags.repeat_interleave(offsets[1:] - offsets[:-1], output_size=N)  # (N,)
    key = row_base[lookup_table[id_bag // batch_size]] + values
    sorted_key, order = torch.sort(key, stable=True)
    starts = torch.ones(N, dtype=torch.bool, device=values.device)
    starts[1:] = sorted_key[1:] != sorted_key[:-1]
    seg = starts.cumsum(0) - 1  # (N,) segment of each sorted position
    lengths = torch.zeros(N, dtype=torch.long, device=values.device).scatter_add_(0, seg, torch.ones_like(seg))
    return id_bag, order, torch.where(starts, lengths[seg], 0)


def per_sample_weight_grad(weight: Tensor, table_offset: Tensor, table_dim: Tensor, lookup_table: Tensor,
                           lookup_col: Tensor, values: Tensor, id_bag: Tensor, grad: Tensor, batch_size: int,
                           block_d: int) -> Tensor:
    """(N,) d out / d w_i: the dot product of id i's row with its bag's gradient. Call before `update`."""
    N = values.numel()
    out = grad.new_empty(N)
    if N:
        _per_sample_weight_grad_kernel[(triton.cdiv(N, BLOCK_N),)](
            weight, table_offset, table_dim, lookup_table, lookup_col, values, id_bag, grad, grad.stride(0), out, N,
            batch_size, BLOCK_N=BLOCK_N, BLOCK_D=block_d)
    return out


def update(weight: Tensor, state: Tensor, table_offset: Tensor, state_offset: Tensor, table_dim: Tensor,
           lookup_table: Tensor, lookup_col: Tensor, values: Tensor, psw: Tensor | None, grad: Tensor,
           id_bag: Tensor, order: Tensor, seg_len: Tensor, batch_size: int, optimizer: int, lr: float, eps: float,
           block_d: int) -> None:
    """Launch `_update_kernel`: sum each touched row's gradient and apply the optimizer (codes of
    `stores.flat.OPTIMIZER_CODES`) to `weight` and `state` in place."""
    N = values.numel()
    if N:
        _update_kernel[(triton.cdiv(N, BLOCK_N),)](
            weight, state, table_offset, state_offset, table_dim, lookup_table, lookup_col, values, id_bag,
            psw if psw is not None else grad, grad, grad.stride(0), order, seg_len, N, batch_size, lr, eps,
            OPTIMIZER=optimizer, HAS_PSW=psw is not None, BLOCK_N=BLOCK_N, BLOCK_D=block_d)


def row_gradients_reference(values: Tensor, offsets: Tensor, psw: Tensor | None, grad: Tensor, lookup_table: list[int],
                            lookup_col: list[int], dims: list[int], batch_size: int
                            ) -> dict[tuple[int, int], Tensor]:
    """What `update` sums, in PyTorch ops: {(table, row): its gradient}, to test the kernels against."""
    out: dict[tuple[int, int], Tensor] = {}
    B = batch_size
    for bag in range(offsets.numel() - 1):
        lookup, b = divmod(bag, B)
        t, col = lookup_table[lookup], lookup_col[lookup]
        for i in range(int(offsets[bag]), int(offsets[bag + 1])):
            g = grad[b, col : col + dims[t]] * (1.0 if psw is None else psw[i])
            key = (t, int(values[i]))
            out[key] = out[key] + g if key in out else g.clone()
    return out
