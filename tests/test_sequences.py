"""DIN sequences: sample construction, the layout, the loader, planted synthetic sequences, the real Amazon file."""

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from embtables.datasets import layout
from embtables.cli import build_parser
from embtables.datasets.sequences import (SequenceData, SynthSequencesConfig, din_samples, prepare_amazon,
                                          read_interactions, synth_sequences)
from embtables.datasets.synthetic_sequences import PlantedSequences
from embtables.datasets.truth import probability_scores
from tests.conftest import shared_file

# user 1: 5 items, user 2: 3 items, user 3: 1 item (no sample), user 4: 2 items (test only)
TINY = "1\t10\n1\t11\n1\t12\n1\t10\n1\t13\n2\t11\n2\t14\n2\t15\n3\t12\n4\t16\n4\t10\n"
SMALL_SEQ = dict(items=400, clusters=20, clusters_per_category=4, max_history=8)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_split(folder: Path, split: str):
    return pq.read_table(folder / split / "part-0.parquet")


@pytest.fixture
def tiny_file(tmp_path) -> Path:
    f = tmp_path / "tiny.tsv"
    f.write_text(TINY)
    return f


def test_din_samples_of_a_hand_made_file(tiny_file):
    users, items = read_interactions(tiny_file)
    s = din_samples(users, items, max_history=2, rng=np.random.default_rng(0))
    hist = [s.hist[a:b].tolist() for a, b in zip(s.hist_offsets[:-1], s.hist_offsets[1:])]
    positives = np.flatnonzero(s.label == 1)
    assert s.label.tolist() == [1, 0] * 7  # 4 + 2 + 0 + 1 positions with a history, each a pair
    assert s.user[positives].tolist() == [1, 1, 1, 1, 2, 2, 4]
    assert s.position[positives].tolist() == [1, 2, 3, 4, 1, 2, 1]
    assert s.target[positives].tolist() == [11, 12, 10, 13, 14, 15, 10]
    assert [hist[i] for i in positives] == [[10], [10, 11], [11, 12], [12, 10], [11], [11, 14], [16]]  # capped at 2
    assert all(hist[i] == hist[i + 1] for i in positives)  # a negative shares its positive's history
    assert s.split[positives].tolist() == [0, 0, 1, 2, 1, 2, 2]  # last position test, the one before val
    prefix = {(1, 1): {10, 11}, (1, 2): {10, 11, 12}, (1, 3): {10, 11, 12}, (1, 4): {10, 11, 12, 13},
              (2, 1): {11, 14}, (2, 2): {11, 14, 15}, (4, 1): {16, 10}}
    for i in positives + 1:  # negatives: from the catalogue, never in s_0..s_i (history and target)
        assert s.target[i] in set(items) and s.target[i] not in prefix[(s.user[i], s.position[i])]


@given(st.lists(st.lists(st.integers(1, 12), min_size=1, max_size=9), min_size=1, max_size=6),
       st.integers(1, 4), st.integers(0, 3))
def test_din_sample_invariants(sequences, max_history, seed):
    users = np.concatenate([np.full(len(q), u + 1) for u, q in enumerate(sequences)])
    items = np.concatenate([np.array(q) for q in sequences])
    s = din_samples(users, items, max_history, np.random.default_rng(seed), catalogue=np.arange(1, 21))
    assert s.label.size == 2 * sum(len(q) - 1 for q in sequences)
    for r in range(0, s.label.size, 2):
        q, i = sequences[s.user[r] - 1], s.position[r]
        h = s.hist[s.hist_offsets[r]:s.hist_offsets[r + 1]].tolist()
        assert h == q[max(0, i - max_history):i] and s.target[r] == q[i]
        assert 1 <= s.target[r + 1] <= 20 and s.target[r + 1] not in q[: i + 1]
        assert s.split[r] == (2 if i == len(q) - 1 else 1 if i == len(q) - 2 else 0)
    again = din_samples(users, items, max_history, np.random.default_rng(seed), catalogue=np.arange(1, 21))
    np.testing.assert_array_equal(again.target, s.target)


def test_bad_inputs_name_the_line(tmp_path):
    with pytest.raises(ValueError, match="line 3: user 1 reappears"):
        din_samples(np.array([1, 2, 1]), np.array([5, 6, 7]), 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="every catalogue item"):
        din_samples(np.array([1, 1]), np.array([5, 6]), 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="max_history"):
        din_samples(np.array([1, 1]), np.array([5, 6]), 0, np.random.default_rng(0))
    bad = tmp_path / "bad.tsv"
    bad.write_text("1\t2\n1\tx3\n")
    with pytest.raises(ValueError, match="line 2: expected two integer fields"):
        read_interactions(bad)
    bad.write_text("1\t2\n1\t3\t4\n")
    with pytest.raises(ValueError, match="bad.tsv"):
        read_interactions(bad)


