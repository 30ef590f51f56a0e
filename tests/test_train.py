"""Trainer: learning on a planted problem, exact resume, determinism, metrics.json, errors; models x methods."""

import json

import pytest
import torch
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.models import DIN, DLRM
from embtables.app.trainer import TrainConfig, Trainer, open_data
from tests.conftest import method_options

SMALL = dict(rows=6000, scale=1e-4, min_rows=20, part_rows=2000)
MODEL = dict(bottom=(32, 16), top=(32,))


@pytest.fixture(scope="module")
def tiny_criteo(tmp_path_factory):
    from embtables.datasets.synthetic import synth_criteo

    path = tmp_path_factory.mktemp("syn")
    synth_criteo(path, seed=0, **SMALL)
    return str(path)


def scores(evals):
    """Eval records without their timings, which differ between runs."""
    return [{k: ({m: v for m, v in r.items() if m != "samples_per_s"} if isinstance(r, dict) else r)
             for k, r in e.items()} for e in evals]


def config(data, **kw):
    base = dict(data=data, batch_size=256, epochs=1, embedding_lr=0.05, dense_lr=3e-3, model_options=MODEL)
    base.update(kw)
    return TrainConfig(**base)


def test_loss_decreases_and_beats_chance_on_planted_data(tiny_criteo):
    trainer = Trainer(config(tiny_criteo, epochs=4), progress=False)
    losses = []
    for epoch in range(4):
        for batch in trainer.batches("train", 256, shuffle=True, seed=epoch, drop_last=True):
            losses.append(trainer.train_step(batch))
    assert len(losses) >= 60
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.02
    assert trainer.evaluate("val")["auc"] > 0.6


def test_resume_reproduces_the_uninterrupted_run(tiny_criteo, tmp_path):
    cfg = config(tiny_criteo, epochs=2, checkpoint_every=5, eval_every=9)
    full = Trainer(cfg, tmp_path / "a", progress=False).fit()
    assert Trainer(cfg, tmp_path / "b", progress=False).fit(stop_after=12) == {}
    resumed = Trainer(cfg, tmp_path / "b", progress=False)
    assert resumed.state["step"] == 0  # nothing loaded before fit(resume=True)
    metrics = resumed.fit(resume=True)
    assert scores(metrics["evals"]) == scores(full["evals"])
    a, b = (torch.load(tmp_path / run / "checkpoint.pt", weights_only=True) for run in "ab")
    for k in a["dense"]:
        assert torch.equal(a["dense"][k], b["dense"][k]), k
    for ca, cb in zip(a["collections"], b["collections"], strict=True):  # tables, method, optimizer state
        for part in ("tables", "method", "optimizer_state"):
            assert ca[part].keys() == cb[part].keys()
            for k in ca[part]:
                assert torch.equal(ca[part][k], cb[part][k]), (part, k)


def test_same_seed_same_result_and_metrics_file(tiny_criteo, tmp_path):
    cfg = config(tiny_criteo, method="hash", budget=0.2, max_steps=10)
    m1 = Trainer(cfg, tmp_path / "1", progress=False).fit()
    m2 = Trainer(cfg, tmp_path / "2", progress=False).fit()
    assert scores(m1["evals"]) == scores(m2["evals"])
    saved = json.loads((tmp_path / "1" / "metrics.json").read_text())
    for key in ("model", "method", "budget", "memory_bytes", "full_bytes", "params_embedding", "params_dense",
                "train_samples_per_s", "eval_samples_per_s", "peak_rss_bytes", "seed", "versions", "bayes"):
        assert key in saved, key
    assert saved["memory_bytes"] <= 0.2 * saved["full_bytes"]
    assert set(saved["val"]) == {"last", "best"} and set(saved["test"]) == {"last", "best"}
    assert json.loads((tmp_path / "1" / "config.json").read_text())["method"] == "hash"


def test_best_is_selected_on_validation_only(tiny_criteo):
    trainer = Trainer(config(tiny_criteo, epochs=2, eval_every=5), progress=False)
    metrics = trainer.fit()
    best = max(metrics["evals"], key=lambda e: e["val"]["auc"])
    assert metrics["best_step"] == best["step"]
    assert metrics["test"]["best"]["auc"] == best["test"]["auc"]


def test_resume_refuses_a_different_configuration(tiny_criteo, tmp_path):
    Trainer(config(tiny_criteo, max_steps=3), tmp_path, progress=False).fit()
    with pytest.raises(ValueError, match="different configuration"):
        Trainer(config(tiny_criteo, max_steps=3, seed=1), tmp_path, progress=False).fit(resume=True)


