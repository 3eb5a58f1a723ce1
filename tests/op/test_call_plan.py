"""The planned path of modality_shapley (fastshap/_call_plan.py, csrc/call_plan.cpp): a call like the one
before it reuses that call's decisions, and nothing else does.

Every test runs twice: with the C++ check of fastshap._C (where the build has it) and with its Python twin.
A planned call must return what the full path returns, see every change of the head's parameter values
(in place, fused, through ``.data``), and leave the full path -- with its errors -- to any call whose head,
arguments or tracing differ from the plan's.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

import fastshap
from fastshap import _call_plan, _validate, heads


@pytest.fixture(params=["native", "python"])
def checker(request, monkeypatch):
    """Which check the plans made in the test use (plans made before are dropped)."""
    if request.param == "native" and _call_plan.NATIVE is None:
        pytest.skip("fastshap._C has no plan functions (an older build)")
    if request.param == "python":
        monkeypatch.setattr(_call_plan, "NATIVE", None)
    monkeypatch.setattr(_call_plan, "PLANS", {})
    monkeypatch.setattr(_call_plan, "_STRIKES", {})
    monkeypatch.setattr(_call_plan, "_WATCHED", set())
    return request.param


@pytest.fixture
def full_paths(monkeypatch):
    """Counts the calls that take the full path (its first check)."""
    count = {"n": 0}
    check = _validate.check_features

    def counted(*args, **kwargs):
        count["n"] += 1
        return check(*args, **kwargs)

    monkeypatch.setattr(_validate, "check_features", counted)
    return count


DIMS, BATCH, CLASSES = (3, 5), 7, 4


def _head(kind, g):
    torch.manual_seed(int(torch.randint(0, 1000, (1,), generator=g)))
    return {
        "linear": lambda: nn.Linear(sum(DIMS), CLASSES),
        "linear-nobias": lambda: nn.Linear(sum(DIMS), CLASSES, bias=False),
        "concat": lambda: heads.ConcatLinear(DIMS, CLASSES),
        "decision": lambda: heads.DecisionFusion(DIMS, CLASSES),
        "mlp": lambda: heads.ConcatMLP(DIMS, 6, CLASSES),
    }[kind]()


def _inputs(g, baselines=None, batch=BATCH):
    feats = [torch.randn(batch, d, generator=g) for d in DIMS]
    labels = torch.randint(0, CLASSES, (batch,), generator=g)
    base = {
        None: None,
        "shared": [torch.randn(d, generator=g) for d in DIMS],
        "per-sample": [torch.randn(batch, d, generator=g) for d in DIMS],
    }[baselines]
    return feats, labels, base


def _fresh(head, feats, labels, **kw):
    """The full path's answer: the same call on a copy of the head (an object no plan knows)."""
    return fastshap.modality_shapley(feats, copy.deepcopy(head), labels, **kw)


def _outcome(fn):
    try:
        return fn()
    except Exception as exc:  # the test compares outcomes: a value, or an error's type and message
        return (type(exc), str(exc))


def _same(a, b):
    if isinstance(a, tuple) and isinstance(a[0], type):
        return a == b
    if isinstance(a, tuple):
        return isinstance(b, tuple) and all(_same(x, y) for x, y in zip(a, b))
    return isinstance(b, torch.Tensor) and torch.equal(a, b)


