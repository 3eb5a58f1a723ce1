"""``fastshap.modality_shapley``: checks the call, reduces the head to its parameters, picks a backend."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from fastshap import backends, heads
from fastshap.backends import Call, HeadSpec
from fastshap.capture import is_observe_only, op_evaluation
from fastshap.checks import DeferredChecks

MAX_MODALITIES = 16
BENEFITS = ("paper", "accuracy", "probability")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

Head = nn.Linear | heads.ConcatLinear | heads.DecisionFusion | heads.ConcatMLP | Callable


def modality_shapley(
    features: Sequence[torch.Tensor],
    head: Head,
    labels: torch.Tensor,
    *,
    baselines: Sequence[torch.Tensor] | None = None,
    benefit: str = "paper",
    backend: str = "auto",
    with_stats: bool = False,
    defer_checks: DeferredChecks | None = None,
):
    """Exact per-sample Shapley value of each modality.

    Args:
        features: n tensors ``(B, d_i)``, one floating dtype (fp32/fp16/bf16/fp64) and device, 1 <= n <= 16.
        head: ``nn.Linear(sum d_i, C)`` over the concatenated features, a :mod:`fastshap.heads` module, or any
            callable ``list of n (B, d_i) -> (B, C)`` logits (or ``(B, T, C)`` with ``(B, T)`` labels). A
            module whose forward or hooks change what its parameters compute runs as a callable. Modules and
            callables run in the mode they are in: ``head.eval()`` first (dropout would make phi random).
        labels: ``(B,)`` (or ``(B, T)`` for per-segment callables) integers in ``[0, C)``.
        baselines: what replaces a removed modality: None (zeros), or n tensors ``(d_i,)`` / ``(B, d_i)``.
        benefit: ``"paper"`` v(S) = |S| 1[correct]; ``"accuracy"`` 1[correct]; ``"probability"`` p(y | S).
        backend: ``"auto"``, ``"torch"``, ``"cpp"``, ``"cuda"`` or ``"triton"``.
        with_stats: also return ``(2, n)`` float32: per-modality batch sum of phi and count of phi < 1.
        defer_checks: a :class:`fastshap.DeferredChecks`: the checks that read values back from the device
            (labels in range, finite head parameters, finite partial logits) are added to its counters
            instead, so that the call never waits on the device (no host-device synchronisation on a GPU,
            for calls inside a training step); ``defer_checks.raise_if_any()`` raises later. Rows with
            out-of-range labels come back NaN. Callable heads still check their logits on the host.
            Without it, a call reads its checks back once (one synchronisation on a GPU) and raises.

    Returns:
        phi ``(B, n)`` float32 on the features' device (and the stats when ``with_stats``).
        Computed without gradients.
    """
    if defer_checks is not None and not isinstance(defer_checks, DeferredChecks):
        raise TypeError(
            f"fastshap: defer_checks must be a fastshap.DeferredChecks (checks = fastshap.DeferredChecks(), then "
            f"checks.raise_if_any() later) or None, got {type(defer_checks).__name__}"
        )
    feats = _check_features(features)
    n, batch = len(feats), feats[0].shape[0]
    dims = [f.shape[1] for f in feats]
    device, dtype = feats[0].device, feats[0].dtype
    spec = _head_spec(head, dims, device)
    labels = _check_labels(labels, batch, device, spec)
    base = _check_baselines(baselines, feats)
    if benefit not in BENEFITS:
        raise ValueError(f"fastshap: unknown benefit {benefit!r}; choose from {', '.join(map(repr, BENEFITS))}")
    if not isinstance(backend, str):
        raise TypeError(f"fastshap: backend must be a name, got {type(backend).__name__}")
    call = Call(spec.kind, device, dtype, n, per_segment=labels.dim() == 2, note=spec.note)
    chosen = backends.select(backend, call)
    if batch == 0:
        phi = torch.zeros(0, n, dtype=torch.float32, device=device)
        return (phi, torch.zeros(2, n, dtype=torch.float32, device=device)) if with_stats else phi
    with torch.no_grad(), _no_autocast(device), op_evaluation(spec.kind == "callable"):
        phi, stats = chosen.run(spec, feats, base, labels, benefit)
    # Every backend counts what the value checks need instead of stopping: stats row 2, per modality, the
    # rows whose partial logits hold NaN/Inf; row 3, column 0, the NaN rows of phi (labels outside [0, C),
    # coalition scores holding NaN/Inf: NaN/Inf head parameters or an overflow). Reading them is the call's
    # one host-device synchronisation, or none with defer_checks; the head's parameters are never read on
    # the host (an optimizer step may change them without a trace that a cache could key on).
    if defer_checks is not None:
        defer_checks.add_stats(stats, spec.num_classes)  # counts the call too
    else:
        nonfinite, (nan_rows, *_) = stats[2:].tolist()
        if nan_rows or any(nonfinite):
            _raise_bad_values(nonfinite, int(nan_rows), labels, feats, base, spec)
    return (phi, stats[:2]) if with_stats else phi


def _raise_bad_values(nonfinite, nan_rows: int, labels, feats, base, spec: HeadSpec) -> None:
    """The op found bad values: name the cause, in the order a user would look (this path may synchronise)."""
    num_classes = spec.num_classes
    if num_classes is not None and bool(((labels < 0) | (labels >= num_classes)).any()):
        _raise_label(labels, num_classes)
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


def _check_features(features) -> list:
    if isinstance(features, torch.Tensor) or not isinstance(features, Sequence):
        raise TypeError("fastshap: features must be a list or tuple of n tensors (B, d_i), one per modality")
    feats = list(features)
    if not feats:
        raise ValueError("fastshap: features is empty; at least one modality is needed")
    if len(feats) > MAX_MODALITIES:
        raise ValueError(
            f"fastshap: {len(feats)} modalities given; exact Shapley values enumerate 2^n coalitions and are "
            f"supported for n <= {MAX_MODALITIES}"
        )
    for i, f in enumerate(feats):
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"fastshap: features[{i}] is a {type(f).__name__}, not a tensor")
        if f.dim() != 2:
            raise ValueError(f"fastshap: features[{i}] must be 2-D (B, d_i), got shape {tuple(f.shape)}")
        if f.dtype not in _FLOAT_DTYPES:
            raise TypeError(
                f"fastshap: features[{i}] has dtype {f.dtype}; expected float32, float16, bfloat16 or float64"
            )
        if f.shape[1] == 0:
            raise ValueError(f"fastshap: features[{i}] has zero width")
    first = feats[0]
    for i, f in enumerate(feats[1:], start=1):
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


def _check_params(params, device, what: str) -> None:
    """Where and what the head's parameters are. Their values are not read here: NaN/Inf parameters make NaN
    partial logits or coalition scores, which the kernels count (see modality_shapley)."""
    for p in params:
        if p.device != device:
            raise ValueError(f"fastshap: the {what} parameters are on {p.device}, the features on {device}")
        if not p.is_floating_point():
            raise TypeError(f"fastshap: the {what} parameters must be floating point, got {p.dtype}")


def _check_dims(head, dims, what: str) -> None:
    try:
        built = [int(d) for d in head.dims]
    except (TypeError, ValueError):
        raise TypeError(f"fastshap: the {what}'s dims must be a list of feature widths, got {head.dims!r}") from None
    if built != list(dims):
        raise ValueError(f"fastshap: the {what} was built for feature widths {built}, got {list(dims)}")


def _linear(layer, what: str, inputs: int, expected: str, outputs: str = "class"):
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


def _no_autocast(device: torch.device):
    """A context that turns off an ambient ``torch.autocast`` of the features' device type for the backend
    run (a null context when none is on: entering autocast costs host time on every call). Under autocast
    the compiled ops' internal GEMMs would take bf16/fp16 operands they do not expect, and the torch
    backend's would round differently: phi must not depend on the caller's autocast."""
    kind = device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


#: The layer types whose forward the fused kernels reproduce from the parameters alone.
_DECOMPOSED = (nn.Linear, heads.ConcatLinear, heads.DecisionFusion, heads.ConcatMLP)


#: What a decomposed layer's output comes from: a class that overrides one of these computes something else.
_RUN_BY = ("forward", "per_modality_logits", "packed", "__call__", "_call_impl")
#: The same set on an instance (LoRA injectors, accelerate's hooks and debugging wrappers assign
#: `module.forward`); not __call__, which Python looks up on the type.
_RUN_BY_INSTANCE = ("forward", "per_modality_logits", "packed", "_call_impl")


@functools.cache
def _overrides(cls: type) -> str | None:
    """Which method of its decomposed base type `cls` overrides (forward, and what DecisionFusion's forward
    and the kernels' parameters come from), or None; asked once per class."""
    base = next((c for c in cls.__mro__ if c in _DECOMPOSED), None)
    if base is None:
        return None
    for name in _RUN_BY:
        if hasattr(base, name) and getattr(cls, name) is not getattr(base, name):
            return f"overrides {base.__name__}.{name}"
    return None


def _runs_its_own_way(head: nn.Module) -> str | None:
    """Why a layer of `head` computes something its parameters do not say, or None: a forward of its own (a
    subclass's or one set on the instance, e.g. a LoRA term or another activation) or forward hooks (e.g.
    the hook-based torch.nn.utils.weight_norm, which recomputes the weight in a pre-hook). Parametrizations
    are fine: the parameters read are already the parametrized ones."""
    stack = [("", head)]  # a walk of _modules: named_modules() costs ~2 us a layer on every call
    while stack:
        name, module = stack.pop()
        cls = type(module)
        why = _overrides(cls)
        if why is None and (module._forward_hooks or module._forward_pre_hooks):
            # fastshap.capture_features' hook only reads the inputs: the parameters still say what it computes
            hooks = (*module._forward_hooks.values(), *module._forward_pre_hooks.values())
            why = None if all(is_observe_only(hook) for hook in hooks) else "has forward hooks"
        if why is None:
            own = next((name for name in _RUN_BY_INSTANCE if name in module.__dict__), None)
            why = None if own is None else f"has its own {own} set on the instance"
        if why is not None:
            layer = type(head).__name__ + (f" layer {name!r} ({cls.__name__})" if name else "")
            return f"{layer} {why}"
        stack.extend(
            (f"{name}.{key}" if name else key, child) for key, child in module._modules.items() if child is not None
        )
    return None


def _compiled_module(head):
    """The decomposed module a `torch.compile(module)` wrapper runs, when the kernels can value it from its
    parameters (no hooks on the wrapper, nothing of its own inside); anything else as it is (a compiled
    callable head keeps its compilation)."""
    inner = getattr(head, "_orig_mod", None)
    if (
        type(head).__name__ == "OptimizedModule"
        and isinstance(inner, _DECOMPOSED)
        and not (head._forward_hooks or head._forward_pre_hooks)
        and _runs_its_own_way(inner) is None
    ):
        return inner
    return head


#: (head type, reason) pairs already warned about being run as a callable because of hooks.
_WARNED_HOOKED: set = set()


def _head_spec(head, dims, device) -> HeadSpec:
    """The head reduced to its parameters, after checking every layer's shapes against the feature widths
    (heads can be changed after construction: a replaced layer must not be read out of bounds). A head
    that runs its own way is evaluated as the callable it is (the slow path) rather than valued wrongly."""
    total = sum(dims)
    head = _compiled_module(head)
    own_way = _runs_its_own_way(head) if isinstance(head, _DECOMPOSED) else None
    if own_way is not None:
        note = f"{own_way}, so it runs as a callable"
        if own_way.endswith("has forward hooks") and (type(head), own_way) not in _WARNED_HOOKED:
            _WARNED_HOOKED.add((type(head), own_way))  # once per head type and reason: a training loop calls often
            warnings.warn(
                f"fastshap: {note} (2^n head forwards on the torch path, the hooks firing on every coalition "
                f"batch). To record the head's inputs, use fastshap.capture_features(head), whose hook the op "
                f"ignores; otherwise value a copy of the head without the hooks",
                stacklevel=3,
            )
        if isinstance(head, nn.Linear):
            return HeadSpec("callable", fn=lambda features: head(torch.cat(list(features), dim=-1)), note=note)
        return HeadSpec("callable", fn=head, note=note)
    if isinstance(head, (nn.Linear, heads.ConcatLinear)):
        if isinstance(head, heads.ConcatLinear):
            _check_dims(head, dims, "ConcatLinear head")
        fc = head if isinstance(head, nn.Linear) else head.fc
        weight, bias = _linear(
            fc, "Linear head" if fc is head else "ConcatLinear head's fc", total, f"the features have {total} in all"
        )
        params = (weight, bias if bias is not None else weight.new_zeros(weight.shape[0]))
        _check_params(params, device, "head")
        return HeadSpec("concat", params, num_classes=weight.shape[0])
    if isinstance(head, heads.DecisionFusion):
        _check_dims(head, dims, "DecisionFusion head")
        classifiers = head.classifiers
        if len(classifiers) != len(dims):
            raise ValueError(
                f"fastshap: the DecisionFusion head has {len(classifiers)} classifiers for {len(dims)} modalities"
            )
        layers = [
            _linear(clf, f"DecisionFusion head's classifiers[{i}]", d, f"modality {i} has width {d}")
            for i, (clf, d) in enumerate(zip(classifiers, dims))
        ]
        classes = [w.shape[0] for w, _ in layers]
        if len(set(classes)) > 1:
            raise ValueError(
                f"fastshap: the DecisionFusion head's classifiers predict different numbers of classes {classes}; "
                f"they must all predict the same classes"
            )
        _check_params([p for layer in layers for p in layer if p is not None], device, "DecisionFusion head")
        with torch.no_grad():  # packing concatenates the classifiers' parameters: no graph for that
            params = head.packed()
        return HeadSpec("decision", params, num_classes=classes[0])
    if isinstance(head, heads.ConcatMLP):
        _check_dims(head, dims, "ConcatMLP head")
        w1, b1 = _linear(head.fc1, "ConcatMLP head's fc1", total, f"the features have {total} in all", "hidden unit")
        w2, b2 = _linear(head.fc2, "ConcatMLP head's fc2", w1.shape[0], f"fc1 has {w1.shape[0]} outputs")
        params = (
            w1,
            b1 if b1 is not None else w1.new_zeros(w1.shape[0]),
            w2,
            b2 if b2 is not None else w2.new_zeros(w2.shape[0]),
        )
        _check_params(params, device, "ConcatMLP head")
        return HeadSpec("mlp", params, num_classes=w2.shape[0])
    if not callable(head):
        raise TypeError(
            f"fastshap: head must be nn.Linear, a fastshap.heads module or a callable, got {type(head).__name__}"
        )
    return HeadSpec("callable", fn=head)


def _check_labels(labels, batch, device, spec: HeadSpec) -> torch.Tensor:
    """Labels as int64 after the checks that need no values (their range is counted by the backends)."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"fastshap: labels must be an integer tensor, got {type(labels).__name__}")
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


def _raise_label(labels, num_classes: int) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    value = labels[bad][0].item()
    raise ValueError(f"fastshap: label {value} is outside [0, {num_classes}) for a {num_classes}-class head")


def _check_baselines(baselines, feats) -> list | None:
    if baselines is None:
        return None
    if isinstance(baselines, torch.Tensor) or not isinstance(baselines, Sequence):
        raise TypeError("fastshap: baselines must be None or a list of n tensors, (d_i,) or (B, d_i)")
    base = list(baselines)
    if len(base) != len(feats):
        raise ValueError(f"fastshap: {len(base)} baselines given for {len(feats)} modalities")
    batch = feats[0].shape[0]
    per_sample = None
    for i, (b, f) in enumerate(zip(base, feats)):
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"fastshap: baselines[{i}] is a {type(b).__name__}, not a tensor")
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
