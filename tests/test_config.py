import pytest

import embtables as et


def test_table_config_defaults():
    t = et.TableConfig("C1", 10, 4)
    assert t.feature_names == ("C1",)
    assert t.pooling == "sum"
    assert t.full_bytes == 10 * 4 * 4


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(name="", num_embeddings=1, embedding_dim=1), "name"),
        (dict(name="t", num_embeddings=0, embedding_dim=1), "num_embeddings"),
        (dict(name="t", num_embeddings=1.5, embedding_dim=1), "num_embeddings"),
        (dict(name="t", num_embeddings=True, embedding_dim=1), "num_embeddings"),
        (dict(name="t", num_embeddings=1, embedding_dim=0), "embedding_dim"),
        (dict(name="t", num_embeddings=1, embedding_dim=1, pooling="max"), "pooling"),
        (dict(name="t", num_embeddings=1, embedding_dim=1, feature_names="abc"), "feature_names"),
        (dict(name="t", num_embeddings=1, embedding_dim=1, feature_names=("a", "a")), "feature_names"),
    ],
)
def test_table_config_rejects(kwargs, field):
    with pytest.raises(ValueError, match=field):
        et.TableConfig(**kwargs)


def test_table_config_is_frozen():
    t = et.TableConfig("C1", 10, 4)
    with pytest.raises(AttributeError):
        t.num_embeddings = 5  # type: ignore[misc]


def test_sparse_optimizer_validation():
    with pytest.raises(ValueError, match="name"):
        et.SparseOptimizer(name="adam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lr"):
        et.SparseOptimizer(lr=0)


def test_collection_rejects_bad_table_sets():
    with pytest.raises(ValueError, match="unique"):
        et.build_collection([et.TableConfig("a", 3, 4), et.TableConfig("a", 3, 4)])
    with pytest.raises(ValueError, match="one table only"):
        et.build_collection([et.TableConfig("a", 3, 4, feature_names=("x",)), et.TableConfig("b", 3, 4, feature_names=("x",))])
    with pytest.raises(ValueError, match="pooled"):
        et.build_collection([et.TableConfig("a", 3, 4), et.TableConfig("b", 3, 4, pooling="none")])
    with pytest.raises(ValueError, match="at least one"):
        et.build_collection([])
    with pytest.raises(ValueError, match="backend"):
        et.build_collection([et.TableConfig("a", 3, 4)], backend="tpu")
    with pytest.raises(ValueError, match="unknown method"):
        et.build_collection([et.TableConfig("a", 3, 4)], method="nope")


@pytest.mark.parametrize("budget", [0, -0.1, 1.5, "0.1", True])
def test_budget_must_be_a_fraction(budget):
    with pytest.raises(ValueError, match="budget"):
        et.plan([et.TableConfig("a", 100, 4)], "hash", budget=budget)
