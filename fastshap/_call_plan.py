"""The fast path of :func:`fastshap.modality_shapley`: what a checked call decided, reused by the next one.

A training loop values the same head with features of the same widths, dtype and device on every step. The
first such call takes the full path (every check of :mod:`fastshap._validate`, the head reduced to its kind
and parameters, a backend chosen) and leaves a *plan* behind. A later call with the same head object and
the same ``backend``, ``benefit`` and kind of ``baselines`` takes the plan: one pass (in C++,
``csrc/call_plan.cpp``, or its Python twin :func:`_matches` where the extension lacks it) checks that
nothing the decisions rest on has changed, then the op runs. Checked are:

* the head: the same object (held by a weak reference, so heads are freed as ever), and in each of its
  layers the same class, the same parameter and sub-layer objects, the same forward hooks, no attribute added
  (e.g. an instance ``forward``), the same ``dims``; a parametrized layer is never planned;
* the parameters' shapes, strides, dtypes and devices (``p.data = ...`` swaps them under the same object),
  never their values: the op reads the live parameters on every call, so an optimizer step (in place, fused
  or not) is always seen;
* the features (a list or tuple of n plain dense tensors of the planned widths, dtype and device, one batch
  size > 0), the labels (int64, ``(B,)``, same device) and the baselines (none, or all ``(d_i,)`` or all
  ``(B, d_i)`` of the features' dtype, as planned);
* that nothing traces the call (no torch.compile, no dispatch or torch-function mode, no functorch
  transform): those take the full path, which is what they record.

Anything else takes the full path, which raises the same errors as ever or leaves a new plan. The values are
checked as on the full path, from the op's counts: a checked call reads them once and raises through
:func:`fastshap._validate.raise_bad_values`; with ``defer_checks`` they are added to its counters.
"""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch import nn

from fastshap import _extension, _validate, head_kinds, heads, reference
from fastshap.checks import DeferredChecks

#: fastshap._C when it has the plan functions (plan_new, plan_check, plan_run, add_counts, stats_bad), else
#: None: then plans are checked in Python, by the same rules.
NATIVE = _extension._C if _extension.LOADED and hasattr(getattr(_extension, "_C", None), "plan_run") else None

#: (id(head), backend, benefit, baselines is None) -> Plan. A head's entries go when the head is freed.
PLANS: dict = {}
#: How many plans of a key were replaced before any call used them; at _MAX_STRIKES the key is not planned
#: again (calls that differ every time would pay for a plan per call).
_STRIKES: dict = {}
_MAX_STRIKES = 3
#: ids of the heads with a finaliser that forgets their plans and strikes.
_WATCHED: set = set()
_BACKENDS = ("cpp", "cuda", "triton", "torch")
_STRIDED = torch.strided


