"""Training a learned method in stages: OptEmbed's supernet, evolutionary search and retraining (`train` calls this
for `--method optembed` without `dims`/`rows`).

Run folder `out/`:

    supernet/      stage 1, an ordinary `Trainer` run of `optembed_supernet` (its own checkpoint.pt, metrics.json) and
                   start.pt, the weights it started from (what the retraining rewinds to)
    search.json    stage 2: the searched dims, their validation AUC, bytes, history and seconds (written atomically)
    (top level)    stage 3, an ordinary `Trainer` run of `optembed` with the found dims and kept rows: config.json,
                   checkpoint.pt, best.pt, metrics.json (with a `stages` record), so `evaluate` and sweeps read it as
                   any run
    stages.json    the configuration asked for (method optembed, the budget, the recipe)

Each stage is skipped when its result is on disk, so `--resume` continues at the stage where the run stopped (inside
a training stage, from its checkpoint; an interrupted search starts again, and being seeded finds the same dims). A
sweep shares one supernet among its budgets (`supernet_dir`): the supernet does not depend on the budget.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import torch

import embtables as et
from embtables.app.checkpoints import CHECKPOINT, claim_run_folder
from embtables.app.trainer import TrainConfig, Trainer
from embtables.checkpoint import collection_state, load_collection_state, load_tensor_file, save_tensor_file
from embtables.files import as_json, read_json, write_json
from embtables.method import Carried
from embtables.metrics import auc
from embtables.methods._optembed_search import SearchConfig, evolutionary_search
from embtables.methods.optembed import table_bytes
from embtables.methods.optembed_supernet import SupernetOptions
from embtables.options import check_options, option
from embtables.plan import Target
from embtables.stages import load_carried
from embtables.stores import store_class

SUPERNET, SEARCH, STAGES, START = "supernet", "search.json", "stages.json", "start.pt"


@dataclass(frozen=True)
class StageOptions:
    """The options of `--method optembed` trained in stages that belong to no single stage's method.

    Args:
        supernet_epochs: epochs of the supernet (None: the run's --epochs).
        rewind: retrain from the weights the supernet started from (the reference); False: from a fresh start.
        search_rows: validation rows a candidate is scored on (0: all).
    """

    supernet_epochs: int | None = option(None, minimum=1)
    rewind: bool = True
    search_rows: int = option(100_000, minimum=0)

    def __post_init__(self) -> None:
        check_options(self, "optembed")


@dataclass(frozen=True)
class OptEmbedRecipe:
    """The options of `--method optembed` trained in stages (`-o NAME=VALUE`, reference defaults), one flat namespace:
    the supernet's (`SupernetOptions` but `dim_multiple`, which is the store's), the search's (`SearchConfig`, its
    `seed` as `search_seed`) and `StageOptions`."""

    supernet: SupernetOptions
    search: SearchConfig
    stages: StageOptions

    @classmethod
    def of(cls, options: dict[str, Any]) -> "OptEmbedRecipe":
        parts: dict[type, dict[str, Any]] = {SupernetOptions: {}, SearchConfig: {}, StageOptions: {}}
        names = {**{f.name: SupernetOptions for f in fields(SupernetOptions) if f.name != "dim_multiple"},
                 **{("search_seed" if f.name == "seed" else f.name): SearchConfig for f in fields(SearchConfig)},
                 **{f.name: StageOptions for f in fields(StageOptions)}}
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise TypeError(f"method 'optembed' got unknown option(s) {unknown}; valid options when trained in stages: "
                            f"{sorted(names)} (or dims= and rows= for a plan already learned)")
        for name, value in options.items():
            parts[names[name]]["seed" if name == "search_seed" else name] = value
        return cls(SupernetOptions(**parts[SupernetOptions]), SearchConfig(**parts[SearchConfig]),
                   StageOptions(**parts[StageOptions]))


def is_staged(config: TrainConfig) -> bool:
    """Whether `config` trains a learned method from its stages (no `dims`/`rows` given)."""
    return et.get_method(config.method).learned and not {"dims", "rows"} & set(config.options)


def supernet_config(config: TrainConfig) -> TrainConfig:
    """The supernet stage's run: `optembed_supernet` with the recipe's options, no budget."""
    recipe = OptEmbedRecipe.of(config.options)
    options = {**asdict(recipe.supernet), "dim_multiple": store_class(config.backend).dim_multiple}
    return replace(config, method="optembed_supernet", budget=None, options=options,
                   epochs=recipe.stages.supernet_epochs or config.epochs)


def train_stages(config: TrainConfig, out: str | Path, resume: bool = False, force: bool = False,
                 progress: bool = True, supernet_dir: str | Path | None = None,
                 stop_after: str | None = None) -> dict[str, Any]:
    """Run the supernet, the search and the retraining of `config` (a learned method, DLRM) into `out`.

    Args:
        config: the run asked for (`method="optembed"`, its budget, the recipe as options).
        out: the run folder.
        resume: continue at the stage where an earlier run in `out` stopped.
        force: replace an earlier run in `out`.
        progress: progress bars.
        supernet_dir: where the supernet stage runs (default `out/supernet`); sweeps share one among budgets.
        stop_after: return after this stage ("supernet" or "search"), as an interrupted run would.

    Returns:
        The retrained run's metrics, with a `stages` record (seconds, kept rows per table, searched dims).

    Raises:
        InfeasibleBudget: no dims fit the budget with the rows the supernet kept.
    """
    if config.model != "dlrm":
        raise ValueError("optembed trains in stages for DLRM only: DIN's two collections would need one search "
                         "over both (not supported yet)")
    if config.budget is None:
        raise ValueError("optembed trained in stages needs --budget: the search keeps the best dims that fit it")
    recipe = OptEmbedRecipe.of(config.options)
    out = Path(out)
    claim_run_folder(out, resume, force)
    if not resume and not force and (out / STAGES).exists():
        raise ValueError(f"{out} already holds a staged training run ({STAGES}): continue it with --resume, replace it "
                         "with --force, or choose another --out")
    if force:
        shutil.rmtree(out / SUPERNET, ignore_errors=True)
        for name in (SEARCH, STAGES):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    asked = asdict(config)
    if (out / STAGES).exists() and read_json(out / STAGES)["config"] != as_json(asked):
        raise ValueError(f"{out} holds a staged run of another configuration; use a new --out or the same arguments")
    write_json(out / STAGES, {"config": asked})
    sdir = Path(supernet_dir) if supernet_dir is not None else out / SUPERNET

    # stage 1: the supernet (resumed from its checkpoint, or only loaded when it finished)
    supernet = Trainer(supernet_config(config), sdir, progress=progress)
    if not (sdir / START).exists():
        sdir.mkdir(parents=True, exist_ok=True)
        save_tensor_file(sdir / START, _start_state(supernet))
    s_metrics = read_json(sdir / "metrics.json") if (sdir / "metrics.json").exists() else None
    if s_metrics is None:
        s_metrics = supernet.fit(resume=True)  # from its checkpoint, if it stopped after one
    else:
        supernet.load_checkpoint()
    if stop_after == "supernet":
        return {}
    coll = supernet.collections[0]
    kept = coll.method.kept(coll.store.weights())

    # stage 2: the search
    if (out / SEARCH).exists():
        found = read_json(out / SEARCH)
    else:
        found = _search(supernet, kept, recipe, config.budget)
        write_json(out / SEARCH, found)
    if stop_after == "search":
        return {}

    # stage 3: retrain the found architecture
    final = replace(config, options={"dims": found["dims"], "rows": [int(k.numel()) for k in kept],
                                     "pruned": recipe.supernet.pruned})
    retrain = Trainer(final, out, progress=progress)
    if not (out / CHECKPOINT).exists():
        start = load_tensor_file(sdir / START, "optembed supernet start") if recipe.stages.rewind else None
        _carry(supernet, retrain, found["dims"], config.budget, start)
    metrics = retrain.fit(resume=True)  # from its checkpoint, if it stopped after one
    metrics["stages"] = {
        "asked": {"method": config.method, "budget": config.budget, "options": config.options},
        "supernet": {"seconds": s_metrics["train_seconds"],
                     "folder": str(sdir), "val_auc": s_metrics["val"]["best"]["auc"],
                     "tables": [t.name for t in coll.tables], "table_rows": [t.num_embeddings for t in coll.tables],
                     "kept_rows": [int(k.numel()) for k in kept],
                     "kept_fraction": [k.numel() / t.num_embeddings for k, t in zip(kept, coll.tables)]},
        "search": {k: found[k] for k in ("seconds", "dims", "fitness", "bytes", "evaluated", "history")},
        "retrain": {"seconds": metrics["train_seconds"]},
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def _start_state(trainer: Trainer) -> dict[str, Any]:
    """The supernet's weights before training: its collection and dense model (what the retraining rewinds to)."""
    coll = trainer.collections[0]
    skip = trainer._collection_prefixes()
    dense = {k: v.clone() for k, v in trainer.model.state_dict().items() if not k.startswith(skip)}
    return {"collection": collection_state(coll), "dense": dense}