def test_an_earlier_run_is_replaced_only_with_force(tiny_criteo, tmp_path):
    from embtables.app.train import train

    first = Trainer(config(tiny_criteo, max_steps=3), tmp_path, progress=False).fit()
    other = config(tiny_criteo, max_steps=2, seed=1)
    with pytest.raises(ValueError, match=rf"{tmp_path} already holds a training run \(config.json, checkpoint.pt\): "
                       "continue it with --resume"):
        Trainer(other, tmp_path, progress=False).fit()
    with pytest.raises(ValueError, match="already holds a training run"):
        train(other, tmp_path, progress=False)
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == first["steps"] == 3  # untouched
    with pytest.raises(ValueError, match="give one"):
        train(other, tmp_path, resume=True, force=True, progress=False)
    assert train(other, tmp_path, force=True, progress=False)["steps"] == 2
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 1
    (tmp_path / "config.json").unlink()  # a checkpoint alone is a run too
    with pytest.raises(ValueError, match=r"already holds a training run \(checkpoint.pt\)"):
        train(other, tmp_path, progress=False)


def test_errors_for_wrong_data_and_arguments(tiny_criteo, tmp_path):
    with pytest.raises(ValueError, match="not a Criteo data folder"):
        open_data(tmp_path)
    with pytest.raises(ValueError, match="unpooled item table"):
        Trainer(config(tiny_criteo, model="din"), progress=False)
    with pytest.raises(ValueError, match="model"):
        TrainConfig(model="wide", data="x")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(data="x", batch_size=0)
    with pytest.raises(TypeError, match="unknown option"):
        Trainer(config(tiny_criteo, method="hash", budget=0.1, options={"bucket": 3}), progress=False)


TABLES = [et.TableConfig("a", 500, 8), et.TableConfig("b", 40, 8, pooling="mean"), et.TableConfig("c", 3000, 8)]


def budget_for(method):
    return 0.2 if et.get_method(method).compresses else None


@pytest.mark.parametrize("backend", ["torch", "fbgemm"])
@pytest.mark.parametrize("method", et.list_methods())
def test_dlrm_shapes_and_gradients_for_every_method(method, backend):
    torch.manual_seed(0)
    ebc = et.build_collection(TABLES, method, budget_for(method), backend=backend,
                              **method_options(method, TABLES, budget_for(method)))
    model = DLRM(ebc, dense_in=5, bottom=(16, 8), top=(16,))
    kjt = KeyedJaggedTensor(["a", "b", "c"], torch.tensor([1, 2, 3, 4, 5, 6, 7]), lengths=torch.tensor([1, 2, 0, 1, 2, 1]))
    logits = model(torch.randn(2, 5), kjt)
    assert logits.shape == (2,)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.head.parameters() if p.requires_grad)
    if backend == "torch":
        assert any(w.grad is not None for w in ebc.store.weight)


@pytest.mark.parametrize("pooling", ["attention", "sum"])
@pytest.mark.parametrize("method", et.list_methods())
def test_din_shapes_and_gradients_for_every_method(method, pooling):
    torch.manual_seed(0)
    tables = [et.TableConfig("item", 3000, 8, ("hist", "target"), "none")]
    budget = budget_for(method)
    items = et.build_collection(tables, method, budget, **method_options(method, tables, budget))
    users = et.build_collection([et.TableConfig("user", 100, 8)], "full")
    model = DIN(items, users, pooling=pooling, attention_hidden=(8,), mlp=(16,))
    kjt = KeyedJaggedTensor(
        ["hist", "target", "user"], torch.tensor([1, 2, 3, 9, 7, 8, 5, 6]), lengths=torch.tensor([3, 1, 1, 1, 1, 1])
    )
    logits = model(torch.zeros(2, 0), kjt)
    assert logits.shape == (2,)
    logits.sum().backward()
    assert any(w.grad is not None for w in items.store.weight)


def test_din_attention_ignores_padding():
    """Padding positions get no weight: batching a short history with a longer one (so it is padded) does
    not change its logit."""
    torch.manual_seed(0)
    items = et.build_collection([et.TableConfig("item", 50, 8, ("hist", "target"), "none")])
    model = DIN(items, attention_hidden=(8,), mlp=(16,), activation="prelu").eval()
    one = KeyedJaggedTensor(["hist", "target"], torch.tensor([1, 2, 3]), lengths=torch.tensor([2, 1]))
    two = KeyedJaggedTensor(["hist", "target"], torch.tensor([1, 2, 4, 5, 6, 7, 3, 9]),
                            lengths=torch.tensor([2, 4, 1, 1]))
    with torch.no_grad():
        a = model(torch.zeros(1, 0), one)
        b = model(torch.zeros(2, 0), two)
    torch.testing.assert_close(a[0], b[0])