@pytest.mark.parametrize("kind", ["linear", "linear-nobias", "concat", "decision", "mlp"])
@pytest.mark.parametrize("backend", ["cpp", "torch", "triton"])
@pytest.mark.parametrize("baselines", [None, "shared", "per-sample"])
def test_the_next_call_takes_the_plan_and_returns_the_same(kind, backend, baselines, checker, full_paths):
    g = torch.Generator().manual_seed(1)
    head = _head(kind, g)
    feats, labels, base = _inputs(g, baselines)
    checks = fastshap.DeferredChecks()
    kw = dict(baselines=base, backend=backend, benefit="probability" if kind == "mlp" else "paper")
    first = fastshap.modality_shapley(feats, head, labels, **kw)
    assert full_paths["n"] == 1
    for defer in (None, checks):
        again = fastshap.modality_shapley(feats, head, labels, defer_checks=defer, **kw)
        assert torch.equal(again, first)
    other, other_labels, other_base = _inputs(g, baselines, batch=BATCH + 4)  # another batch size: planned
    kw.update(baselines=other_base, with_stats=True)
    phi, stats = fastshap.modality_shapley(other, head, other_labels, **kw)
    assert full_paths["n"] == 1, "a call like the first took the full path"
    want, want_stats = _fresh(head, other, other_labels, **kw)
    assert torch.equal(phi, want) and torch.equal(stats, want_stats)
    assert stats.dtype == torch.float32 and stats.shape == (2, len(DIMS))
    assert checks.calls == 1
    checks.raise_if_any()


def _sgd_step(head):
    torch.optim.SGD(head.parameters(), lr=0.5).step()


def _fused_adam_step(head):
    torch.optim.Adam(head.parameters(), lr=0.5, fused=True).step()


def _foreach_adamw_step(head):
    torch.optim.AdamW(head.parameters(), lr=0.5, foreach=True).step()


def _data_write(head):
    for p in head.parameters():
        p.data.mul_(-1.5)


@pytest.mark.parametrize("step", [_sgd_step, _fused_adam_step, _foreach_adamw_step, _data_write])
@pytest.mark.parametrize("kind", ["concat", "decision", "mlp"])
def test_planned_calls_see_every_parameter_update(step, kind, checker, full_paths):
    g = torch.Generator().manual_seed(2)
    head = _head(kind, g)
    feats, labels, _ = _inputs(g)
    before = fastshap.modality_shapley(feats, head, labels, benefit="probability")
    for p in head.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    step(head)
    after = fastshap.modality_shapley(feats, head, labels, benefit="probability")
    assert full_paths["n"] == 1  # the update changes no decision: planned
    assert not torch.equal(after, before)
    assert torch.equal(after, _fresh(head, feats, labels, benefit="probability"))


def _swap_data(attr, make):
    def change(head):
        layer = head.fc if isinstance(head, heads.ConcatLinear) else head
        p = getattr(layer, attr)
        p.data = make(p)

    return change


CHANGES = {
    "new weight parameter": lambda h: setattr(h.fc, "weight", nn.Parameter(torch.randn_like(h.fc.weight))),
    "bias removed": lambda h: setattr(h.fc, "bias", None),
    "layer replaced": lambda h: setattr(h, "fc", nn.Linear(sum(DIMS), CLASSES)),
    "layer with more classes": lambda h: setattr(h, "fc", nn.Linear(sum(DIMS), CLASSES + 3)),
    "layer of other inputs": lambda h: setattr(h, "fc", nn.Linear(sum(DIMS) + 1, CLASSES)),
    "weight data of another shape": _swap_data("weight", lambda p: torch.randn(p.shape[0], p.shape[1] + 2)),
    "weight data transposed view": _swap_data("weight", lambda p: torch.randn(p.shape[1], p.shape[0]).t()),
    "weight data in float64": _swap_data("weight", lambda p: p.detach().double()),
    "bias data of another shape": _swap_data("bias", lambda p: torch.randn(p.shape[0] + 1)),
    "head in float64": lambda h: h.double(),
    "dims changed": lambda h: setattr(h, "dims", (DIMS[1], DIMS[0])),
    "forward hook": lambda h: h.fc.register_forward_hook(lambda m, i, o: o * -1),
    "forward pre-hook on the head": lambda h: h.register_forward_pre_hook(lambda m, i: None),
    "instance forward": lambda h: setattr(h.fc, "forward", lambda x: -nn.functional.linear(x, h.fc.weight)),
    "class changed": lambda h: setattr(h, "__class__", type("Sub", (heads.ConcatLinear,), {})),
    "parametrized weight": lambda h: torch.nn.utils.parametrize.register_parametrization(h.fc, "weight", _Neg()),
}


