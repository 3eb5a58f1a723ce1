"""Sampled modality Shapley values for any number of modalities: antithetic permutation sampling with standard
errors, on the partial products the exact op uses.

**The estimator.** A permutation ``pi`` of the n modalities is walked from the empty coalition, adding one
modality at a time; each modality is credited its marginal ``v(prefix + i) - v(prefix)``. The mean over
uniformly random permutations is unbiased for phi (every order is equally likely). Permutations come in
antithetic pairs, ``pi`` and its reverse: the reverse walks the complements of ``pi``'s prefixes, so a
modality that enters ``pi`` early enters the reverse late, and the two marginals are negatively correlated.
Each pair's mean marginal is one draw; ``phi`` is the mean of P pair draws and its standard error the sample
standard deviation of the draws (ddof 1) over ``sqrt(P)``. Each walk's marginals telescope to
``v(N) - v(empty)``, so every pair, and the estimate, is efficient: ``sum_i phi_i = v(N) - v(empty)``.
(docs/sampling.md: the error against exact as K grows, antithetic against independent permutations.)

**samples = K** counts permutations walked, K / 2 antithetic pairs (K even), the unit of Captum's
``ShapleyValueSampling(n_samples=K)``. A walk evaluates n - 1 coalitions besides the empty and the full one
(computed once per sample), so a call costs about ``K (n - 1)`` coalition evaluations per sample, against
``2^n`` for the exact op.

**Orders.** The P pairs are drawn from the caller's ``torch.Generator`` (the global one when None), as the
argsort of uniform draws on the generator's device, and shared by every sample of the call: each sample's
estimate and error are those of P independent pairs, while the errors of different samples of one call are
correlated (a batch mean of phi is not P * B draws). The same generator state gives the same orders, and
every backend walks the orders it is given: ``orders (P, 2, n)`` int64, walk ``orders[p, 0]`` and its
partner ``orders[p, 1]`` (the reverse for the antithetic estimator; any permutation for the tests and
benchmarks that compare estimators).

**Canonical computation** (the compiled backends reproduce it; fastshap/reference.py's conventions for the
compute dtype, the partial products, the benefits, the first-index argmax and non-finite values):

* ``delta[i] = present[i] - absent[i]`` (``present[i]`` without baselines), in the compute dtype; decision
  fusion first turns ``present``/``absent`` into ``softmax(. + bias[i])`` with a zero start.
* ``score(empty) = start + absent[0] + ... + absent[n-1]`` and ``score(N) = start + present[0] + ... +
  present[n-1]``, summed left to right as the exact op does; ``v(empty)`` and ``v(N)`` are evaluated once
  per sample and every walk uses them (a walk never re-evaluates the full coalition, so its marginals
  telescope exactly).
* A walk's ``j``-th prefix score is the running sum ``score(empty) + delta[pi_0] + ... + delta[pi_{j-1}]``,
  added in walk order; the MLP head's logits are ``addmm(b2, relu(pre), W2.T)`` per walk step over the rows
  of a chunk (:func:`chunk_sizes`), a coalition whose pre-activations hold NaN/Inf worth NaN.
* Marginals are float64 (exact for the discrete benefits); a pair's draw is ``(m_0 + m_1) * 0.5``;
  ``phi = S1 / P``, ``var = (S2 - S1 * S1 / P) / (P - 1)`` clamped at 0, ``stderr = sqrt(var / P)``, with
  ``S1``, ``S2`` the sums of the draws and of their squares; both rounded once to float32. A sample with a
  NaN anywhere (a label outside ``[0, C)``, a coalition worth NaN) gets NaN rows of phi and stderr.

Every function returns ``(phi (B, n) float32, stderr (B, n) float32, stats (4, n) float32)``, the stats as
the exact op's (reference.py's module docstring).
"""

from __future__ import annotations

import functools
import importlib
import operator
from collections.abc import Callable, Sequence

import torch

from fastshap import _extension, backends, reference

Tensor = torch.Tensor

