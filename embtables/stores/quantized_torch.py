"""Quantized tables in plain PyTorch (`Collection.quantize(dtype, backend="torch")`): the rows the quantized store
holds (`quantized_store.py`: values, then the fp16 scale and bias), in one flat uint8 buffer, looked up by gathering
each bag's rows, dequantizing only those and summing them per bag:

    fp16    w = the row's bytes read as fp16
    int8    w = scale * q + bias,   q the row's bytes
    int4    w = scale * q + bias,   q two values a byte, the low nibble first

It is FBGEMM's dequantization (`FusedNBitRowwiseQuantizedSBHalfToFloat`) in tensor operations, so its outputs equal
the FBGEMM store's up to the order of the bag sums, and its rows are bit for bit the same (one quantizer): a file
saved by either store loads on the other. What it gives over FBGEMM's inference kernel: it exports with
`torch.export` and compiles (FBGEMM's module holds TorchScript objects neither can trace), on any device torch runs
on. What it costs: each lookup materialises its (N, D) dequantized rows before pooling, where FBGEMM's kernel
pools as it dequantizes. `weight_bytes` is the buffer: rows x row bytes, no padding.

Inference only, as the quantized store: its forward refuses training mode with gradients on.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from embtables.bags import Bags
from embtables.config import Lookup, PhysicalTable, SparseOptimizer
from embtables.stores.base import Store
from embtables.stores.quantized_store import DTYPES, QuantizedRows, check_dims, row_bytes


def dequantize(q: Tensor, dim: int, dtype: str) -> Tensor:
    """(N, row_bytes) uint8 quantized rows -> (N, dim) fp32.

    Example:
        >>> from embtables.stores.quantized_store import quantize_rows
        >>> w = torch.tensor([[0.0, 0.5, 1.0, -1.0]])
        >>> dequantize(quantize_rows(w, PhysicalTable("t", 1, 4, -1.0, 1.0), "int8"), 4, "int8").round(decimals=2)
        tensor([[ 0.0000,  0.5000,  1.0000, -1.0000]])
    """
    N, bits = q.shape[0], DTYPES[dtype][1]
    if bits == 16:
        return q.contiguous().view(torch.float16).float()  # (N, D)
    packed = dim * bits // 8
    scale_bias = q[:, packed:].contiguous().view(torch.float16).float()  # (N, 2)
    values = q[:, :packed]
    if bits == 4:
        values = torch.stack([values & 15, values >> 4], dim=2).reshape(N, dim)  # low nibble first
    return values.float() * scale_bias[:, :1] + scale_bias[:, 1:]


class QuantizedTorchStore(QuantizedRows, Store):
    """Physical tables held quantized in one uint8 buffer, looked up with PyTorch operations; built by
    `Collection.quantize(dtype, backend="torch")`.

    Args:
        tables, lookups, device: as every store's.
        dtype: `"fp16"`, `"int8"` (even dims) or `"int4"` (dims in multiples of 4), FBGEMM's row layout.
    """

    name = "quantized_torch"
    dim_multiple = 1  # per dtype: checked in __init__ with the table's name

    def __init__(self, tables: Sequence[PhysicalTable], lookups: Sequence[Lookup], dtype: str,
                 device: torch.device) -> None:
        check_dims(tables, dtype)
        super().__init__(tables, lookups, SparseOptimizer("sgd"), device)  # the optimizer is never used
        self.dtype = dtype
        self._spans: list[tuple[int, int, int]] = []  # per table: (first byte, rows, row bytes)
        at = 0
        for t in tables:
            width = row_bytes(t.embedding_dim, dtype)
            self._spans.append((at, t.num_embeddings, width))
            at += t.num_embeddings * width
        self.register_buffer("data", torch.zeros(at, dtype=torch.uint8, device=device))  # rows start as zeros

    def _table(self, i: int) -> Tensor:
        """Table i's (rows, row bytes) view of the buffer."""
        start, rows, width = self._spans[i]
        return self.data[start : start + rows * width].view(rows, width)

    def _lookup(self, lk: Lookup, ids: Tensor) -> Tensor:
        """(n,) ids of one lookup -> (n, D) fp32 rows, only those dequantized."""
        if self.training and torch.is_grad_enabled():
            raise RuntimeError(f"a {self.dtype}-quantized collection is for inference only: call .eval() (or run "
                               "under torch.no_grad()); train the fp32 collection and quantize it again")
        return dequantize(self._table(lk.table)[ids], self.tables[lk.table].embedding_dim, self.dtype)

    def pooled(self, bags: Bags) -> Tensor:
        values = bags.values.split(bags.ids_per_feature)
        out = []
        for i, lk in enumerate(self.lookups[: bags.num_features]):
            one = bags.feature_slice(i, i + 1)
            out.append(one.sum_rows(self._lookup(lk, values[i])))  # (B, D)
        return torch.cat(out, dim=1)  # (B, sum D)

    def rows(self, bags: Bags) -> Tensor:
        values = bags.values.split(bags.ids_per_feature)
        return torch.cat([self._lookup(lk, v) for v, lk in zip(values, self.lookups[self.num_pooled :])])

    def weights(self) -> list[Tensor]:
        """Dequantized fp32 copies of the tables (not views: the store holds no fp32 weights)."""
        return [dequantize(self._table(i), t.embedding_dim, self.dtype) for i, t in enumerate(self.tables)]

    def quantized_rows(self) -> list[Tensor]:
        """Per physical table, its rows as stored: (rows, row_bytes) uint8, values then scale and bias."""
        return [self._table(i).clone() for i in range(len(self.tables))]

    def weight_bytes(self) -> int:
        return self.data.numel()

    def _put(self, i: int, rows: Tensor) -> None:
        self._table(i).copy_(rows)
