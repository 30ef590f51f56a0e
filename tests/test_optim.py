"""The sparse Adagrads of the torch backend (`embtables.optim`) deduplicate gradients without `coalesce()` and
still follow their formulas exactly: compared with a plain reference that coalesces, over hypothesis-drawn sizes
with many duplicate ids; dense gradients are accepted too."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import embtables as et
from embtables.optim import RowWiseAdagrad, SparseAdagrad, sum_duplicates
from tests.conftest import random_kjt
from tests.host_reads import accelerator_paths, count_host_reads

OPTIMIZERS = {"rowwise_adagrad": RowWiseAdagrad, "adagrad": SparseAdagrad}


def reference_step(w: torch.Tensor, acc: torch.Tensor, grad: torch.Tensor, lr: float, eps: float,
                   rowwise: bool) -> None:
    """The formulas, on a coalesced gradient: duplicates summed first, then each touched row updated once."""
    g = grad.coalesce() if grad.is_sparse else grad.to_sparse(1)  # one row per index
    rows, values = g.indices()[0], g.values()
    acc[rows] += values.pow(2).mean(1) if rowwise else values.pow(2)
    std = acc[rows].sqrt() + eps
    w[rows] -= lr * values / (std.unsqueeze(1) if rowwise else std)


@given(
    rows=st.integers(1, 40),
    dim=st.integers(1, 9),
    ids=st.integers(0, 300),
    distinct=st.integers(1, 8),
    steps=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    name=st.sampled_from(sorted(OPTIMIZERS)),
    padded=st.booleans(),
)
def test_sparse_step_matches_the_coalescing_reference(rows, dim, ids, distinct, steps, seed, name, padded):
    """Both ways of deduplicating: padded (accelerators) and cut to the distinct rows (the CPU)."""
    with accelerator_paths() if padded else contextlib.nullcontext():
        step_and_compare(rows, dim, ids, distinct, steps, seed, name)


def step_and_compare(rows: int, dim: int, ids: int, distinct: int, steps: int, seed: int, name: str) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(rows, dim, generator=g))
    ref_w, ref_acc = w.detach().clone(), torch.zeros(rows if name == "rowwise_adagrad" else (rows, dim))
    opt = OPTIMIZERS[name]([w], lr=0.07, eps=1e-8)
    for _ in range(steps):
        # few distinct rows among many ids: most are duplicates, some rows untouched
        pool = torch.randint(0, rows, (distinct,), generator=g)
        index = pool[torch.randint(0, distinct, (ids,), generator=g)]
        scale = torch.randn(ids, 1, generator=g)
        (F.embedding(index, w, sparse=True) * scale).sum().backward()
        reference_step(ref_w, ref_acc, w.grad, 0.07, 1e-8, name == "rowwise_adagrad")
        opt.step()
        opt.zero_grad()
    torch.testing.assert_close(w.detach(), ref_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(opt.state[w]["sum"], ref_acc, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_dense_gradients_are_accepted(name):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 3))
    ref_w, ref_acc = w.detach().clone(), torch.zeros(6 if name == "rowwise_adagrad" else (6, 3))
    opt = OPTIMIZERS[name]([w], lr=0.1)
    for _ in range(2):
        w.grad = torch.randn(6, 3)
        reference_step(ref_w, ref_acc, w.grad, 0.1, opt.defaults["eps"], name == "rowwise_adagrad")
        opt.step()
    torch.testing.assert_close(w.detach(), ref_w)


def test_adagrad_matches_torch_optim_adagrad():
    """Same update as torch.optim.Adagrad (lr_decay 0, initial accumulator 0), which coalesces."""
    torch.manual_seed(1)
    a = torch.nn.Parameter(torch.randn(30, 4))
    b = torch.nn.Parameter(a.detach().clone())
    ours, theirs = SparseAdagrad([a], lr=0.05, eps=1e-8), torch.optim.Adagrad([b], lr=0.05, eps=1e-8)
    for _ in range(4):
        index = torch.randint(0, 6, (100,))
        for p, o in ((a, ours), (b, theirs)):
            F.embedding(index, p, sparse=True).pow(2).sum().backward()
            o.step()
            o.zero_grad()
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.state[a]["sum"], theirs.state[b]["sum"], rtol=1e-5, atol=1e-5)


def test_sum_duplicates_pads_with_zero_rows_of_touched_rows():
    ids, grads = torch.tensor([5, 2, 5, 5, 9]), torch.arange(5.0).unsqueeze(1)
    with accelerator_paths():
        rows, summed = sum_duplicates(ids, grads)
    assert rows[:3].tolist() == [2, 5, 9] and summed[:3, 0].tolist() == [1.0, 5.0, 4.0]
    assert set(rows[3:].tolist()) <= {2, 5, 9} and summed[3:].abs().sum() == 0  # padding: zero on touched rows
    rows, summed = sum_duplicates(ids, grads)  # on the CPU: cut to the distinct rows
    assert rows.tolist() == [2, 5, 9] and summed[:, 0].tolist() == [1.0, 5.0, 4.0]


@pytest.mark.parametrize("opt", ["rowwise_adagrad", "adagrad", "sgd"])
def test_torch_store_steps_without_coalescing_or_host_reads(opt):
    """The step itself reads nothing on the host (coalesce would: counted by the helper), and the state layout
    checkpoints read is kept: (rows,) row-wise, (rows, dim) Adagrad, created before the first step."""
    tables = [et.TableConfig("a", 50, 4, feature_names=("a1", "a2")), et.TableConfig("b", 3, 4)]
    c = et.build_collection(tables, "full", optimizer=et.SparseOptimizer(opt, lr=0.1))
    shapes = [None if s is None else tuple(s.shape) for s in c.store.optimizer_state()]
    assert shapes == {"rowwise_adagrad": [(50,), (3,)], "adagrad": [(50, 4), (3, 4)], "sgd": [None, None]}[opt]
    c(random_kjt(tables, batch_size=16, max_len=5, seed=2, id_range=3)).values().pow(2).sum().backward()
    with accelerator_paths(), count_host_reads() as reads:
        c.sparse_optimizer().step()
    assert reads.sites == [], reads.describe()
