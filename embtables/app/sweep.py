"""`embtables sweep`: one training run per (method, budget, seed) and a results table to compare them.

Every cell runs the same `Trainer` as `embtables train`, in a child process (so its peak memory is its own
and a crash cannot take the sweep down), in `DIR/runs/<cell>/` with its checkpoint. Rows are appended to
`DIR/results.parquet` (and `.csv`) by an atomic rewrite after each cell, so a killed sweep loses at most the
cell in progress, and that cell itself resumes from its last checkpoint. A re-run with the same arguments
skips finished cells. A budget a method cannot reach is recorded as `infeasible` with its smallest feasible
budget; a cell that fails is recorded as `failed` with the error (and retried by the next run).

Each row also records the conditions its speed was measured under: the run of the sweep that measured it
(`sweep_run`, its start time and process id: a resumed sweep measures its cells in another run than the first),
the 1-minute load average at the cell's start and end, and `other_cores`, the cores other processes kept busy
during the cell; the report flags speeds measured under other conditions than the full table's.

A DIN sweep also records, once, in sweep.json (`popularity`), the test AUC of ranking by the target item's training
count (`embtables.app.popularity`): the reference its report compares every cell with.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

import embtables as et
from embtables.app.results import append_row, full_reference, load_results
from embtables.app.runinfo import check_device, cpu_clock, load_average, machine, other_cores, versions
from embtables.app.quantized_eval import FP32, check_dtypes, quantized_outcome
from embtables.app.trainer import TrainConfig, what_runs
from embtables.files import as_json, read_json, write_json

DEFAULT_BUDGETS = (0.5, 0.1, 0.01, 0.001, 0.0001)
# the demo's preset (`embtables demo`, `embtables sweep --quick`): a minute or two on 2 CPU cores
# OptEmbed's reference alpha and threshold_lr (3e-4) prune nothing in one short epoch, so the preset prunes harder
QUICK = dict(budgets=(0.1, 0.01), seeds=(0,), epochs=1, rows=200_000, options={"optembed": {"alpha": 0.3, "threshold_lr": 0.1}})


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: the cross product of methods x budgets x seeds over one training recipe.

    Args:
        train: the recipe every cell shares (its method, budget and seed are replaced per cell).
        methods: methods to compare; `full` runs once per seed as the reference.
        budgets: fractions of the full bytes.
        seeds: one run per seed.
        options: per-method options, e.g. `{"qr": {"operation": "add"}}`.
        dtypes: `"fp32"` (every cell trains in it) and the dtypes each finished cell's best checkpoint is also
            scored in after training (`"fp16"`, `"int8"`, `"int4"`; `quantized_eval.py`), one more row each.
    """

    train: TrainConfig
    methods: tuple[str, ...]
    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    seeds: tuple[int, ...] = (0,)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    dtypes: tuple[str, ...] = (FP32,)

    def __post_init__(self) -> None:
        check_dtypes(self.dtypes)
        known = et.list_methods()
        for m in self.methods:
            if m not in known:
                raise ValueError(f"unknown method {m!r} in --methods; registered methods: {known}")
        for b in self.budgets:
            if not 0 < b <= 1:
                raise ValueError(f"budget {b} must lie in (0, 1]")
        extra = set(self.options) - set(self.methods)
        if extra:
            raise ValueError(f"options given for methods not in the sweep: {sorted(extra)}")

    def cells(self) -> list[TrainConfig]:
        """Every run, `full` first for each seed (the reference the others are compared to)."""
        out = []
        for seed in self.seeds:
            out.append(replace(self.train, method="full", budget=None, options={}, seed=seed))
            for m in self.methods:
                if m == "full":
                    continue
                for b in self.budgets:
                    out.append(replace(self.train, method=m, budget=b, options=dict(self.options.get(m, {})), seed=seed))
        return out


def cell_id(config: TrainConfig) -> str:
    """A short stable name for a cell: method, budget, seed and a hash of the whole configuration."""
    digest = hashlib.sha1(json.dumps(what_runs(asdict(config)), sort_keys=True).encode()).hexdigest()[:8]
    budget = "none" if config.budget is None else f"{config.budget:g}"
    return f"{config.method}-b{budget}-s{config.seed}-{digest}"


