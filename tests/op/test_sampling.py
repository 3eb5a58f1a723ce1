"""The sampling estimator (``estimator="sampling"``) against exact values at n = 6 to 12.

* Every order: walking all n! permutations (each with its reverse) must give the exact values, bit for bit for
  the discrete benefits on dyadic inputs (every score exact in any summation order, so the walks and the
  exact op decide every coalition alike): the estimator's expectation over uniform orders is phi.
* Unbiased: the mean of S independent estimates is within 5 of its standard errors of the exact value in
  every cell (a two-sided 5-sigma bound: 6e-7 per cell, under 1e-4 over the cells of a case).
* Calibrated: the exact value lies within +-1.96 reported standard errors at the nominal 95% rate, over S
  seeds, within 4 standard errors of that rate (estimated from the spread over seeds: the cells of one call
  share their orders, so they are not independent trials).
* Efficient per pair, reproducible per generator state, and the keywords' errors.

Seeds are fixed, so every run draws the same numbers; the bounds say why those numbers pass.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from oracle import NonlinearHead, dyadic
from torch import nn

import fastshap
from fastshap import backends, heads, sampling

KINDS = ("concat", "decision", "mlp", "callable")
BENEFITS = ("paper", "accuracy", "probability")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tests make many calls on small tensors, whose torch ops cost more in thread hand-offs than in
    work when the two cores are shared (the statistical tests: 6x faster on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sampled_backends(kind: str = "concat"):
    """The backends with a sampled estimator for `kind` on CPU tensors here (torch always; cpp once it is
    built; triton under its interpreter, for the kinds its kernel walks)."""
    if kind == "callable":
        return ["torch"]
    call = backends.Call(kind, torch.device("cpu"), torch.float32, 8)
    out = ["torch"]
    for name in ("cpp", "triton"):
        if backends.why_not(name, call) is None and sampling._sampled_declines(name, call) is None:
            out.append(name)
    return out


#: (kind, backend) pairs; the Triton interpreter takes seconds a call, so it runs in the few tests that
#: compare backends (and in tests/kernels/test_sampling_kernels.py).
KIND_BACKENDS = [(k, b) for k in KINDS for b in sampled_backends(k) if b != "triton"]
BACKENDS = [b for b in sampled_backends() if b != "triton"]


def make_case(kind: str, n: int, batch: int, num_classes: int, seed: int, exact_scores: bool = True):
    """(features, head, labels): dyadic features and parameters when `exact_scores` (every score exact in
    float32, whatever the summation order), Gaussian ones otherwise; half the labels are the prediction."""
    g = torch.Generator().manual_seed(seed)
    dims = [1 + (3 * i) % 4 for i in range(n)]

    def draw(shape, scale):
        if exact_scores:
            return dyadic(shape, -4, 4, 4, g) * scale
        return torch.randn(shape, generator=g) * scale

    feats = [draw((batch, d), 1.0) for d in dims]
    if kind == "callable":
        head = NonlinearHead(dims, num_classes, generator=g)
    else:
        head = {
            "concat": lambda: heads.ConcatLinear(dims, num_classes),
            "decision": lambda: heads.DecisionFusion(dims, num_classes),
            "mlp": lambda: heads.ConcatMLP(dims, 12, num_classes),
        }[kind]()
        with torch.no_grad():
            for p in head.parameters():
                p.copy_(draw(p.shape, 0.5 if p.dim() == 2 else 0.25))
    with torch.no_grad():
        logits = head(feats)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    labels = torch.where(torch.rand(batch, generator=g) < 0.5, logits.argmax(-1), labels)
    return feats, head, labels


def spec_of(kind: str, head) -> backends.HeadSpec:
    if kind == "callable":
        return backends.HeadSpec("callable", fn=head)
    if kind == "concat":
        return backends.HeadSpec("concat", (head.fc.weight.detach(), head.fc.bias.detach()))
    if kind == "decision":
        with torch.no_grad():
            return backends.HeadSpec("decision", head.packed())
    return backends.HeadSpec(
        "mlp", tuple(p.detach() for p in (head.fc1.weight, head.fc1.bias, head.fc2.weight, head.fc2.bias))
    )


def every_order(n: int) -> torch.Tensor:
    """(n!, 2, n): every permutation of range(n) with its reverse."""
    forward = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.int64)
    return torch.stack([forward, forward.flip(-1)], 1)


def sampled(feats, head, labels, samples: int, seed: int, **options):
    """modality_shapley's sampling estimate: `samples` orders drawn from a generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return fastshap.modality_shapley(
        feats, head, labels, estimator="sampling", samples=samples, generator=generator, **options
    )


