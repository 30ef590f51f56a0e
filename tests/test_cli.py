"""The `embtables` command line: plan, train, report."""

import json

import pytest

from embtables.cli import main, parse_options


def test_plan_prints_the_solved_tables(capsys):
    assert main(["plan", "--tables", "criteo-kaggle", "--method", "hash", "--budget", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "| C3 | 10131227 | 16 |" in out
    assert "21,607,872 bytes" in out and "0.00999992 of full" in out
    assert "vocabulary to serve raw ids: 758,368 bytes" in out  # the 8 tables hash keeps whole
    assert main(["plan", "--method", "qr", "--budget", "0.01", "--raw-ids"]) == 0
    assert "vocabulary to serve raw ids: 0 bytes (26 tables take raw ids hashed into [0, N) instead)" in \
        capsys.readouterr().out


def test_plan_lists_methods_and_rejects_bad_options(capsys):
    main(["plan", "--list"])
    assert {"full", "hash"} <= set(capsys.readouterr().out.split())
    with pytest.raises(SystemExit, match=r"unknown option\(s\) \['bucket'\]"):
        main(["plan", "--method", "hash", "-o", "bucket=3"])
    with pytest.raises(SystemExit, match="smallest feasible budget is 1"):
        main(["plan", "--method", "full", "--budget", "0.5"])
    with pytest.raises(SystemExit, match="name=value"):
        main(["plan", "--method", "hash", "-o", "buckets"])


def test_parse_options_reads_python_literals():
    assert parse_options(["a=3", "b=0.5", "c=add", "d=True", "e=[1, 2]"]) == {
        "a": 3, "b": 0.5, "c": "add", "d": True, "e": [1, 2]}


def test_train_command_writes_metrics(tmp_path, capsys):
    from embtables.datasets.synthetic import synth_criteo

    synth_criteo(tmp_path / "data", rows=3000, seed=0, scale=1e-4, min_rows=20, part_rows=1500)
    code = main(["train", "--data", str(tmp_path / "data"), "--method", "hash", "--budget", "0.2",
                 "--batch-size", "256", "--max-steps", "3", "--out", str(tmp_path / "run"),
                 "-m", "bottom=(16, 16)", "-m", "top=(16,)"])
    assert code == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["method"] == "hash" and metrics["steps"] == 3
    assert "\"test\"" in capsys.readouterr().out


def test_report_of_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="results.parquet is missing"):
        main(["report", str(tmp_path)])
