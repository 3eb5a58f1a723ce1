"""backend="triton": the fastshap ops as Triton kernels (kernels in :mod:`fastshap._triton_kernels`).

Imported lazily by :class:`fastshap.backends.TritonBackend`; importing it needs Triton, and running it a
CUDA device, or ``TRITON_INTERPRET=1`` set before Triton is imported (CPU tensors, Triton's interpreter).

:func:`shapley` takes what the compiled op ``torch.ops.fastshap.shapley`` takes (features: n tensors
``(B, d_i)`` of fp32, fp16 or bf16, any strides; the head kind and its parameters (:mod:`fastshap.head_kinds`)
in any float dtype; baselines ``[]`` for zeros, or n tensors all ``(d_i,)`` or all ``(B, d_i)``; labels int64
``(B,)``; benefit "paper" | "accuracy" | "probability") and returns ``(phi (B, n) float32, stats (4, n)
float32)`` with the semantics of the canonical computation in :mod:`fastshap.reference`:

* One launch per call for n <= 8 when the per-sample partial products fit on chip
  (``n * pow2(K) <= FUSED_FLOATS``, per-sample baselines and the MLP's hidden layer counted; 1.5x that for
  the concat-linear and MLP heads without per-sample baselines, see WIDE_HEADS): the fused
  kernel reads each sample's features once. Otherwise the partials ``(n, B, K)`` come from torch GEMMs
  with fp32 results (cuBLAS: weight tiles reused across many samples) and the streaming kernel walks the
  coalitions from them (any n <= 16, any C or H); those partials equal the reference's bit for bit when
  both run the same GEMMs, so this path agrees with the torch backend exactly, near-ties included.
* Scores are summed left to right in the reference's order, the argmax takes the first maximal index, and
  the Shapley numerators are exact float64 integers divided once by n!, so phi is exact for the discrete
  benefits. The partial products come from ``tl.dot`` (fp32 accumulation; fp16/bf16 tensor cores when
  features and weights share that dtype, else fp32 operands with ``input_precision`` "tf32x3" under
  ``torch.get_float32_matmul_precision() == "highest"`` and "tf32" otherwise; 16-bit values are exact in
  TF32), whose summation order differs from torch's GEMMs. Phi therefore equals the torch backend's
  exactly except for samples with a coalition whose top-two score margin is within float error of a tie;
  the probability benefit (softmax in fp32 here, float64 in the reference) agrees to ~1e-6.
* stats: row 0 the batch sum of phi (float64 atomics, then float32), row 1 the count of phi < 1, row 2 the
  count of samples whose partial products hold a NaN or an Inf, row 3 column 0 the count of NaN phi rows
  (labels outside [0, C), coalition scores holding NaN/Inf) (:func:`fastshap.modality_shapley` raises on
  rows 2 and 3, or defers them).

The op is registered as ``torch.ops.fastshap_triton.shapley`` (the compiled op's schema) through
``torch.library.triton_op`` (so torch.compile sees the kernels) on a GPU, and as a plain custom op with a
fake kernel under the interpreter, where ``wrap_triton`` cannot trace interpreted kernels. Its argument checks
are the compiled op's memory guards (:mod:`fastshap._op_checks`) and what these kernels take.
"""

import os
from contextlib import nullcontext as _no_guard
from functools import cache, lru_cache

import torch
import triton
from torch._subclasses.fake_tensor import is_fake
from triton.runtime.interpreter import InterpretedFunction

from fastshap import _triton_kernels as kernels
from fastshap import head_kinds, reference
from fastshap._op_checks import check_op

#: True when Triton runs in its interpreter (TRITON_INTERPRET=1 was set before it was imported).
INTERPRETED = isinstance(kernels.fused_kernel, InterpretedFunction)
# Triton reads TRITON_INTERPRET when a function is decorated: its own library's (tl.max, tl.sum) at its
# import, ours at this import. Set in between, our kernels are interpreted and call compiled library
# functions, which fails deep inside Triton at the first launch.
_LIBRARY_FUNCTION = getattr(triton.language.standard, "max", None)
if _LIBRARY_FUNCTION is not None and INTERPRETED != isinstance(_LIBRARY_FUNCTION, InterpretedFunction):
    raise ImportError(
        "TRITON_INTERPRET changed between the import of Triton and of fastshap's Triton kernels; set "
        "it before anything imports triton"
    )

