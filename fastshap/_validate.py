"""Every check of a :func:`fastshap.modality_shapley` call: the one place that validates what a user passes.

The checks come in the order a user reads the call: the features, the head (its widths, layers and
parameters, as :func:`fastshap.api._head_spec` reduces it), the labels, the baselines, then benefit,
backend and defer_checks; after the op has run, the values it counted (labels in range, finite features,
baselines and head parameters, no overflow). Each names the argument and what is wrong with it:
ValueError for a wrong value or shape, TypeError for a wrong kind of object.

The ops behind the backends (csrc, the Triton host, the fake kernels) keep only the guards that protect
memory: everything a user can get wrong through the public API is caught here first. The heads' own
``forward`` (users call ``head(features)`` directly) and :class:`fastshap.DeferredChecks` use the shared
helpers at the top for the checks they have in common with the call.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from fastshap.backends import HeadSpec

#: The most modalities of an exact call (2^n coalitions).
MAX_MODALITIES = 16
BENEFITS = ("paper", "accuracy", "probability")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_STRIDED = torch.strided


# ---------------------------------------------------------------------------------------------------------
# Shared by the call, the heads and DeferredChecks


def positive_int(value, what: str) -> int:
    """value as an int: a Python or numpy integer (not a bool, a float or a string), > 0."""
    if isinstance(value, bool):
        raise TypeError(f"fastshap: {what} must be an integer, got bool {value}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"fastshap: {what} must be an integer, got {type(value).__name__} {value!r}") from None
    if number <= 0:
        raise ValueError(f"fastshap: {what} must be positive, got {number}")
    return number


def feature_widths(dims, what: str) -> tuple:
    """dims as a tuple of positive ints, one feature width per modality (a list, tuple, 1-D tensor or array)."""
    if isinstance(dims, torch.Tensor) and dims.dim() == 1:
        dims = dims.tolist()  # Python ints (or floats, rejected below)
    if isinstance(dims, (str, bytes, torch.Tensor, set, frozenset, Mapping)) or not isinstance(dims, Iterable):
        raise TypeError(
            f"fastshap: {what} must be a list or tuple of feature widths (one int per modality, in the order of "
            f"the features), got {type(dims).__name__} {dims!r}"
        )
    dims = tuple(dims)
    if not dims:
        raise ValueError(f"fastshap: {what} is empty; give one feature width per modality")
    return tuple(positive_int(d, f"{what}[{i}] (a feature width)") for i, d in enumerate(dims))


def tensor_list(value, what: str, expected: str, widths: Sequence[int] | None = None) -> list:
    """value as a list of tensors: a list or tuple (any sequence but a tensor) whose items are all tensors.
    expected: what the tensors are, for the message (with `widths`, the widths they must have)."""
    if not isinstance(value, (list, tuple)) and (isinstance(value, torch.Tensor) or not isinstance(value, Sequence)):
        expected += "" if widths is None else f" of widths {list(widths)}"
        raise TypeError(f"fastshap: {what} must be a list or tuple of {expected}, got {type(value).__name__}")
    items = list(value)
    for i, t in enumerate(items):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"fastshap: {what}[{i}] is a {type(t).__name__}, not a tensor")
    return items


def check_widths(widths: Sequence, dims: Sequence[int], what: str) -> None:
    """The widths of the feature tensors given to a head (their last dimension; None for a 0-d tensor)
    against the widths `dims` the head was built for: as many, in the same order."""
    if tuple(widths) == tuple(dims):
        return
    zero_d = " (None: a 0-d tensor)" if None in widths else ""
    raise ValueError(
        f"fastshap: the {what} was built for {len(dims)} modalities of widths {list(dims)} (the last dimension "
        f"of each feature tensor), got {len(widths)} of widths {list(widths)}{zero_d}"
    )


def raise_not_dense(t: torch.Tensor, what: str) -> None:
    """For a tensor that is not dense (``t.layout is not torch.strided or t.is_nested``, tested inline by the
    callers: a call per tensor would cost each call a microsecond). The kernels index storage by strides;
    sparse, MKL-DNN and nested tensors have none (the compiled ops would fail with a dispatcher error, the
    torch backend in mid-call)."""
    kind = "nested" if t.is_nested else str(t.layout).removeprefix("torch.")
    raise TypeError(f"fastshap: {what} is a {kind} tensor; fastshap takes dense (strided) tensors (.to_dense())")


# ---------------------------------------------------------------------------------------------------------
# The call, argument by argument


def check_features(features, exact: bool = True) -> list:
    """features as a list of n (B, d_i) tensors of one floating dtype and device (1 <= n <= 16 when exact)."""
    feats = tensor_list(features, "features", "n tensors (B, d_i), one per modality")
    if not feats:
        raise ValueError("fastshap: features is empty; at least one modality is needed")
    if exact and len(feats) > MAX_MODALITIES:
        raise ValueError(
            f"fastshap: {len(feats)} modalities given; exact Shapley values enumerate 2^n coalitions and are "
            f"supported for n <= {MAX_MODALITIES} (estimator='sampling' or 'auto' estimates them for any n)"
        )
    first = feats[0]
    for i, f in enumerate(feats):
        if f.layout is not _STRIDED or f.is_nested:
            raise_not_dense(f, f"features[{i}]")
        if f.dim() != 2:
            raise ValueError(f"fastshap: features[{i}] must be 2-D (B, d_i), got shape {tuple(f.shape)}")
        if f.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"fastshap: features[{i}] has dtype {f.dtype}; expected float32, float16, bfloat16 or float64"
            )
        if f.shape[1] == 0:
            raise ValueError(f"fastshap: features[{i}] has zero width")
        if i == 0:
            continue
        if f.shape[0] != first.shape[0]:
            raise ValueError(f"fastshap: features[{i}] has batch size {f.shape[0]}, features[0] has {first.shape[0]}")
        if f.dtype != first.dtype:
            raise TypeError(f"fastshap: features[{i}] is {f.dtype}, features[0] is {first.dtype}; use one dtype")
        if f.device != first.device:
            raise ValueError(f"fastshap: features[{i}] is on {f.device}, features[0] on {first.device}")
    if first.device.type == "meta":
        raise ValueError(
            "fastshap: the features are meta tensors (shapes without values); Shapley values need the values: "
            "pass CPU or CUDA tensors"
        )
    return feats


def check_head_widths(head: nn.Module, widths: Sequence[int], what: str) -> None:
    """A fastshap.heads module's dims (which a user may have changed since construction) against the
    features' widths."""
    if head.dims == tuple(widths):
        return
    check_widths(widths, feature_widths(head.dims, f"the {what}'s dims"), what)