def test_prepared_folder_layout_counts_and_same_bytes(tiny_file, tmp_path):
    summary = prepare_amazon(tiny_file, tmp_path / "a", max_history=2, seed=3)
    prepare_amazon(tiny_file, tmp_path / "b", max_history=2, seed=3)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert summary["kind"] == "sequences" and summary["rows_read"] == 11 and summary["rows_written"] == 14
    assert summary["users"] == 4 and summary["items"] == 7 and summary["max_history"] == 2
    assert {k: v["rows"] for k, v in summary["splits"].items()} == {"train": 4, "val": 4, "test": 6}
    t = read_split(tmp_path / "a", "train")
    assert t.column_names == ["label", "user", "position", "hist", "target"]
    assert [str(t.schema.field(c).type) for c in t.column_names] == ["int8", "int64", "int32",
                                                                    "list<element: int64>", "int64"]
    counts = layout.load_counts(tmp_path / "a" / layout.COUNTS_FILE)
    # positions 0..T-3: user 1 -> 10, 11, 12; user 2 -> 11; users 3, 4 none; every item listed
    item = dict(zip(*(a.tolist() for a in counts["item"])))
    assert item == {10: 1, 11: 2, 12: 1, 13: 0, 14: 0, 15: 0, 16: 0}
    assert dict(zip(*(a.tolist() for a in counts["user"]))) == {1: 3, 2: 1, 3: 0, 4: 0}
    with pytest.raises(FileExistsError):
        prepare_amazon(tiny_file, tmp_path / "a")


def test_loader_batches_map_back_to_the_raw_rows(tiny_file, tmp_path):
    prepare_amazon(tiny_file, tmp_path, max_history=2, seed=0)
    data = SequenceData(tmp_path)
    item, user = data.tables(8)
    # items seen in training: 11 (twice), 10, 12; the others share the out-of-vocabulary row
    assert (item.name, item.num_embeddings, item.feature_names, item.pooling) == ("item", 4, ("hist", "target"), "none")
    assert (user.name, user.num_embeddings, user.pooling) == ("user", 3, "sum")
    counts = data.counts()
    assert counts["item"].tolist() == [2, 1, 1, 0] and counts["hist"] is counts["target"] is counts["item"]
    assert data.vocabulary("item").values.tolist() == [11, 10, 12]
    assert [t.num_embeddings for t in data.tables(8, min_count=2)] == [2, 2]  # only item 11 and user 1 kept
    t = read_split(tmp_path, "test")
    batch = next(data.batches("test", 6))
    kjt = batch.sparse
    assert kjt.keys() == ["hist", "target", "user"] and batch.dense.shape == (6, 0)
    assert kjt["hist"].lengths().tolist() == [len(h) for h in t.column("hist").to_pylist()]
    items, users = data.vocabulary("item"), data.vocabulary("user")
    hist = np.array(sum(t.column("hist").to_pylist(), []))
    assert kjt["hist"].values().tolist() == items.lookup(hist).tolist()
    assert kjt["target"].values().tolist() == items.lookup(t.column("target").to_numpy()).tolist()
    assert kjt["user"].values().tolist() == users.lookup(t.column("user").to_numpy()).tolist()
    assert kjt["target"].values()[0::2].tolist() == [3, 3, 1]  # test positives 13, 15 unseen in training (OOV), 10
    assert batch.labels.dtype == torch.float32 and batch.labels.tolist() == [1.0, 0.0] * 3


def test_loader_shuffle_is_seeded_and_drop_last(tmp_path):
    synth_sequences(tmp_path, users=60, seed=0, **SMALL_SEQ)
    data = SequenceData(tmp_path)
    n = data.rows("train")

    def targets(seed, drop_last=False):
        return torch.cat([b.sparse["target"].values() for b in data.batches("train", 32, True, seed, drop_last)])

    assert torch.equal(targets(1), targets(1)) and not torch.equal(targets(1), targets(2))
    assert sorted(targets(1).tolist()) == sorted(targets(2).tolist()) and targets(1).numel() == n
    assert targets(1, drop_last=True).numel() == n - n % 32 == 32 * data.num_batches("train", 32, drop_last=True)
    b = next(data.batches("train", 16))
    assert b.sparse.keys() == ["hist", "target", "hist_cat", "target_cat", "user"]
    assert torch.equal(b.sparse["hist"].lengths(), b.sparse["hist_cat"].lengths())
    assert [(t.name, t.pooling) for t in data.tables(4)] == [("item", "none"), ("cat", "none"), ("user", "sum")]


def test_loader_refuses_other_kinds(tmp_path):
    with pytest.raises(FileNotFoundError):
        SequenceData(tmp_path / "nothing")
    layout.write_json(tmp_path / layout.SUMMARY_FILE, {"kind": "criteo"})
    with pytest.raises(ValueError, match="kind 'criteo'"):
        SequenceData(tmp_path)