class Plan:
    """What a checked call decided for a head and its arguments' shapes. Called with a later call's arguments
    it returns the call's outputs, or None when the call must take the full path."""

    __slots__ = (
        "key",
        "backend",
        "benefit",
        "kind",
        "params",
        "watched",
        "num_classes",
        "n",
        "launch",
        "record",
        "hits",
    )

    def __call__(self, features, head, labels, baselines, defer_checks, with_stats, with_stderr):
        if defer_checks is not None and (type(defer_checks) is not DeferredChecks or self.n > defer_checks._width):
            return None  # the full path checks it (and raises for too many modalities)
        checked = defer_checks is None
        if NATIVE is not None and self.params is not None and self.backend in ("cpp", "cuda"):
            # The compiled op: the check and the op in one C++ call (one dispatcher call, no autograd or
            # autocast keys, the GIL released); `bad` read from the stats when checked.
            out = NATIVE.plan_run(self.record, head, features, labels, baselines, checked)
            if out is None:
                return None
            phi, stats, bad = out
        else:
            batch = (
                NATIVE.plan_check(self.record, head, features, labels, baselines)
                if NATIVE is not None
                else _matches(self.record, head, features, labels, baselines)
            )
            if batch is None:
                return None
            phi, stats = self._run(features, self._params(head), baselines, labels)
            bad = checked and _any_bad(stats)
        self.hits += 1
        if not checked:
            _count(defer_checks, stats, self.n, self.num_classes)
        elif bad:
            self._raise(stats, head, features, labels, baselines)
        if with_stats or with_stderr:
            out = [phi]
            if with_stderr:
                out.append(torch.zeros_like(phi))
            if with_stats:
                out.append(stats[:2].float())
            return tuple(out)
        return phi

    def _params(self, head) -> tuple:
        if self.params is not None:
            return self.params
        with torch.no_grad():  # decision fusion: its classifiers packed anew (their current values)
            return head.packed()

    def _run(self, features, params, baselines, labels):
        """(phi, stats) of the planned backend; stats float32, or float64 from the Triton launch."""
        features = list(features)
        base = [] if baselines is None else list(baselines)
        if self.launch is not None:
            return self.launch(features, params, base, labels)
        device = features[0].device
        with torch.no_grad(), _no_autocast(device):
            if self.backend == "torch":
                return reference.shapley(features, self.kind, list(params), base, labels, self.benefit)
            if self.backend == "triton":
                from fastshap import triton_shapley

                return triton_shapley.shapley(features, self.kind, list(params), base, labels, self.benefit)
            return torch.ops.fastshap.shapley.default(features, self.kind, list(params), base, labels, self.benefit)

    def _raise(self, stats, head, features, labels, baselines):
        """The op counted bad values: the full path's error, named by fastshap._validate."""
        nonfinite, (nan_rows, *_) = stats[2:].tolist()
        spec = _Spec(self.kind, self._params(head), self.num_classes)
        base = None if baselines is None else list(baselines)
        _validate.raise_bad_values(nonfinite, int(nan_rows), labels, list(features), base, spec)


class _Spec:
    """What raise_bad_values reads of a HeadSpec."""

    __slots__ = ("kind", "params", "num_classes")

    def __init__(self, kind, params, num_classes):
        self.kind, self.params, self.num_classes = kind, tuple(params), num_classes


def _no_autocast(device: torch.device):
    kind = device.type
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


def _any_bad(stats: torch.Tensor) -> bool:
    """Whether stats rows 2 and 3 count anything (one read; a synchronisation on a GPU)."""
    if NATIVE is not None:
        return NATIVE.stats_bad(stats)
    return bool(stats[2:].any())


def _count(checks: DeferredChecks, stats: torch.Tensor, n: int, num_classes) -> None:
    """DeferredChecks.add_stats for a planned call: the same counters, under its lock, with one add."""
    with checks._lock:
        counts = checks._counts
        if counts is None or NATIVE is None or not NATIVE.add_counts(counts, stats):
            # creates the counters, or raises naming the other device; the Python add otherwise
            checks._slot(stats.device)[:, :n].add_(stats[2:4])
        checks.calls += 1
        if num_classes is not None:
            checks.num_classes = num_classes


# ---------------------------------------------------------------------------------------------------------
# Making plans


def lookup(head, backend, benefit, baselines):
    """The plan for this call's head and options, or None."""
    try:
        return PLANS.get((id(head), backend, benefit, baselines is None))
    except TypeError:  # an unhashable backend or benefit: the full path says what is wrong
        return None


def remember(head, backend: str, benefit: str, spec, chosen, features, labels, baselines) -> None:
    """After a checked call that ran `chosen` for `spec` on these arguments (as the caller gave them): a plan
    for the next such call, when one can be made. A call that cannot be planned (traced, other argument
    types) leaves the plan of earlier calls in place: it still serves calls like theirs."""
    key = (id(head), backend, benefit, baselines is None)
    if spec.kind not in head_kinds.KINDS or chosen.name not in _BACKENDS or _STRIKES.get(key, 0) >= _MAX_STRIKES:
        return
    plan = _make(head, key, spec, chosen, features, labels, baselines)
    if plan is None:
        return
    old = PLANS.get(key)
    if old is not None and old.hits == 0:  # replaced before any call used it: calls that keep changing
        _STRIKES[key] = _STRIKES.get(key, 0) + 1
        if _STRIKES[key] >= _MAX_STRIKES:
            del PLANS[key]
            return
    if key[0] not in _WATCHED:
        _WATCHED.add(key[0])
        weakref.finalize(head, _forget, key[0])
    PLANS[key] = plan


