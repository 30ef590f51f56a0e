"""A data folder that maps ids with another folder's vocabulary: `preprocess criteo FILE --vocab-from DIR`.

A later file preprocessed on its own gets its own counts.npz, so its ranks differ from the training folder's and
feeding them to a trained model reads the wrong rows (or fails on an index past a table's end). `use_vocabulary`
gives a written folder the training vocabulary instead: DIR's counts.npz (a data folder) or vocabulary.npz (a run
folder of `embtables train`, checked against the sha256 its vocabulary.json recorded) is hard-linked (else copied)
over the folder's counts.npz, and its summary.json records where the vocabulary came from and stops claiming that
the counts are of one of its splits, so the loader maps values training never saw to the OOV index instead of
refusing them. `CriteoData(folder).batches(..., min_count=the run's)` then gives the run's indices.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from embtables.datasets.layout import (
    COUNTS_FILE, SPARSE, SUMMARY_FILE, VOCABULARY_FILE, VOCABULARY_RECORD, load_counts, read_json, write_json,
)
from embtables.files import link_or_copy, sha256_file


def vocabulary_file(source: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The vocabulary of a data folder (counts.npz) or of a run folder (see `run_vocabulary_file`), and what is
    known of it (file, sha256, and a run's min_count).

    Raises:
        FileNotFoundError / ValueError: neither kind of folder, or a run's vocabulary does not match its record.
    """
    source = Path(source)
    if (source / VOCABULARY_RECORD).exists():
        path, record = run_vocabulary_file(source)
        return path, {"file": str(path.resolve()), "sha256": record["sha256"], "min_count": record.get("min_count")}
    path = source / COUNTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{source}: neither a data folder with {COUNTS_FILE} nor a run folder with "
                                f"{VOCABULARY_RECORD} (the vocabulary to map ids with)")
    return path, {"file": str(path.resolve()), "sha256": sha256_file(path), "min_count": None}


def run_vocabulary_file(run: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """The vocabulary a training run kept (vocabulary.npz, else the source its vocabulary.json names), checked
    against the recorded sha256, and that record.

    Raises:
        ValueError: no record, or neither file has the recorded sha256 (each path named with what it holds): its
            ids would map to other embedding rows than the ones the run trained.
    """
    record_path = Path(run) / VOCABULARY_RECORD
    if not record_path.exists():
        raise ValueError(f"{run}: no {VOCABULARY_RECORD}: the run was trained before runs kept their vocabulary, or "
                         f"on data without {COUNTS_FILE}; train it again to score new data with it")
    record = read_json(record_path)
    found = []
    for path in (Path(run) / record.get("file", VOCABULARY_FILE), Path(record["source"])):
        if not path.exists():
            found.append(f"{path} is missing")
            continue
        sha = sha256_file(path)
        if sha == record["sha256"]:
            return path, record
        found.append(f"{path} has sha256 {sha[:16]}...")
    raise ValueError(f"{run}: refusing a mismatched vocabulary: the run trained with sha256 {record['sha256'][:16]}..., "
                     f"but {'; '.join(found)}. Its ids would map to other embedding rows than the ones it trained; "
                     f"restore the original {COUNTS_FILE} (or train the run again)")


def use_vocabulary(folder: str | os.PathLike, source: str | os.PathLike) -> dict[str, Any]:
    """Make the data folder `folder` map ids with `source`'s vocabulary; returns its updated summary.

    Args:
        folder: a finished data folder (summary.json written), e.g. of `preprocess criteo --split none`.
        source: the training data folder, or a training run folder.

    Raises:
        ValueError: the vocabulary lacks one of the folder's categorical features (named); see `vocabulary_file`.
    """
    folder = Path(folder)
    path, record = vocabulary_file(source)
    summary = read_json(folder / SUMMARY_FILE)
    counts = load_counts(path)  # a damaged file is refused here, naming it
    features = summary.get("categorical", SPARSE)
    lost = [f for f in features if f not in counts]
    if lost:
        raise ValueError(f"{path}: the vocabulary has no feature {lost[0]!r} of {folder}; is it of the same kind of "
                         "data?")
    link_or_copy(path, folder / COUNTS_FILE)  # first: a crash before summary.json leaves a loud mismatch
    summary.update(vocabulary_from=record, counts_split=None)  # the counts are of no split of this folder
    write_json(folder / SUMMARY_FILE, summary)
    return summary