def check_linear(layer, what: str, inputs: int, expected: str, outputs: str = "class"):
    """(weight, bias or None) of `layer`, detached, after checking that it is an nn.Linear taking `inputs`
    inputs (`expected` says why) with at least one output (one `outputs`) and a bias of its output count.
    Shapes only."""
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"fastshap: the {what} must be an nn.Linear, got {type(layer).__name__}")
    if isinstance(layer.weight, nn.parameter.UninitializedParameter):
        raise ValueError(f"fastshap: the {what} is a lazy layer not initialised yet; run one forward pass first")
    weight = layer.weight.detach()
    if weight.dim() != 2:
        raise ValueError(f"fastshap: the {what}'s weight must be 2-D (outputs, inputs), got {tuple(weight.shape)}")
    if weight.shape[1] != inputs:
        raise ValueError(f"fastshap: the {what} takes {weight.shape[1]} inputs, {expected}")
    if weight.shape[0] == 0:
        raise ValueError(f"fastshap: the {what} has 0 outputs; it needs at least one {outputs}")
    bias = layer.bias
    if bias is not None:
        bias = bias.detach()
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(
                f"fastshap: the {what}'s bias must be ({weight.shape[0]},) for its {weight.shape[0]} outputs, got "
                f"{tuple(bias.shape)}"
            )
    return weight, bias


