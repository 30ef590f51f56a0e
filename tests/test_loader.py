"""The Criteo loader: Batch shapes, dtypes and values against the Parquet rows, shuffling, drop_last, workers,
vocabulary-backed tables and counts, and clear errors on folders that are not Criteo data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from embtables.datasets.criteo import preprocess_criteo
from embtables.datasets.layout import DENSE, SPARSE, load_counts
from embtables.datasets.loader import Batch, CriteoData, open_data
from embtables.datasets.shuffle import ShuffleBuffer, batches_of
from tests.test_criteo import random_lines, write

N_LINES = 2500


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> CriteoData:
    tmp = tmp_path_factory.mktemp("loader")
    src = write(tmp / "d.tsv", random_lines(N_LINES, seed=11))
    preprocess_criteo(src, tmp / "out", split="kaggle-days", progress=False, chunk_rows=400)
    return CriteoData(tmp / "out")


def parquet_rows(data: CriteoData, split: str) -> dict[str, np.ndarray]:
    t = pq.read_table([str(p) for p in data.parts(split)])
    return {c: t.column(c).to_numpy() for c in t.column_names}


def collect(batches) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """All batches' (labels (N,), dense (N, 13), ids (N, 26)) and the batch sizes."""
    labels, dense, ids, sizes = [], [], [], []
    for b in batches:
        assert isinstance(b, Batch)
        B = b.batch_size
        assert b.dense.shape == (B, 13) and b.dense.dtype == torch.float32 and b.labels.dtype == torch.float32
        kjt = b.sparse
        assert kjt.keys() == SPARSE and kjt.stride() == B and kjt.values().dtype == torch.int64
        assert torch.equal(kjt.lengths(), torch.ones(26 * B, dtype=kjt.lengths().dtype))
        labels.append(b.labels.numpy())
        dense.append(b.dense.numpy())
        ids.append(kjt.values().view(26, B).t().numpy())
        assert torch.equal(kjt["C3"].values(), torch.from_numpy(ids[-1][:, 2]))  # feature-major values
        sizes.append(B)
    return np.concatenate(labels), np.concatenate(dense), np.concatenate(ids), sizes


