"""Helpers shared by the baselines of the paper's tables (OGM-GE, G-Blending, Greedy, PMR, AGM).

Not a method itself (the leading underscore keeps it out of the method registry).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from fastshap import heads
from fastshap_train import distributed


class NotApplicable(ValueError):
    """A method cannot run on this data (e.g. Greedy with n != 2 modalities); the message says why."""


def unimodal_logits(head, features) -> list:
    """n tensors (B, C): each modality's own output, as the baselines' papers define it for late fusion.

    Concat-linear head: modality i's slice of the weights applied to its features plus bias / n (OGM-GE's
    and PMR's released code; the n outputs sum to the fused logits). Decision fusion: each modality's own
    classifier. Other heads have no per-modality output.
    """
    if isinstance(head, heads.ConcatLinear):
        return head.unimodal_logits(features)
    if isinstance(head, heads.DecisionFusion):
        return head.per_modality_logits(features)
    raise ValueError(f"{type(head).__name__} has no per-modality logits; use --head concat or decision")


def label_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sum over the batch of softmax(logits)[y] (float64, detached): OGM-GE's and PMR's score s_m."""
    probs = torch.softmax(logits.detach().double(), -1)
    return probs.gather(1, labels.view(-1, 1)).sum()


def reduce_sum(values: torch.Tensor, trainer) -> torch.Tensor:
    """Sum a small tensor over DDP ranks (identity without DDP), so every rank takes the same decision."""
    return distributed.all_reduce_sum(values, trainer.dist)


def in_window(epoch: int, start: int, end: int) -> bool:
    """The papers' `modulation_starts <= epoch <= modulation_ends` (a negative end: no end)."""
    return epoch >= start and (end < 0 or epoch <= end)


def encoder_parameters(core, modality: str, weights_only: bool = False) -> list:
    """Trainable parameters of one modality's encoder (``weights_only``: tensors of dim >= 2)."""
    params = [p for p in core.encoders[modality].parameters() if p.requires_grad]
    return [p for p in params if p.dim() >= 2] if weights_only else params


def check_head(cfg, allowed=("concat", "decision")) -> str | None:
    if cfg["head"] not in ("auto",) + tuple(allowed):
        return f"needs per-modality logits: --head {' or '.join(allowed)}, not {cfg['head']}"
    return None


def eval_loader(trainer, indices, dataset=None) -> DataLoader:
    """Unshuffled batches of the base training samples `indices` (eval transforms by default)."""
    return trainer.ordered_loader(dataset if dataset is not None else trainer.value_set, indices, "method-eval")


def random_subset(pool: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` elements of `pool` without replacement (all of it when count >= len(pool)), sorted."""
    if count >= len(pool):
        return pool.clone()
    return pool[torch.randperm(len(pool), generator=generator)[:count]].sort().values