def check_decision_classifiers(classifiers, widths: Sequence[int]) -> list:
    """[(weight, bias or None)] of a DecisionFusion head's classifiers: one nn.Linear per modality taking its
    width, all predicting the same number of classes."""
    if len(classifiers) != len(widths):
        raise ValueError(
            f"fastshap: the DecisionFusion head has {len(classifiers)} classifiers for {len(widths)} modalities"
        )
    layers = [
        check_linear(clf, f"DecisionFusion head's classifiers[{i}]", d, f"modality {i} has width {d}")
        for i, (clf, d) in enumerate(zip(classifiers, widths))
    ]
    classes = [w.shape[0] for w, _ in layers]
    if len(set(classes)) > 1:
        raise ValueError(
            f"fastshap: the DecisionFusion head's classifiers predict different numbers of classes {classes}; "
            f"they must all predict the same classes"
        )
    return layers


def check_params(params, device, what: str) -> None:
    """Where and what the head's parameters are. Their values are not read here: NaN/Inf parameters make NaN
    partial logits or coalition scores, which the kernels count (see :func:`raise_bad_values`)."""
    for p in params:
        if p.device != device:
            raise ValueError(f"fastshap: the {what} parameters are on {p.device}, the features on {device}")
        if not p.is_floating_point():
            raise TypeError(f"fastshap: the {what} parameters must be floating point, got {p.dtype}")
        if p.layout is not _STRIDED or p.is_nested:
            raise_not_dense(p, f"a {what} parameter")


def check_callable_head(head) -> None:
    if not callable(head):
        raise TypeError(
            f"fastshap: head must be nn.Linear, a fastshap.heads module or a callable, got {type(head).__name__}"
        )


def check_labels(labels, batch: int, device, spec: HeadSpec) -> torch.Tensor:
    """Labels as int64 after the checks that need no values (their range is counted by the backends)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"fastshap: labels must be an integer tensor, got {type(labels).__name__}")
    if labels.layout is not _STRIDED or labels.is_nested:
        raise_not_dense(labels, "labels")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"fastshap: labels must be integer class indices (int64), got {labels.dtype}")
    per_segment = labels.dim() == 2 and spec.kind == "callable"
    if labels.dim() != 1 and not per_segment:
        raise ValueError(
            f"fastshap: labels must be (B,) = ({batch},), got shape {tuple(labels.shape)}"
            + ("" if spec.kind == "callable" else "; (B, T) labels need a callable head with (B, T, C) logits")
        )
    if labels.shape[0] != batch:
        raise ValueError(f"fastshap: {labels.shape[0]} labels for a batch of {batch}")
    if per_segment and labels.shape[1] == 0:
        raise ValueError(
            f"fastshap: per-segment labels (B, T) must have at least one segment, got shape {tuple(labels.shape)}"
        )
    if labels.device != device:
        raise ValueError(f"fastshap: labels are on {labels.device}, the features on {device}")
    if labels.dtype == torch.uint64:
        # int64 would wrap a uint64 of 2^63 or more to a negative label and name that one in the error: read
        # them here (a synchronisation, for this rare dtype only) to name the caller's value.
        wrapped = labels.long() < 0
        if bool(wrapped.any()):
            raise ValueError(f"fastshap: label {labels[wrapped][0].item()} is outside the classes of any head")
    return labels.long()


def check_baselines(baselines, feats: list) -> list | None:
    """None, or the n baselines cast to the features' dtype: all (d_i,), or all (B, d_i) when any is."""
    if baselines is None:
        return None
    base = tensor_list(baselines, "baselines", "n tensors, (d_i,) or (B, d_i) (or None)")
    if len(base) != len(feats):
        raise ValueError(f"fastshap: {len(base)} baselines given for {len(feats)} modalities")
    batch = feats[0].shape[0]
    per_sample = None
    for i, (b, f) in enumerate(zip(base, feats)):
        if b.layout is not _STRIDED or b.is_nested:
            raise_not_dense(b, f"baselines[{i}]")
        if not b.is_floating_point():
            raise TypeError(
                f"fastshap: baselines[{i}] has dtype {b.dtype}; baselines must be floating point (they are cast "
                f"to the features' {f.dtype})"
            )
        d = f.shape[1]
        if b.shape not in ((d,), (batch, d)):
            raise ValueError(f"fastshap: baselines[{i}] must be ({d},) or ({batch}, {d}), got {tuple(b.shape)}")
        if b.device != f.device:
            raise ValueError(f"fastshap: baselines[{i}] is on {b.device}, the features on {f.device}")
        # Kernels take one layout for all modalities: broadcast shared baselines if the layouts are mixed.
        per_sample = per_sample or b.dim() == 2
        base[i] = b.to(f.dtype)
    if per_sample:
        base = [b.expand(batch, -1) if b.dim() == 1 else b for b in base]
    return base


