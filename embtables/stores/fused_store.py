"""The `fused` backend: every physical table in one flat fp32 tensor, looked up, combined and updated by the C++
CPU kernels `fused_forward` and `fused_backward` (`embtables/kernels/csrc/fused_store.cpp`, built by
`embtables.kernels.cpu`).

Why: around FBGEMM's TBE, a compressed method's CPU step writes the (B, sum of lookup dims) pooled tensor, reads it
back in `combine` (qr's products, mixed_dim's projections: a pass per piece), writes the gradient of that tensor,
and the TBE sorts the ids to update rows. Here

  forward   pools each lookup's bags, one lookup (so one table) at a time as FBGEMM does; lookups the method only
            copies go straight to their output columns, the others to a lookup-major buffer x from which the
            method's column program (`embtables.program.ColumnProgram`, translated by `kernel_program`) writes
            the output in one pass over blocks of 32 samples;
  backward  runs the program's backward in one pass (dL/dx, lookup-major), then table by table adds each id's
            gradient to its row's sum (open addressing: no sort, no table-sized buffer) and updates every touched
            row once ("exact", as FBGEMM's optimizers) inside the backward pass: no gradient of table size exists.

Each row is owned by one work item (a table; with fewer tables than threads, a part of a table that a hash of
the row id picks), so updates take no locks. Optimizers are the torch backend's (`SparseOptimizer`): row-wise Adagrad
(`embtables.optim`), Adagrad and SGD, with their state in the `state` buffer, saved with the weights. Gradients
reach per-sample weights (multihash's importance) and the program's matrices (mixed_dim's projections) through
autograd. Dims need not be multiples of 4. CPU and fp32 only; building the store raises when the kernels are
disabled or cannot be built. Backward reads the ids it saved in forward, so ids changed in place between the two
raise autograd's error instead of updating other rows (the kernel also checks every id against its table).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from embtables import kernels
from embtables.bags import Bags
from embtables.config import Lookup, PhysicalTable, SparseOptimizer
from embtables.program import ColumnProgram, Piece, Term  # noqa: F401 (Piece, Term: the docstring example)
from embtables.stores.flat import OPTIMIZER_CODES, FlatStore

_NO_PROGRAM = torch.zeros(0, dtype=torch.long)


class _Group:
    """The lookups of one kind (pooled, or per id), as the kernels take them: their tables, per table the lookups
    that read it (CSR), and per program (`kernel_program`) the spec and where each lookup's rows go."""

    def __init__(self, tables: Sequence[PhysicalTable], lookups: Sequence[Lookup]) -> None:
        self.dims = [tables[lk.table].embedding_dim for lk in lookups]
        self.width = sum(self.dims)
        self.table = torch.tensor([lk.table for lk in lookups], dtype=torch.long)
        by_table = [[i for i, lk in enumerate(lookups) if lk.table == t] for t in range(len(tables))]
        self.table_lookups = torch.tensor([i for ls in by_table for i in ls], dtype=torch.long)
        self.table_lookup_start = torch.tensor([0] + [len(ls) for ls in by_table], dtype=torch.long).cumsum(0)
        self._programs: dict[int, tuple[ColumnProgram, KernelProgram]] = {}
        cols = [sum(self.dims[:i]) for i in range(len(self.dims))]
        self.identity = KernelProgram(_NO_PROGRAM, torch.tensor([cols, [-1] * len(cols)], dtype=torch.long), 0)

    def program(self, program: ColumnProgram) -> "KernelProgram":
        """`kernel_program` of a method's program, built once per program."""
        key = id(program)
        if torch.compiler.is_compiling():  # traced tensors must not be kept for the eager calls that follow
            return self._programs[key][1] if key in self._programs else kernel_program(program, self.dims)
        if key not in self._programs:  # the program is kept with its translation, so its id stays its own
            self._programs[key] = (program, kernel_program(program, self.dims))
        return self._programs[key][1]


@dataclass(frozen=True)
class KernelProgram:
    """A column program as the fused kernels run it: `spec` (see `kernel_program`), `cols` (2, L): each lookup's
    output column, or -1, and its column in x, or -1; `width_x`: x's width."""

    spec: Tensor
    cols: Tensor
    width_x: int


