"""Reading a split on N processes (`datasets/shares.py`): each rank reads only its own row groups, every row is
read once, and the ranks' shares side by side are the global batches `global_batches` rebuilds in one process.
The ranks run as threads of this process, swapping their last rows through a barrier (the all-gather)."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from embtables.datasets.batch import Batch
from embtables.datasets.loader import CriteoData
from embtables.datasets.sequence_loader import SequenceData
from embtables.datasets.shares import PAD_LABEL, Part, cat_batches, global_batches, share_of
from embtables.datasets.synthetic import synth_criteo
from embtables.datasets.synthetic_sequences import synth_sequences


@pytest.fixture(scope="module")
def criteo(tmp_path_factory: pytest.TempPathFactory) -> CriteoData:
    out = tmp_path_factory.mktemp("criteo")
    synth_criteo(out, rows=3000, seed=0, scale=0.002, part_rows=230)  # unequal units: 230-row parts, a short last
    return CriteoData(out)


@pytest.fixture(scope="module")
def sequences(tmp_path_factory: pytest.TempPathFactory) -> SequenceData:
    out = tmp_path_factory.mktemp("seq")
    synth_sequences(out, users=200, seed=0, items=400, clusters=20, max_history=8, part_rows=170)
    return SequenceData(out)


class Swap:
    """An all-gather among `world` threads: each hands in its object and gets everyone's, in rank order."""

    def __init__(self, world: int) -> None:
        self.slots: list = [None] * world
        self.barrier = threading.Barrier(world)

    def __call__(self, rank: int, mine):
        self.slots[rank] = mine
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out


def on_ranks(data, split: str, batch_size: int, world: int, **loader) -> list[list[Batch]]:
    """Per rank, the shares `data.batches(..., part=Part(rank, world))` yields, each rank in its own thread;
    also records which files and row groups each rank read."""
    swap = Swap(world)
    out: list[list[Batch]] = [[] for _ in range(world)]
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        try:
            part = Part(rank, world, exchange=lambda mine: swap(rank, mine))
            out[rank] = list(data.batches(split, batch_size, part=part, **loader))
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)
            swap.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def rows_of(batch: Batch) -> list[tuple]:
    """Each row as (label, dense..., each feature's ids...), to compare row sets."""
    kjt = batch.sparse
    F, B = len(kjt.keys()), batch.batch_size
    bags = [v.tolist() for v in kjt.values().split(kjt.lengths().view(F, B).sum(1).tolist())]
    lengths = kjt.lengths().view(F, B).tolist()
    per_row = [[] for _ in range(B)]
    for f in range(F):
        at = 0
        for b, n in enumerate(lengths[f]):
            per_row[b].append(tuple(bags[f][at : at + n]))
            at += n
    return [(float(batch.labels[b]), *batch.dense[b].tolist(), *per_row[b]) for b in range(B)]


def assert_same(a: Batch, b: Batch) -> None:
    assert torch.equal(a.labels, b.labels) and torch.equal(a.dense, b.dense)
    assert a.sparse.keys() == b.sparse.keys() and a.sparse.stride() == b.sparse.stride()
    assert torch.equal(a.sparse.values(), b.sparse.values()) and torch.equal(a.sparse.lengths(), b.sparse.lengths())


CASES = [("criteo", "train", dict(shuffle=True, seed=3, drop_last=True)), ("criteo", "val", {}),
         ("sequences", "train", dict(shuffle=True, seed=1, drop_last=True)), ("sequences", "test", {})]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("kind,split,loader", CASES)
def test_shares_side_by_side_are_the_global_batches(request, kind: str, split: str, loader: dict, world: int) -> None:
    data = request.getfixturevalue(kind)
    B = 24 * world
    ranks = on_ranks(data, split, B, world, **loader)
    reference = list(global_batches(data, split, B, world, **loader))
    assert len(reference) == data.num_batches(split, B, drop_last=loader.get("drop_last", False))
    assert all(len(r) == len(reference) for r in ranks)  # every rank runs every step
    for k, whole in enumerate(reference):
        assert_same(cat_batches([r[k] for r in ranks if r[k].batch_size]), whole)
    if not loader.get("drop_last"):  # every row of the split once, in some order
        everything = sorted(rows_of(cat_batches(reference)))
        assert everything == sorted(rows_of(cat_batches(list(data.batches(split, B)))))


