"""What a call launches on a GPU, counted on the CPU with Triton's launch stubbed (bench/host_path.py
--launches, in a process without TRITON_INTERPRET), and the call-time script's rows end to end.

Counted per call: Triton kernels, the torch ops the Python around the op runs (each would be a kernel on a
GPU), the deferred checks' add (fastshap._C.add_counts, one kernel on a GPU) and the value checks' reads.
The compiled op's own launches are the op's (csrc/cuda/shapley_host.h: a zero fill, the kernel, the stats'
conversion) and are not counted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


def _run(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, *args], cwd=BENCH, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def launches():
    pytest.importorskip("triton")
    from fastshap import _call_plan, backends

    if backends.BACKENDS["cpp"].unavailable() or _call_plan.NATIVE is None:
        pytest.skip("needs fastshap._C with its plan functions")
    return json.loads(_run("host_path.py", "--launches"))


def _total(row: dict) -> int:
    return row["triton"] + row["torch"] + row["add_counts"]


def test_a_planned_triton_call_launches_the_kernel_and_its_stats(launches):
    """Deferred: the stats' zero fill, the kernel and the counters' add; checked: the fill, the kernel and
    one read of the counts."""
    deferred = launches["triton, defer_checks, planned path"]
    assert (deferred["triton"], deferred["torch_ops"], deferred["add_counts"], deferred["reads"]) == (
        1,
        ["aten::zeros"],
        1,
        0,
    )
    checked = launches["triton, checked, planned path"]
    assert (checked["triton"], checked["torch_ops"], checked["add_counts"], checked["reads"]) == (
        1,
        ["aten::zeros"],
        0,
        1,
    )


def test_the_full_path_launches_no_less(launches):
    for backend in ("cpp", "triton"):
        for mode in ("checked", "defer_checks"):
            full, planned = launches[f"{backend}, {mode}, full path"], launches[f"{backend}, {mode}, planned path"]
            assert _total(full) >= _total(planned), (backend, mode, full, planned)
    # the full path converts the Triton stats to float32 for every call; the planned path only when asked
    assert "aten::to" in launches["triton, defer_checks, full path"]["torch_ops"]


def test_a_planned_compiled_op_call_adds_one_launch_at_most(launches):
    """Around the compiled op (whose own launches are its own): nothing when checked (one read, made by the
    op's C++ caller: not a Python op), the counters' add when deferred."""
    assert _total(launches["cpp, checked, planned path"]) == 0
    deferred = launches["cpp, defer_checks, planned path"]
    assert _total(deferred) == 1 and deferred["add_counts"] == 1


def test_the_call_time_rows_run():
    pytest.importorskip("triton")
    out = _run("call_time.py", "--reps", "2", "--rounds", "1", "--batches", "1", "--modalities", "2")
    rows = [line for line in out.splitlines() if line.startswith("| 2 | 1 |")]
    assert len(rows) == 1 and rows[0].count("µs") == 6, out
