"""OptEmbed: the supernet stage, its export to compact tables (`next_stage`), the exported method's bytes and id map,
and the staged training (supernet -> search -> retrain) with resume."""

from __future__ import annotations

import json

import pytest
import torch

import embtables as et
from embtables.methods.optembed import MAP_BYTES, table_bytes
from tests.conftest import random_kjt
from tests.test_train import scores

POOLED = [et.TableConfig("a", 300, 8, feature_names=("a1", "a2")), et.TableConfig("b", 40, 8),
          et.TableConfig("c", 200, 8, pooling="mean")]
UNPOOLED = [et.TableConfig("item", 300, 8, feature_names=("hist", "target"), pooling="none"),
            et.TableConfig("cat", 50, 8, pooling="none")]


def supernet(tables, backend="torch", **options) -> et.Collection:
    torch.manual_seed(0)
    c = et.build_collection(tables, "optembed_supernet", backend=backend, **options)
    with torch.no_grad():  # as if trained: prune the rows of small norm, some in every table
        norms = [w.abs().sum(1) for w in c.store.weights()]
        c.method.mask.thresholds.copy_(torch.stack([n.median() for n in norms]))
        if c.method.oov is not None:
            c.method.oov.uniform_(-1, 1)
    return c


def outputs(c: et.Collection, kjt) -> torch.Tensor:
    out = c(kjt)
    return out.values() if hasattr(out, "values") and not isinstance(out, dict) else torch.cat([j.values() for j in out.values()])


@pytest.mark.parametrize("backend", ["torch", "fused", "fbgemm", "triton"])
@pytest.mark.parametrize("pruned", ["zero", "oov"])
@pytest.mark.parametrize("tables", [POOLED, UNPOOLED], ids=["pooled", "unpooled"])
def test_export_equals_the_masked_supernet(tables, pruned, backend):
    """The exported collection (kept rows at the searched dims, on any store) serves exactly what the supernet serves
    with the mask and those dims applied, for kept ids, pruned ids, weighted and mean-pooled bags."""
    sup = supernet(tables, pruned=pruned)
    dims = [4, 8][: len(tables)] + [4] * max(0, len(tables) - 2)
    small = et.next_stage(sup, backend=backend, dims=dims)
    kept = sup.method.kept(sup.store.weights())
    assert [p.kept for p in small.plan.params] == [int(k.numel()) for k in kept]
    assert all(0 < k.numel() < t.num_embeddings for k, t in zip(kept, tables))  # something pruned everywhere
    sup.eval()
    sup.method.set_dims(dims)
    for seed in range(3):
        kjt = random_kjt(tables, batch_size=7, max_len=4, seed=seed)
        with torch.no_grad():
            torch.testing.assert_close(outputs(small, kjt), outputs(sup, kjt))
    assert small.output_dims == sup.output_dims  # a drop-in: D wide, zeros past d_t


@pytest.mark.parametrize("pruned", ["zero", "oov"])
def test_export_equals_the_masked_supernet_on_weighted_bags(pruned):
    tables = POOLED[:2]
    sup = supernet(tables, pruned=pruned)
    small = et.next_stage(sup, dims=[4, 8], backend="fused")
    sup.eval()
    sup.method.set_dims([4, 8])
    kjt = random_kjt(tables, batch_size=9, max_len=5, seed=4, weighted=True)
    with torch.no_grad():
        torch.testing.assert_close(outputs(small, kjt), outputs(sup, kjt))


def test_pruned_ids_read_zero_and_get_no_gradient():
    sup = supernet(POOLED)
    small = et.next_stage(sup, dims=[8, 8, 8])
    kept = set(small.method.kept(0).tolist())
    pruned = next(i for i in range(300) if i not in kept)
    kjt = random_kjt(POOLED, batch_size=1, max_len=0, seed=0)
    kjt = type(kjt)(kjt.keys(), torch.tensor([pruned, min(kept)]), lengths=torch.tensor([1, 1, 0, 0]))
    out = small(kjt).values()
    assert torch.equal(out[0, :8], torch.zeros(8)) and out[0, 8:16].abs().sum() > 0
    out.sum().backward()
    grads = small.store.weight[0].grad.coalesce()  # the torch store's sparse gradient: only the kept id's row
    rows = grads.indices()[0][grads.values().abs().sum(1) > 0].tolist()
    assert rows == [sorted(kept).index(min(kept))]


