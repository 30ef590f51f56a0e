"""The `fbgemm` backend: all physical tables in one FBGEMM table-batched embedding (TBE) module, with the
optimizer applied inside its backward pass (no dense gradient of any table is ever formed).

Facts of FBGEMM 1.8 this relies on: the training TBE takes fp32 weights whose dims are multiples of 4; on
CPU its optimizers are EXACT_SGD, EXACT_ADAGRAD and EXACT_ROWWISE_ADAGRAD (Adam is refused); its forward
fails under `torch.inference_mode()` (use `torch.no_grad()`); its CPU row-wise Adagrad fails ("num of rows
processed by adagrad ... does not match") unless each table's lookups are contiguous and in table order, so
the store feeds the TBE its lookups sorted by table and puts the outputs back in lookup order; and its CPU
backward without pooling (PoolingMode.NONE) is ~30x slower than pooled, so per-id lookups go to a second,
pooled TBE with every id in a bag of its own (`Bags.singletons`), and their rows are sliced out.

Devices: CPU, and CUDA with FBGEMM's CUDA build (`fbgemm-gpu`). Its CPU build (`fbgemm-gpu-cpu`, what `make`
installs) has no CUDA kernels, so on CUDA the store refuses to build, naming the device and what to use instead,
before it allocates anything; so it does on any other device.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    EmbeddingLocation,
    SplitTableBatchedEmbeddingBagsCodegen,
)
from importlib import metadata

from torch import Tensor

from embtables.bags import Bags
from embtables.config import Lookup, PhysicalTable, SparseOptimizer
from embtables.stores.base import Store

_OPTIMIZERS = {
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "sgd": EmbOptimType.EXACT_SGD,
}


class FbgemmStore(Store):
    name = "fbgemm"
    dim_multiple = 4
    # whether building the store draws its tables (`reset_parameters`): a subclass whose rows are always loaded
    # straight after it is built (the quantized store) skips the draw, which would be overwritten unread
    init_on_build: ClassVar[bool] = True

    def __init__(
        self, tables: Sequence[PhysicalTable], lookups: Sequence[Lookup], optimizer: SparseOptimizer, device: torch.device
    ) -> None:
        super().__init__(tables, lookups, optimizer, device)
        _refuse(torch.device(device))
        # where each physical table lives: (group, index inside that group's TBE)
        self._where: list[tuple[str, int]] = [("", -1)] * len(tables)
        pooled = [lk for lk in lookups if lk.pooled]
        rows = [lk for lk in lookups if not lk.pooled]
        # lookup order fed to each TBE (sorted by table), or None when the plan's order already is
        self._pooled_order = _table_order(pooled)
        self._rows_order = _table_order(rows)
        self.pooled_tbe = self._make(tables, _apply(pooled, self._pooled_order), PoolingMode.SUM, "pooled", device)
        self.rows_tbe = self._make(tables, _apply(rows, self._rows_order), PoolingMode.SUM, "rows", device)
        if self.init_on_build:
            self.reset_parameters()

    def _make(
        self, tables: Sequence[PhysicalTable], lookups: list[Lookup], mode: PoolingMode, group: str, device: torch.device
    ) -> torch.nn.Module | None:
        """The TBE of one group of lookups (`pooled` or `rows`), recording where each of its tables lives."""
        if not lookups:
            return None
        used = sorted({lk.table for lk in lookups})
        for i, t in enumerate(used):
            self._where[t] = (group, i)
        local = {t: i for i, t in enumerate(used)}
        return self._tbe([tables[t] for t in used], [local[lk.table] for lk in lookups], mode, torch.device(device))

    def _tbe(self, tables: list[PhysicalTable], feature_table_map: list[int], mode: PoolingMode,
             device: torch.device) -> torch.nn.Module:
        """FBGEMM's training TBE of `tables`, read by lookups `feature_table_map`, the optimizer inside backward."""
        cuda = device.type == "cuda"
        loc, dev = (EmbeddingLocation.DEVICE, ComputeDevice.CUDA) if cuda else (EmbeddingLocation.HOST, ComputeDevice.CPU)
        o = self.optimizer
        return SplitTableBatchedEmbeddingBagsCodegen(
            [(t.num_embeddings, t.embedding_dim, loc, dev) for t in tables],
            feature_table_map=feature_table_map,
            optimizer=_OPTIMIZERS[o.name],
            learning_rate=o.lr,
            eps=o.eps,
            pooling_mode=mode,
            # ids were validated (full) or produced in range (hashed) by the remap
            bounds_check_mode=BoundsCheckMode.NONE,
            device=device,
        )

    def _check_grad_mode(self) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("the fbgemm backend cannot run under torch.inference_mode(); use torch.no_grad()")

    def pooled(self, bags: Bags) -> Tensor:
        self._check_grad_mode()
        order = self._pooled_order
        if order is None:
            return self.pooled_tbe(bags.values, bags.offsets, per_sample_weights=bags.per_sample_weights)  # (B, sum D)
        sorted_bags = bags.select(order)
        out = self.pooled_tbe(sorted_bags.values, sorted_bags.offsets, per_sample_weights=sorted_bags.per_sample_weights)
        dims = [self.tables[self.lookups[i].table].embedding_dim for i in order]
        return _unsort(out.split(dims, dim=1), order, dim=1)  # (B, sum D) in lookup order

    def rows(self, bags: Bags) -> Tensor:
        self._check_grad_mode()
        order = self._rows_order or list(range(bags.num_features))
        sorted_bags = bags.select(order) if self._rows_order else bags
        L, n = sorted_bags.num_features, max(sorted_bags.ids_per_feature)
        D = self.tables[self.lookups[self.num_pooled].table].embedding_dim
        if n == 0:
            return torch.zeros(0, D, device=bags.values.device)
        single = sorted_bags.singletons(n)  # lookup l's ids in bags 0..N_l - 1
        out = self.rows_tbe(single.values, single.offsets).view(n, L, D)  # (n, L, D)
        pieces = [out[: c, i] for i, c in enumerate(sorted_bags.ids_per_feature)]
        return _unsort(pieces, order, dim=0)  # (N_rows, D) in lookup order

    def optimizer_state(self) -> list[Tensor | None]:
        if self.optimizer.name == "sgd":
            return [None] * len(self.tables)
        split = {g: tbe.split_optimizer_states() if tbe is not None else []
                 for g, tbe in (("pooled", self.pooled_tbe), ("rows", self.rows_tbe))}
        return [split[g][i][0] for g, i in self._where]  # momentum1: (rows,) row-wise, else (rows, dim)

    def weights(self) -> list[Tensor]:
        split = {
            "pooled": self.pooled_tbe.split_embedding_weights() if self.pooled_tbe is not None else [],
            "rows": self.rows_tbe.split_embedding_weights() if self.rows_tbe is not None else [],
        }
        return [split[g][i] for g, i in self._where]


