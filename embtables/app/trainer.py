"""Training and evaluation of DLRM / DIN on any embedding collection: `TrainConfig` and `Trainer` (`train()` in
`train.py` runs one configuration, `stages.py` chains trainers for methods learned in stages).

Dense parameters train with Adam or Adagrad; the embedding tables with their backend's optimizer: inside
backward on fbgemm and fused (row-wise Adagrad by default), a sparse optimizer on torch. Validation runs every
`eval_every` steps and at the end; the test split is evaluated at the same points so that the test metric
*at the best validation point* is reported (selection never looks at test). Checkpoints are atomic, hold each
collection in the portable format of `et.save_collection`, load without running code from the file, and a
resumed run reproduces the uninterrupted one exactly (same seed, same data order, RNG state restored); see
`checkpoints.py`, which also keeps a new run from replacing an earlier one in the same folder without `force`.
The run folder keeps checkpoint.pt (the last: what --resume continues), best.pt (the best validation step's: what
`evaluate.py` scores on new data) and the vocabulary the ids were ranked by (`runvocab.py`).
`device` places the model, the collections and each batch (e.g. "cuda"); it says where a run trains, not what it
trains, so a run resumes on another device and a sweep finds its cells whatever the device.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

import embtables as et
from embtables.app.checkpoints import BEST, CHECKPOINT, Checkpoints, best_eval, claim_run_folder, what_runs
from embtables.app.distributed import Ranks, rank_device, sharded_for_training
from embtables.app.runinfo import check_device, machine, peak_rss_bytes, versions
from embtables.app.runvocab import keep_vocabulary, vocabulary_of
from embtables.datasets.layout import TRUTH_FILE, VOCABULARY_RECORD
from embtables.files import read_json, write_json
from embtables.metrics import auc, logloss

__all__ = ["CHECKPOINT", "TrainConfig", "Trainer", "build_model", "open_data", "what_runs"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved as config.json).

    Args:
        model: `"dlrm"` or `"din"`.
        data: a data folder in the `embtables.datasets` layout.
        method, budget, options, backend: the embedding collection (see `et.build_collection`).
        embedding_dim: D of every logical table.
        min_count: ids seen fewer times in training share one out-of-vocabulary row; the default 2 trains that
            row on the values seen once, the ones most like values a later file brings that training never saw.
        raw_ids: feed raw (hashed-to-int64) ids instead of vocabulary ranks: tables the method reads by rank hash
            them into [0, N) first (`et.build_collection(raw_ids=True)`), so serving needs no vocabulary
            (`index_bytes` 0). Criteo-layout data (DLRM) only.
        epochs, batch_size: the schedule; `max_steps` stops earlier when set.
        dense_optimizer: `"adam"` or `"adagrad"`; dense_lr its learning rate.
        embedding_optimizer, embedding_lr: the tables' optimizer (see `et.SparseOptimizer`).
        eval_every: validation period in steps (0: only at the end of each epoch).
        seed: seeds the model initialisation and the data order.
        model_options: extra model keyword arguments (e.g. `{"pooling": "sum"}` for DIN).
        checkpoint_every: checkpoint period in steps (0: at each evaluation and epoch end).
        device: where the model, the collections and the batches live (`"cpu"`, `"cuda"`, `"cuda:1"`, ...).
    """

    model: Literal["dlrm", "din"] = "dlrm"
    data: str = ""
    method: str = "full"
    budget: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    backend: str = "fbgemm"
    embedding_dim: int = 16
    min_count: int = 2
    raw_ids: bool = False
    epochs: int = 1
    batch_size: int = 1024
    max_steps: int | None = None
    dense_optimizer: Literal["adam", "adagrad"] = "adam"
    dense_lr: float = 1e-3
    embedding_optimizer: Literal["rowwise_adagrad", "adagrad", "sgd"] = "rowwise_adagrad"
    embedding_lr: float = 0.05
    eval_every: int = 0
    seed: int = 0
    model_options: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.model not in ("dlrm", "din"):
            raise ValueError(f"TrainConfig.model must be 'dlrm' or 'din', got {self.model!r}")
        if self.dense_optimizer not in ("adam", "adagrad"):
            raise ValueError(f"TrainConfig.dense_optimizer must be 'adam' or 'adagrad', got {self.dense_optimizer!r}")
        for name in ("epochs", "batch_size", "embedding_dim", "min_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"TrainConfig.max_steps must be >= 1, got {self.max_steps}")
        if not self.data:
            raise ValueError("TrainConfig.data must name a data folder")
        if self.raw_ids and self.model != "dlrm":
            raise ValueError("TrainConfig.raw_ids: only DLRM on Criteo-layout data feeds raw ids; DIN reads ranks")
        check_device(self.device, here=False)


def open_data(path: str | Path) -> Any:
    """Open a data folder of either kind, as its summary.json says (`criteo` or `sequences`)."""
    from embtables.datasets.layout import SUMMARY_FILE
    from embtables.datasets.loader import CriteoData

    summary = Path(path) / SUMMARY_FILE
    kind = read_json(summary).get("kind") if summary.exists() else None
    if kind == "sequences":
        from embtables.datasets.sequences import SequenceData

        return SequenceData(path)
    return CriteoData(path)  # raises a clear error for anything that is not a Criteo folder


def build_model(config: TrainConfig, data: Any, tables_later: bool = False) -> nn.Module:
    """The model of `config` over collections built by `config.method` for `data`'s tables; with `tables_later`
    (the torchrec store on several processes) the tables are built on the meta device, for `et.shard` to draw each
    rank's shards.

    DLRM gets one pooled collection of every table. DIN gets one unpooled collection of the tables read per
    history position (each with a (history, target) feature pair: the item first, then side information such
    as categories) and a pooled collection of the other tables; each collection meets the budget on its own.
    """
    from embtables.models import DIN, DLRM

    tables = data.tables(config.embedding_dim, config.min_count)
    counts = data.counts(config.min_count)
    optimizer = et.SparseOptimizer(config.embedding_optimizer, lr=config.embedding_lr)

    def collection(ts: list[et.TableConfig]) -> et.Collection:
        return et.build_collection(ts, config.method, config.budget, backend=config.backend, optimizer=optimizer,
                                   counts=counts, device="meta" if tables_later else config.device,
                                   raw_ids=config.raw_ids, **config.options)

    if config.model == "dlrm":
        if any(t.pooling == "none" for t in tables):
            raise ValueError(f"DLRM needs pooled tables; data {config.data!r} is of kind {data.kind!r} (use --model din)")
        return DLRM(collection(tables), dense_in=data.dense_dim, **config.model_options).to(config.device)
    items = [t for t in tables if t.pooling == "none"]
    others = [t for t in tables if t.pooling != "none"]
    if not items:
        raise ValueError(f"DIN needs an unpooled item table; data {config.data!r} is of kind {data.kind!r} (use --model dlrm)")
    bad = [t.name for t in items if len(t.feature_names) != 2]
    if bad:
        raise ValueError(f"DIN: unpooled tables {bad} must each hold a (history, target) feature pair")
    history, target = [t.feature_names[0] for t in items], [t.feature_names[1] for t in items]
    return DIN(collection(items), collection(others) if others else None, history=history, target=target,
               dense_in=data.dense_dim, item_counts=counts.get(history[0]), **config.model_options).to(config.device)


class Trainer(Checkpoints):
    """Trains `config.model` on `config.data` with `config.method`; usable from your own code.

    Args:
        config: the run's `TrainConfig`.
        out: run folder for config.json, metrics.json, the checkpoints and the vocabulary (None: keep nothing).
        data: an opened data folder (default: `open_data(config.data)`).
        progress: show a progress bar.

    Example:
        >>> from embtables.app.trainer import TrainConfig, Trainer
        >>> metrics = Trainer(TrainConfig(data="data/synthetic", method="hash", budget=0.01), "runs/h").fit()  # doctest: +SKIP
        >>> metrics["val"]["best"]["auc"]  # doctest: +SKIP
    """

    def __init__(self, config: TrainConfig, out: str | Path | None = None, data: Any = None, progress: bool = True) -> None:
        self.config = config
        self.ranks = Ranks.current()  # several processes: `embtables train --nproc N` (distributed.py)
        self.progress = progress and self.ranks.writes
        self.device = check_device(rank_device(config.device))
        self.out = Path(out) if out is not None else None
        self.data = data if data is not None else open_data(config.data)
        for split in ("train", "val"):
            if split not in self.data.splits:
                raise ValueError(f"{config.data}: training needs a {split!r} split; the folder has {list(self.data.splits)}")
        torch.manual_seed(config.seed)
        # on several processes each rank allocates only its shards of the tables (et.shard draws them)
        self.model = build_model(config, self.data, tables_later=self.ranks.world > 1 and config.backend == "torchrec")
        # what runs a batch: the model, or on several processes its torchrec DMP (tables sharded, the rest DDP)
        self.net = self.model if self.ranks.world == 1 else sharded_for_training(self.model, config.backend,
                                                                                  config.batch_size, self.ranks, self.device)
        self.collections = [m for m in self.model.modules() if isinstance(m, et.Collection)]
        in_store = {id(p) for c in self.collections for p in c.store.parameters()}
        # a method's own optimizers (OptEmbed's thresholds) keep their parameters out of the dense optimizer
        self.method_optimizers = [o for c in self.collections if (o := c.method.own_optimizer()) is not None]
        owned = {id(p) for o in self.method_optimizers for g in o.param_groups for p in g["params"]}
        dense = [p for p in self.model.parameters() if id(p) not in in_store | owned]
        opt_cls = torch.optim.Adam if config.dense_optimizer == "adam" else torch.optim.Adagrad
        self.dense_optimizer = opt_cls(dense, lr=config.dense_lr)
        self.sparse_optimizers = [o for c in self.collections if (o := c.sparse_optimizer()) is not None]
        self.state: dict[str, Any] = dict(step=0, epoch=0, batch=0, train_seconds=0.0, train_samples=0, evals=[],
                                          processes=self.ranks.world)
        # the ids' vocabulary the run trains on: its embedding rows mean nothing with another one
        self.vocabulary = vocabulary_of(config.data)

    # ---- training -----------------------------------------------------------------------------------
    def _on_device(self, batch: Any) -> Any:
        return batch if self.device.type == "cpu" else batch.to(self.device, non_blocking=True)

    def train_step(self, batch: Any) -> torch.Tensor:
        """One step on a batch (moved to the device): forward, backward, every optimizer; returns the loss as a
        0-d tensor on the device, as reading it would make the host wait for the device."""
        batch = self._on_device(batch)  # on several processes, this rank's share of the global batch
        logits = self.net(batch.dense, batch.sparse)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        if hasattr(self.model, "regularization"):
            loss = loss + self.model.regularization(batch.sparse)
        for c in self.collections:
            if (term := c.method.regularization()) is not None:
                loss = loss + term
        optimizers = (self.dense_optimizer, *self.sparse_optimizers, *self.method_optimizers)
        for o in optimizers:
            o.zero_grad()
        loss.backward()  # the fbgemm store updates its tables here
        for o in optimizers:
            o.step()
        return loss.detach()

    def fit(self, resume: bool = False, stop_after: int | None = None, force: bool = False) -> dict[str, Any]:
        """Train to the end of the schedule (or `stop_after` steps, to simulate an interruption).

        Args:
            resume: continue from `out/checkpoint.pt` when it exists.
            stop_after: return after this many steps in total, leaving the checkpoint of that step behind.
            force: replace an earlier run in `out`; without it (or `resume`) a folder holding a run is refused.

        Raises:
            ValueError: `out` holds an earlier run and neither `resume` nor `force` is set (naming the folder).
        """
        cfg = self.config
        if self.ranks.writes:
            claim_run_folder(self.out, resume, force)
        self.ranks.barrier()
        if resume and self.load_checkpoint():
            self._check_processes()
        if self.out is not None and self.ranks.writes:
            write_json(self.out / "config.json", asdict(cfg))
            if self.vocabulary is not None:  # kept in the run folder, to score new data with (`evaluate`)
                keep_vocabulary(self.out, self.vocabulary, cfg.min_count, cfg.raw_ids, self.data)
        s = self.state
        total = self._total_steps()
        bar = _progress(self.progress, total, s["step"])
        while s["epoch"] < cfg.epochs and s["step"] < total:
            batches = self.batches("train", cfg.batch_size, shuffle=True, seed=cfg.seed * 1000 + s["epoch"],
                                   drop_last=True)
            for i, batch in enumerate(batches):
                if i < s["batch"]:
                    continue  # resumed run: these batches were trained before the checkpoint
                t0 = time.perf_counter()
                loss = self.train_step(batch)
                s["train_seconds"] += time.perf_counter() - t0
                s["train_samples"] += batch.batch_size * self.ranks.world
                s["step"] += 1
                s["batch"] = i + 1
                bar.update(1)
                done = s["step"] >= total
                if self.progress and (s["step"] % 50 == 0 or done):  # reading the loss waits for the device
                    speed = s["train_samples"] / s["train_seconds"]
                    bar.set_postfix(loss=f"{float(loss):.4f}", samples_per_s=f"{speed:,.0f}")
                if cfg.eval_every and s["step"] % cfg.eval_every == 0 and not done:
                    self._evaluate_all()
                if (cfg.checkpoint_every and s["step"] % cfg.checkpoint_every == 0) or (cfg.eval_every and s["step"] % cfg.eval_every == 0):
                    self.save_checkpoint()
                if stop_after is not None and s["step"] >= stop_after:
                    self.save_checkpoint()
                    bar.close()
                    return {}
                if done:
                    break
            else:
                s["epoch"] += 1
                s["batch"] = 0
                if s["epoch"] < cfg.epochs and s["step"] < total:
                    self._evaluate_all()
                    self.save_checkpoint()
                continue
            break
        bar.close()
        self._evaluate_all()
        self.save_checkpoint()
        metrics = self.metrics()
        if self.out is not None and self.ranks.writes:
            write_json(self.out / "metrics.json", metrics)
        return metrics

    def _check_processes(self) -> None:
        """A run stopped within an epoch resumes on as many processes as it ran on: the rows of the epoch's
        batches depend on that number (`datasets/shares.py`), so another would skip rows and repeat others."""
        s, was = self.state, self.state.get("processes", 1)
        if was != self.ranks.world and s["batch"]:
            raise ValueError(f"{self.out}: the run stopped within epoch {s['epoch']} (after its batch {s['batch']}) "
                             f"on {was} process(es); resume it on {was} (--nproc {was}): on {self.ranks.world} the "
                             "epoch's batches hold other rows")
        s["processes"] = self.ranks.world

    def _total_steps(self) -> int:
        per_epoch = self.data.num_batches("train", self.config.batch_size, drop_last=True)
        if per_epoch == 0:
            raise ValueError(f"{self.config.data}: the train split has fewer rows than one batch of {self.config.batch_size}")
        total = per_epoch * self.config.epochs
        return min(total, self.config.max_steps) if self.config.max_steps else total

    # ---- evaluation ---------------------------------------------------------------------------------
    def batches(self, split: str, batch_size: int, **loader: Any) -> Any:
        """`data.batches` with the ids this run trains on (raw ids, or ranks of the vocabulary cut at min_count); on
        several processes this rank's shares of the global batches."""
        ids = {"ids": "raw"} if self.config.raw_ids else {"min_count": self.config.min_count}
        if self.ranks.world > 1:
            loader["part"] = self.ranks.part()
        return self.data.batches(split, batch_size, **loader, **ids)

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        """AUC, logloss and samples/s of the model on `split` (in file order, every row)."""
        self.net.eval()
        logits, labels = [], []
        t0 = time.perf_counter()
        N = self.ranks.world
        size = -(-max(self.config.batch_size, 4096) // N) * N  # a multiple of N: each rank reads a share
        pad = {"pad": True} if N > 1 else {}  # every rank runs the same shapes
        for batch in self.batches(split, size, **pad):
            on = self._on_device(batch)
            logits.append(self.net(on.dense, on.sparse))
            labels.append(batch.labels)
        if not logits:
            raise ValueError(f"{self.config.data}: split {split!r} is empty")
        # the metrics run on the host (this waits for the device), over every rank's rows
        z, y = self.ranks.gather(logits, labels)
        seconds = time.perf_counter() - t0
        self.net.train()
        return {"auc": auc(z, y), "logloss": logloss(z, y), "rows": int(y.numel()), "samples_per_s": y.numel() / seconds}

    def _evaluate_all(self) -> None:
        s = self.state
        if s["evals"] and s["evals"][-1]["step"] == s["step"]:
            return
        record = {"step": s["step"], "val": self.evaluate("val")}
        if "test" in self.data.splits:
            record["test"] = self.evaluate("test")
        s["evals"].append(record)

    def metrics(self) -> dict[str, Any]:
        """Everything metrics.json holds: last and best-on-validation metrics, sizes, speeds, versions."""
        cfg, s = self.config, self.state
        evals = s["evals"]
        best = best_eval(evals)
        full = sum(et.full_bytes(c.tables) for c in self.collections)
        memory = sum(c.memory_bytes() for c in self.collections)
        in_store = {id(p) for c in self.collections for p in c.store.parameters()}
        out: dict[str, Any] = {
            "model": cfg.model, "method": cfg.method, "budget": cfg.budget, "options": cfg.options,
            "backend": cfg.backend, "device": cfg.device, "seed": cfg.seed, "data": cfg.data,
            "memory_bytes": memory, "full_bytes": full, "compression": memory / full,
            "index_bytes": sum(c.index_bytes for c in self.collections), "raw_ids": cfg.raw_ids,
            "params_embedding": sum(t.num_embeddings * t.embedding_dim for c in self.collections
                                    for t in c.plan.physical_tables),
            "params_dense": sum(p.numel() for p in self.model.parameters() if id(p) not in in_store),
            "steps": s["step"], "best_step": best["step"], "train_seconds": s["train_seconds"], "train_rows": self.data.rows("train"),
            "steps_per_epoch": self.data.num_batches("train", cfg.batch_size, drop_last=True),
            "train_samples_per_s": s["train_samples"] / max(s["train_seconds"], 1e-9),
            "eval_samples_per_s": evals[-1]["val"]["samples_per_s"],
            "peak_rss_bytes": peak_rss_bytes(), "machine": machine(), "versions": versions(), "evals": evals,
            "processes": self.ranks.world,
            "sharding": None if self.net is self.model else [list(row) for row in et.sharding_table(self.net)],
            "vocabulary": None if self.vocabulary is None else {**self.vocabulary, "min_count": cfg.min_count,
                                                                 "kept": None if self.out is None else VOCABULARY_RECORD},
            # best: the best validation step's (what `embtables evaluate` scores); last: what --resume continues
            "checkpoints": None if self.out is None else {"best": BEST, "best_step": best["step"],
                                                          "last": CHECKPOINT, "last_step": s["step"]},
        }
        for split in ("val", "test"):
            if split in evals[-1]:
                out[split] = {"last": _scores(evals[-1][split]), "best": _scores(best[split])}
        truth_file = Path(cfg.data) / TRUTH_FILE
        if truth_file.exists():
            splits = read_json(truth_file).get("splits", {})
            out["bayes"] = {k: {"auc": v["bayes_auc"], "logloss": v["bayes_logloss"]} for k, v in splits.items()}
        return out


def _scores(e: dict[str, float]) -> dict[str, float]:
    return {"auc": e["auc"], "logloss": e["logloss"]}


def _progress(enabled: bool, total: int, initial: int) -> Any:
    from embtables.datasets.progress import progress_bar

    return progress_bar(total, initial, enabled, desc="train", unit="step", leave=False)
