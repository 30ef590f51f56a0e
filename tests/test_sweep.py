"""Sweep end to end: results file, resume after a kill, infeasible budgets, report from results alone."""

import shutil

import json

import pandas as pd
import pytest

import embtables.app.sweep as sw
from embtables.app.report import write_report
from embtables.app.trainer import TrainConfig

SMALL = dict(rows=4000, scale=1e-4, min_rows=20, part_rows=2000)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from embtables.datasets.synthetic import synth_criteo

    path = tmp_path_factory.mktemp("syn")
    synth_criteo(path, seed=0, **SMALL)
    return str(path)


def config(data, **kw):
    train = TrainConfig(data=data, batch_size=256, max_steps=4, model_options=dict(bottom=(16, 16), top=(16,)))
    base = dict(train=train, methods=("full", "hash", "qr"), budgets=(0.3, 1e-7), seeds=(0,))
    base.update(kw)
    return sw.SweepConfig(**base)


def test_tiny_sweep_writes_well_formed_results_and_report(data, tmp_path):
    df = sw.sweep(config(data, methods=("full", "hash"), budgets=(0.3, 0.05)), tmp_path, command="test", progress=False)
    assert list(df["method"]) == ["full", "hash", "hash"]
    assert (df["status"] == "ok").all()
    assert (df["memory_bytes"] <= df["budget"] * df["full_bytes"]).all()
    for col in ("test_auc_best", "val_auc_last", "gap_to_full", "gap_to_bayes", "train_samples_per_s",
                "peak_rss_bytes", "wall_seconds", "versions", "compression"):
        assert df[col].notna().all(), col
    full_auc = df.loc[df["method"] == "full", "test_auc_best"].iloc[0]
    assert df.loc[1, "gap_to_full"] == pytest.approx(df.loc[1, "test_auc_best"] - full_auc)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "results.csv")[["cell"]], df[["cell"]])
    # the vocabulary ranks need: 16 bytes per id of the full table; hash keeps only its small tables whole
    vocab = df.set_index("method")["index_bytes"]
    assert vocab["full"] == 16 * df["full_bytes"].iloc[0] // (4 * 16)
    assert (df.loc[df["method"] == "hash", "index_bytes"] < vocab["full"]).all()
    report = write_report(tmp_path).read_text()
    assert "## Budget 0.3" in report and "## Recommendation per budget" in report
    assert (tmp_path / "auc_vs_bytes.png").stat().st_size > 10_000
    assert (tmp_path / "auc_vs_bytes_with_vocabulary.png").stat().st_size > 10_000
    header = next(line for line in report.splitlines() if line.startswith("| rank"))
    row = next(line for line in report.splitlines() if line.startswith("| 1 | hash"))
    assert "+ vocabulary, of full" in header and header.count("|") == row.count("|")
    r = df[df["method"] == "hash"].iloc[0]
    assert f"| {(r['memory_bytes'] + r['index_bytes']) / r['full_bytes']:.4g} |" in report.split("## Budget 0.3")[1]


def test_infeasible_budgets_are_recorded_not_skipped(data, tmp_path, in_process):
    df = sw.sweep(config(data), tmp_path, progress=False)
    bad = df[df["status"] == "infeasible"]
    assert set(bad["method"]) == {"hash", "qr"} and (bad["budget"] == 1e-7).all()
    assert (bad["smallest_budget"] > 1e-7).all()
    assert "smallest feasible budget" in write_report(tmp_path).read_text()


def test_resume_after_a_kill_keeps_finished_rows_and_runs_only_the_rest(data, tmp_path, in_process, monkeypatch):
    cfg = config(data)
    real = sw._spawn

    def dying(cell, folder):
        if len(in_process) == 2:
            raise KeyboardInterrupt  # killed during the third cell
        return real(cell, folder)

    monkeypatch.setattr(sw, "_spawn", dying)
    with pytest.raises(KeyboardInterrupt):
        sw.sweep(cfg, tmp_path, progress=False)
    first = pd.read_parquet(tmp_path / "results.parquet")
    assert len(first) == 2
    monkeypatch.setattr(sw, "_spawn", real)
    in_process.clear()
    df = sw.sweep(cfg, tmp_path, progress=False)
    assert len(df) == 5 and len(in_process) == 3  # only the unfinished cells ran
    pd.testing.assert_frame_equal(df.iloc[:2].reset_index(drop=True), first, check_dtype=False)
    in_process.clear()
    sw.sweep(cfg, tmp_path, command="again", progress=False)
    assert in_process == []
    sw.sweep(cfg, tmp_path, command="more", progress=False)
    sw.sweep(cfg, tmp_path, command="again", progress=False)
    assert json.loads((tmp_path / "sweep.json").read_text())["commands"] == ["again", "more"]  # each once, in order


