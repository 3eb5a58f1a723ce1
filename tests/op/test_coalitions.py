"""fastshap.coalition_values and fastshap.modality_interactions against independent float64 oracles.

Coalition values are checked against tests/oracle.py's (the head as a float64 black box on every
coalition), interactions against tests/oracle_interactions.py (the Grabisch-Roubens subset formula in
exact rationals, itself checked against the Moebius formula and phi by permutations). Discrete benefits
must match exactly on every sample whose argmax no float error can flip (oracle.decided), "probability" to
1e-5. The cpp and torch backends must agree exactly on every sample for the discrete benefits (the same
GEMMs and summation order decide every argmax), and the diagonal must equal modality_shapley's phi.
"""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction
from functools import cache

import pytest
import torch
from cases import make_head, spoil_labels
from kernel_cases import DTYPES, HEAD_KINDS, MAX_EXCLUDED_SAMPLES, PROBABILITY_ATOL, compute_eps, make_inputs
from kernel_cases import Case as KernelCase
from oracle import NonlinearHead, dyadic, oracle_shapley
from oracle_interactions import (
    interaction_by_moebius,
    interaction_by_subsets,
    oracle_interactions,
    shapley_by_permutations,
)
from torch import nn

import fastshap
from fastshap import _extension, coalitions, heads

#: The backends these functions claim (triton and cuda decline them).
CLAIMED = ("torch", "cpp")


class Case(KernelCase):
    """A case of tests/kernel_cases.py's matrix (its fields, its make_inputs), drawn from its own seed."""

    @property
    def seed(self) -> int:
        return super().seed + 20


# A covering set (test_cases_cover_every_axis): every head kind with every benefit, n = 1..8, odd sizes.
CASES = [
    Case(1, 2, 7, "linear", "fp32", "contig", "none", "paper"),
    Case(1, 31, 1, "decision", "fp64", "T", "shared", "accuracy"),
    Case(2, 2, 64, "concat", "fp32", "T", "none", "paper"),
    Case(2, 31, 64, "mlp", "fp16", "strided", "sample", "accuracy"),
    Case(2, 31, 64, "decision", "fp32", "contig", "sample", "probability"),
    Case(2, 5, 7, "callable", "fp64", "strided", "shared", "paper"),
    Case(2, 31, 0, "concat", "fp32", "contig", "shared", "accuracy"),
    Case(3, 101, 64, "linear", "bf16", "T", "mixed", "paper"),
    Case(3, 31, 64, "linear", "fp32", "strided", "shared", "accuracy"),
    Case(3, 31, 64, "callable", "fp32", "contig", "none", "accuracy"),
    Case(3, 1, 7, "mlp", "fp32", "contig", "shared", "probability"),
    Case(4, 31, 64, "concat", "fp32", "strided", "sample", "accuracy"),
    Case(4, 2, 64, "decision", "bf16", "contig", "none", "paper"),
    Case(4, 31, 7, "callable", "fp32", "T", "mixed", "probability"),
    Case(5, 31, 64, "mlp", "fp64", "T", "none", "paper"),
    Case(5, 101, 7, "linear", "fp32", "contig", "shared", "probability"),
    Case(6, 31, 7, "decision", "fp16", "strided", "shared", "accuracy"),
    Case(6, 31, 7, "concat", "bf16", "T", "mixed", "probability"),
    Case(7, 2, 7, "concat", "fp32", "contig", "none", "paper"),
    Case(8, 31, 7, "mlp", "fp32", "contig", "sample", "accuracy"),
]


@cache
def expected_for(case: Case):
    feats, head, labels, baselines = make_inputs(case)
    return oracle_interactions(feats, head, labels, baselines, case.benefit)


def backends_for(kind: str):
    return ("torch",) if kind == "callable" else CLAIMED


def _skip_without_extension(backend: str) -> None:
    if backend == "cpp" and not _extension.LOADED:
        pytest.skip(f"fastshap._C is not built ({_extension.LOAD_ERROR})")
    if backend == "cpp" and not coalitions._has_kernel("coalition_values", "CPU"):
        pytest.skip("the loaded fastshap._C was built before the coalition ops: rebuild it (make build)")


