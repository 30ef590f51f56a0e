"""Fake kernels of the C++ CPU ops (`torch.ops.embtables.*`, csrc/cpu_kernels.cpp): what `torch.compile`,
`torch.export` and `torch.library.opcheck` run in place of an op on FakeTensors. Each gives its op's outputs the
shapes, dtypes and strides the C++ gives them (csrc/fused_store.cpp, csrc/remap.cpp), from shapes alone:

    fused_forward   out (batch_size, width_out), weight's dtype; x (batch_size * width_in,) when `spec` holds a
                    column program (spec.numel() > 0), else undefined (None), as the kernel returns it
    fused_backward  the program weight's gradient, like `matrices`, when there is a program, `matrices` and
                    `weight_grad`; the per-id weights' gradient (values.numel(),), grad_out's dtype, when `psw`
                    and `psw_grad`; each else None. It updates `weight` and `state` in place (schema (a!), (b!)):
                    nothing to compute for them
    digits_remap    values (N',), N' a new data-dependent size (`get_ctx().new_dynamic_size()`: the ids of the
                    features that `reads` names, read from `offsets` on the host), 0 without lookups; offsets
                    (lookups * batch_size + 1,)
    hash_to_range   like x
    outside         a Python bool read from the ids: no fake value can stand for it. It raises
                    `DataDependentOutputException`, as FakeTensor does for aten's bool-returning ops (`equal`,
                    `is_nonzero`): torch.compile then runs the check eagerly between two graphs (a graph break);
                    torch.export, which keeps no Python bool, refuses it (its callers must keep it out of an
                    exported graph)

`register()` is called once by `cpu._load`, when the ops load. It needs each op's C++ kernel registered for the
CPU dispatch key (`TORCH_LIBRARY_IMPL(embtables, CPU, m)`): a kernel given to `m.def` in `TORCH_LIBRARY` is a
catch-all, which the dispatcher files as CompositeImplicitAutograd. Such an op "decomposes": PyTorch runs the
C++ kernel itself on FakeTensors, which have no data, and refuses a fake kernel (`Library.impl(..., "Meta")`
raises). Then nothing is registered, `status()` says why, and the eager ops are unchanged.

May import: torch only (as every module of `embtables.kernels`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import statically_known_true

OPS = ("fused_forward", "fused_backward", "digits_remap", "outside", "hash_to_range")

_state: dict[str, Any] = {"done": False, "error": None}


def _fused_forward(weight: Tensor, table_offset: Tensor, table_dim: Tensor, table_rows: Tensor,
                   lookup_table: Tensor, lookup_cols: Tensor, values: Tensor, offsets: Tensor, psw: Tensor | None,
                   batch_size: int, width_in: int, spec: Tensor, matrices: Tensor | None,
                   width_out: int) -> tuple[Tensor, Tensor | None]:
    L = lookup_table.numel()
    # make_store's checks that shapes answer (those on values stay in the kernel)
    torch._check(lookup_cols.numel() == 2 * L, lambda: "fused store: lookup_cols must be (2, lookups)")
    torch._check(offsets.numel() == L * batch_size + 1,
                 lambda: "fused store: offsets must hold lookups x batch + 1 entries")
    if psw is not None:
        torch._check(psw.numel() == values.numel(), lambda: "fused store: per-sample weights, one per id")
    out = weight.new_empty((batch_size, width_out))
    x = weight.new_empty((batch_size * width_in,)) if spec.numel() > 0 else None
    return out, x


def _fused_backward(grad_out: Tensor, weight: Tensor, state: Tensor, state_offset: Tensor, optimizer: int,
                    lr: float, eps: float, table_offset: Tensor, table_dim: Tensor, table_rows: Tensor,
                    lookup_table: Tensor, lookup_cols: Tensor, table_lookups: Tensor, table_lookup_start: Tensor,
                    values: Tensor, offsets: Tensor, psw: Tensor | None, batch_size: int, width_in: int,
                    spec: Tensor, matrices: Tensor | None, saved_x: Tensor | None, exact: bool, weight_grad: bool,
                    psw_grad: bool, spare: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    program = spec.numel() > 0
    gw = torch.empty_like(matrices) if program and weight_grad and matrices is not None else None
    gpsw = grad_out.new_empty((values.numel(),)) if psw_grad and psw is not None else None
    return gw, gpsw


def _digits_remap(values: Tensor, offsets: Tensor, batch_size: int, reads: Tensor, place: Tensor,
                  radix: Tensor) -> tuple[Tensor, Tensor]:
    L = reads.shape[0]
    n = torch.library.get_ctx().new_dynamic_size() if L else 0  # sum over lookups of its feature's ids
    return values.new_empty((n,)), offsets.new_empty((L * batch_size + 1,))


def _outside(values: Tensor, starts: Tensor, upper: Tensor) -> bool:
    # imported here: only ever needed while tracing
    from torch._subclasses.fake_tensor import DataDependentOutputException

    raise DataDependentOutputException(torch.ops.embtables.outside.default)


def _hash_to_range(x: Tensor, key: Tensor, n: Tensor) -> Tensor:
    N = x.numel()
    for name, t in (("key", key), ("n", n)):  # a count that is not known to be 1 (a symbol) must be N
        if not statically_known_true(t.numel() == 1):
            torch._check(t.numel() == N, lambda: f"hash_to_range: {name} must hold 1 or N values")
    return torch.empty_like(x)


FAKES = {"fused_forward": _fused_forward, "fused_backward": _fused_backward, "digits_remap": _digits_remap,
         "outside": _outside, "hash_to_range": _hash_to_range}


def register() -> str | None:
    """Register every op's fake kernel, once (the ops must be loaded: `cpu._load` calls this). Returns None when
    they are registered, else why not (also `status()`); never raises, so that the eager ops keep working."""
    if not _state["done"]:
        _state["done"] = True
        try:
            has = torch._C._dispatch_has_kernel_for_dispatch_key
            catch_all = [op for op in OPS if has(f"embtables::{op}", "CompositeImplicitAutograd")]
            if catch_all:
                raise RuntimeError(
                    f"ops {catch_all} have catch-all kernels (m.def(schema, fn) in TORCH_LIBRARY, which the "
                    "dispatcher files as CompositeImplicitAutograd): PyTorch would run their C++ on FakeTensors; "
                    "register the kernels with TORCH_LIBRARY_IMPL(embtables, CPU, m) in csrc/cpu_kernels.cpp")
            for op in OPS:
                torch.library.register_fake(f"embtables::{op}", FAKES[op])
        except Exception as e:  # noqa: BLE001 (the eager ops do not need the fakes)
            _state["error"] = f"{type(e).__name__}: {e}"
    return _state["error"]


def status() -> str:
    """One line: whether the fake kernels are registered, and why not when they are not."""
    if not _state["done"]:
        return "not registered yet (the ops are not loaded)"
    return "registered" if _state["error"] is None else f"not registered: {_state['error']}"