def _forget(head_id: int) -> None:
    """The head is gone: so are its plans (a later object may reuse its id)."""
    _WATCHED.discard(head_id)
    for table in (PLANS, _STRIKES):
        for key in [k for k in table if k[0] == head_id]:
            del table[key]


def _plain(t) -> bool:
    return type(t) in (torch.Tensor, nn.Parameter) and t.layout is _STRIDED and not t.is_nested


def _make(head, key, spec, chosen, features, labels, baselines) -> Plan | None:
    if not isinstance(features, (list, tuple)) or not all(_plain(f) for f in features):
        return None
    if not _plain(labels) or labels.dtype != torch.int64 or labels.dim() != 1:
        return None  # other integer labels are converted on the full path
    f0 = features[0]
    if baselines is not None:
        if not isinstance(baselines, (list, tuple)) or not all(_plain(b) for b in baselines):
            return None
        if any(b.dtype != f0.dtype for b in baselines) or len({b.dim() for b in baselines}) != 1:
            return None  # cast or mixed (d_i,) / (B, d_i) baselines: the full path converts them
    if torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled():
        return None
    layers = _layers(head)
    watched = None if layers is None else _live_params(head, spec.kind)
    if watched is None:
        return None
    plan = Plan()
    plan.key, plan.backend, plan.benefit, plan.kind = key, chosen.name, key[2], spec.kind
    plan.params = None if spec.kind == "decision" else watched
    plan.watched = watched
    plan.num_classes, plan.n, plan.hits, plan.launch = spec.num_classes, len(features), 0, None
    if chosen.name == "triton":
        from fastshap import triton_shapley

        # decision fusion packs its parameters per call: the launch is planned on this call's packed ones
        example = spec.params if plan.params is None else plan.params
        plan.launch = triton_shapley.planned_launch(spec.kind, list(features), list(example), baselines or [], key[2])
    probes = _probes(head, layers)
    # Triton indexes feature and baseline columns with 32-bit offsets: a call whose strides would wrap them
    # takes the full path (which copies them)
    offsets32 = chosen.name == "triton"
    if NATIVE is not None:
        plan.record = NATIVE.plan_new(
            head, *probes, list(features), labels, baselines, list(watched), plan.kind, plan.benefit, offsets32
        )
    else:
        plan.record = _PyPlan(head, probes, features, labels, baselines, watched, offsets32)
    return plan


def _layers(head) -> list | None:
    """Every module of the head (a torch.compile wrapper, its module, their layers), or None when one is
    parametrized (its parameters are recomputed by properties on every read: not planned)."""
    out, stack = [], [head]
    while stack:
        module = stack.pop()
        if not isinstance(module, nn.Module) or torch.nn.utils.parametrize.is_parametrized(module):
            return None
        out.append(module)
        stack.extend(child for child in module._modules.values() if child is not None)
    return out


def _live_params(head, kind: str) -> tuple | None:
    """The live tensors whose shapes, dtypes and devices a call's decisions rest on: the op's parameters
    (a missing bias as a zeros tensor made once: the weight's dtype and device are part of the plan), or for
    decision fusion its classifiers' weights and biases (packed per call). None for anything else."""
    inner = getattr(head, "_orig_mod", head) if type(head).__name__ == "OptimizedModule" else head

    def weight_bias(layer):
        if not isinstance(layer, nn.Linear):
            return None
        weight, bias = layer._parameters.get("weight"), layer._parameters.get("bias")
        if weight is None:
            return None
        if bias is None:
            with torch.no_grad():
                bias = weight.new_zeros(weight.shape[0])
        return weight, bias

    if kind == "concat":
        pair = weight_bias(inner if isinstance(inner, nn.Linear) else getattr(inner, "fc", None))
        return pair
    if kind == "mlp" and isinstance(inner, heads.ConcatMLP):
        first, second = weight_bias(inner.fc1), weight_bias(inner.fc2)
        return None if first is None or second is None else (*first, *second)
    if kind == "decision" and isinstance(inner, heads.DecisionFusion):
        tensors = [p for clf in inner.classifiers for p in clf._parameters.values() if p is not None]
        return tuple(tensors)
    return None


