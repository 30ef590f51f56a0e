"""Checkpoints move between stores: every method (and the options that give it state), pooled and unpooled, saved
on each backend and loaded on each backend, serves the same outputs, carries its optimizer state, and trains on
identically. Generated from the registry, so a method added later is covered here."""

from __future__ import annotations

import pytest
import torch
from torchrec import KeyedTensor

import embtables as et
from embtables.checkpoint import collection_state, load_collection_state, read_collection_file
from embtables.stores import BACKENDS as STORES
from tests.conftest import method_options, random_kjt

BACKENDS = sorted(STORES)  # every registered store
POOLED = [et.TableConfig("a", 3000, 8, feature_names=("a1", "a2")), et.TableConfig("b", 40, 8),
          et.TableConfig("c", 900, 16, pooling="mean")]
UNPOOLED = [et.TableConfig("item", 3000, 8, feature_names=("hist", "target"), pooling="none"),
            et.TableConfig("cat", 50, 8, pooling="none")]
# options that give a method more state than its defaults: a hot-id map and importance tables (padded to 4 columns,
# so that the plan also builds on fbgemm), frequency blocks with projections
STATEFUL = [("multihash", {"importance": True, "hot_rows": 6, "hash_all": True, "dim_multiple": 4}),
            ("mixed_dim", {"granularity": "block", "blocks": 3, "alpha": 0.5})]
CONFIGS = [(m, {}) for m in et.list_methods()] + STATEFUL


