"""GPU benchmark cases, shared by bench/test_bench_gpu.py (pytest-benchmark) and this file's standalone runner
(for machines without pytest-benchmark). See test_bench_gpu.py for the cases, the timing and the bytes model.

    python bench/gpu_cases.py --json results.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import alternatives as alt  # bench/ is on sys.path: the script's own folder, or pytest's prepend import
import harness
import torch
from torch import nn

BATCH, DIM = 65536, 512
#: Where the cases run. --dry-run switches to the CPU with a small batch, to exercise everything but the
#: GPU on machines without one (bench/gpu_check.sh's non-GPU parts, CI).
RUN = {"device": "cuda", "batch": BATCH}
ROUNDS = 10  # pytest-benchmark's synchronised rounds (the cross-check; do_bench gives the figure)
NEAR_TIE_TOL = 1e-4  # GPU GEMMs may reorder sums (split-K); margins below this may flip argmax
MAX_NEAR_TIE_FRACTION = 0.02


@dataclass(frozen=True)
class Spec:
    head: str  # "linear" | "mlp"
    n: int
    classes: int
    dtype: torch.dtype
    hidden: int | None = None

    @property
    def id(self) -> str:
        h = f"-H{self.hidden}" if self.hidden else ""
        return f"{self.head}{h}-n{self.n}-C{self.classes}-{str(self.dtype).replace('torch.', '')}"


SPECS = (
    Spec("linear", 2, 31, torch.float32),
    Spec("linear", 2, 31, torch.bfloat16),
    Spec("linear", 5, 101, torch.float32),
    Spec("mlp", 2, 31, torch.float32, hidden=256),
    Spec("mlp", 2, 31, torch.bfloat16, hidden=256),
)
PROVIDERS = (
    "plain_forward",
    "fastshap_triton",
    "fastshap_cuda",
    "fastshap_torch",
    "fastshap_triton_checked",
    "fastshap_triton_graph",
    "fastshap_cuda_graph",
    "fastshap_cuda_tc",
    "fastshap_cuda_tc_graph",
    "triton_op",
    "decomposed_torch",
    "naive_batched",
)
NOTES = {
    "plain_forward": "yardstick: torch.cat + the head, one prediction",
    "fastshap_triton": "fastshap backend='triton', defer_checks (no host sync per call, as the trainer calls it)",
    "fastshap_cuda": "fastshap backend='cuda', defer_checks, first layer on CUDA-core FMAs "
    "(FASTSHAP_CUDA_TENSOR_CORES=0)",
    "fastshap_torch": "fastshap backend='torch' (the reference on this GPU), defer_checks",
    "fastshap_triton_checked": "fastshap backend='triton' with immediate value checks (one host sync per call)",
    "fastshap_triton_graph": "the fastshap_triton call captured once in a CUDA graph and replayed: the GPU's "
    "time without the host's (Python, launches)",
    "fastshap_cuda_graph": "the same for backend='cuda': the CUDA kernel's GPU time (and its few small ops)",
    "fastshap_cuda_tc": "backend='cuda' with FASTSHAP_CUDA_TENSOR_CORES=1, defer_checks: the first layer on tensor "
    "cores (fp32 as 3xTF32) where the plan has room for them (here the linear heads, not the MLP)",
    "fastshap_cuda_tc_graph": "the same captured in a CUDA graph: its GPU time",
    "triton_op": "the registered op torch.ops.fastshap_triton.shapley called directly: the Triton "
    "path without modality_shapley's checks (host time: the launch's own share)",
    "decomposed_torch": "fastshap's algorithm in plain torch ops: per-modality GEMMs (fp32 results), coalition sums "
    "by one einsum, argmax, Shapley weights (bench/alternatives.py)",
    "naive_batched": "the 2^n - 1 non-empty masked copies in one head forward (the head's dtype)",
}


class Unavailable(Exception):
    """This provider cannot run here; the message says why."""


@functools.lru_cache(maxsize=1)
def _case(spec: Spec) -> alt.Case:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return alt.make_case(
        spec.n,
        RUN["batch"],
        DIM,
        spec.classes,
        hidden=spec.hidden,
        dtype=spec.dtype,
        device=RUN["device"],
        seed=7 * spec.n + spec.classes,
    )


@functools.lru_cache(maxsize=1)
def _reference(spec: Spec):
    case = _case(spec)
    import fastshap

    phi = fastshap.modality_shapley(case.features, case.head, case.labels, backend="torch")
    return phi, alt.near_tie_samples(case.features, case.head, case.labels, NEAR_TIE_TOL)


def traffic_bytes(case: alt.Case) -> int:
    feats = sum(f.numel() * f.element_size() for f in case.features)
    params = sum(p.numel() * p.element_size() for p in case.head.parameters())
    return feats + params + case.labels.numel() * 8 + case.batch * case.n * 4


def head_flops(spec: Spec, case: alt.Case) -> float:
    width = spec.n * DIM
    if spec.hidden:  # first layer once per modality, second layer per coalition
        return 2.0 * case.batch * (width * spec.hidden + (1 << spec.n) * spec.hidden * spec.classes)
    return 2.0 * case.batch * width * spec.classes


def _callable(provider: str, case: alt.Case):
    """The timed call of `provider`. The cuda rows pin the first layer's path (FASTSHAP_CUDA_TENSOR_CORES=0 for
    "fastshap_cuda*", 1 for "fastshap_cuda_tc*") so that each row means the same whatever the default is."""
    if "_tc" in provider:
        return _with_tensor_cores(provider.replace("_tc", ""), case)
    if provider.startswith("fastshap_cuda"):
        return _pinned(lambda: _unpinned_callable(provider, case), "0")
    return _unpinned_callable(provider, case)


def _unpinned_callable(provider: str, case: alt.Case):
    if provider == "plain_forward":
        return lambda: alt.plain_forward(case.features, case.head)
    if provider == "naive_batched":
        return lambda: alt.naive_batched(case.features, case.head, case.labels)
    if provider == "decomposed_torch":
        return lambda: alt.decomposed_torch(case.features, case.head, case.labels)
    import fastshap

    if provider == "triton_op":
        return _registered_op(case)
    backend = provider.removeprefix("fastshap_").removesuffix("_checked").removesuffix("_graph")
    if provider.endswith("_checked"):
        return lambda: fastshap.modality_shapley(case.features, case.head, case.labels, backend=backend)
    checks = fastshap.DeferredChecks()

    def run():
        phi = fastshap.modality_shapley(case.features, case.head, case.labels, backend=backend, defer_checks=checks)
        if checks.calls >= 1000:  # read now and then: the counters must say nothing was wrong
            checks.raise_if_any()
        return phi

    if provider.endswith("_graph"):
        return _graphed(run, checks)
    return run


TENSOR_CORES = "FASTSHAP_CUDA_TENSOR_CORES"


@contextlib.contextmanager
def _tensor_cores(value: str):
    before = os.environ.get(TENSOR_CORES)
    os.environ[TENSOR_CORES] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TENSOR_CORES)
        else:
            os.environ[TENSOR_CORES] = before


def _with_tensor_cores(provider: str, case: alt.Case):
    """`provider` (a fastshap cuda one) with FASTSHAP_CUDA_TENSOR_CORES=1 around each call: the CUDA launcher
    reads it per call, and a CUDA graph captures the kernel chosen while it was set. Only fp16/bf16/fp32
    features with a head of their dtype are eligible: other cases would time the FMA plan under another name."""
    dtype = case.features[0].dtype
    eligible = dtype in (torch.float16, torch.bfloat16, torch.float32)
    if not eligible or any(p.dtype != dtype for p in case.head.parameters()):
        raise Unavailable("tensor cores: fp16/bf16/fp32 features and a head of their dtype only")
    if not isinstance(case.head, nn.Linear):  # not timed: the rows would repeat the cuda ones (and cost time)
        raise Unavailable(
            "tensor cores: the MLP at H = 256 keeps the FMA plan (its tensor-core stages do not fit two blocks per SM)"
        )
    return _pinned(lambda: _unpinned_callable(provider, case), "1")


def _pinned(make_run, value: str):
    """make_run()'s callable with FASTSHAP_CUDA_TENSOR_CORES=value while it is made (warm-up, a CUDA graph's
    capture) and around each call (the CUDA launcher reads it per call)."""
    with _tensor_cores(value):
        run = make_run()

    def call():
        with _tensor_cores(value):
            return run()

    return call


def _registered_op(case: alt.Case):
    """The Triton op itself, on the parameters modality_shapley would hand it."""
    import fastshap
    from fastshap import backends
    from fastshap.api import _head_spec

    reason = backends.why_not(
        "triton", backends.Call("concat", case.features[0].device, case.features[0].dtype, case.n)
    )
    if reason:
        raise Unavailable(reason)
    import fastshap.triton_shapley  # noqa: F401  (registers torch.ops.fastshap_triton)

    dims = [f.shape[1] for f in case.features]
    spec = _head_spec(case.head, dims, case.features[0].device)
    op = torch.ops.fastshap_triton.shapley
    return lambda: op(list(case.features), spec.kind, list(spec.params), [], case.labels, "paper")[0]


def _graphed(run, checks):
    """run() captured in a CUDA graph (after warm-up calls on a side stream, which also autotune), and a
    callable that replays it and returns the captured output."""
    if RUN["device"] != "cuda":
        raise Unavailable("CUDA graphs need a GPU")
    import fastshap

    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                run()
        torch.cuda.current_stream().wait_stream(side)
        checks.raise_if_any()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run()
    except fastshap.BackendError as exc:
        raise Unavailable(str(exc)) from exc

    def replay():
        graph.replay()
        return out

    return replay


def host_time_us(run, calls: int = 20) -> float:
    """Host time of one call, not waiting for the GPU (after a synchronisation; `calls` calls in a row)."""
    _sync()
    start = time.perf_counter()
    for _ in range(calls):
        run()
    elapsed = time.perf_counter() - start
    _sync()
    return elapsed / calls * 1e6


def _first_call(run):
    """The first (untimed) call: compiles / autotunes; a backend that cannot run raises before any work."""
    import fastshap

    try:
        out = run()
    except fastshap.BackendError as exc:
        raise Unavailable(str(exc)) from exc
    _sync()
    return out


def _sync():
    if RUN["device"] == "cuda":
        torch.cuda.synchronize()


def _device_name() -> str:
    return torch.cuda.get_device_name() if RUN["device"] == "cuda" else f"cpu ({harness.cpu_model()}, dry run)"


def _time(run) -> dict:
    if RUN["device"] == "cuda":
        return harness.cuda_time_ms(run)
    times = [t * 1e3 for t in harness.wall_time(run, 3)]
    return {"median_ms": sorted(times)[1], "min_ms": min(times), "max_ms": max(times), "timer": "wall clock (dry run)"}


def prepare(spec: Spec, provider: str):
    """(timed callable, extra_info, value check or None). Raises Unavailable."""
    case = _case(spec)
    run = _callable(provider, case)
    info = dict(
        suite="gpu" if RUN["device"] == "cuda" else "gpu-dry-run",
        head=spec.head,
        n=spec.n,
        batch=case.batch,
        batch_timed=case.batch,
        dim=DIM,
        classes=spec.classes,
        hidden=spec.hidden,
        dtype=str(spec.dtype).replace("torch.", ""),
        benefit="paper",
        provider=provider,
        note=NOTES[provider],
        bytes=traffic_bytes(case),
        flops=head_flops(spec, case),
        device=_device_name(),
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
    )
    check = None
    with torch.no_grad():
        tuned_before = _autotuning_log()
        out = _first_call(run)
        tuned = [entry for entry in _autotuning_log() if entry not in tuned_before]
        if tuned:
            info["autotuning"] = tuned
        comparable = provider != "plain_forward" and not (provider == "naive_batched" and spec.dtype != torch.float32)
        if comparable:
            ref, ties = _reference(spec)
            check = alt.compare(out, ref, ties)
            info.update(check, checked_against="fastshap torch")
        del out
        timing = _time(run)
        info["host_us"] = round(host_time_us(run), 1)
    info.update(
        gpu_ms=timing["median_ms"], gpu_min_ms=timing["min_ms"], gpu_max_ms=timing["max_ms"], timer=timing["timer"]
    )
    info["gbs"] = info["bytes"] / (timing["median_ms"] * 1e-3) / 1e9
    return run, info, check


def _autotuning_log() -> list:
    """[{candidate config: ms}, chosen] of every Triton autotuning run so far (fastshap.triton_shapley)."""
    module = sys.modules.get("fastshap.triton_shapley")
    if module is None:
        return []
    log = []
    for tuner in module.AUTOTUNERS:
        timings = getattr(tuner, "configs_timings", None) or {}
        log.append(
            {
                "candidates": {
                    str(c): [round(float(t), 5) for t in (v if isinstance(v, (list, tuple)) else [v])]
                    for c, v in timings.items()
                },
                "chosen": str(getattr(tuner, "best_config", "")),
            }
        )
    return log


def synchronised(run):
    def call():
        with torch.no_grad():
            run()
        _sync()

    return call


# --- standalone runner (machines without pytest-benchmark) ------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="GPU benchmarks without pytest-benchmark (same cases and JSON layout)")
    parser.add_argument(
        "--json", type=Path, default=None, help="output file (default: bench/results/gpu-<date>-<commit>.json)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="run every case on the CPU with B = 256 (checks the code, not the GPU)"
    )
    args = parser.parse_args(argv)
    if args.dry_run:
        RUN.update(device="cpu", batch=256)
    elif not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark (--dry-run runs the cases on the CPU)", file=sys.stderr)
        return 2
    harness.mark_run_start()
    benches, failed = [], 0

    def record(name, group, info, run):
        times = harness.wall_time(synchronised(run), ROUNDS if not args.dry_run else 2)
        stats = {
            "median": sorted(times)[len(times) // 2],
            "min": min(times),
            "mean": math.fsum(times) / len(times),
            "rounds": len(times),
        }
        benches.append({"name": name, "group": group, "extra_info": info, "stats": stats})

    if not args.dry_run:
        copy = harness.copy_bandwidth()
        src = torch.empty(1 << 28, device="cuda")
        dst = torch.empty_like(src)
        info = dict(copy_gbs=copy["gbs"], copy_bytes=copy["bytes"], gpu_ms=copy["median_ms"], device=_device_name())
        record("copy_bandwidth", "gpu d2d copy", info, lambda: dst.copy_(src))
        del src, dst
    for spec in SPECS:
        for provider in PROVIDERS:
            name = f"test_gpu[{spec.id}-{provider}]"
            try:
                run, info, check = prepare(spec, provider)
            except Unavailable as exc:
                harness.UNAVAILABLE.append({"group": spec.id, "provider": provider, "reason": str(exc)})
                print(f"{name}: unavailable: {exc}")
                continue
            except Exception as exc:  # keep going: one failing provider must not hide the others
                failed += 1
                print(f"{name}: FAILED: {type(exc).__name__}: {exc}")
                continue
            record(name, f"gpu {spec.id} B={RUN['batch']}", info, run)
            bad = check is not None and (
                check["mismatch"] or check["near_tie_samples"] > MAX_NEAR_TIE_FRACTION * check["samples"]
            )
            failed += bool(bad)
            print(
                f"{name}: {info['gpu_ms']:.3f} ms, {info['gbs']:.0f} GB/s"
                f"{'  VALUES DIFFER: ' + str(check) if bad else ''}"
            )
    machine = harness.machine_info()
    out = {
        "machine_info": {"bench": machine},
        "commit_info": machine["git"],
        "datetime": machine["date_utc"],
        "benchmarks": benches,
        "unavailable": harness.UNAVAILABLE,
    }
    path = args.json or harness.default_result_path("gpu-dry-run" if args.dry_run else "gpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
