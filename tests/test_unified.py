"""`unified`: reduction to a full table, the multi-probe formula against a per-id oracle, round-robin tables,
both backends, pooling semantics, exact bytes, the budget solver's bounds, bad options."""

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.hashing import derive_seed, hash_key, hash_to_range
from tests.conftest import copy_state, random_kjt
from tests.test_hash import CRITEO, criteo_tables

INT64 = st.integers(-(2**63), 2**63 - 1)
TABLES = [
    et.TableConfig("a", 5000, 16, feature_names=("a1", "a2")),
    et.TableConfig("b", 300, 8, pooling="mean"),
    et.TableConfig("c", 3, 8),
]
FEATURES = ["a1", "a2", "b", "c"]


def oracle(ebc: et.Collection, feature: int, x: int, seed: int = 0) -> torch.Tensor:
    """e_f(x) = [E_{g mod T}[h_{f,j}(x)]]_j from the docstring, with the keys derived from the seed here."""
    T, M = len(ebc.plan.physical_tables), ebc.plan.physical_tables[0].num_embeddings
    chunks = [c for p in ebc.plan.params for c in p.chunks]
    g = sum(chunks[:feature])
    parts = []
    for j in range(chunks[feature]):
        row = int(hash_to_range(torch.tensor([x]), hash_key(derive_seed(seed, feature, j)), M))
        parts.append(ebc.store.weights()[(g + j) % T][row])
    return torch.cat(parts)


def test_one_feature_one_chunk_without_collision_is_a_full_table():
    n, d = 60, 8
    for pooling in ("sum", "none"):
        table = et.TableConfig("t", n, d, pooling=pooling)
        uni = et.build_collection([table], "unified", rows=1 << 20, probes=1)
        full = et.build_collection([table], "full")
        assert uni.plan.params[0].chunks == (1,) and uni.plan.physical_tables[0].embedding_dim == d
        rows = hash_to_range(torch.arange(n), uni.method.keys[0], 1 << 20)
        assert rows.unique().numel() == n  # no collision among these ids
        with torch.no_grad():
            uni.store.weights()[0][rows] = full.store.weights()[0]
        kjt = random_kjt([table], batch_size=7, max_len=5, seed=4, weighted=pooling == "sum")
        with torch.no_grad():
            a, b = uni(kjt), full(kjt)
        if pooling == "sum":
            torch.testing.assert_close(a.values(), b.values())
        else:
            torch.testing.assert_close(a["t"].values(), b["t"].values())


@pytest.mark.parametrize("num_tables", [1, 3])
def test_chunks_are_hashed_per_feature_and_chunk_and_dealt_round_robin(num_tables):
    ebc = et.build_collection(TABLES, "unified", rows=997, num_tables=num_tables, chunks={"b": 3}, seed=5, probes=1)
    assert [p.chunks for p in ebc.plan.params] == [(2, 2), (3,), (1,)]  # default D / gcd(16, 8)
    assert ebc.output_dims == {"a1": 16, "a2": 16, "b": 24, "c": 8}
    # pooled: one lookup per shared table, reading the chunks dealt to it stacked one after another
    assert [(lk.name, lk.table) for lk in ebc.plan.lookups] == [(f"unified/{s}", s) for s in range(num_tables)]
    ids = [0, 1, 4999, -3, 2**62]
    kjt = KeyedJaggedTensor(FEATURES, torch.tensor(ids * 4), lengths=torch.tensor([1] * 20))
    with torch.no_grad():
        out = ebc(kjt)
    for f, name in enumerate(FEATURES):
        torch.testing.assert_close(out[name], torch.stack([oracle(ebc, f, x, seed=5) for x in ids]))
    # the same id in two features of one table reads different rows (the hash is salted by the feature)
    assert not torch.equal(out["a1"], out["a2"])


