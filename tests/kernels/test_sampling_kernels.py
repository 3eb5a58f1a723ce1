"""The compiled and Triton kernels of the sampling estimator against its torch backend, on the same orders.

Every backend reproduces fastshap.sampling's canonical computation: the same partial products, the same
running sums added in the same order, the same float64 marginals. So for the discrete benefits phi and
stderr must equal the torch backend's bit for bit, near-ties included; the probability benefit's softmax
(exponentials from another library, summed in another order) agrees to 1e-6. Odd sizes on purpose: one
sample, one class, one modality, n past 16, widths 1..9, batches that leave partial tiles; every layout,
dtype and baseline form the op takes; labels outside [0, C) and NaN features. The CUDA kernel, which cannot
run here, is checked through its CPU emulation (csrc/cuda/emulation/sampling_emulate.cpp: the same host side
and thread program, every thread run on the CPU).
"""

from __future__ import annotations

import os

import pytest
import torch
from cases import layout
from oracle import dyadic

from fastshap import backends, sampling

KINDS = ("concat", "decision", "mlp")
BENEFITS = ("paper", "accuracy", "probability")


def available(name: str, kind: str, dtype=torch.float32) -> str | None:
    call = backends.Call(kind, torch.device("cpu"), dtype, 8)
    return backends.why_not(name, call) or sampling._sampled_declines(name, call)


def params_of(kind: str, dims, num_classes: int, g: torch.Generator, dtype=torch.float32):
    """The head's parameters as the op takes them (dyadic, so that sums are exact in any order)."""
    total = sum(dims)
    if kind == "concat":
        return [dyadic((num_classes, total), -4, 4, 8, g), dyadic((num_classes,), -4, 4, 8, g)]
    if kind == "decision":
        return [dyadic((num_classes, total), -4, 4, 8, g), dyadic((len(dims), num_classes), -4, 4, 8, g)]
    hidden = 12
    return [
        dyadic((hidden, total), -4, 4, 8, g),
        dyadic((hidden,), -4, 4, 8, g),
        dyadic((num_classes, hidden), -4, 4, 8, g),
        dyadic((num_classes,), -4, 4, 8, g),
    ]


#: (name, n, batch, classes, dtype, layout, baselines): baselines "none" | "shared" | "per-sample".
CASES = [
    ("one-modality", 1, 5, 3, torch.float32, "contig", "none"),
    ("one-sample-one-class", 4, 1, 1, torch.float32, "contig", "shared"),
    ("transposed", 6, 7, 31, torch.float32, "T", "per-sample"),
    ("strided-fp16", 5, 33, 10, torch.float16, "strided", "shared"),
    ("bf16", 9, 19, 2, torch.bfloat16, "contig", "none"),
    ("past-16-fp64", 20, 6, 7, torch.float64, "contig", "per-sample"),
]
#: The interpreted Triton kernel takes seconds a call: its cases.
TRITON_CASES = ("one-sample-one-class", "strided-fp16")


def make(case, kind: str, seed: int):
    name, n, batch, num_classes, dtype, kind_of_layout, base_kind = case
    g = torch.Generator().manual_seed(seed)
    dims = [1 + (2 * i) % 9 for i in range(n)]
    feats = [layout(dyadic((batch, d), -4, 4, 4, g).to(dtype), kind_of_layout) for d in dims]
    params = params_of(kind, dims, num_classes, g)
    if base_kind == "none":
        base = []
    elif base_kind == "shared":
        base = [dyadic((d,), -4, 4, 4, g).to(dtype) for d in dims]
    else:
        base = [dyadic((batch, d), -4, 4, 4, g).to(dtype) for d in dims]
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    orders = sampling.draw_orders(3, n, g, "cpu")
    return feats, params, base, labels, orders


def run(backend, kind, feats, params, base, labels, benefit, orders):
    spec = backends.HeadSpec(kind, tuple(params))
    with torch.no_grad():
        return sampling.run(backend, spec, feats, base, labels, benefit, orders)


def assert_same(got, want, benefit):
    for a, b, what in zip(got[:2], want[:2], ("phi", "stderr")):
        if benefit == "probability":
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, equal_nan=True, msg=what)
        else:
            assert torch.equal(a.isnan(), b.isnan()), what
            assert torch.equal(a.nan_to_num(), b.nan_to_num()), (what, (a - b).abs().max())
    torch.testing.assert_close(got[2], want[2], rtol=1e-6, atol=1e-5, equal_nan=True)


