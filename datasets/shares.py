"""Reading a split on N processes: each reads only its own units (Parquet row groups) and yields its share of
every global batch.

    part = Part(rank, world, exchange=all_gather)      # e.g. `embtables.app.distributed.Ranks.part()`
    for share in data.batches("train", B, shuffle=True, seed=epoch, part=part):   # (B / N) rows each
        ...

The loader deals a split's units to the processes (unit i of its seeded unit order to rank i mod N), and each
rank streams its own rows in shares of s = B / N rows. Global batch k is the ranks' k-th shares side by side, in
rank order. The ranks hold different numbers of rows R_r, so only the first `full_steps` = min_r floor(R_r / s)
global batches come straight from the ranks' streams; the rows then left on each rank go to every rank
(`Part.exchange`, one all-gather per pass over the split), and their concatenation in rank order is cut into
global batches of B rows, each shared out like the others. Every row is read by one rank only, and the global
batches (their rows and order) are fixed by (seed, N): `global_batches` rebuilds them in one process, which is
how a run on N processes is checked against one. For N = 1 this is the loader's ordinary order.

A short last share is padded (`pad=True`, for evaluation: every rank must run the same shapes) with copies of
its global batch's first row labelled `PAD_LABEL`, which no real row has; drop those rows from metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from torchrec import KeyedJaggedTensor

from embtables.datasets.batch import Batch

PAD_LABEL = -1.0  # the label of a padding row (clicks are 0 or 1)


@dataclass(frozen=True)
class Part:
    """Which share of a split this process reads.

    Args:
        rank: this process's rank, in [0, world).
        world: the number of processes N; B must be a multiple of it.
        exchange: all-gather among the processes: this rank's object -> every rank's, in rank order (called once
            per pass over a split, by every rank); needed when world > 1.
    """

    rank: int = 0
    world: int = 1
    exchange: Callable[[Any], list[Any]] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"Part: rank must lie in [0, world={self.world}), got {self.rank}")
        if self.world > 1 and self.exchange is None:
            raise ValueError(f"Part: {self.world} processes need an exchange (an all-gather) for their last rows")


class RankStreams(Protocol):
    """What a data folder gives `shares`: per rank listed, its stream of shares (the last may be short), and
    the rows every rank reads."""

    def rank_streams(self, split: str, share_rows: int, world: int, ranks: Sequence[int], shuffle: bool, seed: int,
                     **options: Any) -> tuple[list[Iterator[Batch]], list[int]]: ...


def select_rows(kjt: KeyedJaggedTensor, rows: torch.Tensor) -> KeyedJaggedTensor:
    """The bags of rows `rows` (in that order, repeats allowed) of every feature of `kjt`."""
    F, B = len(kjt.keys()), kjt.stride()
    starts = kjt.offsets()[:-1].view(F, B)[:, rows].reshape(-1)  # (F * b,)
    lengths = kjt.lengths().view(F, B)[:, rows].reshape(-1)
    total = int(lengths.sum())
    # position i of the output reads values[starts[bag] + i - (first output position of bag)]
    first = torch.cumsum(lengths, 0) - lengths
    gather = torch.arange(total) + torch.repeat_interleave(starts - first, lengths, output_size=total)
    weights = kjt.weights_or_none()
    return KeyedJaggedTensor(kjt.keys(), kjt.values()[gather], weights=None if weights is None else weights[gather],
                             lengths=lengths, stride=rows.numel())


def take_rows(batch: Batch, rows: torch.Tensor) -> Batch:
    """Rows `rows` of a batch, in that order."""
    return Batch(batch.dense[rows], select_rows(batch.sparse, rows), batch.labels[rows])


def cat_batches(batches: Sequence[Batch]) -> Batch:
    """Batches with the same keys, one after another as one batch."""
    if len(batches) == 1:
        return batches[0]
    keys = batches[0].sparse.keys()
    F = len(keys)
    # feature-major: per feature, each batch's bags in turn
    lengths = torch.cat([b.sparse.lengths().view(F, -1) for b in batches], dim=1).reshape(-1)
    per_key = [b.sparse.lengths().view(F, -1).sum(1).tolist() for b in batches]
    parts = [list(b.sparse.values().split(n)) for b, n in zip(batches, per_key)]
    values = torch.cat([p[f] for f in range(F) for p in parts])
    weights = None
    if batches[0].sparse.weights_or_none() is not None:
        w = [list(b.sparse.weights().split(n)) for b, n in zip(batches, per_key)]
        weights = torch.cat([p[f] for f in range(F) for p in w])
    kjt = KeyedJaggedTensor(keys, values, weights=weights, lengths=lengths, stride=sum(b.batch_size for b in batches))
    return Batch(torch.cat([b.dense for b in batches]), kjt, torch.cat([b.labels for b in batches]))


def share_of(batch: Batch, rank: int, world: int, pad: bool) -> Batch:
    """Rank `rank`'s rows of a global batch of n rows: [r s, (r + 1) s) with s = ceil(n / N); with `pad`, filled
    up to s rows with copies of row 0 labelled `PAD_LABEL`."""
    n = batch.batch_size
    size = -(-n // world)
    rows = torch.arange(min(rank * size, n), min((rank + 1) * size, n))  # empty for a rank past the end
    short = size - rows.numel()
    if not pad or short == 0:
        return take_rows(batch, rows)
    out = take_rows(batch, torch.cat([rows, rows.new_zeros(short)]))
    out.labels[rows.numel():] = PAD_LABEL
    return out


def shares(streams: Sequence[Iterator[Batch]], ranks: Sequence[int], rows: Sequence[int], world: int,
           exchange: Callable[[list[Batch | None]], list[Batch | None]], batch_size: int, drop_last: bool,
           pad: bool) -> Iterator[list[Batch]]:
    """Per global batch, the shares of `ranks` (see the module docstring).

    Args:
        streams: per rank of `ranks`, its shares of `batch_size / world` rows (the last may be short).
        ranks: the ranks read here: this process's one, or all of them (`global_batches`).
        rows: R_r, the rows of every rank.
        exchange: the leftover batch (or None) of each rank of `ranks` -> every rank's, in rank order.
        batch_size: B of a global batch.
        drop_last: drop the last global batch when it is short.
        pad: pad short shares (see `share_of`).
    """
    s = batch_size // world
    full = min(r // s for r in rows)
    for _ in range(full):
        yield [next(st) for st in streams]
    left = [list(st) for st in streams]
    everyone = [b for b in exchange([cat_batches(b) if b else None for b in left]) if b is not None]
    if not everyone:
        return
    merged = cat_batches(everyone)
    n = merged.batch_size
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if stop - start < batch_size and drop_last:
            return
        whole = take_rows(merged, torch.arange(start, stop))
        yield [share_of(whole, r, world, pad) for r in ranks]


def _rank_streams(data: RankStreams, split: str, batch_size: int, world: int, ranks: Sequence[int], shuffle: bool,
                  seed: int, options: dict[str, Any]) -> tuple[list[Iterator[Batch]], list[int]]:
    """`data.rank_streams` for global batches of `batch_size`, refused unless the `world` processes share it."""
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {world} processes: each reads an "
                         "equal share of every batch")
    return data.rank_streams(split, batch_size // world, world, ranks, shuffle, seed, **options)


def part_batches(data: RankStreams, split: str, batch_size: int, part: Part, shuffle: bool, seed: int,
                 drop_last: bool, pad: bool, **options: Any) -> Iterator[Batch]:
    """This process's shares of `split`'s global batches (what `data.batches(..., part=part)` returns)."""
    streams, rows = _rank_streams(data, split, batch_size, part.world, [part.rank], shuffle, seed, options)

    def swap(mine: list[Batch | None]) -> list[Batch | None]:
        return part.exchange(mine[0]) if part.exchange is not None else mine

    return (one for one, in shares(streams, [part.rank], rows, part.world, swap, batch_size, drop_last, pad))


def global_batches(data: RankStreams, split: str, batch_size: int, world: int, shuffle: bool = False,
                   seed: int = 0, drop_last: bool = False, **options: Any) -> Iterator[Batch]:
    """The global batches N = `world` processes read with `data.batches(..., part=Part(r, N, ...))`, built in one
    process: a run on N processes equals a one-process run fed these.

    Example:
        >>> import tempfile
        >>> from embtables.datasets.synthetic import synth_criteo
        >>> from embtables.datasets.loader import CriteoData
        >>> d = tempfile.mkdtemp(); _ = synth_criteo(d, rows=1000, seed=0, scale=1e-4, min_rows=10, part_rows=300)
        >>> [b.batch_size for b in global_batches(CriteoData(d), "val", 40, world=2)]
        [40, 40, 20]
    """
    streams, rows = _rank_streams(data, split, batch_size, world, range(world), shuffle, seed, options)
    for per_rank in shares(streams, range(world), rows, world, lambda left: left, batch_size, drop_last, False):
        yield cat_batches([b for b in per_rank if b.batch_size])
