"""One batch of rows: dense features, categorical ids as a KeyedJaggedTensor, labels (`Batch`), as every loader
yields it (`loader.py`, `sequence_loader.py`, `shares.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchrec import KeyedJaggedTensor

from embtables.datasets.layout import SPARSE
from embtables.datasets.shuffle import Rows


@dataclass
class Batch:
    """One batch of Criteo rows (sequence data sets use the same class, with dense (B, 0) and their own keys).

    Args:
        dense: (B, 13) float32, log(1 + max(x, 0)) of I1..I13 (missing values give 0); (B, len(dense)) for a
            folder that lists its own columns.
        sparse: KeyedJaggedTensor keyed C1..C26 (or the folder's categorical columns), one int64 id per feature
            per row (feature-major values).
        labels: (B,) float32 clicks (0 or 1).
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.labels.numel())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return Batch(self.dense.to(device, non_blocking=non_blocking),
                     self.sparse.to(torch.device(device), non_blocking=non_blocking),
                     self.labels.to(device, non_blocking=non_blocking))


def make_batch(rows: Rows | tuple[torch.Tensor, ...], keys: list[str] = SPARSE) -> Batch:
    """A `Batch` from rows (labels (B,), dense (B, 13), ids (B, 26)) given as numpy arrays or tensors; `keys`
    names the id columns."""
    labels, dense, ids = (torch.as_tensor(a) for a in rows)
    B, F = ids.shape
    values = ids.t().contiguous().view(-1)  # (F * B,) feature-major, as KeyedJaggedTensor lays out ids
    # numpy builds these ~50x faster than torch.ones/arange when torch's intra-op threads are contended
    lengths = torch.from_numpy(np.ones(F * B, dtype=np.int32))
    offsets = torch.from_numpy(np.arange(F * B + 1, dtype=np.int32))
    kjt = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, offsets=offsets, stride=B)
    return Batch(dense, kjt, labels)