MAX_MODALITIES = 16
MAX_FUSED = kernels.MAX_FUSED
#: On-chip fp32 values per sample the fused kernel may hold (partials, per-sample baselines, MLP hidden):
#: tiles of at least 32 samples must fit in _PROGRAM_FLOATS, or every program re-reads the whole first
#: layer from L2 for too few samples and the GEMMs of the streaming path win.
FUSED_FLOATS = 512
#: Registers' worth of fp32 values per program the autotuner's tiles may use.
_PROGRAM_FLOATS = 1 << 14
#: The concat-linear and MLP heads without per-sample baselines also take the fused kernel up to 1.5x
#: FUSED_FLOATS per sample (n = 5 with C = 101: 640; the MLP with H = 256 at n = 2: 768), with 16- and
#: 32-sample tiles of up to twice _PROGRAM_FLOATS: compiled offline for sm_90 those spill at most 32 bytes,
#: while decision fusion or per-sample baselines at such widths spill hundreds (their softmax rows and
#: second set of partials). The streaming path instead computes the partials with fp32 GEMMs on CUDA cores
#: (~34 GFLOP at n = 5, C = 101, B = 65,536) and writes and re-reads them (n x B x K floats).
WIDE_HEADS = ("concat", "mlp")

#: FASTSHAP_TRITON_AUTOTUNE=0 launches the fused kernel with one fixed tile (:func:`_default_config`)
#: instead of timing every candidate on a shape's first call: for test suites, which compile many shapes
#: and care about values, not speed.
AUTOTUNE = os.environ.get("FASTSHAP_TRITON_AUTOTUNE", "1") != "0"

_DECISION, _MLP = head_kinds.DECISION.code, head_kinds.MLP.code
_BENEFITS = {"paper": 0, "accuracy": 1, "probability": 2}
_FEATURE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_HALF = (torch.float16, torch.bfloat16)


def _pow2(x: int, low: int = 1) -> int:
    """The smallest power of two >= x and >= low (integer arithmetic: triton.next_power_of_2 is a
    JIT-callable whose Python call costs microseconds, and the launch path computes a dozen of these)."""
    x = int(x)
    return max(low, 1 if x <= 1 else 1 << (x - 1).bit_length())


def _pow2_floor(x: int) -> int:
    return 1 << max(0, int(x).bit_length() - 1)


def _bucket(batch) -> int:
    """log2 size class of the batch: an autotuning key only (0 for a symbolic batch under tracing)."""
    return min(batch, 1 << 20).bit_length() if isinstance(batch, int) else 0


def fp32_dot_precision() -> str:
    """tl.dot input precision of the first layer's fp32 operands: near-IEEE "tf32x3" unless torch allows
    TF32 matmuls (``torch.set_float32_matmul_precision("high")``), then one "tf32" pass."""
    return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def second_layer_precision() -> str:
    """The MLP's second layer (fp32 hidden activations): IEEE FMAs, or "tf32" when torch allows TF32.
    Its FLOPs per sample are 2^n H C against the first layer's D H; "tf32x3" there makes ptxas spill."""
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _check_supported(features, classes) -> None:
    """What these kernels take besides the op's memory guards (fastshap._op_checks): 16- and 32-bit float
    features on a CUDA device (CPU tensors under the interpreter), and at least one class."""
    f0 = features[0]
    if f0.dtype not in _FEATURE_DTYPES:
        raise TypeError(f"fastshap: the triton backend takes float32, float16 or bfloat16 features, got {f0.dtype}")
    if f0.device.type != "cuda" and not (INTERPRETED and f0.device.type == "cpu"):
        raise ValueError(
            f"fastshap: the triton kernels run on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), "
            f"got {f0.device}"
        )
    if classes < 1 and f0.shape[0] != 0:
        raise ValueError("fastshap: the head has no classes")


def _footprint(head: int, n: int, k: int, base: int) -> int:
    """fp32 values per sample the fused kernel keeps on chip."""
    per_modality = 2 if base == 2 else 1
    return _pow2(k, 16) * (n * per_modality + (1 if head == _MLP else 0))


