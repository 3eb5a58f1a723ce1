"""``fastshap.modality_shapley``: checks the call (with :mod:`fastshap._validate`, where every check of the
public API lives), reduces the head to its parameters, picks a backend."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from fastshap import _call_plan, _validate, backends, heads, sampling
from fastshap._validate import BENEFITS, MAX_MODALITIES  # noqa: F401  (fastshap exports them from here)
from fastshap.backends import Call, HeadSpec
from fastshap.capture import is_observe_only, op_evaluation
from fastshap.checks import DeferredChecks

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
    estimator: str = "exact",
    samples: int | None = None,
    generator: torch.Generator | None = None,
    with_stderr: bool = False,
):
    """Exact (or, past 16 modalities, sampled) per-sample Shapley value of each modality.

    Args:
        features: n tensors ``(B, d_i)``, one floating dtype (fp32/fp16/bf16/fp64) and device, 1 <= n <= 16
            for exact values, any n >= 1 for sampled ones.
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
        estimator: ``"exact"`` (all 2^n coalitions), ``"sampling"`` (antithetic permutation sampling, any n;
            :mod:`fastshap.sampling`, docs/sampling.md) or ``"auto"`` (exact for n <= 16, sampling beyond).
        samples: permutations walked by the sampling estimator, an even number (K / 2 antithetic pairs);
            default 128. Only with an estimator that may sample.
        generator: the ``torch.Generator`` the permutations are drawn from (default: torch's global one); the
            same state gives the same values. Only with an estimator that may sample.
        with_stderr: also return the standard error of each value, ``(B, n)`` float32 (zeros for exact values).

    Returns:
        phi ``(B, n)`` float32 on the features' device, then the standard errors when ``with_stderr``, then
        the stats when ``with_stats``. Computed without gradients.
    """
    # The fast path (fastshap._call_plan): an earlier call with this head and options left a plan; it checks
    # in one pass that nothing its decisions rest on changed and runs the op, or answers None. Traced calls
    # (torch.compile) take the full path: it is what the graph records.
    compiling = torch.compiler.is_compiling()
    if not compiling:
        try:
            plan = _call_plan.PLANS.get((id(head), backend, benefit, baselines is None))
        except TypeError:  # an unhashable backend or benefit: the checks below say what is wrong
            plan = None
        if plan is not None and estimator == "exact" and samples is None and generator is None:
            out = plan(features, head, labels, baselines, defer_checks, with_stats, with_stderr)
            if out is not None:
                return out
    # Every check of the call's arguments, in the order of the signature (fastshap._validate; _head_spec
    # checks the head's layers with its functions). The values are checked after the op, from its counts.
    feats = _validate.check_features(features, exact=estimator == "exact")
    n, batch = len(feats), feats[0].shape[0]
    device, dtype = feats[0].device, feats[0].dtype
    spec = _head_spec(head, [f.shape[1] for f in feats], device)
    labels = _validate.check_labels(labels, batch, device, spec)
    base = _validate.check_baselines(baselines, feats)
    _validate.check_benefit(benefit)
    _validate.check_backend(backend)
    _validate.check_defer_checks(defer_checks)
    call = Call(spec.kind, device, dtype, n, per_segment=labels.dim() == 2, note=spec.note)
    sampled = sampling.resolve_estimator(estimator, n) == "sampling"
    if sampled:
        pairs = sampling.check_samples(samples, with_stderr)
        sampling.check_generator(generator)
        chosen = sampling.select(backend, call)
        orders = sampling.draw_orders(pairs, n, generator, device)
    else:
        _validate.check_exact_options(estimator, samples, generator)
        chosen = backends.select(backend, call)
    stderr = None
    if batch == 0:
        phi = torch.zeros(0, n, dtype=torch.float32, device=device)
        return _outputs(phi, None, torch.zeros(4, n, dtype=torch.float32, device=device), with_stderr, with_stats)
    with torch.no_grad(), _no_autocast(device), op_evaluation(spec.kind == "callable"):
        if sampled:
            phi, stderr, stats = sampling.run(chosen, spec, feats, base, labels, benefit, orders)
        else:
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
            _validate.raise_bad_values(nonfinite, int(nan_rows), labels, feats, base, spec)
    if not (sampled or compiling) and estimator == "exact":  # a plan for the next call like this one
        _call_plan.remember(head, backend, benefit, spec, chosen, features, labels, baselines)
    return _outputs(phi, stderr, stats, with_stderr, with_stats)


def _outputs(phi, stderr, stats, with_stderr: bool, with_stats: bool):
    """phi, then the standard errors (zeros for exact values), then the stats' first two rows, as asked."""
    out = [phi]
    if with_stderr:
        out.append(torch.zeros_like(phi) if stderr is None else stderr)
    if with_stats:
        out.append(stats[:2])
    return out[0] if len(out) == 1 else tuple(out)


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
            _validate.check_head_widths(head, dims, "ConcatLinear head")
        fc = head if isinstance(head, nn.Linear) else head.fc
        weight, bias = _validate.check_linear(
            fc, "Linear head" if fc is head else "ConcatLinear head's fc", total, f"the features have {total} in all"
        )
        params = (weight, bias if bias is not None else weight.new_zeros(weight.shape[0]))
        _validate.check_params(params, device, "head")
        return HeadSpec("concat", params, num_classes=weight.shape[0])
    if isinstance(head, heads.DecisionFusion):
        _validate.check_head_widths(head, dims, "DecisionFusion head")
        layers = _validate.check_decision_classifiers(head.classifiers, dims)
        _validate.check_params([p for layer in layers for p in layer if p is not None], device, "DecisionFusion head")
        with torch.no_grad():  # packing concatenates the classifiers' parameters: no graph for that
            params = head.packed()
        return HeadSpec("decision", params, num_classes=layers[0][0].shape[0])
    if isinstance(head, heads.ConcatMLP):
        _validate.check_head_widths(head, dims, "ConcatMLP head")
        w1, b1 = _validate.check_linear(
            head.fc1, "ConcatMLP head's fc1", total, f"the features have {total} in all", "hidden unit"
        )
        w2, b2 = _validate.check_linear(head.fc2, "ConcatMLP head's fc2", w1.shape[0], f"fc1 has {w1.shape[0]} outputs")
        params = (
            w1,
            b1 if b1 is not None else w1.new_zeros(w1.shape[0]),
            w2,
            b2 if b2 is not None else w2.new_zeros(w2.shape[0]),
        )
        _validate.check_params(params, device, "ConcatMLP head")
        return HeadSpec("mlp", params, num_classes=w2.shape[0])
    _validate.check_callable_head(head)
    return HeadSpec("callable", fn=head)


# The checks under the names that fastshap.coalitions, tools/gpu_sanitize_check.py and tests/kernels call them
# by (one implementation: fastshap._validate's).
_check_features = _validate.check_features
_check_labels = _validate.check_labels
_check_baselines = _validate.check_baselines
_raise_bad_values = _validate.raise_bad_values
