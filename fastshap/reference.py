"""The pure-PyTorch backend: readable, runs anywhere torch runs, and defines the canonical computation.

Canonical computation (every backend reproduces it; the compiled ones bit for bit where stated):

* Compute dtype ``T``: float64 for float64 features, float32 otherwise (fp16/bf16 are upcast, so they
  accumulate in fp32). Head parameters are cast to ``T``.
* Partial products: ``present[i] = h_i @ W[:, cols_i].T`` and, with baselines, ``absent[i] = b_i @ W[:, cols_i].T``
  (one GEMM per modality, ``(n, rows, K)``; on the CPU with zero weight rows padding K, see :func:`gemm_width`).
  Without baselines a removed modality contributes exactly zero.
* Coalition score, summed left to right over modalities ``i = 0..n-1``:
  ``score(S) = start + sel_0 + sel_1 + ... + sel_{n-1}``, ``sel_i = present[i] if i in S else absent[i]``.

  - concat-linear: ``start = bias``; the score is the logits.
  - decision fusion: ``present[i]``/``absent[i]`` are first turned into ``softmax(. + bias[i])``; ``start = 0``;
    the score is the *sum* of per-modality probabilities (argmax of the mean without the rounding of /n).
  - MLP: ``start = bias1``; logits = ``addmm(bias2, relu(score), W2.T)`` computed in chunks of
    :func:`_mlp_chunk_samples` samples (all ``2^n`` coalitions of a sample in consecutive rows).

* ``correct(S)``: the first maximal index of the score equals the label (``torch.argmax``).
* ``v(S)``: paper ``|S| * correct`` (so ``v(empty) = 0``); accuracy ``correct``; probability
  ``softmax(logits)[y]`` (decision fusion: ``score[y] / n``), in float64.
* ``phi_i = (sum_S v(S) k_i(S)) / n!`` with the integer coefficients of :func:`shapley_coefficients`,
  summed in float64 (exact for the discrete benefits), rounded once to float32.
* Non-finite values: ``v(S)`` is NaN when the scores of S (for the MLP also its hidden pre-activations, which
  the ReLU would otherwise hide) hold a NaN or an Inf: NaN/Inf head parameters, inputs, or an overflow. The
  sample's phi row is then NaN, as it is for a label outside ``[0, C)`` (whose coalitions are not
  evaluated). (The paper benefit never evaluates the empty coalition: v = 0 there by definition.)

:func:`shapley` is the op ``torch.ops.fastshap.shapley`` in plain torch (``head`` one of the kinds of
:mod:`fastshap.head_kinds`, ``params`` its parameters); :func:`shapley_callable` takes any callable head.
Both return ``(phi (B, n) float32, stats (4, n) float32)``; ``stats`` rows are the batch sum of
phi, the count of ``phi < 1``, the count of samples whose modality contribution was not finite, and in
column 0 of row 3 the count of NaN phi rows (labels outside ``[0, C)``, non-finite scores; the rest of row
3 is 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache

import torch

from fastshap import head_kinds

Tensor = torch.Tensor

#: Bound on the elements materialised at once (coalition scores, batched callable inputs).
_ELEMENT_BUDGET = 1 << 22


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@cache
def _masks_cpu(n: int) -> Tensor:
    """(2^n, n) bool: row m is coalition m, bit i of m set iff modality i is present."""
    m = torch.arange(1 << n, device="cpu").unsqueeze(1)
    return (m >> torch.arange(n, device="cpu")) & 1 == 1


@cache
def _on_device(table: str, n: int, device: torch.device) -> Tensor:
    """A per-device copy of a constant table, made once: a host-to-device copy from pageable memory
    synchronises with the GPU, which must not happen in every call."""
    return (_masks_cpu if table == "masks" else _coefficients_cpu)(n).to(device)


def _device_key(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def coalition_masks(n: int, device) -> Tensor:
    return _on_device("masks", n, _device_key(device))


@cache
def _coefficients_cpu(n: int) -> Tensor:
    masks = _masks_cpu(n)
    size = masks.sum(1, keepdim=True).double()
    fact = [float(math.factorial(k)) for k in range(n + 1)]
    gain = torch.tensor(
        [fact[s - 1] * fact[n - s] if s >= 1 else 0.0 for s in range(n + 1)], dtype=torch.float64, device="cpu"
    )
    loss = torch.tensor(
        [fact[s] * fact[n - 1 - s] if s <= n - 1 else 0.0 for s in range(n + 1)], dtype=torch.float64, device="cpu"
    )
    s = size.long().squeeze(1)
    return torch.where(masks, gain[s].unsqueeze(1), -loss[s].unsqueeze(1))


def shapley_coefficients(n: int, device=None) -> Tensor:
    """(2^n, n) float64 integer coefficients k_i(S): ``(|S|-1)!(n-|S|)!`` if i in S else ``-|S|!(n-1-|S|)!``."""
    return _on_device("coefficients", n, _device_key(device or "cpu"))


def shapley_from_values(values: Tensor) -> Tensor:
    """values: (B, 2^n) coalition values (row order of :func:`coalition_masks`) -> phi (B, n) float32."""
    n = int(values.shape[1]).bit_length() - 1
    num = values.double() @ shapley_coefficients(n, values.device)
    return (num / math.factorial(n)).float()


def _stats(phi: Tensor, nonfinite: Tensor) -> Tensor:
    """(4, n) float32: see the module docstring."""
    stats = torch.zeros(4, phi.shape[1], dtype=torch.float32, device=phi.device)
    torch.sum(phi, 0, out=stats[0])
    torch.sum(phi < 1, 0, dtype=torch.float32, out=stats[1])
    stats[2].copy_(nonfinite)
    if stats.shape[1]:
        torch.sum(phi.isnan().any(1), 0, dtype=torch.float32, keepdim=True, out=stats[3, :1])
    return stats


def _count_nonfinite(partials: Tensor) -> Tensor:
    """partials (n, rows, K) -> (n,) number of rows holding a NaN or Inf."""
    return (~torch.isfinite(partials)).any(-1).sum(-1).float()


def gemm_width(width: int, device) -> int:
    """Output columns of the GEMMs that compute `width` real ones (partial products, the MLP's second layer):
    on the CPU, 8 or more are padded with zero weight rows to a multiple of 8, because the CPU BLAS runs some
    widths far slower than the next multiple of 8 (torch 2.14.1 on this project's CPU: 4096 x 512 by 31
    columns 1.8 ms, by 32 0.8 ms). The C++ kernels pad by the same rule (csrc/shapley.h), so that the two
    backends run the same GEMMs and stay bit-identical. The extra columns are never read."""
    return width if torch.device(device).type != "cpu" or width < 8 else -(-width // 8) * 8


def _padded(weight: Tensor, ct: torch.dtype, bias: Tensor | None = None):
    """weight (K, D) in dtype ct with zero rows up to gemm_width(K) (and bias (K,) with zeros alike)."""
    w = weight.to(ct)
    pad = gemm_width(w.shape[0], w.device) - w.shape[0]
    if pad:
        w = torch.cat([w, w.new_zeros(pad, w.shape[1])])
    if bias is None:
        return w
    b = bias.to(ct)
    return w, (torch.cat([b, b.new_zeros(pad)]) if pad else b)


def _partial_products(xs: Sequence[Tensor], weight: Tensor, ct: torch.dtype) -> Tensor:
    """xs: n tensors (rows, d_i) or (d_i,); weight (K, sum d_i) -> (n, rows, K) in dtype ct (a view of the
    GEMMs' (n, rows, gemm_width(K)) outputs)."""
    w = _padded(weight, ct)
    rows = 1 if xs[0].dim() == 1 else xs[0].shape[0]
    out = torch.empty(len(xs), rows, w.shape[0], dtype=ct, device=weight.device)
    offset = 0
    for i, x in enumerate(xs):
        x = x.to(ct)
        if x.dim() == 1:
            x = x.unsqueeze(0)
        d = x.shape[1]
        torch.mm(x, w.narrow(1, offset, d).t(), out=out[i])
        offset += d
    return out[..., : weight.shape[0]]


def _coalition_scores(start: Tensor, present: Tensor, absent: Tensor | None, rows: slice) -> Tensor:
    """Scores (rows, 2^n, K) of every coalition of the samples in `rows`, summed left to right."""
    n = present.shape[0]
    masks = coalition_masks(n, present.device)
    count = rows.stop - rows.start
    score = start.expand(count, 1 << n, start.shape[-1])
    for i in range(n):
        keep = masks[:, i].view(1, -1, 1)
        p = present[i, rows].unsqueeze(1)
        if absent is None:
            score = torch.where(keep, score + p, score)
        else:
            a = absent[i] if absent.shape[1] == 1 else absent[i, rows]  # (1 or rows, K)
            score = score + torch.where(keep, p, a.unsqueeze(1))
    return score


def _nonfinite(x: Tensor) -> Tensor:
    """(rows, 2^n) bool: whether x (rows, 2^n, K) holds a NaN or an Inf along K."""
    low, high = torch.aminmax(x, dim=-1)  # one pass: a NaN shows in both, an Inf in one of them
    return ~(torch.isfinite(low) & torch.isfinite(high))


def _values(scores: Tensor, labels: Tensor, benefit: str, mean_of: int = 0, nonfinite: Tensor | None = None) -> Tensor:
    """Coalition values (rows, 2^n) float64 from scores (rows, 2^n, C) and labels (rows,); NaN for a
    coalition whose scores are not all finite (or where `nonfinite` says so)."""
    n = scores.shape[1].bit_length() - 1
    y = labels.view(-1, 1, 1).expand(-1, scores.shape[1], 1)
    nonfinite = _nonfinite(scores) if nonfinite is None else nonfinite | _nonfinite(scores)
    if benefit == "paper":
        nonfinite[:, 0] = False  # the empty coalition is worth 0 whatever its scores
    if benefit == "probability":
        if mean_of:
            values = scores.gather(2, y).squeeze(2).double() / mean_of
        else:
            values = torch.softmax(scores.double(), -1).gather(2, y).squeeze(2)
    else:
        values = (scores.argmax(-1) == labels.view(-1, 1)).double()
        if benefit == "paper":
            values = values * coalition_masks(n, scores.device).sum(1).double()
    return values.masked_fill(nonfinite, float("nan"))


def _sample_chunk(batch: int, n: int, width: int) -> int:
    return max(1, min(batch, _ELEMENT_BUDGET // ((1 << n) * max(width, 1))))


def _additive(features, start, present, absent, labels, benefit, mean_of=0):
    batch, n = present.shape[1], present.shape[0]
    phi = torch.empty(batch, n, dtype=torch.float32, device=present.device)
    step = _sample_chunk(batch, n, present.shape[2])
    for b0 in range(0, batch, step):
        rows = slice(b0, min(batch, b0 + step))
        scores = _coalition_scores(start, present, absent, rows)
        phi[rows] = shapley_from_values(_values(scores, labels[rows], benefit, mean_of))
    return phi


def _check_labels(labels: Tensor, num_classes: int) -> None:
    """For the callable path, which learns C from the head's output (a host check is cheap next to it)."""
    if labels.numel() and bool(((labels < 0) | (labels >= num_classes)).any()):
        bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
        raise ValueError(f"fastshap: label {bad} is outside [0, {num_classes})")


def _safe_labels(labels: Tensor, num_classes: int):
    """(labels with out-of-range entries replaced by 0, mask of those entries): the kernels' contract,
    phi rows of such samples are NaN and stats row 3 counts them, without a host-device synchronisation."""
    bad = (labels < 0) | (labels >= num_classes)
    return labels.masked_fill(bad, 0), bad


def _nan_rows(phi: Tensor, bad: Tensor) -> Tensor:
    return phi.masked_fill(bad.unsqueeze(1), float("nan"))


def _concat(features, weight, bias, baselines, labels, benefit):
    """Concat-linear head: logits = bias + sum_i W_i x_i. weight (C, D), bias (C)."""
    ct = compute_dtype(features[0].dtype)
    labels, bad = _safe_labels(labels, weight.shape[0])
    present = _partial_products(features, weight, ct)
    absent = _partial_products(baselines, weight, ct) if baselines else None
    nonfinite = _count_nonfinite(present) + (_count_nonfinite(absent) if absent is not None else 0)
    phi = _nan_rows(_additive(features, bias.to(ct), present, absent, labels, benefit), bad)
    return phi, _stats(phi, nonfinite)


def _decision(features, weight, bias, baselines, labels, benefit):
    """Decision fusion: classifier i = (weight[:, cols_i], bias[i]); prediction = mean_i softmax. bias (n, C)."""
    ct = compute_dtype(features[0].dtype)
    n, num_classes = len(features), weight.shape[0]
    labels, bad = _safe_labels(labels, num_classes)
    present = _partial_products(features, weight, ct)
    absent = _partial_products(baselines, weight, ct) if baselines else None
    nonfinite = _count_nonfinite(present) + (_count_nonfinite(absent) if absent is not None else 0)
    present, absent, start = _decision_probabilities(present, absent, bias, ct)
    phi = _nan_rows(_additive(features, start, present, absent, labels, benefit, mean_of=n), bad)
    return phi, _stats(phi, nonfinite)


def _decision_probabilities(present: Tensor, absent: Tensor | None, bias: Tensor, ct: torch.dtype):
    """Decision fusion's terms of the coalition sums (also fastshap.coalitions'): each modality's classifier
    (its partial logits plus its own bias row) through its own softmax, a removed modality's classifier
    seeing its baseline (zeros: just its bias); and the zero start of the sums -> (present, absent, start)."""
    n, num_classes = present.shape[0], present.shape[2]
    b = bias.to(ct).unsqueeze(1)
    present = torch.softmax(present.add(b), -1)
    if absent is None:
        absent = torch.zeros(n, 1, num_classes, dtype=ct, device=present.device)
    absent = torch.softmax(absent.add(b), -1)
    return present, absent, torch.zeros(num_classes, dtype=ct, device=present.device)


def _mlp_chunk_samples(batch: int, n: int, hidden: int) -> int:
    """Samples per second-layer GEMM; the C++ kernel uses the same rule (equal GEMM shapes, equal bits)."""
    return max(1, min(batch, (1 << 22) // ((1 << n) * max(hidden, 1))))


def _mlp(features, weight1, bias1, weight2, bias2, baselines, labels, benefit):
    """MLP head: logits = W2 relu(b1 + sum_i W1_i x_i) + b2. weight1 (H, D), weight2 (C, H)."""
    ct = compute_dtype(features[0].dtype)
    labels, bad = _safe_labels(labels, weight2.shape[0])
    present = _partial_products(features, weight1, ct)
    absent = _partial_products(baselines, weight1, ct) if baselines else None
    nonfinite = _count_nonfinite(present) + (_count_nonfinite(absent) if absent is not None else 0)
    batch, n, hidden = present.shape[1], present.shape[0], present.shape[2]
    num_classes = weight2.shape[0]
    w2, b2 = _padded(weight2, ct, bias2)  # as the C++ kernel: the same GEMM, columns past C unread
    start, w2t = bias1.to(ct), w2.t()
    phi = torch.empty(batch, n, dtype=torch.float32, device=present.device)
    step = _mlp_chunk_samples(batch, n, hidden)
    for b0 in range(0, batch, step):
        rows = slice(b0, min(batch, b0 + step))
        pre = _coalition_scores(start, present, absent, rows)
        hidden_nonfinite = _nonfinite(pre)  # the ReLU would hide a -Inf (and the kernels flag them all)
        count = rows.stop - rows.start
        logits = torch.addmm(b2, pre.relu().reshape(count << n, hidden), w2t)[:, :num_classes]
        logits = logits.view(count, 1 << n, num_classes)
        phi[rows] = shapley_from_values(_values(logits, labels[rows], benefit, nonfinite=hidden_nonfinite))
    phi = _nan_rows(phi, bad)
    return phi, _stats(phi, nonfinite)


#: The implementation of each head kind (fastshap/head_kinds.py), called with the kind's parameters in order.
_KINDS = {"concat": _concat, "decision": _decision, "mlp": _mlp}


def shapley(features, head: str, params, baselines, labels, benefit):
    """``torch.ops.fastshap.shapley`` in plain torch: features n tensors ``(B, d_i)``; head a kind of
    :mod:`fastshap.head_kinds` and params its parameters in the table's order; baselines ``[]`` (zeros) or n
    tensors ``(d_i,)`` / ``(B, d_i)``; labels ``(B,)`` int64; benefit "paper" | "accuracy" | "probability"."""
    kind = head_kinds.get(head)
    if len(params) != len(kind.params):
        raise ValueError(f"fastshap: the {kind.name} head takes {len(kind.params)} parameters, got {len(params)}")
    return _KINDS[kind.name](features, *params, baselines, labels, benefit)


def _callable_values(logits: Tensor, labels: Tensor, benefit: str, size: Tensor) -> Tensor:
    """logits (k, B, C) or (k, B, T, C) for k coalitions of `size` (k,) -> values (B, k) float64.

    Per-segment outputs (B, T, C) with labels (B, T) are scored by the fraction of correct segments
    (the AVE localisation benefit): v(S) = |S| * mean_t correct_t for "paper".
    """
    y = labels.unsqueeze(0).expand(logits.shape[0], *labels.shape).unsqueeze(-1)
    if benefit == "probability":
        v = torch.softmax(logits.double(), -1).gather(-1, y).squeeze(-1)
    else:
        v = (logits.argmax(-1) == labels.unsqueeze(0)).double()
    if v.dim() == 3:  # (k, B, T): average over segments
        v = v.mean(-1)
    if benefit == "paper":
        v = v * size.view(-1, 1)
    return v.t()


def shapley_callable(
    features: Sequence[Tensor],
    head: Callable[[list], Tensor],
    labels: Tensor,
    baselines: Sequence[Tensor] | None,
    benefit: str,
    element_budget: int = 1 << 24,
):
    """Any head: list of n (B, d_i) -> (B, C) logits (or (B, T, C) with (B, T) labels), from the coalition
    values of :func:`callable_values`."""
    values, bad, nonfinite = callable_values(features, head, labels, baselines, benefit, element_budget)
    phi = _nan_rows(shapley_from_values(values), bad)
    return phi, _stats(phi, nonfinite)


def callable_values(
    features: Sequence[Tensor],
    head: Callable[[list], Tensor],
    labels: Tensor,
    baselines: Sequence[Tensor] | None,
    benefit: str,
    element_budget: int = 1 << 24,
):
    """Coalition values of any head (also fastshap.coalitions'): (values (B, 2^n) float64, bad (B,) bool:
    the rows whose features or baselines hold NaN/Inf, whose phi rows are NaN; nonfinite (n,): those rows
    counted per modality, stats row 2).

    All 2^n coalitions are stacked along the batch and evaluated in as few calls as `element_budget`
    (input elements per call) allows. Evaluated under no_grad; the head's train/eval mode is the caller's.
    """
    n, batch = len(features), features[0].shape[0]
    device = features[0].device
    masks = coalition_masks(n, device)
    count = 1 << n
    width = sum(f.shape[1] for f in features)
    step = max(1, min(count, element_budget // max(1, batch * width)))
    features, fills, bad, nonfinite = _callable_inputs(features, baselines)
    values = torch.empty(batch, count, dtype=torch.float64, device=device)
    for m0 in range(0, count, step):
        block = masks[m0 : m0 + step]
        values[:, m0 : m0 + block.shape[0]] = _block_values(head, block, features, fills, labels, benefit, m0 == 0)
    return values, bad, nonfinite


def _callable_inputs(features: Sequence[Tensor], baselines: Sequence[Tensor] | None):
    """What a callable head is fed (also fastshap.sampling's): (features, fills (B, d_i) each: the baselines,
    or zeros, bad (B,) bool, nonfinite (n,) float).

    Rows holding NaN/Inf (features, or per-sample baselines; a shared baseline: every row) are counted per
    modality in `nonfinite` (stats row 2), as the kernels count their partial logits, and flagged in `bad`:
    their phi rows are NaN like the kernels'. The head sees zeros in their place (in the returned features
    and fills): its logits must stay finite for the other rows.
    """
    batch = features[0].shape[0]
    fills = [
        (b.expand(batch, -1) if b.dim() == 1 else b) if baselines else torch.zeros_like(f)
        for f, b in zip(features, baselines or features)
    ]
    bad_rows = [(~torch.isfinite(f)).any(1) for f in features]
    nonfinite = torch.stack([r.sum() for r in bad_rows]).float()
    if baselines:
        bad_base = [(~torch.isfinite(b)).reshape(-1, b.shape[-1]).any(1) for b in baselines]
        nonfinite += torch.stack([r.sum() for r in bad_base]).float()
        bad_rows += bad_base  # a shared baseline's one row broadcasts to every sample
    bad = torch.stack(torch.broadcast_tensors(*bad_rows)).any(0)
    if bool(nonfinite.any()):
        keep = ~bad.unsqueeze(1)
        features = [torch.where(keep, f, 0) for f in features]
        fills = [torch.where(keep, fill, 0) for fill in fills]
    return features, fills, bad, nonfinite


def _block_values(
    head: Callable, block: Tensor, features: list, fills: list, labels: Tensor, benefit: str, first_call: bool
) -> Tensor:
    """(B, k) float64 values of the k coalitions of `block` ((k, n) bool masks) in one head call: the k
    coalitions' inputs stacked along the batch (also fastshap.sampling's, for its walks' prefixes)."""
    k, batch = block.shape[0], features[0].shape[0]
    inputs = [
        torch.where(block[:, i].view(k, 1, 1), f.unsqueeze(0), fill.unsqueeze(0)).reshape(k * batch, -1)
        for i, (f, fill) in enumerate(zip(features, fills))
    ]
    out = _call_head(head, inputs, k * batch, labels, first_call)
    return _callable_values(out.reshape(k, batch, *out.shape[1:]), labels, benefit, block.sum(1).double())


def _call_head(head: Callable, inputs: list, rows: int, labels: Tensor, first_call: bool) -> Tensor:
    """head(inputs) checked: logits (rows, [T,] C), floating point, finite; on the first call, the labels
    against the class count."""
    try:
        out = head(inputs)
    except TypeError as exc:
        if not first_call:
            raise
        # The usual cause: a module written for one concatenated tensor (e.g. an nn.Sequential).
        raise TypeError(
            f"fastshap: the head, called with the list of the {len(inputs)} modalities' feature tensors, raised "
            f"TypeError: {exc}. A callable head takes that list; for a module over the concatenated features pass "
            f"`lambda feats: head(torch.cat(feats, 1))` (or an nn.Linear / fastshap.heads module)"
        ) from exc
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"fastshap: the head returned {type(out).__name__}, expected a logits tensor")
    if not out.is_floating_point():
        raise TypeError(f"fastshap: the head returned logits of dtype {out.dtype}; expected floating point logits")
    expected = (rows, *labels.shape[1:])
    if out.dim() != labels.dim() + 1 or tuple(out.shape[:-1]) != expected:
        raise ValueError(
            f"fastshap: the head returned logits of shape {tuple(out.shape)} for {rows} stacked inputs; expected "
            f"({', '.join(map(str, expected))}, C) to match labels of shape {tuple(labels.shape)}"
        )
    if first_call:
        _check_labels(labels, out.shape[-1])
    if not bool(torch.isfinite(out).all()):
        raise ValueError("fastshap: the head returned NaN or Inf logits")
    return out
