"""The compiled ops and the backend machinery: cpp == torch bit for bit, opcheck, torch.compile, backend
selection and its errors, with_stats, B = 0, and n = 16 against the oracle."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from cases import assert_bad_labels_counted, spoil_labels
from oracle import NonlinearHead, dyadic, oracle_shapley
from torch import nn

import fastshap
from fastshap import _extension, backends, head_kinds, heads, reference
from fastshap.api import _head_spec

pytestmark = pytest.mark.skipif(not _extension.LOADED, reason="the compiled extension fastshap._C is not built")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
KINDS = ("linear", "concat", "decision", "mlp")


def make_head(kind, dims, num_classes, g, hidden=20):
    """Like tests/cases.make_head but with smaller biases (0.3): with C = 101 and random labels, the
    cases' larger biases can leave every coalition wrong (seen: linear, fp16), and these tests need
    non-zero values."""
    total = sum(dims)
    head = {
        "linear": lambda: nn.Linear(total, num_classes),
        "concat": lambda: heads.ConcatLinear(dims, num_classes),
        "decision": lambda: heads.DecisionFusion(dims, num_classes),
        "mlp": lambda: heads.ConcatMLP(dims, hidden, num_classes),
    }[kind]()
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.5 / math.sqrt(p.shape[1]) if p.dim() == 2 else 0.3))
    return head


def make_baselines(style, dims, batch, dtype, g):
    if style == "none":
        return None
    if style == "shared":
        return [torch.randn(d, generator=g).to(dtype) for d in dims]
    return [torch.randn(d, batch, generator=g).to(dtype).t() for d in dims]  # per-sample, transposed views


# --- cpp == torch ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("baselines", ["none", "shared", "sample"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", KINDS)
def test_cpp_equals_torch_exactly(kind, dtype, baselines):
    """Discrete benefits: identical bits (the canonical computation is reproduced, not approximated),
    near-ties included; probability to 1e-6. Odd sizes: B = 97, C = 101, widths 1..9, n = 5."""
    g = torch.Generator().manual_seed(KINDS.index(kind) * 10 + list(DTYPES).index(dtype))
    dims, batch, num_classes = [1, 9, 4, 7, 2], 97, 101
    head = make_head(kind, dims, num_classes, g)
    feats = [torch.randn(batch, d, generator=g).to(DTYPES[dtype]) for d in dims]
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    base = make_baselines(baselines, dims, batch, DTYPES[dtype], g)
    for benefit in ("paper", "accuracy", "probability"):
        out = {
            backend: fastshap.modality_shapley(feats, head, labels, baselines=base, benefit=benefit, backend=backend)
            for backend in ("torch", "cpp")
        }
        if benefit == "probability":
            torch.testing.assert_close(out["cpp"], out["torch"], atol=1e-6, rtol=0)
        else:
            assert torch.equal(out["cpp"], out["torch"]), f"{benefit}: {int((out['cpp'] != out['torch']).sum())} differ"
        assert bool((out["cpp"] != 0).any())


@pytest.mark.parametrize("kind", ["concat", "mlp"])
@pytest.mark.parametrize("num_classes", [10, 31, 101])
def test_cpp_equals_torch_with_wide_features(kind, num_classes):
    """Long reductions (d = 512 + 256), where the CPU BLAS may sum in another order for another GEMM width: the
    two backends pad their GEMMs' output columns alike (reference.gemm_width), so their logits are the same
    bits. The probability benefit shows it: a last-bit difference in a logit moves p(y) by ~1e-8, which the
    float32 phi keeps, while the two softmax implementations (float64) differ by ~1e-16, which it drops."""
    g = torch.Generator().manual_seed(num_classes)
    dims, batch = [512, 256], 2048
    head = make_head(kind, dims, num_classes, g, hidden=num_classes)
    feats = [torch.randn(batch, d, generator=g) for d in dims]
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    for benefit in ("accuracy", "probability"):
        a = fastshap.modality_shapley(feats, head, labels, backend="torch", benefit=benefit)
        b = fastshap.modality_shapley(feats, head, labels, backend="cpp", benefit=benefit)
        assert torch.equal(a, b), f"{benefit}: {int((a != b).any(1).sum())} rows differ"


def test_gemm_width_pads_cpu_gemms_to_a_multiple_of_8():
    assert [reference.gemm_width(k, "cpu") for k in (1, 2, 7, 8, 10, 31, 32, 101, 1000)] == [
        1,
        2,
        7,
        8,
        16,
        32,
        32,
        104,
        1000,
    ]
    assert reference.gemm_width(31, "meta") == 31  # other devices: no padding


def test_cpp_equals_torch_on_large_mlp_chunks():
    """The MLP's second layer runs in chunks of samples; a batch spanning several chunks still matches."""
    g = torch.Generator().manual_seed(4)
    dims, num_classes = [5, 3, 6, 2, 4, 3, 2], 31
    head = make_head("mlp", dims, num_classes, g, hidden=256)
    batch = 300  # 2^7 * 256 elements per sample: 128 samples per chunk, three chunks
    feats = [torch.randn(batch, d, generator=g) for d in dims]
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    a = fastshap.modality_shapley(feats, head, labels, backend="torch")
    b = fastshap.modality_shapley(feats, head, labels, backend="cpp")
    assert torch.equal(a, b)


