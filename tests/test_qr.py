"""`qr`: partitions, the trivial setting, both pooling orders against a plain reference, exact bytes, budgets."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables import QREmbedding, QREmbeddingBag
from embtables.methods._partitions import _fewest_rows
from embtables.methods.qr import partition_codes, qr_radices, radices_within
from tests.conftest import copy_state, random_kjt
from tests.test_hash import CRITEO, criteo_tables

BACKENDS = ["torch", "fbgemm"]


def partition_weights(ebc: et.Collection, table: str) -> list[torch.Tensor]:
    """The (b_j, D_j) weight of each partition of a logical table, column blocks joined again."""
    parts: dict[str, list[torch.Tensor]] = {}
    for t, w in zip(ebc.plan.physical_tables, ebc.store.weights()):
        base = t.name.split("#")[0]
        if base == table or base.startswith(table + "/"):
            parts.setdefault(base, []).append(w)
    return [torch.cat(ws, 1) for ws in parts.values()]


def reference(ebc: et.Collection, kjt: KeyedJaggedTensor, weights: dict | None = None) -> torch.Tensor:
    """Plain torch: e(id) composed from the partition rows, bags pooled in the configured order."""
    opts, out = ebc.plan.options, []
    for t, p in zip(ebc.tables, ebc.plan.params):
        ws = weights[t.name] if weights else partition_weights(ebc, t.name)
        for f in t.feature_names:
            jt = kjt[f]
            ids, lengths = jt.values(), jt.lengths()
            w = jt.weights_or_none() if jt.weights_or_none() is not None else torch.ones(ids.numel())
            bag = torch.arange(lengths.numel()).repeat_interleave(lengths)
            codes = partition_codes(ids, p.radices, t.num_embeddings) if p.radices else ids[None]
            rows = [W[c] * w[:, None] for W, c in zip(ws, codes)]  # per partition (N, D_j), weighted

            def pool(x):
                return torch.zeros(lengths.numel(), x.shape[1]).index_add_(0, bag, x)

            def compose(xs):
                if opts.operation == "concat":
                    return torch.cat(xs, 1)
                out = xs[0]
                for x in xs[1:]:
                    out = out * x if opts.operation == "mult" else out + x
                return out

            if opts.operation == "mult" and opts.pooling_order == "combine_first" and len(ws) > 1:
                rows = [W[c] for W, c in zip(ws, codes)]
                e = pool(compose(rows) * w[:, None])
            else:
                e = compose([pool(x) for x in rows])
            if t.pooling == "mean":
                e = e / lengths.clamp(min=1)[:, None]
            out.append(e)
    return torch.cat(out, 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m", [300, 512])
def test_collisions_at_least_n_with_add_and_a_zero_quotient_row_is_the_full_table(backend, m):
    table = et.TableConfig("t", 300, 8)
    qr = et.build_collection([table], "qr", collisions=m, operation="add", backend=backend)
    full = et.build_collection([table], "full", backend=backend)
    assert qr.plan.params[0].radices == (1, m)
    with torch.no_grad():
        q, r = qr.store.weights()
        q.zero_()
        r[:300] = full.store.weights()[0]
    kjt = random_kjt([table], batch_size=9, max_len=5, seed=1, weighted=True)
    with torch.no_grad():
        torch.testing.assert_close(qr(kjt).values(), full(kjt).values())


@pytest.mark.parametrize("operation, identity", [("mult", 1.0), ("add", 0.0)])
def test_one_collision_with_an_identity_remainder_row_is_the_full_table(operation, identity):
    table = et.TableConfig("t", 300, 8)
    qr = et.build_collection([table], "qr", collisions=1, operation=operation)
    full = et.build_collection([table], "full")
    assert qr.plan.params[0].radices == (300, 1)
    with torch.no_grad():
        q, r = qr.store.weights()
        q.copy_(full.store.weights()[0])
        r.fill_(identity)
    kjt = random_kjt([table], batch_size=9, max_len=5, seed=2, weighted=True)
    with torch.no_grad():
        torch.testing.assert_close(qr(kjt).values(), full(kjt).values())


@given(n=st.integers(1, 3000), m=st.integers(1, 80), k=st.integers(2, 5))
def test_distinct_ids_get_distinct_codes(n, m, k):
    radices = qr_radices(n, m, k)
    codes = partition_codes(torch.arange(n), radices, n)  # (k, n)
    assert codes.shape == (k, n)
    assert bool((codes >= 0).all()) and all(bool((c < b).all()) for c, b in zip(codes, radices))
    assert torch.unique(codes.t(), dim=0).shape[0] == n


@given(n=st.integers(201, 10**7), cap=st.integers(1, 10**7))
def test_solver_partitions_fit_their_cap_and_get_distinct_codes(n, cap):
    radices = radices_within(n, cap, range(2, n.bit_length()))
    assert len(radices) >= 2 and torch.tensor(radices).prod() >= n
    least = min(_fewest_rows(n, k)[0] for k in range(2, n.bit_length()))
    assert sum(radices) <= max(cap, least)
    ids = torch.randint(0, n, (2000,), generator=torch.Generator().manual_seed(n))
    ids = torch.cat([ids, torch.tensor([0, n - 1])]).unique()
    codes = partition_codes(ids, radices, n)
    assert torch.unique(codes.t(), dim=0).shape[0] == ids.numel()


def test_integer_division_is_exact_above_2_to_the_24():
    n, m = 2**34, 2**17 + 3
    ids = torch.tensor([200 * m - 1, 5000 * m - 1, 2**24 + 1, n - 1])  # just below multiples of m
    expected = [[int(i) // m for i in ids], [int(i) % m for i in ids]]
    assert partition_codes(ids, qr_radices(n, m), n).tolist() == expected
    assert (ids.float() / m).long().tolist() != expected[0]  # the reference's float division is wrong here
    ebc = et.build_collection([et.TableConfig("big", n, 4)], "qr", collisions=m)
    kjt = KeyedJaggedTensor(["big"], ids, lengths=torch.ones(4, dtype=torch.long))
    from embtables.inputs import bags_from_kjt

    phys = ebc.method.remap(bags_from_kjt(kjt, ["big"], "test")).physical
    assert phys.values.view(2, 4).tolist() == expected


@pytest.mark.parametrize(
    "options",
    [
        {"operation": "mult"},
        {"operation": "mult", "pooling_order": "pool_first"},
        {"operation": "add"},
        {"operation": "concat"},
        {"operation": "mult", "partitions": 3},
    ],
)
@pytest.mark.parametrize("pooling", ["sum", "none"])
def test_backends_agree_in_forward_backward_and_training(options, pooling):
    tables = [
        et.TableConfig("a", 5000, 8, feature_names=("a1", "a2"), pooling=pooling),
        et.TableConfig("b", 300, 16 if pooling == "sum" else 8, pooling=pooling),
        et.TableConfig("c", 50, 8, pooling=pooling),
    ]
    opt = et.SparseOptimizer("rowwise_adagrad", lr=0.05)
    a = et.build_collection(tables, "qr", budget=0.2, backend="torch", optimizer=opt, **options)
    b = et.build_collection(tables, "qr", budget=0.2, backend="fbgemm", optimizer=opt, **options)
    copy_state(a, b)
    optimizers = [a.sparse_optimizer(), b.sparse_optimizer()]
    for step in range(3):
        outs = []
        for ebc, sparse in zip((a, b), optimizers):
            kjt = random_kjt(tables, batch_size=6, max_len=4, seed=step, id_range=40)
            out = ebc(kjt)
            values = out.values() if pooling == "sum" else torch.cat([out[f].values() for f in ebc.feature_names])
            values.sin().sum().backward()
            if sparse is not None:
                sparse.step()
                sparse.zero_grad()
            outs.append(values.detach())
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for wa, wb in zip(a.store.weights(), b.store.weights()):
        torch.testing.assert_close(wa, wb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "operation, order", [("mult", "combine_first"), ("mult", "pool_first"), ("add", "combine_first"), ("concat", "combine_first")]
)
def test_forward_and_gradients_match_the_plain_reference(backend, operation, order):
    """SGD with lr=1 turns each weight update into minus the gradient: compare it with autograd on the reference."""
    tables = [
        et.TableConfig("a", 3000, 8, feature_names=("a1", "a2")), et.TableConfig("b", 500, 16), et.TableConfig("c", 9, 4)
    ]
    ebc = et.build_collection(
        tables, "qr", collisions=37, operation=operation, pooling_order=order, backend=backend,
        optimizer=et.SparseOptimizer("sgd", lr=1.0),
    )
    kjt = random_kjt(tables, batch_size=5, max_len=4, seed=3, weighted=True)
    ref_w = {t.name: [w.detach().clone().requires_grad_() for w in partition_weights(ebc, t.name)] for t in tables}
    out = ebc(kjt).values()
    expected = reference(ebc, kjt, ref_w)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    scale = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * scale).sum().backward()
    (expected * scale).sum().backward()
    opt = ebc.sparse_optimizer()
    if opt is not None:
        opt.step()
    for t in tables:
        for before, after in zip(ref_w[t.name], partition_weights(ebc, t.name)):
            torch.testing.assert_close(before.detach() - after, before.grad, rtol=1e-5, atol=1e-6)


@given(
    n=st.integers(201, 5000),
    dim=st.sampled_from([4, 8]),
    m=st.integers(1, 90),
    k=st.integers(2, 3),
    operation=st.sampled_from(["mult", "add", "concat"]),
    order=st.sampled_from(["combine_first", "pool_first"]),
    batch=st.integers(1, 7),
    max_len=st.integers(0, 5),
    weighted=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_ragged_empty_and_weighted_bags_match_the_reference(n, dim, m, k, operation, order, batch, max_len, weighted, seed):
    tables = [et.TableConfig("t", n, dim, feature_names=("x", "y")), et.TableConfig("s", 30, 4)]
    ebc = et.build_collection(tables, "qr", collisions=m, partitions=k, operation=operation, pooling_order=order)
    kjt = random_kjt(tables, batch, max_len, seed=seed, weighted=weighted)
    with torch.no_grad():
        torch.testing.assert_close(ebc(kjt).values(), reference(ebc, kjt), rtol=1e-5, atol=1e-6)
        no_ids = torch.zeros(0, dtype=torch.long)
        empty = KeyedJaggedTensor(["x", "y", "s"], no_ids, lengths=torch.zeros(3 * batch, dtype=torch.long))
        assert torch.equal(ebc(empty).values(), torch.zeros(batch, 2 * dim + 4))


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_unpooled_rows_match_the_reference_per_id(operation):
    """Per-id lookups share one width: concat's 4-wide partitions make the whole table `c` three column blocks."""
    tables = [
        et.TableConfig("a", 5000, 12, feature_names=("a1", "a2"), pooling="none"),
        et.TableConfig("b", 700, 12, pooling="none"),
        et.TableConfig("c", 40, 12, pooling="none"),
    ]
    ebc = et.build_collection(tables, "qr", collisions=29, partitions=3, operation=operation)
    assert ebc.method.g == (4 if operation == "concat" else 12)
    kjt = random_kjt(tables, batch_size=5, max_len=4, seed=6)
    with torch.no_grad():
        out = ebc(kjt)
    for t, p in zip(tables, ebc.plan.params):
        ws = partition_weights(ebc, t.name)
        for f in t.feature_names:
            ids = kjt[f].values()
            rows = [W[c] for W, c in zip(ws, partition_codes(ids, p.radices, t.num_embeddings) if p.radices else ids[None])]
            expected = torch.cat(rows, 1) if operation == "concat" else rows[0]
            for r in rows[1:] if operation != "concat" else []:
                expected = expected * r if operation == "mult" else expected + r
            torch.testing.assert_close(out[f].values(), expected)
            assert torch.equal(out[f].lengths(), kjt[f].lengths())


