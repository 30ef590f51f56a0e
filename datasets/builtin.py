"""Built-in data: `--data synthetic` resolves to the planted synthetic data set of the model's kind,
generated once (deterministically) into a cache folder and reused.

The cache is `$EMBTABLES_CACHE` or `~/.cache/embtables`; a data set is generated into a temporary sibling
folder and renamed into place when complete, so an interrupted generation never leaves a usable-looking
half data set.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

SYNTHETIC = "synthetic"


def cache_dir() -> Path:
    return Path(os.environ.get("EMBTABLES_CACHE", Path.home() / ".cache" / "embtables"))


def cached(name: str, make: Callable[[Path], Any]) -> Path:
    """`cache_dir()/name`, made by `make(folder)` the first time."""
    final = cache_dir() / name
    if (final / "summary.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    try:
        make(tmp)
        if final.exists():  # an older, incomplete attempt
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def synthetic_criteo(rows: int | None = None, seed: int = 0) -> Path:
    from embtables.datasets.synthetic import SynthCriteoConfig, synth_criteo

    rows = rows or SynthCriteoConfig.rows
    return cached(f"synthetic-criteo-{rows}-seed{seed}", lambda d: synth_criteo(d, rows=rows, seed=seed, force=True))


def synthetic_sequences(seed: int = 0) -> Path:
    from embtables.datasets.sequences import synth_sequences

    return cached(f"synthetic-sequences-seed{seed}", lambda d: synth_sequences(d, seed=seed))


def resolve_data(spec: str, model: str) -> Path:
    """A data folder for `--data`: a path as given, or the built-in synthetic data for `model`."""
    if spec != SYNTHETIC:
        return Path(spec)
    return synthetic_criteo() if model == "dlrm" else synthetic_sequences()
