"""Synthetic Criteo: same bytes for a seed, the layout and dtypes, counts, truth.json recomputed, Zipf shape."""

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from embtables.datasets import layout
from embtables.cli import build_parser
from embtables.datasets.synthetic import PlantedCriteo, SynthCriteoConfig, synth_criteo
from embtables.datasets.truth import probability_scores

SMALL = dict(scale=1e-4, min_rows=30, part_rows=1500)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_split(folder: Path, split: str):
    parts = sorted((folder / split).glob("part-*.parquet"), key=lambda p: int(p.stem.split("-")[1]))
    return pq.ParquetDataset([str(p) for p in parts]).read()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    return out, synth_criteo(out, rows=4000, seed=7, **SMALL)


def test_same_seed_gives_same_bytes_and_another_seed_differs(data, tmp_path):
    out, _ = data
    synth_criteo(tmp_path / "again", rows=4000, seed=7, **SMALL)
    synth_criteo(tmp_path / "other", rows=4000, seed=8, **SMALL)
    first = digest(out)
    assert len([k for k in first if k.endswith(".parquet")]) == 5  # train 3200 rows in 3 parts, val, test
    assert digest(tmp_path / "again") == first
    other = digest(tmp_path / "other")
    assert other.keys() == first.keys()
    assert all(other[k] != first[k] for k in first if k.endswith(".parquet"))


def test_layout_dtypes_and_summary(data):
    out, truth = data
    summary = layout.read_json(out / layout.SUMMARY_FILE)
    assert summary["kind"] == "criteo"
    assert summary["rows_read"] == summary["rows_written"] == 4000 and summary["bad_rows"] == 0
    rows = {"train": 3200, "val": 400, "test": 400}
    for split, n in rows.items():
        t = read_split(out, split)
        assert t.column_names == [layout.LABEL, *layout.DENSE, *layout.SPARSE]
        assert str(t.schema.field(layout.LABEL).type) == "int8"
        assert {str(t.schema.field(c).type) for c in layout.DENSE} == {"int32"}
        assert {str(t.schema.field(c).type) for c in layout.SPARSE} == {"int64"}
        assert t.num_rows == n == summary["splits"][split]["rows"] == truth["splits"][split]["rows"]
        labels = t.column(layout.LABEL).to_numpy()
        assert set(np.unique(labels)) <= {0, 1}
        assert labels.sum() == summary["splits"][split]["clicks"] == truth["splits"][split]["clicks"]
        ids = np.stack([t.column(c).to_numpy() for c in layout.SPARSE], 1)
        assert ((ids == layout.MISSING_CAT) | ((ids >= 0) & (ids < 2**32))).all()


def test_missing_values_follow_criteo_groups(tmp_path):
    model = PlantedCriteo(SynthCriteoConfig(**SMALL), seed=0)
    dense, ranks = model.sample(20_000, np.random.default_rng(0))
    missing = dense == layout.MISSING_INT
    assert (missing[:, 0] == missing[:, 9]).all()  # I1 and I10 are missing together, as in Criteo
    assert (missing[:, 6] == missing[:, 8]).all() and (missing[:, 6] == missing[:, 10]).all()  # I7, I9, I11
    assert abs(missing[:, 0].mean() - 0.448) < 0.02 and abs(missing[:, 11].mean() - 0.773) < 0.02
    assert not missing[:, 1].any() and (dense[:, 1] < 0).any()  # I2: never missing, sometimes negative
    cat_missing = ranks == -1
    assert (cat_missing[:, 18] == cat_missing[:, 25]).all()  # C19 and C26
    assert abs(cat_missing[:, 21].mean() - 0.8182) < 0.02 and not cat_missing[:, 0].any()


def test_counts_are_the_train_split_counts(data):
    out, _ = data
    counts = layout.load_counts(out / layout.COUNTS_FILE)
    t = read_split(out, "train")
    assert list(counts) == layout.SPARSE
    for f in layout.SPARSE:
        values, cnt = np.unique(t.column(f).to_numpy(), return_counts=True)
        order = np.lexsort((values, -cnt))
        np.testing.assert_array_equal(counts[f][0], values[order])
        np.testing.assert_array_equal(counts[f][1], cnt[order])


