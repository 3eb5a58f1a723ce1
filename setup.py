"""Builds the compiled part of fastshap: ``fastshap._C``.

The CPU kernels (csrc/*.cpp, csrc/cpu/*.cpp) are always built. The CUDA kernels (csrc/cuda/*.cu) are
built when FASTSHAP_BUILD_CUDA=1, or, with the variable unset, when both a CUDA toolkit and a CUDA build
of torch are found. We never decide by torch.cuda.is_available(): a GPU-less build box must still build
the CUDA part when it has the toolkit, and say so.

Environment:
  FASTSHAP_BUILD_CUDA   1 / 0 / unset (auto)
  CUDA_HOME             toolkit root; defaults to /usr/local/cuda when it holds bin/nvcc
  TORCH_CUDA_ARCH_LIST  architectures for nvcc (default "8.0;9.0+PTX")
  MAX_JOBS              parallel compile jobs (ninja)
  NVCC_FLAGS, CXX_FLAGS extra flags appended to nvcc / the C++ compiler
  FASTSHAP_DEBUG=1      -O0 -g builds
"""

import glob
import os
import shutil
import sys

from setuptools import setup


def _find_cuda_home():
    """The toolkit root. torch guesses it from `which nvcc`, which is wrong when nvcc is a wrapper script."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return home
    for candidate in ("/usr/local/cuda",):
        if os.path.exists(os.path.join(candidate, "bin", "nvcc")):
            return candidate
    nvcc = shutil.which("nvcc")
    if nvcc:
        return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    return None


# Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME at import time.
_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))
# Paths below (sources, the build folder) are relative to the project root, wherever setup.py is run from.
os.chdir(ROOT)
DEBUG = os.environ.get("FASTSHAP_DEBUG", "0") == "1"


def _want_cuda():
    flag = os.environ.get("FASTSHAP_BUILD_CUDA")
    toolkit = bool(_cuda_home) and os.path.exists(os.path.join(_cuda_home, "bin", "nvcc"))
    torch_cuda = torch.version.cuda is not None
    if flag == "0":
        return False, "FASTSHAP_BUILD_CUDA=0"
    if flag == "1":
        if not toolkit:
            sys.exit("FASTSHAP_BUILD_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the toolkit root")
        if not torch_cuda:
            sys.exit("FASTSHAP_BUILD_CUDA=1 but the installed torch is a CPU-only build")
        return True, "FASTSHAP_BUILD_CUDA=1"
    if toolkit and torch_cuda:
        return True, f"auto: toolkit at {_cuda_home} and torch built with CUDA {torch.version.cuda}"
    why = "no CUDA toolkit found" if not toolkit else "torch is a CPU-only build"
    return False, f"auto: {why}"


def _sources(*patterns):
    """Source files relative to the project root (setuptools wants relative paths; see the chdir below)."""
    return sorted(path for pattern in patterns for path in glob.glob(pattern, root_dir=ROOT))


def _extension():
    sources = _sources("csrc/*.cpp", "csrc/cpu/*.cpp")
    cuda_sources = _sources("csrc/cuda/*.cu")
    if not sources:
        sys.exit(f"no C++ sources under {ROOT}/csrc: an incomplete source tree or archive")
    build_cuda, reason = _want_cuda()
    if build_cuda and not cuda_sources:
        if os.environ.get("FASTSHAP_BUILD_CUDA") == "1":
            sys.exit(f"FASTSHAP_BUILD_CUDA=1 but there are no CUDA sources under {ROOT}/csrc/cuda")
        build_cuda, reason = False, f"{reason}, but no CUDA sources under csrc/cuda"

    cxx = ["-O0", "-g"] if DEBUG else ["-O3"]
    # No -std flag: torch.utils.cpp_extension picks the standard its headers need (C++20 for torch 2.14).
    cxx += ["-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    cxx += os.environ.get("CXX_FLAGS", "").split()
    # The extension records how it was built, so `python -m fastshap.info` can show it.
    macros = [("FASTSHAP_WITH_CUDA", "1" if build_cuda else "0")]
    args = dict(
        name="fastshap._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
        define_macros=macros,
        py_limited_api=False,
    )
    if build_cuda:
        # +PTX: newer GPUs (sm_100, sm_120) compile the sm_90 PTX when the module loads instead of failing
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        arch = os.environ["TORCH_CUDA_ARCH_LIST"]
        # No --use_fast_math: it flushes subnormals to zero (FTZ), and the kernels promise the CPU kernel's bits
        # (their divisions are __fdiv_rn and their exponentials double precision: nothing needs it).
        nvcc = ["-O0", "-g", "-G"] if DEBUG else ["-O3"]
        nvcc += ["--expt-relaxed-constexpr", "-lineinfo"]
        nvcc += os.environ.get("NVCC_FLAGS", "").split()
        # ";" separates build_info fields, so the list is recorded with commas.
        macros.append(("FASTSHAP_CUDA_ARCH_LIST", '"' + arch.replace(";", ",") + '"'))
        args["sources"] = sources + cuda_sources
        ext = CUDAExtension(extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **args)
    else:
        ext = CppExtension(extra_compile_args={"cxx": cxx}, **args)

    print("fastshap build configuration:")
    print(f"  torch          {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"  CPU kernels    {len(sources)} source files")
    print(f"  CUDA kernels   {'yes' if build_cuda else 'no'} ({reason}; {len(cuda_sources)} .cu files)")
    if build_cuda:
        print(f"  CUDA_HOME      {_cuda_home}")
        print(f"  arch list      {os.environ['TORCH_CUDA_ARCH_LIST']}")
    print(f"  MAX_JOBS       {os.environ.get('MAX_JOBS', '(ninja default)')}")
    print(f"  debug          {DEBUG}")
    return ext


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
