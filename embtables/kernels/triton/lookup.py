"""Forward of the triton store: every physical lookup of a group pooled in one launch.

    out[b, col[l] : col[l] + dim[t]] = sum over ids i of bag (l, b) of  w_i * W_t[values[i]]       t = table[l]

Tables live in one flat buffer (`stores/flat.py`): row r of table t starts at `table_offset[t] + r * dim[t]`.
Bag (l, b) holds `values[offsets[l * B + b] : offsets[l * B + b + 1]]` (the jagged layout of `Bags`).

Grid: (lookups, cdiv(B, BLOCK_B)). A program pools BLOCK_B bags of one lookup as a (BLOCK_B, BLOCK_D) tile, one
id of every bag per step, for as many steps as its longest bag (one, for Criteo's one id per bag); empty bags
store zeros. BLOCK_D is the widest table's dim rounded up to a power of two, masked to each table's own.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK_B = 64  # bags per program: 64 rows of 16 floats is 4 KB of loads in flight per step


@triton.jit
def _pool_kernel(weight, table_offset, table_dim, lookup_table, lookup_col, values, offsets, psw, out, B, out_stride,
                 HAS_PSW: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    lookup = tl.program_id(0)
    b = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)  # (BLOCK_B,) bags
    in_batch = b < B
    t = tl.load(lookup_table + lookup)
    base = tl.load(table_offset + t)
    dim = tl.load(table_dim + t)
    col = tl.load(lookup_col + lookup)
    d = tl.arange(0, BLOCK_D)
    in_row = d < dim
    start = tl.load(offsets + lookup * B + b, mask=in_batch, other=0)
    end = tl.load(offsets + lookup * B + b + 1, mask=in_batch, other=0)
    longest = tl.max(end - start, axis=0)
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    k = longest * 0  # a loop counter of the bound's type (a while loop: the bound is data, read on the device)
    while k < longest:
        live = in_batch & (start + k < end)  # bags that still have an id at step k
        ids = tl.load(values + start + k, mask=live, other=0)
        rows = tl.load(weight + base + ids[:, None] * dim + d[None, :], mask=live[:, None] & in_row[None, :],
                       other=0.0)
        if HAS_PSW:
            rows = rows * tl.load(psw + start + k, mask=live, other=0.0)[:, None]
        acc += rows
        k += 1
    b64 = b.to(tl.int64)  # B x width may pass 2^31
    tl.store(out + b64[:, None] * out_stride + col + d[None, :], acc, mask=in_batch[:, None] & in_row[None, :])


def pool(weight: Tensor, table_offset: Tensor, table_dim: Tensor, lookup_table: Tensor, lookup_col: Tensor,
         values: Tensor, offsets: Tensor, psw: Tensor | None, batch_size: int, width: int, block_d: int) -> Tensor:
    """Launch `_pool_kernel`: (B, width) pooled lookups, lookup l in columns [lookup_col[l], + its table's dim).

    Args:
        weight: flat fp32 tables; table_offset, table_dim: (T,) int64 per table.
        lookup_table, lookup_col: (L,) int64 per lookup: its table and first output column.
        values: (N,) int64 rows; offsets: (L * B + 1,) int64 bag boundaries; psw: (N,) fp32 weights or None.
        batch_size: B; width: output columns; block_d: a power of two >= every table's dim.
    """
    out = weight.new_empty(batch_size, width)
    L = lookup_table.numel()
    if L and batch_size:
        grid = (L, triton.cdiv(batch_size, BLOCK_B))
        _pool_kernel[grid](weight, table_offset, table_dim, lookup_table, lookup_col, values, offsets,
                           psw if psw is not None else weight, out, batch_size, width, HAS_PSW=psw is not None,
                           BLOCK_B=BLOCK_B, BLOCK_D=block_d)
    return out


@torch.library.custom_op("embtables_triton::pool", mutates_args=())
def pool_op(weight: Tensor, table_offset: Tensor, table_dim: Tensor, lookup_table: Tensor, lookup_col: Tensor,
            values: Tensor, offsets: Tensor, psw: Tensor | None, batch_size: int, width: int, block_d: int) -> Tensor:
    """`pool` as an opaque operator, `torch.ops.embtables_triton.pool` (arguments as `pool`'s; batch_size a SymInt).

    torch.compile and torch.export cannot trace into a Triton launch on every path: the launcher reads data pointers
    (FakeTensors have none) and Triton's interpreter runs NumPy on them. As an operator the launch is one node of
    their graphs whose output shape `_pool_fake` gives, on CUDA and in the interpreter alike."""
    return pool(weight, table_offset, table_dim, lookup_table, lookup_col, values, offsets, psw, batch_size, width,
                block_d)


@pool_op.register_fake
def _pool_fake(weight: Tensor, table_offset: Tensor, table_dim: Tensor, lookup_table: Tensor, lookup_col: Tensor,
               values: Tensor, offsets: Tensor, psw: Tensor | None, batch_size: int, width: int,
               block_d: int) -> Tensor:
    # offsets hold L * B + 1 bag boundaries: checked on the traced shapes (a guard while tracing), not by the launch
    torch._check(offsets.numel() == lookup_table.numel() * batch_size + 1)
    return weight.new_empty(batch_size, width)


def pool_reference(tables: list[Tensor], lookup_table: list[int], lookup_col: list[int], values: Tensor,
                   offsets: Tensor, psw: Tensor | None, batch_size: int, width: int) -> Tensor:
    """`pool` in PyTorch ops, one `embedding_bag` per lookup (tables as a list of (rows, dim) tensors)."""
    out = tables[0].new_zeros(batch_size, width)
    B = batch_size
    for lookup, (t, col) in enumerate(zip(lookup_table, lookup_col)):
        lo, hi = int(offsets[lookup * B]), int(offsets[(lookup + 1) * B])
        bag_offsets = offsets[lookup * B : (lookup + 1) * B] - lo
        w = None if psw is None else psw[lo:hi]
        pooled = torch.nn.functional.embedding_bag(values[lo:hi], tables[t], bag_offsets, mode="sum",
                                                   per_sample_weights=w)
        out[:, col : col + tables[t].shape[1]] = pooled
    return out
