"""Training on several processes: `embtables train --nproc N` (or the same command under `torchrun`).

Every rank builds the same model (same seed), `et.shard` places the physical tables with torchrec's planner,
and each global batch of B rows is cut into N shares of B / N rows, one per rank, so that the run equals one
process with batch B (the loss of each rank is the mean over its share; torchrec divides the tables' gradients by
N and DDP averages the dense ones). Evaluation cuts every batch the same way (the last share padded with copies
of the batch's first row, whose outputs are dropped) and gathers the logits on every rank, so all ranks compute
the same metrics and choose the same best step. Rank 0 alone writes config, metrics and checkpoints; a
checkpoint's tables are gathered whole, so it loads in one process on any store.

Every rank reads every batch and keeps its share: the input pipeline is replicated, not split.

Processes: `--nproc N` spawns N local processes (gloo on 127.0.0.1 for CPU, nccl for CUDA, one device per rank);
under torchrun, RANK/WORLD_SIZE/MASTER_ADDR come from its environment.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchrec import KeyedJaggedTensor

from embtables.datasets.loader import Batch


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes.

    Args:
        rank: this process's rank.
        world: the number of processes (1: not distributed).
    """

    rank: int = 0
    world: int = 1

    @staticmethod
    def current() -> "Ranks":
        if dist.is_available() and dist.is_initialized():
            return Ranks(dist.get_rank(), dist.get_world_size())
        return Ranks()

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    def share(self, batch: Batch, pad: bool = False) -> Batch:
        """This rank's rows of a global batch: rows [r s, (r + 1) s) with s = ceil(B / N); with `pad`, a short
        share is filled up to s rows with copies of row 0 (every rank must run the same shapes)."""
        if self.world == 1:
            return batch
        n = batch.batch_size
        size = -(-n // self.world)
        rows = torch.arange(self.rank * size, min((self.rank + 1) * size, n))
        if pad and rows.numel() < size:
            rows = torch.cat([rows, rows.new_zeros(size - rows.numel())])
        return Batch(batch.dense[rows], select_rows(batch.sparse, rows), batch.labels[rows])

    def gather(self, logits: list[torch.Tensor], sizes: list[int]) -> torch.Tensor:
        """Every rank's padded shares of the batches of `sizes` rows -> (sum sizes,) logits in batch order, on the
        host and on every rank."""
        if self.world == 1:
            return torch.cat(logits).cpu()
        mine = torch.cat(logits)  # (sum of padded shares,)
        everyone = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(everyone, mine)
        out, at = [], 0
        for n in sizes:
            size = -(-n // self.world)
            out.append(torch.cat([e[at : at + size] for e in everyone])[:n])
            at += size
        return torch.cat(out).cpu()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def select_rows(kjt: KeyedJaggedTensor, rows: torch.Tensor) -> KeyedJaggedTensor:
    """The bags of rows `rows` (in that order, repeats allowed) of every feature of `kjt`."""
    F, B = len(kjt.keys()), kjt.stride()
    starts = kjt.offsets()[:-1].view(F, B)[:, rows].reshape(-1)  # (F * b,)
    lengths = kjt.lengths().view(F, B)[:, rows].reshape(-1)
    total = int(lengths.sum())
    # position i of the output reads values[starts[bag] + i - (first output position of bag)]
    first = torch.cumsum(lengths, 0) - lengths
    gather = torch.arange(total) + torch.repeat_interleave(starts - first, lengths, output_size=total)
    weights = kjt.weights_or_none()
    return KeyedJaggedTensor(kjt.keys(), kjt.values()[gather], weights=None if weights is None else weights[gather],
                             lengths=lengths, stride=rows.numel())


def launch(nproc: int, device: str, run: Any, *args: Any) -> None:
    """Run `run(*args)` on `nproc` processes with a process group: under torchrun (WORLD_SIZE set) in this
    process, else in `nproc` spawned local processes. `run` must be picklable (a module-level function)."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:  # started by torchrun
        _main(int(os.environ["RANK"]), None, device, run, args)
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ["WORLD_SIZE"] = str(nproc)
    try:
        mp.start_processes(_main, args=(nproc, device, run, args), nprocs=nproc, join=True, start_method="spawn")
    except mp.ProcessRaisedException as e:  # the rank's own error, not the spawn machinery's traceback
        last = str(e).strip().splitlines()[-1]
        raise ValueError(f"a training process failed: {last}") from None
    finally:
        del os.environ["WORLD_SIZE"]


def _main(rank: int, nproc: int | None, device: str, run: Any, args: tuple) -> None:
    os.environ["RANK"] = str(rank)
    cuda = torch.device(device).type == "cuda"
    local = int(os.environ.get("LOCAL_RANK", rank))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank,
                            world_size=nproc if nproc is not None else int(os.environ["WORLD_SIZE"]))
    try:
        run(*args)
    finally:
        dist.destroy_process_group()


def rank_device(device: str) -> str:
    """A rank's device: its own GPU (`cuda:LOCAL_RANK`) when training on CUDA."""
    if torch.device(device).type == "cuda" and dist.is_initialized():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', dist.get_rank()))}"
    return device


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
