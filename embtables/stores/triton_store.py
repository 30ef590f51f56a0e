"""The `triton` backend: every physical table in one flat fp32 buffer on the GPU (`stores/flat.py`), looked up by
one Triton launch per direction and group, with the optimizer applied inside backward (`embtables/kernels/triton`).

    forward   all pooled lookups of the collection in one launch (`kernels/triton/lookup.py`), written side by side
              into one (B, sum of lookup dims) tensor; the method's combine (a `ColumnProgram`: copies, products,
              sums, projections) runs straight after on that tensor, as one autograd function;
    backward  ids sorted by row with PyTorch ops (no host read), then one launch sums each touched row's gradient
              and applies row-wise Adagrad, Adagrad or SGD to it (`kernels/triton/update.py`): no gradient of table
              size exists, and each row is updated once.

Each forward launch is the operator `torch.ops.embtables_triton.pool` (a `torch.library.custom_op` with a fake
kernel): under torch.compile and torch.export it is one opaque node of the graph, on CUDA and in the interpreter alike
(tests/test_compile_triton.py). Under `torch.no_grad()` (inference) the store calls it alone; with gradients on,
through the autograd function whose backward updates the rows.

Per-id (unpooled) lookups run the same kernels with every id in a bag of its own. Dims need not be multiples of
4. The backward reads the ids and offsets saved in forward (in-place changes raise autograd's error).

Devices: CUDA. On the CPU only under Triton's interpreter (`TRITON_INTERPRET=1` set before Triton is imported),
which runs the kernels in NumPy, slowly: that is how the tests check them without a GPU. Anything else is refused
at build time with what to use instead.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from embtables.bags import Bags
from embtables.config import Lookup, PhysicalTable, SparseOptimizer
from embtables.stores.flat import OPTIMIZER_CODES, FlatStore, starts


def check_device(device: torch.device | str) -> None:
    """Refuse, with what to do, a device the triton store cannot run on; import Triton when it can."""
    device = torch.device(device)
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if device.type not in ("cuda", "cpu") or (device.type == "cpu" and not interpreted):
        raise ValueError(
            f"the triton backend runs on CUDA GPUs, not on {device}; on the CPU use backend='fused' (or 'torch'), "
            "or set TRITON_INTERPRET=1 before Triton is imported to run its kernels in Triton's interpreter (slow: "
            "for tests)"
        )
    try:
        import triton  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"the triton backend needs the triton package ({e}); `pip install triton`") from None
    from embtables.kernels.triton import lookup  # the kernels are interpreted or compiled as they are defined

    if interpreted != (type(lookup._pool_kernel).__name__ == "InterpretedFunction"):
        raise RuntimeError("TRITON_INTERPRET changed after embtables' Triton kernels were loaded; set it before "
                           "the first triton collection is built (or before Triton is imported)")


class _Group:
    """The lookups of one kind (pooled, or per id) as the kernels take them: per lookup its table and first
    column, and the width of their outputs side by side."""

    def __init__(self, tables: Sequence[PhysicalTable], lookups: Sequence[Lookup], device: torch.device) -> None:
        dims = [tables[lk.table].embedding_dim for lk in lookups]
        self.width = sum(dims)
        self.table = torch.tensor([lk.table for lk in lookups], dtype=torch.long, device=device)
        self.col = torch.tensor([sum(dims[:i]) for i in range(len(dims))], dtype=torch.long, device=device)


class TritonStore(FlatStore):
    name = "triton"
    dim_multiple = 1

    def __init__(
        self, tables: Sequence[PhysicalTable], lookups: Sequence[Lookup], optimizer: SparseOptimizer, device: torch.device
    ) -> None:
        check_device(device)
        super().__init__(tables, lookups, optimizer, device)
        row_base = starts([t.num_embeddings for t in tables])  # a global row numbering: sort keys of backward
        self.register_buffer("_row_base", torch.tensor(row_base, dtype=torch.long, device=device), persistent=False)
        self._groups = {per_id: _Group(tables, [lk for lk in lookups if lk.pooled != per_id], device)
                        for per_id in (False, True)}
        self._block_d = 1 << (max(t.embedding_dim for t in tables) - 1).bit_length()  # a power of two >= every dim
        self.reset_parameters()

    def _pool(self, bags: Bags, per_id: bool) -> Tensor:
        psw = bags.per_sample_weights
        if psw is not None and psw.dtype != torch.float32:
            raise TypeError(f"the triton backend takes fp32 per-sample weights, got {psw.dtype}")
        group = self._groups[per_id]
        if torch.is_grad_enabled():  # training: the autograd function, whose backward applies the optimizer
            return _TritonLookup.apply(self._placeholder, psw, self, group, bags)
        # inference (no_grad, inference_mode): nothing can call backward, so the launch alone, as the opaque operator
        # that torch.compile and torch.export keep whole (`kernels/triton/lookup.py`'s `pool_op`)
        return _launch(self, group, bags.values.contiguous(), bags.offsets.contiguous(),
                       None if psw is None else psw.detach().contiguous(), bags.batch_size)


def _launch(store: TritonStore, group: _Group, values: Tensor, offsets: Tensor, psw: Tensor | None,
            batch_size: int) -> Tensor:
    """The group's pooled lookups, (B, group.width): one launch of `torch.ops.embtables_triton.pool`."""
    return torch.ops.embtables_triton.pool(store.weight, store._offset, store._dim, group.table, group.col, values,
                                           offsets, psw, batch_size, group.width, store._block_d)


class _TritonLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, placeholder: Tensor, psw: Tensor | None, store: TritonStore, group: _Group,
                bags: Bags) -> Tensor:
        values, offsets = bags.values.contiguous(), bags.offsets.contiguous()
        p = None if psw is None else psw.detach().contiguous()
        out = _launch(store, group, values, offsets, p, bags.batch_size)
        ctx.args = (store, group, bags.batch_size)
        ctx.save_for_backward(values, offsets, p)  # autograd refuses ids changed in place before backward
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        from embtables.kernels.triton.update import per_sample_weight_grad, segments, update

        store, group, B = ctx.args
        values, offsets, psw = ctx.saved_tensors
        grad = grad.contiguous()
        s, o = store, store.optimizer
        id_bag, order, seg_len = segments(values, offsets, group.table, s._row_base, B)
        gpsw = None
        if psw is not None and ctx.needs_input_grad[1]:  # before the update changes the rows
            gpsw = per_sample_weight_grad(s.weight, s._offset, s._dim, group.table, group.col, values, id_bag, grad,
                                          B, s._block_d)
        update(s.weight, s.state, s._offset, s._state_offset, s._dim, group.table, group.col, values, psw, grad,
               id_bag, order, seg_len, B, OPTIMIZER_CODES[o.name], o.lr, o.eps, s._block_d)
        return None, gpsw, None, None, None
