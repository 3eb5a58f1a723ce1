"""Fusion heads that fastshap evaluates through their decomposition (never 2^n forwards).

Each head's ``forward`` takes the list of n feature tensors ``(B, d_i)`` (any leading dimensions, the
width last), in the order of the head's ``dims``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fastshap._validate import check_widths, feature_widths, positive_int, tensor_list


def _check_features(features, dims: tuple, head: str) -> list:
    """The list of n tensors (..., d_i) a head's forward takes: its length and each width (shapes only)."""
    features = tensor_list(features, f"the {head} head's features", "tensors (..., d_i), one per modality", dims)
    check_widths([x.shape[-1] if x.dim() else None for x in features], dims, f"{head} head")
    return features


class ConcatLinear(nn.Module):
    """The paper's head: one Linear over the concatenated features. Same function as nn.Linear(sum(dims), C)."""

    def __init__(self, dims: Sequence[int], num_classes: int):
        super().__init__()
        self.dims = feature_widths(dims, "ConcatLinear dims")
        self.fc = nn.Linear(sum(self.dims), positive_int(num_classes, "ConcatLinear num_classes"))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fc(torch.cat(_check_features(features, self.dims, "ConcatLinear"), dim=-1))

    def unimodal_logits(self, features: Sequence[torch.Tensor]) -> list:
        """Modality i's slice of the weights applied to its features, plus bias / n (OGM-GE, PMR style)."""
        features = _check_features(features, self.dims, "ConcatLinear")
        n, out, offset = len(self.dims), [], 0
        for d, x in zip(self.dims, features):
            z = x @ self.fc.weight[:, offset : offset + d].t()
            out.append(z + self.fc.bias / n if self.fc.bias is not None else z)
            offset += d
        return out


class DecisionFusion(nn.Module):
    """One linear classifier per modality; the prediction is the mean of their softmax outputs.

    ``forward`` returns the log of that mean, so ``argmax`` and ``softmax`` of the output are the fused
    prediction and its probabilities (train it with ``per_modality_logits`` and one CE per modality).
    """

    def __init__(self, dims: Sequence[int], num_classes: int):
        super().__init__()
        self.dims = feature_widths(dims, "DecisionFusion dims")
        num_classes = positive_int(num_classes, "DecisionFusion num_classes")
        self.classifiers = nn.ModuleList(nn.Linear(d, num_classes) for d in self.dims)

    def per_modality_logits(self, features: Sequence[torch.Tensor]) -> list:
        features = _check_features(features, self.dims, "DecisionFusion")
        return [clf(x) for clf, x in zip(self.classifiers, features)]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        probs = torch.stack([torch.softmax(z, -1) for z in self.per_modality_logits(features)]).mean(0)
        return probs.log()

    def packed(self) -> tuple:
        """(weight (C, sum d_i), bias (n, C)): classifier i in the columns of modality i, as the ops take it
        (a classifier without bias contributes a row of zeros)."""
        weight = torch.cat([clf.weight for clf in self.classifiers], dim=1)
        bias = torch.stack(
            [
                clf.bias if clf.bias is not None else clf.weight.new_zeros(clf.weight.shape[0])
                for clf in self.classifiers
            ]
        )
        return weight, bias


class ConcatMLP(nn.Module):
    """Linear -> ReLU -> Linear over the concatenated features."""

    def __init__(self, dims: Sequence[int], hidden: int, num_classes: int):
        super().__init__()
        self.dims = feature_widths(dims, "ConcatMLP dims")
        hidden = positive_int(hidden, "ConcatMLP hidden")
        self.fc1 = nn.Linear(sum(self.dims), hidden)
        self.fc2 = nn.Linear(hidden, positive_int(num_classes, "ConcatMLP num_classes"))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.cat(_check_features(features, self.dims, "ConcatMLP"), dim=-1))))
