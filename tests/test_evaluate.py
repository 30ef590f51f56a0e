"""Scoring a trained run on new data: the best checkpoint, the run's kept vocabulary, `evaluate` on a raw file or a
folder (OOV counts, calibration, bad lines), `preprocess criteo --vocab-from`, and the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import shared_file
from tests.criteo_lines import read_rows
from embtables.app.evaluate import calibration, evaluate_run, load_run_model, map_ids, read_run_config
from embtables.app.trainer import TrainConfig, Trainer
from embtables.checkpoint import load_tensor_file
from embtables.cli import main
from embtables.datasets.criteo import preprocess_criteo
from embtables.datasets.layout import DENSE, MISSING_INT, SPARSE, load_counts
from embtables.datasets.loader import CriteoData
from embtables.datasets.vocab import Vocabulary

MODEL = dict(bottom=(32, 16), top=(32,))


def tsv_lines(folder: Path) -> list[bytes]:
    """The rows of a synthetic folder (train, val, test in order) as Criteo TSV lines."""
    lines = []
    for split in ("train", "val", "test"):
        cols = read_rows(folder, split)
        for i in range(cols["label"].size):
            ints = ["" if cols[c][i] == MISSING_INT else str(cols[c][i]) for c in DENSE]
            cats = ["" if cols[c][i] == -1 else "%08x" % cols[c][i] for c in SPARSE]
            lines.append("\t".join([str(cols["label"][i]), *ints, *cats]).encode() + b"\n")
    return lines


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A planted log as a raw file: the first 4,800 lines preprocessed (3,840 train, 960 val) and trained on (3
    epochs, validation every 5 steps, learning rates high enough to overfit after step 20 of 45), the last 1,200
    (and one bad line) kept as a separate raw file."""
    from embtables.datasets.synthetic import synth_criteo

    root = tmp_path_factory.mktemp("evaluate")
    synth_criteo(root / "syn", seed=0, rows=6000, scale=1e-4, min_rows=20, part_rows=2000)
    lines = tsv_lines(root / "syn")
    (root / "head.tsv").write_bytes(b"".join(lines[:4800]))
    (root / "tail.tsv").write_bytes(b"".join(lines[4800:4900] + [b"oops\n"] + lines[4900:]))
    preprocess_criteo(root / "head.tsv", root / "data", split="ordered", fractions=(0.8, 0.2, 0.0), progress=False)
    config = TrainConfig(data=str(root / "data"), batch_size=256, epochs=3, eval_every=5, embedding_lr=0.2,
                         dense_lr=1e-2, model_options=MODEL)
    metrics = Trainer(config, root / "run", progress=False).fit()
    return root, metrics


def test_the_best_checkpoint_is_kept_and_evaluate_scores_it(sample):
    root, metrics = sample
    run = root / "run"
    assert metrics["checkpoints"] == {"best": "best.pt", "best_step": metrics["best_step"], "last": "checkpoint.pt",
                                      "last_step": metrics["steps"]}
    assert metrics["best_step"] < metrics["steps"]  # validation peaked before the end: best and last differ
    best, last = (load_tensor_file(run / name, "checkpoint") for name in ("best.pt", "checkpoint.pt"))
    assert (best["state"]["step"], last["state"]["step"]) == (metrics["best_step"], metrics["steps"])
    # on the training folder's own validation split, evaluate gives the trainer's figures of that step, exactly
    scored = evaluate_run(run, root / "data", split="val", out=root / "val.json")
    assert scored["step"] == metrics["best_step"] and scored["rows"] == 960
    assert scored["auc"] == metrics["val"]["best"]["auc"] and scored["logloss"] == metrics["val"]["best"]["logloss"]
    assert evaluate_run(run, root / "data", split="val", out=root / "v.json", checkpoint="last")["auc"] == \
        metrics["val"]["last"]["auc"] != scored["auc"]
    assert json.loads((root / "val.json").read_text())["auc"] == scored["auc"]


def test_a_resumed_run_keeps_the_same_best_checkpoint(sample, tmp_path):
    root, metrics = sample
    config = TrainConfig(**{**json.loads((root / "run" / "config.json").read_text()),
                            "max_steps": metrics["best_step"] + 5})  # the same steps, fewer of them past the best
    Trainer(config, tmp_path / "run", progress=False).fit(stop_after=metrics["best_step"])
    (tmp_path / "run" / "best.pt").unlink()  # as if stopped between the checkpoint and its link
    assert Trainer(config, tmp_path / "run", progress=False).fit(resume=True)["best_step"] == metrics["best_step"]
    a, b = (load_tensor_file(run / "best.pt", "checkpoint") for run in (root / "run", tmp_path / "run"))
    assert a["state"]["step"] == b["state"]["step"] == metrics["best_step"]
    for k in a["dense"]:
        assert torch.equal(a["dense"][k], b["dense"][k]), k
    for k in a["collections"][0]["tables"]:
        assert torch.equal(a["collections"][0]["tables"][k], b["collections"][0]["tables"][k]), k


