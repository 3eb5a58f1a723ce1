"""Malformed calls raise ValueError or TypeError with a message that names the problem, on every backend.

Each case takes the valid call of conftest.py (n = 2, widths [3, 4], B = 6, C = 5, nn.Linear head) and breaks
one thing. Messages are matched by the argument they name and the offending value, not word for word. The
'meta' device stands in for a second device on this CPU-only machine.
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
from fastshap import backends, heads


def _uint64_labels(labels, third):
    """The labels as uint64 with the third one replaced (torch has few uint64 ops: built from a list)."""
    values = labels.tolist()
    values[2] = third
    return torch.tensor(values, dtype=torch.uint64)


def _with(**changes):
    """A change of the valid call: each key's new value, a function of the call."""

    def change(call):
        for key, fn in changes.items():
            call[key] = fn(call)

    return change


def _feature(i, fn):
    return _with(features=lambda c: [fn(f) if j == i else f for j, f in enumerate(c["features"])])


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


def _classifiers(c, change):
    """A DecisionFusion head over the call's widths whose list of classifiers `change` modified."""
    head = heads.DecisionFusion(c.dims, c.classes)
    change(head.classifiers)
    return head


def _mlp(c, **layers):
    return _replaced(heads.ConcatMLP(c.dims, 8, c.classes), **layers)


def _frozen(tensor):
    """tensor as a parameter (integer and sparse ones cannot require gradients)."""
    return nn.Parameter(tensor, requires_grad=False)


