"""Callable heads through the batched torch path: values against the oracle, how few calls it makes,
per-segment (B, T, C) logits with (B, T) labels, and clear errors for malformed outputs."""

from __future__ import annotations

import math
import re

import pytest
import torch
from oracle import NonlinearHead, oracle_shapley

import fastshap
from fastshap import reference

PROBABILITY_ATOL = 1e-5
FP32_EPS = torch.finfo(torch.float32).eps


def _case(n, batch, num_classes, seed, segments=0, baselines=None):
    g = torch.Generator().manual_seed(seed)
    dims = [2 + (3 * i + seed) % 6 for i in range(n)]
    head = NonlinearHead(dims, num_classes, segments=segments, generator=g)
    feats = [torch.randn(batch, d, generator=g) for d in dims]
    shape = (batch, segments) if segments else (batch,)
    labels = torch.randint(0, num_classes, shape, generator=g)
    # Half the labels are the full model's prediction, so that many coalitions are right.
    with torch.no_grad():
        guess = head(feats).argmax(-1)
    labels = torch.where(torch.rand(shape, generator=g) < 0.5, guess, labels)
    base = None
    if baselines == "shared":
        base = [torch.randn(d, generator=g) * 0.5 for d in dims]
    elif baselines == "sample":
        base = [torch.randn(batch, d, generator=g) * 0.5 for d in dims]
    head.calls, head.rows = 0, []
    return feats, head, labels, base


def _check(phi, expected, atol=0.0):
    if expected.benefit == "probability":
        torch.testing.assert_close(phi.double(), expected.phi, atol=PROBABILITY_ATOL, rtol=0)
        return
    decided = expected.decided(FP32_EPS)
    assert int((~decided).sum()) <= max(1, 0.02 * decided.numel()), "near-ties are rare"
    want = expected.phi_float32()
    if atol:
        torch.testing.assert_close(phi[decided], want[decided], atol=atol, rtol=0)
    else:
        assert torch.equal(phi[decided], want[decided])


@pytest.mark.parametrize("benefit", ["paper", "accuracy", "probability"])
@pytest.mark.parametrize("n,baselines", [(1, None), (3, "shared"), (5, "sample"), (7, None)])
def test_nonlinear_callable_matches_oracle(n, baselines, benefit):
    feats, head, labels, base = _case(n, 200, 11, seed=n, baselines=baselines)
    phi = fastshap.modality_shapley(feats, head, labels, baselines=base, benefit=benefit, backend="torch")
    assert phi.shape == (200, n) and phi.dtype == torch.float32
    _check(phi, oracle_shapley(feats, head, labels, base, benefit))
    assert bool((phi != 0).any())


def test_all_coalitions_in_one_call():
    """Small enough for the element budget: one call with all 2^n coalitions stacked, B rows each,
    each input (2^n B, d_i) in the features' dtype, without gradients."""
    feats, head, labels, _ = _case(6, 50, 7, seed=2)
    seen = []

    def spy(xs):
        seen.append(([tuple(x.shape) for x in xs], [x.dtype for x in xs], torch.is_grad_enabled()))
        return head(xs)

    feats = [f.requires_grad_() for f in feats]
    phi = fastshap.modality_shapley(feats, spy, labels, benefit="paper")
    assert len(seen) == 1
    shapes, dtypes, grad = seen[0]
    assert shapes == [(64 * 50, f.shape[1]) for f in feats]
    assert dtypes == [torch.float32] * 6 and not grad
    assert not phi.requires_grad


def test_removed_modalities_get_their_baseline():
    """Rows of coalition m (m-th block of B rows) hold the features of the modalities in m and the
    baselines of the others, in the order of the bits of m."""
    batch, dims = 3, [2, 1, 2]
    feats = [torch.arange(batch * d, dtype=torch.float32).view(batch, d) + 1 for d in dims]
    base = [torch.full((d,), -1.0 - i) for i, d in enumerate(dims)]
    seen = []

    def spy(xs):
        seen.append([x.clone() for x in xs])
        return torch.zeros(xs[0].shape[0], 2)

    fastshap.modality_shapley(feats, spy, torch.zeros(batch, dtype=torch.long), baselines=base)
    (xs,) = seen
    # Any coalition order will do, as long as each block of B rows is one coalition and all 8 occur.
    blocks = [[x[k * batch : (k + 1) * batch] for x in xs] for k in range(8)]
    found = set()
    for block in blocks:
        present = tuple(bool(torch.equal(b, f)) for b, f in zip(block, feats))
        absent = tuple(bool(torch.equal(b, bl.expand_as(f))) for b, bl, f in zip(block, base, feats))
        assert all(p != a for p, a in zip(present, absent)), "each modality is either present or at its baseline"
        found.add(present)
    assert len(found) == 8


