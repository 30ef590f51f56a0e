"""`mixed_dim`: the power rule by hand, alpha = 0 as a plain table, a plain reference with projections and hashed
rows, exact bytes, budgets on the Criteo cardinalities, both backends, errors."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.hashing import derive_seed, hash_key, hash_to_range
from embtables import MixedDimEmbedding, MixedDimEmbeddingBag
from embtables.methods.mixed_dim import frequency_blocks, md_solver
from tests.conftest import copy_state, random_kjt
from tests.test_hash import CRITEO, criteo_tables

BACKENDS = ["torch", "fbgemm"]


def zipf_counts(n: int) -> torch.Tensor:
    """Frequency-ranked counts (non-increasing), roughly Zipf."""
    return (1e6 / torch.arange(1, n + 1, dtype=torch.float64)).floor()


def block_weights(ebc: et.Collection, ti: int) -> list[torch.Tensor]:
    """The (rows, d_u) table of each block of logical table ti, column blocks joined again."""
    name, parts = ebc.tables[ti].name, {}
    for t, w in zip(ebc.plan.physical_tables, ebc.store.weights()):
        base = t.name.split("#")[0]
        if base == name or base.startswith(name + "/b"):
            parts.setdefault(base, []).append(w)
    block = lambda base: int(base.rsplit("/b", 1)[1]) if "/b" in base else 0  # noqa: E731  (any physical order)
    return [torch.cat(parts[base], 1) for base in sorted(parts, key=block)]


def reference_rows(ebc: et.Collection, ti: int, ids: torch.Tensor, weights=None, projections=None) -> torch.Tensor:
    """Plain torch: e(id) = P_u W_u[row], row = id - start_u, or the seeded hash of id for hashed blocks."""
    p, t = ebc.plan.params[ti], ebc.tables[ti]
    ws = weights if weights is not None else block_weights(ebc, ti)
    first = sum(len(q.dims) for q in ebc.plan.params[:ti])
    starts = [sum(p.block_ids[:u]) for u in range(len(p.dims))]
    out = torch.zeros(ids.numel(), t.embedding_dim)
    for u, (start, n, rows, d) in enumerate(zip(starts, p.block_ids, p.rows, p.dims)):
        mask = (ids >= start) & (ids < start + n)
        local = ids[mask] - start
        if rows < n:
            local = hash_to_range(ids[mask], hash_key(derive_seed(ebc.plan.options.seed, ti, u)), rows)
        e = ws[u][local]
        P = projections[first + u] if projections is not None else ebc.method.projection(first + u)
        out = out.index_put((mask.nonzero().squeeze(1),), e if P is None else e @ P.t())
    return out


def reference(ebc: et.Collection, kjt: KeyedJaggedTensor, weights=None, projections=None) -> torch.Tensor:
    out = []
    for ti, t in enumerate(ebc.tables):
        for f in t.feature_names:
            jt = kjt[f]
            e = reference_rows(ebc, ti, jt.values(), None if weights is None else weights[ti], projections)
            if jt.weights_or_none() is not None:
                e = e * jt.weights_or_none()[:, None]
            bag = torch.arange(jt.lengths().numel()).repeat_interleave(jt.lengths())
            pooled = torch.zeros(jt.lengths().numel(), t.embedding_dim).index_add(0, bag, e)
            out.append(pooled / jt.lengths().clamp(min=1)[:, None] if t.pooling == "mean" else pooled)
    return torch.cat(out, 1)


# ---- the power rule ---------------------------------------------------------------------------------------------
def test_md_solver_d0_form_by_hand():
    # d = 64 (10 / n)^0.5 = 64, 6.4, 0.64 -> floor 1 -> round
    assert md_solver([10, 1000, 100000], alpha=0.5, d0=64) == [64, 6, 1]
    assert md_solver([10, 1000, 100000], alpha=0.5, d0=64, round_to_power_of_two=True) == [64, 8, 1]
    assert md_solver([100000, 10, 1000], alpha=0.5, d0=64) == [1, 64, 6]  # input order kept
    assert md_solver([10, 1000, 100000], alpha=0.0, d0=64) == [64, 64, 64]
    assert md_solver([10, 1000, 100000], alpha=0.5, d0=64, multiple=4) == [64, 8, 4]  # 6.4 -> 6 -> 8 (1.5 up)
    assert md_solver([10, 1000, 100000], alpha=1.0, d0=64, max_dim=32) == [32, 1, 1]
    # queries: rows per lookup s = n / k = 100, 10000 -> 16 (100 / s)^0.5 = 16, 1.6
    assert md_solver([100, 100], alpha=0.5, d0=16, queries=[1.0, 0.01]) == [16, 2]


def test_md_solver_budget_form_by_hand():
    # w = n^-0.5 = 0.5, 0.05; lambda = B / sum n w = 2200 / (2 + 20) = 100 -> d = 50, 5; sum n d = 2200
    assert md_solver([4, 400], alpha=0.5, budget=2200) == [50, 5]
    assert md_solver([4, 400], alpha=0.5, budget=2200, multiple=4) == [52, 4]  # 12.5 -> 13 multiples, 1.25 -> 1
    assert md_solver([4, 400], alpha=0.0, budget=4040) == [10, 10]  # lambda = 4040 / 404
    assert md_solver([4, 400], alpha=0.5, budget=2200, round_to_power_of_two=True) == [64, 4]


def test_md_solver_errors():
    for counts, alpha, kw, match in [([10, 20], 0.5, {}, "exactly one of d0= or budget="),
                                     ([10, 20], 0.5, {"d0": 4, "budget": 100}, "exactly one of d0= or budget="),
                                     ([10, 20], -0.1, {"d0": 4}, "alpha"), ([0, 20], 0.5, {"d0": 4}, "counts must be >= 1")]:
        with pytest.raises(ValueError, match=match):
            md_solver(counts, alpha, **kw)


def test_frequency_blocks_cut_at_geometric_ranks():
    cuts = [frequency_blocks(n, k) for n, k in ((10_000, 4), (201, 4), (5, 4), (1000, 1))]
    assert cuts == [[0, 10, 100, 1000], [0, 4, 15, 54], [0, 2, 3, 4], [0]]


def test_per_table_dims_follow_table_size_and_the_most_popular_gets_d0():
    tables = [et.TableConfig(f"t{n}", n, 32) for n in (300, 3_000, 30_000, 300_000)] + [et.TableConfig("small", 150, 32)]
    p = et.plan(tables, "mixed_dim", alpha=0.5, d0=32, backend="fbgemm")
    # 32 (300 / n)^0.5 = 32, 10.1, 3.2, 1.01 -> multiples of 4 (FBGEMM's): 32, 12, 4, 4; the small table keeps 32
    assert [q.dims for q in p.params] == [(32,), (12,), (4,), (4,), (32,)]
    assert p.extra_bytes == 4 * 32 * (12 + 4 + 4)  # one projection per narrowed table
    for backend in ("torch", "fused", "triton"):  # the store's own multiple, 1
        assert [q.dims for q in et.plan(tables, "mixed_dim", alpha=0.5, d0=32, backend=backend).params] == [
            (32,), (10,), (3,), (1,), (32,)]


# ---- the trivial setting ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("granularity", ["table", "block"])
def test_alpha_zero_is_the_full_table(backend, granularity):
    tables = [et.TableConfig("a", 5000, 8, feature_names=("a1", "a2")), et.TableConfig("b", 100, 8, pooling="mean")]
    counts = {"a1": zipf_counts(5000), "a2": zipf_counts(5000), "b": zipf_counts(100)}
    md = et.build_collection(tables, "mixed_dim", alpha=0.0, granularity=granularity, counts=counts, backend=backend)
    full = et.build_collection(tables, "full", backend=backend)
    assert all(d == 8 for p in md.plan.params for d in p.dims) and md.memory_bytes() == full.memory_bytes()
    assert len(list(md.method.parameters())) == 0
    with torch.no_grad():
        starts = frequency_blocks(5000, 4) if granularity == "block" else [0]
        for w, a, b in zip(md.store.weights()[:-1], starts, starts[1:] + [5000]):
            w.copy_(full.store.weights()[0][a:b])
        md.store.weights()[-1].copy_(full.store.weights()[1])
    kjt = random_kjt(tables, batch_size=9, max_len=6, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(md(kjt).values(), full(kjt).values())


# ---- against the plain reference --------------------------------------------------------------------------------
@given(
    n=st.integers(201, 6000),
    dim=st.sampled_from([8, 16]),
    alpha=st.sampled_from([0.0, 0.3, 0.8]),
    granularity=st.sampled_from(["table", "block"]),
    budget=st.sampled_from([None, 0.5, 0.05]),
    batch=st.integers(1, 7),
    max_len=st.integers(0, 5),
    weighted=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_ragged_empty_and_weighted_bags_match_the_reference(
    n, dim, alpha, granularity, budget, batch, max_len, weighted, seed
):
    tables = [et.TableConfig("t", n, dim, feature_names=("x", "y")), et.TableConfig("s", 3000, 8)]
    counts = {"x": zipf_counts(n), "y": zipf_counts(n), "s": zipf_counts(3000)}
    kw = dict(alpha=alpha, granularity=granularity, counts=counts, dim_multiple=1)
    ebc = et.build_collection(tables, "mixed_dim", budget, **kw)
    kjt = random_kjt(tables, batch, max_len, seed=seed, weighted=weighted)
    with torch.no_grad():
        torch.testing.assert_close(ebc(kjt).values(), reference(ebc, kjt), rtol=1e-5, atol=1e-6)
        no_ids = torch.zeros(0, dtype=torch.long)
        empty = KeyedJaggedTensor(["x", "y", "s"], no_ids, lengths=torch.zeros(3 * batch, dtype=torch.long))
        assert torch.equal(ebc(empty).values(), torch.zeros(batch, 2 * dim + 8))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("granularity", ["table", "block"])
def test_gradients_match_the_plain_reference(backend, granularity):
    """SGD with lr=1 turns each table update into minus its gradient; projections get dense gradients."""
    tables = [
        et.TableConfig("a", 20000, 16, feature_names=("a1", "a2")), et.TableConfig("b", 900, 8), et.TableConfig("c", 50, 4)
    ]
    counts = {"a1": zipf_counts(20000), "a2": zipf_counts(20000), "b": zipf_counts(900), "c": zipf_counts(50)}
    ebc = et.build_collection(
        tables, "mixed_dim", 0.05, granularity=granularity, counts=counts, backend=backend, alpha=0.5,
        optimizer=et.SparseOptimizer("sgd", lr=1.0),
    )
    assert any(r < n for p in ebc.plan.params for n, r in zip(p.block_ids, p.rows)), "the test wants hashed blocks"
    assert len(list(ebc.method.parameters())) == 1, "the test wants projections (one flat parameter)"
    kjt = random_kjt(tables, batch_size=6, max_len=4, seed=5, weighted=True)
    ref_w = [[w.detach().clone().requires_grad_() for w in block_weights(ebc, ti)] for ti in range(3)]
    flat = ebc.method.projections  # every block's projection, (D, d_u) views of one parameter
    ref_flat = flat.detach().clone().requires_grad_()
    views = map(ebc.method.projection, range(sum(len(p.dims) for p in ebc.plan.params)))
    ref_p = [None if P is None else ref_flat.as_strided(P.shape, P.stride(), P.storage_offset()) for P in views]
    out, expected = ebc(kjt).values(), reference(ebc, kjt, ref_w, ref_p)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    scale = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * scale).sum().backward()
    (expected * scale).sum().backward()
    torch.testing.assert_close(flat.grad, ref_flat.grad, rtol=1e-5, atol=1e-6)
    sparse = ebc.sparse_optimizer()
    if sparse is not None:
        sparse.step()
    for ti in range(3):
        for before, after in zip(ref_w[ti], block_weights(ebc, ti)):
            torch.testing.assert_close(before.detach() - after, before.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("granularity", ["table", "block"])
@pytest.mark.parametrize("pooling", ["sum", "none"])
def test_backends_agree_in_forward_backward_and_training(granularity, pooling):
    tables = [
        et.TableConfig("a", 20000, 16, feature_names=("a1", "a2"), pooling=pooling),
        et.TableConfig("b", 900, 16, pooling=pooling),
        et.TableConfig("c", 50, 16, pooling=pooling),
    ]
    counts = {"a1": zipf_counts(20000), "a2": zipf_counts(20000), "b": zipf_counts(900), "c": zipf_counts(50)}
    opt = et.SparseOptimizer("rowwise_adagrad", lr=0.05)
    kw = dict(granularity=granularity, counts=counts, alpha=0.5, optimizer=opt, dim_multiple=4)  # one plan for both
    a = et.build_collection(tables, "mixed_dim", 0.1, backend="torch", **kw)
    b = et.build_collection(tables, "mixed_dim", 0.1, backend="fbgemm", **kw)
    copy_state(a, b)
    optimizers = [(x.sparse_optimizer(), torch.optim.SGD(list(x.method.parameters()), lr=0.05)) for x in (a, b)]
    for step in range(3):
        outs = []
        for ebc, (sparse, dense) in zip((a, b), optimizers):
            out = ebc(random_kjt(tables, batch_size=6, max_len=4, seed=step, id_range=40))
            values = out.values() if pooling == "sum" else torch.cat([out[f].values() for f in ebc.feature_names])
            values.sin().sum().backward()
            for o in (sparse, dense):
                if o is not None:
                    o.step()
                    o.zero_grad()
            outs.append(values.detach())
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    for pa, pb in zip(a.method.parameters(), b.method.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("granularity", ["table", "block"])
def test_unpooled_rows_match_the_reference_and_sum_to_the_pooled_bag(granularity):
    """Blocks of different dims are stored as column blocks of width g for per-id lookups; rows still compose."""
    counts = {"hist": zipf_counts(20000), "target": zipf_counts(20000), "cat": zipf_counts(3000)}
    seq = [
        et.TableConfig("item", 20000, 16, feature_names=("hist", "target"), pooling="none"),
        et.TableConfig("cat", 3000, 16, pooling="none"),
    ]
    bag = [et.TableConfig(t.name, t.num_embeddings, 16, t.feature_names) for t in seq]
    kw = dict(granularity=granularity, counts=counts, alpha=0.5, d0=16)
    a, b = et.build_collection(seq, "mixed_dim", **kw), et.build_collection(bag, "mixed_dim", **kw)
    assert a.plan.params == b.plan.params and len({d for p in a.plan.params for d in p.dims}) > 1
    assert a.method.g < 16 and len(a.plan.physical_tables) > len(b.plan.physical_tables)
    with torch.no_grad():
        blocks_a = {t.name: block_weights(a, ti) for ti, t in enumerate(seq)}
        for t, wb in zip(b.plan.physical_tables, b.store.weights()):  # b: one physical table per block
            table, _, u = t.name.partition("/b")
            wb.copy_(blocks_a[table][int(u or 0)])
    b.method.load_state_dict(a.method.state_dict())
    kjt = random_kjt(seq, batch_size=5, max_len=4, seed=3)
    with torch.no_grad():
        rows, pooled = a(kjt), b(kjt)
    for ti, t in enumerate(seq):
        for f in t.feature_names:
            jt = rows[f]
            torch.testing.assert_close(jt.values(), reference_rows(a, ti, kjt[f].values()))
            sums = torch.stack([v.sum(0) if v.numel() else torch.zeros(16) for v in jt.to_dense()])
            torch.testing.assert_close(sums, pooled[f], rtol=1e-5, atol=1e-6)


# ---- bytes and budgets ------------------------------------------------------------------------------------------
def formula_bytes(tables, params) -> int:
    """4 (rows d + D d [d < D]) per block, + 8 per hashed block; 4 N D for whole tables."""
    return sum(
        4 * (r * d + t.embedding_dim * d * (d < t.embedding_dim)) + 8 * (r < n)
        for t, p in zip(tables, params) for n, r, d in zip(p.block_ids, p.rows, p.dims)
    )


@pytest.mark.parametrize("budget", [None, 0.3, 0.02])
@pytest.mark.parametrize("pooling", ["sum", "none"])
def test_memory_bytes_match_the_formula(budget, pooling):
    tables = [et.TableConfig(name, n, 16, pooling=pooling) for name, n in (("a", 20000), ("b", 150), ("c", 3000))]
    counts = {"a": zipf_counts(20000), "b": zipf_counts(150), "c": zipf_counts(3000)}
    ebc = et.build_collection(tables, "mixed_dim", budget, granularity="block", counts=counts, alpha=0.5)
    assert ebc.memory_bytes() == ebc.plan.total_bytes == formula_bytes(tables, ebc.plan.params)
    assert ebc.plan.params[1] == et.plan(tables[1:2], "mixed_dim", alpha=0.5).params[0]  # at the threshold: whole
    assert ebc.plan.params[1].dims == (16,) and ebc.plan.params[1].block_ids == (150,)
    on_fbgemm = et.plan(tables, "mixed_dim", budget, granularity="block", counts=counts, alpha=0.5, backend="fbgemm")
    assert all(d % 4 == 0 for p in on_fbgemm.params for d in p.dims)  # the store's multiple
    assert on_fbgemm.total_bytes == formula_bytes(tables, on_fbgemm.params)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("budget", [0.5, 0.1, 0.01, 0.001, 0.0001])
def test_budget_is_met_within_ten_percent_on_criteo(backend, budget):
    tables = criteo_tables()
    for options in ({}, {"dim_multiple": 4} if backend == "torch" else {"round_to_power_of_two": True}):
        p = et.plan(tables, "mixed_dim", budget=budget, backend=backend, **options)
        full = et.full_bytes(tables)
        assert 0.9 * budget * full <= p.total_bytes <= budget * full, options
        assert p.total_bytes == formula_bytes(tables, p.params)
        multiple = 4 if backend == "fbgemm" or options.get("dim_multiple") == 4 else 1
        assert all(d % multiple == 0 for q in p.params for d in q.dims)


@pytest.mark.parametrize("budget", [0.1, 0.01, 0.001])
def test_dims_fall_with_table_size_on_criteo(budget):
    """The paper's rule: small tables stay wide, large ones narrow (ISSUE: not d=4 for every table over 200 rows)."""
    tables = criteo_tables()
    p = et.plan(tables, "mixed_dim", budget=budget, backend="torch")
    narrowed = sorted((t.num_embeddings, q.dims[0], q.rows[0]) for t, q in zip(tables, p.params) if t.num_embeddings > 200)
    dims = [d for _, d, _ in narrowed]
    assert dims == sorted(dims, reverse=True)  # non-increasing with table size
    assert dims[0] >= 4 * dims[-1] and dims[-1] == 1  # the largest tables at the floor, the smallest far wider
    cap = max(r for _, _, r in narrowed)
    if budget == 0.1:  # the floor fits without hashing: every row kept, as at alpha's rule without a cap
        assert all(r == n for n, _, r in narrowed) and len(set(dims)) >= 6
    else:  # hashed tables share one cap R and sit at the floor; the rule's dims of the others come from R
        assert all(d == 1 for n, d, _ in narrowed if n > cap) and any(n > cap for n, _, _ in narrowed)


