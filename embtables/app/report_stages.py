"""The report's parts about runs trained in stages (OptEmbed): time per stage, rows kept and dims searched."""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import pandas as pd

# per-run columns `sweep.stage_columns` writes (absent from sweeps without staged runs, or from older results)
TIMES = ("train_seconds", "supernet_seconds", "search_seconds", "retrain_seconds", "kept_fraction")
LISTS = ("dims", "kept_fractions", "stage_tables")


def with_stage_columns(ok: pd.DataFrame, batch_size: int | None = None) -> pd.DataFrame:
    """`ok` with every stage column present (NaN / "" where a run has none). Rows of sweeps from before
    `train_seconds` was recorded get it from their steps and speed (steps x `batch_size` samples, every batch full),
    when the sweep's batch size is known."""
    missing = {c: math.nan for c in TIMES if c not in ok} | {c: "" for c in LISTS if c not in ok}
    ok = ok.assign(**missing) if missing else ok
    if batch_size and {"steps", "train_samples_per_s"} <= set(ok):
        ok = ok.assign(train_seconds=ok["train_seconds"].fillna(ok["steps"] * batch_size / ok["train_samples_per_s"]))
    return ok


def stage_aggregations() -> dict[str, tuple[str, Any]]:
    """`groupby.agg` arguments for the stage columns: means of the times, the first run's lists."""
    first = lambda xs: next((x for x in xs if isinstance(x, str) and x), "")  # noqa: E731
    return {**{c: (c, "mean") for c in TIMES}, **{c: (c, first) for c in LISTS}}


def train_time(r: Any) -> str:
    """The training seconds of a run for the budget tables: supernet + search + retrain for staged runs."""
    if isinstance(r.get("dims"), str) and r["dims"]:
        total = r["supernet_seconds"] + r["search_seconds"] + r["retrain_seconds"]
        return f"{r['supernet_seconds']:,.0f} + {r['search_seconds']:,.0f} + {r['retrain_seconds']:,.0f} = {total:,.0f}"
    return "" if pd.isna(r.get("train_seconds")) else f"{r['train_seconds']:,.0f}"


def optembed_section(agg: pd.DataFrame, label: Callable[[str, str], str]) -> list[str]:
    """Rows kept per table and dims searched at each budget OptEmbed reached (each recipe, `label(method, options)`
    naming it); no lines without staged runs. Per table: the first seed's run."""
    runs = agg[agg["dims"].map(lambda x: isinstance(x, str) and bool(x))] if "dims" in agg else agg.iloc[:0]
    if not len(runs):
        return []
    runs = runs.sort_values(["options", "budget"], ascending=[True, False])
    names = json.loads(runs["stage_tables"].iloc[0])
    recipes = {label(m, o) for m, o in zip(runs["method"], runs["options"])}
    named = lambda r: (label(r["method"], r["options"]) + ", " if len(recipes) > 1 else "")  # noqa: E731
    head = ["table", *[f"kept / dim, {named(r)}{r['budget']:g}" for _, r in runs.iterrows()]]
    lines = ["## OptEmbed: rows kept and dims searched", "",
             "OptEmbed learns its plan: a supernet learns which rows to keep (shared by the budgets of a seed: it does "
             "not depend on the budget), an evolutionary search picks each table's dim on validation AUC among the "
             "candidates within the budget, and the found tables are retrained. Its bytes are what it reached under "
             "each budget asked for. Times: supernet + search + retrain seconds (the supernet's are counted in "
             "every budget's row although it trained once).", ""]
    for _, r in runs.iterrows():
        lines.append(f"- {named(r)}budget {r['budget']:g}: {r['bytes']:,.0f} bytes = {r['bytes'] / r['full_bytes']:.4g} of full, "
                     f"{r['kept_fraction']:.1%} of all rows kept, test AUC {r['auc']:.4f} ({r['gap_to_full']:+.4f} vs full)")
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    kept = [json.loads(x) for x in runs["kept_fractions"]]
    dims = [json.loads(x) for x in runs["dims"]]
    for i, name in enumerate(names):
        lines.append("| " + " | ".join([name, *[f"{k[i]:.0%} / {d[i]}" for k, d in zip(kept, dims)]]) + " |")
    return lines + [""]
