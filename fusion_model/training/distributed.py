"""Data-parallel training under ``torchrun`` (gloo on CPU, nccl where available).

Each process embeds its contiguous slice of every batch; the slices are all-gathered
with gradients so every process computes the loss over the *whole* batch (the same
in-batch negatives as one process), and gradients are averaged across processes. The
result is the single-process update, computed by several processes.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def init_from_environment(backend: str = "gloo") -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun, on
    ``backend`` (the run's ``Runtime.distributed``: gloo for CPU tensors, NCCL for CUDA
    ones; NCCL takes CUDA tensors only, so a CUDA host training on the CPU keeps gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend)
        log.info("joined %s process group: rank %d of %d", backend, dist.get_rank(), world)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_bounds(size: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous slice of ``size`` rows owned by ``rank``."""
    per = -(-size // world)
    return min(size, rank * per), min(size, (rank + 1) * per)


def gather_rows(local: torch.Tensor, size: int, world: int) -> torch.Tensor:
    """All-gather (with gradients) the per-rank slices back into the full (size, ...) batch."""
    if world == 1:
        return local
    from torch.distributed.nn.functional import all_gather

    per = -(-size // world)
    padded = torch.nn.functional.pad(local, (0, 0, 0, per - local.shape[0]))
    parts = all_gather(padded)
    return torch.cat([part[: shard_bounds(size, r, world)[1] - shard_bounds(size, r, world)[0]]
                      for r, part in enumerate(parts)])


def average_gradients(parameters, world: int) -> None:
    if world == 1:
        return
    for param in parameters:
        if param.grad is not None:
            dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
            param.grad /= world


@contextmanager
def rank_zero_first(rank: int, world: int):
    """Rank 0 runs the block first (e.g. fills a cache); the others run it after."""
    if world > 1 and rank != 0:
        dist.barrier()
    yield
    if world > 1 and rank == 0:
        dist.barrier()


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()