def test_truth_json_recomputed_from_the_written_files(data):
    out, truth = data
    assert truth["seed"] == 7 and truth["config"]["rows"] == 4000
    model = PlantedCriteo(SynthCriteoConfig(**truth["config"]), truth["seed"])
    assert model.bias == pytest.approx(truth["bias"], abs=0)
    for split in ("train", "val", "test"):
        t = read_split(out, split)
        dense = np.stack([t.column(c).to_numpy() for c in layout.DENSE], 1)
        raw = np.stack([t.column(c).to_numpy() for c in layout.SPARSE], 1)
        p = 1 / (1 + np.exp(-model.logits(dense, model.ranks(raw))))
        y = t.column(layout.LABEL).to_numpy()
        scores = probability_scores(y, p)
        assert scores["auc"] == pytest.approx(truth["splits"][split]["bayes_auc"], abs=1e-12)
        assert scores["logloss"] == pytest.approx(truth["splits"][split]["bayes_logloss"], abs=1e-9)
        assert 0.6 < truth["splits"][split]["bayes_auc"] < 0.95


def test_raw_ids_are_a_bijection_of_the_rank_and_not_the_rank():
    model = PlantedCriteo(SynthCriteoConfig(**SMALL), seed=3)
    ranks = np.stack([np.arange(50) % n for n in model.sizes], 1)
    ranks[::7] = -1
    raw = model.raw_ids(ranks)
    np.testing.assert_array_equal(model.ranks(raw), ranks)
    assert (raw[ranks == -1] == layout.MISSING_CAT).all()
    for f, n in enumerate(model.sizes):
        ids = model.raw_ids(np.arange(n), feature=f)
        assert np.unique(ids).size == n and not np.array_equal(ids, np.arange(n))


def test_zipf_frequencies_and_criteo_shaped_cardinalities():
    config = SynthCriteoConfig(scale=0.001, min_rows=200, zipf=1.1, zipf_offset=2.0)
    model = PlantedCriteo(config, seed=0)
    assert model.sizes[2] == 10131 and model.sizes[8] == 3 and model.sizes[0] == 200  # C3 scaled, C9 kept, C1 floored
    _, ranks = model.sample(400_000, np.random.default_rng(1))
    freq = np.bincount(ranks[:, 2][ranks[:, 2] >= 0], minlength=model.sizes[2]) / (ranks[:, 2] >= 0).sum()
    k = np.arange(5, 200)
    slope = np.polyfit(np.log(k + 1 + config.zipf_offset), np.log(freq[k]), 1)[0]
    assert slope == pytest.approx(-config.zipf, abs=0.08)
    expected = (3.0 ** -1.1) / ((np.arange(model.sizes[2]) + 3.0) ** -1.1).sum()  # P(rank 0)
    assert freq[0] == pytest.approx(expected, rel=0.03)


def test_planted_terms_and_the_pair_rule():
    flat = PlantedCriteo(SynthCriteoConfig(**SMALL, main_std=0.0, pair_std=0.0, dense_std=0.0, ctr=0.3), seed=0)
    dense, ranks = flat.sample(1000, np.random.default_rng(0))
    p = 1 / (1 + np.exp(-flat.logits(dense, ranks)))
    np.testing.assert_allclose(p, 0.3, atol=1e-9)  # the bias alone, solved for the click rate
    model = PlantedCriteo(SynthCriteoConfig(**SMALL, pairs=13), seed=0)
    assert len(model.pairs) == 13 and all(min(model.sizes[f], model.sizes[g]) <= 30 for f, g in model.pairs)
    dense, ranks = model.sample(1000, np.random.default_rng(0))
    base = model.logits(dense, ranks)
    f, g = model.pairs[0]
    moved = ranks.copy()
    moved[:, f] = -1  # a missing id drops its main effect and every pair it is in
    delta = base - model.logits(dense, moved)
    present = ranks[:, f] >= 0
    expected = model.main[f][ranks[present, f]]
    for a, b in model.pairs:
        if f in (a, b):
            other = b if a == f else a
            ok = ranks[present, other] >= 0
            mine = model.vectors[f][ranks[present, f]]
            theirs = model.vectors[other][np.maximum(ranks[present, other], 0)]
            dot = (mine * theirs).sum(1)
            expected = expected + np.where(ok, dot, 0.0)
    np.testing.assert_allclose(delta[present], expected, atol=1e-12)


