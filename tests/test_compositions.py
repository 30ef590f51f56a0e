"""benchmarks/compositions.py: the plain-PyTorch compositions match the library's plan bytes and outputs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.tablesets import criteo_kaggle_tables
from tests.conftest import random_kjt

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "compositions.py"
_spec = importlib.util.spec_from_file_location("compositions", _PATH)
comp = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
sys.modules["compositions"] = comp
_spec.loader.exec_module(comp)  # type: ignore[union-attr]

METHODS = sorted(comp.COMPOSITIONS)
CRITEO = criteo_kaggle_tables(16, scale=0.001)
# two features share table "a"; "b" is narrower, so unified has width 8 and two chunks for a's features
MIXED = [
    et.TableConfig("a", 5000, 16, feature_names=("a1", "a2")),
    et.TableConfig("b", 3000, 8),
    et.TableConfig("c", 100, 8),
]
# (tables, budget): Criteo at 0.1 hashes the big tables, gives qr two digits and mixed_dim projections + hashing
CASES = [(CRITEO, 0.1), (MIXED, 0.05)]
QR_THREE_DIGITS = (criteo_kaggle_tables(16, scale=0.01), 0.01)


def _library(tables: list[et.TableConfig], method: str, budget: float, **options: object) -> et.Collection:
    torch.manual_seed(0)
    if method == "mixed_dim":  # the compositions are sized by fbgemm's plans: dims in its multiple, 4
        options.setdefault("dim_multiple", 4)
    return et.build_collection(tables, method, budget, backend="torch", **options)


def _merged(names: list[str], weights: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Physical tables by name, the column blocks "name#c" of one partition (library's qr layout) joined."""
    out: dict[str, list[torch.Tensor]] = {}
    for name, w in zip(names, weights):
        out.setdefault(name.split("#")[0], []).append(w)
    return {name: torch.cat(ws, 1) for name, ws in out.items()}


def _copy_library_state(src: et.Collection, dst: "comp.Composition") -> None:
    """Give the composition the library's weights: physical tables by name, mixed_dim projections by table."""
    with torch.no_grad():
        for name, w in _merged([t.name for t in src.plan.physical_tables], src.store.weights()).items():
            dst.bags[name].weight.copy_(w)
        if src.plan.method == "mixed_dim":
            block = 0
            for t, p in zip(src.plan.tables, src.plan.params):
                for _ in p.dims:
                    P = src.method.projection(block)
                    if P is not None:
                        dst.projections[t.name].weight.copy_(P)
                    block += 1


def _unit_bags(tables: list[et.TableConfig], batch: int, seed: int) -> KeyedJaggedTensor:
    """Bags of zero or one id (Criteo's layout), where pool-then-compose equals compose-then-pool."""
    return random_kjt(tables, batch, max_len=1, seed=seed)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_sizes_match_the_plan(method: str, case: int) -> None:
    tables, budget = CASES[case]
    plan = et.plan(tables, method, budget, backend="fbgemm")
    c = comp.build(tables, method, budget)
    assert c.embedding_bytes() == plan.weight_bytes
    shapes = {name: tuple(b.weight.shape) for name, b in c.bags.items()}
    planned = [torch.empty(t.num_embeddings, t.embedding_dim, device="meta") for t in plan.physical_tables]
    assert shapes == {n: tuple(w.shape) for n, w in _merged([t.name for t in plan.physical_tables], planned).items()}
    projection_bytes = c.parameter_bytes() - c.embedding_bytes()
    if method == "mixed_dim":
        # the plan's extra bytes are the projections (D x d_t fp32) plus one 8-byte key per hashed table
        keys = 8 * sum(r < n for p in plan.params for n, r in zip(p.block_ids, p.rows))
        assert projection_bytes == plan.extra_bytes - keys > 0
    else:
        assert projection_bytes == 0
    ebc = _library(tables, method, budget)
    kjt = random_kjt(tables, 5, seed=1)
    assert c.output_dims == list(ebc.output_dims.values())
    assert c(kjt).shape == ebc(kjt).values().shape


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_library_hashing_reproduces_the_library(method: str, case: int) -> None:
    tables, budget = CASES[case]
    ebc = _library(tables, method, budget)
    c = comp.build(tables, method, budget, hashing="library")
    _copy_library_state(ebc, c)
    kjt = _unit_bags(tables, 64, seed=2)
    torch.testing.assert_close(c(kjt), ebc(kjt).values(), rtol=1e-5, atol=1e-6)


def test_qr_three_digits_reproduces_the_library() -> None:
    tables, budget = QR_THREE_DIGITS
    ebc = _library(tables, "qr", budget)
    assert max(len(p.radices) for p in ebc.plan.params) == 3
    c = comp.build(tables, "qr", budget)
    _copy_library_state(ebc, c)
    kjt = _unit_bags(tables, 64, seed=3)
    torch.testing.assert_close(c(kjt), ebc(kjt).values(), rtol=1e-5, atol=1e-6)


def test_qr_pools_each_partition_first() -> None:
    """On ragged bags the composition is the library's pool_first order (the DLRM reference), not its default."""
    tables, budget = CASES[1]
    pool_first = _library(tables, "qr", budget, pooling_order="pool_first")
    combine_first = _library(tables, "qr", budget)
    c = comp.build(tables, "qr", budget)
    _copy_library_state(pool_first, c)
    kjt = random_kjt(tables, 32, max_len=4, seed=4)
    torch.testing.assert_close(c(kjt), pool_first(kjt).values(), rtol=1e-5, atol=1e-6)
    _copy_library_state(combine_first, c)
    assert not torch.allclose(c(kjt), combine_first(kjt).values(), rtol=1e-3, atol=1e-5)


