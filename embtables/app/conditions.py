"""Whether a sweep's training speeds were measured under the same conditions as the full table's, from the columns
the sweep records per cell (`sweep_run`, `other_cores`, `cores`, `load_start`, `load_end`).

A speed ratio "vs full" means something only when both cells ran alike: a sweep that was interrupted and re-run
measures its remaining cells later, under whatever else the machine runs then, and a busy machine slows a run
several-fold. The report marks the cells that differ instead of leaving the ratio to be read as the method's.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from embtables.app.results import trained_in_fp32

# other processes' work (in cores, averaged over a cell) may differ from the full table's by this share of the
# machine's cores: training uses every core, so a quarter of them taken by others costs it about that share
# of its speed, more than the differences between methods the speed column is there to show
LOAD_TOLERANCE = 0.25
MARK = "†"


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _reference(df: pd.DataFrame) -> tuple[set[str], float]:
    """The sweep runs and the mean other-cores load of the finished full-table cells."""
    # the trained fp32 table, not its quantized scores (which time no training)
    full = df[(df["method"] == "full") & (df["status"] == "ok") & trained_in_fp32(df)]
    runs = set(full["sweep_run"].dropna()) if "sweep_run" in full else set()
    load = float(full["other_cores"].mean()) if "other_cores" in full and len(full) else math.nan
    return runs, load


def speed_conditions(df: pd.DataFrame) -> pd.Series:
    """Per row of a results table: "" when its speed was measured under the full table's conditions, else why
    not ("another sweep run", "other load"). Rows without a record (tables written before it was kept) and
    tables without a finished full cell are not flagged: there is nothing to compare.

    Args:
        df: a sweep's results table (`load_results`).
    """
    why = pd.Series("", index=df.index, dtype=object)
    runs, ref_load = _reference(df) if len(df) else (set(), math.nan)
    for i, r in df.iterrows():
        reasons = []
        run = r.get("sweep_run")
        if runs and isinstance(run, str) and runs != {run}:
            reasons.append("another sweep run")
        load, cores = _number(r.get("other_cores")), _number(r.get("cores"))
        if abs(load - ref_load) > LOAD_TOLERANCE * cores:  # False when any is NaN
            reasons.append("other load")
        why[i] = ", ".join(reasons)
    return why


def conditions_section(df: pd.DataFrame, why: pd.Series) -> list[str]:
    """The report's "Measurement conditions" section: what the speeds were measured under, and every finished cell
    whose conditions differ from the full table's, with its numbers.

    Args:
        df: the results table.
        why: `speed_conditions(df)`.
    """
    ok = df[df["status"] == "ok"]
    head = ["## Measurement conditions", ""]
    if "sweep_run" not in ok or not len(ok):
        return head + ["The results do not record the conditions their speeds were measured under (written by an "
                       "earlier version of `embtables sweep`): compare training speeds with care.", ""]
    runs, ref_load = _reference(df)
    cores = _number(ok["cores"].iloc[0]) if "cores" in ok else math.nan
    rule = (f"Training speeds compare with the full table's only when measured under its conditions: in the same "
            f"run of the sweep (a resumed sweep measures its remaining cells later, under whatever else the machine "
            f"runs then), while other processes kept about as many cores busy as during the full table's run "
            f"({ref_load:.2f}; a difference over {LOAD_TOLERANCE * cores:.1f}, {LOAD_TOLERANCE:.0%} of the "
            f"machine's {cores:.0f} cores, counts).")
    flagged = ok[why[ok.index] != ""]
    if not len(flagged):
        where = f"one run of the sweep ({next(iter(runs))})" if len(runs) == 1 else "the full table's run"
        return head + [rule + f" Every speed here was measured in {where} under comparable load.", ""]
    lines = [rule + f" The speeds marked {MARK} were not, so their \"vs full speed\" is not the method's:", ""]
    for i, r in flagged.iterrows():
        said = [f"measured in another run of the sweep ({r.get('sweep_run')}; full: {', '.join(sorted(runs))})"]
        said = said if "another sweep run" in why[i] else []
        said.append(f"{_number(r.get('other_cores')):.2f} cores busy elsewhere (full: {ref_load:.2f}), load average "
                    f"{_number(r.get('load_start')):.2f} at its start and {_number(r.get('load_end')):.2f} at its end")
        lines.append(f"- {r['method']} at budget {r['budget']:g}, seed {r['seed']}: {'; '.join(said)}")
    return head + lines + [""]
