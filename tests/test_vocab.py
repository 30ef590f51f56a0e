"""`Vocabulary`: frequency ranking, OOV, min_count, index counts, numpy and torch lookups agree with a dict."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from embtables.datasets.frequency import FrequencyCounter
from embtables.datasets.vocab import Vocabulary


def reference(values, counts, min_count):
    """Plain-Python ranking: count descending, then value ascending; dropped values share the last index."""
    kept = sorted((v, c) for v, c in zip(values, counts) if c >= min_count)
    kept.sort(key=lambda vc: -vc[1])
    return {v: i for i, (v, _) in enumerate(kept)}, len(kept)


@given(st.dictionaries(st.integers(-2**40, 2**40), st.integers(0, 50), max_size=60), st.integers(1, 5),
       st.lists(st.integers(-2**40, 2**40), max_size=30))
def test_lookup_and_counts_match_a_reference_dict(table, min_count, unseen):
    values, counts = np.array(list(table), dtype=np.int64), np.array(list(table.values()), dtype=np.int64)
    v = Vocabulary(values, counts, min_count=min_count)
    index, oov = reference(values.tolist(), counts.tolist(), min_count)
    assert v.num_embeddings == oov + 1 and v.oov_index == oov
    queries = np.array(values.tolist() + unseen, dtype=np.int64)
    expect = [index.get(q, oov) for q in queries.tolist()]
    assert v.lookup(queries).tolist() == expect
    assert v.lookup(torch.from_numpy(queries)).tolist() == expect
    ic = v.index_counts()
    assert ic.shape == (v.num_embeddings,) and ic.sum() == counts.sum()
    assert np.all(np.diff(ic[:-1]) <= 0)  # non-increasing over kept indices
    assert ic[-1] == counts[counts < min_count].sum()  # the OOV slot holds the dropped total
    assert [int(ic[index[x]]) for x in v.values.tolist()] == [table[x] for x in v.values.tolist()]


@given(st.dictionaries(st.integers(-2**40, 2**40), st.integers(0, 9), max_size=40), st.integers(1, 5),
       st.lists(st.integers(-2**40, 2**40), max_size=20))
def test_unknown_tells_never_given_ids_from_dropped_ones(table, min_count, unseen):
    v = Vocabulary(np.array(list(table), dtype=np.int64), np.array(list(table.values()), dtype=np.int64), min_count)
    queries = np.array(list(table) + unseen, dtype=np.int64).reshape(-1, 1)
    mask = v.unknown(queries)
    assert mask.shape == queries.shape and mask.dtype == bool
    assert mask.reshape(-1).tolist() == [q not in table for q in queries.reshape(-1).tolist()]
    assert (v.lookup(queries)[mask] == v.oov_index).all()  # unknown ids are OOV; dropped ones too, not unknown
    assert v.unknown(np.array([], dtype=np.int64)).shape == (0,)


def test_large_vocabulary_lookup_sorts_queries_and_agrees_with_a_dict():
    rng = np.random.default_rng(1)
    values = rng.choice(1 << 40, size=100_000, replace=False)
    counts = rng.integers(1, 1000, size=values.size)
    v = Vocabulary(values, counts, min_count=10)
    index, oov = reference(values.tolist(), counts.tolist(), 10)
    queries = np.concatenate([rng.choice(values, 5000), rng.integers(0, 1 << 40, 500)]).reshape(50, 110)
    expect = np.array([index.get(q, oov) for q in queries.reshape(-1).tolist()]).reshape(50, 110)
    assert np.array_equal(v.lookup(queries), expect)
    assert np.array_equal(v.lookup(torch.from_numpy(queries)).numpy(), expect)


def test_ties_break_by_value_and_missing_is_an_ordinary_value():
    v = Vocabulary(np.array([9, -1, 4, 7]), np.array([3, 5, 3, 1]), min_count=2)
    assert v.values.tolist() == [-1, 4, 9]
    assert v.lookup(np.array([[-1, 9], [7, 123]])).tolist() == [[0, 2], [3, 3]]
    assert v.index_counts().tolist() == [5, 3, 3, 1]


def test_empty_vocabulary_maps_everything_to_oov():
    v = Vocabulary(np.array([5]), np.array([1]), min_count=2)
    assert v.num_embeddings == 1 and v.lookup(np.array([5, 6])).tolist() == [0, 0]
    assert v.lookup(torch.tensor([5])).tolist() == [0] and v.index_counts().tolist() == [1]


def test_from_frequency_counter():
    c = FrequencyCounter(["f"])
    for chunk in ([3, 3, 8], [8, 8, -1], [3]):
        c.add("f", np.array(chunk))
    v = Vocabulary(*c.result()["f"])
    assert v.values.tolist() == [3, 8, -1] and v.index_counts().tolist() == [3, 3, 1, 0]


@pytest.mark.parametrize("kw, match", [
    (dict(values=np.array([1, 1]), counts=np.array([1, 2])), "distinct"),
    (dict(values=np.array([1, 2]), counts=np.array([1])), "equal length"),
    (dict(values=np.array([1.5]), counts=np.array([1])), "integers"),
    (dict(values=np.array([1]), counts=np.array([-1])), "counts must be >= 0"),
    (dict(values=np.array([1]), counts=np.array([1]), min_count=0), "min_count must be an int >= 1"),
])
def test_invalid_input_is_named(kw, match):
    with pytest.raises(ValueError, match=match):
        Vocabulary(**kw)


def test_torch_lookup_rejects_non_int64():
    with pytest.raises(TypeError, match="int64"):
        Vocabulary(np.array([1]), np.array([1])).lookup(torch.tensor([1], dtype=torch.int32))


def test_frequency_counter_merges_many_pieces_exactly():
    rng = np.random.default_rng(0)
    c, pieces = FrequencyCounter(["a"]), [rng.integers(-5, 200_000, size=rng.integers(0, 40_000)) for _ in range(30)]
    for p in pieces:
        c.add("a", p)
    values, counts = c.result()["a"]
    expect_values, expect_counts = np.unique(np.concatenate(pieces), return_counts=True)
    assert np.array_equal(values, expect_values) and np.array_equal(counts, expect_counts)
    with pytest.raises(KeyError, match="unknown feature 'b'"):
        c.add("b", pieces[0])