def _refuse(device: torch.device) -> None:
    """Raise ValueError naming `device` and the way out when FBGEMM's kernels cannot run there."""
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"the fbgemm backend runs on cpu or cuda, not on {device}; use backend='torch' there")
    # a CUDA build registers CUDA kernels for its operators: asking the dispatcher runs nothing and allocates nothing
    if device.type == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key(
        "fbgemm::asynchronous_complete_cumsum", "CUDA"
    ):
        raise ValueError(
            f"the fbgemm backend cannot run on {device}: the installed FBGEMM ({_fbgemm_distribution()}) is its CPU "
            "build, without CUDA kernels. Install FBGEMM's CUDA build (fbgemm-gpu, for torch's CUDA version), or "
            f"use backend='torch' on {device}"
        )


def _fbgemm_distribution() -> str:
    for name in ("fbgemm-gpu-cpu", "fbgemm-gpu", "fbgemm-gpu-nightly-cpu"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            pass
    return "fbgemm_gpu"


def _table_order(lookups: list[Lookup]) -> list[int] | None:
    order = sorted(range(len(lookups)), key=lambda i: lookups[i].table)
    return None if order == list(range(len(lookups))) else order


def _apply(lookups: list[Lookup], order: list[int] | None) -> list[Lookup]:
    return lookups if order is None else [lookups[i] for i in order]


def _unsort(parts: Sequence[Tensor], order: list[int], dim: int) -> Tensor:
    """Parts produced in `order` -> concatenated in the original order."""
    back = [None] * len(order)
    for part, i in zip(parts, order):
        back[i] = part
    return torch.cat(back, dim=dim)  # type: ignore[arg-type]
