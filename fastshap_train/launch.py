"""Local DDP launch: :func:`spawn_local` runs trainer configs in K local processes, as torchrun would.

Apart from :mod:`fastshap_train.distributed` (the process group and collectives, which the engine and the
valuation use), because it builds trainers: it imports the engine, which the collectives must not.
"""

from __future__ import annotations

import faulthandler
import os
import socket
import sys

import torch
import torch.distributed as dist

from fastshap_train import plugins
from fastshap_train.config import validate
from fastshap_train.distributed import pick_device
from fastshap_train.engine import Trainer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_entry(rank: int, world: int, port: int, runs: list, result_dir: str | None, imports: list) -> None:
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
    plugins.load(imports)  # a fresh interpreter: the parent's plug-in datasets and methods, registered again
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
    args = (world, free_port(), runs, result_dir, plugins.loaded())
    mp.spawn(_spawn_entry, args=args, nprocs=world, join=True)
