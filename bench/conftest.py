"""pytest-benchmark harness shared by every bench/ module.

* Every run is saved: unless --benchmark-json / --benchmark-save / --benchmark-autosave says otherwise,
  the JSON goes to bench/results/bench-<UTC date>-<commit>.json (turn it into tables with bench/report.py).
* The JSON's machine_info["bench"] holds what the figures depend on (harness.machine_info()), with the
  load average at the start and the end of the run: a busy neighbour on a shared machine shows up there.
* Backends that cannot run are listed under "unavailable" with the reason, instead of silently missing.
* Tests marked ``gpu`` are skipped without a CUDA device (asked here, never at module level).
"""

import os

import harness
import pytest
import torch


def pytest_configure(config):
    harness.mark_run_start()
    opt = config.option
    told = (
        getattr(opt, "benchmark_json", None)
        or getattr(opt, "benchmark_save", None)
        or getattr(opt, "benchmark_autosave", None)
    )
    off = getattr(opt, "benchmark_disable", False) or getattr(opt, "benchmark_skip", False)
    if hasattr(opt, "benchmark_json") and not told and not off:
        harness.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        opt.benchmark_json = harness.default_result_path()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["bench"] = harness.machine_info()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["unavailable"] = list(harness.UNAVAILABLE)


def pytest_terminal_summary(terminalreporter, config):
    path = getattr(config.option, "benchmark_json", None)
    path = getattr(path, "name", path)  # an open file in pytest-benchmark < 5.3, a path after
    if path and os.path.exists(path):
        terminalreporter.write_line(f"bench results: {path}  (tables: python bench/report.py {path})")
