"""The `fused` backend: lookups, a method's column program and the optimizer step in C++ kernels, checked against
`nn.EmbeddingBag` and against the torch backend composing the same program with PyTorch ops."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torchrec import KeyedJaggedTensor

import embtables as et
from embtables.bags import Bags
from embtables.program import ColumnProgram, Piece, Term
from embtables.stores import BACKENDS, FusedStore, TorchStore
from embtables.stores.fused_store import kernel_program
from tests.conftest import copy_state, random_kjt

CPU = torch.device("cpu")


@given(st.lists(st.tuples(st.integers(1, 300), st.integers(1, 9)), min_size=1, max_size=4), st.integers(1, 6),
       st.integers(0, 5), st.booleans(), st.sampled_from(["sgd", "adagrad", "rowwise_adagrad"]), st.integers(0, 99))
def test_full_matches_nn_embedding_bag_and_its_optimizer(shapes, batch, max_len, weighted, optimizer, seed):
    """Any dims (no multiple of 4 needed), ragged and empty bags, per-id weights, every optimizer."""
    tables = [et.TableConfig(f"t{i}", n, d) for i, (n, d) in enumerate(shapes)]
    opt = et.SparseOptimizer(optimizer, lr=0.1)
    ref = et.build_collection(tables, backend="torch", optimizer=opt)
    ebc = et.build_collection(tables, backend="fused", optimizer=opt)
    copy_state(ref, ebc)
    kjt = random_kjt(tables, batch, max_len, seed, weighted=weighted, id_range=5)  # duplicate ids in a batch
    bags = [torch.nn.EmbeddingBag.from_pretrained(w.clone(), mode="sum") for w in ref.store.weights()]
    jts = kjt.to_dict()
    want = torch.cat([b(jts[t.name].values(), jts[t.name].offsets()[:-1],
                        per_sample_weights=jts[t.name].weights_or_none()) for b, t in zip(bags, tables)], 1)
    outs = [m(kjt).values() for m in (ref, ebc)]
    torch.testing.assert_close(outs[1], want, rtol=1e-5, atol=1e-6)
    target = torch.randn(outs[0].shape, generator=torch.Generator().manual_seed(seed))
    for out in outs:
        (out * target).sum().backward()
    sparse = ref.sparse_optimizer()
    sparse.step()
    for a, b in zip(ref.store.weights(), ebc.store.weights()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    if optimizer != "sgd":  # the accumulators, table after table: one per row (row-wise) or per element
        state = torch.cat([sparse.state[p]["sum"].reshape(-1) for p in ref.store.weight])
        torch.testing.assert_close(ebc.store.state, state, rtol=1e-5, atol=1e-7)


def _program_case() -> tuple[list[et.PhysicalTable], list[et.Lookup], ColumnProgram, int]:
    """Five lookups of widths 4, 4, 4, 8, 2 and a program using every kind of piece: a product of three lookups,
    a copy spanning two lookups' columns, a sum of a copy and a projection, a repeated projection, and a lookup
    read twice (so the program is not exact)."""
    tables = [et.PhysicalTable(f"p{i}", r, d, -0.5, 0.5) for i, (r, d) in enumerate([(30, 4), (7, 4), (11, 4), (40, 8), (9, 2)])]
    lookups = [et.Lookup(f"l{i}", i, True) for i in range(5)]
    # x columns: l0 [0, 4), l1 [4, 8), l2 [8, 12), l3 [12, 20), l4 [20, 22)
    pieces = [
        Piece(0, 4, (Term(0, 4), Term(4, 4), Term(8, 4)), "mult"),  # l0 * l1 * l2
        Piece(4, 6, (Term(2, 6),)),                                 # copy: l0's last 2 columns, l1's first 4
        Piece(10, 4, (Term(8, 4), Term(20, 2, 0))),                 # l2 + P0 l4
        Piece(14, 3, (Term(12, 4, 8),)),                            # P1 l3[:4]
        Piece(17, 3, (Term(16, 4, 20),)),                           # P2 l3[4:], repeats P1's shape: one batched piece
    ]
    return tables, lookups, ColumnProgram(22, pieces), 32


@pytest.mark.parametrize("weighted", [False, True])
def test_column_program_matches_the_torch_composition(weighted):
    tables, lookups, program, wsize = _program_case()
    assert not program.exact and any(p.count > 1 for p in program.pieces)
    opt = et.SparseOptimizer("sgd", lr=1.0)  # w - lr g: weight deltas are the gradients
    ref, fused = TorchStore(tables, lookups, opt, CPU), FusedStore(tables, lookups, opt, CPU)
    with torch.no_grad():
        for a, b in zip(ref.weights(), fused.weights()):
            b.copy_(a)
    g = torch.Generator().manual_seed(3)
    B = 7
    lengths = torch.randint(0, 4, (5 * B,), generator=g)
    values = torch.cat([torch.randint(0, t.num_embeddings, (int(n),), generator=g)
                        for t, n in zip(tables, lengths.view(5, B).sum(1))])
    psw = torch.rand(values.numel(), generator=g, requires_grad=True) if weighted else None
    bags = Bags(values, torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]), psw,
                lengths.view(5, B).sum(1).tolist(), B)
    weight = torch.randn(wsize, generator=g, requires_grad=True)
    target = torch.randn(B, program.width_out, generator=g)
    want = program(ref.pooled(bags), weight)
    got = fused.pooled_program(bags, program, weight)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    before = [w.clone() for w in fused.weights()]
    (want * target).sum().backward()
    grads_ref = [weight.grad.clone()] + ([psw.grad.clone()] if weighted else [])
    weight.grad = None
    if weighted:
        psw.grad = None
    (got * target).sum().backward()
    grads = [weight.grad] + ([psw.grad] if weighted else [])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for w, w0, t in zip(fused.weights(), before, ref.weight):
        torch.testing.assert_close(w0 - w, t.grad.to_dense(), rtol=1e-5, atol=1e-5)


def test_kernel_program_pools_plain_copies_straight_into_the_output():
    # lookup 0 is copied whole to output columns [4, 8); lookups 1 and 2 multiply into [0, 4)
    program = ColumnProgram(12, [Piece(0, 4, (Term(4, 4), Term(8, 4)), "mult"), Piece(4, 4, (Term(0, 4),))])
    k = kernel_program(program, [4, 4, 4])
    assert k.cols.tolist() == [[4, -1, -1], [-1, 0, 4]] and k.width_x == 8
    assert k.spec.tolist() == [1, 0, 4, 2, 1, 0, 4, -1, 2, 0, 4, -1]
    # a copy is cut at lookup boundaries; lookup 1, then copied whole, goes straight to output column 2, and
    # lookup 0, read in two pieces, goes to x
    cut = kernel_program(ColumnProgram(8, [Piece(0, 6, (Term(2, 6),)), Piece(6, 2, (Term(0, 2),))]), [4, 4])
    assert cut.cols.tolist() == [[-1, 2], [0, -1]] and cut.width_x == 4
    assert cut.spec.tolist() == [0, 0, 2, 1, 0, 2, 2, -1, 0, 6, 2, 1, 0, 0, 2, -1]


def test_a_shared_table_is_split_across_threads():
    """One table for several threads (unified's case): the optimizer step splits its rows into parts by a hash
    of the row id, each part updating its own rows; many duplicate ids across the five features."""
    tables = [et.TableConfig("one", 5000, 8, feature_names=tuple(f"f{i}" for i in range(5)))]
    opt = et.SparseOptimizer("rowwise_adagrad", lr=0.1)
    ref, ebc = (et.build_collection(tables, backend=b, optimizer=opt) for b in ("torch", "fused"))
    copy_state(ref, ebc)
    kjt = random_kjt(tables, batch_size=2000, max_len=2, seed=4)
    for m in (ref, ebc):
        m(kjt).values().sum().backward()
    ref.sparse_optimizer().step()
    torch.testing.assert_close(ebc.store.weights()[0], ref.store.weights()[0], rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_resumes_training_exactly():
    tables = [et.TableConfig("a", 500, 6), et.TableConfig("b", 40, 6)]
    a = et.build_collection(tables, "qr", 0.3, backend="fused", threshold=10)
    a(random_kjt(tables, 8, seed=1)).values().sum().backward()  # one step: non-zero optimizer state
    assert a.store.state.abs().sum() > 0
    b = et.build_collection(tables, "qr", 0.3, backend="fused", threshold=10)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        m(random_kjt(tables, 8, seed=2)).values().sum().backward()
    assert torch.equal(a.store.weight, b.store.weight) and torch.equal(a.store.state, b.store.state)


def test_bad_ids_and_devices_raise_clearly():
    store = FusedStore([et.PhysicalTable("t", 5, 4, -1.0, 1.0)], [et.Lookup("f", 0, True)],
                       et.SparseOptimizer(), CPU)
    with pytest.raises(RuntimeError, match=r"id 5 of lookup 0 is outside \[0, 5\)"):
        store.pooled(Bags(torch.tensor([1, 5]), torch.tensor([0, 2]), None, [2], 1))
    with pytest.raises(ValueError, match="runs on the CPU"):
        FusedStore([et.PhysicalTable("t", 5, 4, -1.0, 1.0)], [et.Lookup("f", 0, True)], et.SparseOptimizer(),
                   torch.device("meta"))


def test_inference_mode_and_no_grad_leave_the_weights_alone():
    tables = [et.TableConfig("a", 100, 4)]
    ebc = et.build_collection(tables, backend="fused")
    kjt = KeyedJaggedTensor(["a"], torch.tensor([1, 2, 3]), lengths=torch.tensor([2, 1]))
    before = ebc.store.weight.clone()
    with torch.inference_mode():
        x = ebc(kjt).values()
    with torch.no_grad():
        y = ebc(kjt).values()
    assert torch.equal(x, y) and torch.equal(before, ebc.store.weight)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_per_id_rows_ignore_per_sample_weights_on_every_store(backend):
    """A store's per-id rows are the table's rows; a method that weighs them (multihash's importance on unpooled
    tables) does so in combine. The fused store used to apply the weights too, so they counted twice."""
    from embtables.stores import store_class

    tables, lookups = [et.PhysicalTable("t", 20, 4, -1.0, 1.0)], [et.Lookup("l", 0, False)]
    store = store_class(backend)(tables, lookups, et.SparseOptimizer(), CPU)
    ids = torch.tensor([3, 5, 3])
    bags = Bags(ids, torch.tensor([0, 3]), torch.tensor([2.0, 3.0, 4.0]), [3], 1)
    with torch.no_grad():
        _, rows = store(bags)
    torch.testing.assert_close(rows, store.weights()[0][ids])


def test_ids_changed_between_forward_and_backward_cannot_touch_other_rows():
    """Backward updates the rows forward read: ids changed in place meanwhile raise autograd's error, and ids
    changed behind autograd's back (through .data) fail the kernel's bounds check; the table is untouched."""
    ebc = et.build_collection([et.TableConfig("t", 10, 4)], backend="fused")
    before = ebc.store.weight.clone()
    ids = torch.tensor([1, 2, 3])
    out = ebc(KeyedJaggedTensor(["t"], ids, lengths=torch.tensor([1, 1, 1]))).values()
    ids[0] = 10**9
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()
    ids = torch.tensor([1, 2, 3])
    out = ebc(KeyedJaggedTensor(["t"], ids, lengths=torch.tensor([1, 1, 1]))).values()
    ids.data[0] = 10**9  # no version bump: autograd cannot see it
    with pytest.raises(RuntimeError, match="fused store backward: id 1000000000 of table 0 is outside \\[0, 10\\)"):
        out.sum().backward()
    assert torch.equal(ebc.store.weight, before)