def test_the_run_keeps_its_vocabulary(sample):
    root, metrics = sample
    record = json.loads((root / "run" / "vocabulary.json").read_text())
    counts = root / "data" / "counts.npz"
    assert record["source"] == str(counts.resolve()) == metrics["vocabulary"]["file"]
    assert record["sha256"] == metrics["vocabulary"]["sha256"] and record["min_count"] == 2
    assert (root / "run" / "vocabulary.npz").read_bytes() == counts.read_bytes()
    assert record["categorical"] == SPARSE and record["dense"] == DENSE


def test_a_raw_file_is_scored_with_unseen_values_counted_per_feature(sample):
    root, _ = sample
    result = evaluate_run(root / "run", root / "tail.tsv", out=root / "tail.json")
    assert (result["rows"], result["bad_lines"], result["splits"]) == (1200, 1, ["all"])
    assert 0.5 < result["auc"] < 1 and result["warnings"] == []
    counts = load_counts(root / "data" / "counts.npz")
    tail = read_rows(_folder_of(root / "tail.tsv", root / "tail-own"), "all")
    for f in SPARSE:  # by hand: unseen = not among the training values; rare = seen fewer than min_count=2 times
        seen = dict(zip(counts[f][0].tolist(), counts[f][1].tolist()))
        values = tail[f].tolist()
        unseen, rare = sum(v not in seen for v in values), sum(0 < seen.get(v, 0) < 2 for v in values)
        assert result["oov"][f] == {"values": unseen + rare, "unseen": unseen, "rare": rare,
                                    "row_trained": bool(counts[f][1].min() < 2)}, f
    assert result["oov_values"] == sum(o["values"] for o in result["oov"].values()) > 0


def _folder_of(raw: Path, out: Path) -> Path:
    if not out.exists():
        preprocess_criteo(raw, out, split="none", progress=False)
    return out


def test_unseen_values_map_to_the_oov_index(sample):
    root, _ = sample
    counts = load_counts(root / "data" / "counts.npz")
    vocabs = {f: Vocabulary(*counts[f], min_count=2) for f in SPARSE}
    raw = next(iter(CriteoData(_folder_of(root / "tail.tsv", root / "tail-own")).batches("all", 1200, ids="raw")))
    tally = {f: [0, 0] for f in SPARSE}
    mapped = map_ids(raw, vocabs, tally)
    for f in SPARSE:
        ids, index = raw.sparse[f].values(), mapped.sparse[f].values()
        known = torch.from_numpy(np.isin(ids.numpy(), counts[f][0][counts[f][1] >= 2]))
        assert bool((index[~known] == vocabs[f].oov_index).all()) and bool((index[known] < vocabs[f].oov_index).all())
        assert sum(tally[f]) == int((~known).sum())


def test_vocab_from_loads_with_the_training_indices(sample, capsys):
    root, _ = sample
    for source in ("run", "data"):  # a run folder (its kept vocabulary) or the training data folder
        out = root / f"tail-{source}"
        assert main(["preprocess", "criteo", str(root / "tail.tsv"), "--vocab-from", str(root / source),
                     "--out", str(out)]) == 0
        assert "ids map with the vocabulary" in capsys.readouterr().out
        assert (out / "counts.npz").read_bytes() == (root / "data" / "counts.npz").read_bytes()
        counts = load_counts(out / "counts.npz")
        vocabs = {f: Vocabulary(*counts[f], min_count=2) for f in SPARSE}
        data = CriteoData(out)
        raw = next(iter(data.batches("all", 4096, ids="raw")))
        indexed = next(iter(data.batches("all", 4096, min_count=2)))
        mapped = map_ids(raw, vocabs, {f: [0, 0] for f in SPARSE})
        assert torch.equal(indexed.sparse.values(), mapped.sparse.values())
    folder = evaluate_run(root / "run", root / "tail-run", out=root / "f.json")
    raw_file = evaluate_run(root / "run", root / "tail.tsv", out=root / "r.json")
    assert (folder["auc"], folder["oov"]) == (raw_file["auc"], raw_file["oov"])


def test_calibration_is_the_mean_prediction_and_the_observed_rate(sample):
    root, _ = sample
    run = root / "run"
    result = evaluate_run(run, root / "data", split="val", out=root / "c.json")
    config = read_run_config(run)
    model, _, _ = load_run_model(run, config, len(DENSE))
    counts = load_counts(run / "vocabulary.npz")
    vocabs = {f: Vocabulary(*counts[f], min_count=2) for f in SPARSE}
    with torch.no_grad():
        batch = map_ids(next(iter(CriteoData(root / "data").batches("val", 4096, ids="raw"))), vocabs,
                        {f: [0, 0] for f in SPARSE})
        p = torch.sigmoid(model(batch.dense, batch.sparse).double()).numpy()
    labels = read_rows(root / "data", "val")["label"]
    assert result["calibration"]["mean_predicted"] == pytest.approx(p.mean(), rel=1e-9)
    assert result["calibration"]["observed"] == labels.mean()
    assert result["calibration"]["ratio"] == pytest.approx(p.mean() / labels.mean(), rel=1e-9)
    assert calibration(torch.zeros(4), torch.zeros(4))["ratio"] is None


