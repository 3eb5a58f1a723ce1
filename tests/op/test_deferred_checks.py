"""defer_checks: the value checks of many calls collected on the device and raised at one sync point.

The valid call of conftest.py (n = 2, widths [3, 4], B = 6, C = 5); each bad value must come out of
raise_if_any with a message naming it, good calls must equal the checked call bit for bit, and on a GPU the
deferred call must not synchronise with the host at all.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fastshap


def _run(call, checks, backend="auto"):
    return call.run(backend=backend, defer_checks=checks)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_good_calls_equal_the_checked_call_and_raise_nothing(backend, valid_call):
    checks = fastshap.DeferredChecks()
    call = valid_call()
    for _ in range(3):
        phi = _run(call, checks, backend)
    expected = fastshap.modality_shapley(call["features"], call["head"], call["labels"], backend=backend)
    assert torch.equal(phi, expected)
    assert checks.calls == 3
    checks.raise_if_any()
    assert checks.calls == 0


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_bad_labels_give_nan_rows_then_an_error(backend, valid_call):
    checks = fastshap.DeferredChecks()
    call = valid_call()
    call["labels"] = call["labels"].index_fill(0, torch.tensor([1, 4]), call.classes)
    phi = _run(call, checks, backend)  # no error yet
    assert torch.isnan(phi[[1, 4]]).all() and not torch.isnan(phi[[0, 2, 3, 5]]).any()
    good = valid_call()
    _run(good, checks, backend)
    with pytest.raises(ValueError, match=r"2 calls.*2 phi rows.*NaN.*labels.*\[0, 5\)"):
        checks.raise_if_any()
    checks.raise_if_any()  # the error reset the counters


@pytest.mark.parametrize(
    "change,match",
    [
        # A NaN first-layer weight makes every row's partial logits (and so phi) NaN.
        ({"head": lambda c: c.nan_head()}, r"6 phi rows.*NaN.*modality 0's partial logits.*NaN or Inf.*6 rows"),
        (
            {"features": lambda c: [c["features"][0], c["features"][1].index_fill(0, torch.tensor([2, 3]), math.nan)]},
            r"modality 1's partial logits.*NaN or Inf.*2 rows",
        ),
        (
            {"features": lambda c: [c["features"][0], c["features"][1] * 1e30], "head": lambda c: c.huge_head()},
            r"modality 1's partial logits.*NaN or Inf.*\d+ rows",
        ),
    ],
    ids=["nan-head", "nan-features", "overflow"],
)
def test_bad_values_are_reported_later(change, match, valid_call):
    checks = fastshap.DeferredChecks()
    call = valid_call()
    for key, fn in change.items():
        call[key] = fn(call)
    _run(call, checks, "torch")
    with pytest.raises(ValueError, match=match):
        checks.raise_if_any()


def test_shape_errors_are_still_raised_at_once(valid_call):
    checks = fastshap.DeferredChecks()
    call = valid_call()
    call["labels"] = call["labels"][:5]
    with pytest.raises(ValueError, match=r"5 labels.*6"):
        call.run(defer_checks=checks)
    assert checks.calls == 0


def test_a_call_with_more_modalities_than_the_counters_hold(valid_call):
    checks = fastshap.DeferredChecks(1)  # counters for 2 modalities at least
    valid_call().run(defer_checks=checks)
    call = valid_call()
    call["features"] = [*call["features"], call["features"][0]]
    call["head"] = nn.Linear(10, call.classes)
    with pytest.raises(ValueError, match=r"DeferredChecks.*2 modalities.*3"):
        call.run(defer_checks=checks)
    assert checks.calls == 1


def test_one_collector_one_device(valid_call):
    checks = fastshap.DeferredChecks()
    checks.add_stats(torch.zeros(4, 2), valid_call.classes)
    with pytest.raises(ValueError, match=r"one device.*cpu.*meta"):
        checks.add_stats(torch.zeros(4, 2, device="meta"), valid_call.classes)


def _gpu_call(valid_call, backend, labels=None, checks=None):
    """The valid call on the GPU, run once (build, autotune, head check) with `backend`; skips the test when
    that backend cannot run here. Returns (features, head, labels, phi of that first call)."""
    call = valid_call()
    feats = [f.cuda() for f in call["features"]]
    head = call["head"].cuda()
    labels = (call["labels"] if labels is None else labels).cuda()
    try:
        phi = fastshap.modality_shapley(feats, head, labels, backend=backend, defer_checks=checks)
    except fastshap.BackendError as exc:
        pytest.skip(str(exc))
    return feats, head, labels, phi


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "cuda", "triton"])
def test_deferred_call_does_not_synchronise_on_gpu(backend, valid_call):
    checks = fastshap.DeferredChecks()
    feats, head, labels, _ = _gpu_call(valid_call, backend, checks=checks)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        phi = fastshap.modality_shapley(feats, head, labels, backend=backend, defer_checks=checks)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    checks.raise_if_any()
    assert phi.shape == (valid_call.batch, 2)


@pytest.mark.parametrize("deferred", [False, True])
def test_parameters_changed_in_place_are_checked_again(deferred, valid_call):
    """Parameters changed in place between calls, like by an optimizer step, are caught on the next call
    (the kernels see them; test_nonfinite.py has the changes that leave no version bump)."""
    call = valid_call()
    head = call["head"]
    checks = fastshap.DeferredChecks() if deferred else None
    for _ in range(2):
        fastshap.modality_shapley(call["features"], head, call["labels"], defer_checks=checks)
    with torch.no_grad():
        head.weight[0, 0] = math.nan
    if deferred:
        fastshap.modality_shapley(call["features"], head, call["labels"], defer_checks=checks)
        with pytest.raises(ValueError, match=r"6 phi rows.*NaN"):
            checks.raise_if_any()
    else:
        with pytest.raises(ValueError, match=r"head parameters.*NaN"):
            fastshap.modality_shapley(call["features"], head, call["labels"])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "cuda", "triton"])
def test_bad_labels_give_nan_rows_on_gpu(backend, valid_call):
    checks = fastshap.DeferredChecks()
    labels = valid_call()["labels"].index_fill(0, torch.tensor([1, 4]), valid_call.classes)
    _, _, _, phi = _gpu_call(valid_call, backend, labels, checks)
    phi = phi.cpu()
    assert torch.isnan(phi[[1, 4]]).all() and not torch.isnan(phi[[0, 2, 3, 5]]).any()
    with pytest.raises(ValueError, match=r"2 phi rows.*NaN.*labels.*\[0, 5\)"):
        checks.raise_if_any()


def test_a_replaced_parameter_is_checked_again(valid_call):
    call = valid_call()
    head = call["head"]
    fastshap.modality_shapley(call["features"], head, call["labels"])
    bad = head.weight.detach().clone()
    bad[2, 1] = math.inf
    head.weight = nn.Parameter(bad)  # a new tensor: new storage, its own version counter
    with pytest.raises(ValueError, match=r"head parameters.*NaN or Inf"):
        fastshap.modality_shapley(call["features"], head, call["labels"])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "cuda", "triton"])
def test_checked_gpu_call_synchronises_once_and_rejects_bad_labels(backend, valid_call):
    import warnings

    feats, head, labels, _ = _gpu_call(valid_call, backend)  # the first call compiles and caches what it needs
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fastshap.modality_shapley(feats, head, labels, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]
    bad = labels.index_fill(0, torch.tensor([3], device="cuda"), valid_call.classes + 2)
    with pytest.raises(ValueError, match=r"label 7.*outside \[0, 5\)"):
        fastshap.modality_shapley(feats, head, bad, backend=backend)


def test_reduced_checks_raise_on_every_rank(valid_call):
    """With reduce (an all-reduce in a distributed job) a rank that saw nothing wrong, or made no call at
    all, raises too when another rank's counters are non-zero."""
    other_rank = fastshap.DeferredChecks()
    call = valid_call()
    call["labels"] = call["labels"].index_fill(0, torch.tensor([0]), -3)
    _run(call, other_rank, "torch")
    others = other_rank._counts.clone()

    def all_reduce(counts):
        return counts + others

    idle = fastshap.DeferredChecks()  # this rank made no call
    with pytest.raises(ValueError, match="1 phi rows are NaN"):
        idle.raise_if_any(reduce=all_reduce, device="cpu")
    busy = fastshap.DeferredChecks()
    _run(valid_call(), busy, "torch")
    with pytest.raises(ValueError, match="1 phi rows are NaN"):
        busy.raise_if_any(reduce=all_reduce)
    clean = fastshap.DeferredChecks()
    clean.raise_if_any(reduce=lambda counts: counts, device="cpu")  # nothing anywhere: no error


