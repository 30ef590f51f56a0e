"""The quantized store: a trained collection's physical tables in fp16, int8 or int4, for serving
(`Collection.quantize`), in FBGEMM's inference table-batched embedding (`IntNBitTableBatchedEmbeddingBagsCodegen`,
which its CPU build runs) with the method's remap and combine unchanged around it.

    fp16    D x 2 bytes per row
    int8    D bytes + 4: each row's values q in 0..255, w ~ scale * q + bias, scale and bias fp16 (row-wise)
    int4    D / 2 bytes + 4: q in 0..15, two per byte, the same fp16 scale and bias

the row-wise affine scheme FBGEMM's IntNBit tables store (`FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf`):
scale = (max - min) / (2^b - 1) and bias = min of the row, so each value is off by at most scale / 2 (plus the
fp16 rounding of scale and bias). FBGEMM packs int8 rows to whole fp16 pairs and int4 rows to whole bytes with the
scale aligned, so int8 needs even dims and int4 dims in multiples of 4; other dims are refused, naming the table.
Each table starts on a 128-byte cache line; `weight_bytes` counts every byte allocated, padding included.

Inference only: its forward refuses to run in training mode with gradients on; nothing in it can be trained.
Devices: CPU, and CUDA with FBGEMM's CUDA build (the fbgemm store's check).
"""

from __future__ import annotations

from typing import ClassVar, Iterator, Sequence

import torch
from fbgemm_gpu.split_embedding_configs import SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen
from torch import Tensor

from embtables.config import Lookup, PhysicalTable, SparseOptimizer
from embtables.stores.fbgemm_store import FbgemmStore

FP32 = "fp32"  # the dtype of a collection that is not quantized
# name -> (FBGEMM's type, bits per value, the dim multiple its rows need)
DTYPES: dict[str, tuple[SparseType, int, int]] = {
    "fp16": (SparseType.FP16, 16, 1), "int8": (SparseType.INT8, 8, 2), "int4": (SparseType.INT4, 4, 4),
}
SCALE_BIAS_BYTES = 4  # fp16 scale + fp16 bias per row of int8 / int4


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"unknown quantized dtype {dtype!r}; choose one of {sorted(DTYPES)} (fp32 is the "
                         "collection itself)")


def row_bytes(dim: int, dtype: str) -> int:
    """Bytes of one quantized row of width `dim` (before the per-table cache-line padding)."""
    _, bits, _ = DTYPES[dtype]
    return dim * bits // 8 + (SCALE_BIAS_BYTES if bits < 16 else 0)


def check_dims(tables: Sequence[PhysicalTable], dtype: str) -> None:
    """Refuse, naming the table, a dim whose `dtype` rows FBGEMM's layout cannot hold."""
    check_dtype(dtype)
    multiple = DTYPES[dtype][2]
    for t in tables:
        if t.embedding_dim % multiple:
            raise ValueError(f"{dtype} quantization: table {t.name!r} has dim {t.embedding_dim}, and FBGEMM's "
                             f"{dtype} rows need dims in multiples of {multiple} (values packed into whole bytes, "
                             "the fp16 scale and bias aligned); quantize to fp16, or plan the tables with "
                             f"that dim multiple")


def quantize_rows(w: Tensor, t: PhysicalTable, dtype: str) -> Tensor:
    """fp32 (rows, dim) weights of table `t` -> its (rows, row_bytes) uint8 rows: values, then scale and bias."""
    if tuple(w.shape) != (t.num_embeddings, t.embedding_dim):
        raise ValueError(f"table {t.name!r} has shape {tuple(w.shape)}, the plan {(t.num_embeddings, t.embedding_dim)}")
    w, bits = w.detach().float().cpu().contiguous(), DTYPES[dtype][1]
    return w.half().view(torch.uint8) if bits == 16 else torch.ops.fbgemm.FloatOrHalfToFusedNBitRowwiseQuantizedSBHalf(w, bits)


def check_rows(r: Tensor, t: PhysicalTable, dtype: str) -> None:
    """Refuse, naming the table, uint8 rows that are not (rows, row_bytes)."""
    width = row_bytes(t.embedding_dim, dtype)
    if r.dtype != torch.uint8 or tuple(r.shape) != (t.num_embeddings, width):
        raise ValueError(f"table {t.name!r}: {dtype} rows of shape {tuple(r.shape)} ({r.dtype}) do not fit "
                         f"{(t.num_embeddings, width)} uint8")


def random_tables(tables: Sequence[PhysicalTable], generator: torch.Generator | None) -> Iterator[Tensor]:
    """Each table drawn uniformly in its init range in fp32, one table at a time (to be quantized)."""
    for t in tables:
        yield torch.empty(t.num_embeddings, t.embedding_dim).uniform_(t.init_low, t.init_high, generator=generator)


