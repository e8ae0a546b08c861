"""Data-parallel training on PyTorch's engine: one code path for CPU (gloo) and GPU (nccl, with
``train.device=cuda``).

Launched by ``torchrun``, which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous;
every process loads the data itself (sequences and features are memory-mapped or small), so memory
per process does not grow with the number of processes:

    torchrun --standalone --nproc_per_node=2 -m mp4sr train --model sasrec --out runs/ddp
    # one GPU per process: add --set train.device=cuda
    # several machines: the same command on each, with --nnodes=2 --node_rank=I
    #   --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 --rdzv_id=JOB  instead of --standalone

How the work is split: all processes draw the same shuffled global batches (same seed) and rank r
trains rows r, r + N, r + 2N... of each; gradients are averaged by DistributedDataParallel, with each
process's loss weighted by its share of the batch's targets, so a step equals the single-process
step on the whole batch (up to floating-point order and per-process dropout masks). Validation and
test users are split the same way and the ranks gathered. Rank 0 alone logs, writes checkpoints and
metrics; all processes read ``last.pt`` to resume.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("mp4sr.train")


def launched() -> bool:
    """True when this process is one of several started by torchrun (or another launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def backend_for(device: str) -> str:
    """NCCL when the processes train on GPUs (``train.device=cuda``), gloo otherwise: the backend
    follows the configured device, not whether the machine happens to have a GPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(timeout: timedelta | None = None, device: str = "cpu") -> None:
    """Join the process group torchrun describes (no-op for a single process); quiet the logs of
    every rank but 0. ``timeout``: how long a collective (a barrier) may wait for the slowest rank;
    ``device``: where the processes compute (``train.device``), which chooses the backend."""
    if not launched() or active():
        return
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, **({"timeout": timeout} if timeout else {}))
    if not is_main():
        logging.getLogger("mp4sr").setLevel(logging.WARNING)
    log.info("distributed: %d processes, backend %s", world_size(), backend)


def device_for(device: str) -> str:
    """``cuda`` means this process's GPU (LOCAL_RANK) under torchrun."""
    if active() and device == "cuda":
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class LossModule(torch.nn.Module):
    """``forward(batch)`` = the model's training loss, so that DistributedDataParallel (which hooks
    ``forward``) can wrap any model of the registry."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch):
        return self.model.calculate_loss(batch)


def wrap(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """A DistributedDataParallel module computing ``model``'s loss. Parameters that a step does not
    use (a stage's unused head, items absent from a sampled batch) are allowed."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return DistributedDataParallel(LossModule(model), device_ids=ids, find_unused_parameters=True)
