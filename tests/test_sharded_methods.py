"""Every method shards with torchrec: a DLRM over a `torchrec`-store collection, sharded by `et.shard` on two gloo
processes, trains K steps on the same global batches as one process and gives the same losses and predictions;
its checkpoint, written by the two ranks, loads in one process on another store with equal outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from embtables.models import DLRM
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.app.distributed import free_port

# method -> budget; optembed learns its plan in stages and trains on one process (refused in `embtables train`)
METHODS = {"full": None, "hash": 0.3, "multihash": 0.3, "qr": 0.3, "mixed_dim": 0.3, "unified": 0.3}
TABLES = [et.TableConfig("a", 300, 8), et.TableConfig("b", 40, 8, pooling="mean"), et.TableConfig("c", 1000, 8),
          et.TableConfig("d", 7, 8, feature_names=("d1", "d2"))]
FEATURES = [f for t in TABLES for f in t.feature_names]
B, STEPS, WORLD = 16, 3, 2
# row-wise Adagrad allows table-wise placement only (on CPU torchrec shards pooled tables table- or column-wise);
# with SGD the second pass asks for column shards
OPTIMIZERS = {None: et.SparseOptimizer("rowwise_adagrad", lr=0.1), "column_wise": et.SparseOptimizer("sgd", lr=0.5)}


def _model(method: str, types: str | None = None, device: str = "cpu") -> DLRM:
    """On `device` "meta" the tables wait for et.shard, which draws each rank's shards."""
    torch.manual_seed(0)
    counts = {f: torch.arange(t.num_embeddings, 0, -1) for t in TABLES for f in t.feature_names}  # frequency-ranked
    collection = et.build_collection(TABLES, method, METHODS[method], backend="torchrec", optimizer=OPTIMIZERS[types],
                                     counts=counts, device=device)
    return DLRM(collection, dense_in=2, bottom=(8, 8), top=(8,))


def _batch(step: int, rows: slice = slice(None)) -> tuple[torch.Tensor, KeyedJaggedTensor, torch.Tensor]:
    """Global batch `step` (bags of 0-3 ids), cut to `rows`."""
    g = torch.Generator().manual_seed(step)
    lengths = torch.randint(0, 4, (len(FEATURES), B), generator=g)
    sizes = {t.name: t.num_embeddings for t in TABLES}
    table_of = {f: t.name for t in TABLES for f in t.feature_names}
    ids = [torch.randint(0, sizes[table_of[f]], (int(lengths[i].sum()),), generator=g) for i, f in enumerate(FEATURES)]
    dense, labels = torch.randn(B, 2, generator=g), torch.randint(0, 2, (B,), generator=g).float()
    values = []
    for i, v in enumerate(ids):
        starts = torch.cat([torch.zeros(1, dtype=torch.long), lengths[i].cumsum(0)])
        values += [v[starts[b] : starts[b + 1]] for b in range(B)[rows]]
    kjt = KeyedJaggedTensor(FEATURES, torch.cat(values), lengths=lengths[:, rows].reshape(-1))
    return dense[rows], kjt, labels[rows]


def _train(model: torch.nn.Module, forward: torch.nn.Module, store_params: set[int], rows: slice) -> list[float]:
    dense = torch.optim.SGD([p for p in model.parameters() if id(p) not in store_params], lr=0.1)
    losses = []
    for step in range(STEPS):
        x, kjt, y = _batch(step, rows)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(forward(x, kjt), y)
        dense.zero_grad()
        loss.backward()  # the tables are updated here, by the optimizer torchrec fuses into backward
        dense.step()
        losses.append(loss.item())
    return losses


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    rows = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
    result = {}
    for method, types in [(m, None) for m in METHODS] + [(m, "column_wise") for m in METHODS]:
        # the planner's pass builds the tables on meta (each rank draws its shards), the column-wise pass whole
        # (each rank copies its shards out of them): both must start as one process does
        model = _model(method, types, "meta" if types is None else "cpu")
        collection = model.embeddings
        unallocated = all(p.is_meta for p in collection.store.parameters())
        dmp = et.shard(model, types=None if types is None else [types])
        held = sum(v.numel() for table in collection.store._local_shards("weights") for _, v in table)
        store_params = {id(p) for p in collection.store.parameters()}
        losses = _train(model, dmp, store_params, rows)
        with torch.no_grad():
            x, kjt, _ = _batch(100, rows)
            logits = dmp(x, kjt).tolist()
            pooled = collection(kjt).values().tolist()
        key = method if types is None else f"{method}/{types}"
        path = Path(out, f"{key.replace('/', '_')}.pt")
        et.save_collection(collection, path)  # a collective: rank 0 writes
        result[key] = {"losses": losses, "logits": logits, "pooled": pooled, "sharding": et.sharding_table(dmp),
                       "unallocated": unallocated, "held": held}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()