# (id, change of the valid call, exception type, key phrase). Wrong arguments (shapes, types, devices,
# layouts): the public API rejects them before any backend runs (test_argument_errors_come_before_any_backend).
ARGUMENT_CASES = [
    ("features-a-tensor", _with(features=lambda c: torch.cat(c["features"], 1)), TypeError, r"features.*Tensor"),
    ("features-none", _with(features=lambda c: None), TypeError, r"features.*NoneType"),
    ("features-a-generator", _with(features=lambda c: iter(c["features"])), TypeError, r"features.*list_iterator"),
    ("n0-no-modalities", _with(features=lambda c: []), ValueError, r"features.*empty"),
    (
        "n17-too-many-modalities",
        _with(features=lambda c: [torch.randn(c.batch, 1) for _ in range(17)], head=lambda c: nn.Linear(17, 5)),
        ValueError,
        r"17 modalities.*16",
    ),
    ("feature-not-a-tensor", _feature(1, lambda f: f.tolist()), TypeError, r"features\[1\].*list"),
    ("feature-3d", _feature(0, lambda f: f.unsqueeze(-1)), ValueError, r"features\[0\].*\(6, 3, 1\)"),
    ("feature-1d", _feature(1, lambda f: f[:, 0]), ValueError, r"features\[1\].*2-D.*\(6,\)"),
    ("feature-integer-dtype", _feature(0, lambda f: f.long()), TypeError, r"features\[0\].*torch.int64"),
    ("feature-complex-dtype", _feature(1, lambda f: f.cfloat()), TypeError, r"features\[1\].*torch.complex64"),
    ("feature-zero-width", _feature(1, lambda f: f[:, :0]), ValueError, r"features\[1\].*zero width"),
    ("batch-size-mismatch", _feature(1, lambda f: f[:4]), ValueError, r"features\[1\].*batch size 4"),
    ("dtype-mismatch", _feature(1, lambda f: f.double()), TypeError, r"features\[1\].*torch.float64"),
    ("device-mismatch-features", _feature(1, lambda f: f.to("meta")), ValueError, r"features\[1\].*meta"),
    ("sparse-features", _feature(0, lambda f: f.to_sparse()), TypeError, r"features\[0\].*sparse_coo"),
    ("sparse-csr-features", _feature(1, lambda f: f.to_sparse_csr()), TypeError, r"features\[1\].*sparse_csr"),
    ("mkldnn-features", _feature(0, lambda f: f.to_mkldnn()), TypeError, r"features\[0\].*_mkldnn"),
    (
        "nested-features",
        _feature(0, lambda f: torch.nested.nested_tensor(list(f))),
        TypeError,
        r"features\[0\].*nested",
    ),
    (
        "meta-features",
        _with(features=lambda c: [f.to("meta") for f in c["features"]]),
        ValueError,
        r"features.*meta",
    ),
    ("device-mismatch-head", _with(head=lambda c: nn.Linear(7, 5, device="meta")), ValueError, r"parameters.*meta"),
    (
        "device-mismatch-bias",
        _with(head=lambda c: _replaced(nn.Linear(7, 5), bias=nn.Parameter(torch.zeros(5, device="meta")))),
        ValueError,
        r"parameters.*meta",
    ),
    (
        "head-integer-weight",
        _with(head=lambda c: _replaced(nn.Linear(7, 5), weight=_frozen(torch.ones(5, 7, dtype=torch.long)))),
        TypeError,
        r"parameters.*floating point.*torch.int64",
    ),
    (
        "head-sparse-weight",
        _with(head=lambda c: _replaced(nn.Linear(7, 5), weight=_frozen(torch.ones(5, 7).to_sparse()))),
        TypeError,
        r"parameter.*sparse_coo",
    ),
    (
        "head-1d-weight",
        _with(head=lambda c: _replaced(nn.Linear(7, 5), weight=nn.Parameter(torch.ones(7)))),
        ValueError,
        r"Linear head's weight.*2-D.*\(7,\)",
    ),
    ("linear-head-width", _with(head=lambda c: nn.Linear(8, 5)), ValueError, r"Linear head.*8 inputs.*7"),
    (
        "concat-head-dims",
        _with(head=lambda c: heads.ConcatLinear([4, 3], 5)),
        ValueError,
        r"ConcatLinear head.*\[4, 3\].*\[3, 4\]",
    ),
    (
        "concat-dims-not-widths",
        _with(head=lambda c: _replaced(heads.ConcatLinear(c.dims, 5), dims=None)),
        TypeError,
        r"ConcatLinear head's dims.*NoneType",
    ),
    (
        "decision-head-dims",
        _with(head=lambda c: heads.DecisionFusion([3], 5)),
        ValueError,
        r"DecisionFusion head.*\[3\].*\[3, 4\]",
    ),
    ("mlp-head-dims", _with(head=lambda c: heads.ConcatMLP([3, 5], 8, 5)), ValueError, r"ConcatMLP head.*\[3, 5\]"),
    ("head-not-callable", _with(head=lambda c: "linear"), TypeError, r"head must be.*callable.*str"),
    # Heads changed after construction: every layer is checked against the feature widths (a replaced layer
    # must not be read out of bounds by a kernel, nor give values from part of the features).
    (
        "concat-fc-replaced",
        _with(head=lambda c: _replaced(heads.ConcatLinear(c.dims, 5), fc=nn.Linear(8, 5))),
        ValueError,
        r"ConcatLinear head's fc.*8 inputs.*7",
    ),
    (
        "linear-bias-shape",
        _with(head=lambda c: _replaced(nn.Linear(7, 5), bias=nn.Parameter(torch.zeros(3)))),
        ValueError,
        r"Linear head's bias.*\(5,\).*\(3,\)",
    ),
    ("mlp-fc1-replaced", _with(head=lambda c: _mlp(c, fc1=nn.Linear(8, 8))), ValueError, r"fc1.*8 inputs.*7"),
    ("mlp-fc2-replaced", _with(head=lambda c: _mlp(c, fc2=nn.Linear(2, 5))), ValueError, r"fc2.*2 inputs.*8"),
    ("mlp-fc2-not-linear", _with(head=lambda c: _mlp(c, fc2=nn.Identity())), TypeError, r"fc2.*Linear.*Identity"),
    (
        "mlp-fc1-bias-shape",
        _with(head=lambda c: _mlp(c, fc1=_replaced(nn.Linear(7, 8), bias=nn.Parameter(torch.zeros(9))))),
        ValueError,
        r"fc1's bias.*\(8,\).*\(9,\)",
    ),
    (
        "mlp-fc2-bias-shape",
        _with(head=lambda c: _mlp(c, fc2=_replaced(nn.Linear(8, 5), bias=nn.Parameter(torch.zeros(2))))),
        ValueError,
        r"fc2's bias.*\(2,\)",
    ),
    (
        "decision-classifier-replaced",
        _with(head=lambda c: _classifiers(c, lambda cl: cl.__setitem__(1, nn.Linear(3, 5)))),
        ValueError,
        r"classifiers\[1\].*3 inputs.*width 4",
    ),
    (
        "decision-classifier-bias-shape",
        _with(head=lambda c: _classifiers(c, lambda cl: setattr(cl[0], "bias", nn.Parameter(torch.zeros(3))))),
        ValueError,
        r"classifiers\[0\]'s bias.*\(3,\)",
    ),
    (
        "decision-classifier-added",
        _with(head=lambda c: _classifiers(c, lambda cl: cl.append(nn.Linear(4, 5)))),
        ValueError,
        r"3 classifiers.*2 modalities",
    ),
    (
        "decision-class-counts",
        _with(head=lambda c: _classifiers(c, lambda cl: cl.__setitem__(1, nn.Linear(4, 6)))),
        ValueError,
        r"classes \[5, 6\]",
    ),
    # A head without outputs: one clear error up front for every head kind.
    ("linear-0-classes", _with(head=lambda c: _no_outputs(7)), ValueError, r"Linear head.*0 outputs"),
    (
        "concat-0-classes",
        _with(head=lambda c: _replaced(heads.ConcatLinear(c.dims, 5), fc=_no_outputs(7))),
        ValueError,
        r"ConcatLinear head's fc.*0 outputs",
    ),
    (
        "decision-0-classes",
        _with(
            head=lambda c: _classifiers(c, lambda cl: [cl.__setitem__(i, _no_outputs(d)) for i, d in enumerate(c.dims)])
        ),
        ValueError,
        r"classifiers\[0\].*0 outputs",
    ),
    ("mlp-0-classes", _with(head=lambda c: _mlp(c, fc2=_no_outputs(8))), ValueError, r"fc2.*0 outputs"),
    (
        "mlp-0-hidden-units",
        _with(head=lambda c: _mlp(c, fc1=_no_outputs(7), fc2=nn.Linear(0, 5))),
        ValueError,
        r"fc1.*0 outputs.*hidden unit",
    ),
    ("device-mismatch-labels", _with(labels=lambda c: c["labels"].to("meta")), ValueError, r"labels.*meta"),
    ("labels-float", _with(labels=lambda c: c["labels"].float()), TypeError, r"labels.*torch.float32"),
    ("labels-bool", _with(labels=lambda c: c["labels"] > 2), TypeError, r"labels.*torch.bool"),
    ("labels-a-list", _with(labels=lambda c: c["labels"].tolist()), TypeError, r"labels.*list"),
    ("labels-sparse", _with(labels=lambda c: c["labels"].to_sparse()), TypeError, r"labels.*sparse_coo"),
    ("labels-2d", _with(labels=lambda c: c["labels"].view(-1, 1)), ValueError, r"labels.*\(6, 1\)"),
    ("labels-scalar", _with(labels=lambda c: torch.tensor(1)), ValueError, r"labels.*\(6,\).*\(\)"),
    ("labels-count", _with(labels=lambda c: c["labels"][:5]), ValueError, r"5 labels.*6"),
    (
        # int64 would wrap it to a negative label: the error names the caller's value.
        "label-uint64-above-int64",
        _with(labels=lambda c: _uint64_labels(c["labels"], 2**63 + 5)),
        ValueError,
        r"label 9223372036854775813.*outside",
    ),
    ("baselines-a-tensor", _with(baselines=lambda c: torch.zeros(7)), TypeError, r"baselines.*Tensor"),
    ("baselines-count", _with(baselines=lambda c: [torch.zeros(3)]), ValueError, r"1 baselines.*2 modalities"),
    (
        "baseline-shape",
        _with(baselines=lambda c: [torch.zeros(3), torch.zeros(3)]),
        ValueError,
        r"baselines\[1\].*\(4,\).*\(3,\)",
    ),
    (
        "baseline-batch",
        _with(baselines=lambda c: [torch.zeros(3), torch.zeros(5, 4)]),
        ValueError,
        r"baselines\[1\].*\(6, 4\).*\(5, 4\)",
    ),
    (
        "baseline-not-a-tensor",
        _with(baselines=lambda c: [torch.zeros(3), [0.0] * 4]),
        TypeError,
        r"baselines\[1\].*list",
    ),
    (
        "baseline-device",
        _with(baselines=lambda c: [torch.zeros(3, device="meta"), torch.zeros(4)]),
        ValueError,
        r"baselines\[0\].*meta",
    ),
    (
        "baseline-complex",
        _with(baselines=lambda c: [torch.zeros(3, dtype=torch.complex64), torch.zeros(4)]),
        TypeError,
        r"baselines\[0\].*torch.complex64",
    ),
    (
        "baseline-integer",
        _with(baselines=lambda c: [torch.zeros(3), torch.zeros(6, 4, dtype=torch.long)]),
        TypeError,
        r"baselines\[1\].*torch.int64",
    ),
    (
        "baseline-sparse",
        _with(baselines=lambda c: [torch.zeros(3).to_sparse(), torch.zeros(4)]),
        TypeError,
        r"baselines\[0\].*sparse_coo",
    ),
    ("unknown-benefit", _with(benefit=lambda c: "shapley"), ValueError, r"benefit 'shapley'"),
    ("benefit-none", _with(benefit=lambda c: None), ValueError, r"benefit None"),
]

