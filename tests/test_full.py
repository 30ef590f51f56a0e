"""`full` equals torch.nn.EmbeddingBag and torchrec.EmbeddingBagCollection given the same weights."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.modules.embedding_configs import PoolingType

import embtables as et
from tests.conftest import random_kjt

BACKENDS = ["torch", "fbgemm"]


def reference_bag(weight: torch.Tensor, mode: str) -> torch.nn.EmbeddingBag:
    bag = torch.nn.EmbeddingBag(weight.shape[0], weight.shape[1], mode=mode)
    with torch.no_grad():
        bag.weight.copy_(weight)
    return bag


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    n=st.integers(1, 300),
    d=st.sampled_from([4, 8, 12]),
    batch=st.integers(1, 9),
    max_len=st.integers(0, 6),
    mode=st.sampled_from(["sum", "mean"]),
    weighted=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_full_matches_nn_embedding_bag(backend, n, d, batch, max_len, mode, weighted, seed):
    weighted = weighted and mode == "sum"
    table = et.TableConfig("t", n, d, pooling=mode)
    ebc = et.build_collection([table], "full", backend=backend)
    kjt = random_kjt([table], batch, max_len, seed=seed, weighted=weighted)
    ref = reference_bag(ebc.store.weights()[0], mode)
    expected = ref(kjt.values(), kjt.offsets()[:-1], per_sample_weights=kjt.weights_or_none())
    with torch.no_grad():
        got = ebc(kjt).values()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_matches_torchrec_ebc(backend):
    configs = [("a", 100, 8, "sum"), ("b", 7, 16, "mean"), ("c", 2000, 4, "sum")]
    tables = [et.TableConfig(n, r, d, feature_names=(f"{n}_x", f"{n}_y"), pooling=p) for n, r, d, p in configs]
    ours = et.build_collection(tables, "full", backend=backend)
    theirs = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=n, num_embeddings=r, embedding_dim=d, feature_names=[f"{n}_x", f"{n}_y"],
                pooling=PoolingType.SUM if p == "sum" else PoolingType.MEAN,
            )
            for n, r, d, p in configs
        ]
    )
    with torch.no_grad():
        for (name, *_), w in zip(configs, ours.store.weights()):
            theirs.embedding_bags[name].weight.copy_(w)
    kjt = random_kjt(tables, batch_size=6, max_len=5, seed=3)
    with torch.no_grad():
        a, b = ours(kjt), theirs(kjt)
    assert a.keys() == b.keys()
    torch.testing.assert_close(a.values(), b.values(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_bags_are_zero_and_mean_has_no_nan(backend):
    tables = [et.TableConfig("s", 10, 4), et.TableConfig("m", 10, 4, pooling="mean")]
    ebc = et.build_collection(tables, "full", backend=backend)
    kjt = KeyedJaggedTensor(["s", "m"], torch.tensor([1, 2]), lengths=torch.tensor([0, 1, 0, 1]))
    with torch.no_grad():
        out = ebc(kjt).values()
    assert torch.equal(out[0], torch.zeros(8))
    assert not out.isnan().any()
    # a batch with no ids at all
    empty = KeyedJaggedTensor(["s", "m"], torch.tensor([], dtype=torch.long), lengths=torch.zeros(6, dtype=torch.long))
    with torch.no_grad():
        assert torch.equal(ebc(empty).values(), torch.zeros(3, 8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_id_names_table_feature_and_value(backend):
    ebc = et.build_collection([et.TableConfig("tbl", 10, 4, feature_names=("f1", "f2"))], "full", backend=backend)
    for bad in (10, -1):
        kjt = KeyedJaggedTensor(["f1", "f2"], torch.tensor([1, 2, bad]), lengths=torch.tensor([1, 1, 0, 1]))
        with pytest.raises(ValueError, match=rf"id {bad} of feature 'f2'.*table 'tbl'"):
            ebc(kjt)


def test_bad_inputs_raise_clear_errors():
    ebc = et.build_collection([et.TableConfig("a", 10, 4), et.TableConfig("b", 10, 4)], "full")
    ok_lengths = torch.tensor([1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"\['b'\] are configured but missing"):
        ebc(KeyedJaggedTensor(["a"], torch.tensor([1, 2]), lengths=torch.tensor([1, 1])))
    with pytest.raises(TypeError, match="integers"):
        ebc(KeyedJaggedTensor(["a", "b"], torch.tensor([1.0, 2, 3, 4]), lengths=ok_lengths))
    with pytest.raises(ValueError, match="decrease"):
        ebc(KeyedJaggedTensor(["a", "b"], torch.tensor([1, 2, 3, 4]), offsets=torch.tensor([0, 2, 1, 3, 4])))
    with pytest.raises(ValueError, match="end at the number of ids"):
        ebc(KeyedJaggedTensor(["a", "b"], torch.tensor([1, 2, 3, 4]), offsets=torch.tensor([0, 1, 2, 3, 3])))
    with pytest.raises(ValueError, match="3 weights for 4 ids"):
        ebc(KeyedJaggedTensor(["a", "b"], torch.tensor([1, 2, 3, 4]), lengths=ok_lengths, weights=torch.ones(3)))
    with pytest.raises(TypeError, match="KeyedJaggedTensor"):
        ebc(torch.tensor([1, 2]))


def test_extra_features_are_ignored_and_order_follows_tables():
    ebc = et.build_collection([et.TableConfig("a", 10, 4), et.TableConfig("b", 10, 4)], "full")
    kjt = KeyedJaggedTensor(["z", "b", "a"], torch.tensor([9, 1, 2]), lengths=torch.tensor([1, 1, 1]))
    with torch.no_grad():
        out = ebc(kjt)
    w = ebc.store.weights()
    assert out.keys() == ["a", "b"]
    torch.testing.assert_close(out.values(), torch.cat([w[0][2], w[1][1]]).unsqueeze(0))


def test_full_rejects_budget_below_one():
    with pytest.raises(et.InfeasibleBudget) as e:
        et.plan([et.TableConfig("a", 10, 4)], "full", budget=0.5)
    assert e.value.smallest_budget == 1.0


def test_unpooled_full_matches_nn_embedding():
    table = et.TableConfig("seq", 50, 8, pooling="none")
    ec = et.build_collection([table], "full")
    kjt = random_kjt([table], batch_size=4, max_len=5, seed=1)
    with torch.no_grad():
        out = ec(kjt)
    w = ec.store.weights()[0]
    torch.testing.assert_close(out["seq"].values(), w[kjt.values()])
    assert torch.equal(out["seq"].lengths(), kjt.lengths())


def test_inference_mode_error_is_clear_on_fbgemm():
    ebc = et.build_collection([et.TableConfig("a", 10, 4)], "full", backend="fbgemm")
    kjt = KeyedJaggedTensor(["a"], torch.tensor([1]), lengths=torch.tensor([1]))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="no_grad"):
        ebc(kjt)
