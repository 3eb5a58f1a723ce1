"""Coalition values and pairwise modality interactions: what the Shapley op computes on its way to phi.

    v = fastshap.coalition_values([audio, visual], head, labels)         # (B, 4): v({}), v({a}), v({v}), v({a, v})
    I = fastshap.modality_interactions([audio, visual], head, labels)    # (B, 2, 2): phi on the diagonal

Semantics (those of :func:`fastshap.modality_shapley`, docs/report.md):

* ``v(S)``: coalition ``S`` is a bitmask, bit ``i`` set when modality ``i`` is present; column ``S`` of
  :func:`coalition_values`. The benefit's own value of the empty set: 0 for ``"paper"`` (by definition),
  ``1[argmax H(empty) == y]`` for ``"accuracy"``, ``softmax(H(empty))[y]`` for ``"probability"``.
* Pairwise Shapley interaction index (Grabisch and Roubens 1999), for ``i != j``::

      I_ij = sum over S in N \\ {i, j} of |S|! (n - |S| - 2)! / (n - 1)! * (v(S+i+j) - v(S+i) - v(S+j) + v(S))

  computed as integer numerators ``sum_T v(T) k_ij(T)`` (exact in float64 for the discrete benefits, whose
  v(T) are small integers) divided once by ``(n - 1)!``. The diagonal holds ``phi_i``, the numerators of
  :func:`fastshap.reference.shapley_from_values` divided by ``n!``, so that it equals
  ``modality_shapley(...)`` exactly for the discrete benefits.

Backends: ``"torch"`` (fastshap.reference's partial products and coalition scores, any head, any device)
and ``"cpp"`` (``torch.ops.fastshap.coalition_values`` / ``modality_interactions``: the Shapley kernel's
coalition walk, csrc/cpu/coalition_walk.h); ``"auto"`` picks cpp for the fastshap heads on the CPU, torch
otherwise; ``"triton"`` and ``"cuda"`` decline these calls. For the discrete benefits torch and cpp agree
exactly: the same GEMMs and the same summation order decide every argmax, and the numerators are exact
integers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import torch

from fastshap import _extension, _op_checks, _validate, api, backends, capture, reference
from fastshap.backends import BackendError, Call, HeadSpec

#: Default bound on the bytes a call may return (coalition_values: B * 2^n * 4): a call past it is refused
#: before anything is computed (``max_bytes=`` raises or lowers it).
MAX_BYTES = 1 << 31

#: Backends that compute coalition values and interactions, in no particular order (selection follows
#: backends.AUTO_ORDER). The compiled ones need their op in the loaded extension.
_COMPILED_OP = {"cpp": ("coalition_values", "CPU")}
_IMPLEMENTED = ("torch", *_COMPILED_OP)


# ---------------------------------------------------------------------------------------------------------
# the public functions


def coalition_values(
    features: Sequence[torch.Tensor],
    head: api.Head,
    labels: torch.Tensor,
    *,
    baselines: Sequence[torch.Tensor] | None = None,
    benefit: str = "paper",
    backend: str = "auto",
    max_bytes: int = MAX_BYTES,
) -> torch.Tensor:
    """Every coalition's value v(S), per sample.

    Args: those of :func:`fastshap.modality_shapley` (features n x ``(B, d_i)``, head, labels ``(B,)``,
    baselines, benefit, backend), and
        max_bytes: the most bytes the result may take (default :data:`MAX_BYTES`, 2 GiB); a call whose
            ``(B, 2^n)`` float32 result would take more is refused (ValueError naming the bound): value the
            batch in chunks, or raise the bound. A callable head's evaluation holds the values in float64:
            twice the result, which the bound then covers.

    Returns:
        ``(B, 2^n)`` float32, column ``S`` = v(S) with bit i of S = modality i present. Exact small integers
        for the discrete benefits; the probability benefit's float64 values rounded once. No gradients.
    """
    call = _prepare(features, head, labels, baselines, benefit, backend)
    count = 1 << call.n
    _check_size(max_bytes, call, count * 4, f"({call.batch}, 2^{call.n}) float32 coalition values")
    return _run(call, (count,), torch.Tensor.float, "coalition_values")


def modality_interactions(
    features: Sequence[torch.Tensor],
    head: api.Head,
    labels: torch.Tensor,
    *,
    baselines: Sequence[torch.Tensor] | None = None,
    benefit: str = "paper",
    backend: str = "auto",
    max_bytes: int = MAX_BYTES,
) -> torch.Tensor:
    """The pairwise Shapley interaction index of every pair of modalities, phi on the diagonal.

    Args: those of :func:`coalition_values`; ``max_bytes`` bounds the ``(B, n, n)`` float32 result (and, for
    a callable head, the ``(B, 2^n)`` float64 coalition values its evaluation holds; the fastshap heads'
    values are held a chunk of samples at a time, the cpp kernel's never).

    Returns:
        ``(B, n, n)`` float32, symmetric: ``[b, i, j]`` = I_ij of sample b (module docstring), ``[b, i, i]``
        = phi_i (equal to ``modality_shapley``'s for the discrete benefits). Positive I_ij: modalities i and j
        are worth more together than apart (complementary); negative: redundant. No gradients.
    """
    call = _prepare(features, head, labels, baselines, benefit, backend)
    n = call.n
    _check_size(max_bytes, call, n * n * 4, f"({call.batch}, {n}, {n}) float32 interactions")
    return _run(call, (n, n), interactions_from_values, "modality_interactions")


def _run(call: _Call, shape: tuple, from_values, op: str) -> torch.Tensor:
    """(B, *shape) float32 from the chosen backend: the torch backend turns each chunk of coalition values
    into its rows with `from_values`; a compiled backend runs fastshap::<op>. Then the API's value checks
    on the counts the backend made."""
    if call.batch == 0:
        return torch.zeros(0, *shape, dtype=torch.float32, device=call.device)
    with torch.no_grad(), api._no_autocast(call.device), capture.op_evaluation(call.spec.kind == "callable"):
        if call.backend.name == "torch":
            out = torch.empty(call.batch, *shape, dtype=torch.float32, device=call.device)
            walk = _ReferenceValues(call)
            for rows, values in walk.chunks():
                out[rows] = from_values(values)
            nonfinite = walk.nonfinite
        else:
            out, nonfinite = getattr(torch.ops.fastshap, op)(*call.op_args())
    _raise_if_bad(call, nonfinite, int(out.isnan().flatten(1).any(1).sum()))
    return out


# ---------------------------------------------------------------------------------------------------------
# interactions from coalition values (the torch backend; also what tests and users may call on their own v)


def pairs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the n (n - 1) / 2 pairs i < j, in the column order of :func:`pair_coefficients`."""
    return torch.triu_indices(n, n, offset=1, device="cpu").unbind(0)


@cache
def _pair_coefficients_cpu(n: int) -> torch.Tensor:
    masks = reference.coalition_masks(n, "cpu").long()  # (2^n, n)
    size = masks.sum(1)
    weight = [math.factorial(s) * math.factorial(n - s - 2) for s in range(max(n - 1, 0))]
    weight = torch.tensor(weight, dtype=torch.float64)
    rows, cols = pairs(n)
    mi, mj = masks[:, rows], masks[:, cols]  # (2^n, P)
    # T = S + (the members of {i, j} in T): the sign of v(T) in v(S+i+j) - v(S+i) - v(S+j) + v(S) is + when
    # T holds both or neither, - when it holds one; the weight is that of |S| = |T| minus those members.
    sign = 1.0 - 2.0 * ((mi + mj) % 2).double()
    rest = size.unsqueeze(1) - mi - mj
    return sign * weight[rest] if n >= 2 else torch.zeros(1 << n, 0, dtype=torch.float64)


@cache
def _pair_coefficients_on(n: int, device: torch.device) -> torch.Tensor:
    return _pair_coefficients_cpu(n).to(device)


def pair_coefficients(n: int, device=None) -> torch.Tensor:
    """(2^n, n (n - 1) / 2) float64 integer coefficients k_ij(T) = ±|S|! (n - |S| - 2)! (S = T minus i and
    j; + when T holds both or neither of i, j): I_ij = sum_T v(T) k_ij(T) / (n - 1)!."""
    return _pair_coefficients_on(n, reference._device_key(device or "cpu"))


def interactions_from_values(values: torch.Tensor) -> torch.Tensor:
    """values: (B, 2^n) coalition values (column S = v(S)) -> (B, n, n) float32 interactions, phi on the
    diagonal. Exact numerators (float64, integers for integer values) divided once; NaN values give NaN."""
    n = int(values.shape[1]).bit_length() - 1
    if values.shape[1] != 1 << n:
        raise ValueError(f"fastshap: coalition values must have 2^n columns, got {values.shape[1]}")
    v = values.double()
    out = torch.empty(v.shape[0], n, n, dtype=torch.float32, device=v.device)
    rows, cols = pairs(n)
    if rows.numel():
        pair = ((v @ pair_coefficients(n, v.device)) / math.factorial(n - 1)).float()
        out[:, rows, cols] = pair
        out[:, cols, rows] = pair
    diagonal = torch.arange(n)
    out[:, diagonal, diagonal] = reference.shapley_from_values(v)
    return out


# ---------------------------------------------------------------------------------------------------------
# the call: checks (the public API's own), backend selection, memory bound


@dataclass
class _Call:
    spec: HeadSpec
    features: list
    baselines: list | None
    labels: torch.Tensor
    benefit: str
    backend: backends.Backend
    n: int
    batch: int
    device: torch.device

    def op_args(self) -> tuple:
        """The compiled op's arguments: (features, head kind, params, baselines, labels, benefit)."""
        return (self.features, self.spec.kind, list(self.spec.params), list(self.baselines or []), self.labels,
                self.benefit)  # fmt: skip


def _prepare(features, head, labels, baselines, benefit, backend) -> _Call:
    """Checks the call with the functions fastshap.modality_shapley checks it with (fastshap._validate and
    the API's head reduction), in the same order, and picks a backend that computes coalition values."""
    feats = _validate.check_features(features)
    n, batch = len(feats), feats[0].shape[0]
    device, dtype = feats[0].device, feats[0].dtype
    spec = api._head_spec(head, [f.shape[1] for f in feats], device)
    labels = _validate.check_labels(labels, batch, device, spec)
    base = _validate.check_baselines(baselines, feats)
    _validate.check_benefit(benefit)
    _validate.check_backend(backend)
    call = Call(spec.kind, device, dtype, n, per_segment=labels.dim() == 2, note=spec.note)
    return _Call(spec, feats, base, labels, benefit, _select(backend, call), n, batch, device)


def _declines(name: str, call: Call) -> str | None:
    """Why backend `name` cannot compute this call's coalition values, or None."""
    if name not in _IMPLEMENTED:
        return "it does not compute coalition values or interactions (the torch and cpp backends do)"
    why = backends.why_not(name, call)
    if why is None and name in _COMPILED_OP and not _has_kernel(*_COMPILED_OP[name]):
        why = "the loaded fastshap._C was built without the coalition ops (rebuild the extension)"
    return why


@cache
def _has_kernel(op: str, dispatch_key: str) -> bool:
    try:  # the dispatcher raises for an op that an older build never registered
        return _extension.has_kernel(op, dispatch_key)
    except RuntimeError:
        return False


def _select(name: str, call: Call) -> backends.Backend:
    """backends.select's rules (an explicit name that cannot run raises with the reason; "auto" takes the
    first of the device's preference order that can), for the backends that compute coalition values."""
    if name != "auto":
        if name not in backends.BACKENDS:
            backends.select(name, call)  # raises: the unknown-name error lists the backends
        reason = _declines(name, call)
        if reason:
            raise BackendError(f"fastshap: backend {name!r} cannot run this call: {reason}")
        return backends.BACKENDS[name]
    reasons = []
    for candidate in backends.AUTO_ORDER.get(call.device.type, ("torch",)):
        reason = _declines(candidate, call)
        if reason is None:
            return backends.BACKENDS[candidate]
        reasons.append(f"{candidate}: {reason}")
    raise BackendError("fastshap: no backend can run this call:\n  " + "\n  ".join(reasons))


def _check_size(max_bytes, call: _Call, per_sample: int, what: str) -> None:
    """Refuses a call whose result (per_sample bytes a sample), or the float64 coalition values that a
    callable head's evaluation holds (the torch backend's callable_values), would pass max_bytes."""
    bound = _validate.positive_int(max_bytes, "max_bytes (a number of bytes)")
    if call.spec.kind == "callable":
        held = (1 << call.n) * 8
        if held > per_sample:
            per_sample, what = held, f"({call.batch}, 2^{call.n}) float64 coalition values of the callable head"
    size = call.batch * per_sample
    if size > bound:
        rows = bound // per_sample
        advice = f"value at most {rows} samples per call" if rows else "no sample fits: raise max_bytes"
        raise ValueError(
            f"fastshap: the {what} would take {size:,} bytes, over max_bytes = {bound:,} (the memory bound); "
            f"{advice}, or pass a larger max_bytes"
        )


def _raise_if_bad(call: _Call, nonfinite: torch.Tensor, nan_rows: int) -> None:
    """The errors modality_shapley raises for the same inputs (labels outside [0, C), NaN/Inf features,
    baselines or head parameters, overflows), named by the same function."""
    counts = [int(c) for c in nonfinite.tolist()]
    if nan_rows or any(counts):
        _validate.raise_bad_values(counts, nan_rows, call.labels, call.features, call.baselines, call.spec)


# ---------------------------------------------------------------------------------------------------------
# the torch backend: fastshap.reference's machinery, chunk by chunk


class _ReferenceValues:
    """Coalition values (float64) of a call in chunks of samples, computed by fastshap.reference's own
    functions in the order its Shapley functions use: partial products of the whole batch (the same GEMMs),
    coalition scores summed left to right, the MLP's second layer in the same chunks. ``nonfinite``: (n,)
    rows per modality whose partial products hold NaN/Inf (stats row 2 of the op)."""

    def __init__(self, call: _Call):
        self.call = call
        spec, feats, base = call.spec, call.features, call.baselines
        if spec.kind == "callable":
            self.values, self.bad, self.nonfinite = reference.callable_values(
                feats, spec.fn, call.labels, base, call.benefit
            )
            return
        ct = reference.compute_dtype(feats[0].dtype)
        first = spec.params[0]
        self.labels, self.bad = reference._safe_labels(call.labels, spec.num_classes)
        present = reference._partial_products(feats, first, ct)
        absent = reference._partial_products(base, first, ct) if base else None
        self.nonfinite = reference._count_nonfinite(present)
        if absent is not None:
            self.nonfinite = self.nonfinite + reference._count_nonfinite(absent)
        self.mean_of = 0
        if spec.kind == "concat":
            self.start = spec.params[1].to(ct)
        elif spec.kind == "decision":
            present, absent, self.start = reference._decision_probabilities(present, absent, spec.params[1], ct)
            self.mean_of = call.n
        else:  # mlp
            self.start = spec.params[1].to(ct)
            w2, self.b2 = reference._padded(spec.params[2], ct, spec.params[3])
            self.w2t = w2.t()
        self.present, self.absent = present, absent

    def chunks(self) -> Iterator[tuple[slice, torch.Tensor]]:
        call = self.call
        if call.spec.kind == "callable":
            yield slice(0, call.batch), self.values.masked_fill(self.bad.unsqueeze(1), math.nan)
            return
        batch, n, width = call.batch, call.n, self.present.shape[2]
        if call.spec.kind == "mlp":
            step = reference._mlp_chunk_samples(batch, n, width)
        else:
            step = reference._sample_chunk(batch, n, width)
        for b0 in range(0, batch, step):
            rows = slice(b0, min(batch, b0 + step))
            scores = reference._coalition_scores(self.start, self.present, self.absent, rows)
            if call.spec.kind == "mlp":
                values = self._mlp_values(scores, rows)
            else:
                values = reference._values(scores, self.labels[rows], call.benefit, self.mean_of)
            yield rows, values.masked_fill(self.bad[rows].unsqueeze(1), math.nan)

    def _mlp_values(self, pre: torch.Tensor, rows: slice) -> torch.Tensor:
        """The second layer as reference.shapley_mlp runs it: one addmm over the chunk's coalitions."""
        count, coalitions, hidden = pre.shape
        num_classes = self.call.spec.num_classes
        hidden_nonfinite = reference._nonfinite(pre)
        logits = torch.addmm(self.b2, pre.relu().reshape(count * coalitions, hidden), self.w2t)[:, :num_classes]
        logits = logits.view(count, coalitions, num_classes)
        return reference._values(logits, self.labels[rows], self.call.benefit, nonfinite=hidden_nonfinite)


# ---------------------------------------------------------------------------------------------------------
# fake kernels of the compiled ops (shapes only), so that they trace under torch.compile and FakeTensor


def _op_defined(op: str) -> bool:
    return _extension.LOADED and hasattr(torch.ops.fastshap, op)


if _op_defined("coalition_values"):

    @torch.library.register_fake("fastshap::coalition_values")
    def _coalition_values_fake(features, head, params, baselines, labels, benefit):
        """values (B, 2^n) and the (n,) non-finite counts, float32, after the compiled op's memory guards."""
        shape = _op_checks.check_op(features, head, params, baselines, labels, benefit)
        f = features[0]
        return f.new_empty((shape.batch, 1 << shape.n), dtype=torch.float32), f.new_empty(
            (shape.n,), dtype=torch.float32
        )


if _op_defined("modality_interactions"):

    @torch.library.register_fake("fastshap::modality_interactions")
    def _interactions_fake(features, head, params, baselines, labels, benefit):
        """interactions (B, n, n) and the (n,) non-finite counts, float32, after the memory guards."""
        shape = _op_checks.check_op(features, head, params, baselines, labels, benefit)
        f = features[0]
        return f.new_empty((shape.batch, shape.n, shape.n), dtype=torch.float32), f.new_empty(
            (shape.n,), dtype=torch.float32
        )
