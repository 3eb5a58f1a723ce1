"""Inputs shared by the oracle, kernel and Triton tests: layouts, heads, labels and baselines drawn from one
seeded generator, so that a case id always means the same numbers. (tests/oracle.py, the independent
reference, imports nothing from fastshap; this module builds fastshap heads.)"""

from __future__ import annotations

import math

import torch
from oracle import NonlinearHead
from torch import nn

from fastshap import heads


def layout(values: torch.Tensor, kind: str) -> torch.Tensor:
    """values (B, d) -> the same values as "contig", "T" (a column-major view) or "strided" (every other
    column of a wider tensor, NaN in the others). Cast before calling, so that the view survives."""
    if kind == "contig":
        return values.clone()
    if kind == "T":
        return values.t().contiguous().t()
    batch, d = values.shape
    # NaN between the columns: a backend that reads a neighbouring column gives NaN phi instead of passing.
    wide = torch.full((batch, 2 * d + 1), float("nan"), dtype=values.dtype)
    wide[:, 1::2] = values
    return wide[:, 1::2]


def make_head(kind: str, dims, num_classes: int, g: torch.Generator, hidden: int = 24):
    """A head of `kind` with parameters drawn from `g` (nn.Linear-like scale, biases of a similar size)."""
    total = sum(dims)
    if kind == "callable":
        return NonlinearHead(dims, num_classes, generator=g)
    head = {
        "linear": lambda: nn.Linear(total, num_classes),
        "concat": lambda: heads.ConcatLinear(dims, num_classes),
        "decision": lambda: heads.DecisionFusion(dims, num_classes),
        "mlp": lambda: heads.ConcatMLP(dims, hidden, num_classes),
    }[kind]()
    with torch.no_grad():
        for p in head.parameters():
            fan_in = p.shape[1] if p.dim() == 2 else 4
            p.copy_(torch.randn(p.shape, generator=g) * (1.5 / math.sqrt(fan_in)))
    return head


def draw_labels(logits: torch.Tensor, num_classes: int, g: torch.Generator, kind: str) -> torch.Tensor:
    """Half the labels are the full model's prediction, so that coalitions are often right and values vary;
    "strided" layouts get every other element of a wider tensor."""
    batch = logits.shape[0]
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    guess = torch.rand(batch, generator=g) < 0.5
    labels = torch.where(guess, logits.float().argmax(-1), labels) if batch else labels
    if kind == "strided":
        wide = torch.zeros(2 * batch, dtype=torch.int64)
        wide[::2] = labels
        labels = wide[::2]
    return labels


def draw_baselines(kind: str, dims, batch: int, dtype, layout_kind: str, g: torch.Generator):
    """None ("none"), or per modality a shared (d_i,) or per-sample (B, d_i) baseline ("shared", "sample",
    or "mixed": shared for even modalities)."""
    if kind == "none":
        return None
    out = []
    for i, d in enumerate(dims):
        shared = kind == "shared" or (kind == "mixed" and i % 2 == 0)
        b = torch.randn(d if shared else (batch, d), generator=g) * 0.5
        out.append(b.to(dtype) if shared else layout(b.to(dtype), layout_kind))
    return out


def spoil_labels(labels: torch.Tensor, num_classes: int):
    """(labels with rows 1 and the last outside [0, C) (C and -3), mask of those rows)."""
    bad = torch.zeros(labels.shape[0], dtype=torch.bool)
    bad[[1, -1]] = True
    spoiled = labels.clone()
    spoiled[1], spoiled[-1] = num_classes, -3
    return spoiled, bad


def assert_bad_labels_counted(got, want, bad: torch.Tensor) -> None:
    """got: an op's (phi, stats) with the labels of the `bad` rows outside [0, C); want: the same op on the
    valid labels. The kernels never stop on bad labels: those rows are NaN, stats[3, 0] counts them, and
    every other row is the value computed without them."""
    (phi, stats), (want_phi, want_stats) = [(p.cpu(), s.cpu()) for p, s in (got, want)]
    assert stats.shape == want_stats.shape == (4, phi.shape[1])
    assert torch.isnan(phi[bad]).all(), phi[bad]
    assert torch.equal(phi[~bad], want_phi[~bad])
    assert stats[3].tolist() == [float(bad.sum())] + [0.0] * (phi.shape[1] - 1)
    assert want_stats[3].abs().sum() == 0
    assert torch.equal(stats[2], want_stats[2])
