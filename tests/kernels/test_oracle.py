"""Every backend against the independent float64 oracle (tests/oracle.py) over the seeded cases of
tests/kernel_cases.py (which says what they cover and how phi is compared), plus exact ties, the oracle
itself, and head variants the cases do not reach."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from cases import make_head
from kernel_cases import (
    CASES,
    DTYPES,
    HEAD_KINDS,
    Case,
    assert_matches_oracle,
    backends_for,
    compute_eps,
    expected_for,
    make_inputs,
)
from oracle import dyadic, oracle_shapley, shapley_from_value_function
from torch import nn

import fastshap
from fastshap import heads


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_oracle(case: Case, backend: str):
    if backend not in backends_for(case.head):
        with pytest.raises(fastshap.BackendError, match="callable"):
            feats, head, labels, baselines = make_inputs(case)
            fastshap.modality_shapley(feats, head, labels, baselines=baselines, benefit=case.benefit, backend=backend)
        return
    feats, head, labels, baselines = make_inputs(case)
    if case.layout != "contig" and case.B > 1:
        assert any(not f.is_contiguous() for f in feats if f.shape[1] > 1) or all(f.shape[1] == 1 for f in feats)
    phi = fastshap.modality_shapley(feats, head, labels, baselines=baselines, benefit=case.benefit, backend=backend)
    assert phi.device.type == "cpu"
    assert_matches_oracle(phi, expected_for(case), compute_eps(DTYPES[case.dtype]), f"{case.id} [{backend}]")


def test_cases_cover_every_axis():
    """The covering set really contains every value of every axis (a guard for future edits of CASES)."""
    assert {c.n for c in CASES} == set(range(1, 9))
    assert {c.C for c in CASES} == {1, 2, 31, 101, 1000}
    assert {c.B for c in CASES} == {0, 1, 7, 1000}
    assert {c.head for c in CASES} == set(HEAD_KINDS)
    assert {c.dtype for c in CASES} == set(DTYPES)
    assert {c.layout for c in CASES} == {"contig", "T", "strided"}
    assert {c.baselines for c in CASES} == {"none", "shared", "sample", "mixed"}
    assert {c.benefit for c in CASES} == set(fastshap.BENEFITS)
    for kind in HEAD_KINDS:
        assert {c.benefit for c in CASES if c.head == kind} == set(fastshap.BENEFITS), kind
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("kind", ["concat", "decision", "mlp"])
def test_near_ties_are_rare(kind):
    """On 1000 random fp32 samples (n = 5, C = 31, 32 coalitions each) at most 2% of the samples and 0.1%
    of the (sample, coalition) pairs are near-ties, and every other sample matches the oracle exactly in
    both backends."""
    case = Case(5, 31, 1000, kind, "fp32", "contig", "shared", "accuracy")
    expected = expected_for(case)
    eps = compute_eps(torch.float32)
    excluded = int((~expected.decided(eps)).sum())
    assert excluded <= 20, f"{excluded} of 1000 samples are near-ties"
    assert expected.near_tie_coalitions(eps) <= 32, "near-tie coalitions"
    feats, head, labels, baselines = make_inputs(case)
    for backend in ("torch", "cpp"):
        phi = fastshap.modality_shapley(feats, head, labels, baselines=baselines, benefit="accuracy", backend=backend)
        assert_matches_oracle(phi, expected, eps, f"{kind} [{backend}]")


# --- deliberate exact ties: the first maximal index must win everywhere ---------------------------------


def _tied_head(kind: str, dims, num_classes: int, g: torch.Generator):
    """A head whose class pairs (c, c + C/2) always score exactly equal: duplicated dyadic weight rows and
    biases (zero biases, so the all-removed coalition ties every class). Dyadic values keep every sum exact
    whatever the summation order, so the tie holds bit for bit in every backend and in the oracle."""
    total = sum(dims)

    def dup(rows, cols, denominator):
        w = dyadic((rows // 2, cols), -8, 8, denominator, g)
        return torch.cat([w, w])

    if kind == "callable":
        w = dup(num_classes, total, 8)

        def fn(xs):
            x = torch.cat([t.to(torch.promote_types(t.dtype, torch.float32)) for t in xs], -1)
            return torch.relu(x) @ w.to(x.dtype).t() - x.sum(-1, keepdim=True) * 0.25

        return fn
    if kind in ("linear", "concat"):
        head = nn.Linear(total, num_classes) if kind == "linear" else heads.ConcatLinear(dims, num_classes)
        fc = head if kind == "linear" else head.fc
        with torch.no_grad():
            fc.weight.copy_(dup(num_classes, total, 8))
            fc.bias.zero_()
        return head
    if kind == "decision":
        head = heads.DecisionFusion(dims, num_classes)
        with torch.no_grad():
            for clf, d in zip(head.classifiers, dims):
                clf.weight.copy_(dup(num_classes, d, 8))
                clf.bias.zero_()
        return head
    head = heads.ConcatMLP(dims, 6, num_classes)
    with torch.no_grad():
        head.fc1.weight.copy_(dyadic((6, total), -8, 8, 8, g))
        head.fc1.bias.copy_(dyadic((6,), -4, 4, 4, g))
        head.fc2.weight.copy_(dup(num_classes, 6, 8))
        head.fc2.bias.zero_()
    return head


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "fp64"])
@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_exact_ties_first_index_wins(kind, dtype):
    g = torch.Generator().manual_seed(7 + HEAD_KINDS.index(kind))
    dims, num_classes, batch = [3, 2, 4], 6, 64
    head = _tied_head(kind, dims, num_classes, g)
    feats = [dyadic((batch, d), -3, 3, 1, g).to(DTYPES[dtype]) for d in dims]
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    for benefit in ("paper", "accuracy"):
        expected = oracle_shapley(feats, head, labels, None, benefit)
        want = expected.phi_float32()
        # Sanity of the construction: the oracle sees exact ties (margin 0) and the tied twin never wins.
        assert bool((expected.margins == 0).any())
        if benefit == "paper":
            assert torch.equal(want[labels >= num_classes // 2], torch.zeros_like(want[labels >= num_classes // 2]))
        assert bool((want != 0).any())
        for backend in backends_for(kind):
            phi = fastshap.modality_shapley(feats, head, labels, benefit=benefit, backend=backend)
            assert torch.equal(phi, want), f"{kind} {dtype} {benefit} [{backend}]"


def test_ties_in_the_empty_coalition_count_for_accuracy():
    """Zero biases and no features: every class ties at the empty coalition, so class 0 is predicted;
    for "accuracy" v(empty) = 1 exactly for label-0 samples and the values shift by it."""
    g = torch.Generator().manual_seed(3)
    dims = [2, 3]
    head = _tied_head("concat", dims, 4, g)
    feats = [dyadic((32, d), -3, 3, 1, g) for d in dims]
    labels = torch.randint(0, 4, (32,), generator=g)
    expected = oracle_shapley(feats, head, labels, None, "accuracy")
    assert torch.equal(expected.values[:, 0], (labels == 0).double())
    for backend in ("torch", "cpp"):
        phi = fastshap.modality_shapley(feats, head, labels, benefit="accuracy", backend=backend)
        assert torch.equal(phi, expected.phi_float32())
        # Efficiency with the tie-decided v(empty): sum_i phi_i = v(N) - v(empty).
        assert torch.equal(phi.double().sum(1), (expected.values[:, -1] - expected.values[:, 0]))


# --- the oracle itself -------------------------------------------------------------------------------------


def test_oracle_is_independent_of_fastshap():
    """The oracle imports nothing from fastshap (it would otherwise share the code it checks)."""
    import types

    import oracle

    modules = {v.__name__ for v in vars(oracle).values() if isinstance(v, types.ModuleType)}
    assert modules and not any(m.split(".")[0] == "fastshap" for m in modules)
    with open(oracle.__file__) as f:
        imports = [line for line in f if line.lstrip().startswith(("import ", "from "))]
    assert imports and not any("fastshap" in line for line in imports)


def test_oracle_subset_formula_matches_the_fraction_formula():
    """The oracle's vectorised integer subset formula equals the plain Fraction formula on random games."""
    g = torch.Generator().manual_seed(11)
    for n in (1, 2, 3, 5):
        dims = [2] * n
        feats = [torch.randn(16, 2, generator=g) for _ in dims]
        head = make_head("concat", dims, 5, g)
        labels = torch.randint(0, 5, (16,), generator=g)
        for benefit in ("paper", "accuracy"):
            res = oracle_shapley(feats, head, labels, None, benefit)
            for b in range(16):
                table = res.values[b].tolist()

                def v(s, table=table):
                    return Fraction(table[sum(1 << j for j in s)]).limit_denominator(1)

                assert res.phi_exact[b] == shapley_from_value_function(v, n)


