"""CPU benchmarks: fastshap's cpp and torch backends against the honest alternatives of bench/alternatives.py.

Concat-linear head (nn.Linear(n * 512, 31)), fp32 features, d_i = 512, C = 31, benefit "paper":

  main     B = 4096, n = 2, 3, 5: every provider. The per-sample loops and Captum run on the first
           samples only (SLOW_ROWS) and are compared per sample.
  sweep-n  B = 4096, n = 1, 4, 6, 8: plain forward, cpp, torch, decomposed torch; naive batched up to n = 5.
  sweep-B  n = 2, B = 256, 1024, 16384, 65536: plain forward, cpp, torch, decomposed torch, naive batched.

Before it is timed, every provider's output is checked against fastshap on the same inputs (cpp against
torch bit for bit; the others sample by sample outside near ties), and the check is stored with the timing.

    make bench                                                    # all of bench/
    .venv/bin/python -m pytest bench/test_bench_cpu.py -q --benchmark-only
    .venv/bin/python bench/report.py                              # tables from the newest result file
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import alternatives as alt
import pytest
import torch

import fastshap

DIM, CLASSES, BATCH = 512, 31, 4096
MAIN_N = (2, 3, 5)
SWEEP_N = (1, 4, 6, 8)
SWEEP_BATCH = (256, 1024, 16384, 65536)
NAIVE_MAX_N = 5  # 2^n copies of the batch: n = 5 at B = 4096 stacks 1.3 GB (n = 6: 3.2 GB, ~20 s a round)
SLOW_ROUNDS = 3  # rounds of providers that take a second or more per call
NEAR_TIE_TOL = 1e-5  # float32 logits of O(1) carry errors of ~1e-6; margins below this may flip argmax
MAX_NEAR_TIE_FRACTION = 0.01


@dataclass(frozen=True)
class Provider:
    """How to time one provider on a case and how to check its values."""

    make: Callable  # (features, head, labels) -> zero-argument callable, the thing timed
    note: str
    to_phi: Callable | None = None  # its return value -> (B, n) phi; None: not a valuation (no check)
    reference: str = "torch"  # "torch": fastshap's torch backend, "naive": naive_batched (independent code)
    benefit: str = "paper"
    exact: bool = False  # must equal the reference on every sample (same canonical computation)
    atol: float = 0.0  # Python float accumulation of the Shapley sum in another order
    rows: int | None = None  # time only the first `rows` samples (slow providers)
    rounds: int = 0  # > 0: benchmark.pedantic with this many rounds (slow providers)


def _no_grad(fn):
    @functools.wraps(fn)
    def run():
        with torch.no_grad():
            return fn()

    return run


def _precat(features, head, labels):
    x = torch.cat(features, 1)
    return lambda: head(x)


def _partial(features, head, labels):
    weight = head.weight.detach()
    return lambda: alt.partial_products(features, weight)


def _fastshap(backend, benefit="paper"):
    return lambda features, head, labels: (
        lambda: fastshap.modality_shapley(features, head, labels, backend=backend, benefit=benefit)
    )


def _identity(x):
    return x


PROVIDERS = {
    "plain_forward": Provider(
        lambda f, h, y: lambda: alt.plain_forward(f, h), "yardstick: torch.cat + nn.Linear, one prediction"
    ),
    "linear_precat": Provider(_precat, "nn.Linear on pre-concatenated features (the yardstick without its torch.cat)"),
    "partial_gemms": Provider(
        _partial, "the n per-modality GEMMs alone: cpp's first stage (cpp minus this = coalition walk)"
    ),
    "fastshap_cpp": Provider(_fastshap("cpp"), "fastshap backend='cpp'", _identity, exact=True),
    "fastshap_torch": Provider(
        _fastshap("torch"), "fastshap backend='torch' (checked against naive batched)", _identity, reference="naive"
    ),
    "decomposed_torch": Provider(
        lambda f, h, y: lambda: alt.decomposed_torch(f, h, y),
        "fastshap's algorithm in plain torch ops: per-modality GEMMs, coalition sums by one einsum, argmax, "
        "Shapley weights (the strongest alternative)",
        _identity,
    ),
    "naive_batched": Provider(
        lambda f, h, y: lambda: alt.naive_batched(f, h, y),
        "the 2^n - 1 non-empty masked copies in one head forward",
        _identity,
    ),
    "authors_loop": Provider(
        lambda f, h, y: lambda: alt.authors_loop(f, h, y),
        "authors' execute_modulation (n = 2), head only",
        alt.authors_to_phi,
        rounds=3,
    ),
    "balancemm_loop": Provider(
        lambda f, h, y: lambda: alt.balancemm_loop(f, h, y),
        "BalanceMM per-subset forward + per-sample loops (paper benefit, cache reset per call)",
        alt.balancemm_to_phi,
        atol=1e-6,
        rows=1024,
        rounds=3,
    ),
    "captum": Provider(
        lambda f, h, y: lambda: alt.captum_shapley(f, h, y),
        "Captum ShapleyValues, v = 1[correct] (vs fastshap benefit='accuracy'), n * n! evaluations",
        _identity,
        benefit="accuracy",
        atol=1e-6,
        rows=128,
        rounds=2,
    ),
}


def _params():
    out = []

    def add(suite, n, batch, names):
        out.extend(pytest.param(suite, n, batch, p, id=f"{suite}-n{n}-B{batch}-{p}") for p in names)

    fast = ("plain_forward", "fastshap_cpp", "fastshap_torch", "decomposed_torch")
    for n in MAIN_N:
        slow = ("authors_loop",) if n == 2 else ()
        add(
            "main",
            n,
            BATCH,
            fast + ("linear_precat", "partial_gemms", "naive_batched", "balancemm_loop", "captum") + slow,
        )
    for n in SWEEP_N:
        add("sweep-n", n, BATCH, fast + (("naive_batched",) if n <= NAIVE_MAX_N else ()))
    for batch in SWEEP_BATCH:
        add("sweep-B", 2, batch, fast + ("naive_batched",))
    return out


# Parameters are ordered case by case, so one cached case at a time is enough.
@functools.lru_cache(maxsize=1)
def _case(n: int, batch: int) -> alt.Case:
    return alt.make_case(n, batch, DIM, CLASSES, seed=1000 * n + batch % 997)


@functools.lru_cache(maxsize=4)
def _reference(n: int, batch: int, rows: int, benefit: str, source: str, near: bool):
    case = _case(n, batch).rows(rows)
    with torch.no_grad():
        if source == "naive":
            phi = alt.naive_batched(case.features, case.head, case.labels, benefit)
        else:
            phi = fastshap.modality_shapley(case.features, case.head, case.labels, backend="torch", benefit=benefit)
        if near:
            ties = alt.near_tie_samples(
                case.features, case.head, case.labels, NEAR_TIE_TOL, include_empty=benefit != "paper"
            )
        else:
            ties = torch.zeros(rows, dtype=torch.bool)
    return phi, ties


# Medians of short rounds: enough on a quiet machine, and bounded on a busy one.
@pytest.mark.benchmark(max_time=0.5, min_rounds=5, warmup=False)
@pytest.mark.parametrize("suite,n,batch,name", _params())
def test_cpu(benchmark, suite, n, batch, name):
    provider = PROVIDERS[name]
    case = _case(n, batch)
    rows = min(batch, provider.rows or batch)
    timed = case.rows(rows)
    fn = _no_grad(provider.make(timed.features, timed.head, timed.labels))

    benchmark.group = f"cpu {suite} n={n} B={batch}"
    info = benchmark.extra_info
    info.update(suite=f"cpu-{suite}", head="linear", n=n, batch=batch, batch_timed=rows, dim=DIM, classes=CLASSES)
    info.update(
        dtype="float32", benefit=provider.benefit, provider=name, note=provider.note, threads=torch.get_num_threads()
    )

    check = None
    if provider.to_phi is not None:  # also the warm-up call
        phi = provider.to_phi(fn())
        ref, ties = _reference(n, batch, rows, provider.benefit, provider.reference, not provider.exact)
        check = alt.compare(phi, ref, ties, provider.atol)
        info.update(
            check,
            checked_against=f"fastshap {provider.reference}" if provider.reference == "torch" else "naive batched",
        )

    slow_naive = name == "naive_batched" and (n >= 5 or batch >= 16384)
    if provider.rounds or slow_naive:
        benchmark.pedantic(fn, rounds=provider.rounds or SLOW_ROUNDS, iterations=1, warmup_rounds=0)
    else:
        benchmark(fn)

    if check is not None:
        alt.assert_agrees(check, MAX_NEAR_TIE_FRACTION)
