"""The `torch` backend: one `nn.Parameter` per physical table, looked up with `embedding_bag`/`embedding`
with sparse gradients. It is the reference path the other backends are tested against, and runs on any device.

On CUDA a step reads nothing on the host: the lookups and their backward need no host value, and the optimizers
(`embtables.optim`'s Adagrads, `torch.optim.SGD`, whose sparse update is an `index_add`) never coalesce a gradient.
One exception is PyTorch's: when several lookups read one table, autograd adds their sparse gradients, and CUDA's
sparse add coalesces (a synchronisation) once the sum holds more rows than the table has elements, i.e. only for
tables much smaller than a batch."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embtables.bags import Bags
from embtables.config import Lookup, PhysicalTable, SparseOptimizer
from embtables.optim import RowWiseAdagrad, SparseAdagrad
from embtables.stores.base import Store


class TorchStore(Store):
    name = "torch"

    def __init__(
        self, tables: Sequence[PhysicalTable], lookups: Sequence[Lookup], optimizer: SparseOptimizer, device: torch.device
    ) -> None:
        super().__init__(tables, lookups, optimizer, device)
        self.weight = nn.ParameterList(
            [nn.Parameter(torch.empty(t.num_embeddings, t.embedding_dim, device=device)) for t in tables]
        )
        self._sparse_optimizer: torch.optim.Optimizer | None = None
        self.reset_parameters()

    def pooled(self, bags: Bags) -> Tensor:
        B = bags.batch_size
        values = bags.values.split(bags.ids_per_feature)
        weights = bags.per_sample_weights.split(bags.ids_per_feature) if bags.per_sample_weights is not None else [None] * len(values)
        out = []
        for i, lk in enumerate(self.lookups[: bags.num_features]):
            offsets = bags.offsets[i * B : (i + 1) * B]
            out.append(
                F.embedding_bag(
                    values[i], self.weight[lk.table], offsets - offsets[0], mode="sum",
                    per_sample_weights=weights[i], sparse=True,
                )
            )  # (B, D)
        return torch.cat(out, dim=1)  # (B, sum D)

    def rows(self, bags: Bags) -> Tensor:
        values = bags.values.split(bags.ids_per_feature)
        lookups = self.lookups[self.num_pooled :]
        return torch.cat([F.embedding(v, self.weight[lk.table], sparse=True) for v, lk in zip(values, lookups)])

    def weights(self) -> list[Tensor]:
        return [w.data for w in self.weight]

    def sparse_optimizer(self) -> torch.optim.Optimizer:
        """Made at the first call (serving never allocates its state), then the same object."""
        if self._sparse_optimizer is None:
            o = self.optimizer
            params = list(self.weight)
            if o.name == "rowwise_adagrad":
                self._sparse_optimizer = RowWiseAdagrad(params, lr=o.lr, eps=o.eps)
            elif o.name == "adagrad":
                self._sparse_optimizer = SparseAdagrad(params, lr=o.lr, eps=o.eps)
            else:  # its sparse update is an index_add of the uncoalesced rows: no coalesce, no host read
                self._sparse_optimizer = torch.optim.SGD(params, lr=o.lr)
        return self._sparse_optimizer

    def optimizer_state(self) -> list[Tensor | None]:
        if self.optimizer.name == "sgd":
            return [None] * len(self.tables)
        state = self.sparse_optimizer().state
        return [state[p]["sum"] for p in self.weight]  # both Adagrads create it for every parameter up front
