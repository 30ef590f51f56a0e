"""Checks every registered method gets, generated from the registry: a method added later is tested here
without editing this file. Each method must build from `budget=` alone with its default options, except a learned
one, which builds from the hand-made plan `method_options` gives for the budget."""

import subprocess
import sys

import pytest
import torch
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.stores import BACKENDS
from tests.conftest import copy_state, method_options, random_kjt

METHODS = et.list_methods()
TABLES = [
    et.TableConfig("big", 20000, 8, feature_names=("big_a", "big_b")),
    et.TableConfig("mid", 3000, 8, pooling="mean"),
    et.TableConfig("tiny", 3, 8),
    et.TableConfig("wide", 5000, 16),
]
SEQ_TABLES = [et.TableConfig("item", 20000, 8, feature_names=("hist", "target"), pooling="none")]


def budget_for(method: str, budget: float) -> float:
    return budget if et.get_method(method).compresses else 1.0


def build(method: str, budget: float = 0.1, tables=TABLES, **kw) -> et.Collection:
    torch.manual_seed(0)
    if method == "mixed_dim":  # one plan on every store: dims in FBGEMM's multiple
        kw.setdefault("dim_multiple", 4)
    b = budget_for(method, budget)
    return et.build_collection(tables, method, budget=b, **method_options(method, tables, b), **kw)


def test_registry_lists_the_foundation_methods():
    assert {"full", "hash"} <= set(METHODS)
    with pytest.raises(ValueError, match="already registered"):
        et.register_method("full")(type("Other", (), {}))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("budget", [0.5, 0.1, 0.02])
def test_memory_bytes_is_exact_and_within_budget(method, budget):
    ebc = build(method, budget)
    full = et.full_bytes(TABLES)
    b = budget_for(method, budget)
    assert ebc.memory_bytes() == ebc.plan.total_bytes
    assert ebc.memory_bytes() <= b * full
    assert ebc.memory_bytes() >= 0.9 * b * full


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_forward_shapes_empty_bags_and_pooling_semantics(method, backend):
    ebc = build(method, backend=backend)
    kjt = random_kjt(TABLES, batch_size=6, max_len=4, seed=1)
    with torch.no_grad():
        out = ebc(kjt)
    dims = ebc.output_dims
    assert out.keys() == list(dims) == [f for t in TABLES for f in t.feature_names]
    assert out.values().shape == (6, sum(dims.values()))
    assert not out.values().isnan().any()
    lengths = kjt.lengths().view(len(dims), 6)
    for f, (name, d) in enumerate(dims.items()):
        block = out[name]
        for b in range(6):
            if lengths[f, b] == 0:
                assert torch.equal(block[b], torch.zeros(d)), f"empty bag of {name} is not zero"


