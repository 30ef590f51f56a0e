"""Single-table drop-ins behave like torch.nn.EmbeddingBag / torch.nn.Embedding."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import embtables as et


def torch_twin(bag: et.EmbeddingBag, mode: str, include_last_offset: bool = False) -> torch.nn.EmbeddingBag:
    w = bag.collection.store.weights()[0]
    ref = torch.nn.EmbeddingBag(w.shape[0], w.shape[1], mode=mode, include_last_offset=include_last_offset)
    with torch.no_grad():
        ref.weight.copy_(w)
    return ref


@given(
    lengths=st.lists(st.integers(0, 5), min_size=1, max_size=8),
    mode=st.sampled_from(["sum", "mean"]),
    include_last=st.booleans(),
    weighted=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_embedding_bag_matches_torch_with_offsets(lengths, mode, include_last, weighted, seed):
    weighted = weighted and mode == "sum"
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    ids = torch.randint(0, 50, (n,), generator=g)
    offsets = torch.tensor([0] + lengths).cumsum(0)
    offsets = offsets if include_last else offsets[:-1]
    w = torch.rand(n, generator=g) if weighted else None
    bag = et.EmbeddingBag(50, 8, mode, include_last_offset=include_last)
    ref = torch_twin(bag, mode, include_last)
    with torch.no_grad():
        torch.testing.assert_close(bag(ids, offsets, w), ref(ids, offsets, per_sample_weights=w))


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_embedding_bag_matches_torch_2d(mode):
    bag = et.EmbeddingBag(30, 4, mode)
    ids = torch.randint(0, 30, (5, 3))
    with torch.no_grad():
        torch.testing.assert_close(bag(ids), torch_twin(bag, mode)(ids))


def test_embedding_bag_gradients_match_torch():
    bag = et.EmbeddingBag(30, 4, "sum")
    ref = torch_twin(bag, "sum")
    ids, offsets = torch.tensor([1, 2, 2, 7]), torch.tensor([0, 1, 1])
    bag(ids, offsets).pow(2).sum().backward()
    ref(ids, offsets).pow(2).sum().backward()
    torch.testing.assert_close(bag.collection.store.weight[0].grad.to_dense(), ref.weight.grad)


def test_embedding_bag_input_errors():
    bag = et.EmbeddingBag(10, 4)
    with pytest.raises(ValueError, match="offsets are required"):
        bag(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"offsets\[0\] must be 0"):
        bag(torch.tensor([1, 2]), torch.tensor([1]))
    with pytest.raises(ValueError, match="non-decreasing"):
        bag(torch.tensor([1, 2, 3]), torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="last offset"):
        bag(torch.tensor([1, 2]), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="per_sample_weights"):
        bag(torch.tensor([1, 2]), torch.tensor([0]), torch.ones(3))
    with pytest.raises(TypeError, match="integer ids"):
        bag(torch.tensor([1.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match="mode='sum'"):
        et.EmbeddingBag(10, 4, "mean")(torch.tensor([1]), torch.tensor([0]), torch.ones(1))
    with pytest.raises(ValueError, match="mode"):
        et.EmbeddingBag(10, 4, "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outside"):
        bag(torch.tensor([10]), torch.tensor([0]))


def test_embedding_matches_torch_for_any_shape():
    emb = et.Embedding(20, 4)
    ref = torch.nn.Embedding(20, 4)
    with torch.no_grad():
        ref.weight.copy_(emb.collection.store.weights()[0])
        for shape in [(7,), (2, 3), (2, 1, 4), (0,)]:
            ids = torch.randint(0, 20, shape)
            torch.testing.assert_close(emb(ids), ref(ids))


def test_hash_drop_ins_memory_and_shapes():
    bag = et.HashEmbeddingBag(10_000_000, 16, buckets=1000, seed=3)
    assert bag.memory_bytes() == 1000 * 16 * 4 + 8
    assert bag(torch.tensor([[5, 2**40], [7, 9]])).shape == (2, 16)
    emb = et.HashEmbedding(10_000_000, 16, budget=0.001)
    assert emb.memory_bytes() <= 0.001 * 10_000_000 * 16 * 4
    assert emb(torch.tensor([[1, 2, 3]])).shape == (1, 3, 16)
    # the same id always lands on the same row
    out = emb(torch.tensor([123, 123]))
    assert torch.equal(out[0], out[1])


DROP_INS = [  # (bag, embedding, method, options the drop-in fixes, whether it takes counts)
    (et.HashEmbeddingBag, et.HashEmbedding, "hash", {}, False),
    (et.MultiHashEmbeddingBag, et.MultiHashEmbedding, "multihash", {}, True),
    (et.QREmbeddingBag, et.QREmbedding, "qr", {}, False),
    (et.MixedDimEmbeddingBag, et.MixedDimEmbedding, "mixed_dim", {"granularity": "block"}, True),
]


@pytest.mark.parametrize("bag_cls, emb_cls, method, fixed, takes_counts", DROP_INS, ids=[d[2] for d in DROP_INS])
def test_method_drop_ins_take_exactly_their_methods_options(bag_cls, emb_cls, method, fixed, takes_counts):
    """Signatures come from the method's Options: every option once, with its default; fixed ones absent;
    `counts` only where the method reads counts."""
    import dataclasses
    import inspect

    options = {f.name: f.default for f in dataclasses.fields(et.get_method(method).Options) if f.name not in fixed}
    for cls, base in ((bag_cls, et.EmbeddingBag), (emb_cls, et.Embedding)):
        assert cls.__name__ in et.__all__
        params = inspect.signature(cls).parameters
        assert {n: params[n].default for n in options} == options
        assert not set(fixed) & set(params)
        common = set(inspect.signature(base).parameters) - {"method", "options"} - (set() if takes_counts else {"counts"})
        assert set(params) == common | set(options)
        assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in options)
    counts = {"counts": torch.arange(1000, 0, -1)} if takes_counts else {}
    with pytest.raises(TypeError, match="unknown option"):
        bag_cls(1000, 8, budget=0.1, no_such_option=1, **counts)
    for name, value in fixed.items():
        with pytest.raises(TypeError, match=f"sets \\['{name}'\\] itself"):
            bag_cls(1000, 8, **counts, **{name: value})
    if not takes_counts:
        with pytest.raises(TypeError, match="reads no id counts"):
            bag_cls(1000, 8, budget=0.1, counts=torch.arange(1000, 0, -1))


def test_mixed_dim_drop_ins_need_counts():
    for cls in (et.MixedDimEmbeddingBag, et.MixedDimEmbedding):
        with pytest.raises(ValueError, match="needs counts="):
            cls(1000, 8)


def test_method_drop_ins_equal_the_generic_drop_in_with_that_method():
    torch.manual_seed(0)
    a = et.QREmbeddingBag(5000, 8, "mean", collisions=70, operation="add", include_last_offset=True)
    torch.manual_seed(0)
    b = et.EmbeddingBag(5000, 8, "mean", method="qr", collisions=70, operation="add", include_last_offset=True)
    assert a.collection.plan == b.collection.plan
    ids, offsets = torch.tensor([4999, 3, 70, 71]), torch.tensor([0, 1, 4])
    with torch.no_grad():
        torch.testing.assert_close(a(ids, offsets), b(ids, offsets))
