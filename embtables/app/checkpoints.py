"""The run folder of a `Trainer`: its checkpoints (save, load) and the refusal to overwrite an earlier run.

Checkpoints are atomic, hold each collection in the portable format of `et.save_collection`, load without running
code from the file, and restore everything a resumed run needs to reproduce the uninterrupted one exactly.
`checkpoint.pt` is the last one (what `--resume` continues); `best.pt` the one of the best validation step so far
(what `embtables evaluate` scores): after each checkpoint saved at a step whose evaluation is the best, best.pt
becomes a hard link to it (a copy where links fail), so the best costs no second write.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import embtables as et
from embtables.checkpoint import collection_state, load_collection_state, load_tensor_file, save_tensor_file
from embtables.datasets.layout import VOCABULARY_FILE, VOCABULARY_RECORD
from embtables.files import as_json, link_or_copy

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
# what a run leaves in its folder: any of the first two means a run was started there
EVALUATION = "evaluate.json"  # `embtables evaluate`'s default output
RUN_FILES = ("config.json", CHECKPOINT, "metrics.json", BEST, VOCABULARY_RECORD, VOCABULARY_FILE, EVALUATION)


def best_eval(evals: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation record of the best validation AUC (the first of equals; a NaN AUC counts as -1)."""
    return max(evals, key=lambda e: (e["val"]["auc"] if not math.isnan(e["val"]["auc"]) else -1.0))


def what_runs(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration (`asdict(TrainConfig)`) without `device`, which says where a run trains, not what:
    checkpoints and sweep cells are matched by this."""
    return {k: v for k, v in config.items() if k != "device"}


def claim_run_folder(out: Path | None, resume: bool, force: bool) -> None:
    """Make sure a new run does not silently replace an earlier one in `out`.

    Args:
        out: the run folder (None: nothing is kept on disk, nothing to check).
        resume: the run continues the folder's checkpoint: an earlier run is expected.
        force: replace an earlier run: its config.json, checkpoints, metrics.json and vocabulary are removed
            now, so that a later `--resume` (or `evaluate`) cannot pick up the old ones.

    Raises:
        ValueError: `out` holds a run (config.json or checkpoint.pt) and neither `resume` nor `force` is set,
            naming the folder; or both are set.
    """
    if resume and force:
        raise ValueError("resume (--resume) continues the run in --out, force (--force) replaces it: give one")
    if out is None or resume:
        return
    found = [name for name in RUN_FILES[:2] if (out / name).exists()]
    if found and not force:
        raise ValueError(f"{out} already holds a training run ({', '.join(found)}): continue it with --resume "
                         "(resume=True), replace it with --force (force=True), or choose another --out")
    if force:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)


class Checkpoints:
    """The checkpoint methods of `Trainer` (which provides out, model, collections, dense_optimizer,
    method_optimizers, state, config and vocabulary)."""

    out: Path | None
    model: torch.nn.Module
    collections: list[et.Collection]
    dense_optimizer: torch.optim.Optimizer
    method_optimizers: list[torch.optim.Optimizer]
    state: dict[str, Any]
    ranks: Any  # `distributed.Ranks`: only rank 0 writes
    config: Any
    vocabulary: dict[str, str] | None

    def _collection_prefixes(self) -> tuple[str, ...]:
        return tuple(f"{name}." for name, m in self.model.named_modules() if isinstance(m, et.Collection))

    def save_checkpoint(self) -> None:
        """`out/checkpoint.pt`: the dense model and its optimizer, each collection in the portable format of
        `et.save_collection` (with its tables' optimizer state), the data position and the RNG state."""
        if self.out is None:
            return
        collections = [collection_state(c) for c in self.collections]  # a collective when the tables are sharded
        if not self.ranks.writes:
            return
        skip = self._collection_prefixes()
        blob = {
            "dense": {k: v for k, v in self.model.state_dict().items() if not k.startswith(skip)},
            "collections": collections,
            "dense_optimizer": self.dense_optimizer.state_dict(),
            "method_optimizers": [o.state_dict() for o in self.method_optimizers],
            "rng": torch.get_rng_state(),
            "state": self.state,
            "config": asdict(self.config),
            "vocabulary": self.vocabulary,
        }
        save_tensor_file(self.out / CHECKPOINT, blob)
        self._keep_best()

    def _keep_best(self) -> None:
        """best.pt := checkpoint.pt when the checkpoint's step is the best evaluated one so far."""
        evals = self.state["evals"]
        if self.out is not None and evals and best_eval(evals)["step"] == self.state["step"]:
            link_or_copy(self.out / CHECKPOINT, self.out / BEST)

    def load_checkpoint(self) -> bool:
        """Restore the run from `out/checkpoint.pt`; False when there is none."""
        path = None if self.out is None else self.out / CHECKPOINT
        if path is None or not path.exists():
            return False
        blob = load_tensor_file(path, "training checkpoint")  # tensors and plain values only: runs no code
        if not isinstance(blob, dict) or not {"config", "dense", "collections", "state"} <= set(blob):
            raise ValueError(f"{path}: not a training checkpoint of embtables (missing its config, model or state)")
        # tuples as lists; a run may resume on another device
        mine, theirs = (as_json(what_runs(c)) for c in (asdict(self.config), blob["config"]))
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if differ:
            was = ", ".join(f"{k}={theirs.get(k)!r} (now {mine.get(k)!r})" for k in differ)
            raise ValueError(f"{path} was written by a different configuration: {was}; use a new --out or the same "
                             "arguments")
        recorded = blob.get("vocabulary")
        if (recorded or {}).get("sha256") != (self.vocabulary or {}).get("sha256"):  # the bytes, wherever they are
            raise ValueError(
                f"{path}: the run recorded vocabulary {_vocab_text(recorded)}, but the data folder now has "
                f"{_vocab_text(self.vocabulary)}: the data changed since the run started; use the original data "
                "or a new --out")
        restore_model(self.model, blob, str(path))
        self.dense_optimizer.load_state_dict(blob["dense_optimizer"])
        for o, state in zip(self.method_optimizers, blob.get("method_optimizers", []), strict=True):
            o.load_state_dict(state)
        torch.set_rng_state(blob["rng"])
        self.state = blob["state"]
        self._keep_best()  # in case the run stopped between its best checkpoint and the link
        return True


def restore_model(model: torch.nn.Module, blob: dict[str, Any], where: str, collections: bool = True) -> None:
    """Copy a training checkpoint's dense weights and collections into `model` (built for the same run).

    Args:
        model: the run's model; its collections are found among its modules, in order.
        blob: the checkpoint's dict (`dense`, `collections`).
        where: the file it came from, for error messages.
        collections: also copy the collections (False: they were built from the checkpoint already).
    """
    prefixes = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, et.Collection))
    missing, unexpected = model.load_state_dict(blob["dense"], strict=False)
    if unexpected or any(not k.startswith(prefixes) for k in missing):
        raise ValueError(f"{where}: the dense model does not fit (missing {[k for k in missing if not k.startswith(prefixes)]}, "
                         f"unexpected {unexpected})")
    if collections:
        mine = [m for m in model.modules() if isinstance(m, et.Collection)]
        for c, state in zip(mine, blob["collections"], strict=True):
            load_collection_state(c, state, where)


def _vocab_text(record: dict[str, str] | None) -> str:
    return "none" if record is None else f"{record['file']} (sha256 {record['sha256'][:16]}...)"
