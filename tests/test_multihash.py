"""`multihash`: reduction to a full table, the formula of every option against a per-id oracle, both backends,
pooling semantics, exact bytes, the budget solver's bounds, bad options and inputs."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.hashing import hash_to_range
from embtables import MultiHashEmbedding, MultiHashEmbeddingBag
from tests.conftest import copy_state, random_kjt
from tests.test_hash import CRITEO, criteo_tables

INT64 = st.integers(-(2**63), 2**63 - 1)
RANKED = torch.arange(400, 0, -1)  # frequency-ranked counts: id 0 most frequent
UNRANKED = torch.randperm(400, generator=torch.Generator().manual_seed(0))  # hot ids scattered, needs a map
# (combine, importance, append_weights, hot counts or None)
VARIANTS = [
    ("sum", False, False, None),
    ("mean", False, False, None),
    ("concat", False, False, None),
    ("sum", True, False, None),
    ("mean", True, True, None),
    ("concat", True, True, None),
    ("sum", False, False, RANKED),
    ("sum", True, True, UNRANKED),
    ("mean", False, False, UNRANKED),
    ("concat", True, False, RANKED),
    ("concat", False, False, UNRANKED),
]
IDS = [f"{c}-imp{int(i)}-app{int(a)}-{'none' if h is None else ('ranked' if h is RANKED else 'map')}" for c, i, a, h in VARIANTS]


def variant_options(combine, importance, append, hot) -> dict:
    kw = dict(combine=combine, importance=importance, append_weights=append)
    if hot is not None:
        kw.update(hot_rows=37)
    return kw


def importance_table(ebc: et.Collection, table: str) -> torch.Tensor:
    """The store's (K, k') importance table P of a logical table (a view: writes change the store)."""
    names = [t.name for t in ebc.plan.physical_tables]
    return ebc.store.weights()[names.index(f"{table}/importance")]


def randomize_importance(ebc: et.Collection) -> None:
    """Random importance weights (not the initial ones) in every importance table."""
    with torch.no_grad():
        for t, w in zip(ebc.plan.physical_tables, ebc.store.weights()):
            if t.name.endswith("/importance"):
                w.uniform_(-2, 2)


def build_one(n, d, variant, pooling="sum", backend="torch", **kw) -> et.Collection:
    """A one-table collection "t" for a variant, with random importance weights (not the initial ones)."""
    importance, hot = variant[1], variant[3]
    torch.manual_seed(0)
    counts = None if hot is None else {"t": hot[:n]}
    table = et.TableConfig("t", n, d, pooling=pooling)
    opts = {**variant_options(*variant), **kw}
    ebc = et.build_collection([table], "multihash", counts=counts, backend=backend, **opts)
    if importance:
        randomize_importance(ebc)
    return ebc


def oracle(ebc: et.Collection, x: int, counts: torch.Tensor | None = None, table: int = 0,
           W: torch.Tensor | None = None, P: torch.Tensor | None = None) -> torch.Tensor:
    """e(x) from the module docstring's formulas, one id at a time, reading only weights, keys and P (the store's,
    or the given W and P: leaves for reference gradients); `counts` are the table's counts when its hot ids need a
    map."""
    o, p, t = ebc.plan.options, ebc.plan.params[table], ebc.tables[table]
    k = o.num_hashes
    W = ebc.store.weights()[table] if W is None else W
    if o.importance and p.compressed and P is None:
        P = importance_table(ebc, t.name)
    parts = k if o.combine == "concat" else 1
    if not p.compressed:
        return torch.cat([W[j * t.num_embeddings + x] for j in range(parts)])
    ci = sum(q.compressed for q in ebc.plan.params[:table])
    keys = ebc.method.keys[ci]
    H = p.hot
    if p.hot_map:
        hot_ids = sorted(sorted(range(len(counts)), key=lambda i: (-int(counts[i]), i))[:H])
        rank = hot_ids.index(x) if x in hot_ids else None
    else:
        rank = x if 0 <= x < H else None
    if rank is not None:
        e = torch.cat([W[j * H + rank] for j in range(parts)])
    else:
        rows = [parts * H + int(hash_to_range(torch.tensor([x]), keys[j], p.rows)) for j in range(k)]
        a = [1.0] * k
        if o.importance:  # a_j(x) = P[h_0(x), j]
            a = list(P[int(hash_to_range(torch.tensor([x]), keys[k], p.importance_rows))])
        comps = [a[j] * W[rows[j]] for j in range(k)]
        e = torch.cat(comps) if o.combine == "concat" else sum(comps) / (k if o.combine == "mean" else 1)
    if o.append_weights:  # p(x), without P's padding columns
        e = torch.cat([e, P[int(hash_to_range(torch.tensor([x]), keys[k], p.importance_rows)), :k]])
    return e


def expected_bytes(n, d, variant, m, K, k=2, padded_k=None) -> int:
    """4 (H D + m D') + 8 (k + [importance]) + 4 K k' + 8 H [map], written out independently of the solver; k' is
    the importance table's width, k padded up to the dim multiple (k where none)."""
    combine, importance, _, hot = variant
    H = 0 if hot is None else 37
    d_pool = d // k if combine == "concat" else d
    mapped = hot is not None and hot is UNRANKED
    k_ = padded_k or k
    return 4 * (H * d + m * d_pool) + 8 * (k + importance) + 4 * K * k_ * importance + 8 * H * mapped


def test_one_hash_without_collision_is_a_full_table():
    n, d = 60, 8
    for combine in ("sum", "mean", "concat"):
        for pooling in ("sum", "none"):
            table = et.TableConfig("t", n, d, pooling=pooling)
            mh = et.build_collection([table], "multihash", rows=1 << 20, num_hashes=1, combine=combine, hash_all=True)
            full = et.build_collection([table], "full")
            rows = hash_to_range(torch.arange(n), mh.method.keys[0, 0], 1 << 20)
            assert rows.unique().numel() == n  # no collision among these ids
            with torch.no_grad():
                mh.store.weights()[0][rows] = full.store.weights()[0]
            kjt = random_kjt([table], batch_size=7, max_len=5, seed=4, weighted=pooling == "sum")
            with torch.no_grad():
                a, b = mh(kjt), full(kjt)
            if pooling == "sum":
                torch.testing.assert_close(a.values(), b.values())
            else:
                torch.testing.assert_close(a["t"].values(), b["t"].values())


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
@pytest.mark.parametrize("pooling", ["sum", "none"])
def test_every_variant_matches_the_formula(variant, pooling):
    ebc = build_one(400, 8, variant, pooling, rows=50)
    assert ebc.plan.params[0].compressed
    table = ebc.tables[0]
    kjt = random_kjt([table], batch_size=6, max_len=5, seed=1, weighted=pooling == "sum")
    ids = kjt.values().tolist() + [0, 5, 36, 37, 399, 10**12, -7]  # hot, cold, out of [0, N)
    with torch.no_grad():
        if pooling == "none":
            got = ebc(KeyedJaggedTensor(["t"], torch.tensor(ids), lengths=torch.tensor([len(ids)])))["t"].values()
            want = torch.stack([oracle(ebc, x, variant[3]) for x in ids])
        else:
            got = ebc(kjt).values()
            w, offsets = kjt.weights(), kjt.offsets().tolist()
            want = torch.stack([
                sum((w[i] * oracle(ebc, ids[i], variant[3]) for i in range(a, b)), torch.zeros(ebc.method.output_dims()[0]))
                for a, b in zip(offsets[:-1], offsets[1:])
            ])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_backends_agree_in_forward_backward_and_training(variant):
    tables = [
        et.TableConfig("a", 400, 8, feature_names=("a1", "a2")),
        et.TableConfig("b", 300, 16, pooling="mean"),
        et.TableConfig("c", 3, 8),  # stored whole
    ]
    importance, hot = variant[1], variant[3]
    counts = None if hot is None else {"a1": hot, "a2": hot, "b": hot[:300], "c": hot[:3]}
    opt = et.SparseOptimizer("sgd", lr=1.0)
    kw = dict(dim_multiple=4) if importance else {}  # one plan for both: P padded to FBGEMM's 4 columns
    a, b = (
        et.build_collection(tables, "multihash", budget=0.2, counts=counts, backend=be, optimizer=opt,
                            **variant_options(*variant), **kw)
        for be in ("torch", "fbgemm")
    )
    assert [p.compressed for p in a.plan.params] == [True, True, False]
    assert a.plan == b.plan and not list(a.method.parameters())  # P is a table of the store, not a parameter
    if importance:
        randomize_importance(a)
    copy_state(a, b)
    weights_before = [w.clone() for w in b.store.weights()]
    kjt = random_kjt(tables, batch_size=8, max_len=5, seed=3, id_range=40)  # collisions and repeated ids
    for ebc in (a, b):
        out = ebc(kjt).values()
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    # fused SGD with lr 1 applies w -= grad, so the fbgemm weight change is its gradient (P's tables included)
    for w_a, w0, w1 in zip(a.store.weight, weights_before, b.store.weights()):
        torch.testing.assert_close(w0 - w1, w_a.grad.to_dense(), rtol=1e-5, atol=1e-5)
    if importance:
        assert any(w.grad.to_dense()[:, :2].abs().sum() > 0 for w in a.store.weight[3:])  # P of "a" and "b"
        assert all(not w.grad.to_dense()[:, 2:].any() for w in a.store.weight[3:])  # its padding: never read
    a.sparse_optimizer().step()
    with torch.no_grad():
        torch.testing.assert_close(a(kjt).values(), b(kjt).values(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_memory_bytes_match_the_formula(variant):
    ebc = build_one(400, 8, variant, rows=50)
    K = 50 if variant[1] else 0  # importance_ratio 1: K = m
    expected = expected_bytes(400, 8, variant, 50, K)
    assert ebc.memory_bytes() == ebc.plan.total_bytes == expected == ebc.plan.params[0].bytes
    ratio = build_one(400, 8, variant, rows=50, importance_ratio=2.5) if variant[1] else None
    if ratio is not None:
        assert ratio.plan.params[0].importance_rows == 125
        assert ratio.memory_bytes() == expected_bytes(400, 8, variant, 50, 125)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v[1]], ids=[i for i, v in zip(IDS, VARIANTS) if v[1]])
@pytest.mark.parametrize("num_hashes, backend, dim_multiple, width", [
    (2, "torch", None, 2), (2, "fbgemm", None, 4), (2, "torch", 4, 4), (2, "fused", 4, 4), (3, "torch", 2, 4),
    (4, "fbgemm", None, 4),
])
def test_importance_table_bytes_with_and_without_padding(variant, num_hashes, backend, dim_multiple, width):
    """P is a (K, k') table of the store, k' = k padded to the dim multiple: its padding columns count."""
    if variant[0] == "concat" and num_hashes != 2:
        pytest.skip("concat splits D = 8 into 2 parts of 4 here")
    ebc = build_one(400, 8, variant, rows=50, backend=backend, num_hashes=num_hashes, dim_multiple=dim_multiple)
    P = importance_table(ebc, "t")
    assert P.shape == (50, width)
    expected = expected_bytes(400, 8, variant, 50, 50, k=num_hashes, padded_k=width)
    assert ebc.memory_bytes() == ebc.plan.total_bytes == expected == ebc.plan.params[0].bytes
    assert ebc.method.state_bytes() == 8 * (num_hashes + 1) + 8 * 37 * (variant[3] is UNRANKED)  # keys, hot map


def test_whole_tables_cost_full_bytes_and_hash_all_compresses_them():
    tables = [et.TableConfig("big", 10**6, 8), et.TableConfig("tiny", 3, 8)]
    p = et.plan(tables, "multihash", rows=1000)
    assert [q.compressed for q in p.params] == [True, False]
    assert p.total_bytes == 4 * 1000 * 8 + 16 + 4 * 3 * 8
    p = et.plan(tables, "multihash", rows=1000, hash_all=True)
    assert [q.rows for q in p.params] == [1000, 1000] and p.total_bytes == 2 * (4 * 1000 * 8 + 16)


BUDGET_VARIANTS = [
    {},
    {"importance": True},
    {"combine": "concat", "importance": True, "append_weights": True, "num_hashes": 4},
    {"combine": "mean", "num_hashes": 3, "hot_rows": 100},
]


@pytest.mark.parametrize("options", BUDGET_VARIANTS, ids=str)
@pytest.mark.parametrize("budget", [0.5, 0.1, 0.01, 0.001, 0.0001])
def test_budget_solver_hits_its_bounds_on_criteo(options, budget):
    tables = criteo_tables()
    counts = {t.feature_names[0]: torch.arange(min(t.num_embeddings, 3000), 0, -1) for t in tables}
    p = et.plan(tables, "multihash", budget=budget, backend="fbgemm", counts=counts, **options)
    full = et.full_bytes(tables)
    assert 0.9 * budget * full <= p.total_bytes <= budget * full
    assert p.total_bytes == sum(q.bytes for q in p.params)
    caps = {q.rows for q, n in zip(p.params, CRITEO) if q.compressed and q.rows < n - q.hot}
    assert len(caps) <= 1  # one cap M for every table it binds


def test_infeasible_budget_names_the_smallest():
    tables = criteo_tables()
    with pytest.raises(et.InfeasibleBudget) as e:
        et.plan(tables, "multihash", budget=1e-8)
    # every table at one pool row of 16 floats and its 2 keys (or whole, where that were smaller)
    smallest = sum(min(4 * 16 + 16, 4 * n * 16) for n in CRITEO) / et.full_bytes(tables)
    assert e.value.smallest_budget == pytest.approx(smallest)


def test_hot_ids_get_their_own_rows():
    c = torch.zeros(400, dtype=torch.long)
    c[[7, 300, 12]] = torch.tensor([50, 40, 30])  # the three most frequent ids, not ranked
    ebc = et.build_collection([et.TableConfig("t", 400, 8)], "multihash", rows=5, hot_rows=3, counts={"t": c})
    p = ebc.plan.params[0]
    assert p.hot == 3 and p.hot_map
    assert torch.equal(ebc.method.hot_keys, torch.tensor([7, 12, 300]))
    W = ebc.store.weights()[0]
    with torch.no_grad():
        out = ebc(KeyedJaggedTensor(["t"], torch.tensor([7, 12, 300]), lengths=torch.tensor([1, 1, 1]))).values()
    torch.testing.assert_close(out, W[:3])  # rows 0..2 in increasing id order


@pytest.mark.parametrize("combine", ["sum", "mean", "concat"])
@pytest.mark.parametrize("full_options", [True, False])
def test_several_tables_match_the_formula(combine, full_options):
    """Per-table keys, importance rows and hot maps are kept apart; appended weights follow their feature;
    whole tables are plain lookups."""
    tables = [
        et.TableConfig("a", 400, 8, feature_names=("a1", "a2")),
        et.TableConfig("tiny", 3, 8),  # stored whole, nothing appended
        et.TableConfig("b", 300, 8),
    ]
    counts = {"a1": UNRANKED, "a2": UNRANKED, "tiny": torch.tensor([1, 2, 3]), "b": UNRANKED[100:]}
    table_counts = [UNRANKED * 2, None, UNRANKED[100:]]  # a's features summed
    extra = dict(importance=True, append_weights=True, hot_rows=37) if full_options else {}
    ebc = et.build_collection(tables, "multihash", rows=40, combine=combine, counts=counts, **extra)
    assert [p.compressed for p in ebc.plan.params] == [True, False, True]
    if full_options:
        assert [p.hot_map for p in ebc.plan.params] == [True, False, True]
        randomize_importance(ebc)
    w = 10 if full_options else 8
    assert ebc.output_dims == {"a1": w, "a2": w, "tiny": 8, "b": w}
    ids = {"a1": [0, 1, 2, 399], "a2": [5, 6, 7, 8], "tiny": [0, 1, 2, 2], "b": [9, 10, 299, -4]}
    hot_b = sorted(range(300), key=lambda i: (-int(UNRANKED[100 + i]), i))[:37]
    ids["b"][:2] = hot_b[:2]  # hot ids of the second mapped table
    kjt = KeyedJaggedTensor(list(ids), torch.tensor(sum(ids.values(), [])), lengths=torch.ones(16, dtype=torch.long))
    with torch.no_grad():
        out = ebc(kjt)
    for name, table in [("a1", 0), ("a2", 0), ("tiny", 1), ("b", 2)]:
        want = torch.stack([oracle(ebc, x, table_counts[table], table) for x in ids[name]])
        torch.testing.assert_close(out[name], want, rtol=1e-5, atol=1e-6)


@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=6),
    data=st.data(),
    variant=st.sampled_from(VARIANTS),
    weighted=st.booleans(),
)
def test_pooling_is_the_weighted_sum_of_id_vectors(lengths, data, variant, weighted):
    """Ragged and empty bags of any int64 ids: each bag is sum_i w_i e(x_i), empty bags are zero."""
    ebc = _cached(variant)
    n = sum(lengths)
    ids = data.draw(st.lists(st.one_of(INT64, st.integers(0, 60)), min_size=n, max_size=n))
    w = data.draw(st.lists(st.floats(-2, 2), min_size=n, max_size=n)) if weighted else None
    kjt = KeyedJaggedTensor(["t"], torch.tensor(ids, dtype=torch.long), lengths=torch.tensor(lengths),
                            weights=None if w is None else torch.tensor(w))
    with torch.no_grad():
        got = ebc(kjt).values()
    D = ebc.method.output_dims()[0]
    starts = [sum(lengths[:b]) for b in range(len(lengths))]
    for b, (s, L) in enumerate(zip(starts, lengths)):
        e = [oracle(ebc, ids[i], variant[3]) for i in range(s, s + L)]
        want = sum(((1.0 if w is None else w[i]) * e[i - s] for i in range(s, s + L)), torch.zeros(D))
        torch.testing.assert_close(got[b], want, rtol=1e-5, atol=1e-5)