@pytest.mark.parametrize("budget", [0.5, 0.1, 0.01, 0.001])
def test_budget_with_frequency_blocks_on_criteo_cardinalities(budget):
    """Counts are O(N), so the Criteo cardinalities are capped at 300k here; the solver is the same."""
    tables = [et.TableConfig(f"C{i}", min(n, 300_000), 16) for i, n in enumerate(CRITEO)]
    counts = {t.name: zipf_counts(t.num_embeddings) for t in tables}
    p = et.plan(tables, "mixed_dim", budget=budget, granularity="block", counts=counts)
    full = et.full_bytes(tables)
    assert 0.9 * budget * full <= p.total_bytes <= budget * full
    assert p.total_bytes == formula_bytes(tables, p.params)
    big = p.params[2]  # 300k rows: popular blocks are wider than rare ones
    assert list(big.dims) == sorted(big.dims, reverse=True) and big.block_ids[0] < big.block_ids[-1]


@pytest.mark.parametrize("n", sorted({c for c in CRITEO if c > 200}))
def test_budget_on_each_criteo_cardinality_alone(n):
    table = et.TableConfig("t", n, 16)
    for budget in (0.5, 0.1, 0.01, 0.001, 0.0001):
        try:
            p = et.plan([table], "mixed_dim", budget=budget, backend="fbgemm")
        except et.InfeasibleBudget as e:
            assert e.smallest_budget > budget
            just = e.smallest_budget * (1 + 1e-9)
            assert et.plan([table], "mixed_dim", budget=just, backend="fbgemm").ratio <= just
            continue
        # within 10%, unless one more row (of at most D = 16, plus its key) would not fit: small tables at tiny budgets
        assert p.ratio <= budget and (p.ratio >= 0.9 * budget or p.total_bytes + 4 * 16 > budget * p.full_bytes), (
            n, budget, p.params)


