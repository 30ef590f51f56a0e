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


def test_train_into_an_earlier_run_needs_force_or_resume(tmp_path, capsys):
    from embtables.datasets.synthetic import synth_criteo

    synth_criteo(tmp_path / "data", rows=3000, seed=0, scale=1e-4, min_rows=20, part_rows=1500)
    run = ["train", "--data", str(tmp_path / "data"), "--batch-size", "256", "--max-steps", "2", "--out",
           str(tmp_path / "run"), "-m", "bottom=(16, 16)", "-m", "top=(16,)"]
    assert main(run) == 0
    with pytest.raises(SystemExit, match=f"error: {tmp_path / 'run'} already holds a training run"):
        main(run + ["--seed", "1"])
    assert main(run + ["--seed", "1", "--force"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["seed"] == 1
    with pytest.raises(SystemExit):  # argparse: --resume and --force contradict each other
        main(run + ["--resume", "--force"])


def test_few_steps_are_said_with_what_to_change(tmp_path, capsys):
    from embtables.datasets.synthetic import synth_criteo

    synth_criteo(tmp_path / "data", rows=3000, seed=0, scale=1e-4, min_rows=20, part_rows=1500)
    assert main(["train", "--data", str(tmp_path / "data"), "--batch-size", "256", "--epochs", "2", "--out",
                 str(tmp_path / "run"), "-m", "bottom=(16, 16)", "-m", "top=(16,)"]) == 0
    out, err = capsys.readouterr()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["train_rows"] == 2400
    assert json.loads(out)["steps"] == 18
    assert err.endswith("note: 2 epochs of 9 steps (batch 256 over 2,400 rows): 18 steps in all, few for the "
                        "embeddings to learn (fewer than 100); try --epochs 12 or --batch-size 32\n")


def test_few_steps_note_follows_the_schedule():
    from embtables.app.trainer import TrainConfig
    from embtables.cli.runs import few_steps_note

    sample = dict(steps=24, steps_per_epoch=8, train_rows=8000)
    assert few_steps_note(TrainConfig(data="x", epochs=3), sample) == (
        "3 epochs of 8 steps (batch 1,024 over 8,000 rows): 24 steps in all, few for the embeddings to learn "
        "(fewer than 100); try --epochs 13 or --batch-size 128")
    assert few_steps_note(TrainConfig(data="x", epochs=3, max_steps=24), sample) is None  # the user chose 24
    assert few_steps_note(TrainConfig(data="x", epochs=13), dict(sample, steps=104)) is None
    tiny = dict(steps=1, steps_per_epoch=1, train_rows=1100)  # no power-of-two batch >= 32 reaches 100 steps
    assert few_steps_note(TrainConfig(data="x"), tiny).endswith("try --epochs 100")


def test_report_of_an_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="results.parquet is missing"):
        main(["report", str(tmp_path)])
