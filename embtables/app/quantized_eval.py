"""Post-training quantization of a trained run: its best checkpoint scored with every collection in fp16, int8 or
int4 (`Collection.quantize`), at no extra training. `embtables sweep --dtypes fp32,int8,int4` adds one results row
per finished cell and dtype, so the report puts "qr at 0.1 in int8" and "full in int4" on the same bytes axis as
the fp32 runs, and its Pareto front shows whether compression beats quantization at each budget.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from torch import nn

import embtables as et
from embtables.app.checkpoints import BEST, restore_model
from embtables.app.trainer import TrainConfig, Trainer
from embtables.checkpoint import load_tensor_file
from embtables.stores.quantized_store import FP32, check_dtype


def check_dtypes(dtypes: tuple[str, ...]) -> None:
    for d in dtypes:
        if d != FP32:
            check_dtype(d)
    if FP32 not in dtypes:
        raise ValueError(f"dtypes {list(dtypes)} must include fp32: every cell trains in fp32 and is quantized after")


def quantize_model(model: nn.Module, dtype: str) -> list[et.Collection]:
    """Replace every collection of `model` by its `dtype`-quantized copy, in place; returns the copies."""
    done = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, et.Collection):
                quantized = child.eval().quantize(dtype)
                setattr(parent, name, quantized)
                done.append(quantized)
    return done


def quantized_outcome(config: TrainConfig, run: str | Path, dtype: str) -> dict[str, Any]:
    """The metrics of run `run` (trained with `config`) with its best checkpoint's collections quantized to `dtype`,
    in the shape of a cell's outcome (`sweep.row`): bytes, val/test AUC and log loss, evaluation speed; no
    training figures. A dtype the tables' dims cannot take gives the outcome "infeasible" with the reason."""
    path = Path(run) / BEST
    if not path.exists():  # e.g. a sweep folder whose run folders were removed: nothing to quantize
        return {"status": "failed", "error": f"{path}: no checkpoint to quantize (the run folder was removed?)"}
    trainer = Trainer(config, None, progress=False)
    blob = load_tensor_file(path, "training checkpoint")
    restore_model(trainer.model, blob, str(path))
    try:
        collections = quantize_model(trainer.model, dtype)
    except ValueError as e:  # e.g. int4 and a table whose dim is not a multiple of 4
        return {"status": "infeasible", "smallest_budget": math.nan, "error": str(e)}
    t0 = time.perf_counter()
    scores = {split: trainer.evaluate(split) for split in ("val", "test")}
    memory, full = sum(c.memory_bytes() for c in collections), sum(et.full_bytes(c.tables) for c in collections)
    return {
        "status": "ok", "memory_bytes": memory, "full_bytes": full, "compression": memory / full,
        "index_bytes": sum(c.index_bytes for c in collections), "train_samples_per_s": math.nan,
        "eval_samples_per_s": scores["test"]["samples_per_s"], "peak_rss_bytes": math.nan,
        "steps": int(blob["state"]["step"]), "train_seconds": math.nan, "eval_seconds": time.perf_counter() - t0,
        **{split: {"best": {"auc": s["auc"], "logloss": s["logloss"]}} for split, s in scores.items()},
    }
