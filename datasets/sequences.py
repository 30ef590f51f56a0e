"""Sequence data for DIN: the Amazon interactions file to DIN samples, the CLI, and the public names.

    embtables prepare-sequences amazon INPUT --out DIR [--max-history 50] [--seed 0] [--force]
    embtables prepare-sequences log FILE --user COL --item COL [--time COL] --out DIR   (datasets/interaction_log.py)
    embtables synth sequences --users 20000 --out DIR [--seed 0]       (registered by datasets/synthetic.py)

INPUT holds one `user<TAB>item` interaction per line (integer ids), grouped by user and in time order within
each user: the format of `../shared/data/amazon_video_games_interactions.tsv` (Amazon Video Games, SASRec's
preprocessing). The samples, splits and output layout are those of `datasets/din_samples.py`: for every
position i >= 1 of a user's sequence, the (at most max_history) items before it with target s_i (label 1)
and with a seeded negative not among s_0..s_i (label 0); each user's last position is `test`, the one before
`val`, the rest `train`. Users with a single interaction give no sample. Amazon items have no categories.
`prepare_amazon` is the preset of `prepare_log` (any CSV, TSV or Parquet log, with a time column, string ids and
an item category) for this header-less file of integer ids in time order: both end in `write_log_sequences`.

Everything a caller needs is importable from here:

    from embtables.datasets.sequences import prepare_amazon, prepare_log, synth_sequences, SequenceData, SequenceBatch
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from embtables.datasets.din_samples import DinSamples, din_samples
from embtables.datasets.interaction_log import MAX_HISTORY, prepare_log, write_log_sequences
from embtables.datasets.sequence_loader import SequenceBatch, SequenceData
from embtables.datasets.synthetic_sequences import SynthSequencesConfig, synth_sequences

__all__ = [
    "DinSamples",
    "SequenceBatch",
    "SequenceData",
    "SynthSequencesConfig",
    "din_samples",
    "prepare_amazon",
    "prepare_log",
    "read_interactions",
    "synth_sequences",
]


def read_interactions(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) int64 arrays of a `user<TAB>item` file, one interaction per line.

    Raises:
        ValueError: naming the file and the first bad line (1-based): a wrong field count or a non-integer id.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, sep="\t", header=None, names=["user", "item"], dtype=str, keep_default_na=False,
                         skip_blank_lines=False, engine="c")
    except pd.errors.ParserError as e:  # more than two fields on a line; pandas names the line
        raise ValueError(f"{path}: {e}") from None
    out = []
    for column in ("user", "item"):
        text = df[column].str.strip()
        good = text.str.fullmatch(r"-?\d+")
        if not good.all():
            line = int(np.flatnonzero(~good.to_numpy())[0])
            raise ValueError(f"{path}: line {line + 1}: expected two integer fields user<TAB>item, got "
                             f"{df.iloc[line].tolist()!r}")
        out.append(text.astype(np.int64).to_numpy())
    return out[0], out[1]


def prepare_amazon(input: str | Path, out: str | Path, max_history: int = MAX_HISTORY, seed: int = 0,
                   force: bool = False) -> dict[str, Any]:
    """Write the DIN samples of an interactions file to `out` (kind "sequences") and return its summary.

    Args:
        input: `user<TAB>item` lines grouped by user, time-ordered.
        out: the data folder; it must not hold a data set already unless `force`.
        max_history: L, the most recent items kept in each history.
        seed: seeds the negative items; the same (input, max_history, seed) give the same bytes.
        force: replace an earlier data set in `out`.

    Example:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "x.tsv"; _ = f.write_text("1\\t5\\n1\\t6\\n1\\t7\\n2\\t6\\n2\\t8\\n")
        >>> s = prepare_amazon(f, f.parent / "out", max_history=2)
        >>> s["splits"]["test"]["rows"], s["users"], s["items"]
        (4, 2, 4)
    """
    users, items = read_interactions(input)
    # the ids are integers already and the file order is the time order: prepare_log's id and order rules leave
    # them as they are, so the rows go straight to the shared writer (an interleaved user is refused there)
    return write_log_sequences(Path(out), users, items, None, max_history, seed, force, str(input),
                               {"source": "interactions", "input": str(input), "seed": seed,
                                "rows_read": int(users.size), "max_history": max_history})
