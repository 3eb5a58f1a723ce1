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
import json
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


@contextlib.contextmanager
def triton_on_cpu():
    """stubbed_launch(), and backend="triton" accepting CPU tensors (as under the interpreter): the API's own
    selection picks it. Yields the Launches."""
    from fastshap import backends

    triton = backends.TritonBackend
    declines, unavailable = triton.declines, triton.unavailable

    def declines_cpu(self, call):
        return backends._kernel_declines(call, self.name, "cpu", self.dtypes)

    with stubbed_launch() as launches:
        triton.declines, triton.unavailable = declines_cpu, lambda self: None
        try:
            yield launches
        finally:
            triton.declines, triton.unavailable = declines, unavailable


def rows() -> list:
    """[(name, zero-argument callable)]: B = 8, n = 2, d = 16, C = 4 on CPU tensors. The Triton rows need
    triton_on_cpu()."""
    import fastshap
    from fastshap import heads
    from fastshap import triton_shapley as ts

    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(BATCH, d, generator=g) for d in DIMS]
    labels = torch.randint(0, CLASSES, (BATCH,), generator=g)
    head = heads.ConcatLinear(list(DIMS), CLASSES)
    weight, bias = head.fc.weight.detach(), head.fc.bias.detach()
    deferred = fastshap.DeferredChecks()
    calls = [
        lambda: head.fc(torch.cat(feats, 1)),
        lambda: torch.ops.fastshap.shapley(feats, "concat", [weight, bias], [], labels, "paper"),
        lambda: fastshap.modality_shapley(feats, head, labels, backend="cpp"),
        lambda: fastshap.modality_shapley(feats, head, labels, backend="cpp", defer_checks=deferred),
        lambda: ts.shapley(feats, "concat", [weight, bias], [], labels, "paper"),
        lambda: fastshap.modality_shapley(feats, head, labels, backend="triton"),
        lambda: fastshap.modality_shapley(feats, head, labels, backend="triton", defer_checks=deferred),
    ]
    return list(zip(NAMES, calls, strict=True))


#: ATen ops that launch nothing on a GPU: allocations, views and metadata.
NO_LAUNCH = {
    "aten::empty",
    "aten::empty_strided",
    "aten::empty_like",
    "aten::view",
    "aten::as_strided",
    "aten::slice",
    "aten::select",
    "aten::narrow",
    "aten::t",
    "aten::transpose",
    "aten::expand",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::alias",
    "aten::detach",
    "aten::lift_fresh",
    "aten::resolve_conj",
    "aten::resolve_neg",
    "aten::_reshape_alias",
    "aten::reshape",
    "aten::unbind",
}


#: ATen ops that return their input unchanged when it needs no conversion (then they call nothing).
NO_OP_UNLESS_COPYING = {"aten::to", "aten::contiguous", "aten::type_as"}


def count_launches(fn, launches: Launches) -> dict:
    """What one call of `fn` launches on a GPU, counted on CPU tensors: Triton kernels (stubbed: `launches`),
    the torch ops the Python around the op runs (profiled ATen ops that are leaves and not views or
    allocations; what the compiled op does inside is the op's own, see docs/benchmarks.md), the deferred
    checks' add in C++ (fastshap._C.add_counts: one add on a GPU) and device-to-host reads of the value
    checks through fastshap._C.stats_bad (the full path reads them with `tolist`, which a CPU run does not
    show: see the docs). Each torch op counts once, as the outermost ATen op the Python code called."""
    from torch.profiler import ProfilerActivity, profile

    try:
        from fastshap import _call_plan
    except ImportError:  # a tree without call plans
        _call_plan = None
    native = getattr(_call_plan, "NATIVE", None)
    counted = {"add_counts": 0, "stats_bad": 0}
    originals = {}
    if native is not None:
        for name in counted:
            original = getattr(native, name)
            originals[name] = original

            def wrapper(*args, _name=name, _original=original):
                counted[_name] += 1
                return _original(*args)

            setattr(native, name, wrapper)
    before = launches.count
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    finally:
        for name, original in originals.items():
            setattr(native, name, original)

    def inside_op(event):
        while event is not None:
            if event.name in ("fastshap::shapley", "fastshap_triton::shapley"):
                return event.name == "fastshap::shapley"
            event = event.cpu_parent
        return False

    def outermost(event):  # no ATen op above it: what the Python code called
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return False
            parent = parent.cpu_parent
        return True

    torch_ops = sorted(
        e.name
        for e in prof.events()
        if e.name.startswith("aten::")
        and outermost(e)
        and not inside_op(e)
        and e.name not in NO_LAUNCH
        and not (e.name in NO_OP_UNLESS_COPYING and not e.cpu_children)
    )
    return {
        "triton": launches.count - before,
        "torch": len(torch_ops),
        "torch_ops": torch_ops,
        "add_counts": counted["add_counts"],
        "reads": counted["stats_bad"],
    }


def launch_counts() -> dict:
    """{path: count_launches(...)} for the planned and the full path of the cpp and triton backends, checked
    and with defer_checks (B = 8, n = 2). The full path is a call with no plan (plans cleared before it)."""
    import fastshap
    from fastshap import heads

    try:
        from fastshap import _call_plan
    except ImportError:
        _call_plan = None
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(BATCH, d, generator=g) for d in DIMS]
    labels = torch.randint(0, CLASSES, (BATCH,), generator=g)
    head = heads.ConcatLinear(list(DIMS), CLASSES)
    out = {}
    with triton_on_cpu() as launches:
        for backend in ("cpp", "triton"):
            for mode in ("checked", "defer_checks"):
                deferred = fastshap.DeferredChecks() if mode == "defer_checks" else None

                def call(backend=backend, deferred=deferred):
                    return fastshap.modality_shapley(feats, head, labels, backend=backend, defer_checks=deferred)

                for path in ("full", "planned"):
                    call()  # leaves the plan, the autotuner's choice and the deferred counters behind
                    if path == "full" and _call_plan is not None:
                        _call_plan.PLANS.clear()
                    out[f"{backend}, {mode}, {path} path"] = count_launches(call, launches)
    return out


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


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("run without TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    argv = sys.argv[1:] if argv is None else argv
    if "--launches" in argv:  # JSON: what each path launches on a GPU (tests/op/test_call_plan.py reads it)
        print(json.dumps(launch_counts(), indent=1))
        return 0
    torch.set_num_threads(1)
    with triton_on_cpu(), torch.no_grad():
        print(f"host time per call, B = {BATCH}, n = 2, d = 16, C = 4 (torch {torch.__version__}, 1 thread)\n")
        print("| path | µs / call |\n|---|---|")
        for name, fn in rows():
            print(f"| {name} | {_best_us(fn):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
