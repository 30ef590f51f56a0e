"""The popularity ranking of DIN sweeps: its AUC against a hand computation, and its line in the reports."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import embtables.app.popularity as pop
import embtables.app.sweep as sw
from embtables.app.report import write_report
from embtables.app.trainer import TrainConfig
from embtables.datasets import layout
from embtables.metrics import auc

SMALL_SEQ = dict(items=400, clusters=20, clusters_per_category=4, max_history=8)


@pytest.fixture(scope="module")
def sequences(tmp_path_factory):
    from embtables.datasets.synthetic_sequences import synth_sequences

    path = tmp_path_factory.mktemp("seq")
    synth_sequences(path, users=60, seed=0, **SMALL_SEQ)
    return path


def din_sweep(data) -> sw.SweepConfig:
    train = TrainConfig(model="din", data=str(data), batch_size=64, max_steps=3)
    return sw.SweepConfig(train=train, methods=("full", "hash"), budgets=(0.3,), seeds=(0,))


def split_table(data, split):
    return pq.read_table(sorted((data / split).glob("part-*.parquet"))).to_pydict()


def test_project_auc_gives_ties_half_credit():
    assert auc(torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([1, 0, 1, 0])) == 0.5
    # pairs (positive, negative): 1>0, 1=1 (half), 2>0, 2>1 -> 3.5 of 4
    assert auc(torch.tensor([0.0, 1.0, 1.0, 2.0]), torch.tensor([0, 1, 0, 1])) == 0.875


def test_counts_are_the_interactions_visible_to_training(sequences):
    # max_history 8 holds a whole sequence (at most 9 long), so each val positive's history is s_0 .. s_{T-3}
    val = split_table(sequences, "val")
    seen = np.concatenate([h for h, y in zip(val["hist"], val["label"]) if y == 1])
    ids, counts = layout.load_counts(sequences / layout.COUNTS_FILE)["item"]
    expected = dict(zip(*np.unique(seen, return_counts=True)))
    assert {int(i): int(c) for i, c in zip(ids, counts) if c} == {int(i): int(c) for i, c in expected.items()}


def test_popularity_auc_equals_a_hand_computation_with_ties(sequences):
    ids, counts = layout.load_counts(sequences / layout.COUNTS_FILE)["item"]
    count = dict(zip(ids.tolist(), counts.tolist()))
    test = split_table(sequences, "test")
    score = np.array([count.get(t, 0) for t in test["target"]], dtype=float)
    y = np.array(test["label"]) == 1
    p, n = score[y], score[~y]
    wins, ties = (p[:, None] > n[None, :]).mean(), (p[:, None] == n[None, :]).mean()
    assert ties > 0  # the tiny data has tied counts (unseen targets score 0), so half credit is exercised
    got = pop.popularity_auc(sequences)
    assert got["auc"] == pytest.approx(wins + ties / 2, abs=1e-12)
    assert got["tied_pairs"] == pytest.approx(ties)
    assert (got["split"], got["rows"], got["positives"]) == ("test", y.size, int(y.sum()))
    assert got["unseen_targets"] == int((score == 0).sum())
    assert pop.popularity_auc(sequences, "val")["rows"] == len(split_table(sequences, "val")["label"])


def test_din_report_has_the_reference_and_a_resumed_sweep_keeps_it(sequences, tmp_path, in_process, monkeypatch):
    cfg, real = din_sweep(sequences), sw._spawn

    def dying(cell, folder):
        if len(in_process) == 1:
            raise KeyboardInterrupt  # killed during the second cell
        return real(cell, folder)

    monkeypatch.setattr(sw, "_spawn", dying)
    with pytest.raises(KeyboardInterrupt):
        sw.sweep(cfg, tmp_path, progress=False)
    stored = json.loads((tmp_path / "sweep.json").read_text())["popularity"]
    assert stored == pop.popularity_auc(sequences)  # computing it again gives the same value

    def refuse(data, split="test"):
        raise AssertionError("the resumed sweep computed the popularity again")

    monkeypatch.setattr(sw, "_spawn", real)
    monkeypatch.setattr(pop, "popularity_auc", refuse)
    df = sw.sweep(cfg, tmp_path, command="resumed", progress=False)
    assert (df["status"] == "ok").all() and len(df) == 2
    assert json.loads((tmp_path / "sweep.json").read_text())["popularity"] == stored
    text = write_report(tmp_path).read_text()
    assert f"Popularity ranking (no embeddings): AUC {stored['auc']:.4f} on the test split" in text
    assert "No log loss" in text
    header = next(line for line in text.splitlines() if line.startswith("| rank"))
    row = next(line for line in text.splitlines() if line.startswith("| 1 | hash"))
    assert header.count("|") == row.count("|")

    # the marks follow the reference: every cell below an AUC of 1, none below 0
    meta = json.loads((tmp_path / "sweep.json").read_text())
    for value, marked in ((1.0, True), (0.0, False)):
        (tmp_path / "sweep.json").write_text(json.dumps({**meta, "popularity": {**stored, "auc": value}}))
        text = write_report(tmp_path).read_text()
        row = next(line for line in text.splitlines() if line.startswith("| 1 | hash"))
        recommendation = next(line for line in text.splitlines() if line.startswith("- budget 0.3"))
        assert (pop.BELOW in row, pop.BELOW in recommendation) == (marked, marked)


def test_dlrm_report_has_no_popularity(tmp_path, in_process):
    from embtables.datasets.synthetic import synth_criteo

    synth_criteo(tmp_path / "data", seed=0, rows=4000, scale=1e-4, min_rows=20, part_rows=2000)
    train = TrainConfig(data=str(tmp_path / "data"), batch_size=256, max_steps=2,
                        model_options=dict(bottom=(16, 16), top=(16,)))
    sw.sweep(sw.SweepConfig(train=train, methods=("full", "hash"), budgets=(0.3,)), tmp_path / "sweep", progress=False)
    assert "popularity" not in json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    text = write_report(tmp_path / "sweep").read_text()
    assert "opularity" not in text
