"""Synthetic behaviour sequences with planted interests and a known Bayes AUC, as DIN samples.

`embtables synth sequences --users U --out DIR --seed S` writes the layout of `datasets/sequences.py` (kind
"sequences", with item categories) plus `truth.json`. Items fall in C clusters of equal size (category =
cluster // clusters_per_category) with Zipf popularity w(t) = P(t | c(t)) inside each cluster. User u holds
K_u latent interest clusters Z_u and a sequence of T_u <= max_history + 1 items (so every history is the whole
prefix H = s_0 .. s_{i-1}): s_0 comes from an interest cluster, then each next item is drawn as

    q(t | u, H) = repeat * n_t(H) / |H| + w(t) [ copy * m_t(H) / |H| + interest * 1[c(t) in Z_u] / K_u
                                                 + explore / C ]

with n_t(H) the number of times t itself is in the history and m_t(H) the number of history items in t's
cluster: with probability `repeat` the user takes one specific earlier item again, with probability `copy`
an item of that earlier item's cluster. Both make the click depend on the target's match with individual
history items, which attention over the history finds (a target-blind sum of the history blurs it). DIN
samples pair each positive s_i with a negative drawn uniformly from the items
not in H and not s_i, so the exact Bayes probability of a click given (u, H, t) is

    P(y = 1 | u, H, t) = q(t) / (q(t) + n(t)),   n(t) = 0 if t in H, else Q_in / M + (1 - Q_in - q(t)) / (M - 1)

where M = items - |set(H)| and Q_in = sum of q(s) over the distinct items s of H. `truth.json` holds the AUC
and logloss of these probabilities against the labels of each split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from embtables.datasets import layout
from embtables.datasets.din_samples import din_samples, write_sequences
from embtables.datasets.truth import check_out, split_truth

_MODEL, _SEQUENCES, _SAMPLES = 0, 1, 2  # seed streams


@dataclass(frozen=True)
class SynthSequencesConfig:
    """Generator parameters; every value is saved in `truth.json`.

    Args:
        users: number of users.
        items: catalogue size; a multiple of `clusters`.
        clusters: C relevance clusters of items.
        clusters_per_category: clusters per item category (the side information).
        min_interests, max_interests: K_u is uniform in this range.
        min_length: shortest sequence; the longest is max_history + 1.
        max_history: L, history cap of the samples.
        repeat, copy, interest: mixture weights of q; `explore` = 1 - repeat - copy - interest.
        zipf: exponent of the popularity inside a cluster.
        part_rows: rows per Parquet part.
    """

    users: int = 20_000
    items: int = 5_000
    clusters: int = 100
    clusters_per_category: int = 4
    min_interests: int = 2
    max_interests: int = 4
    min_length: int = 5
    max_history: int = 20
    repeat: float = 0.2
    copy: float = 0.4
    interest: float = 0.3
    zipf: float = 1.0
    part_rows: int = 500_000

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.type == "int":
                v = getattr(self, f.name)
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"SynthSequencesConfig.{f.name} must be a positive int, got {v!r}")
        if self.items % self.clusters:
            raise ValueError(
                f"SynthSequencesConfig.items ({self.items}) must be a multiple of clusters ({self.clusters})")
        if self.clusters % self.clusters_per_category:
            raise ValueError("SynthSequencesConfig.clusters must be a multiple of clusters_per_category")
        if not self.min_interests <= self.max_interests <= self.clusters:
            raise ValueError("SynthSequencesConfig needs min_interests <= max_interests <= clusters")
        if not 2 <= self.min_length <= self.max_history + 1:
            raise ValueError("SynthSequencesConfig needs 2 <= min_length <= max_history + 1")
        if self.max_history + 1 >= self.items:
            raise ValueError("SynthSequencesConfig.items must exceed max_history + 1, so negatives always exist")
        if not (min(self.repeat, self.copy, self.interest) >= 0 and self.repeat + self.copy + self.interest <= 1):
            raise ValueError("SynthSequencesConfig.repeat, copy and interest must be >= 0 with a sum <= 1")
        if not self.zipf >= 0:
            raise ValueError(f"SynthSequencesConfig.zipf must be >= 0, got {self.zipf!r}")

    @property
    def explore(self) -> float:
        return 1.0 - self.repeat - self.copy - self.interest


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream]))


class PlantedSequences:
    """The planted interest model of one (config, seed): draws sequences and gives Bayes click probabilities.

    Raw ids: items 1..items, users 1..users, categories 1..clusters / clusters_per_category.

    Example:
        >>> m = PlantedSequences(SynthSequencesConfig(users=50, items=200, clusters=10, clusters_per_category=2), 0)
        >>> users, items = m.sequences(np.random.default_rng(1))
        >>> users.shape == items.shape, int(items.min()) >= 1
        (True, True)
    """

    def __init__(self, config: SynthSequencesConfig, seed: int) -> None:
        c, rng = config, _rng(seed, _MODEL)
        self.config = c
        per = c.items // c.clusters
        self.members = rng.permutation(c.items).reshape(per, c.clusters).T.copy()  # (C, per): item index by rank
        self.cluster = np.empty(c.items, dtype=np.int64)  # (items,) cluster of each item index
        self.cluster[self.members] = np.arange(c.clusters)[:, None]
        w = (np.arange(per) + 1.0) ** -c.zipf
        self.rank_cdf = np.cumsum(w / w.sum())
        self.popularity = np.empty(c.items)  # w(t) = P(t | c(t))
        self.popularity[self.members] = (w / w.sum())[None, :]
        self.num_interests = rng.integers(c.min_interests, c.max_interests + 1, c.users)  # K_u
        order = np.argsort(rng.random((c.users, c.clusters)), axis=1)[:, : c.max_interests]
        self.interests = np.where(np.arange(c.max_interests) < self.num_interests[:, None], order, -1)  # (U, Kmax)
        self.lengths = rng.integers(c.min_length, c.max_history + 2, c.users)  # T_u

    def categories(self) -> tuple[np.ndarray, np.ndarray]:
        """(raw item ids ascending, raw category id of each)."""
        return np.arange(1, self.config.items + 1), self.cluster // self.config.clusters_per_category + 1

    def _draw(self, clusters: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rank = np.searchsorted(self.rank_cdf, rng.random(clusters.size), side="right")
        rank = np.minimum(rank, self.rank_cdf.size - 1)
        return self.members[clusters, rank]

    def sequences(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """All users' sequences, grouped by user and in order: (users, items) raw ids, each (sum T_u,)."""
        c = self.config
        U, T = c.users, int(self.lengths.max())
        seq_cluster = np.zeros((U, T), dtype=np.int64)
        seq = np.zeros((U, T), dtype=np.int64)
        users = np.arange(U)

        def interest_cluster() -> np.ndarray:
            k = (rng.random(U) * self.num_interests).astype(np.int64)
            return self.interests[users, k]

        seq_cluster[:, 0] = interest_cluster()
        seq[:, 0] = self._draw(seq_cluster[:, 0], rng)
        for i in range(1, T):
            u = rng.random(U)
            earlier = (rng.random(U) * i).astype(np.int64)  # the one earlier item a repeat or copy refers to
            explored = rng.integers(0, c.clusters, U)
            chosen = np.where(u < c.repeat + c.copy, seq_cluster[users, earlier],
                              np.where(u < c.repeat + c.copy + c.interest, interest_cluster(), explored))
            seq_cluster[:, i] = chosen
            seq[:, i] = np.where(u < c.repeat, seq[users, earlier], self._draw(chosen, rng))
        keep = np.arange(T) < self.lengths[:, None]
        return np.broadcast_to(users[:, None] + 1, (U, T))[keep], seq[keep] + 1

    def probabilities(self, user: np.ndarray, hist_offsets: np.ndarray, hist: np.ndarray,
                      target: np.ndarray) -> np.ndarray:
        """Bayes P(y = 1 | u, H, t) = q(t) / (q(t) + n(t)) of R samples given by raw ids: user (R,), the jagged
        history (hist_offsets (R + 1,), hist (N,)) and target (R,)."""
        q, n = self.target_likelihoods(user, hist_offsets, hist, target)
        return q / (q + n)

    def target_likelihoods(self, user: np.ndarray, hist_offsets: np.ndarray, hist: np.ndarray,
                           target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(q(t | u, H), n(t | H)): the probability of t as the positive and as the negative of the samples."""
        c = self.config
        R = target.size
        u, t, h = user - 1, target - 1, hist - 1
        lengths = np.diff(hist_offsets)
        sample = np.repeat(np.arange(R), lengths)  # (N,) sample of each history element
        # m_c(H): history items per (sample, cluster); n_t(H): per (sample, item)
        sc_keys, sc_counts = np.unique(sample * c.clusters + self.cluster[h], return_counts=True)
        distinct, times = np.unique(sample * c.items + h, return_counts=True)  # (sample, item) pairs of set(H)

        def count(keys: np.ndarray, counts: np.ndarray, key: np.ndarray) -> np.ndarray:
            if not keys.size:
                return np.zeros(key.size, dtype=np.int64)
            at = np.minimum(np.searchsorted(keys, key), keys.size - 1)
            return np.where(keys[at] == key, counts[at], 0)

        def q(s: np.ndarray, items: np.ndarray) -> np.ndarray:
            m = count(sc_keys, sc_counts, s * c.clusters + self.cluster[items])
            n = count(distinct, times, s * c.items + items)
            in_z = (self.interests[u[s]] == self.cluster[items][:, None]).any(1)
            mix = c.copy * m / lengths[s] + c.interest * in_z / self.num_interests[u[s]] + c.explore / c.clusters
            return c.repeat * n / lengths[s] + self.popularity[items] * mix

        d_sample, d_item = distinct // c.items, distinct % c.items
        q_in = np.bincount(d_sample, weights=q(d_sample, d_item), minlength=R)
        free = c.items - np.bincount(d_sample, minlength=R)  # M = items not in H
        qt = q(np.arange(R), t)
        in_h = count(distinct, times, np.arange(R) * c.items + t) > 0
        neg = np.where(in_h, 0.0, q_in / free + np.maximum(1.0 - q_in - qt, 0.0) / (free - 1))
        return qt, neg


def synth_sequences(out: str | Path, users: int = 20_000, seed: int = 0, *, force: bool = False, **params: Any) -> dict:
    """Write planted synthetic DIN sequences to `out` and return the `truth.json` content.

    Args:
        out: output folder; it must not hold a data set already unless `force`.
        users: number of users (each gives 2 val, 2 test and 2 (T_u - 3) train rows).
        seed: the same (users, seed, params) give the same bytes on every run.
        force: replace an earlier data set in `out`.
        **params: other `SynthSequencesConfig` fields; an unknown name raises TypeError.

    Example:
        >>> import tempfile
        >>> t = synth_sequences(tempfile.mkdtemp(), users=300, seed=0, items=400, clusters=20)
        >>> 0.5 < t["splits"]["test"]["bayes_auc"] <= 1
        True
    """
    names = {f.name for f in fields(SynthSequencesConfig)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise TypeError(f"synth_sequences: unknown parameters {unknown}; known: {sorted(names - {'users'})}")
    config = SynthSequencesConfig(users=users, **params)
    out = Path(out)
    check_out(out, force)
    model = PlantedSequences(config, seed)
    user_ids, items = model.sequences(_rng(seed, _SEQUENCES))
    catalogue = np.arange(1, config.items + 1)
    samples = din_samples(user_ids, items, config.max_history, _rng(seed, _SAMPLES), catalogue, "synthetic")
    probs = model.probabilities(samples.user, samples.hist_offsets, samples.hist, samples.target)
    summary = write_sequences(out, samples, user_ids, items, catalogue, model.categories(),
                              {"source": "synthetic", "seed": seed, "rows_read": int(items.size),
                               "max_history": config.max_history}, config.part_rows)
    truth = {
        "generator": "embtables.datasets.synthetic_sequences.synth_sequences",
        "seed": seed,
        "config": asdict(config),
        "splits": {s: split_truth(samples.label[samples.split == k], probs[samples.split == k])
                   for k, s in enumerate(layout.SPLITS) if summary["splits"][s]["rows"]},
    }
    layout.write_json(out / layout.TRUTH_FILE, truth)
    return truth

