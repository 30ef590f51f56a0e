"""The power rule of mixed-dimension embeddings (Ginart et al., ISIT 2021, arXiv:1909.11810) and its budget fit.

With n_u the rows of a table or block u and k_u the lookups per sample that land in it, s_u = n_u / k_u is the
inverse of a row's popularity, and the rule gives d_u = lambda s_u^(-alpha) (floor 1, rounded). `md_solver`
is the reference's solver (tricks/md_embedding_bag.py) in both its forms; `fit_budget` searches lambda (and,
when even the narrowest dims do not fit, a row cap with it) so a plan's bytes meet a budget; `frequency_blocks` cuts frequency-ranked ids
into blocks of similar log-popularity (the paper's blocking). See `embtables.methods.mixed_dim`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from torch import Tensor

from embtables.plan import InfeasibleBudget, largest_within


def round_dim(x: float, power_of_two: bool, multiple: int, max_dim: int | None) -> int:
    d = min(max(1.0, x), 2.0**62)
    d = math.floor(d + 0.5)
    if power_of_two:
        d = 2 ** math.floor(math.log2(d) + 0.5)
    d = max(multiple, multiple * math.floor(d / multiple + 0.5))
    return d if max_dim is None else min(d, max_dim)


def popularity(rows: Sequence[int], queries: Sequence[float], alpha: float) -> list[float]:
    """s^(-alpha) = (k / n)^alpha per block; all ones when every block is unseen (they tie)."""
    w = [(k / n) ** alpha for n, k in zip(rows, queries)]
    return w if max(w) > 0 else [1.0] * len(w)


def md_solver(
    counts: Sequence[int] | Tensor,
    alpha: float,
    d0: int | None = None,
    budget: float | None = None,
    round_to_power_of_two: bool = False,
    *,
    queries: Sequence[float] | Tensor | None = None,
    multiple: int = 1,
    max_dim: int | None = None,
) -> list[int]:
    """Dims by the alpha-power rule d = lambda (n / k)^(-alpha) (see the module docstring for both forms).

    Args:
        counts: (T,) rows n of each table or block (the reference's `n`).
        alpha: temperature >= 0; 0 gives every block the same dim.
        d0: the dim of the most popular block (the "d0" form); exclusive with `budget`.
        budget: total parameters sum n d before rounding (the "budget" form, the reference's `B`).
        round_to_power_of_two: round each dim to 2^round(log2 d) (the reference's `round_dim`).
        queries: (T,) lookups per sample into each block (the reference's `k`); default 1 each.
        multiple: round to a multiple of this, at least one multiple (4 for fbgemm).
        max_dim: clamp to at most this.

    Returns:
        T ints, in the order of `counts`.

    Example:
        >>> md_solver([10, 1000, 100000], alpha=0.5, d0=64)  # 64 * (10 / n)^0.5 = 64, 6.4, 0.64 -> floor 1
        [64, 6, 1]
    """
    rows = [int(n) for n in counts]
    k = [1.0] * len(rows) if queries is None else [float(q) for q in queries]
    if not rows or min(rows) < 1 or len(k) != len(rows) or min(k) < 0:
        raise ValueError("md_solver: counts must be >= 1 and queries >= 0, one of each per table")
    if not alpha >= 0:
        raise ValueError(f"md_solver: alpha must be >= 0, got {alpha}")
    if (d0 is None) == (budget is None):
        raise ValueError("md_solver needs exactly one of d0= or budget=")
    w = popularity(rows, k, alpha)
    lam = d0 / max(w) if d0 is not None else budget / sum(n * x for n, x in zip(rows, w))  # type: ignore[operator]
    return [round_dim(lam * x, round_to_power_of_two, multiple, max_dim) for x in w]


def frequency_blocks(n: int, blocks: int) -> list[int]:
    """Block starts of ids 0..n-1 ranked by frequency: 0 and ceil(n^(i/K)) for i = 1..K-1, deduplicated.

    Example:
        >>> frequency_blocks(10_000, 4)
        [0, 10, 100, 1000]
    """
    cuts = {math.ceil(round(n ** (i / blocks), 9)) for i in range(1, blocks)}
    return [0] + sorted(c for c in cuts if 0 < c < n)


def fit_budget(
    dims_at: Callable[[float, int], list[int]],
    bytes_at: Callable[[list[int], int], int],
    rows: Sequence[int],
    floor: int,
    budget: float,
    full: int,
) -> tuple[list[int], int]:
    """(dims, row cap R) of the blocks of `rows` ids within budget * full bytes.

    `dims_at(lam, R)` is the rule's dims with every block's rows capped at R (its popularity then counts the
    capped rows, as the DLRM reference applies `--md-flag` after `--max-ind-range`), `bytes_at(dims, R)` their
    bytes; both grow with lam and R. Without a cap (R = the largest block) lambda is the largest that fits (a
    bisection in log lambda); when that uses under 0.9 of the budget (one block's next dim step is too large,
    as with multiples of 4), the next step's dims are kept and every block hashed to the largest R that fits.
    When even the floor dims do not fit, rows are capped, and R and lambda are solved together: for each R,
    lambda is the largest that keeps the capped blocks (the largest) at the floor dim, so smaller blocks stay as
    much wider as the rule says, and R is the largest whose bytes fit.
    """
    limit, most = budget * full, max(rows, default=1)
    if not rows:
        if bytes_at([], most) > limit:
            raise InfeasibleBudget("mixed_dim", budget, 1.0, "every table keeps its dim")
        return [], most

    def largest_lambda(cap: int, ok: Callable[[list[int]], bool]) -> tuple[float, float]:
        """(largest lambda whose dims are ok, the next lambda step above it)."""
        lo, hi = 1e-9, 1e9  # dims are at their floor at lo and at their cap at hi for any table size here
        if ok(dims_at(hi, cap)):
            return hi, hi
        for _ in range(200):  # bisection in log(lambda)
            mid = math.sqrt(lo * hi)
            if mid in (lo, hi):
                break
            lo, hi = (mid, hi) if ok(dims_at(mid, cap)) else (lo, mid)
        return lo, hi

    if bytes_at(dims_at(0.0, most), most) <= limit:  # the floor fits without a cap: lambda alone meets the budget
        lo, hi = largest_lambda(most, lambda d: bytes_at(d, most) <= limit)
        below, above = dims_at(lo, most), dims_at(hi, most)
        if bytes_at(below, most) >= 0.9 * limit:
            return below, most
        # one block's next dim step is too large (coarse multiples): take it and hash every block to R rows
        cap = largest_within(lambda c: bytes_at(above, c), 1, most, limit)
        return (below, most) if cap is None else (above, cap)

    def dims_of(cap: int) -> list[int]:
        big = [i for i, n in enumerate(rows) if n > cap]
        return dims_at(largest_lambda(cap, lambda d: all(d[i] <= floor for i in big))[0], cap)

    cap = largest_within(lambda c: bytes_at(dims_of(c), c), 1, most - 1, limit)
    if cap is None:
        smallest = bytes_at(dims_at(0.0, 1), 1) / full
        raise InfeasibleBudget("mixed_dim", budget, smallest, "narrowest dims, one row per block")
    return dims_of(cap), cap
