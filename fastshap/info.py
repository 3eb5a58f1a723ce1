"""``python -m fastshap.info``: versions, the build configuration and which backends work here."""

from __future__ import annotations

import os
import platform
import sys

import torch

import fastshap
from fastshap import _extension, backends, head_kinds


def tensor_cores_line(info: dict) -> str:
    """FASTSHAP_CUDA_TENSOR_CORES as the CUDA launcher reads it (csrc/cuda/switches.h, on every call):
    unset -> the compiled-in default, "0" / "1" -> off / on, anything else -> every CUDA call raises."""
    switch = os.environ.get("FASTSHAP_CUDA_TENSOR_CORES")
    if switch is not None and switch not in ("0", "1"):
        return (
            f"invalid value {switch!r} of FASTSHAP_CUDA_TENSOR_CORES (expected 0 or 1, or unset): CUDA calls will raise"
        )
    default = info.get("cuda_tensor_cores_default") == "1"
    tensor_cores = default if switch is None else switch == "1"
    why = "by default" if switch is None else f"FASTSHAP_CUDA_TENSOR_CORES={switch}"
    return (
        f"{'on' if tensor_cores else 'off'} for first layers with a head of the features' dtype ({why}; "
        f"FASTSHAP_CUDA_TENSOR_CORES={0 if tensor_cores else 1} to {'leave them' if tensor_cores else 'try them'})"
    )


def head_kinds_line() -> str:
    """The head kinds the compiled op runs (csrc/head_kinds.h), and whether they are fastshap/head_kinds.py's:
    a build from other sources than the Python package's says so here."""
    try:
        compiled = torch.ops.fastshap.head_kinds()
    except (AttributeError, RuntimeError):
        return "unknown (this build has no head_kinds op: rebuild the extension)"
    names = ", ".join(item.split(":")[0] for item in compiled.split(";"))
    if compiled != head_kinds.describe():
        return f"{names} (differ from fastshap/head_kinds.py's: rebuild the extension)"
    return names


def report() -> str:
    lines = [
        f"fastshap            {fastshap.__version__}",
        f"python              {platform.python_version()} ({sys.executable})",
        f"torch               {torch.__version__} (CUDA {torch.version.cuda}, {torch.get_num_threads()} threads)",
    ]
    try:
        import triton

        lines.append(f"triton              {triton.__version__}")
    except ImportError:
        lines.append("triton              not installed")
    if torch.cuda.is_available():
        lines.append(
            f"GPU                 {torch.cuda.get_device_name()} (capability {torch.cuda.get_device_capability()})"
        )
    else:
        lines.append("GPU                 none")
    if _extension.LOADED:
        info = _extension.build_info()
        cuda = "yes, for " + (info.get("cuda_arch") or "?") if info.get("cuda") == "1" else "no"
        lines += [
            "extension           fastshap._C loaded",
            f"  CUDA kernels      {cuda}",
        ]
        if info.get("cuda") == "1":  # the launcher's run-time switches (README), as this process has them
            lines.append(f"  tensor cores      {tensor_cores_line(info)}")
            pipeline = os.environ.get("FASTSHAP_CUDA_PIPELINE") != "0"
            lines.append(f"  cp.async pipeline {'on' if pipeline else 'off (FASTSHAP_CUDA_PIPELINE=0)'}")
        lines += [
            f"  OpenMP            {'yes' if info.get('openmp') == '1' else 'no'}",
            f"  compiler          {info.get('compiler', '?')}",
            f"  head kinds        {head_kinds_line()}",
        ]
    else:
        lines.append(f"extension           not loaded: {_extension.LOAD_ERROR}")
    lines.append("backends")
    for name, reason in backends.available().items():
        lines.append(f"  {name:<8}          {'available' if reason is None else 'unavailable: ' + reason}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
