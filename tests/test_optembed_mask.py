"""OptEmbed's learned row mask (`embtables.methods._optembed_mask`): the long-tailed straight-through step, the
thresholded row mask with its penalty, and the supernet's dimension prefix masks."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from embtables.methods._optembed_mask import LongTailedStep, RowMask, apply_dims, dimension_prefix_mask, step_gradient

Z = [0.0, 0.2, -0.2, 0.4, -0.4, 0.7, -0.7, 1.0, -1.0, 1.5, -1.5]
G = [2.0, 1.2, 1.2, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.0, 0.0]


def test_step_gradient_breakpoints_and_autograd():
    z = torch.tensor(Z, dtype=torch.double, requires_grad=True)
    torch.testing.assert_close(step_gradient(z.detach()), torch.tensor(G, dtype=torch.double))
    (grad,) = torch.autograd.grad(LongTailedStep.apply(z).sum(), z)
    torch.testing.assert_close(grad, torch.tensor(G, dtype=torch.double))
    out = LongTailedStep.apply(z)
    assert out.tolist() == [float(v > 0) for v in Z]  # exactly 0 / 1, step(0) = 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=1, max_size=20))
def test_step_gradient_matches_formula(values):
    z = torch.tensor(values, dtype=torch.double)
    want = [2 - 4 * abs(v) if abs(v) <= 0.4 else 0.4 if abs(v) <= 1 else 0.0 for v in values]
    torch.testing.assert_close(step_gradient(z), torch.tensor(want, dtype=torch.double))


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_row_mask_zeros_exactly_the_rows_at_or_below_threshold(norm):
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(40, 5, generator=gen, dtype=torch.double)  # (N, D)
    field = torch.randint(0, 3, (40,), generator=gen)
    mask = RowMask(3, norm=norm).double()
    t = torch.tensor([1.5, 2.0, 2.5], dtype=torch.double)
    with torch.no_grad():
        mask.thresholds.copy_(t)
    norms = rows.abs().sum(-1) if norm == "l1" else rows.pow(2).sum(-1).sqrt()
    keep = norms > t[field]
    assert 0 < keep.sum() < 40
    out = mask(rows, field)
    assert torch.equal(out[keep], rows[keep]) and not out[~keep].any()
    assert torch.equal(mask.kept(rows[field == 1], 1), keep[field == 1])


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_threshold_gradient_by_hand(norm):
    gen = torch.Generator().manual_seed(1)
    rows = torch.randn(30, 4, generator=gen, dtype=torch.double)
    field = torch.randint(0, 2, (30,), generator=gen)
    grad_out = torch.randn(30, 4, generator=gen, dtype=torch.double)
    mask = RowMask(2, norm=norm).double()
    with torch.no_grad():
        mask.thresholds.copy_(torch.tensor([1.8, 2.2]))
    (got,) = torch.autograd.grad((mask(rows, field) * grad_out).sum(), mask.thresholds)
    norms = rows.abs().sum(-1) if norm == "l1" else rows.norm(dim=-1)
    z = norms - mask.thresholds.detach()[field]
    per_row = -(grad_out * rows).sum(-1) * step_gradient(z)  # d out / d t = -rows * g(z)
    want = torch.zeros(2, dtype=torch.double).index_add_(0, field, per_row)
    assert (step_gradient(z) > 0).any()
    torch.testing.assert_close(got, want)


def test_per_value_thresholds():
    rows = torch.tensor([[1.0, 1.0], [1.0, 1.0], [3.0, 0.0]])  # L1 norms 2, 2, 3
    mask = RowMask(2, per_value=True, num_rows=5)
    assert mask.thresholds.shape == (5,)
    with torch.no_grad():
        mask.thresholds.copy_(torch.tensor([0.0, 2.5, 1.0, 0.0, 3.0]))
    out = mask(rows, torch.tensor([0, 1, 1]), torch.tensor([1, 2, 4]))
    assert out.tolist() == [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    assert mask.kept(rows, 0, torch.tensor([1, 2, 4])).tolist() == [False, True, False]
    assert mask.kept(rows, 0).tolist() == [True, False, True]  # default rows 0, 1, 2


def test_penalty_value_and_gradient():
    mask = RowMask(3).double()
    with torch.no_grad():
        mask.thresholds.copy_(torch.tensor([0.0, 1.0, -0.5]))
    p = mask.penalty(0.3)
    t = mask.thresholds.detach()
    torch.testing.assert_close(p, 0.3 * torch.exp(-t).sum())
    (grad,) = torch.autograd.grad(p, mask.thresholds)
    torch.testing.assert_close(grad, -0.3 * torch.exp(-t))
    assert RowMask(4).penalty(1.0).item() == 4.0  # init t = 0


def test_dimension_prefix_mask_prefixes_uniform_and_seeded():
    dim = 6
    m = dimension_prefix_mask(4000, 5, dim, torch.Generator().manual_seed(3))  # 20k draws
    assert m.shape == (4000, 5, dim) and m.dtype == torch.float32
    lengths = m.sum(-1).long()  # (B, F)
    prefix = torch.arange(dim) < lengths[..., None]
    assert torch.equal(m.bool(), prefix) and lengths.min() >= 1 and lengths.max() <= dim
    freq = torch.bincount(lengths.flatten(), minlength=dim + 1)[1:].double() / lengths.numel()
    assert ((freq - 1 / dim).abs() < 0.3 / dim).all()
    again = dimension_prefix_mask(4000, 5, dim, torch.Generator().manual_seed(3))
    assert torch.equal(m, again)
    assert dimension_prefix_mask(3, 2, 1).eq(1).all()  # D = 1: the full width


def test_apply_dims():
    x = torch.randn(3, 2, 4)
    out = apply_dims(x, [2, 4])
    assert torch.equal(out[:, 0, :2], x[:, 0, :2]) and not out[:, 0, 2:].any()
    assert torch.equal(out[:, 1], x[:, 1])


def test_errors_name_the_option():
    with pytest.raises(ValueError, match="norm"):
        RowMask(2, norm="l3")
    with pytest.raises(ValueError, match="fields"):
        RowMask(0)
    with pytest.raises(ValueError, match="num_rows"):
        RowMask(2, per_value=True)
    with pytest.raises(ValueError, match="row_ids"):
        RowMask(2, per_value=True, num_rows=3)(torch.ones(1, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="num_rows"):
        RowMask(2, per_value=True, num_rows=3)(torch.ones(1, 2), torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="field ids"):
        RowMask(2)(torch.ones(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="field ids"):
        RowMask(2)(torch.ones(1, 2), torch.tensor([-1]))
    with pytest.raises(ValueError, match="dims"):
        apply_dims(torch.ones(1, 2, 3), [1, 4])
    with pytest.raises(ValueError, match="dims"):
        apply_dims(torch.ones(1, 2, 3), [1])
    with pytest.raises(ValueError, match="dim"):
        dimension_prefix_mask(1, 1, 0)
