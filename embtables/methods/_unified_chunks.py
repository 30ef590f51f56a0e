"""How `unified` cuts features into chunks: the chunk width w and each feature's chunk count c_f, from the
options `probes`, `width` and `chunks` (the formulas are in `embtables.methods.unified`'s docstring).

Example:
    >>> by_vocabulary([10_000_000, 700_000, 500_000, 3])  # 16x fewer rows than the largest: half the chunks
    [4, 4, 2, 1]
"""

from __future__ import annotations

import math
from typing import Sequence

from embtables.config import TableConfig
from embtables.plan import Target

BY_VOCABULARY = "by_vocabulary"
# what `probes=None` means when `width` is not given either: 2 probes, the best of 1, 2, 4 and by_vocabulary at
# budget 0.1 on the planted data that keeps every output at its table's width (benchmarks/results/unified_ablation.md);
# 1 where the store's dim multiple does not divide g / 2
DEFAULT_PROBES = 2
MAX_PROBES = 4  # by_vocabulary: the chunks of the largest vocabularies
VOCABULARY_RATIO = 16  # by_vocabulary: each 16x fewer rows than the largest table halves the chunks


def by_vocabulary(rows: Sequence[int], most: int = MAX_PROBES) -> list[int]:
    """s_t = max(1, most / 2^k_t) per table, k_t = floor(log_16(N_max / N_t)) the largest k with N_t 16^k <= N_max
    (integer arithmetic: no rounding at the thresholds)."""
    top = max(rows)
    out = []
    for n in rows:
        k = 0
        while n * VOCABULARY_RATIO ** (k + 1) <= top and most >> (k + 1) >= 1:
            k += 1
        out.append(max(1, most >> k))
    return out


def probes_of(probes: int | str | None, width: int | None, g: int, multiple: int) -> int | str | None:
    """The probes the solve uses: None (the width decides) when only `width` is given, else the default, which
    falls back to 1 where chunks of width g / DEFAULT_PROBES would not suit the store (g the gcd of the dims)."""
    if probes is not None and width is not None:
        raise ValueError(f"unified options probes={probes!r} and width={width} both set the chunk width; give one")
    if probes is None and width is None:
        c = DEFAULT_PROBES
        return c if g % c == 0 and (g // c) % multiple == 0 else 1
    return probes


def check_probes(probes: object) -> None:
    if probes is None or probes == BY_VOCABULARY:
        return
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"unified option probes must be an int >= 1 or {BY_VOCABULARY!r}, got {probes!r}")


def chunk_layout(tables: Sequence[TableConfig], probes: int | str | None, width: int | None,
                 given: dict[str, int], target: Target) -> tuple[int, list[int]]:
    """(w, [c_f feature-major]); raises naming the option and the table when a width does not divide or does
    not suit the backend."""
    g = math.gcd(*[t.embedding_dim for t in tables])
    probes = probes_of(probes, width, g, target.dim_multiple)
    most = MAX_PROBES if probes == BY_VOCABULARY else int(probes or 1)
    bad = next((t for t in tables if t.embedding_dim % most), None)
    if bad is not None:
        raise ValueError(
            f"unified option probes={probes!r} cuts features into up to {most} chunks, which does not divide "
            f"dim {bad.embedding_dim} of table {bad.name!r}"
        )
    w = width if width is not None else g // most
    if w % target.dim_multiple and most == 1:
        raise ValueError(
            f"unified option width={w} must be a multiple of {target.dim_multiple} on the "
            f"{target.backend!r} backend (the default is the gcd of the tables' dims)"
        )
    if w % target.dim_multiple:
        t = min(tables, key=lambda t: t.embedding_dim)
        raise ValueError(
            f"unified option probes={probes!r} gives chunks of width {w} (dim {t.embedding_dim} of table "
            f"{t.name!r} / {most * t.embedding_dim // g}), which must be a multiple of {target.dim_multiple} "
            f"on the {target.backend!r} backend"
        )
    # s_t: chunks per g columns of table t (its dim D_t / w when the width is given)
    scale = by_vocabulary([t.num_embeddings for t in tables]) if probes == BY_VOCABULARY else [most] * len(tables)
    features = [f for t in tables for f in t.feature_names]
    unknown = sorted(set(given) - set(features))
    if unknown:
        raise ValueError(f"unified option chunks names features {unknown} that no table has; features: {features}")
    out = []
    for t, s in zip(tables, scale):
        for f in t.feature_names:
            if f in given:
                out.append(given[f])
            elif t.embedding_dim % w:
                raise ValueError(
                    f"unified option width={w} does not divide dim {t.embedding_dim} of table {t.name!r}; "
                    f"give chunks for feature {f!r} or another width"
                )
            else:
                out.append(t.embedding_dim // w if width is not None else t.embedding_dim // g * s)
    return w, out