def test_oracle_decision_fusion_scores_agree_with_the_head_forward():
    """The oracle scores DecisionFusion by the mean softmax; the module's forward is its log."""
    g = torch.Generator().manual_seed(5)
    dims = [3, 4]
    head = make_head("decision", dims, 7, g)
    feats = [torch.randn(20, d, generator=g) for d in dims]
    labels = torch.randint(0, 7, (20,), generator=g)
    res = oracle_shapley(feats, head, labels, None, "probability")
    full = head.double()([f.double() for f in feats]).exp()
    torch.testing.assert_close(res.values[:, -1], full.gather(1, labels.view(-1, 1)).squeeze(1))


def test_oracle_known_two_modality_game():
    """n = 2, paper benefit: v(a) = correct_a, v(b) = correct_b, v(ab) = 2 correct_ab. The four
    hand-computed games of the paper's Remark."""
    for (ca, cb, cab), want in {
        (1, 1, 1): (1, 1),
        (1, 0, 1): (1.5, 0.5),
        (0, 0, 1): (1, 1),
        (1, 0, 0): (0.5, -0.5),
        (0, 0, 0): (0, 0),
    }.items():
        table = {frozenset(): 0, frozenset({0}): ca, frozenset({1}): cb, frozenset({0, 1}): 2 * cab}
        got = shapley_from_value_function(table.__getitem__, 2)
        assert [float(x) for x in got] == list(want)


