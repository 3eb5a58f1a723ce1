"""Triton kernels of the fastshap op; the host side (checks, launches, op registration) is
:mod:`fastshap.triton_shapley`.

Two kernels, both one program per tile of ``BLOCK_B`` samples, both writing phi and the batch statistics:

* :func:`fused_kernel` (n <= ``MAX_FUSED`` and the per-sample partials fit on chip) reads each sample's
  features once: per modality, the partial products ``present_i = h_i W_i^T`` (``(BLOCK_B, KP)``, fp32
  accumulation through ``tl.dot``) and, with baselines, ``absent_i = b_i W_i^T``, all kept in registers;
  then it walks the 2^n coalitions.
* :func:`streaming_kernel` (any n <= 16, any width) reads precomputed partials ``(n, B, K)`` fp32 from
  global memory, coalition by coalition and class tile by class tile: the slow, general path.

Per coalition S (bit i of the loop index m is modality i) both kernels form the score left to right,
``start + sel_0 + ... + sel_{n-1}`` with ``sel_i = present_i if i in S else absent_i`` (the summation order
of fastshap.reference; a Gray-code walk would need the same n-way select here, since registers cannot be
indexed by a runtime modality, so it would save nothing), take the first-index argmax (or the softmax at
the label), and add ``v(S) k_i(S)`` to n float64 numerators: the integer coefficients k_i(S) of
fastshap.reference.shapley_coefficients, computed in float64 in the kernel. For the discrete benefits v(S)
k_i(S) and its sums are integers below 2^53 (n <= 16), so phi = numerator / n! is the correctly rounded
value, as in the reference. The MLP head applies ReLU and its second layer to every coalition's hidden
pre-activations (fused: one class at a time, fp32 products reduced over H; streaming: ``tl.dot`` per
class tile), with an online argmax / log-sum-exp across classes. A coalition whose scores (or hidden
pre-activations, or logits) hold a NaN or an Inf gets v(S) = NaN, so that its sample's phi row is NaN.

Coalitions go MB at a time (a (BLOCK_B, MB, K) score tile): on a GPU MB is small (registers); under the
interpreter, which pays per operation, it covers up to all 2^n coalitions in one step.

Heads (``HEAD``, the codes of fastshap.head_kinds): concat-linear (score = logits), decision fusion (score =
sum of per-modality softmax probabilities, present/absent are probabilities), MLP. Benefits (``BENEFIT``):
0 paper, 1 accuracy, 2 probability. ``STATS`` is a (4, n) float64 accumulator: sum of phi, count of phi < 1,
count of samples whose partial products hold a NaN or Inf (fused kernel only; the host counts them for the
streaming one), and at [3, 0] the count of NaN phi rows (labels outside [0, C), non-finite scores).
"""

from __future__ import annotations

import triton
import triton.language as tl

from fastshap import head_kinds

#: Head codes the kernels branch on (globals a kernel reads must be constexpr).
DECISION = tl.constexpr(head_kinds.DECISION.code)
MLP = tl.constexpr(head_kinds.MLP.code)

#: Largest n the fused kernel takes (one pointer argument per modality: Triton has no pointer lists).
MAX_FUSED = 8


@triton.jit
def _factorial(x, N: tl.constexpr):
    """x! in float64 for a scalar integer 0 <= x <= N (exact: 16! < 2^53)."""
    f = x.to(tl.float64) * 0.0 + 1.0
    for j in tl.static_range(2, N + 1):
        f = tl.where(x >= j, f * j, f)
    return f


@triton.jit
def _coefficient_tables(N: tl.constexpr, NS: tl.constexpr):
    """(gain, loss) (NS,) float64 indexed by |S|: (|S|-1)!(n-|S|)! and |S|!(n-1-|S|)! (zero where undefined)."""
    s = tl.arange(0, NS)
    gain = tl.where((s >= 1) & (s <= N), _factorial(s - 1, N) * _factorial(N - s, N), 0.0)
    loss = tl.where(s <= N - 1, _factorial(s, N) * _factorial(N - 1 - s, N), 0.0)
    return gain, loss