_CACHE: dict = {}


def _cached(variant) -> et.Collection:
    key = IDS[VARIANTS.index(variant)]
    if key not in _CACHE:
        _CACHE[key] = build_one(400, 8, variant, rows=30)
    return _CACHE[key]


def test_drop_in_embedding_bag_matches_torch_at_the_trivial_setting():
    n, d = 40, 8
    bag = MultiHashEmbeddingBag(n, d, "mean", rows=1 << 20, num_hashes=1, hash_all=True, include_last_offset=True)
    ref = torch.nn.EmbeddingBag(n, d, mode="mean", include_last_offset=True)
    rows = hash_to_range(torch.arange(n), bag.collection.method.keys[0, 0], 1 << 20)
    with torch.no_grad():
        bag.collection.store.weights()[0][rows] = ref.weight
    ids, offsets = torch.tensor([3, 9, 9, 39, 0]), torch.tensor([0, 2, 2, 5])
    with torch.no_grad():
        torch.testing.assert_close(bag(ids, offsets), ref(ids, offsets))
    assert bag.memory_bytes() == 4 * (1 << 20) * d + 8


def test_drop_in_embedding_shapes_and_options():
    emb = MultiHashEmbedding(10**9, 8, rows=100, importance=True, append_weights=True, num_hashes=3)
    assert emb(torch.tensor([[1, -2, 2**62]])).shape == (1, 3, 11)
    hot = MultiHashEmbedding(500, 8, rows=10, hot_rows=4, counts=torch.arange(500, 0, -1))
    assert hot.collection.plan.params[0].hot == 4 and not hot.collection.plan.params[0].hot_map
    with pytest.raises(ValueError, match="hot_rows needs per-feature id counts"):
        MultiHashEmbedding(500, 8, rows=10, hot_rows=4)


