"""`count_host_reads`: what a block of code would make the host wait for on an accelerator, counted on the CPU.

On CUDA every read of a tensor's value by Python (`.item()`, `.tolist()`, `int(t)`, `bool(t)`, a tensor used
as a Python index) and every op whose output size depends on the data (`nonzero`, `unique`, `coalesce`,
`bincount`, `masked_select`, boolean-mask indexing, `repeat_interleave` without `output_size`) blocks the host
until the device has run everything queued before it. So does `torch.tensor(python_data, device=...)`: a copy
from pageable host memory waits for the stream. On the CPU none of this costs anything, so a test cannot see
it in time; this helper wraps those entry points of `torch` and counts their calls instead (only the outermost
call when one calls another), with the line of the caller outside torch for each, so a test can assert an
upper bound and name the offending line when it is exceeded. `accelerator_paths` makes the CPU take the code
paths an accelerator takes: the C++ CPU kernels off, and no path that reads values because the CPU reads them
for free (`embtables.bags.CPU_READS_FREE`).

Example:
    >>> import torch
    >>> with count_host_reads() as reads:
    ...     _ = torch.arange(3).sum().item()
    >>> reads.reads, reads.uploads
    (1, 0)
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor

import embtables.bags
from embtables import kernels

_TORCH = str(Path(torch.__file__).parent)
_HERE = str(Path(__file__))
_REPO = str(Path(__file__).parents[1])
# entry points that read device values or size outputs by the data, on Tensor and on the torch namespace
_TENSOR_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "unique",
                 "unique_consecutive", "coalesce", "bincount", "masked_select")
_TORCH_READS = ("nonzero", "unique", "unique_consecutive", "bincount", "masked_select")
_UPLOADS = ("tensor", "as_tensor")


@dataclass
class HostReads:
    """What `count_host_reads` saw: one `(kind, caller)` entry per host read (`reads`) and per upload of Python
    data to a device (`uploads`), caller being `file:line` of the first frame outside torch."""

    sites: list[tuple[str, str]] = field(default_factory=list)

    @property
    def reads(self) -> int:
        return sum(kind != "upload" for kind, _ in self.sites)

    @property
    def uploads(self) -> int:
        return sum(kind == "upload" for kind, _ in self.sites)

    def describe(self) -> str:
        return "\n".join(f"  {kind:<20} {where}" for kind, where in self.sites) or "  (none)"


def _caller() -> str:
    frame = sys._getframe(2)
    while frame is not None and (frame.f_code.co_filename.startswith(_TORCH) or frame.f_code.co_filename == _HERE):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return "?"
    name = frame.f_code.co_filename
    if name.startswith(_REPO):
        name = name[len(_REPO) + 1 :]
    return f"{name}:{frame.f_lineno}"


def _is_read(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether this call of a wrapped entry point needs the device's data on the host; `args[0]` is the tensor
    of a Tensor method, None for a function of the torch namespace."""
    if name == "__getitem__":  # boolean masks size the output by the data
        index = args[1] if len(args) > 1 else None
        parts = index if isinstance(index, tuple) else (index,)
        return any(isinstance(p, Tensor) and p.dtype == torch.bool for p in parts)
    if name == "repeat_interleave":  # tensor repeats size the output unless output_size is given
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        return isinstance(repeats, Tensor) and repeats.numel() > 1 and kwargs.get("output_size") is None
    if name in _UPLOADS:  # Python data copied to a device the caller names ("cpu" spelled out: a host tensor)
        device = kwargs.get("device")
        return device is not None and device != "cpu" and not isinstance(args[1] if len(args) > 1 else None, Tensor)
    return True


@contextlib.contextmanager
def count_host_reads() -> Iterator[HostReads]:
    """Count host reads and uploads of Python data within the block (see the module docstring)."""
    seen = HostReads()
    state = threading.local()

    def wrap(owner: Any, name: str, kind: str) -> Callable[..., Any]:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            outer = not getattr(state, "inside", False)
            if outer and _is_read(name, args if owner is Tensor else (None, *args), kwargs):
                seen.sites.append((kind, _caller()))
            state.inside = True
            try:
                return original(*args, **kwargs)
            finally:
                state.inside = not outer

        return wrapper

    patches = [(Tensor, n, f"Tensor.{n}") for n in (*_TENSOR_READS, "__getitem__", "repeat_interleave")]
    patches += [(torch, n, f"torch.{n}") for n in (*_TORCH_READS, "repeat_interleave")]
    patches += [(torch, n, "upload") for n in _UPLOADS]
    saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patches]
    try:
        for owner, name, kind in patches:
            setattr(owner, name, wrap(owner, name, kind))
        yield seen
    finally:
        for owner, name, original in saved:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


@contextlib.contextmanager
def accelerator_paths() -> Iterator[None]:
    """Within the block, run on the CPU what runs on CUDA: the PyTorch references of the C++ CPU kernels, and the
    paths that read nothing on the host (`embtables.bags.CPU_READS_FREE` off: e.g. the sparse optimizers' padded
    deduplication, the range check in the batch's one read)."""
    free = embtables.bags.CPU_READS_FREE
    embtables.bags.CPU_READS_FREE = False
    try:
        with kernels.disabled():
            yield
    finally:
        embtables.bags.CPU_READS_FREE = free