def test_report_from_results_file_alone(data, tmp_path, in_process):
    sw.sweep(config(data, methods=("full", "hash"), budgets=(0.3,), seeds=(0, 1)), tmp_path / "a", progress=False)
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "results.parquet", tmp_path / "b")
    text = write_report(tmp_path / "b").read_text()
    assert "| 1 | hash |" in text and "over 2 seed(s)" in text
    assert "gap to Bayes" in text


def test_report_without_planted_truth_has_no_bayes_column(data, tmp_path, in_process):
    sw.sweep(config(data, methods=("full", "hash"), budgets=(0.3,)), tmp_path, progress=False)
    df = pd.read_parquet(tmp_path / "results.parquet")
    df[["bayes_val_auc", "bayes_test_auc", "gap_to_bayes"]] = float("nan")  # as on real data
    df.to_parquet(tmp_path / "results.parquet")
    text = write_report(tmp_path).read_text()
    assert "gap to Bayes" not in text and "nan" not in text
    header = next(line for line in text.splitlines() if line.startswith("| rank"))
    row = next(line for line in text.splitlines() if line.startswith("| 1 | hash"))
    assert header.count("|") == row.count("|")


def test_different_recipe_in_same_folder_is_refused(data, tmp_path, in_process):
    sw.sweep(config(data, methods=("full",)), tmp_path, progress=False)
    other = config(data, methods=("full",))
    other = sw.SweepConfig(train=TrainConfig(data=data, batch_size=128, max_steps=4), methods=("full",))
    with pytest.raises(ValueError, match="different training recipe"):
        sw.sweep(other, tmp_path, progress=False)


def test_bad_sweep_arguments():
    with pytest.raises(ValueError, match="unknown method"):
        sw.SweepConfig(train=TrainConfig(data="x"), methods=("nope",))
    with pytest.raises(ValueError, match="budget"):
        sw.SweepConfig(train=TrainConfig(data="x"), methods=("hash",), budgets=(2.0,))
    with pytest.raises(ValueError, match="not in the sweep"):
        sw.SweepConfig(train=TrainConfig(data="x"), methods=("hash",), options={"qr": {"operation": "add"}})


def test_recommendations_follow_the_numbers():
    from embtables.app.report import recommendations

    def r(method, budget, auc, spread=0.0):
        return dict(method=method, options="{}", budget=budget, auc=auc, auc_min=auc - spread, auc_max=auc + spread,
                    seeds=2, gap_to_full=auc - 0.80, bytes=budget * 1e6, speed_vs_full=1.0)

    agg = pd.DataFrame([r("qr", 0.1, 0.79), r("hash", 0.1, 0.78), r("qr", 0.01, 0.75), r("hash", 0.01, 0.70),
                        r("hash", 0.001, 0.65, 0.01), r("qr", 0.001, 0.649)])
    lines = recommendations(agg)
    assert len(lines) == 2
    assert lines[0].startswith("- budgets 0.1 to 0.01: use **qr**:")
    assert "at 0.1 -0.0100 AUC" in lines[0] and "at 0.01 -0.0500 AUC" in lines[0]
    assert lines[1].startswith("- budget 0.001: use **hash (tied within seed spread with qr)**: -0.1500 AUC")


def test_each_row_records_the_conditions_its_speed_was_measured_under(data, tmp_path, in_process, monkeypatch):
    cfg = config(data, methods=("full", "hash"), budgets=(0.3, 0.05))
    real = sw._spawn

    def dying(cell, folder):
        if len(in_process) == 2:
            raise KeyboardInterrupt
        return real(cell, folder)

    monkeypatch.setattr(sw, "_spawn", dying)
    with pytest.raises(KeyboardInterrupt):
        sw.sweep(cfg, tmp_path, progress=False)
    monkeypatch.setattr(sw, "_spawn", real)
    df = sw.sweep(cfg, tmp_path, progress=False)
    for col in ("load_start", "load_end", "other_cores"):
        assert (df[col] >= 0).all(), col  # Linux has both the load average and /proc/stat
    assert (df["cores"] >= 1).all()
    runs = list(df["sweep_run"])
    assert runs[0] == runs[1] != runs[2]  # the resumed sweep measured its last cell in another run
    text = write_report(tmp_path).read_text()
    assert "x †" in text and f"- hash at budget 0.05, seed 0: measured in another run of the sweep ({runs[2]}; " \
        f"full: {runs[0]}); " in text
    assert "(not comparable: another sweep run" in text  # (and ", other load" if the machine got busier)


