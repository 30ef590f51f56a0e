"""The loader of the C++ CPU kernels (every `.cpp` of `csrc/`, one extension), compiled on first use.

On CPU a training step of a compressed collection spends as much time around the embedding lookups as in them:
remapping ids, composing partition rows, projecting narrow blocks, each a chain of PyTorch ops that costs a pass
over memory and a few microseconds of dispatch per op. The kernels:

    fused_forward / fused_backward   the `fused` store (`stores/fused_store.py`): lookups, the method's column
                                     program and the optimizer step, one kernel per direction
    digits_remap                     qr's ids -> mixed-radix digits in lookup order, with the new offsets
    outside                          whether some id of a feature lies outside [0, n_f) (`Bags.outside`)
    hash_to_range                    seeded SplitMix64 into [0, n) (`embtables.hashing`)

The last three serve every backend. Every kernel has a PyTorch reference next to the code that calls it (the
torch backend is the fused store's), and tests compare them. The kernels are compiled with
`torch.utils.cpp_extension` the first time they are needed (about 20 s on 2 cores; cached under
`TORCH_EXTENSIONS_DIR`, by default ~/.cache/torch_extensions, keyed by the sources and headers, flags, torch
version and CPU).
Without a working C++ compiler the references run, after one warning naming the error, and the fused backend
refuses to build. `set_enabled(False)` (or `EMBTABLES_KERNELS=0` in the environment at start-up) makes the
references run on purpose, e.g. to compare.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from embtables.kernels import fake

# every .cpp is compiled into the one extension (cpu_kernels.cpp registers the ops); the headers beside them are
# included from this folder. Sorted by name, so that the build key is stable.
_CSRC = Path(__file__).parent / "csrc"
# -fopenmp: ATen's parallel_for is a header template whose OpenMP pragma needs it (it then joins torch's runtime);
# -march=native: the row loops are 16-float vectors, one AVX-512 op where the CPU has it. The build is keyed by
# the CPU's flags, so a home directory shared by different machines gets one build per kind of CPU.
_FLAGS = ["-O3", "-fopenmp", "-march=native"]


def _cpu() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line for line in info.splitlines() if line.startswith("flags")), platform.machine())
_state: dict[str, Any] = {"enabled": os.environ.get("EMBTABLES_KERNELS", "1") != "0", "ops": None, "error": None}


def _files() -> tuple[list[Path], list[Path]]:
    """(the .cpp sources, every source and header), each sorted by name."""
    sources = sorted(_CSRC.glob("*.cpp"))
    return sources, sorted([*sources, *_CSRC.glob("*.h")])


def _digest(files: list[Path], key: bytes) -> str:
    """12 hex digits of every file's name and contents and `key`: the build's cache key."""
    h = hashlib.sha1()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(key)
    return h.hexdigest()[:12]


def _load() -> Any | None:
    if _state["ops"] is None and _state["error"] is None:
        try:
            from torch.utils.cpp_extension import load

            sources, files = _files()
            digest = _digest(files, repr((_FLAGS, torch.__version__, _cpu())).encode())
            load(name=f"embtables_cpu_{digest}", sources=[str(f) for f in sources], extra_cflags=_FLAGS,
                 extra_ldflags=["-fopenmp"], extra_include_paths=[str(_CSRC)], is_python_module=False, verbose=False)
            _state["ops"] = torch.ops.embtables
            fake.register()  # their fake kernels, for torch.compile / torch.export (never raises)
        except Exception as e:  # no compiler, no headers, a failed build: the PyTorch references still work
            _state["error"] = f"{type(e).__name__}: {e}"
            warnings.warn(f"embtables: C++ CPU kernels unavailable, using the PyTorch references ({_state['error']})")
    return _state["ops"]


def ops_for(*tensors: Tensor) -> Any | None:
    """`torch.ops.embtables` when the kernels are enabled, built and every tensor is on the CPU; else None."""
    if not _state["enabled"] or any(t.device.type != "cpu" for t in tensors):
        return None
    return _load()


def require(user: str) -> Any:
    """`torch.ops.embtables` for code that has no PyTorch reference (the fused store); RuntimeError naming `user`
    and what to do when the kernels are disabled or cannot be built."""
    if not _state["enabled"]:
        raise RuntimeError(
            f"{user} runs embtables' C++ CPU kernels, which are disabled (EMBTABLES_KERNELS=0 or "
            "kernels.set_enabled(False)); enable them, or use backend='fbgemm' or backend='torch'"
        )
    ops = _load()
    if ops is None:
        raise RuntimeError(
            f"{user} runs embtables' C++ CPU kernels, which could not be built ({_state['error']}); install a C++ "
            "compiler and the Python headers, or use backend='fbgemm' or backend='torch'"
        )
    return ops


def available() -> bool:
    """Whether the kernels are built (building them now if needed), regardless of `set_enabled`."""
    return _load() is not None


def status() -> str:
    """One line: whether the kernels are in use, and why not when they are not."""
    if not _state["enabled"]:
        return "disabled (set_enabled(False) or EMBTABLES_KERNELS=0): PyTorch references in use"
    return "C++ CPU kernels in use" if available() else f"unavailable: {_state['error']}"


def set_enabled(enabled: bool) -> None:
    """Use the kernels (True, the default) or the PyTorch references (False)."""
    _state["enabled"] = bool(enabled)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the PyTorch references inside the block.

    Example:
        >>> from embtables import kernels
        >>> with kernels.disabled():
        ...     kernels.ops_for(torch.zeros(1)) is None
        True
    """
    before = _state["enabled"]
    _state["enabled"] = False
    try:
        yield
    finally:
        _state["enabled"] = before