class _Neg(nn.Module):
    def forward(self, x):
        return -x


@pytest.mark.filterwarnings("ignore:fastshap.*runs as a callable")
@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
@pytest.mark.parametrize("backend", ["cpp", "auto"])
def test_a_changed_head_takes_the_full_path(change, backend, checker):
    """Whatever is changed between two calls, the second answers what a fresh call with the changed head
    answers: its values, or its error."""
    g = torch.Generator().manual_seed(3)
    head = _head("concat", g)
    feats, labels, _ = _inputs(g)
    for _ in range(2):
        fastshap.modality_shapley(feats, head, labels, backend=backend)
    CHANGES[change](head)
    want = _outcome(lambda: _fresh(head, feats, labels, backend=backend))
    got = _outcome(lambda: fastshap.modality_shapley(feats, head, labels, backend=backend))
    assert _same(got, want), (got, want)
    got = _outcome(lambda: fastshap.modality_shapley(feats, head, labels, backend=backend))  # and again
    assert _same(got, want), (got, want)


def _labels(value):
    return lambda f, y, b: (f, value(y), b)


def _feats(value):
    return lambda f, y, b: (value(f), y, b)


ARGUMENTS = {
    "labels float": _labels(lambda y: y.float()),
    "labels int32": _labels(lambda y: y.int()),
    "labels out of range": _labels(lambda y: y.index_fill(0, torch.tensor([2]), CLASSES)),
    "labels negative": _labels(lambda y: y.index_fill(0, torch.tensor([0]), -1)),
    "labels of another batch": _labels(lambda y: y[:-1]),
    "labels 2-D": _labels(lambda y: y.unsqueeze(1)),
    "labels a list": _labels(lambda y: y.tolist()),
    "features a tensor": _feats(lambda f: torch.cat(f, 1)),
    "features a tuple": _feats(lambda f: tuple(f)),
    "features swapped": _feats(lambda f: [f[1], f[0]]),
    "features of two batches": _feats(lambda f: [f[0], f[1][:-1]]),
    "features float64": _feats(lambda f: [x.double() for x in f]),
    "features float16": _feats(lambda f: [x.half() for x in f]),
    "features with NaN": _feats(lambda f: [f[0], f[1].index_fill(0, torch.tensor([1]), float("nan"))]),
    "features with Inf": _feats(lambda f: [f[0].index_fill(0, torch.tensor([3]), float("inf")), f[1]]),
    "features non-contiguous": _feats(lambda f: [torch.randn(d, BATCH).t() for d in DIMS]),
    "features sparse": _feats(lambda f: [f[0].to_sparse(), f[1]]),
    "features empty batch": _feats(lambda f: [x[:0] for x in f]),
    "features a parameter": _feats(lambda f: [nn.Parameter(f[0]), f[1]]),
    "one modality": _feats(lambda f: f[:1]),
    "three modalities": _feats(lambda f: [*f, f[0]]),
    "baselines given": lambda f, y, b: (f, y, [torch.zeros(d) for d in DIMS]),
}