class QuantizedRows:
    """What both quantized stores (this one and `quantized_torch.py`) do alike: fp32 tables quantized in, stored rows
    copied in, nothing to train. A store provides `tables`, `dtype` and `_put(i, rows)`, which writes table i's
    checked (rows, row bytes) uint8 rows where it keeps them."""

    tables: tuple[PhysicalTable, ...]
    dtype: str

    def _put(self, i: int, rows: Tensor) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def load_weights(self, weights: Sequence[Tensor]) -> None:
        """Quantize fp32 (rows, dim) tables into the store."""
        self._check_count(weights)
        for i, w in enumerate(weights):
            self._put(i, quantize_rows(w, self.tables[i], self.dtype))

    @torch.no_grad()
    def load_quantized_rows(self, rows: Sequence[Tensor]) -> None:
        """Copy `quantized_rows()`-shaped uint8 tensors (e.g. from a checkpoint) into the store, bit for bit."""
        self._check_count(rows)
        for i, r in enumerate(rows):
            check_rows(r, self.tables[i], self.dtype)
            self._put(i, r)

    def _check_count(self, tables: Sequence[Tensor]) -> None:
        if len(tables) != len(self.tables):
            raise ValueError(f"{len(tables)} tables for {len(self.tables)} physical tables")

    def optimizer_state(self) -> list[Tensor | None]:
        return [None] * len(self.tables)  # nothing trains

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Each table drawn uniformly in its init range in fp32, one table at a time, then quantized."""
        for i, w in enumerate(random_tables(self.tables, generator)):
            self._put(i, quantize_rows(w, self.tables[i], self.dtype))


class QuantizedStore(QuantizedRows, FbgemmStore):
    """Physical tables held quantized in FBGEMM's inference TBE; built by `Collection.quantize`.

    Its rows are zeros until `load_weights` or `load_quantized_rows` fills them (no random draw at build).

    Args:
        tables, lookups, device: as every store's.
        dtype: `"fp16"`, `"int8"` or `"int4"`.
    """

    name = "quantized"
    dim_multiple: ClassVar[int] = 1  # per dtype: checked in __init__ with the table's name
    # built only by `assemble_quantized`, whose callers (`Collection.quantize`, `et.load_collection`) load every row
    # right after: drawing and quantizing random rows first would be overwritten unread (for the 26 Criteo Kaggle
    # tables, 34M rows); the rows start as FBGEMM allocates them, zeros, until loaded (or `reset_parameters`)
    init_on_build: ClassVar[bool] = False

    def __init__(self, tables: Sequence[PhysicalTable], lookups: Sequence[Lookup], dtype: str,
                 device: torch.device) -> None:
        check_dims(tables, dtype)
        self.dtype = dtype
        super().__init__(tables, lookups, SparseOptimizer("sgd"), device)  # the optimizer is never used

    def _tbe(self, tables: list[PhysicalTable], feature_table_map: list[int], mode: PoolingMode,
             device: torch.device) -> IntNBitTableBatchedEmbeddingBagsCodegen:
        """FBGEMM's inference TBE of `tables` in this store's dtype, fp32 outputs."""
        location = EmbeddingLocation.DEVICE if device.type == "cuda" else EmbeddingLocation.HOST
        tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
            [(t.name, t.num_embeddings, t.embedding_dim, DTYPES[self.dtype][0], location) for t in tables],
            feature_table_map=feature_table_map, pooling_mode=mode, device=device, output_dtype=SparseType.FP32,
        )
        tbe.initialize_weights()
        # torch.compile runs FBGEMM's module eagerly: it holds FBGEMM's TensorQueue / AtomicCounter, script objects
        # without fake classes, which dynamo cannot trace (tests/test_compile.py)
        tbe.forward = torch.compiler.disable(tbe.forward)
        return tbe

    def _check_grad_mode(self) -> None:
        if self.training and torch.is_grad_enabled():
            raise RuntimeError(f"a {self.dtype}-quantized collection is for inference only: call .eval() (or run "
                               "under torch.no_grad()); train the fp32 collection and quantize it again")

    def _rows(self) -> list[tuple[Tensor, Tensor | None]]:
        """Per physical table, its quantized (rows, D * bits / 8) uint8 values and (rows, 4) scale-bias bytes."""
        split = {g: tbe.split_embedding_weights() if tbe is not None else []
                 for g, tbe in (("pooled", self.pooled_tbe), ("rows", self.rows_tbe))}
        return [split[g][i] for g, i in self._where]

    def weights(self) -> list[Tensor]:
        """Dequantized fp32 copies of the tables (not views: the store holds no fp32 weights)."""
        out = []
        for t, (values, scale_bias) in zip(self.tables, self._rows()):
            if scale_bias is None:  # fp16
                out.append(values.contiguous().view(torch.float16).float())
            else:
                fused = torch.cat([values, scale_bias], dim=1)  # FBGEMM's fused layout: values, then scale, bias
                out.append(torch.ops.fbgemm.FusedNBitRowwiseQuantizedSBHalfToFloat(fused, DTYPES[self.dtype][1]))
        return out

    def quantized_rows(self) -> list[Tensor]:
        """Per physical table, its rows as stored: (rows, row_bytes) uint8, values then scale and bias."""
        return [v if sb is None else torch.cat([v, sb], dim=1) for v, sb in self._rows()]

    def weight_bytes(self) -> int:
        """Every byte the TBEs allocated for the tables: quantized rows, scales and biases, cache-line padding."""
        return sum(tbe.weights_host.numel() + tbe.weights_dev.numel()
                   for tbe in (self.pooled_tbe, self.rows_tbe) if tbe is not None)

    def _put(self, i: int, r: Tensor) -> None:
        values, scale_bias = self._rows()[i]
        values.copy_(r[:, : values.shape[1]])
        if scale_bias is not None:
            scale_bias.copy_(r[:, values.shape[1] :])
