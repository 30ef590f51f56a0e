"""`ColumnProgram`, a method's combine as data: against the same arithmetic written with autograd ops."""

import pytest
import torch

from embtables.program import ColumnProgram, Piece as P, Term as T


def test_column_program_matches_autograd():
    """The one-function combine of pooled `mixed_dim` and `qr`: copies, products, sums, projections into one flat
    weight (adjacent ones batched); input columns read once (gradients written in place) or twice (accumulated)."""
    once = ColumnProgram(23, [P(0, 3, (T(0, 3), T(3, 3)), "mult"), P(3, 2, (T(6, 2),)), P(5, 1, (T(8, 1),)),
                              P(6, 3, (T(9, 2, 0),)), P(9, 3, (T(11, 2, 6),)), P(12, 3, (T(13, 1, 12), T(14, 3))),
                              P(15, 3, (T(17, 3), T(20, 3)))])
    twice = ColumnProgram(4, [P(0, 2, (T(0, 2), T(2, 2)), "mult"), P(2, 2, (T(0, 2), T(2, 2)))])
    assert [p.count for p in once.pieces] == [1, 1, 2, 1, 1] and once.exact and not twice.exact  # merged, batched
    x, w = torch.randn(4, 23, dtype=torch.double, requires_grad=True), torch.randn(15, dtype=torch.double, requires_grad=True)
    W0, W1, W2 = w[:6].view(3, 2), w[6:12].view(3, 2), w[12:].view(3, 1)
    want = [x[:, 0:3] * x[:, 3:6], x[:, 6:9], x[:, 9:11] @ W0.t(), x[:, 11:13] @ W1.t(), x[:, 13:14] @ W2.t() + x[:, 14:17]]
    torch.testing.assert_close(once(x, w), torch.cat(want + [x[:, 17:20] + x[:, 20:23]], 1))
    torch.testing.assert_close(twice(x[:, :4], None), torch.cat([x[:, :2] * x[:, 2:4], x[:, :2] + x[:, 2:4]], 1))
    assert torch.autograd.gradcheck(lambda x, w: once(x, w), (x, w))
    assert torch.autograd.gradcheck(lambda x: twice(x, None), (x[:, :4].detach().requires_grad_(),))
    with pytest.raises(ValueError, match="tile the output"):
        ColumnProgram(4, [P(1, 2, (T(0, 2),))])
