"""The CUDA kernels (csrc/cuda): registration, their block program emulated on the CPU, and GPU runs.

Here, on any machine:
* when fastshap._C was built with its CUDA part, the kernels are registered for the CUDA dispatch key;
* the kernels' block program (csrc/cuda/shapley_tile.cuh) and host code, compiled for the CPU
  (csrc/cuda/emulation/, built by tests/emulation.py: the threads of each phase run one after the other, in a
  shuffled order; cp.async copies land only at the wait that covers them; a model of each warp's ldmatrix and
  mma registers after the PTX ISA's tables), against the oracle over the core case matrix, bit for bit the
  same under every plan (shared memory or global scratch for each buffer, tile sizes, grid-stride, FMA or
  tensor cores), exact ties, NaN counts, odd sizes and argument errors.

On a GPU (``@pytest.mark.gpu``, skipped by conftest without one): backend="cuda" against the oracle over the
same case matrix, against the torch and triton backends, bit for bit against its CPU emulation where no
library GEMM is involved, opcheck, torch.compile, a non-default current stream, devices, a large shape.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from cases import assert_bad_labels_counted, spoil_labels
from emulation import BUDGETS, H100_LIMITS, ROOT, TC_BUDGETS, emulate, parse_plan, plan_of
from kernel_cases import (
    DTYPES,
    KERNEL_CASES,
    PLAN_CASES,
    TC_DTYPES,
    agree_outside_near_ties,
    assert_matches_oracle,
    compute_eps,
    expected_for,
    in_dtype,
    kernel_baselines,
    make_inputs,
    op_inputs,
    staging_inputs,
)
from oracle import dyadic, oracle_shapley
from torch import nn

import fastshap
from fastshap import _extension, backends, heads
from fastshap.api import _head_spec

# --- registration (any machine) -----------------------------------------------------------------------------


def test_cuda_kernels_registered_when_built():
    if not _extension.LOADED:
        pytest.skip(f"fastshap._C is not built here: {_extension.LOAD_ERROR}")
    info = _extension.build_info()
    if info.get("cuda") != "1":
        pytest.skip("fastshap._C was built without its CUDA part (FASTSHAP_BUILD_CUDA=0, or no CUDA toolkit)")
    assert info.get("cuda_arch"), "a CUDA build must record its architectures"
    assert _extension.has_kernel("shapley", "CUDA"), "fastshap::shapley has no CUDA kernel"
    assert _extension.has_kernel("shapley", "CPU"), "fastshap::shapley lost its CPU kernel"


@pytest.fixture(autouse=True)
def fma_first_layer(monkeypatch):
    """Every test here runs the CUDA kernels' first layer on FMAs (the CPU kernel's bits) unless it asks for
    tensor cores (the `tensor_cores` fixture): so the tests mean the same whichever path is the default
    (kCudaTensorCoresByDefault)."""
    monkeypatch.setenv("FASTSHAP_CUDA_TENSOR_CORES", "0")


def test_info_reports_the_cuda_switches(monkeypatch):
    """python -m fastshap.info says whether this process would take the tensor-core and cp.async paths."""
    if not _extension.LOADED or _extension.build_info().get("cuda") != "1":
        pytest.skip("fastshap._C was built without its CUDA part")
    from fastshap import info

    monkeypatch.setenv("FASTSHAP_CUDA_TENSOR_CORES", "1")
    monkeypatch.setenv("FASTSHAP_CUDA_PIPELINE", "0")
    report = info.report()
    assert "tensor cores      on" in report and "cp.async pipeline off" in report, report
    monkeypatch.setenv("FASTSHAP_CUDA_TENSOR_CORES", "0")
    monkeypatch.delenv("FASTSHAP_CUDA_PIPELINE")
    report = info.report()
    assert "tensor cores      off" in report and "cp.async pipeline on" in report, report
    monkeypatch.delenv("FASTSHAP_CUDA_TENSOR_CORES")
    default = _extension.build_info()["cuda_tensor_cores_default"]
    assert f"tensor cores      {'on' if default == '1' else 'off'} for first layers" in info.report()
    assert "(by default;" in info.report()


@pytest.mark.gpu
@pytest.mark.parametrize("value", ["yes", "2", ""])
def test_cuda_rejects_a_bad_tensor_core_switch(monkeypatch, value):
    """FASTSHAP_CUDA_TENSOR_CORES takes 0 or 1: anything else is an error, not silently the default."""
    _require_cuda_backend()
    monkeypatch.setenv("FASTSHAP_CUDA_TENSOR_CORES", value)
    feats = [torch.randn(4, 3, device="cuda"), torch.randn(4, 2, device="cuda")]
    head = heads.ConcatLinear([3, 2], 3).cuda()
    with pytest.raises(ValueError, match="FASTSHAP_CUDA_TENSOR_CORES must be 0 or 1"):
        fastshap.modality_shapley(feats, head, torch.zeros(4, dtype=torch.long, device="cuda"), backend="cuda")


# --- the kernels emulated on the CPU ------------------------------------------------------------------------


def test_emulation_schedule_and_models_are_strict(emu):
    """The emulation catches what it claims to (csrc/cuda/emulation/shapley_emulate.cpp, self_check): a phase's
    threads run in a shuffled order, so a thread reading its neighbour's write of the same phase sees it sometimes, not
    always or never; a cp.async destination is garbage until the issuing thread's wait, right after it; the
    warp model of ldmatrix + mma (lane addresses, fragment tables, accumulator positions) gives a bf16 tile
    product's exact value in all 256 entries."""
    saw_write, garbage_before, right_after, mma_right = emu.self_check()
    assert 16 < saw_write < 240, saw_write
    assert garbage_before == 256 and right_after == 256, (garbage_before, right_after)
    assert mma_right == 256, mma_right