def _fused_configs(max_block_b: int, max_block_d: int, kp: int, coalitions: int, foot: int):
    """Tiles for the autotuner: the two largest sample tiles that fit, the two largest column tiles, one
    or several coalitions per step (score tiles of at most 4096 values), 8 warps for the larger tiles.

    The limits come from compiling the kernel offline for sm_90 (ptxas -v): fp32 operands go through
    "tf32x3", which splits them in registers, so their column tiles stay at 32-64 (see _fused_plan), and
    bigger score tiles than these spill."""
    sizes_b = [b for b in (16, 32, 64, 128, 256) if b <= max_block_b][-2:]
    sizes_d = [d for d in (32, 64, 128) if d <= max_block_d][-2:] or [16]
    configs = []
    for bb in sizes_b:
        widest = max(1, min(coalitions, _pow2_floor(max(1, 4096 // (bb * kp)))))
        warps = 8 if bb * foot >= 4096 else 4
        for mb in sorted({1, widest}):
            for bd in sizes_d:
                configs.append(triton.Config({"BLOCK_B": bb, "BLOCK_D": bd, "MB": mb}, num_warps=warps, num_stages=3))
    # The largest tile with a shallower feature pipeline: its three stages take up to ~224 KB of shared
    # memory (one program per SM); two stages leave room for a second. On an H100 the kernel ran fastest
    # at the largest tile of the candidates (n = 2, C = 31: 141 us at 128 samples against 207 us at 64).
    big = _default_config(configs)
    configs.append(triton.Config(dict(big.kwargs), num_warps=big.num_warps, num_stages=2))
    # Half the smallest sample tile with 4 warps (16 rows a warp, the MMA's height): registers and shared
    # memory for two or more programs per SM, so that one program's pipeline fills (one per modality) and
    # coalition walk overlap another's loads. The H100 run had only 8-warp tiles (a 64-sample tile with 8
    # warps ran at 207 us against 141 us at 128).
    if sizes_b[0] >= 32 and big.num_warps == 8:
        configs.append(
            triton.Config({"BLOCK_B": sizes_b[0] // 2, "BLOCK_D": sizes_d[-1], "MB": 1}, num_warps=4, num_stages=3)
        )
    return configs


_FUSED_KEY = ["B_BUCKET", "K", "C", "N", "HEAD", "BASE", "BENEFIT"] + [f"D{i}" for i in range(MAX_FUSED)]


#: Every autotuner made so far: their ``cache`` (key -> chosen config) and ``configs_timings`` (the last
#: tuning's candidates and times, in ms) are what the benchmarks record.
AUTOTUNERS = []


@cache
def _autotuned_fused(max_block_b: int, max_block_d: int, kp: int, coalitions: int, foot: int):
    """The fused kernel, autotuned over the tiles of :func:`_fused_configs`."""
    tuner = triton.autotune(
        configs=_fused_configs(max_block_b, max_block_d, kp, coalitions, foot),
        key=_FUSED_KEY,
        reset_to_zero=["STATS"],
    )(kernels.fused_kernel)
    AUTOTUNERS.append(tuner)
    return tuner


def _default_config(configs):
    """The tile used without autotuning: the largest sample and column tiles, one coalition per step."""
    return max(configs, key=lambda c: (c.kwargs["BLOCK_B"], -c.kwargs["MB"], c.kwargs["BLOCK_D"]))


def _interpreter_coalitions(block_b: int, width: int, n: int) -> int:
    """Coalitions per step under the interpreter: as many as keep a score tile near 2^17 values."""
    return max(1, min(1 << n, _pow2_floor(max(1, (1 << 17) // (block_b * width)))))


@lru_cache(maxsize=1024)
def _fused_meta(
    head: int, dims: tuple, k: int, base: int, dtype, weight_dtype, benefit: str, prec32: str, fused_floats: int
):
    """(constexpr meta, autotuning class) of a fused launch: they depend on shapes and dtypes only, so a
    training loop computes them once per shape (fused_floats: FUSED_FLOATS, an argument so that the cache
    sees a changed limit)."""
    n = len(dims)
    kp = _pow2(k, 16)
    native = not INTERPRETED and weight_dtype == dtype and dtype in _HALF
    prec = "tf32" if dtype in _HALF and weight_dtype in _HALF else prec32
    meta = dict(
        N=n,
        NP=_pow2(n, 2),
        NS=_pow2(n + 1),
        KP=kp,
        HEAD=head,
        BASE=base,
        BENEFIT=_BENEFITS[benefit],
        NATIVE=native,
        PREC=prec,
        BLOCK_DV=max(1, min(128, _pow2_floor(4096 // kp))),
    )
    foot = _footprint(head, n, k, base)
    program_floats = _PROGRAM_FLOATS if foot <= fused_floats else 2 * _PROGRAM_FLOATS  # a wide footprint
    max_block_b = max(16, min(256, _pow2_floor(program_floats // foot)))
    widest = 128 if native else (64 if n * kp <= 128 else 32)
    max_block_d = max(16, min(widest, _pow2_floor(8192 // kp), _pow2(max(dims), 16)))
    return meta, (max_block_b, max_block_d, kp, 1 << n, foot)


def _fused_plan(head, features, weight, bias, weight2, bias2, baselines, labels, benefit, phi, stats):
    """(positional args, constexpr meta, autotuning class) of a fused-kernel launch. Arguments the launch
    never reads (modality slots past n, baselines when there are none, the MLP's second layer for the other
    heads) are None: a constexpr to Triton, so its launcher has that much less to convert each call."""
    n, batch = len(features), features[0].shape[0]
    k = weight.shape[0]
    c = weight2.shape[0] if head == _MLP else k
    base = 0 if not baselines else (1 if baselines[0].dim() == 1 else 2)
    meta, tuning = _fused_meta(
        head,
        tuple(f.shape[1] for f in features),
        k,
        base,
        features[0].dtype,
        weight.dtype,
        benefit,
        fp32_dot_precision(),
        FUSED_FLOATS,
    )
    none = [None] * (MAX_FUSED - n)
    xs = [*features, *none]
    xr = [*(f.stride(0) for f in features), *none]
    xc = [*(f.stride(1) for f in features), *none]
    ds = [*(f.shape[1] for f in features), *none]
    if base == 0:
        bs = br = bc = [None] * MAX_FUSED
    else:
        bs = [*baselines, *none]
        br = [*(b.stride(0) if base == 2 else 0 for b in baselines), *none]
        bc = [*(b.stride(-1) for b in baselines), *none]
    bias_rs, bias_cs = (bias.stride(0), bias.stride(1)) if bias.dim() == 2 else (0, bias.stride(0))
    if head == _MLP:
        w2, w2_rs, w2_cs, b2 = weight2, weight2.stride(0), weight2.stride(1), bias2
    else:
        w2 = w2_rs = w2_cs = b2 = None
    args = [
        *xs,
        *xr,
        *xc,
        *ds,
        *bs,
        *br,
        *bc,
        weight,
        weight.stride(0),
        weight.stride(1),
        bias,
        bias_rs,
        bias_cs,
        w2,
        w2_rs,
        w2_cs,
        b2,
        labels,
        labels.stride(0),
        phi,
        stats,
        batch,
        k,
        c,
        _bucket(batch),
    ]
    return args, meta, tuning


#: The config the autotuner chose, by everything its key sees (shapes, dtypes, the batch's size class):
#: later calls launch the kernel with it directly, without the autotuner's per-call work (a dict of the ~100
#: arguments and the str() of every tensor argument's dtype), which a GPU's host pays on every call.
_CHOSEN: dict = {}


def _launch_fused(head, features, weight, bias, weight2, bias2, baselines, labels, benefit, phi, stats, config=None):
    """One fused-kernel launch: autotuned, or with `config` (a triton.Config of _fused_configs)."""
    args, meta, tuning = _fused_plan(
        head, features, weight, bias, weight2, bias2, baselines, labels, benefit, phi, stats
    )
    batch, n, kp = features[0].shape[0], len(features), meta["KP"]
    if INTERPRETED:
        # Few, large programs: the interpreter pays per program and per operation, not per element.
        block_b = max(16, min(128, _pow2(batch)))
        dims = [f.shape[1] for f in features]
        kernels.fused_kernel[(triton.cdiv(batch, block_b),)](
            *args,
            **meta,
            BLOCK_B=block_b,
            BLOCK_D=max(16, min(256, _pow2(max(dims)))),
            MB=_interpreter_coalitions(block_b, kp, n),
        )
        return
    grid = lambda block_b: triton.cdiv(batch, block_b)  # noqa: E731
    if config is None and AUTOTUNE:
        key = (
            "fused",
            tuning,
            tuple(f.shape[1] for f in features),
            weight.shape[0],
            args[-2],
            args[-1],
            head,
            benefit,
            features[0].dtype,
            weight.dtype,
            bias.dtype,
            meta["PREC"],
            None if weight2 is None else (weight2.dtype, bias2.dtype),
        )
        _launch_autotuned(_autotuned_fused(*tuning), key, grid, args, meta, features)
        return
    _launch_config(kernels.fused_kernel, config or _default_config(_fused_configs(*tuning)), grid, args, meta)


def _launch_autotuned(tuner, key, grid, args, meta, features):
    """Launches through `tuner` the first time `key` is seen (it times its configs), later its choice
    directly (see _CHOSEN). grid: BLOCK_B -> number of programs."""
    from torch.library import wrap_triton

    config = _CHOSEN.get(key)
    if config is not None:
        _launch_config(tuner.fn, config, grid, args, meta)
        return
    wrap_triton(tuner)[lambda m: (grid(m["BLOCK_B"]),)](*args, **meta)
    chosen = getattr(tuner, "best_config", None)  # set by the run (Triton 3.x)
    if chosen is not None and _eager(features):  # a traced call records the launch, it chooses nothing
        _CHOSEN[key] = chosen


def _launch_config(kernel, config, grid, args, meta):
    """One launch with `config`'s tiles, warps and stages (not Config.all_kwargs(): torch.compile's tracing
    of wrap_triton rejects a num_ctas argument, and our configs leave the other options at their defaults)."""
    from torch.library import wrap_triton

    wrap_triton(kernel)[(grid(config.kwargs["BLOCK_B"]),)](
        *args, **meta, **config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages
    )


def _partials(xs, weight):
    """(n, rows, K) float32: xs[i] ((rows, d_i) or (d_i,)) times modality i's columns of weight.

    fp32 GEMMs as in the reference (torch's fp32 matmul precision applies); on CUDA, fp16/bf16 inputs
    with weights of the same dtype use the 16-bit GEMM with fp32 output (exact products, fp32 sums)."""
    half = xs[0].is_cuda and xs[0].dtype in _HALF and weight.dtype == xs[0].dtype
    # The reference's weight, padded as its GEMMs are (on the CPU only: see reference.gemm_width).
    w = weight if half else reference._padded(weight, torch.float32)
    k, out, offset = weight.shape[0], [], 0
    for x in xs:
        d = x.shape[-1]
        x2 = x if x.dim() == 2 else x.unsqueeze(0)
        wt = w[:, offset : offset + d].t()
        out.append(torch.mm(x2, wt, out_dtype=torch.float32) if half else (x2.float() @ wt)[:, :k])
        offset += d
    return torch.stack(out)


def _nonfinite_rows(partials):
    return (~torch.isfinite(partials)).any(-1).sum(-1).double()


def _streaming_plan(head, features, weight, bias, weight2, bias2, baselines, labels, benefit, phi, stats):
    """(positional args, constexpr meta (with the tiles under the interpreter), autotuning class (n, K, C,
    head), non-finite row counts) of a streaming launch; computes the partial products."""
    n, batch = len(features), features[0].shape[0]
    k = weight.shape[0]
    c = weight2.shape[0] if head == _MLP else k
    present = _partials(features, weight)
    absent = _partials(baselines, weight) if baselines else None
    nonfinite = _nonfinite_rows(present) + (_nonfinite_rows(absent) if absent is not None else 0)
    if head == _DECISION:
        b = bias.float().unsqueeze(1)
        present = torch.softmax(present + b, -1)
        zeros = torch.zeros(n, 1, k, dtype=torch.float32, device=present.device)
        absent = torch.softmax((absent if absent is not None else zeros) + b, -1)
        start = torch.zeros(k, dtype=torch.float32, device=present.device)
    else:
        start = bias.float().contiguous()
    present = present.contiguous()
    has_absent = absent is not None
    absent = absent.contiguous() if has_absent else present
    a_bs = 0 if absent.shape[1] == 1 else absent.stride(1)
    if head == _MLP:
        w2, w2_rs, w2_cs, b2 = weight2, weight2.stride(0), weight2.stride(1), bias2
    else:
        w2 = w2_rs = w2_cs = b2 = None  # read by the MLP head only
    args = [
        present,
        present.stride(0),
        present.stride(1),
        absent,
        absent.stride(0),
        a_bs,
        start,
        w2,
        w2_rs,
        w2_cs,
        b2,
        labels,
        labels.stride(0),
        phi,
        stats,
        batch,
        k,
        c,
        _bucket(batch),
    ]
    meta = dict(
        N=n,
        NP=_pow2(n, 2),
        NS=_pow2(n + 1),
        HEAD=head,
        HAS_ABSENT=has_absent,
        BENEFIT=_BENEFITS[benefit],
        PREC2=second_layer_precision(),
    )
    if INTERPRETED:
        block_b, block_k, block_c = max(16, min(128, _pow2(batch))), min(1024, _pow2(k, 16)), min(1024, _pow2(c, 16))
        mb = _interpreter_coalitions(block_b, max(block_k, block_c if head == _MLP else 1), n)
        meta.update(BLOCK_B=block_b, MB=mb, BLOCK_K=block_k, BLOCK_C=block_c)
    return args, meta, (n, k, c, head), nonfinite


def _streaming_configs(n: int, k: int, c: int, head: int):
    """Tiles of the streaming kernel, the fixed one first (32 samples, up to 64 columns): each coalition
    step re-reads the n partial tiles of its samples, so narrower column tiles with more coalitions per
    step read them fewer times (score tiles of at most 4096 values; the MLP's tl.dot needs >= 16 rows)."""
    kp, block_c = _pow2(k, 16), min(64, _pow2(c, 16))
    configs, seen = [], set()
    for block_b, block_k in ((32, min(64, kp)), (32, 16), (16, 16), (64, 16)):
        width = max(block_k, block_c if head == _MLP else 1)
        mb = max(1, min(1 << n, 4096 // (block_b * width)))
        if (head == _MLP and block_b * mb < 16) or (block_b, block_k, mb) in seen:
            continue
        seen.add((block_b, block_k, mb))
        configs.append(triton.Config(dict(BLOCK_B=block_b, BLOCK_K=block_k, BLOCK_C=block_c, MB=mb), num_warps=4))
    return configs


_STREAMING_KEY = ["B_BUCKET", "K", "C", "N", "HEAD", "HAS_ABSENT", "BENEFIT"]


@cache
def _autotuned_streaming(n: int, k: int, c: int, head: int):
    tuner = triton.autotune(configs=_streaming_configs(n, k, c, head), key=_STREAMING_KEY, reset_to_zero=["STATS"])(
        kernels.streaming_kernel
    )
    AUTOTUNERS.append(tuner)
    return tuner


def _launch_streaming(
    head, features, weight, bias, weight2, bias2, baselines, labels, benefit, phi, stats, config=None
):
    """The partial products (torch GEMMs), then one streaming-kernel launch: autotuned, or with `config`
    (a triton.Config of _streaming_configs)."""
    args, meta, tuning, nonfinite = _streaming_plan(
        head, features, weight, bias, weight2, bias2, baselines, labels, benefit, phi, stats
    )
    grid = lambda block_b: triton.cdiv(features[0].shape[0], block_b)  # noqa: E731
    if INTERPRETED:
        kernels.streaming_kernel[(grid(meta["BLOCK_B"]),)](*args, **meta, num_warps=4)
    elif config is None and AUTOTUNE:
        key = (
            "streaming",
            tuning,
            args[-1],
            benefit,
            meta["HAS_ABSENT"],
            meta["PREC2"],
            None if weight2 is None else (weight2.dtype, bias2.dtype),
        )
        _launch_autotuned(_autotuned_streaming(*tuning), key, grid, args, meta, features)
    else:
        _launch_config(kernels.streaming_kernel, config or _streaming_configs(*tuning)[0], grid, args, meta)
    stats[2] += nonfinite


def uses_fused_kernel(head: str, n: int, width: int, per_sample_baselines: bool) -> bool:
    """Whether a call takes the one-pass fused kernel (width: C, or H for the MLP head)."""
    wide = head in WIDE_HEADS and not per_sample_baselines
    limit = FUSED_FLOATS * 3 // 2 if wide else FUSED_FLOATS
    code = head_kinds.get(head).code
    return n <= MAX_FUSED and _footprint(code, n, width, 2 if per_sample_baselines else 0) <= limit


#: The kernels form the element offsets of feature columns and of the head's weights from 32-bit index
#: vectors (a batch's rows are 64-bit): such an offset must stay below 2^31.
_OFFSET_LIMIT = 2**31


def _max_offset(t: torch.Tensor) -> int:
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()) if size > 0)


def _columns_with_32bit_offsets(t: torch.Tensor) -> torch.Tensor:
    """Features or a baseline (rows are indexed in 64 bits): a contiguous copy where a column offset would
    wrap 32 bits."""
    return t.contiguous() if (t.shape[-1] - 1) * abs(t.stride(-1)) >= _OFFSET_LIMIT else t


def _with_32bit_offsets(name: str, t: torch.Tensor) -> torch.Tensor:
    """`t` itself, or a contiguous copy where its strides would wrap a 32-bit offset; a clear error where
    even that does not fit (instead of out-of-bounds reads)."""
    if _max_offset(t) < _OFFSET_LIMIT:
        return t
    t = t.contiguous()
    if _max_offset(t) >= _OFFSET_LIMIT:
        raise ValueError(
            f"fastshap: backend 'triton' indexes the head's {name} with 32-bit offsets, and its "
            f"{t.numel()} elements do not fit them: use backend='cuda' or 'torch'"
        )
    return t


def _run(features, head, params, baselines, labels, benefit):
    shape = check_op(features, head, params, baselines, labels, benefit)
    _check_supported(features, shape.C)
    code = shape.kind.code
    weight, bias = params[0], params[1]
    weight2, bias2 = (params[2], params[3]) if code == _MLP else (None, None)
    n, batch = shape.n, shape.batch
    device = features[0].device
    phi = torch.empty(batch, n, dtype=torch.float32, device=device)
    stats = torch.zeros(4, n, dtype=torch.float64, device=device)
    if batch > 0:
        per_sample = bool(baselines) and baselines[0].dim() == 2
        fused = uses_fused_kernel(head, n, weight.shape[0], per_sample)
        launch = _launch_fused if fused else _launch_streaming
        # Column offsets (features, baselines) and the weights the kernels read (the first layer in the fused
        # kernel only: the streaming path's partials come from torch GEMMs) must fit 32 bits; bias2 is read
        # with unit stride.
        features = [_columns_with_32bit_offsets(f) for f in features]
        baselines = [_columns_with_32bit_offsets(b) for b in baselines]
        if fused:
            weight = _with_32bit_offsets("weight", weight)
        if weight2 is not None:
            weight2, bias2 = _with_32bit_offsets("weight2", weight2), bias2.contiguous()
        # Triton launches on the current CUDA device: make it the features' one (not while tracing with fake
        # tensors: nothing launches then, and a machine that traces need not have the device).
        guard = device.type == "cuda" and not is_fake(features[0])
        with torch.cuda.device(device) if guard else _no_guard():
            launch(code, list(features), weight, bias, weight2, bias2, list(baselines), labels, benefit, phi, stats)
    return phi, stats.float()


# The op function carries type annotations because torch.library.triton_op infers the schema from them:
# torch 2.11's triton_op ignores its schema= argument (seen on an H200), so annotations are the one
# declaration that works on every supported torch. _SCHEMA below states the same (the compiled op's), and a
# test keeps the two in agreement.
Tensor = torch.Tensor


def _shapley_impl(
    features: list[Tensor], head: str, params: list[Tensor], baselines: list[Tensor], labels: Tensor, benefit: str
) -> tuple[Tensor, Tensor]:
    return _run(features, head, params, baselines, labels, benefit)


def _shapley_fake(features, head, params, baselines, labels, benefit):
    shape = check_op(features, head, params, baselines, labels, benefit)
    _check_supported(features, shape.C)
    f = features[0]
    return f.new_empty((shape.batch, shape.n), dtype=torch.float32), f.new_empty((4, shape.n), dtype=torch.float32)


_SCHEMA = "(Tensor[] features, str head, Tensor[] params, Tensor[] baselines, Tensor labels, str benefit)"


def _register():
    name = "fastshap_triton::shapley"
    if INTERPRETED:
        op = torch.library.custom_op(name, _shapley_impl, mutates_args=())
        op.register_fake(_shapley_fake)
        return op
    return torch.library.triton_op(name, _shapley_impl, mutates_args=())


_shapley_op = _register()


def _eager(features) -> bool:
    """True when nothing traces this call (no torch.compile, no dispatch mode such as FakeTensorMode or
    make_fx, plain tensors): then the registered op would only dispatch back to its implementation, and
    calling that directly saves the dispatcher's Python round trip (~30 us of host time a call on a fast
    CPU). Otherwise the call goes through the op, which is what tracing records."""
    return (
        bool(features)
        and type(features[0]) is torch.Tensor
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch.compiler.is_compiling()
    )


def shapley(features, head, params, baselines, labels, benefit):
    """The op ``torch.ops.fastshap_triton.shapley`` (called directly when nothing traces the call): the
    compiled op's arguments, see the module docstring."""
    features, params, baselines = list(features), list(params), list(baselines)
    op = _shapley_impl if _eager(features) else _shapley_op
    return op(features, head, params, baselines, labels, benefit)


def bytes_moved(features, weight, baselines=(), weight2=None) -> int:
    """Bytes the fused kernel must read and write at least (features, baselines, parameters, phi): the
    denominator of its bandwidth figure."""
    total = sum(f.numel() * f.element_size() for f in features)
    total += sum(b.numel() * b.element_size() for b in baselines or ())
    total += weight.numel() * weight.element_size()
    if weight2 is not None:
        total += weight2.numel() * weight2.element_size()
    n, batch = len(features), features[0].shape[0]
    return total + batch * (n * 4 + 8)


def _launch_direct(kernel, grid, args, kwargs):
    """One eager launch of `kernel` (a JITFunction) on `grid` (what wrap_triton does when nothing traces; the
    seam that bench/host_path.py stubs)."""
    kernel[grid](*args, **kwargs)


class _PlannedFused:
    """The fused kernel's launch for calls of one shape (fastshap._call_plan): what depends on the shapes, the
    dtypes, the head parameters' strides and the options is computed once; a call allocates its outputs,
    lists its tensors and launches. The plan's check (csrc/call_plan.cpp) guarantees those shapes, dtypes,
    devices and strides, and that feature and baseline column offsets fit 32 bits. What can change between
    calls without it (FUSED_FLOATS, AUTOTUNE, torch's float32 matmul precision) sends a call to the op."""

    def __init__(self, head, code, features, params, baselines, benefit):
        weight, bias = params[0], params[1]
        weight2, bias2 = (params[2], params[3]) if code == _MLP else (None, None)
        n, f0 = len(features), features[0]
        self.head, self.benefit, self.n, self.device = head, benefit, n, f0.device
        self.dims = tuple(f.shape[1] for f in features)
        self.base = 0 if not baselines else (1 if baselines[0].dim() == 1 else 2)
        self.k = weight.shape[0]
        self.c = weight2.shape[0] if code == _MLP else self.k
        self.options = (FUSED_FLOATS, AUTOTUNE, torch.get_float32_matmul_precision())
        self.meta, self.tuning = _fused_meta(
            code, self.dims, self.k, self.base, f0.dtype, weight.dtype, benefit, fp32_dot_precision(), FUSED_FLOATS
        )
        bias_rs, bias_cs = (bias.stride(0), bias.stride(1)) if bias.dim() == 2 else (0, bias.stride(0))
        second = [weight2, weight2.stride(0), weight2.stride(1), bias2] if code == _MLP else [None] * 4
        # The launch's argument list (_fused_plan's order) with every entry that is the same for each call of
        # the plan filled in: the unused modality slots, the widths, the baselines' slots when there are none,
        # the live parameter tensors (their values are read at launch) and their strides, K and C. A call
        # copies it and fills in its tensors, strides and batch (decision fusion's parameters are packed anew
        # for every call).
        m, none = MAX_FUSED, [None] * MAX_FUSED
        head_args = [weight, weight.stride(0), weight.stride(1), bias, bias_rs, bias_cs, *second]
        self.template = [*none, *none, *none, *self.dims, *none[n:], *none, *none, *none, *head_args]
        self.template += [None, None, None, None, None, self.k, self.c, None]
        self.head_at = 7 * m  # where head_args start
        self.packed = code == _DECISION
        self.n_slots = (slice(0, n), slice(m, m + n), slice(2 * m, 2 * m + n))
        self.base_slots = (slice(4 * m, 4 * m + n), slice(5 * m, 5 * m + n), slice(6 * m, 6 * m + n))
        second_dtypes = None if weight2 is None else (weight2.dtype, bias2.dtype)
        # _launch_fused's key of the autotuner's choice, but the batch size class
        self.key = ("fused", self.tuning, self.dims, self.k, self.c, code, benefit, f0.dtype, weight.dtype)
        self.key_end = (bias.dtype, self.meta["PREC"], second_dtypes)
        self.launches: dict = {}  # batch size class -> launch keyword arguments (meta and the tile)

    def __call__(self, features, params, baselines, labels):
        """(phi (B, n) float32, stats (4, n) float64) of one call."""
        if self.options != (FUSED_FLOATS, AUTOTUNE, torch.get_float32_matmul_precision()):
            return shapley(features, self.head, params, baselines, labels, self.benefit)
        n, device = self.n, self.device
        batch = features[0].shape[0]
        phi = torch.empty(batch, n, dtype=torch.float32, device=device)
        stats = torch.zeros(4, n, dtype=torch.float64, device=device)
        bucket = _bucket(batch)
        args = self.template.copy()
        tensors, rows, columns = self.n_slots
        args[tensors] = features
        args[rows] = [f.stride(0) for f in features]
        args[columns] = [f.stride(1) for f in features]
        if self.base:
            tensors, rows, columns = self.base_slots
            args[tensors] = baselines
            args[rows] = [b.stride(0) for b in baselines] if self.base == 2 else [0] * n
            args[columns] = [b.stride(-1) for b in baselines]
        if self.packed:
            weight, bias = params
            at = self.head_at
            args[at : at + 6] = [weight, weight.stride(0), weight.stride(1), bias, bias.stride(0), bias.stride(1)]
        args[-8:-4] = [labels, labels.stride(0), phi, stats]
        args[-4] = batch
        args[-1] = bucket
        kwargs = self.launches.get(bucket)
        if device.type == "cuda" and torch.cuda.current_device() != device.index:
            with torch.cuda.device(device):  # Triton launches on the current device
                self._launch(kwargs, bucket, batch, args, features)
        else:
            self._launch(kwargs, bucket, batch, args, features)
        return phi, stats

    def _launch(self, kwargs, bucket, batch, args, features):
        if kwargs is None:
            self._first(bucket, batch, args, features)
        else:
            block = kwargs["BLOCK_B"]
            _launch_direct(kernels.fused_kernel, ((batch + block - 1) // block,), args, kwargs)

    def _first(self, bucket, batch, args, features):
        """The first launch of a batch size class: as _launch_fused launches it (the autotuner's first run, or
        the fixed tile); its tile is kept for the next ones. Under the interpreter the tile follows the batch,
        as in _launch_fused: nothing is kept."""
        grid = lambda block_b: triton.cdiv(batch, block_b)  # noqa: E731
        if INTERPRETED:
            block_b = max(16, min(128, _pow2(batch)))
            tile = dict(
                BLOCK_B=block_b,
                BLOCK_D=max(16, min(256, _pow2(max(self.dims)))),
                MB=_interpreter_coalitions(block_b, self.meta["KP"], self.n),
            )
            _launch_direct(kernels.fused_kernel, (grid(block_b),), args, {**self.meta, **tile})
            return None
        if AUTOTUNE:
            key = (*self.key[:5], bucket, *self.key[5:], *self.key_end)
            config = _CHOSEN.get(key)
            if config is None:
                _launch_autotuned(_autotuned_fused(*self.tuning), key, grid, args, self.meta, features)
                config = _CHOSEN.get(key)
                if config is None:  # a Triton that leaves no best_config behind: the autotuner every time
                    return None
            else:
                _launch_config(kernels.fused_kernel, config, grid, args, self.meta)
        else:
            config = _default_config(_fused_configs(*self.tuning))
            _launch_config(kernels.fused_kernel, config, grid, args, self.meta)
        kwargs = {**self.meta, **config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
        self.launches[bucket] = kwargs
        return kwargs


def planned_launch(head: str, features, params, baselines, benefit: str):
    """A launcher of the fused kernel for calls shaped like this one (fastshap._call_plan), or None where such
    calls take another path (the streaming kernel, or copies that make offsets fit 32 bits): they run
    through :func:`shapley`. The arguments are those of a call that :func:`shapley` has just run."""
    kind = head_kinds.get(head)
    try:
        _check_supported(features, params[kind.first_layer].shape[0])
    except (ValueError, TypeError):
        return None
    per_sample = bool(baselines) and baselines[0].dim() == 2
    weight = params[0]
    if not uses_fused_kernel(head, len(features), weight.shape[0], per_sample) or _max_offset(weight) >= _OFFSET_LIMIT:
        return None
    if kind.code == _MLP and (_max_offset(params[2]) >= _OFFSET_LIMIT or not params[3].is_contiguous()):
        return None
    return _PlannedFused(head, kind.code, features, params, baselines, benefit)


__all__ = [
    "shapley",
    "uses_fused_kernel",
    "fp32_dot_precision",
    "bytes_moved",
    "INTERPRETED",
]