@pytest.mark.parametrize("budget_coalitions", [1, 3, 5, 32])
def test_few_calls_within_the_element_budget(budget_coalitions):
    """With an element budget of k coalitions' inputs, the 2^n coalitions take ceil(2^n / k) calls of k
    coalitions each (the last one may be short) and give the values of the single-call run exactly."""
    feats, head, labels, _ = _case(5, 40, 9, seed=3)
    width = sum(f.shape[1] for f in feats)
    budget = budget_coalitions * 40 * width
    phi, _ = reference.shapley_callable(feats, head, labels, None, "paper", element_budget=budget)
    assert head.calls == math.ceil(32 / budget_coalitions)
    assert head.rows[:-1] == [budget_coalitions * 40] * (head.calls - 1)
    assert sum(head.rows) == 32 * 40
    single = fastshap.modality_shapley(feats, head, labels, benefit="paper", backend="torch")
    assert torch.equal(phi, single)


@pytest.mark.parametrize("benefit", ["paper", "accuracy", "probability"])
@pytest.mark.parametrize("segments", [1, 4, 10])
def test_per_segment_logits_match_oracle(segments, benefit):
    """(B, T, C) logits with (B, T) labels: v(S) = |S| * fraction of correct segments ("paper"), the
    fraction ("accuracy"), the mean over segments of softmax[y_t] ("probability")."""
    feats, head, labels, base = _case(4, 60, 7, seed=10 + segments, segments=segments, baselines="shared")
    phi = fastshap.modality_shapley(feats, head, labels, baselines=base, benefit=benefit)
    assert phi.shape == (60, 4)
    expected = oracle_shapley(feats, head, labels, base, benefit)
    # The backend averages segments in float64 before the Shapley sum: exact up to float64 rounding.
    _check(phi, expected, atol=1e-6)
    if segments > 1 and benefit != "probability":
        # Not vacuous: some coalitions get a fraction of their segments right.
        assert bool((expected.values != expected.values.round()).any())
    assert bool((phi != 0).any())


def test_one_segment_equals_plain_logits():
    feats, head, labels, _ = _case(3, 30, 5, seed=4)
    head1 = lambda xs: head(xs).unsqueeze(1)  # noqa: E731  (B, 1, C)
    for benefit in ("paper", "accuracy", "probability"):
        plain = fastshap.modality_shapley(feats, head, labels, benefit=benefit)
        seg = fastshap.modality_shapley(feats, head1, labels.view(-1, 1), benefit=benefit)
        assert torch.equal(plain, seg)


@pytest.mark.parametrize(
    "make_output,labels_shape,match",
    [
        (
            lambda rows, c: torch.zeros(rows, c, 2),
            (8,),
            r"logits.*\(\d+, 5, 2\).*\(\d+, C\)",
        ),
        (lambda rows, c: torch.zeros(rows), (8,), r"logits.*\(\d+,\)"),
        (lambda rows, c: torch.zeros(rows - 1, c), (8,), r"\d+ stacked inputs"),
        (lambda rows, c: torch.zeros(rows, c), (8, 3), r"\(\d+, 3, C\).*labels.*\(8, 3\)"),
        (lambda rows, c: torch.zeros(rows, 2, c), (8, 3), r"logits of shape \(\d+, 2, 5\).*\(8, 3\)"),
    ],
    ids=["3d-for-plain-labels", "1d", "missing-rows", "2d-for-segment-labels", "wrong-segment-count"],
)
def test_wrong_output_shape_raises(make_output, labels_shape, match):
    feats = [torch.randn(8, 3), torch.randn(8, 2)]
    with pytest.raises(ValueError, match=match):
        fastshap.modality_shapley(
            feats, lambda xs: make_output(xs[0].shape[0], 5), torch.zeros(labels_shape, dtype=torch.long)
        )


# ------------------------------------------------------------------------------------------------------
# Heads of the decomposed types (nn.Linear, fastshap.heads) whose parameters do not say what they compute:
# a forward of their own or forward hooks. They run as the callables they are, never valued from their
# parameters alone.