def _search(trainer: Trainer, kept: list[torch.Tensor], recipe: OptEmbedRecipe, budget: float) -> dict[str, Any]:
    """The evolutionary search of the supernet's dims, scored by validation AUC on `search_rows` rows (of DLRM: its
    `embeddings` and `head`)."""
    coll = trainer.collections[0]
    tables, q = coll.tables, coll.method.q
    limit = budget * et.full_bytes(tables)

    def bytes_of(units: tuple[int, ...]) -> int:
        return sum(table_bytes(u * q, int(k.numel()), t.num_embeddings, recipe.supernet.pruned)
                   for u, k, t in zip(units, kept, tables))

    narrowest = bytes_of(tuple(1 for _ in tables))
    if narrowest > limit:
        raise et.InfeasibleBudget("optembed", budget, narrowest / et.full_bytes(tables),
                                  f"the supernet kept {sum(int(k.numel()) for k in kept):,} of "
                                  f"{sum(t.num_embeddings for t in tables):,} rows; every table at dim {q} takes "
                                  f"{narrowest:,} bytes; to prune more, raise -o alpha / -o threshold_lr "
                                  f"(now {recipe.supernet.alpha:g} / {recipe.supernet.threshold_lr:g})")
    t0 = time.perf_counter()
    score = CandidateScorer(trainer, recipe.stages.search_rows)
    fitness = lambda units: score([u * q for u in units])  # noqa: E731
    result = evolutionary_search([t.embedding_dim // q for t in tables], fitness, bytes_of, limit, recipe.search)
    return {"dims": [u * q for u in result.dims], "fitness": result.fitness, "bytes": result.bytes,
            "history": list(result.history), "evaluated": result.evaluated, "seconds": time.perf_counter() - t0,
            "rows": score.rows}


class CandidateScorer:
    """Validation AUC of the supernet DLRM of `trainer` on its first `rows` validation rows (0: all) with each table
    at a candidate's dims: equal to the model with `set_dims(dims)`, but the supernet's pooled outputs are computed
    once at full width and a candidate zeroes the columns past d_t of each feature (the width prefix commutes with
    pooling), so scoring one runs only DLRM's dense part (`head`)."""

    def __init__(self, trainer: Trainer, rows: int) -> None:
        model, coll = trainer.model, trainer.collections[0]
        was = model.training
        model.eval()
        with torch.no_grad():
            batches = [(b.dense, model.embeddings(b.sparse).values(), b.labels) for b in _rows(trainer, rows)]
        self.cached = [(x, e) for x, e, _ in batches]
        self.labels = torch.cat([y for _, _, y in batches]).cpu()
        model.train(was)
        self.model, self.rows = model, int(self.labels.numel())
        self.features = [(coll.tables[t].embedding_dim, t) for t in coll.method.feature_table]

    @torch.no_grad()
    def __call__(self, dims: Sequence[int]) -> float:
        keep = torch.cat([torch.arange(d) < dims[t] for d, t in self.features])  # (sum D,)
        keep = keep.to(self.cached[0][1].device, self.cached[0][1].dtype)
        was = self.model.training
        self.model.eval()
        z = torch.cat([self.model.head(x, e * keep) for x, e in self.cached]).cpu()
        self.model.train(was)
        return auc(z, self.labels)


def _rows(trainer: Trainer, rows: int) -> Any:
    """The validation batches (on the device) up to `rows` rows (0: all)."""
    seen = 0
    for batch in trainer.batches("val", max(trainer.config.batch_size, 4096)):
        if rows and seen >= rows:
            return
        yield trainer._on_device(batch)
        seen += batch.batch_size


def _carry(supernet: Trainer, retrain: Trainer, dims: list[int], budget: float, start: dict[str, Any] | None) -> None:
    """Give the retraining its kept-id map and, rewinding (`start`), the kept rows at `dims` of the weights the supernet
    started from and its starting dense weights; without `start` the retraining keeps its fresh initialisation."""
    coll = supernet.collections[0]
    target = Target(backend=retrain.config.backend, dim_multiple=store_class(retrain.config.backend).dim_multiple)
    choices: dict[str, Any] = {"dims": dims, "budget": budget}
    if start is not None:
        begin = et.build_collection(coll.tables, "optembed_supernet", None, backend="torch", **_options(coll))
        load_collection_state(begin, start["collection"], "supernet start")
        choices["start"] = [w.to(coll.store.weights()[0].device) for w in begin.store.weights()]
        choices["start_oov"] = begin.method.oov
        retrain.model.load_state_dict(start["dense"], strict=False)
    carried = coll.method.carry_over(coll.store.weights(), target, **choices)
    if start is None:  # a fresh start: the retrained plan's own initialisation, with the supernet's kept-id map
        carried = Carried(carried.plan, [w.detach().clone() for w in retrain.collections[0].store.weights()],
                          carried.state)
    load_carried(retrain.collections[0], carried)


def _options(coll: et.Collection) -> dict[str, Any]:
    o = coll.plan.options
    return {f.name: getattr(o, f.name) for f in fields(o)}
