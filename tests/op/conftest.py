"""Fixtures of the op tests: the small valid call that the error and deferred-check tests break."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastshap


class ValidCall(dict):
    """A valid ``fastshap.modality_shapley`` call, seeded: n = 2 modalities of widths (3, 4), B = 6 samples,
    C = 5 classes, an ``nn.Linear(7, 5)`` head. Its keys are the call's argument names (features, head,
    labels, baselines, benefit); a test changes one of them and expects the call to fail, or not."""

    dims, batch, classes = (3, 4), 6, 5

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        head = nn.Linear(sum(self.dims), self.classes)
        features = [torch.randn(self.batch, d, generator=g) for d in self.dims]
        labels = torch.randint(0, self.classes, (self.batch,), generator=g)
        super().__init__(features=features, head=head, labels=labels, baselines=None, benefit="paper")

    def run(self, **options):
        """fastshap.modality_shapley on this call, with `options` (backend=..., defer_checks=...)."""
        return fastshap.modality_shapley(
            self["features"],
            self["head"],
            self["labels"],
            baselines=self["baselines"],
            benefit=self["benefit"],
            **options,
        )

    def nan_head(self) -> nn.Linear:
        """A head of the call's shape with one NaN weight (the partial logits of modality 0 hold NaN)."""
        head = nn.Linear(sum(self.dims), self.classes)
        with torch.no_grad():
            head.weight[1, 2] = torch.nan
        return head

    def huge_head(self) -> nn.Linear:
        """A head of finite weights whose products with modality 1's features scaled by 1e30 overflow float32."""
        head = nn.Linear(sum(self.dims), self.classes)
        with torch.no_grad():
            head.weight[:, self.dims[0] :] = 1e20
        return head


@pytest.fixture
def valid_call():
    """ValidCall itself: each ``valid_call()`` builds a fresh call; ``valid_call.dims`` etc. are its sizes."""
    return ValidCall