@pytest.mark.parametrize("case", KERNEL_CASES, ids=[c.id for c in KERNEL_CASES])
def test_emulation_matches_oracle(emu, case):
    feats, head, labels, baselines = make_inputs(case)
    phi, stats = emulate(emu, feats, head, labels, baselines, case.benefit)
    assert_matches_oracle(phi, expected_for(case), compute_eps(DTYPES[case.dtype]), f"{case.id} [emulated cuda]")
    torch.testing.assert_close(stats[0], phi.sum(0))
    assert torch.equal(stats[1], (phi < 1).sum(0).float())
    assert torch.equal(stats[2], torch.zeros_like(stats[2]))


@pytest.mark.parametrize("case", PLAN_CASES, ids=[c.id for c in PLAN_CASES])
def test_emulation_is_the_same_under_every_plan(emu, case):
    feats, head, labels, baselines = make_inputs(case)
    kind = op_inputs(feats, head, baselines)[0]
    plans = {}
    for limits in BUDGETS:
        plans.setdefault(plan_of(emu, kind, feats, head, baselines, limits), limits)
    first = None
    for plan, limits in plans.items():
        got = emulate(emu, feats, head, labels, baselines, case.benefit, limits)
        if first is None:
            first = (plan, got)
            continue
        assert torch.equal(got[0], first[1][0]), f"{case.id}: phi differs between plans {first[0]} and {plan}"
        assert torch.equal(got[1], first[1][1]), f"{case.id}: stats differ between plans {first[0]} and {plan}"


def test_plans_cover_every_layout(emu):
    """The budgets above really reach every buffer placement, several tile sizes and grid-stride loops."""
    seen = set()
    for case in PLAN_CASES:
        feats, head, labels, baselines = make_inputs(case)
        kind = op_inputs(feats, head, baselines)[0]
        for limits in BUDGETS:
            plan = parse_plan(plan_of(emu, kind, feats, head, baselines, limits))
            seen |= {
                f"p={plan['p']}",
                f"hl={plan['hl']}",
                f"consts={plan['consts']}",
                f"tb={plan['tb']}",
                f"pipe={plan['pipe']}",
            }
            if int(plan["grid"]) < int(plan["tiles"]):
                seen.add("grid-stride")
    want = {
        "p=shared",
        "p=global",
        "hl=shared",
        "hl=global",
        "consts=shared",
        "consts=global",
        "grid-stride",
        "pipe=1",
        "pipe=0",
    }
    assert want <= seen, f"not reached: {sorted(want - seen)}"
    assert len({s for s in seen if s.startswith("tb=")}) >= 3, sorted(seen)


def test_plan_for_the_benchmark_shape_is_fused(emu):
    """B = 65,536, n = 2, d = 512, C = 31 on an H100: partial products stay in shared memory, 128-sample tiles,
    and at least two blocks fit on a multiprocessor."""
    plan = parse_plan(emu.describe_plan("concat", 2, 2, 31, 31, 4, 1, 65536, *H100_LIMITS))
    assert plan["p"] == "shared" and plan["consts"] == "shared" and plan["tb"] == "128" and plan["pipe"] == "1", plan
    assert int(plan["smem"]) <= H100_LIMITS[1] // 2, plan
    assert plan["scratch"] == "0", plan