def test_pooling_orders_differ_for_mult_and_agree_for_add():
    table = et.TableConfig("t", 1000, 8)
    kjt = random_kjt([table], batch_size=8, max_len=5, seed=4)
    singles = KeyedJaggedTensor(["t"], kjt.values(), lengths=torch.ones(kjt.values().numel(), dtype=torch.long))
    outs = {}
    for op in ("mult", "add"):
        for order in ("combine_first", "pool_first"):
            torch.manual_seed(0)
            with torch.no_grad():
                ebc = et.build_collection([table], "qr", collisions=30, operation=op, pooling_order=order)
                outs[op, order] = (ebc(kjt).values(), ebc(singles).values())
    (mult_c, one_c), (mult_p, one_p) = outs["mult", "combine_first"], outs["mult", "pool_first"]
    torch.testing.assert_close(one_c, one_p)  # bags of one id: the same embedding
    long_bags = kjt.lengths() > 1
    assert long_bags.any()
    assert not torch.allclose(mult_c[long_bags], mult_p[long_bags])
    torch.testing.assert_close(outs["add", "combine_first"][0], outs["add", "pool_first"][0])


def formula_bytes(tables, radices, operation="mult") -> int:
    """4 * sum_j b_j D_j (D_j = D, or D split over the partitions for concat); 4 N D for tables kept whole."""
    total = 0
    for t, r in zip(tables, radices):
        if not r:
            total += 4 * t.num_embeddings * t.embedding_dim
        elif operation == "concat":
            q, rem = divmod(t.embedding_dim, len(r))
            total += 4 * sum(b * (q + (j < rem)) for j, b in enumerate(r))
        else:
            total += 4 * sum(r) * t.embedding_dim
    return total


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
@pytest.mark.parametrize("pooling", ["sum", "none"])
def test_memory_bytes_match_the_formula(operation, pooling):
    tables = [et.TableConfig(name, n, 12, pooling=pooling) for name, n in (("a", 20000), ("b", 150), ("c", 999))]
    ebc = et.build_collection(tables, "qr", collisions=50, partitions=3, operation=operation)
    radices = [p.radices for p in ebc.plan.params]
    assert radices == [(8, 50, 50), (), (1, 50, 50)]
    assert ebc.memory_bytes() == ebc.plan.total_bytes == formula_bytes(tables, radices, operation)
    assert [p.bytes for p in ebc.plan.params] == [formula_bytes([t], [r], operation) for t, r in zip(tables, radices)]


