"""What a result must carry to be reproducible: library versions, machine, peak memory; and whether this machine
can train on a device."""

from __future__ import annotations

import os
import platform
import resource
import sys
from importlib import metadata

import torch


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for dist in ("embtables", "torch", "fbgemm-gpu-cpu", "fbgemm-gpu", "torchrec", "numpy", "pyarrow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def machine() -> str:
    """CPU model and core count, e.g. 'AMD EPYC, 2 cores, Linux x86_64'."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * (1 if sys.platform == "darwin" else 1024)


def check_device(device: str, here: bool = True) -> torch.device:
    """`device` as a torch.device, or a ValueError saying why it is not one or, when `here`, why this machine
    cannot train there.

    Args:
        device: e.g. `"cpu"`, `"cuda"`, `"cuda:1"` (`TrainConfig.device`).
        here: also check that this machine has it.
    """
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"TrainConfig.device={device!r} is not a device: {e}") from None
    if here and d.type == "cuda" and not torch.cuda.is_available():
        build = "was built without CUDA" if torch.version.cuda is None else "finds no CUDA device"
        raise ValueError(f"TrainConfig.device={device!r}: torch {torch.__version__} {build}; use device='cpu'")
    return d