def test_tensor_core_plans_keep_every_block_resident(emu):
    """A tensor-core plan that fits two blocks per multiprocessor gets a grid of two per SM; one that leaves
    room for only one, a grid of one per SM (a second wave would start without the cross-tile prefetch)."""
    soft, hard, two_per_sm = H100_LIMITS
    for budget, grid in ((soft, two_per_sm), (40_000, two_per_sm // 2)):
        plan = parse_plan(emu.describe_plan("concat", 5, 5, 101, 101, 2, 1, 65536, budget, hard, two_per_sm, 1))
        assert plan["mma"] == "1" and int(plan["grid"]) == grid, plan
        assert (int(plan["smem"]) <= budget) == (grid == two_per_sm), plan


@pytest.mark.parametrize(
    "shape",
    [  # head, n, sources, K, C, elem: the largest cases fall back to global scratch within 48 KB
        ("concat", 16, 32, 1000, 1000, 8),
        ("decision", 16, 32, 1000, 1000, 4),
        ("mlp", 16, 32, 4096, 1000, 8),
        ("mlp", 1, 1, 65536, 1, 4),
    ],
)
def test_plan_fallback_fits_any_device(emu, shape):
    head, n, sources, K, C, elem = shape
    absent_rows = n if head == "decision" else 1
    plan = parse_plan(emu.describe_plan(head, n, sources, K, C, elem, absent_rows, 1000, *H100_LIMITS))
    assert plan["p"] == "global", plan
    assert int(plan["smem"]) <= H100_LIMITS[1], plan
    small = parse_plan(emu.describe_plan(head, n, sources, K, C, elem, absent_rows, 1000, 0, 0, 2))
    assert int(small["smem"]) <= 48 * 1024 and small["consts"] == "global", small


def _tied(kind, dims, classes, g):
    """Heads whose class pairs (c, c + C/2) score exactly equal (dyadic weights, zero output biases), so ties
    are exact in any summation order and the first index must win."""
    half = classes // 2

    def dup(cols):
        w = dyadic((half, cols), -8, 8, 8, g)
        return torch.cat([w, w])

    total = sum(dims)
    if kind == "concat":
        head = heads.ConcatLinear(dims, classes)
        with torch.no_grad():
            head.fc.weight.copy_(dup(total))
            head.fc.bias.zero_()
    elif kind == "decision":
        head = heads.DecisionFusion(dims, classes)
        with torch.no_grad():
            for clf, d in zip(head.classifiers, dims):
                clf.weight.copy_(dup(d))
                clf.bias.zero_()
    else:
        head = heads.ConcatMLP(dims, 6, classes)
        with torch.no_grad():
            head.fc1.weight.copy_(dyadic((6, total), -8, 8, 8, g))
            head.fc1.bias.copy_(dyadic((6,), -4, 4, 4, g))
            head.fc2.weight.copy_(dup(6))
            head.fc2.bias.zero_()
    return head


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("kind", ["concat", "decision", "mlp"])
def test_emulation_exact_ties_first_index_wins(emu, kind, dtype):
    g = torch.Generator().manual_seed(17 + len(kind))
    dims, classes, batch = [3, 2, 4], 6, 64
    head = _tied(kind, dims, classes, g)
    feats = [dyadic((batch, d), -3, 3, 1, g).to(DTYPES[dtype]) for d in dims]
    labels = torch.randint(0, classes, (batch,), generator=g)
    for benefit in ("paper", "accuracy"):
        expected = oracle_shapley(feats, head, labels, None, benefit)
        assert bool((expected.margins == 0).any()), "the construction must produce exact ties"
        for limits in (H100_LIMITS, (0, 0, 2)):
            phi, _ = emulate(emu, feats, head, labels, None, benefit, limits)
            assert torch.equal(phi, expected.phi_float32()), f"{kind} {dtype} {benefit} {limits}"


@pytest.mark.parametrize("kind", ["concat", "decision", "mlp"])
def test_emulation_counts_nonfinite_rows_like_cpp(emu, kind):
    """stats row 2: per modality, the samples whose features (or per-sample baselines) give non-finite partial
    products, plus one for a non-finite shared baseline; the same counts as the CPU kernel."""
    g = torch.Generator().manual_seed(5)
    dims, classes, batch = [4, 3, 5], 7, 300
    head = {
        "concat": lambda: heads.ConcatLinear(dims, classes),
        "decision": lambda: heads.DecisionFusion(dims, classes),
        "mlp": lambda: heads.ConcatMLP(dims, 9, classes),
    }[kind]()
    feats = [torch.randn(batch, d, generator=g) for d in dims]
    feats[1][[3, 150, 299], 2] = float("nan")
    feats[2][7, 0] = float("inf")
    labels = torch.randint(0, classes, (batch,), generator=g)
    cases = {
        "none": None,
        "shared": [torch.zeros(d) for d in dims],
        "sample": [torch.randn(batch, d, generator=g) for d in dims],
    }
    cases["shared"][0][1] = float("nan")
    cases["sample"][2][[10, 11], 1] = float("-inf")
    kind_, params, _ = op_inputs(feats, head, None)
    for name, baselines in cases.items():
        base = kernel_baselines(baselines, feats)
        _, stats = emulate(emu, feats, head, labels, baselines, "paper")
        _, want = torch.ops.fastshap.shapley(feats, kind_, list(params), base, labels, "paper")
        assert torch.equal(stats[2], want[2]), f"{kind} {name}: {stats[2].tolist()} vs cpp {want[2].tolist()}"
        assert stats[2].sum() > 0


@pytest.mark.parametrize("kind", ["concat", "decision", "mlp"])
def test_emulation_counts_bad_labels(emu, kind):
    """Labels outside [0, C): NaN rows and their count in stats[3, 0], with the kernel's in-block batch
    stats over several tiles (rows 0 and 1 of the others against the sums of phi)."""
    g = torch.Generator().manual_seed(6)
    dims, classes, batch = [4, 3], 5, 300
    head = {
        "concat": lambda: heads.ConcatLinear(dims, classes),
        "decision": lambda: heads.DecisionFusion(dims, classes),
        "mlp": lambda: heads.ConcatMLP(dims, 9, classes),
    }[kind]()
    feats = [torch.randn(batch, d, generator=g) for d in dims]
    labels = torch.randint(0, classes, (batch,), generator=g)
    spoiled, bad = spoil_labels(labels, classes)
    got, want = emulate(emu, feats, head, spoiled, None, "paper"), emulate(emu, feats, head, labels, None, "paper")
    assert_bad_labels_counted(got, want, bad)
    phi, stats = want
    torch.testing.assert_close(stats[0], phi.double().sum(0).float())
    assert torch.equal(stats[1], (phi < 1).sum(0).float())


@pytest.mark.parametrize("kind", ["concat", "mlp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_emulation_vector_staging_equals_element_staging(emu, dtype, kind):
    """Features with contiguous, 16-byte-aligned rows are staged with 16-byte loads (asynchronous copies
    through two stages when the plan has room for them, pipe=1), any other layout element by element; the
    weights likewise by their own layout (aligned here: widths 72 and 40, hidden 40). Every layout and plan
    gives the CPU kernel's bits (two full staging steps and a tail, so both stages; a last partial tile;
    both MLP layers)."""
    head, labels, layouts, want = staging_inputs(dtype, kind)
    values = layouts["contiguous"]
    op_kind = op_inputs(values, head, None)[0]
    pipes = set()
    for limits in (H100_LIMITS, (1 << 20, 1 << 20, 264), (48 * 1024, 48 * 1024, 7)):
        pipes.add(parse_plan(plan_of(emu, op_kind, values, head, None, limits))["pipe"])
        for name, feats in layouts.items():
            phi, stats = emulate(emu, feats, head, labels, None, "accuracy", limits)
            assert torch.equal(phi, want[0]), f"{name} {limits}"
            assert torch.equal(stats[1:], want[1][1:]), f"{name} {limits}"
    assert pipes == {"0", "1"}, pipes


@pytest.mark.parametrize("dims", [(72, 136), (70, 42)], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("kind", ["concat", "mlp"])
@pytest.mark.parametrize("dtype", TC_DTYPES)
def test_emulation_tensor_cores_equal_cpu_kernel(emu, dtype, kind, dims):
    """The tensor-core first layer (plan mma=1: weights of the features' dtype, 128-byte steps through a ring of
    two or three stages, each warp's 16 x 16 output tiles in registers) in the emulation, where each tile's
    MMA sums in the CPU kernel's order: every feature layout (cp.async or element staging), weights whose
    columns start 16-byte aligned or not (dims 70 + 42), tail steps, a partial last tile and blocks that run
    several tiles (the copies run ahead across sources and tiles) give the CPU kernel's bits."""
    head, labels, layouts, want = staging_inputs(dtype, kind, dims)
    head = in_dtype(head, dtype)
    op_kind = op_inputs(layouts["contiguous"], head, None)[0]
    tiles, stages, strided = set(), set(), False
    for limits in TC_BUDGETS:
        plan = parse_plan(plan_of(emu, op_kind, layouts["contiguous"], head, None, limits))
        if plan["mma"] == "1":
            tiles.add(plan["tb"])
            stages.add(plan["stages"])
            strided |= int(plan["grid"]) < int(plan["tiles"])  # blocks with several tiles: the cross-tile prefetch
        for name, feats in layouts.items():
            phi, stats = emulate(emu, feats, head, labels, None, "accuracy", limits)
            assert torch.equal(phi, want[0]), f"{name} {limits}: {int((phi != want[0]).any(1).sum())} rows differ"
            assert torch.equal(stats[1:], want[1][1:]), f"{name} {limits}"
    assert len(tiles) >= 2 and stages == {"2", "3"} and strided, f"tensor-core plans: {tiles} {stages} {strided}"


#: The widest first layer (C or H) the tensor-core plans take: kWarps * kMmaTiles 16-column tiles.
MAX_MMA_WIDTH = 256
TC_PLAN_CASES = [c for c in PLAN_CASES if c.dtype in ("fp16", "bf16", "fp32") and c.C <= MAX_MMA_WIDTH]


@pytest.mark.parametrize("case", TC_PLAN_CASES, ids=[c.id for c in TC_PLAN_CASES])
def test_emulation_tensor_cores_same_bits_as_fma_plans(emu, case):
    """The core matrix's fp16/bf16/fp32 cases (every head, baseline kind, layout, n up to 8, odd shapes) with
    the head in the features' dtype: the emulated tensor-core plans give the FMA plans' bits (the emulation sums
    each MMA tile in the same order), per-sample baselines as extra sources included."""
    feats, head, labels, baselines = make_inputs(case)
    head = in_dtype(head, DTYPES[case.dtype])
    kind = op_inputs(feats, head, baselines)[0]
    want = emulate(emu, feats, head, labels, baselines, case.benefit)
    mma = 0
    for limits in TC_BUDGETS:
        plan = parse_plan(plan_of(emu, kind, feats, head, baselines, limits))
        mma += plan["mma"] == "1"
        got = emulate(emu, feats, head, labels, baselines, case.benefit, limits)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]), f"{case.id} {plan}"
    assert mma >= 1


def test_tensor_cores_only_for_weights_of_the_features_type(emu):
    """The tensor-core plan is taken only when allowed and when the weights are of the features' type
    (their products are then those of the other plans); fp32 weights with bf16 features keep the FMA plan."""
    head, labels, layouts, want = staging_inputs(torch.bfloat16, "concat")
    feats = layouts["contiguous"]

    def plan_mma(h, limits):
        kind = op_inputs(feats, h, None)[0]
        return parse_plan(plan_of(emu, kind, feats, h, None, limits))["mma"]

    assert plan_mma(in_dtype(head, torch.bfloat16), TC_BUDGETS[0]) == "1"
    assert plan_mma(in_dtype(head, torch.bfloat16), H100_LIMITS) == "0"  # not allowed
    assert plan_mma(head, TC_BUDGETS[0]) == "0"  # fp32 weights
    phi, _ = emulate(emu, feats, head, labels, None, "accuracy", TC_BUDGETS[0])
    assert torch.equal(phi, want[0])
    plan = emu.describe_plan("concat", 2, 2, 31, 31, 4, 1, 65536, *H100_LIMITS, 1)
    got = parse_plan(plan)
    # The benchmark shape: 128-sample tiles, two blocks per multiprocessor.
    assert got["mma"] == "1" and got["tb"] == "128" and int(got["smem"]) <= H100_LIMITS[0], got


def test_emulation_reads_no_memory_outside_its_tensors():
    """The block program under AddressSanitizer (tools/emulation_asan_check.py, in a process with libasan
    preloaded): every staging path, plan and head on exact-size tensors, no read or write outside them. The
    results cannot show such a read (rows past the batch are dropped); on a GPU it could fault."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        pytest.skip(f"no C++ compiler ({compiler})")
    found = subprocess.run([compiler, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(found) or not os.path.exists(found):
        pytest.skip("no libasan for this compiler")
    env = dict(os.environ, LD_PRELOAD=found, ASAN_OPTIONS="detect_leaks=0:verify_asan_link_order=0")
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "emulation_asan_check.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    assert "oracle cases:" in done.stdout and "no report" in done.stdout, done.stdout


@pytest.mark.parametrize("batch", [0, 1, 7, 129, 300])
@pytest.mark.parametrize("kind", ["concat", "decision", "mlp"])
def test_emulation_odd_sizes_match_cpp(emu, kind, batch):
    """Odd batches (empty, one partial tile, a one-sample last tile), widths that are no multiple of the staging
    depth, C = 1 and C = 1000: dyadic inputs make every sum exact, so the two kernels agree bit for bit."""
    g = torch.Generator().manual_seed(batch + len(kind))
    for dims, classes in (([33, 1, 70], 5), ([3, 4], 1), ([2, 5], 1000)):
        head = {
            "concat": lambda: heads.ConcatLinear(dims, classes),
            "decision": lambda: heads.DecisionFusion(dims, classes),
            "mlp": lambda: heads.ConcatMLP(dims, 37, classes),
        }[kind]()
        with torch.no_grad():
            for p in head.parameters():
                p.copy_(dyadic(p.shape, -8, 8, 16, g))
        feats = [dyadic((batch, d), -4, 4, 4, g) for d in dims]
        labels = torch.randint(0, classes, (batch,), generator=g)
        kind_, params, _ = op_inputs(feats, head, None)
        want = torch.ops.fastshap.shapley(feats, kind_, list(params), [], labels, "accuracy")
        for limits in (H100_LIMITS, (0, 0, 2)):
            phi, stats = emulate(emu, feats, head, labels, None, "accuracy", limits)
            assert phi.shape == (batch, len(dims)) and stats.shape == (4, len(dims))
            if kind == "decision":  # softmax rounding may differ between the kernels: only near-ties can flip
                assert (phi != want[0]).any(1).sum() <= max(1, batch // 50), f"{dims} {classes}"
            else:
                assert torch.equal(phi, want[0]), f"{kind} {dims} C={classes} B={batch} {limits}"
                # Row 0: the kernel sums phi in float64 per tile, the CPU kernel in float32 over the batch.
                torch.testing.assert_close(stats[0], want[1][0])
                assert torch.equal(stats[1:], want[1][1:])


@pytest.mark.parametrize("n", range(9, 17))
def test_emulation_many_modalities(emu, n):
    """n = 9..16 (up to 65,536 coalitions, chunked): the block programs compiled for these modality counts,
    which the oracle matrix (n <= 8) does not reach, against the CPU kernel, exact with dyadic inputs. The
    feature dtype cycles with n, so every input type's program is run at some of these counts."""
    g = torch.Generator().manual_seed(n)
    dtype = (torch.float32, torch.float16, torch.bfloat16, torch.float64)[n % 4]
    dims = [1] * (n - 1) + [2]
    head = heads.ConcatLinear(dims, 3).to(dtype)
    with torch.no_grad():
        head.fc.weight.copy_(dyadic((3, n + 1), -8, 8, 8, g))
        head.fc.bias.copy_(dyadic((3,), -8, 8, 8, g))
    feats = [dyadic((2, d), -4, 4, 1, g).to(dtype) for d in dims]
    with torch.no_grad():
        full = nn.functional.linear(torch.cat(feats, 1).double(), head.fc.weight.double(), head.fc.bias.double())
    labels = torch.tensor([int(full[0].argmax()), (int(full[1].argmax()) + 1) % 3])
    _, params, _ = op_inputs(feats, head, None)
    for benefit in ("paper", "probability"):
        want = torch.ops.fastshap.shapley(feats, "concat", list(params), [], labels, benefit)
        phi, stats = emulate(emu, feats, head, labels, None, benefit)
        if benefit == "paper":
            assert torch.equal(phi, want[0])
            # Efficiency: sum_i phi_i = v(N) = n for the correctly predicted sample, 0 for the other
            # (up to the rounding of each phi_i = k / n! to float32).
            expected = torch.tensor([float(n), 0.0], dtype=torch.float64)
            torch.testing.assert_close(phi.double().sum(1), expected, atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(phi, want[0], atol=1e-6, rtol=0)


def test_emulation_rejects_bad_arguments(emu):
    """The emulated op runs the compiled op's memory guards (csrc/shapley_common.cpp) before its plan."""
    feats = [torch.randn(4, 3), torch.randn(4, 2)]
    labels = torch.zeros(4, dtype=torch.long)
    w, b = torch.randn(5, 5), torch.randn(5)
    lim = H100_LIMITS
    mlp = [torch.randn(8, 5), torch.randn(8), torch.randn(3, 8), torch.randn(3)]
    for head, params, benefit, match in [
        ("concat", [w, torch.randn(6)], "paper", r"bias must be \(C,\)"),
        ("decision", [w, b], "paper", r"bias must be \(n, C\)"),
        ("mlp", [*mlp[:2], torch.randn(3, 7), mlp[3]], "paper", "weight2 must be"),
        ("mlp", [*mlp[:3], torch.randn(4)], "paper", "bias2 must be"),
        ("mlp", mlp[:3], "paper", "takes 4 parameters"),
        ("concat", [torch.randn(5, 6), b], "paper", r"weight must be \(C, D\)"),
        ("linear", [w, b], "paper", "unknown head kind"),
        ("concat", [w, b], "shapley", "benefit"),
    ]:
        with pytest.raises(ValueError, match=match):
            emu.shapley(feats, head, params, [], labels, benefit, *lim)
    with pytest.raises(ValueError, match="modalities"):
        emu.shapley([], "concat", [w, b], [], labels, "paper", *lim)
    with pytest.raises(ValueError, match="baselines"):
        emu.shapley(feats, "concat", [w, b], [torch.zeros(3)], labels, "paper", *lim)
    with pytest.raises(ValueError, match="no classes"):
        emu.shapley(feats, "concat", [torch.randn(0, 5), torch.randn(0)], [], labels, "paper", *lim)


# --- on a GPU ---------------------------------------------------------------------------------------------


def _require_cuda_backend():
    reason = backends.BACKENDS["cuda"].unavailable()
    if reason is not None and "built without" in reason:
        pytest.skip(f"backend 'cuda': {reason}")
    assert reason is None, f"backend 'cuda' cannot run on this GPU machine: {reason}"


def on(t, device):
    """t on `device` with the same strides (so transposed and strided layouts survive the move)."""
    if t is None:
        return None
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)
    return out.copy_(t)


def case_on(case, device):
    feats, head, labels, baselines = make_inputs(case)
    feats = [on(f, device) for f in feats]
    baselines = None if baselines is None else [on(b, device) for b in baselines]
    return feats, copy.deepcopy(head).to(device), on(labels, device), baselines


@pytest.mark.gpu
@pytest.mark.parametrize("case", KERNEL_CASES, ids=[c.id for c in KERNEL_CASES])
def test_cuda_matches_oracle(case):
    _require_cuda_backend()
    feats, head, labels, baselines = case_on(case, "cuda")
    phi, stats = fastshap.modality_shapley(
        feats, head, labels, baselines=baselines, benefit=case.benefit, backend="cuda", with_stats=True
    )
    assert phi.device.type == "cuda" and stats.device.type == "cuda"
    phi = phi.cpu()
    assert_matches_oracle(phi, expected_for(case), compute_eps(DTYPES[case.dtype]), f"{case.id} [cuda]")
    torch.testing.assert_close(stats[0].cpu(), phi.sum(0))
    assert torch.equal(stats[1].cpu(), (phi < 1).sum(0).float())


@pytest.mark.gpu
@pytest.mark.parametrize("other", ["torch", "triton"])
@pytest.mark.parametrize("case", PLAN_CASES, ids=[c.id for c in PLAN_CASES])
def test_cuda_matches_other_gpu_backends(case, other):
    _require_cuda_backend()
    feats, head, labels, baselines = case_on(case, "cuda")
    call = backends.Call(op_inputs(feats, head, None)[0], feats[0].device, feats[0].dtype, len(feats))
    reason = backends.why_not(other, call)
    if reason is not None and other == "triton":
        pytest.skip(f"backend 'triton' cannot run this case here: {reason}")
    assert reason is None, reason
    kw = dict(baselines=baselines, benefit=case.benefit)
    got = fastshap.modality_shapley(feats, head, labels, backend="cuda", **kw).cpu()
    want = fastshap.modality_shapley(feats, head, labels, backend=other, **kw).cpu()
    agree_outside_near_ties(got, want, case, f"{case.id}: cuda vs {other}")


# Cases whose kernel inputs involve no library GEMM or softmax (no shared baselines; concat and MLP heads):
# the GPU must reproduce its CPU emulation bit for bit (same fma order, same rounding helpers).
BITWISE_CASES = [
    c for c in PLAN_CASES if c.head in ("linear", "concat", "mlp") and c.baselines in ("none", "sample", "mixed")
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", BITWISE_CASES, ids=[c.id for c in BITWISE_CASES])
def test_cuda_equals_its_cpu_emulation(emu, case):
    _require_cuda_backend()
    feats, head, labels, baselines = make_inputs(case)
    want_phi, want_stats = emulate(emu, feats, head, labels, baselines, case.benefit)
    dfeats, dhead, dlabels, dbase = case_on(case, "cuda")
    kind, params, base = op_inputs(dfeats, dhead, dbase)
    phi, stats = torch.ops.fastshap.shapley(dfeats, kind, list(params), base, dlabels, case.benefit)
    if case.benefit == "probability":
        torch.testing.assert_close(phi.cpu(), want_phi, atol=1e-6, rtol=0)
    else:
        assert torch.equal(phi.cpu(), want_phi), case.id
    # Row 0 is a float sum over the batch, reduced in a different order on each device.
    torch.testing.assert_close(stats[0].cpu(), want_stats[0])
    assert torch.equal(stats[2:].cpu(), want_stats[2:]), case.id
    # Row 1 counts phi < 1: exact, except that a probability-benefit phi within the tolerance above of 1 may
    # fall on either side (the GPU's double exp is not the CPU's bit for bit).
    near_one = ((want_phi - 1).abs() <= 1e-6).sum(0) if case.benefit == "probability" else 0
    assert ((stats[1].cpu() - want_stats[1]).abs() <= near_one).all(), case.id


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [((72, 40), 150), ((520, 264), 1000)], ids=["72+40", "520+264"])
@pytest.mark.parametrize("kind", ["concat", "mlp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_cuda_staging_equals_cpu_kernel(dtype, kind, shape):
    """The staging paths that only wide features reach (the oracle cases are at most 12 wide): 16-byte
    loads, and the first layer's cp.async pipeline through two shared-memory stages with its waits and
    barriers, which the CPU emulation runs synchronously. On the GPU every layout must still give the CPU
    kernel's bits (dyadic inputs)."""
    _require_cuda_backend()
    dims, batch = shape
    head, labels, layouts, want = staging_inputs(dtype, kind, dims, batch, device="cuda")
    dhead, dlabels = copy.deepcopy(head).cuda(), labels.cuda()
    for name, feats in layouts.items():
        op_kind, params, _ = op_inputs(feats, dhead, None)
        phi, stats = torch.ops.fastshap.shapley(feats, op_kind, list(params), [], dlabels, "accuracy")
        assert torch.equal(phi.cpu(), want[0]), f"{name}: {int((phi.cpu() != want[0]).any(1).sum())} rows differ"
        assert torch.equal(stats[1:].cpu(), want[1][1:]), name


@pytest.fixture
def tensor_cores(monkeypatch):
    """FASTSHAP_CUDA_TENSOR_CORES=1 for one test (the CUDA launcher reads it on every call); skips on GPUs
    without them (before sm_80)."""
    _require_cuda_backend()
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("the tensor-core first layer needs sm_80 or later")
    monkeypatch.setenv("FASTSHAP_CUDA_TENSOR_CORES", "1")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "shape", [((72, 136), 150), ((70, 42), 150), ((520, 264), 1000)], ids=["72+136", "70+42", "520+264"]
)
@pytest.mark.parametrize("kind", ["concat", "mlp"])
@pytest.mark.parametrize("dtype", TC_DTYPES)
def test_cuda_tensor_cores_equal_cpu_kernel(tensor_cores, dtype, kind, shape):
    """The tensor-core first layer (ldmatrix + mma.sync, cp.async stages) on every feature layout, weights
    aligned or not (70 + 42), tail steps and partial tiles. Dyadic values with few significant bits make
    every product (tf32 ones too: their remainders are zero) and every partial sum exact, so the MMA's
    summation order cannot show: the CPU kernel's bits are the answer."""
    dims, batch = shape
    head, labels, layouts, want = staging_inputs(dtype, kind, dims, batch, device="cuda")
    dhead, dlabels = in_dtype(head, dtype).cuda(), labels.cuda()
    for name, feats in layouts.items():
        op_kind, params, _ = op_inputs(feats, dhead, None)
        phi, stats = torch.ops.fastshap.shapley(feats, op_kind, list(params), [], dlabels, "accuracy")
        assert torch.equal(phi.cpu(), want[0]), f"{name}: {int((phi.cpu() != want[0]).any(1).sum())} rows differ"
        assert torch.equal(stats[1:].cpu(), want[1][1:]), name


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", TC_DTYPES)
def test_cuda_tensor_cores_are_used_and_agree(tensor_cores, monkeypatch, dtype):
    """The switch takes effect: with the probability benefit phi is continuous in the logits, so the MMA's
    summation order shows in its last bits (some values differ from the FMA plan's), and only there."""
    g = torch.Generator().manual_seed(4)
    dims, classes, batch = [520, 264], 31, 2000
    head = heads.ConcatLinear(dims, classes).to("cuda", dtype)
    feats = [torch.randn(batch, d, generator=g).to("cuda", dtype) for d in dims]
    labels = torch.randint(0, classes, (batch,), generator=g).cuda()
    _, params, _ = op_inputs(feats, head, None)
    with_tc, _ = torch.ops.fastshap.shapley(feats, "concat", list(params), [], labels, "probability")
    monkeypatch.setenv("FASTSHAP_CUDA_TENSOR_CORES", "0")
    without, _ = torch.ops.fastshap.shapley(feats, "concat", list(params), [], labels, "probability")
    assert bool((with_tc != without).any()), "FASTSHAP_CUDA_TENSOR_CORES=1 changed nothing: not taken?"
    torch.testing.assert_close(with_tc, without, atol=1e-5, rtol=0)


TC_CASES = [c for c in KERNEL_CASES if c.dtype in ("fp16", "bf16", "fp32")]
#: Unit of the oracle's error bound for the tensor-core plans: fp32 "3xTF32" products are accurate to about
#: 2^-21 (not fp32's 2^-24), and the MMA's fp32 sums may truncate; as for Triton's tf32x3 (test_triton.py),
#: the bound is taken 8x wider than fp32's.
TENSOR_CORE_EPS = 2.0**-20


@pytest.mark.gpu
@pytest.mark.parametrize("case", TC_CASES, ids=[c.id for c in TC_CASES])
def test_cuda_tensor_cores_match_oracle(tensor_cores, case):
    """The core case matrix's fp16/bf16/fp32 cases with the head in the features' dtype (what makes them
    eligible), against the oracle of that head, near-ties left out as for the other GPU backends."""
    feats, head, labels, baselines = make_inputs(case)
    head = in_dtype(head, DTYPES[case.dtype])
    expected = oracle_shapley(feats, head, labels, baselines, case.benefit)
    dfeats = [on(f, "cuda") for f in feats]
    dbase = None if baselines is None else [on(b, "cuda") for b in baselines]
    phi = fastshap.modality_shapley(
        dfeats, copy.deepcopy(head).cuda(), labels.cuda(), baselines=dbase, benefit=case.benefit, backend="cuda"
    )
    # At the wider bound small batches have many near-ties (as in test_triton.py's GPU runs): up to half.
    assert_matches_oracle(
        phi.cpu(),
        expected,
        TENSOR_CORE_EPS,
        f"{case.id} [cuda, tensor cores]",
        max_excluded=0.5,
        max_near_tie_pairs=0.5,
    )


def _small_gpu_inputs(kind, device="cuda", batch=33, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    dims, classes = [5, 8, 3], 11
    head = {
        "concat": lambda: heads.ConcatLinear(dims, classes),
        "decision": lambda: heads.DecisionFusion(dims, classes),
        "mlp": lambda: heads.ConcatMLP(dims, 16, classes),
    }[kind]()
    feats = [torch.randn(batch, d, generator=g).to(device, dtype) for d in dims]
    labels = torch.randint(0, classes, (batch,), generator=g).to(device)
    spec = _head_spec(head.to(device), dims, feats[0].device)
    return feats, spec.params, labels


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["concat", "decision", "mlp"])
def test_cuda_opcheck(kind):
    _require_cuda_backend()
    feats, params, labels = _small_gpu_inputs(kind)
    op = torch.ops.fastshap.shapley.default
    for base in ([], [torch.randn(f.shape[1], device="cuda") for f in feats], [torch.randn_like(f) for f in feats]):
        torch.library.opcheck(op, (feats, kind, list(params), base, labels, "paper"))
    torch.library.opcheck(op, (feats, kind, list(params), [], labels, "probability"))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["concat", "decision", "mlp"])
def test_cuda_torch_compile_fullgraph(kind):
    _require_cuda_backend()
    feats, params, labels = _small_gpu_inputs(kind, dtype=torch.bfloat16)

    def value(fs, ps, y):
        phi, stats = torch.ops.fastshap.shapley(fs, kind, list(ps), [], y, "paper")
        return phi * 2, stats

    compiled = torch.compile(value, fullgraph=True)
    got, want = compiled(feats, params, labels), value(feats, params, labels)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.gpu
def test_cuda_runs_on_the_current_stream():
    """The op runs on the caller's current stream: with the default stream held busy by a long sleep, the
    results on a side stream are complete and correct while the default stream is still running."""
    _require_cuda_backend()
    feats, params, labels = _small_gpu_inputs("concat", batch=4099)
    want = torch.ops.fastshap.shapley(feats, "concat", list(params), [], labels, "paper")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):  # warm the side stream's allocator: no cudaMalloc in the timed part
        torch.ops.fastshap.shapley(feats, "concat", list(params), [], labels, "paper")
    torch.cuda.synchronize()
    torch.cuda._sleep(int(2e9))  # about a second of GPU time on the default stream
    with torch.cuda.stream(side):
        got = torch.ops.fastshap.shapley(feats, "concat", list(params), [], labels, "paper")
        phi, stats = got[0].cpu(), got[1].cpu()  # waits for the side stream only
    still_busy = not torch.cuda.default_stream().query()
    torch.cuda.synchronize()
    assert torch.equal(phi, want[0].cpu()) and torch.equal(stats, want[1].cpu())
    assert still_busy, "the op waited for the default stream"


@pytest.mark.gpu
def test_cuda_uses_the_features_device():
    _require_cuda_backend()
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    feats, params, labels = _small_gpu_inputs("mlp", device="cuda:1")
    with torch.cuda.device(0):
        phi, _ = torch.ops.fastshap.shapley(feats, "mlp", list(params), [], labels, "accuracy")
    assert phi.device == torch.device("cuda:1")
    want, _ = torch.ops.fastshap.shapley(
        [f.cpu() for f in feats], "mlp", [p.cpu() for p in params], [], labels.cpu(), "accuracy"
    )
    assert (phi.cpu() != want).any(1).sum() <= 1


@pytest.mark.gpu
def test_cuda_rejects_mixed_devices_and_handles_empty_batches():
    _require_cuda_backend()
    feats, params, labels = _small_gpu_inputs("concat")
    with pytest.raises(ValueError, match="weight is on cuda"):
        torch.ops.fastshap.shapley([f.cpu() for f in feats], "concat", list(params), [], labels.cpu(), "paper")
    with pytest.raises(ValueError, match="bias is on cpu"):
        torch.ops.fastshap.shapley(feats, "concat", [params[0], params[1].cpu()], [], labels, "paper")
    phi, stats = torch.ops.fastshap.shapley([f[:0] for f in feats], "concat", list(params), [], labels[:0], "paper")
    assert phi.shape == (0, 3) and phi.is_cuda and torch.equal(stats.cpu(), torch.zeros(4, 3))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_large_shape_sanity(dtype):
    """B = 65,536, d = 512, C = 31, n = 2 (the benchmark shape): values in {-0.5, 0, 0.5, 1, 1.5}, efficiency
    (phi_0 + phi_1 = v(N)), and agreement with the torch backend on the same GPU except for rare near-ties."""
    _require_cuda_backend()
    _large_shape_check(dtype, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_tensor_cores_large_shape_sanity(tensor_cores, dtype):
    """The same with the head in the features' dtype: the tensor-core plan at the benchmark shape."""
    _large_shape_check(dtype, dtype)


def _large_shape_check(dtype, head_dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    batch, d, classes = 65536, 512, 31
    head = nn.Linear(2 * d, classes).to("cuda", head_dtype)
    feats = [torch.randn(batch, d, device="cuda", generator=g).to(dtype) for _ in range(2)]
    with torch.no_grad():  # the full model's logits, exact in float64 whatever the head's dtype
        full = nn.functional.linear(torch.cat(feats, 1).double(), head.weight.double(), head.bias.double())
    labels = torch.where(
        torch.rand(batch, device="cuda", generator=g) < 0.5,
        full.argmax(1),
        torch.randint(0, classes, (batch,), device="cuda", generator=g),
    )
    phi = fastshap.modality_shapley(feats, head, labels, backend="cuda")
    allowed = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5], device="cuda")
    assert bool(torch.isin(phi, allowed).all())
    correct = (full.argmax(1) == labels).float() * 2
    near = full.topk(2, 1).values.diff(dim=1).abs().squeeze(1) < 1e-3
    assert bool((phi.sum(1) == correct)[~near].all())
    ref = fastshap.modality_shapley(feats, head, labels, backend="torch")
    assert int((phi != ref).any(1).sum()) <= batch * 1e-3
    assert math.isfinite(float(phi.sum()))
