"""The :class:`Method` base class: plain joint training with the method's head; every hook overridable."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastshap_train.data.base import Plan
from fastshap_train.models import build_model


@dataclass
class Values:
    """A valuation result: ``phi[j]`` (n values) of base training sample ``index[j]``."""

    index: torch.Tensor  # (K,) int64
    phi: torch.Tensor  # (K, n) float32, CPU

    def __len__(self):
        return int(self.index.numel())


class Method:
    """Hooks called by the trainer (see :mod:`fastshap_train.methods`). The base is joint training.

    Attributes the trainer reads: ``head`` (default fusion head), ``needs_valuation`` (the method uses the
    values, so ``--valuation none`` is rejected), ``skips_parameters`` (some steps leave parameters out of
    the loss, so DDP must look for them: ``find_unused_parameters``, which costs a graph walk per step),
    ``removes_from_originals`` (its rows with modalities removed are the originals, not extra copies: online
    valuation records them under feature removal).
    """

    name = ""
    head = "concat"
    needs_valuation = False
    skips_parameters = False
    removes_from_originals = False
    help = ""

    def __init__(self, cfg, trainer):
        self.cfg = cfg
        self.trainer = trainer

    # -- configuration --------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg) -> str | None:
        """A problem with the options for this method (a message), or None."""
        if cls.needs_valuation and cfg["valuation"] == "none":
            return "needs valuation; use --valuation epoch or online"
        return None

    @property
    def n(self) -> int:
        return len(self.trainer.modalities)

    def head_kind(self) -> str:
        return self.head if self.cfg.head == "auto" else self.cfg.head

    # -- model ----------------------------------------------------------------------------------------
    def build_model(self, dataset):
        """The model (per-modality encoders + head). Override for architectures such as MMTM blocks."""
        return build_model(self.cfg, dataset, self.head_kind())

    def setup(self) -> None:
        """Called once the model, optimizer and data exist (register hooks, allocate state)."""

    def valuation_head(self):
        """What ``fastshap.modality_shapley`` evaluates: the model's head (a fastshap head or a callable)."""
        return self.trainer.core.head

    # -- data -----------------------------------------------------------------------------------------
    def train_indices(self, size: int) -> torch.Tensor:
        """Base training samples the plans draw from (override to hold some out, e.g. G-Blending)."""
        return torch.arange(size)

    def first_plan(self) -> Plan:
        return Plan.originals(self.trainer.train_indices, self.n)

    def on_batch(self, batch: dict) -> dict:
        """Transform a collated batch on the device before the forward (inputs, ``keep``, ...)."""
        return batch

    # -- step -----------------------------------------------------------------------------------------
    def loss(self, out, batch: dict) -> torch.Tensor:
        """Mean loss of the batch. `out` is the model's ModelOutput (logits, features, raw_features).

        Per-segment tasks (logits (B, T, C), labels (B, T)) average the CE over all segments, like the
        trainer's test accuracy counts every segment."""
        logits = out.logits.float()
        return F.cross_entropy(logits.flatten(0, -2), batch["label"].flatten())

    def after_backward(self, out, batch: dict) -> None:
        """Gradients are in ``.grad`` (unscaled under AMP); modulate them here."""

    # -- valuation and the next epoch's plan ----------------------------------------------------------
    def valuation_indices(self, epoch: int) -> torch.Tensor | None:
        """Base training samples to value after `epoch` (None: no valuation). Default: all, for logging."""
        if self.cfg.valuation == "none":
            return None
        return self.trainer.train_indices

    def next_plan(self, epoch: int, values: Values | None) -> Plan:
        """The plan of epoch ``epoch + 1`` given the values computed after `epoch`."""
        return self.first_plan()

    def epoch_metrics(self) -> dict:
        """Extra per-epoch columns for metrics.csv (numbers)."""
        return {}

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"method {self.name} has no state to load, got keys {sorted(state)}")
