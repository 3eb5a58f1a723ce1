"""Backends that compute modality Shapley values, what each supports, and how one is chosen.

Each backend declares why it cannot run at all here (``unavailable``) and why it declines a given call
(``declines``). ``select("auto", call)`` takes the first backend in the device's preference order that
does neither; an explicit name that cannot run raises :class:`BackendError` with the reason, never a
silent fallback.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from typing import NamedTuple

import torch

from fastshap import _extension, head_kinds, reference


class BackendError(RuntimeError):
    """The requested backend cannot run this call (the message says why)."""


class Call(NamedTuple):
    """What a backend needs to know to accept a call (a tuple: built on every call, cheaply)."""

    kind: str  # a head kind of fastshap.head_kinds, or "callable"
    device: torch.device
    dtype: torch.dtype
    n: int
    per_segment: bool = False  # labels (B, T) with (B, T, C) logits
    note: str = ""  # why a module head is a callable (HeadSpec.note)


@dataclass
class HeadSpec:
    """A head reduced to what the kernels take: its kind and parameters (or the callable itself)."""

    kind: str
    params: tuple = ()
    fn: object = None
    num_classes: int | None = None
    note: str = ""  # for a known head type run as a callable: why (a forward of its own, hooks)


class Backend:
    name = ""

    def unavailable(self) -> str | None:
        return None

    def declines(self, call: Call) -> str | None:
        return None

    def run(self, spec: HeadSpec, features, baselines, labels, benefit):
        """(phi (B, n) float32, stats (4, n) float32): the backend's op ``shapley(features, head, params,
        baselines, labels, benefit)``, or for a callable head the torch path."""
        if spec.kind == "callable":
            return reference.shapley_callable(features, spec.fn, labels, baselines, benefit)
        return self._op()(list(features), spec.kind, list(spec.params), list(baselines or []), labels, benefit)


class TorchBackend(Backend):
    """The pure-PyTorch reference: any head, any device, always available."""

    name = "torch"

    def _op(self):
        return reference.shapley


def _kernel_declines(call: Call, backend: str, device_type: str, dtypes) -> str | None:
    kind = head_kinds.KINDS.get(call.kind)
    if kind is None:
        return f"it runs the fastshap heads and nn.Linear only, not a {call.kind} head" + (
            f" ({call.note})" if call.note else ""
        )
    if backend not in kind.backends:
        return f"its kernels do not run the {kind.name} head"
    if call.per_segment:
        return "per-segment (B, T) labels need a callable head (torch backend)"
    if call.device.type != device_type:
        return f"it runs on {device_type} tensors, the features are on {call.device}"
    if call.dtype not in dtypes:
        return f"it does not take {call.dtype} features"
    return None


class CppBackend(Backend):
    """The compiled CPU kernels (csrc/cpu)."""

    name = "cpp"
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

    def unavailable(self):
        if not _extension.LOADED:
            return f"the compiled extension fastshap._C did not load ({_extension.LOAD_ERROR})"
        return None

    def declines(self, call):
        return _kernel_declines(call, self.name, "cpu", self.dtypes)

    def _op(self):
        return torch.ops.fastshap.shapley


class CudaBackend(Backend):
    """The compiled CUDA kernels (csrc/cuda). Their first layer runs on CUDA-core FMAs (the CPU kernel's
    bits) unless FASTSHAP_CUDA_TENSOR_CORES=1 puts it on tensor cores (docs/backends.md: the environment table)."""

    name = "cuda"
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

    def unavailable(self):
        return _cuda_unavailable()

    def declines(self, call):
        problem = _kernel_declines(call, self.name, "cuda", self.dtypes)
        return problem or _cuda_arch_problem(reference._device_key(call.device).index)

    def _op(self):
        return torch.ops.fastshap.shapley


class TritonBackend(Backend):
    """The Triton kernels (fastshap/triton_shapley.py), imported on first use."""

    name = "triton"
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    module = "fastshap.triton_shapley"

    def unavailable(self):
        return _triton_unavailable(self.module)

    def declines(self, call):
        interpreted = os.environ.get("TRITON_INTERPRET") == "1"
        device_type = "cpu" if interpreted and call.device.type == "cpu" else "cuda"
        return _kernel_declines(call, self.name, device_type, self.dtypes)

    def _op(self):
        return importlib.import_module(self.module).shapley


# What makes the compiled CUDA kernels or Triton unavailable does not change within a process (a build, an
# install, a device, an environment variable read at import): asked once, not on every call.
@functools.cache
def _cuda_unavailable() -> str | None:
    if not _extension.LOADED:
        return f"the compiled extension fastshap._C did not load ({_extension.LOAD_ERROR})"
    if not _extension.has_kernel("shapley", "CUDA"):
        return "fastshap._C was built without its CUDA kernels (see FASTSHAP_BUILD_CUDA in the README)"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    return None


def runs_on(arch_list: str, capability: tuple) -> bool | None:
    """Whether code built for TORCH_CUDA_ARCH_LIST `arch_list` (e.g. "8.0,9.0+PTX") runs on a GPU of compute
    `capability` (major, minor): machine code for M.m runs on M.m' with m' >= m; PTX for M.m on any later
    GPU (compiled when the module loads). None when the list is not made of such numbers (e.g. "Hopper")."""
    entries = [e.strip() for e in arch_list.replace(";", ",").replace(" ", ",").split(",") if e.strip()]
    try:
        parsed = [(tuple(int(x) for x in e.removesuffix("+PTX").split(".")), e.endswith("+PTX")) for e in entries]
    except ValueError:
        return None
    if not parsed or any(len(version) != 2 for version, _ in parsed):
        return None
    return any(
        (version[0] == capability[0] and version[1] <= capability[1]) or (ptx and tuple(capability) >= version)
        for version, ptx in parsed
    )


@functools.cache
def _cuda_arch_problem(device: int) -> str | None:
    """Why the compiled CUDA kernels cannot run on GPU `device`, or None (asked once per device): without
    this, the first launch fails with "no kernel image is available"."""
    arches = _extension.build_info().get("cuda_arch", "")
    capability = torch.cuda.get_device_capability(device)
    if runs_on(arches, capability) is False:
        major, minor = capability
        return (
            f"fastshap._C's CUDA kernels were compiled for {arches}, which cannot run on this sm_{major}{minor} "
            f"GPU; rebuild with TORCH_CUDA_ARCH_LIST including {major}.{minor} (or an earlier one with +PTX)"
        )
    return None


@functools.cache
def _triton_unavailable(module: str) -> str | None:
    try:
        importlib.import_module("triton")
    except ImportError as exc:
        return f"Triton is not installed ({exc})"
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return "no CUDA device (on CPU, Triton runs only with TRITON_INTERPRET=1 set before it is imported)"
    try:
        importlib.import_module(module)
    except Exception as exc:  # e.g. an older torch whose triton_op rejects our registration
        return f"the Triton kernels did not import ({type(exc).__name__}: {exc})"
    return None


BACKENDS = {b.name: b for b in (TorchBackend(), CppBackend(), CudaBackend(), TritonBackend())}

#: Preference of backend="auto", fastest first, per device type.
AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpp", "torch")}


def why_not(name: str, call: Call) -> str | None:
    backend = BACKENDS[name]
    return backend.unavailable() or backend.declines(call)


def select(name: str, call: Call) -> Backend:
    if name != "auto":
        if name not in BACKENDS:
            raise ValueError(
                f"fastshap: unknown backend {name!r}; choose from 'auto', {', '.join(map(repr, BACKENDS))}"
            )
        reason = why_not(name, call)
        if reason:
            raise BackendError(f"fastshap: backend {name!r} cannot run this call: {reason}")
        return BACKENDS[name]
    reasons = []
    for candidate in AUTO_ORDER.get(call.device.type, ("torch",)):
        reason = why_not(candidate, call)
        if reason is None:
            return BACKENDS[candidate]
        reasons.append(f"{candidate}: {reason}")
    raise BackendError("fastshap: no backend can run this call:\n  " + "\n  ".join(reasons))


def available() -> dict:
    """{backend name: None if it works here, else why not} (for fastshap.info)."""
    return {name: b.unavailable() for name, b in BACKENDS.items()}
