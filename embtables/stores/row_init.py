"""A table's initial rows drawn in fixed blocks of rows, each block from its own seed, so that any piece of the table
(a shard's rows and columns) can be drawn alone and equals that piece of the whole table's draw.

    W[r] ~ U(init_low, init_high)^D,  block k = rows [k R, (k + 1) R) drawn from seed(s, table, k),  R = BLOCK_ROWS

The torchrec store draws its tables this way: built on the meta device, each rank draws only the shards DMP gives it
(`TorchrecStore.init_shards`), and the sharded model starts exactly as the one-process model with the same seed does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from embtables.config import PhysicalTable
from embtables.hashing import derive_seed

BLOCK_ROWS = 4096  # rows per seeded block: a shard draws at most one partial block at each end
_UINT64 = (1 << 64) - 1


@torch.no_grad()
def fill_rows(dest: Tensor, seed: int, table: int, t: PhysicalTable, row0: int = 0, col0: int = 0) -> None:
    """Fill `dest` (n, m) with rows [row0, row0 + n) and columns [col0, col0 + m) of table `t`'s draw.

    Args:
        dest: the piece to fill (a whole table, or a shard's view), any device.
        seed: the store's init seed.
        table: the table's index among the store's tables (each table draws from its own seeds).
        t: the table (rows, dim, init range).
        row0, col0: where the piece starts in the table.

    Example:
        >>> t = PhysicalTable("t", 10_000, 4, -0.1, 0.1)
        >>> whole, piece = torch.empty(10_000, 4), torch.empty(5_000, 2)
        >>> fill_rows(whole, 7, 0, t); fill_rows(piece, 7, 0, t, row0=3_000, col0=2)
        >>> torch.equal(whole[3_000:8_000, 2:], piece)
        True
    """
    n, m = dest.shape
    if row0 < 0 or col0 < 0 or row0 + n > t.num_embeddings or col0 + m > t.embedding_dim:
        raise ValueError(f"table {t.name!r}: rows [{row0}, {row0 + n}) x columns [{col0}, {col0 + m}) lie outside "
                         f"its {t.num_embeddings} x {t.embedding_dim}")
    for k in range(row0 // BLOCK_ROWS, -(-(row0 + n) // BLOCK_ROWS)):
        lo, hi = k * BLOCK_ROWS, min((k + 1) * BLOCK_ROWS, t.num_embeddings)
        g = torch.Generator().manual_seed(derive_seed(seed, table, k) & _UINT64)
        block = torch.empty(hi - lo, t.embedding_dim).uniform_(t.init_low, t.init_high, generator=g)  # (R, D)
        a, b = max(lo, row0), min(hi, row0 + n)
        dest[a - row0 : b - row0].copy_(block[a - lo : b - lo, col0 : col0 + m])
