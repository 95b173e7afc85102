"""Multi-process training under ``torchrun``: process group, DDP, gathering, rank-0-only writes.

Conventions (docs/datasets.md): ``train.batch_size`` is the global batch, split evenly over
the processes, so a recipe means the same run on 1 or 8 processes; ``train.lr`` is the rate of
that global batch, or, with ``train.lr_scaling=linear``, the rate of ``train.lr_base_batch``
images scaled linearly (lr * batch_size / lr_base_batch, Goyal et al. 2017). Only rank 0
writes the run directory; every rank reads the checkpoint it wrote on resume.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn

from camlt.errors import UsageError


def machine_name(device: str = "auto", threads: int = 0) -> str:
    """The device a result comes from, as a results table states it: the GPU's name, else the
    CPU's model and the threads used (``device``: the run's train.device)."""
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = names[0] if names else platform.processor() or "CPU"
    return f"{cpu} ({threads or torch.get_num_threads()} threads)"


def resolve_device(name: str) -> torch.device:
    """``train.device`` (or ``--device``) as a device: auto is the GPU when one is visible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu")
    return torch.device(name)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job; world 1 when not launched by torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment variables."""
    try:
        return (
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError as err:
        raise UsageError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({err})") from None


def setup(device: torch.device) -> DistInfo:
    """Join the process group when WORLD_SIZE > 1: NCCL for CUDA, gloo on CPU."""
    rank, world, local_rank = env_world()
    if world <= 1:
        return DistInfo()
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, init_method="env://", timeout=timedelta(minutes=30))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, initialised_here=True)


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    """Each process drives its own GPU (LOCAL_RANK); CPU stays CPU."""
    if device.type == "cuda" and info.distributed:
        return torch.device("cuda", info.local_rank)
    return device


def cleanup(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module | None:
    """A DDP wrapper for the forward/backward of training (None when single-process)."""
    if not info.distributed:
        return None
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_batchnorm(
    model: nn.Module, info: DistInfo, enabled: bool, device: torch.device
) -> nn.Module:
    """BatchNorm statistics over the global batch (``train.sync_bn``), as torchvision's reference
    offers; worth it when each process's share of the batch is small. torch runs it on GPUs only."""
    if not (enabled and info.distributed):
        return model
    if device.type != "cuda":
        raise UsageError(
            f"train.sync_bn=true needs CUDA devices (torch's SyncBatchNorm runs on GPUs only), "
            f"not {device.type}; set it false to let each process normalise its own share"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def effective_lr(train_cfg: DictConfig) -> float:
    """The optimiser's base rate for the global batch (see the module docstring)."""
    if train_cfg.lr_scaling == "linear":
        return train_cfg.lr * train_cfg.batch_size / train_cfg.lr_base_batch
    return float(train_cfg.lr)


def gather_cat(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 (ranks may hold different lengths)."""
    if not info.distributed:
        return tensor
    backend_device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    local = tensor.to(backend_device)
    size = torch.tensor([len(local)], device=backend_device)
    sizes = [torch.zeros_like(size) for _ in range(info.world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=backend_device)
    padded[: len(local)] = local
    parts = [torch.zeros_like(padded) for _ in range(info.world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)]).to(
        tensor.device
    )


def sum_across(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sums over ranks (e.g. loss totals and image counts of an epoch)."""
    if not info.distributed:
        return values
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