# --- the head-kind tables and the op's guards --------------------------------------------------------------


def test_head_kind_tables_agree():
    """csrc/head_kinds.h and fastshap/head_kinds.py list the same kinds: names, codes, parameters and their
    shapes, first layer."""
    assert torch.ops.fastshap.head_kinds() == head_kinds.describe()
    assert [k.code for k in head_kinds.KINDS.values()] == list(range(len(head_kinds.KINDS)))
    for kind in head_kinds.KINDS.values():
        assert len(kind.params) == len(kind.shapes) and set("".join(kind.shapes)) <= set(head_kinds.SYMBOLS)
        assert kind.shapes[kind.first_layer].endswith("D"), kind


def test_every_head_kind_has_a_reference_and_a_kernel():
    """Each kind the table lists runs in the torch reference and the CPU kernel with its parameters in the
    table's order, and gives the same values (the tables name nothing that is not implemented)."""
    g = torch.Generator().manual_seed(21)
    dims, batch, classes, hidden = [3, 2], 6, 4, 5
    sizes = {"n": len(dims), "D": sum(dims), "C": classes, "H": hidden}
    feats = [torch.randn(batch, d, generator=g) for d in dims]
    labels = torch.randint(0, classes, (batch,), generator=g)
    for kind in head_kinds.KINDS.values():
        params = [torch.randn([sizes[s] for s in shape], generator=g) for shape in kind.shapes]
        want = reference.shapley(feats, kind.name, params, [], labels, "probability")
        got = torch.ops.fastshap.shapley(feats, kind.name, params, [], labels, "probability")
        torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=0)
        assert torch.equal(got[1][2:], want[1][2:]) and got[0].shape == (batch, len(dims))


@pytest.mark.parametrize("implementation", ["cpp", "torch", "fake"])
def test_ops_refuse_an_unknown_kind_or_a_wrong_parameter_count(implementation):
    from torch._subclasses.fake_tensor import FakeTensorMode

    op = reference.shapley if implementation == "torch" else torch.ops.fastshap.shapley
    mode = FakeTensorMode() if implementation == "fake" else contextlib.nullcontext()
    with mode:
        feats, labels = [torch.zeros(3, 2), torch.zeros(3, 1)], torch.zeros(3, dtype=torch.long)
        w, b = torch.zeros(4, 3), torch.zeros(4)
        with pytest.raises(ValueError, match="unknown head kind 'linear'"):
            op(feats, "linear", [w, b], [], labels, "paper")
        with pytest.raises(ValueError, match="mlp head takes 4 parameters, got 2"):
            op(feats, "mlp", [w, b], [], labels, "paper")