def counts_for(tables: list[et.TableConfig]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    out = {}
    for t in tables:
        for f in t.feature_names:  # frequency-ranked where a method needs it, with ties, so hot ids come mapped
            out[f] = torch.randint(0, 50, (t.num_embeddings,), generator=g).sort(descending=True).values
    return out


def build(method: str, options: dict, tables: list[et.TableConfig], backend: str) -> et.Collection:
    torch.manual_seed(0)
    budget = 0.3 if et.get_method(method).compresses else None
    if method == "multihash" and tables is UNPOOLED and not options:
        options = {"hash_all": True}
    if method == "mixed_dim":  # dims in multiples of 4, so the plan also builds on fbgemm (else refused, below)
        options = {**options, "dim_multiple": 4}
    if method == "multihash" and options.get("hot_rows"):
        counts = {f: c.flip(0) for f, c in counts_for(tables).items()}  # not ranked: the hot ids need a map
    else:
        counts = counts_for(tables)
    options = {**method_options(method, tables, budget), **options}
    return et.build_collection(tables, method, budget, backend=backend, counts=counts,
                               optimizer=et.SparseOptimizer("rowwise_adagrad", lr=0.1), **options)


def values(out: KeyedTensor | dict) -> torch.Tensor:
    """(B, sum D) pooled, or every feature's (N_f, D) rows one after the other."""
    return out.values() if isinstance(out, KeyedTensor) else torch.cat([jt.values() for jt in out.values()])


def train_step(c: et.Collection, seed: int, tables: list[et.TableConfig]) -> None:
    kjt = random_kjt(tables, batch_size=8, seed=seed)
    y = values(c(kjt))
    (y.pow(2).sum() + y.sum()).backward()  # the fbgemm and fused stores update their tables here
    sparse = c.sparse_optimizer()
    if sparse is not None:
        sparse.step()
        sparse.zero_grad()
    with torch.no_grad():
        for p in c.method.parameters():  # projections (mixed_dim): plain SGD, stateless
            p -= 0.05 * p.grad
            p.grad = None


def serve(c: et.Collection, tables: list[et.TableConfig]) -> torch.Tensor:
    with torch.no_grad():
        return values(c(random_kjt(tables, batch_size=16, seed=99)))


def same_state(a: et.Collection, b: et.Collection) -> None:
    for x, y in zip(a.store.optimizer_state(), b.store.optimizer_state()):
        torch.testing.assert_close(x, y)
    for (k, x), (_, y) in zip(sorted(a.method.state_dict().items()), sorted(b.method.state_dict().items())):
        torch.testing.assert_close(x, y, msg=k)


@pytest.mark.parametrize("method, options", CONFIGS, ids=[f"{m}{'-' + '-'.join(o) if o else ''}" for m, o in CONFIGS])
@pytest.mark.parametrize("pooled", [True, False], ids=["pooled", "unpooled"])
@pytest.mark.parametrize("source", BACKENDS)
def test_every_method_round_trips_between_every_pair_of_backends(method, options, pooled, source, tmp_path):
    tables = POOLED if pooled else UNPOOLED
    trained = build(method, options, tables, source)
    for seed in range(2):
        train_step(trained, seed, tables)
    path = tmp_path / "c.pt"
    et.save_collection(trained, path)
    expected = serve(trained, tables)
    train_step(trained, 2, tables)
    continued = serve(trained, tables)
    for backend in BACKENDS:
        loaded = et.load_collection(path, backend=backend)
        assert loaded.store.name == backend and loaded.memory_bytes() == trained.memory_bytes()
        torch.testing.assert_close(serve(loaded, tables), expected)
        train_step(loaded, 2, tables)  # the same step: needs the optimizer state to land where it was
        torch.testing.assert_close(serve(loaded, tables), continued, rtol=1e-4, atol=1e-5)
        same_state(loaded, trained)


def test_the_optimizer_restores_only_when_it_is_the_saved_one(tmp_path):
    c = build("hash", {}, POOLED, "fused")
    train_step(c, 0, POOLED)
    et.save_collection(c, tmp_path / "c.pt")
    accumulators = c.store.optimizer_state()
    assert any(bool(s.any()) for s in accumulators)
    faster = et.load_collection(tmp_path / "c.pt", "fbgemm", optimizer=et.SparseOptimizer("rowwise_adagrad", lr=1.0))
    assert faster.store.optimizer.lr == 1.0
    for x, y in zip(faster.store.optimizer_state(), accumulators):
        torch.testing.assert_close(x, y)
    other = et.load_collection(tmp_path / "c.pt", "torch", optimizer=et.SparseOptimizer("adagrad", lr=0.1))
    assert all(not s.any() for s in other.store.optimizer_state())  # (rows, dim) Adagrad state, fresh
    et.save_collection(c, tmp_path / "serve.pt", optimizer_state=False)
    assert read_collection_file(tmp_path / "serve.pt")["optimizer_state"] == {}
    fresh = et.load_collection(tmp_path / "serve.pt", "fused")
    assert all(not s.any() for s in fresh.store.optimizer_state())
    torch.testing.assert_close(serve(fresh, POOLED), serve(c, POOLED))


def test_a_checkpoint_of_another_plan_or_file_is_refused(tmp_path):
    small = build("hash", {}, POOLED, "torch")
    other = et.build_collection(POOLED, "hash", 0.2)
    with pytest.raises(ValueError, match="run-7: its plan differs from this collection's in 'budget'"):
        load_collection_state(other, collection_state(small), "run-7")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable embtables collection file"):
        et.load_collection(tmp_path / "junk.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not an embtables collection file"):
        et.load_collection(tmp_path / "other.pt")


def test_a_plan_solved_for_one_store_is_laid_out_for_another(tmp_path):
    # unified stacks the chunks of a shared table into one lookup on torch and fbgemm, one lookup per chunk on
    # fused: the same physical tables and bytes, read differently
    c = build("unified", {}, POOLED, "fbgemm")
    et.save_collection(c, tmp_path / "u.pt")
    fused = et.load_collection(tmp_path / "u.pt", "fused")
    assert fused.plan.physical_tables == c.plan.physical_tables and fused.plan.lookups != c.plan.lookups
    torch.testing.assert_close(serve(fused, POOLED), serve(c, POOLED))


def test_a_plan_the_store_cannot_hold_is_refused_naming_the_file(tmp_path):
    # fused allows any dim: qr's concat splits 16 columns over three partitions as 6, 5, 5; FBGEMM needs multiples of 4
    c = et.build_collection([et.TableConfig("t", 5000, 16)], "qr", 0.3, backend="fused", operation="concat",
                            partitions=3)
    assert [t.embedding_dim for t in c.plan.physical_tables] == [6, 5, 5]
    et.save_collection(c, tmp_path / "qr.pt")
    with pytest.raises(ValueError, match="qr.pt: cannot be built on backend 'fbgemm': .*'t/p0' has dim 6, which is not "
                                         "a multiple of 4"):
        et.load_collection(tmp_path / "qr.pt", "fbgemm")
    torch.testing.assert_close(serve(et.load_collection(tmp_path / "qr.pt", "torch"), c.tables), serve(c, c.tables))


def test_a_plan_the_target_store_cannot_hold_is_refused_naming_table_and_dim(tmp_path):
    trained = et.build_collection(POOLED, "mixed_dim", 0.3, backend="torch", counts=counts_for(POOLED))
    dims = {d for p in trained.plan.params for d in p.dims}
    assert any(d % 4 for d in dims)  # the torch store's own multiple is 1
    et.save_collection(trained, tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"c\.pt: cannot be built on backend 'fbgemm'.* has dim \d+, which is not a multiple of 4"):
        et.load_collection(tmp_path / "c.pt", backend="fbgemm")