def run_cell(config: TrainConfig, folder: Path) -> dict[str, Any]:
    """Train one cell in this process, resuming its checkpoint; returns its metrics or its infeasibility."""
    from embtables.app.stages import is_staged, supernet_config, train_stages
    from embtables.app.trainer import Trainer

    try:
        if is_staged(config):  # the budgets of a seed share one supernet: it does not depend on the budget
            shared = folder.parent / f"supernet-{cell_id(supernet_config(config))}"
            metrics = train_stages(config, folder, resume=True, progress=False, supernet_dir=shared)
        else:
            metrics = Trainer(config, folder, progress=False).fit(resume=True)
    except et.InfeasibleBudget as e:
        return {"status": "infeasible", "smallest_budget": e.smallest_budget, "error": str(e)}
    metrics["status"] = "ok"
    return metrics


def _child(folder: str) -> None:
    """Entry point of a cell's child process: reads cell.json, writes outcome.json."""
    path = Path(folder)
    config = TrainConfig(**read_json(path / "cell.json"))
    write_json(path / "outcome.json", run_cell(config, path))


def _spawn(config: TrainConfig, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "cell.json", asdict(config))
    (folder / "outcome.json").unlink(missing_ok=True)
    code = f"from embtables.app.sweep import _child; _child({str(folder)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    (folder / "log.txt").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not (folder / "outcome.json").exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"status": "failed", "error": f"exit {proc.returncode}: {tail[0]}"}
    return read_json(folder / "outcome.json")


def row(config: TrainConfig, outcome: dict[str, Any], wall: float, reference: dict[str, Any] | None,
        conditions: dict[str, Any] | None = None) -> dict[str, Any]:
    """One results row (flat columns) from a cell's outcome.

    Args:
        config: the cell.
        outcome: what `run_cell` returned (metrics, or the infeasibility or failure).
        wall: the cell's wall seconds.
        reference: the results row of the full table of the same seed (for `gap_to_full`), if any.
        conditions: what the cell was measured under (`sweep_run`, `load_start`, `load_end`, `other_cores`).
    """
    r: dict[str, Any] = {
        "cell": cell_id(config), "status": outcome["status"], "model": config.model, "data": config.data,
        "method": config.method, "options": json.dumps(config.options, sort_keys=True), "dtype": FP32,
        "budget": config.budget if config.budget is not None else 1.0, "seed": config.seed, "epochs": config.epochs,
        "wall_seconds": wall, "smallest_budget": outcome.get("smallest_budget", math.nan), "error": outcome.get("error", ""),
        "machine": machine(), "cores": os.cpu_count() or 1, "versions": json.dumps(versions(), sort_keys=True),
        **(conditions or {}),
    }
    if outcome["status"] == "ok":
        r.update(memory_bytes=outcome["memory_bytes"], full_bytes=outcome["full_bytes"],
                 index_bytes=outcome["index_bytes"],
                 compression=outcome["compression"], train_samples_per_s=outcome["train_samples_per_s"],
                 eval_samples_per_s=outcome["eval_samples_per_s"], peak_rss_bytes=outcome["peak_rss_bytes"],
                 steps=outcome["steps"], train_seconds=outcome.get("train_seconds", math.nan))
        r.update(stage_columns(outcome.get("stages")))
        for split in ("val", "test"):
            for which in ("best", "last"):
                for metric in ("auc", "logloss"):
                    r[f"{split}_{metric}_{which}"] = outcome.get(split, {}).get(which, {}).get(metric)
            if "bayes" in outcome and split in outcome["bayes"]:
                r[f"bayes_{split}_auc"] = outcome["bayes"][split]["auc"]
        if r.get("test_auc_best") is not None:
            if r.get("bayes_test_auc") is not None:
                r["gap_to_bayes"] = r["test_auc_best"] - r["bayes_test_auc"]
            if config.method == "full":
                r["gap_to_full"] = 0.0
            elif reference is not None and reference.get("test_auc_best") is not None:
                r["gap_to_full"] = r["test_auc_best"] - reference["test_auc_best"]
    return r


def stage_columns(stages: dict[str, Any] | None) -> dict[str, Any]:
    """The columns of a run trained in stages (OptEmbed): each stage's seconds, the rows kept overall and per table,
    the searched dims; none for other runs."""
    if not stages:
        return {}
    s = stages["supernet"]
    return {"supernet_seconds": s["seconds"], "search_seconds": stages["search"]["seconds"],
            "retrain_seconds": stages["retrain"]["seconds"], "kept_fraction": sum(s["kept_rows"]) / sum(s["table_rows"]),
            "kept_fractions": json.dumps(s["kept_fraction"]), "dims": json.dumps(stages["search"]["dims"]),
            "stage_tables": json.dumps(s["tables"]), "supernet_folder": s["folder"]}