def _decided(expected, case: Case) -> torch.Tensor:
    """Samples that a float computation must match exactly; near-ties must be rare."""
    decided = expected.shapley.decided(compute_eps(DTYPES[case.dtype]))
    excluded = int((~decided).sum())
    assert excluded <= max(1, MAX_EXCLUDED_SAMPLES * case.B), f"{case.id}: {excluded} near-tie samples"
    return decided


def _call(fn, case: Case, backend: str):
    feats, head, labels, baselines = make_inputs(case)
    return fn(feats, head, labels, baselines=baselines, benefit=case.benefit, backend=backend)


# ---------------------------------------------------------------------------------------------------------
# the oracles' own checks: two unrelated formulas must agree


def _random_game(n: int, rng: random.Random) -> list[Fraction]:
    return [Fraction(0)] + [Fraction(rng.randint(-3, 6), rng.choice((1, 2, 3))) for _ in range((1 << n) - 1)]


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_interaction_oracle_agrees_with_the_moebius_formula(n):
    rng = random.Random(n)
    for _ in range(3):
        v = _random_game(n, rng)
        for i, j in itertools.combinations(range(n), 2):
            assert interaction_by_subsets(v, n, i, j) == interaction_by_moebius(v, n, i, j)


def test_interaction_oracle_on_known_games():
    n = 4
    # additive game: no interaction; unanimity game of {1, 3}: I_13 = 1, the other pairs get 1/2 ... of
    # m({1, 3, k}) = 0: exactly 0.
    additive = [sum(Fraction(k + 1) for k in range(n) if (m >> k) & 1) for m in range(1 << n)]
    unanimity = [Fraction(1 if m & 0b1010 == 0b1010 else 0) for m in range(1 << n)]
    for i, j in itertools.combinations(range(n), 2):
        assert interaction_by_subsets(additive, n, i, j) == 0
        assert interaction_by_subsets(unanimity, n, i, j) == (1 if (i, j) == (1, 3) else 0)
    # n = 2: the closed form
    v = [Fraction(0), Fraction(1), Fraction(0), Fraction(2)]
    assert interaction_by_subsets(v, 2, 0, 1) == v[3] - v[1] - v[2] + v[0] == 1


def test_shapley_oracle_agrees_with_permutations():
    rng = random.Random(7)
    for n in (2, 3, 4):
        v = _random_game(n, rng)
        want = [shapley_by_permutations(v, n, i) for i in range(n)]
        values = torch.tensor([[float(x) for x in v]], dtype=torch.float64)
        got = coalitions.interactions_from_values(values)[0].diagonal()
        assert got.tolist() == [float(torch.tensor(float(w)).float()) for w in want]


# ---------------------------------------------------------------------------------------------------------
# against the oracles


@pytest.mark.parametrize("backend", CLAIMED)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_coalition_values_match_the_oracle(case: Case, backend: str):
    if backend not in backends_for(case.head):
        with pytest.raises(fastshap.BackendError, match="callable"):
            _call(fastshap.coalition_values, case, backend)
        return
    _skip_without_extension(backend)
    values = _call(fastshap.coalition_values, case, backend)
    expected = expected_for(case)
    assert values.dtype == torch.float32 and tuple(values.shape) == (case.B, 1 << case.n)
    want = expected.shapley.values
    if case.benefit == "probability":
        torch.testing.assert_close(values.double(), want, atol=PROBABILITY_ATOL, rtol=0)
        return
    decided = _decided(expected, case)
    assert torch.equal(values[decided], want[decided].float()), case.id
    # near-ties or not, discrete values are the benefit's integers: |S| or 0 (paper), 0 or 1 (accuracy)
    sizes = torch.tensor([bin(m).count("1") for m in range(1 << case.n)], dtype=torch.float32)
    allowed = (values == 0) | (values == (sizes if case.benefit == "paper" else 1.0))
    assert allowed.all()


@pytest.mark.parametrize("backend", CLAIMED)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_interactions_match_the_oracle(case: Case, backend: str):
    if backend not in backends_for(case.head):
        with pytest.raises(fastshap.BackendError, match="callable"):
            _call(fastshap.modality_interactions, case, backend)
        return
    _skip_without_extension(backend)
    got = _call(fastshap.modality_interactions, case, backend)
    expected = expected_for(case)
    assert got.dtype == torch.float32 and tuple(got.shape) == (case.B, case.n, case.n)
    assert torch.equal(got, got.transpose(1, 2))
    if case.benefit == "probability":
        torch.testing.assert_close(got.double(), expected.interactions, atol=PROBABILITY_ATOL, rtol=0)
        return
    decided = _decided(expected, case)
    want = expected.interactions.float()
    wrong = decided & (got != want).flatten(1).any(1)
    if bool(wrong.any()):
        b = int(wrong.nonzero()[0])
        exact = [[str(x) for x in row] for row in expected.exact[b]]
        raise AssertionError(f"{case.id} [{backend}] sample {b}: got {got[b].tolist()}, exact {exact}")