def run_orders(backend, kind, head, feats, labels, benefit, orders, baselines=None):
    with torch.no_grad():
        return sampling.run(backend, spec_of(kind, head), feats, baselines, labels, benefit, orders)


# --- every order gives the exact value ---------------------------------------------------------------------


@pytest.mark.parametrize("kind,backend", KIND_BACKENDS)
def test_every_order_is_exact(kind, backend):
    n = 6
    feats, head, labels = make_case(kind, n, 7, 5, seed=60 + KINDS.index(kind))
    orders = every_order(n)
    for benefit in BENEFITS:
        want = fastshap.modality_shapley(feats, head, labels, benefit=benefit, backend="torch")
        phi, stderr, stats = run_orders(backend, kind, head, feats, labels, benefit, orders)
        if benefit == "probability" or kind == "decision":
            # Probabilities are rounded in another order than the exact op's (and decision fusion sums them).
            torch.testing.assert_close(phi, want, rtol=0, atol=2e-6)
        else:
            assert torch.equal(phi, want), (benefit, (phi - want).abs().max())
        assert stderr.shape == phi.shape and bool((stderr >= 0).all())
        torch.testing.assert_close(stats[0], phi.sum(0))
        assert torch.equal(stats[1], (phi < 1).sum(0).float())


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_order_with_baselines(backend):
    """Shared and per-sample baselines: the removed modality contributes its baseline's partial product."""
    n, batch = 6, 5
    feats, head, labels = make_case("concat", n, batch, 4, seed=7)
    g = torch.Generator().manual_seed(8)
    shared = [dyadic((f.shape[1],), -4, 4, 4, g) for f in feats]
    per_sample = [dyadic(f.shape, -4, 4, 4, g) for f in feats]
    for base, benefit in ((shared, "accuracy"), (per_sample, "paper")):
        want = fastshap.modality_shapley(feats, head, labels, baselines=base, benefit=benefit, backend="torch")
        if base is per_sample:
            base = [b.clone() for b in base]
        phi, _, _ = run_orders(backend, "concat", head, feats, labels, benefit, every_order(n), base)
        assert torch.equal(phi, want)


def test_every_order_callable_per_segment():
    """(B, T, C) logits with (B, T) labels: the value is the fraction of correct segments, as exact."""
    n, batch, segments = 6, 4, 3
    g = torch.Generator().manual_seed(11)
    dims = [2] * n
    feats = [dyadic((batch, 2), -4, 4, 4, g) for _ in dims]
    head = NonlinearHead(dims, 4, segments=segments, generator=g)
    labels = torch.randint(0, 4, (batch, segments), generator=g)
    want = fastshap.modality_shapley(feats, head, labels, backend="torch")
    phi, _, _ = run_orders("torch", "callable", head, feats, labels, "paper", every_order(n))
    torch.testing.assert_close(phi, want, rtol=0, atol=1e-6)


# --- unbiased and calibrated -------------------------------------------------------------------------------


