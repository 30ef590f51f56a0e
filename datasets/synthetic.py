"""Synthetic Criteo with a planted click model: the Criteo layout, known true click probabilities, Bayes AUC.

`embtables synth criteo --rows N --out DIR --seed S` writes the layout of `datasets/layout.py` (kind
"criteo") plus `truth.json`. A row holds 13 dense counts x (Criteo-like marginals, missing in Criteo's
co-missing groups) and 26 categorical ids of ranks k_f (Zipf-Mandelbrot over N_f ids, missing in Criteo's
groups). Its label is drawn from the planted model

    logit = b + d(phi) + sum_f a_f[k_f] + sum_{(f, g) in P} <u_f[k_f], u_g[k_g]>,    y ~ Bernoulli(sigmoid(logit))

    P(k_f = k) ∝ (k + 1 + q)^-s             k = 0 .. N_f - 1, N_f = Criteo Kaggle's rows of C_f scaled down
    phi = log(1 + max(x, 0)), missing -> 0  exactly what the loader feeds a model, so the truth is learnable
    d(phi) = w . t + v . tanh(U t)          t = phi standardised; a term the bottom MLP must fit
    a_f[k] ~ N(0, main_std^2 rho_k)         per-id effects a model must memorise
    u_f[k] ~ N(0, sigma_u^2 rho_k I_r)      per-id latent vectors; each planted pair (f, g) adds a rank-r dot
                                            product, the interaction DLRM's dot layer captures
    rho_k = P(k) / (P(k) + p0)              ids rarer than p0 (`rare_probability`) have proportionally
                                            smaller (never zero) effects, as rare ids of real logs do
    a missing id contributes 0; b sets the mean click rate.

Each planted pair joins a "context" feature of at most `context_rows` ids (C6, C9, C14, ...: the campaign-
type features of Criteo) with any other feature, so a model can learn the context vectors from many rows and
each id's vector against them. Ids are written as raw int64 values (A_f k + B_f) mod 2^32 with A_f odd: a
bijection of the rank, so raw ids are not ranks but every id's effect is recoverable (`PlantedCriteo.ranks`).

Compression is what the model is built to measure: a full table learns every id seen often enough, while
hashing at a small budget merges ids of distinct effects and vectors into one row, so it loses AUC that the
full table keeps (benchmarks/results/synthetic_calibration.md has both against the Bayes AUC).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embtables.datasets import layout
from embtables.datasets.truth import check_out, split_truth
from embtables.tablesets import CRITEO_KAGGLE_ROWS

# (missing group, P(zero), P(negative), mean and std of log(x) when x > 0), fitted on the first 10,000 rows
# of Criteo Kaggle. Columns sharing a missing group are missing together, as in Criteo.
_DENSE = (
    ("I1", 0.475, 0.0, 1.15, 1.07), ("I2", 0.179, 0.098, 2.71, 2.20), ("I3", 0.008, 0.0, 2.04, 1.46),
    ("I4", 0.071, 0.0, 1.60, 1.07), ("I5", 0.017, 0.0, 7.33, 2.83), ("I6", 0.063, 0.0, 3.75, 1.71),
    ("I7", 0.253, 0.0, 1.80, 1.39), ("I8", 0.118, 0.0, 2.15, 1.15), ("I7", 0.032, 0.0, 3.64, 1.71),
    ("I1", 0.502, 0.0, 0.10, 0.27), ("I7", 0.265, 0.0, 0.68, 0.84), ("I12", 0.736, 0.0, 0.63, 0.89),
    ("I4", 0.062, 0.0, 1.76, 1.17),
)
_DENSE_MISSING = {"I1": 0.448, "I2": 0.0, "I3": 0.204, "I4": 0.198, "I5": 0.049, "I6": 0.251, "I7": 0.049,
                  "I8": 0.001, "I12": 0.773}
# Criteo's categorical missing groups: (columns, P(missing)), 0-based feature indices.
_CAT_MISSING = (((2, 3, 11, 15, 20, 23), 0.0357), ((5,), 0.1332), ((18, 19, 24, 25), 0.4496), ((21,), 0.8182))
_LATENT = 3  # latent factors correlating the dense columns
_CALIBRATION_ROWS = 200_000
_MODEL, _BIAS, _ROWS = 0, 1, 2  # seed streams
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SynthCriteoConfig:
    """Generator parameters; every value is saved in `truth.json`.

    Args:
        rows: rows over all splits.
        val_fraction, test_fraction: shares of `rows` in val and test; the rest is train.
        scale: table rows N_f = min(Criteo's, max(min_rows, round(Criteo's * scale))).
        min_rows: floor of the scaled table rows (tables already smaller keep Criteo's size).
        zipf: exponent s of P(k) ∝ (k + 1 + q)^-s.
        zipf_offset: q, flattens the head as real logs do.
        main_std: std of the per-id effects a_f[k] of frequent ids.
        rare_probability: p0 of the rarity factor rho_k = P(k) / (P(k) + p0).
        rank: r, width of the per-id latent vectors.
        pairs: number of planted feature pairs (f, g), drawn from the seed.
        context_rows: every planted pair has a side with at most this many ids.
        pair_std: std of one pair's dot product <u_f, u_g> (sets sigma_u = sqrt(pair_std / sqrt(r))).
        dense_std: std of the dense term d(phi).
        ctr: mean click probability the bias b is solved for.
        part_rows: rows per Parquet part file.
    """

    rows: int = 3_000_000
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    scale: float = 0.001
    min_rows: int = 50
    zipf: float = 1.1
    zipf_offset: float = 2.0
    main_std: float = 0.4
    rare_probability: float = 3e-3
    rank: int = 2
    pairs: int = 8
    context_rows: int = 30
    pair_std: float = 0.5
    dense_std: float = 0.5
    ctr: float = 0.25
    part_rows: int = 250_000

    def __post_init__(self) -> None:
        for name in ("rows", "min_rows", "rank", "part_rows", "context_rows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SynthCriteoConfig.{name} must be a positive int, got {v!r}")
        if isinstance(self.pairs, bool) or not isinstance(self.pairs, int) or not 0 <= self.pairs <= 325:
            raise ValueError(f"SynthCriteoConfig.pairs must be an int in [0, 325] (26 choose 2), got {self.pairs!r}")
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"SynthCriteoConfig.{name} must lie in [0, 1), got {getattr(self, name)!r}")
        if not self.val_fraction + self.test_fraction < 1:
            raise ValueError("SynthCriteoConfig.val_fraction + test_fraction must be < 1")
        if not 0 < self.scale <= 1:
            raise ValueError(f"SynthCriteoConfig.scale must lie in (0, 1], got {self.scale!r}")
        if not self.zipf > 0:
            raise ValueError(f"SynthCriteoConfig.zipf must be > 0, got {self.zipf!r}")
        if not self.zipf_offset >= 0:
            raise ValueError(f"SynthCriteoConfig.zipf_offset must be >= 0, got {self.zipf_offset!r}")
        for name in ("main_std", "pair_std", "dense_std", "rare_probability"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"SynthCriteoConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 < self.ctr < 1:
            raise ValueError(f"SynthCriteoConfig.ctr must lie in (0, 1), got {self.ctr!r}")

    def split_rows(self) -> dict[str, int]:
        """Rows per split: val and test rounded down, train the rest."""
        val, test = int(self.rows * self.val_fraction), int(self.rows * self.test_fraction)
        return {"train": self.rows - val - test, "val": val, "test": test}

    def cardinalities(self) -> list[int]:
        """N_f of C1..C26."""
        return [min(n, max(self.min_rows, round(n * self.scale))) for n in CRITEO_KAGGLE_ROWS]


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


class PlantedCriteo:
    """The planted model of one (config, seed): samples rows and gives their true logits.

    Args:
        config: generator parameters.
        seed: the data set's seed; the model's parameters are a pure function of (config, seed).

    Example:
        >>> m = PlantedCriteo(SynthCriteoConfig(rows=1000, scale=1e-4, min_rows=10), seed=0)
        >>> dense, ranks = m.sample(5, np.random.default_rng(1))
        >>> dense.shape, ranks.shape, m.logits(dense, ranks).shape
        ((5, 13), (5, 26), (5,))
    """

    def __init__(self, config: SynthCriteoConfig, seed: int) -> None:
        self.config, self.seed = config, seed
        c, rng = config, _rng(seed, _MODEL)
        self.sizes = c.cardinalities()
        self.cdfs = []
        for n in self.sizes:
            w = (np.arange(n, dtype=np.float64) + 1.0 + c.zipf_offset) ** -c.zipf
            cdf = np.cumsum(w)
            self.cdfs.append(cdf / cdf[-1])
        # std factor sqrt(rho_k) = (1 + p0 / P(k))^-1/2: an id drawn less often than p0 has a smaller effect
        shrink = [(1.0 + c.rare_probability / np.diff(cdf, prepend=0.0)) ** -0.5 for cdf in self.cdfs]
        self.main = [rng.normal(0.0, c.main_std, n) * s for n, s in zip(self.sizes, shrink)]  # a_f, (N_f,)
        sigma_u = math.sqrt(c.pair_std / math.sqrt(c.rank))
        self.vectors = [rng.normal(0.0, sigma_u, (n, c.rank)) * s[:, None] for n, s in zip(self.sizes, shrink)]
        f, g = np.triu_indices(len(self.sizes), k=1)
        sizes = np.array(self.sizes)
        candidates = np.flatnonzero(np.minimum(sizes[f], sizes[g]) <= c.context_rows)
        if candidates.size < c.pairs:
            raise ValueError(
                f"SynthCriteoConfig.pairs={c.pairs} exceeds the {candidates.size} feature pairs with a side of at "
                f"most context_rows={c.context_rows} ids"
            )
        chosen = np.sort(rng.choice(candidates, c.pairs, replace=False))
        self.pairs = np.stack([f[chosen], g[chosen]], axis=1)  # (P, 2)
        # raw id = (A k + B) mod 2^32 with A odd: a bijection of the rank on [0, 2^32)
        self.id_mult = rng.integers(0, 1 << 31, len(self.sizes), dtype=np.int64) * 2 + 1
        self.id_add = rng.integers(0, 1 << 32, len(self.sizes), dtype=np.int64)
        self.id_inverse = np.array([pow(int(a), -1, 1 << 32) for a in self.id_mult], dtype=np.uint64)
        loadings = rng.normal(0.0, 1.0, (len(_DENSE), _LATENT))
        self.loadings = 0.8 * loadings / np.linalg.norm(loadings, axis=1, keepdims=True)  # (13, latent)
        self.dense_w = rng.normal(0.0, 1.0, len(_DENSE))
        self.dense_u = rng.normal(0.0, 1.0 / math.sqrt(len(_DENSE)), (4, len(_DENSE)))
        self.dense_v = rng.normal(0.0, 1.0, 4)
        self.dense_center, self.dense_scale, self.dense_gain, self.bias = np.zeros(13), np.ones(13), 1.0, 0.0
        self._calibrate(_rng(seed, _BIAS))

    def _calibrate(self, rng: np.random.Generator) -> None:
        """Standardise phi, scale d(phi) to `dense_std` and solve b for `ctr` on a fixed calibration sample."""
        dense, ranks = self.sample(_CALIBRATION_ROWS, rng)
        phi = _phi(dense)
        self.dense_center, self.dense_scale = phi.mean(0), phi.std(0) + 1e-9
        d = self._dense_term(dense)
        self.dense_gain = self.config.dense_std / (d.std() + 1e-12)
        logits = self.logits(dense, ranks)
        lo, hi = -20.0, 20.0
        for _ in range(60):  # bisection on the bias: the mean probability is increasing in it
            mid = (lo + hi) / 2
            if _sigmoid(logits + mid).mean() < self.config.ctr:
                lo = mid
            else:
                hi = mid
        self.bias = (lo + hi) / 2

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """n rows: dense int32 (n, 13) with `MISSING_INT`, and ranks int64 (n, 26) with -1 where missing."""
        h = rng.standard_normal((n, _LATENT))
        g = h @ self.loadings.T + rng.standard_normal((n, len(_DENSE))) * 0.6  # (n, 13), unit variance
        u = rng.random((n, len(_DENSE)))
        dense = np.empty((n, len(_DENSE)), dtype=np.int32)
        for j, (_, zero, neg, mu, sd) in enumerate(_DENSE):
            x = np.maximum(1.0, np.rint(np.exp(np.minimum(mu + sd * g[:, j], 21.0))))
            x = np.where(u[:, j] < zero + neg, 0.0, x)
            x = np.where(u[:, j] < neg, -1.0 - (u[:, j] < neg / 5), x)  # I2's -1 and -2
            dense[:, j] = x.astype(np.int32)
        groups = sorted(_DENSE_MISSING)
        missing = rng.random((n, len(groups))) < np.array([_DENSE_MISSING[k] for k in groups])
        for j, (group, *_) in enumerate(_DENSE):
            dense[missing[:, groups.index(group)], j] = layout.MISSING_INT
        ranks = np.empty((n, len(self.sizes)), dtype=np.int64)
        for f, cdf in enumerate(self.cdfs):
            ranks[:, f] = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), cdf.size - 1)
        cat_missing = rng.random((n, len(_CAT_MISSING)))
        for k, (cols, p) in enumerate(_CAT_MISSING):
            ranks[np.ix_(cat_missing[:, k] < p, cols)] = -1
        return dense, ranks

    def _dense_term(self, dense: np.ndarray) -> np.ndarray:
        t = (_phi(dense) - self.dense_center) / self.dense_scale  # (n, 13)
        return t @ self.dense_w + np.tanh(t @ self.dense_u.T) @ self.dense_v

    def logits(self, dense: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """True logits (n,) of rows given as dense int32 (n, 13) and ranks (n, 26) (-1 missing)."""
        out = self.bias + self.dense_gain * self._dense_term(dense)
        present = ranks >= 0
        safe = np.where(present, ranks, 0)
        for f, a in enumerate(self.main):
            out += np.where(present[:, f], a[safe[:, f]], 0.0)
        for f, g in self.pairs:
            dot = np.einsum("nr,nr->n", self.vectors[f][safe[:, f]], self.vectors[g][safe[:, g]])
            out += np.where(present[:, f] & present[:, g], dot, 0.0)
        return out

    def raw_ids(self, ranks: np.ndarray, feature: int | None = None) -> np.ndarray:
        """Ranks (n, 26), or (n,) of one `feature`, -> raw int64 ids in [0, 2^32), `MISSING_CAT` where -1."""
        cols = slice(None) if feature is None else feature
        raw = (ranks * self.id_mult[cols] + self.id_add[cols]) & 0xFFFFFFFF
        return np.where(ranks >= 0, raw, layout.MISSING_CAT)

    def ranks(self, raw: np.ndarray, feature: int | None = None) -> np.ndarray:
        """Inverse of `raw_ids`."""
        cols = slice(None) if feature is None else feature
        x = (raw.astype(np.uint64) - self.id_add[cols].astype(np.uint64)) * self.id_inverse[cols]  # wraps mod 2^64
        return np.where(raw == layout.MISSING_CAT, -1, (x & np.uint64(0xFFFFFFFF)).astype(np.int64))


def _phi(dense: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(dense, 0).astype(np.float64))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _table(labels: np.ndarray, dense: np.ndarray, raw: np.ndarray) -> pa.Table:
    cols = {layout.LABEL: pa.array(labels.astype(np.int8))}
    cols.update({name: pa.array(dense[:, j]) for j, name in enumerate(layout.DENSE)})
    cols.update({name: pa.array(raw[:, j]) for j, name in enumerate(layout.SPARSE)})
    return pa.table(cols)


def synth_criteo(out: str | Path, rows: int = 3_000_000, seed: int = 0, *, force: bool = False, **params: Any) -> dict:
    """Write a planted synthetic Criteo to `out` in the layout of `datasets/layout.py` and return its truth.

    Args:
        out: output folder; it must not hold a data set already unless `force` (which replaces it).
        rows: rows over all splits (train / val / test by `val_fraction`, `test_fraction`).
        seed: the same (rows, seed, params) give the same bytes on every run.
        force: replace the files of an earlier data set in `out`.
        **params: other `SynthCriteoConfig` fields; an unknown name raises TypeError.

    Returns:
        The `truth.json` content: config, seed, per-split rows, clicks, Bayes AUC and logloss.

    Example:
        >>> import tempfile
        >>> t = synth_criteo(tempfile.mkdtemp(), rows=2000, seed=0, scale=1e-4, min_rows=10, part_rows=1000)
        >>> sorted(t["splits"]), 0.5 < t["splits"]["test"]["bayes_auc"] < 1
        (['test', 'train', 'val'], True)
    """
    names = {f.name for f in fields(SynthCriteoConfig)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise TypeError(f"synth_criteo: unknown parameters {unknown}; known: {sorted(names - {'rows'})}")
    config = SynthCriteoConfig(rows=rows, **params)
    out = Path(out)
    check_out(out, force)
    model = PlantedCriteo(config, seed)
    truth_splits, summary_splits = {}, {}
    train_counts = [np.zeros(n + 1, dtype=np.int64) for n in model.sizes]  # per feature, indexed by rank
    for split, n in config.split_rows().items():
        labels_all, probs_all = [], []
        for k, start in enumerate(range(0, n, config.part_rows)):
            m = min(config.part_rows, n - start)
            rng = _rng(seed, _ROWS, _SPLIT_CODE[split], k)
            dense, ranks = model.sample(m, rng)
            p = _sigmoid(model.logits(dense, ranks))
            labels = (rng.random(m) < p).astype(np.int8)
            table = _table(labels, dense, model.raw_ids(ranks))
            layout.atomic_write(out / split / f"part-{k}.parquet", lambda tmp, t=table: pq.write_table(t, tmp))
            labels_all.append(labels)
            probs_all.append(p)
            if split == "train":
                for f, acc in enumerate(train_counts):  # slot N_f counts the missing ids
                    acc += np.bincount(np.where(ranks[:, f] >= 0, ranks[:, f], acc.size - 1), minlength=acc.size)
        if n == 0:
            continue
        labels, probs = np.concatenate(labels_all), np.concatenate(probs_all)
        truth_splits[split] = split_truth(labels, probs)
        summary_splits[split] = {"rows": n, "clicks": int(labels.sum()), "parts": len(labels_all)}
    counts = {}
    for f, (name, acc) in enumerate(zip(layout.SPARSE, train_counts)):
        seen = np.flatnonzero(acc)  # the missing marker is counted as a value, as in the Criteo pipeline
        counts[name] = (model.raw_ids(np.where(seen < acc.size - 1, seen, -1), feature=f), acc[seen])
    layout.save_counts(out / layout.COUNTS_FILE, counts)
    truth = {
        "generator": "embtables.datasets.synthetic.synth_criteo",
        "seed": seed,
        "config": asdict(config),
        "cardinalities": dict(zip(layout.SPARSE, model.sizes)),
        "pairs": [[layout.SPARSE[f], layout.SPARSE[g]] for f, g in model.pairs],
        "bias": model.bias,
        "splits": truth_splits,
    }
    layout.write_json(out / layout.TRUTH_FILE, truth)
    layout.write_json(out / layout.SUMMARY_FILE, {
        "kind": "criteo",
        "source": "synthetic",
        "rows_read": config.rows,
        "rows_written": config.rows,
        "bad_rows": 0,
        "first_bad_lines": [],
        "splits": summary_splits,
        "counts_split": "train",
        "missing": {"dense": int(layout.MISSING_INT), "sparse": layout.MISSING_CAT},
    })
    return truth
