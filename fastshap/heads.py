"""Fusion heads that fastshap evaluates through their decomposition (never 2^n forwards).

Each head's ``forward`` takes the list of n feature tensors ``(B, d_i)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _dims(dims: Sequence[int]) -> tuple:
    dims = tuple(int(d) for d in dims)
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"fastshap.heads: dims must be positive feature widths, got {dims}")
    return dims


class ConcatLinear(nn.Module):
    """The paper's head: one Linear over the concatenated features. Same function as nn.Linear(sum(dims), C)."""

    def __init__(self, dims: Sequence[int], num_classes: int):
        super().__init__()
        self.dims = _dims(dims)
        self.fc = nn.Linear(sum(self.dims), num_classes)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fc(torch.cat(list(features), dim=-1))

    def unimodal_logits(self, features: Sequence[torch.Tensor]) -> list:
        """Modality i's slice of the weights applied to its features, plus bias / n (OGM-GE, PMR style)."""
        n, out, offset = len(self.dims), [], 0
        for d, x in zip(self.dims, features):
            out.append(x @ self.fc.weight[:, offset : offset + d].t() + self.fc.bias / n)
            offset += d
        return out


class DecisionFusion(nn.Module):
    """One linear classifier per modality; the prediction is the mean of their softmax outputs.

    ``forward`` returns the log of that mean, so ``argmax`` and ``softmax`` of the output are the fused
    prediction and its probabilities (train it with ``per_modality_logits`` and one CE per modality).
    """

    def __init__(self, dims: Sequence[int], num_classes: int):
        super().__init__()
        self.dims = _dims(dims)
        self.classifiers = nn.ModuleList(nn.Linear(d, num_classes) for d in self.dims)

    def per_modality_logits(self, features: Sequence[torch.Tensor]) -> list:
        return [clf(x) for clf, x in zip(self.classifiers, features)]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        probs = torch.stack([torch.softmax(z, -1) for z in self.per_modality_logits(features)]).mean(0)
        return probs.log()

    def packed(self) -> tuple:
        """(weight (C, sum d_i), bias (n, C)): classifier i in the columns of modality i, as the ops take it."""
        weight = torch.cat([clf.weight for clf in self.classifiers], dim=1)
        bias = torch.stack([clf.bias for clf in self.classifiers])
        return weight, bias


class ConcatMLP(nn.Module):
    """Linear -> ReLU -> Linear over the concatenated features."""

    def __init__(self, dims: Sequence[int], hidden: int, num_classes: int):
        super().__init__()
        self.dims = _dims(dims)
        self.fc1 = nn.Linear(sum(self.dims), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.cat(list(features), dim=-1))))
