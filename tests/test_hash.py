"""`hash`: exact bytes, budget solver bounds, collision-free equivalence with a full table, id semantics."""

import pytest
import torch
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.hashing import derive_seed, hash_key, hash_to_range
from tests.conftest import random_kjt

from embtables.tablesets import CRITEO_KAGGLE_ROWS as CRITEO


def criteo_tables(dim: int = 16) -> list[et.TableConfig]:
    return [et.TableConfig(f"C{i + 1}", n, dim) for i, n in enumerate(CRITEO)]


def formula_bytes(tables, rows) -> int:
    """4 * rows * D per table, plus one 8-byte key per hashed table (rows < N)."""
    return sum(4 * r * t.embedding_dim + 8 * (r < t.num_embeddings) for t, r in zip(tables, rows))


@pytest.mark.parametrize("allocation", ["cap", "proportional"])
@pytest.mark.parametrize("budget", [0.5, 0.1, 0.01, 0.001, 0.0001])
def test_budget_is_met_within_ten_percent_and_bytes_match_formula(allocation, budget):
    tables = criteo_tables()
    p = et.plan(tables, "hash", budget=budget, allocation=allocation)
    rows = [t.num_embeddings for t in p.physical_tables]
    assert p.total_bytes == formula_bytes(tables, rows)
    full = et.full_bytes(tables)
    assert 0.9 * budget * full <= p.total_bytes <= budget * full
    if allocation == "cap":
        cap = max(rows)
        assert rows == [min(n, cap) for n in CRITEO]


@pytest.mark.parametrize("budget", [0.3, 0.05])
def test_memory_bytes_of_built_collection_matches_plan_and_formula(budget):
    tables = [et.TableConfig("a", 20000, 8), et.TableConfig("b", 300, 16), et.TableConfig("c", 7, 4)]
    ebc = et.build_collection(tables, "hash", budget=budget)
    rows = [w.shape[0] for w in ebc.store.weights()]
    assert ebc.memory_bytes() == ebc.plan.total_bytes == formula_bytes(tables, rows)


def test_full_bytes_formula():
    assert et.full_bytes(criteo_tables()) == sum(CRITEO) * 16 * 4 == 2_160_804_928  # 33.76M rows: the "2.16 GB" of the README


def test_infeasible_budget_reports_smallest_and_smallest_builds():
    tables = criteo_tables()
    with pytest.raises(et.InfeasibleBudget) as e:
        et.plan(tables, "hash", budget=1e-9)
    smallest = e.value.smallest_budget
    assert smallest == pytest.approx((26 * 16 * 4 + 8 * 26) / et.full_bytes(tables))
    p = et.plan(tables, "hash", budget=smallest * (1 + 1e-9))
    assert all(t.num_embeddings == 1 for t in p.physical_tables)


def test_collision_free_hash_matches_full_table_on_hashed_rows():
    n, d = 50, 8
    table = et.TableConfig("t", n, d, pooling="sum")
    hashed = et.build_collection([table], "hash", buckets=1 << 20, hash_all=True)
    full = et.build_collection([table], "full")
    rows = hash_to_range(torch.arange(n), hash_key(derive_seed(0, 0)), 1 << 20)
    assert rows.unique().numel() == n  # no collision among these ids
    with torch.no_grad():
        hashed.store.weights()[0][rows] = full.store.weights()[0]
    kjt = random_kjt([table], batch_size=7, max_len=5, seed=4, weighted=True)
    with torch.no_grad():
        torch.testing.assert_close(hashed(kjt).values(), full(kjt).values())


def test_hashed_tables_accept_any_int64_and_small_tables_are_direct():
    tables = [et.TableConfig("big", 10**9, 4), et.TableConfig("small", 10, 4)]
    ebc = et.build_collection(tables, "hash", buckets=100)
    assert [p.hashed for p in ebc.plan.params] == [True, False]
    ids = torch.tensor([-(2**63), 2**63 - 1, -1, 3])
    kjt = KeyedJaggedTensor(["big", "small"], ids, lengths=torch.tensor([1, 2, 1, 0]))
    with torch.no_grad():
        out = ebc(kjt).values()
    w_small = ebc.store.weights()[1]
    torch.testing.assert_close(out[0, 4:], w_small[3])
    with pytest.raises(ValueError, match="id 10 of feature 'small'"):
        ebc(KeyedJaggedTensor(["big", "small"], torch.tensor([5, 10]), lengths=torch.tensor([1, 1])))


def test_hash_option_errors():
    tables = [et.TableConfig("a", 100, 4)]
    with pytest.raises(ValueError, match="exactly one of budget= or buckets="):
        et.plan(tables, "hash")
    with pytest.raises(ValueError, match="exactly one of budget= or buckets="):
        et.plan(tables, "hash", budget=0.5, buckets=3)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['bucket'\]"):
        et.plan(tables, "hash", bucket=3)
    with pytest.raises(ValueError, match="allocation"):
        et.plan(tables, "hash", budget=0.5, allocation="greedy")
    with pytest.raises(ValueError, match="buckets"):
        et.plan(tables, "hash", buckets=0)


def test_seed_changes_the_mapping():
    table = et.TableConfig("t", 10**6, 4)
    a = et.build_collection([table], "hash", buckets=1000, seed=0)
    b = et.build_collection([table], "hash", buckets=1000, seed=1)
    assert not torch.equal(a.method.keys, b.method.keys)
