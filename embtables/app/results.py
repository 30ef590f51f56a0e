"""A sweep's results table: `DIR/results.parquet` (and `.csv`), one row per cell, rewritten atomically.

The sweep appends to it, the report reads it; neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from embtables.files import atomic_write

RESULTS = "results.parquet"


def load_results(out: Path) -> pd.DataFrame:
    path = Path(out) / RESULTS
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def append_row(out: Path, new: dict[str, Any]) -> pd.DataFrame:
    """Append one row to results.parquet and results.csv, rewriting both atomically."""
    df = load_results(out)
    if len(df):
        df = df[df["cell"] != new["cell"]]  # a retried cell replaces its failed row
    df = pd.concat([df, pd.DataFrame([new])], ignore_index=True)
    atomic_write(out / RESULTS, lambda tmp: df.to_parquet(tmp, index=False))
    atomic_write(out / "results.csv", lambda tmp: df.to_csv(tmp, index=False))
    return df