@pytest.mark.parametrize("backend", CLAIMED)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_diagonal_is_modality_shapley(case: Case, backend: str):
    if backend not in backends_for(case.head):
        return
    _skip_without_extension(backend)
    got = _call(fastshap.modality_interactions, case, backend).diagonal(dim1=1, dim2=2)
    phi = _call(fastshap.modality_shapley, case, backend)
    if case.benefit == "probability":
        torch.testing.assert_close(got, phi, atol=1e-6, rtol=0)
    else:
        assert torch.equal(got, phi), case.id


@pytest.mark.parametrize("case", [c for c in CASES if c.head != "callable"], ids=lambda c: c.id)
def test_cpp_and_torch_agree(case: Case):
    """Bit for bit on every sample, near-ties included, for the discrete benefits."""
    _skip_without_extension("cpp")
    for fn in (fastshap.coalition_values, fastshap.modality_interactions):
        cpp, torch_ = _call(fn, case, "cpp"), _call(fn, case, "torch")
        if case.benefit == "probability":
            torch.testing.assert_close(cpp, torch_, atol=1e-6, rtol=0)
        else:
            assert torch.equal(cpp, torch_), f"{fn.__name__} {case.id}"


def test_cases_cover_every_axis():
    assert {c.n for c in CASES} == set(range(1, 9))
    assert {c.C for c in CASES} >= {1, 2, 31, 101}
    assert {c.B for c in CASES} >= {0, 1, 7, 64}
    assert {c.dtype for c in CASES} == set(DTYPES)
    assert {c.layout for c in CASES} == {"contig", "T", "strided"}
    assert {c.baselines for c in CASES} == {"none", "shared", "sample", "mixed"}
    for kind in HEAD_KINDS:
        assert {c.benefit for c in CASES if c.head == kind} == set(fastshap.BENEFITS), kind