@pytest.mark.parametrize("change", list(ARGUMENTS), ids=list(ARGUMENTS))
@pytest.mark.parametrize("defer", [False, True])
def test_other_arguments_take_the_full_path(change, defer, checker):
    """After a plan exists, a call with other arguments answers what the full path answers: the same values
    or the same error (type and message), and deferred counts alike."""
    g = torch.Generator().manual_seed(4)
    head = _head("linear", g)
    feats, labels, base = _inputs(g)
    for _ in range(2):
        fastshap.modality_shapley(feats, head, labels, backend="cpp")
    feats2, labels2, base2 = ARGUMENTS[change](feats, labels, base)
    checks, fresh_checks = (fastshap.DeferredChecks(), fastshap.DeferredChecks()) if defer else (None, None)
    kw = dict(baselines=base2, backend="cpp")
    want = _outcome(lambda: _fresh(head, feats2, labels2, defer_checks=fresh_checks, **kw))
    got = _outcome(lambda: fastshap.modality_shapley(feats2, head, labels2, defer_checks=checks, **kw))
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and torch.equal(got.isnan(), want.isnan())
        assert torch.equal(got.nan_to_num(), want.nan_to_num())
    else:
        assert got == want
    if defer:
        assert _outcome(checks.raise_if_any) == _outcome(fresh_checks.raise_if_any)


@pytest.mark.parametrize(
    "option",
    [
        dict(benefit="accuracy"),
        dict(benefit="nope"),
        dict(benefit=["paper"]),
        dict(backend="torch"),
        dict(backend="gpu"),
        dict(backend=["cpp"]),
        dict(defer_checks="yes"),
        dict(defer_checks=fastshap.DeferredChecks(max_modalities=1)),
        dict(estimator="sampling", samples=4),
        dict(estimator="nope"),
        dict(samples=4),
        dict(with_stats=True, with_stderr=True),
    ],
    # ids from values' reprs, objects by their type: an id must be the same in every process (pytest-xdist)
    ids=lambda o: ",".join(
        f"{k}={v!r}" if isinstance(v, str | int | list) else f"{k}={type(v).__name__}" for k, v in o.items()
    ),
)
def test_other_options_answer_as_the_full_path(option, checker):
    g = torch.Generator().manual_seed(5)
    head = _head("concat", g)
    feats, labels, _ = _inputs(g)
    for _ in range(2):
        fastshap.modality_shapley(feats, head, labels, backend="cpp")
    option = {"backend": "cpp", **option}
    torch.manual_seed(0)
    want = _outcome(lambda: _fresh(head, feats, labels, **option))
    torch.manual_seed(0)
    got = _outcome(lambda: fastshap.modality_shapley(feats, head, labels, **option))
    assert _same(got, want), (got, want)


def test_traced_and_transformed_calls_take_the_full_path(checker, full_paths):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(6)
    head = _head("concat", g)
    feats, labels, _ = _inputs(g)
    want = fastshap.modality_shapley(feats, head, labels, backend="cpp")
    with Ops():
        assert torch.equal(fastshap.modality_shapley(feats, head, labels, backend="cpp"), want)
    assert full_paths["n"] == 2
    with torch.device("cpu"):  # a torch-function mode
        assert torch.equal(fastshap.modality_shapley(feats, head, labels, backend="cpp"), want)
    assert full_paths["n"] == 3
    compiled = torch.compile(lambda f: fastshap.modality_shapley(f, head, labels, backend="cpp"), backend="eager")
    assert torch.equal(compiled(feats), want)
    # Nothing that does not trace leaves the plan: inference mode, grad mode, autocast, features with grads.
    before = full_paths["n"]
    with torch.inference_mode():
        assert torch.equal(fastshap.modality_shapley(feats, head, labels, backend="cpp"), want)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(fastshap.modality_shapley(feats, head, labels, backend="cpp"), want)
    grads = [f.clone().requires_grad_() for f in feats]
    phi = fastshap.modality_shapley(grads, head, labels, backend="cpp")
    assert torch.equal(phi, want) and not phi.requires_grad
    assert full_paths["n"] == before


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_deferred_counts_of_planned_calls(backend, checker):
    """Bad values counted by planned calls raise as those of the full path do."""
    g = torch.Generator().manual_seed(7)
    head = _head("concat", g)
    feats, labels, _ = _inputs(g)
    bad = labels.index_fill(0, torch.tensor([1, 4]), CLASSES)
    checks = fastshap.DeferredChecks()
    for _ in range(3):
        phi = fastshap.modality_shapley(feats, head, bad, backend=backend, defer_checks=checks)
    assert torch.isnan(phi[[1, 4]]).all() and not torch.isnan(phi[[0, 2, 3, 5, 6]]).any()
    with pytest.raises(ValueError, match=r"3 calls.*6 phi rows.*NaN.*\[0, 4\)"):
        checks.raise_if_any()
    with pytest.raises(ValueError, match=r"label 4 is outside \[0, 4\)"):
        fastshap.modality_shapley(feats, head, bad, backend=backend)


