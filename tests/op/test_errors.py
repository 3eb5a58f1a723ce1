"""Malformed calls raise ValueError or TypeError with a message that names the problem, on every backend.

Each case builds a valid call (n = 2, widths [3, 4], B = 6, C = 5, nn.Linear head) and breaks one thing.
The 'meta' device stands in for a second device on this CPU-only machine.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from oracle import NonlinearHead
from torch import nn

import fastshap
from fastshap import heads

DIMS, BATCH, CLASSES = [3, 4], 6, 5


def _uint64_labels(labels, third):
    """The labels as uint64 with the third one replaced (torch has few uint64 ops: built from a list)."""
    values = labels.tolist()
    values[2] = third
    return torch.tensor(values, dtype=torch.uint64)


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


def _replaced(module, **attributes):
    """module with some layers (or parameters) replaced after construction."""
    for name, value in attributes.items():
        setattr(module, name, value)
    return module


def _no_outputs(inputs):
    """nn.Linear(inputs, 0), without torch's warning that initialising it does nothing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return nn.Linear(inputs, 0)


def _classifiers(change):
    """A DecisionFusion head over DIMS whose list of classifiers `change` modified after construction."""
    head = heads.DecisionFusion(DIMS, CLASSES)
    change(head.classifiers)
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
        # int64 would wrap it to a negative label: the error names the caller's value.
        "label-uint64-above-int64",
        _with(labels=lambda c: _uint64_labels(c["labels"], 2**63 + 5)),
        ValueError,
        r"label 9223372036854775813 is outside the classes of any head",
    ),
    (
        "label-uint64-too-large",
        _with(labels=lambda c: _uint64_labels(c["labels"], 7)),
        ValueError,
        r"label 7 is outside \[0, 5\)",
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
    # Heads changed after construction: every layer is checked against the feature widths (a replaced layer
    # must not be read out of bounds by a kernel, nor give values from part of the features).
    (
        "concat-fc-replaced",
        _with(head=lambda c: _replaced(heads.ConcatLinear(DIMS, CLASSES), fc=nn.Linear(8, CLASSES))),
        ValueError,
        r"ConcatLinear head's fc takes 8 inputs, the features have 7 in all",
    ),
    (
        "linear-bias-shape",
        _with(head=lambda c: _replaced(nn.Linear(7, CLASSES), bias=nn.Parameter(torch.zeros(3)))),
        ValueError,
        r"Linear head's bias must be \(5,\) for its 5 outputs, got \(3,\)",
    ),
    (
        "mlp-fc1-replaced",
        _with(head=lambda c: _replaced(heads.ConcatMLP(DIMS, 8, CLASSES), fc1=nn.Linear(8, 8))),
        ValueError,
        r"ConcatMLP head's fc1 takes 8 inputs, the features have 7 in all",
    ),
    (
        "mlp-fc2-replaced",
        _with(head=lambda c: _replaced(heads.ConcatMLP(DIMS, 8, CLASSES), fc2=nn.Linear(2, CLASSES))),
        ValueError,
        r"ConcatMLP head's fc2 takes 2 inputs, fc1 has 8 outputs",
    ),
    (
        "mlp-fc2-not-linear",
        _with(head=lambda c: _replaced(heads.ConcatMLP(DIMS, 8, CLASSES), fc2=nn.Identity())),
        TypeError,
        r"ConcatMLP head's fc2 must be an nn.Linear, got Identity",
    ),
    (
        "decision-classifier-replaced",
        _with(head=lambda c: _classifiers(lambda cl: cl.__setitem__(1, nn.Linear(3, CLASSES)))),
        ValueError,
        r"DecisionFusion head's classifiers\[1\] takes 3 inputs, modality 1 has width 4",
    ),
    (
        "decision-classifier-added",
        _with(head=lambda c: _classifiers(lambda cl: cl.append(nn.Linear(4, CLASSES)))),
        ValueError,
        r"DecisionFusion head has 3 classifiers for 2 modalities",
    ),
    (
        "decision-class-counts",
        _with(head=lambda c: _classifiers(lambda cl: cl.__setitem__(1, nn.Linear(4, CLASSES + 1)))),
        ValueError,
        r"classifiers predict different numbers of classes \[5, 6\]",
    ),
    # A head without outputs: one clear error up front for every head kind.
    ("linear-0-classes", _with(head=lambda c: _no_outputs(7)), ValueError, r"Linear head has 0 outputs.*one class"),
    (
        "concat-0-classes",
        _with(head=lambda c: _replaced(heads.ConcatLinear(DIMS, CLASSES), fc=_no_outputs(7))),
        ValueError,
        r"ConcatLinear head's fc has 0 outputs.*one class",
    ),
    (
        "decision-0-classes",
        _with(head=lambda c: _classifiers(lambda cl: [cl.__setitem__(i, _no_outputs(d)) for i, d in enumerate(DIMS)])),
        ValueError,
        r"classifiers\[0\] has 0 outputs.*one class",
    ),
    (
        "mlp-0-classes",
        _with(head=lambda c: _replaced(heads.ConcatMLP(DIMS, 8, CLASSES), fc2=_no_outputs(8))),
        ValueError,
        r"ConcatMLP head's fc2 has 0 outputs.*one class",
    ),
    (
        "meta-features",
        _with(features=lambda c: [f.to("meta") for f in c["features"]]),
        ValueError,
        r"features are meta tensors.*CPU or CUDA",
    ),
    (
        "baseline-complex",
        _with(baselines=lambda c: [torch.zeros(3, dtype=torch.complex64), torch.zeros(4)]),
        TypeError,
        r"baselines\[0\] has dtype torch.complex64; baselines must be floating point",
    ),
    (
        "baseline-integer",
        _with(baselines=lambda c: [torch.zeros(3), torch.zeros(6, 4, dtype=torch.long)]),
        TypeError,
        r"baselines\[1\] has dtype torch.int64; baselines must be floating point",
    ),
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
        (
            {"head": lambda xs: torch.ones(xs[0].shape[0], CLASSES, dtype=torch.bool)},
            TypeError,
            r"logits.*torch\.bool.*floating point",
        ),
        (
            {"head": lambda xs: torch.ones(xs[0].shape[0], CLASSES, dtype=torch.complex64)},
            TypeError,
            r"logits.*torch\.complex64.*floating point",
        ),
        (
            {
                "head": lambda xs: torch.zeros(xs[0].shape[0], 0, CLASSES),
                "labels": torch.zeros(BATCH, 0, dtype=torch.long),
            },
            ValueError,
            r"per-segment labels \(B, T\) must have at least one segment, got shape \(6, 0\)",
        ),
    ],
    ids=[
        "label-out-of-range",
        "segment-labels-for-plain-logits",
        "3d-logits-for-plain-labels",
        "wrong-rows",
        "not-a-tensor",
        "nan-logits",
        "module-for-concatenated-features",
        "bool-logits",
        "complex-logits",
        "zero-segments",
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


# Heads: constructors take a sequence of positive int widths and positive int sizes; forward takes the list
# of the n feature tensors of those widths.


@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda: heads.ConcatLinear("32", 3), TypeError, r"ConcatLinear dims must be a list or tuple .* got str '32'"),
        (lambda: heads.ConcatLinear(None, 3), TypeError, r"ConcatLinear dims must be a list or tuple .* got NoneType"),
        (lambda: heads.DecisionFusion(5, 3), TypeError, r"DecisionFusion dims must be a list or tuple .* got int 5"),
        (lambda: heads.ConcatLinear([2.7], 3), TypeError, r"ConcatLinear dims\[0\] .* must be an integer, got float"),
        (lambda: heads.ConcatMLP([3, True], 4, 3), TypeError, r"ConcatMLP dims\[1\] .* must be an integer, got bool"),
        (lambda: heads.ConcatLinear([], 3), ValueError, r"ConcatLinear dims is empty"),
        (lambda: heads.DecisionFusion([3, 0], 3), ValueError, r"DecisionFusion dims\[1\] .* must be positive, got 0"),
        (lambda: heads.ConcatLinear([3, 2], 0), ValueError, r"ConcatLinear num_classes must be positive, got 0"),
        (lambda: heads.DecisionFusion([3, 2], -1), ValueError, r"DecisionFusion num_classes must be positive, got -1"),
        (lambda: heads.ConcatMLP([3, 2], 0, 3), ValueError, r"ConcatMLP hidden must be positive, got 0"),
        (lambda: heads.ConcatMLP([3, 2], 4, -2), ValueError, r"ConcatMLP num_classes must be positive, got -2"),
        (lambda: heads.ConcatLinear([3, 2], 3.0), TypeError, r"ConcatLinear num_classes must be an integer, got float"),
        (lambda: heads.ConcatMLP([3, 2], "8", 3), TypeError, r"ConcatMLP hidden must be an integer, got str"),
    ],
    ids=[
        "dims-str",
        "dims-none",
        "dims-int",
        "dims-float",
        "dims-bool",
        "dims-empty",
        "dims-zero",
        "classes-zero",
        "classes-negative",
        "hidden-zero",
        "mlp-classes-negative",
        "classes-float",
        "hidden-str",
    ],
)
def test_head_constructor_arguments(build, error, match):
    with pytest.raises(error, match="^fastshap: " + match):
        build()