# Wrong values, which only the op's counts show (the call reads them back once and names the cause).
VALUE_CASES = [
    (
        "label-too-large",
        _with(labels=lambda c: c["labels"].index_fill(0, torch.tensor([3]), 5)),
        ValueError,
        r"label 5.*outside \[0, 5\)",
    ),
    (
        "label-negative",
        _with(labels=lambda c: c["labels"].index_fill(0, torch.tensor([0]), -1)),
        ValueError,
        r"label -1.*outside \[0, 5\)",
    ),
    (
        "label-uint64-too-large",
        _with(labels=lambda c: _uint64_labels(c["labels"], 7)),
        ValueError,
        r"label 7.*outside \[0, 5\)",
    ),
    (
        "nan-features",
        _feature(1, lambda f: f.index_fill(0, torch.tensor([2]), math.nan)),
        ValueError,
        r"features of modality 1.*NaN or Inf",
    ),
    (
        "inf-features",
        _feature(0, lambda f: f.index_fill(0, torch.tensor([4]), -math.inf)),
        ValueError,
        r"features of modality 0.*NaN or Inf",
    ),
    (
        "nan-baseline",
        _with(baselines=lambda c: [torch.zeros(3), torch.tensor([0.0, math.nan, 0.0, 0.0])]),
        ValueError,
        r"baselines of modality 1.*NaN or Inf",
    ),
    (
        "overflowing-contribution",
        _with(features=lambda c: [c["features"][0], c["features"][1] * 1e30], head=lambda c: c.huge_head()),
        ValueError,
        r"modality 1.*overflow float32",
    ),
    ("nan-head-weights", _with(head=lambda c: c.nan_head()), ValueError, r"head parameters.*NaN or Inf"),
]