def _params():
    out = []
    for backend in ("cpp", "triton"):
        for kind in KINDS:
            for case in CASES:
                if backend == "triton" and (case[0] not in TRITON_CASES or kind == "mlp"):
                    continue  # the MLP's steps are GEMMs: Triton declines it (test_gpu_kernels_decline_mlp)
                out.append(pytest.param(backend, kind, case, id=f"{backend}-{kind}-{case[0]}"))
    return out


@pytest.mark.parametrize("backend,kind,case", _params())
def test_matches_torch_backend(backend, kind, case):
    reason = available(backend, kind, case[4])
    if reason:
        pytest.skip(reason)
    feats, params, base, labels, orders = make(case, kind, seed=len(case[0]) + KINDS.index(kind))
    for benefit in BENEFITS:
        want = run("torch", kind, feats, params, base, labels, benefit, orders)
        got = run(backend, kind, feats, params, base, labels, benefit, orders)
        assert got[0].dtype == got[1].dtype == got[2].dtype == torch.float32
        assert got[0].shape == got[1].shape == (labels.shape[0], len(feats)) and got[2].shape == (4, len(feats))
        assert_same(got, want, benefit)


def test_gpu_kernels_decline_mlp():
    """backend="triton" (and "cuda") refuse the MLP head with the reason; "auto" takes another backend."""
    call = backends.Call("mlp", torch.device("cpu"), torch.float32, 20)
    for name in ("triton", "cuda"):
        assert "not the mlp head" in sampling._sampled_declines(name, call) or available(name, "concat")
    if available("triton", "concat") is None:
        with pytest.raises(backends.BackendError, match="not the mlp head"):
            sampling.select("triton", call)


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_bad_labels_and_nonfinite_rows(backend):
    """A label outside [0, C) and a NaN feature give NaN rows of phi and stderr, counted in the stats; the
    other rows keep their values (those of the call without the bad rows)."""
    reason = available(backend, "concat")
    if reason:
        pytest.skip(reason)
    g = torch.Generator().manual_seed(3)
    n, batch, num_classes = 5, 6, 4
    dims = [2, 3, 1, 2, 4]
    feats = [dyadic((batch, d), -4, 4, 4, g) for d in dims]
    params = params_of("concat", dims, num_classes, g)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    orders = sampling.draw_orders(2, n, g, "cpu")
    clean = run(backend, "concat", feats, params, [], labels, "accuracy", orders)
    labels = labels.clone()
    labels[1] = num_classes
    feats[3] = feats[3].clone()
    feats[3][4, 1] = float("nan")
    phi, stderr, stats = run(backend, "concat", feats, params, [], labels, "accuracy", orders)
    bad = torch.tensor([False, True, False, False, True, False])
    assert bool(phi[bad].isnan().all()) and bool(stderr[bad].isnan().all())
    assert torch.equal(phi[~bad], clean[0][~bad]) and torch.equal(stderr[~bad], clean[1][~bad])
    assert stats[3, 0] == 2 and torch.equal(stats[2], torch.tensor([0.0, 0, 0, 1, 0]))


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_orders_are_checked(backend):
    reason = available(backend, "concat")
    if reason:
        pytest.skip(reason)
    g = torch.Generator().manual_seed(0)
    feats = [dyadic((3, 2), -4, 4, 4, g) for _ in range(4)]
    params = params_of("concat", [2] * 4, 3, g)
    labels = torch.tensor([0, 1, 2])
    good = sampling.draw_orders(2, 4, g, "cpu")
    repeated = good.clone()
    repeated[1, 0, 2] = repeated[1, 0, 1]
    outside = good.clone()
    outside[0, 1, 3] = 4
    for orders, phrase in (
        (good[:, :, :3], "orders must be"),
        (good.int(), "int64"),
        (repeated, "permutation"),
        (outside, "permutation"),
    ):
        with pytest.raises(ValueError, match=phrase):
            run(backend, "concat", feats, params, [], labels, "paper", orders)


