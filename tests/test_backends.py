"""The fbgemm and fused backends agree with the torch reference in forward, backward and after optimizer steps."""

import pytest
import torch

import embtables as et
from tests.conftest import copy_state, method_options, random_kjt

FAST = ["fbgemm", "fused"]  # the backends checked against torch
TABLES = [
    et.TableConfig("big", 500, 8, feature_names=("big_a", "big_b")),
    et.TableConfig("small", 5, 4),
    et.TableConfig("avg", 40, 12, pooling="mean"),
]


def train_steps(ebc: et.Collection, steps: int, seed: int = 0) -> list[torch.Tensor]:
    opt = ebc.sparse_optimizer()
    outs = []
    for s in range(steps):
        kjt = random_kjt(ebc.tables, batch_size=8, max_len=6, seed=seed + s, id_range=7)  # many duplicate ids
        out = ebc(kjt).values()
        target = torch.linspace(-1, 1, out.numel()).view_as(out)
        ((out - target) ** 2).sum().backward()
        if opt is not None:
            opt.step()
            opt.zero_grad()
        outs.append(out.detach())
    return outs


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("method, options", [("full", {}), ("hash", {"budget": 0.3})])
@pytest.mark.parametrize("opt", ["rowwise_adagrad", "adagrad", "sgd"])
def test_backends_agree_after_training_steps(method, options, opt, backend):
    optimizer = et.SparseOptimizer(opt, lr=0.05)
    a = et.build_collection(TABLES, method, backend="torch", optimizer=optimizer, **options)
    b = et.build_collection(TABLES, method, backend=backend, optimizer=optimizer, **options)
    copy_state(a, b)
    outs_a, outs_b = train_steps(a, 4), train_steps(b, 4)
    for x, y in zip(outs_a, outs_b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    for wa, wb in zip(a.store.weights(), b.store.weights()):
        torch.testing.assert_close(wa, wb, rtol=1e-5, atol=1e-6)
    assert not torch.equal(a.store.weights()[0], torch.zeros_like(a.store.weights()[0]))


@pytest.mark.parametrize("backend", FAST)
def test_backward_gradients_agree(backend):
    """SGD with lr=1 turns the fused update into `w - grad`, so weight deltas compare the gradients."""
    optimizer = et.SparseOptimizer("sgd", lr=1.0)
    a = et.build_collection(TABLES, "full", backend="torch", optimizer=optimizer)
    b = et.build_collection(TABLES, "full", backend=backend, optimizer=optimizer)
    copy_state(a, b)
    before = [w.clone() for w in b.store.weights()]
    kjt = random_kjt(TABLES, batch_size=5, max_len=4, seed=11, weighted=False)
    out_a = a(kjt).values()
    (out_a * torch.arange(out_a.numel()).view_as(out_a)).sum().backward()
    out_b = b(kjt).values()
    (out_b * torch.arange(out_b.numel()).view_as(out_b)).sum().backward()
    for w_a, w0, w1 in zip(a.store.weight, before, b.store.weights()):
        grad_a = w_a.grad.to_dense()
        torch.testing.assert_close(w0 - w1, grad_a, rtol=1e-5, atol=1e-5)
        assert grad_a.abs().sum() > 0


@pytest.mark.parametrize("backend", FAST)
def test_weighted_bags_agree_across_backends(backend):
    tables = [et.TableConfig("w", 30, 8)]
    a = et.build_collection(tables, "full", backend="torch")
    b = et.build_collection(tables, "full", backend=backend)
    copy_state(a, b)
    kjt = random_kjt(tables, batch_size=6, max_len=5, seed=2, weighted=True)
    with torch.no_grad():
        torch.testing.assert_close(a(kjt).values(), b(kjt).values(), rtol=1e-5, atol=1e-6)


def test_fbgemm_rejects_dims_not_multiple_of_four():
    with pytest.raises(ValueError, match=r"table 'odd' has dim 6.*multiple of 4"):
        et.build_collection([et.TableConfig("odd", 10, 6)], backend="fbgemm")


def test_rowwise_adagrad_formula():
    """One step by hand: G = mean(g^2), w -= lr g / (sqrt(G) + eps), duplicates summed first."""
    w = torch.nn.Parameter(torch.ones(4, 2))
    opt = et.RowWiseAdagrad([w], lr=0.5, eps=0.0)
    torch.nn.functional.embedding(torch.tensor([1, 1, 3]), w, sparse=True).sum().backward()
    opt.step()
    # row 1: g = (2, 2), G = 4, step = 0.5 * 2 / 2 = 0.5; row 3: g = (1, 1), G = 1, step 0.5
    torch.testing.assert_close(w.data, torch.tensor([[1.0, 1.0], [0.5, 0.5], [1.0, 1.0], [0.5, 0.5]]))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("pooled", [True, False])
def test_stores_agree_when_lookups_interleave_tables(pooled, backend):
    """FBGEMM's CPU row-wise Adagrad needs each table's lookups contiguous; the store sorts and restores."""
    from embtables.bags import Bags
    from embtables.stores import TorchStore, store_class

    tables = [et.PhysicalTable("t0", 20, 4, -0.1, 0.1), et.PhysicalTable("t1", 10, 4, -0.1, 0.1)]
    lookups = [et.Lookup(n, t, pooled) for n, t in (("x", 1), ("y", 0), ("z", 1))]
    opt = et.SparseOptimizer("rowwise_adagrad", lr=0.1)
    a = TorchStore(tables, lookups, opt, torch.device("cpu"))
    b = store_class(backend)(tables, lookups, opt, torch.device("cpu"))
    with torch.no_grad():
        for wa, wb in zip(a.weights(), b.weights()):
            wb.copy_(wa)
    sparse = a.sparse_optimizer()
    bags = Bags(torch.tensor([1, 2, 3, 4, 5, 9, 9]), torch.tensor([0, 2, 3, 5, 5, 6, 7]), None, [3, 2, 2], 2)
    outs = []
    for store in (a, b):
        pooled_out, rows_out = store(bags)
        out = pooled_out if pooled else rows_out
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        outs.append(out.detach())
    sparse.step()
    torch.testing.assert_close(outs[0], outs[1])
    for wa, wb in zip(a.weights(), b.weights()):
        torch.testing.assert_close(wa, wb)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("method", et.list_methods())
def test_unpooled_collections_agree_across_backends(method, backend):
    tables = [et.TableConfig("item", 3000, 8, ("hist", "target"), "none")]
    budget = 0.2 if et.get_method(method).compresses else None
    torch.manual_seed(0)
    # one plan on every store
    kw = {"dim_multiple": 4} if method == "mixed_dim" else method_options(method, tables, budget)
    a = et.build_collection(tables, method, budget, backend="torch", **kw)
    b = et.build_collection(tables, method, budget, backend=backend, **kw)
    copy_state(a, b)
    for kjt in (random_kjt(tables, batch_size=6, max_len=5, seed=8),
                random_kjt(tables, batch_size=3, max_len=0, seed=8)):  # no ids at all
        outs = []
        for ebc in (a, b):
            rows = ebc(kjt)
            loss = sum((jt.values() * torch.arange(jt.values().numel()).view_as(jt.values())).sum() for jt in rows.values())
            if loss.requires_grad:
                loss.backward()
            outs.append({f: jt.values().detach() for f, jt in rows.items()})
        for f in outs[0]:
            torch.testing.assert_close(outs[0][f], outs[1][f], rtol=1e-5, atol=1e-6)