@triton.jit
def _coefficients(mm, gain, loss, N: tl.constexpr, NP: tl.constexpr, NS: tl.constexpr):
    """Coalitions mm (MB,) -> (k_i(S) (MB, NP) float64, zero past n; |S| (MB,))."""
    idx = tl.arange(0, NP)
    inside = (mm[:, None] >> idx[None, :]) & 1
    size = tl.sum(inside, 1)
    at = size[:, None] == tl.arange(0, NS)[None, :]
    g = tl.sum(tl.where(at, gain[None, :], 0.0), 1)
    l = tl.sum(tl.where(at, loss[None, :], 0.0), 1)
    coef = tl.where(inside == 1, g[:, None], -l[:, None])
    return tl.where((idx < N)[None, :], coef, 0.0), size


@triton.jit
def _scan(s, cols, C, y, best, arg, top, total, sy, BENEFIT: tl.constexpr, HEAD: tl.constexpr):
    """Folds scores s (BLOCK_B, MB, BLOCK_C) of classes `cols` into the running state (BLOCK_B, MB) of
    each sample and coalition: the first-index argmax (best, arg), or for the probability benefit the
    running log-sum-exp (top, total) and the label's score sy. A later tile replaces the argmax only
    when strictly greater, so the first maximal index wins."""
    valid = (cols < C)[None, None, :]
    s = tl.where(valid, s, float("-inf"))
    if BENEFIT == 2:
        sy += tl.sum(tl.where(cols[None, None, :] == y[:, None, None], s, 0.0), 2)
        if HEAD != DECISION:
            tile_top = tl.max(s, 2)
            new_top = tl.maximum(top, tile_top)
            total = total * tl.exp(top - new_top) + tl.sum(tl.exp(s - new_top[:, :, None]), 2)
            top = new_top
    else:
        tile_best = tl.max(s, 2)
        tile_arg = tl.min(tl.where(valid & (s == tile_best[:, :, None]), cols[None, None, :], 2147483647), 2)
        better = tile_best > best
        best = tl.where(better, tile_best, best)
        arg = tl.where(better, tile_arg, arg)
    return best, arg, top, total, sy


@triton.jit
def _scan_class(logit, c, y, best, arg, top, total, sy, BENEFIT: tl.constexpr):
    """_scan for the single class c: logit (BLOCK_B, MB)."""
    if BENEFIT == 2:
        sy += tl.where(y[:, None] == c, logit, 0.0)
        new_top = tl.maximum(top, logit)
        total = total * tl.exp(top - new_top) + tl.exp(logit - new_top)
        top = new_top
    else:
        better = logit > best
        best = tl.where(better, logit, best)
        arg = tl.where(better, c, arg)
    return best, arg, top, total, sy


@triton.jit
def _any_nonfinite(s, cmask):
    """(R, M) int1: whether s (R, M, K) holds a NaN or an Inf in a column where cmask (K,) is set."""
    bad = ((s != s) | (tl.abs(s) == float("inf"))) & cmask[None, None, :]
    return tl.max(bad.to(tl.int32), 2) > 0


@triton.jit
def _accumulate(
    num,
    mm,
    arg,
    top,
    total,
    sy,
    nonfinite,
    y,
    gain,
    loss,
    N: tl.constexpr,
    NP: tl.constexpr,
    NS: tl.constexpr,
    BENEFIT: tl.constexpr,
    HEAD: tl.constexpr,
):
    """num (BLOCK_B, NP) float64 += sum over the coalitions mm of v(S) k_i(S); v(S) is NaN where `nonfinite`
    (BLOCK_B, MB) says the coalition's scores were not all finite, which makes the sample's phi row NaN."""
    coef, size = _coefficients(mm, gain, loss, N, NP, NS)
    if BENEFIT == 0:
        v = tl.where(arg == y[:, None], size[None, :].to(tl.float64), 0.0)
        nonfinite = nonfinite & (size > 0)[None, :]  # the empty coalition is worth 0 whatever its scores
    elif BENEFIT == 1:
        v = tl.where(arg == y[:, None], 1.0, 0.0).to(tl.float64)
    elif HEAD == DECISION:
        v = sy.to(tl.float64) / N  # decision fusion: the mean of the per-modality probabilities
    else:
        v = (tl.exp(sy - top) / total).to(tl.float64)
    v = tl.where(nonfinite, float("nan"), v)
    return num + tl.sum(v[:, :, None] * coef[None, :, :], 1)


