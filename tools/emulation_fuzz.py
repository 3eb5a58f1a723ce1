"""A random search for shapes, layouts and plans where the CUDA kernels' block program goes wrong, without a
GPU: run as a script (not collected by pytest; the suite's fixed cases are in tests/kernels/test_cuda.py).

Each draw: n = 1..6 modalities of random widths (multiples of 8, for the 16-byte and tensor-core staging, or
anything), batch, classes, head (concat, decision fusion, MLP; in the features' dtype or not), feature layout
(contiguous, rows of a wider tensor, misaligned, column-major), baselines (none, shared, per-sample, mixed),
benefit and dtype, with dyadic values so that every sum is exact. The emulation (shuffled phases, cp.async
landing at its wait, the warp model of ldmatrix + mma) runs it under five budgets (tensor cores allowed or
not) and must give the default plan's bits under every one, and the CPU kernel's values (its bits where no
exp is involved).

    .venv/bin/python tools/emulation_fuzz.py --seed 3 --draws 250     # prints each difference, then a total

Exits 1 when any draw differs.
"""

import argparse
import copy
import os
import random
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The test support modules (oracle, kernel_cases, emulation).
sys.path[:0] = [os.path.join(ROOT, "tests"), ROOT]


def draw(rng: random.Random, seed: int):
    """(features, head, labels, baselines or None, benefit, head kind, description) for one random call."""
    from oracle import dyadic

    from fastshap import heads

    g = torch.Generator().manual_seed(seed)
    n = rng.randint(1, 6)
    dims = [rng.choice([8, 16, 24, 40, 64, 72, 96, 128, 136, rng.randint(1, 150)]) for _ in range(n)]
    batch, classes = rng.randint(1, 300), rng.randint(2, 40)
    kind = rng.choice(["concat", "mlp", "decision"])
    dtype = rng.choice([torch.float32, torch.float16, torch.bfloat16, torch.float64])
    if kind == "mlp":
        head = heads.ConcatMLP(dims, rng.choice([8, 16, 40, 64]), classes)
    elif kind == "decision":
        head = heads.DecisionFusion(dims, classes)
    else:
        head = heads.ConcatLinear(dims, classes)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(dyadic(p.shape, -8, 8, 16, g))
    if dtype != torch.float64 and rng.random() < 0.7:  # eligible for the tensor-core first layer
        head = copy.deepcopy(head).to(dtype)
    feats = []
    for d in dims:
        values = dyadic((batch, d), -4, 4, 4, g).to(dtype)
        layout = rng.choice(["contiguous", "contiguous", "wide", "misaligned", "column-major"])
        if layout in ("wide", "misaligned"):
            start = 0 if layout == "wide" else 1
            wider = torch.zeros(batch, d + 8, dtype=dtype)
            wider[:, start : start + d] = values
            values = wider[:, start : start + d]
        elif layout == "column-major":
            values = values.t().contiguous().t()
        feats.append(values)
    labels = torch.randint(0, classes, (batch,), generator=g)
    benefit = rng.choice(["paper", "accuracy", "probability"])
    base_kind = rng.choice(["none", "none", "shared", "sample", "mixed"])
    base = None
    if base_kind != "none":
        base = [
            dyadic(
                (d,) if base_kind == "shared" or (base_kind == "mixed" and i % 2 == 0) else (batch, d), -2, 2, 8, g
            ).to(dtype)
            for i, d in enumerate(dims)
        ]
    described = f"{kind} {dtype} dims={dims} batch={batch} C={classes} {benefit} baselines={base_kind}"
    return feats, head, labels, base, benefit, kind, described


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=100)
    args = parser.parse_args()

    import emulation as em
    from kernel_cases import op_inputs

    # (soft, hard shared-memory budget, fallback grid[, tensor cores allowed]); the last is the default plan's
    budgets = [
        (*em.H100_LIMITS, 1),
        (1 << 20, 1 << 20, 264, 1),
        (64 * 1024, 64 * 1024, 2, 1),
        (24 * 1024, 24 * 1024, 3, 1),
        em.H100_LIMITS,
    ]
    emu = em.build_emulation()
    rng = random.Random(args.seed)
    runs = tensor_core_runs = differences = 0
    for i in range(args.draws):
        feats, head, labels, base, benefit, kind, described = draw(rng, args.seed * 100003 + i)
        op_kind, params, base_list = op_inputs(feats, head, base)
        cpu = torch.ops.fastshap.shapley(feats, op_kind, list(params), base_list, labels, benefit)
        default = em.emulate(emu, feats, head, labels, base, benefit)
        if kind == "decision" or benefit == "probability":  # exp: the kernels and the CPU may round apart
            agree = torch.allclose(default[0], cpu[0], atol=1e-5, equal_nan=True)
        else:
            agree = torch.equal(default[0].nan_to_num(7.0), cpu[0].nan_to_num(7.0))
        if not agree:
            differences += 1
            print(f"draw {i}: the default plan differs from the CPU kernel: {described}", flush=True)
        for limits in budgets:
            plan = em.plan_of(emu, op_kind, feats, head, base, limits)
            phi, stats = em.emulate(emu, feats, head, labels, base, benefit, limits)
            runs += 1
            tensor_core_runs += "mma=1" in plan
            if not (torch.equal(phi.nan_to_num(7.0), default[0].nan_to_num(7.0)) and torch.equal(stats, default[1])):
                differences += 1
                print(f"draw {i}: plan {plan} differs from the default plan: {described}", flush=True)
    print(f"{args.draws} draws, {runs} plan runs ({tensor_core_runs} on tensor cores): {differences} differences")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
