"""torchrun / DistributedDataParallel plumbing (gloo on CPU, nccl on GPU)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def parse_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda`` (this process's GPU) or
    ``cuda:N``; ValueError for another name (whether this machine has the GPU is not checked)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return dev


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """:func:`parse_device`, and a ValueError for a GPU this machine lacks."""
    dev = parse_device(name, local_rank)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: no CUDA GPU is available here (use cpu or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def env_rank() -> int:
    """This process's rank as torchrun sets it (0 outside torchrun)."""
    return int(os.environ.get("RANK") or 0)


def setup(device: str = "auto") -> DistInfo:
    """Read torchrun's environment, pick this process's device, init the process group if
    world > 1."""
    world = int(os.environ.get("WORLD_SIZE") or 1)
    rank = env_rank()
    local_rank = int(os.environ.get("LOCAL_RANK") or 0)
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":  # also cuda:N: CUDA graphs capture on the current device's streams
        torch.cuda.set_device(dev)
    if world > 1 and dev.type == "cpu":  # share the cores between the local processes
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE") or world)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local_rank, dev)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Give every rank rank 0's buffers (BatchNorm running stats drift apart by the last
    step's update, since DDP broadcasts them only at the start of each forward)."""
    if info.enabled:
        for buf in model.buffers():
            dist.broadcast(buf, 0)


def gather_to_all(obj, info: DistInfo) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
