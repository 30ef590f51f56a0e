"""Complementary partitions of [0, n) by mixed radix: the arithmetic behind `qr` (Shi et al., KDD 2020).

An id in [0, n) written in radices (b_0, ..., b_{k-1}) with b_0 * ... * b_{k-1} >= n has digits

    digit_j(id) = (id // p_j) mod b_j,      p_j = b_{j+1} * ... * b_{k-1}

computed in integer arithmetic (exact for every int64; the DLRM reference's float division is wrong above
2^24). The representation is unique below the product of the radices, so distinct ids get distinct digit
tuples: the k partitions {ids with digit_j = v} are complementary. The partition uses sum_j b_j rows; this
module also finds, for a row cap, the partition with the fewest digits that fits it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch
from torch import Tensor

from embtables.plan import largest_within


def qr_radices(n: int, m: int, k: int = 2) -> tuple[int, ...]:
    """Radices (ceil(n / m^(k-1)), m, ..., m) of the k-digit quotient-remainder partition of [0, n).

    Example:
        >>> qr_radices(10, 4)
        (3, 4)
    """
    return (-(-n // m ** (k - 1)),) + (m,) * (k - 1)


def place_values(radices: Sequence[int], n: int) -> tuple[int, ...]:
    """p_j = b_{j+1} * ... * b_{k-1}, capped at n (a digit whose place is >= n is 0 for every id below n)."""
    places, p = [], 1
    for b in reversed(radices):
        places.append(min(p, n))
        p *= b
    return tuple(reversed(places))


def partition_codes(ids: Tensor, radices: Sequence[int], n: int) -> Tensor:
    """Digits of ids in [0, n): (N,) int64 -> (k, N), digit_j = (id // p_j) mod b_j in exact integer arithmetic.

    Example:
        >>> partition_codes(torch.tensor([0, 5, 9]), (3, 4), 10).tolist()
        [[0, 1, 2], [0, 1, 1]]
    """
    places = torch.tensor(place_values(radices, n), device=ids.device)[:, None]
    radix = torch.tensor(tuple(radices), device=ids.device)[:, None]
    return torch.div(ids[None], places, rounding_mode="floor") % radix  # (k, N), one pass per op


def _rows(n: int, m: int, k: int) -> int:
    return -(-n // m ** (k - 1)) + (k - 1) * m


@lru_cache(maxsize=None)
def _fewest_rows(n: int, k: int) -> tuple[int, int]:
    """(rows, m) of the k-digit partition of [0, n) with the fewest rows (m near n^(1/k), where it is least)."""
    m0 = max(1, round(n ** (1 / k)))
    return min((_rows(n, m, k), m) for m in range(max(1, m0 - 3), m0 + 4))


def _root_ceil(n: int, p: int) -> int:
    """The smallest r with r^p >= n."""
    r = max(1, round(n ** (1 / p)))
    while r**p < n:
        r += 1
    while r > 1 and (r - 1) ** p >= n:
        r -= 1
    return r


def radices_within(n: int, cap: int, digits: Sequence[int]) -> tuple[int, ...]:
    """The partition of [0, n) with the fewest digits (from `digits`) whose rows fit `cap`, with the largest m
    that keeps them <= cap; the family's smallest partition when none fits.

    Example:
        >>> radices_within(10_000, 250, [2, 3])  # 2 sqrt(n) = 200 rows is the least with two digits
        (50, 200)
    """
    for k in digits:
        low, m_low = _fewest_rows(n, k)
        if low <= cap:
            # beyond n^(1/(k-1)) the first digit is constantly 0: k - 1 digits do better there
            m_high = n if k == 2 else max(m_low, _root_ceil(n, k - 1))
            m = largest_within(lambda m: _rows(n, m, k), m_low, m_high, cap)
            return qr_radices(n, m, k)  # type: ignore[arg-type]
    k = min(digits, key=lambda k: _fewest_rows(n, k))
    return qr_radices(n, _fewest_rows(n, k)[1], k)
