"""The paper's re-sampling methods (sample-level and modality-level) and the fixed-rate variants (supp. Table 6).

All of them train on the original data for the warmup epochs; after every epoch the trainer values the
samples the method asks for, and from the end of epoch ``warmup - 1`` on the next epoch's plan is the
originals plus copies ``(index, keep = one modality)``; the model removes the other modalities.

sample-level: copies of sample x keeping modality i = ``f_s(1 - phi_i)`` if ``phi_i < 1`` else 0. With
    ``x = 1 - phi`` and ``x_max = (n + 1) / 2`` (its largest value) the built-in rules are
    ``k * x_max * g(x / x_max)`` rounded half up and capped at ``--max-copies``, with ``g(t) = t``
    (``linear``: ``k * x``, the authors' rule for n = 2: phi 0.5 / 0 / -0.5 -> 1 / 2 / 3 copies),
    ``sqrt(t)`` (``concave``: more copies for mildly weak modalities) and ``t ** 2`` (``convex``: copies
    concentrated on the weakest). All three agree at x = 0 and x = x_max. ``--fs module:function`` takes a
    callable ``f(x: Tensor) -> Tensor`` of copy counts before rounding and the cap.
modality-level: value a random subset Z (``--part-ratio`` of the training set, drawn without
    replacement; only Z is valued); the weak modality i is the argmin of the mean phi over Z;
    ``d = mean_{j != i} (mean phi_j - mean phi_i)``; ``p = f_m(clip(Norm(d), 0, 1))``; ``int(p * N)``
    samples drawn uniformly (without replacement while p <= 1) are added keeping modality i only.
    ``Norm(d) = scale * d``: ``--norm authors`` (scale 2/3: the authors' n = 2 rule |gap_a - gap_v| * 2/3),
    ``range`` (scale 1/n: the width of the phi range is n), or a number. f_m: ``linear`` alpha x,
    ``tanh`` tanh(alpha x), ``power`` alpha x^1.5.
fixed-rate-low / -high: every modality with phi < 1 gets a fixed number of copies (1 / 3) whatever its
    value. The ``resampled_dynamic`` column gives what the sample-level linear rule would have added, and
    ``resampled_vs_dynamic`` the fixed rule's copies over that (the comparison of supp. Table 6).

The columns ``copies_<modality>``, ``resampled_dynamic`` and ``resampled_vs_dynamic`` of epoch e's row
describe the plan made after epoch e, which epoch e + 1 trains: its ``resampled`` column is their total.
"""

from __future__ import annotations

import functools
import importlib
import math
import warnings
from collections.abc import Callable

import torch

from fastshap import resampling as rules
from fastshap_train.data.base import Plan
from fastshap_train.methods.base import Method
from fastshap_train.registry import Option, register_method, register_options

FS_BUILTIN = rules.FS_RULES
FM_CHOICES = rules.FM_RULES


def _check_fs(value):
    if value in FS_BUILTIN:
        return None
    if not (":" in value and all(value.split(":", 1))):
        return f"must be one of {', '.join(FS_BUILTIN)} or module:function"
    try:  # resolved with the configuration: a wrong name stops the run before it starts, not after an epoch
        load_callable(value)
    except ValueError as exc:
        return str(exc)
    return None


def _check_norm(value):
    if value in ("authors", "range"):
        return None
    try:
        return None if float(value) > 0 else "must be authors, range or a positive number"
    except ValueError:
        return "must be authors, range or a positive number"