#: Calls of the op with one argument wrong each, and a key phrase of the refusal.
BAD_OP_CALLS = {
    "no-features": (lambda a: a.update(features=[]), "between 1 and 16 modalities"),
    "features-1d": (lambda a: a.update(features=[torch.zeros(5), torch.zeros(5, 2)]), r"features\[0\] must be"),
    "features-batch": (lambda a: a["features"].__setitem__(1, torch.zeros(4, 2)), "has batch 4"),
    "features-dtype": (lambda a: a["features"].__setitem__(1, torch.zeros(5, 2).double()), r"features\[1\] is"),
    "integer-features": (lambda a: a.update(features=[torch.zeros(5, 3, dtype=torch.long)]), "floating point"),
    "labels-shape": (lambda a: a.update(labels=torch.zeros(4, dtype=torch.long)), r"labels must be \(5,\)"),
    "labels-dtype": (lambda a: a.update(labels=torch.zeros(5, dtype=torch.int32)), "labels must be int64"),
    "baselines-count": (lambda a: a.update(baselines=[torch.zeros(3)]), "1 baselines for 2 modalities"),
    "baselines-dtype": (lambda a: a.update(baselines=[torch.zeros(3), torch.zeros(2).double()]), r"baselines\[1\]"),
    "weight-width": (lambda a: a["params"].__setitem__(0, torch.zeros(4, 6)), r"weight must be \(C, D\)"),
    "weight-rank": (lambda a: a["params"].__setitem__(0, torch.zeros(20)), r"weight must be \(C, D\)"),
    "bias-size": (lambda a: a["params"].__setitem__(1, torch.zeros(3)), r"bias must be \(C,\) = \(4,\)"),
    "benefit": (lambda a: a.update(benefit="shapley"), "unknown benefit 'shapley'"),
}


@pytest.mark.parametrize("name", sorted(BAD_OP_CALLS))
def test_python_op_guards_are_the_compiled_ones(name):
    """fastshap/_op_checks.py (the fake kernel's and the Triton op's guards) refuses what the compiled op's
    guards refuse (csrc/shapley_common.cpp), with the same message up to the dtypes' spelling."""
    from fastshap._op_checks import check_op

    spoil, phrase = BAD_OP_CALLS[name]
    args = dict(
        features=[torch.zeros(5, 3), torch.zeros(5, 2)],
        head="concat",
        params=[torch.zeros(4, 5), torch.zeros(4)],
        baselines=[],
        labels=torch.zeros(5, dtype=torch.long),
        benefit="paper",
    )
    spoil(args)
    messages = []
    for op in (torch.ops.fastshap.shapley, check_op):
        with pytest.raises(ValueError, match=phrase) as info:
            op(*args.values())
        messages.append(str(info.value).split(" got")[0].split(" is ")[0])
    assert messages[0] == messages[1], messages


def test_backends_decline_a_kind_their_kernels_do_not_run(monkeypatch):
    """A kind the table gives fewer backends (a new kind, before its CUDA or Triton kernel exists) is declined
    by the others with the reason, and run by the ones it names."""
    import dataclasses

    narrowed = dataclasses.replace(head_kinds.CONCAT, backends=("torch", "cpp"))
    monkeypatch.setitem(head_kinds.KINDS, "concat", narrowed)
    call = backends.Call("concat", torch.device("cpu"), torch.float32, 2)
    assert backends.why_not("cpp", call) is None
    reason = backends.BACKENDS["triton"].declines(call)
    assert reason is not None and "do not run the concat head" in reason


def test_info_names_the_compiled_head_kinds():
    from fastshap import info

    line = next(line for line in info.report().splitlines() if "head kinds" in line)
    assert line.split("head kinds", 1)[1].strip() == ", ".join(head_kinds.KINDS), line


