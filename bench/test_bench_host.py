"""Host time per call of fastshap's Python path (bench/host_path.py's rows, as pytest-benchmark cases).

CPU tensors, B = 8: what a call costs the host besides its kernels; the Triton rows stub the launch (see
bench/host_path.py) and record what each call would launch on a GPU (``extra_info["launches"]``). Skipped
under TRITON_INTERPRET=1, which would time the interpreter instead.

    .venv/bin/python -m pytest bench/test_bench_host.py --benchmark-only
"""

from __future__ import annotations

import os

import host_path
import pytest
import torch


@pytest.fixture(scope="module")
def host_rows():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1: the Triton rows would time the interpreter, not the launch path")
    pytest.importorskip("triton")
    from fastshap import backends

    reason = backends.BACKENDS["cpp"].unavailable()
    if reason:
        pytest.skip(reason)
    with host_path.triton_on_cpu() as launches:
        yield dict(host_path.rows()), launches


@pytest.mark.benchmark(min_rounds=7, warmup=True)
@pytest.mark.parametrize("name", host_path.NAMES)
def test_host_path(benchmark, host_rows, name):
    rows, launches = host_rows
    provider = "plain_forward" if name.startswith("plain forward") else name  # the report's yardstick
    benchmark.extra_info.update(suite="host", provider=provider, n=len(host_path.DIMS), batch=host_path.BATCH)
    with torch.no_grad():
        rows[name]()  # a first call leaves its plan behind: the launches counted are those of later calls
        counted = host_path.count_launches(rows[name], launches)
        benchmark.extra_info["launches"] = {k: v for k, v in counted.items() if k != "torch_ops"}
        benchmark(rows[name])
