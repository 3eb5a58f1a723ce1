"""Fusion heads that fastshap evaluates through their decomposition (never 2^n forwards).

Each head's ``forward`` takes the list of n feature tensors ``(B, d_i)`` (any leading dimensions, the
width last), in the order of the head's ``dims``.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn


def _positive_int(value, what: str) -> int:
    """value as an int: a Python or numpy integer (not a bool, a float or a string), > 0."""
    if isinstance(value, bool):
        raise TypeError(f"fastshap: {what} must be an integer, got bool {value}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"fastshap: {what} must be an integer, got {type(value).__name__} {value!r}") from None
    if number <= 0:
        raise ValueError(f"fastshap: {what} must be positive, got {number}")
    return number


def _dims(dims: Sequence[int], head: str) -> tuple:
    if isinstance(dims, torch.Tensor) and dims.dim() == 1:
        dims = dims.tolist()  # Python ints (or floats, rejected below)
    if isinstance(dims, (str, bytes, torch.Tensor, set, frozenset, Mapping)) or not isinstance(dims, Iterable):
        raise TypeError(
            f"fastshap: {head} dims must be a list or tuple of feature widths (one int per modality, in the "
            f"order of the features), got {type(dims).__name__} {dims!r}"
        )
    dims = tuple(dims)
    if not dims:
        raise ValueError(f"fastshap: {head} dims is empty; give one feature width per modality")
    return tuple(_positive_int(d, f"{head} dims[{i}] (a feature width)") for i, d in enumerate(dims))


def _check_features(features, dims: tuple, head: str) -> list:
    """The list of n tensors (..., d_i) a head's forward takes: its length and each width (shapes only)."""
    if isinstance(features, torch.Tensor) or not isinstance(features, (list, tuple)):
        raise TypeError(
            f"fastshap: {head} takes a list or tuple of {len(dims)} feature tensors (one per modality, widths "
            f"{list(dims)}), got {type(features).__name__}"
        )
    if len(features) != len(dims):
        raise ValueError(
            f"fastshap: {head} was built for {len(dims)} modalities (widths {list(dims)}), got {len(features)} "
            f"feature tensors"
        )
    for i, (x, d) in enumerate(zip(features, dims)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"fastshap: {head} features[{i}] is a {type(x).__name__}, not a tensor")
        if x.dim() == 0 or x.shape[-1] != d:
            raise ValueError(
                f"fastshap: {head} features[{i}] must have width {d} (its last dimension; the head was built "
                f"for widths {list(dims)}), got shape {tuple(x.shape)}"
            )
    return list(features)


class ConcatLinear(nn.Module):
    """The paper's head: one Linear over the concatenated features. Same function as nn.Linear(sum(dims), C)."""

    def __init__(self, dims: Sequence[int], num_classes: int):
        super().__init__()
        self.dims = _dims(dims, "ConcatLinear")
        self.fc = nn.Linear(sum(self.dims), _positive_int(num_classes, "ConcatLinear num_classes"))

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
        self.dims = _dims(dims, "DecisionFusion")
        num_classes = _positive_int(num_classes, "DecisionFusion num_classes")
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
        self.dims = _dims(dims, "ConcatMLP")
        hidden = _positive_int(hidden, "ConcatMLP hidden")
        self.fc1 = nn.Linear(sum(self.dims), hidden)
        self.fc2 = nn.Linear(hidden, _positive_int(num_classes, "ConcatMLP num_classes"))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.cat(_check_features(features, self.dims, "ConcatMLP"), dim=-1))))