# --- opcheck and torch.compile ---------------------------------------------------------------------------


def _op_samples():
    """Arguments of the compiled op for each head kind: with/without baselines, shared/per-sample, dtypes."""
    g = torch.Generator().manual_seed(0)
    dims, batch, num_classes, hidden = [3, 2, 4], 5, 6, 7
    total = sum(dims)
    out = []
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        feats = [torch.randn(batch, d, generator=g).to(dtype) for d in dims]
        labels = torch.randint(0, num_classes, (batch,), generator=g)
        shared = [torch.randn(d, generator=g).to(dtype) for d in dims]
        per_sample = [torch.randn(batch, d, generator=g).to(dtype) for d in dims]
        w, b = torch.randn(num_classes, total, generator=g), torch.randn(num_classes, generator=g)
        w1, b1 = torch.randn(hidden, total, generator=g), torch.randn(hidden, generator=g)
        w2, b2 = torch.randn(num_classes, hidden, generator=g), torch.randn(num_classes, generator=g)
        bias_n = torch.randn(len(dims), num_classes, generator=g)
        for base, benefit in (([], "paper"), (shared, "accuracy"), (per_sample, "probability")):
            out.append((feats, "concat", [w, b], base, labels, benefit))
            out.append((feats, "decision", [w, bias_n], base, labels, benefit))
            out.append((feats, "mlp", [w1, b1, w2, b2], base, labels, benefit))
    return out


@pytest.mark.parametrize("kind", list(head_kinds.KINDS))
def test_opcheck(kind):
    op = torch.ops.fastshap.shapley.default
    samples = [args for args in _op_samples() if args[1] == kind]
    assert len(samples) == 9
    for args in samples:
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), result


def test_fake_kernel_shapes():
    """Under FakeTensorMode the op reports phi (B, n) and stats (4, n) float32 without running."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        feats = [torch.empty(11, 3), torch.empty(11, 4)]
        phi, stats = torch.ops.fastshap.shapley(
            feats, "concat", [torch.empty(5, 7), torch.empty(5)], [], torch.zeros(11, dtype=torch.long), "paper"
        )
        assert phi.shape == (11, 2) and stats.shape == (4, 2)
        assert phi.dtype == stats.dtype == torch.float32


@pytest.mark.parametrize("meta", ["weight", "bias", "baselines", "labels"])
def test_ops_refuse_a_meta_argument_beside_real_features(meta):
    """The dispatcher runs the fake kernel for a call that mixes in one meta tensor: it must refuse instead
    of returning uninitialised CPU memory as phi (the op's device guard, fastshap/_op_checks.py)."""
    g = torch.Generator().manual_seed(3)
    args = dict(
        features=[torch.randn(4, 3, generator=g), torch.randn(4, 5, generator=g)],
        weight=torch.randn(4, 8, generator=g),
        bias=torch.randn(4, generator=g),
        baselines=[torch.zeros(3), torch.zeros(5)],
        labels=torch.randint(0, 4, (4,), generator=g),
    )
    args[meta] = [b.to("meta") for b in args[meta]] if meta == "baselines" else args[meta].to("meta")
    features, weight, bias, baselines, labels = args.values()
    with pytest.raises(ValueError, match=rf"{meta}(\[0\])? (is|are) on meta"):
        torch.ops.fastshap.shapley(features, "concat", [weight, bias], baselines, labels, "paper")


def test_a_call_under_a_meta_default_device_leaves_no_meta_tables():
    """The torch backend's cached coalition tables are made on the CPU whatever the default device (a
    `with torch.device("meta")` around model construction once cached meta tables, failing later calls)."""
    from fastshap import reference

    for cached in (reference._masks_cpu, reference._coefficients_cpu, reference._on_device):
        cached.cache_clear()
    g = torch.Generator().manual_seed(4)
    feats = [torch.randn(6, 2, generator=g) for _ in range(3)]
    labels = torch.randint(0, 4, (6,), generator=g)
    head = nn.Linear(6, 4)
    with torch.device("meta"):
        inside = fastshap.modality_shapley(feats, head, labels, backend="torch")
    after = fastshap.modality_shapley(feats, head, labels, backend="torch")
    assert inside.device.type == "cpu" and torch.equal(inside, after)
    assert torch.equal(after, fastshap.modality_shapley(feats, head, labels, backend="cpp"))


def test_compile_fullgraph_ops():
    """One graph with the op for every head kind compiles with fullgraph=True (inductor) and returns the eager
    results."""
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(9, 3, generator=g), torch.randn(9, 5, generator=g)]
    labels = torch.randint(0, 4, (9,), generator=g)
    w, b = torch.randn(4, 8, generator=g), torch.randn(4, generator=g)
    bias_n = torch.randn(2, 4, generator=g)
    w1, b1 = torch.randn(6, 8, generator=g), torch.randn(6, generator=g)
    w2, b2 = torch.randn(4, 6, generator=g), torch.randn(4, generator=g)

    def values(f0, f1, y):
        op = torch.ops.fastshap.shapley
        concat, _ = op([f0, f1], "concat", [w, b], [], y, "paper")
        decision, _ = op([f0, f1], "decision", [w, bias_n], [], y, "accuracy")
        mlp, stats = op([f0, f1], "mlp", [w1, b1, w2, b2], [], y, "probability")
        return concat + 1, decision, mlp, stats

    compiled = torch.compile(values, fullgraph=True)
    got, want = compiled(*feats, labels), values(*feats, labels)
    for a, e in zip(got, want):
        assert torch.equal(a, e)