def sweep(config: SweepConfig, out: str | Path, command: str = "", progress: bool = True) -> pd.DataFrame:
    """Run every unfinished cell of `config` into `out`; returns the results table."""
    check_device(config.train.device)  # before any cell: each would fail the same way
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # without the device: a sweep may go on on another device, as its runs may
    recipe = what_runs(asdict(replace(config.train, method="full", budget=None, options={}, seed=0)))
    saved = out / "sweep.json"
    before = read_json(saved) if saved.exists() else {}
    if before and before["recipe"] != as_json(recipe):
        raise ValueError(f"{out} holds a sweep with a different training recipe; use another --out")
    # every command that added cells to this folder (methods or options added later), in order
    commands = before.get("commands", [before["command"]] if before.get("command") else [])
    commands += [command] if command and command not in commands else []
    # DIN's reference that learns no embeddings: computed once, kept on resume (the report reads it without the data)
    popularity = before.get("popularity")
    if config.train.model == "din" and popularity is None:
        from embtables.app.popularity import popularity_auc

        popularity = popularity_auc(config.train.data)
    write_json(saved, {"recipe": recipe, "device": config.train.device, "commands": commands, "machine": machine(),
                       "versions": versions(), **({"popularity": popularity} if popularity is not None else {})})
    from embtables.datasets.progress import progress_bar

    cells = config.cells()
    run = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S.%f} UTC, pid {os.getpid()}"  # this run of the sweep
    results = load_results(out)
    finished = set(results[results["status"].isin(["ok", "infeasible"])]["cell"]) if len(results) else set()
    bar = progress_bar(len(cells), 0, progress, desc="sweep", unit="cell")
    for cell in cells:
        name = cell_id(cell)
        bar.set_description(name)
        if name in finished:
            bar.update(1)
            continue
        t0, clock, load = time.perf_counter(), cpu_clock(), load_average()
        outcome = _spawn(cell, out / "runs" / name)
        conditions = dict(sweep_run=run, load_start=load, load_end=load_average(),
                          other_cores=other_cores(clock, cpu_clock()))
        reference = full_reference(results, cell.seed) if cell.method != "full" else None
        r = row(cell, outcome, time.perf_counter() - t0, reference, conditions)
        results = append_row(out, r)
        bar.write(_describe(r))
        finished.add(name)
        bar.update(1)
    bar.close()
    return _quantized_rows(config, out, results, run)


def _quantized_rows(config: SweepConfig, out: Path, results: pd.DataFrame, run: str) -> pd.DataFrame:
    """One row per finished fp32 cell and other dtype of `config.dtypes` not scored yet: its best checkpoint
    quantized (cell id `<cell>-<dtype>`), its gap to full against the fp32 full table of its seed."""
    done = set(results["cell"]) if len(results) else set()
    for cell in config.cells():
        name = cell_id(cell)
        fp32 = results[(results["cell"] == name) & (results["status"] == "ok")] if len(results) else results
        for dtype in config.dtypes:
            if dtype == FP32 or not len(fp32) or f"{name}-{dtype}" in done:
                continue
            t0, load = time.perf_counter(), load_average()
            outcome = quantized_outcome(cell, out / "runs" / name, dtype)
            r = row(cell, outcome, time.perf_counter() - t0, None, dict(sweep_run=run, load_start=load,
                                                                          load_end=load_average()))
            ref = full_reference(results, cell.seed)
            gap = r["test_auc_best"] - ref["test_auc_best"] if ref and r.get("test_auc_best") is not None else None
            r.update(cell=f"{name}-{dtype}", dtype=dtype, gap_to_full=gap)
            results = append_row(out, r)
            print(_describe(r).replace(" budget", f" {dtype} budget", 1), flush=True)
    return results


def _describe(r: dict[str, Any]) -> str:
    head = f"{r['method']:>10} budget {r['budget']:<7g} seed {r['seed']}: "
    if r["status"] == "ok":
        gap = f", gap to full {r['gap_to_full']:+.4f}" if r.get("gap_to_full") is not None else ""
        speed = r["train_samples_per_s"]
        return (head + f"test AUC {r['test_auc_best']:.4f}{gap}, {r['memory_bytes']:,} bytes, "
                + ("scored after training" if math.isnan(speed) else f"{speed:,.0f} samples/s"))
    if r["status"] == "infeasible":
        if math.isnan(r["smallest_budget"]):  # a quantized row: the dtype cannot hold the tables
            return head + f"not quantized: {r['error']}"
        return head + f"infeasible (smallest feasible budget {r['smallest_budget']:.3g})"
    return head + f"FAILED: {r['error']}"
