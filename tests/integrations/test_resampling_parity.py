"""fastshap.resampling reproduces the trainer's re-sampling rules exactly: the same counts (rounding, cap),
the same draws from the same generator state, the same order of copies.

The ``_frozen_*`` functions are the trainer's rule functions as they were before they became calls into
fastshap.resampling (fastshap_train/methods/resampling.py at commit 0f3b1a3, string f_s resolution left
out): a fixed reference, so that a change to the rules anywhere shows up here as a difference.
"""

import math

import pytest
import torch

from fastshap import resampling as lib
from fastshap_train.data.base import Plan as TrainerPlan
from fastshap_train.methods import resampling as trainer


def _frozen_copy_counts(phi, fs="linear", scale=2.0, cap=3):
    n = phi.shape[1]
    x = 1.0 - phi.double()
    x_max = (n + 1) / 2
    if callable(fs):
        raw = torch.as_tensor(fs(x), dtype=torch.float64)
    else:
        t = (x / x_max).clamp_min(0)
        g = {"linear": t, "concave": t.sqrt(), "convex": t * t}[fs]
        raw = scale * x_max * g
    counts = torch.floor(raw + 0.5)
    weak = phi < 1
    counts = torch.where(weak, counts.clamp_min(0), torch.zeros_like(counts))
    if cap is not None:
        counts = counts.clamp_max(cap)
    return counts.long()


def _frozen_plan_with_copies(plan, index, counts):
    for i in range(counts.shape[1]):
        rows = torch.repeat_interleave(index, counts[:, i])
        if rows.numel():
            plan = plan.add_copies(rows, 1 << i)
    return plan


def _frozen_normaliser_scale(norm, n):
    if norm == "authors":
        return 2.0 / 3.0
    if norm == "range":
        return 1.0 / n
    return float(norm)


def _frozen_f_m(x, kind, alpha):
    if kind == "linear":
        return alpha * x
    if kind == "tanh":
        return math.tanh(alpha * x)
    if kind == "power":
        return alpha * x**1.5
    raise ValueError(kind)


def _frozen_modality_level_rule(phi, norm="authors", fm="linear", alpha=1.0):
    mean = torch.nanmean(phi.double(), 0)
    n = phi.shape[1]
    weak = int(torch.argmin(mean))
    d = float((mean.sum() - n * mean[weak]) / (n - 1)) if n > 1 else 0.0
    x = min(1.0, max(0.0, _frozen_normaliser_scale(norm, n) * d))
    return {"weak": weak, "mean": mean, "d": d, "x": x, "p": _frozen_f_m(x, fm, alpha)}


def _frozen_draw_uniform(pool, count, generator):
    parts, left = [], count
    while left > 0:
        take = min(left, len(pool))
        parts.append(pool[torch.randperm(len(pool), generator=generator)[:take]])
        left -= take
    return torch.cat(parts) if parts else pool[:0]


def _random_phi(g, rows, n, nan_share=0.1):
    """Values of the paper benefit: multiples of 1/n! in [-(n-1)/2, (n+1)/2], some rows NaN (not valued)."""
    steps = math.factorial(n)
    low, high = -(n - 1) / 2, (n + 1) / 2
    k = torch.randint(int(low * steps), int(high * steps) + 1, (rows, n), generator=g)
    phi = (k.double() / steps).float()
    phi[torch.rand(rows, generator=g) < nan_share] = math.nan
    return phi


def _as_bits(plan: lib.Plan) -> tuple:
    """(index, keep bitmask) of a library plan, the trainer's layout."""
    bits = (plan.keep.long() << torch.arange(plan.num_modalities)).sum(1)
    return plan.index, bits


CASES = [(seed, n) for seed in range(4) for n in (1, 2, 3, 5)]