#: The estimators of ``modality_shapley(estimator=...)``.
ESTIMATORS = ("exact", "sampling", "auto")
#: Permutations walked when ``samples`` is not given (64 antithetic pairs): docs/sampling.md measures the
#: error this leaves against exact values at n = 10 and 14.
DEFAULT_SAMPLES = 128
#: The largest n "auto" values exactly: 2^16 coalitions per sample are still cheap next to the encoders,
#: and exact values carry no sampling error (fastshap.MAX_MODALITIES, the exact op's limit).
AUTO_EXACT_MAX = 16

#: Elements (4-byte units) that one chunk of walks keeps at once: the running scores and the marginals.
_ELEMENT_BUDGET = 1 << 22


def resolve_estimator(estimator: str, n: int) -> str:
    """ "exact" or "sampling" for an ``estimator`` keyword (checked) and n modalities."""
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"fastshap: unknown estimator {estimator!r}; choose from {', '.join(map(repr, ESTIMATORS))}")
    if estimator == "auto":
        return "exact" if n <= AUTO_EXACT_MAX else "sampling"
    return estimator


def check_samples(samples, with_stderr: bool) -> int:
    """The number of antithetic pairs that ``samples`` (permutations; None: the default) asks for."""
    if samples is None:
        return DEFAULT_SAMPLES // 2
    if isinstance(samples, bool):
        raise TypeError(f"fastshap: samples must be an integer (permutations walked), got bool {samples}")
    try:
        samples = operator.index(samples)
    except TypeError:
        raise TypeError(
            f"fastshap: samples must be an integer (permutations walked), got {type(samples).__name__} {samples!r}"
        ) from None
    if samples < 2 or samples % 2:
        raise ValueError(
            f"fastshap: samples counts permutations, walked in antithetic pairs (a permutation and its reverse): "
            f"give an even number >= 2, got {samples}"
        )
    if with_stderr and samples < 4:
        raise ValueError(
            f"fastshap: a standard error needs at least two antithetic pairs, samples >= 4 permutations; got {samples}"
        )
    return samples // 2


def check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"fastshap: generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, got "
            f"{type(generator).__name__}"
        )


def draw_orders(pairs: int, n: int, generator: torch.Generator | None, device) -> Tensor:
    """(pairs, 2, n) int64 on `device`: `pairs` uniform random permutations of range(n), each with its reverse.

    Drawn as the argsort of uniform float64 draws on the generator's device (ties have probability ~n^2 2^-53),
    so that a generator state always gives the same orders."""
    where = generator.device if generator is not None else torch.device("cpu")
    forward = torch.rand(pairs, n, generator=generator, device=where, dtype=torch.float64).argsort(-1)
    return torch.stack([forward, forward.flip(-1)], 1).to(device)


