"""Classification metrics from a confusion matrix, which the engine accumulates on the device (no sync per
batch) and all-reduces across ranks."""

from __future__ import annotations

import torch


def confusion_update(confusion: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Adds a batch to `confusion` ((C, C) float64, rows = true class, columns = predicted), in place.

    Every label element counts (per-segment outputs (B, T, C) with labels (B, T) too)."""
    num_classes = confusion.shape[0]
    cell = labels.flatten() * num_classes + logits.argmax(-1).flatten()
    confusion.view(-1).index_add_(0, cell, torch.ones_like(cell, dtype=confusion.dtype))


def weighted_f1_from_confusion(confusion: torch.Tensor) -> float:
    """F1 of each class weighted by its support (scikit-learn's ``average='weighted'``); 0 when empty."""
    confusion = confusion.double().cpu()
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    tp = confusion.diagonal()
    denominator = predicted + support
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp_min(1), torch.zeros_like(tp))
    total = support.sum()
    return float((f1 * support).sum() / total) if total > 0 else 0.0


def weighted_f1(predictions, labels, num_classes: int) -> float:
    """Weighted F1 of class predictions against labels (any shapes, flattened)."""
    predictions = torch.as_tensor(predictions).flatten().long()
    labels = torch.as_tensor(labels).flatten().long()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    confusion.view(-1).index_add_(
        0, labels * num_classes + predictions, torch.ones(labels.numel(), dtype=torch.float64)
    )
    return weighted_f1_from_confusion(confusion)
