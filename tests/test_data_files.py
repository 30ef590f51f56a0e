"""Files from elsewhere: corrupt or mismatched Parquet parts, counts.npz and results.parquet give a ValueError
naming the file (and the column or id), never a traceback from inside pyarrow or torch, never a wrong load."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embtables.app.results import RESULTS, append_row, load_results
from embtables.datasets.layout import load_counts
from embtables.datasets.loader import CriteoData
from embtables.datasets.sequences import SequenceData, synth_sequences
from embtables.datasets.synthetic import synth_criteo

UNSEEN = 123_456_789_012  # above 2**32: no raw Criteo or synthetic id


@pytest.fixture(scope="module")
def criteo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("files") / "criteo"
    synth_criteo(out, rows=3000, seed=0, scale=1e-4, min_rows=20, part_rows=1000)  # train parts 0, 1; val; test
    return out


@pytest.fixture(scope="module")
def sequences(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("files") / "seq"
    synth_sequences(out, users=60, seed=0, items=400, clusters=20, clusters_per_category=4, max_history=8,
                    part_rows=100)
    return out


def copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def with_id(part: Path, column: str, position: int, value: int) -> None:
    """Rewrite `part` with one id of `column` (flat position for list columns) set to `value`."""
    t = pq.read_table(part)
    col = t.column(column).combine_chunks()
    if pa.types.is_list(col.type):
        values = col.values.to_numpy().copy()
        values[position] = value
        new = pa.ListArray.from_arrays(col.offsets, pa.array(values))
    else:
        values = col.to_numpy().copy()
        values[position] = value
        new = pa.array(values)
    pq.write_table(t.set_column(t.schema.get_field_index(column), column, new), part)


def test_criteo_part_missing_a_column_is_named(criteo, tmp_path):
    d = copy(criteo, tmp_path)
    part = d / "train" / "part-1.parquet"
    pq.write_table(pq.read_table(part).drop(["C7"]), part)
    data = CriteoData(d)
    for ids in ("index", "raw"):
        with pytest.raises(ValueError, match=re.escape(f"{part} lacks column(s) C7; a Criteo data folder's parts "
                                                       "hold label, I1..I13 and C1..C26, as written by `embtables "
                                                       "preprocess criteo` or `embtables synth criteo`")):
            data.batches("train", 64, ids=ids)  # at the call, before any row is read
    assert sum(b.batch_size for b in data.batches("val", 64)) == data.rows("val")  # other splits still load


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage"])
def test_criteo_part_that_is_not_parquet_is_named(criteo, tmp_path, damage):
    d = copy(criteo, tmp_path)
    part = d / "train" / "part-0.parquet"
    body = part.read_bytes()
    part.write_bytes({"empty": b"", "truncated": body[: len(body) // 2], "garbage": b"not parquet " * 20}[damage])
    data = CriteoData(d)
    message = re.escape(f"{part} is not a readable Parquet file (ArrowInvalid: ")
    for call in (lambda: data.rows("train"), lambda: data.num_batches("train", 64),
                 lambda: data.batches("train", 64), lambda: data.batches("train", 64, ids="raw", workers=1)):
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("workers", [0, 1])
def test_counted_split_id_the_counts_lack_is_named(criteo, tmp_path, workers):
    d = copy(criteo, tmp_path)
    part = d / "train" / "part-1.parquet"
    with_id(part, "C3", 17, UNSEEN)
    data = CriteoData(d)
    expect = (f"{part}: column C3 holds id {UNSEEN}, which {d / 'counts.npz'} never counted (1 such id(s) in this "
              "row group), though it counts split 'train', this part's: the counts do not belong to these Parquet "
              "files (rewrite the folder with `embtables preprocess criteo` or `embtables synth criteo`)")
    with pytest.raises(ValueError) as err:
        list(data.batches("train", 64, shuffle=True, workers=workers))
    assert str(err.value) == expect  # from a worker too: the message alone, not the worker's traceback
    with pytest.raises(ValueError, match=re.escape(expect)):
        list(data.batches("train", 64, min_count=3))


def test_unseen_ids_of_other_splits_map_to_oov(criteo, tmp_path):
    d = copy(criteo, tmp_path)
    for split in ("val", "test"):
        with_id(d / split / "part-0.parquet", "C3", 5, UNSEEN)
    data = CriteoData(d)
    oov = data.vocabulary("C3").oov_index
    for split in ("val", "test"):
        ids = np.concatenate([b.sparse["C3"].values().numpy() for b in data.batches(split, 64, workers=1)])
        assert ids.size == data.rows(split) and ids[5] == oov
    # train ids dropped by min_count map to OOV too, but counts.npz counted them: no error
    assert sum(b.batch_size for b in data.batches("train", 256, min_count=5)) == data.rows("train")


def test_sequence_part_with_an_id_the_counts_lack_is_named(sequences, tmp_path):
    d = copy(sequences, tmp_path)
    part = d / "train" / "part-1.parquet"  # rows 100..199 of the split: the part is found from the position
    with_id(part, "hist", 30, 99_999)
    with pytest.raises(ValueError, match=re.escape(
            f"{part}: column hist holds item id 99999, which {d / 'counts.npz'} does not list (1 such id(s) in "
            "split 'train'), though it lists every item a split can hold: the counts do not belong to these "
            "Parquet files (rewrite the folder with `embtables prepare-sequences` or `embtables synth sequences`)")):
        SequenceData(d).batches("train", 16)
    val = d / "val" / "part-1.parquet"
    with_id(val, "target_cat", 3, 99_999)  # val too: counts.npz lists every id a split can hold
    with pytest.raises(ValueError, match=re.escape(f"{val}: column target_cat holds category id 99999")):
        SequenceData(d).batches("val", 16, min_count=2)
    assert next(SequenceData(d).batches("test", 16)).batch_size == 16


def test_sequence_part_missing_a_column_or_not_parquet_is_named(sequences, tmp_path):
    d = copy(sequences, tmp_path)
    part = d / "val" / "part-0.parquet"
    pq.write_table(pq.read_table(part).drop(["hist_cat", "label"]), part)
    with pytest.raises(ValueError, match=re.escape(
            f"{part} lacks column(s) label, hist_cat; a sequence data folder with categories has parts with columns "
            "label, user, target, hist, target_cat, hist_cat, as written by `embtables prepare-sequences`")):
        SequenceData(d).batches("val", 16)
    broken = d / "test" / "part-1.parquet"
    broken.write_bytes(broken.read_bytes()[:100])
    for call in (lambda data: data.batches("test", 16), lambda data: data.rows("test")):
        with pytest.raises(ValueError, match=re.escape(f"{broken} is not a readable Parquet file (ArrowInvalid: ")):
            call(SequenceData(d))


@pytest.mark.parametrize("damage, why", [
    ("truncated", "BadZipFile: File is not a zip file"),
    ("empty", "it is empty (0 bytes)"),
    ("garbage", "it is not an .npz (zip) archive"),
    ("no counts", "feature 'C2' lacks its counts array"),
    ("mismatched", "feature 'C2' has values int64[3] and counts int64[2]"),
])
def test_corrupt_counts_file_is_named(criteo, sequences, tmp_path, damage, why):
    for folder in (criteo, sequences):
        d = copy(folder, tmp_path)
        counts = d / "counts.npz"
        body = counts.read_bytes()
        arrays = {"C1/values": np.arange(3), "C1/counts": np.ones(3, dtype=np.int64), "C2/values": np.arange(3)}
        if damage == "mismatched":
            arrays["C2/counts"] = np.ones(2, dtype=np.int64)
        if damage in ("no counts", "mismatched"):
            with open(counts, "wb") as f:
                np.savez(f, **arrays)
        else:
            counts.write_bytes({"truncated": body[: len(body) - 100], "empty": b"", "garbage": b"\x80\x04junk"}[damage])
        message = re.escape(f"{counts} is not a valid counts file: {why}")
        with pytest.raises(ValueError, match=message):
            load_counts(counts)
        with pytest.raises(ValueError, match=message):
            CriteoData(d).tables(8) if folder == criteo else SequenceData(d)
        shutil.rmtree(d)


def test_corrupt_or_foreign_results_table_is_named(tmp_path):
    append_row(tmp_path, {"cell": "a", "status": "ok", "method": "full", "budget": 1.0, "seed": 0})
    assert load_results(tmp_path)["cell"].tolist() == ["a"]
    path = tmp_path / RESULTS
    path.write_bytes(path.read_bytes()[:40])
    message = re.escape(f"{path} is not a readable Parquet file (ArrowInvalid: ")
    for call in (load_results, lambda out: append_row(out, {"cell": "b"})):
        with pytest.raises(ValueError, match=message):
            call(tmp_path)  # never a fresh table over the old rows
    pd.DataFrame({"cell": ["a"], "budget": [0.5]}).to_parquet(path)
    with pytest.raises(ValueError, match=re.escape(f"{path} lacks column(s) status, method, seed")):
        load_results(tmp_path)
