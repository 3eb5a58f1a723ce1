"""The trainer's re-sampling is the paper's: the plans the trainer's methods and ``fastshap.resampling`` make
from a phi table against an independent statement of the rules (tests/resampling_oracle.py: supp. Eq. 7 and
8, and the authors' released n = 2 code), and a short training run whose valuation and next plan are
recomputed from its model by the released code's closed form.

The documented departures from the released code (docs/faithfulness.md) are asserted as such: the subset Z
and the modality-level copies are drawn without replacement."""

import itertools
import math
import random

import pytest
import resampling_oracle as oracle
import torch

from fastshap_train.engine import Trainer
from fastshap_train.methods.base import Values
from fastshap_train.testing import tiny_config

try:  # the trainer's rules as a public library module (fastshap >= the re-sampling API)
    from fastshap import resampling as library
except ImportError:  # pragma: no cover - only before that module exists
    library = None

needs_library = pytest.mark.skipif(library is None, reason="fastshap.resampling is not in this tree")


# ------------------------------------------------------------------------------------------------------
# helpers


def random_phi(n: int, count: int, seed: int, not_valued: int = 0) -> list:
    """phi rows of `count` samples from random right/wrong patterns of the 2^n - 1 coalitions (valued by
    the oracle's Shapley definition, so every row is a phi the paper benefit can give), then `not_valued`
    NaN rows (samples a valuation skipped)."""
    rng = random.Random(seed)
    subsets = [frozenset(s) for r in range(1, n + 1) for s in itertools.combinations(range(n), r)]
    rows = []
    for _ in range(count):
        right = {s: rng.random() < 0.5 for s in subsets}
        rows.append(oracle.shapley_by_permutations(oracle.paper_benefit(right.__getitem__), n))
    rows += [[math.nan] * n for _ in range(not_valued)]
    return rows


def trainer_for(tmp_path, n: int, samples: int, method: str, **options) -> Trainer:
    """A tiny trainer whose method object makes the plans (nothing is trained here)."""
    cfg = tiny_config(
        tmp_path / method,
        method=method,
        syn_samples=samples,
        syn_modalities=["vector"] * n,
        syn_strength=[1.0] * n,
        syn_dominance=[1.0] * n,
        checkpoint=False,
        save_phi=False,
        **options,
    )
    return Trainer(cfg)


def trainer_rows(plan) -> list:
    """The trainer's Plan (keep bitmasks) as oracle rows (index, kept modalities)."""
    return [(int(i), tuple(m for m in range(plan.n) if int(k) >> m & 1)) for i, k in zip(plan.index, plan.keep)]


def library_rows(plan) -> list:
    """fastshap.resampling's Plan (keep (R, n) bool) as oracle rows."""
    return [(int(i), tuple(int(m) for m in torch.nonzero(k).flatten())) for i, k in zip(plan.index, plan.keep)]


def values_of(rows: list) -> Values:
    return Values(torch.arange(len(rows)), torch.tensor(rows, dtype=torch.float32))


def assert_same_plan(actual: list, expected: list, n_originals: int, n: int) -> None:
    # the originals come first, each once with every modality; the copies as a multiset
    assert actual[:n_originals] == [(i, tuple(range(n))) for i in range(n_originals)]
    assert oracle.normalise(actual) == oracle.normalise(expected)


# ------------------------------------------------------------------------------------------------------
# the oracle agrees with itself (the released closed form is the Shapley value; its thresholds are Eq. 7)


@pytest.mark.parametrize("pattern", range(8))
def test_released_closed_form_is_the_shapley_value(pattern):
    fused, audio, visual = (bool(pattern >> b & 1) for b in range(3))
    right = {frozenset({0, 1}): fused, frozenset({0}): audio, frozenset({1}): visual}
    expected = oracle.shapley_by_permutations(oracle.paper_benefit(right.__getitem__), 2)
    assert list(oracle.authors_contributions(fused, audio, visual)) == expected


@pytest.mark.parametrize("phi", [-0.5, 0.0, 0.5, 1.0, 1.5])
def test_released_thresholds_are_eq7_with_fs_2x(phi):
    assert oracle.authors_copies(phi) == oracle.eq7_copies(phi, 2, "linear", k=2.0, cap=3) == max(0, 2 * (1 - phi))


# ------------------------------------------------------------------------------------------------------
# sample level and fixed rate: same phi, same plan


