"""No host synchronisation in the training hot path of the torch backend, counted on the CPU (`host_reads.py`).

A training step (forward, backward, the sparse optimizer's step) of a collection reads ONE tensor to the host:
the batch's ids per feature (Python ints that split the ids), bag-length bounds, the offsets' ends and, for
methods that check ids, each feature's smallest and largest id, all copied together by `embtables.inputs`
(`_to_host`). Nothing else reads, and nothing uploads Python data with a blocking copy. Two documented
exceptions read once more per batch, because a size depends on the data: multihash's hot rows under sum or mean
(how many rows each feature reads) and mixed_dim's frequency blocks (how many ids fall in each block).

The C++ CPU kernels (hashing, qr's digits, range checks) serve CPU tensors only, and the sparse optimizers cut
their padding off on the CPU only; the count runs without either (`accelerator_paths`), so the paths that run
on CUDA are the ones measured.
"""

from __future__ import annotations

import pytest
import torch
from torchrec import JaggedTensor, KeyedJaggedTensor

import embtables as et
from embtables.models import DIN, DLRM
from tests.conftest import method_options, random_kjt
from tests.host_reads import accelerator_paths, count_host_reads

POOLED = [et.TableConfig("a", 3000, 8, feature_names=("a1", "a2")), et.TableConfig("b", 40, 8),
          et.TableConfig("c", 900, 16, pooling="mean")]
UNPOOLED = [et.TableConfig("item", 3000, 8, feature_names=("hist", "target"), pooling="none"),
            et.TableConfig("cat", 50, 8, pooling="none")]
ONE_READ = 1  # the batch's one copy to the host: see the module docstring
# options whose remap sizes a tensor by the data, each one more read per batch (documented in the method's file)
EXTRA_READ = [("multihash", {"hot_rows": 6, "hash_all": True}),
              ("multihash", {"hot_rows": 6, "hash_all": True, "combine": "mean", "importance": True}),
              ("mixed_dim", {"granularity": "block", "blocks": 3, "alpha": 0.5})]
NO_EXTRA = [("multihash", {"hot_rows": 6, "hash_all": True, "combine": "concat"}),
            ("multihash", {"importance": True, "append_weights": True, "hash_all": True}),
            ("qr", {"pooling_order": "pool_first"}), ("qr", {"operation": "concat"}), ("unified", {"num_tables": 2})]


def values(out: object) -> torch.Tensor:
    return torch.cat([jt.values() for jt in out.values()]) if isinstance(out, dict) else out.values()  # type: ignore


def build(tables: list[et.TableConfig], method: str, options: dict, opt: str = "rowwise_adagrad") -> et.Collection:
    torch.manual_seed(0)
    counts = {f: torch.arange(t.num_embeddings, 0, -1) for t in tables for f in t.feature_names}  # ranked
    if method == "multihash" and tables is UNPOOLED and not options:
        options = {"hash_all": True}  # unpooled tables need one width
    budget = 0.3 if et.get_method(method).compresses else None
    return et.build_collection(tables, method, budget, counts=counts, optimizer=et.SparseOptimizer(opt, lr=0.1),
                               **method_options(method, tables, budget), **options)


def reads_of_a_step(c: et.Collection, kjt: KeyedJaggedTensor) -> "object":
    def step() -> None:
        values(c(kjt)).pow(2).sum().backward()
        c.sparse_optimizer().step()
        c.sparse_optimizer().zero_grad()

    with accelerator_paths():
        step()  # anything made once (the optimizer) is made here
        with count_host_reads() as reads:
            step()
    return reads


@pytest.mark.parametrize("opt", ["rowwise_adagrad", "adagrad", "sgd"])
@pytest.mark.parametrize("tables", [POOLED, UNPOOLED], ids=["pooled", "unpooled"])
@pytest.mark.parametrize("method", et.list_methods())
def test_a_training_step_reads_the_host_once(method, tables, opt):
    c = build(tables, method, {}, opt)
    for max_len in (1, 4):  # one id per bag (the fast paths of qr and unified) and ragged bags
        reads = reads_of_a_step(c, random_kjt(tables, batch_size=16, max_len=max_len, seed=max_len))
        assert (reads.reads, reads.uploads) == (ONE_READ, 0), reads.describe()


@pytest.mark.parametrize("tables", [POOLED, UNPOOLED], ids=["pooled", "unpooled"])
@pytest.mark.parametrize("method, options", EXTRA_READ + NO_EXTRA)
def test_method_options_read_at_most_once_more(method, options, tables):
    c = build(tables, method, options)
    reads = reads_of_a_step(c, random_kjt(tables, batch_size=16, max_len=4, seed=3))
    assert reads.reads == ONE_READ + ((method, options) in EXTRA_READ) and reads.uploads == 0, reads.describe()


