"""``fastshap.modality_shapley``: checks the call, reduces the head to its parameters, picks a backend."""

from __future__ import annotations

import weakref
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from fastshap import backends, heads
from fastshap.backends import Call, HeadSpec
from fastshap.checks import DeferredChecks

MAX_MODALITIES = 16
BENEFITS = ("paper", "accuracy", "probability")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

Head = Union[nn.Linear, heads.ConcatLinear, heads.DecisionFusion, heads.ConcatMLP, Callable]


def modality_shapley(
    features: Sequence[torch.Tensor],
    head: Head,
    labels: torch.Tensor,
    *,
    baselines: Optional[Sequence[torch.Tensor]] = None,
    benefit: str = "paper",
    backend: str = "auto",
    with_stats: bool = False,
    defer_checks: Optional[DeferredChecks] = None,
):
    """Exact per-sample Shapley value of each modality.

    Args:
        features: n tensors ``(B, d_i)``, one floating dtype (fp32/fp16/bf16/fp64) and device, 1 <= n <= 16.
        head: ``nn.Linear(sum d_i, C)`` over the concatenated features, a :mod:`fastshap.heads` module, or any
            callable ``list of n (B, d_i) -> (B, C)`` logits (or ``(B, T, C)`` with ``(B, T)`` labels).
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
    spec = _head_spec(head, dims, device, defer_checks)
    labels = _check_labels(labels, batch, device, spec)
    base = _check_baselines(baselines, feats)
    if benefit not in BENEFITS:
        raise ValueError(f"fastshap: unknown benefit {benefit!r}; choose from {', '.join(map(repr, BENEFITS))}")
    if not isinstance(backend, str):
        raise TypeError(f"fastshap: backend must be a name, got {type(backend).__name__}")
    chosen = backends.select(backend, Call(spec.kind, device, dtype, n, per_segment=labels.dim() == 2))
    if batch == 0:
        phi = torch.zeros(0, n, dtype=torch.float32, device=device)
        return (phi, torch.zeros(2, n, device=device)) if with_stats else phi
    with torch.no_grad():
        phi, stats = chosen.run(spec, feats, base, labels, benefit)
    # Every backend counts what the value checks need in stats rows 2 (non-finite partial logits per
    # modality) and 3 (labels outside [0, C), whose phi rows are NaN) instead of stopping: reading them is
    # the call's one host-device synchronisation, or none with defer_checks.
    if defer_checks is not None:
        defer_checks.calls += 1
        defer_checks.add_stats(stats, spec.num_classes)
    else:
        nonfinite, (bad_labels, *_) = stats[2:].tolist()
        if bad_labels:
            _raise_label(labels, spec.num_classes)
        if any(nonfinite):
            _raise_nonfinite(next(i for i, c in enumerate(nonfinite) if c), feats, base, dtype)
    return (phi, stats[:2]) if with_stats else phi


def _raise_nonfinite(i: int, feats, base, dtype) -> None:
    """Modality i's contribution was not finite: say whether its inputs hold NaN/Inf or the product overflowed."""
    for what, tensors in (("features", feats), ("baselines", base)):
        if tensors is None:
            continue
        rows = (~torch.isfinite(tensors[i])).reshape(-1, tensors[i].shape[-1]).any(-1)
        if bool(rows.any()):
            raise ValueError(
                f"fastshap: the {what} of modality {i} hold NaN or Inf values ({int(rows.sum())} rows affected)"
            )
    compute = "float64" if dtype == torch.float64 else "float32"
    raise ValueError(
        f"fastshap: modality {i}'s finite features (or baselines) times the head weights overflow {compute} "
        f"(the partial logits hold Inf or NaN); rescale the features or the head"
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
            raise TypeError(f"fastshap: features[{i}] has dtype {f.dtype}; expected float32, float16, bfloat16 or float64")
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
    return feats


# Head parameters found finite, by (storage address, version) of each: an evaluation pass calls the op
# many times with unchanged parameters, and reading them again each call would cost device reductions and,
# without defer_checks, a host-device synchronisation per call. An in-place update (an optimizer step)
# bumps the version, a replaced parameter has another address: either is checked again. Keyed by
# id(module) with a weak reference to tell a reused id; deferred checks keep their own record
# (DeferredChecks.verified).
_FINITE: dict = {}
_MAX_RECORDED = 256


def _check_params(params, device, what: str, deferred: Optional[DeferredChecks], module: nn.Module,
                  sources=None) -> None:
    """params: what the kernels take; sources: the module's own parameters they come from (detached), whose
    finiteness is checked (default: params)."""
    for p in params:
        if p.device != device:
            raise ValueError(f"fastshap: the {what} parameters are on {p.device}, the features on {device}")
        if not p.is_floating_point():
            raise TypeError(f"fastshap: the {what} parameters must be floating point, got {p.dtype}")
    sources = params if sources is None else sources
    if not sources:
        return
    record = _FINITE if deferred is None else deferred.verified
    signature = tuple((p.data_ptr(), p._version) for p in sources)
    entry = record.get(id(module))
    if entry is not None and entry[0]() is module and entry[1] == signature:
        return
    finite = torch.stack([torch.isfinite(p).all() for p in sources]).all()
    if deferred is not None:
        deferred.add_params(finite)  # counted now, raised later: no need to look at these versions again
    elif not bool(finite):
        raise ValueError(f"fastshap: the {what} parameters hold NaN or Inf values")
    if len(record) >= _MAX_RECORDED:
        record.clear()
    record[id(module)] = (weakref.ref(module), signature)


def _check_dims(head, dims, what: str) -> None:
    if list(head.dims) != list(dims):
        raise ValueError(f"fastshap: the {what} was built for feature widths {list(head.dims)}, got {list(dims)}")


def _head_spec(head, dims, device, deferred: Optional[DeferredChecks]) -> HeadSpec:
    total = sum(dims)
    if isinstance(head, (nn.Linear, heads.ConcatLinear)):
        fc = head if isinstance(head, nn.Linear) else head.fc
        if isinstance(head, heads.ConcatLinear):
            _check_dims(head, dims, "ConcatLinear head")
        if fc.in_features != total:
            raise ValueError(
                f"fastshap: the Linear head takes {fc.in_features} inputs, the features have {total} in all"
            )
        weight = fc.weight.detach()
        bias = fc.bias.detach() if fc.bias is not None else weight.new_zeros(fc.out_features)
        params = (weight, bias)
        _check_params(params, device, "head", deferred, fc, (weight,) if fc.bias is None else params)
        return HeadSpec("concat", params, num_classes=fc.out_features)
    if isinstance(head, heads.DecisionFusion):
        _check_dims(head, dims, "DecisionFusion head")
        with torch.no_grad():  # packing concatenates the classifiers' parameters: no graph for that
            params = head.packed()
        sources = tuple(p.detach() for p in head.parameters())
        _check_params(params, device, "DecisionFusion head", deferred, head, sources)
        return HeadSpec("decision", params, num_classes=params[0].shape[0])
    if isinstance(head, heads.ConcatMLP):
        _check_dims(head, dims, "ConcatMLP head")
        params = tuple(p.detach() for p in (head.fc1.weight, head.fc1.bias, head.fc2.weight, head.fc2.bias))
        _check_params(params, device, "ConcatMLP head", deferred, head)
        return HeadSpec("mlp", params, num_classes=head.fc2.out_features)
    if not callable(head):
        raise TypeError(f"fastshap: head must be nn.Linear, a fastshap.heads module or a callable, got {type(head).__name__}")
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
    if labels.device != device:
        raise ValueError(f"fastshap: labels are on {labels.device}, the features on {device}")
    return labels.long()


def _raise_label(labels, num_classes: int) -> None:
    bad = (labels < 0) | (labels >= num_classes)
    value = labels[bad][0].item()
    raise ValueError(f"fastshap: label {value} is outside [0, {num_classes}) for a {num_classes}-class head")


def _check_baselines(baselines, feats) -> Optional[list]:
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
