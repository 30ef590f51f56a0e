"""`embtables report DIR`: report.md and PNG figures from a sweep's results.parquet alone.

AUC is the test AUC at the best validation step of each run (selection never looks at test), averaged over
seeds with the min-max spread shown; bytes are `memory_bytes()` of the compressed collection. Speeds measured
under other conditions than the full table's are marked (see `conditions.py`), and a compressed table that beats
the full one is explained rather than left to puzzle the reader.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embtables.app.conditions import MARK, conditions_section, speed_conditions
from embtables.app.popularity import BELOW, below, reference_lines
from embtables.app.report_quantized import quantized_section
from embtables.app.report_stages import optembed_section, stage_aggregations, train_time, with_stage_columns
from embtables.app.results import RESULTS, load_results, trained_in_fp32
from embtables.datasets.layout import COUNTS_FILE, SUMMARY_FILE, TRUTH_FILE, load_counts
from embtables.files import atomic_write, read_json

AUC = "test_auc_best"


def aggregate(df: pd.DataFrame, batch_size: int | None = None) -> pd.DataFrame:
    """One row per (method, options, budget): means and min/max over seeds of the finished runs; `conditions` says
    why its speed does not compare with the full table's ("" when it does); `batch_size`, the sweep's, derives the
    training seconds of runs that did not record them."""
    ok = with_stage_columns(df[df["status"] == "ok"].assign(conditions=speed_conditions(df)), batch_size)
    trained = trained_in_fp32(ok)  # a run scored quantized after training is its own line: "qr int8", "full int4"
    if not trained.all():
        ok = ok.assign(method=ok["method"].where(trained, ok["method"] + " " + ok["dtype"].fillna("")))
    if "index_bytes" not in ok:  # results of sweeps from before index_bytes was recorded
        ok = ok.assign(index_bytes=math.nan)
    g = ok.groupby(["method", "options", "budget"], dropna=False)
    out = g.agg(
        seeds=("seed", "nunique"), bytes=("memory_bytes", "mean"), full_bytes=("full_bytes", "mean"),
        vocabulary=("index_bytes", "mean"),
        auc=(AUC, "mean"), auc_min=(AUC, "min"), auc_max=(AUC, "max"), auc_sd=(AUC, "std"),
        logloss=("test_logloss_best", "mean"), speed=("train_samples_per_s", "mean"),
        conditions=("conditions", lambda why: ", ".join(sorted({w for w in why if w}))), **stage_aggregations(),
    ).reset_index()
    full = out[out["method"] == "full"]
    out["gap_to_full"] = out["auc"] - (full["auc"].mean() if len(full) else math.nan)
    out["speed_vs_full"] = out["speed"] / (full["speed"].mean() if len(full) else math.nan)
    if "bayes_test_auc" in ok:
        out["gap_to_bayes"] = out["auc"] - ok["bayes_test_auc"].mean()
    out["served"] = out["bytes"] + out["vocabulary"]  # tables + the vocabulary ranks need (NaN: not recorded)
    return out.sort_values(["budget", "auc"], ascending=[False, False]).reset_index(drop=True)


def shows_vocabulary(agg: pd.DataFrame) -> bool:
    """Whether every run recorded its vocabulary bytes, so the report can show tables + vocabulary."""
    return bool(agg["served"].notna().all())


def pareto(agg: pd.DataFrame, x: str = "bytes") -> pd.DataFrame:
    """Runs no other run beats on both bytes (column `x`: fewer) and AUC (higher)."""
    rows = agg.sort_values([x, "auc"], ascending=[True, False])
    best, keep = -math.inf, []
    for i, r in rows.iterrows():
        if r["auc"] > best:
            keep.append(i)
            best = r["auc"]
    return agg.loc[keep].sort_values(x)


def label(method: str, options: str) -> str:
    opts = json.loads(options) if isinstance(options, str) and options else {}
    return method + ("" if not opts else " " + ",".join(f"{k}={v}" for k, v in sorted(opts.items())))


MARKERS = "osD^vP*X"
DASHES = ["-", "--", "-.", (0, (5, 1, 1, 1, 1, 1))]


def figures(agg: pd.DataFrame, bayes: float | None, out: Path, popularity: float | None = None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    full = agg[agg["method"] == "full"]
    curves = agg[agg["method"] != "full"]
    specs = [("auc", "bytes", "test AUC (at best validation step)", "auc_vs_bytes.png"),
             ("speed", "bytes", "training samples / s", "throughput_vs_bytes.png")]
    if shows_vocabulary(agg):
        specs.append(("auc", "served", "test AUC (at best validation step)", "auc_vs_bytes_with_vocabulary.png"))
    for y, x, ylabel, fname in specs:
        fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
        for i, ((method, options), g) in enumerate(curves.groupby(["method", "options"])):
            g = g.sort_values(x)
            # distinct markers and dashes, so curves that coincide stay distinguishable
            style = dict(marker=MARKERS[i % len(MARKERS)], ms=6 - i % 3, ls=DASHES[i % len(DASHES)], alpha=0.9,
                         label=label(method, options))
            if y == "auc":
                err = [g["auc"] - g["auc_min"], g["auc_max"] - g["auc"]]
                ax.errorbar(g[x], g["auc"], yerr=err, capsize=3, **style)
            else:
                ax.plot(g[x], g["speed"], **style)
        if len(full):
            ax.axhline(full[y].mean(), color="black", lw=1.2, label=f"full table ({full[x].mean() / 1e6:,.1f} MB)")
        if y == "auc":
            if bayes is not None:
                ax.axhline(bayes, color="gray", ls="--", lw=1, label="Bayes-optimal (planted truth)")
            if popularity is not None:  # DIN: the ranking that learns no embeddings (0 bytes)
                ax.axhline(popularity, color="black", ls="-.", lw=1.2, label="popularity ranking (no embeddings)")
            front = pareto(agg, x)
            ax.plot(front[x], front["auc"], color="black", ls=":", lw=1)
            ax.scatter(front[x], front["auc"], s=90, facecolors="none", edgecolors="black", label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("embedding memory, bytes (log scale)" if x == "bytes" else
                      "embedding memory + the vocabulary to serve raw ids, bytes (log scale)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        atomic_write(out / fname, lambda tmp: fig.savefig(tmp, format="png"))
        plt.close(fig)
        names.append(fname)
    return names


def recommendations(agg: pd.DataFrame, popularity: dict[str, Any] | None = None) -> list[str]:
    """One line per range of consecutive budgets with the same winner, derived from the table, with the
    winner's numbers at each budget of the range; a winner below the popularity reference (DIN) says so."""
    groups: list[tuple[str, list[tuple[float, str]]]] = []  # (winner, [(budget, its numbers)])
    for budget, g in agg[agg["method"] != "full"].groupby("budget", sort=False):
        g = g.sort_values("auc", ascending=False)
        top = g.iloc[0]
        tied = [label(r["method"], r["options"]) for _, r in g.iloc[1:].iterrows()
                if top["auc"] - r["auc"] <= max(_spread(top), _spread(r))]
        who = label(top["method"], top["options"]) + (f" (tied within seed spread with {', '.join(tied)})" if tied else "")
        numbers = (f"{top['gap_to_full']:+.4f} AUC vs full at {top['bytes'] / 1e6:,.3g} MB, "
                   f"{top['speed_vs_full']:.2f}x full's training speed")
        if top.get("conditions"):
            numbers += f" (not comparable: {top['conditions']})"
        if below(top["auc"], popularity):
            numbers += f", {BELOW} (AUC {top['auc']:.4f} < {popularity['auc']:.4f})"  # type: ignore[index]
        if groups and groups[-1][0] == who:
            groups[-1][1].append((budget, numbers))
        else:
            groups.append((who, [(budget, numbers)]))
    out = []
    for who, items in groups:
        if len(items) == 1:
            out.append(f"- budget {items[0][0]:g}: use **{who}**: {items[0][1]}")
        else:
            each = "; ".join(f"at {b:g} {numbers}" for b, numbers in items)
            out.append(f"- budgets {items[0][0]:g} to {items[-1][0]:g}: use **{who}**: {each}")
    return out