def test_hashed_tables_take_any_int64_and_whole_tables_check_their_range():
    ebc = et.build_collection([et.TableConfig("big", 10**9, 4), et.TableConfig("small", 10, 4)], "multihash", rows=100)
    assert [p.compressed for p in ebc.plan.params] == [True, False]
    ids = torch.tensor([-(2**63), 2**63 - 1, -1, 3])
    with torch.no_grad():
        assert not ebc(KeyedJaggedTensor(["big", "small"], ids, lengths=torch.tensor([1, 2, 1, 0]))).values().isnan().any()
    with pytest.raises(ValueError, match="id 10 of feature 'small'.*table 'small'"):
        ebc(KeyedJaggedTensor(["big", "small"], torch.tensor([5, 10]), lengths=torch.tensor([1, 1])))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"num_hashes": 0}, "num_hashes must be an int >= 1"),
        ({"num_hashes": 2.0}, "num_hashes"),
        ({"combine": "max"}, "combine must be one of"),
        ({"hot_rows": -1}, "hot_rows must be an int >= 0"),
        ({"rows": 0, "budget": None}, "rows must be an int >= 1"),
        ({"append_weights": True}, "append_weights needs importance=True"),
        ({"importance_ratio": 2.0}, "importance_ratio needs importance=True"),
        ({"importance": True, "importance_ratio": 0.0}, "importance_ratio must be a number > 0"),
        ({"importance": 1}, "importance must be a bool"),
        ({"seed": "x"}, "seed must be an int"),
        ({"rows": 10}, "exactly one of budget= or rows="),
        ({"budget": None}, "exactly one of budget= or rows="),
        ({"combine": "concat", "num_hashes": 3}, "combine='concat' splits dim 8 of table 't'"),
        ({"combine": "concat", "num_hashes": 4, "dim_multiple": 4}, r"multiples of 4 \(option dim_multiple\)"),
        ({"importance": True, "dim_multiple": 2, "backend": "fbgemm"}, "dim_multiple=2 is not a multiple of 4, the "
                                                                     "dim multiple of backend 'fbgemm'"),
        ({"dim_multiple": 0}, "dim_multiple must be an int >= 1"),
        ({"hot_rows": 5}, "hot_rows needs per-feature id counts"),
        ({"hot_rows": 5, "counts": {"u": RANKED}}, "needs counts for feature 't'"),
        ({"hot_rows": 5, "counts": {"t": torch.arange(500)}}, "at most 400 ids"),
        ({"hot_rows": 5, "counts": {"t": -torch.ones(4)}}, "must be non-negative"),
    ],
)
def test_bad_options_raise_clear_errors(options, match):
    kw = {"budget": 0.1, **options}
    with pytest.raises(ValueError, match=match):
        et.plan([et.TableConfig("t", 400, 8)], "multihash", **kw)