@pytest.mark.parametrize("operation", ["mult", "concat"])
@pytest.mark.parametrize("budget", [0.5, 0.1, 0.01, 0.001, 0.0001])
def test_budget_is_met_within_ten_percent_on_criteo(operation, budget):
    tables = criteo_tables()
    p = et.plan(tables, "qr", budget=budget, operation=operation)
    full = et.full_bytes(tables)
    assert 0.9 * budget * full <= p.total_bytes <= budget * full
    assert p.total_bytes == formula_bytes(tables, [q.radices for q in p.params], operation)
    assert all(not q.radices for t, q in zip(tables, p.params) if t.num_embeddings <= 200)


@pytest.mark.parametrize("n", sorted({c for c in CRITEO if c > 200}))
def test_budget_on_each_criteo_cardinality_alone(n):
    table = et.TableConfig("t", n, 16)
    for budget in (0.5, 0.1, 0.01, 0.001, 0.0001):
        try:
            p = et.plan([table], "qr", budget=budget)
        except et.InfeasibleBudget as e:
            assert e.smallest_budget > budget
            assert et.plan([table], "qr", budget=e.smallest_budget * (1 + 1e-9)).ratio <= e.smallest_budget * (1 + 1e-9)
            continue
        assert 0.9 * budget <= p.ratio <= budget, (n, budget, p.params)