def kernel_program(program: ColumnProgram, dims: Sequence[int]) -> KernelProgram:
    """Translate a `ColumnProgram` over the pooled lookups (widths `dims`, side by side) for the fused kernels.

    A lookup that the program only copies into the output, whole, is pooled straight into its output columns and
    leaves the program. The others go to x, kept lookup-major there, so every term must lie inside one lookup:
    repeated pieces are expanded, plain copies and sums cut wherever a term crosses from one lookup to the next,
    and each term is given as (lookup, column offset in it, width, matrix offset). The spec holds, per piece: op
    (0 add, 1 mult), output start, width, number of terms, then the terms' four numbers each.

    Example:
        >>> prog = ColumnProgram(8, [Piece(0, 4, (Term(0, 4), Term(4, 4)), "mult")])  # a product of two lookups
        >>> k = kernel_program(prog, [4, 4])
        >>> k.spec.tolist(), k.cols.tolist(), k.width_x
        ([1, 0, 4, 2, 0, 0, 4, -1, 1, 0, 4, -1], [[-1, -1], [0, 4]], 8)
    """
    cols = [sum(dims[:i]) for i in range(len(dims))]
    ends = [c + d for c, d in zip(cols, dims)]

    def lookup_of(column: int) -> int:
        return bisect.bisect_right(cols, column) - 1

    pieces: list[tuple[int, int, int, list[tuple[int, int, int, int]]]] = []  # op, start, width, terms
    for p in program.pieces:
        for c in range(p.count):
            terms = [(t.start + c * t.width, t.width, t.matrix + c * p.width * t.width if t.matrix >= 0 else -1)
                     for t in p.terms]
            start = p.start + c * p.width
            if any(w >= 0 for _, _, w in terms):  # projections: every term is one lookup by construction
                cuts = [0, p.width]
            else:  # cut the piece wherever one of its terms crosses a lookup boundary
                cuts = sorted({0, p.width} | {ends[lk] - a for a, _, _ in terms
                                              for lk in range(lookup_of(a), lookup_of(a + p.width - 1))})
            for lo, hi in zip(cuts[:-1], cuts[1:]):
                width = hi - lo if terms[0][2] < 0 else p.width
                placed = []
                for a, w, matrix in terms:
                    first = a + (lo if matrix < 0 else 0)
                    l, span = lookup_of(first), (width if matrix < 0 else w)
                    if first + span > ends[l]:
                        raise ValueError(f"fused store: a projected term at column {a} spans two lookups")
                    placed.append((l, first - cols[l], span, matrix))
                pieces.append((int(p.op == "mult"), start + lo, width, placed))
    reads = [l for _, _, _, terms in pieces for l, _, _, _ in terms]
    direct = {terms[0][0]: start for _, start, width, terms in pieces
              if len(terms) == 1 and terms[0][3] < 0 and terms[0][1] == 0 and width == dims[terms[0][0]]
              and reads.count(terms[0][0]) == 1}
    out_col = [direct.get(l, -1) for l in range(len(dims))]
    x_col, width_x = [], 0
    for l, d in enumerate(dims):
        x_col.append(-1 if l in direct else width_x)
        width_x += 0 if l in direct else d
    spec: list[int] = []
    for op, start, width, terms in pieces:
        if len(terms) == 1 and terms[0][0] in direct:
            continue
        spec += [op, start, width, len(terms)] + [v for t in terms for v in t]
    return KernelProgram(torch.tensor(spec, dtype=torch.long), torch.tensor([out_col, x_col], dtype=torch.long),
                         width_x)


class FusedStore(FlatStore):
    name = "fused"
    dim_multiple = 1
    combines = True  # runs a method's column program itself (`pooled_program`)

    def __init__(
        self, tables: Sequence[PhysicalTable], lookups: Sequence[Lookup], optimizer: SparseOptimizer, device: torch.device
    ) -> None:
        if torch.device(device).type != "cpu":
            raise ValueError(f"the fused backend runs on the CPU, not on {torch.device(device)}; on CUDA use "
                             "backend='triton' (or 'torch')")
        kernels.require("the fused backend")  # refuse now, not at the first forward
        super().__init__(tables, lookups, optimizer, device)
        self._pooled = _Group(tables, [lk for lk in lookups if lk.pooled])
        self._per_id = _Group(tables, [lk for lk in lookups if not lk.pooled])
        self._workspace = torch.empty(0)  # backward's dL/dx, reused from step to step (see the kernel)
        self.reset_parameters()

    def _pool(self, bags: Bags, per_id: bool) -> Tensor:
        g = self._per_id if per_id else self._pooled
        return self._run(bags, g, g.identity, None, g.width, True)

    def pooled_program(self, bags: Bags, program: ColumnProgram, matrices: Tensor | None) -> Tensor:
        g = self._pooled
        return self._run(bags, g, g.program(program), matrices, program.width_out, program.exact)

    def _run(self, bags: Bags, group: _Group, program: KernelProgram, matrices: Tensor | None, width_out: int,
             exact: bool) -> Tensor:
        psw = bags.per_sample_weights
        if psw is not None and psw.dtype != torch.float32:
            raise TypeError(f"the fused backend takes fp32 per-sample weights, got {psw.dtype}")
        return _FusedLookup.apply(self._placeholder, psw, matrices, self, group, bags, program, width_out, exact)


class _FusedLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, placeholder: Tensor, psw: Tensor | None, matrices: Tensor | None, store: FusedStore,
                group: _Group, bags: Bags, program: KernelProgram, width_out: int, exact: bool) -> Tensor:
        ops = kernels.require("the fused backend")
        m = None if matrices is None else matrices.detach().contiguous()
        p = None if psw is None else psw.detach().contiguous()
        values, offsets = bags.values.contiguous(), bags.offsets.contiguous()
        out, x = ops.fused_forward(store.weight, store._offset, store._dim, store._rows, group.table, program.cols,
                                   values, offsets, p, bags.batch_size, program.width_x, program.spec, m, width_out)
        ctx.args = (store, group, bags.batch_size, program, exact)
        # saved, not read from `bags` in backward: autograd then refuses ids or offsets changed in place meanwhile
        ctx.save_for_backward(values, offsets, p, m, x)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        store, group, batch_size, program, exact = ctx.args
        values, offsets, psw, m, x = ctx.saved_tensors
        ops = kernels.require("the fused backend")
        o = store.optimizer
        need_psw, need_m = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        if store._workspace.numel() < batch_size * program.width_x:
            store._workspace = torch.empty(batch_size * program.width_x)
        gm, gpsw = ops.fused_backward(
            grad, store.weight, store.state, store._state_offset, OPTIMIZER_CODES[o.name], o.lr, o.eps, store._offset,
            store._dim, store._rows, group.table, program.cols, group.table_lookups, group.table_lookup_start,
            values, offsets, psw, batch_size, program.width_x, program.spec, m, x, exact, need_m, need_psw,
            store._workspace)
        return None, (gpsw if need_psw else None), (gm if need_m else None), None, None, None, None, None, None
