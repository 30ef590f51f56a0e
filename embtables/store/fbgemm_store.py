"""The `fbgemm` backend: all physical tables in one FBGEMM table-batched embedding (TBE) module, with the
optimizer fused into its backward pass (no dense gradient of any table is ever formed).

Facts of FBGEMM 1.8 this relies on: the training TBE takes fp32 weights whose dims are multiples of 4; on
CPU its optimizers are EXACT_SGD, EXACT_ADAGRAD and EXACT_ROWWISE_ADAGRAD (Adam is refused); its forward
fails under `torch.inference_mode()` (use `torch.no_grad()`); a TBE has one pooling mode, so per-id lookups
(PoolingMode.NONE, one dim for all tables) get a second TBE.
"""

from __future__ import annotations

from typing import Sequence

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    EmbeddingLocation,
    SplitTableBatchedEmbeddingBagsCodegen,
)
from torch import Tensor

from embtables.bags import Bags
from embtables.config import Lookup, PhysicalTable, SparseOptimizer
from embtables.store.base import Store

_OPTIMIZERS = {
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "sgd": EmbOptimType.EXACT_SGD,
}


class FbgemmStore(Store):
    name = "fbgemm"
    dim_multiple = 4
    fused = True

    def __init__(
        self, tables: Sequence[PhysicalTable], lookups: Sequence[Lookup], optimizer: SparseOptimizer, device: torch.device
    ) -> None:
        super().__init__(tables, lookups, optimizer, device)
        # where each physical table lives: (group, index inside that group's TBE)
        self._where: list[tuple[str, int]] = [("", -1)] * len(tables)
        self.pooled_tbe = self._make(tables, [lk for lk in lookups if lk.pooled], PoolingMode.SUM, "pooled", device)
        self.rows_tbe = self._make(tables, [lk for lk in lookups if not lk.pooled], PoolingMode.NONE, "rows", device)
        self.reset_parameters()

    def _make(
        self, tables: Sequence[PhysicalTable], lookups: list[Lookup], mode: PoolingMode, group: str, device: torch.device
    ) -> SplitTableBatchedEmbeddingBagsCodegen | None:
        if not lookups:
            return None
        used = sorted({lk.table for lk in lookups})
        for i, t in enumerate(used):
            self._where[t] = (group, i)
        local = {t: i for i, t in enumerate(used)}
        cuda = torch.device(device).type == "cuda"
        loc, dev = (EmbeddingLocation.DEVICE, ComputeDevice.CUDA) if cuda else (EmbeddingLocation.HOST, ComputeDevice.CPU)
        o = self.optimizer
        return SplitTableBatchedEmbeddingBagsCodegen(
            [(tables[t].num_embeddings, tables[t].embedding_dim, loc, dev) for t in used],
            feature_table_map=[local[lk.table] for lk in lookups],
            optimizer=_OPTIMIZERS[o.name],
            learning_rate=o.lr,
            eps=o.eps,
            pooling_mode=mode,
            # ids were validated (full) or produced in range (hashed) by the remap
            bounds_check_mode=BoundsCheckMode.NONE,
            device=torch.device(device),
        )

    def _check_grad_mode(self) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("the fbgemm backend cannot run under torch.inference_mode(); use torch.no_grad()")

    def pooled(self, bags: Bags) -> Tensor:
        self._check_grad_mode()
        return self.pooled_tbe(bags.values, bags.offsets, per_sample_weights=bags.weights)  # (B, sum D)

    def rows(self, bags: Bags) -> Tensor:
        self._check_grad_mode()
        return self.rows_tbe(bags.values, bags.offsets)  # (N_rows, D)

    def weights(self) -> list[Tensor]:
        split = {
            "pooled": self.pooled_tbe.split_embedding_weights() if self.pooled_tbe is not None else [],
            "rows": self.rows_tbe.split_embedding_weights() if self.rows_tbe is not None else [],
        }
        return [split[g][i] for g, i in self._where]