def test_compile_modality_shapley():
    """modality_shapley does not compile with fullgraph=True (torch 2.14): its input checks (finite
    parameters, label range, the NaN/Inf report from the stats) read tensor data in Python, which breaks
    the graph (test_compile_fullgraph_ops compiles the ops themselves). With graph breaks it compiles and
    gives the eager values (aot_eager keeps the test fast; inductor takes ~20 s on 2 cores here)."""
    import torch._dynamo

    g = torch.Generator().manual_seed(2)
    head = make_head("concat", [3, 5], 4, g)
    feats = [torch.randn(9, 3, generator=g), torch.randn(9, 5, generator=g)]
    labels = torch.randint(0, 4, (9,), generator=g)

    def values(f0, f1, y):
        return fastshap.modality_shapley([f0, f1], head, y, backend="cpp")

    torch._dynamo.reset()
    compiled = torch.compile(values, backend="aot_eager")
    assert torch.equal(compiled(*feats, labels), values(*feats, labels))


# --- backend selection -------------------------------------------------------------------------------------


def _small_call(kind="concat"):
    g = torch.Generator().manual_seed(3)
    dims = [3, 4]
    head = NonlinearHead(dims, 5, generator=g) if kind == "callable" else make_head(kind, dims, 5, g)
    feats = [torch.randn(6, d, generator=g) for d in dims]
    return feats, head, torch.randint(0, 5, (6,), generator=g)


@pytest.mark.parametrize("kind", KINDS)
def test_auto_picks_cpp_on_cpu(kind, monkeypatch):
    feats, head, labels = _small_call(kind)
    call = backends.Call("concat" if kind == "linear" else kind, torch.device("cpu"), torch.float32, 2)
    assert backends.select("auto", call).name == "cpp"
    used = []
    for name, backend in backends.BACKENDS.items():
        original = backend.run
        monkeypatch.setattr(backend, "run", lambda *a, _n=name, _o=original, **k: used.append(_n) or _o(*a, **k))
    auto = fastshap.modality_shapley(feats, head, labels)
    assert used == ["cpp"]
    assert torch.equal(auto, fastshap.modality_shapley(feats, head, labels, backend="cpp"))