def test_head_constructors_take_any_integer_sequence():
    import numpy as np

    assert heads.ConcatLinear((3, 2), 4).dims == (3, 2)
    assert heads.DecisionFusion(torch.Size([3, 2]), np.int64(4)).dims == (3, 2)
    assert heads.ConcatMLP(np.array([3, 2]), 8, 4).dims == (3, 2)
    assert all(type(d) is int for d in heads.ConcatMLP(np.array([3, 2]), 8, 4).dims)


def _forward_inputs():
    g = torch.Generator().manual_seed(5)
    return [torch.randn(BATCH, d, generator=g) for d in DIMS] + [torch.randn(BATCH, 2, generator=g)]


HEAD_FORWARDS = {
    "concat": lambda h, xs: h(xs),
    "concat-unimodal": lambda h, xs: h.unimodal_logits(xs),
    "decision": lambda h, xs: h(xs),
    "decision-per-modality": lambda h, xs: h.per_modality_logits(xs),
    "mlp": lambda h, xs: h(xs),
}


def _head_for(name):
    kind = name.split("-")[0]
    return {
        "concat": lambda: heads.ConcatLinear(DIMS, CLASSES),
        "decision": lambda: heads.DecisionFusion(DIMS, CLASSES),
        "mlp": lambda: heads.ConcatMLP(DIMS, 8, CLASSES),
    }[kind]()


