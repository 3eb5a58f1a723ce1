"""Record the per-modality features a model hands its fusion head, for valuing them in the same step.

The natural way to grab a head's inputs is a forward pre-hook, but ``fastshap.modality_shapley`` cannot
know what an arbitrary hook does (weight_norm's hook recomputes the weight), so a hooked head runs as a
callable: 2^n head forwards on the slow path, with the hook firing on every coalition batch. The hook that
:func:`capture_features` registers is marked observe-only: the op ignores it and keeps the fused path,
and it never records while the op itself evaluates a head (a callable head's coalition batches)::

    capture = fastshap.capture_features(model.head)        # once
    ...
    logits = model(audio, visual)                          # the normal forward, with gradients
    loss = F.cross_entropy(logits, labels)
    phi = capture.value(labels)                            # (B, n), from what the head just received
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FeatureCapture", "capture_features"]

#: Marks a hook that only reads its inputs: ``fastshap.api`` does not count it as changing the head.
OBSERVE_ONLY = "_fastshap_observe_only"

# How deeply the op is evaluating a callable head on this thread (its coalition batches are not recorded).
_evaluating = threading.local()


@contextlib.contextmanager
def _op_evaluation():
    _evaluating.depth = getattr(_evaluating, "depth", 0) + 1
    try:
        yield
    finally:
        _evaluating.depth -= 1


def op_evaluation(callable_head: bool):
    """The context the op runs its backend in: while a callable head is evaluated on the coalitions, the
    captures on this thread do not record (a null context for the decomposed heads, which never run)."""
    return _op_evaluation() if callable_head else contextlib.nullcontext()


def is_observe_only(hook) -> bool:
    """Whether `hook` was registered by a :class:`FeatureCapture` (it changes nothing the head computes)."""
    return getattr(hook, OBSERVE_ONLY, False) is True


class _RecordInputs:
    """The forward pre-hook: keeps a detached reference to the head's first positional argument."""

    _fastshap_observe_only = True

    def __init__(self, capture: FeatureCapture):
        self.capture = capture

    def __call__(self, module, args):
        if getattr(_evaluating, "depth", 0):
            return None  # the op's own coalition batches
        if args:
            self.capture._record(args[0])
        return None  # never changes the inputs


class FeatureCapture:
    """What ``head`` received in its latest forward (outside the op), as n feature tensors ``(B, d_i)``.

    Args:
        head: the fusion head module, called by the model as ``head(features)`` with a list of n tensors
            ``(B, d_i)`` (the :mod:`fastshap.heads` modules, or a module of your own), or as
            ``head(torch.cat(features, -1))`` (an ``nn.Linear`` over the concatenated features).
        dims: the feature widths ``[d_1, ..., d_n]``, to split a concatenated input; taken from
            ``head.dims`` when the head has them (the fastshap heads).

    The features are kept detached (no graph is held) and replaced at each forward; a head that sees a
    batch with re-sampled copies sees their removed modalities already zeroed, so value the original rows
    (``keep.all(1)``) when you want the samples' own values.
    """

    def __init__(self, head: nn.Module, dims: Sequence[int] | None = None):
        if not isinstance(head, nn.Module):
            raise TypeError(
                f"fastshap: capture_features takes the fusion head module (its forward pre-hook records the "
                f"inputs), got {type(head).__name__}"
            )
        if dims is None:
            dims = getattr(head, "dims", None)
        if dims is not None:
            dims = [int(d) for d in dims]
            if not dims or any(d <= 0 for d in dims):
                raise ValueError(f"fastshap: capture_features dims must be positive feature widths, got {dims}")
        self.head = head
        self.dims = dims
        self._inputs = None
        self._handle = head.register_forward_pre_hook(_RecordInputs(self))

    def _record(self, inputs) -> None:
        if isinstance(inputs, torch.Tensor):
            self._inputs = inputs.detach()
        elif isinstance(inputs, (list, tuple)) and all(isinstance(x, torch.Tensor) for x in inputs):
            self._inputs = [x.detach() for x in inputs]
        else:
            self._inputs = inputs  # reported when .features is read, not inside the user's forward

    @property
    def features(self) -> list:
        """n tensors ``(B, d_i)``: the head's input of its latest forward (not the op's coalition batches)."""
        inputs = self._inputs
        if inputs is None:
            raise RuntimeError("fastshap: the captured head has not run a forward since capture_features (or clear)")
        if isinstance(inputs, torch.Tensor):
            if self.dims is None:
                raise ValueError(
                    f"fastshap: the head received one tensor {tuple(inputs.shape)} (concatenated features); "
                    f"pass dims=[d_1, ..., d_n] to capture_features to split it into the modalities"
                )
            if inputs.dim() != 2 or inputs.shape[1] != sum(self.dims):
                raise ValueError(
                    f"fastshap: the head received shape {tuple(inputs.shape)}, which dims {self.dims} (total "
                    f"{sum(self.dims)}) cannot split into (B, d_i) features"
                )
            return list(inputs.split(self.dims, dim=1))
        if not isinstance(inputs, list):
            raise TypeError(
                f"fastshap: the head received a {type(inputs).__name__}; capture_features records a list of "
                f"feature tensors or one concatenated tensor"
            )
        return list(inputs)

    def value(self, labels: torch.Tensor, **kwargs) -> torch.Tensor:
        """``fastshap.modality_shapley(self.features, self.head, labels, **kwargs)``: phi ``(B, n)``."""
        from fastshap.api import modality_shapley  # the op imports this module

        return modality_shapley(self.features, self.head, labels, **kwargs)

    def clear(self) -> None:
        """Drop the recorded features (they hold the batch's memory until the next forward)."""
        self._inputs = None

    def remove(self) -> None:
        """Remove the hook; the head is then as it was."""
        self._handle.remove()
        self._inputs = None

    def __enter__(self) -> FeatureCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def capture_features(head: nn.Module, dims: Sequence[int] | None = None) -> FeatureCapture:
    """Record what ``head`` receives in each forward, without sending it to the op's slow path.

    See :class:`FeatureCapture`; ``with fastshap.capture_features(head) as capture:`` removes the hook at
    the end of the block.
    """
    return FeatureCapture(head, dims)