register_options(
    "resampling",
    [
        Option(
            "warmup",
            5,
            "epochs of plain training before the first re-sampled epoch",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
        Option(
            "fs",
            "linear",
            "sample-level f_s: linear (the authors' 2x), concave, convex, or module:function",
            check=_check_fs,
        ),
        Option(
            "fs_scale",
            2.0,
            "k of f_s: copies = round(k * x_max * g((1 - phi) / x_max))",
            check=lambda x: None if x > 0 else "must be > 0",
        ),
        Option(
            "max_copies",
            3,
            "cap on the copies of one sample and modality (the authors' n = 2 maximum is 3)",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
        Option(
            "part_ratio",
            0.2,
            "modality-level: share Z of the training set that is valued",
            check=lambda x: None if 0 < x <= 1 else "must be in (0, 1]",
        ),
        Option(
            "fm", "linear", "modality-level f_m: linear alpha*x, tanh(alpha*x), power alpha*x^1.5", choices=FM_CHOICES
        ),
        Option("fm_alpha", 1.0, "alpha of f_m", check=lambda x: None if x > 0 else "must be > 0"),
        Option(
            "norm",
            "authors",
            "modality-level normaliser of d: authors (2/3 d), range (d / n) or a scale",
            check=_check_norm,
        ),
        Option(
            "fixed_low_copies",
            1,
            "fixed-rate-low: copies per modality with phi < 1",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
        Option(
            "fixed_high_copies",
            3,
            "fixed-rate-high: copies per modality with phi < 1",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
    ],
    title="re-sampling methods (sample-level, modality-level, fixed-rate-*, modality-drop, data-mask)",
)


# ------------------------------------------------------------------------------------------------------
# the rules: fastshap.resampling's (one implementation for the trainer and users' own loops), with the
# trainer's option forms (f_s as module:function) and its Plan (keep as a bitmask, data-mask column)


@functools.cache
def load_callable(spec: str) -> Callable:
    """The callable named by ``module:function`` (imported once; ValueError saying what is not found)."""
    module, _, name = spec.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            raise ValueError(f"cannot be loaded: no module named {exc.name!r} (is it on the Python path?)") from None
        raise ValueError(f"cannot be loaded: importing module {module!r} failed: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything while it is imported
        raise ValueError(f"cannot be loaded: importing module {module!r} failed: {type(exc).__name__}: {exc}") from None
    if not hasattr(mod, name):
        raise ValueError(f"cannot be loaded: module {module!r} has no function {name!r}")
    fn = getattr(mod, name)
    if not callable(fn):
        raise ValueError(f"is not callable: {module}.{name} is a {type(fn).__name__}")
    return fn


def copy_counts(phi: torch.Tensor, fs="linear", scale: float = 2.0, cap: int | None = 3) -> torch.Tensor:
    """phi (K, n) -> extra copies (K, n) int64 keeping each modality; 0 where phi >= 1 (or NaN).
    :func:`fastshap.resampling.copy_counts`, with f_s also a ``module:function`` name."""
    if isinstance(fs, str) and fs not in FS_BUILTIN:
        if ":" not in fs:
            raise ValueError(f"unknown f_s {fs!r}; choose {', '.join(FS_BUILTIN)} or module:function")
        try:
            fs = load_callable(fs)
        except ValueError as exc:
            raise ValueError(f"f_s {fs!r} {exc}") from None
    return rules.copy_counts(phi, fs, scale, cap)


def plan_with_copies(plan: Plan, index: torch.Tensor, counts: torch.Tensor) -> Plan:
    """Append counts[j, i] copies of sample index[j] keeping modality i only (in
    :func:`fastshap.resampling.copy_rows` order: modality by modality, samples in the order of `index`)."""
    rows, modality = rules.copy_rows(counts, index)
    return plan.add_copies(rows, torch.ones_like(modality) << modality) if rows.numel() else plan


def normaliser_scale(norm: str, n: int) -> float:
    return rules.normaliser_scale(norm, n)


def f_m(x: float, kind: str, alpha: float) -> float:
    return rules.f_m(x, kind, alpha)


def modality_level_rule(phi: torch.Tensor, norm: str = "authors", fm: str = "linear", alpha: float = 1.0) -> dict:
    """phi (|Z|, n) -> {weak, mean (n,), d, x = clip(Norm(d)), p}: :func:`fastshap.resampling.modality_level_rule`."""
    return rules.modality_level_rule(phi, norm, fm, alpha)._asdict()


def draw_uniform(pool: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` elements of `pool` drawn uniformly; without replacement up to len(pool), then again."""
    return rules.draw_uniform(pool, count, generator)


# ------------------------------------------------------------------------------------------------------
# the methods


class _Resampling(Method):
    head = "concat"
    needs_valuation = True

    @classmethod
    def check_config(cls, cfg):
        # "weak" is phi below a fair share of v(N) = n, and the copy and modality-level rules are scaled to
        # phi's range [-(n-1)/2, (n+1)/2]: all on the paper benefit's scale. Under 1[correct] every phi is at
        # most 1, so nearly every modality of every sample would count as weak (the defect of BalanceMM's sample
        # trainer).
        if cfg["benefit"] != "paper":
            return (
                f"re-samples by thresholds on the paper benefit's scale (phi < 1, its range up to (n+1)/2), "
                f"which --benefit {cfg['benefit']} does not share; use --benefit paper"
            )
        return super().check_config(cfg)

    def setup(self):
        # The plan made after epoch max(warmup, 1) - 1 is the first re-sampled one; it trains that epoch + 1.
        if self.cfg.epochs <= max(self.cfg.warmup, 1) and self.trainer.dist.is_main:
            first = max(self.cfg.warmup, 1)
            warnings.warn(
                f"{self.name} never re-samples in {self.cfg.epochs} epoch(s): its first re-sampled epoch is epoch "
                f"{first} (--warmup {self.cfg.warmup}), so it trains on the original data only; raise --epochs "
                "or lower --warmup",
                stacklevel=2,
            )

    def resampling_epoch(self, epoch: int) -> bool:
        """Whether the values after `epoch` rebuild the plan of epoch + 1 (warmup is over)."""
        return epoch + 1 >= self.cfg.warmup


@register_method("sample-level")
class SampleLevel(_Resampling):
    help = "the paper's sample-level re-sampling: f_s(1 - phi_i) copies keeping only modality i"

    def __init__(self, cfg, trainer):
        super().__init__(cfg, trainer)
        self.fs = load_callable(cfg.fs) if ":" in cfg.fs else cfg.fs
        self._metrics = {}

    def counts(self, phi):
        return copy_counts(phi, self.fs, self.cfg.fs_scale, self.cfg.max_copies)

    def next_plan(self, epoch, values):
        plan = self.first_plan()
        self._metrics = {}
        if values is None or not self.resampling_epoch(epoch):
            return plan
        counts = self.counts(values.phi)
        for i in range(self.n):
            self._metrics[f"copies_{self.trainer.modality_names[i]}"] = int(counts[:, i].sum())
        return plan_with_copies(plan, values.index, counts)

    def epoch_metrics(self):
        return dict(self._metrics)


@register_method("fixed-rate-low")
class FixedRateLow(SampleLevel):
    help = "fixed-rate re-sampling: --fixed-low-copies (1) copies of every modality with phi < 1"
    option = "fixed_low_copies"

    def counts(self, phi):
        counts = rules.fixed_counts(phi, int(self.cfg[self.option]))
        dynamic = copy_counts(phi, "linear", 2.0, self.cfg.max_copies)
        self._dynamic = (int(counts.sum()), int(dynamic.sum()))
        return counts

    def next_plan(self, epoch, values):
        self._dynamic = None
        plan = super().next_plan(epoch, values)
        if self._dynamic is not None:
            fixed, dynamic = self._dynamic
            self._metrics["resampled_dynamic"] = dynamic
            self._metrics["resampled_vs_dynamic"] = fixed / dynamic if dynamic else math.nan
        return plan


@register_method("fixed-rate-high")
class FixedRateHigh(FixedRateLow):
    help = "fixed-rate re-sampling: --fixed-high-copies (3) copies of every modality with phi < 1"
    option = "fixed_high_copies"


@register_method("modality-level")
class ModalityLevel(_Resampling):
    help = "the paper's modality-level re-sampling: value a subset Z, add int(p N) copies of the weak modality"

    def __init__(self, cfg, trainer):
        super().__init__(cfg, trainer)
        self._metrics = {}
        self.last_subset = None

    def subset_size(self) -> int:
        return max(1, int(round(self.cfg.part_ratio * len(self.trainer.train_indices))))

    def valuation_indices(self, epoch):
        pool = self.trainer.train_indices
        g = self.trainer.generator("modality-level-subset", epoch)
        self.last_subset = rules.draw_subset(pool, self.cfg.part_ratio, g)  # subset_size() samples
        return self.last_subset

    def next_plan(self, epoch, values):
        plan = self.first_plan()
        self._metrics = {}
        if values is None or len(values) == 0 or not self.resampling_epoch(epoch):
            return plan
        rule = modality_level_rule(values.phi, self.cfg.norm, self.cfg.fm, self.cfg.fm_alpha)
        pool = self.trainer.train_indices
        count = int(rule["p"] * len(pool))
        g = self.trainer.generator("modality-level-draw", epoch)
        rows = draw_uniform(pool, count, g)
        weak = self.trainer.modality_names[rule["weak"]]
        self._metrics = {"weak_modality": weak, "discrepancy": rule["d"], "p": rule["p"]}
        return plan.add_copies(rows, 1 << rule["weak"]) if count else plan

    def epoch_metrics(self):
        return dict(self._metrics)