def estimates(feats, head, labels, benefit, samples, seeds, backend="torch"):
    """(S, B, n) float64 estimates and standard errors, one seed per call."""
    phis, errors = [], []
    for seed in seeds:
        phi, stderr = sampled(feats, head, labels, samples, seed, benefit=benefit, backend=backend, with_stderr=True)
        phis.append(phi.double())
        errors.append(stderr.double())
    return torch.stack(phis), torch.stack(errors)


@pytest.mark.parametrize("benefit", BENEFITS)
@pytest.mark.parametrize("kind,n", [("concat", 10), ("mlp", 7), ("callable", 6)])
def test_mean_over_seeds_converges_to_exact(kind, n, benefit):
    seeds = range(200)
    feats, head, labels = make_case(kind, n, 6, 5, seed=100 + n, exact_scores=False)
    exact = fastshap.modality_shapley(feats, head, labels, benefit=benefit, backend="torch").double()
    phi, _ = estimates(feats, head, labels, benefit, samples=8, seeds=seeds)
    mean, sem = phi.mean(0), phi.std(0) / math.sqrt(len(seeds))
    # Cells whose estimate never varies are exact up to float32 rounding of the estimate and of phi.
    tolerance = 5 * sem + 1e-6
    assert bool(((mean - exact).abs() <= tolerance).all()), ((mean - exact) / sem.clamp_min(1e-12)).abs().max()
    assert bool((sem > 0).any()), "the estimates never varied: the test checked nothing"


@pytest.mark.parametrize("benefit", BENEFITS)
def test_stderr_covers_exact_at_nominal_rate(benefit):
    """K = 512 permutations (256 pairs): enough for the normal approximation of the discrete benefits' pair
    draws here (with K = 16 the +-1.96 interval covers ~80%: docs/sampling.md). Students' t with 255 degrees
    of freedom puts 94.9% inside +-1.96; the check allows 4 standard errors of the seed-level coverage."""
    feats, head, labels = make_case("concat", 8, 16, 5, seed=5, exact_scores=False)
    exact = fastshap.modality_shapley(feats, head, labels, benefit=benefit, backend="torch").double()
    phi, stderr = estimates(feats, head, labels, benefit, samples=512, seeds=range(150))
    covered = ((phi - exact).abs() <= 1.96 * stderr + 1e-6).double().mean((1, 2))  # per seed
    rate, spread = float(covered.mean()), float(covered.std()) / math.sqrt(len(covered))
    nominal = 0.949
    assert abs(rate - nominal) <= 4 * spread, (rate, spread)
    # The reported error is the actual one: the z-scores of the estimates have unit spread (chi-square over
    # the varying cells; a stderr off by a factor of 1.2 moves this mean square by 0.44 or more).
    z = (phi - exact) / stderr
    z = z[stderr > 0]
    assert 0.85 <= float((z * z).mean()) <= 1.2


# --- efficiency, reproducibility ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind,backend", KIND_BACKENDS)
@pytest.mark.parametrize("samples", [2, 10])
def test_efficiency_per_pair(kind, samples, backend):
    """Each walk's marginals telescope to v(N) - v(empty), so any number of pairs sums to it (the exact
    values' sum, by the exact op's own efficiency), up to the float32 rounding of the n values."""
    n = 12
    feats, head, labels = make_case(kind, n, 9, 6, seed=12 + samples, exact_scores=False)
    for benefit in BENEFITS:
        exact = fastshap.modality_shapley(feats, head, labels, benefit=benefit, backend="torch").double()
        phi = sampled(feats, head, labels, samples, 3, benefit=benefit, backend=backend).double()
        scale = phi.abs().sum(1) + exact.abs().sum(1)
        assert bool(((phi.sum(1) - exact.sum(1)).abs() <= 2**-22 * scale + 1e-12).all()), benefit


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_generator_state_same_values(backend):
    feats, head, labels = make_case("mlp", 9, 8, 5, seed=21, exact_scores=False)

    def call(generator):
        return fastshap.modality_shapley(
            feats, head, labels, backend=backend, estimator="sampling", samples=12, generator=generator
        )

    g = torch.Generator().manual_seed(4)
    state = g.get_state()
    first, later = call(g), call(g)
    g.set_state(state)
    again = call(g)
    assert torch.equal(first, again)
    assert not torch.equal(first, later), "the generator did not advance"
    assert torch.equal(call(torch.Generator().manual_seed(4)), first)
    torch.manual_seed(9)
    default = call(None)
    torch.manual_seed(9)
    assert torch.equal(call(None), default)


