"""The Shapley axioms on every backend and benefit: efficiency, symmetry, null player; the n = 2 value set.

Symmetry and null player use dyadic inputs and weights (tests/oracle.dyadic), so every score is computed
exactly whatever the summation order and the axioms must hold bit for bit; efficiency uses random inputs
and checks against v(N) and v(empty) computed here from the head's own forward in float64.
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import pytest
import torch
from oracle import NonlinearHead, dyadic, oracle_shapley
from torch import nn

import fastshap
from fastshap import heads

KINDS = ("concat", "decision", "mlp", "callable")
BENEFITS = ("paper", "accuracy", "probability")
PROBABILITY_ATOL = 1e-5


def _backend_params():
    # (kind, backend): the compiled backend runs the fastshap heads; callables take the torch path.
    return [(k, b) for k in KINDS for b in ("torch", "cpp") if not (k == "callable" and b == "cpp")]


BACKEND_PARAMS = _backend_params()
BACKEND_IDS = [f"{k}-{b}" for k, b in BACKEND_PARAMS]


def random_head(kind, dims, num_classes, g):
    if kind == "callable":
        return NonlinearHead(dims, num_classes, generator=g)
    head = {
        "concat": lambda: heads.ConcatLinear(dims, num_classes),
        "decision": lambda: heads.DecisionFusion(dims, num_classes),
        "mlp": lambda: heads.ConcatMLP(dims, 16, num_classes),
    }[kind]()
    with torch.no_grad():
        for p in head.parameters():
            scale = 2.0 / math.sqrt(p.shape[1]) if p.dim() == 2 else 0.3
            p.copy_(torch.randn(p.shape, generator=g) * scale)
    return head


def full_and_empty_values(head, feats, labels, baselines, benefit):
    """v(N) and v(empty) (B,) float64 from the head's forward in float64, and the smaller top-two margin of
    the two coalitions (B,) (to leave out near-ties)."""
    model = copy.deepcopy(head).double() if isinstance(head, nn.Module) else head
    full = [f.double() for f in feats]
    empty = [
        (b.double().expand_as(f) if b.dim() == 1 else b.double()) if baselines else torch.zeros_like(f)
        for f, b in zip(full, baselines or full)
    ]
    n = len(feats)
    out, margins = [], []
    with torch.no_grad():
        for xs, size in ((full, n), (empty, 0)):
            if isinstance(model, heads.DecisionFusion):
                score = torch.stack([torch.softmax(c(x), -1) for c, x in zip(model.classifiers, xs)]).mean(0)
                prob = score
            else:
                score = model(xs).double()
                prob = torch.softmax(score, -1)
            top = score.topk(2, -1).values
            margins.append(top[:, 0] - top[:, 1])
            correct = (score.argmax(-1) == labels).double()
            if benefit == "probability":
                out.append(prob.gather(1, labels.view(-1, 1)).squeeze(1))
            elif benefit == "accuracy":
                out.append(correct)
            else:
                out.append(correct * size)
    return out[0], out[1], torch.minimum(margins[0], margins[1])


@pytest.mark.parametrize("benefit", BENEFITS)
@pytest.mark.parametrize("n", [2, 5, 10])
@pytest.mark.parametrize("kind,backend", BACKEND_PARAMS, ids=BACKEND_IDS)
def test_efficiency(kind, backend, n, benefit):
    """sum_i phi_i = v(N) - v(empty), with and without baselines (n = 10: beyond what the oracle enumerates)."""
    g = torch.Generator().manual_seed(100 * n + KINDS.index(kind))
    dims = [2 + (i * 3) % 5 for i in range(n)]
    batch, num_classes = 64, 7
    head = random_head(kind, dims, num_classes, g)
    feats = [torch.randn(batch, d, generator=g) for d in dims]
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    for baselines in (None, [torch.randn(d, generator=g) * 0.3 for d in dims]):
        phi = fastshap.modality_shapley(feats, head, labels, baselines=baselines, benefit=benefit, backend=backend)
        v_full, v_empty, margin = full_and_empty_values(head, feats, labels, baselines, benefit)
        total = phi.double().sum(1)
        if benefit == "probability":
            torch.testing.assert_close(total, v_full - v_empty, atol=PROBABILITY_ATOL, rtol=0)
            continue
        keep = margin > 1e-4  # the float64 forward and the fp32 backends may disagree only on near-ties
        assert int(keep.sum()) >= batch - 2
        # phi are float32 roundings of multiples of 1/n!: their sum is exact to a few float32 ulps.
        torch.testing.assert_close(total[keep], (v_full - v_empty)[keep], atol=n * 1e-6, rtol=0)
        if benefit == "paper":
            assert bool(((phi >= -(n - 1) / 2) & (phi <= (n + 1) / 2)).all()), "paper values lie in [-(n-1)/2, (n+1)/2]"


def _symmetric_case(kind, g, num_classes=5, batch=48):
    """Modalities 0 and 2 are identical (same features, baselines and head weights); modality 1 differs."""
    dims = [3, 2, 3, 4]
    x0 = dyadic((batch, 3), -3, 3, 1, g)
    feats = [x0, dyadic((batch, 2), -3, 3, 1, g), x0.clone(), dyadic((batch, 4), -3, 3, 1, g)]
    b0 = dyadic((3,), -2, 2, 2, g)
    baselines = [b0, dyadic((2,), -2, 2, 2, g), b0.clone(), dyadic((4,), -2, 2, 2, g)]
    offsets = [0, 3, 5, 8]

    def tie_columns(w):  # w (K, 12): give modality 2 the columns of modality 0
        w[:, offsets[2] : offsets[2] + 3] = w[:, offsets[0] : offsets[0] + 3]
        return w

    if kind == "callable":
        w = tie_columns(dyadic((num_classes, 12), -8, 8, 8, g))

        def fn(xs):
            x = torch.cat(xs, -1)
            # Symmetric in modalities 0 and 2 by construction of w; nonlinear through relu and the product.
            return torch.relu(x) @ w.t() + (xs[0] * xs[2]).sum(-1, keepdim=True) * 0.5

        return dims, feats, baselines, fn
    with torch.no_grad():
        if kind == "concat":
            head = heads.ConcatLinear(dims, num_classes)
            head.fc.weight.copy_(tie_columns(dyadic((num_classes, 12), -8, 8, 8, g)))
            head.fc.bias.copy_(dyadic((num_classes,), -4, 4, 4, g))
        elif kind == "decision":
            head = heads.DecisionFusion(dims, num_classes)
            for clf in head.classifiers:
                clf.weight.copy_(dyadic(clf.weight.shape, -8, 8, 8, g))
                clf.bias.copy_(dyadic(clf.bias.shape, -4, 4, 4, g))
            head.classifiers[2].load_state_dict(head.classifiers[0].state_dict())
        else:
            head = heads.ConcatMLP(dims, 6, num_classes)
            head.fc1.weight.copy_(tie_columns(dyadic((6, 12), -8, 8, 8, g)))
            head.fc1.bias.copy_(dyadic((6,), -4, 4, 4, g))
            head.fc2.weight.copy_(dyadic((num_classes, 6), -8, 8, 8, g))
            head.fc2.bias.copy_(dyadic((num_classes,), -4, 4, 4, g))
    return dims, feats, baselines, head


@pytest.mark.parametrize("benefit", BENEFITS)
@pytest.mark.parametrize("kind,backend", BACKEND_PARAMS, ids=BACKEND_IDS)
def test_symmetry(kind, backend, benefit):
    g = torch.Generator().manual_seed(7 + KINDS.index(kind))
    dims, feats, baselines, head = _symmetric_case(kind, g)
    labels = torch.randint(0, 5, (feats[0].shape[0],), generator=g)
    for base in (None, baselines):
        phi = fastshap.modality_shapley(feats, head, labels, baselines=base, benefit=benefit, backend=backend)
        if benefit == "probability":
            # Softmax is not exact in floats; the scores it reads are, so the two values agree to rounding.
            torch.testing.assert_close(phi[:, 0], phi[:, 2], atol=1e-6, rtol=0)
        else:
            assert torch.equal(phi[:, 0], phi[:, 2])
        # Not vacuous: the twin modalities matter, and they differ from modality 1 somewhere.
        assert bool((phi[:, 0] != 0).any()) and bool((phi[:, 0] != phi[:, 1]).any())


def _null_head(kind, dims, num_classes, null, g):
    """A random head in which modality `null` has all-zero weights (its classifier's weights, for decision
    fusion: then its softmax is that of its bias whether it is present or removed)."""
    head = random_head(kind, dims, num_classes, g)
    lo = sum(dims[:null])
    hi = lo + dims[null]
    with torch.no_grad():
        if kind == "concat":
            head.fc.weight[:, lo:hi] = 0
        elif kind == "decision":
            head.classifiers[null].weight.zero_()
        elif kind == "mlp":
            head.fc1.weight[:, lo:hi] = 0
        else:
            head.w1[:, lo:hi] = 0
            if null == 0:
                head.u.zero_()
    return head


def _paper_value_of_ignored_modality(correct: torch.Tensor, k: int, n: int) -> list:
    """Under the paper benefit v(S) = |S| correct(S), a modality k the head ignores is NOT a null player of
    the game: v(S + k) - v(S) = correct(S). Its value is sum over S not containing k of
    |S|! (n - |S| - 1)! / n! * correct(S), as exact Fractions per sample. correct: (B, 2^n) 0/1."""
    out = []
    for row in correct.tolist():
        total = Fraction(0)
        for s in range(1 << n):
            if not (s >> k) & 1 and row[s]:
                size = bin(s).count("1")
                total += Fraction(math.factorial(size) * math.factorial(n - size - 1), math.factorial(n))
        out.append(total)
    return out


@pytest.mark.parametrize("benefit", BENEFITS)
@pytest.mark.parametrize("kind,backend", BACKEND_PARAMS, ids=BACKEND_IDS)
def test_null_player(kind, backend, benefit):
    """A modality the head ignores (zero weights) gets exactly 0 for "accuracy" and (to float64 rounding
    of the Shapley sum) "probability", with random features and baselines; the others do not. For "paper"
    it is no null player of the game (|S| counts it): its value is checked against the exact formula."""
    g = torch.Generator().manual_seed(31 + KINDS.index(kind))
    dims, num_classes, batch = [4, 3, 5], 6, 64
    for null in (0, 1):
        head = _null_head(kind, dims, num_classes, null, g)
        feats = [torch.randn(batch, d, generator=g) for d in dims]
        labels = torch.randint(0, num_classes, (batch,), generator=g)
        for baselines in (None, [torch.randn(batch, d, generator=g) for d in dims]):
            phi = fastshap.modality_shapley(feats, head, labels, baselines=baselines, benefit=benefit, backend=backend)
            others = [i for i in range(3) if i != null]
            assert bool((phi[:, others] != 0).any())
            if benefit == "accuracy":
                assert torch.equal(phi[:, null], torch.zeros(batch)), f"modality {null}"
            elif benefit == "probability":
                # phi = sum_S v(S) k(S) in float64: v(S) and v(S + k) cancel only up to that sum's rounding.
                torch.testing.assert_close(phi[:, null], torch.zeros(batch), atol=1e-12, rtol=0)
            else:
                expected = oracle_shapley(feats, head, labels, baselines, "accuracy")
                decided = expected.decided(torch.finfo(torch.float32).eps)
                assert int(decided.sum()) >= batch - 2
                want = _paper_value_of_ignored_modality(expected.values.long(), null, 3)
                want = torch.tensor([float(x) for x in want]).float()
                assert torch.equal(phi[decided, null], want[decided]), f"modality {null}"
                assert bool((want > 0).any())


@pytest.mark.parametrize("kind,backend", BACKEND_PARAMS, ids=BACKEND_IDS)
def test_two_modalities_paper_value_set(kind, backend):
    """n = 2, paper benefit: every value is in {-0.5, 0, 0.5, 1, 1.5}, each occurs on 2000 random samples,
    phi_a + phi_b is 0 or 2 (= v(N)), and phi_a - phi_b = v({a}) - v({b}) is in {-1, 0, 1}."""
    g = torch.Generator().manual_seed(2 + KINDS.index(kind))
    dims, num_classes, batch = [6, 4], 3, 2000
    head = random_head(kind, dims, num_classes, g)
    feats = [torch.randn(batch, d, generator=g) for d in dims]
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    phi = fastshap.modality_shapley(feats, head, labels, benefit="paper", backend=backend)
    assert set(phi.flatten().tolist()) == {-0.5, 0.0, 0.5, 1.0, 1.5}
    assert set(phi.sum(1).tolist()) <= {0.0, 2.0}
    assert set((phi[:, 0] - phi[:, 1]).tolist()) <= {-1.0, 0.0, 1.0}
