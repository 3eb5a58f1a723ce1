"""An independent statement of the paper's re-sampling rules, for tests/training/test_faithful.py.

Written from the paper's supplement (Eq. 7 and 8), SPEC.md sections 1.3 to 1.5 and the authors' released
n = 2 code (GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation: ``execute_modulation`` in
``code/sample_level.py`` and ``code/modality_level.py``, the dataset classes in
``code/datasets/dataloader.py``), read as a specification. It imports neither ``fastshap`` nor
``fastshap_train`` and shares no code with them: plain Python over lists, one sample at a time, with the
authors' interval thresholds where they state them.

A plan is a list of rows ``(index, kept)``: ``kept`` a tuple of the modality numbers the row keeps. The
originals come first, each keeping every modality; then the copies, each keeping one modality.
"""

from __future__ import annotations

import itertools
import math

# ------------------------------------------------------------------------------------------------------
# valuation


def authors_contributions(fused_correct: bool, audio_correct: bool, visual_correct: bool) -> tuple:
    """The released code's closed form for n = 2 (audio, visual): v(all) = 2 if the fused prediction is
    right, v(one) = 1 if that modality alone (the other's features zeroed) is right; contribution of
    audio = (v(a) + v(all) - v(v)) / 2 and of visual = (v(v) + v(all) - v(a)) / 2."""
    v_all = 2.0 if fused_correct else 0.0
    v_a = 1.0 if audio_correct else 0.0
    v_v = 1.0 if visual_correct else 0.0
    return (v_a + v_all - v_v) / 2.0, (v_v + v_all - v_a) / 2.0


def shapley_by_permutations(value, n: int) -> list:
    """Shapley values by their definition: the mean over all n! orders of each player's marginal
    contribution v(before + i) - v(before). `value` maps a frozenset of players to a number."""
    totals = [0.0] * n
    orders = list(itertools.permutations(range(n)))
    for order in orders:
        before = frozenset()
        for player in order:
            totals[player] += value(before | {player}) - value(before)
            before = before | {player}
    return [t / len(orders) for t in totals]


def paper_benefit(correct_of) -> callable:
    """v(S) = |S| if the prediction with only S present is right, else 0 (v(empty) = 0)."""
    return lambda s: float(len(s)) if s and correct_of(s) else 0.0


# ------------------------------------------------------------------------------------------------------
# sample level (supp. Eq. 7)


def authors_copies(contribution: float) -> int:
    """Copies of one (sample, modality) in the released n = 2 code: the intervals of
    ``AV_KS_Dataset_sample_level`` (0.4 < c < 0.9 -> 1, -0.1 < c < 0.4 -> 2, c < -0.1 -> 3, else 0)."""
    if 0.4 < contribution < 0.9:
        return 1
    if -0.1 < contribution < 0.4:
        return 2
    if contribution < -0.1:
        return 3
    return 0


def authors_sample_level_plan(contributions: list) -> list:
    """The released code's training list for n = 2: every original, then per sample in order its audio
    copies (keeping audio, modality 0) and its visual copies (keeping visual, modality 1)."""
    rows = [(i, (0, 1)) for i in range(len(contributions))]
    for i, (c_a, c_v) in enumerate(contributions):
        rows += [(i, (0,))] * authors_copies(c_a)
        rows += [(i, (1,))] * authors_copies(c_v)
    return rows


def eq7_copies(phi: float, n: int, fs: str = "linear", k: float = 2.0, cap: int | None = 3) -> int:
    """s = f_s(1 - phi) if phi < 1 else 0, for any n, with the f_s the project documents: with x = 1 - phi
    and x_max = (n + 1) / 2 (phi's lowest value is -(n - 1) / 2), linear k x, concave k x_max sqrt(x /
    x_max), convex k x_max (x / x_max)^2; rounded half up, then capped. NaN (not valued): none."""
    if math.isnan(phi) or not phi < 1:
        return 0
    x = 1.0 - phi
    x_max = (n + 1) / 2.0
    if fs == "linear":
        raw = k * x
    elif fs == "concave":
        raw = k * x_max * math.sqrt(x / x_max)
    elif fs == "convex":
        raw = k * x_max * (x / x_max) ** 2
    else:
        raise ValueError(fs)
    copies = max(0, math.floor(raw + 0.5))
    return copies if cap is None else min(copies, cap)


def sample_level_plan(phi_rows: list, fs: str = "linear", k: float = 2.0, cap: int | None = 3, fixed=None) -> list:
    """Originals, then copies keeping one modality: Eq. 7 per (sample, modality), or with `fixed` a fixed
    number of copies for every modality with phi < 1 (the supplement's Table 6 fixed-rate variants)."""
    n = len(phi_rows[0]) if phi_rows else 0
    rows = [(i, tuple(range(n))) for i in range(len(phi_rows))]
    for i, phi in enumerate(phi_rows):
        for m, value in enumerate(phi):
            if fixed is None:
                copies = eq7_copies(value, n, fs, k, cap)
            else:
                copies = fixed if (not math.isnan(value) and value < 1) else 0
            rows += [(i, (m,))] * copies
    return rows


# ------------------------------------------------------------------------------------------------------
# modality level (supp. Eq. 8)


def authors_modality_decision(mean_audio: float, mean_visual: float, alpha: float = 1.0) -> tuple:
    """The released n = 2 rule from the subset's mean contributions: gap = 1 - mean; the modality kept
    by the copies is audio (0) if gap_a > gap_v else visual (1); p = |gap_a - gap_v| / 3 * 2 * alpha."""
    gap_a, gap_v = 1.0 - mean_audio, 1.0 - mean_visual
    weak = 0 if gap_a > gap_v else 1
    return weak, abs(gap_a - gap_v) / 3 * 2 * alpha


def eq8_decision(phi_rows: list, scale: float = 2.0 / 3.0, fm: str = "linear", alpha: float = 1.0) -> tuple:
    """Eq. 8 for any n on the subset's phi rows (NaN rows skipped): i = the modality of lowest mean phi
    (the first such), d = (1 / (n - 1)) sum_{j != i} (mean_j - mean_i), x = Norm(d) = scale * d clipped
    to [0, 1], p = f_m(x). Returns (i, p)."""
    valued = [row for row in phi_rows if not any(math.isnan(v) for v in row)]
    n = len(phi_rows[0])
    means = [sum(row[m] for row in valued) / len(valued) for m in range(n)]
    weak = min(range(n), key=lambda m: (means[m], m))
    d = sum(means[j] - means[weak] for j in range(n) if j != weak) / (n - 1)
    x = min(1.0, max(0.0, scale * d))
    p = {"linear": alpha * x, "tanh": math.tanh(alpha * x), "power": alpha * x**1.5}[fm]
    return weak, p


def copies_of_modality_level(p: float, num_samples: int) -> int:
    """int(p * N) extra samples (the released code's ``resample_num``)."""
    return int(p * num_samples)


def normalise(rows) -> list:
    """A plan's rows in a canonical order (for comparing plans as multisets)."""
    return sorted((int(i), tuple(int(m) for m in kept)) for i, kept in rows)