def test_trainer_sample_level_plan_is_the_released_codes(tmp_path):
    phi = random_phi(2, 60, seed=1)
    assert {v for row in phi for v in row} == {-0.5, 0.0, 0.5, 1.0, 1.5}  # every value the rule distinguishes
    trainer = trainer_for(tmp_path, 2, 60, "sample-level")
    plan = trainer_rows(trainer.method.next_plan(trainer.cfg.warmup, values_of(phi)))
    assert_same_plan(plan, oracle.authors_sample_level_plan(phi), 60, 2)


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("fs", ["linear", "concave", "convex"])
def test_trainer_sample_level_plan_is_eq7(tmp_path, n, fs):
    phi = random_phi(n, 40, seed=10 * n, not_valued=3)
    trainer = trainer_for(tmp_path, n, 43, "sample-level", fs=fs)
    plan = trainer_rows(trainer.method.next_plan(trainer.cfg.warmup, values_of(phi)))
    expected = oracle.sample_level_plan(phi, fs, k=2.0, cap=3)
    assert len(expected) > 43  # the rule added copies
    assert_same_plan(plan, expected, 43, n)


@pytest.mark.parametrize("method,copies", [("fixed-rate-low", 1), ("fixed-rate-high", 3)])
def test_trainer_fixed_rate_plan(tmp_path, method, copies):
    phi = random_phi(3, 30, seed=5, not_valued=2)
    trainer = trainer_for(tmp_path, 3, 32, method)
    plan = trainer_rows(trainer.method.next_plan(trainer.cfg.warmup, values_of(phi)))
    assert_same_plan(plan, oracle.sample_level_plan(phi, fixed=copies), 32, 3)


@needs_library
@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("fs", ["linear", "concave", "convex"])
def test_library_sample_level_plan_is_eq7(n, fs):
    phi = random_phi(n, 40, seed=7 * n, not_valued=2)
    plan = library.sample_level_plan(torch.tensor(phi, dtype=torch.float64), fs)
    assert_same_plan(library_rows(plan), oracle.sample_level_plan(phi, fs, k=2.0, cap=3), 42, n)


@needs_library
def test_library_and_trainer_give_the_same_plan(tmp_path):
    phi = random_phi(2, 50, seed=3, not_valued=1)
    trainer = trainer_for(tmp_path, 2, 51, "sample-level")
    from_trainer = trainer_rows(trainer.method.next_plan(trainer.cfg.warmup, values_of(phi)))
    from_library = library_rows(library.sample_level_plan(torch.tensor(phi)))
    assert from_trainer == from_library  # same rows in the same order
    fixed = library_rows(library.fixed_rate_plan(torch.tensor(phi), 3))
    high = trainer_for(tmp_path, 2, 51, "fixed-rate-high")
    assert trainer_rows(high.method.next_plan(high.cfg.warmup, values_of(phi))) == fixed


@pytest.mark.parametrize("warmup", [1, 3])
def test_first_resampled_epoch_follows_the_released_code(tmp_path, warmup):
    # released code: after epoch e the loader is rebuilt from the values when e >= warmup - 1, so epoch
    # `warmup` is the first to train on copies
    phi = random_phi(2, 20, seed=2)
    trainer = trainer_for(tmp_path, 2, 20, "sample-level", warmup=warmup, epochs=warmup + 2)
    for epoch in range(warmup + 2):
        plan = trainer.method.next_plan(epoch, values_of(phi))
        assert (len(plan) > 20) == (epoch >= warmup - 1), epoch


# ------------------------------------------------------------------------------------------------------
# modality level


@pytest.mark.parametrize("n", [2, 3])
def test_trainer_modality_level_plan_is_eq8(tmp_path, n):
    samples = 80
    trainer = trainer_for(tmp_path, n, samples, "modality-level", part_ratio=0.25, warmup=1)
    subset = trainer.method.valuation_indices(0)
    # Z: 25% of the training set, drawn without replacement (the released code drew with replacement)
    assert len(subset) == 20 and len(set(subset.tolist())) == 20
    assert set(subset.tolist()) <= set(range(samples))
    # phi of Z only: a weak modality clearly below the others, so p is well inside (0, 1)
    rng = random.Random(4)
    phi = [[rng.choice([0.5, 1.0, 1.5]) if m else rng.choice([-0.5, 0.0, 0.5]) for m in range(n)] for _ in subset]
    values = Values(subset, torch.tensor(phi))
    weak, p = oracle.eq8_decision(phi, scale=2.0 / 3.0)
    assert weak == 0 and 0 < p < 1
    if n == 2:  # the released n = 2 rule decides the same from the subset's means
        means = [sum(r[m] for r in phi) / len(phi) for m in range(2)]
        assert oracle.authors_modality_decision(*means) == pytest.approx((weak, p))
    plan = trainer_rows(trainer.method.next_plan(0, values))
    copies = plan[samples:]
    assert plan[:samples] == [(i, tuple(range(n))) for i in range(samples)]
    assert len(copies) == oracle.copies_of_modality_level(p, samples) > 0
    assert all(kept == (weak,) for _, kept in copies)
    drawn = [i for i, _ in copies]
    assert len(set(drawn)) == len(drawn)  # without replacement while p <= 1 (the released code: with)
    # the same seed and epoch give the same plan; another epoch draws other samples
    again = trainer_for(tmp_path / "again", n, samples, "modality-level", part_ratio=0.25, warmup=1)
    assert torch.equal(again.method.valuation_indices(0), subset)
    assert trainer_rows(again.method.next_plan(0, values)) == plan
    assert sorted(drawn) != sorted(i for i, _ in trainer_rows(again.method.next_plan(1, values))[samples:])


