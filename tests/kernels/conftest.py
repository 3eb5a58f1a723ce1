"""Fixtures of the kernel tests: the CPU emulation of the CUDA kernels and the device the Triton tests run on."""

from __future__ import annotations

import os
import shutil

import pytest
import torch


@pytest.fixture(scope="session")
def emu():
    """torch.ops.fastshap_cuda_emulation, compiled from csrc/cuda on first use (tests/emulation.py)."""
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        pytest.skip(f"no C++ compiler ({compiler}) to build the CPU emulation of the CUDA kernels")
    from emulation import build_emulation

    return build_emulation()


@pytest.fixture(scope="session")
def device():
    """Where the Triton tests run: the GPU, or the CPU under Triton's interpreter (tests/conftest.py)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