@pytest.mark.parametrize("method", METHODS)
def test_sum_pooling_is_the_sum_of_single_id_embeddings(method):
    """A bag's vector is the (weighted) sum of its ids' vectors; mean divides by the length."""
    tables = [et.TableConfig("s", 20000, 8), et.TableConfig("m", 20000, 8, pooling="mean")]
    ebc = build(method, tables=tables)
    ids = torch.tensor([5, 17, 17, 19999, 3, 250, 251])

    def run(values, lengths, weights=None, model=ebc):
        with torch.no_grad():
            return model(KeyedJaggedTensor(["s", "m"][: len(model.feature_names)], values, lengths=torch.tensor(lengths), weights=weights))

    single_s = run(ids, [1] * 7 + [0] * 7)["s"]  # (7, D): one id per bag
    single_m = run(ids[4:], [0] * 3 + [1] * 3)["m"]  # (3, D)
    bags = run(ids, [4, 0, 0, 3])  # s: bag 0 = ids[:4]; m: bag 1 = ids[4:]
    torch.testing.assert_close(bags["s"][0], single_s[:4].sum(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bags["m"][1], single_m.mean(0), rtol=1e-5, atol=1e-6)

    sum_only = build(method, tables=tables[:1])
    w = torch.tensor([0.5, 2.0, -1.0, 1.5])
    e = run(ids[:4], [1, 1, 1, 1], model=sum_only)["s"]
    weighted = run(ids[:4], [4], weights=w, model=sum_only)["s"]
    torch.testing.assert_close(weighted[0], (w[:, None] * e).sum(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", ["fbgemm", "fused", "torchrec"])
def test_backends_agree_in_forward_and_after_training(method, backend):
    opt = et.SparseOptimizer("rowwise_adagrad", lr=0.05)
    a, b = build(method, backend="torch", optimizer=opt), build(method, backend=backend, optimizer=opt)
    copy_state(a, b)
    outs = []
    for ebc in (a, b):
        sparse = ebc.sparse_optimizer()
        dense = torch.optim.SGD(list(ebc.method.parameters()), lr=0.05) if list(ebc.method.parameters()) else None
        for step in range(3):
            kjt = random_kjt(TABLES, batch_size=8, max_len=4, seed=10 + step, id_range=50)
            out = ebc(kjt).values()
            (out.sin().sum()).backward()
            for o in (sparse, dense):
                if o is not None:
                    o.step()
                    o.zero_grad()
        with torch.no_grad():
            outs.append(ebc(random_kjt(TABLES, batch_size=8, max_len=4, seed=99, id_range=50)).values())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_the_physical_tables(method):
    ebc = build(method)
    ebc(random_kjt(TABLES, batch_size=4, seed=2)).values().sum().backward()
    grads = [w.grad for w in ebc.store.weight]
    assert any(g is not None and g.coalesce().values().abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("method", METHODS)
def test_unpooled_rows_sum_to_the_pooled_bag(method):
    """The unpooled collection's per-id rows, summed per bag, equal the pooled collection's output."""
    pooled_tables = [et.TableConfig(t.name, t.num_embeddings, t.embedding_dim, t.feature_names, "sum") for t in SEQ_TABLES]
    seq, bag = build(method, tables=SEQ_TABLES), build(method, tables=pooled_tables)
    assert [t.num_embeddings for t in seq.plan.physical_tables] == [t.num_embeddings for t in bag.plan.physical_tables]
    copy_state(seq, bag)
    kjt = random_kjt(SEQ_TABLES, batch_size=5, max_len=4, seed=3)
    with torch.no_grad():
        rows, pooled = seq(kjt), bag(kjt)
    for f in ("hist", "target"):
        jt = rows[f]
        sums = torch.stack([v.sum(0) if v.numel() else torch.zeros(jt.values().shape[1]) for v in jt.to_dense()])
        torch.testing.assert_close(sums, pooled[f], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_bad_options_and_budgets(method):
    with pytest.raises(TypeError, match="unknown option"):
        et.plan(TABLES, method, budget=budget_for(method, 0.1), no_such_option=1,
                **method_options(method, TABLES, budget_for(method, 0.1)))
    options = method_options(method, TABLES, 1e-12)
    with pytest.raises(et.InfeasibleBudget) as e:
        et.plan(TABLES, method, budget=1e-12, **options)
    smallest = e.value.smallest_budget
    assert 1e-12 < smallest <= 1.0
    p = et.plan(TABLES, method, budget=min(1.0, smallest * (1 + 1e-9)), **options)
    assert p.total_bytes <= smallest * (1 + 1e-9) * et.full_bytes(TABLES)


@pytest.mark.parametrize("method", METHODS)
def test_bad_inputs(method):
    ebc = build(method)
    good = random_kjt(TABLES, batch_size=2, seed=0)
    with pytest.raises(TypeError, match="integers"):
        ebc(KeyedJaggedTensor(good.keys(), good.values().float(), lengths=good.lengths()))
    with pytest.raises(ValueError, match="missing"):
        ebc(KeyedJaggedTensor(["big_a"], torch.tensor([1]), lengths=torch.tensor([1, 0])))


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_model(method):
    kjt = random_kjt(TABLES, batch_size=3, seed=5)
    with torch.no_grad():
        a, b = build(method)(kjt).values(), build(method)(kjt).values()
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", [m for m in METHODS if et.get_method(m).compresses])
def test_never_allocates_the_logical_table(method):
    """40M logical rows x 16 (2.56 GB) at budget 0.001: building and one training step stay far below it."""
    code = f"""
import resource, torch, embtables as et
from tests.conftest import method_options, random_kjt
tables = [et.TableConfig(f"t{{i}}", 10_000_000, 16) for i in range(4)]
options = method_options({method!r}, tables, 0.001)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ebc = et.build_collection(tables, {method!r}, budget=0.001, backend="fbgemm", **options)
ebc(random_kjt(tables, batch_size=512, seed=0)).values().sum().backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert out.returncode == 0, out.stderr
    grown = int(out.stdout.split()[-1])
    assert grown < 200e6, f"{method} grew the process by {grown / 1e6:.0f} MB for a 2.56 GB logical size"