def test_infeasible_budget_reports_the_smallest():
    tables = criteo_tables()
    with pytest.raises(et.InfeasibleBudget) as e:
        et.plan(tables, "mixed_dim", budget=1e-7)
    smallest = e.value.smallest_budget
    # whole tables <= 200 rows, then one hashed row per table: of D = 16 without projection (a row of dim d < D
    # with its 16 x d projection costs more), with its hash key
    small = sum(n for n in CRITEO if n <= 200)
    one_row = 4 * 16 + 8
    assert smallest == pytest.approx((4 * 16 * small + one_row * sum(n > 200 for n in CRITEO)) / et.full_bytes(tables))
    assert et.plan(tables, "mixed_dim", budget=smallest * (1 + 1e-9)).ratio <= smallest * (1 + 1e-9)


# ---- errors -----------------------------------------------------------------------------------------------------
def test_bad_options_and_counts_raise():
    tables = [et.TableConfig("t", 1000, 8, feature_names=("x", "y"))]
    with pytest.raises(ValueError, match="granularity='block' needs per-feature id counts"):
        et.plan(tables, "mixed_dim", granularity="block")
    # counts are read by `embtables.frequency`, as multihash's hot rows read them (shape and sign checks there)
    with pytest.raises(ValueError, match="needs counts for feature 'y' of table 't'"):
        et.plan(tables, "mixed_dim", granularity="block", counts={"x": zipf_counts(1000)})
    unranked = zipf_counts(1000)
    unranked[7] = 1e7
    with pytest.raises(ValueError, match="counts of feature 'y' rise from id 6"):
        et.plan(tables, "mixed_dim", granularity="block", counts={"x": zipf_counts(1000), "y": unranked})
    for name, value in [("alpha", -1.0), ("alpha", float("nan")), ("granularity", "row"), ("blocks", 0), ("d0", 0),
                        ("threshold", -1), ("round_to_power_of_two", 1), ("dim_multiple", 0), ("seed", 1.5)]:
        with pytest.raises(ValueError, match=f"mixed_dim option {name}"):
            et.plan(tables, "mixed_dim", **{name: value})
    with pytest.raises(ValueError, match="give d0= or budget=, not both"):
        et.plan(tables, "mixed_dim", budget=0.5, d0=4)
    with pytest.raises(ValueError, match="dim_multiple=2 is not a multiple of backend 'fbgemm'"):
        et.plan(tables, "mixed_dim", dim_multiple=2, backend="fbgemm")
    with pytest.raises(ValueError, match="one embedding_dim"):
        et.plan([et.TableConfig("a", 1000, 8, pooling="none"), et.TableConfig("b", 1000, 4, pooling="none")], "mixed_dim")
    with pytest.raises(TypeError, match="unknown option"):
        et.plan(tables, "mixed_dim", temperature=0.3)