def test_unpooled_rows_are_the_concatenated_chunks():
    seq = [et.TableConfig("s", 10**6, 8, feature_names=("hist", "target"), pooling="none"), et.TableConfig("u", 50, 8, pooling="none")]
    ebc = et.build_collection(seq, "unified", rows=4000, width=4, num_tables=2)
    assert ebc.output_dims == {"hist": 8, "target": 8, "u": 8}
    # one per-id lookup per (feature, chunk): chunk g reads table g mod 2, each table's lookups contiguous
    names = ["hist/c0", "target/c0", "u/c0", "hist/c1", "target/c1", "u/c1"]
    assert [(lk.name, lk.table) for lk in ebc.plan.lookups] == [(n, i // 3) for i, n in enumerate(names)]
    kjt = random_kjt(seq, batch_size=4, max_len=3, seed=2)
    with torch.no_grad():
        out = ebc(kjt)
    for f, name in enumerate(["hist", "target", "u"]):
        want = torch.stack([oracle(ebc, f, x) for x in kjt[name].values().tolist()])
        torch.testing.assert_close(out[name].values(), want)
        assert torch.equal(out[name].lengths(), kjt[name].lengths())


def test_several_shared_tables_train_with_rowwise_adagrad_on_both_backends():
    opt = et.SparseOptimizer("rowwise_adagrad", lr=0.1)
    kw = dict(budget=0.05, num_tables=3, chunks={"b": 2})
    a, b = (et.build_collection(TABLES, "unified", backend=be, optimizer=opt, **kw) for be in ("torch", "fbgemm"))
    copy_state(a, b)
    sparse = a.sparse_optimizer()
    for step in range(3):
        kjt = random_kjt(TABLES, batch_size=8, max_len=5, seed=step, id_range=30)
        for ebc in (a, b):
            ebc(kjt).values().sin().sum().backward()
        sparse.step()
        sparse.zero_grad()
    for wa, wb in zip(a.store.weights(), b.store.weights()):
        torch.testing.assert_close(wa, wb, rtol=1e-5, atol=1e-6)


def test_backends_agree_in_forward_backward_and_training():
    opt = et.SparseOptimizer("sgd", lr=1.0)
    kw = dict(budget=0.05, num_tables=2, chunks={"b": 2})
    a, b = (et.build_collection(TABLES, "unified", backend=be, optimizer=opt, **kw) for be in ("torch", "fbgemm"))
    copy_state(a, b)
    before = [w.clone() for w in b.store.weights()]
    kjt = random_kjt(TABLES, batch_size=8, max_len=5, seed=3, id_range=30)
    for ebc in (a, b):
        out = ebc(kjt).values()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    for w_a, w0, w1 in zip(a.store.weight, before, b.store.weights()):
        grad = w_a.grad.to_dense()
        assert grad.abs().sum() > 0
        torch.testing.assert_close(w0 - w1, grad, rtol=1e-5, atol=1e-5)  # SGD lr 1 inside backward: delta = gradient
    a.sparse_optimizer().step()
    with torch.no_grad():
        torch.testing.assert_close(a(kjt).values(), b(kjt).values(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "options, T, w, C",
    [({"probes": 1}, 1, 8, 6), ({}, 1, 4, 12), ({"num_tables": 4, "probes": 1}, 4, 8, 6), ({"width": 4}, 1, 4, 12),
     ({"chunks": {"c": 5}, "num_tables": 2, "probes": 1}, 2, 8, 10)],
)
def test_memory_bytes_match_the_formula(options, T, w, C):
    ebc = et.build_collection(TABLES, "unified", rows=321, **options)
    assert ebc.memory_bytes() == ebc.plan.total_bytes == 4 * T * 321 * w + 8 * C
    assert sum(p.bytes for p in ebc.plan.params) <= ebc.plan.total_bytes  # floored shares


@pytest.mark.parametrize(
    "options",
    [{}, {"num_tables": 3}, {"width": 4}, {"chunks": {"C3": 8, "C12": 8, "C1": 1}, "num_tables": 2}],
    ids=str,
)
@pytest.mark.parametrize("budget", [0.5, 0.1, 0.01, 0.001, 0.0001])
def test_budget_solver_hits_its_bounds_on_criteo(options, budget):
    tables = criteo_tables()
    p = et.plan(tables, "unified", budget=budget, backend="fbgemm", **options)
    full = et.full_bytes(tables)
    assert 0.9 * budget * full <= p.total_bytes <= budget * full
    T, M, w = len(p.physical_tables), p.physical_tables[0].num_embeddings, p.physical_tables[0].embedding_dim
    C = sum(sum(q.chunks) for q in p.params)
    assert p.total_bytes == 4 * T * M * w + 8 * C
    # one more row in every shared table would not fit
    assert 4 * T * (M + 1) * w + 8 * C > budget * full
    assert len(CRITEO) == len(p.params)


def test_infeasible_budget_names_the_smallest():
    tables = criteo_tables()
    with pytest.raises(et.InfeasibleBudget) as e:
        et.plan(tables, "unified", budget=1e-9, num_tables=2)
    # the default 2 probes: rows of width 8 in each table, a key per (feature, chunk)
    assert e.value.smallest_budget == pytest.approx((4 * 2 * 8 + 8 * 2 * 26) / et.full_bytes(tables))


@given(
    lengths=st.lists(st.integers(0, 5), min_size=2, max_size=10),
    data=st.data(),
    weighted=st.booleans(),
)
def test_pooling_is_the_weighted_sum_of_id_vectors(lengths, data, weighted):
    """Ragged and empty bags of any int64 ids, two features: bag = sum_i w_i e_f(x_i); empty bags are zero."""
    ebc = _shared()
    B = len(lengths) // 2
    lengths = lengths[: 2 * B]
    n = sum(lengths)
    ids = data.draw(st.lists(st.one_of(INT64, st.integers(0, 50)), min_size=n, max_size=n))
    w = data.draw(st.lists(st.floats(-2, 2), min_size=n, max_size=n)) if weighted else None
    kjt = KeyedJaggedTensor(["x", "y"], torch.tensor(ids, dtype=torch.long), lengths=torch.tensor(lengths),
                            weights=None if w is None else torch.tensor(w))
    with torch.no_grad():
        out = ebc(kjt)
    start = 0
    for i, L in enumerate(lengths):
        f, b = divmod(i, B)
        e = [oracle(ebc, f, ids[j]) * (1.0 if w is None else w[j]) for j in range(start, start + L)]
        want = sum(e, torch.zeros(ebc.method.output_dims()[f]))
        torch.testing.assert_close(out[["x", "y"][f]][b], want, rtol=1e-5, atol=1e-5)
        start += L


_SHARED: list = []


def _shared() -> et.Collection:
    if not _SHARED:
        tables = [et.TableConfig("x", 10**6, 8), et.TableConfig("y", 100, 4)]
        _SHARED.append(et.build_collection(tables, "unified", rows=37, num_tables=2, chunks={"x": 3}))
    return _SHARED[0]


@pytest.mark.parametrize(
    "options, match",
    [
        ({"rows": 0}, "rows must be an int >= 1"),
        ({"width": 0}, "width must be an int >= 1"),
        ({"num_tables": 0}, "num_tables must be an int >= 1"),
        ({"seed": 1.5}, "seed must be an int"),
        ({"chunks": {"a1": 0}}, r"chunks\['a1'\] must be an int >= 1"),
        ({"chunks": [1, 2]}, "chunks must map feature names to counts"),
        ({"chunks": {"zz": 2}}, r"chunks names features \['zz'\]"),
        ({"width": 3}, "width=3 does not divide dim 16 of table 'a'"),
        ({"num_tables": 99}, "num_tables=99 exceeds the 12 chunks"),
        ({"budget": None}, "exactly one of budget= or rows="),
        ({"rows": 10}, "exactly one of budget= or rows="),
    ],
)
def test_bad_options_raise_clear_errors(options, match):
    kw = {"budget": 0.1, **options}
    with pytest.raises(ValueError, match=match):
        et.plan(TABLES, "unified", **kw)


def test_backend_and_unpooled_width_constraints():
    with pytest.raises(ValueError, match="width=2 must be a multiple of 4 on the 'fbgemm' backend"):
        et.plan(TABLES, "unified", budget=0.1, width=2, backend="fbgemm")
    assert et.plan(TABLES, "unified", budget=0.1, width=2).physical_tables[0].embedding_dim == 2
    seq = [et.TableConfig("s", 1000, 16, pooling="none"), et.TableConfig("u", 50, 8, pooling="none")]
    with pytest.raises(ValueError, match="unpooled tables return one row width"):
        et.plan(seq, "unified", budget=0.1, probes=1)
    assert et.plan(seq, "unified", budget=0.1, probes=1, chunks={"u": 2}).params[1].out_dims == (16,)
    assert et.plan(seq, "unified", budget=0.1, width=8, chunks={"u": 2}).params[1].out_dims == (16,)


def test_unpooled_empty_input_gives_no_rows():
    seq = [et.TableConfig("s", 1000, 8, feature_names=("h", "t"), pooling="none")]
    ebc = et.build_collection(seq, "unified", rows=10, width=4, num_tables=2)
    out = ebc(KeyedJaggedTensor(["h", "t"], torch.zeros(0, dtype=torch.long), lengths=torch.zeros(4, dtype=torch.long)))
    assert out["h"].values().shape == (0, 8) and out["t"].lengths().tolist() == [0, 0]


# ---- probes: chunking as part of the solve ----

UNIFORM = [
    et.TableConfig("x", 100_000, 16, feature_names=("x1", "x2")),
    et.TableConfig("y", 5000, 16, pooling="mean"),
    et.TableConfig("z", 20, 16),
]


@pytest.mark.parametrize(
    "tables, probes, w, chunks",
    [
        # all dims D = 16: c chunks of width D / c; by_vocabulary: 4, 2, 1 chunks at 1, 1/16 and 1/256 of the rows
        (UNIFORM, 1, 16, [(1, 1), (1,), (1,)]),
        (UNIFORM, 2, 8, [(2, 2), (2,), (2,)]),
        (UNIFORM, 4, 4, [(4, 4), (4,), (4,)]),
        (UNIFORM, "by_vocabulary", 4, [(4, 4), (2,), (1,)]),  # y: 5000 16 <= 1e5 < 5000 256; z: 20 4096 <= 1e5
        # dims 16, 8, 8 (g = 8): c D_t / g chunks of width g / c
        (TABLES, 1, 8, [(2, 2), (1,), (1,)]),
        (TABLES, 2, 4, [(4, 4), (2,), (2,)]),
        (TABLES, 4, 2, [(8, 8), (4,), (4,)]),
        (TABLES, "by_vocabulary", 2, [(8, 8), (2,), (1,)]),  # a 5000 rows: 4 per 8 columns; b 300: 2; c 3: 1
    ],
)
def test_probes_plan_chunks_widths_and_exact_bytes(tables, probes, w, chunks):
    ebc = et.build_collection(tables, "unified", rows=321, probes=probes, num_tables=2)
    p = ebc.plan
    assert [q.chunks for q in p.params] == chunks
    assert [t.embedding_dim for t in p.physical_tables] == [w, w]
    assert ebc.output_dims == {f: c * w for t, cs in zip(tables, chunks) for f, c in zip(t.feature_names, cs)}
    C = sum(map(sum, chunks))
    assert ebc.memory_bytes() == p.total_bytes == 4 * 2 * 321 * w + 8 * C
    # and from a budget: the largest M within it
    q = et.plan(tables, "unified", budget=0.05, probes=probes, num_tables=2)
    M, limit = q.physical_tables[0].num_embeddings, 0.05 * et.full_bytes(tables)
    assert q.total_bytes == 4 * 2 * M * w + 8 * C <= limit < 4 * 2 * (M + 1) * w + 8 * C


def test_default_is_two_probes_where_the_store_allows_and_chunks_override_probes():
    default, two = et.plan(TABLES, "unified", rows=50), et.plan(TABLES, "unified", rows=50, probes=2)
    assert default == dataclasses.replace(two, options=default.options)
    assert [q.chunks for q in default.params] == [(4, 4), (2,), (2,)]  # two lookups of width 4 per 8 columns
    # on fbgemm (dim multiple 4) g = 4 cannot be halved: the default falls back to one probe
    narrow = [et.TableConfig("n", 100, 4), et.TableConfig("m", 100, 8)]
    assert et.plan(narrow, "unified", rows=50, backend="fbgemm").physical_tables[0].embedding_dim == 4
    assert et.plan(narrow, "unified", rows=50, backend="torch").physical_tables[0].embedding_dim == 2
    p = et.plan(UNIFORM, "unified", rows=50, probes="by_vocabulary", chunks={"z": 3, "x2": 1})
    assert [q.chunks for q in p.params] == [(4, 1), (2,), (3,)]
    assert [q.out_dims for q in p.params] == [(16, 4), (8,), (12,)]


def test_by_vocabulary_rule():
    from embtables.methods._unified_chunks import by_vocabulary

    assert by_vocabulary([4096, 4095, 256, 255, 16, 15, 1]) == [4, 4, 2, 2, 1, 1, 1]
    assert by_vocabulary([10**9, 10**9 // 16, 10**9 // 16 + 1]) == [4, 2, 4]
    assert by_vocabulary([7]) == [4] and by_vocabulary([100, 6, 7], most=2) == [2, 1, 2]


@pytest.mark.parametrize("backend", ["torch", "fbgemm", "fused"])
def test_probes_2_forward_is_the_concatenation_of_the_hashed_rows(backend):
    """e_f(x) = [E_{g mod T}[h_{f,0}(x)], E_{(g+1) mod T}[h_{f,1}(x)]], pooled per bag (sum; mean for y)."""
    ebc = et.build_collection(UNIFORM, "unified", rows=257, probes=2, num_tables=3, seed=7, backend=backend)
    W, M = [w.detach() for w in ebc.store.weights()], 257
    kjt = random_kjt(UNIFORM, batch_size=5, max_len=3, seed=9)
    with torch.no_grad():
        out = ebc(kjt)
    g = 0
    for f, name in enumerate(["x1", "x2", "y", "z"]):
        jt = kjt[name]
        want = []
        for b, ids in enumerate(torch.split(jt.values(), jt.lengths().tolist())):
            parts = []
            for j in range(2):  # chunk j of feature f is chunk g + j of the collection: table (g + j) mod 3
                rows = hash_to_range(ids, hash_key(derive_seed(7, f, j)), M)
                pooled = W[(g + j) % 3][rows].sum(0)
                parts.append(pooled / max(len(ids), 1) if name == "y" else pooled)
            want.append(torch.cat(parts))
        torch.testing.assert_close(out[name], torch.stack(want), rtol=1e-5, atol=1e-6)
        g += 2


@pytest.mark.parametrize("probes", [2, "by_vocabulary"])
def test_probes_gradients_reach_every_chunks_rows(probes):
    """loss = <out, R>: row r of table s gets the sum of R's chunk columns over the (bag, id, chunk) hashed to it
    (divided by the bag's length under mean pooling)."""
    ebc = et.build_collection(UNIFORM, "unified", rows=61, probes=probes, num_tables=2, seed=3)
    kjt = random_kjt(UNIFORM, batch_size=4, max_len=3, seed=5)
    out = ebc(kjt)
    R = torch.randn(out.values().shape, generator=torch.Generator().manual_seed(0))
    (out.values() * R).sum().backward()
    w, T = ebc.plan.physical_tables[0].embedding_dim, 2
    want = [torch.zeros(61, w) for _ in range(T)]
    chunks = [c for q in ebc.plan.params for c in q.chunks]
    col = g = 0
    for f, name in enumerate(["x1", "x2", "y", "z"]):
        jt = kjt[name]
        for b, ids in enumerate(torch.split(jt.values(), jt.lengths().tolist())):
            for j in range(chunks[f]):
                rows = hash_to_range(ids, hash_key(derive_seed(3, f, j)), 61)
                grad = R[b, col + j * w : col + (j + 1) * w] / (max(len(ids), 1) if name == "y" else 1)
                want[(g + j) % T].index_add_(0, rows, grad.expand(len(ids), w))
        col, g = col + chunks[f] * w, g + chunks[f]
    for s, weight in enumerate(ebc.store.weight):
        got = weight.grad.to_dense()
        assert got.abs().sum() > 0
        torch.testing.assert_close(got, want[s], rtol=1e-5, atol=1e-6)


def test_unpooled_probes_give_one_width():
    seq = [et.TableConfig("s", 10**6, 8, feature_names=("h", "t"), pooling="none"), et.TableConfig("u", 50, 8, pooling="none")]
    a, b = et.plan(seq, "unified", rows=99, probes=2), et.plan(seq, "unified", rows=99, width=4)
    assert (a.physical_tables, a.lookups, a.params) == (b.physical_tables, b.lookups, b.params)
    with pytest.raises(ValueError, match="unpooled tables return one row width"):
        et.plan(seq, "unified", rows=99, probes="by_vocabulary")


@pytest.mark.parametrize(
    "options, match",
    [
        ({"probes": 0}, "probes must be an int >= 1 or 'by_vocabulary', got 0"),
        ({"probes": True}, "probes must be an int >= 1 or 'by_vocabulary', got True"),
        ({"probes": 1.5}, "probes must be an int >= 1 or 'by_vocabulary', got 1.5"),
        ({"probes": "many"}, "probes must be an int >= 1 or 'by_vocabulary', got 'many'"),
        ({"probes": 3}, "probes=3 cuts features into up to 3 chunks, which does not divide dim 16 of table 'a'"),
        ({"probes": 16}, "probes=16 cuts features into up to 16 chunks, which does not divide dim 8 of table 'b'"),
        ({"probes": 2, "width": 4}, "probes=2 and width=4 both set the chunk width; give one"),
        ({"probes": 4, "backend": "fbgemm"},
         r"probes=4 gives chunks of width 2 \(dim 8 of table 'b' / 4\), which must be a multiple of 4 on the 'fbgemm'"),
        ({"probes": "by_vocabulary", "backend": "fbgemm"}, "probes='by_vocabulary' gives chunks of width 2"),
    ],
)
def test_bad_probes_raise_clear_errors(options, match):
    with pytest.raises(ValueError, match=match):
        et.plan(TABLES, "unified", budget=0.1, **options)
