"""The op's memory guards in Python, shared by the fake kernel of ``torch.ops.fastshap.shapley``
(:mod:`fastshap._ops`) and the Triton op (:mod:`fastshap.triton_shapley`): the checks of the compiled op
(csrc/shapley_common.cpp, in the same order and words) that keep a kernel from reading out of bounds or
misreading memory: counts, ranks, shapes, dtypes, devices, the head kind and the benefit name.

They are not the user's checks: ``fastshap.modality_shapley`` validates a call first, with its own messages
(fastshap/api.py). These only make a direct call of an op with bad arguments raise ValueError instead of
reading past a tensor. They read shapes only, never values, so they also run while tracing with fake tensors.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fastshap import head_kinds

MAX_MODALITIES = 16
BENEFITS = ("paper", "accuracy", "probability")


class OpShape(NamedTuple):
    kind: head_kinds.HeadKind
    n: int
    batch: int
    dims: tuple
    K: int  # the first layer's width: C, or H for the MLP
    C: int  # classes


def check_op(
    features, head, params, baselines, labels, benefit, max_modalities: int | None = MAX_MODALITIES
) -> OpShape:
    """Checks an op call's arguments as the compiled op does (ValueError) and returns what they fix.
    max_modalities: None for the sampled op, which takes any n >= 1."""
    n = len(features)
    if n < 1 and max_modalities is None:
        raise ValueError("fastshap: the op needs at least one modality's features")
    if max_modalities is not None and not 1 <= n <= max_modalities:
        raise ValueError(f"fastshap: between 1 and {max_modalities} modalities are supported exactly, got {n}")
    f0 = features[0]
    if not f0.is_floating_point():
        raise ValueError(f"fastshap: features must be floating point, got {f0.dtype}")
    batch = f0.shape[0] if f0.dim() == 2 else -1
    for i, f in enumerate(features):
        if f.dim() != 2:
            raise ValueError(f"fastshap: features[{i}] must be (B, d), got shape {list(f.shape)}")
        if f.shape[0] != batch:
            raise ValueError(f"fastshap: features[{i}] has batch {f.shape[0]}, features[0] has {batch}")
        if f.dtype != f0.dtype:
            raise ValueError(f"fastshap: features[{i}] is {f.dtype}, features[0] is {f0.dtype}")
        if f.device != f0.device:
            raise ValueError(f"fastshap: features[{i}] is on {f.device}, features[0] on {f0.device}")
    dims = tuple(f.shape[1] for f in features)
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"fastshap: labels must be ({batch},), got {list(labels.shape)}")
    if labels.dtype != torch.int64:
        raise ValueError(f"fastshap: labels must be int64, got {labels.dtype}")
    if labels.device != f0.device:
        raise ValueError(f"fastshap: labels are on {labels.device}, features on {f0.device}")
    if baselines:
        _check_baselines(baselines, dims, batch, f0)
    kind = head_kinds.get(head)
    if len(params) != len(kind.params):
        raise ValueError(f"fastshap: the {kind.name} head takes {len(kind.params)} parameters, got {len(params)}")
    value = {"n": n, "D": sum(dims)}
    for name, symbols, param in zip(kind.params, kind.shapes, params):
        bound = dict(value)  # the message shows what was known before this parameter
        ok = param.dim() == len(symbols)
        for symbol, size in zip(symbols, param.shape) if ok else ():
            ok = bound.setdefault(symbol, size) == size
            if not ok:
                break
        if not ok:
            raise ValueError(
                f"fastshap: {kind.name} {name} must be {_expected(symbols, value)}, got {list(param.shape)}"
            )
        value = bound
        if param.device != f0.device:
            raise ValueError(f"fastshap: {name} is on {param.device}, features on {f0.device}")
        if not param.is_floating_point():
            raise ValueError(f"fastshap: {name} must be floating point, got {param.dtype}")
    if benefit not in BENEFITS:
        raise ValueError(f"fastshap: unknown benefit {benefit!r}; expected 'paper', 'accuracy' or 'probability'")
    return OpShape(kind, n, batch, dims, params[kind.first_layer].shape[0], value["C"])


def _check_baselines(baselines, dims, batch, f0) -> None:
    """All shared (d_i,) or all per-sample (B, d_i), as baselines[0] is; the features' dtype and device."""
    if len(baselines) != len(dims):
        raise ValueError(f"fastshap: {len(baselines)} baselines for {len(dims)} modalities")
    shared = baselines[0].dim() == 1
    for i, (b, d) in enumerate(zip(baselines, dims)):
        want = (d,) if shared else (batch, d)
        if tuple(b.shape) != want:
            if i == 0:
                raise ValueError(f"fastshap: baselines[0] must be ({d},) or ({batch}, {d}), got {list(b.shape)}")
            raise ValueError(
                f"fastshap: baselines[{i}] must be {want} (all shared (d_i,) or all per-sample (B, d_i), as "
                f"baselines[0]), got {list(b.shape)}"
            )
        if b.device != f0.device:
            raise ValueError(f"fastshap: baselines[{i}] is on {b.device}, features on {f0.device}")
        if b.dtype != f0.dtype:
            raise ValueError(f"fastshap: baselines[{i}] is {b.dtype}, features are {f0.dtype}")


def _expected(symbols: str, value: dict) -> str:
    """The expected shape, e.g. ``(C, H) = (C, 8)``: its symbols, then their values where known."""
    known = "".join(str(value.get(s, s)) + ", " for s in symbols)[:-2]
    return f"{head_kinds.shape_text(symbols)} = ({known}{',' if len(symbols) == 1 else ''})"
