"""An independent brute-force oracle for modality Shapley values. Shares no code with fastshap.

Everything here is float64 and follows the definitions literally:

* H(S): the head evaluated as a black box on the features with every modality outside S replaced by its
  baseline (zeros by default). The head is a float64 copy of the user's head. A decision-fusion head
  (a module with ``classifiers``) is scored by the mean of its per-modality softmax, evaluated directly.
* correct(S): the first maximal index of H(S) equals the label (ties: the first index wins).
* v(S): "paper" |S| * correct(S) with v(empty) = 0; "accuracy" correct(S); "probability" softmax(H(S))[y]
  (decision fusion: the mean of the per-modality softmax at y). Per-segment logits (B, T, C) with labels
  (B, T) score the fraction of correct segments (probability: the mean over segments).
* phi_i = sum over S not containing i of |S|! (n - |S| - 1)! / n! * (v(S + i) - v(S)), by that subset
  formula: exact integers and fractions for the discrete benefits, float64 for "probability".

Besides phi it returns each coalition's top-two score margin and an error scale, so that tests can leave
out samples whose argmax a float32 computation may legitimately flip (see :meth:`OracleResult.decided`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn

BENEFITS = ("paper", "accuracy", "probability")

#: Input rows (coalitions x samples) per black-box evaluation of the head.
_ROWS_PER_CALL = 1 << 13


def _is_decision_fusion(head) -> bool:
    return isinstance(head, nn.Module) and isinstance(getattr(head, "classifiers", None), nn.ModuleList)


def _linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


class _Float64Head:
    """The head as float64 functions of the n inputs: ``scores`` (what argmax reads), ``prob``
    (the probability benefit's distribution) and ``abs_scores`` (the same head with |parameters| on
    |inputs|: an upper bound on the magnitude of every partial sum, the error scale)."""

    def __init__(self, head, num_modalities: int):
        self.decision = _is_decision_fusion(head)
        self.n = num_modalities
        if isinstance(head, nn.Module):
            self.head = copy.deepcopy(head).double()
            self.abs_head = copy.deepcopy(self.head)
            with torch.no_grad():
                for p in self.abs_head.parameters():
                    p.abs_()
            linears = _linears(self.head)
            # Terms summed along the longest chain of the computation: each layer's inputs plus its bias,
            # plus the n-term sum over modalities of the kernels' decomposition.
            if self.decision:
                self.depth = max(l.in_features for l in linears) + 2
            else:
                self.depth = sum(l.in_features + 2 for l in linears) + num_modalities
        else:
            if not callable(head):
                raise TypeError("oracle: head must be callable")
            self.head = head
            abs_copy = getattr(head, "abs_copy", None)
            self.abs_head = abs_copy() if abs_copy is not None else None
            self.depth = int(getattr(head, "depth", 1))

    def _call(self, fn, xs: list[torch.Tensor]) -> torch.Tensor:
        if isinstance(fn, nn.Linear):
            out = nn.functional.linear(torch.cat(xs, dim=-1), fn.weight, fn.bias)
        else:
            out = fn(xs)
        if not isinstance(out, torch.Tensor):
            raise TypeError("oracle: the head did not return a tensor")
        return out.double()

    def scores(self, xs: list[torch.Tensor]) -> torch.Tensor:
        if self.decision:
            total = sum(torch.softmax(clf(x), -1) for clf, x in zip(self.head.classifiers, xs))
            return total / len(xs)
        return self._call(self.head, xs)

    def prob(self, scores: torch.Tensor) -> torch.Tensor:
        return scores if self.decision else torch.softmax(scores, -1)

    def abs_scores(self, xs: list[torch.Tensor]) -> torch.Tensor | None:
        if self.abs_head is None:
            return None
        xs = [x.abs() for x in xs]
        if self.decision:
            # Per-modality logit magnitudes: the softmax inputs' error scale.
            out = None
            for clf, x in zip(self.abs_head.classifiers, xs):
                out = clf(x) if out is None else torch.maximum(out, clf(x))
            return out
        return self._call(self.abs_head, xs)


@dataclass
class OracleResult:
    """Oracle output for B samples and n modalities.

    phi: (B, n) float64 tensor; for the discrete benefits each entry is the correctly rounded value of
        the exact rational ``phi_exact[b][i]``.
    phi_exact: (B x n) list of Fractions (discrete benefits) or None ("probability").
    values: (B, 2^n) float64 coalition values; coalition m holds modality i iff bit i of m is set.
    margins: (B, 2^n) float64 top-two score margin of each coalition (inf for C = 1).
    scale: (B,) float64 upper bound on |every partial sum| of the scores, over all coalitions (decision
        fusion: of the per-modality logits; a callable without ``abs_copy``: the largest |score|).
    top_score: (B,) float64 largest score over all coalitions and classes.
    depth: terms summed along the longest chain of the head's computation.
    decision: scores are mean probabilities (decision fusion), not logits.
    num_classes: C.
    benefit: the benefit used.
    """

    phi: torch.Tensor
    phi_exact: list[list[Fraction]] | None
    values: torch.Tensor
    margins: torch.Tensor
    scale: torch.Tensor
    top_score: torch.Tensor
    depth: int
    decision: bool
    num_classes: int
    benefit: str

    def phi_float32(self) -> torch.Tensor:
        """phi as float32: the exact rational rounded to float64, then to float32 (the rounding of an exact
        numerator divided by n! in float64 and stored as float32)."""
        return self.phi.float()

    def error_bound(self, eps: float) -> torch.Tensor:
        """(B,) first-order bound on the error of any score computed in a float format of machine epsilon
        ``eps`` (unit roundoff u = eps / 2), whatever the summation order: a sum of k terms is off by at
        most k u times the sum of their magnitudes, so logits are off by at most depth * u * scale.
        Mean probabilities (decision fusion): each softmax entry p moves by at most 2 p times its inputs'
        error, and the exponentials, their sum over C classes and the mean over n modalities add
        (C + n + 4) u relative error; p is at most the largest score."""
        u = eps / 2
        logit_error = self.depth * u * self.scale
        if not self.decision:
            return logit_error
        n = self.margins.shape[1].bit_length() - 1
        return self.top_score * (2.0 * logit_error + (self.num_classes + n + 4) * u)

    def _relevant_margins(self) -> torch.Tensor:
        # The empty coalition does not matter for "paper" (v = 0 whatever the argmax).
        return self.margins if self.benefit != "paper" else self.margins[:, 1:]

    def _tolerance(self, eps: float) -> torch.Tensor:
        """(B, 1): a margin above this cannot flip in the computation nor in this float64 oracle (the top
        two scores may each move by the error bound)."""
        return (2.0 * (self.error_bound(eps) + self.error_bound(torch.finfo(torch.float64).eps))).unsqueeze(1)

    def decided(self, eps: float) -> torch.Tensor:
        """(B,) bool: samples whose argmax is the same in every coalition that matters for any computation
        with machine epsilon ``eps``: the smallest top-two margin exceeds the tolerance."""
        margins = self._relevant_margins()
        if margins.shape[1] == 0:
            return torch.ones(self.margins.shape[0], dtype=torch.bool)
        return (margins > self._tolerance(eps)).all(1)

    def near_tie_coalitions(self, eps: float) -> int:
        """How many (sample, coalition) pairs that matter have a margin within the tolerance."""
        return int((self._relevant_margins() <= self._tolerance(eps)).sum())


def _fill(baseline: torch.Tensor | None, feature: torch.Tensor) -> torch.Tensor:
    if baseline is None:
        return torch.zeros_like(feature)
    return baseline.expand_as(feature) if baseline.dim() == 1 else baseline


def _coalition_inputs(feats, fills, masks: Sequence[int]) -> list[torch.Tensor]:
    """The n inputs of the coalitions in `masks`, stacked coalition-major: rows (len(masks) * B, d_i)."""
    out = []
    for i, (f, b) in enumerate(zip(feats, fills)):
        out.append(torch.cat([f if (m >> i) & 1 else b for m in masks], dim=0))
    return out


def _top_two_margin(scores: torch.Tensor) -> torch.Tensor:
    if scores.shape[-1] < 2:
        return torch.full(scores.shape[:-1], math.inf, dtype=torch.float64)
    top = scores.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def _first_argmax(scores: torch.Tensor) -> torch.Tensor:
    """First maximal index along the last dim, written out rather than trusting any library tie rule."""
    top = scores.amax(-1, keepdim=True)
    idx = torch.arange(scores.shape[-1]).expand_as(scores)
    return torch.where(scores == top, idx, scores.shape[-1]).amin(-1)


def shapley_weights(n: int) -> list[int]:
    """Integer numerators w(s) = s! (n - s - 1)! of the subset formula, for |S| = s = 0..n-1 (denominator n!)."""
    return [math.factorial(s) * math.factorial(n - s - 1) for s in range(n)]


def _subset_terms(n: int, i: int):
    """Coalitions S not containing i (as masks), and |S| of each."""
    without = torch.tensor([m for m in range(1 << n) if not (m >> i) & 1], dtype=torch.int64)
    sizes = torch.tensor([bin(m).count("1") for m in without.tolist()], dtype=torch.int64)
    return without, without | (1 << i), sizes


def _subset_formula_int(values: torch.Tensor, n: int) -> torch.Tensor:
    """values (B, 2^n) int64 -> Shapley numerators (B, n) int64 over the denominator n! (exact integers:
    |numerator| <= n! * max |v(S + i) - v(S)|)."""
    w = torch.tensor(shapley_weights(n), dtype=torch.int64)
    num = torch.zeros(values.shape[0], n, dtype=torch.int64)
    for i in range(n):
        without, with_i, sizes = _subset_terms(n, i)
        num[:, i] = ((values[:, with_i] - values[:, without]) * w[sizes]).sum(1)
    return num


def _subset_formula_float(values: torch.Tensor, n: int) -> torch.Tensor:
    w = torch.tensor([x / math.factorial(n) for x in shapley_weights(n)], dtype=torch.float64)
    phi = torch.zeros(values.shape[0], n, dtype=torch.float64)
    for i in range(n):
        without, with_i, sizes = _subset_terms(n, i)
        phi[:, i] = ((values[:, with_i] - values[:, without]) * w[sizes]).sum(1)
    return phi


def oracle_shapley(
    features: Sequence[torch.Tensor],
    head,
    labels: torch.Tensor,
    baselines: Sequence[torch.Tensor] | None = None,
    benefit: str = "paper",
) -> OracleResult:
    """Brute-force Shapley values of the n modalities of each sample (see the module docstring).

    features: n tensors (B, d_i) of any float dtype (read exactly, as float64); head: nn.Linear over the
    concatenation, an nn.Module taking the list of n inputs, a decision-fusion module, or a callable that
    computes in its inputs' dtype when given float64; labels (B,) or (B, T); baselines: None or n tensors
    (d_i,) / (B, d_i).
    """
    if benefit not in BENEFITS:
        raise ValueError(f"oracle: unknown benefit {benefit!r}")
    n = len(features)
    feats = [f.detach().to("cpu", torch.float64) for f in features]
    batch = feats[0].shape[0]
    bases = [None] * n if baselines is None else [b.detach().to("cpu", torch.float64) for b in baselines]
    fills = [_fill(b, f) for b, f in zip(bases, feats)]
    labels = labels.detach().cpu().long()
    model = _Float64Head(head, n)

    count = 1 << n
    per_call = max(1, _ROWS_PER_CALL // max(batch, 1))
    all_scores, all_abs = [], []
    with torch.no_grad():
        for m0 in range(0, count, per_call):
            block = list(range(m0, min(count, m0 + per_call)))
            xs = _coalition_inputs(feats, fills, block)
            scores = model.scores(xs)
            all_scores.append(scores.reshape(len(block), batch, *scores.shape[1:]))
            a = model.abs_scores(xs)
            if a is not None:
                all_abs.append(a.flatten(1).amax(1).reshape(len(block), batch))
    scores = torch.cat(all_scores).movedim(0, 1)  # (B, 2^n, [T,] C)
    num_classes = scores.shape[-1]
    per_segment = labels.dim() == 2
    if scores.dim() != (4 if per_segment else 3):
        raise ValueError(f"oracle: head scores of shape {tuple(scores.shape)} do not fit labels {tuple(labels.shape)}")
    if all_abs:
        scale = torch.cat(all_abs).amax(0)
    else:
        scale = scores.abs().flatten(1).amax(1)
    top_score = scores.flatten(1).amax(1)

    margins = _top_two_margin(scores)
    y = labels.unsqueeze(1).expand(batch, count, *labels.shape[1:])  # (B, 2^n[, T])
    if per_segment:
        margins = margins.amin(-1)
    sizes = torch.tensor([bin(m).count("1") for m in range(count)], dtype=torch.int64)

    if benefit == "probability":
        p = model.prob(scores).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        values = p.mean(-1) if per_segment else p
        phi = _subset_formula_float(values, n)
        phi_exact = None
    else:
        correct = (_first_argmax(scores) == y).long()
        hits = correct.sum(-1) if per_segment else correct  # integers; v = hits / T
        denominator = labels.shape[1] if per_segment else 1
        int_values = hits * sizes if benefit == "paper" else hits
        num = _subset_formula_int(int_values, n)
        den = math.factorial(n) * denominator
        phi_exact = [[Fraction(int(v), den) for v in row] for row in num.tolist()]
        phi = torch.tensor([[float(x) for x in row] for row in phi_exact], dtype=torch.float64).reshape(batch, n)
        values = int_values.double() / denominator
    return OracleResult(
        phi=phi,
        phi_exact=phi_exact,
        values=values,
        margins=margins,
        scale=scale,
        top_score=top_score,
        depth=model.depth,
        decision=model.decision,
        num_classes=num_classes,
        benefit=benefit,
    )


def shapley_from_value_function(v: Callable[[frozenset], Fraction], n: int) -> list[Fraction]:
    """phi by the subset formula for a value function of coalitions (frozensets of indices)."""
    phi = []
    for i in range(n):
        total = Fraction(0)
        for s_mask in range(1 << n):
            if (s_mask >> i) & 1:
                continue
            s = frozenset(j for j in range(n) if (s_mask >> j) & 1)
            weight = Fraction(math.factorial(len(s)) * math.factorial(n - len(s) - 1), math.factorial(n))
            total += weight * (Fraction(v(s | {i})) - Fraction(v(s)))
        phi.append(total)
    return phi


# ---------------------------------------------------------------------------------------------------------
# Test inputs that need nothing from fastshap.


class NonlinearHead:
    """A callable head that no decomposition covers: logits = W2 tanh(W1 [x_0..x_{n-1}] + b1) + b2
    + (x_0 . u) v (a multiplicative interaction between modality 0 and every class).

    It computes in float32, or float64 when given float64 inputs (what the oracle passes), and counts
    its calls and the rows it saw. ``segments`` > 0 makes it return (B, T, C) per-segment logits: segment t
    adds t * s to the logits.
    """

    def __init__(self, dims, num_classes, hidden=8, segments=0, generator=None):
        g = generator
        total = sum(dims)
        self.dims = list(dims)
        self.w1 = torch.randn(hidden, total, generator=g) / math.sqrt(total)
        self.b1 = torch.randn(hidden, generator=g) * 0.1
        self.w2 = torch.randn(num_classes, hidden, generator=g)
        self.b2 = torch.randn(num_classes, generator=g) * 0.1
        self.u = torch.randn(dims[0], generator=g) / math.sqrt(dims[0])
        self.v = torch.randn(num_classes, generator=g) * 0.5
        self.s = torch.randn(num_classes, generator=g) * 0.3
        self.segments = segments
        self.depth = total + hidden + 6
        self.calls = 0
        self.rows = []

    def __call__(self, xs):
        self.calls += 1
        self.rows.append(xs[0].shape[0])
        ct = torch.promote_types(xs[0].dtype, torch.float32)
        x = torch.cat([t.to(ct) for t in xs], dim=-1)
        h = torch.tanh(x @ self.w1.to(ct).t() + self.b1.to(ct))
        out = h @ self.w2.to(ct).t() + self.b2.to(ct)
        out = out + (xs[0].to(ct) @ self.u.to(ct)).unsqueeze(-1) * self.v.to(ct)
        if self.segments:
            t = torch.arange(self.segments, dtype=ct).view(1, -1, 1)
            out = out.unsqueeze(1) + t * self.s.to(ct)
        return out

    def abs_copy(self):
        """A bound on every partial sum's magnitude (tanh is 1-Lipschitz, so the first layer's error
        reaches the logits through |W2|): |W2| (|W1||x| + |b1|) + |b2| + (|x_0|.|u|) |v| (+ T |s|)."""

        def bound(xs):
            x = torch.cat([t.abs().double() for t in xs], dim=-1)
            a1 = x @ self.w1.double().abs().t() + self.b1.double().abs()
            out = a1 @ self.w2.double().abs().t() + self.b2.double().abs()
            out = out + (xs[0].abs().double() @ self.u.double().abs()).unsqueeze(-1) * self.v.double().abs()
            if self.segments:
                out = out.unsqueeze(1) + self.segments * self.s.double().abs()
            return out

        return bound


def dyadic(shape, low, high, denominator, generator=None) -> torch.Tensor:
    """float32 values k / denominator with integer k in [low, high]: sums of a few hundred such products are
    exact in float32 (and in fp16/bf16 when the values are small integers), so ties stay ties in any order."""
    k = torch.randint(low, high + 1, shape, generator=generator)
    return k.float() / denominator
