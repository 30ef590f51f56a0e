"""Where torchrec expects an `EmbeddingBagCollection`, a collection goes: torchrec's own DLRM takes it and, at the
trivial setting (`full`), gives what it gives with a real EBC of the same weights; what torchrec cannot read is
refused with the reason."""

from __future__ import annotations

import pytest
import torch
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor
from torchrec.models.dlrm import DLRM

import embtables as et

TABLES = [et.TableConfig("a", 1000, 8), et.TableConfig("b", 500, 8, feature_names=("b1", "b2"), pooling="mean")]


def _kjt() -> KeyedJaggedTensor:
    return KeyedJaggedTensor(["a", "b1", "b2"], torch.tensor([1, 999, 3, 4, 5, 499, 7]),
                             lengths=torch.tensor([2, 0, 1, 1, 2, 1]))


@pytest.mark.parametrize("backend", ["torch", "torchrec"])
def test_torchrecs_dlrm_takes_a_collection_and_equals_it_on_an_ebc(backend: str) -> None:
    ours = et.build_collection(TABLES, "full", backend=backend)
    configs = ours.embedding_bag_configs()
    assert [(c.name, c.num_embeddings, c.embedding_dim, c.feature_names, c.pooling.value) for c in configs] == [
        ("a", 1000, 8, ["a"], "SUM"), ("b", 500, 8, ["b1", "b2"], "MEAN")]
    ebc = EmbeddingBagCollection(tables=configs)
    with torch.no_grad():
        for c, w in zip(configs, ours.store.weights()):
            ebc.embedding_bags[c.name].weight.copy_(w)
    models = []
    for collection in (ours, ebc):
        torch.manual_seed(0)
        models.append(DLRM(embedding_bag_collection=collection, dense_in_features=3, dense_arch_layer_sizes=[8],
                           over_arch_layer_sizes=[4, 1]))
    dense = torch.randn(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(models[0](dense, _kjt()), models[1](dense, _kjt()))
    assert ours.device == torch.device("cpu")


def test_compressed_collection_in_torchrecs_dlrm_trains() -> None:
    ours = et.build_collection(TABLES, "qr", 0.3, backend="torchrec")
    model = DLRM(embedding_bag_collection=ours, dense_in_features=3, dense_arch_layer_sizes=[8],
                 over_arch_layer_sizes=[4, 1])
    before = [w.clone() for w in ours.store.weights()]
    model(torch.randn(2, 3), _kjt()).sum().backward()  # the tables' optimizer runs inside backward
    assert any(not torch.equal(a, b) for a, b in zip(before, ours.store.weights()))


def test_what_torchrec_cannot_read_is_refused() -> None:
    wide = et.build_collection(TABLES, "multihash", 0.3, importance=True, append_weights=True)
    with pytest.raises(ValueError, match=r"gives features of another width than their table's dim \(a: 10 not 8"):
        wide.embedding_bag_configs()
    unpooled = et.build_collection([et.TableConfig("i", 100, 8, pooling="none")], "hash", 0.5)
    with pytest.raises(ValueError, match="use embedding_configs"):
        unpooled.embedding_bag_configs()
    assert [c.name for c in unpooled.embedding_configs()] == ["i"]
    with pytest.raises(ValueError, match="use embedding_bag_configs"):
        wide.embedding_configs()
