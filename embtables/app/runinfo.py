"""What a result must carry to be reproducible: library versions, machine, peak memory, the load it was measured
under; and whether this machine can train on a device."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
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


def load_average() -> float:
    """The 1-minute load average of the machine (NaN where the system has none)."""
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return math.nan


@dataclass(frozen=True)
class CpuClock:
    """CPU time at one moment: the whole machine's busy seconds (all cores summed; NaN without /proc/stat) and those
    of this process with its finished children."""

    wall: float
    busy: float
    ours: float


def cpu_clock() -> CpuClock:
    """Read the clocks `other_cores` compares."""
    busy = math.nan
    try:
        with open("/proc/stat") as f:
            # cpu user nice system idle iowait irq softirq steal ...: steal is time a hypervisor gave our
            # cores to other machines, a load like any other on the speed we measure
            ticks = [int(x) for x in f.readline().split()[1:9]]
        busy = (sum(ticks[:3]) + sum(ticks[5:8])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    ours = sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for field in ("ru_utime", "ru_stime"))
    return CpuClock(time.monotonic(), busy, ours)


def other_cores(before: CpuClock, after: CpuClock) -> float:
    """How many cores other processes kept busy, on average, between two clocks (NaN where unknown).

    Unlike the load average, which trails the last minute and so counts the sweep's own previous cells, this is
    the work of everything but this process and its children over exactly that interval.
    """
    wall = after.wall - before.wall
    if not wall > 0 or math.isnan(after.busy - before.busy):
        return math.nan
    return max(0.0, (after.busy - before.busy - (after.ours - before.ours)) / wall)


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
