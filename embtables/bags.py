"""`Bags`: the jagged id layout that flows through remap -> store -> combine, and its validated construction.

The layout is the one `KeyedJaggedTensor` and FBGEMM's table-batched kernels share: features are major, bags
minor. For F features and batch B, `offsets` has F*B + 1 entries and bag (f, b) holds
`values[offsets[f*B + b] : offsets[f*B + b + 1]]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import torch
from torch import Tensor
from torchrec import KeyedJaggedTensor

from embtables import kernels


@dataclass
class Bags:
    """Jagged ids of F features (logical features or physical lookups) for one batch.

    Args:
        values: (N,) int64 ids, feature-major.
        offsets: (F*B + 1,) int64 bag boundaries into `values`.
        per_sample_weights: (N,) float weight of each id in its bag (as `torch.nn.EmbeddingBag`'s), or None.
        ids_per_feature: F Python ints, the ids of each feature (sum N).
        batch_size: B.
    """

    values: Tensor
    offsets: Tensor
    per_sample_weights: Tensor | None
    ids_per_feature: list[int]
    batch_size: int

    @property
    def num_features(self) -> int:
        return len(self.ids_per_feature)

    def with_values(self, values: Tensor) -> "Bags":
        """The same bags holding other ids (a remap that maps each id to one id, e.g. a hash)."""
        return Bags(values, self.offsets, self.per_sample_weights, self.ids_per_feature, self.batch_size)

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
        ops = kernels.ops_for(self.values)
        if ops is not None:  # one pass in C++
            bounds = torch.tensor([-1 if u is None else u for u in upper], dtype=torch.long)
            return bool(ops.outside(self.values.contiguous(), torch.tensor(self.starts()), bounds))
        parts = [(p, u) for p, u in zip(self.values.split(self.ids_per_feature), upper) if u is not None and p.numel()]
        if not parts:
            return False
        bounds = torch.stack([b for p, _ in parts for b in torch.aminmax(p)]).tolist()  # min, max, min, max, ...
        return any(lo < 0 or hi >= u for lo, hi, (_, u) in zip(bounds[::2], bounds[1::2], parts))

    def per_id(self, per_feature: Tensor) -> Tensor:
        """Expand a (F,) per-feature tensor to (N,) per-id values."""
        sizes = torch.tensor(self.ids_per_feature, device=self.values.device)
        return per_feature.repeat_interleave(sizes, output_size=self.values.numel())

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
        )

    def starts(self) -> list[int]:
        """F + 1 Python ints: where each feature's ids start in `values`, then N."""
        out = [0]
        for c in self.ids_per_feature:
            out.append(out[-1] + c)
        return out

    @cached_property
    def max_length(self) -> int:
        """The longest bag (0 when there are none); computed once, as Bags are not modified once built."""
        return int(self.lengths().max()) if self.offsets.numel() > 1 else 0

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
        return Bags(pick(self.values), offsets, weights, [self.ids_per_feature[f] for f in order], self.batch_size)

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
        shift = torch.tensor([starts[f] - b for f, b in zip(order, before)], device=dev)  # source - destination
        per_copy = shift.repeat_interleave(torch.tensor(sizes, device=dev), output_size=total)
        return torch.arange(total, device=dev) + per_copy

    def singletons(self, batch: int) -> "Bags":
        """Every id in a bag of its own: feature f's ids fill its bags 0..N_f - 1 in order, the bags up to
        `batch` (>= every N_f) stay empty. A pooled lookup of these bags returns one row per id.

        Example:
            >>> b = Bags(torch.tensor([7, 8, 9]), torch.tensor([0, 2, 3]), None, [2, 1], 1)
            >>> b.singletons(2).offsets.tolist()
            [0, 1, 2, 3, 3]
        """
        sizes = torch.tensor(self.ids_per_feature, device=self.values.device)
        filled = torch.arange(batch, device=sizes.device) < sizes[:, None]  # (F, batch)
        offsets = torch.cat([sizes.new_zeros(1), filled.reshape(-1).cumsum(0)])
        return Bags(self.values, offsets, self.per_sample_weights, self.ids_per_feature, batch)

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
        members = torch.tensor([[*g, *[F] * (size - len(g))] for g in groups], device=dev)  # (G, size)
        if N == F * B and self.max_length == 1:  # one id per bag (Criteo's): a transposition of the ids
            index = ((members * B)[:, None, :] + torch.arange(B, device=dev)[:, None]).reshape(-1)  # (G B size,)
            bag_lengths = (members < F)[:, None, :].expand(-1, B, -1).reshape(-1).long()
            if N < index.numel():  # padded groups: their bags are empty
                index = index[bag_lengths.bool()]
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
        return Bags(self.values[index], offsets, weights, sizes, B * size)


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
    return Bags(values, offsets, weights, [c for p in parts for c in p.ids_per_feature], B)


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


def bags_from_kjt(kjt: KeyedJaggedTensor, feature_names: Sequence[str], where: str) -> Bags:
    """Select and order `feature_names` from a KJT and validate it.

    Args:
        kjt: raw ids, any key order; keys not in `feature_names` are ignored (as torchrec does).
        feature_names: the F features to keep, in output order.
        where: name of the calling module, for error messages.

    Raises:
        TypeError: the input is not a KJT, or its ids are not integers, or its weights are not floats.
        ValueError: a configured feature is missing, a bag length is negative (offsets decrease), the offsets
            do not end at the number of ids, or weights have the wrong length.
    """
    if not isinstance(kjt, KeyedJaggedTensor):
        raise TypeError(f"{where}: expected a torchrec.KeyedJaggedTensor, got {type(kjt).__name__}")
    keys = kjt.keys()
    missing = [f for f in feature_names if f not in keys]
    if missing:
        raise ValueError(f"{where}: features {missing} are configured but missing from the input (it has {keys})")
    if kjt.variable_stride_per_key():
        raise ValueError(f"{where}: variable batch size per feature is not supported")
    if list(keys) != list(feature_names):
        kjt = kjt.permute([keys.index(f) for f in feature_names])
    values = kjt.values()
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise TypeError(f"{where}: ids must be integers, got dtype {values.dtype}")
    values = values.long()
    F, B = len(feature_names), kjt.stride()
    lengths = kjt.lengths()
    if lengths.numel() != F * B:
        raise ValueError(f"{where}: lengths has {lengths.numel()} entries, expected features x batch = {F} x {B}")
    negative = lengths < 0
    if bool(negative.any()):
        i = int(negative.nonzero()[0])
        raise ValueError(
            f"{where}: offsets of feature {feature_names[i // B]!r} decrease at bag {i % B} (length {int(lengths[i])})"
        )
    offsets = kjt.offsets().long()
    if int(offsets[0]) != 0 or int(offsets[-1]) != values.numel():
        raise ValueError(
            f"{where}: offsets must start at 0 and end at the number of ids {values.numel()}, "
            f"got {int(offsets[0])}..{int(offsets[-1])}"
        )
    weights = kjt.weights_or_none()
    if weights is not None:
        if not weights.is_floating_point():
            raise TypeError(f"{where}: weights must be floating point, got {weights.dtype}")
        if weights.numel() != values.numel():
            raise ValueError(f"{where}: {weights.numel()} weights for {values.numel()} ids")
    sizes = lengths.view(F, B).sum(1).tolist()
    return Bags(values, offsets, weights, sizes, B)


def bags_from_tensors(
    input: Tensor, offsets: Tensor | None, per_sample_weights: Tensor | None, include_last_offset: bool, where: str
) -> Bags:
    """One feature's Bags from `torch.nn.EmbeddingBag`'s forward arguments, validated like torch does."""
    if input.is_floating_point() or input.dtype == torch.bool:
        raise TypeError(f"{where}: input must hold integer ids, got dtype {input.dtype}")
    if input.dim() == 2:
        if offsets is not None:
            raise ValueError(f"{where}: offsets must be None when input is 2-D (B, L)")
        B, L = input.shape
        values = input.reshape(-1).long()
        full_offsets = torch.arange(0, B * L + 1, L, device=input.device) if L > 0 else torch.zeros(B + 1, dtype=torch.long, device=input.device)
        if per_sample_weights is not None and per_sample_weights.shape != input.shape:
            raise ValueError(f"{where}: per_sample_weights has shape {tuple(per_sample_weights.shape)}, input {tuple(input.shape)}")
    elif input.dim() == 1:
        if offsets is None:
            raise ValueError(f"{where}: offsets are required when input is 1-D")
        if offsets.dim() != 1 or offsets.is_floating_point():
            raise TypeError(f"{where}: offsets must be a 1-D integer tensor")
        values = input.long()
        offsets = offsets.long()
        if include_last_offset:
            full_offsets = offsets
        else:
            full_offsets = torch.cat([offsets, offsets.new_tensor([values.numel()])])
        if full_offsets.numel() < 1 or int(full_offsets[0]) != 0:
            raise ValueError(f"{where}: offsets[0] must be 0")
        if int(full_offsets.max()) > values.numel():
            raise ValueError(f"{where}: offset {int(full_offsets.max())} is beyond the last offset, the number of ids {values.numel()}")
        if bool((full_offsets[1:] < full_offsets[:-1]).any()):
            i = int((full_offsets[1:] < full_offsets[:-1]).nonzero()[0])
            raise ValueError(f"{where}: offsets must be non-decreasing; offsets[{i + 1}] < offsets[{i}]")
        if int(full_offsets[-1]) != values.numel():
            raise ValueError(f"{where}: the last offset {int(full_offsets[-1])} must equal the number of ids {values.numel()}")
        if per_sample_weights is not None and per_sample_weights.shape != input.shape:
            raise ValueError(f"{where}: per_sample_weights has {per_sample_weights.numel()} entries for {values.numel()} ids")
    else:
        raise ValueError(f"{where}: input must be 1-D (with offsets) or 2-D (B, L), got {input.dim()}-D")
    weights = None if per_sample_weights is None else per_sample_weights.reshape(-1)
    if weights is not None and not weights.is_floating_point():
        raise TypeError(f"{where}: per_sample_weights must be floating point")
    return Bags(values, full_offsets, weights, [values.numel()], full_offsets.numel() - 1)
