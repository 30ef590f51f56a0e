"""Reading a batch into validated `Bags`: from a `KeyedJaggedTensor` (`bags_from_kjt`, the collections) or from
`torch.nn.EmbeddingBag`'s forward arguments (`bags_from_tensors`, the single-table drop-ins).

A batch needs a few of its values on the host: the ids of each feature (Python ints that split the ids), whether
it is well formed (no negative bag length, offsets from 0 to the number of ids), its longest bag (methods take a
faster path when every bag holds one id) and whether every id lies in its table (`check_ids_in_range`). On CUDA
every read of a device value makes the host wait until the device has run all the work queued before it, so these
are computed on the device into one small tensor and copied to the host together: one synchronisation per batch
(`_to_host`). More is read only when something is wrong, to name the bad value. On the CPU nothing waits
(`reads_are_free`), and the range check is cheapest one feature at a time (`Bags.outside`, in C++ or PyTorch), so
there it is left to the method's remap. A batch given on the CPU to a collection on an accelerator is read on the
CPU and uploaded after (`Collection._from_host`): then the host does not wait at all.

torchrec's `KeyedJaggedTensor.offsets()`, `length_per_key()`, `permute()` and `to_dict()` are not called: they
compute offsets with FBGEMM operators, which FBGEMM's CPU build (fbgemm-gpu-cpu) lacks for CUDA tensors, and read
lengths on the host once more. Offsets come from the lengths' cumulative sum, and features are selected by slices
at host offsets.

Under `torch.export` (`torch.compiler.is_exporting()`) the host values are symbols of the exported program: the
checks become its runtime asserts (`_exported_bags`, `Bags.outside`), and the one-id-per-bag paths are not traced.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchrec import KeyedJaggedTensor

from embtables.bags import Bags, ids_outside, reads_are_free


def _to_host(parts: Sequence[Tensor]) -> list[list[int]]:
    """1-D integer tensors -> their values as Python ints, in one device-to-host copy (one synchronisation)."""
    flat = torch.cat([p.reshape(-1).long() for p in parts]).tolist() if parts else []
    out, at = [], 0
    for p in parts:
        out.append(flat[at : at + p.numel()])
        at += p.numel()
    return out


def _checks_ranges(values: Tensor, upper: Sequence[int | None] | None) -> bool:
    """Whether the range check goes into the batch's one copy: where reads are not free and some feature has a
    bound."""
    return upper is not None and any(u is not None for u in upper) and not reads_are_free(values)


def _runs(index: Sequence[int]) -> list[tuple[int, int]]:
    """[start, stop) runs of consecutive entries of `index` (a prefix of keys is one run: one slice)."""
    runs: list[tuple[int, int]] = []
    for i in index:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _slices(t: Tensor, starts: Sequence[int], runs: Sequence[tuple[int, int]]) -> Tensor:
    """The parts [starts[a], starts[b]) of `t` for each run (a, b), concatenated."""
    parts = [t[starts[a] : starts[b]] for a, b in runs]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def bags_from_kjt(
    kjt: KeyedJaggedTensor, feature_names: Sequence[str], where: str, upper: Sequence[int | None] | None = None
) -> Bags:
    """Select and order `feature_names` from a KJT and validate it, reading the host values it needs in one copy.

    Args:
        kjt: raw ids, any key order; keys not in `feature_names` are ignored (as torchrec does).
        feature_names: the F features to keep, in output order.
        where: name of the calling module, for error messages.
        upper: per feature, the exclusive upper bound of its ids (None: any id), as the method checks them
            (`Method.id_upper`); None when nothing is checked. Off the CPU it is answered in the same copy
            (`Bags.checked`); on the CPU the method's remap checks it (`Bags.outside`).

    Raises:
        TypeError: the input is not a KJT, or its ids are not integers, or its weights are not floats.
        ValueError: a configured feature is missing, a bag length is negative (offsets decrease), the offsets
            do not end at the number of ids, or weights have the wrong length.
    """
    if not isinstance(kjt, KeyedJaggedTensor):
        raise TypeError(f"{where}: expected a torchrec.KeyedJaggedTensor, got {type(kjt).__name__}")
    keys = list(kjt.keys())
    missing = [f for f in feature_names if f not in keys]
    if missing:
        raise ValueError(f"{where}: features {missing} are configured but missing from the input (it has {keys})")
    if kjt.variable_stride_per_key():
        raise ValueError(f"{where}: variable batch size per feature is not supported")
    values = kjt.values()
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise TypeError(f"{where}: ids must be integers, got dtype {values.dtype}")
    values = values.long()
    weights = kjt.weights_or_none()
    if weights is not None:
        if not weights.is_floating_point():
            raise TypeError(f"{where}: weights must be floating point, got {weights.dtype}")
        if weights.numel() != values.numel():
            raise ValueError(f"{where}: {weights.numel()} weights for {values.numel()} ids")
    K, B, N = len(keys), kjt.stride(), values.numel()
    lengths = kjt.lengths()
    if lengths.numel() != K * B:
        raise ValueError(f"{where}: lengths has {lengths.numel()} entries, expected keys x batch = {K} x {B}")
    grid = lengths.view(K, B)
    per_key = grid.sum(1)
    shortest, longest = grid.aminmax(dim=1) if B else (per_key, per_key)  # (K,) each; zeros when B = 0
    given = kjt.offsets_or_none()
    pick = [keys.index(f) for f in feature_names]
    if torch.compiler.is_exporting():
        return _exported_bags(values, weights, lengths, given, per_key, shortest, pick, B)
    parts = [per_key, shortest, longest] + ([given[:1], given[-1:]] if given is not None else [])
    check = _checks_ranges(values, upper)
    if check:
        assert upper is not None
        bound = dict(zip(pick, upper))
        parts.append(ids_outside(values, per_key, [bound.get(k) for k in range(K)]))
    host = _to_host(parts)
    sizes, low, high = host[:3]
    first, last = host[3] + host[4] if given is not None else [0, sum(sizes)]

    for f, k in zip(feature_names, pick):
        if low[k] < 0:
            i = int((grid[k] < 0).nonzero()[0, 0])  # an error: reading more to name it is fine
            raise ValueError(f"{where}: offsets of feature {f!r} decrease at bag {i} (length {int(grid[k, i])})")
    if first != 0 or last != N:
        raise ValueError(f"{where}: offsets must start at 0 and end at the number of ids {N}, got {first}..{last}")
    checked = (tuple(upper or ()), bool(host[-1][0])) if check else None
    longest_bag = max((high[k] for k in pick), default=0)
    return _picked(values, weights, lengths, given, sizes, pick, B, longest_bag, checked)


def _picked(
    values: Tensor,
    weights: Tensor | None,
    lengths: Tensor,
    given: Tensor | None,
    sizes: list[int],
    pick: list[int],
    B: int,
    longest: int,
    checked: tuple[tuple[int | None, ...], bool] | None,
) -> Bags:
    """The Bags of the keys `pick` (in that order) of a validated batch, from its per-key id counts `sizes`."""
    K = len(sizes)
    if pick == list(range(K)):
        offsets = given.long() if given is not None else torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).long()
        return Bags(values, offsets, weights, sizes, B, longest, checked)
    starts = [0]
    for n in sizes:
        starts.append(starts[-1] + n)
    runs = _runs(pick)
    picked = _slices(lengths, [k * B for k in range(K + 1)], runs).long()  # (F B,) lengths in feature order
    offsets = torch.cat([picked.new_zeros(1), picked.cumsum(0)])
    w = None if weights is None else _slices(weights, starts, runs)
    return Bags(_slices(values, starts, runs), offsets, w, [sizes[k] for k in pick], B, longest, checked)


def _exported_bags(
    values: Tensor,
    weights: Tensor | None,
    lengths: Tensor,
    given: Tensor | None,
    per_key: Tensor,
    shortest: Tensor,
    pick: list[int],
    B: int,
) -> Bags:
    """`bags_from_kjt` under `torch.export`. The values read to the host are unbacked symbols there, and a Python
    branch on one cannot be traced: each check is a `torch._check` instead, which export keeps as an assert of the
    program (it raises RuntimeError on a bad batch, naming the failed expression rather than the feature). The
    range check is left to the method's remap, as on the CPU: `Bags.outside` asserts it in the graph."""
    N = values.numel()
    parts = [per_key, shortest] + ([given[:1], given[-1:]] if given is not None else [])
    host = _to_host(parts)
    sizes, low = host[:2]
    for k in pick:
        torch._check(low[k] >= 0, lambda: "bags_from_kjt: a bag length is negative (offsets decrease)")
    for n in sizes:  # counts are sizes (the lengths imply it, export cannot see it): without, unified fails to trace
        torch._check(n >= 0)
    torch._check(sum(sizes) == N, lambda: "bags_from_kjt: the lengths do not sum to the number of ids")
    if given is not None:
        torch._check(host[2][0] == 0, lambda: "bags_from_kjt: offsets must start at 0")
        torch._check(host[3][0] == N, lambda: "bags_from_kjt: offsets must end at the number of ids")
    # a bound on the bag lengths known without a read, as `Bags.longest` needs: the number of ids. Only a batch of
    # at most one id (a static N <= 1) takes a method's one-id-per-bag path; the general path holds for any batch
    return _picked(values, weights, lengths, given, sizes, pick, B, N, None)


