"""`Bags`: the jagged id layout that flows through remap -> store -> combine (read from a batch and validated by
`embtables.inputs`), and moving small host data to its device without a synchronisation (`upload`).

The layout is the one `KeyedJaggedTensor` and FBGEMM's table-batched kernels share: features are major, bags
minor. For F features and batch B, `offsets` has F*B + 1 entries and bag (f, b) holds
`values[offsets[f*B + b] : offsets[f*B + b + 1]]`. The per-feature id counts are Python ints (they split the
ids), read from the device once per batch; everything derived from them on the host stays there. Under
`torch.export` they are symbols of the exported program (`embtables.inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, reduce
from typing import Sequence

import torch
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import statically_known_true

from embtables import kernels

_INT64 = torch.iinfo(torch.int64)


@dataclass
class Bags:
    """Jagged ids of F features (logical features or physical lookups) for one batch.

    Args:
        values: (N,) int64 ids, feature-major.
        offsets: (F*B + 1,) int64 bag boundaries into `values`.
        per_sample_weights: (N,) float weight of each id in its bag (as `torch.nn.EmbeddingBag`'s), or None.
        ids_per_feature: F Python ints, the ids of each feature (sum N).
        batch_size: B.
        longest: a bound on the bag lengths known on the host (the longest bag of the batch these bags come
            from; under torch.export the number of ids, which needs no read), or None: `max_length` then reads
            it from the device.
        checked: `(bounds, outside)` when `outside(bounds)` was answered while the batch was read
            (`embtables.inputs`), in the batch's one copy to the host; None otherwise.
    """

    values: Tensor
    offsets: Tensor
    per_sample_weights: Tensor | None
    ids_per_feature: list[int]
    batch_size: int
    longest: int | None = field(default=None, compare=False)
    checked: tuple[tuple[int | None, ...], bool] | None = field(default=None, compare=False, repr=False)

    @property
    def num_features(self) -> int:
        return len(self.ids_per_feature)

    def with_values(self, values: Tensor) -> "Bags":
        """The same bags holding other ids (a remap that maps each id to one id, e.g. a hash)."""
        return Bags(values, self.offsets, self.per_sample_weights, self.ids_per_feature, self.batch_size,
                    self.longest)

    def uploaded(self, device: torch.device, checked: tuple[tuple[int | None, ...], bool] | None) -> "Bags":
        """The bags on `device`, copied without waiting for it (through pinned memory on CUDA), their host facts
        kept and `checked` the range check answered where they were read."""
        def move(t: Tensor) -> Tensor:
            return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)

        weights = None if self.per_sample_weights is None else move(self.per_sample_weights)
        return Bags(move(self.values), move(self.offsets), weights, self.ids_per_feature, self.batch_size,
                    self.longest, checked)

    def lengths(self) -> Tensor:
        """(F, B) bag lengths."""
        return (self.offsets[1:] - self.offsets[:-1]).view(self.num_features, self.batch_size)

    def bag_index(self) -> Tensor:
        """(N,) index f*B + b of the bag each id belongs to."""
        bags = torch.arange(self.offsets.numel() - 1, device=self.values.device)
        return bags.repeat_interleave(self.offsets[1:] - self.offsets[:-1], output_size=self.values.numel())

    def sum_rows(self, rows: Tensor) -> Tensor:
        """Pool per-id rows (N, D) into bags, weighted by `per_sample_weights` when present: -> (B, F*D), feature-major
        blocks as a pooled store would return them (empty bags are zeros)."""
        if self.per_sample_weights is not None:
            rows = rows * self.per_sample_weights.unsqueeze(1).to(rows.dtype)
        F, B, D = self.num_features, self.batch_size, rows.shape[1]
        out = rows.new_zeros(F * B, D).index_add_(0, self.bag_index(), rows)  # (F*B, D)
        return out.view(F, B, D).transpose(0, 1).reshape(B, F * D)  # (B, F*D)

    def outside(self, upper: Sequence[int | None]) -> bool:
        """Whether an id of some feature f lies outside [0, upper[f]) (None: f takes any id). One min/max per
        feature and one sync: about half the cost of comparing every id with a per-id bound; a caller that
        finds a bad id then names it (`method.check_ids_in_range`).

        Example:
            >>> Bags(torch.tensor([7, 8, 9]), torch.tensor([0, 2, 3]), None, [2, 1], 1).outside([9, None])
            False
        """
        if self.checked is not None and self.checked[0] == tuple(upper):
            return self.checked[1]  # answered while the batch was read
        if torch.compiler.is_exporting():
            # a bool read from the ids cannot be in an exported graph: the check becomes an assert of the program,
            # which raises when it runs on a bad id (with this message, not check_ids_in_range's naming the id)
            bad = ids_outside(self.values, self.lengths().sum(1), upper)
            torch._assert_async(~bad[0], "an id is outside [0, num_embeddings) of its table")
            return False
        ops = kernels.ops_for(self.values)
        if ops is not None:  # one pass in C++
            bounds = torch.tensor([-1 if u is None else u for u in upper], dtype=torch.long)
            return bool(ops.outside(self.values.contiguous(), torch.tensor(self.starts()), bounds))
        parts = [(p, u) for p, u in zip(self.values.split(self.ids_per_feature), upper) if u is not None and p.numel()]
        if not parts:
            return False
        bounds = torch.stack([b for p, _ in parts for b in torch.aminmax(p)]).tolist()  # min, max, min, max, ...
        return any(lo < 0 or hi >= u for lo, hi, (_, u) in zip(bounds[::2], bounds[1::2], parts))

    def most_ids(self) -> int:
        """The most ids of a feature, at least 1: the batch of `singletons` that fits every feature's ids. Under
        torch.export the counts are unbacked symbols, which `max` cannot compare: `torch.sym_max` keeps the maximum
        a symbol (eager keeps the builtin: `sym_max` costs about 0.7 us a call on Python ints)."""
        if torch.compiler.is_exporting():
            return reduce(torch.sym_max, self.ids_per_feature, 1)
        return max(max(self.ids_per_feature, default=0), 1)

    def per_id(self, per_feature: Tensor) -> Tensor:
        """Expand a (F,) per-feature tensor to (N,) per-id values."""
        return per_feature.repeat_interleave(self.sizes, output_size=self.values.numel())

    @cached_property
    def sizes(self) -> Tensor:
        """(F,) `ids_per_feature` on the values' device, uploaded once."""
        return upload(self.ids_per_feature, self.values.device)

    def feature_slice(self, start: int, stop: int) -> "Bags":
        """Features [start, stop) as their own Bags (values and offsets rebased, no copy of values)."""
        B = self.batch_size
        lo, hi = sum(self.ids_per_feature[:start]), sum(self.ids_per_feature[:stop])
        return Bags(
            values=self.values[lo:hi],
            offsets=self.offsets[start * B : stop * B + 1] - lo,
            per_sample_weights=None if self.per_sample_weights is None else self.per_sample_weights[lo:hi],
            ids_per_feature=self.ids_per_feature[start:stop],
            batch_size=B,
            longest=self.longest,
        )

    def starts(self) -> list[int]:
        """F + 1 Python ints: where each feature's ids start in `values`, then N."""
        out = [0]
        for c in self.ids_per_feature:
            out.append(out[-1] + c)
        return out

    @property
    def max_length(self) -> int:
        """A bound on the bag lengths: the longest bag (0 when there are none), or for bags derived from others
        (`select`, `stack`, ...) the longest of those. Known on the host when the batch was read; otherwise read
        from the device once (a synchronisation on CUDA) and kept, as Bags are not modified once built."""
        if self.longest is None:
            self.longest = int(self.lengths().max()) if self.offsets.numel() > 1 else 0
        return self.longest

    def select(self, order: Sequence[int]) -> "Bags":
        """Features in `order` (a permutation, or with repeats: one copy per mention), values copied into that
        order by slices, which is cheaper than a gather through a per-id index.

        Example:
            >>> b = Bags(torch.tensor([7, 8, 9]), torch.tensor([0, 2, 3]), None, [2, 1], 1)
            >>> b.select([1, 0, 1]).values.tolist()
            [9, 7, 8, 9]
        """
        starts = self.starts()
        pick = lambda t: torch.cat([t[starts[f] : starts[f + 1]] for f in order])  # noqa: E731
        lengths = self.lengths()[list(order)].reshape(-1)  # (F' * B,)
        offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        weights = None if self.per_sample_weights is None else pick(self.per_sample_weights)
        sizes = [self.ids_per_feature[f] for f in order]
        return Bags(pick(self.values), offsets, weights, sizes, self.batch_size, self.longest)

    def positions(self, order: Sequence[int]) -> Tensor:
        """(N',) where each id of `select(order)` sits in `values` (to regroup rows of copies by logical id).

        Example:
            >>> b = Bags(torch.tensor([7, 8, 9]), torch.tensor([0, 2, 3]), None, [2, 1], 1)
            >>> b.positions([1, 0, 1]).tolist()
            [2, 0, 1, 2]
        """
        starts, dev = self.starts(), self.values.device
        sizes = [self.ids_per_feature[f] for f in order]
        total, before = sum(sizes), [0]
        for c in sizes[:-1]:
            before.append(before[-1] + c)
        shift = upload([starts[f] - b for f, b in zip(order, before)], dev)  # source - destination
        per_copy = shift.repeat_interleave(upload(sizes, dev), output_size=total)
        return torch.arange(total, device=dev) + per_copy

    def singletons(self, batch: int) -> "Bags":
        """Every id in a bag of its own: feature f's ids fill its bags 0..N_f - 1 in order, the bags up to
        `batch` (>= every N_f) stay empty. A pooled lookup of these bags returns one row per id.

        Example:
            >>> b = Bags(torch.tensor([7, 8, 9]), torch.tensor([0, 2, 3]), None, [2, 1], 1)
            >>> b.singletons(2).offsets.tolist()
            [0, 1, 2, 3, 3]
        """
        filled = torch.arange(batch, device=self.values.device) < self.sizes[:, None]  # (F, batch)
        offsets = torch.cat([self.sizes.new_zeros(1), filled.reshape(-1).cumsum(0)])
        longest = min(1, self.values.numel())
        return Bags(self.values, offsets, self.per_sample_weights, self.ids_per_feature, batch, longest)

    def stack(self, groups: Sequence[Sequence[int]]) -> "Bags":
        """One feature per group, holding the bags of all the group's features sample-major: bag b * size + i is
        bag b of the group's i-th feature, and groups with fewer than `size` (the most) features are padded with
        empty bags. Batch B x size. A pooled lookup of group s then returns (B x size, D) rows that view as
        (B, size x D): its features' pooled vectors side by side, with no transposing copy.

        Example:
            >>> b = Bags(torch.tensor([7, 8, 9]), torch.tensor([0, 2, 3, 3]), None, [2, 1, 0], 1)
            >>> s = b.stack([[0, 1], [2]])
            >>> s.batch_size, s.ids_per_feature, s.offsets.tolist(), s.values.tolist()
            (2, [3, 0], [0, 2, 3, 3, 3], [7, 8, 9])
        """
        F, B, dev = self.num_features, self.batch_size, self.values.device
        if [f for g in groups for f in g] != list(range(F)):
            raise ValueError(f"Bags.stack: groups {[list(g) for g in groups]} must list features 0..{F - 1} in order")
        size, N = max(len(g) for g in groups), self.values.numel()
        # member i of group s is feature members[s, i]; feature F is an all-empty stand-in for the padding
        members = upload([[*g, *[F] * (size - len(g))] for g in groups], dev)  # (G, size)
        # one id per bag (Criteo's): a transposition of the ids (N = F B ids and no bag longer than one)
        # (under torch.export N and B are symbols: unless N = F B is provable, the general path, right for any batch)
        if statically_known_true(N == F * B) and self.max_length == 1:
            index = ((members * B)[:, None, :] + torch.arange(B, device=dev)[:, None]).reshape(-1)  # (G B size,)
            bag_lengths = (members < F)[:, None, :].expand(-1, B, -1).reshape(-1).long()
            if N < index.numel():  # padded groups: their bags are empty; N is known, so no mask reads the device
                index = index[torch.nonzero_static(bag_lengths, size=N).squeeze(1)]
        else:
            lengths = torch.cat([self.lengths(), self.lengths().new_zeros(1, B)])  # (F + 1, B)
            starts = torch.cat([self.offsets[:-1].view(F, B), self.offsets.new_zeros(1, B)])  # (F + 1, B)
            bag_lengths = lengths[members].transpose(1, 2).reshape(-1)  # bags in (group, sample, member) order
            # each id's source position: its bag's source start plus its rank within the bag
            rank_base = starts[members].transpose(1, 2).reshape(-1) - (bag_lengths.cumsum(0) - bag_lengths)
            index = torch.arange(N, device=dev) + rank_base.repeat_interleave(bag_lengths, output_size=N)
        offsets = torch.cat([bag_lengths.new_zeros(1), bag_lengths.cumsum(0)])
        weights = None if self.per_sample_weights is None else self.per_sample_weights[index]
        sizes = [sum(self.ids_per_feature[f] for f in g) for g in groups]
        return Bags(self.values[index], offsets, weights, sizes, B * size, self.longest)


def concat(parts: Sequence[Bags]) -> Bags:
    """Concatenate Bags feature-wise (all with the same batch size)."""
    B = parts[0].batch_size
    values = torch.cat([p.values for p in parts])
    shifts, total = [], 0
    for p in parts:
        shifts.append(total)
        total += p.values.numel()
    offsets = torch.cat(
        [p.offsets[:-1] + s for p, s in zip(parts, shifts)] + [parts[-1].offsets[-1:] + shifts[-1]]
    )
    has_w = [p.per_sample_weights is not None for p in parts]
    if any(has_w) and not all(has_w):
        raise ValueError("concat: either every part has weights or none has")
    weights = torch.cat([p.per_sample_weights for p in parts]) if all(has_w) else None  # type: ignore[misc]
    longest = None if any(p.longest is None for p in parts) else max(p.longest for p in parts)  # type: ignore[type-var]
    return Bags(values, offsets, weights, [c for p in parts for c in p.ids_per_feature], B, longest)


def ids_outside(values: Tensor, per_feature: Tensor, bounds: Sequence[int | None]) -> Tensor:
    """(1,) whether an id of feature f lies outside [0, bounds[f]) (None: any id), on the device, without atomics
    nor a read to the host (`embtables.inputs` copies it with the batch's other host values; under torch.export it
    is asserted). Each id's feature is found by a search in the features' ends (`per_feature`: (F,) id counts),
    which stays in bounds whatever the (not yet validated) counts."""
    F, N = per_feature.numel(), values.numel()
    feature = torch.searchsorted(per_feature.cumsum(0), torch.arange(N, device=values.device), right=True)
    feature = feature.clamp_(max=F - 1)
    lo, hi = upload([[_INT64.min if b is None else 0 for b in bounds],
                     [_INT64.max if b is None else b - 1 for b in bounds]], values.device)
    return ((values < lo[feature]) | (values > hi[feature])).any().view(1)


def rows_by_slot(rows: Tensor, position: Tensor, slot: Tensor, num_ids: int, num_slots: int, fill: float) -> Tensor:
    """Regroup physical rows by the logical id they belong to.

    Args:
        rows: (P, D) one row per physical id.
        position: (P,) the logical id (index into the logical values) each row belongs to.
        slot: (P,) its slot among that id's rows, in [0, num_slots); each (id, slot) at most once.
        num_ids: N logical ids; num_slots: S.
        fill: the value of slots no row fills (e.g. 1 before a product, 0 before a sum).

    Returns:
        (N, S, D): entry (i, s) is logical id i's row in slot s. The gather is an `index_select`, whose backward
        is an `index_add` (cheaper on CPU than the accumulating `index_put` of advanced indexing).

    Example:
        >>> rows, position, slot = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1, 0, 1]), torch.tensor([0, 0, 1])
        >>> rows_by_slot(rows, position, slot, num_ids=2, num_slots=2, fill=0.0)[:, :, 0].tolist()
        [[2.0, 0.0], [1.0, 3.0]]
    """
    P = rows.shape[0]
    index = torch.full((num_ids, num_slots), P, dtype=torch.long, device=rows.device)
    index[position, slot] = torch.arange(P, device=rows.device)
    ext = torch.cat([rows, rows.new_full((1, rows.shape[1]), fill)])  # (P + 1, D): the last row fills
    return ext.index_select(0, index.view(-1)).view(num_ids, num_slots, rows.shape[1])


# whether code may read CPU tensors' values on the host (free there: the CPU is the host) to take a path sized by
# the data; tests set it False to run, on the CPU, the paths an accelerator takes (tests/host_reads.py)
CPU_READS_FREE = True


def reads_are_free(t: Tensor) -> bool:
    """Whether reading `t`'s values on the host costs nothing: on the CPU (unless `CPU_READS_FREE` is off), so
    code may size a tensor by its data there; on an accelerator a read makes the host wait for the device."""
    return CPU_READS_FREE and t.device.type == "cpu"


def upload(
    data: Sequence[int] | Sequence[Sequence[int]], device: torch.device | str, dtype: torch.dtype = torch.long
) -> Tensor:
    """A tensor of Python numbers on `device`. On CUDA it goes through pinned memory with a non-blocking copy: a
    copy from ordinary (pageable) host memory makes the host wait for the device's queue, a synchronisation.

    Example:
        >>> upload([3, 1], "cpu").tolist()
        [3, 1]
    """
    host = torch.tensor(data, dtype=dtype, device="cpu", pin_memory=torch.device(device).type == "cuda")
    return host.to(device, non_blocking=True)