@pytest.mark.parametrize(
    "value,error,match",
    [
        ("x", TypeError, r"max_modalities.*integer.*str 'x'"),
        (4.0, TypeError, r"max_modalities.*integer.*float 4.0"),
        (True, TypeError, r"max_modalities.*integer.*bool True"),
        (0, ValueError, r"max_modalities.*positive.*\b0\b"),
        (-3, ValueError, r"max_modalities.*positive.*-3"),
    ],
    ids=["str", "float", "bool", "zero", "negative"],
)
def test_max_modalities_must_be_a_positive_int(value, error, match):
    with pytest.raises(error, match=r"DeferredChecks\(" + match):
        fastshap.DeferredChecks(value)


@pytest.mark.parametrize(
    "reduce,error,match",
    [
        (
            lambda counts: None,
            TypeError,
            r"reduce returned NoneType.*\(2, 16\).*all_reduce",
        ),
        (lambda counts: counts.tolist(), TypeError, r"reduce returned list"),
        (lambda counts: counts.sum(), ValueError, r"reduce returned a tensor of shape \(\).*\(2, 16\)"),
        ("sum", TypeError, r"reduce.*function.*str"),
    ],
    ids=["none", "list", "wrong-shape", "not-callable"],
)
def test_what_reduce_returns_is_checked(reduce, error, match):
    checks = fastshap.DeferredChecks()
    with pytest.raises(error, match=match):
        checks.raise_if_any(reduce=reduce, device="cpu")


