"""The core case matrix of the kernel tests and what they share about it: the seeded cases, their inputs, the
oracle's answer, the comparison rule (exact outside near-ties), and the op's arguments as
``fastshap.modality_shapley`` hands them to a kernel. Used by tests/kernels/*, tests/bench and the scripts in
tools/ (test modules do not import each other).

The cases cover n = 1..8, C in {1, 2, 31, 101, 1000}, B in {0, 1, 7, 1000}, unequal widths, contiguous,
transposed and strided inputs, fp32/fp16/bf16/fp64, no/shared/per-sample/mixed baselines, the three
benefits and every head kind, without taking their full product. Discrete benefits must match exactly on
every sample whose argmax no float error can flip (oracle.decided), and those left out must be rare;
"probability" must match to 1e-5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import torch
from cases import draw_baselines, draw_labels, layout, make_head
from oracle import dyadic, oracle_shapley
from torch import nn

from fastshap import heads
from fastshap.api import _head_spec

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
HEAD_KINDS = ("linear", "concat", "decision", "mlp", "callable")
#: Near-ties must be rare: at most this share of a case's samples is left out (at least one is allowed),
#: and at most this share of its (sample, coalition) pairs has a margin within the float error bound.
MAX_EXCLUDED_SAMPLES = 0.05
MAX_NEAR_TIE_COALITIONS = 1e-3
PROBABILITY_ATOL = 1e-5


@dataclass(frozen=True)
class Case:
    n: int
    C: int
    B: int
    head: str  # one of HEAD_KINDS
    dtype: str  # key of DTYPES
    layout: str  # "contig" | "T" (transposed views) | "strided" (every other column, strided labels)
    baselines: str  # "none" | "shared" (d_i,) | "sample" (B, d_i) | "mixed" (both kinds in one call)
    benefit: str

    @property
    def id(self) -> str:
        return f"n{self.n}-C{self.C}-B{self.B}-{self.head}-{self.dtype}-{self.layout}-{self.baselines}-{self.benefit}"

    @property
    def seed(self) -> int:
        return sum(ord(c) * (i + 1) for i, c in enumerate(self.id))


# A covering set: each value of each axis appears several times, in varied combinations; the large
# sizes (B = 1000, C = 1000, n = 8) are kept apart so that the float64 oracle stays fast.
CASES = [
    Case(1, 2, 7, "linear", "fp32", "contig", "none", "paper"),
    Case(1, 31, 1, "decision", "fp64", "T", "shared", "accuracy"),
    Case(1, 1, 7, "mlp", "fp16", "strided", "sample", "probability"),
    Case(1, 101, 1000, "callable", "fp32", "T", "none", "accuracy"),
    Case(2, 2, 1000, "concat", "fp32", "T", "none", "paper"),
    Case(2, 31, 1000, "linear", "fp32", "contig", "shared", "accuracy"),
    Case(2, 101, 7, "decision", "bf16", "strided", "none", "paper"),
    Case(2, 1000, 7, "mlp", "fp32", "contig", "sample", "accuracy"),
    Case(2, 31, 1000, "decision", "fp32", "contig", "sample", "probability"),
    Case(2, 31, 0, "linear", "fp32", "T", "shared", "paper"),
    Case(2, 31, 7, "callable", "fp64", "strided", "shared", "paper"),
    Case(3, 1000, 7, "linear", "fp16", "T", "sample", "paper"),
    Case(3, 31, 1000, "mlp", "fp32", "strided", "shared", "paper"),
    Case(3, 2, 1000, "decision", "fp64", "contig", "none", "accuracy"),
    Case(3, 101, 1000, "callable", "fp32", "contig", "none", "paper"),
    Case(3, 31, 7, "concat", "bf16", "T", "mixed", "probability"),
    Case(3, 101, 0, "decision", "fp16", "contig", "sample", "accuracy"),
    Case(4, 101, 7, "concat", "fp32", "strided", "sample", "accuracy"),
    Case(4, 31, 1000, "linear", "bf16", "contig", "none", "paper"),
    Case(4, 1, 1, "linear", "fp32", "contig", "none", "accuracy"),
    Case(4, 1000, 7, "decision", "fp32", "T", "shared", "probability"),
    Case(4, 31, 1000, "mlp", "fp16", "T", "mixed", "paper"),
    Case(5, 31, 1000, "concat", "fp64", "contig", "shared", "paper"),
    Case(5, 2, 7, "mlp", "bf16", "T", "none", "accuracy"),
    Case(5, 101, 7, "callable", "fp16", "strided", "sample", "accuracy"),
    Case(5, 1000, 1, "linear", "fp32", "contig", "mixed", "paper"),
    Case(5, 31, 1000, "decision", "bf16", "strided", "shared", "paper"),
    Case(6, 31, 7, "decision", "fp16", "contig", "sample", "accuracy"),
    Case(6, 101, 1000, "linear", "fp32", "T", "none", "probability"),
    Case(6, 2, 1, "concat", "fp32", "strided", "shared", "paper"),
    Case(6, 31, 1000, "mlp", "fp64", "strided", "none", "accuracy"),
    Case(7, 31, 7, "mlp", "fp64", "contig", "shared", "paper"),
    Case(7, 1000, 7, "concat", "fp32", "strided", "none", "accuracy"),
    Case(7, 2, 1000, "callable", "bf16", "T", "mixed", "probability"),
    Case(7, 101, 7, "decision", "fp32", "contig", "none", "paper"),
    Case(8, 31, 7, "linear", "fp32", "T", "sample", "accuracy"),
    Case(8, 101, 7, "decision", "fp32", "strided", "none", "paper"),
    Case(8, 1000, 7, "concat", "fp16", "contig", "shared", "paper"),
    Case(8, 2, 7, "mlp", "fp32", "contig", "none", "probability"),
    Case(8, 1, 1, "callable", "fp32", "contig", "none", "paper"),
    Case(8, 31, 0, "mlp", "bf16", "strided", "mixed", "probability"),
]
#: The cases a kernel runs (callables take the torch path), and those with samples (a plan to make).
KERNEL_CASES = [c for c in CASES if c.head != "callable"]
PLAN_CASES = [c for c in KERNEL_CASES if c.B > 0]


def backends_for(head_kind: str):
    # The compiled backend runs the fastshap heads and nn.Linear; callables take the torch path only
    # (test_ops checks that backend="cpp" refuses them).
    return ("torch",) if head_kind == "callable" else ("torch", "cpp")


def make_inputs(case: Case):
    """(features, head, labels, baselines) of a case, reproducible from its id."""
    g = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    dims = [int(d) for d in torch.randint(1, 13, (case.n,), generator=g)]
    if case.n > 1 and len(set(dims)) == 1:
        dims[-1] += 1
    feats = [layout(torch.randn(case.B, d, generator=g).to(dtype), case.layout) for d in dims]
    head = make_head(case.head, dims, case.C, g)
    with torch.no_grad():
        as32 = [f.float() for f in feats]
        logits = head(torch.cat(as32, 1)) if isinstance(head, nn.Linear) else head(as32)
    labels = draw_labels(logits, case.C, g, case.layout)
    baselines = draw_baselines(case.baselines, dims, case.B, dtype, case.layout, g)
    return feats, head, labels, baselines


@cache
def expected_for(case: Case):
    feats, head, labels, baselines = make_inputs(case)
    return oracle_shapley(feats, head, labels, baselines, case.benefit)


def compute_eps(dtype: torch.dtype) -> float:
    """Unit roundoff of the dtype the backends compute in: float64 for float64 features, else float32."""
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


def assert_matches_oracle(
    phi: torch.Tensor,
    expected,
    eps: float,
    what: str,
    *,
    max_excluded: float = MAX_EXCLUDED_SAMPLES,
    max_near_tie_pairs: float = MAX_NEAR_TIE_COALITIONS,
) -> int:
    """Checks phi (B, n) against the oracle; returns the number of near-tie samples left out. A wider `eps`
    (GPU tensor-core sums) leaves more near-ties: the shares allowed can be raised for it."""
    batch = expected.phi.shape[0]
    assert phi.dtype == torch.float32 and tuple(phi.shape) == tuple(expected.phi.shape), what
    if expected.benefit == "probability":
        torch.testing.assert_close(phi.double(), expected.phi, atol=PROBABILITY_ATOL, rtol=0, msg=what)
        return 0
    decided = expected.decided(eps)
    excluded = int((~decided).sum())
    assert excluded <= max(1, max_excluded * batch), f"{what}: {excluded} of {batch} samples are near-ties"
    pairs = expected.near_tie_coalitions(eps)
    assert pairs <= max(1, max_near_tie_pairs * expected.margins.numel()), f"{what}: {pairs} near-tie coalitions"
    want = expected.phi_float32()
    wrong = decided & (phi != want).any(1)
    if bool(wrong.any()):
        b = int(wrong.nonzero()[0])
        raise AssertionError(
            f"{what}: sample {b} of {batch}: got {phi[b].tolist()}, exact {[str(x) for x in expected.phi_exact[b]]} "
            f"({int(wrong.sum())} samples differ)"
        )
    # Even the near-ties must hold multiples of 1/(n! T) for T = 1: the values are exact rationals.
    n = phi.shape[1]
    scaled = phi.double() * math.factorial(n)
    assert torch.allclose(scaled, scaled.round(), atol=1e-3 * max(1, math.factorial(n) / 1e4)), what
    return excluded


def agree_outside_near_ties(got, want, case: Case, what: str) -> None:
    """Two backends' phi of a case: equal on every sample the oracle calls decided (probability: to 1e-5)."""
    expected = expected_for(case)
    if case.benefit == "probability":
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=what)
        return
    decided = expected.decided(compute_eps(DTYPES[case.dtype]))
    differ = decided & (got != want).any(1)
    assert not bool(differ.any()), f"{what}: {int(differ.sum())} decided samples differ"


