"""The only module that imports the compiled ``fastshap._C``. Importing fastshap never fails without it."""

from __future__ import annotations

import importlib.util

import torch

if importlib.util.find_spec("fastshap._C") is None:
    # Said plainly: Python's own message for a missing submodule talks of a "circular import".
    LOADED = False
    LOAD_ERROR = (
        "it is not built (`pip install --no-build-isolation .`, or `-e .` in a checkout, builds it "
        "against the installed torch; see the README)"
    )
else:
    try:
        from fastshap import _C  # noqa: F401  (loading it registers the fastshap:: ops and their kernels)

        LOADED = True
        LOAD_ERROR = None
    except (ImportError, OSError) as exc:  # built against another torch, or a library is missing
        LOADED = False
        LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether fastshap::<op> has a kernel registered for `dispatch_key` (e.g. "CPU", "CUDA")."""
    if not LOADED:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastshap::{op}", dispatch_key)


def build_info() -> dict:
    """What the extension says about its own build, e.g. {'cuda': '1', 'cuda_arch': '8.0,9.0+PTX', ...}."""
    if not LOADED:
        return {}
    pairs = (item.split("=", 1) for item in torch.ops.fastshap.build_info().split(";") if "=" in item)
    return dict(pairs)
