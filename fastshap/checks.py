"""Value checks that wait on the device: :class:`DeferredChecks` collects them over many calls.

``fastshap.modality_shapley`` checks the values of its inputs (labels in range, finite head parameters,
finite partial logits) before it answers. On a GPU each of those checks is a host-device synchronisation,
which stalls a training step that calls the op every batch. With ``defer_checks=DeferredChecks()`` the
call instead adds what it found to counters on the device, marks the affected phi rows NaN (labels) and
returns at once; :meth:`DeferredChecks.raise_if_any`, called once at a point that synchronises anyway (the
end of an epoch), raises the same kind of error the call would have raised.
"""

from __future__ import annotations

from typing import Optional

import torch

# Counter slots: calls that had out-of-range labels (count of labels), head parameters with NaN/Inf
# (count of calls), then one slot per modality: rows whose partial logits held NaN/Inf.
_LABELS, _PARAMS, _MODALITY0 = 0, 1, 2


class DeferredChecks:
    """Device-side counters of bad values over many ``modality_shapley`` calls; one sync to read them.

    >>> checks = fastshap.DeferredChecks()
    >>> for batch in loader:
    ...     phi = fastshap.modality_shapley(feats, head, labels, defer_checks=checks)
    >>> checks.raise_if_any()   # ValueError naming what was wrong and in how many calls
    """

    def __init__(self, max_modalities: int = 16):
        self._size = _MODALITY0 + max_modalities
        self._counts: Optional[torch.Tensor] = None
        self.calls = 0
        self.num_classes: Optional[int] = None
        #: heads whose parameters were already counted in this collection, by version (fastshap.api)
        self.verified: dict = {}

    def _slot(self, device: torch.device) -> torch.Tensor:
        if self._counts is None:
            self._counts = torch.zeros(self._size, dtype=torch.float64, device=device)
        elif self._counts.device != device:
            raise ValueError(
                f"fastshap: one DeferredChecks collects the checks of one device; it holds {self._counts.device}, "
                f"this call runs on {device}"
            )
        return self._counts

    def add_labels(self, bad: torch.Tensor, num_classes: int) -> None:
        """bad: boolean mask of the call's out-of-range labels."""
        self.num_classes = num_classes
        # In-place adds into views: one kernel each (indexed `+=` costs a copy more), and on a GPU each
        # launch costs the host tens of microseconds.
        self._slot(bad.device).narrow(0, _LABELS, 1).add_(bad.sum())

    def add_params(self, finite: torch.Tensor) -> None:
        """finite: 0-d boolean, True when every head parameter is finite."""
        self._slot(finite.device).narrow(0, _PARAMS, 1).add_(finite.logical_not())

    def add_nonfinite(self, per_modality: torch.Tensor) -> None:
        """per_modality: (n,) counts of rows whose partial logits held NaN or Inf."""
        self._slot(per_modality.device).narrow(0, _MODALITY0, per_modality.numel()).add_(per_modality)

    def reset(self) -> None:
        self._counts = None
        self.calls = 0
        self.verified = {}

    def raise_if_any(self, reduce=None, device=None) -> None:
        """Reads the counters (one synchronisation), resets them and raises ValueError if any is non-zero.

        reduce: a function applied to the counters first, e.g. an all-reduce sum over the ranks of a
        distributed job, so that every rank raises together instead of one rank leaving the others waiting
        in their next collective; every rank must then call it, with ``device`` (where the counters live
        when this rank recorded no call)."""
        if self._counts is None:
            if reduce is None:
                self.reset()
                return
            self._slot(torch.device(device) if device is not None else torch.device("cpu"))
        counts = self._counts if reduce is None else reduce(self._counts)
        counts = [int(c) for c in counts.tolist()]
        calls = self.calls
        self.reset()
        problems = []
        if counts[_LABELS]:
            problems.append(f"{counts[_LABELS]} labels outside [0, {self.num_classes}) (their phi rows are NaN)")
        if counts[_PARAMS]:
            problems.append(f"the head parameters held NaN or Inf values in {counts[_PARAMS]} calls")
        for i, c in enumerate(counts[_MODALITY0:]):
            if c:
                problems.append(
                    f"modality {i}'s partial logits held NaN or Inf in {c} rows (NaN/Inf features or baselines, "
                    f"or an overflow of features times head weights)"
                )
        if problems:
            raise ValueError(
                f"fastshap: deferred checks over {calls} calls found bad values: " + "; ".join(problems)
                + ". Run the calls without defer_checks to stop at the first bad call."
            )