# --- the op's arguments -----------------------------------------------------------------------------------


def kernel_baselines(baselines, feats) -> list:
    """Baselines as the op takes them from modality_shapley: [] for None, each cast to the features' dtype,
    and shared ones expanded to (B, d_i) when the list mixes both kinds (the op takes one layout)."""
    if baselines is None:
        return []
    base = [b.to(f.dtype) for b, f in zip(baselines, feats)]
    if any(b.dim() == 2 for b in base):
        base = [b.expand(feats[0].shape[0], -1) if b.dim() == 1 else b for b in base]
    return base


def op_inputs(feats, head, baselines):
    """(head kind, parameters list, baselines list): the arguments of ``torch.ops.fastshap.shapley`` besides
    the features, labels and benefit, as fastshap.modality_shapley hands them to a kernel."""
    spec = _head_spec(head, [f.shape[1] for f in feats], feats[0].device)
    return spec.kind, list(spec.params), kernel_baselines(baselines, feats)


def head_params(kind: str, head) -> list:
    """The parameters of a fastshap.heads module of `kind` in the op's order (fastshap.head_kinds)."""
    if kind == "concat":
        return [head.fc.weight.detach(), head.fc.bias.detach()]
    if kind == "decision":
        return [p.detach() for p in head.packed()]
    return [head.fc1.weight.detach(), head.fc1.bias.detach(), head.fc2.weight.detach(), head.fc2.bias.detach()]