def _bad_label_call(valid_call):
    call = valid_call()
    call["labels"] = call["labels"].clone()
    call["labels"][0] = call.classes  # one NaN row a call
    return call


def test_counters_made_under_inference_mode_serve_calls_outside_it(valid_call):
    checks = fastshap.DeferredChecks()
    call = _bad_label_call(valid_call)
    with torch.inference_mode():  # e.g. a validation pass
        _run(call, checks)
    _run(call, checks)  # the next training step adds in place to the counters
    with pytest.raises(ValueError, match=r"2 calls.*2 phi rows.*NaN"):
        checks.raise_if_any()


def test_one_object_shared_by_threads_loses_no_count(valid_call):
    import sys
    import threading

    call = _bad_label_call(valid_call)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: a race would show within the trials
    try:
        for _ in range(30):
            checks = fastshap.DeferredChecks()
            start = threading.Barrier(4)

            def work():
                start.wait()  # all threads race for the first call, which makes the counters
                for _ in range(3):
                    _run(call, checks, "cpp")

            threads = [threading.Thread(target=work) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert checks.calls == 12
            with pytest.raises(ValueError, match=r"12 calls.*12 phi rows.*NaN"):
                checks.raise_if_any()
    finally:
        sys.setswitchinterval(interval)


def test_a_bad_reduce_loses_no_count(valid_call):
    checks = fastshap.DeferredChecks()
    _run(_bad_label_call(valid_call), checks)
    with pytest.raises(TypeError, match="returned NoneType"):
        checks.raise_if_any(reduce=lambda counters: None)
    with pytest.raises(ValueError, match=r"1 calls.*1 phi rows.*NaN"):
        checks.raise_if_any()


def test_deferred_calls_compile_in_one_graph(valid_call):
    import torch._dynamo

    call = _bad_label_call(valid_call)
    checks = fastshap.DeferredChecks()
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda labels: fastshap.modality_shapley(
            call["features"], call["head"], labels, backend="cpp", defer_checks=checks
        ),
        fullgraph=True,
        backend="aot_eager",
    )
    for _ in range(2):
        phi = compiled(call["labels"])
    assert torch.isnan(phi[0]).all() and not torch.isnan(phi[1:]).any()
    with pytest.raises(ValueError, match=r"2 calls.*2 phi rows.*NaN"):
        checks.raise_if_any()


def test_a_bad_reduce_without_calls_does_not_tie_the_object_to_a_device(valid_call):
    checks = fastshap.DeferredChecks()
    with pytest.raises(TypeError, match="returned NoneType"):
        checks.raise_if_any(reduce=lambda counters: None, device="meta")
    _run(valid_call(), checks, "cpp")  # a CPU call: the meta counters were not kept
    checks.raise_if_any()
