"""Test configuration: Triton's interpreter on CPU machines, and GPU tests skipped without a GPU."""

import os

import torch

# Must be set before anything imports Triton: without a GPU, Triton kernels run in its interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# One fixed tile per shape instead of autotuning: the suite compiles many shapes and checks values, not
# speed (test_triton checks every autotuning candidate separately; the benchmarks autotune).
os.environ.setdefault("FASTSHAP_TRITON_AUTOTUNE", "0")

# No compiled graphs reused from earlier runs: inductor's graph caches are keyed on the traced code, not on
# the fake kernels of our custom ops, so a graph cached before an op's output shape changed would be reused.
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
