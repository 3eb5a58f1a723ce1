"""CPU cost of fastshap.modality_interactions and fastshap.coalition_values against modality_shapley.

Concat-linear head (nn.Linear(n * 512, 31)), fp32 features, d_i = 512, C = 31, benefit "paper", B = 4096,
n = 2, 3, 5, 8; providers: modality_shapley, modality_interactions and coalition_values, each on the cpp
and torch backends. Before it is timed, every provider is checked on the same inputs: interactions'
diagonal equals modality_shapley's phi and cpp equals torch, bit for bit.

    .venv/bin/python -m pytest bench/test_bench_coalitions.py -q --benchmark-only
    .venv/bin/python bench/report.py                              # tables from the newest result file
"""

from __future__ import annotations

import functools

import alternatives as alt
import harness
import pytest
import torch

import fastshap
from fastshap import coalitions

DIM, CLASSES, BATCH = 512, 31, 4096
SIZES = (2, 3, 5, 8)
OPS = {
    "shapley": fastshap.modality_shapley,
    "interactions": fastshap.modality_interactions,
    "coalition_values": fastshap.coalition_values,
}
BACKENDS = ("cpp", "torch")


@functools.lru_cache(maxsize=1)
def _case(n: int) -> alt.Case:
    return alt.make_case(n, BATCH, DIM, CLASSES, seed=2000 + n)


@functools.lru_cache(maxsize=4)
def _torch_results(n: int) -> dict:
    case = _case(n)
    with torch.no_grad():
        return {op: fn(case.features, case.head, case.labels, backend="torch") for op, fn in OPS.items()}


@pytest.mark.benchmark(max_time=0.5, min_rounds=5, warmup=False)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", tuple(OPS))
@pytest.mark.parametrize("n", SIZES)
def test_coalitions_cpu(benchmark, n, op, backend):
    case = _case(n)
    benchmark.group = f"cpu coalitions n={n} B={BATCH}"
    info = benchmark.extra_info
    info.update(suite="cpu-coalitions", head="linear", n=n, batch=BATCH, dim=DIM, classes=CLASSES, dtype="float32")
    info.update(benefit="paper", provider=f"{op}_{backend}", threads=torch.get_num_threads())
    reason = coalitions._declines(backend, _call_of(case))  # why the backend cannot run it, or None
    if reason:
        harness.UNAVAILABLE.append({"group": benchmark.group, "provider": f"{op}_{backend}", "reason": reason})
        pytest.skip(reason)
    fn = functools.partial(OPS[op], case.features, case.head, case.labels, backend=backend)
    got = fn()  # also the warm-up call
    want = _torch_results(n)
    assert torch.equal(got, want[op]), f"{op} {backend} differs from torch"
    if op == "interactions":
        assert torch.equal(got.diagonal(dim1=1, dim2=2), want["shapley"])
    benchmark(fn)


def _call_of(case: alt.Case):
    from fastshap.backends import Call

    return Call("concat", case.features[0].device, case.features[0].dtype, len(case.features))