class _ScaledLinear(torch.nn.Linear):
    def forward(self, x):
        return super().forward(x) / 5.0 + torch.tanh(x[:, :1]) * torch.arange(self.out_features)  # re-ranks classes


class _GeluMLP(fastshap.heads.ConcatMLP):
    def forward(self, features):
        return self.fc2(torch.nn.functional.gelu(self.fc1(torch.cat(list(features), -1))))


class _LoraLinear(torch.nn.Linear):
    def forward(self, x):
        return super().forward(x) + x @ torch.ones(x.shape[1], self.out_features) * 0.05


def _own_way_heads(dims, classes, g):
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))
    total = sum(dims)
    hooked = torch.nn.Linear(total, classes)
    hooked.register_forward_hook(lambda module, inputs, out: out * 0.1 + out.flip(-1))
    mlp = _GeluMLP(dims, 8, classes)
    lora_fc1 = fastshap.heads.ConcatMLP(dims, 8, classes)
    lora_fc1.fc1 = _LoraLinear(total, 8)
    norm = torch.nn.utils.weight_norm(torch.nn.Linear(total, classes))  # a pre-hook recomputes .weight
    with torch.no_grad():
        norm(torch.zeros(1, total))
        norm.weight_g.mul_(3.0)  # as an optimizer step would: .weight is stale until the next forward
    patched = torch.nn.Linear(total, classes)  # as LoRA injectors and accelerate's hooks do
    patched.forward = lambda x, plain=patched.forward: -plain(x)
    patched_fc1 = fastshap.heads.ConcatMLP(dims, 8, classes)
    patched_fc1.fc1.forward = lambda x, plain=patched_fc1.fc1.forward: plain(x) * 2.0 - 0.5

    class Calling(torch.nn.Linear):
        def __call__(self, x):
            return super().__call__(x).flip(-1)

    return {
        "subclass forward": (_ScaledLinear(total, classes), "overrides Linear.forward"),
        "instance forward": (patched, "has its own forward set on the instance"),
        "fc1 instance forward": (patched_fc1, "layer 'fc1' (Linear) has its own forward set on the instance"),
        "subclass __call__": (Calling(total, classes), "overrides Linear.__call__"),
        "forward hook": (hooked, "has forward hooks"),
        "ConcatMLP subclass": (mlp, "overrides ConcatMLP.forward"),
        "fc1 subclass": (lora_fc1, "layer 'fc1' (_LoraLinear) overrides Linear.forward"),
        "hook-based weight_norm": (norm, "has forward hooks"),
    }


@pytest.mark.filterwarnings("ignore:.*weight_norm.*deprecated")
@pytest.mark.parametrize("benefit", ["paper", "probability"])
def test_heads_with_their_own_forward_or_hooks_run_as_callables(benefit):
    g = torch.Generator().manual_seed(5)
    dims, classes, batch = [4, 3, 5], 6, 200
    feats = [torch.randn(batch, d, generator=g) for d in dims]
    labels = torch.randint(0, classes, (batch,), generator=g)
    for name, (head, why) in _own_way_heads(dims, classes, g).items():
        if isinstance(head, torch.nn.Linear):
            as_callable = lambda xs, head=head: head(torch.cat(list(xs), -1))  # noqa: E731
        else:
            as_callable = head
        # what the parameters alone give (read before any forward refreshes the weight_norm's .weight) differs,
        # so the test would see a head valued the fast way
        from_params = fastshap.modality_shapley(feats, copy_as_plain(head), labels, benefit=benefit)
        got = fastshap.modality_shapley(feats, head, labels, benefit=benefit)
        expected = fastshap.modality_shapley(feats, as_callable, labels, benefit=benefit, backend="torch")
        assert torch.equal(got, expected), name
        assert not torch.equal(from_params, expected), name
        with pytest.raises(fastshap.BackendError, match=re.escape(why) + ".*callable"):
            fastshap.modality_shapley(feats, head, labels, benefit=benefit, backend="cpp")


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_deferred_callable_gives_nan_rows_only_where_values_are_bad(backend):
    """A callable head with NaN/Inf features or per-sample baselines: those rows NaN, counted per modality
    (stats row 2) and as NaN rows (row 3), the other rows their values, as the kernels give them."""
    g = torch.Generator().manual_seed(7)
    dims, classes, batch = [3, 4], 5, 12
    torch.manual_seed(7)
    linear = torch.nn.Linear(sum(dims), classes)
    head = lambda xs: linear(torch.cat(list(xs), 1))  # noqa: E731
    feats = [torch.randn(batch, d, generator=g) for d in dims]
    labels = torch.randint(0, classes, (batch,), generator=g)
    base = [torch.randn(batch, d, generator=g) for d in dims]
    spoiled = [f.clone() for f in feats]
    spoiled[0][2, 1] = math.nan
    spoiled[1][7, 0] = -math.inf
    spoiled_base = [b.clone() for b in base]
    spoiled_base[1][9, 3] = math.nan
    bad = torch.zeros(batch, dtype=torch.bool)
    bad[[2, 7, 9]] = True
    clean = fastshap.modality_shapley(feats, head, labels, baselines=base)
    checks = fastshap.DeferredChecks()
    phi, _ = fastshap.modality_shapley(
        spoiled, head, labels, baselines=spoiled_base, defer_checks=checks, with_stats=True
    )
    assert torch.equal(phi.isnan().any(1), bad) and bool(phi[bad].isnan().all())
    assert torch.equal(phi[~bad], clean[~bad])
    # the same inputs through the decomposed head (a kernel) give the same rows
    fast = fastshap.modality_shapley(
        spoiled, linear, labels, baselines=spoiled_base, backend=backend, defer_checks=fastshap.DeferredChecks()
    )
    assert torch.equal(fast.isnan().any(1), bad)
    stats = reference.shapley_callable(spoiled, head, labels, spoiled_base, "paper")[1]
    assert stats[2].tolist() == [1.0, 2.0] and stats[3, 0].item() == 3.0
    with pytest.raises(ValueError, match=r"3 phi rows.*NaN"):
        checks.raise_if_any()


