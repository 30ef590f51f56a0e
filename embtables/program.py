"""`ColumnProgram`: a method's combine written as data, so that a store can run it inside its own kernels.

A method's combine builds its (B, W_out) output from column ranges of the store's pooled (B, W_in) output:
copies, elementwise products or sums of ranges, linear maps of ranges (projections). Composed from autograd ops
this costs a `split`, a `cat` of many narrow pieces (slow: one small copy per piece and row), and per range a
zero-filled gradient or an extra copy in backward; and autograd's gradient of a linear map's matrix, grad^T @ x,
takes a slow GEMM path on strided CPU inputs (~15x slower than (x^T @ grad)^T). `ColumnProgram` runs the whole
program as one autograd function that writes every piece straight into its output columns and every gradient
straight into its input columns. Stores that combine (`Store.combines`) run the same program inside their
lookup kernels (the fused store's C++ translation: `stores.fused_store.kernel_program`).

Methods and stores both import this module; it imports neither.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


@dataclass(frozen=True)
class Term:
    """Input columns [start, start + width) of a piece, taken as they are (`matrix` -1) or mapped by the
    (D_out, width) matrix stored row-major at offset `matrix` of the program's flat `matrices` (D_out the piece's
    width; `nn.Linear`'s layout)."""

    start: int
    width: int
    matrix: int = -1


@dataclass(frozen=True)
class Piece:
    """Output columns [start, start + width): the `op` ("mult" or "add") of its terms; one plain term copies.
    `count` > 1 (made by `ColumnProgram` only) stands for that many pieces of one projected term side by side,
    in output, input and matrices, computed with one batched matmul."""

    start: int
    width: int
    terms: tuple[Term, ...]
    op: Literal["mult", "add"] = "add"
    count: int = 1

    @property
    def span(self) -> int:
        return self.width * self.count

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("Piece: at least one term")
        if self.count > 1 and not (len(self.terms) == 1 and self.terms[0].matrix >= 0):
            raise ValueError("Piece: only a single projected term repeats")
        if self.op == "mult" and any(t.matrix >= 0 for t in self.terms):
            raise ValueError("Piece: a product takes plain terms only")
        if any(t.matrix < 0 and t.width != self.width for t in self.terms):
            raise ValueError(f"Piece at column {self.start}: a plain term must be {self.width} wide")


class ColumnProgram:
    """A fixed map from a (B, W_in) tensor to a (B, W_out) one, piece by piece; see the module docstring.

    Args:
        width_in: W_in.
        pieces: the output pieces, which must tile [0, W_out) in order; adjacent plain copies are merged.

    Call it as `program(x, matrices)`, with `matrices` the flat (1-D) tensor the terms' matrices live in, or None.

    Example:
        >>> prog = ColumnProgram(6, [Piece(0, 2, (Term(0, 2), Term(2, 2)), "mult"), Piece(2, 2, (Term(4, 2),))])
        >>> prog(torch.arange(6.0).view(1, 6), None).tolist()
        [[0.0, 3.0, 4.0, 5.0]]
    """

    def __init__(self, width_in: int, pieces: Sequence[Piece]) -> None:
        merged: list[Piece] = []
        for p in pieces:
            last = merged[-1] if merged else None
            adjacent = last is not None and last.terms[0].start + last.span == p.terms[0].start
            if last is not None and _is_copy(last) and _is_copy(p) and adjacent:
                width = last.width + p.width
                merged[-1] = Piece(last.start, width, (Term(last.terms[0].start, width),))
            elif last is not None and _repeats(last, p):
                merged[-1] = Piece(last.start, last.width, last.terms, last.op, last.count + 1)
            else:
                merged.append(p)
        width_out = sum(p.span for p in merged)
        if not _tiles([(p.start, p.span) for p in merged], width_out):
            starts = [p.start for p in merged]
            raise ValueError(f"ColumnProgram: pieces must tile the output in order, got starts {starts}")
        self.width_in, self.width_out, self.pieces = width_in, width_out, tuple(merged)
        # every input column read exactly once: backward writes each gradient once, without zeroing first
        self.exact = _tiles(sorted((t.start, t.width * p.count) for p in merged for t in p.terms), width_in)
        self.identity = self.exact and len(merged) == 1 and _is_copy(merged[0]) and width_out == width_in
        # every piece's first term is a plain copy from its own columns: the output starts as one contiguous copy
        # of x[:, :W_out] (one fast row-wise copy instead of one strided copy per piece), and only pieces with
        # more terms are worked on
        self.aligned = self.exact and all(p.terms[0].matrix < 0 and p.terms[0].start == p.start for p in merged)

    def __call__(self, x: Tensor, matrices: Tensor | None) -> Tensor:
        """(B, W_in) -> (B, W_out)."""
        if self.identity:
            return x
        return _Compose.apply(x, matrices, self)


def _tiles(ranges: Sequence[tuple[int, int]], width: int) -> bool:
    """Whether (start, width) ranges, in order, cover [0, width) end to end."""
    at = 0
    for start, w in ranges:
        if start != at:
            return False
        at += w
    return at == width


def _is_copy(p: Piece) -> bool:
    return len(p.terms) == 1 and p.terms[0].matrix < 0


