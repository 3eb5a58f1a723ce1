"""GPU benchmarks: fastshap's triton, cuda and torch backends, naive batched torch and the plain head forward,
on one GPU, with achieved bandwidth against the device's HBM bandwidth.

Cases (B = 65,536, d_i = 512):
  concat-linear head, n = 2, C = 31, fp32 and bf16
  concat-linear head, n = 5, C = 101, fp32
  MLP head (Linear -> ReLU -> Linear, H = 256), n = 2, C = 31, fp32 and bf16

Timing: triton.testing.do_bench (median, CUDA-synchronised; CUDA events when Triton is missing) goes into
extra_info["gpu_ms"], which bench/report.py uses; pytest-benchmark also times each call with a
synchronize, as a cross-check. Bytes per call (the op's minimal traffic, the same for every row of a case):
features read (B * sum d_i * element size) + head parameters read + labels read (B * 8) + phi written
(B * n * 4). GB/s = bytes / median time. The device's peak: a data-sheet table by device name
(bench/harness.py) and a device-to-device copy measured in the same run.

A backend that cannot run here (not built, Triton missing) is reported as unavailable, not failed. Every
valuation is checked against fastshap's torch backend on the same GPU before it is timed (outside near
ties; naive batched in bf16 is not compared: it rounds the logits to bf16, fastshap accumulates in fp32).

    python -m pytest bench/test_bench_gpu.py -q --benchmark-only      # needs pytest-benchmark
    python bench/gpu_cases.py --json results.json                     # same cases, no pytest-benchmark
"""

from __future__ import annotations

import alternatives as alt
import harness
import pytest
import torch
from gpu_cases import BATCH, MAX_NEAR_TIE_FRACTION, PROVIDERS, ROUNDS, SPECS, Unavailable, prepare, synchronised


def _params():
    return [pytest.param(spec, provider, id=f"{spec.id}-{provider}") for spec in SPECS for provider in PROVIDERS]


@pytest.mark.gpu
def test_gpu_copy_bandwidth(benchmark):
    """The practical HBM ceiling of this device, measured first so the report can compare against it."""
    result = harness.copy_bandwidth()
    benchmark.group = "gpu d2d copy"
    benchmark.extra_info.update(
        copy_gbs=result["gbs"],
        copy_bytes=result["bytes"],
        gpu_ms=result["median_ms"],
        device=torch.cuda.get_device_name(),
    )
    src = torch.empty(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    benchmark.pedantic(synchronised(lambda: dst.copy_(src)), rounds=ROUNDS, warmup_rounds=2)


@pytest.mark.gpu
@pytest.mark.parametrize("spec,provider", _params())
def test_gpu(benchmark, spec, provider):
    try:
        run, info, check = prepare(spec, provider)
    except Unavailable as exc:
        harness.UNAVAILABLE.append({"group": spec.id, "provider": provider, "reason": str(exc)})
        pytest.skip(str(exc))
    benchmark.group = f"gpu {spec.id} B={BATCH}"
    benchmark.extra_info.update(info)
    benchmark.pedantic(synchronised(run), rounds=ROUNDS, warmup_rounds=1, iterations=1)
    if check is not None:
        alt.assert_agrees(check, MAX_NEAR_TIE_FRACTION)
