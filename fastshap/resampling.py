"""The paper's re-sampling rules as plain functions of phi, and the data plumbing for a training loop.

A :class:`Plan` is an epoch's training rows: ``index (R,)`` int64 (which sample to load) and ``keep (R, n)``
bool (which modalities it keeps); the originals come first, all kept, then the copies, each keeping one
modality. :class:`ResampledDataset` serves a plan's rows over any map-style dataset, and :func:`apply_keep`
removes what a row does not keep (feature zeroing, or input removal with the caller's zero inputs)::

    train = ResampledDataset(dataset, num_modalities=2)      # epoch 0: the originals
    for epoch in range(epochs):
        for (x_a, x_v, y), keep in DataLoader(train, batch_size=64, shuffle=True):
            feats = apply_keep([enc_a(x_a), enc_v(x_v)], keep)
            loss = F.cross_entropy(head(torch.cat(feats, 1)), y)
            ...
        phi = value_dataset(dataset, lambda b: ([enc_a(b[0]), enc_v(b[1])], b[2]), head, model=model)
        train.set_plan(sample_level_plan(phi))

The rules (docs/user-guide.md has the details and the trainer's options that map to them):

* sample-level (supp. Eq. 7): ``f_s(1 - phi_i)`` copies of sample x keeping modality i if ``phi_i < 1``,
  else none: :func:`copy_counts`, :func:`sample_level_plan`. The default is the authors' n = 2 rule
  (phi 0.5 / 0 / -0.5 -> 1 / 2 / 3 copies).
* fixed-rate (supp. Table 6): a fixed number of copies of every modality with ``phi < 1``:
  :func:`fixed_rate_plan`.
* modality-level (supp. Eq. 8): the weak modality of a random subset's mean phi, ``int(p N)`` copies of
  uniformly drawn samples keeping it: :func:`draw_subset`, :func:`modality_level_rule`,
  :func:`modality_level_plan`.

The trainer (``fastshap_train``) builds its plans with these same functions.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from fastshap.api import modality_shapley
from fastshap.checks import DeferredChecks

__all__ = [
    "FS_RULES",
    "FM_RULES",
    "NORMS",
    "Plan",
    "copy_counts",
    "fixed_counts",
    "copy_rows",
    "sample_level_plan",
    "fixed_rate_plan",
    "draw_subset",
    "draw_uniform",
    "normaliser_scale",
    "f_m",
    "ModalityRule",
    "modality_level_rule",
    "modality_level_plan",
    "weak_modality",
    "apply_keep",
    "ResampledDataset",
    "value_dataset",
]

Tensor = torch.Tensor

#: Built-in f_s: ``k * x_max * g(x / x_max)`` with ``x = 1 - phi``, ``x_max = (n + 1) / 2`` and g = t, sqrt(t), t^2.
FS_RULES = ("linear", "concave", "convex")
#: Built-in f_m: ``alpha x``, ``tanh(alpha x)``, ``alpha x^1.5``.
FM_RULES = ("linear", "tanh", "power")
#: Named normalisers of the modality-level discrepancy d: ``authors`` 2/3 d (the authors' n = 2 rule), ``range`` d / n.
NORMS = ("authors", "range")


# ------------------------------------------------------------------------------------------------------
# plans


@dataclass(frozen=True, eq=False)
class Plan:
    """An epoch's training rows: sample ``index[j]`` keeping the modalities where ``keep[j]`` is True.

    ``index`` (R,) int64 positions in the dataset; ``keep`` (R, n) bool. The plans built here list the
    originals first (all kept), then the copies. ``info`` holds what the rule decided (for logging).
    """

    index: Tensor
    keep: Tensor
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.index, Tensor) or self.index.dim() != 1 or self.index.dtype != torch.int64:
            raise TypeError(f"fastshap: Plan.index must be a 1-D int64 tensor, got {_describe(self.index)}")
        if not isinstance(self.keep, Tensor) or self.keep.dim() != 2 or self.keep.dtype != torch.bool:
            raise TypeError(f"fastshap: Plan.keep must be a 2-D bool tensor (R, n), got {_describe(self.keep)}")
        if self.keep.shape[0] != self.index.shape[0]:
            raise ValueError(f"fastshap: Plan has {self.index.shape[0]} indices but {self.keep.shape[0]} keep rows")
        if self.keep.shape[1] == 0:
            raise ValueError("fastshap: Plan.keep has no modality columns")
        if self.index.numel() and int(self.index.min()) < 0:
            raise ValueError(f"fastshap: Plan.index holds a negative position {int(self.index.min())}")

    @classmethod
    def originals(cls, num_samples: int, num_modalities: int) -> Plan:
        """Samples 0..num_samples-1 once each, every modality kept (a plain epoch)."""
        num_samples = _count(num_samples, "num_samples", allow_zero=True)
        num_modalities = _count(num_modalities, "num_modalities")
        index = torch.arange(num_samples, dtype=torch.int64)
        return cls(index, torch.ones(num_samples, num_modalities, dtype=torch.bool))

    def with_copies(self, index: Tensor, modality: Tensor | int, **info) -> Plan:
        """A new plan with copies appended: sample ``index[j]`` keeping modality ``modality[j]`` only."""
        index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
        modality = torch.as_tensor(modality, dtype=torch.int64).expand(index.shape)
        n = self.num_modalities
        if modality.numel() and not (0 <= int(modality.min()) and int(modality.max()) < n):
            raise ValueError(f"fastshap: a copy keeps modality {modality.tolist()}, outside [0, {n})")
        keep = torch.nn.functional.one_hot(modality, n).bool()
        return Plan(torch.cat([self.index, index]), torch.cat([self.keep, keep]), {**self.info, **info})

    def __len__(self) -> int:
        return int(self.index.numel())

    @property
    def num_modalities(self) -> int:
        return int(self.keep.shape[1])

    @property
    def num_copies(self) -> int:
        """Rows that do not keep every modality."""
        return int((~self.keep.all(1)).sum())

    def copies_per_modality(self) -> list:
        """For each modality i, the number of rows that keep modality i alone (for n = 1: every row)."""
        alone = self.keep.sum(1) == 1
        return [int((alone & self.keep[:, i]).sum()) for i in range(self.num_modalities)]

    def __repr__(self) -> str:
        return (
            f"Plan({len(self)} rows, {self.num_modalities} modalities, copies per modality "
            f"{self.copies_per_modality()})"
        )


def _describe(x) -> str:
    return f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def _count(value, what: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"fastshap: {what} must be an integer, got {type(value).__name__} {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"fastshap: {what} must be {'>= 0' if allow_zero else 'positive'}, got {value}")
    return int(value)


def _check_phi(phi, what: str = "phi") -> Tensor:
    if not isinstance(phi, Tensor):
        raise TypeError(f"fastshap: {what} must be a tensor (K, n) of Shapley values, got {type(phi).__name__}")
    if phi.dim() != 2 or phi.shape[1] == 0:
        raise ValueError(f"fastshap: {what} must be (K, n) with n >= 1, got shape {tuple(phi.shape)}")
    if not phi.is_floating_point():
        raise TypeError(f"fastshap: {what} must be floating point (NaN marks a sample not valued), got {phi.dtype}")
    return phi.detach().cpu()


# ------------------------------------------------------------------------------------------------------
# sample level and fixed rate


def copy_counts(phi: Tensor, fs: str | Callable = "linear", scale: float = 2.0, cap: int | None = 3) -> Tensor:
    """Extra copies of each sample keeping each modality: phi ``(K, n)`` -> ``(K, n)`` int64.

    ``f_s(1 - phi_i)`` rounded half up where ``phi_i < 1``, 0 where ``phi_i >= 1`` or NaN (not valued),
    then capped at ``cap`` (None: no cap). With ``x = 1 - phi`` and ``x_max = (n + 1) / 2`` (its largest
    value under the paper benefit) the built-in rules are ``scale * x_max * g(x / x_max)`` with
    ``g(t) = t`` (``"linear"``: ``scale * x``, the authors' rule for n = 2 at scale 2), ``sqrt(t)``
    (``"concave"``: more copies for mildly weak modalities) and ``t ** 2`` (``"convex"``: copies concentrated
    on the weakest); all three agree at x = 0 and x = x_max. ``fs`` may also be a callable
    ``f(x: float64 Tensor (K, n)) -> Tensor`` of copy counts before rounding and the cap.
    """
    phi = _check_phi(phi)
    if cap is not None:
        cap = _count(cap, "cap", allow_zero=True)
    n = phi.shape[1]
    x = 1.0 - phi.double()
    x_max = (n + 1) / 2
    if callable(fs):
        raw = torch.as_tensor(fs(x), dtype=torch.float64)
        try:
            raw = raw.broadcast_to(x.shape)
        except RuntimeError:
            raise ValueError(
                f"fastshap: f_s returned shape {tuple(raw.shape)} for x of shape {tuple(x.shape)}; it must return "
                f"one count per value"
            ) from None
    elif fs in FS_RULES:
        t = (x / x_max).clamp_min(0)
        g = {"linear": t, "concave": t.sqrt(), "convex": t * t}[fs]
        raw = scale * x_max * g
    else:
        raise ValueError(f"fastshap: unknown f_s {fs!r}; choose {', '.join(FS_RULES)} or a callable")
    counts = torch.floor(raw + 0.5)  # half up: Python's round() would send 0.5 to 0
    weak = phi < 1  # False for NaN (not valued)
    counts = torch.where(weak, counts.clamp_min(0), torch.zeros_like(counts))
    if cap is not None:
        counts = counts.clamp_max(cap)
    if not bool(torch.isfinite(counts).all()):
        raise ValueError("fastshap: f_s gave NaN or unbounded copy counts for a modality with phi < 1; set a cap")
    return counts.long()


def fixed_counts(phi: Tensor, copies: int) -> Tensor:
    """The fixed-rate rule: ``copies`` copies of every modality with ``phi < 1`` (none for NaN), ``(K, n)`` int64."""
    phi = _check_phi(phi)
    copies = _count(copies, "copies", allow_zero=True)
    return torch.where(phi < 1, torch.full_like(phi, copies), torch.zeros_like(phi)).long()


def copy_rows(counts: Tensor, index: Tensor | None = None) -> tuple:
    """The copies that ``counts (K, n)`` asks for, as ``(index (R,), modality (R,))`` int64: for each
    modality in turn, ``counts[j, i]`` copies of sample ``index[j]`` (default j) in the order of the rows."""
    if not isinstance(counts, Tensor) or counts.dim() != 2 or counts.dtype != torch.int64:
        raise TypeError(f"fastshap: counts must be a (K, n) int64 tensor, got {_describe(counts)}")
    if counts.numel() and int(counts.min()) < 0:
        raise ValueError("fastshap: counts must be >= 0")
    if index is None:
        index = torch.arange(counts.shape[0])
    index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)
    if index.shape[0] != counts.shape[0]:
        raise ValueError(f"fastshap: {index.shape[0]} indices for {counts.shape[0]} rows of counts")
    rows = [torch.repeat_interleave(index, counts[:, i]) for i in range(counts.shape[1])]
    modality = [torch.full_like(r, i) for i, r in enumerate(rows)]
    empty = index[:0]
    return (torch.cat(rows) if rows else empty, torch.cat(modality) if modality else empty)


def _plan_from_counts(counts: Tensor, **info) -> Plan:
    index, modality = copy_rows(counts)
    plan = Plan.originals(counts.shape[0], counts.shape[1])
    return plan.with_copies(index, modality, **info)


def sample_level_plan(phi: Tensor, fs: str | Callable = "linear", *, scale: float = 2.0, cap: int | None = 3) -> Plan:
    """The paper's sample-level plan from phi ``(N, n)`` of every sample in dataset order (NaN rows: not
    valued, no copies): the N originals, then ``copy_counts(phi, fs, scale, cap)`` copies keeping one
    modality each. The default is the authors' n = 2 rule: phi 0.5 / 0 / -0.5 give 1 / 2 / 3 copies that
    keep that modality only, phi >= 1 none."""
    counts = copy_counts(phi, fs, scale, cap)
    return _plan_from_counts(counts, rule="sample-level", copies=counts.sum(0).tolist())


def fixed_rate_plan(phi: Tensor, copies: int = 1) -> Plan:
    """Fixed-rate plan (supp. Table 6: low = 1, high = 3): ``copies`` copies of each sample for every
    modality with ``phi < 1``, whatever its value."""
    counts = fixed_counts(phi, copies)
    return _plan_from_counts(counts, rule="fixed-rate", copies=counts.sum(0).tolist())


# ------------------------------------------------------------------------------------------------------
# modality level


def draw_subset(pool: Tensor | int, ratio: float = 0.2, generator: torch.Generator | None = None) -> Tensor:
    """The subset Z to value: ``max(1, round(ratio * len(pool)))`` elements of ``pool`` (an index tensor, or
    an int N for 0..N-1) drawn without replacement, in the order drawn."""
    if isinstance(pool, numbers.Integral) and not isinstance(pool, bool):
        pool = torch.arange(_count(pool, "the number of samples"))
    pool = torch.as_tensor(pool, dtype=torch.int64).reshape(-1)
    if not (isinstance(ratio, numbers.Real) and 0 < ratio <= 1):
        raise ValueError(f"fastshap: ratio must be in (0, 1], got {ratio!r}")
    size = max(1, int(round(ratio * len(pool))))
    return pool[torch.randperm(len(pool), generator=generator)[:size]]


def draw_uniform(pool: Tensor, count: int, generator: torch.Generator | None = None) -> Tensor:
    """``count`` elements of ``pool`` drawn uniformly: without replacement up to ``len(pool)``, then again."""
    count = _count(count, "count", allow_zero=True)
    if count and len(pool) == 0:
        raise ValueError(f"fastshap: cannot draw {count} samples from an empty pool")
    parts, left = [], count
    while left > 0:
        take = min(left, len(pool))
        parts.append(pool[torch.randperm(len(pool), generator=generator)[:take]])
        left -= take
    return torch.cat(parts) if parts else pool[:0]


def normaliser_scale(norm: str | float, n: int) -> float:
    """The scale of Norm(d) = scale * d: ``"authors"`` 2/3, ``"range"`` 1/n (phi's range has width n), or a
    positive number (also as a string, as the trainer's option gives it)."""
    if norm == "authors":
        return 2.0 / 3.0
    if norm == "range":
        return 1.0 / n
    try:
        scale = float(norm)
    except (TypeError, ValueError):
        scale = math.nan
    if not scale > 0 or math.isinf(scale):
        raise ValueError(f"fastshap: norm must be one of {', '.join(NORMS)} or a positive number, got {norm!r}")
    return scale


def f_m(x: float, kind: str | Callable = "linear", alpha: float = 1.0) -> float:
    """The modality-level f_m at x in [0, 1]: ``linear`` alpha x, ``tanh`` tanh(alpha x), ``power`` alpha
    x^1.5, or a callable ``f(x, alpha) -> float``."""
    if callable(kind):
        return float(kind(x, alpha))
    if kind == "linear":
        return alpha * x
    if kind == "tanh":
        return math.tanh(alpha * x)
    if kind == "power":
        return alpha * x**1.5
    raise ValueError(f"fastshap: unknown f_m {kind!r}; choose {', '.join(FM_RULES)} or a callable")


class ModalityRule(NamedTuple):
    """What the modality-level rule decided from a subset's phi."""

    weak: int  #: the weak modality: argmin of the mean phi (the first among ties)
    mean: Tensor  #: (n,) float64 mean phi per modality over the valued samples
    d: float  #: mean over the other modalities of their mean phi minus the weak one's
    x: float  #: Norm(d) clipped to [0, 1]
    p: float  #: f_m(x): the share of the training set added as copies keeping the weak modality


def modality_level_rule(
    phi: Tensor, norm: str | float = "authors", fm: str | Callable = "linear", alpha: float = 1.0
) -> ModalityRule:
    """The paper's modality-level rule on phi ``(|Z|, n)`` (NaN rows ignored): the weak modality i of the
    mean phi, ``d = mean_{j != i} (mean phi_j - mean phi_i)``, ``x = clip(Norm(d), 0, 1)``, ``p = f_m(x)``."""
    phi = _check_phi(phi)
    mean = torch.nanmean(phi.double(), 0)
    n = phi.shape[1]
    weak = int(torch.argmin(mean))  # first index among ties, like the argmax convention
    d = float((mean.sum() - n * mean[weak]) / (n - 1)) if n > 1 else 0.0
    x = min(1.0, max(0.0, normaliser_scale(norm, n) * d))
    return ModalityRule(weak, mean, d, x, f_m(x, fm, alpha))


def modality_level_plan(
    phi_of_subset: Tensor,
    num_samples: int,
    *,
    norm: str | float = "authors",
    fm: str | Callable = "linear",
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
) -> Plan:
    """The paper's modality-level plan: the ``num_samples`` originals, then ``int(p * num_samples)`` samples
    drawn uniformly from all of them (:func:`draw_uniform` with ``generator``) keeping only the weak
    modality of :func:`modality_level_rule` on ``phi_of_subset`` (the values of a subset Z, e.g. from
    :func:`draw_subset`; NaN rows are ignored, so phi of the whole set with NaN outside Z works too)."""
    phi = _check_phi(phi_of_subset, "phi_of_subset")
    num_samples = _count(num_samples, "num_samples")
    plan = Plan.originals(num_samples, phi.shape[1])
    if not bool(torch.isfinite(phi).all(1).any()):
        return Plan(plan.index, plan.keep, {"rule": "modality-level", "weak": -1, "p": 0.0})  # nothing valued
    rule = modality_level_rule(phi, norm, fm, alpha)
    rows = draw_uniform(torch.arange(num_samples), int(rule.p * num_samples), generator)
    return plan.with_copies(rows, rule.weak, rule="modality-level", weak=rule.weak, d=rule.d, p=rule.p)


def weak_modality(phi: Tensor) -> Tensor:
    """The weak modality of each sample, ``(B,)`` int64: the index of the single smallest phi, or -1 where
    there is none (two or more modalities tie for the minimum, as phi = (1, 1) does, or the row is NaN).
    ``phi.argmin(1)`` would name modality 0 for every tie."""
    if not isinstance(phi, Tensor) or phi.dim() != 2 or not phi.is_floating_point():
        raise TypeError(f"fastshap: weak_modality takes phi (B, n) floating point, got {_describe(phi)}")
    if phi.shape[1] == 0:
        raise ValueError("fastshap: weak_modality needs at least one modality column")
    at_min = phi == phi.amin(1, keepdim=True)  # NaN rows: amin is NaN, nothing equals it
    single = (at_min.sum(1) == 1) & ~phi.isnan().any(1)
    return torch.where(single, at_min.to(torch.uint8).argmax(1), torch.full_like(single, -1, dtype=torch.int64))


# ------------------------------------------------------------------------------------------------------
# the data side


def apply_keep(features: Sequence[Tensor], keep: Tensor, baselines: Sequence[Tensor] | None = None) -> list:
    """Remove, row by row, the modalities a plan row does not keep.

    Args:
        features: n tensors ``(B, ...)``: per-modality features (feature removal) or inputs (input removal).
        keep: ``(B, n)`` bool, from a :class:`ResampledDataset` batch.
        baselines: what a removed modality becomes: None (zeros: the authors' feature zeroing), or n
            tensors shaped like one sample's ``(...)`` or the batch's ``(B, ...)``: the caller's zero
            inputs for input removal, or feature baselines (the same ones the op takes).

    Returns the n tensors with removed rows replaced (gradients flow through the kept rows).
    """
    if isinstance(features, Tensor) or not isinstance(features, Sequence):
        raise TypeError("fastshap: apply_keep takes a list or tuple of n tensors (B, ...), one per modality")
    feats = list(features)
    if not isinstance(keep, Tensor) or keep.dim() != 2:
        raise TypeError(f"fastshap: keep must be a (B, n) bool tensor, got {_describe(keep)}")
    if keep.shape[1] != len(feats):
        raise ValueError(f"fastshap: keep has {keep.shape[1]} modality columns for {len(feats)} feature tensors")
    if baselines is not None and len(baselines) != len(feats):
        raise ValueError(f"fastshap: {len(baselines)} baselines for {len(feats)} feature tensors")
    out = []
    for i, f in enumerate(feats):
        if not isinstance(f, Tensor) or f.dim() == 0 or f.shape[0] != keep.shape[0]:
            raise ValueError(
                f"fastshap: features[{i}] must be a tensor (B, ...) with B = {keep.shape[0]} rows like keep, got "
                f"{_describe(f)}"
            )
        kept = keep[:, i].to(device=f.device, dtype=torch.bool, non_blocking=True)
        kept = kept.view(-1, *([1] * (f.dim() - 1)))
        if baselines is None:
            base = f.new_zeros(())
        else:
            base = baselines[i]
            if not isinstance(base, Tensor):
                raise TypeError(f"fastshap: baselines[{i}] is a {type(base).__name__}, not a tensor")
            if base.shape not in (f.shape, f.shape[1:]):
                raise ValueError(
                    f"fastshap: baselines[{i}] must be shaped like one sample {tuple(f.shape[1:])} or the batch "
                    f"{tuple(f.shape)}, got {tuple(base.shape)}"
                )
            base = base.to(device=f.device, dtype=f.dtype)
        out.append(torch.where(kept, f, base))
    return out


class ResampledDataset(Dataset):
    """A plan's rows over any map-style dataset: item j is ``(dataset[plan.index[j]], plan.keep[j])``, the
    original item (a tuple, dict, tensor, ...) and its keep row ``(n,)`` bool, which the default collate
    stacks into ``(B, n)``. With ``keep_key`` (dict items) an item is the dict with ``keep`` added under
    that key instead, as a ``transformers.Trainer`` passes dict batches to ``model(**batch)``.

    Give a plan, or ``num_modalities`` for the originals alone (a plain epoch). :meth:`set_plan` swaps the
    plan between epochs; a DataLoader built on this dataset sees the new rows at its next iteration (not
    with ``persistent_workers=True``, whose workers keep their copy of the dataset).
    """

    def __init__(
        self,
        dataset: Dataset,
        plan: Plan | None = None,
        *,
        num_modalities: int | None = None,
        keep_key: str | None = None,
    ):
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TypeError(
                f"fastshap: ResampledDataset needs a map-style dataset (__getitem__ and __len__), got "
                f"{type(dataset).__name__}"
            )
        if (plan is None) == (num_modalities is None):
            raise ValueError("fastshap: give ResampledDataset either a plan or num_modalities (for the originals)")
        self.dataset = dataset
        self.keep_key = keep_key
        self.reserved_rows: int | None = None
        self.set_plan(plan if plan is not None else Plan.originals(len(dataset), num_modalities))

    @property
    def plan(self) -> Plan:
        return self._plan

    @property
    def num_modalities(self) -> int:
        return self._plan.num_modalities

    def set_plan(self, plan: Plan) -> None:
        """Serve ``plan``'s rows from now on (between epochs)."""
        if not isinstance(plan, Plan):
            raise TypeError(f"fastshap: set_plan takes a fastshap.resampling.Plan, got {type(plan).__name__}")
        size = len(self.dataset)
        if len(plan) and int(plan.index.max()) >= size:
            raise ValueError(
                f"fastshap: the plan refers to sample {int(plan.index.max())}, the dataset has {size} samples"
            )
        if hasattr(self, "_plan") and plan.num_modalities != self._plan.num_modalities:
            raise ValueError(
                f"fastshap: the plan has {plan.num_modalities} modalities, the dataset's plan had "
                f"{self._plan.num_modalities}"
            )
        self._plan = plan
        self._index = plan.index.tolist()  # plain ints: a tensor index per item is slow in the loader's hot path

    def __len__(self) -> int:
        # reserved_rows: a framework that sizes all its epochs before the first (transformers.Trainer) is
        # shown the largest plan it will get; the callback clears it before any row is fetched
        return len(self._index) if self.reserved_rows is None else max(len(self._index), self.reserved_rows)

    def __getitem__(self, j: int):
        if not -len(self._index) <= j < len(self._index):
            raise IndexError(f"fastshap: row {j} of a plan of {len(self._index)} rows")
        item = self.dataset[self._index[j]]
        keep = self._plan.keep[j]
        if self.keep_key is None:
            return item, keep
        if not isinstance(item, Mapping):
            raise TypeError(
                f"fastshap: keep_key={self.keep_key!r} adds the keep row to dict items; the dataset's items are "
                f"{type(item).__name__}"
            )
        return {**item, self.keep_key: keep}


# ------------------------------------------------------------------------------------------------------
# the valuation pass


def _to_device(batch, device):
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _distributed() -> tuple:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def value_dataset(
    dataset: Dataset,
    features_fn: Callable,
    head,
    *,
    model: torch.nn.Module | None = None,
    indices: Tensor | None = None,
    batch_size: int = 256,
    collate_fn: Callable | None = None,
    num_workers: int = 0,
    device: torch.device | str | None = None,
    baselines: Sequence[Tensor] | None = None,
    benefit: str = "paper",
    backend: str = "auto",
    distributed: bool = True,
) -> Tensor:
    """phi ``(N, n)`` float32 on the CPU for every sample of ``dataset``, in dataset order (the valuation
    pass after an epoch: eval mode, no gradients, unshuffled).

    Args:
        dataset: the map-style training set (its original samples, not a ResampledDataset).
        features_fn: ``batch -> (features, labels)``: n tensors ``(B, d_i)`` and ``(B,)`` labels from a
            collated batch (already moved to ``device``).
        head: the fusion head ``fastshap.modality_shapley`` takes.
        model: set to ``eval()`` during the pass and back to its mode afterwards (default: the head, if
            a module); pass the module holding the encoders so that dropout and batch norm are off.
        indices: value only these samples (e.g. :func:`draw_subset`); the other rows are NaN.
        batch_size, collate_fn, num_workers: of the pass's DataLoader.
        device: where batches go (default: the device of the model's or head's first parameter).
        baselines, benefit, backend: as ``fastshap.modality_shapley`` takes them.
        distributed: in an initialised ``torch.distributed`` group, each rank values every world-th sample
            and the values are all-gathered, so that every rank returns the same full table (every rank
            must call it). False: this process values them all.
    """
    size = len(dataset)
    wanted = torch.arange(size) if indices is None else torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
    if wanted.numel() and not (0 <= int(wanted.min()) and int(wanted.max()) < size):
        raise ValueError(f"fastshap: indices must lie in [0, {size}) for a dataset of {size} samples")
    if wanted.numel() == 0:
        raise ValueError("fastshap: value_dataset has no samples to value (an empty dataset or indices)")
    rank, world = _distributed() if distributed else (0, 1)
    own = wanted[rank::world]
    holder = model if model is not None else (head if isinstance(head, torch.nn.Module) else None)
    if device is None and holder is not None:
        device = next((p.device for p in holder.parameters()), None)
    loader = DataLoader(
        torch.utils.data.Subset(dataset, own.tolist()),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_fn,
        num_workers=num_workers,
    )
    was_training = holder.training if holder is not None else False
    checks, parts, n = DeferredChecks(), [], None
    if holder is not None:
        holder.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                if device is not None:
                    batch = _to_device(batch, device)
                feats, labels = features_fn(batch)
                phi = modality_shapley(
                    feats, head, labels, baselines=baselines, benefit=benefit, backend=backend, defer_checks=checks
                )
                n = phi.shape[1]
                parts.append(phi.cpu())
    finally:
        if holder is not None:
            holder.train(was_training)
    checks.raise_if_any()
    mine = torch.cat(parts) if parts else None
    if world > 1:
        mine, n = _gather(mine, n, own.numel(), wanted.numel(), device)
    table = torch.full((size, n), math.nan, dtype=torch.float32)
    table[wanted] = mine  # gathered, `mine` holds every rank's rows in the order of `wanted`
    return table


def _gather(mine: Tensor | None, n: int | None, count: int, total: int, device) -> tuple:
    """All ranks' values in the order of ``wanted`` (rank r valued positions r, r + world, ...)."""
    dist = torch.distributed
    rank, world = _distributed()
    # nccl gathers only CUDA tensors; gloo CPU ones
    where = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    width = torch.tensor([n if n is not None else -1], device=where)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    n = int(width.item())
    rows = -(-total // world)
    padded = torch.full((rows, n), math.nan, dtype=torch.float32, device=where)
    if mine is not None:
        padded[:count] = mine.to(where)
    shards = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(shards, padded)
    out = torch.empty(total, n, dtype=torch.float32)
    for r, shard in enumerate(shards):
        got = len(range(r, total, world))
        out[r::world] = shard[:got].cpu()
    return out, n