@pytest.mark.parametrize("name", list(HEAD_FORWARDS))
@pytest.mark.parametrize(
    "inputs,error,match",
    [
        (lambda a, v, w: [a], ValueError, r"was built for 2 modalities \(widths \[3, 4\]\), got 1 feature tensors"),
        (
            lambda a, v, w: [a, v, w],
            ValueError,
            r"was built for 2 modalities \(widths \[3, 4\]\), got 3 feature tensors",
        ),
        (lambda a, v, w: [v, a], ValueError, r"features\[0\] must have width 3 .* got shape \(6, 4\)"),
        (lambda a, v, w: torch.cat([a, v], 1), TypeError, r"takes a list or tuple of 2 feature tensors .* got Tensor"),
        (lambda a, v, w: [a, v.tolist()], TypeError, r"features\[1\] is a list, not a tensor"),
    ],
    ids=["missing-modality", "extra-modality", "swapped-widths", "one-tensor", "not-a-tensor"],
)
def test_head_forward_checks_the_modalities(name, inputs, error, match):
    head = _head_for(name)
    with pytest.raises(error, match="^fastshap: (ConcatLinear|DecisionFusion|ConcatMLP) " + match):
        HEAD_FORWARDS[name](head, inputs(*_forward_inputs()))


@pytest.mark.parametrize("name", list(HEAD_FORWARDS))
def test_head_forward_takes_leading_dimensions(name):
    """(B, T, d_i) per-segment features go through as before: the checks read the last dimension only."""
    a, v, _ = _forward_inputs()
    out = HEAD_FORWARDS[name](_head_for(name), (a.view(2, 3, -1), v.view(2, 3, -1)))
    for z in out if isinstance(out, list) else [out]:
        assert z.shape == (2, 3, CLASSES)


def _without_bias(kind, layer):
    """(head with `layer` built with bias=False, the same head with that bias present and zero)."""
    g = torch.Generator().manual_seed(6)
    head = {
        "concat": lambda: heads.ConcatLinear(DIMS, CLASSES),
        "decision": lambda: heads.DecisionFusion(DIMS, CLASSES),
        "mlp": lambda: heads.ConcatMLP(DIMS, 8, CLASSES),
        "linear": lambda: nn.Linear(7, CLASSES),
    }[kind]()
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    zero = copy.deepcopy(head)
    if layer:
        old = head.get_submodule(layer)
        new = nn.Linear(old.in_features, old.out_features, bias=False)
        with torch.no_grad():
            new.weight.copy_(old.weight)
            zero.get_submodule(layer).bias.zero_()
        parent, _, child = layer.rpartition(".")
        setattr(head.get_submodule(parent) if parent else head, child, new)
    else:
        head = nn.Linear(7, CLASSES, bias=False)
        with torch.no_grad():
            head.weight.copy_(zero.weight)
            zero.bias.zero_()
    return head, zero


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
@pytest.mark.parametrize(
    "kind,layer",
    [("linear", ""), ("concat", "fc"), ("decision", "classifiers.1"), ("mlp", "fc1"), ("mlp", "fc2")],
    ids=["linear", "concat-fc", "decision-classifier", "mlp-fc1", "mlp-fc2"],
)
def test_layers_without_bias_count_as_zero_bias(kind, layer, backend):
    """bias=False layers are supported by every head (forward and Shapley values): a zero bias."""
    head, zero = _without_bias(kind, layer)
    call = valid_call()
    feats, labels = call["features"], call["labels"]
    if kind != "linear":
        torch.testing.assert_close(head(feats), zero(feats), rtol=0, atol=0)
    for benefit in ("paper", "probability"):
        got = fastshap.modality_shapley(feats, head, labels, benefit=benefit, backend=backend)
        want = fastshap.modality_shapley(feats, zero, labels, benefit=benefit, backend=backend)
        assert torch.equal(got, want), (benefit, got, want)
    if kind == "concat":
        for z, z0 in zip(head.unimodal_logits(feats), zero.unimodal_logits(feats)):
            torch.testing.assert_close(z, z0, rtol=0, atol=0)


