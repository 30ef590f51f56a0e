"""What serving raw ids costs: `Plan.index_bytes` (the vocabulary a method needs when it reads tables by rank) and
`raw_ids=True` (those tables' ids hashed into [0, N) instead), for every registered method."""

from __future__ import annotations

import pytest
import torch
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.config import KEY_BYTES
from embtables.hashing import derive_seed, hash_key, hash_to_range
from embtables.plan import VOCAB_BYTES_PER_ID
from embtables.raw_ids import _SEED
from embtables.tablesets import criteo_kaggle_tables
from tests.conftest import method_options

TABLES = [et.TableConfig("a", 1000, 8, feature_names=("a1", "a2")), et.TableConfig("b", 20, 8)]
METHODS = et.list_methods()


def budget_of(method: str) -> float | None:
    return 0.5 if et.get_method(method).compresses else None


@pytest.mark.parametrize("method", METHODS)
def test_index_bytes_are_the_vocabulary_of_the_tables_read_by_rank(method):
    tables, budget = criteo_kaggle_tables(16), None if method == "full" else 0.01
    p = et.plan(tables, method, budget, **method_options(method, tables, budget))
    ranked = et.get_method(method).reads_by_rank(p)
    assert p.index_bytes == VOCAB_BYTES_PER_ID * sum(t.num_embeddings for t, r in zip(p.tables, ranked) if r)
    want = {"full": 540_201_232, "qr": 540_201_232, "mixed_dim": 540_201_232, "unified": 0}
    if method in want:  # 16 bytes per row of Criteo Kaggle's 33.8M: 25x the whole budget at 0.01
        assert p.index_bytes == want[method]
    assert f"vocabulary to serve raw ids: {p.index_bytes:,} bytes" in p.summary()


@pytest.mark.parametrize("method", METHODS)
def test_raw_ids_take_any_int64_id_within_the_budget(method):
    c = et.build_collection(TABLES, method, budget_of(method), raw_ids=True,
                            **method_options(method, TABLES, budget_of(method), raw_ids=True))
    p = c.plan
    assert p.index_bytes == 0 and c.memory_bytes() == p.total_bytes
    ranked = et.get_method(method).reads_by_rank(p)
    assert p.raw_tables == tuple(t for t, r in enumerate(ranked) if r)
    if p.budget is not None:
        assert p.total_bytes <= p.budget * et.full_bytes(TABLES)
    ids = torch.tensor([2**62, -7, 10**12, 3, 999_999, -(2**63), 5])
    kjt = KeyedJaggedTensor(["a1", "a2", "b"], ids, lengths=torch.tensor([2, 1, 1, 0, 2, 1]))
    with torch.no_grad():
        assert c(kjt).values().isfinite().all()
    if any(ranked):
        plain = method_options(method, TABLES, budget_of(method))
        with pytest.raises(ValueError, match="is outside"):  # without raw_ids such ids are refused
            et.build_collection(TABLES, method, budget_of(method), **plain)(kjt)


def test_raw_ids_hash_into_the_rows_of_each_table_read_by_rank():
    """full with raw ids is the full table read at hash_to_range(x, key_t, N_t), one key per table."""
    raw = et.build_collection(TABLES, "full", raw_ids=True)
    plain = et.build_collection(TABLES, "full")
    with torch.no_grad():
        for a, b in zip(raw.store.weights(), plain.store.weights()):
            b.copy_(a)
    assert raw.memory_bytes() == et.full_bytes(TABLES) + KEY_BYTES * 2
    ids = torch.tensor([2**40, -5, 77, 123_456_789])
    lengths = torch.tensor([1, 1, 1, 0, 0, 1])  # a1: 2 bags, a2: 2 bags, b: 2 bags (B = 2)
    keys = [hash_key(derive_seed(_SEED, t)) for t in (0, 0, 0, 1)]
    rows = [1000, 1000, 1000, 20]
    hashed = torch.stack([hash_to_range(ids[i : i + 1], k, n)[0] for i, (k, n) in enumerate(zip(keys, rows))])
    with torch.no_grad():
        got = raw(KeyedJaggedTensor(["a1", "a2", "b"], ids, lengths=lengths)).values()
        want = plain(KeyedJaggedTensor(["a1", "a2", "b"], hashed, lengths=lengths)).values()
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("method", ["qr", "hash"])
def test_raw_ids_survive_a_checkpoint(method, tmp_path):
    c = et.build_collection(TABLES, method, 0.5, raw_ids=True)
    et.save_collection(c, tmp_path / "c.pt")
    loaded = et.load_collection(tmp_path / "c.pt", "fused")
    assert loaded.plan.raw_tables == c.plan.raw_tables and loaded.memory_bytes() == c.memory_bytes()
    kjt = KeyedJaggedTensor(["a1", "a2", "b"], torch.tensor([10**15, -3, 4]), lengths=torch.tensor([1, 1, 0, 1, 0, 0]))
    with torch.no_grad():
        torch.testing.assert_close(loaded(kjt).values(), c(kjt).values())


def test_raw_ids_must_be_a_bool():
    with pytest.raises(ValueError, match="raw_ids must be a bool"):
        et.plan(TABLES, "hash", 0.5, raw_ids="yes")


def test_layouts_by_frequency_rank_refuse_raw_ids():
    tables = [et.TableConfig("C1", 10_000, 16), et.TableConfig("C2", 50, 16)]
    counts = {"C1": torch.arange(10_000, 0, -1), "C2": torch.arange(50, 0, -1)}
    with pytest.raises(ValueError, match=r"mixed_dim with raw_ids=True: tables \['C1'\] are laid out by frequency"):
        et.plan(tables, "mixed_dim", 0.1, counts=counts, raw_ids=True, granularity="block")
    assert et.plan(tables, "mixed_dim", 0.1, counts=counts, raw_ids=True).raw_tables == (0, 1)  # one block each


def test_hot_rows_refuse_raw_ids():
    tables = [et.TableConfig("C1", 10_000, 16)]
    counts = {"C1": torch.arange(10_000, 0, -1)}
    with pytest.raises(ValueError, match=r"multihash with raw_ids=True: tables \['C1'\] are laid out by frequency"):
        et.plan(tables, "multihash", 0.1, counts=counts, raw_ids=True, hot_rows=100)
    assert et.plan(tables, "multihash", 0.1, counts=counts, raw_ids=True).raw_tables == ()  # C1 is hashed