def sorted_rows(labels: np.ndarray, dense: np.ndarray, ids: np.ndarray) -> np.ndarray:
    rows = np.concatenate([labels[:, None].astype(np.float64), dense, ids.astype(np.float64)], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def test_batches_hold_the_parquet_rows_in_order(data):
    rows = parquet_rows(data, "train")
    labels, dense, ids, sizes = collect(data.batches("train", 64))
    assert sizes == [64] * (rows["label"].size // 64) + [rows["label"].size % 64]
    assert np.array_equal(labels, rows["label"].astype(np.float32))
    raw = np.stack([rows[c] for c in DENSE], axis=1)
    assert np.array_equal(dense, np.log1p(np.maximum(raw, 0)).astype(np.float32))
    assert (dense[raw < 0] == 0).all()  # missing (int32 min) and negative counts give 0
    expect_ids = np.stack([data.vocabulary(c).lookup(rows[c]) for c in SPARSE], axis=1)
    assert np.array_equal(ids, expect_ids)
    _, _, raw_ids, _ = collect(data.batches("train", 64, ids="raw"))
    assert np.array_equal(raw_ids, np.stack([rows[c] for c in SPARSE], axis=1))


@pytest.mark.parametrize("workers", [0, 2])
def test_drop_last_and_batch_sizes(data, workers):
    n = data.rows("val")
    full = [b.batch_size for b in data.batches("val", 48, workers=workers)]
    dropped = [b.batch_size for b in data.batches("val", 48, drop_last=True, workers=workers)]
    assert full == [48] * (n // 48) + ([n % 48] if n % 48 else [])
    assert dropped == [48] * (n // 48)
    assert len(full) == data.num_batches("val", 48) and len(dropped) == data.num_batches("val", 48, drop_last=True)


def test_shuffle_is_a_seeded_permutation(data):
    plain = collect(data.batches("train", 100))
    a = collect(data.batches("train", 100, shuffle=True, seed=3, buffer_rows=150))
    b = collect(data.batches("train", 100, shuffle=True, seed=3, buffer_rows=150))
    c = collect(data.batches("train", 100, shuffle=True, seed=4, buffer_rows=150))
    assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3]))
    assert not np.array_equal(a[2], c[2]) and not np.array_equal(a[2], plain[2])
    assert np.array_equal(sorted_rows(*a[:3]), sorted_rows(*plain[:3]))
    assert a[3] == plain[3]  # full batches except the last


def test_workers_are_deterministic_and_cover_every_row_once(data):
    plain = collect(data.batches("train", 128))
    runs = [collect(data.batches("train", 128, shuffle=True, seed=1, workers=2, buffer_rows=200)) for _ in range(2)]
    assert all(np.array_equal(x, y) for x, y in zip(runs[0][:3], runs[1][:3]))
    assert np.array_equal(sorted_rows(*runs[0][:3]), sorted_rows(*plain[:3]))
    assert runs[0][3] == plain[3]
    unshuffled = collect(data.batches("train", 128, workers=2))
    assert np.array_equal(sorted_rows(*unshuffled[:3]), sorted_rows(*plain[:3]))


def test_tables_and_counts_come_from_the_training_vocabulary(data):
    counts = load_counts(data.path / "counts.npz")
    tables = data.tables(embedding_dim=8)
    assert [t.name for t in tables] == SPARSE and all(t.embedding_dim == 8 for t in tables)
    assert [t.num_embeddings for t in tables] == [counts[c][0].size + 1 for c in SPARSE]
    per_index = data.counts()
    train_rows = data.rows("train")
    for c in SPARSE:
        assert per_index[c].dtype == torch.int64 and int(per_index[c].sum()) == train_rows
        assert per_index[c].tolist() == counts[c][1].tolist() + [0]  # ranked as saved, OOV slot empty
    pruned = data.tables(8, min_count=3)
    assert [t.num_embeddings for t in pruned] == [int((counts[c][1] >= 3).sum()) + 1 for c in SPARSE]
    assert int(data.counts(min_count=3)["C3"][-1]) == int(counts["C3"][1][counts["C3"][1] < 3].sum())
    _, _, ids, _ = collect(data.batches("test", 500, min_count=3))
    assert (ids < np.array([t.num_embeddings for t in pruned])).all() and (ids >= 0).all()


def test_batch_to_device_keeps_contents(data):
    b = next(iter(data.batches("test", 16)))
    c = b.to("cpu")
    assert torch.equal(c.dense, b.dense) and torch.equal(c.sparse.values(), b.sparse.values())


def test_not_a_criteo_folder_is_named(tmp_path, data):
    with pytest.raises(FileNotFoundError, match="no such data folder"):
        CriteoData(tmp_path / "nope")
    with pytest.raises(ValueError, match=f"{tmp_path} is not a Criteo data folder: summary.json is missing"):
        open_data(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"kind": "sequences"}))
    with pytest.raises(ValueError, match="kind 'sequences', expected 'criteo'"):
        CriteoData(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"kind": "criteo"}))
    with pytest.raises(ValueError, match="no <split>/part-"):
        CriteoData(tmp_path)
    with pytest.raises(ValueError, match="has no split 'all'; it has \\['train', 'val', 'test'\\]"):
        data.batches("all", 8)


def test_missing_counts_only_block_vocabulary_uses(tmp_path, data):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "part-00000.parquet").write_bytes(data.parts("train")[0].read_bytes())
    (tmp_path / "summary.json").write_text(json.dumps({"kind": "criteo"}))
    d = CriteoData(tmp_path)
    assert next(d.batches("train", 8, ids="raw")).batch_size == 8
    with pytest.raises(ValueError, match="counts.npz is missing"):
        d.tables(8)


@pytest.mark.parametrize("kw, match", [
    (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(batch_size=8, workers=-1), "workers must be an int >= 0"),
    (dict(batch_size=8, ids="hashed"), "ids must be 'index' or 'raw'"),
    (dict(batch_size=8, buffer_rows=0), "buffer_rows must be an int >= 1"),
])
def test_invalid_batch_options_are_named(data, kw, match):
    with pytest.raises(ValueError, match=match):
        data.batches("train", **kw)  # raised at the call, before iterating


def test_shuffle_buffer_releases_each_row_once_in_a_seeded_order():
    def run(seed: int) -> list[int]:
        buf, out = ShuffleBuffer(50, np.random.default_rng(seed)), []
        for start in range(0, 400, 37):
            block = (np.arange(start, min(start + 37, 400)), np.arange(start, min(start + 37, 400)) * 2.0)
            released = buf.push(block)
            if released is not None:
                assert np.array_equal(released[1], released[0] * 2.0)  # rows stay whole
                out += released[0].tolist()
        return out + buf.drain()[0].tolist()

    a = run(0)
    assert sorted(a) == list(range(400)) and a == run(0) and a != run(1) and a != list(range(400))


def test_batches_of_recuts_blocks():
    blocks = iter([(np.arange(0, 5),), (np.arange(5, 6),), (np.arange(6, 6),), (np.arange(6, 17),)])
    got = [(rows[0].tolist(), full) for rows, full in batches_of(blocks, 4)]
    assert got == [([0, 1, 2, 3], True), ([4, 5, 6, 7], True), ([8, 9, 10, 11], True), ([12, 13, 14, 15], True),
                   ([16], False)]
