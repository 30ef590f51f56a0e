"""A seeded shuffle buffer and batching over streams of row blocks (tuples of numpy arrays, rows on axis 0).

`ShuffleBuffer` is the block form of the classic streaming shuffle buffer: it holds up to `capacity` rows;
when a block of m rows arrives with the buffer full, m rows drawn uniformly without replacement from the
buffer and the block together leave (in random order) and the block's undrawn rows take the freed slots.
Work per block is O(m) gathers (plus an O(capacity) index draw), never a copy of the whole buffer.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

Rows = tuple[np.ndarray, ...]  # arrays with rows on axis 0, e.g. (labels (n,), dense (n, 13), ids (n, 26))
DEFAULT_BUFFER_ROWS = 1 << 19  # ~140 MB of Criteo rows


def num_rows(rows: Rows) -> int:
    return int(rows[0].shape[0])


def take(rows: Rows, index: np.ndarray | slice) -> Rows:
    return tuple(a[index] for a in rows)


def concat(parts: list[Rows]) -> Rows:
    return tuple(np.concatenate(arrays) for arrays in zip(*parts))


class ShuffleBuffer:
    """Seeded streaming shuffle over row blocks.

    Args:
        capacity: rows held back (larger mixes better; memory grows with it).
        rng: the generator that fixes the order.

    Example:
        >>> buf = ShuffleBuffer(4, np.random.default_rng(0))
        >>> out = [buf.push((np.arange(i, i + 3),)) for i in (0, 3, 6)] + [buf.drain()]
        >>> sorted(np.concatenate([o[0] for o in out if o is not None]).tolist())
        [0, 1, 2, 3, 4, 5, 6, 7, 8]
    """

    def __init__(self, capacity: int, rng: np.random.Generator) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"ShuffleBuffer.capacity must be an int >= 1, got {capacity!r}")
        self.capacity, self.rng = capacity, rng
        self._buf: Rows | None = None
        self._size = 0

    def push(self, rows: Rows) -> Rows | None:
        """Add a block; returns the rows it releases (as many as the block overflows), or None."""
        n = num_rows(rows)
        if self._buf is None:
            self._buf = tuple(np.empty((self.capacity, *a.shape[1:]), dtype=a.dtype) for a in rows)
        fill = min(n, self.capacity - self._size)
        for dst, src in zip(self._buf, rows):
            dst[self._size:self._size + fill] = src[:fill]
        self._size += fill
        if fill == n:
            return None
        rest = take(rows, slice(fill, None))
        m = n - fill
        pick = self.rng.choice(self.capacity + m, size=m, replace=False)  # (m,) pool positions that leave
        from_buf = pick < self.capacity
        out = tuple(np.empty((m, *a.shape[1:]), dtype=a.dtype) for a in rows)
        stay = np.ones(m, dtype=bool)
        stay[pick[~from_buf] - self.capacity] = False
        for o, b, r in zip(out, self._buf, rest):
            o[from_buf] = b[pick[from_buf]]
            o[~from_buf] = r[pick[~from_buf] - self.capacity]
            b[pick[from_buf]] = r[stay]  # the block's rows that stay take the freed slots
        return out

    def drain(self) -> Rows:
        """All rows still held, in random order; the buffer is empty afterwards."""
        if self._buf is None:
            return ()
        out = take(self._buf, self.rng.permutation(self._size))
        self._size = 0
        return out


def batches_of(blocks: Iterator[Rows], batch_size: int) -> Iterator[tuple[Rows, bool]]:
    """Re-cut a stream of row blocks into (rows, full) batches of `batch_size` rows; only the last may be
    partial (full=False). Empty blocks are skipped."""
    pending: list[Rows] = []
    have = 0
    for block in blocks:
        if not block or num_rows(block) == 0:
            continue
        pending.append(block)
        have += num_rows(block)
        if have < batch_size:
            continue
        rows = concat(pending) if len(pending) > 1 else pending[0]
        cut = have - have % batch_size
        for i in range(0, cut, batch_size):
            yield take(rows, slice(i, i + batch_size)), True
        pending = [take(rows, slice(cut, None))] if cut < have else []
        have -= cut
    if have:
        yield (concat(pending) if len(pending) > 1 else pending[0]), False
