"""The cases of the Triton kernels' tests and what they share: a case's inputs on a device, the oracle on CPU
copies, and the comparison rule. Used by tests/kernels/test_triton.py and the scripts in tools/
(triton_compile_check.py, gpu_sanitize_check.py).

Tolerance on principle: the discrete benefits must equal the oracle's exact rationals on every sample whose
argmax no float error can flip (``OracleResult.decided``). The kernels' partial products come from
``tl.dot`` (another summation order than torch's GEMMs, and on a GPU fp32 operands go through "tf32x3"),
so equality with the torch backend is also only required outside those near-ties. "probability" matches
to 1e-5.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from cases import draw_baselines, draw_labels, layout, make_head
from oracle import oracle_shapley
from torch import nn

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MAX_EXCLUDED = 0.02
PROBABILITY_ATOL = 1e-5
#: Unit of the error bound for "decided" samples: fp32 under the interpreter (numpy fp32 GEMMs); on a GPU
#: the fp32 "tf32x3" products are accurate to about 2^-21, so the bound is taken 8x wider.
INTERPRETER_EPS = torch.finfo(torch.float32).eps
GPU_EPS = 2.0**-20


def eps_for(device) -> float:
    return GPU_EPS if str(device).startswith("cuda") else INTERPRETER_EPS


@dataclass(frozen=True)
class Case:
    n: int
    C: int
    B: int
    head: str  # "linear" (nn.Linear) | "concat" | "decision" | "mlp"
    dtype: str  # key of DTYPES
    layout: str  # "contig" | "T" (column-major views) | "strided" (every other column and label)
    baselines: str  # "none" | "shared" (d_i,) | "sample" (B, d_i) | "mixed"
    benefit: str
    weights: str = "fp32"  # head parameter dtype: "fp32" or "same" (the features' dtype)

    @property
    def id(self) -> str:
        return (
            f"n{self.n}-C{self.C}-B{self.B}-{self.head}-{self.dtype}-{self.layout}-{self.baselines}-"
            f"{self.benefit}-w{self.weights}"
        )

    @property
    def seed(self) -> int:
        return sum(ord(c) * (i + 1) for i, c in enumerate(self.id)) % (2**31)


def make_inputs(case: Case, device, hidden: int = 24):
    """(features, head, labels, baselines) on `device`, reproducible from the case id."""
    g = torch.Generator().manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    dims = [int(d) for d in torch.randint(1, 21, (case.n,), generator=g)]
    feats = [layout(torch.randn(case.B, d, generator=g).to(dtype), case.layout) for d in dims]
    head = make_head(case.head, dims, case.C, g, hidden)
    if case.weights == "same":
        head = head.to(dtype).float()  # parameters rounded to the features' dtype
    with torch.no_grad():
        as32 = [f.float() for f in feats]
        logits = head(torch.cat(as32, 1)) if isinstance(head, nn.Linear) else head(as32)
    if case.weights == "same":
        head = head.to(dtype)
    labels = draw_labels(logits, case.C, g, case.layout)
    baselines = draw_baselines(case.baselines, dims, case.B, dtype, case.layout, g)
    if str(device) != "cpu":  # .to() keeps the strides of these layouts
        feats = [f.to(device) for f in feats]
        labels = labels.to(device)
        baselines = [b.to(device) for b in baselines] if baselines else None
        head = head.to(device)
    return feats, head, labels, baselines


def oracle_for(feats, head, labels, baselines, benefit):
    """The float64 oracle on CPU copies of the inputs."""
    return oracle_shapley(
        [f.cpu() for f in feats],
        copy.deepcopy(head).cpu(),
        labels.cpu(),
        [b.cpu() for b in baselines] if baselines else None,
        benefit,
    )


def assert_matches(phi, reference_phi, expected, eps, what, max_excluded=MAX_EXCLUDED):
    """phi (B, n) against the oracle (and the torch backend's reference_phi) outside near-ties; at most
    `max_excluded` of the samples may be near-ties."""
    batch = expected.phi.shape[0]
    phi, reference_phi = phi.cpu(), reference_phi.cpu()
    assert phi.dtype == torch.float32 and tuple(phi.shape) == tuple(expected.phi.shape), what
    if expected.benefit == "probability":
        torch.testing.assert_close(phi.double(), expected.phi, atol=PROBABILITY_ATOL, rtol=0, msg=what)
        torch.testing.assert_close(phi, reference_phi, atol=PROBABILITY_ATOL, rtol=0, msg=what)
        return
    decided = expected.decided(eps)
    excluded = int((~decided).sum())
    assert excluded <= max(2, max_excluded * batch), f"{what}: {excluded} of {batch} samples are near-ties"
    want = expected.phi_float32()
    wrong = decided & (phi != want).any(1)
    if bool(wrong.any()):
        b = int(wrong.nonzero()[0])
        exact = [str(x) for x in expected.phi_exact[b]]
        raise AssertionError(f"{what}: sample {b}: got {phi[b].tolist()}, exact {exact}")
    differ = decided & (phi != reference_phi).any(1)
    assert not bool(differ.any()), f"{what}: differs from the torch backend on decided samples"


def op_kind(case: Case) -> str:
    """The head kind of fastshap.head_kinds a case's head reduces to (nn.Linear is a concat head)."""
    return "concat" if case.head == "linear" else case.head