@pytest.mark.parametrize("kind", ["criteo", "sequences"])
def test_each_rank_reads_only_its_row_groups(request, monkeypatch, kind: str) -> None:
    data = request.getfixturevalue(kind)
    data = type(data)(data.path)  # nothing cached: the sequence loader keeps what it read
    read: dict[int, list] = {}
    real = pq.ParquetFile.read_row_group

    def spy(self, i, *args, **kwargs):
        read.setdefault(threading.get_ident(), []).append((self.metadata.num_rows, i, id(self)))
        return real(self, i, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy)
    units = sum(pq.ParquetFile(p).num_row_groups for p in data.parts("train"))
    assert units >= 4  # the fixtures give several units, so the split is a real one
    on_ranks(data, "train", 48, 2, shuffle=True, seed=0)
    per_thread = sorted(len(v) for v in read.values())
    assert len(per_thread) == 2 and sum(per_thread) == units and per_thread[1] - per_thread[0] <= 1


def test_one_process_part_is_the_plain_loader(criteo: CriteoData, sequences: SequenceData) -> None:
    for data in (criteo, sequences):
        plain = list(data.batches("train", 50, shuffle=True, seed=2))
        for a, b in zip(plain, data.batches("train", 50, shuffle=True, seed=2, part=Part()), strict=True):
            assert_same(a, b)
        for a, b in zip(plain, global_batches(data, "train", 50, 1, shuffle=True, seed=2), strict=True):
            assert_same(a, b)


def test_padding_rows_are_labelled_and_short_shares_padded(criteo: CriteoData) -> None:
    rows = criteo.rows("val")
    ranks = on_ranks(criteo, "val", 64, 2, pad=True)
    for k in range(len(ranks[0])):
        assert ranks[0][k].batch_size == ranks[1][k].batch_size  # the same shapes on every rank
    labels = torch.cat([b.labels for r in ranks for b in r])
    assert int((labels != PAD_LABEL).sum()) == rows and set(labels.unique().tolist()) <= {PAD_LABEL, 0.0, 1.0}
    whole = next(criteo.batches("val", 5))
    share = share_of(whole, 1, 2, pad=True)  # rows 3, 4 and one pad row
    assert share.labels[:2].tolist() == whole.labels[3:].tolist() and share.labels[2] == PAD_LABEL
    assert share.dense[2].tolist() == whole.dense[0].tolist()


def test_refusals(criteo: CriteoData) -> None:
    with pytest.raises(ValueError, match="batch_size 25 must be a multiple of the 2 processes"):
        list(criteo.batches("train", 25, part=Part(0, 2, exchange=lambda m: [m, m])))
    with pytest.raises(ValueError, match="need an exchange"):
        Part(0, 2)
    with pytest.raises(ValueError, match=r"rank must lie in \[0, world=2\)"):
        Part(2, 2, exchange=lambda m: [m])
    # more ranks than row groups: some read nothing, and every row still arrives once
    ranks = on_ranks(criteo, "val", 8 * 16, 16)
    got = sorted(rows_of(cat_batches([b for r in ranks for b in r if b.batch_size])))
    assert got == sorted(rows_of(cat_batches(list(criteo.batches("val", 128)))))
    assert np.unique([len(r) for r in ranks]).size == 1


def test_loader_workers_inside_each_rank(criteo: CriteoData) -> None:
    """Worker w of rank r reads units r, r + N, ... split again by worker, with its own shuffle seed; the shares
    still make `global_batches`' batches with the same workers."""
    loader = dict(shuffle=True, seed=5, workers=2, buffer_rows=100)
    ranks = on_ranks(criteo, "train", 48, 2, **loader)
    reference = list(global_batches(criteo, "train", 48, 2, **loader))
    assert len(reference) == criteo.num_batches("train", 48) and all(len(r) == len(reference) for r in ranks)
    for k, whole in enumerate(reference):
        assert_same(cat_batches([r[k] for r in ranks if r[k].batch_size]), whole)
    assert sorted(rows_of(cat_batches(reference))) == sorted(rows_of(cat_batches(list(criteo.batches("train", 48)))))
