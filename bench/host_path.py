"""Host time per call of fastshap's Python path, on CPU tensors (the GPU launch path with the launch stubbed).

On a GPU a valuation call is host-bound at batch sizes a training step uses: the H100 run of 2026-11-27
measured ~1 ms of host time per `backend="triton"` call against ~0.2 ms of GPU time. The host's share is
Python (checks, planning, dispatch) plus Triton's launcher. These rows time the Python part on CPU tensors,
with the Triton launch replaced by a no-op (``torch.library.wrap_triton`` stubbed, and the CPU device let
through the op's device check), so that changes to that path can be measured on any machine. Triton's own
launcher and the CUDA launches of the small torch ops are not in these figures: the GPU benchmark's
"host time / call" column has the whole cost.

    .venv/bin/python bench/host_path.py      # a Markdown table (microseconds, best of 7 rounds)
    .venv/bin/python -m pytest bench/test_bench_host.py --benchmark-only    # the same rows, pytest-benchmark

Run without TRITON_INTERPRET (the rows use the GPU launch path).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import torch
import torch.library

BATCH, DIMS, CLASSES = 8, (16, 16), 4
#: The rows, in the order rows() returns them.
NAMES = (
    "plain forward (cat + Linear)",
    "cpp op alone",
    "API, cpp backend, checked",
    "API, cpp backend, defer_checks",
    "triton op (launch stubbed)",
    "API, triton backend, checked (launch stubbed)",
    "API, triton backend, defer_checks (launch stubbed)",
)


class Launches:
    """The stubbed launches: `count` of them so far, and the last kernel's name."""

    def __init__(self):
        self.count = 0
        self.last = None

    def record(self, kernel):
        self.count += 1
        fn = getattr(kernel, "fn", kernel)  # an autotuner wraps the JITFunction
        self.last = getattr(fn, "__name__", None) or getattr(getattr(fn, "fn", None), "__name__", None)


class _NoLaunch:
    """Stands in for torch.library.wrap_triton: kernel[grid](*args) records the launch and does nothing."""

    launches: Launches | None = None

    def __init__(self, kernel):
        self.kernel = kernel
        if hasattr(kernel, "configs"):  # an autotuner: leave a choice behind, as a tuning run does
            kernel.best_config = kernel.configs[-1]

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if _NoLaunch.launches is not None:
                _NoLaunch.launches.record(self.kernel)

        return launch


@contextlib.contextmanager
def stubbed_launch():
    """Inside: Triton launches do nothing (they are counted: the context yields a Launches) and the Triton op
    accepts CPU tensors. Everything is restored on exit, including the launch choices recorded meanwhile
    (fastshap.triton_shapley._CHOSEN)."""
    from fastshap import triton_shapley as ts

    if ts.INTERPRETED:
        raise RuntimeError("bench/host_path.py: run without TRITON_INTERPRET=1 (it times the GPU launch path)")
    recorded = getattr(ts, "_CHOSEN", {})  # getattr: the script also times older trees, for comparisons
    guard = "_check_supported" if hasattr(ts, "_check_supported") else "_check"  # older trees: _check
    check, wrap, chosen = getattr(ts, guard), torch.library.wrap_triton, dict(recorded)
    direct = getattr(ts, "_launch_direct", None)  # the eager launch of planned calls (older trees: none)
    tuners = len(ts.AUTOTUNERS)
    launches = Launches()

    def check_on_cpu(*args):  # the backend's own checks, with CPU tensors let through as under the interpreter
        ts.INTERPRETED = True
        try:
            return check(*args)
        finally:
            ts.INTERPRETED = False

    def no_direct_launch(kernel, grid, args, kwargs):
        launches.record(kernel)

    torch.library.wrap_triton = _NoLaunch
    _NoLaunch.launches = launches
    setattr(ts, guard, check_on_cpu)
    if direct is not None:
        ts._launch_direct = no_direct_launch
    try:
        yield launches
    finally:
        torch.library.wrap_triton = wrap
        _NoLaunch.launches = None
        setattr(ts, guard, check)
        if direct is not None:
            ts._launch_direct = direct
        recorded.clear()
        recorded.update(chosen)
        for tuner in ts.AUTOTUNERS[tuners:]:
            tuner.__dict__.pop("best_config", None)


def rows() -> list:
    """[(name, zero-argument callable)]: B = 8, n = 2, d = 16, C = 4 on CPU tensors. The Triton rows need
    stubbed_launch()."""
    import fastshap
    from fastshap import backends, heads
    from fastshap import triton_shapley as ts

    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(BATCH, d, generator=g) for d in DIMS]
    labels = torch.randint(0, CLASSES, (BATCH,), generator=g)
    head = heads.ConcatLinear(list(DIMS), CLASSES)
    weight, bias = head.fc.weight.detach(), head.fc.bias.detach()
    deferred = fastshap.DeferredChecks()
    triton_backend = backends.BACKENDS["triton"]

    def as_triton(fn):  # the API, with backend selection answering "triton" for CPU tensors
        def run():
            select = backends.select
            backends.select = lambda name, call: triton_backend
            try:
                return fn()
            finally:
                backends.select = select

        return run

    calls = [
        lambda: head.fc(torch.cat(feats, 1)),
        lambda: torch.ops.fastshap.shapley(feats, "concat", [weight, bias], [], labels, "paper"),
        lambda: fastshap.modality_shapley(feats, head, labels, backend="cpp"),
        lambda: fastshap.modality_shapley(feats, head, labels, backend="cpp", defer_checks=deferred),
        lambda: ts.shapley(feats, "concat", [weight, bias], [], labels, "paper"),
        as_triton(lambda: fastshap.modality_shapley(feats, head, labels)),
        as_triton(lambda: fastshap.modality_shapley(feats, head, labels, defer_checks=deferred)),
    ]
    return list(zip(NAMES, calls, strict=True))


def _best_us(fn, reps: int = 2000, rounds: int = 7) -> float:
    for _ in range(100):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e6


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("run without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    with stubbed_launch(), torch.no_grad():
        print(f"host time per call, B = {BATCH}, n = 2, d = 16, C = 4 (torch {torch.__version__}, 1 thread)\n")
        print("| path | µs / call |\n|---|---|")
        for name, fn in rows():
            print(f"| {name} | {_best_us(fn):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
