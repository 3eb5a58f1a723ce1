"""DDP plumbing: process group from torchrun's environment, collectives the trainer needs, local spawn.

Launch: ``torchrun --nproc_per_node=K -m fastshap_train ...`` (NCCL on GPUs, gloo on CPU). ``batch_size`` is
the global batch, split evenly over the ranks, so a K-process run takes the same optimisation steps as
one process (up to the last batch of an epoch whose size is not a multiple of K, which
``DistributedSampler`` pads with repeated rows).
"""

from __future__ import annotations

import faulthandler
import os
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fastshap_train.config import RunError


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_entry(rank: int, world: int, port: int, runs: list, result_dir: str | None) -> None:
    faulthandler.enable()  # a rank killed by a signal (an abort in C++) prints where its threads were
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
        }
    )
    from fastshap_train.config import validate
    from fastshap_train.engine import Trainer

    device = pick_device(runs[0].get("device", "auto"), rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # One process group for all the runs (each Trainer finds it initialised and leaves it alone).
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        for k, values in enumerate(runs):
            trainer = Trainer(validate(values))
            try:
                trainer.fit()
                if result_dir:
                    torch.save(
                        {"phi": trainer.last_phi, "plan": trainer.plan.state_dict(), "history": trainer.history},
                        os.path.join(result_dir, f"run{k}_rank{rank}.pt"),
                    )
            finally:
                trainer.close()
    finally:
        dist.destroy_process_group()
    # Every result is on disk and the group is gone: leave without the interpreter's teardown. About one
    # run in twenty, a gloo rank aborted there ("terminate called without an active exception", with no
    # Python frame left on the stack), after all its work was done; that must not fail the whole job.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn_local(world: int, cfgs, result_dir: str | None = None) -> None:
    """Run each config of `cfgs` (one or a list) in `world` local processes, like torchrun would: gloo on
    the CPU, one GPU per process with CUDA. The processes start once for all the configs.

    With `result_dir`, rank r saves run k's final phi table, next plan and history to ``run<k>_rank<r>.pt``.
    """
    import torch.multiprocessing as mp

    runs = [c.to_dict() for c in (cfgs if isinstance(cfgs, (list, tuple)) else [cfgs])]
    mp.spawn(_spawn_entry, args=(world, free_port(), runs, result_dir), nprocs=world, join=True)