def _repeats(last: Piece, p: Piece) -> bool:
    """Whether p continues `last` as one more copy of the same single projected term, adjacent everywhere."""
    if not (len(last.terms) == len(p.terms) == 1 and last.terms[0].matrix >= 0 and p.terms[0].matrix >= 0):
        return False
    a, b = last.terms[0], p.terms[0]
    return (last.width, a.width) == (p.width, b.width) and last.start + last.span == p.start and (
        a.start + last.count * a.width == b.start and a.matrix + last.count * last.width * a.width == b.matrix)


def _stacked(matrices: Tensor, p: Piece) -> Tensor:
    """The (count, D, d) matrices of a repeated projected piece, a view of the flat matrices."""
    t = p.terms[0]
    return matrices[t.matrix : t.matrix + p.count * p.width * t.width].view(p.count, p.width, t.width)


def _copies(t: Tensor, start: int, width: int, count: int) -> Tensor:
    """Columns [start, start + count width) of (B, W) t as a (count, B, width) view."""
    return t[:, start : start + count * width].view(t.shape[0], count, width).transpose(0, 1)


def _matrix(matrices: Tensor, t: Term, rows: int) -> Tensor:
    return matrices[t.matrix : t.matrix + rows * t.width].view(rows, t.width)


class _Compose(torch.autograd.Function):
    """Forward and backward of a `ColumnProgram`, writing through column views of one output tensor."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, matrices: Tensor | None, program: ColumnProgram) -> Tensor:
        aligned = program.aligned
        out = x[:, : program.width_out].clone() if aligned else x.new_empty(x.shape[0], program.width_out)
        for p in program.pieces:
            if aligned and len(p.terms) == 1:
                continue
            o = out[:, p.start : p.start + p.width]
            xs = [x[:, t.start : t.start + t.width] for t in p.terms]
            if all(t.matrix < 0 for t in p.terms):  # copies, products and sums: the first two terms in one op
                op = torch.mul if p.op == "mult" else torch.add
                op(xs[0], xs[1], out=o) if len(xs) > 1 else o.copy_(xs[0])
                for xi in xs[2:]:
                    o.mul_(xi) if p.op == "mult" else o.add_(xi)
                continue
            if p.count > 1:  # (count, B, d) @ (count, d, D) into the (count, B, D) view of the output
                t = p.terms[0]
                o3 = _copies(out, p.start, p.width, p.count)
                torch.bmm(_copies(x, t.start, t.width, p.count), _stacked(matrices, p).transpose(1, 2), out=o3)
                continue
            for i, (t, xi) in enumerate(zip(p.terms, xs)):
                if t.matrix >= 0:
                    P = _matrix(matrices, t, p.width).t()  # type: ignore[arg-type]
                    torch.mm(xi, P, out=o) if i == 0 else o.addmm_(xi, P)
                else:
                    o.copy_(xi) if i == 0 else o.add_(xi)
        ctx.program = program
        ctx.save_for_backward(x, matrices)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, matrices = ctx.saved_tensors
        program: ColumnProgram = ctx.program
        # every input column read once: each gradient is written once, straight into place; else accumulated
        exact = program.exact
        gx = grad.new_empty(x.shape) if exact else grad.new_zeros(x.shape)
        gm = torch.zeros_like(matrices) if matrices is not None and ctx.needs_input_grad[1] else None
        if program.aligned:  # the copies' gradients in one go; pieces with more terms overwrite theirs below
            gx[:, : program.width_out].copy_(grad)
        for p in program.pieces:
            if program.aligned and len(p.terms) == 1:
                continue
            if p.count > 1:
                _repeated_backward(p, x, matrices, grad, gx, gm, exact)
                continue
            g = grad[:, p.start : p.start + p.width]
            for t in p.terms:
                gi = gx[:, t.start : t.start + t.width]
                if t.matrix >= 0:
                    # g @ P with P's transpose laid out contiguously: MKL's faster orientation for this shape
                    Pt = _matrix(matrices, t, p.width).t().contiguous().t()
                    torch.mm(g, Pt, out=gi) if exact else gi.addmm_(g, Pt)
                    if gm is not None:  # (x^T g)^T: the fast GEMM orientation on CPU
                        _matrix(gm, t, p.width).add_(torch.mm(x[:, t.start : t.start + t.width].t(), g).t())
                elif p.op == "mult" and len(p.terms) > 1:
                    others = [x[:, s.start : s.start + s.width] for s in p.terms if s is not t]
                    if exact:
                        torch.mul(g, others[0], out=gi)
                        for o in others[1:]:
                            gi.mul_(o)
                    else:
                        gi.add_(functools.reduce(torch.mul, others, g))
                else:
                    gi.copy_(g) if exact else gi.add_(g)
        return gx, gm, None


def _repeated_backward(p: Piece, x: Tensor, matrices: Tensor, grad: Tensor, gx: Tensor, gm: Tensor | None,
                       exact: bool) -> None:
    """Gradients of a repeated projected piece: (count, B, D) @ (count, D, d) for x, (x^T g)^T for the matrices."""
    t = p.terms[0]
    g, xi, gi = (_copies(a, s, w, p.count) for a, s, w in ((grad, p.start, p.width), (x, t.start, t.width),
                                                           (gx, t.start, t.width)))
    W = _stacked(matrices, p)  # (count, D, d)
    torch.bmm(g, W, out=gi) if exact else gi.add_(torch.bmm(g, W))
    if gm is not None:
        _stacked(gm, p).add_(torch.bmm(xi.transpose(1, 2), g).transpose(1, 2))