def check_benefit(benefit) -> None:
    if benefit not in BENEFITS:
        raise ValueError(f"fastshap: unknown benefit {benefit!r}; choose from {', '.join(map(repr, BENEFITS))}")


def check_backend(backend) -> None:
    """The backend's type; its name is checked where backends are chosen (fastshap.backends.select)."""
    if not isinstance(backend, str):
        raise TypeError(f"fastshap: backend must be a name, got {type(backend).__name__}")


def check_exact_options(estimator: str, samples, generator) -> None:
    """Exact values draw nothing: sampling's options with estimator="exact" are a mistake, not ignored."""
    if estimator == "exact" and (samples is not None or generator is not None):
        raise ValueError("fastshap: samples and generator are for estimator='sampling' (or 'auto' past n = 16)")


def check_defer_checks(defer_checks) -> None:
    if defer_checks is None:
        return
    from fastshap.checks import DeferredChecks  # here: fastshap.checks uses this module's positive_int

    if not isinstance(defer_checks, DeferredChecks):
        raise TypeError(
            f"fastshap: defer_checks must be a fastshap.DeferredChecks (checks = fastshap.DeferredChecks(), then "
            f"checks.raise_if_any() later) or None, got {type(defer_checks).__name__}"
        )


# ---------------------------------------------------------------------------------------------------------
# The values, after the op counted them


def raise_bad_values(nonfinite, nan_rows: int, labels, feats, base, spec: HeadSpec) -> None:
    """The op found bad values: name the cause, in the order a user would look (this path may synchronise).
    nonfinite: per modality, the rows whose partial logits held NaN/Inf; nan_rows: the NaN rows of phi."""
    num_classes = spec.num_classes
    if num_classes is not None and bool(((labels < 0) | (labels >= num_classes)).any()):
        raise_label(labels, num_classes)
    first = next((i for i, c in enumerate(nonfinite) if c), None)  # a modality with non-finite partials
    for what, tensors in (("features", feats), ("baselines", base)):
        if first is None or tensors is None:
            continue
        rows = (~torch.isfinite(tensors[first])).reshape(-1, tensors[first].shape[-1]).any(-1)
        if bool(rows.any()):
            cast = (
                f" in the features' dtype {feats[0].dtype} (the baselines are cast to it)"
                if what == "baselines"
                else ""
            )
            raise ValueError(
                f"fastshap: the {what} of modality {first} hold NaN or Inf values{cast} ({int(rows.sum())} rows "
                f"affected)"
            )
    if not all(bool(torch.isfinite(p).all()) for p in spec.params):  # () for a callable head
        raise ValueError("fastshap: the head parameters hold NaN or Inf values")
    compute = "float64" if feats[0].dtype == torch.float64 else "float32"
    if first is not None:
        raise ValueError(
            f"fastshap: modality {first}'s finite features (or baselines) times the head weights overflow {compute} "
            f"(the partial logits hold Inf or NaN); rescale the features or the head"
        )
    scores = "hidden pre-activations or logits" if spec.kind == "mlp" else "logits"
    raise ValueError(
        f"fastshap: the coalitions' {scores} overflow {compute} for {nan_rows} samples (finite inputs and head "
        f"parameters whose sums hold Inf or NaN; their phi rows are NaN); rescale the features or the head"
    )


def raise_label(labels, num_classes: int) -> None:
    """Names the first label outside [0, num_classes)."""
    bad = (labels < 0) | (labels >= num_classes)
    value = labels[bad][0].item()
    raise ValueError(f"fastshap: label {value} is outside [0, {num_classes}) for a {num_classes}-class head")
