"""backend="triton" for the sampling estimator: the walks of :mod:`fastshap.sampling` as one Triton kernel.

Imported lazily by :mod:`fastshap.sampling`; importing it needs Triton, and running it a CUDA device, or
``TRITON_INTERPRET=1`` set before Triton is imported (CPU tensors, Triton's interpreter).

:func:`sampled_shapley` takes what ``torch.ops.fastshap.shapley_sampled`` takes (features, the head kind and
its parameters, baselines, labels, benefit, orders ``(P, 2, n)``) and returns ``(phi, stderr, stats)`` with
the canonical computation of :mod:`fastshap.sampling`, for the concat-linear and decision-fusion heads:

* torch computes the partial products (the reference's GEMMs), ``delta = present - absent``, the empty and
  full coalitions' scores and their values ``v(empty)``, ``v(N)`` (what every walk shares, once per sample).
* :func:`_sampled_additive_kernel` walks the orders: a program takes a tile of samples and a group of pairs,
  keeps the tile's running scores ``(BLOCK_B, C)`` on chip, adds one modality's delta per step, evaluates
  the coalition, and credits the marginal; it writes the first walk's marginals of a pair to a scratch row
  and, walking the second, adds the pair's draw and its square to its group's sums (each program owns its
  rows of the scratch and of the sums: no atomics). torch adds the groups' sums.
* The running scores are the torch backend's sums, added in the same order (elementwise IEEE adds): the
  discrete benefits give the torch backend's values bit for bit; the probability benefit's float64 softmax
  sums in another order (~1e-15 relative).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastshap import reference, sampling

#: The head kinds this kernel walks (the MLP's hidden layer needs a GEMM per step: the torch backend's).
KINDS = ("concat", "decision")
_BENEFIT_CODES = {"paper": 0, "accuracy": 1, "probability": 2}
#: Pair groups per call: enough programs to fill a GPU at small batches, few sums to add at the end.
_MAX_GROUPS = 64


@triton.jit
def _coalition_value(sums, labels, cols, col_ok, size, BENEFIT: tl.constexpr, MEAN_OF: tl.constexpr):
    """(BLOCK_B,) float64 v(S) of coalitions of `size` modalities from their scores sums (BLOCK_B, BLOCK_K):
    paper |S| * correct, accuracy correct, probability softmax(sums)[y] (decision fusion: sums[y] / n), NaN
    where a score is not finite. correct: the label is torch.argmax's first maximal index."""
    finite = tl.sum(tl.where(col_ok[None, :], sums * 0.0, 0.0), axis=1) == 0.0  # x * 0 is NaN for NaN/Inf x
    top = tl.max(tl.where(col_ok[None, :], sums, float("-inf")), axis=1)
    mine = tl.sum(tl.where(cols[None, :] == labels[:, None], sums, 0.0), axis=1)
    if BENEFIT == 2:
        if MEAN_OF > 0:
            value = mine.to(tl.float64) / MEAN_OF
        else:
            top64 = top.to(tl.float64)
            e = tl.where(col_ok[None, :], tl.exp(sums.to(tl.float64) - top64[:, None]), 0.0)
            value = tl.exp(mine.to(tl.float64) - top64) / tl.sum(e, axis=1)
    else:
        earlier = tl.max(tl.where(col_ok[None, :] & (cols[None, :] < labels[:, None]), sums, float("-inf")), axis=1)
        value = ((mine == top) & (earlier < mine)).to(tl.float64)
        if BENEFIT == 0:
            value = value * size
    return tl.where(finite, value, float("nan"))


@triton.jit
def _credit(scratch, first, second, marginal, row_ok, WALK: tl.constexpr):
    """One step's marginal (BLOCK_B,) of a walk of a pair, the pointers at its modality's rows: the first walk
    (WALK 0) keeps it in scratch; the second adds the pair's draw (the mean of both walks' marginals) and its
    square to the group's sums."""
    if WALK == 0:
        tl.store(scratch, marginal, mask=row_ok)
    else:
        draw = (tl.load(scratch, mask=row_ok, other=0.0) + marginal) * 0.5
        s1 = tl.load(first, mask=row_ok, other=0.0)
        s2 = tl.load(second, mask=row_ok, other=0.0)
        tl.store(first, s1 + draw, mask=row_ok)
        tl.store(second, s2 + draw * draw, mask=row_ok)


