"""Processes and devices: the process group torchrun describes, DistributedDataParallel with
summed gradients, and decoding sharded over the processes.

Losses are normalised by counts summed over processes (tokens for f, predicted positions for g), so
the gradients of the processes must be summed, not averaged: DDP runs with a comm hook that sums.
N processes then take the same step as one process on the union of their batches.
"""

from __future__ import annotations

import datetime
import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_spec: str = "auto", timeout_s: float = 1800.0) -> Dist:
    """Join the process group that torchrun describes in the environment (a no-op without it).

    ``timeout_s`` (``train.dist_timeout``): how long a collective waits for the other processes before
    the run fails, instead of hanging when one of them died."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_spec != "cpu"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                      timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank, world_size, local_rank)


def cleanup_distributed(dist: Dist) -> None:
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def pick_device(spec: str, dist: Dist) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" and dist.enabled:
        spec = f"cuda:{dist.local_rank}"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device={spec} but CUDA is not available")
        torch.cuda.set_device(device)
    return device


def all_reduce_sum(value: float, dist: Dist, device: torch.device) -> float:
    if not dist.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch_dist.all_reduce(t)
    return float(t.item())


def any_rank(flag: bool, dist: Dist, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any, so all ranks take the same branch."""
    return all_reduce_sum(float(flag), dist, device) > 0


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch_dist.barrier()


def gather(obj: Any, dist: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not dist.enabled:
        return [obj]
    out = [None] * dist.world_size
    torch_dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, dist: Dist) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not dist.enabled:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(items: list, dist: Dist) -> list:
    """This rank's share of ``items`` (every world_size-th, from its rank), for decoding a split on all ranks."""
    return items[dist.rank::dist.world_size]


def _sum_hook(state, bucket):  # unannotated: DDP checks the annotation, which postponed evaluation makes a string
    """DDP comm hook: the sum over processes (DDP's default divides by world size; our losses are
    already normalised by global counts)."""
    fut = torch_dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def wrap_ddp(module: nn.Module, dist: Dist, device: torch.device) -> nn.Module:
    """``module`` under DistributedDataParallel with summed gradients; itself with one process.

    ``find_unused_parameters``: a step trains a subset of the heads (f leaves η unused, g leaves φ), and a joint
    step's f pass runs under ``no_sync``: DDP marks what it used there and all-reduces it with g's pass.
    The frontend's buffers (mel filters, normalisation statistics) are equal on every rank by construction, so
    they are not broadcast at every forward.
    """
    if not dist.enabled:
        return module
    ddp_class = nn.parallel.DistributedDataParallel
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp_class).parameters
                      else {"broadcast_buffers": False})  # the older name, before torch 2.13
    ddp = ddp_class(module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True,
                    **no_buffer_sync)
    ddp.register_comm_hook(None, _sum_hook)
    return ddp