@triton.jit
def _state(BLOCK_B: tl.constexpr, MB: tl.constexpr):
    """Initial (best, arg, top, total, sy) of _scan."""
    best = tl.full((BLOCK_B, MB), float("-inf"), tl.float32)
    return (
        best,
        tl.zeros((BLOCK_B, MB), tl.int32),
        best,
        tl.zeros((BLOCK_B, MB), tl.float32),
        tl.zeros((BLOCK_B, MB), tl.float32),
    )


@triton.jit
def _finish(num, y, rows, live, B, C, PHI, STATS, N: tl.constexpr, NP: tl.constexpr):
    """phi = num / n! rounded once to float32 (NaN rows for labels outside [0, C)); into STATS (float64): batch
    sums and counts of phi < 1, and the count of NaN rows (those labels, non-finite scores)."""
    idx = tl.arange(0, NP)
    nfact = _factorial(idx * 0 + N, N)
    phi = (num / nfact[None, :]).to(tl.float32)
    bad = (y < 0) | (y >= C)
    phi = tl.where(bad[:, None], float("nan"), phi)
    ok = live[:, None] & (idx < N)[None, :]
    tl.store(PHI + rows[:, None] * N + idx[None, :], phi, mask=ok)
    tl.atomic_add(STATS + idx, tl.sum(tl.where(ok, phi.to(tl.float64), 0.0), 0), mask=idx < N)
    tl.atomic_add(STATS + N + idx, tl.sum(tl.where(ok & (phi < 1.0), 1.0, 0.0).to(tl.float64), 0), mask=idx < N)
    nan_row = tl.max(((phi != phi) & (idx < N)[None, :]).to(tl.int32), 1) > 0
    tl.atomic_add(STATS + 3 * N, tl.sum((nan_row & live).to(tl.float64), 0))


@triton.jit
def _rows_times_weight(
    x_ptr,
    x_rs,
    x_cs,
    d,
    rows,
    live,
    W,
    W_rs,
    W_cs,
    off,
    kc,
    K,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    KP: tl.constexpr,
    NATIVE: tl.constexpr,
    PREC: tl.constexpr,
):
    """(BLOCK_B, KP) float32: rows of x (d wide) times columns off..off+d of W (K, D), transposed."""
    acc = tl.zeros((BLOCK_B, KP), tl.float32)
    dd = tl.arange(0, BLOCK_D)
    for d0 in range(0, d, BLOCK_D):
        dm = (d0 + dd) < d
        x = tl.load(
            x_ptr + rows[:, None] * x_rs + (d0 + dd)[None, :] * x_cs, mask=live[:, None] & dm[None, :], other=0.0
        )
        w = tl.load(
            W + kc[None, :] * W_rs + (off + d0 + dd)[:, None] * W_cs, mask=dm[:, None] & (kc < K)[None, :], other=0.0
        )
        if NATIVE:  # fp16/bf16 features and weights of the same dtype: tensor cores, fp32 accumulation
            acc = tl.dot(x, w, acc)
        else:
            acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision=PREC)
    return acc


@triton.jit
def _vector_times_weight(a_ptr, a_cs, d, W, W_rs, W_cs, off, kc, K, BLOCK_DV: tl.constexpr, KP: tl.constexpr):
    """(KP,) float32: one shared baseline vector times its modality's columns of W (no tl.dot: M = 1)."""
    acc = tl.zeros((KP,), tl.float32)
    dd = tl.arange(0, BLOCK_DV)
    for d0 in range(0, d, BLOCK_DV):
        dm = (d0 + dd) < d
        a = tl.load(a_ptr + (d0 + dd) * a_cs, mask=dm, other=0.0).to(tl.float32)
        w = tl.load(
            W + kc[None, :] * W_rs + (off + d0 + dd)[:, None] * W_cs, mask=dm[:, None] & (kc < K)[None, :], other=0.0
        ).to(tl.float32)
        acc += tl.sum(a[:, None] * w, 0)
    return acc


@triton.jit
def _nonfinite_rows(p, live, kmask):
    """Number of live rows of p (R, KP) holding a NaN or an Inf in a real column, as float64."""
    bad = ((p != p) | (tl.abs(p) == float("inf"))) & kmask[None, :] & live[:, None]
    return tl.sum(tl.max(bad.to(tl.int32), 1), 0).to(tl.float64)


