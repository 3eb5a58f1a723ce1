"""Non-finite values only the kernels can see: NaN/Inf head parameters, whatever updated them (an optimizer's
fused step or a write through ``.data`` leave no trace on the host), and coalition scores that overflow
although every input and parameter is finite. Every backend gives the affected samples NaN rows and counts
them in stats[3, 0]; ``modality_shapley`` raises with the cause, or defers it."""

from __future__ import annotations

import math

import pytest
import torch
from emulation import emulate
from kernel_cases import kernel_baselines

import fastshap
from fastshap import backends, heads
from fastshap.api import _head_spec
from fastshap.backends import Call

BACKENDS = ["torch", "cpp", "triton", "cuda-emulated"]
DIMS, CLASSES, BATCH = (3, 2), 4, 6


def run_op(backend, feats, head, labels, baselines=None, benefit="paper", emulation=None):
    """(phi, stats (4, n)) of the op `backend` runs, as modality_shapley hands it the inputs."""
    if backend == "cuda-emulated":
        return emulate(emulation, feats, head, labels, baselines, benefit)
    spec = _head_spec(head, [f.shape[1] for f in feats], feats[0].device)
    base = kernel_baselines(baselines, feats)
    try:
        chosen = backends.select(backend, Call(spec.kind, feats[0].device, feats[0].dtype, len(feats)))
    except fastshap.BackendError as exc:
        pytest.skip(str(exc))
    return chosen.run(spec, feats, base, labels, benefit)


@pytest.fixture
def emulation(request):
    """The CUDA emulation's op (the `emu` fixture of conftest.py), built only for the tests that run it."""
    params = getattr(request.node, "callspec", None)
    return request.getfixturevalue("emu") if params and params.params.get("backend") == "cuda-emulated" else None


def make_head(kind):
    torch.manual_seed(0)
    return {
        "concat": lambda: heads.ConcatLinear(DIMS, CLASSES),
        "decision": lambda: heads.DecisionFusion(DIMS, CLASSES),
        "mlp": lambda: heads.ConcatMLP(DIMS, 5, CLASSES),
    }[kind]()


def make_call():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(BATCH, d, generator=g) for d in DIMS], torch.randint(0, CLASSES, (BATCH,), generator=g)


# Each spoils one parameter that only enters after the partial products (the first layer's weights make
# the partials non-finite, stats row 2): so no sample's coalitions can be finite.
SPOILED = {
    "concat bias": ("concat", lambda h: h.fc.bias, (2,), math.nan),
    "decision bias": ("decision", lambda h: h.classifiers[1].bias, (0,), math.inf),
    "mlp bias1": ("mlp", lambda h: h.fc1.bias, (3,), math.nan),
    "mlp weight2": ("mlp", lambda h: h.fc2.weight, (1, 2), math.nan),
    "mlp bias2": ("mlp", lambda h: h.fc2.bias, (0,), -math.inf),
}


def spoiled_head(name):
    kind, param, index, value = SPOILED[name]
    head = make_head(kind)
    with torch.no_grad():
        param(head)[index] = value
    return head


@pytest.mark.parametrize("benefit", fastshap.BENEFITS)
@pytest.mark.parametrize("name", sorted(SPOILED))
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_parameters_give_nan_rows_in_every_backend(backend, name, benefit, emulation):
    feats, labels = make_call()
    phi, stats = run_op(backend, feats, spoiled_head(name), labels, benefit=benefit, emulation=emulation)
    assert torch.isnan(phi).all(), phi
    assert stats[3].tolist() == [float(BATCH), 0.0]
    assert stats[2].tolist() == [0.0, 0.0]  # the partial products are finite