def test_triton_never_reads_a_replaced_second_layer():
    """fc2 replaced by a narrower layer: the Triton kernels would read past its weight (out of bounds on a
    GPU); the call is refused before any backend runs."""
    head = _replaced(heads.ConcatMLP(DIMS, 8, CLASSES), fc2=nn.Linear(2, CLASSES))
    call = valid_call()
    with pytest.raises(ValueError, match="ConcatMLP head's fc2 takes 2 inputs, fc1 has 8 outputs"):
        fastshap.modality_shapley(call["features"], head, call["labels"], backend="triton")


@pytest.mark.parametrize("backend", ["torch", "cpp", "auto"])
@pytest.mark.parametrize("kind", ["linear", "concat", "decision", "mlp"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ambient_autocast_changes_nothing(kind, backend, dtype):
    """Inside torch.autocast the values are those of the same call outside it (the kernels' own compute
    dtype rules apply, not the caller's autocast): no bare dtype error, no silently rounded second layer."""
    g = torch.Generator().manual_seed(7)
    dims = [4, 4]
    head = {
        "linear": lambda: nn.Linear(8, 3),
        "concat": lambda: heads.ConcatLinear(dims, 3),
        "decision": lambda: heads.DecisionFusion(dims, 3),
        "mlp": lambda: heads.ConcatMLP(dims, 8, 3),
    }[kind]()
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    feats = [torch.randn(64, d, generator=g) for d in dims]
    labels = torch.randint(0, 3, (64,), generator=g)
    want = fastshap.modality_shapley(feats, head, labels, benefit="probability", backend=backend)
    with torch.autocast("cpu", dtype=dtype):
        got = fastshap.modality_shapley(feats, head, labels, benefit="probability", backend=backend)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)


@pytest.mark.parametrize("value", ["2", "yes", ""])
def test_info_reports_an_invalid_tensor_core_switch(value, monkeypatch):
    """The CUDA launcher raises on every call for FASTSHAP_CUDA_TENSOR_CORES other than 0/1 (or unset): info
    says so instead of reporting 'off'."""
    from fastshap import _extension, info

    build = dict(_extension.build_info()) if _extension.LOADED else {}
    build.update(cuda="1", cuda_tensor_cores_default="0")
    monkeypatch.setattr(_extension, "LOADED", True)
    monkeypatch.setattr(_extension, "build_info", lambda: build)
    monkeypatch.setenv("FASTSHAP_CUDA_TENSOR_CORES", value)
    report = info.report()
    assert (
        f"invalid value '{value}' of FASTSHAP_CUDA_TENSOR_CORES (expected 0 or 1, or unset): CUDA calls will raise"
        in report
    ), report
    monkeypatch.setenv("FASTSHAP_CUDA_TENSOR_CORES", "1")
    assert "tensor cores      on for first layers" in info.report()


def test_demo_says_what_it_shows():
    """The demo's noise modality is not a null player under the paper benefit: its mean phi is clearly
    positive (README), which is what the module docstring must say."""
    from fastshap import demo

    doc = " ".join(demo.__doc__.split())
    assert "near zero" not in doc.replace("not near zero", "")
    assert "not a null player" in doc
    torch.manual_seed(0)
    feats, labels = demo.make_data(512, 10, [64, 32, 16], [0.1, 0.05, 0.0], seed=0)
    head = demo.train_head(feats, labels, 10, steps=100)
    mean = fastshap.modality_shapley(feats, head, labels, backend="cpp").mean(0)
    assert mean[0] > mean[2] and mean[1] > mean[2], mean
    assert mean[2] > 0.25, mean  # far from zero