@triton.jit
def _softmax_rows(z, kmask):
    """Row softmax of z (R, KP) over the real columns (padding gets probability 0)."""
    z = tl.where(kmask[None, :], z, float("-inf"))
    e = tl.exp(z - tl.max(z, 1)[:, None])
    return e / tl.sum(e, 1)[:, None]


@triton.jit
def fused_kernel(
    # features (B, d_i) of modalities 0..7, strides, widths (slots past n are None: constexpr, never read)
    X0,
    X1,
    X2,
    X3,
    X4,
    X5,
    X6,
    X7,
    XR0,
    XR1,
    XR2,
    XR3,
    XR4,
    XR5,
    XR6,
    XR7,
    XC0,
    XC1,
    XC2,
    XC3,
    XC4,
    XC5,
    XC6,
    XC7,
    D0,
    D1,
    D2,
    D3,
    D4,
    D5,
    D6,
    D7,
    # baselines: (d_i,) (BASE = 1) or (B, d_i) (BASE = 2; row stride 0 for an expanded shared one); None (BASE = 0)
    A0,
    A1,
    A2,
    A3,
    A4,
    A5,
    A6,
    A7,
    AR0,
    AR1,
    AR2,
    AR3,
    AR4,
    AR5,
    AR6,
    AR7,
    AC0,
    AC1,
    AC2,
    AC3,
    AC4,
    AC5,
    AC6,
    AC7,
    W,
    W_rs,
    W_cs,  # first layer (K, sum d_i): concat/decision weight (K = C) or MLP weight1 (K = H)
    BIAS,
    BIAS_rs,
    BIAS_cs,  # (K,) bias / bias1, or decision fusion's (n, K)
    W2,
    W2_rs,
    W2_cs,
    BIAS2,  # MLP second layer (C, H) and (C,); None for the other heads
    Y,
    Y_s,  # labels (B,) int64
    PHI,
    STATS,  # out: phi (B, n) float32; STATS (4, n) float64, zero on entry
    B,
    K,
    C,
    B_BUCKET,  # B_BUCKET: log2 size class of B, only an autotuning key
    N: tl.constexpr,
    NP: tl.constexpr,
    NS: tl.constexpr,
    KP: tl.constexpr,  # n, pow2 >= n, pow2 > n, pow2 >= K
    HEAD: tl.constexpr,
    BASE: tl.constexpr,
    BENEFIT: tl.constexpr,
    NATIVE: tl.constexpr,
    PREC: tl.constexpr,  # first layer: 16-bit tensor cores, or fp32 dot precision
    BLOCK_DV: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MB: tl.constexpr,  # autotuned; MB: coalitions per step
):
    """phi of BLOCK_B samples from their features: partials on chip, then the 2^n coalitions."""
    xs = (X0, X1, X2, X3, X4, X5, X6, X7)
    xr = (XR0, XR1, XR2, XR3, XR4, XR5, XR6, XR7)
    xc = (XC0, XC1, XC2, XC3, XC4, XC5, XC6, XC7)
    ds = (D0, D1, D2, D3, D4, D5, D6, D7)
    bs = (A0, A1, A2, A3, A4, A5, A6, A7)
    br = (AR0, AR1, AR2, AR3, AR4, AR5, AR6, AR7)
    bc = (AC0, AC1, AC2, AC3, AC4, AC5, AC6, AC7)

    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    live = rows < B
    y = tl.load(Y + rows * Y_s, mask=live, other=0)
    kc = tl.arange(0, KP)
    kmask = kc < K
    one = tl.full((1,), 1, tl.int1)

    # 1. partial products of every modality, kept in registers
    present = ()
    absent = ()
    off = 0
    for i in tl.static_range(N):
        p = _rows_times_weight(
            xs[i], xr[i], xc[i], ds[i], rows, live, W, W_rs, W_cs, off, kc, K, BLOCK_B, BLOCK_D, KP, NATIVE, PREC
        )
        bad = _nonfinite_rows(p, live, kmask)
        if BASE == 2:
            a = _rows_times_weight(
                bs[i], br[i], bc[i], ds[i], rows, live, W, W_rs, W_cs, off, kc, K, BLOCK_B, BLOCK_D, KP, NATIVE, PREC
            )
            bad += _nonfinite_rows(a, live, kmask)
        elif BASE == 1:
            a = _vector_times_weight(bs[i], bc[i], ds[i], W, W_rs, W_cs, off, kc, K, BLOCK_DV, KP)[None, :]
            bad += tl.where(pid == 0, _nonfinite_rows(a, one, kmask), 0.0)  # one shared row: count it once
        else:
            a = tl.zeros((1, KP), tl.float32)
        tl.atomic_add(STATS + 2 * N + i, bad)
        if HEAD == DECISION:
            b = tl.load(BIAS + i * BIAS_rs + kc * BIAS_cs, mask=kmask, other=0.0).to(tl.float32)[None, :]
            p = _softmax_rows(p + b, kmask)
            a = _softmax_rows(a + b, kmask)
        present = present + (p,)
        absent = absent + (a,)
        off += ds[i]

    if HEAD == DECISION:
        start = tl.zeros((KP,), tl.float32)
    else:
        start = tl.load(BIAS + kc * BIAS_cs, mask=kmask, other=0.0).to(tl.float32)

    # 2. the coalitions, MB at a time: m0 + j for j < MB (bit i of a coalition id is modality i)
    num = tl.zeros((BLOCK_B, NP), tl.float64)
    gain, loss = _coefficient_tables(N, NS)
    for m0 in range(0, 1 << N, MB):
        mm = m0 + tl.arange(0, MB)
        score = tl.zeros((BLOCK_B, MB, KP), tl.float32) + start[None, None, :]
        for i in tl.static_range(N):
            inside = (((mm >> i) & 1) == 1)[None, :, None]
            score = score + tl.where(inside, present[i][:, None, :], absent[i][:, None, :])
        best, arg, top, total, sy = _state(BLOCK_B, MB)
        nonfinite = _any_nonfinite(score, kmask)  # scores, or the MLP's hidden pre-activations
        if HEAD == MLP:
            # Second layer one class at a time (fp32 FMAs and a reduction over the hidden units): no
            # tl.dot on fp32 activations, whose "tf32x3" form makes ptxas spill heavily here.
            z = tl.maximum(score, 0.0)
            for c in range(0, C):
                w2 = tl.load(W2 + c * W2_rs + kc * W2_cs, mask=kmask, other=0.0).to(tl.float32)
                logit = tl.sum(z * w2[None, None, :], 2) + tl.load(BIAS2 + c).to(tl.float32)
                nonfinite = nonfinite | (logit != logit) | (tl.abs(logit) == float("inf"))
                best, arg, top, total, sy = _scan_class(logit, c, y, best, arg, top, total, sy, BENEFIT)
        else:
            best, arg, top, total, sy = _scan(score, kc, K, y, best, arg, top, total, sy, BENEFIT, HEAD)
        num = _accumulate(num, mm, arg, top, total, sy, nonfinite, y, gain, loss, N, NP, NS, BENEFIT, HEAD)

    _finish(num, y, rows, live, B, C, PHI, STATS, N, NP)