@pytest.mark.parametrize("pruned", ["zero", "oov"])
def test_memory_bytes_is_the_formula(pruned):
    tables = POOLED
    plan = et.plan(tables, "optembed", dims=(4, 8, 2), rows=(100, 40, 0), pruned=pruned)
    rows = [101, 41, 1] if pruned == "oov" else [100, 40, 1]
    expect = 4 * (rows[0] * 4 + rows[1] * 8 + rows[2] * 2) + MAP_BYTES * (100 + 0)  # b keeps all 40: no map
    assert plan.total_bytes == expect == sum(table_bytes(d, k, t.num_embeddings, pruned)
                                             for d, k, t in zip((4, 8, 2), (100, 40, 0), tables))
    c = et.build_collection(tables, "optembed", dims=(4, 8, 2), rows=(100, 40, 0), pruned=pruned)
    assert c.memory_bytes() == expect
    assert c.method.kept_ids.dtype == torch.int32 and c.method.kept_ids.numel() == 100


def test_supernet_trains_thresholds_and_draws_width_prefixes():
    """Training: each (sample, feature) reads a prefix of its row; the thresholds get the straight-through gradient
    plus the penalty's, in their own SGD optimizer."""
    sup = supernet(POOLED)
    sup.train()
    kjt = random_kjt(POOLED, batch_size=64, max_len=1, seed=1)
    out = sup(kjt).values().view(64, 4, 8)
    nonzero = out.abs().sum(0) > 0  # (F, D): which columns any sample reads
    per_sample = (out != 0).sum(-1)  # the columns each sample's bag reads: a prefix, of various lengths
    assert nonzero[:, 0].all() and len(set(per_sample.flatten().tolist())) > 2
    (out.sum() + sup.method.regularization()).backward()
    opt = sup.method.own_optimizer()
    assert opt is sup.method.own_optimizer() and isinstance(opt, torch.optim.SGD)
    t = sup.method.mask.thresholds
    assert t.grad is not None and bool((t.grad != 0).all())
    alpha = sup.method.options.alpha
    torch.testing.assert_close(sup.method.regularization(), alpha * torch.exp(-t.detach()).sum())


def test_built_by_hand_and_refusals():
    with pytest.raises(ValueError, match="learns its plan"):
        et.build_collection(POOLED, "optembed", budget=0.1)
    with pytest.raises(ValueError, match="multiple of 4"):
        et.plan(POOLED, "optembed", dims=(2, 8, 8), rows=(1, 1, 1), backend="fbgemm")
    with pytest.raises(ValueError, match="3 values for 3 tables|has 2 values"):
        et.plan(POOLED, "optembed", dims=(8, 8), rows=(1, 1, 1))
    with pytest.raises(ValueError, match="keeps 301 rows"):
        et.plan(POOLED, "optembed", dims=(8, 8, 8), rows=(301, 1, 1))
    with pytest.raises(et.InfeasibleBudget) as e:
        et.plan(POOLED, "optembed", 0.01, dims=(8, 8, 8), rows=(300, 40, 200))
    assert e.value.smallest_budget == pytest.approx(1.0)
    c = et.build_collection(POOLED, "optembed", dims=(8, 8, 8), rows=(5, 40, 200))
    assert c.method.kept(0).tolist() == [0, 1, 2, 3, 4]  # by hand: the first K ids
    with pytest.raises(ValueError, match="repeat"):
        c.method.set_kept(0, torch.tensor([1, 1, 2, 3, 4]))
    with pytest.raises(TypeError, match="unknown choices"):
        et.next_stage(supernet(POOLED), dim=[8, 8, 8])
    with pytest.raises(NotImplementedError, match="'full' is not a training stage"):
        et.next_stage(et.build_collection(POOLED))
    assert "optembed_supernet" not in et.list_methods() and "optembed" in et.list_methods()
    for options, extra in (({}, 3), ({"per_value": True}, 540), ({"pruned": "oov"}, 3 + 24)):  # thresholds (+ OOV rows)
        sup = et.build_collection(POOLED, "optembed_supernet", **options)
        assert sup.memory_bytes() == sup.plan.total_bytes == et.full_bytes(POOLED) + 4 * extra


# ---- staged training -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from embtables.datasets.synthetic import synth_criteo

    path = tmp_path_factory.mktemp("syn")
    synth_criteo(path, seed=0, rows=6000, scale=1e-4, min_rows=20, part_rows=2000)
    return str(path)


def staged(data, **options):
    from embtables.app.trainer import TrainConfig

    recipe = dict(alpha=0.1, threshold_lr=0.05, generations=2, mutations=4, crossovers=4, search_rows=1000)
    return TrainConfig(data=data, batch_size=128, epochs=1, dense_lr=3e-3, model_options=dict(bottom=(16,), top=(16,)),
                       method="optembed", budget=0.25, backend="torch", options={**recipe, **options})