@pytest.mark.parametrize("kind", ["concat", "decision", "mlp"])
def test_backends_walk_the_same_orders(kind):
    """Every backend walks the orders drawn from the generator: the same values (the discrete benefits
    exactly: the same scores, summed in the same order)."""
    names = sampled_backends(kind)
    if len(names) == 1:
        pytest.skip(f"only the torch backend samples the {kind} head here")
    interpreted = "triton" in names  # seconds a call: a smaller case
    n, batch, samples = (5, 6, 4) if interpreted else (11, 13, 20)
    feats, head, labels = make_case(kind, n, batch, 7, seed=31, exact_scores=False)
    for benefit in BENEFITS:
        outs = [sampled(feats, head, labels, samples, 2, benefit=benefit, backend=b, with_stderr=True) for b in names]
        for phi, stderr in outs[1:]:
            if benefit == "probability":
                torch.testing.assert_close(phi, outs[0][0], rtol=1e-6, atol=1e-6)
                torch.testing.assert_close(stderr, outs[0][1], rtol=1e-5, atol=1e-6)
            else:
                assert torch.equal(phi, outs[0][0]) and torch.equal(stderr, outs[0][1]), (kind, benefit)


def test_callable_and_fused_paths_agree():
    """The torch backend's fused walk and its batched prefix evaluation of the same head as a callable walk
    the same orders to the same values (dyadic inputs: every score exact)."""
    feats, head, labels = make_case("concat", 9, 10, 4, seed=41)
    fused = sampled(feats, head, labels, 16, 1)
    as_callable = sampled(feats, lambda xs: head(xs), labels, 16, 1)
    assert torch.equal(fused, as_callable)


def test_antithetic_pairs_are_reversed_orders():
    orders = sampling.draw_orders(5, 9, torch.Generator().manual_seed(0), "cpu")
    assert orders.shape == (5, 2, 9) and orders.dtype == torch.int64
    assert torch.equal(orders[:, 1], orders[:, 0].flip(-1))
    assert torch.equal(orders[:, 0].sort(-1).values, torch.arange(9).expand(5, 9))


# --- the public keywords -----------------------------------------------------------------------------------


def test_auto_is_exact_up_to_16_and_samples_beyond():
    feats, head, labels = make_case("concat", 7, 5, 4, seed=51, exact_scores=False)
    exact = fastshap.modality_shapley(feats, head, labels)
    phi, stderr, stats = fastshap.modality_shapley(
        feats, head, labels, estimator="auto", with_stderr=True, with_stats=True
    )
    assert torch.equal(phi, exact) and torch.equal(stderr, torch.zeros_like(phi))
    assert stats.shape == (2, 7)
    feats, head, labels = make_case("concat", 17, 3, 4, seed=52, exact_scores=False)
    with pytest.raises(ValueError, match="estimator='sampling'"):
        fastshap.modality_shapley(feats, head, labels)
    phi, stderr = fastshap.modality_shapley(
        feats, head, labels, estimator="auto", samples=8, generator=torch.Generator().manual_seed(0), with_stderr=True
    )
    assert phi.shape == stderr.shape == (3, 17) and bool(torch.isfinite(phi).all())
    assert fastshap.MAX_MODALITIES == 16