@triton.jit
def _coalition_tile(
    mm,
    P,
    P_ns,
    P_bs,
    A,
    A_ns,
    A_bs,
    START,
    rows,
    live,
    kc,
    km,
    N: tl.constexpr,
    HAS_ABSENT: tl.constexpr,
    BLOCK_B: tl.constexpr,
    MB: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Scores (BLOCK_B, MB, BLOCK_K) of coalitions mm on columns kc: start + sel_0 + ... + sel_{n-1}."""
    s = tl.zeros((BLOCK_B, MB, BLOCK_K), tl.float32) + tl.load(START + kc, mask=km, other=0.0)[None, None, :]
    both = live[:, None] & km[None, :]
    p_i = P  # modality i's partials; advanced by pointer so that i * stride never overflows int32
    a_i = A
    for i in range(N):
        inside = (((mm >> i) & 1) == 1)[None, :, None]
        p = tl.load(p_i + rows[:, None] * P_bs + kc[None, :], mask=both, other=0.0)[:, None, :]
        if HAS_ABSENT:
            a = tl.load(a_i + rows[:, None] * A_bs + kc[None, :], mask=both, other=0.0)[:, None, :]
            s = s + tl.where(inside, p, a)
        else:
            s = s + tl.where(inside, p, 0.0)  # a removed modality adds an exact 0.0
        p_i += P_ns
        a_i += A_ns
    return s


@triton.jit
def streaming_kernel(
    P,
    P_ns,
    P_bs,  # present partials (n, B, K) fp32, unit column stride (decision fusion: probabilities)
    A,
    A_ns,
    A_bs,  # absent partials (n, B or 1, K) fp32 (A_bs = 0 when shared); unused without HAS_ABSENT
    START,  # (K,) fp32: bias, bias1 or zeros (decision fusion)
    W2,
    W2_rs,
    W2_cs,
    BIAS2,  # MLP second layer (C, H = K) and (C,)
    Y,
    Y_s,
    PHI,
    STATS,  # out: (B, n) float32; (4, n) float64 (rows 0, 1 and 3 accumulated here)
    B,
    K,
    C,
    B_BUCKET,  # B_BUCKET: log2 size class of B, only an autotuning key
    N: tl.constexpr,
    NP: tl.constexpr,
    NS: tl.constexpr,
    HEAD: tl.constexpr,
    HAS_ABSENT: tl.constexpr,
    BENEFIT: tl.constexpr,
    PREC2: tl.constexpr,
    BLOCK_B: tl.constexpr,
    MB: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,  # autotuned
):
    """phi of BLOCK_B samples from precomputed partials, streamed per coalition tile and column tile."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    live = rows < B
    y = tl.load(Y + rows * Y_s, mask=live, other=0)
    num = tl.zeros((BLOCK_B, NP), tl.float64)
    gain, loss = _coefficient_tables(N, NS)
    for m0 in range(0, 1 << N, MB):
        mm = m0 + tl.arange(0, MB)
        best, arg, top, total, sy = _state(BLOCK_B, MB)
        nonfinite = tl.zeros((BLOCK_B, MB), tl.int1)
        if HEAD == MLP:
            for c0 in range(0, C, BLOCK_C):
                cc = c0 + tl.arange(0, BLOCK_C)
                acc = tl.zeros((BLOCK_B * MB, BLOCK_C), tl.float32)
                for h0 in range(0, K, BLOCK_K):
                    hc = h0 + tl.arange(0, BLOCK_K)
                    hm = hc < K
                    z = _coalition_tile(
                        mm, P, P_ns, P_bs, A, A_ns, A_bs, START, rows, live, hc, hm, N, HAS_ABSENT, BLOCK_B, MB, BLOCK_K
                    )
                    nonfinite = nonfinite | _any_nonfinite(z, hm)  # hidden pre-activations
                    z = tl.reshape(tl.maximum(z, 0.0), (BLOCK_B * MB, BLOCK_K))
                    w2 = tl.load(
                        W2 + cc[None, :] * W2_rs + hc[:, None] * W2_cs, mask=hm[:, None] & (cc < C)[None, :], other=0.0
                    ).to(tl.float32)
                    acc = tl.dot(z, w2, acc, input_precision=PREC2)
                b2 = tl.load(BIAS2 + cc, mask=cc < C, other=0.0).to(tl.float32)
                logits = tl.reshape(acc, (BLOCK_B, MB, BLOCK_C)) + b2[None, None, :]
                nonfinite = nonfinite | _any_nonfinite(logits, cc < C)
                best, arg, top, total, sy = _scan(logits, cc, C, y, best, arg, top, total, sy, BENEFIT, HEAD)
        else:
            for k0 in range(0, K, BLOCK_K):
                kc = k0 + tl.arange(0, BLOCK_K)
                s = _coalition_tile(
                    mm, P, P_ns, P_bs, A, A_ns, A_bs, START, rows, live, kc, kc < K, N, HAS_ABSENT, BLOCK_B, MB, BLOCK_K
                )
                nonfinite = nonfinite | _any_nonfinite(s, kc < K)
                best, arg, top, total, sy = _scan(s, kc, K, y, best, arg, top, total, sy, BENEFIT, HEAD)
        num = _accumulate(num, mm, arg, top, total, sy, nonfinite, y, gain, loss, N, NP, NS, BENEFIT, HEAD)

    _finish(num, y, rows, live, B, C, PHI, STATS, N, NP)
