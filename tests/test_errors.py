"""Malformed calls raise ValueError or TypeError with a message that names the problem, on every backend.

Each case builds a valid call (n = 2, widths [3, 4], B = 6, C = 5, nn.Linear head) and breaks one thing.
The 'meta' device stands in for a second device on this CPU-only machine.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fastshap
from fastshap import heads
from oracle import NonlinearHead

DIMS, BATCH, CLASSES = [3, 4], 6, 5


def valid_call():
    g = torch.Generator().manual_seed(0)
    head = nn.Linear(sum(DIMS), CLASSES)
    feats = [torch.randn(BATCH, d, generator=g) for d in DIMS]
    labels = torch.randint(0, CLASSES, (BATCH,), generator=g)
    return {"features": feats, "head": head, "labels": labels, "baselines": None, "benefit": "paper"}


def _with(**changes):
    def build():
        call = valid_call()
        for key, fn in changes.items():
            call[key] = fn(call)
        return call

    return build


def _feature(i, fn):
    return _with(features=lambda c: [fn(f) if j == i else f for j, f in enumerate(c["features"])])


def _nan_head(c):
    head = nn.Linear(sum(DIMS), CLASSES)
    with torch.no_grad():
        head.weight[1, 2] = math.nan
    return head


def _huge_head(c):
    head = nn.Linear(sum(DIMS), CLASSES)
    with torch.no_grad():
        head.weight[:, 3:] = 1e20  # finite features (~1e30) times these overflow float32
    return head


# (id, build the call, exception type, message fragment)
CASES = [
    ("features-a-tensor", _with(features=lambda c: torch.cat(c["features"], 1)), TypeError, "list or tuple"),
    ("features-none", _with(features=lambda c: None), TypeError, "list or tuple"),
    ("n0-no-modalities", _with(features=lambda c: []), ValueError, "features is empty"),
    (
        "n17-too-many-modalities",
        _with(features=lambda c: [torch.randn(BATCH, 1) for _ in range(17)], head=lambda c: nn.Linear(17, CLASSES)),
        ValueError,
        r"17 modalities.*n <= 16",
    ),
    ("feature-not-a-tensor", _feature(1, lambda f: f.tolist()), TypeError, r"features\[1\] is a list"),
    ("feature-3d", _feature(0, lambda f: f.unsqueeze(-1)), ValueError, r"features\[0\] must be 2-D .*\(6, 3, 1\)"),
    ("feature-1d", _feature(1, lambda f: f[:, 0]), ValueError, r"features\[1\] must be 2-D"),
    ("feature-integer-dtype", _feature(0, lambda f: f.long()), TypeError, r"features\[0\] has dtype torch.int64"),
    ("feature-zero-width", _feature(1, lambda f: f[:, :0]), ValueError, r"features\[1\] has zero width"),
    ("batch-size-mismatch", _feature(1, lambda f: f[:4]), ValueError, r"features\[1\] has batch size 4.*has 6"),
    ("dtype-mismatch", _feature(1, lambda f: f.double()), TypeError, r"features\[1\] is torch.float64.*one dtype"),
    ("device-mismatch-features", _feature(1, lambda f: f.to("meta")), ValueError, r"features\[1\] is on meta"),
    (
        "device-mismatch-head",
        _with(head=lambda c: nn.Linear(7, CLASSES, device="meta")),
        ValueError,
        "parameters are on meta",
    ),
    ("device-mismatch-labels", _with(labels=lambda c: c["labels"].to("meta")), ValueError, "labels are on meta"),
    ("labels-float", _with(labels=lambda c: c["labels"].float()), TypeError, r"labels must be integer.*torch.float32"),
    ("labels-bool", _with(labels=lambda c: c["labels"] > 2), TypeError, r"labels must be integer.*torch.bool"),
    ("labels-a-list", _with(labels=lambda c: c["labels"].tolist()), TypeError, "labels must be an integer tensor"),
    ("labels-2d", _with(labels=lambda c: c["labels"].view(-1, 1)), ValueError, r"labels must be \(B,\).*\(6, 1\)"),
    ("labels-scalar", _with(labels=lambda c: torch.tensor(1)), ValueError, r"labels must be \(B,\) = \(6,\)"),
    ("labels-count", _with(labels=lambda c: c["labels"][:5]), ValueError, "5 labels for a batch of 6"),
    (
        "label-too-large",
        _with(labels=lambda c: c["labels"].index_fill(0, torch.tensor([3]), 5)),
        ValueError,
        r"label 5 is outside \[0, 5\)",
    ),
    (
        "label-negative",
        _with(labels=lambda c: c["labels"].index_fill(0, torch.tensor([0]), -1)),
        ValueError,
        r"label -1 is outside \[0, 5\)",
    ),
    (
        "nan-features",
        _feature(1, lambda f: f.index_fill(0, torch.tensor([2]), math.nan)),
        ValueError,
        r"modality 1 hold NaN or Inf",
    ),
    (
        "inf-features",
        _feature(0, lambda f: f.index_fill(0, torch.tensor([4]), -math.inf)),
        ValueError,
        r"modality 0 hold NaN or Inf",
    ),
    (
        "nan-baseline",
        _with(baselines=lambda c: [torch.zeros(3), torch.tensor([0.0, math.nan, 0.0, 0.0])]),
        ValueError,
        r"baselines of modality 1 hold NaN or Inf",
    ),
    (
        "overflowing-contribution",
        _with(features=lambda c: [c["features"][0], c["features"][1] * 1e30], head=_huge_head),
        ValueError,
        r"modality 1's finite features .* overflow float32",
    ),
    ("nan-head-weights", _with(head=_nan_head), ValueError, "head parameters hold NaN or Inf"),
    (
        "linear-head-width",
        _with(head=lambda c: nn.Linear(8, CLASSES)),
        ValueError,
        r"Linear head takes 8 inputs.*7 in all",
    ),
    (
        "concat-head-dims",
        _with(head=lambda c: heads.ConcatLinear([4, 3], CLASSES)),
        ValueError,
        r"ConcatLinear head was built for feature widths \[4, 3\], got \[3, 4\]",
    ),
    (
        "decision-head-dims",
        _with(head=lambda c: heads.DecisionFusion([3], CLASSES)),
        ValueError,
        r"DecisionFusion head was built for.*\[3\]",
    ),
    (
        "mlp-head-dims",
        _with(head=lambda c: heads.ConcatMLP([3, 5], 8, CLASSES)),
        ValueError,
        r"ConcatMLP head was built for.*\[3, 5\]",
    ),
    (
        "head-not-callable",
        _with(head=lambda c: "linear"),
        TypeError,
        "head must be nn.Linear, a fastshap.heads module or a callable",
    ),
    ("baselines-a-tensor", _with(baselines=lambda c: torch.zeros(7)), TypeError, "baselines must be None or a list"),
    ("baselines-count", _with(baselines=lambda c: [torch.zeros(3)]), ValueError, "1 baselines given for 2 modalities"),
    (
        "baseline-shape",
        _with(baselines=lambda c: [torch.zeros(3), torch.zeros(3)]),
        ValueError,
        r"baselines\[1\] must be \(4,\) or \(6, 4\), got \(3,\)",
    ),
    (
        "baseline-batch",
        _with(baselines=lambda c: [torch.zeros(3), torch.zeros(5, 4)]),
        ValueError,
        r"baselines\[1\] must be \(4,\) or \(6, 4\), got \(5, 4\)",
    ),
    (
        "baseline-not-a-tensor",
        _with(baselines=lambda c: [torch.zeros(3), [0.0] * 4]),
        TypeError,
        r"baselines\[1\] is a list",
    ),
    (
        "baseline-device",
        _with(baselines=lambda c: [torch.zeros(3, device="meta"), torch.zeros(4)]),
        ValueError,
        r"baselines\[0\] is on meta",
    ),
    ("unknown-benefit", _with(benefit=lambda c: "shapley"), ValueError, r"unknown benefit 'shapley'.*'paper'"),
]


@pytest.mark.parametrize("backend", ["torch", "cpp", "auto"])
@pytest.mark.parametrize("build,error,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_call(build, error, match, backend):
    call = build()
    with pytest.raises(error, match=match):
        fastshap.modality_shapley(
            call["features"],
            call["head"],
            call["labels"],
            baselines=call["baselines"],
            benefit=call["benefit"],
            backend=backend,
        )


def test_the_valid_call_is_valid():
    """The cases above break one thing each: the unbroken call runs on every backend."""
    for backend in ("torch", "cpp", "auto"):
        call = valid_call()
        phi = fastshap.modality_shapley(call["features"], call["head"], call["labels"], backend=backend)
        assert phi.shape == (BATCH, 2)


def test_unknown_backend():
    call = valid_call()
    with pytest.raises(ValueError, match=r"unknown backend 'gpu'.*'torch'.*'cpp'"):
        fastshap.modality_shapley(call["features"], call["head"], call["labels"], backend="gpu")
    with pytest.raises(TypeError, match="backend must be a name"):
        fastshap.modality_shapley(call["features"], call["head"], call["labels"], backend=None)


@pytest.mark.parametrize("value", [True, "yes"])
def test_defer_checks_must_be_a_deferred_checks(value):
    """defer_checks=True reads naturally but would have nowhere to put the counts: a clear TypeError."""
    call = valid_call()
    with pytest.raises(TypeError, match=r"defer_checks must be a fastshap.DeferredChecks .* got (bool|str)"):
        fastshap.modality_shapley(call["features"], call["head"], call["labels"], defer_checks=value)


# Errors specific to callable heads (torch backend): the callable is only known by what it returns.


def _callable_call(**changes):
    g = torch.Generator().manual_seed(1)
    head = NonlinearHead(DIMS, CLASSES, generator=g)
    feats = [torch.randn(BATCH, d, generator=g) for d in DIMS]
    call = {"features": feats, "head": head, "labels": torch.randint(0, CLASSES, (BATCH,), generator=g)}
    call.update(changes)
    return call


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize(
    "changes,error,match",
    [
        ({"labels": torch.tensor([0, 1, 2, 3, 4, 5])}, ValueError, r"label 5 is outside \[0, 5\)"),
        ({"labels": torch.zeros(BATCH, 3, dtype=torch.long)}, ValueError, r"logits of shape .*expected"),
        ({"head": lambda xs: torch.zeros(xs[0].shape[0], 2, 3)}, ValueError, r"logits of shape \(.*, 2, 3\)"),
        ({"head": lambda xs: torch.zeros(xs[0].shape[0] + 1, CLASSES)}, ValueError, "logits of shape"),
        ({"head": lambda xs: [torch.zeros(xs[0].shape[0], CLASSES)]}, TypeError, "returned list"),
        ({"head": lambda xs: torch.full((xs[0].shape[0], CLASSES), math.nan)}, ValueError, "NaN or Inf"),
        ({"head": nn.Sequential(nn.Linear(sum(DIMS), CLASSES))}, TypeError, r"called with the list .*torch\.cat"),
    ],
    ids=[
        "label-out-of-range",
        "segment-labels-for-plain-logits",
        "3d-logits-for-plain-labels",
        "wrong-rows",
        "not-a-tensor",
        "nan-logits",
        "module-for-concatenated-features",
    ],
)
def test_malformed_callable(changes, error, match, backend):
    call = _callable_call(**changes)
    with pytest.raises(error, match=match):
        fastshap.modality_shapley(call["features"], call["head"], call["labels"], backend=backend)


def test_nan_features_with_a_callable_head():
    """Non-finite features are reported for callable heads too (by the logits they produce, or by the
    features themselves when the head hides them)."""
    call = _callable_call()
    call["features"][0][2, 1] = math.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastshap.modality_shapley(call["features"], call["head"], call["labels"], backend="torch")
    # A head that never looks at modality 0 returns finite logits; the features are still rejected.
    blind = _callable_call(head=lambda xs: xs[1] @ torch.ones(DIMS[1], CLASSES))
    blind["features"][0][2, 1] = math.nan
    with pytest.raises(ValueError, match="modality 0 hold NaN or Inf"):
        fastshap.modality_shapley(blind["features"], blind["head"], blind["labels"], backend="torch")