def test_triton_tiles_and_groups():
    """Batches past one tile and pairs spread over several program groups add up as one program would."""
    reason = available("triton", "decision")
    if reason:
        pytest.skip(reason)
    from fastshap import triton_sampling

    g = torch.Generator().manual_seed(5)
    n, batch, num_classes = 3, 70, 2
    dims = [1, 2, 1]
    feats = [dyadic((batch, d), -4, 4, 4, g) for d in dims]
    params = params_of("decision", dims, num_classes, g)
    labels = torch.randint(0, num_classes, (batch,), generator=g)
    orders = sampling.draw_orders(3, n, g, "cpu")
    assert triton_sampling._block_b(batch, 2) < batch
    for benefit in ("paper", "probability"):
        want = run("torch", "decision", feats, params, [], labels, benefit, orders)
        assert_same(run("triton", "decision", feats, params, [], labels, benefit, orders), want, benefit)


def test_compiled_op_registration():
    """The compiled op's schema, fake kernel and autograd registration agree (torch.library.opcheck), and the
    fake kernel refuses what the kernel refuses."""
    if not sampling._has_sampled_kernel("CPU"):
        pytest.skip("fastshap._C has no CPU kernel of the sampled op")
    g = torch.Generator().manual_seed(1)
    dims = [3, 1, 2]
    feats = [dyadic((4, d), -4, 4, 4, g) for d in dims]
    labels = torch.tensor([0, 2, 1, 0])
    orders = sampling.draw_orders(2, 3, g, "cpu")
    op = torch.ops.fastshap.shapley_sampled
    for kind in KINDS:
        for base in ([], [dyadic((d,), -4, 4, 4, g) for d in dims]):
            args = (feats, kind, params_of(kind, dims, 3, g), base, labels, "accuracy", orders)
            torch.library.opcheck(op, args)
    params = params_of("concat", dims, 3, g)
    short = orders[:, :, :2].contiguous()
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (*feats, *params, labels, short)]
        with pytest.raises(ValueError, match="orders must be"):
            op(fake[:3], "concat", fake[3:5], [], fake[5], "paper", fake[6])


# --- the CUDA kernel, emulated on the CPU ------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def emulated():
    """torch.ops.fastshap_sampled_emulation, built once (torch caches the build by its sources)."""
    from torch.utils.cpp_extension import load

    csrc = os.path.join(ROOT, "csrc")
    load(
        name="fastshap_sampled_emulation",
        sources=[
            os.path.join(csrc, "cuda", "emulation", "sampling_emulate.cpp"),
            os.path.join(csrc, "sampling_common.cpp"),
            os.path.join(csrc, "shapley_common.cpp"),
        ],
        extra_include_paths=[csrc],
        extra_cflags=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        is_python_module=False,
        verbose=False,
    )
    return torch.ops.fastshap_sampled_emulation


@pytest.mark.parametrize("kind", ["concat", "decision"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cuda_emulation_matches_torch_backend(emulated, kind, case):
    feats, params, base, labels, orders = make(case, kind, seed=40 + len(case[0]))
    for benefit in BENEFITS:
        want = run("torch", kind, feats, params, base, labels, benefit, orders)
        got = emulated.shapley_sampled(feats, kind, params, base, labels, benefit, orders)
        assert_same(got, want, benefit)


def test_cuda_emulation_bad_rows_and_refusals(emulated):
    g = torch.Generator().manual_seed(9)
    dims = [2, 3, 1]
    feats = [dyadic((5, d), -4, 4, 4, g) for d in dims]
    params = params_of("concat", dims, 3, g)
    labels = torch.tensor([0, 3, 1, 2, 0])
    orders = sampling.draw_orders(2, 3, g, "cpu")
    feats[2] = feats[2].clone()
    feats[2][3, 0] = float("inf")
    phi, stderr, stats = emulated.shapley_sampled(feats, "concat", params, [], labels, "paper", orders)
    assert torch.equal(phi.isnan().all(1), torch.tensor([False, True, False, True, False]))
    assert stats[3, 0] == 2 and stats[2, 2] == 1
    want = run("torch", "concat", feats, params, [], labels, "paper", orders)
    assert_same((phi, stderr, stats), want, "paper")
    with pytest.raises(ValueError, match="concat and decision"):
        emulated.shapley_sampled(feats, "mlp", params_of("mlp", dims, 3, g), [], labels, "paper", orders)
    with pytest.raises(ValueError, match="orders must be"):
        emulated.shapley_sampled(feats, "concat", params, [], labels, "paper", orders[:, :, :2])
