"""`embtables train --nproc 2`: DLRM and DIN on two gloo processes, each reading its own row groups, the tables
sharded by torchrec, equal one process fed the same global batches; rank 0 writes the run; its checkpoint loads
in one process on another store; what cannot run is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from embtables.datasets.synthetic import synth_criteo
from embtables.datasets.synthetic_sequences import synth_sequences

from embtables.app.checkpoints import restore_model
from embtables.app.distributed import free_port, launch
from embtables.app.train import train_on_ranks
from embtables.app.trainer import TrainConfig, Trainer, build_model, open_data
from embtables.checkpoint import collection_from_state, load_tensor_file
from embtables.datasets.shares import global_batches


@pytest.fixture(scope="module")
def criteo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("criteo")
    synth_criteo(out, rows=3000, seed=0, scale=0.002, part_rows=230)  # several units: the ranks split them
    return out


@pytest.fixture(scope="module")
def sequences(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seq")
    synth_sequences(out, users=300, seed=0, part_rows=400)
    return out


def _config(data: Path, model: str, method: str, **kw) -> TrainConfig:
    budget = None if method == "full" else 0.5
    return TrainConfig(model=model, data=str(data), method=method, budget=budget, backend="torchrec", batch_size=64,
                       max_steps=6, eval_every=3, dense_optimizer="adagrad", dense_lr=0.05,
                       model_options={"bottom": (16, 16), "top": (16,)} if model == "dlrm" else {"activation": "prelu"},
                       **kw)


class AsOnRanks:
    """A data folder whose batches are the global batches `world` processes read (`shares.global_batches`)."""

    def __init__(self, path: Path, world: int) -> None:
        self.data, self.world = open_data(path), world

    def __getattr__(self, name: str):
        return getattr(self.data, name)

    def batches(self, split: str, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                **options):
        return global_batches(self.data, split, batch_size, self.world, shuffle, seed, drop_last, **options)


# DIN runs 3 steps: from its 4th on, its attention weights' first gradients (near zero: 1e-7 to 1e-11 at step 1)
# are normalised by the dense Adagrad, which turns float differences of the two summation orders into weight
# differences of 1e-3 (measured on this data: equal through step 3, 401 of the first attention layer's 10,240
# weights apart by more than 1e-3 after step 4, for torchrec's sharding and for table-wise alike; with SGD or
# Adagrad on the tables, or sum pooling, the 6 steps' losses agree within 3e-6)
@pytest.mark.parametrize("model,method,steps", [("dlrm", "qr", 6), ("dlrm", "mixed_dim", 6), ("din", "hash", 3)])
def test_two_processes_train_as_one(criteo: Path, sequences: Path, tmp_path: Path, model: str, method: str,
                                    steps: int) -> None:
    config = TrainConfig(**{**_config(criteo if model == "dlrm" else sequences, model, method).__dict__,
                            "max_steps": steps})
    one = Trainer(config, tmp_path / "one", data=AsOnRanks(config.data, 2), progress=False).fit()
    two = train_on_ranks(config, tmp_path / "two", 2, progress=False)
    assert two["processes"] == 2 and one["processes"] == 1
    print(f"{model} {method}: " + ", ".join(f"{t} {kind} {r}" for t, kind, r in two["sharding"]))
    for a, b in zip(one["evals"], two["evals"], strict=True):
        assert a["step"] == b["step"]
        for split in ("val", "test"):
            assert b[split]["rows"] == a[split]["rows"]  # every row scored once, padding dropped
            assert b[split]["auc"] == pytest.approx(a[split]["auc"], abs=2e-4)
            assert b[split]["logloss"] == pytest.approx(a[split]["logloss"], rel=1e-4)
    # one checkpoint, written by rank 0 with the tables gathered whole: it loads in one process on another store
    blob = load_tensor_file(tmp_path / "two" / "checkpoint.pt", "checkpoint")
    reference = load_tensor_file(tmp_path / "one" / "checkpoint.pt", "checkpoint")
    for mine, theirs in zip(blob["collections"], reference["collections"], strict=True):
        for name, w in mine["tables"].items():
            torch.testing.assert_close(w, theirs["tables"][name], rtol=1e-3, atol=1e-5)
    for state in blob["collections"]:
        served = collection_from_state(state, "two/checkpoint.pt", backend="torch")
        for name, w in zip(state["tables"], served.store.weights()):
            assert torch.equal(w, state["tables"][name])
    # and the whole run goes on in one process on the same store
    model = build_model(config, open_data(config.data))
    restore_model(model, blob, "two/checkpoint.pt")


def _stop_after(config: TrainConfig, out: Path, steps: int) -> None:
    Trainer(config, out, progress=False).fit(stop_after=steps)


def test_resumed_two_process_run_equals_the_uninterrupted_one(criteo: Path, tmp_path: Path) -> None:
    config = _config(criteo, "dlrm", "hash", checkpoint_every=2)
    whole = train_on_ranks(config, tmp_path / "whole", 2, progress=False)
    # stop after 4 steps (rank 0's checkpoint of step 4 stays), then resume on two processes
    launch(2, "cpu", _stop_after, config, tmp_path / "cut", 4)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    # within an epoch, the rows of the remaining batches depend on the number of processes: resuming on one is refused
    with pytest.raises(ValueError, match=r"stopped within epoch 0 \(after its batch 4\) on 2 process\(es\); resume it on 2"):
        Trainer(config, tmp_path / "cut", progress=False).fit(resume=True)
    resumed = train_on_ranks(config, tmp_path / "cut", 2, resume=True, progress=False)
    assert [e["step"] for e in resumed["evals"]] == [e["step"] for e in whole["evals"]][-len(resumed["evals"]):]
    assert resumed["test"]["last"]["auc"] == pytest.approx(whole["test"]["last"]["auc"], abs=1e-6)


def test_refusals(criteo: Path, sequences: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use --backend torchrec"):
        train_on_ranks(TrainConfig(**{**_config(criteo, "dlrm", "hash").__dict__, "backend": "fbgemm"}),
                       tmp_path / "a", 2, progress=False)
    with pytest.raises(ValueError, match="must be a multiple of --nproc 2"):
        train_on_ranks(TrainConfig(**{**_config(criteo, "dlrm", "hash").__dict__, "batch_size": 63}),
                       tmp_path / "b", 2, progress=False)
    with pytest.raises(ValueError, match="learns its plan in stages"):
        train_on_ranks(TrainConfig(**{**_config(criteo, "dlrm", "hash").__dict__, "method": "optembed"}),
                       tmp_path / "c", 2, progress=False)
    with pytest.raises(ValueError, match="normalises with batch statistics .*use -m activation=prelu"):
        train_on_ranks(TrainConfig(**{**_config(sequences, "din", "hash").__dict__, "model_options": {}}),
                       tmp_path / "d", 2, progress=False)
    with pytest.raises(ValueError, match="runs on CPUs \\(gloo\\) only: on cuda it has not been tested"):
        train_on_ranks(TrainConfig(**{**_config(criteo, "dlrm", "hash").__dict__, "device": "cuda"}),
                       tmp_path / "e", 2, progress=False)
    # one process on the torchrec store needs no sharding and trains as any store does
    assert Trainer(_config(criteo, "dlrm", "hash"), None, progress=False).net is not None


def test_cli_nproc_and_torchrun_give_the_same_run_and_print_nothing_else(criteo: Path, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    args = ["train", "--data", str(criteo), "--method", "hash", "--budget", "0.5", "--backend", "torchrec",
            "--batch-size", "64", "--max-steps", "4", "--quiet", "-m", "bottom=(16,16)", "-m", "top=(16,)"]
    spawned = subprocess.run([sys.executable, "-m", "embtables.cli", *args, "--nproc", "2", "--out",
                              str(tmp_path / "spawned")], capture_output=True, text=True, timeout=300)
    assert spawned.returncode == 0, spawned.stderr
    assert spawned.stderr == ""  # nothing a user cannot act on
    assert json.loads(spawned.stdout)["steps"] == 4  # rank 0's one summary
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                               "--master-port", str(free_port()), "-m", "embtables.cli", *args, "--out",
                               str(tmp_path / "torchrun")], capture_output=True, text=True, timeout=300)
    assert torchrun.returncode == 0, torchrun.stderr
    a, b = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("spawned", "torchrun"))
    assert a["processes"] == b["processes"] == 2 and a["sharding"] == b["sharding"]
    assert a["test"]["last"] == b["test"]["last"]