def test_fbgemm_needs_concat_parts_of_four_and_unpooled_append_needs_hash_all():
    with pytest.raises(ValueError, match="multiples of 4 on 'fbgemm'"):
        et.plan([et.TableConfig("t", 400, 8)], "multihash", budget=0.1, combine="concat", num_hashes=4, backend="fbgemm")
    seq = [et.TableConfig("s", 10**6, 8, pooling="none"), et.TableConfig("tiny", 3, 8, pooling="none")]
    with pytest.raises(ValueError, match=r"tables \['tiny'\] are stored whole.*hash_all=True"):
        et.plan(seq, "multihash", rows=100, importance=True, append_weights=True)
    assert et.plan(seq, "multihash", rows=100, importance=True, append_weights=True, hash_all=True).params[1].compressed


@pytest.mark.parametrize("combine", ["sum", "mean", "concat"])
def test_unpooled_empty_input_gives_no_rows(combine):
    ebc = et.build_collection([et.TableConfig("t", 1000, 8, pooling="none")], "multihash", rows=10, combine=combine,
                              importance=True, append_weights=True)
    out = ebc(KeyedJaggedTensor(["t"], torch.zeros(0, dtype=torch.long), lengths=torch.zeros(3, dtype=torch.long)))
    assert out["t"].values().shape == (0, 10) and out["t"].lengths().tolist() == [0, 0, 0]