def test_ids_out_of_range_raise_naming_the_table():
    ebc = et.build_collection([et.TableConfig("t", 1000, 8)], "mixed_dim", budget=0.1)
    assert ebc.plan.params[0].rows[0] < 1000  # hashed, yet ids must still be in range
    with pytest.raises(ValueError, match=r"id 1000 of feature 't' is outside \[0, 1000\) of table 't'"):
        ebc(KeyedJaggedTensor(["t"], torch.tensor([1000]), lengths=torch.tensor([1])))


# ---- drop-ins ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_drop_in_embedding_bag_matches_the_reference(mode):
    bag = MixedDimEmbeddingBag(100_000, 16, mode, counts=zipf_counts(100_000), alpha=0.5, budget=0.05)
    assert bag.memory_bytes() <= 0.05 * 100_000 * 16 * 4
    ids, offsets = torch.tensor([0, 99_999, 5, 500, 20_000]), torch.tensor([0, 2, 2])
    e = reference_rows(bag.collection, 0, ids)
    expected = torch.stack([e[0:2].sum(0), torch.zeros(16), e[2:5].sum(0)])
    if mode == "mean":
        expected = expected / torch.tensor([2.0, 1.0, 3.0])[:, None]
    with torch.no_grad():
        torch.testing.assert_close(bag(ids, offsets), expected)


def test_drop_in_embedding_returns_projected_rows():
    emb = MixedDimEmbedding(50_000, 16, counts=zipf_counts(50_000), alpha=0.6, blocks=3)
    assert emb.collection.plan.params[0].block_ids == (37, 1358 - 37, 50_000 - 1358)  # cuts ceil(50000^(i/3))
    ids = torch.tensor([[1, 40, 49_999], [2, 2, 0]])
    with torch.no_grad():
        torch.testing.assert_close(emb(ids), reference_rows(emb.collection, 0, ids.reshape(-1)).view(2, 3, 16))
    assert math.isclose(emb.memory_bytes(), formula_bytes(emb.collection.tables, emb.collection.plan.params))
