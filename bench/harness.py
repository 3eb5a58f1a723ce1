"""Shared benchmark harness: machine description, result files, GPU timing and bandwidth figures.

Imported by bench/conftest.py, the benchmark modules and bench/report.py (never by fastshap or tests).
A result file is pytest-benchmark's JSON, whose ``machine_info`` we extend with what the figures depend
on (CPU model, cores and threads, load average, GPU and its memory bandwidth, torch / Triton / Captum
versions, the extension's build) and whose ``commit_info`` pytest-benchmark fills from git.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

#: Load average and time when the run started (set by conftest.py; the run's end is when machine_info() is
#: called). A shared machine under load shows up here.
RUN_START: dict = {}

#: Providers that could not run, as {"group", "provider", "reason"} dicts; conftest adds them to the JSON
#: and report.py lists them, so an unavailable backend is reported instead of silently missing.
UNAVAILABLE: list = []

#: HBM bandwidth in bytes/s from vendor data sheets, matched against torch.cuda.get_device_name() in order
#: (first substring match wins, lower case). The report also shows a device-to-device copy measured in the
#: same run, which is what the hardware actually sustains.
PEAK_BANDWIDTH = (
    ("gh200", 4.0e12),
    ("h200", 4.8e12),
    ("h100 nvl", 3.9e12),
    ("h100 pcie", 2.0e12),
    ("h100", 3.35e12),  # "NVIDIA H100 80GB HBM3" is the SXM part
    ("h800", 3.35e12),
    ("a100-sxm4-80gb", 2.039e12),
    ("a100 80gb pcie", 1.935e12),
    ("a100", 1.555e12),  # 40 GB parts
    ("l40s", 0.864e12),
    ("l4", 0.3e12),
)


def peak_bandwidth(device_name: str) -> float | None:
    name = device_name.lower()
    for key, value in PEAK_BANDWIDTH:
        if key in name:
            return value
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> dict:
    """{"id", "dirty"} of the working tree, read-only git calls; empty values outside a checkout."""

    def git(*args):
        try:
            return subprocess.run(("git", *args), cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    return {"id": commit, "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None}


def fastshap_info() -> dict:
    """Version, which backends work here (or why not) and how the extension was built."""
    try:
        import fastshap
        from fastshap import _extension, backends
    except ImportError as exc:  # the benchmarks then fail on their own; keep the header writable
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {
        "version": fastshap.__version__,
        "backends": {name: reason or "available" for name, reason in backends.available().items()},
        "build": _extension.build_info(),
    }


def gpu_info() -> dict | None:
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "peak_bandwidth_gbs": (peak_bandwidth(props.name) or 0) / 1e9 or None,
        "cuda_runtime": torch.version.cuda,
    }


def machine_info() -> dict:
    """What a reader needs to judge a figure: hardware, load, versions, build, date."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": RUN_START.get("loadavg"),
        "loadavg_end": loadavg(),
        "started_utc": RUN_START.get("date"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "captum": _version("captum"),
        "numpy": _version("numpy"),
        "pytest_benchmark": _version("pytest-benchmark"),
        "gpu": gpu_info(),
        "fastshap": fastshap_info(),
        "git": git_commit(),
        "date_utc": utc_now(),
    }


def loadavg() -> list | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def mark_run_start() -> None:
    RUN_START.update(loadavg=loadavg(), date=utc_now())


def default_result_path(stem: str = "bench") -> Path:
    """bench/results/<stem>-<UTC date and time>-<commit>.json"""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    commit = git_commit()["id"][:8] or "nogit"
    return RESULTS_DIR / f"{stem}-{stamp}-{commit}.json"


def print_and_save(text: str, path: str | None) -> None:
    """A script's result (a Markdown table and its notes): printed, and written to `path` (its --out) if given."""
    print(text)
    if path:
        with open(path, "w") as handle:
            handle.write(text)


# --- timing -------------------------------------------------------------------------------------------


def cuda_time_ms(fn: Callable[[], object], warmup_ms: float = 25.0, rep_ms: float = 100.0) -> dict:
    """Median / min / max GPU time of fn() in ms: triton.testing.do_bench when Triton imports, else CUDA
    events around each call. do_bench clears the L2 cache before each call (a 256 MB write on the GPU, not
    counted: the inputs here are far larger than L2 anyway) and times with events, so the host may run ahead
    of the GPU during that clearing; for host-bound rows its median can come out below a call followed by a
    synchronize, which pytest-benchmark's rounds measure (report.py flags rows where the two differ by more
    than 20%). The CUDA-events fallback clears nothing."""
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:
        median, low, high = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.0, 1.0])
        return {"median_ms": median, "min_ms": low, "max_ms": high, "timer": "triton.testing.do_bench"}
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    once = max(start.elapsed_time(end), 1e-3)
    for _ in range(max(1, int(warmup_ms / once))):
        fn()
    times = []
    for _ in range(max(5, int(rep_ms / once))):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "timer": "cuda events"}


def copy_bandwidth(nbytes: int = 1 << 30) -> dict:
    """Device-to-device copy of `nbytes`: counts read + write, the practical HBM ceiling of this device."""

    def measure():
        src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
        dst = torch.empty_like(src)
        return cuda_time_ms(lambda: dst.copy_(src))

    timing = measure()
    torch.cuda.empty_cache()  # the 2 GiB of buffers are gone with measure()
    return {**timing, "bytes": 2 * nbytes, "gbs": 2 * nbytes / (timing["median_ms"] * 1e-3) / 1e9}


def wall_time(fn: Callable[[], object], rounds: int = 5) -> list:
    """Seconds per call (for the standalone runner, where pytest-benchmark is not installed)."""
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out