# --- the CUDA kernel's staging inputs (its emulation, its GPU tests, the sanitizer runs) -----------------------

#: Feature dtypes whose first layer may run on tensor cores (with a head of the same dtype).
TC_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def in_dtype(head, dtype):
    """The head with its parameters in `dtype` (exact for the staging inputs' dyadic values): what makes a
    call eligible for the tensor-core first layer."""
    import copy

    return copy.deepcopy(head).to(dtype)


def staging_inputs(dtype, kind, dims=(72, 40), batch=150, device="cpu"):
    """(head, labels, {layout name: features}, the CPU kernel's (phi, stats)) for the staging tests: dyadic
    values, so that every sum is exact and any staging or plan must give the CPU kernel's bits. The
    features come contiguous (16-byte loads), as aligned rows of a wider tensor (16-byte loads), misaligned
    and column-major (element loads)."""
    import fastshap  # noqa: F401  (loads the compiled op)

    g = torch.Generator().manual_seed(12)
    dims, classes = list(dims), 6
    head = heads.ConcatMLP(dims, 40, classes) if kind == "mlp" else heads.ConcatLinear(dims, classes)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(dyadic(p.shape, -8, 8, 16, g))
    values = [dyadic((batch, d), -4, 4, 4, g).to(dtype) for d in dims]
    labels = torch.randint(0, classes, (batch,), generator=g)

    def inside(offset):  # the values as a view at column `offset` of a wider tensor (row stride d + 8)
        views = []
        for v in values:
            # NaN around the view: a kernel that lets a neighbouring column into a sum (a 16-byte load past
            # a row's end, a zero weight times it) gives NaN rows, where zeros would hide it.
            w = torch.full((batch, v.shape[1] + 8), float("nan"), dtype=dtype, device=device)
            w[:, offset : offset + v.shape[1]] = v.to(device)
            views.append(w[:, offset : offset + v.shape[1]])
        return views

    layouts = {
        "contiguous": [v.to(device) for v in values],
        "aligned rows of a wider tensor": inside(8),
        "misaligned": inside(1),
        "column-major": [v.t().contiguous().t().to(device) for v in values],
    }
    op_kind, params, _ = op_inputs(values, head, None)
    want = torch.ops.fastshap.shapley(values, op_kind, params, [], labels, "accuracy")
    assert want[0].abs().sum() > 0
    return head, labels, layouts, want