@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("sharded")
    for attempt in range(2):  # the free port may be taken before the workers bind it: one more try
        try:
            mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=True, start_method="spawn")
            break
        except (mp.ProcessRaisedException, mp.ProcessExitedException):
            if attempt:
                raise
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize("types", [None, "column_wise"])
@pytest.mark.parametrize("method", list(METHODS))
def test_two_ranks_train_as_one_process(two_ranks, method: str, types: str | None) -> None:
    """The planner's choice (table-wise for tables this small), then every table row-wise."""
    _, ranks = two_ranks
    key = method if types is None else f"{method}/{types}"
    model = _model(method, types)
    losses = _train(model, model, {id(p) for p in model.embeddings.store.parameters()}, slice(None))
    with torch.no_grad():
        x, kjt, _ = _batch(100)
        logits = model(x, kjt)
    two = torch.tensor([r[key]["losses"] for r in ranks]).mean(0)  # each rank's loss is its half's mean
    torch.testing.assert_close(two, torch.tensor(losses), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(ranks[0][key]["logits"] + ranks[1][key]["logits"]), logits,
                               rtol=1e-4, atol=1e-5)
    print(f"{key}: " + ", ".join(f"{t} {kind} on ranks {r}" for t, kind, r in ranks[0][key]["sharding"]))
    kinds = {kind for _, kind, _ in ranks[0][key]["sharding"]}
    assert kinds <= set(et.sharding.sharding_types(OPTIMIZERS[types].name)), kinds
    if types is not None:
        assert kinds == {types}
    assert ranks[0][key]["sharding"] == ranks[1][key]["sharding"]
    # on meta no rank held a table before et.shard, and after it each holds its shards only
    assert [r[key]["unallocated"] for r in ranks] == [types is None] * WORLD
    total = sum(t.num_embeddings * t.embedding_dim for t in model.embeddings.plan.physical_tables)
    assert sum(r[key]["held"] for r in ranks) == total


@pytest.mark.parametrize("method", [*METHODS, *(f"{m}/column_wise" for m in METHODS)])
def test_checkpoint_of_two_ranks_loads_in_one_process(two_ranks, method: str) -> None:
    out, ranks = two_ranks
    path = out / f"{method.replace('/', '_')}.pt"
    for backend in ("torch", "fbgemm"):
        served = et.load_collection(path, backend=backend)
        with torch.no_grad():
            _, kjt, _ = _batch(100)
            pooled = served(kjt).values()
        torch.testing.assert_close(torch.tensor(ranks[0][method]["pooled"] + ranks[1][method]["pooled"]), pooled,
                                   rtol=1e-5, atol=1e-6)
    if method.endswith("column_wise"):
        return  # SGD keeps no state
    # the tables' optimizer state came back whole too: training goes on from it on one process
    state = torch.load(path, weights_only=True)["optimizer_state"]
    assert sorted(state) == sorted(t.name for t in served.plan.physical_tables)
    assert all(s.shape == (t.num_embeddings,) and (s > 0).any() for t, s in
               ((t, state[t.name]) for t in served.plan.physical_tables))


def test_shard_refuses_what_would_train_wrong() -> None:
    model = DLRM(et.build_collection(TABLES, "hash", 0.3, backend="fbgemm"), dense_in=2, bottom=(8, 8), top=(8,))
    with pytest.raises(ValueError, match="not on the torchrec store; build them with backend='torchrec'"):
        et.shard(model)
    with pytest.raises(ValueError, match="column shards keep row-wise Adagrad's accumulator per shard"):
        et.sharding._allowed("rowwise_adagrad", ["column_wise"])
    assert et.sharding._allowed("sgd", ["column_wise"]) == ["column_wise"]