@pytest.mark.parametrize("seed,n", CASES)
@pytest.mark.parametrize("fs", ["linear", "concave", "convex", "callable"])
@pytest.mark.parametrize("cap", [3, 1, None])
def test_sample_level_counts_and_plans_match_the_trainer(seed, n, fs, cap):
    g = torch.Generator().manual_seed(seed)
    phi = _random_phi(g, 97, n)
    rule = (lambda x: 1.7 * x.clamp_min(0) ** 1.2) if fs == "callable" else fs
    scale = 1.0 + seed / 4
    frozen = _frozen_copy_counts(phi, rule, scale, cap)
    assert torch.equal(lib.copy_counts(phi, rule, scale, cap), frozen)
    assert torch.equal(trainer.copy_counts(phi, rule, scale, cap), frozen)
    # plans: the trainer's over its training indices (a subset of the dataset, in its order), and the library's
    # over the whole set (phi in dataset order), which are the same rows when the indices are 0..N-1
    index = torch.randperm(200, generator=g)[:97]
    expected = _frozen_plan_with_copies(TrainerPlan.originals(index, n), index, frozen)
    got = trainer.plan_with_copies(TrainerPlan.originals(index, n), index, frozen)
    assert torch.equal(got.index, expected.index) and torch.equal(got.keep, expected.keep)
    whole = _frozen_plan_with_copies(TrainerPlan.originals(torch.arange(97), n), torch.arange(97), frozen)
    plan = lib.sample_level_plan(phi, rule, scale=scale, cap=cap)
    index, bits = _as_bits(plan)
    assert torch.equal(index, whole.index) and torch.equal(bits, whole.keep)
    if n > 1:  # with one modality every row keeps it alone, the originals too
        assert plan.copies_per_modality() == frozen.sum(0).tolist()


@pytest.mark.parametrize("seed,n", CASES)
@pytest.mark.parametrize("copies", [1, 3])
def test_fixed_rate_matches_the_trainer(seed, n, copies):
    g = torch.Generator().manual_seed(100 + seed)
    phi = _random_phi(g, 61, n)
    frozen = torch.where(phi < 1, torch.full_like(phi, copies), torch.zeros_like(phi)).long()
    assert torch.equal(lib.fixed_counts(phi, copies), frozen)
    whole = _frozen_plan_with_copies(TrainerPlan.originals(torch.arange(61), n), torch.arange(61), frozen)
    index, bits = _as_bits(lib.fixed_rate_plan(phi, copies))
    assert torch.equal(index, whole.index) and torch.equal(bits, whole.keep)


@pytest.mark.parametrize("seed,n", CASES)
@pytest.mark.parametrize("norm", ["authors", "range", "0.4"])
@pytest.mark.parametrize("fm,alpha", [("linear", 1.0), ("tanh", 2.0), ("power", 3.0)])
def test_modality_level_rule_draws_and_plan_match_the_trainer(seed, n, norm, fm, alpha):
    g = torch.Generator().manual_seed(200 + seed)
    pool_size = 83
    phi = _random_phi(g, pool_size, n, nan_share=0.0)
    # the subset Z, drawn as the trainer draws it (ModalityLevel.valuation_indices)
    ratio = 0.2 + seed / 10
    g_trainer, g_lib = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    size = max(1, int(round(ratio * pool_size)))
    z = torch.arange(pool_size)[torch.randperm(pool_size, generator=g_trainer)[:size]]
    assert torch.equal(lib.draw_subset(pool_size, ratio, g_lib), z)
    frozen = _frozen_modality_level_rule(phi[z], norm, fm, alpha)
    for rule in (
        lib.modality_level_rule(phi[z], norm, fm, alpha)._asdict(),
        trainer.modality_level_rule(phi[z], norm, fm, alpha),
    ):
        assert rule["weak"] == frozen["weak"] and torch.equal(rule["mean"], frozen["mean"])
        assert (rule["d"], rule["x"], rule["p"]) == (frozen["d"], frozen["x"], frozen["p"])
    # the copies: int(p N) samples drawn from the same generator state, keeping the weak modality
    count = int(frozen["p"] * pool_size)
    expected = _frozen_draw_uniform(torch.arange(pool_size), count, torch.Generator().manual_seed(seed + 7))
    assert torch.equal(
        trainer.draw_uniform(torch.arange(pool_size), count, torch.Generator().manual_seed(seed + 7)), expected
    )
    plan = lib.modality_level_plan(
        phi[z], pool_size, norm=norm, fm=fm, alpha=alpha, generator=torch.Generator().manual_seed(seed + 7)
    )
    assert torch.equal(plan.index, torch.cat([torch.arange(pool_size), expected]))
    if n > 1:
        assert plan.copies_per_modality() == [count if i == frozen["weak"] else 0 for i in range(n)]
    assert torch.equal(plan.keep[:pool_size], torch.ones(pool_size, n, dtype=torch.bool))


@pytest.mark.parametrize("count", [0, 5, 20, 47])
def test_draw_uniform_matches_past_the_pool(count):
    pool = torch.arange(3, 23)
    expected = _frozen_draw_uniform(pool, count, torch.Generator().manual_seed(count))
    assert torch.equal(lib.draw_uniform(pool, count, torch.Generator().manual_seed(count)), expected)
    assert torch.equal(trainer.draw_uniform(pool, count, torch.Generator().manual_seed(count)), expected)