def _conditions_table(**full):
    """A full and a hash row measured in one run under the same load, the full row changed by `full`."""
    base = dict(status="ok", budget=1.0, seed=0, sweep_run="r1", other_cores=0.1, cores=4, load_start=0.5,
                load_end=0.6)
    return pd.DataFrame([{**base, "method": "full", **full}, {**base, "method": "hash", "budget": 0.1}])


def test_speeds_are_flagged_when_measured_in_another_run_or_under_other_load():
    from embtables.app.conditions import conditions_section, speed_conditions

    same = _conditions_table()
    assert list(speed_conditions(same)) == ["", ""]
    assert "Every speed here was measured in one run of the sweep (r1) under comparable load" in "\n".join(
        conditions_section(same, speed_conditions(same)))
    assert list(speed_conditions(_conditions_table(other_cores=1.1))) == ["", ""]  # within a quarter of 4 cores
    assert list(speed_conditions(_conditions_table(other_cores=1.2))) == ["", "other load"]
    both = _conditions_table(other_cores=2.0, sweep_run="r0")
    assert list(speed_conditions(both)) == ["", "another sweep run, other load"]
    text = "\n".join(conditions_section(both, speed_conditions(both)))
    assert "as during the full table's run (2.00; a difference over 1.0, 25% of the machine's 4 cores, counts)" in text
    assert ("- hash at budget 0.1, seed 0: measured in another run of the sweep (r1; full: r0); 0.10 cores busy "
            "elsewhere (full: 2.00), load average 0.50 at its start and 0.60 at its end") in text
    old = _conditions_table().drop(columns=["sweep_run", "other_cores", "cores"])  # written before they were kept
    assert list(speed_conditions(old)) == ["", ""] and "do not record" in conditions_section(old, speed_conditions(old))[2]


def _agg(full_auc, hash_auc, spread=0.0):
    from embtables.app.report import aggregate

    rows = [dict(method=m, options="{}", budget=b, status="ok", seed=s, memory_bytes=1e6 * b, full_bytes=1e6,
                 test_auc_best=auc + (spread if s else -spread), test_logloss_best=0.5, train_samples_per_s=1e4)
            for m, b, auc in (("full", 1.0, full_auc), ("hash", 0.1, hash_auc), ("qr", 0.1, full_auc - 0.01))
            for s in (0, 1)]
    return aggregate(pd.DataFrame(rows))


def test_a_compressed_table_beating_full_is_explained_only_when_it_does(data):
    from pathlib import Path

    from embtables.app.report import beats_full

    text = "\n".join(beats_full(_agg(0.75, 0.76), Path(data)))
    assert "## Compressed tables beat the full table" in text and "- budget 0.1: hash (+0.0100 AUC)" in text
    assert "qr" not in text  # below full
    assert "The likely reason is the data's size" in text and "overfits them" in text and "regularises" in text
    assert "the training split has 3,200 rows and 29% of its distinct ids occur once" in text
    assert beats_full(_agg(0.75, 0.74)) == []
    assert beats_full(_agg(0.75, 0.752, spread=0.005)) == []  # within the seed spread: not a win
    assert "data's size" in "\n".join(beats_full(_agg(0.75, 0.76), None))  # the data folder gone: still said


def test_report_command_says_where_the_report_and_figures_went(data, tmp_path, in_process, capsys):
    from embtables.cli import main

    sw.sweep(config(data, methods=("full", "hash"), budgets=(0.3,)), tmp_path, progress=False)
    capsys.readouterr()  # the sweep's own lines
    assert main(["report", str(tmp_path)]) == 0
    assert capsys.readouterr().out == (f"report: {tmp_path / 'report.md'}\nfigures: {tmp_path / 'auc_vs_bytes.png'}, "
                                       f"{tmp_path / 'throughput_vs_bytes.png'}, {tmp_path / 'auc_vs_bytes_with_vocabulary.png'}\n")