def test_a_mismatched_vocabulary_is_refused(sample, tmp_path, capsys):
    root, _ = sample
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)  # copies: the tampering below leaves the module's run alone
    with np.load(run / "vocabulary.npz") as z:
        arrays = {k: z[k].copy() for k in z.files}
    arrays["C1/counts"][0] += 1  # same shapes, another ranking: silently off if used
    with open(run / "vocabulary.npz", "wb") as f:
        np.savez(f, **arrays)
    # the kept copy differs, the recorded source still has the bytes: that one is used
    assert evaluate_run(run, root / "data", split="val", out=tmp_path / "ok.json")["rows"] == 960
    record = json.loads((run / "vocabulary.json").read_text())
    (run / "vocabulary.json").write_text(json.dumps({**record, "source": str(tmp_path / "gone" / "counts.npz")}))
    with pytest.raises(ValueError, match=rf"{run}: refusing a mismatched vocabulary: the run trained with sha256 "
                       rf"{record['sha256'][:16]}\.\.\., but {run / 'vocabulary.npz'} has sha256 .*; "
                       rf"{tmp_path / 'gone' / 'counts.npz'} is missing"):
        evaluate_run(run, root / "tail.tsv", out=tmp_path / "no.json")
    assert main(["preprocess", "criteo", str(root / "tail.tsv"), "--vocab-from", str(run), "--out",
                 str(tmp_path / "x")]) == 2
    assert f"error: {run}: refusing a mismatched vocabulary" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before converting anything


def test_a_min_count_1_run_warns_of_its_untrained_oov_row(sample, tmp_path, capsys):
    root, _ = sample
    config = TrainConfig(data=str(root / "data"), batch_size=256, max_steps=3, min_count=1, model_options=MODEL)
    Trainer(config, tmp_path / "run1", progress=False).fit()
    assert main(["evaluate", str(tmp_path / "run1"), "--data", str(root / "tail.tsv"), "--out",
                 str(tmp_path / "e.json")]) == 0
    out, err = capsys.readouterr()
    result = json.loads((tmp_path / "e.json").read_text())
    assert json.loads(out)["oov_values"] == result["oov_values"] > 0
    assert not any(o["row_trained"] for o in result["oov"].values())
    assert result["warnings"] and f"warning: {result['oov_values']:,} values of " in err
    assert "never trained (min_count=1 cuts no training value" in err


def test_the_command_line_trains_says_its_best_step_and_evaluates(sample, tmp_path, capsys):
    root, _ = sample
    assert main(["train", "--data", str(root / "data"), "--batch-size", "256", "--max-steps", "8", "--eval-every",
                 "4", "--raw-ids", "--out", str(tmp_path / "run"), "-m", "bottom=(16, 16)", "-m", "top=(16,)"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoints"] == {"best": str(tmp_path / "run" / "best.pt"),
                                      "last": str(tmp_path / "run" / "checkpoint.pt")}
    assert summary["best_step"] in (4, 8)
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(root / "data"), "--split", "val"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["auc"] == summary["val"]["auc"] and shown["oov"] is None and shown["raw_ids"]  # raw ids: no OOV
    assert json.loads((tmp_path / "run" / "evaluate.json").read_text())["step"] == summary["best_step"]
    with pytest.raises(SystemExit, match="no such file or data folder"):
        main(["evaluate", str(tmp_path / "run"), "--data", str(tmp_path / "nothing.tsv")])


def test_the_real_sample_tail_is_scored(tmp_path):
    """Train on the first 8,000 lines of the real sample (10 steps: a smoke test), score the rest as a raw file."""
    lines = shared_file("criteo_kaggle_head10k.tsv").read_bytes().splitlines(keepends=True)
    (tmp_path / "head.tsv").write_bytes(b"".join(lines[:8000]))
    (tmp_path / "tail.tsv").write_bytes(b"".join(lines[8000:]))
    preprocess_criteo(tmp_path / "head.tsv", tmp_path / "data", split="ordered", fractions=(0.875, 0.125, 0.0),
                      progress=False)
    config = TrainConfig(data=str(tmp_path / "data"), batch_size=256, max_steps=10, eval_every=5, model_options=MODEL)
    Trainer(config, tmp_path / "run", progress=False).fit()
    result = evaluate_run(tmp_path / "run", tmp_path / "tail.tsv")
    assert (result["rows"], result["bad_lines"]) == (len(lines) - 8000, 0)
    assert 0 < result["auc"] < 1 and result["oov"]["C3"]["unseen"] > 0 and result["warnings"] == []
