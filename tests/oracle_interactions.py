"""An independent oracle for the pairwise Shapley interaction index. Shares no code with fastshap.

The coalition values come from tests/oracle.py (the head evaluated as a float64 black box on every
coalition); this module adds, by the definitions and in exact rational arithmetic:

* I_ij (Grabisch and Roubens 1999), i != j: the sum over S in N minus {i, j} of
  |S|! (n - |S| - 2)! / (n - 1)! * (v(S + i + j) - v(S + i) - v(S + j) + v(S));
* a second, unrelated formula through the Moebius transform m of v (used to check the first):
  I_ij = sum over T containing i and j of m(T) / (|T| - 1), with m(T) = sum over S in T of (-1)^{|T - S|} v(S).

Coalitions are bitmasks: bit i set when modality i is present.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from oracle import OracleResult, oracle_shapley


def _members(mask: int, n: int) -> list[int]:
    return [i for i in range(n) if (mask >> i) & 1]


def interaction_by_subsets(v: Sequence, n: int, i: int, j: int) -> Fraction:
    """I_ij of the game v (a sequence of 2^n numbers, index = coalition mask) by the subset formula."""
    total = Fraction(0)
    both = (1 << i) | (1 << j)
    for s_mask in range(1 << n):
        if s_mask & both:
            continue
        s = len(_members(s_mask, n))
        weight = Fraction(math.factorial(s) * math.factorial(n - s - 2), math.factorial(n - 1))
        delta = (
            Fraction(v[s_mask | both])
            - Fraction(v[s_mask | (1 << i)])
            - Fraction(v[s_mask | (1 << j)])
            + Fraction(v[s_mask])
        )
        total += weight * delta
    return total


def moebius(v: Sequence, n: int) -> list[Fraction]:
    """The Moebius transform m(T) = sum over S subset of T of (-1)^{|T| - |S|} v(S), by enumeration."""
    out = []
    for t_mask in range(1 << n):
        total = Fraction(0)
        s_mask = t_mask
        while True:  # every subset of t_mask
            sign = -1 if (bin(t_mask).count("1") - bin(s_mask).count("1")) % 2 else 1
            total += sign * Fraction(v[s_mask])
            if s_mask == 0:
                break
            s_mask = (s_mask - 1) & t_mask
        out.append(total)
    return out


def interaction_by_moebius(v: Sequence, n: int, i: int, j: int) -> Fraction:
    m = moebius(v, n)
    both = (1 << i) | (1 << j)
    return sum((m[t] / (bin(t).count("1") - 1) for t in range(1 << n) if t & both == both), Fraction(0))


def shapley_by_permutations(v: Sequence, n: int, i: int) -> Fraction:
    """phi_i as the average marginal contribution over all n! orders (small n only)."""
    from itertools import permutations

    total, count = Fraction(0), 0
    for order in permutations(range(n)):
        before = 0
        for k in order:
            if k == i:
                total += Fraction(v[before | (1 << i)]) - Fraction(v[before])
                break
            before |= 1 << k
        count += 1
    return total / count


@dataclass
class InteractionOracle:
    """interactions: (B, n, n) float64, I_ij off the diagonal and phi_i on it, each the correctly rounded
    float64 of its exact value (discrete benefits) or a float64 sum ("probability"); exact: the (B x n x n)
    Fractions (discrete benefits) or None; shapley: the OracleResult the values came from (its values,
    margins and decided() say which samples a float32 computation must match)."""

    interactions: torch.Tensor
    exact: list | None
    shapley: OracleResult


def _exact_values(result: OracleResult, denominator: int) -> list[list[Fraction]]:
    """The oracle's discrete coalition values as Fractions: integers (per-segment: k / T) held in float64."""
    return [[Fraction(x).limit_denominator(denominator) for x in row] for row in result.values.tolist()]


def oracle_interactions(
    features: Sequence[torch.Tensor],
    head,
    labels: torch.Tensor,
    baselines: Sequence[torch.Tensor] | None = None,
    benefit: str = "paper",
) -> InteractionOracle:
    """Brute-force interactions of each sample's modalities (arguments: those of oracle.oracle_shapley)."""
    result = oracle_shapley(features, head, labels, baselines, benefit)
    n, batch = len(features), result.values.shape[0]
    out = torch.zeros(batch, n, n, dtype=torch.float64)
    if benefit == "probability":
        values = result.values.tolist()
        for b in range(batch):
            for i in range(n):
                out[b, i, i] = result.phi[b, i]
                for j in range(i + 1, n):
                    # exact arithmetic on the float64 probabilities, rounded once
                    out[b, i, j] = out[b, j, i] = float(interaction_by_subsets(values[b], n, i, j))
        return InteractionOracle(out, None, result)
    denominator = labels.shape[1] if labels.dim() == 2 else 1
    values = _exact_values(result, denominator)
    exact = []
    for b in range(batch):
        rows = [[Fraction(0)] * n for _ in range(n)]
        for i in range(n):
            rows[i][i] = result.phi_exact[b][i]
            for j in range(i + 1, n):
                rows[i][j] = rows[j][i] = interaction_by_subsets(values[b], n, i, j)
        exact.append(rows)
    out = torch.tensor([[[float(x) for x in row] for row in rows] for rows in exact], dtype=torch.float64)
    return InteractionOracle(out.reshape(batch, n, n), exact, result)
