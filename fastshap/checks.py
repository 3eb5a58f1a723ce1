"""Value checks that wait on the device: :class:`DeferredChecks` collects them over many calls.

``fastshap.modality_shapley`` checks the values of its inputs (labels in range, finite partial logits,
finite coalition logits: NaN/Inf head parameters show there) before it answers, from counts its op makes
on the device. On a GPU reading them is a host-device synchronisation, which stalls a training step that
calls the op every batch. With ``defer_checks=DeferredChecks()`` the call instead adds the counts to
counters on the device (the affected phi rows are NaN) and returns at once;
:meth:`DeferredChecks.raise_if_any`, called once at a point that synchronises anyway (the end of an epoch),
raises the same kind of error the call would have raised.
"""

from __future__ import annotations

import threading

import torch

from fastshap._validate import positive_int

# Counters: a (2, max_modalities) float64 tensor laid out so that one in-place add takes rows 2 and 3 of an
# op's stats: row 0 counts, per modality, the rows whose partial logits held NaN/Inf; row 1 holds in column
# 0 the count of NaN phi rows (the ops count them in stats[3, 0], the rest of that row is 0).
_NONFINITE, _OTHER = 0, 1
_NAN_ROWS = 0


class DeferredChecks:
    """Device-side counters of bad values over many ``modality_shapley`` calls; one sync to read them.

    >>> checks = fastshap.DeferredChecks()
    >>> for batch in loader:
    ...     phi = fastshap.modality_shapley(feats, head, labels, defer_checks=checks)
    >>> checks.raise_if_any()   # ValueError naming what was wrong and in how many calls

    One object may serve calls from several threads (a lock orders their updates); under torch.compile
    the updates are traced without it.
    """

    def __init__(self, max_modalities: int = 16):
        max_modalities = positive_int(max_modalities, "DeferredChecks(max_modalities), the most modalities of a call,")
        self._width = max(2, max_modalities)
        self._counts: torch.Tensor | None = None
        self.calls = 0
        self.num_classes: int | None = None
        self._lock = threading.Lock()

    def _new_counters(self, device: torch.device) -> torch.Tensor:
        # Not an inference tensor even when the first call runs under torch.inference_mode(): later calls
        # outside it add to the counters in place, which an inference tensor refuses.
        with torch.inference_mode(False):
            return torch.zeros(2, self._width, dtype=torch.float64, device=device)

    def _slot(self, device: torch.device) -> torch.Tensor:
        if self._counts is None:
            self._counts = self._new_counters(device)
        elif self._counts.device != device:
            raise ValueError(
                f"fastshap: one DeferredChecks collects the checks of one device; it holds {self._counts.device}, "
                f"this call runs on {device}"
            )
        return self._counts

    def add_stats(self, stats: torch.Tensor, num_classes: int | None) -> None:
        """Counts one call. stats: its op's (4, n) stats; rows 2 (non-finite rows per modality) and 3 (NaN
        phi rows) are added with one in-place add (each launch costs a GPU call's host tens of microseconds)."""
        n = stats.shape[1]
        if n > self._width:
            raise ValueError(f"fastshap: this DeferredChecks holds {self._width} modalities, the call has {n}")
        if torch.compiler.is_compiling():  # dynamo cannot trace a lock (a graph break); compiled code adds alone
            self._add(stats, n, num_classes)
            return
        with self._lock:  # creating the counters and the in-place add are read-modify-writes
            self._add(stats, n, num_classes)

    def _add(self, stats: torch.Tensor, n: int, num_classes: int | None) -> None:
        if num_classes is not None:
            self.num_classes = num_classes
        self._slot(stats.device)[:, :n].add_(stats[2:4])
        self.calls += 1

    def _give_back(self, counters: torch.Tensor, calls: int) -> None:
        with self._lock:
            if self._counts is None:
                self._counts = counters
            else:
                self._counts.add_(counters)
            self.calls += calls

    def reset(self) -> None:
        with self._lock:
            self._counts = None
            self.calls = 0

    @staticmethod
    def _reduced(reduce, counters: torch.Tensor) -> torch.Tensor:
        """reduce(counters), checked: it must return the reduced counters, a tensor of their shape."""
        if not callable(reduce):
            raise TypeError(f"fastshap: raise_if_any(reduce=...) must be a function, got {type(reduce).__name__}")
        shape = tuple(counters.shape)
        counts = reduce(counters)
        if not isinstance(counts, torch.Tensor):
            raise TypeError(
                f"fastshap: raise_if_any's reduce returned {type(counts).__name__}; it must return the reduced "
                f"counters, a tensor of shape {shape} (torch.distributed.all_reduce works in place and returns "
                f"None: reduce=lambda c: (dist.all_reduce(c), c)[1])"
            )
        if tuple(counts.shape) != shape:
            raise ValueError(
                f"fastshap: raise_if_any's reduce returned a tensor of shape {tuple(counts.shape)}; it must return "
                f"the reduced counters, of their shape {shape}"
            )
        return counts

    def raise_if_any(self, reduce=None, device=None) -> None:
        """Reads the counters (one synchronisation), resets them and raises ValueError if any is non-zero.

        reduce: a function applied to the counters first, e.g. an all-reduce sum over the ranks of a
        distributed job, so that every rank raises together instead of one rank leaving the others waiting
        in their next collective; every rank must then call it, with ``device`` (where the counters live
        when this rank recorded no call)."""
        with self._lock:  # take the counters; calls from other threads meanwhile start new ones
            counters, calls = self._counts, self.calls
            self._counts, self.calls = None, 0
        taken = counters is not None
        if not taken:
            if reduce is None:
                return
            counters = self._new_counters(torch.device(device) if device is not None else torch.device("cpu"))
        try:
            counts = counters if reduce is None else self._reduced(reduce, counters)
        except BaseException:
            if taken:  # a bad reduce loses no count (fresh zero counters are not worth keeping)
                self._give_back(counters, calls)
            raise
        nonfinite, other = [[int(c) for c in row] for row in counts.tolist()]
        problems = []
        if other[_NAN_ROWS]:
            # num_classes is the last call's (None for callable heads, whose class count shows only in logits)
            labels = "the classes" if self.num_classes is None else f"[0, {self.num_classes})"
            problems.append(
                f"{other[_NAN_ROWS]} phi rows are NaN (labels outside {labels}, NaN/Inf features or baselines, or "
                f"coalition logits holding NaN or Inf: NaN/Inf head parameters, or an overflow)"
            )
        for i, c in enumerate(nonfinite):
            if c:
                problems.append(
                    f"modality {i}'s partial logits held NaN or Inf in {c} rows (NaN/Inf features or baselines, "
                    f"or an overflow of features times head weights)"
                )
        if problems:
            raise ValueError(
                f"fastshap: deferred checks over {calls} calls found bad values: "
                + "; ".join(problems)
                + ". Run the calls without defer_checks to stop at the first bad call."
            )