@pytest.mark.parametrize("combine", ["sum", "mean", "concat"])
@pytest.mark.parametrize("pooling", ["sum", "none"])
def test_importance_gradients_match_the_formula(combine, pooling):
    """Autograd through the formula, with W and P as leaves, gives the store's gradients of both tables (hot and
    cold ids, per-sample weights, appended p(x))."""
    ebc = build_one(400, 8, (combine, True, True, RANKED), pooling, rows=30)
    kjt = random_kjt(ebc.tables, batch_size=6, max_len=4, seed=5, weighted=pooling == "sum", id_range=60)
    out = ebc(kjt)
    y = out.values() if pooling == "sum" else out["t"].values()
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    (y * g).sum().backward()
    W = ebc.store.weights()[0].clone().requires_grad_()
    P = importance_table(ebc, "t").clone().requires_grad_()
    e = torch.stack([oracle(ebc, x, W=W, P=P) for x in kjt.values().tolist()])
    if pooling == "sum":  # sum_j P[h_0(x), j] W[h_j(x)], pooled with the bag's weights
        w, offsets = kjt.weights(), kjt.offsets().tolist()
        e = torch.stack([(w[a:b, None] * e[a:b]).sum(0) for a, b in zip(offsets[:-1], offsets[1:])])
    (e * g).sum().backward()
    assert ebc.plan.physical_tables[1].name == "t/importance"
    torch.testing.assert_close(ebc.store.weight[0].grad.to_dense(), W.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ebc.store.weight[1].grad.to_dense(), P.grad, rtol=1e-5, atol=1e-6)
    assert P.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["torch", "fbgemm", "fused", "triton"])