@pytest.mark.parametrize("benefit", fastshap.BENEFITS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_class_switched_off_by_a_minus_inf_decision_bias_is_no_error(backend, benefit, emulation):
    """softmax gives such a class probability 0: the head's function is finite, and so are its values."""
    feats, labels = make_call()
    head = make_head("decision")
    with torch.no_grad():
        head.classifiers[0].bias[1] = -math.inf
    phi, stats = run_op(backend, feats, head, labels, benefit=benefit, emulation=emulation)
    want, _ = run_op("torch", feats, head, labels, benefit=benefit)
    assert bool(torch.isfinite(want).all()) and stats[2:].abs().sum() == 0
    torch.testing.assert_close(phi, want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(SPOILED))
def test_non_finite_parameters_raise_or_are_deferred(name):
    feats, labels = make_call()
    head = spoiled_head(name)
    with pytest.raises(ValueError, match="head parameters.*NaN or Inf"):
        fastshap.modality_shapley(feats, head, labels)
    checks = fastshap.DeferredChecks()
    phi = fastshap.modality_shapley(feats, head, labels, defer_checks=checks)
    assert torch.isnan(phi).all()
    with pytest.raises(ValueError, match=f"{BATCH} phi rows"):
        checks.raise_if_any()


@pytest.mark.parametrize("how", ["data", "fused-adam"])
def test_parameters_spoiled_without_a_version_bump_are_caught(how):
    """A write through .data and a fused optimizer step change a parameter without bumping its version
    counter: a host-side record of "these parameters were finite" would miss them (it did, once)."""
    feats, labels = make_call()
    head = make_head("concat")
    fastshap.modality_shapley(feats, head, labels)  # clean
    if how == "data":
        version = head.fc.bias._version
        head.fc.bias.data[1] = math.nan
        assert head.fc.bias._version == version  # the trace a version-keyed cache would have needed
    else:
        try:
            optimizer = torch.optim.Adam(head.parameters(), lr=0.1, fused=True)
        except (RuntimeError, ValueError) as exc:
            pytest.skip(f"no fused Adam here: {exc}")
        head.fc.bias.grad = torch.full_like(head.fc.bias, math.nan)
        head.fc.weight.grad = torch.zeros_like(head.fc.weight)
        optimizer.step()
        assert torch.isnan(head.fc.bias).all()
    with pytest.raises(ValueError, match="head parameters.*NaN or Inf"):
        fastshap.modality_shapley(feats, head, labels)


def _overflow_call(kind):
    """Finite inputs and parameters whose sums overflow float32 in sample 0 only: each modality adds 3e38 to
    class 0 (MLP: to hidden unit 0), which the full coalition's score (pre-activation) cannot hold."""
    dims, batch = (1, 1), 5
    feats = [torch.tensor([[3e38], [0.5], [-1.0], [2.0], [0.25]]), torch.tensor([[3e38], [1.0], [0.5], [-2.0], [0.0]])]
    labels = torch.tensor([0, 1, 0, 1, 0])
    if kind == "concat":
        head = heads.ConcatLinear(dims, 2)
        with torch.no_grad():
            head.fc.weight.copy_(torch.tensor([[1.0, 1.0], [-1.0, 0.5]]))
            head.fc.bias.zero_()
    else:
        head = heads.ConcatMLP(dims, 2, 2)
        with torch.no_grad():
            head.fc1.weight.copy_(torch.tensor([[1.0, 1.0], [0.5, -1.0]]))
            head.fc1.bias.zero_()
            head.fc2.weight.copy_(torch.tensor([[1e-38, 1.0], [-1e-38, 2.0]]))
            head.fc2.bias.zero_()
    assert batch == feats[0].shape[0]
    return feats, head, labels


@pytest.mark.parametrize("benefit", fastshap.BENEFITS)
@pytest.mark.parametrize("kind", ["concat", "mlp"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_scores_that_overflow_give_nan_rows_in_every_backend(backend, kind, benefit, emulation):
    feats, head, labels = _overflow_call(kind)
    phi, stats = run_op(backend, feats, head, labels, benefit=benefit, emulation=emulation)
    assert torch.isnan(phi[0]).all() and not torch.isnan(phi[1:]).any(), phi
    assert stats[3].tolist() == [1.0, 0.0] and stats[2].tolist() == [0.0, 0.0]
    # The other samples are untouched: the same values as without sample 0.
    want, _ = run_op("torch", [f[1:] for f in feats], head, labels[1:], benefit=benefit)
    torch.testing.assert_close(phi[1:], want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["concat", "mlp"])
def test_scores_that_overflow_raise_with_the_cause(kind):
    feats, head, labels = _overflow_call(kind)
    what = "hidden pre-activations or logits" if kind == "mlp" else "logits"
    with pytest.raises(ValueError, match=f"{what} overflow float32 for 1 sample"):
        fastshap.modality_shapley(feats, head, labels)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_paper_benefit_never_evaluates_the_empty_coalition(backend, emulation):
    """Baselines whose sum overflows only in the empty coalition (each removed modality adds 3e38 to class
    0; a present one adds 0): the paper benefit defines v(empty) = 0 without looking, so phi is finite; the
    accuracy benefit evaluates it, so the row is NaN. The same in every backend."""
    head = heads.ConcatLinear((1, 1), 2)
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        head.fc.bias.zero_()
    feats = [torch.zeros(3, 1), torch.zeros(3, 1)]
    baselines = [torch.tensor([3e38]), torch.tensor([3e38])]
    labels = torch.tensor([0, 1, 0])
    phi, stats = run_op(backend, feats, head, labels, baselines, "paper", emulation)
    assert not torch.isnan(phi).any() and stats[3, 0] == 0, phi
    phi, stats = run_op(backend, feats, head, labels, baselines, "accuracy", emulation)
    assert torch.isnan(phi).all() and stats[3, 0] == 3, phi


@pytest.mark.gpu
@pytest.mark.parametrize("benefit", fastshap.BENEFITS)
@pytest.mark.parametrize("backend", ["torch", "cuda", "triton"])
def test_gpu_kernels_give_the_same_nan_rows(backend, benefit):
    """The compiled GPU kernels (not their emulation or the interpreter): spoiled parameters and overflowing
    scores give the NaN rows and counts the CPU backends give."""
    cases = [(spoiled_head(name), *make_call()) for name in sorted(SPOILED)]
    for kind in ("concat", "mlp"):
        feats, head, labels = _overflow_call(kind)
        cases.append((head, feats, labels))
    for head, feats, labels in cases:
        want_phi, want_stats = run_op("cpp", feats, head, labels, benefit=benefit)
        phi, stats = run_op(backend, [f.cuda() for f in feats], head.cuda(), labels.cuda(), benefit=benefit)
        assert torch.equal(torch.isnan(phi.cpu()), torch.isnan(want_phi)), (backend, benefit, phi)
        assert stats[3].cpu().tolist() == want_stats[3].tolist()