@pytest.mark.parametrize("method", ["full", "hash", "qr"])
def test_weighted_and_reordered_batches_read_once(method):
    """Per-id weights, keys in another order with one the collection ignores, offsets given (the loaders')."""
    tables = [et.TableConfig("x", 500, 8), et.TableConfig("y", 60, 8, feature_names=("y1", "y2"))]
    c = build(tables, method, {})
    kjt = random_kjt(tables, batch_size=8, max_len=3, seed=5, weighted=True)
    parts = kjt.to_dict()  # build the input: the test may use torchrec's own helpers
    keys = ["y2", "zz", "x", "y1"]
    extra = JaggedTensor(torch.tensor([7, 7]), lengths=torch.tensor([1, 1] + [0] * 6), weights=torch.ones(2))
    jts = [parts[k] if k in parts else extra for k in keys]
    lengths = torch.cat([j.lengths() for j in jts])
    shuffled = KeyedJaggedTensor(keys, torch.cat([j.values() for j in jts]), torch.cat([j.weights() for j in jts]),
                                 lengths=lengths, offsets=torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]))
    reads = reads_of_a_step(c, shuffled)
    assert (reads.reads, reads.uploads) == (ONE_READ, 0), reads.describe()
    with torch.no_grad():
        torch.testing.assert_close(c(shuffled).values(), c(kjt).values())


def test_single_drop_ins_read_once():
    bag, emb = et.EmbeddingBag(100, 4), et.Embedding(100, 4)  # full: every id is checked
    calls = [lambda: bag(torch.tensor([1, 2, 99]), torch.tensor([0, 2])), lambda: bag(torch.tensor([[1, 2], [3, 4]])),
             lambda: emb(torch.tensor([[1, 2, 3]]))]
    for call in calls:
        with accelerator_paths(), count_host_reads() as reads:
            call().sum().backward()
        assert (reads.reads, reads.uploads) == (ONE_READ, 0), reads.describe()


def test_no_fbgemm_operator_or_extra_read_of_the_kjt(monkeypatch):
    """KJT.offsets() of a KJT built from lengths (and JaggedTensor.offsets()) run FBGEMM operators that its CPU
    build lacks for CUDA tensors; permute() and length_per_key() too, or read lengths once more. The collections
    and the models never call them."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("called a KeyedJaggedTensor method that needs FBGEMM operators or host reads")

    for name in ("offsets", "length_per_key", "offset_per_key", "permute", "to_dict", "__getitem__", "split"):
        monkeypatch.setattr(KeyedJaggedTensor, name, refuse)
    monkeypatch.setattr(JaggedTensor, "offsets", refuse)
    torch.manual_seed(0)
    dlrm = DLRM(build(POOLED, "qr", {}), dense_in=3, bottom=(8,), top=(8,))
    dlrm(torch.randn(16, 3), random_kjt(POOLED, batch_size=16, seed=1)).sum().backward()
    items = et.build_collection(UNPOOLED[:1], "hash", 0.3)
    din = DIN(items, mba_lambda=0.1, item_counts=torch.ones(3000), attention_hidden=(8,), mlp=(8,))
    kjt = KeyedJaggedTensor(["hist", "target"], torch.tensor([1, 2, 3, 9, 7]), lengths=torch.tensor([3, 0, 1, 1]))
    (din(torch.zeros(2, 0), kjt).sum() + din.regularization(kjt)).backward()


def test_the_range_check_in_the_batchs_read_names_a_bad_id():
    """Off the CPU the range check rides in the batch's one read; an id out of range still raises naming it, an
    ignored key's ids and hashed tables' ids are not checked."""
    c = et.build_collection([et.TableConfig("tbl", 10, 4, feature_names=("f1", "f2"))], "full")
    hashed = et.build_collection([et.TableConfig("tbl", 10, 4, feature_names=("f1", "f2"))], "hash", buckets=3)
    bag = et.EmbeddingBag(10, 4)
    with accelerator_paths():
        for bad in (10, -1):
            kjt = KeyedJaggedTensor(["z", "f2", "f1"], torch.tensor([99, 1, bad, 2]),
                                    lengths=torch.tensor([1, 0, 1, 1, 0, 1]))
            with pytest.raises(ValueError, match=rf"id {bad} of feature 'f2'.*table 'tbl'"):
                c(kjt)
            hashed(kjt)
            with pytest.raises(ValueError, match="outside"):
                bag(torch.tensor([3, bad]), torch.tensor([0, 1]))
        c(KeyedJaggedTensor(["z", "f2", "f1"], torch.tensor([99, 1, 9, 2]), lengths=torch.tensor([1, 0, 1, 1, 0, 1])))
