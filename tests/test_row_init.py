"""The torchrec store's tables drawn in seeded row blocks (`embtables/stores/row_init.py`), and the store built on the
meta device: any shard's piece equals that piece of the whole draw, the meta store allocates nothing and refuses
what needs its tables, and the model around it draws the same whatever the store's device. (Two ranks drawing
their shards and training as one process: tests/test_sharded_methods.py.)"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.config import PhysicalTable
from embtables.models import DLRM
from embtables.stores.row_init import BLOCK_ROWS, fill_rows

TABLES = [et.TableConfig("a", 9_000, 8), et.TableConfig("b", 300, 4, pooling="mean")]


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 3 * BLOCK_ROWS + 5), dim=st.integers(1, 6), data=st.data())
def test_a_piece_is_that_piece_of_the_whole_draw(rows: int, dim: int, data) -> None:
    t = PhysicalTable("t", rows, dim, -0.3, 0.2)
    row0 = data.draw(st.integers(0, rows - 1))
    n = data.draw(st.integers(1, rows - row0))
    col0 = data.draw(st.integers(0, dim - 1))
    m = data.draw(st.integers(1, dim - col0))
    whole, piece = torch.empty(rows, dim), torch.empty(n, m)
    fill_rows(whole, 11, 2, t)
    fill_rows(piece, 11, 2, t, row0, col0)
    assert torch.equal(piece, whole[row0 : row0 + n, col0 : col0 + m])
    assert whole.min() >= -0.3 and whole.max() <= 0.2
    other = torch.empty(rows, dim)
    fill_rows(other, 11, 3, t)  # another table of the store draws other rows
    assert not torch.equal(other, whole) or rows * dim == 0


def test_a_piece_outside_the_table_is_refused() -> None:
    t = PhysicalTable("t", 10, 4, -0.1, 0.1)
    with pytest.raises(ValueError, match=r"table 't': rows \[8, 12\) x columns \[0, 4\) lie outside its 10 x 4"):
        fill_rows(torch.empty(4, 4), 0, 0, t, row0=8)


def _model(device: str) -> DLRM:
    torch.manual_seed(0)
    c = et.build_collection(TABLES, "qr", 0.2, backend="torchrec", device=device)
    return DLRM(c, dense_in=2, bottom=(8, 8), top=(8,)).to("cpu")


def test_a_meta_store_allocates_nothing_and_refuses_what_needs_tables() -> None:
    lazy, whole = _model("meta"), _model("cpu")
    store = lazy.embeddings.store
    assert store.deferred and all(p.is_meta for p in store.parameters())  # .to("cpu") left them alone
    assert lazy.embeddings.memory_bytes() == whole.embeddings.memory_bytes()
    # the model around the store drew the same: torchrec's own draws are kept out of torch's generator
    dense = {k: v for k, v in whole.state_dict().items() if "store" not in k}
    for k, v in lazy.state_dict().items():
        if "store" not in k:
            assert torch.equal(v, dense[k]), k
    assert store._init_seed == whole.embeddings.store._init_seed
    kjt = KeyedJaggedTensor(["a", "b"], torch.tensor([1, 2, 3]), lengths=torch.tensor([1, 1, 1, 0]))
    with pytest.raises(RuntimeError, match="built on the meta device and are not allocated yet; et.shard"):
        lazy.embeddings(kjt)
    with pytest.raises(RuntimeError, match="not allocated yet"):
        store.weights()
    with pytest.raises(RuntimeError, match="et.shard first"):
        store.init_shards()


def test_the_whole_store_draws_its_tables_in_row_blocks() -> None:
    store = _model("cpu").embeddings.store
    for i, (t, w) in enumerate(zip(store.tables, store.weights())):
        expected = torch.empty(t.num_embeddings, t.embedding_dim)
        fill_rows(expected, store._init_seed, i, t)
        assert torch.equal(w, expected)
    before = [w.clone() for w in store.weights()]
    store.reset_parameters(torch.Generator().manual_seed(5))  # a new seed, a new draw
    assert all(not torch.equal(a, b) for a, b in zip(before, store.weights()))