def test_auto_takes_torch_for_callables():
    feats, head, labels = _small_call("callable")
    call = backends.Call("callable", torch.device("cpu"), torch.float32, 2)
    assert backends.select("auto", call).name == "torch"
    assert torch.equal(
        fastshap.modality_shapley(feats, head, labels), fastshap.modality_shapley(feats, head, labels, backend="torch")
    )


def test_cpp_refuses_a_callable_and_says_why():
    feats, head, labels = _small_call("callable")
    with pytest.raises(fastshap.BackendError, match=r"backend 'cpp' cannot run this call: .*callable"):
        fastshap.modality_shapley(feats, head, labels, backend="cpp")


def test_cpp_refuses_per_segment_labels():
    g = torch.Generator().manual_seed(5)
    feats = [torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g)]
    head = NonlinearHead([3, 2], 5, segments=3, generator=g)
    with pytest.raises(fastshap.BackendError, match="cpp"):
        fastshap.modality_shapley(feats, head, torch.zeros(4, 3, dtype=torch.long), backend="cpp")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_explicit_cuda_backend_raises_with_reason():
    feats, head, labels = _small_call()
    with pytest.raises(fastshap.BackendError, match=r"backend 'cuda' cannot run this call: .*(CUDA|cuda)") as info:
        fastshap.modality_shapley(feats, head, labels, backend="cuda")
    assert "cannot run this call: " in str(info.value) and len(str(info.value).split(": ", 2)[-1]) > 10


@pytest.mark.parametrize(
    "arches,capability,runs",
    [
        ("8.0,9.0+PTX", (9, 0), True),
        ("8.0,9.0+PTX", (8, 9), True),
        ("8.0,9.0+PTX", (12, 0), True),
        ("8.0,9.0", (10, 0), False),
        ("8.0,9.0", (7, 5), False),
        ("9.0", (8, 6), False),
        ("Hopper", (9, 0), None),
    ],
)
def test_compiled_architectures_against_a_gpu(arches, capability, runs):
    assert backends.runs_on(arches, capability) is runs


def test_cuda_backend_declines_a_gpu_its_build_cannot_run_on(monkeypatch):
    """Instead of a "no kernel image" failure at the first launch (or auto picking it over torch)."""
    monkeypatch.setattr(backends, "_cuda_unavailable", lambda: None)
    monkeypatch.setattr(backends._extension, "build_info", lambda: {"cuda": "1", "cuda_arch": "8.0,9.0"})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (10, 0))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    backends._cuda_arch_problem.cache_clear()
    try:
        call = backends.Call("concat", torch.device("cuda", 0), torch.float32, 2)
        reason = backends.why_not("cuda", call)
        assert "compiled for 8.0,9.0, which cannot run on this sm_100 GPU" in reason
        monkeypatch.setattr(backends._extension, "build_info", lambda: {"cuda": "1", "cuda_arch": "8.0,9.0+PTX"})
        backends._cuda_arch_problem.cache_clear()
        assert backends.why_not("cuda", call) is None
    finally:
        backends._cuda_arch_problem.cache_clear()


