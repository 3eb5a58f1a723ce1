"""What every framework callback does after an epoch: value the training set, build the next plan, swap it in."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import torch

from fastshap.resampling import Plan, ResampledDataset, draw_subset, sample_level_plan, value_dataset

INSTALL = 'pip install "fastshap-modality[integrations]"'


def require(module: str, package: str, integration: str):
    """Import `module`, or raise ImportError naming the integration and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"fastshap.integrations.{integration} needs {package} ({exc.name or module} is not installed): {INSTALL}"
        ) from exc


class EpochResampler:
    """After epoch e (from ``warmup - 1`` on): phi of the training samples (:func:`value_dataset`, in eval
    mode, all-gathered under torch.distributed), ``plan_fn(phi)``, and ``dataset.set_plan`` for epoch e + 1.
    Each framework's callback subclasses this (its arguments, ``history`` and ``phi`` are the callback's) and
    calls :meth:`after_epoch` from its epoch-end hook.

    Args:
        train_dataset: the :class:`ResampledDataset` the framework trains on (its ``dataset`` is valued).
        features_fn: ``(model, batch) -> (features, labels)``: n tensors ``(B, d_i)`` and ``(B,)`` labels
            from a collated batch of the original items (on the model's device).
        head: the fusion head: an attribute name of the model (``"head"``) or ``model -> head``.
        plan_fn: ``phi (N, n) -> Plan`` (default :func:`sample_level_plan`); NaN rows are samples not valued.
        warmup: epochs of plain training first (the paper's default is 5); 0 re-samples from epoch 1 on.
        subset: value only a random share of the samples (the modality-level rule's Z), drawn anew each
            epoch from a generator seeded with ``seed + epoch`` (the same on every rank).
        batch_size, collate_fn: of the valuation pass.
        baselines: None (zero features), n tensors, or ``model -> n tensors`` (e.g. the encoders applied to
            zero inputs, for input removal; called in eval mode without gradients before each pass).
        benefit, backend: as ``fastshap.modality_shapley`` takes them.
    """

    def __init__(
        self,
        train_dataset: ResampledDataset,
        features_fn: Callable,
        head: str | Callable = "head",
        *,
        plan_fn: Callable[[torch.Tensor], Plan] | None = None,
        warmup: int = 0,
        subset: float | None = None,
        seed: int = 0,
        batch_size: int = 256,
        collate_fn: Callable | None = None,
        baselines: Sequence[torch.Tensor] | Callable | None = None,
        benefit: str = "paper",
        backend: str = "auto",
    ):
        if not isinstance(train_dataset, ResampledDataset):
            raise TypeError(
                f"fastshap: the callback takes the fastshap.resampling.ResampledDataset the trainer trains on, got "
                f"{type(train_dataset).__name__}"
            )
        if not callable(features_fn):
            raise TypeError("fastshap: features_fn must be a callable (model, batch) -> (features, labels)")
        if not (isinstance(head, str) or callable(head)):
            raise TypeError(f"fastshap: head must be an attribute name or a callable model -> head, got {head!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"fastshap: warmup must be an int >= 0, got {warmup!r}")
        if subset is not None and not 0 < subset <= 1:
            raise ValueError(f"fastshap: subset must be a share in (0, 1], got {subset!r}")
        self.dataset = train_dataset
        self.features_fn = features_fn
        self.head = head
        self.plan_fn = plan_fn if plan_fn is not None else sample_level_plan
        self.warmup = warmup
        self.subset = subset
        self.seed = seed
        self.batch_size = batch_size
        self.collate_fn = collate_fn
        self.baselines = baselines
        self.benefit = benefit
        self.backend = backend
        self.phi: torch.Tensor | None = None  # the latest values, (N, n) float32
        self.history: list = []  # one entry per re-planning: epoch, rows, copies per modality, mean phi

    def head_of(self, model):
        if isinstance(self.head, str):
            if not hasattr(model, self.head):
                raise AttributeError(
                    f"fastshap: the model ({type(model).__name__}) has no attribute {self.head!r}; pass head= the "
                    f"name of its fusion head or a callable model -> head"
                )
            return getattr(model, self.head)
        return self.head(model)

    def _baselines(self, model):
        if not callable(self.baselines):
            return self.baselines
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self.baselines(model)
        finally:
            model.train(was_training)

    def after_epoch(self, model: torch.nn.Module, epoch: int) -> Plan | None:
        """Value, plan and swap after `epoch` (0-based); None (the plan unchanged) during the warmup."""
        if epoch + 1 < self.warmup:
            return None
        base = self.dataset.dataset
        indices = None
        if self.subset is not None:
            indices = draw_subset(len(base), self.subset, torch.Generator().manual_seed(self.seed + epoch))
        phi = value_dataset(
            base,
            lambda batch: self.features_fn(model, batch),
            self.head_of(model),
            model=model,
            indices=indices,
            batch_size=self.batch_size,
            collate_fn=self.collate_fn,
            baselines=self._baselines(model),
            benefit=self.benefit,
            backend=self.backend,
        )
        plan = self.plan_fn(phi)
        self.dataset.set_plan(plan)
        self.phi = phi
        self.history.append(
            {
                "epoch": epoch,
                "rows": len(plan),
                "copies": plan.copies_per_modality(),
                "mean_phi": torch.nanmean(phi, 0).tolist(),
            }
        )
        return plan