@pytest.mark.parametrize("pooling", ["sum", "none"])
def test_a_step_moves_only_the_importance_rows_the_batch_read(backend, pooling):
    """P starts at ones and the store's sparse optimizer moves only the rows h_0(x) of the batch's ids (a dense
    optimizer such as Adam would move every row); its padding columns never move."""
    table = et.TableConfig("t", 10_000, 8, pooling=pooling)
    ebc = et.build_collection([table], "multihash", rows=500, importance=True, backend=backend, dim_multiple=4,
                              optimizer=et.SparseOptimizer("rowwise_adagrad", lr=0.1))
    assert not list(ebc.method.parameters())
    P = importance_table(ebc, "t")
    assert torch.equal(P, torch.ones(500, 4))  # the store's init keeps P's ones, padding included
    ids = torch.tensor([3, 77, 3, 9_999, 123_456, -8])
    out = ebc(KeyedJaggedTensor(["t"], ids, lengths=torch.tensor([2, 0, 4])))
    y = out.values() if pooling == "sum" else out["t"].values()
    (y - 1).pow(2).sum().backward()  # fbgemm, fused and triton update inside backward
    if ebc.sparse_optimizer() is not None:
        ebc.sparse_optimizer().step()
    read = hash_to_range(ids, ebc.method.keys[0, 2], 500).unique()
    assert torch.equal((P != 1).any(1).nonzero().squeeze(1), read)
    assert torch.equal(P[:, 2:], torch.ones(500, 2))


def test_importance_round_trips_through_a_checkpoint(tmp_path):
    """P is saved with the tables under its plan name and loads on another store, trained rows included."""
    tables = [et.TableConfig("t", 5000, 8)]
    a = et.build_collection(tables, "multihash", rows=100, importance=True, append_weights=True, dim_multiple=4)
    kjt = random_kjt(tables, batch_size=8, seed=2)
    a(kjt).values().pow(2).sum().backward()
    a.sparse_optimizer().step()
    et.save_collection(a, tmp_path / "mh.pt")
    assert "t/importance" in et.checkpoint.read_collection_file(tmp_path / "mh.pt")["tables"]
    for backend in ("fbgemm", "fused"):
        b = et.load_collection(tmp_path / "mh.pt", backend)
        torch.testing.assert_close(importance_table(b, "t"), importance_table(a, "t"))
        with torch.no_grad():
            torch.testing.assert_close(b(kjt).values(), a(kjt).values())