def test_sparsity_rises_with_alpha(data):
    from dataclasses import replace

    from embtables.app.stages import supernet_config
    from embtables.app.trainer import Trainer

    kept = []
    for alpha in (0.0, 0.3, 1.0):
        t = Trainer(supernet_config(replace(staged(data, alpha=alpha), epochs=2)), progress=False)
        t.fit()
        c = t.collections[0]
        kept.append(sum(k.numel() for k in c.method.kept(c.store.weights())) / sum(x.num_embeddings for x in c.tables))
    assert kept[0] == 1.0 and kept[0] >= kept[1] > kept[2], kept


def test_staged_run_fits_the_budget_and_resumes_at_each_stage(data, tmp_path):
    from embtables.app.train import train
    from embtables.app.stages import train_stages

    config = staged(data)
    whole = train(config, tmp_path / "whole", progress=False)
    st = whole["stages"]
    assert whole["method"] == "optembed" and whole["memory_bytes"] <= 0.25 * whole["full_bytes"]
    assert whole["memory_bytes"] == st["search"]["bytes"]
    assert st["supernet"]["kept_rows"] == json.loads((tmp_path / "whole" / "config.json").read_text())["options"]["rows"]
    for stop in ("supernet", "search"):
        out = tmp_path / stop
        assert train_stages(config, out, progress=False, stop_after=stop) == {}
        with pytest.raises(ValueError, match="--resume"):
            train(config, out, progress=False)
        resumed = train(config, out, resume=True, progress=False)
        assert scores(resumed["evals"]) == scores(whole["evals"])
        assert resumed["stages"]["search"]["dims"] == st["search"]["dims"]
    # the run folder is an ordinary run: `evaluate` rebuilds the exported tables and their id map from best.pt
    from embtables.app.evaluate import evaluate_run

    scored = evaluate_run(tmp_path / "whole", data, split="test")
    assert scored["splits"] == ["test"] and scored["auc"] == pytest.approx(whole["test"]["best"]["auc"])


def test_unreachable_budget_and_bad_recipe(data, tmp_path):
    from dataclasses import replace

    from embtables.app.train import train

    with pytest.raises(et.InfeasibleBudget, match="supernet kept"):
        train(replace(staged(data, alpha=0.0), budget=0.001), tmp_path / "tiny", progress=False)
    with pytest.raises(TypeError, match="unknown option.*alphas"):
        train(staged(data, alphas=1.0), tmp_path / "bad", progress=False)
    with pytest.raises(ValueError, match="DLRM only"):
        train(replace(staged(data), model="din"), tmp_path / "din", progress=False)


@pytest.mark.parametrize("rewind", [True, False])
def test_retraining_starts_from_the_supernet_start_or_fresh(data, tmp_path, rewind):
    """rewind=True (the reference): the retrained tables start from the kept rows of the weights the supernet started
    from, and the dense model from its starting weights; rewind=False: from the retrained plan's own fresh
    initialisation. The kept-id map is the supernet's either way."""
    from dataclasses import replace

    from embtables.app.stages import START, _carry, supernet_config, train_stages
    from embtables.app.trainer import Trainer
    from embtables.checkpoint import load_tensor_file

    config, out = staged(data, rewind=rewind, alpha=1.0), tmp_path / "run"
    train_stages(config, out, progress=False, stop_after="search")
    found = json.loads((out / "search.json").read_text())
    sup = Trainer(supernet_config(config), out / "supernet", progress=False)
    sup.load_checkpoint()
    coll = sup.collections[0]
    kept = coll.method.kept(coll.store.weights())
    final = Trainer(replace(config, options={"dims": found["dims"], "rows": [int(k.numel()) for k in kept]}),
                    progress=False)
    fresh = final.collections[0].store.weights()[0].clone()
    fresh_dense = [p.detach().clone() for p in final.model.parameters() if p.requires_grad]
    start = load_tensor_file(out / "supernet" / START, "start")
    _carry(sup, final, found["dims"], config.budget, start if rewind else None)
    got = final.collections[0]
    assert torch.equal(got.method.kept(0), kept[0]) and 0 < kept[0].numel()
    begin = next(iter(start["collection"]["tables"].values()))[kept[0], : found["dims"][0]]
    assert torch.equal(got.store.weights()[0][: kept[0].numel()], begin if rewind else fresh[: kept[0].numel()])
    dense = [p for p in final.model.parameters() if p.requires_grad and p is not got.store.weights()[0]]
    assert any(not torch.equal(a, b) for a, b in zip(dense, fresh_dense)) == rewind