def bags_from_tensors(
    input: Tensor,
    offsets: Tensor | None,
    per_sample_weights: Tensor | None,
    include_last_offset: bool,
    where: str,
    upper: Sequence[int | None] | None = None,
) -> Bags:
    """One feature's Bags from `torch.nn.EmbeddingBag`'s forward arguments, validated like torch does, with the
    host values it needs (offsets' first, largest and last value, whether they decrease, the range check as in
    `bags_from_kjt`'s `upper`) read in one copy."""
    if input.is_floating_point() or input.dtype == torch.bool:
        raise TypeError(f"{where}: input must hold integer ids, got dtype {input.dtype}")
    check = _checks_ranges(input, upper)

    def ranges(v: Tensor) -> list[Tensor]:  # the range check, in the same copy
        return [ids_outside(v, v.new_full((1,), v.numel()), upper or ())] if check else []

    if input.dim() == 2:
        if offsets is not None:
            raise ValueError(f"{where}: offsets must be None when input is 2-D (B, L)")
        B, L = input.shape
        values = input.reshape(-1).long()
        full_offsets = torch.arange(B + 1, device=input.device) * L  # bag b starts at b L
        if per_sample_weights is not None and per_sample_weights.shape != input.shape:
            raise ValueError(f"{where}: per_sample_weights has shape {tuple(per_sample_weights.shape)}, input {tuple(input.shape)}")
        host = _to_host(ranges(values))
        longest = L
    elif input.dim() == 1:
        if offsets is None:
            raise ValueError(f"{where}: offsets are required when input is 1-D")
        if offsets.dim() != 1 or offsets.is_floating_point():
            raise TypeError(f"{where}: offsets must be a 1-D integer tensor")
        values, N = input.long(), input.numel()
        offsets = offsets.long()
        full_offsets = offsets if include_last_offset else torch.cat([offsets, offsets.new_full((1,), N)])
        if full_offsets.numel() < 1:
            raise ValueError(f"{where}: offsets[0] must be 0")
        steps = full_offsets.diff()
        facts = torch.stack([full_offsets[0], full_offsets.max(), full_offsets[-1],
                             steps.min() if steps.numel() else steps.new_zeros(()),
                             steps.max() if steps.numel() else steps.new_zeros(())])
        host = _to_host([facts] + ranges(values))
        first, largest, last, smallest_step, longest = host.pop(0)
        if first != 0:
            raise ValueError(f"{where}: offsets[0] must be 0")
        if largest > N:
            raise ValueError(f"{where}: offset {largest} is beyond the last offset, the number of ids {N}")
        if smallest_step < 0:
            i = int((steps < 0).nonzero()[0, 0])
            raise ValueError(f"{where}: offsets must be non-decreasing; offsets[{i + 1}] < offsets[{i}]")
        if last != N:
            raise ValueError(f"{where}: the last offset {last} must equal the number of ids {N}")
        if per_sample_weights is not None and per_sample_weights.shape != input.shape:
            raise ValueError(f"{where}: per_sample_weights has {per_sample_weights.numel()} entries for {N} ids")
    else:
        raise ValueError(f"{where}: input must be 1-D (with offsets) or 2-D (B, L), got {input.dim()}-D")
    weights = None if per_sample_weights is None else per_sample_weights.reshape(-1)
    if weights is not None and not weights.is_floating_point():
        raise TypeError(f"{where}: per_sample_weights must be floating point")
    checked = (tuple(upper or ()), bool(host[0][0])) if check else None
    return Bags(values, full_offsets, weights, [values.numel()], full_offsets.numel() - 1, max(longest, 0), checked)