def chunk_sizes(batch: int, pairs: int, n: int, width: int) -> tuple[int, int]:
    """(samples, pairs) walked together: the running scores ``(2 pairs, samples, width)`` and the float64
    marginals ``(2 pairs, samples, n)`` within :data:`_ELEMENT_BUDGET` (at least one sample and one pair).
    The MLP head's second-layer GEMM runs on ``2 pairs * samples`` rows per step: a compiled backend that
    wants the same bits uses the same chunks."""
    per_walk_sample = max(width, 1) + 2 * n
    samples = max(1, min(batch, _ELEMENT_BUDGET // (2 * per_walk_sample)))
    return samples, max(1, min(pairs, _ELEMENT_BUDGET // (2 * samples * per_walk_sample)))


def _check_orders(orders: Tensor, n: int) -> None:
    """orders (P >= 1, 2, n) int64 whose rows are permutations of range(n) (ValueError otherwise): the walks
    index the partial products with them, and a repeated modality would break the telescoping. The API's
    orders hold by construction; this guards a direct call of a backend."""
    if not isinstance(orders, Tensor) or orders.dim() != 3 or orders.shape[1:] != (2, n) or orders.shape[0] < 1:
        shape = tuple(orders.shape) if isinstance(orders, Tensor) else type(orders).__name__
        raise ValueError(f"fastshap: orders must be (P >= 1, 2, {n}) int64, got {shape}")
    if orders.dtype != torch.int64:
        raise ValueError(f"fastshap: orders must be int64, got {orders.dtype}")
    if not bool((orders.sort(-1).values == torch.arange(n, device=orders.device)).all()):
        raise ValueError(f"fastshap: every row of orders must be a permutation of 0..{n - 1}")


# --- coalition values -------------------------------------------------------------------------------------
#
# The walk keeps its running sums class-major, (K, W, B) for W walks of B samples: every per-step reduction
# over the classes (argmax, finiteness, softmax) then runs across contiguous (W, B) planes, which torch
# vectorises, instead of along a short last dimension (C = 10: 4x slower on this project's CPU).


def _values(
    scores: Tensor, labels: Tensor, benefit: str, size: int, mean_of: int = 0, bad: Tensor | None = None
) -> Tensor:
    """(W, B) float64 values of coalitions of `size` modalities from their scores (C, W, B) and labels (B,);
    NaN where the scores (or `bad`) are not all finite. The paper benefit's empty coalition is worth 0 unread.

    Written with reductions over dim 0 that torch vectorises (amax, amin, sum: ~0.5 ms for (10, 128, 256) on
    one core, where argmax(0) takes 22 ms): correct(S) is "the label's score is the largest, and every class
    before the label scores below it", torch.argmax's first maximal index."""
    if benefit == "paper" and size == 0:
        return torch.zeros(scores.shape[1:], dtype=torch.float64, device=scores.device)
    top, low = scores.amax(0), scores.amin(0)  # a NaN shows in both, an Inf in one of them
    nonfinite = ~(torch.isfinite(top) & torch.isfinite(low))
    if bad is not None:
        nonfinite |= bad
    mine = scores.gather(0, labels.view(1, 1, -1).expand(1, scores.shape[1], -1)).squeeze(0)
    if benefit == "probability":
        if mean_of:
            values = mine.double() / mean_of
        else:
            top64 = top.double()
            values = (mine.double() - top64).exp() / (scores.double() - top64).exp().sum(0)
    else:
        classes = torch.arange(scores.shape[0], device=scores.device).view(-1, 1, 1)
        earlier = torch.where(classes < labels.view(1, 1, -1), scores, float("-inf")).amax(0)
        values = ((mine == top) & (earlier < mine)).double()
        if benefit == "paper":
            values = values * size
    return values.masked_fill(nonfinite, float("nan"))


class _Scorer:
    """Coalition values from running first-layer sums (K, W, B): directly for the additive heads, through the
    second layer for the MLP (logits (C, W B) = addmm(b2, W2, relu(sums)), one GEMM per walk step)."""

    def __init__(self, benefit: str, mean_of: int = 0, second: tuple | None = None):
        self.benefit, self.mean_of, self.second = benefit, mean_of, second

    def __call__(self, sums: Tensor, labels: Tensor, size: int) -> Tensor:
        if self.second is None or (self.benefit == "paper" and size == 0):
            return _values(sums, labels, self.benefit, size, self.mean_of)
        bias2, weight2 = self.second
        hidden, walks, rows = sums.shape
        # A contiguous (H, W rows) operand: the compiled backends call this GEMM with the same layout.
        logits = torch.addmm(bias2, weight2, sums.relu().contiguous().view(hidden, walks * rows))
        bad = ~(torch.isfinite(sums.amax(0)) & torch.isfinite(sums.amin(0)))  # the ReLU would hide a -Inf
        return _values(logits.view(-1, walks, rows), labels, self.benefit, size, bad=bad)


# --- the walk ---------------------------------------------------------------------------------------------


def _left_to_right(start: Tensor, parts: Tensor) -> Tensor:
    """start (K,) + parts[0] + ... + parts[n-1], parts (n, rows, K): (rows, K), in that order."""
    total = start.expand(parts.shape[1], -1)
    for part in parts:
        total = total + part
    return total


def _walk(
    start: Tensor,
    present: Tensor,
    absent: Tensor | None,
    labels: Tensor,
    orders: Tensor,
    scorer: _Scorer,
) -> tuple[Tensor, Tensor]:
    """Sums (B, n) of the pair draws and of their squares, float64, over the pairs of `orders`.

    start (K,); present (n, B, K); absent (n, 1 or B, K) or None; labels (B,) in range."""
    n, batch, width = present.shape
    pairs = orders.shape[0]
    device = present.device
    delta = (present if absent is None else present - absent).permute(2, 0, 1).contiguous()  # (K, n, B)
    full = _left_to_right(start, present).t().contiguous()  # (K, B)
    empty = (start.view(-1, 1) if absent is None else _left_to_right(start, absent).t()).contiguous()  # (K, 1|B)
    first = torch.zeros(n, batch, dtype=torch.float64, device=device)
    second = torch.zeros_like(first)
    walks_of = orders.reshape(2 * pairs, n)
    rank = walks_of.argsort(-1).t()  # (n, 2P): rank[i, w] is the step at which walk w adds modality i
    rows_step, pairs_step = chunk_sizes(batch, pairs, n, width)
    for b0 in range(0, batch, rows_step):
        rows = slice(b0, min(batch, b0 + rows_step))
        count = rows.stop - rows.start
        y = labels[rows]
        v_full = scorer(full[:, rows].unsqueeze(1), y, n)  # (1, rows)
        e = (empty if empty.shape[1] == 1 else empty[:, rows]).expand(-1, count).unsqueeze(1)  # (K, 1, rows)
        v_empty = scorer(e, y, 0)
        d = delta[:, :, rows]
        for p0 in range(0, pairs, pairs_step):
            walks = slice(2 * p0, 2 * min(pairs, p0 + pairs_step))
            order = walks_of[walks]
            count_walks = order.shape[0]
            sums = e.expand(-1, count_walks, -1).contiguous()  # (K, W, rows)
            steps = torch.empty(n, count_walks, count, dtype=torch.float64, device=device)
            previous = v_empty
            for j in range(n - 1):
                sums += d.index_select(1, order[:, j])
                value = scorer(sums, y, j + 1)
                torch.sub(value, previous, out=steps[j])
                previous = value
            steps[n - 1] = v_full - previous  # broadcast: with n = 1, `previous` is v(empty) (1, rows)
            # marginals[i, w] = steps[rank[i, w], w]: walk w's marginal of modality i
            marginals = steps.gather(0, rank[:, walks].unsqueeze(2).expand(-1, -1, count))
            draws = (marginals[:, 0::2] + marginals[:, 1::2]) * 0.5  # (n, pairs, rows)
            first[:, rows] += draws.sum(1)
            second[:, rows] += (draws * draws).sum(1)
    return first.t(), second.t()


def _finish(first: Tensor, second: Tensor, pairs: int, bad_rows: Tensor | None, nonfinite: Tensor):
    """phi, stderr (B, n) float32 and stats (4, n) from the sums of the draws; NaN rows for samples that met a
    NaN (or that `bad_rows` names)."""
    phi = first / pairs
    if pairs > 1:
        var = ((second - first * first / pairs) / (pairs - 1)).clamp_min(0.0)
        stderr = (var / pairs).sqrt()
    else:
        stderr = torch.full_like(phi, float("nan"))
    nan = phi.isnan().any(1)
    if bad_rows is not None:
        nan |= bad_rows
    phi = phi.float().masked_fill(nan.unsqueeze(1), float("nan"))
    stderr = stderr.float().masked_fill(nan.unsqueeze(1), float("nan"))
    return phi, stderr, reference._stats(phi, nonfinite)


def _first_layer(features, weight, baselines, ct):
    present = reference._partial_products(features, weight, ct)
    absent = reference._partial_products(baselines, weight, ct) if baselines else None
    nonfinite = reference._count_nonfinite(present)
    if absent is not None:
        nonfinite = nonfinite + reference._count_nonfinite(absent)
    return present, absent, nonfinite


def sampled_shapley(
    features: Sequence[Tensor],
    kind: str,
    params: Sequence[Tensor],
    baselines: Sequence[Tensor] | None,
    labels: Tensor,
    benefit: str,
    orders: Tensor,
):
    """The torch backend for the fastshap heads. kind: "concat" (weight (C, D), bias (C)), "decision"
    (weight (C, D), bias (n, C)) or "mlp" (weight1 (H, D), bias1 (H), weight2 (C, H), bias2 (C)); features
    n tensors (B, d_i); baselines None/empty (zeros) or n tensors (d_i,) or (B, d_i); labels (B,) int64;
    orders (P, 2, n) int64 (see the module docstring). -> (phi, stderr, stats)."""
    n = len(features)
    _check_orders(orders, n)
    ct = reference.compute_dtype(features[0].dtype)
    weight = params[0]
    num_classes = params[2].shape[0] if kind == "mlp" else weight.shape[0]
    labels, bad = reference._safe_labels(labels, num_classes)
    present, absent, nonfinite = _first_layer(features, weight, baselines, ct)
    if kind == "concat":
        start, scorer = params[1].to(ct), _Scorer(benefit)
    elif kind == "decision":
        b = params[1].to(ct).unsqueeze(1)
        present = torch.softmax(present.add(b), -1)
        if absent is None:
            absent = torch.zeros(n, 1, num_classes, dtype=ct, device=weight.device)
        absent = torch.softmax(absent.add(b), -1)
        start, scorer = torch.zeros(num_classes, dtype=ct, device=weight.device), _Scorer(benefit, mean_of=n)
    elif kind == "mlp":
        start, scorer = params[1].to(ct), _Scorer(benefit, second=(params[3].to(ct).unsqueeze(1), params[2].to(ct)))
    else:
        raise ValueError(f"fastshap: sampled_shapley runs the fastshap heads, not a {kind!r} head")
    first, second = _walk(start, present, absent, labels, orders.to(weight.device), scorer)
    return _finish(first, second, orders.shape[0], bad, nonfinite)


# --- callable heads ---------------------------------------------------------------------------------------


def sampled_callable(
    features: Sequence[Tensor],
    head: Callable[[list], Tensor],
    labels: Tensor,
    baselines: Sequence[Tensor] | None,
    benefit: str,
    orders: Tensor,
    element_budget: int = 1 << 24,
):
    """Any head (list of n (B, d_i) -> (B, C) logits, or (B, T, C) with (B, T) labels), by batched evaluation
    of the walks' prefixes: the prefixes of several walks are stacked along the batch and evaluated in as few
    head calls as `element_budget` (input elements per call) allows. -> (phi, stderr, stats)."""
    n, batch = len(features), features[0].shape[0]
    _check_orders(orders, n)
    device = features[0].device
    orders = orders.to(device)
    pairs = orders.shape[0]
    # NaN/Inf rows as reference.shapley_callable treats them: counted, fed to the head as zeros, NaN phi rows.
    features, fills, bad, nonfinite = reference._callable_inputs(features, baselines)

    width = sum(f.shape[1] for f in features)
    per_coalition = max(1, batch * width)
    empty_and_full = torch.arange(2, device=device).view(2, 1).expand(2, n).bool()
    ends = reference._block_values(head, empty_and_full, features, fills, labels, benefit, first_call=True)
    if benefit == "paper":
        ends[:, 0] = 0.0  # v(empty) = 0 by definition
    v_empty, v_full = ends[:, 0], ends[:, 1]

    walks_of = orders.reshape(2 * pairs, n)
    rank = walks_of.argsort(-1)  # rank[w, i]: the step at which walk w adds modality i
    inner = n - 1  # prefixes of sizes 1..n-1 per walk
    first = torch.zeros(batch, n, dtype=torch.float64, device=device)
    second = torch.zeros_like(first)
    # Whole pairs per block of walks, few enough that their (walks, n - 1, n) prefix masks stay small.
    pairs_step = max(1, min(pairs, _ELEMENT_BUDGET // max(1, 2 * inner * n)))
    for p0 in range(0, pairs, pairs_step):
        walks = slice(2 * p0, 2 * min(pairs, p0 + pairs_step))
        count_walks = walks.stop - walks.start
        sizes = torch.arange(1, n, device=device)
        masks = (rank[walks].unsqueeze(1) < sizes.view(1, -1, 1)).reshape(-1, n)  # (W (n-1), n)
        values = torch.empty(batch, masks.shape[0], dtype=torch.float64, device=device)
        step = max(1, min(masks.shape[0], element_budget // per_coalition))
        for m0 in range(0, masks.shape[0], step):
            block = masks[m0 : m0 + step]
            values[:, m0 : m0 + block.shape[0]] = reference._block_values(
                head, block, features, fills, labels, benefit, first_call=False
            )
        # (W, B, n + 1) value sequences along each walk: v(empty), the prefixes, v(N).
        seq = torch.cat(
            [
                v_empty.view(1, batch, 1).expand(count_walks, -1, -1),
                values.view(batch, count_walks, inner).permute(1, 0, 2),
                v_full.view(1, batch, 1).expand(count_walks, -1, -1),
            ],
            2,
        )
        steps = seq[..., 1:] - seq[..., :-1]  # (W, B, n): marginal of the modality added at each step
        marginals = torch.empty_like(steps).scatter_(2, walks_of[walks].unsqueeze(1).expand(-1, batch, -1), steps)
        draws = marginals.view(-1, 2, batch, n)
        draws = (draws[:, 0] + draws[:, 1]) * 0.5
        first += draws.sum(0)
        second += (draws * draws).sum(0)
    return _finish(first, second, pairs, bad, nonfinite)


# --- backends ---------------------------------------------------------------------------------------------


@functools.cache
def _has_sampled_kernel(dispatch_key: str) -> bool:
    """Whether the loaded extension defines fastshap::shapley_sampled with a kernel for `dispatch_key` (an
    extension built before the op has no schema for it: asked once)."""
    if not _extension.LOADED or not hasattr(torch.ops.fastshap, "shapley_sampled"):
        return False
    return _extension.has_kernel("shapley_sampled", dispatch_key)


#: The head kinds the GPU kernels walk (fastshap/triton_sampling.py, csrc/cuda/sampling_cuda.cu): the MLP's
#: steps are GEMMs, which the torch backend runs on cuBLAS.
_GPU_KINDS = ("concat", "decision")


def _sampled_declines(name: str, call: backends.Call) -> str | None:
    """Why backend `name`, able to run the exact op on this call, has no sampled estimator for it, or None."""
    if name in ("cpp", "cuda"):
        key = "CPU" if name == "cpp" else "CUDA"
        if not _has_sampled_kernel(key):
            return f"fastshap._C has no {key} kernel of the sampled op (an extension built before it: rebuild)"
    elif name == "triton":
        reason = backends._triton_unavailable("fastshap.triton_sampling")
        if reason:
            return reason
    if name in ("cuda", "triton") and call.kind not in _GPU_KINDS:
        return f"its sampled kernel walks the {' and '.join(_GPU_KINDS)} heads, not the {call.kind} head"
    return None


def select(name: str, call: backends.Call) -> str:
    """The backend that runs a sampled call: `name`, or for "auto" the first of the device's preference order
    that can (backends.AUTO_ORDER); BackendError with every reason otherwise, as backends.select."""
    if name != "auto":
        backends.select(name, call)  # unknown names, backends that cannot run the call: the exact op's errors
        reason = _sampled_declines(name, call)
        if reason:
            raise backends.BackendError(f"fastshap: backend {name!r} cannot run this sampled call: {reason}")
        return name
    reasons = []
    for candidate in backends.AUTO_ORDER.get(call.device.type, ("torch",)):
        reason = backends.why_not(candidate, call) or _sampled_declines(candidate, call)
        if reason is None:
            return candidate
        reasons.append(f"{candidate}: {reason}")
    raise backends.BackendError("fastshap: no backend can run this sampled call:\n  " + "\n  ".join(reasons))


def run(name: str, spec: backends.HeadSpec, features, baselines, labels, benefit: str, orders: Tensor):
    """(phi, stderr, stats) of a checked call on backend `name` (from :func:`select`)."""
    if spec.kind == "callable":
        return sampled_callable(features, spec.fn, labels, baselines, benefit, orders)
    if name == "torch":
        return sampled_shapley(features, spec.kind, spec.params, baselines, labels, benefit, orders)
    if name == "triton":
        module = importlib.import_module("fastshap.triton_sampling")
        return module.sampled_shapley(
            list(features), spec.kind, list(spec.params), list(baselines or []), labels, benefit, orders
        )
    return torch.ops.fastshap.shapley_sampled(
        list(features), spec.kind, list(spec.params), list(baselines or []), labels, benefit, orders
    )