def test_search_scores_candidates_as_the_supernet_with_those_dims(data):
    """The search's cached scoring (pooled outputs once, columns past d_t zeroed) equals evaluating the supernet model
    with `set_dims` on the same validation rows."""
    from embtables.app.stages import CandidateScorer, _rows, supernet_config
    from embtables.app.trainer import Trainer
    from embtables.metrics import auc

    t = Trainer(supernet_config(staged(data, alpha=1.0)), progress=False)
    t.fit()
    score = CandidateScorer(t, 500)
    coll = t.collections[0]
    batches = list(_rows(t, 500))
    assert score.rows == sum(b.batch_size for b in batches) >= 500
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        dims = torch.randint(1, 17, (len(coll.tables),), generator=g).tolist()
        coll.method.set_dims(dims)
        t.model.eval()
        with torch.no_grad():
            z = torch.cat([t.model(b.dense, b.sparse) for b in batches])
        coll.method.set_dims(None)
        assert score(dims) == pytest.approx(auc(z, torch.cat([b.labels for b in batches])), abs=1e-12)
    t.model.train()
    score(dims)
    assert t.model.training  # the scorer leaves the model as it found it


def test_sweep_shares_one_supernet_and_reports_stages(data, tmp_path, monkeypatch):
    """A sweep trains one supernet per seed for all budgets, records the reached bytes (not the asked ones), the stage
    times and the kept rows and dims, and the report shows them; an unreachable budget is infeasible."""
    import embtables.app.sweep as sw
    from embtables.app.report import build_report

    monkeypatch.setattr(sw, "_spawn", lambda cell, folder: sw.run_cell(cell, folder))  # cells in this process
    recipe = staged(data)
    cfg = sw.SweepConfig(train=recipe.__class__(**{**recipe.__dict__, "method": "full", "budget": None, "options": {}}),
                         methods=("optembed",), budgets=(0.3, 0.2, 1e-4), options={"optembed": recipe.options})
    df = sw.sweep(cfg, tmp_path, command="test", progress=False)
    assert list(df["status"]) == ["ok", "ok", "ok", "infeasible"]
    assert len(list((tmp_path / "runs").glob("supernet-*"))) == 1
    ok = df[(df["method"] == "optembed") & (df["status"] == "ok")]
    assert (ok["memory_bytes"] <= ok["budget"] * ok["full_bytes"]).all() and ok["supernet_seconds"].nunique() == 1
    report = build_report(tmp_path).report.read_text()
    assert "## OptEmbed: rows kept and dims searched" in report and " = " in report.split("## Budget 0.2")[1]


@pytest.mark.parametrize("backend", ["fused", "fbgemm", "triton"])
def test_supernet_agrees_across_stores(backend):
    """The supernet on any store serves and trains (thresholds included) as on the torch store."""
    from tests.conftest import copy_state

    a, b = supernet(POOLED), supernet(POOLED, backend=backend)
    copy_state(a, b)
    for c in (a, b):
        c.eval()
        c.method.set_dims([4, 8, 4])
    kjt = random_kjt(POOLED, batch_size=6, max_len=3, seed=5)
    outs, grads = [], []
    for c in (a, b):
        y = c(kjt).values()
        (y * torch.arange(y.numel()).view_as(y)).sum().backward()
        outs.append(y.detach())
        grads.append(c.method.mask.thresholds.grad.clone())
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("backend", ["torch", "fused"])
def test_per_value_thresholds_and_l2_norm_export_as_masked(backend):
    """One threshold per row (`per_value`) compared with the rows' L2 norms: the export keeps exactly the rows whose
    norm clears their own threshold, and serves what the masked supernet serves."""
    torch.manual_seed(0)
    sup = et.build_collection(POOLED, "optembed_supernet", per_value=True, norm="l2")
    weights = sup.store.weights()
    with torch.no_grad():  # each row's threshold: its own L2 norm, +-0.01 at random
        norms = torch.cat([w.norm(dim=1) for w in weights])
        sup.method.mask.thresholds.copy_(norms + 0.01 * torch.sign(torch.randn(norms.shape)))
    assert sup.method.mask.thresholds.numel() == sum(t.num_embeddings for t in POOLED)
    kept = sup.method.kept(weights)
    base = 0
    for w, k in zip(weights, kept):
        t = sup.method.mask.thresholds[base : base + w.shape[0]]
        assert torch.equal(k, (w.norm(dim=1) > t).nonzero().squeeze(1))
        base += w.shape[0]
    small = et.next_stage(sup, backend=backend, dims=[8, 4, 8])
    sup.eval()
    sup.method.set_dims([8, 4, 8])
    kjt = random_kjt(POOLED, batch_size=8, max_len=4, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(outputs(small, kjt), outputs(sup, kjt))
