"""``unimodal``: the concat model trained on one modality alone, a reference for the fusion methods.

Every training row keeps only modality ``--unimodal-modality`` (the others are removed as a re-sampled copy
removes them), so its encoder is trained as it would be without the other modalities. The re-sampling study
(:mod:`fastshap_train.study`) uses it as the yardstick of "under-trained": a fused model's probe on that
encoder's features against this method's. A built-in method, so that spawned workers (DDP, compare, study)
know it and its option without being told.
"""

from __future__ import annotations

import torch

from fastshap_train.data.base import Plan
from fastshap_train.methods.base import Method
from fastshap_train.registry import Option, register_method, register_options

register_options(
    "unimodal",
    [
        Option(
            "unimodal_modality",
            1,
            "unimodal: the one modality every training row keeps",
            check=lambda x: None if x >= 0 else "must be >= 0",
        )
    ],
    title="method unimodal",
)


@register_method("unimodal")
class Unimodal(Method):
    head = "concat"
    help = "the concat model trained on one modality alone (--unimodal-modality): a reference"

    def first_plan(self):
        if self.cfg.unimodal_modality >= self.n:
            raise ValueError(f"--unimodal-modality {self.cfg.unimodal_modality}: the data has {self.n} modalities")
        plan = super().first_plan()
        keep = torch.full_like(plan.keep, 1 << self.cfg.unimodal_modality)
        return Plan(plan.index, keep, plan.mask, plan.n)

    def next_plan(self, epoch, values):
        return self.first_plan()
