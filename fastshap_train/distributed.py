"""DDP plumbing: the process group from torchrun's environment and the collectives the trainer needs.

Launch: ``torchrun --nproc_per_node=K -m fastshap_train ...`` (NCCL on GPUs, gloo on CPU), or
:func:`fastshap_train.launch.spawn_local` (local processes, as torchrun would start them). ``batch_size`` is
the global batch, split evenly over the ranks, so a K-process run takes the same optimisation steps as
one process (up to the last batch of an epoch whose size is not a multiple of K, which
``DistributedSampler`` pads with repeated rows).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fastshap_train.errors import RunError


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we initialised the process group (and destroy it at the end)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:  # the config check lets only auto, cpu, cuda and cuda:K through
        raise RunError(f"--device {name!r} is not a device ({exc}): use auto, cpu, cuda or cuda:K") from None
    if device.type not in ("cpu", "cuda"):
        raise RunError(f"--device {name}: the trainer runs on cpu or cuda only")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RunError(f"--device {name}: no CUDA device is available (use --device cpu or auto)")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        if device.index >= torch.cuda.device_count():
            raise RunError(
                f"--device {name}: there is no {device} (this machine has {torch.cuda.device_count()} CUDA device(s))"
            )
    return device


def setup(device_name: str = "auto") -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1), or a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = pick_device(device_name, local_rank)
    if world <= 1:
        return DistContext(device=device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)


def cleanup(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.active:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_rows(index: torch.Tensor, values: torch.Tensor, ctx: DistContext) -> tuple:
    """Concatenate every rank's (index (k_r,), values (k_r, n)) on every rank; sizes may differ."""
    if not ctx.active:
        return index, values
    dev = ctx.device if ctx.device.type == "cuda" else torch.device("cpu")
    size = torch.tensor([index.numel()], device=dev)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world)]
    dist.all_gather(sizes, size)
    most = int(max(s.item() for s in sizes))
    pad_i = torch.full((most,), -1, dtype=torch.long, device=dev)
    pad_v = torch.zeros(most, values.shape[1], dtype=values.dtype, device=dev)
    pad_i[: index.numel()] = index.to(dev)
    pad_v[: index.numel()] = values.to(dev)
    out_i = [torch.empty_like(pad_i) for _ in range(ctx.world)]
    out_v = [torch.empty_like(pad_v) for _ in range(ctx.world)]
    dist.all_gather(out_i, pad_i)
    dist.all_gather(out_v, pad_v)
    idx = torch.cat([o[: int(s.item())] for o, s in zip(out_i, sizes)])
    val = torch.cat([o[: int(s.item())] for o, s in zip(out_v, sizes)])
    return idx.cpu(), val.cpu()


def all_gather_object(obj, ctx: DistContext) -> list:
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        dist.barrier()