def test_per_segment_labels_score_the_fraction_of_correct_segments():
    """A callable with (B, T, C) logits and (B, T) labels: v(S) = |S| * (correct segments) / T."""
    g = torch.Generator().manual_seed(5)
    head = NonlinearHead([3, 2, 4], 5, segments=3, generator=g)
    feats = [torch.randn(9, d, generator=g) for d in (3, 2, 4)]
    labels = torch.randint(0, 5, (9, 3), generator=g)
    expected = oracle_interactions(feats, head, labels)
    values = fastshap.coalition_values(feats, head, labels)
    decided = _decided(expected, Case(3, 5, 9, "callable", "fp32", "contig", "none", "paper"))
    assert torch.equal(values[decided], expected.shapley.values[decided].float())
    assert ((values * 3) == (values * 3).round()).all()  # multiples of 1/T
    got = fastshap.modality_interactions(feats, head, labels)
    # v = k / T is not exact in float64 (T = 3): the numerators carry float64 rounding, far below float32's
    torch.testing.assert_close(got[decided], expected.interactions[decided].float(), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# exact arithmetic, ties and properties that hold bit for bit


def test_n2_interaction_is_the_closed_form_of_the_values():
    g = torch.Generator().manual_seed(3)
    head = make_head("concat", [4, 6], 3, g)
    feats = [torch.randn(200, 4, generator=g), torch.randn(200, 6, generator=g)]
    labels = torch.randint(0, 3, (200,), generator=g)
    for benefit in fastshap.BENEFITS:
        v = fastshap.coalition_values(feats, head, labels, benefit=benefit, backend="torch").double()
        got = fastshap.modality_interactions(feats, head, labels, benefit=benefit, backend="torch")
        want = (v[:, 3] - v[:, 1] - v[:, 2] + v[:, 0]).float()
        if benefit == "probability":  # the op works from the float64 values, v here was rounded to float32
            torch.testing.assert_close(got[:, 0, 1], want, atol=1e-6, rtol=0)
        else:
            assert torch.equal(got[:, 0, 1], want)
    paper = fastshap.modality_interactions(feats, head, labels).flatten(1)
    # paper benefit, n = 2: every entry is a multiple of 1/2 in [-2, 2]
    assert set((paper * 2).unique().tolist()) <= {-4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0}


@pytest.mark.parametrize("backend", CLAIMED)
def test_exact_ties_follow_the_first_maximal_index(backend):
    """Dyadic inputs and weights: every score is exact, so ties are ties; the first maximal index wins."""
    _skip_without_extension(backend)
    g = torch.Generator().manual_seed(11)
    dims = [3, 2, 4]
    head = heads.ConcatLinear(dims, 4)
    with torch.no_grad():
        head.fc.weight.copy_(dyadic(head.fc.weight.shape, -2, 2, 2, g))
        head.fc.bias.zero_()
    feats = [dyadic((40, d), -1, 1, 1, g) for d in dims]
    labels = torch.randint(0, 4, (40,), generator=g)
    expected = oracle_interactions(feats, head, labels)
    for fn, want in (
        (fastshap.coalition_values, expected.shapley.values.float()),
        (fastshap.modality_interactions, expected.interactions.float()),
    ):
        assert torch.equal(fn(feats, head, labels, backend=backend), want)


def test_interactions_of_n16_stay_exact():
    """n = 16 (the largest): numerators up to ~1e14 stay exact integers; an additive game (v(S) = sum of
    per-modality scores) has no interaction and phi_i = its score."""
    n = 16
    masks = torch.arange(1 << n).unsqueeze(1) >> torch.arange(n) & 1
    score = torch.arange(1, n + 1, dtype=torch.float64)
    additive = (masks * score).sum(1, keepdim=True).t()  # (1, 2^16)
    got = coalitions.interactions_from_values(additive)[0]
    assert torch.equal(got.diagonal(), score.float())
    assert torch.equal(got - torch.diag(got.diagonal()), torch.zeros(n, n))
    # the unanimity game of {0, 15}: I = 1 for that pair, 0 elsewhere; phi = 1/2 for both players
    unanimity = ((masks[:, 0] == 1) & (masks[:, 15] == 1)).double().unsqueeze(0)
    got = coalitions.interactions_from_values(unanimity)[0]
    want = torch.zeros(n, n)
    want[0, 15] = want[15, 0] = 1.0
    want[0, 0] = want[15, 15] = 0.5
    assert torch.equal(got, want)


def test_pair_coefficients_are_the_definition():
    n = 5
    k = coalitions.pair_coefficients(n)
    rows, cols = coalitions.pairs(n)
    assert k.shape == (1 << n, n * (n - 1) // 2)
    for p, (i, j) in enumerate(zip(rows.tolist(), cols.tolist())):
        v = [Fraction(0)] * (1 << n)
        for t in range(1 << n):  # the coefficient of v(T) is I_ij of the game that is 1 at T only
            v[t] = Fraction(1)
            assert interaction_by_subsets(v, n, i, j) * math.factorial(n - 1) == float(k[t, p]), (i, j, t)
            v[t] = Fraction(0)


def test_paper_benefit_values_the_empty_coalition_zero():
    g = torch.Generator().manual_seed(2)
    head = make_head("concat", [3, 3], 2, g)
    feats = [torch.randn(30, 3, generator=g) for _ in range(2)]
    labels = torch.randint(0, 2, (30,), generator=g)
    assert (fastshap.coalition_values(feats, head, labels)[:, 0] == 0).all()
    accuracy = fastshap.coalition_values(feats, head, labels, benefit="accuracy")[:, 0]
    # the empty coalition's logits are the bias: the accuracy benefit scores its argmax
    assert torch.equal(accuracy, (head.fc.bias.argmax() == labels).float())


# ---------------------------------------------------------------------------------------------------------
# the checks: the public API's own, the memory bound, backends


def _small():
    g = torch.Generator().manual_seed(1)
    head = make_head("concat", [3, 4], 5, g)
    feats = [torch.randn(10, 3, generator=g), torch.randn(10, 4, generator=g)]
    return feats, head, torch.randint(0, 5, (10,), generator=g)


@pytest.mark.parametrize("fn", [fastshap.coalition_values, fastshap.modality_interactions])
def test_bad_inputs_raise_what_modality_shapley_raises(fn):
    feats, head, labels = _small()
    for kwargs, error, phrase in (
        (dict(features=feats[0]), TypeError, "list or tuple"),
        (dict(labels=labels.float()), TypeError, "integer"),
        (dict(labels=labels[:3]), ValueError, "3 labels"),
        (dict(benefit="gain"), ValueError, "unknown benefit"),
        (dict(backend="fast"), ValueError, "unknown backend"),
        (dict(backend=3), TypeError, "backend"),
        (dict(baselines=[torch.zeros(3)]), ValueError, "1 baselines"),
        (dict(head=nn.Linear(6, 5)), ValueError, "inputs"),
    ):
        args = dict(features=feats, head=head, labels=labels) | kwargs
        with pytest.raises(error, match=phrase):
            fn(args.pop("features"), args.pop("head"), args.pop("labels"), **args)
        with pytest.raises(error) as op_error:
            args = dict(features=feats, head=head, labels=labels) | kwargs
            fastshap.modality_shapley(args.pop("features"), args.pop("head"), args.pop("labels"), **args)
        assert phrase in str(op_error.value)


@pytest.mark.parametrize("backend", CLAIMED)
@pytest.mark.parametrize("fn", [fastshap.coalition_values, fastshap.modality_interactions])
def test_bad_values_raise_after_the_backend_counted_them(fn, backend):
    _skip_without_extension(backend)
    feats, head, labels = _small()
    spoiled, _ = spoil_labels(labels, 5)
    with pytest.raises(ValueError, match=r"label 5 is outside \[0, 5\)"):
        fn(feats, head, spoiled, backend=backend)
    bad = [feats[0], feats[1].clone()]
    bad[1][4, 2] = float("nan")
    with pytest.raises(ValueError, match="features of modality 1 hold NaN"):
        fn(bad, head, labels, backend=backend)
    broken = make_head("concat", [3, 4], 5, torch.Generator().manual_seed(0))
    with torch.no_grad():
        broken.fc.bias[2] = float("inf")
    with pytest.raises(ValueError, match="head parameters hold NaN or Inf"):
        fn(feats, broken, labels, backend=backend)


def test_the_memory_bound_refuses_before_computing():
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(10, d, generator=g) for d in (2, 3, 1)]
    labels = torch.zeros(10, dtype=torch.long)
    head = make_head("concat", [2, 3, 1], 4, g)
    exact = 10 * 8 * 4  # (10, 2^3) float32
    assert fastshap.coalition_values(feats, head, labels, max_bytes=exact).shape == (10, 8)
    with pytest.raises(ValueError, match="max_bytes") as error:
        fastshap.coalition_values(feats, head, labels, max_bytes=exact - 1)
    assert "at most 9 samples" in str(error.value)
    assert fastshap.modality_interactions(feats, head, labels, max_bytes=10 * 9 * 4).shape == (10, 3, 3)
    with pytest.raises(ValueError, match="max_bytes"):
        fastshap.modality_interactions(feats, head, labels, max_bytes=10 * 9 * 4 - 1)
    # a callable head's evaluation holds the (B, 2^n) values in float64: the bound covers them
    callable_head = NonlinearHead([2, 3, 1], 4, generator=g)
    for fn in (fastshap.coalition_values, fastshap.modality_interactions):
        assert fn(feats, callable_head, labels, max_bytes=10 * 8 * 8).shape[0] == 10
        calls = callable_head.calls
        with pytest.raises(ValueError, match="float64 coalition values of the callable head"):
            fn(feats, callable_head, labels, max_bytes=10 * 8 * 8 - 1)
        assert callable_head.calls == calls  # refused before the head ran
    for bad, error in ((0, ValueError), (-5, ValueError), (1.5, TypeError), (True, TypeError), ("2GB", TypeError)):
        with pytest.raises(error, match="max_bytes"):
            fastshap.coalition_values(feats, head, labels, max_bytes=bad)


def test_the_default_bound_refuses_2_gib_of_values():
    """n = 16 at B = 8193 would return 2^31 + 2^18 bytes: refused at once (no 2 GiB allocation)."""
    feats = [torch.zeros(8193, 1) for _ in range(16)]
    head = nn.Linear(16, 2)
    labels = torch.zeros(8193, dtype=torch.long)
    assert coalitions.MAX_BYTES == 1 << 31
    with pytest.raises(ValueError, match="over max_bytes = 2,147,483,648"):
        fastshap.coalition_values(feats, head, labels)


@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_backends_that_do_not_compute_coalitions_decline_with_the_reason(name):
    feats, head, labels = _small()
    for fn in (fastshap.coalition_values, fastshap.modality_interactions):
        with pytest.raises(fastshap.BackendError, match=f"backend '{name}' cannot run this call"):
            fn(feats, head, labels, backend=name)


def test_auto_picks_the_compiled_backend_for_fastshap_heads_on_the_cpu():
    feats, head, labels = _small()
    call = coalitions._prepare(feats, head, labels, None, "paper", "auto")
    compiled = _extension.LOADED and coalitions._has_kernel("coalition_values", "CPU")
    assert call.backend.name == ("cpp" if compiled else "torch")
    call = coalitions._prepare(feats, lambda xs: head(xs), labels, None, "paper", "auto")
    assert call.backend.name == "torch"


def test_empty_batch_and_no_gradients():
    feats, head, labels = _small()
    empty = [f[:0] for f in feats]
    assert fastshap.coalition_values(empty, head, labels[:0]).shape == (0, 4)
    assert fastshap.modality_interactions(empty, head, labels[:0]).shape == (0, 2, 2)
    feats = [f.requires_grad_() for f in feats]
    assert not fastshap.modality_interactions(feats, head, labels).requires_grad
    assert not fastshap.coalition_values(feats, head, labels).requires_grad


def test_oracle_shapley_values_are_the_coalition_values():
    """The interaction oracle's coalition values are tests/oracle.py's (the same brute force)."""
    case = CASES[2]
    feats, head, labels, baselines = make_inputs(case)
    assert torch.equal(
        expected_for(case).shapley.values, oracle_shapley(feats, head, labels, baselines, case.benefit).values
    )


# ---------------------------------------------------------------------------------------------------------
# the compiled ops: registration, fake kernels, memory guards


def _op_args(kind="concat"):
    g = torch.Generator().manual_seed(8)
    dims = [3, 5, 2]
    head = make_head(kind, dims, 6, g)
    feats = [torch.randn(11, d, generator=g) for d in dims]
    labels = torch.randint(0, 6, (11,), generator=g)
    spec = fastshap.api._head_spec(head, dims, torch.device("cpu"))
    return feats, spec.kind, list(spec.params), [], labels, "paper"


@pytest.mark.parametrize("op", ["coalition_values", "modality_interactions"])
@pytest.mark.parametrize("kind", ["concat", "decision", "mlp"])
def test_the_compiled_ops_pass_opcheck(op, kind):
    _skip_without_extension("cpp")
    torch.library.opcheck(getattr(torch.ops.fastshap, op), _op_args(kind))


@pytest.mark.parametrize("op", ["coalition_values", "modality_interactions"])
def test_the_compiled_ops_guard_memory(op):
    """Direct op calls with bad arguments raise ValueError (the op's memory guards), never read out of bounds."""
    _skip_without_extension("cpp")
    fn = getattr(torch.ops.fastshap, op)
    feats, kind, params, base, labels, benefit = _op_args()
    with pytest.raises(ValueError, match="labels"):
        fn(feats, kind, params, base, labels[:4], benefit)
    with pytest.raises(ValueError):
        fn(feats, kind, params[:1], base, labels, benefit)
    with pytest.raises(ValueError):
        fn(feats, kind, [params[0][:, :4], params[1]], base, labels, benefit)
    with pytest.raises(ValueError):
        fn(feats, "attention", params, base, labels, benefit)
    with pytest.raises(ValueError):
        fn(feats, kind, params, base, labels, "gain")
    with pytest.raises(ValueError):
        fn(feats, kind, params, [torch.zeros(3)], labels, benefit)


def test_the_compiled_ops_trace_under_torch_compile():
    _skip_without_extension("cpp")
    feats, kind, params, base, labels, benefit = _op_args()

    def both(feats, labels):
        values, _ = torch.ops.fastshap.coalition_values(feats, kind, params, base, labels, benefit)
        inter, _ = torch.ops.fastshap.modality_interactions(feats, kind, params, base, labels, benefit)
        return values.sum(1), inter.diagonal(dim1=1, dim2=2)

    compiled = torch.compile(both, backend="eager", fullgraph=True)
    for got, want in zip(compiled(feats, labels), both(feats, labels)):
        assert torch.equal(got, want)
