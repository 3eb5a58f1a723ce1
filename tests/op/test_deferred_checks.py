"""defer_checks: the value checks of many calls collected on the device and raised at one sync point.

Same valid call as test_errors (n = 2, widths [3, 4], B = 6, C = 5); each bad value must come out of
raise_if_any with a message naming it, good calls must equal the checked call bit for bit, and on a GPU the
deferred call must not synchronise with the host at all.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_errors import BATCH, CLASSES, _huge_head, _nan_head, valid_call
from torch import nn

import fastshap


def _run(call, checks, backend="auto"):
    return fastshap.modality_shapley(
        call["features"],
        call["head"],
        call["labels"],
        baselines=call["baselines"],
        backend=backend,
        defer_checks=checks,
    )


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_good_calls_equal_the_checked_call_and_raise_nothing(backend):
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
def test_bad_labels_give_nan_rows_then_an_error(backend):
    checks = fastshap.DeferredChecks()
    call = valid_call()
    call["labels"] = call["labels"].index_fill(0, torch.tensor([1, 4]), CLASSES)
    phi = _run(call, checks, backend)  # no error yet
    assert torch.isnan(phi[[1, 4]]).all() and not torch.isnan(phi[[0, 2, 3, 5]]).any()
    good = valid_call()
    _run(good, checks, backend)
    with pytest.raises(ValueError, match=r"over 2 calls.*2 phi rows are NaN \(labels outside \[0, 5\)"):
        checks.raise_if_any()
    checks.raise_if_any()  # the error reset the counters


@pytest.mark.parametrize(
    "change,match",
    [
        # A NaN first-layer weight makes every row's partial logits (and so phi) NaN.
        ({"head": _nan_head}, r"\d+ phi rows are NaN.*modality \d's partial logits held NaN or Inf in \d+ rows"),
        (
            {"features": lambda c: [c["features"][0], c["features"][1].index_fill(0, torch.tensor([2, 3]), math.nan)]},
            r"modality 1's partial logits held NaN or Inf in 2 rows",
        ),
        (
            {"features": lambda c: [c["features"][0], c["features"][1] * 1e30], "head": _huge_head},
            r"modality 1's partial logits held NaN or Inf in \d+ rows",
        ),
    ],
    ids=["nan-head", "nan-features", "overflow"],
)
def test_bad_values_are_reported_later(change, match):
    checks = fastshap.DeferredChecks()
    call = valid_call()
    for key, fn in change.items():
        call[key] = fn(call)
    _run(call, checks, "torch")
    with pytest.raises(ValueError, match=match):
        checks.raise_if_any()


def test_shape_errors_are_still_raised_at_once():
    checks = fastshap.DeferredChecks()
    call = valid_call()
    with pytest.raises(ValueError, match="5 labels for a batch of 6"):
        fastshap.modality_shapley(call["features"], call["head"], call["labels"][:5], defer_checks=checks)


def test_one_collector_one_device():
    checks = fastshap.DeferredChecks()
    checks.add_stats(torch.zeros(4, 2), CLASSES)
    with pytest.raises(ValueError, match="one device"):
        checks.add_stats(torch.zeros(4, 2, device="meta"), CLASSES)


def _gpu_call(backend, labels=None, checks=None):
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
def test_deferred_call_does_not_synchronise_on_gpu(backend):
    checks = fastshap.DeferredChecks()
    feats, head, labels, _ = _gpu_call(backend, checks=checks)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        phi = fastshap.modality_shapley(feats, head, labels, backend=backend, defer_checks=checks)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    checks.raise_if_any()
    assert phi.shape == (BATCH, 2)


@pytest.mark.parametrize("deferred", [False, True])
def test_parameters_changed_in_place_are_checked_again(deferred):
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
        with pytest.raises(ValueError, match=f"{BATCH} phi rows are NaN"):
            checks.raise_if_any()
    else:
        with pytest.raises(ValueError, match="head parameters hold NaN"):
            fastshap.modality_shapley(call["features"], head, call["labels"])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "cuda", "triton"])
def test_bad_labels_give_nan_rows_on_gpu(backend):
    checks = fastshap.DeferredChecks()
    _, _, _, phi = _gpu_call(backend, valid_call()["labels"].index_fill(0, torch.tensor([1, 4]), CLASSES), checks)
    phi = phi.cpu()
    assert torch.isnan(phi[[1, 4]]).all() and not torch.isnan(phi[[0, 2, 3, 5]]).any()
    with pytest.raises(ValueError, match=r"2 phi rows are NaN \(labels outside \[0, 5\)"):
        checks.raise_if_any()


def test_a_replaced_parameter_is_checked_again():
    call = valid_call()
    head = call["head"]
    fastshap.modality_shapley(call["features"], head, call["labels"])
    bad = head.weight.detach().clone()
    bad[2, 1] = math.inf
    head.weight = nn.Parameter(bad)  # a new tensor: new storage, its own version counter
    with pytest.raises(ValueError, match="head parameters hold NaN or Inf"):
        fastshap.modality_shapley(call["features"], head, call["labels"])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "cuda", "triton"])
def test_checked_gpu_call_synchronises_once_and_rejects_bad_labels(backend):
    import warnings

    feats, head, labels, _ = _gpu_call(backend)  # the first call compiles and caches what it needs
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
    bad = labels.index_fill(0, torch.tensor([3], device="cuda"), CLASSES + 2)
    with pytest.raises(ValueError, match=r"label 7 is outside \[0, 5\)"):
        fastshap.modality_shapley(feats, head, bad, backend=backend)


def test_reduced_checks_raise_on_every_rank():
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
        ("x", TypeError, r"max_modalities\) must be an int .* got str 'x'"),
        (4.0, TypeError, r"max_modalities\) must be an int .* got float 4.0"),
        (True, TypeError, r"max_modalities\) must be an int .* got bool True"),
        (0, ValueError, r"max_modalities\) must be positive, got 0"),
        (-3, ValueError, r"max_modalities\) must be positive, got -3"),
    ],
    ids=["str", "float", "bool", "zero", "negative"],
)
def test_max_modalities_must_be_a_positive_int(value, error, match):
    with pytest.raises(error, match=r"^fastshap: DeferredChecks\(" + match):
        fastshap.DeferredChecks(value)


@pytest.mark.parametrize(
    "reduce,error,match",
    [
        (
            lambda counts: None,
            TypeError,
            r"raise_if_any's reduce returned NoneType; it must return the reduced "
            r"counters, a tensor of shape \(2, 16\) \(torch.distributed.all_reduce",
        ),
        (lambda counts: counts.tolist(), TypeError, r"raise_if_any's reduce returned list"),
        (
            lambda counts: counts.sum(),
            ValueError,
            r"raise_if_any's reduce returned a tensor of shape \(\); .* of their shape \(2, 16\)",
        ),
        ("sum", TypeError, r"raise_if_any\(reduce=\.\.\.\) must be a function, got str"),
    ],
    ids=["none", "list", "wrong-shape", "not-callable"],
)
def test_what_reduce_returns_is_checked(reduce, error, match):
    checks = fastshap.DeferredChecks()
    with pytest.raises(error, match="^fastshap: " + match):
        checks.raise_if_any(reduce=reduce, device="cpu")


def _bad_label_call():
    call = valid_call()
    call["labels"] = call["labels"].clone()
    call["labels"][0] = CLASSES  # one NaN row a call
    return call


def test_counters_made_under_inference_mode_serve_calls_outside_it():
    checks = fastshap.DeferredChecks()
    call = _bad_label_call()
    with torch.inference_mode():  # e.g. a validation pass
        _run(call, checks)
    _run(call, checks)  # the next training step adds in place to the counters
    with pytest.raises(ValueError, match="over 2 calls found bad values: 2 phi rows are NaN"):
        checks.raise_if_any()


def test_one_object_shared_by_threads_loses_no_count():
    import sys
    import threading

    call = _bad_label_call()
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
            with pytest.raises(ValueError, match="over 12 calls found bad values: 12 phi rows are NaN"):
                checks.raise_if_any()
    finally:
        sys.setswitchinterval(interval)


def test_a_bad_reduce_loses_no_count():
    checks = fastshap.DeferredChecks()
    _run(_bad_label_call(), checks)
    with pytest.raises(TypeError, match="returned NoneType"):
        checks.raise_if_any(reduce=lambda counters: None)
    with pytest.raises(ValueError, match="over 1 calls found bad values: 1 phi rows are NaN"):
        checks.raise_if_any()


def test_deferred_calls_compile_in_one_graph():
    import torch._dynamo

    call = _bad_label_call()
    checks = fastshap.DeferredChecks()
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda labels: _run({**call, "labels": labels}, checks, "cpp"), fullgraph=True, backend="aot_eager"
    )
    for _ in range(2):
        phi = compiled(call["labels"])
    assert torch.isnan(phi[0]).all() and not torch.isnan(phi[1:]).any()
    with pytest.raises(ValueError, match="over 2 calls found bad values: 2 phi rows are NaN"):
        checks.raise_if_any()


def test_a_bad_reduce_without_calls_does_not_tie_the_object_to_a_device():
    checks = fastshap.DeferredChecks()
    with pytest.raises(TypeError, match="returned NoneType"):
        checks.raise_if_any(reduce=lambda counters: None, device="meta")
    _run(valid_call(), checks, "cpp")  # a CPU call: the meta counters were not kept
    checks.raise_if_any()
