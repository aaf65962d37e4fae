"""Multi-process training and sampling under torchrun (DDP): process group, device choice, small collectives.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything runs as a single
process (world 1) and the collectives below are no-ops.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import UserError


@dataclass
class DistEnv:
    """Where this process stands: rank, world size, its device, and whether we own the group."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a small tensor over ranks (in place, returned)."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank (e.g. a cancel request)."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather_to_main(self, part: dict) -> dict | None:
        """Merge every rank's {key: CPU tensor} on rank 0 (others get None). The objects travel
        between our own processes of one run; nothing from outside is unpickled."""
        if not self.distributed:
            return dict(part)
        parts = [None] * self.world_size if self.is_main else None
        dist.gather_object(part, parts, dst=0)
        if not self.is_main:
            return None
        merged: dict = {}
        for p in parts:
            merged.update(p)
        return merged

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """'auto' -> cuda:<local rank> if CUDA is available else cpu; 'cuda' -> cuda:<local rank>."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"Unknown device {spec!r}; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"Device {spec!r} asked for but CUDA is not available here; use --device cpu.")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type != "cpu":
        raise UserError(f"Unsupported device {spec!r}; use auto, cpu, cuda or cuda:N.")
    return device


def init_from_env(device_spec: str = "auto") -> DistEnv:
    """Join the torchrun process group if launched by torchrun (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    if world <= 1:
        return DistEnv(device=device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owns = True
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                   device=device, owns_group=owns)