def test_dlrm_accepts_torchrec_ebc_and_scripts_its_head():
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

    ebc = EmbeddingBagCollection(tables=[EmbeddingBagConfig(name="t", num_embeddings=10, embedding_dim=4, feature_names=["f"])])
    model = DLRM(ebc, dense_in=3, bottom=(8, 4), top=(8,))
    kjt = KeyedJaggedTensor(["f"], torch.tensor([1, 2]), lengths=torch.tensor([1, 1]))
    eager = model(torch.ones(2, 3), kjt)
    scripted = torch.jit.script(model.head)
    torch.testing.assert_close(scripted(torch.ones(2, 3), ebc(kjt).values()), eager)


@pytest.mark.parametrize("pooling, softmax", [("attention", False), ("attention", True), ("sum", False)])
def test_din_head_scripts_and_matches_the_eager_model(pooling, softmax):
    from embtables.models.din import padded

    torch.manual_seed(0)
    items = et.build_collection([et.TableConfig("item", 50, 8, ("hist", "target"), "none")])
    users = et.build_collection([et.TableConfig("user", 10, 4)])
    model = DIN(items, users, dense_in=2, pooling=pooling, softmax=softmax, attention_hidden=(8,), mlp=(16,)).eval()
    kjt = KeyedJaggedTensor(["hist", "target", "user"], torch.tensor([1, 2, 3, 9, 7, 8, 5, 6]),
                            lengths=torch.tensor([3, 1, 1, 1, 1, 1]))
    dense = torch.randn(2, 2)
    scripted = torch.jit.script(model.head)
    with torch.no_grad():
        rows = items(kjt)
        k, mask = padded(rows["hist"])
        side = torch.cat([dense, users(kjt).values()], dim=1)
        torch.testing.assert_close(scripted(rows["target"].values(), k, mask, side), model(dense, kjt))


def test_dlrm_interaction_counts_pairs():
    ebc = et.build_collection([et.TableConfig(f"t{i}", 10, 4) for i in range(3)])
    strict = DLRM(ebc, dense_in=2, bottom=(4,), top=(8,))
    assert strict.head.top[0].in_features == 4 + 4 * 3 // 2
    diag = DLRM(ebc, dense_in=2, bottom=(4,), top=(8,), self_interaction=True)
    assert diag.head.top[0].in_features == 4 + 4 * 5 // 2
    cat = DLRM(ebc, dense_in=2, bottom=(4,), top=(8,), interaction="cat")
    assert cat.head.top[0].in_features == 4 + 12


def test_din_and_its_head_reject_an_unknown_pooling():
    items = et.build_collection([et.TableConfig("item", 50, 8, ("hist", "target"), "none")])
    with pytest.raises(ValueError, match="pooling must be 'attention' or 'sum'"):
        DIN(items, pooling="max")
    from embtables.models import DINHead

    with pytest.raises(ValueError, match="pooling must be 'attention' or 'sum'"):
        DINHead(8, 0, "max", (8,), (16,), "prelu", False)


@pytest.mark.parametrize("method, budget", [("full", None), ("qr", 0.3), ("hash", 0.3)])
def test_raw_ids_train_without_a_vocabulary(tiny_criteo, method, budget):
    trainer = Trainer(config(tiny_criteo, method=method, budget=budget, raw_ids=True, max_steps=6), progress=False)
    batch = next(iter(trainer.batches("train", 64)))
    raw = next(iter(trainer.data.batches("train", 64, ids="raw")))
    assert torch.equal(batch.sparse.values(), raw.sparse.values())  # the run feeds raw ids, not ranks
    assert raw.sparse.values().max() > max(t.num_embeddings for t in trainer.data.tables(16, 2))
    metrics = trainer.fit()
    assert metrics["index_bytes"] == 0 and metrics["raw_ids"] is True and metrics["steps"] == 6
    assert all(c.raw_ids is not None for c in trainer.collections)  # rank-read tables hash raw ids first
    assert 0.0 < metrics["val"]["best"]["auc"] <= 1.0
    ranked = Trainer(config(tiny_criteo, method=method, budget=budget, max_steps=1), progress=False)
    assert sum(c.index_bytes for c in ranked.collections) > 0  # ranks need the vocabulary


def test_raw_ids_are_refused_for_din():
    with pytest.raises(ValueError, match="raw_ids: only DLRM"):
        TrainConfig(model="din", data="x", raw_ids=True)