def test_deferred_checks_on_another_device_still_raise(checker):
    g = torch.Generator().manual_seed(8)
    head = _head("concat", g)
    feats, labels, _ = _inputs(g)
    checks = fastshap.DeferredChecks()
    for _ in range(2):
        fastshap.modality_shapley(feats, head, labels, defer_checks=checks)
    checks._counts = checks._counts.to("meta")
    with pytest.raises(ValueError, match="one DeferredChecks collects the checks of one device"):
        fastshap.modality_shapley(feats, head, labels, defer_checks=checks)


def test_plans_go_with_their_heads(checker):
    g = torch.Generator().manual_seed(9)
    head = _head("concat", g)
    feats, labels, _ = _inputs(g)
    for backend in ("cpp", "torch"):
        fastshap.modality_shapley(feats, head, labels, backend=backend)
    key = id(head)
    assert sum(k[0] == key for k in _call_plan.PLANS) == 2
    ref = weakref.ref(head)
    del head
    gc.collect()
    assert ref() is None, "a plan kept its head alive"
    assert not any(k[0] == key for k in _call_plan.PLANS)


def test_callables_and_sampled_calls_are_not_planned(checker):
    g = torch.Generator().manual_seed(10)
    head = _head("concat", g)
    feats, labels, _ = _inputs(g)
    fastshap.modality_shapley(feats, lambda f: head(f), labels)
    fastshap.modality_shapley(feats, head, labels, estimator="sampling", samples=4)
    assert not _call_plan.PLANS


def test_calls_that_change_every_time_stop_being_planned(checker):
    """A plan replaced before any call used it is a strike; after three the key is no longer planned (the
    full path would otherwise pay for a plan on every call)."""
    g = torch.Generator().manual_seed(11)
    head = _head("linear", g)
    feats, labels, _ = _inputs(g)
    for i in range(6):
        dtype = (torch.float32, torch.float64)[i % 2]
        fastshap.modality_shapley([f.to(dtype) for f in feats], head, labels, backend="cpp")
    key = (id(head), "cpp", "paper", True)
    assert _call_plan._STRIKES[key] == _call_plan._MAX_STRIKES and key not in _call_plan.PLANS


def test_a_compiled_head_is_planned_and_sees_its_module(checker, full_paths):
    """torch.compile(head): the wrapper is the plan's head; its module's parameters are the ones read."""
    g = torch.Generator().manual_seed(12)
    head = _head("concat", g)
    compiled = torch.compile(head, backend="eager")
    feats, labels, _ = _inputs(g)
    for _ in range(2):
        fastshap.modality_shapley(feats, compiled, labels, backend="cpp")
    assert full_paths["n"] == 1
    with torch.no_grad():
        head.fc.weight.mul_(-1)
    got = fastshap.modality_shapley(feats, compiled, labels, backend="cpp")
    assert full_paths["n"] == 1
    assert torch.equal(got, _fresh(head, feats, labels, backend="torch"))  # _fresh takes the full path
    head.fc = nn.Linear(sum(DIMS), CLASSES)  # the module's layer replaced under the wrapper
    got = fastshap.modality_shapley(feats, compiled, labels, backend="cpp")
    assert full_paths["n"] == 3
    assert torch.equal(got, _fresh(head, feats, labels, backend="torch"))