def _single_ids(tables: list[et.TableConfig], batch: int) -> tuple[KeyedJaggedTensor, list[torch.Tensor]]:
    """One id per bag for every feature, ids spread over each table's range (high ones included)."""
    g = torch.Generator().manual_seed(5)
    names = [f for t in tables for f in t.feature_names]
    ids = [torch.randint(0, t.num_embeddings, (batch,), generator=g) for t in tables for _ in t.feature_names]
    kjt = KeyedJaggedTensor(names, torch.cat(ids), lengths=torch.ones(len(names) * batch, dtype=torch.long))
    return kjt, ids


@pytest.mark.parametrize("method", ["hash", "multihash", "mixed_dim", "unified"])
def test_mod_hashing_formulas(method: str) -> None:
    tables, budget = CASES[0]
    c = comp.build(tables, method, budget)
    plan = c.plan
    kjt, ids = _single_ids(tables, 16)
    out = c(kjt).split(c.output_dims, 1)
    W = {name: b.weight.detach() for name, b in c.bags.items()}
    cumulative = 0
    for f, (t, p, x) in enumerate(zip(plan.tables, plan.params, ids)):
        if method == "hash":
            want = W[plan.physical_tables[f].name][x % p.rows if p.hashed else x]
        elif method == "multihash":
            w = W[plan.physical_tables[f].name]
            want = w[x % p.rows] + w[x % (p.rows - 1)] if p.compressed else w[x]
        elif method == "mixed_dim":
            rows = W[t.name][x % p.rows[0] if p.rows[0] < p.block_ids[0] else x]
            want = rows @ c.projections[t.name].weight.detach().t() if t.name in c.projections else rows
        else:  # the feature's chunks, each salted by its lookup's offset (the tables laid end to end per lookup)
            parts = []
            for _ in range(p.chunks[0]):
                parts.append(W["unified/0"][(x + cumulative) % p.shared_rows])
                cumulative += t.num_embeddings
            want = torch.cat(parts, 1)
        torch.testing.assert_close(out[f], want, rtol=1e-5, atol=1e-6)
    assert method != "hash" or any(p.hashed for p in plan.params)


def _touched_rows(ebc: et.Collection, kjt: KeyedJaggedTensor) -> dict[str, set[int]]:
    """Physical table name -> the rows the library's remap reads for this batch."""
    from embtables.inputs import bags_from_kjt

    physical = ebc.method.remap(bags_from_kjt(kjt, ebc.feature_names, "test")).physical
    touched: dict[str, set[int]] = {t.name: set() for t in ebc.plan.physical_tables}
    for lk, v in zip(ebc.plan.lookups, physical.values.split(physical.ids_per_feature)):
        touched[ebc.plan.physical_tables[lk.table].name] |= set(v.tolist())
    return touched


@pytest.mark.parametrize("method", METHODS)
def test_step_updates_exactly_the_touched_rows(method: str) -> None:
    tables, budget = CASES[0]
    make = comp.composition(method, budget, hashing="library")
    setup = type("Setup", (), {"tables": tables, "batch_size": 32, "lr": 0.1})()
    step = make(setup)
    c = step.module
    assert step.memory_bytes == c.parameter_bytes()
    kjt = random_kjt(tables, 32, max_len=1, seed=6)
    touched = _touched_rows(_library(tables, method, budget), kjt)
    before = {name: b.weight.detach().clone() for name, b in c.bags.items()}
    projections = {name: lin.weight.detach().clone() for name, lin in getattr(c, "projections", {}).items()}
    step(kjt)
    assert all(p.grad is None for p in c.parameters())  # zero_grad ran
    for name, b in c.bags.items():
        changed = (b.weight.detach() != before[name]).any(1).nonzero().flatten().tolist()
        assert set(changed) == touched[name], name
    assert any(touched.values())
    assert (method == "mixed_dim") == bool(projections)
    for name, w in projections.items():
        assert not torch.equal(c.projections[name].weight.detach(), w), name


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="no composition for method 'full'"):
        comp.composition("full", 0.1)
    with pytest.raises(ValueError, match="hashing"):
        comp.composition("hash", 0.1, hashing="xor")
    with pytest.raises(ValueError, match="table 'm' has pooling='mean'"):
        comp.build([et.TableConfig("m", 1000, 16, pooling="mean")], "hash", 0.1)
    c = comp.build(CRITEO, "hash", 0.1)
    with pytest.raises(ValueError, match=r"lacks features \['C26'\]"):
        ones = torch.ones(25, dtype=torch.long)
        c(KeyedJaggedTensor([f"C{i}" for i in range(1, 26)], ones - 1, lengths=ones))
    kjt = random_kjt(CRITEO, 2, weighted=True)
    with pytest.raises(ValueError, match="per-id weights"):
        c(kjt)
    with pytest.raises(ValueError, match="composes 'hash', got a plan of 'qr'"):
        comp.HashComposition(et.plan(CRITEO, "qr", 0.1, backend="fbgemm"))