def test_ids_out_of_range_raise_naming_the_table():
    ebc = et.build_collection([et.TableConfig("t", 1000, 4), et.TableConfig("s", 10, 4)], "qr", collisions=10)
    for bad in (1000, -1):
        with pytest.raises(ValueError, match=rf"id {bad} of feature 't' is outside \[0, 1000\) of table 't'"):
            ebc(KeyedJaggedTensor(["t", "s"], torch.tensor([bad, 3]), lengths=torch.tensor([1, 1])))
    with pytest.raises(ValueError, match="table 's'"):
        ebc(KeyedJaggedTensor(["t", "s"], torch.tensor([5, 10]), lengths=torch.tensor([1, 1])))


def test_bad_options_raise():
    tables = [et.TableConfig("t", 1000, 8)]
    with pytest.raises(ValueError, match="exactly one of budget= or collisions="):
        et.plan(tables, "qr")
    with pytest.raises(ValueError, match="exactly one of budget= or collisions="):
        et.plan(tables, "qr", budget=0.1, collisions=4)
    bad = [("operation", "div"), ("pooling_order", "pool_last"), ("collisions", 0), ("partitions", 1), ("threshold", -1),
           ("collisions", 2.5)]
    for name, value in bad:
        with pytest.raises(ValueError, match=f"qr option {name}"):
            et.plan(tables, "qr", **{"collisions": 4, name: value})
    with pytest.raises(ValueError, match="too narrow for 3 partitions"):
        et.plan([et.TableConfig("t", 1000, 8)], "qr", collisions=4, partitions=3, operation="concat", backend="fbgemm")
    with pytest.raises(ValueError, match="one embedding_dim"):
        unpooled = [et.TableConfig("a", 1000, 8, pooling="none"), et.TableConfig("b", 1000, 4, pooling="none")]
        et.plan(unpooled, "qr", collisions=4)
    with pytest.raises(TypeError, match="unknown option"):
        et.plan(tables, "qr", collisions=4, num_collisions=4)


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_drop_in_embedding_bag_matches_the_reference(mode):
    bag = QREmbeddingBag(10_000, 8, mode, collisions=100, include_last_offset=True)
    ids, offsets = torch.tensor([5, 9_999, 5, 123, 0]), torch.tensor([0, 2, 2, 5])
    q, r = bag.collection.store.weights()
    e = q[ids // 100] * r[ids % 100]
    expected = torch.stack([e[0:2].sum(0), torch.zeros(8), e[2:5].sum(0)])
    if mode == "mean":
        expected = expected / torch.tensor([2.0, 1.0, 3.0])[:, None]
    with torch.no_grad():
        torch.testing.assert_close(bag(ids, offsets), expected)
    assert bag.memory_bytes() == 4 * 8 * (100 + 100)


def test_drop_in_embedding_returns_one_row_per_id():
    emb = QREmbedding(10_000, 8, budget=0.05, operation="concat")
    ids = torch.tensor([[1, 2, 9_999], [4, 4, 0]])
    (radices,) = [p.radices for p in emb.collection.plan.params]
    ws = partition_weights(emb.collection, "embedding")
    codes = partition_codes(ids.reshape(-1), radices, 10_000)
    expected = torch.cat([ws[0][codes[0]], ws[1][codes[1]]], 1).view(2, 3, 8)
    with torch.no_grad():
        torch.testing.assert_close(emb(ids), expected)
    assert emb.memory_bytes() <= 0.05 * 10_000 * 8 * 4


def test_mult_composes_bags_of_one_id_pooled_and_longer_bags_one_bag_per_id():
    """combine_first on bags of at most one id: the store pools each partition, the weight on partition 0 only;
    with a longer bag every id gets a bag of its own (batch = ids of the longest feature). Both equal e(id)."""
    from embtables.inputs import bags_from_kjt

    ebc = et.build_collection([et.TableConfig("t", 1000, 8)], "qr", collisions=30)
    for lengths, weighted_batch in (([1, 0, 1, 1], 4), ([2, 0, 1, 0], 3)):
        w = torch.tensor([0.5, 2.0, -1.0])
        kjt = KeyedJaggedTensor(["t"], torch.tensor([5, 999, 7]), lengths=torch.tensor(lengths), weights=w)
        phys = ebc.method.remap(bags_from_kjt(kjt, ["t"], "test")).physical
        assert phys.batch_size == weighted_batch
        if weighted_batch == 4:  # (w W_q) * W_r: the weight enters once
            assert phys.per_sample_weights.tolist() == [0.5, 2.0, -1.0, 1.0, 1.0, 1.0]
        else:  # one id per bag, ids in order, trailing bags empty
            assert phys.offsets.tolist() == [0, 1, 2, 3, 4, 5, 6]
        with torch.no_grad():
            torch.testing.assert_close(ebc(kjt).values(), reference(ebc, kjt), rtol=1e-5, atol=1e-6)