def _spread(r: Any) -> float:
    return 0.0 if r["seeds"] < 2 else float(r["auc_max"] - r["auc_min"]) / 2


def beats_full(agg: pd.DataFrame, data: Path | None = None) -> list[str]:
    """A section naming the compressed tables whose AUC beats the full table's by more than the seed spread (of
    either), at each budget, and the likely reason; no lines when none does.

    Args:
        agg: `aggregate` of a results table.
        data: the data folder, for its training rows and how many ids occur once (when it is still there).
    """
    full = agg[agg["method"] == "full"]
    if not len(full):
        return []
    ref = full.iloc[0]
    lines = []
    for budget, g in agg[agg["method"] != "full"].groupby("budget", sort=False):
        won = [f"{label(r['method'], r['options'])} ({r['gap_to_full']:+.4f} AUC)"
               for _, r in g.sort_values("auc", ascending=False).iterrows()
               if r["gap_to_full"] > max(_spread(r), _spread(ref))]
        if won:
            lines.append(f"- budget {budget:g}: {', '.join(won)}")
    if not lines:
        return []
    return ["## Compressed tables beat the full table", "",
            "At these budgets a compressed table reached a higher test AUC than the full table:", "", *lines, "",
            "The likely reason is the data's size, not something compression adds: " + _ids_seen_once(data)
            + "the full table gives every id a row of its own, and an id seen once or twice in training gets a row "
            "fitted to those few examples (it overfits them), while a compressed table shares each row among many "
            "ids, which regularises. On data where most ids are seen many times, such as the full Criteo sets, "
            "expect the full table to lead.", ""]