def _probes(head, layers: list) -> tuple:
    """What the per-call check compares: (the head's class, types, sizes, probes).

    types: (module, its class) for the layers under the head; sizes: (dict, its length); probes: (dict, key,
    the object it must map to, or None for "the key is present"). Hook dicts are compared by their keys
    (handle ids, never reused), so that no plan holds a hook, which may hold the head."""
    types, sizes, probes = [], [], []
    for module in layers:
        state = module.__dict__
        if module is not head:
            types.append((module, type(module)))
        sizes.append((state, len(state)))  # an attribute added, e.g. an instance forward
        for name in ("_parameters", "_modules", "_forward_hooks", "_forward_pre_hooks", "dims"):
            if name in state:
                probes.append((state, name, state[name]))
        for name in ("_parameters", "_modules"):
            table = state[name]
            sizes.append((table, len(table)))
            probes.extend((table, k, v) for k, v in table.items() if v is not None)
            probes.extend((table, k, None) for k, v in table.items() if v is None)
        for name in ("_forward_hooks", "_forward_pre_hooks"):
            table = state[name]
            sizes.append((table, len(table)))
            probes.extend((table, k, None) for k in table)
    return type(head), types, sizes, probes


# ---------------------------------------------------------------------------------------------------------
# The check in Python, for an extension without plan_check (the same rules as csrc/call_plan.cpp)


class _PyPlan:
    def __init__(self, head, probes, features, labels, baselines, watched, offsets32):
        self.head = weakref.ref(head)
        self.head_type, self.types, self.sizes, self.probes = probes
        f0 = features[0]
        self.n, self.dims = len(features), tuple(f.shape[1] for f in features)
        self.dtype, self.device = f0.dtype, f0.device
        self.baselines = 0 if baselines is None else (1 if baselines[0].dim() == 1 else 2)
        self.watched = watched
        self.specs = [_tensor_spec(p) for p in watched]
        self.offsets32 = offsets32


def _tensor_spec(t) -> tuple:
    return (
        type(t) in (torch.Tensor, nn.Parameter),
        t.layout,
        t.is_nested,
        tuple(t.shape),
        t.stride(),
        t.dtype,
        t.device,
    )


def _ordinary(t, dtype, device) -> bool:
    return (
        type(t) in (torch.Tensor, nn.Parameter)
        and t.layout is _STRIDED
        and not t.is_nested
        and t.dtype == dtype
        and t.device == device
    )


def _matches(p: _PyPlan, head, features, labels, baselines):
    """The batch size when the call matches plan `p`, else None."""
    if p.head() is not head or type(head) is not p.head_type:
        return None
    if torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled():
        return None
    for module, cls in p.types:
        if type(module) is not cls:
            return None
    for table, size in p.sizes:
        if len(table) != size:
            return None
    for table, key, value in p.probes:
        if (key not in table) if value is None else (table.get(key) is not value):
            return None
    if any(_tensor_spec(t) != spec for t, spec in zip(p.watched, p.specs)):
        return None
    if not isinstance(features, (list, tuple)) or len(features) != p.n:
        return None
    batch = None
    for f, d in zip(features, p.dims):
        if not _ordinary(f, p.dtype, p.device) or f.dim() != 2 or f.shape[1] != d:
            return None
        batch = f.shape[0] if batch is None else batch
        if f.shape[0] != batch or (p.offsets32 and (d - 1) * abs(f.stride(1)) >= 2**31):
            return None
    if not batch or not _ordinary(labels, torch.int64, p.device) or tuple(labels.shape) != (batch,):
        return None
    if (baselines is None) != (p.baselines == 0):
        return None
    if baselines is not None:
        if not isinstance(baselines, (list, tuple)) or len(baselines) != p.n:
            return None
        for b, d in zip(baselines, p.dims):
            want = (d,) if p.baselines == 1 else (batch, d)
            if not _ordinary(b, p.dtype, p.device) or tuple(b.shape) != want:
                return None
            if p.offsets32 and (d - 1) * abs(b.stride(-1)) >= 2**31:
                return None
    return batch
