"""Training on several processes: `embtables train --nproc N` (or the same command under `torchrun`).

Every rank builds the same model (same seed; the tables on the meta device, so that each rank allocates and draws
only its own shards), `et.shard` places the physical tables with torchrec's planner,
and each rank reads only its own row groups of the data, in shares of B / N rows: global batch k is the ranks'
k-th shares side by side (`datasets/shares.py`). The run equals one process fed those global batches with batch
B (the loss of each rank is the mean over its share; torchrec divides the tables' gradients by N and DDP averages
the dense ones); which rows make up a global batch depends on (seed, N), and `shares.global_batches` rebuilds
them in one process. Evaluation reads the same way (a short last share padded with rows labelled `PAD_LABEL`,
dropped) and gathers logits and labels on every rank, so all ranks compute the same metrics and choose the same
best step. Rank 0 alone writes config, metrics and checkpoints; a checkpoint's tables are gathered whole, so it
loads in one process on any store.

Processes: `--nproc N` spawns N local processes (gloo on 127.0.0.1); under torchrun, RANK/WORLD_SIZE/MASTER_ADDR
come from its environment. CUDA is refused (`check_device_of_ranks`): nccl with one GPU per rank is wired but has
not run on a machine with several GPUs.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import embtables as et

from embtables.datasets.shares import PAD_LABEL, Part


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

    def part(self) -> Part:
        """What this rank reads of a split (`data.batches(..., part=...)`): its own row groups, its share of every
        global batch."""
        return Part(self.rank, self.world, exchange=self.exchange)

    def exchange(self, mine: Any) -> list[Any]:
        """Every rank's object, in rank order (an all-gather of pickled objects)."""
        if self.world == 1:
            return [mine]
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, mine)
        return everyone

    def gather(self, logits: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's logits and labels of the same steps' shares -> (n,) logits and labels of every real row
        in global batch order (padding rows, labelled `PAD_LABEL`, dropped), on the host and on every rank."""
        if self.world == 1:
            return torch.cat(logits).cpu(), torch.cat(labels).cpu()
        sizes = [z.numel() for z in logits]  # each step's share size, the same on every rank
        mine = torch.stack([torch.cat(logits).float(), torch.cat(labels).to(logits[0].device, torch.float32)])
        everyone = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(everyone, mine)
        per_rank = [e.cpu().split(sizes, dim=1) for e in everyone]
        z, y = torch.cat([chunk for step in zip(*per_rank) for chunk in step], dim=1)  # step by step, rank by rank
        real = y != PAD_LABEL
        return z[real], y[real]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def check_device_of_ranks(device: torch.device | str, world: int) -> None:
    """Refuse several processes on anything but CPUs: nccl needs one GPU per process, and no machine this was
    tested on has two, so CUDA is refused rather than run untested."""
    if world > 1 and torch.device(device).type != "cpu":
        raise ValueError(f"training on {world} processes runs on CPUs (gloo) only: on {device} it has not been "
                         "tested (it needs a machine with one GPU per process); train on one process there, or "
                         "on CPUs")


def sharded_for_training(model: nn.Module, backend: str, batch_size: int, ranks: Ranks, device: torch.device) -> nn.Module:
    """`model` sharded over the ranks by torchrec (`et.shard`); only the torchrec store's tables can be."""
    if backend != "torchrec":
        raise ValueError(f"training on {ranks.world} processes shards the tables with torchrec: use --backend "
                         f"torchrec (backend {backend!r} keeps every table whole on each process)")
    if batch_size % ranks.world:
        raise ValueError(f"--batch-size {batch_size} must be a multiple of --nproc {ranks.world}: each "
                         "process trains on an equal share of every batch")
    check_device_of_ranks(device, ranks.world)
    norms = sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)})
    if norms:  # on each rank they would see only its share, and keep running statistics of their own
        raise ValueError(f"training on {ranks.world} processes: the model normalises with batch statistics "
                         f"({', '.join(norms)}; DIN's Dice activation), which would be each process's share's, "
                         "not the batch's; use -m activation=prelu")
    return et.shard(model, device)


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