def test_explicit_backend_never_falls_back(monkeypatch):
    """When the explicit backend is unavailable the call raises, even though torch could run it."""
    monkeypatch.setattr(backends.CppBackend, "unavailable", lambda self: "pretend the extension is missing")
    feats, head, labels = _small_call()
    with pytest.raises(fastshap.BackendError, match="pretend the extension is missing"):
        fastshap.modality_shapley(feats, head, labels, backend="cpp")
    # ... while auto falls through to torch, which gives the same values.
    assert torch.equal(
        fastshap.modality_shapley(feats, head, labels), fastshap.modality_shapley(feats, head, labels, backend="torch")
    )


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("kind", ["concat", "decision", "mlp"])
def test_out_of_range_labels_give_nan_rows_and_a_count(kind, backend):
    """The ops count labels outside [0, C) in stats[3, 0] and give their rows NaN (no stop, no sync); the
    Python API raises on the count (tests/test_errors.py)."""
    reason = backends.BACKENDS[backend].unavailable()
    if reason:
        pytest.skip(reason)
    g = torch.Generator().manual_seed(11)
    dims, classes, batch = [3, 5], 4, 9
    head = make_head(kind, dims, classes, g)
    feats = [torch.randn(batch, d, generator=g) for d in dims]
    labels = torch.randint(0, classes, (batch,), generator=g)
    spoiled, bad = spoil_labels(labels, classes)
    params = list(_head_spec(head, dims, torch.device("cpu")).params)
    op = backends.BACKENDS[backend]._op()
    got, want = op(feats, kind, params, [], spoiled, "paper"), op(feats, kind, params, [], labels, "paper")
    assert_bad_labels_counted(got, want, bad)


# --- with_stats, B = 0, n = 16 ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("kind", KINDS)
def test_with_stats(kind, backend):
    g = torch.Generator().manual_seed(6)
    dims, batch = [3, 2, 4, 1], 257
    head = make_head(kind, dims, 7, g)
    feats = [torch.randn(batch, d, generator=g) for d in dims]
    labels = torch.randint(0, 7, (batch,), generator=g)
    for benefit in ("paper", "probability"):
        phi, stats = fastshap.modality_shapley(feats, head, labels, benefit=benefit, backend=backend, with_stats=True)
        assert stats.shape == (2, 4) and stats.dtype == torch.float32
        plain = fastshap.modality_shapley(feats, head, labels, benefit=benefit, backend=backend)
        assert torch.equal(phi, plain)
        torch.testing.assert_close(stats[0].double(), phi.double().sum(0), atol=1e-3, rtol=1e-6)
        assert torch.equal(stats[1], (phi < 1).sum(0).float())
        if benefit == "paper":
            assert 0 < float(stats[1].sum()) < 4 * batch


EMPTY_BATCH_PARAMS = [
    (k, b) for k in KINDS + ("callable",) for b in ("auto", "torch", "cpp") if (k, b) != ("callable", "cpp")
]


@pytest.mark.parametrize("with_stats", [False, True])
@pytest.mark.parametrize("kind,backend", EMPTY_BATCH_PARAMS, ids=[f"{k}-{b}" for k, b in EMPTY_BATCH_PARAMS])
def test_empty_batch(kind, backend, with_stats):
    g = torch.Generator().manual_seed(7)
    dims = [3, 2, 5]
    head = NonlinearHead(dims, 4, generator=g) if kind == "callable" else make_head(kind, dims, 4, g)
    feats = [torch.randn(0, d) for d in dims]
    labels = torch.zeros(0, dtype=torch.long)
    out = fastshap.modality_shapley(feats, head, labels, backend=backend, with_stats=with_stats)
    phi = out[0] if with_stats else out
    assert phi.shape == (0, 3) and phi.dtype == torch.float32
    if with_stats:
        assert torch.equal(out[1], torch.zeros(2, 3))
        torch.set_default_dtype(torch.float64)  # the stats' dtype is float32 whatever the default
        try:
            stats = fastshap.modality_shapley(feats, head, labels, backend=backend, with_stats=True)[1]
        finally:
            torch.set_default_dtype(torch.float32)
        assert stats.dtype == torch.float32


def _sixteen_modality_case():
    """B = 2, C = 3, widths 1..3; dyadic features and weights, so every coalition's logits are exact in
    float32 whatever the order (65536 coalitions leave no float margin to speak of) and ties are exact."""
    g = torch.Generator().manual_seed(16)
    dims = [1 + i % 3 for i in range(16)]
    head = heads.ConcatLinear(dims, 3)
    with torch.no_grad():
        head.fc.weight.copy_(dyadic(head.fc.weight.shape, -8, 8, 8, g))
        head.fc.bias.copy_(dyadic((3,), -4, 4, 4, g))
    feats = [dyadic((2, d), -3, 3, 1, g) for d in dims]
    return feats, head, torch.tensor([0, 2])


