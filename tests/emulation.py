"""The CPU emulation of the CUDA kernels (csrc/cuda/emulation/): its build, its op, its plans and the
shared-memory budgets the tests run it under. Used by tests/kernels/* (the ``emu`` fixture of
tests/kernels/conftest.py builds it once per process) and by the scripts in tools/.

The emulation compiles the kernels' block program and host code for the CPU: the threads of each phase run
one after the other in a shuffled order, cp.async copies land only at the wait that covers them, and a model
of each warp computes its ldmatrix and mma registers after the PTX ISA's tables. Its op
``torch.ops.fastshap_cuda_emulation.shapley`` takes the compiled op's arguments plus the budgets, so that a
test can force every plan.
"""

from __future__ import annotations

import glob
import os

import torch
from kernel_cases import TC_DTYPES, op_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: (soft, hard) shared-memory budgets and fallback grid of an H100 (what the CUDA launcher would read).
H100_LIMITS = (113 * 1024, 227 * 1024, 264)
#: Budgets from generous to none: each case's distinct plans (tile sizes; shared memory or global scratch for
#: the partial products, the MLP chunks and the constants; grid-stride over tiles) must give the same bits.
BUDGETS = [(1 << 20, 1 << 20, 264), H100_LIMITS, (48 * 1024, 48 * 1024, 7), (24 * 1024, 24 * 1024, 3), (0, 0, 2)]
#: Limits that also allow the tensor-core first layer (what FASTSHAP_CUDA_TENSOR_CORES=1 on an sm_80+ GPU gives).
TC_BUDGETS = [(*H100_LIMITS, 1), (1 << 20, 1 << 20, 264, 1), (64 * 1024, 64 * 1024, 2, 1), (24 * 1024, 24 * 1024, 3, 1)]


def build_emulation(name="fastshap_cuda_emulation", cflags=("-O2",), ldflags=()):
    """Compiles the CPU emulation of csrc/cuda as the extension `name` (cached by torch afterwards) and
    returns its ops, torch.ops.fastshap_cuda_emulation (one build per process: each registers them)."""
    from torch.utils.cpp_extension import load

    csrc = os.path.join(ROOT, "csrc")
    emulation = os.path.join(csrc, "cuda", "emulation")
    load(
        name=name,
        # The block programs are instantiated per input type in emulate_<type>.cpp: ninja builds them in parallel.
        sources=[os.path.join(emulation, "shapley_emulate.cpp"), os.path.join(csrc, "shapley_common.cpp")]
        + sorted(glob.glob(os.path.join(emulation, "emulate_*.cpp"))),
        extra_include_paths=[csrc, os.path.join(csrc, "cuda")],
        extra_cflags=[*cflags, "-Wall", "-Wextra", "-Wno-unused-parameter"],
        extra_ldflags=list(ldflags),
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.fastshap_cuda_emulation


def emulate(emu, feats, head, labels, baselines, benefit, limits=H100_LIMITS):
    """The emulated kernels' (phi, stats) for a call of modality_shapley's arguments under `limits`."""
    kind, params, base = op_inputs(feats, head, baselines)
    return emu.shapley(list(feats), kind, params, base, labels, benefit, *limits)


def plan_of(emu, kind, feats, head, baselines, limits) -> str:
    """The plan the kernels take for that call under `limits`, as "key=value;..." (emu.describe_plan)."""
    _, params, base = op_inputs(feats, head, baselines)
    n = len(feats)
    width = params[0].shape[0]
    classes = params[2].shape[0] if kind == "mlp" else width
    per_sample = bool(base) and base[0].dim() == 2
    absent_rows = n if kind == "decision" or (base and not per_sample) else 1
    elem = 8 if feats[0].dtype == torch.float64 else 4
    if len(limits) == 4:  # tensor cores allowed: taken when the weights have the features' dtype (run_op)
        eligible = feats[0].dtype in TC_DTYPES and params[0].dtype == feats[0].dtype
        limits = (*limits[:3], int(bool(limits[3]) and eligible))
    return emu.describe_plan(
        kind, n, 2 * n if per_sample else n, width, classes, elem, absent_rows, feats[0].shape[0], *limits
    )


def parse_plan(plan: str) -> dict:
    """A plan's "key=value;..." description as a dict, e.g. {"tb": "128", "rows": ...}."""
    return dict(kv.split("=") for kv in plan.split(";"))