def copy_as_plain(head):
    """The same parameters in a head of the plain library type (no forward of its own, no hooks)."""
    if isinstance(head, torch.nn.Linear):
        plain = torch.nn.Linear(head.in_features, head.out_features)
        with torch.no_grad():
            plain.weight.copy_(head.weight)
            plain.bias.copy_(head.bias)
        return plain
    plain = fastshap.heads.ConcatMLP(head.dims, head.fc1.out_features, head.fc2.out_features)
    plain.load_state_dict(head.state_dict())
    return plain


def test_parametrized_and_plain_heads_keep_the_fused_path():
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(16, 3, generator=g), torch.randn(16, 2, generator=g)]
    labels = torch.randint(0, 4, (16,), generator=g)
    norm = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(5, 4))  # .weight is computed when read
    compiled = torch.compile(torch.nn.Linear(5, 4))  # the wrapper runs the same function (never compiled here)
    for head in (
        torch.nn.Linear(5, 4),
        norm,
        fastshap.heads.ConcatMLP([3, 2], 6, 4),
        compiled,
        torch.compile(fastshap.heads.ConcatMLP([3, 2], 6, 4)),
    ):
        fastshap.modality_shapley(feats, head, labels, backend="cpp")  # a callable would be refused
    hooked = torch.compile(torch.nn.Linear(5, 4))
    hooked.register_forward_hook(lambda module, inputs, out: -out)
    with pytest.raises(fastshap.BackendError):
        fastshap.modality_shapley(feats, hooked, labels, backend="cpp")
    # a compiled callable head keeps its compilation (it runs as the wrapper it is)
    from fastshap.api import _head_spec

    compiled_callable = torch.compile(_GeluMLP([3, 2], 6, 4))
    assert _head_spec(compiled_callable, [3, 2], torch.device("cpu")).fn is compiled_callable


def test_decision_fusion_with_its_own_per_modality_logits_runs_as_a_callable():
    class Tempered(fastshap.heads.DecisionFusion):
        def per_modality_logits(self, features):
            return [z / 4.0 for z in super().per_modality_logits(features)]

    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    head = Tempered([3, 4], 5)
    feats = [torch.randn(40, 3, generator=g), torch.randn(40, 4, generator=g)]
    labels = torch.randint(0, 5, (40,), generator=g)
    got = fastshap.modality_shapley(feats, head, labels, benefit="probability")
    expected = fastshap.modality_shapley(feats, lambda xs: head(xs), labels, benefit="probability", backend="torch")
    assert torch.equal(got, expected)
    with pytest.raises(fastshap.BackendError, match="overrides DecisionFusion.per_modality_logits"):
        fastshap.modality_shapley(feats, head, labels, backend="cpp")