def _ids_seen_once(data: Path | None) -> str:
    """"the training split has N rows and P% of its distinct ids occur once; " from the data folder, or ""."""
    try:
        counts = load_counts(data / COUNTS_FILE)  # type: ignore[operator]
        rows = read_json(data / SUMMARY_FILE)["splits"]["train"]["rows"]  # type: ignore[operator]
    except (TypeError, OSError, ValueError, KeyError):
        return ""  # the report is made from results alone: the data may be elsewhere, or gone
    distinct = sum(len(c) for _, c in counts.values())
    once = sum(int(np.count_nonzero(c == 1)) for _, c in counts.values())
    return f"the training split has {rows:,} rows and {once / max(distinct, 1):.0%} of its distinct ids occur once; "


@dataclass(frozen=True)
class ReportFiles:
    """What `build_report` wrote: report.md and its figures (PNG), in the sweep folder."""

    report: Path
    figures: list[Path]


def write_report(folder: str | Path) -> Path:
    """Regenerate `folder/report.md` and its figures from `folder/results.parquet`; returns report.md's path."""
    return build_report(folder).report


def build_report(folder: str | Path) -> ReportFiles:
    """Regenerate `folder/report.md` and its figures from `folder/results.parquet`.

    Args:
        folder: a sweep folder.

    Raises:
        ValueError: the folder has no results (or unreadable ones), naming the file.
    """
    folder = Path(folder)
    df = load_results(folder)
    if not len(df):
        raise ValueError(f"{folder / RESULTS} is missing or empty: run `embtables sweep --out {folder}` first")
    meta = read_json(folder / "sweep.json") if (folder / "sweep.json").exists() else {}
    agg = aggregate(df, meta.get("recipe", {}).get("batch_size"))
    bayes = float(df["bayes_test_auc"].dropna().mean()) if "bayes_test_auc" in df and df["bayes_test_auc"].notna().any() else None
    popularity = meta.get("popularity")  # DIN sweeps only (sweep.json): the report never needs the data
    names = figures(agg, bayes, folder, popularity and popularity["auc"]) if len(agg) else []
    lines = [f"# Memory-budget sweep: {', '.join(sorted(df['model'].unique()))} on {df['data'].iloc[0]}", ""]
    commands = meta.get("commands", [meta["command"]] if meta.get("command") else []) or ["(not recorded)"]
    lines += [("Command: " if len(commands) == 1 else "Commands, in order: ") + "; ".join(f"`{c}`" for c in commands), "",
              f"Report: `embtables report {folder}` at {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
              f"machine: {df['machine'].iloc[0]}; versions: {_versions(df)}", ""]
    lines += _data_summary(Path(df["data"].iloc[0])) + [""]
    lines += ["AUC is the test AUC at each run's best validation step, mean over seeds (min..max); gap to full is "
              "against the full table's mean; bytes are `memory_bytes()` of the embeddings. A budget is a fraction of the full "
              "tables' bytes (N x D x 4 summed over the tables); each method spreads it over the tables its own way, "
              "and its bytes are what it reached.", ""]
    lines += [f"![AUC against bytes]({n})" for n in names[:1]] + [""]
    lines += ["## Recommendation per budget", ""] + recommendations(agg, popularity) + [""]
    lines += beats_full(agg, Path(df["data"].iloc[0]))
    bayes_col = bayes is not None  # data without a planted truth has no Bayes column
    vocab_col = shows_vocabulary(agg)
    lines += _vocabulary_note(agg) if vocab_col else []
    for budget, g in agg[agg["method"] != "full"].groupby("budget", sort=False):
        lines += [f"## Budget {budget:g}", "", "| rank | method | bytes | of full | "
                  + ("+ vocabulary, of full | " if vocab_col else "") + "test AUC | gap to full | "
                  + ("gap to Bayes | " if bayes_col else "") + "train samples/s | vs full speed | train seconds |",
                  "|---|---|---|---|---|---|" + ("---|" if vocab_col else "") + ("---|" if bayes_col else "") + "---|---|---|"]
        for rank, (_, r) in enumerate(g.sort_values("auc", ascending=False).iterrows(), 1):
            lines.append(
                f"| {rank} | {label(r['method'], r['options'])} | {r['bytes']:,.0f} | {r['bytes'] / r['full_bytes']:.4g} | "
                + (f"{r['served'] / r['full_bytes']:.4g} | " if vocab_col else "") + 
                f"{r['auc']:.4f} ({r['auc_min']:.4f}..{r['auc_max']:.4f}){', ' + BELOW if below(r['auc'], popularity) else ''} | "
                f"{r['gap_to_full']:+.4f} | "
                + (f"{r.get('gap_to_bayes', math.nan):+.4f} | " if bayes_col else "")
                + (f"{r['speed']:,.0f} | {r['speed_vs_full']:.2f}x{' ' + MARK if r['conditions'] else ''} | {train_time(r)} |"
                   if not math.isnan(r["speed"]) else "- | - | quantized after training |")
            )
        lines.append("")
    full = agg[agg["method"] == "full"]
    if len(full):
        r = full.iloc[0]
        to_bayes = f", {r['gap_to_bayes']:+.4f} from the Bayes-optimal AUC" if bayes_col else ""
        lines += [f"Full table: test AUC {r['auc']:.4f} ({r['auc_min']:.4f}..{r['auc_max']:.4f}) over {r['seeds']} "
                  f"seed(s){to_bayes}{', ' + BELOW if below(r['auc'], popularity) else ''}, {r['bytes']:,.0f} bytes, "
                  f"{r['speed']:,.0f} samples/s.", ""]
    lines += reference_lines(popularity)
    lines += quantized_section(agg, pareto(agg), label)
    lines += optembed_section(agg, label)
    lines += conditions_section(df, speed_conditions(df))
    lines += _other_cells(df)
    lines += [f"![training throughput against bytes]({n})" for n in names[1:2]]
    report = folder / "report.md"
    atomic_write(report, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    return ReportFiles(report, [folder / n for n in names])


def _vocabulary_note(agg: pd.DataFrame) -> list[str]:
    """What the "+ vocabulary" column and figure count, with the full table's vocabulary as the example."""
    full = agg[agg["method"] == "full"]
    size = f" ({full['vocabulary'].iloc[0] / full['full_bytes'].iloc[0]:.2g} of the full table's bytes here)" if len(full) else ""
    return ["Memory is shown two ways. `bytes` counts what the collection holds (`memory_bytes()`). Tables a method "
            "indexes by rank (full, qr, mixed_dim, and the tables hash and multihash keep whole) also need the "
            f"preprocessing vocabulary to turn raw values into ranks, 16 bytes per id{size}; "
            "\"+ vocabulary\" adds it (`index_bytes`), which hashed tables do not need (and runs with `--raw-ids` "
            "avoid). ![AUC against bytes + vocabulary](auc_vs_bytes_with_vocabulary.png)", ""]


def _versions(df: pd.DataFrame) -> str:
    v = json.loads(df["versions"].iloc[0])
    return ", ".join(f"{k} {v[k]}" for k in ("embtables", "torch", "fbgemm-gpu-cpu", "torchrec", "python") if k in v)


def _data_summary(data: Path) -> list[str]:
    if not (data / SUMMARY_FILE).exists():
        return [f"Data: `{data}` (summary.json not found)"]
    s = read_json(data / SUMMARY_FILE)
    splits = s.get("splits", {})
    parts = [f"{k} {v.get('rows', 0):,} rows ({v.get('clicks', 0):,} clicks)" for k, v in splits.items()]
    out = [f"Data: `{data}`, kind {s.get('kind')}: " + "; ".join(parts) + "."]
    if (data / TRUTH_FILE).exists():
        t = read_json(data / TRUTH_FILE).get("splits", {})
        out.append("Bayes-optimal test AUC of the planted model: " + ", ".join(
            f"{k} {v['bayes_auc']:.4f}" for k, v in t.items() if "bayes_auc" in v) + ".")
    return out


def _other_cells(df: pd.DataFrame) -> list[str]:
    out = []
    bad = df[df["status"] == "infeasible"]
    if len(bad):
        out += ["## Infeasible budgets", ""] + [
            f"- {r['method']} at budget {r['budget']:g}: smallest feasible budget {r['smallest_budget']:.3g}"
            for _, r in bad.drop_duplicates(["method", "options", "budget"]).iterrows()] + [""]
    failed = df[df["status"] == "failed"]
    if len(failed):
        out += ["## Failed runs", ""] + [f"- {r['cell']}: {r['error']}" for _, r in failed.iterrows()] + [""]
    return out