def test_synthetic_sequences_same_bytes_and_truth_recomputed(tmp_path):
    truth = synth_sequences(tmp_path / "a", users=300, seed=5, **SMALL_SEQ)
    synth_sequences(tmp_path / "b", users=300, seed=5, **SMALL_SEQ)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    summary = layout.read_json(tmp_path / "a" / layout.SUMMARY_FILE)
    assert summary["kind"] == "sequences" and summary["categories"] == 5 and summary["splits"]["test"]["rows"] == 600
    model = PlantedSequences(SynthSequencesConfig(**truth["config"]), truth["seed"])
    for split in layout.SPLITS:
        t = read_split(tmp_path / "a", split)
        hist = t.column("hist").combine_chunks()
        p = model.probabilities(t.column("user").to_numpy(), hist.offsets.to_numpy().astype(np.int64),
                                hist.values.to_numpy(), t.column("target").to_numpy())
        y = t.column("label").to_numpy()
        scores = probability_scores(y, p)
        assert scores["auc"] == pytest.approx(truth["splits"][split]["bayes_auc"], abs=1e-12)
        assert scores["logloss"] == pytest.approx(truth["splits"][split]["bayes_logloss"], abs=1e-9)
        cats = t.column("target_cat").to_numpy()
        np.testing.assert_array_equal(cats, model.cluster[t.column("target").to_numpy() - 1] // 4 + 1)


def test_planted_likelihoods_are_distributions_over_the_catalogue():
    """q(. | u, H) and n(. | H) each sum to 1 over every item, for the repeat/copy/interest/explore mixture and
    the negative sampler that avoids H and the positive."""
    config = SynthSequencesConfig(users=5, **SMALL_SEQ)
    model = PlantedSequences(config, seed=1)
    users, items = model.sequences(np.random.default_rng(0))
    hist = np.array([*items[users == 2][:4], items[users == 2][0]])  # a repeated item included
    n_items = config.items
    q, n = model.target_likelihoods(np.full(n_items, 2), np.arange(n_items + 1) * hist.size,
                                    np.tile(hist, n_items), np.arange(1, n_items + 1))
    assert q.sum() == pytest.approx(1.0, abs=1e-12) and n.sum() == pytest.approx(1.0, abs=1e-12)
    assert (n[hist - 1] == 0).all() and (q > 0).all()


def test_bayes_probabilities_are_calibrated_on_generated_samples(tmp_path):
    """The derived P(y=1 | u, H, t) matches the label rate of the generated samples, bin by bin."""
    truth = synth_sequences(tmp_path, users=3000, seed=2, **SMALL_SEQ)
    model = PlantedSequences(SynthSequencesConfig(**truth["config"]), 2)
    t = read_split(tmp_path, "train")
    hist = t.column("hist").combine_chunks()
    p = model.probabilities(t.column("user").to_numpy(), hist.offsets.to_numpy().astype(np.int64),
                            hist.values.to_numpy(), t.column("target").to_numpy())
    y = t.column("label").to_numpy()
    bins = np.digitize(p, [0.1, 0.3, 0.5, 0.7, 0.9])
    checked = 0
    for b in range(6):
        sel = bins == b
        if sel.sum() > 2000:
            checked += 1
            assert y[sel].mean() == pytest.approx(p[sel].mean(), abs=0.02), f"bin {b}"
    assert checked >= 3


def test_bad_synthetic_config_names_the_option():
    with pytest.raises(ValueError, match="multiple of clusters"):
        SynthSequencesConfig(items=401, clusters=20)
    with pytest.raises(ValueError, match="copy"):
        SynthSequencesConfig(copy=0.6, interest=0.3)
    with pytest.raises(ValueError, match="users"):
        SynthSequencesConfig(users=0)
    with pytest.raises(TypeError, match="cluster"):
        synth_sequences("/nonexistent", users=10, cluster=3)


def test_cli_subcommands(tiny_file, tmp_path, capsys):
    args = build_parser().parse_args(["prepare-sequences", "amazon", str(tiny_file), "--out", str(tmp_path / "a"),
                              "--max-history", "3"])
    assert args.run(args) == 0 and "11 interactions of 4 users" in capsys.readouterr().out
    assert layout.read_json(tmp_path / "a" / layout.SUMMARY_FILE)["max_history"] == 3


def test_real_amazon_video_games_statistics(tmp_path):
    path = shared_file("amazon_video_games_interactions.tsv")
    summary = prepare_amazon(path, tmp_path, max_history=50, seed=0)
    assert summary["rows_read"] == 287_107 and summary["users"] == 31_013 and summary["items"] == 23_715
    assert summary["rows_written"] == 2 * (287_107 - 31_013)  # one pair per position i >= 1
    test = read_split(tmp_path, "test")
    users = test.column("user").to_numpy()
    # one test pair per user with >= 2 interactions (30 of the 31,013 users have a single one)
    assert summary["splits"]["test"]["rows"] == 2 * 30_983 and np.unique(users).size == 30_983
    assert (np.bincount(users) <= 2).all() and test.column("label").to_numpy().sum() == 30_983
    counts = layout.load_counts(tmp_path / layout.COUNTS_FILE)
    assert counts["item"][0].size == 23_715 and counts["user"][0].size == 31_013  # every id listed
    data = SequenceData(tmp_path)
    assert data.counts()["item"].numel() == (counts["item"][1] > 0).sum() + 1
    assert max(len(h) for h in test.column("hist").to_pylist()) == 50