def test_many_modalities():
    """n = 1024: runs (small widths) and stays efficient."""
    n, batch = 1024, 3
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(batch, 1, generator=g) for _ in range(n)]
    head = nn.Linear(n, 3)
    labels = torch.tensor([0, 1, 2])
    phi, stderr = fastshap.modality_shapley(
        feats,
        head,
        labels,
        benefit="accuracy",
        estimator="sampling",
        samples=4,
        generator=g,
        with_stderr=True,
    )
    with torch.no_grad():
        full = (head(torch.cat(feats, 1)).argmax(-1) == labels).double()
        empty = (head.bias.argmax() == labels).double()
    torch.testing.assert_close(phi.double().sum(1), full - empty, rtol=0, atol=1e-4)
    assert bool((stderr >= 0).all())


def test_one_modality_is_exact():
    feats, head, labels = make_case("concat", 1, 6, 3, seed=3, exact_scores=False)
    phi, stderr = fastshap.modality_shapley(feats, head, labels, estimator="sampling", samples=4, with_stderr=True)
    assert torch.equal(phi, fastshap.modality_shapley(feats, head, labels))
    assert torch.equal(stderr, torch.zeros_like(stderr))


def test_outputs_in_order_and_empty_batch():
    feats, head, labels = make_case("decision", 6, 4, 3, seed=4, exact_scores=False)
    kw = dict(estimator="sampling", samples=6, generator=torch.Generator().manual_seed(0))
    phi, stderr, stats = fastshap.modality_shapley(feats, head, labels, with_stderr=True, with_stats=True, **kw)
    assert phi.dtype == stderr.dtype == stats.dtype == torch.float32
    torch.testing.assert_close(stats[0], phi.sum(0))
    empty = [f[:0] for f in feats]
    phi, stderr, stats = fastshap.modality_shapley(empty, head, labels[:0], with_stderr=True, with_stats=True, **kw)
    assert phi.shape == stderr.shape == (0, 6) and stats.shape == (2, 6)


def test_bad_values_raise_as_exact():
    feats, head, labels = make_case("concat", 18, 4, 3, seed=5, exact_scores=False)
    kw = dict(estimator="sampling", samples=4)
    with pytest.raises(ValueError, match="outside"):
        fastshap.modality_shapley(feats, head, torch.tensor([0, 1, 2, 3]), **kw)
    feats[5] = feats[5].clone()
    feats[5][2, 0] = float("nan")
    with pytest.raises(ValueError, match="modality 5"):
        fastshap.modality_shapley(feats, head, labels, **kw)
    checks = fastshap.DeferredChecks(max_modalities=18)
    phi = fastshap.modality_shapley(feats, head, labels, defer_checks=checks, **kw)
    assert bool(phi[2].isnan().all()) and bool(torch.isfinite(phi[[0, 1, 3]]).all())
    with pytest.raises(ValueError, match="modality 5"):
        checks.raise_if_any()


@pytest.mark.parametrize(
    "kwargs,error,phrase",
    [
        (dict(estimator="monte-carlo"), ValueError, "unknown estimator"),
        (dict(estimator="sampling", samples=7), ValueError, "even number"),
        (dict(estimator="sampling", samples=0), ValueError, "even number"),
        (dict(estimator="sampling", samples=2, with_stderr=True), ValueError, "two antithetic pairs"),
        (dict(estimator="sampling", samples=8.0), TypeError, "samples must be an integer"),
        (dict(estimator="sampling", samples=True), TypeError, "samples must be an integer"),
        (dict(estimator="sampling", generator=0), TypeError, "torch.Generator"),
        (dict(samples=8), ValueError, "samples and generator are for"),
        (dict(generator=torch.Generator()), ValueError, "samples and generator are for"),
    ],
    ids=["estimator", "odd", "zero", "stderr-one-pair", "float", "bool", "generator", "exact-samples", "exact-gen"],
)
def test_keyword_errors(kwargs, error, phrase):
    feats, head, labels = make_case("concat", 4, 2, 3, seed=6, exact_scores=False)
    with pytest.raises(error, match=phrase):
        fastshap.modality_shapley(feats, head, labels, **kwargs)