@pytest.mark.parametrize("field, value", [("rows", 0), ("scale", 0.0), ("scale", 2.0), ("zipf", -1.0),
                                          ("ctr", 1.0), ("val_fraction", 0.6), ("pairs", 400), ("rank", True)])
def test_bad_config_values_name_the_option(field, value):
    kwargs = {field: value}
    if field == "val_fraction":
        kwargs["test_fraction"] = 0.5
    with pytest.raises(ValueError, match=field):
        SynthCriteoConfig(**kwargs)


def test_unknown_parameter_and_too_many_pairs(tmp_path):
    with pytest.raises(TypeError, match="zipff"):
        synth_criteo(tmp_path, rows=100, zipff=1.0)
    with pytest.raises(ValueError, match="context_rows"):
        PlantedCriteo(SynthCriteoConfig(**SMALL, context_rows=2, pairs=5), seed=0)


def test_refuses_an_existing_data_set_and_force_replaces_stale_parts(tmp_path):
    synth_criteo(tmp_path, rows=4000, seed=0, **SMALL)
    assert (tmp_path / "train" / "part-2.parquet").exists()
    with pytest.raises(FileExistsError, match="force"):
        synth_criteo(tmp_path, rows=2000, seed=0, **SMALL)
    synth_criteo(tmp_path, rows=2000, seed=0, force=True, **SMALL)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["part-0.parquet", "part-1.parquet"]


def test_cli_subcommand(tmp_path, capsys):
    args = build_parser().parse_args(["synth", "criteo", "--rows", "3000", "--out", str(tmp_path / "d"), "--seed", "2"])
    assert args.run(args) == 0
    assert "Bayes AUC" in capsys.readouterr().out
    truth = layout.read_json(tmp_path / "d" / layout.TRUTH_FILE)
    assert truth["seed"] == 2 and truth["config"] == {**SynthCriteoConfig().__dict__, "rows": 3000}


def test_the_criteo_loader_reads_synthetic_data_unchanged(data):
    loader = pytest.importorskip("embtables.datasets.loader")
    out, _ = data
    d = loader.CriteoData(out)
    counts = layout.load_counts(out / layout.COUNTS_FILE)
    assert [t.num_embeddings for t in d.tables(8)] == [counts[f][0].size + 1 for f in layout.SPARSE]
    batch = next(d.batches("val", 64))
    assert batch.dense.shape == (64, 13) and batch.labels.shape == (64,)
    t = read_split(out, "val").slice(0, 64)
    raw_c1 = t.column("C1").to_numpy()
    np.testing.assert_array_equal(batch.sparse["C1"].values().numpy(), d.vocabulary("C1").lookup(raw_c1))


def test_vocab_scale_from_the_command_line_sets_the_table_rows(tmp_path):
    from embtables.cli import main
    from embtables.files import read_json

    assert main(["synth", "criteo", "--rows", "1200", "--vocab-scale", "0.0002", "--out", str(tmp_path / "d")]) == 0
    sizes = read_json(tmp_path / "d" / layout.TRUTH_FILE)["cardinalities"]
    expected = SynthCriteoConfig(scale=0.0002).cardinalities()  # C3: round(10,131,227 x 0.0002) = 2026
    assert [sizes[f] for f in layout.SPARSE] == expected and sizes["C3"] == 2026
    assert read_json(tmp_path / "d" / layout.TRUTH_FILE)["config"]["scale"] == 0.0002
