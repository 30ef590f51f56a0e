"""The `triton` store's kernels against their PyTorch references and the torch backend: every method, pooled and
unpooled, every optimizer, ragged and empty bags, duplicate ids, per-sample weights. Without a GPU they run in
Triton's interpreter (conftest sets TRITON_INTERPRET=1), so the shapes stay small."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchrec import KeyedTensor

import embtables as et
from tests.conftest import copy_state, method_options, random_kjt

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
OPTIMIZERS = ["rowwise_adagrad", "adagrad", "sgd"]
POOLED = [et.TableConfig("a", 300, 8, feature_names=("a1", "a2")), et.TableConfig("b", 40, 4),
          et.TableConfig("c", 90, 16)]
UNPOOLED = [et.TableConfig("item", 300, 8, feature_names=("hist", "target"), pooling="none"),
            et.TableConfig("cat", 30, 8, pooling="none")]


@given(st.lists(st.tuples(st.integers(1, 50), st.integers(1, 20)), min_size=1, max_size=4), st.integers(1, 9),
       st.integers(0, 4), st.booleans(), st.integers(0, 99))
def test_pool_matches_embedding_bag(shapes, batch, max_len, weighted, seed):
    """Any dims (no power of two needed), ragged and empty bags, a table read by several lookups."""
    from embtables.kernels.triton.lookup import pool, pool_reference

    g = torch.Generator().manual_seed(seed)
    tables = [torch.randn(n, d, generator=g) for n, d in shapes]
    lookup_table = [t % len(shapes) for t in range(len(shapes) + 1)]  # the first table twice
    dims = [shapes[t][1] for t in lookup_table]
    cols = [sum(dims[:i]) for i in range(len(dims))]
    lengths = torch.randint(0, max_len + 1, (len(lookup_table) * batch,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    values = torch.cat([torch.randint(0, shapes[t][0], (int(n),), generator=g)
                        for t, n in zip(lookup_table, lengths.view(len(lookup_table), batch).sum(1))])
    psw = torch.rand(values.numel(), generator=g) if weighted else None
    flat = torch.cat([t.reshape(-1) for t in tables])
    table_offset = torch.tensor([0] + [n * d for n, d in shapes[:-1]]).cumsum(0)
    block_d = 1 << (max(d for _, d in shapes) - 1).bit_length()
    out = pool(flat, table_offset, torch.tensor([d for _, d in shapes]), torch.tensor(lookup_table),
               torch.tensor(cols), values, offsets, psw, batch, sum(dims), block_d)
    want = pool_reference(tables, lookup_table, cols, values, offsets, psw, batch, sum(dims))
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


def values_of(out: KeyedTensor | dict) -> torch.Tensor:
    return out.values() if isinstance(out, KeyedTensor) else torch.cat([jt.values() for jt in out.values()])


def twins(tables: list[et.TableConfig], method: str, optimizer: str, **options) -> tuple[et.Collection, ...]:
    o = et.SparseOptimizer(optimizer, lr=0.1)
    budget = 0.6 if et.get_method(method).compresses else None
    if method == "multihash" and tables is UNPOOLED:
        options = {"hash_all": True, **options}
    options = {**method_options(method, tables, budget), **options}
    ref = et.build_collection(tables, method, budget, backend="torch", optimizer=o, **options)
    tri = et.build_collection(tables, method, budget, backend="triton", optimizer=o, device=DEVICE, **options)
    copy_state(ref, tri)
    return ref, tri


def step_both(ref: et.Collection, tri: et.Collection, tables: list[et.TableConfig], seed: int) -> None:
    """The same training step on both: outputs, per-sample weight and method parameter gradients equal."""
    weighted = all(t.pooling == "sum" for t in tables)
    kjt = random_kjt(tables, batch_size=5, max_len=3, seed=seed, weighted=weighted, id_range=12)  # duplicates
    outs = [values_of(ref(kjt)), values_of(tri(kjt.to(torch.device(DEVICE))))]
    torch.testing.assert_close(outs[1].cpu(), outs[0], rtol=1e-5, atol=1e-6)
    target = torch.randn(outs[0].shape, generator=torch.Generator().manual_seed(seed))
    (outs[0] * target).sum().backward()
    (outs[1] * target.to(DEVICE)).sum().backward()  # triton updates its tables here
    ref.sparse_optimizer().step()
    ref.sparse_optimizer().zero_grad()
    for a, b in zip(ref.method.parameters(), tri.method.parameters()):  # dense method parameters (projections)
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-4, atol=1e-5)
        with torch.no_grad():
            for p in (a, b):
                p -= 0.05 * p.grad
                p.grad = None


def same_tables(ref: et.Collection, tri: et.Collection) -> None:
    for a, b in zip(ref.store.weights(), tri.store.weights()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-6)
    for a, b in zip(ref.store.optimizer_state(), tri.store.optimizer_state()):
        if a is not None:
            torch.testing.assert_close(b.cpu(), a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("method", et.list_methods())
@pytest.mark.parametrize("tables", [POOLED, UNPOOLED], ids=["pooled", "unpooled"])
def test_every_method_trains_as_on_the_torch_backend(tables, method, optimizer):
    ref, tri = twins(tables, method, optimizer)
    for seed in range(2):
        step_both(ref, tri, tables, seed)
    same_tables(ref, tri)


@pytest.mark.parametrize("method, options", [("multihash", {"importance": True, "num_hashes": 3}),
                                             ("qr", {"operation": "add", "pooling_order": "pool_first"}),
                                             ("mixed_dim", {"alpha": 0.6, "threshold": 50})])
def test_options_with_weights_and_projections_train_as_on_the_torch_backend(method, options):
    """Importance weights are a physical table the store updates sparsely (its rows checked with the other tables);
    projections run in the column program."""
    ref, tri = twins(POOLED, method, "rowwise_adagrad", **options)
    for seed in range(2):
        step_both(ref, tri, POOLED, seed)
    same_tables(ref, tri)


def test_mean_pooling_and_empty_bags():
    tables = [et.TableConfig("m", 50, 8, pooling="mean")]
    ref, tri = twins(tables, "full", "adagrad")
    step_both(ref, tri, tables, 0)
    same_tables(ref, tri)


def test_a_collection_saved_on_triton_loads_on_the_cpu_stores(tmp_path):
    ref, tri = twins(POOLED, "qr", "rowwise_adagrad")
    step_both(ref, tri, POOLED, 0)
    et.save_collection(tri, tmp_path / "qr.pt")
    for backend in ("torch", "fused", "fbgemm"):
        loaded = et.load_collection(tmp_path / "qr.pt", backend)
        same_tables(ref, loaded)


def test_the_cpu_without_the_interpreter_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="the triton backend runs on CUDA GPUs, not on cpu; on the CPU use "
                                         "backend='fused'"):
        et.build_collection(POOLED, backend="triton")
    with pytest.raises(ValueError, match="not on meta"):
        et.build_collection(POOLED, backend="triton", device="meta")


@pytest.mark.parametrize("model", ["dlrm", "din"])
def test_the_trainer_trains_dlrm_and_din_on_the_triton_store(tmp_path, model):
    """The application end to end on the triton store: a few steps, evaluation, a checkpoint the CPU stores load."""
    from embtables.app.trainer import TrainConfig, Trainer
    from embtables.checkpoint import load_collection_state

    if model == "dlrm":
        from embtables.datasets.synthetic import synth_criteo

        synth_criteo(tmp_path / "data", rows=1200, seed=0, scale=1e-4, min_rows=20, part_rows=600)
    else:
        from embtables.datasets.synthetic_sequences import synth_sequences

        synth_sequences(tmp_path / "data", users=40, items=60, clusters=6, clusters_per_category=2)
    cfg = TrainConfig(model=model, data=str(tmp_path / "data"), method="hash", budget=0.5, backend="triton",
                      device=DEVICE, batch_size=64, max_steps=3, embedding_dim=8,
                      model_options=dict(bottom=(8, 8), top=(8,)) if model == "dlrm" else {})
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    metrics = trainer.fit()
    assert metrics["steps"] == 3 and 0.0 <= metrics["val"]["last"]["auc"] <= 1.0
    blob = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    cpu = Trainer(TrainConfig(**{**cfg.__dict__, "backend": "torch", "device": "cpu"}), None, progress=False)
    for c, state in zip(cpu.collections, blob["collections"], strict=True):  # trained on triton, served on torch
        load_collection_state(c, state, "run")
    for a, b in zip(trainer.collections, cpu.collections):
        for x, y in zip(a.store.weights(), b.store.weights()):
            torch.testing.assert_close(y, x.cpu())