_ORACLE_16 = {}


@pytest.mark.parametrize("benefit", ["paper", "accuracy"])
@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_sixteen_modalities_exact(backend, benefit):
    """n = 16, the largest exact case: 65536 coalitions per sample, values equal to the oracle's."""
    feats, head, labels = _sixteen_modality_case()
    if benefit not in _ORACLE_16:
        _ORACLE_16[benefit] = oracle_shapley(feats, head, labels, None, benefit)
    expected = _ORACLE_16[benefit]
    phi = fastshap.modality_shapley(feats, head, labels, benefit=benefit, backend=backend)
    assert torch.equal(phi, expected.phi_float32())
    # Not vacuous: many distinct values, some with large odd denominators that float32 must round.
    assert len(set(phi.flatten().tolist())) > 10
    assert max(x.denominator for row in expected.phi_exact for x in row) > 100_000


@pytest.mark.parametrize(
    "baselines,message",
    [
        ([torch.zeros(4), torch.zeros(2)], r"baselines\[0\] must be \(3,\) or \(5, 3\)"),
        ([torch.zeros(3), torch.zeros(5, 2)], r"baselines\[1\] must be \(2,\).*all shared"),
        ([torch.zeros(5, 3), torch.zeros(2)], r"baselines\[1\] must be \(5, 2\).*all shared"),
    ],
    ids=["wrong-first", "per-sample-after-shared", "shared-after-per-sample"],
)
def test_ops_say_what_baselines_they_take(baselines, message):
    """Called directly, the compiled op checks its baselines itself: every modality's is shared (d_i,) or
    every one per sample (B, d_i), as baselines[0] is (modality_shapley expands a mixed list before)."""
    feats, weight, bias = [torch.randn(5, 3), torch.randn(5, 2)], torch.randn(4, 5), torch.randn(4)
    labels = torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        torch.ops.fastshap.shapley(feats, "concat", [weight, bias], baselines, labels, "paper")


@pytest.mark.parametrize(
    "kind,spoil,message",
    [
        ("concat", {1: torch.zeros(4, dtype=torch.long)}, "bias must be floating point.*Long"),
        ("concat", {0: torch.zeros(4, 5, dtype=torch.long)}, "weight must be floating point.*Long"),
        ("decision", {1: torch.zeros(2, 4, dtype=torch.int32)}, "bias must be floating point.*Int"),
        ("mlp", {1: torch.zeros(6, dtype=torch.long)}, "bias1 must be floating point"),
        ("mlp", {3: torch.zeros(4, dtype=torch.bool)}, "bias2 must be floating point"),
    ],
    ids=["concat-bias", "concat-weight", "decision-bias", "mlp-bias1", "mlp-bias2"],
)
def test_cpu_ops_check_the_parameters_dtype(kind, spoil, message):
    """Called directly (modality_shapley checks before), the CPU op takes no integer parameters: before, an
    int64 weight or bias was accepted. (Its device check, check_param, is shared with the CUDA op, whose GPU
    tests cover it: a meta tensor here would dispatch to the fake kernel instead.)"""
    feats, labels = [torch.randn(5, 3), torch.randn(5, 2)], torch.zeros(5, dtype=torch.long)
    params = {
        "concat": [torch.randn(4, 5), torch.randn(4)],
        "decision": [torch.randn(4, 5), torch.randn(2, 4)],
        "mlp": [torch.randn(6, 5), torch.randn(6), torch.randn(4, 6), torch.randn(4)],
    }[kind]
    for i, value in spoil.items():
        params[i] = value
    with pytest.raises(ValueError, match=message):
        torch.ops.fastshap.shapley(feats, kind, params, [], labels, "paper")