def test_modality_level_tie_adds_nothing(tmp_path):
    # the released code keeps visual on a tie of the gaps, ours the first modality: either way p = 0
    trainer = trainer_for(tmp_path, 2, 30, "modality-level", warmup=1)
    subset = trainer.method.valuation_indices(0)
    phi = torch.tensor([[1.0, 1.0], [0.5, 0.5], [1.5, 1.5]]).repeat(len(subset), 1)[: len(subset)]
    assert oracle.authors_modality_decision(float(phi[:, 0].mean()), float(phi[:, 1].mean()))[1] == 0
    assert len(trainer.method.next_plan(0, Values(subset, phi))) == 30


@needs_library
def test_library_and_trainer_modality_level_agree(tmp_path):
    samples, epoch = 60, 2
    trainer = trainer_for(tmp_path, 2, samples, "modality-level", warmup=1)
    subset = trainer.method.valuation_indices(epoch)
    phi = torch.tensor([[0.0, 1.5], [0.5, 1.0], [-0.5, 1.5], [1.0, 1.0]]).repeat(samples, 1)[: len(subset)]
    from_trainer = trainer_rows(trainer.method.next_plan(epoch, Values(subset, phi)))
    generator = trainer.generator("modality-level-draw", epoch)  # the trainer's draw for this epoch
    from_library = library_rows(library.modality_level_plan(phi, samples, generator=generator))
    assert from_trainer == from_library
    assert len(from_trainer) > samples
    z = library.draw_subset(samples, 0.2, trainer.generator("modality-level-subset", epoch))
    assert torch.equal(z, subset)


# ------------------------------------------------------------------------------------------------------
# end to end: the trainer's own valuation and next plan, recomputed from its model


def _recompute_phi(trainer) -> list:
    """phi of every training sample from the trainer's final model, by the released code's recipe: eval
    mode, encoders once, each coalition's prediction from the head with the other features zeroed, the
    benefit |S| 1[right], Shapley by its definition (n = 2 also by the released closed form)."""
    core, n = trainer.core, trainer.n
    core.eval()
    rows = []
    with torch.no_grad():
        for i in range(len(trainer.train_set)):
            item = trainer.value_set[i]
            feats = core.encode({m: item[m].unsqueeze(0) for m in trainer.modalities})
            label = int(item["label"])

            def right(s, feats=feats, label=label):
                kept = [f if m in s else torch.zeros_like(f) for m, f in enumerate(feats)]
                return int(core.head(kept).argmax(-1)) == label

            phi = oracle.shapley_by_permutations(oracle.paper_benefit(right), n)
            if n == 2:
                assert list(oracle.authors_contributions(right({0, 1}), right({0}), right({1}))) == phi
            rows.append(phi)
    return rows


@pytest.mark.parametrize("n", [2, 3])
def test_training_run_values_and_resamples_as_the_paper(tmp_path, n):
    cfg = tiny_config(
        tmp_path,
        method="sample-level",
        epochs=3,
        warmup=1,
        syn_samples=48,
        syn_modalities=["vector"] * n,
        syn_strength=[1.5] + [0.6] * (n - 1),
        syn_dominance=[0.6] + [0.4 / (n - 1)] * (n - 1),
        checkpoint=False,
    )
    trainer = Trainer(cfg)
    try:
        trainer.fit()
        phi = _recompute_phi(trainer)
        # the trainer's valuation after the last epoch (float32: n = 3 gives multiples of 1/6)
        assert trainer.last_phi.tolist() == [pytest.approx(row, abs=1e-6) for row in phi]
        expected = oracle.authors_sample_level_plan(phi) if n == 2 else oracle.sample_level_plan(phi)
        assert len(expected) > 48
        assert_same_plan(trainer_rows(trainer.plan), expected, 48, n)  # the plan it would train next
    finally:
        trainer.close()