CASES = ARGUMENT_CASES + VALUE_CASES


@pytest.mark.parametrize("backend", ["torch", "cpp", "auto"])
@pytest.mark.parametrize("change,error,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_call(change, error, match, backend, valid_call):
    call = valid_call()
    change(call)
    with pytest.raises(error, match=match):
        call.run(backend=backend)


@pytest.mark.parametrize("change,error,match", [c[1:] for c in ARGUMENT_CASES], ids=[c[0] for c in ARGUMENT_CASES])
def test_argument_errors_come_before_any_backend(change, error, match, valid_call, monkeypatch):
    """Every wrong argument is caught by the public API itself: no backend (and so no op, whose checks only
    guard memory) is reached."""

    def refuse(*args, **kwargs):
        raise AssertionError("a backend ran a call that the public API should have refused")

    monkeypatch.setattr(backends.Backend, "run", refuse)
    call = valid_call()
    change(call)
    with pytest.raises(error, match=match):
        call.run()


def test_the_valid_call_is_valid(valid_call):
    """The cases above break one thing each: the unbroken call runs on every backend."""
    for backend in ("torch", "cpp", "auto"):
        assert valid_call().run(backend=backend).shape == (valid_call.batch, 2)


def test_unknown_backend(valid_call):
    with pytest.raises(ValueError, match=r"backend 'gpu'.*'torch'.*'cpp'"):
        valid_call().run(backend="gpu")
    with pytest.raises(TypeError, match=r"backend.*NoneType"):
        valid_call().run(backend=None)


@pytest.mark.parametrize("value", [True, "yes"])
def test_defer_checks_must_be_a_deferred_checks(value, valid_call):
    """defer_checks=True reads naturally but would have nowhere to put the counts: a clear TypeError."""
    with pytest.raises(TypeError, match=r"defer_checks.*DeferredChecks.*(bool|str)"):
        valid_call().run(defer_checks=value)


# Errors specific to callable heads (torch backend): the callable is only known by what it returns.


def _callable_call(valid_call, change):
    g = torch.Generator().manual_seed(1)
    dims, batch, classes = valid_call.dims, valid_call.batch, valid_call.classes
    head = NonlinearHead(dims, classes, generator=g)
    feats = [torch.randn(batch, d, generator=g) for d in dims]
    call = {"features": feats, "head": head, "labels": torch.randint(0, classes, (batch,), generator=g)}
    call.update(change(valid_call))
    return call


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize(
    "change,error,match",
    [
        (lambda c: {"labels": torch.arange(c.batch)}, ValueError, r"label 5.*outside \[0, 5\)"),
        (lambda c: {"labels": torch.zeros(c.batch, 3, dtype=torch.long)}, ValueError, r"logits of shape"),
        (lambda c: {"head": lambda xs: torch.zeros(xs[0].shape[0], 2, 3)}, ValueError, r"logits of shape \(.*, 2, 3\)"),
        (lambda c: {"head": lambda xs: torch.zeros(xs[0].shape[0] + 1, c.classes)}, ValueError, r"logits of shape"),
        (lambda c: {"head": lambda xs: [torch.zeros(xs[0].shape[0], c.classes)]}, TypeError, r"returned list"),
        (lambda c: {"head": lambda xs: torch.full((xs[0].shape[0], c.classes), math.nan)}, ValueError, r"NaN or Inf"),
        (lambda c: {"head": nn.Sequential(nn.Linear(sum(c.dims), c.classes))}, TypeError, r"list .*torch\.cat"),
        (
            lambda c: {"head": lambda xs: torch.ones(xs[0].shape[0], c.classes, dtype=torch.bool)},
            TypeError,
            r"logits.*torch\.bool",
        ),
        (
            lambda c: {"head": lambda xs: torch.ones(xs[0].shape[0], c.classes, dtype=torch.complex64)},
            TypeError,
            r"logits.*torch\.complex64",
        ),
        (
            lambda c: {
                "head": lambda xs: torch.zeros(xs[0].shape[0], 0, c.classes),
                "labels": torch.zeros(c.batch, 0, dtype=torch.long),
            },
            ValueError,
            r"per-segment labels.*\(6, 0\)",
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
def test_malformed_callable(change, error, match, backend, valid_call):
    call = _callable_call(valid_call, change)
    with pytest.raises(error, match=match):
        fastshap.modality_shapley(call["features"], call["head"], call["labels"], backend=backend)


def test_nan_features_with_a_callable_head(valid_call):
    """Non-finite features are reported for callable heads too (by the logits they produce, or by the
    features themselves when the head hides them)."""
    call = _callable_call(valid_call, lambda c: {})
    call["features"][0][2, 1] = math.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        fastshap.modality_shapley(call["features"], call["head"], call["labels"], backend="torch")
    # A head that never looks at modality 0 returns finite logits; the features are still rejected.
    blind = _callable_call(valid_call, lambda c: {"head": lambda xs: xs[1] @ torch.ones(c.dims[1], c.classes)})
    blind["features"][0][2, 1] = math.nan
    with pytest.raises(ValueError, match=r"modality 0.*NaN or Inf"):
        fastshap.modality_shapley(blind["features"], blind["head"], blind["labels"], backend="torch")


# Heads: constructors take a sequence of positive int widths and positive int sizes; forward takes the list
# of the n feature tensors of those widths.


@pytest.mark.parametrize(
    "build,error,match",
    [
        (lambda: heads.ConcatLinear("32", 3), TypeError, r"ConcatLinear dims.*str '32'"),
        (lambda: heads.ConcatLinear(None, 3), TypeError, r"ConcatLinear dims.*NoneType"),
        (lambda: heads.DecisionFusion(5, 3), TypeError, r"DecisionFusion dims.*int 5"),
        (lambda: heads.ConcatLinear([2.7], 3), TypeError, r"ConcatLinear dims\[0\].*float"),
        (lambda: heads.ConcatMLP([3, True], 4, 3), TypeError, r"ConcatMLP dims\[1\].*bool"),
        (lambda: heads.ConcatLinear([], 3), ValueError, r"ConcatLinear dims.*empty"),
        (lambda: heads.DecisionFusion([3, 0], 3), ValueError, r"DecisionFusion dims\[1\].*\b0\b"),
        (lambda: heads.ConcatLinear([3, 2], 0), ValueError, r"ConcatLinear num_classes.*\b0\b"),
        (lambda: heads.DecisionFusion([3, 2], -1), ValueError, r"DecisionFusion num_classes.*-1"),
        (lambda: heads.ConcatMLP([3, 2], 0, 3), ValueError, r"ConcatMLP hidden.*\b0\b"),
        (lambda: heads.ConcatMLP([3, 2], 4, -2), ValueError, r"ConcatMLP num_classes.*-2"),
        (lambda: heads.ConcatLinear([3, 2], 3.0), TypeError, r"ConcatLinear num_classes.*float"),
        (lambda: heads.ConcatMLP([3, 2], "8", 3), TypeError, r"ConcatMLP hidden.*str"),
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
    with pytest.raises(error, match=match):
        build()


def test_head_constructors_take_any_integer_sequence():
    import numpy as np

    assert heads.ConcatLinear((3, 2), 4).dims == (3, 2)
    assert heads.DecisionFusion(torch.Size([3, 2]), np.int64(4)).dims == (3, 2)
    assert heads.DecisionFusion(torch.tensor([3, 2]), 4).dims == (3, 2)
    assert heads.ConcatMLP(np.array([3, 2]), 8, 4).dims == (3, 2)
    assert all(type(d) is int for d in heads.ConcatMLP(np.array([3, 2]), 8, 4).dims)


def _forward_inputs(valid_call):
    """The call's two modalities and a third of width 2, for the heads' forward."""
    g = torch.Generator().manual_seed(5)
    return [torch.randn(valid_call.batch, d, generator=g) for d in (*valid_call.dims, 2)]


HEAD_FORWARDS = {
    "concat": lambda h, xs: h(xs),
    "concat-unimodal": lambda h, xs: h.unimodal_logits(xs),
    "decision": lambda h, xs: h(xs),
    "decision-per-modality": lambda h, xs: h.per_modality_logits(xs),
    "mlp": lambda h, xs: h(xs),
}


def _head_for(name, valid_call):
    dims, classes = valid_call.dims, valid_call.classes
    return {
        "concat": lambda: heads.ConcatLinear(dims, classes),
        "decision": lambda: heads.DecisionFusion(dims, classes),
        "mlp": lambda: heads.ConcatMLP(dims, 8, classes),
    }[name.split("-")[0]]()


@pytest.mark.parametrize("name", list(HEAD_FORWARDS))
@pytest.mark.parametrize(
    "inputs,error,match",
    [
        (lambda a, v, w: [a], ValueError, r"\[3, 4\].*\[3\]"),
        (lambda a, v, w: [a, v, w], ValueError, r"\[3, 4\].*\[3, 4, 2\]"),
        (lambda a, v, w: [v, a], ValueError, r"\[3, 4\].*\[4, 3\]"),
        (lambda a, v, w: [a[0, 0], v], ValueError, r"\[3, 4\].*\[None, 4\]"),
        (lambda a, v, w: torch.cat([a, v], 1), TypeError, r"list or tuple.*\[3, 4\].*Tensor"),
        (lambda a, v, w: [a, v.tolist()], TypeError, r"features\[1\].*list"),
    ],
    ids=["missing-modality", "extra-modality", "swapped-widths", "0-d-tensor", "one-tensor", "not-a-tensor"],
)
def test_head_forward_checks_the_modalities(name, inputs, error, match, valid_call):
    head = _head_for(name, valid_call)
    with pytest.raises(error, match=r"(ConcatLinear|DecisionFusion|ConcatMLP) head.*" + match):
        HEAD_FORWARDS[name](head, inputs(*_forward_inputs(valid_call)))


@pytest.mark.parametrize("name", list(HEAD_FORWARDS))
def test_head_forward_takes_leading_dimensions(name, valid_call):
    """(B, T, d_i) per-segment features go through as before: the checks read the last dimension only."""
    a, v, _ = _forward_inputs(valid_call)
    out = HEAD_FORWARDS[name](_head_for(name, valid_call), (a.view(2, 3, -1), v.view(2, 3, -1)))
    for z in out if isinstance(out, list) else [out]:
        assert z.shape == (2, 3, valid_call.classes)


def _without_bias(kind, layer, dims, classes):
    """(head with `layer` built with bias=False, the same head with that bias present and zero)."""
    g = torch.Generator().manual_seed(6)
    head = {
        "concat": lambda: heads.ConcatLinear(dims, classes),
        "decision": lambda: heads.DecisionFusion(dims, classes),
        "mlp": lambda: heads.ConcatMLP(dims, 8, classes),
        "linear": lambda: nn.Linear(sum(dims), classes),
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
        head = nn.Linear(sum(dims), classes, bias=False)
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
def test_layers_without_bias_count_as_zero_bias(kind, layer, backend, valid_call):
    """bias=False layers are supported by every head (forward and Shapley values): a zero bias."""
    head, zero = _without_bias(kind, layer, valid_call.dims, valid_call.classes)
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


def test_triton_never_reads_a_replaced_second_layer(valid_call):
    """fc2 replaced by a narrower layer: the Triton kernels would read past its weight (out of bounds on a
    GPU); the call is refused before any backend runs."""
    call = valid_call()
    call["head"] = _replaced(heads.ConcatMLP(call.dims, 8, call.classes), fc2=nn.Linear(2, call.classes))
    with pytest.raises(ValueError, match=r"fc2.*2 inputs.*8"):
        call.run(backend="triton")


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