# --- head variants the covering set does not reach -------------------------------------------------------


@pytest.mark.parametrize("param_dtype", ["fp16", "bf16", "fp64"])
@pytest.mark.parametrize("kind", ["linear", "decision", "mlp"])
def test_head_parameter_dtypes(kind, param_dtype):
    """Heads stored in another dtype than the features: the value is that of the stored parameters (the
    oracle copies them to float64 exactly), with fp32 and with fp16 features."""
    g = torch.Generator().manual_seed(40 + HEAD_KINDS.index(kind))
    dims, num_classes, batch = [3, 5, 2], 9, 1000
    head = make_head(kind, dims, num_classes, g).to(DTYPES[param_dtype])
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    for feat_dtype in (torch.float32, torch.float16):
        feats = [torch.randn(batch, d, generator=g).to(feat_dtype) for d in dims]
        for benefit in ("paper", "probability"):
            expected = oracle_shapley(feats, head, labels, None, benefit)
            for backend in ("torch", "cpp"):
                phi = fastshap.modality_shapley(feats, head, labels, benefit=benefit, backend=backend)
                what = f"{kind} {param_dtype} {feat_dtype} [{backend}]"
                assert_matches_oracle(phi, expected, compute_eps(feat_dtype), what)


def test_linear_without_bias_and_int32_labels():
    """No bias: with zero baselines the empty coalition ties every class exactly (class 0 wins), which
    the near-tie rule cannot tell from a float near-tie; so "paper" (v(empty) = 0) without baselines, and
    "accuracy" with baselines. int32 labels are accepted."""
    g = torch.Generator().manual_seed(41)
    dims = [4, 6]
    head = nn.Linear(10, 13, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(13, 10, generator=g))
    feats = [torch.randn(300, d, generator=g) for d in dims]
    labels = torch.randint(0, 13, (300,), generator=g)
    baselines = [torch.randn(d, generator=g) for d in dims]
    for benefit, base in (("paper", None), ("accuracy", baselines)):
        expected = oracle_shapley(feats, head, labels, base, benefit)
        for backend in ("torch", "cpp"):
            phi = fastshap.modality_shapley(feats, head, labels.int(), baselines=base, benefit=benefit, backend=backend)
            assert_matches_oracle(phi, expected, compute_eps(torch.float32), f"{benefit} [{backend}]")


def test_decision_fusion_single_class():
    """C = 1: every coalition predicts class 0; paper values are then 1 for every modality."""
    g = torch.Generator().manual_seed(42)
    head = make_head("decision", [2, 3, 4], 1, g)
    feats = [torch.randn(5, d, generator=g) for d in (2, 3, 4)]
    labels = torch.zeros(5, dtype=torch.long)
    for backend in ("torch", "cpp"):
        phi = fastshap.modality_shapley(feats, head, labels, backend=backend)
        assert torch.equal(phi, oracle_shapley(feats, head, labels, None, "paper").phi_float32())
        assert torch.equal(phi, torch.ones(5, 3))