@triton.jit
def _sampled_additive_kernel(
    delta_ptr,  # (n, B, K) contiguous, compute dtype: what modality i adds to a walk's score when it joins
    empty_ptr,  # (E, K) contiguous: score(empty), one shared row (E = 1) or one per sample (E = B)
    v_empty_ptr,  # (B,) float64: v(empty)
    v_full_ptr,  # (B,) float64: v(N)
    labels_ptr,  # (B,) int64 in [0, K)
    orders_ptr,  # (P, 2, n) int64 contiguous: walk (p, k) adds modality orders[p, k, j] at step j
    scratch_ptr,  # (G, B, n) float64: the first walk's marginals of the pair a program is walking
    first_ptr,  # (G, B, n) float64, zeros: sums of group g's pair draws
    second_ptr,  # (G, B, n) float64, zeros: sums of their squares
    B,  # samples
    n,  # modalities
    K,  # classes
    P,  # pairs
    E,  # rows of empty_ptr
    pairs_per_group,  # pairs walked by each program of axis 1
    BENEFIT: tl.constexpr,  # 0 paper, 1 accuracy, 2 probability
    MEAN_OF: tl.constexpr,  # n for decision fusion (its probability is the mean of summed ones), else 0
    BLOCK_B: tl.constexpr,  # samples per program
    BLOCK_K: tl.constexpr,  # pow2 >= K
):
    """Program (t, g): samples t * BLOCK_B + [0, BLOCK_B), pairs g * pairs_per_group + [0, pairs_per_group).
    Walk (p, k) starts at score(empty) and after step j holds score(empty) + sum over j' <= j of
    delta[orders[p, k, j']]; the marginal of orders[p, k, j] is v(after j) - v(before j), the last step's
    v(N). The pair's draw is the mean of its two walks' marginals."""
    tile = tl.program_id(0)
    group = tl.program_id(1)
    rows = tile * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    cols = tl.arange(0, BLOCK_K)
    col_ok = cols < K
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)
    labels = tl.load(labels_ptr + rows, mask=row_ok, other=0)
    empty_rows = tl.where(E == 1, 0, rows64)
    empty = tl.load(empty_ptr + empty_rows[:, None] * K + cols[None, :], mask=mask, other=0.0)
    v_empty = tl.load(v_empty_ptr + rows, mask=row_ok, other=0.0)
    v_full = tl.load(v_full_ptr + rows, mask=row_ok, other=0.0)
    own = group.to(tl.int64) * B * n + rows64 * n  # this program's rows of scratch, first and second
    begin = group * pairs_per_group
    end = tl.minimum(P, begin + pairs_per_group)
    for p in range(begin, end):
        for k in tl.static_range(2):
            walk = orders_ptr + tl.cast(p * 2 + k, tl.int64) * n
            sums = empty
            previous = v_empty
            for j in range(n - 1):
                player = tl.load(walk + j)
                step = tl.load(delta_ptr + (player * B + rows64[:, None]) * K + cols[None, :], mask=mask, other=0.0)
                sums = sums + step
                value = _coalition_value(sums, labels, cols, col_ok, j + 1, BENEFIT, MEAN_OF)
                at = own + player
                _credit(scratch_ptr + at, first_ptr + at, second_ptr + at, value - previous, row_ok, k)
                previous = value
            at = own + tl.load(walk + n - 1)
            _credit(scratch_ptr + at, first_ptr + at, second_ptr + at, v_full - previous, row_ok, k)


def _block_b(batch: int, block_k: int) -> int:
    """Samples per program: a tile of running scores of at most 4096 values, at most the batch's pow2."""
    return max(1, min(triton.next_power_of_2(max(batch, 1)), 4096 // block_k, 64))


def sampled_shapley(features, head: str, params, baselines, labels, benefit: str, orders):
    """(phi, stderr, stats) of the sampled estimator; the arguments of ``torch.ops.fastshap.shapley_sampled``
    (fastshap.sampling.sampled_shapley's, with baselines ``[]`` for zeros)."""
    if head not in KINDS:
        raise ValueError(f"fastshap: the Triton sampled kernel walks the {' and '.join(KINDS)} heads, not {head!r}")
    n = len(features)
    sampling._check_orders(orders, n)
    device = features[0].device
    ct = reference.compute_dtype(features[0].dtype)
    if ct != torch.float32:
        raise ValueError(
            f"fastshap: the Triton sampled kernel takes fp32, fp16 or bf16 features, got {features[0].dtype}"
        )
    weight = params[0]
    num_classes = weight.shape[0]
    labels, bad = reference._safe_labels(labels, num_classes)
    present, absent, nonfinite = sampling._first_layer(features, weight, baselines or None, ct)
    if head == "decision":
        b = params[1].to(ct).unsqueeze(1)
        present = torch.softmax(present.add(b), -1)
        absent = torch.softmax((absent if absent is not None else present.new_zeros(n, 1, num_classes)).add(b), -1)
        start, mean_of = torch.zeros(num_classes, dtype=ct, device=device), n
    else:
        start, mean_of = params[1].to(ct), 0
    delta = (present if absent is None else present - absent).contiguous()  # (n, B, K)
    full = sampling._left_to_right(start, present)  # (B, K)
    empty = (start.view(1, -1) if absent is None else sampling._left_to_right(start, absent)).contiguous()
    batch = present.shape[1]
    scorer = sampling._Scorer(benefit, mean_of)
    v_full = scorer(full.t().unsqueeze(1), labels, n).view(-1).contiguous()
    e = empty.t().expand(-1, batch).unsqueeze(1)
    v_empty = scorer(e, labels, 0).view(-1).contiguous()

    pairs = orders.shape[0]
    block_k = triton.next_power_of_2(num_classes)
    block_b = _block_b(batch, block_k)
    tiles = triton.cdiv(batch, block_b)
    groups = max(1, min(pairs, _MAX_GROUPS, triton.cdiv(_MAX_GROUPS * 4, tiles)))
    per_group = triton.cdiv(pairs, groups)
    groups = triton.cdiv(pairs, per_group)
    first = torch.zeros(groups, batch, n, dtype=torch.float64, device=device)
    second = torch.zeros_like(first)
    scratch = torch.empty_like(first)
    if batch:
        with torch.cuda.device(device) if device.type == "cuda" else _nothing():
            _sampled_additive_kernel[(tiles, groups)](
                delta,
                empty,
                v_empty,
                v_full,
                labels.contiguous(),
                orders.to(device).contiguous(),
                scratch,
                first,
                second,
                batch,
                n,
                num_classes,
                pairs,
                empty.shape[0],
                per_group,
                BENEFIT=_BENEFIT_CODES[benefit],
                MEAN_OF=mean_of,
                BLOCK_B=block_b,
                BLOCK_K=block_k,
            )
    return sampling._finish(first.sum(0), second.sum(0), pairs, bad, nonfinite)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
