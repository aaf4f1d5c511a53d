"""Training under torchrun: this process's place in the job (`Dist`), joining and leaving the process group,
rank 0 first (`main_first`) and rank 0's values on every process (`broadcast`).

Each process trains on its shard of every epoch; only rank 0 validates, reports and writes files.
Outside torchrun every helper here is a no-op on a job of one process.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Join the torchrun job when launched by torchrun (WORLD_SIZE > 1): gloo on CPU, nccl on GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def leave(ddp: Dist) -> None:
    """Leave the torchrun job (nothing to do in a job of one)."""
    if ddp.world > 1:
        dist.destroy_process_group()


@contextlib.contextmanager
def main_first(ddp: Dist) -> Iterator[None]:
    """Rank 0 runs the block first (say, generating the demo set), then the others."""
    if ddp.world > 1 and not ddp.main:
        dist.barrier()
    yield
    if ddp.world > 1 and ddp.main:
        dist.barrier()


def broadcast(value: Any, ddp: Dist) -> Any:
    """Rank 0's `value` on every process."""
    if ddp.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
