"""`train()`: one training run of any method, the function behind `embtables train`: an ordinary `Trainer` run, or
for a method learned in stages (OptEmbed) its supernet, search and retraining (`stages.py`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from embtables.app.checkpoints import claim_run_folder
from embtables.app.distributed import Ranks, check_device_of_ranks, launch
from embtables.files import read_json
from embtables.app.stages import is_staged, train_stages
from embtables.app.trainer import TrainConfig, Trainer

__all__ = ["train", "train_on_ranks"]


def train(config: TrainConfig, out: str | Path | None = None, resume: bool = False, progress: bool = True,
          force: bool = False) -> dict[str, Any]:
    """Train and evaluate one configuration; returns the metrics (also written to `out/metrics.json`).

    Args:
        config: the run.
        out: its folder (None: keep nothing on disk).
        resume: continue the run in `out` from its checkpoint.
        progress: show a progress bar.
        force: replace an earlier run in `out` (without it or `resume`, a folder holding a run is refused).
    """
    if is_staged(config):  # a learned method: supernet, search, retraining (`stages.py`)
        if Ranks.current().world > 1:
            raise ValueError(f"{config.method} learns its plan in stages (supernet, search, retraining) on one "
                             "process; train it without --nproc")
        return train_stages(config, out if out is not None else _no_folder(), resume, force, progress)
    if not force:  # refused before the model is built (minutes for full Criteo tables); fit() does the replacing
        claim_run_folder(None if out is None else Path(out), resume, force=False)
    return Trainer(config, out, progress=progress).fit(resume=resume, force=force)


def _no_folder() -> Path:
    raise ValueError("a method trained in stages (optembed) keeps each stage in its run folder: give out= (--out)")


def train_on_ranks(config: TrainConfig, out: str | Path, nproc: int, resume: bool = False, progress: bool = True,
                   force: bool = False) -> dict[str, Any]:
    """`train` on `nproc` processes (spawned here, or this process being one of torchrun's), the tables sharded by
    torchrec (`distributed.py`); returns the metrics rank 0 wrote to `out/metrics.json` (under torchrun, {} on
    the other ranks)."""
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    check_device_of_ranks(config.device, nproc)
    launch(nproc, config.device, train, config, out, resume, progress, force)
    if int(os.environ.get("RANK", "0")) != 0:
        return {}  # under torchrun: rank 0 has the metrics
    return read_json(Path(out) / "metrics.json")
