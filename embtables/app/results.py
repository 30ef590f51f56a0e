"""A sweep's results table: `DIR/results.parquet` (and `.csv`), one row per cell, rewritten atomically.

The sweep appends to it, the report reads it; neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from embtables.files import atomic_write
from embtables.stores.quantized_store import FP32

RESULTS = "results.parquet"
REQUIRED = ("cell", "status", "method", "budget", "seed")  # the columns a sweep resumes from


def load_results(out: Path) -> pd.DataFrame:
    """The results table of `out` (empty when there is none yet).

    Raises:
        ValueError: results.parquet is not readable Parquet or lacks a required column, naming the file (a
            sweep must not start over on a corrupt table, nor a report read a foreign one).
    """
    path = Path(out) / RESULTS
    if not path.exists():
        return pd.DataFrame()
    try:
        df = pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable Parquet file ({type(e).__name__}: {e}); a sweep resumes "
                         "from it: repair it from results.csv, or move it aside to start over") from e
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(missing)}: it is not a sweep's results table "
                         f"(which holds {', '.join(REQUIRED)}, ...)")
    return df


def trained_in_fp32(df: pd.DataFrame) -> pd.Series:
    """Per row, whether it is a trained cell rather than one scored quantized after training (`sweep --dtypes`);
    tables written before the dtype was recorded hold trained cells only."""
    if "dtype" not in df:
        return pd.Series(True, index=df.index)
    return df["dtype"].fillna(FP32) == FP32


def full_reference(df: pd.DataFrame, seed: int) -> dict[str, Any] | None:
    """The row of seed `seed`'s trained full table (the last one, if retried), or None before it finished."""
    if not len(df):
        return None
    ref = df[(df["method"] == "full") & (df["seed"] == seed) & (df["status"] == "ok") & trained_in_fp32(df)]
    return ref.iloc[-1].to_dict() if len(ref) else None


def append_row(out: Path, new: dict[str, Any]) -> pd.DataFrame:
    """Append one row to results.parquet and results.csv, rewriting both atomically."""
    df = load_results(out)
    if len(df):
        df = df[df["cell"] != new["cell"]]  # a retried cell replaces its failed row
    df = pd.concat([df, pd.DataFrame([new])], ignore_index=True)
    atomic_write(out / RESULTS, lambda tmp: df.to_parquet(tmp, index=False))
    atomic_write(out / "results.csv", lambda tmp: df.to_csv(tmp, index=False))
    return df
