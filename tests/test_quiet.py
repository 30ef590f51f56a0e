"""Runs print nothing a user cannot act on: torch's is_fx_tracing message (triggered by torchrec's KJT) is dropped,
and only it."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = """
import torch, embtables as et, embtables.app
import torch.fx._symbolic_trace as st
from torchrec import KeyedJaggedTensor
ebc = et.build_collection([et.TableConfig("C1", 100, 8)], "hash", budget=0.5)
ebc(KeyedJaggedTensor(["C1"], torch.tensor([1, 2]), lengths=torch.tensor([1, 1])))
st.log.warning("another message of that logger")
"""


def test_is_fx_tracing_message_is_dropped_and_nothing_else():
    run = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "is_fx_tracing will return true" not in run.stderr + run.stdout
    assert "another message of that logger" in run.stderr


def test_without_the_app_the_message_is_torchs():
    """The filter is ours: a plain torchrec KJT prints it (so the test above tests something)."""
    code = "import torch\nfrom torchrec import KeyedJaggedTensor\nKeyedJaggedTensor(['a'], torch.tensor([1]), lengths=torch.tensor([1]))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert "is_fx_tracing will return true" in run.stderr


def test_progress_in_a_log_is_lines_and_quiet_is_nothing(tmp_path):
    """Written to a pipe, training's progress is a plain line every 5% (no carriage returns); --quiet prints none;
    the closing summary names metrics.json and the checkpoints."""
    import json

    from embtables.datasets.synthetic import synth_criteo

    data = tmp_path / "data"
    synth_criteo(data, seed=0, rows=3000, scale=1e-4, min_rows=20, part_rows=1000)
    base = [sys.executable, "-m", "embtables.cli", "train", "--data", str(data), "--method", "hash", "--budget", "0.3",
            "--backend", "torch", "--batch-size", "64", "-m", "bottom=(8,)", "-m", "top=(8,)"]
    loud = subprocess.run(base + ["--out", str(tmp_path / "a")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0, loud.stderr[-2000:]
    lines = [x for x in loud.stderr.splitlines() if x.startswith("train: ")]
    assert "\r" not in loud.stderr and 10 <= len(lines) <= 21 and lines[-1].startswith("train: 37/37 step (100%)")
    summary = json.loads(loud.stdout)
    assert summary["metrics"] == str(tmp_path / "a" / "metrics.json") and summary["checkpoints"]["best"].endswith("best.pt")
    quiet = subprocess.run(base + ["--out", str(tmp_path / "b"), "--quiet"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert quiet.returncode == 0 and "train: " not in quiet.stderr


def test_quiet_reaches_preprocessing_and_evaluation(monkeypatch):
    """--quiet turns off the progress of `preprocess criteo`, `preprocess csv` and `evaluate` (a raw file's
    preprocessing); without it they show it."""
    import embtables.app.evaluate as evaluate
    import embtables.cli.data as data
    import embtables.cli.tabular as tabular
    from embtables.cli import build_parser

    seen = []

    def record(*args, progress, **kwargs):
        seen.append(progress)
        raise ValueError("stop here")

    monkeypatch.setattr(data, "preprocess_criteo", record)
    monkeypatch.setattr(tabular, "preprocess_tabular", record)
    monkeypatch.setattr(evaluate, "evaluate_run", record)
    commands = [["preprocess", "criteo", "day.tsv", "--out", "x"],
                ["preprocess", "csv", "t.csv", "--label", "y", "--out", "x"], ["evaluate", "run", "--data", "day.tsv"]]
    for command in commands:
        for quiet in (False, True):
            args = build_parser().parse_args(command + (["--quiet"] if quiet else []))
            try:
                args.run(args)
            except SystemExit:
                pass
            assert seen.pop() is not quiet, command


def test_help_shows_defaults_model_options_and_what_a_budget_is():
    from embtables.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    train = sub["train"].format_help()
    assert "samples per training step (default: 1024)" in train and "(default: 0)" in train
    assert "dlrm: bottom=(512, 256, 64, 16)" in " ".join(train.split()) and "din: pooling='attention'" in train
    assert "sum of all tables' full fp32 bytes" in " ".join(train.split())
    assert "(default: None)" not in train and "(default: False)" not in train
