"""What `pip install` gets: the source archive (sdist) holds every file a build and the tests need, and the
wheel built from it holds the compiled extension and the trainer's dataset configs (read at run time)."""

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout (the tracked files are what an archive must hold)")
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> Path:
    """An sdist built from a copy of the tracked files (the checkout's build outputs must not leak in)."""
    src = tmp_path_factory.mktemp("src")
    for f in _tracked_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    dist = tmp_path_factory.mktemp("dist")
    env = dict(os.environ, FASTSHAP_BUILD_CUDA="0")
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(dist)],
        cwd=src,
        env=env,
        check=True,
        capture_output=True,
    )
    (archive,) = dist.glob("*.tar.gz")
    return archive


def _members(archive: Path) -> set[str]:
    with tarfile.open(archive) as tar:
        # fastshap_modality-0.1.0/csrc/shapley.h -> csrc/shapley.h
        return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


@pytest.mark.parametrize("folder", ["csrc/", "fastshap_train/", "fastshap/", "tests/", "bench/", "requirements/"])
def test_sdist_holds_every_tracked_file_under(folder, sdist):
    members = _members(sdist)
    missing = [
        f for f in _tracked_files() if f.startswith(folder) and f not in members and not f.startswith("bench/results/")
    ]  # measurements, not sources
    assert not missing, f"the sdist leaves out {missing} (MANIFEST.in)"
    assert not [m for m in members if m.startswith("bench/results/") or m.endswith((".so", ".o", ".pyc"))]


def test_sdist_holds_the_top_level_files(sdist):
    members = _members(sdist)
    for name in ("README.md", "LICENSE", "Makefile", "pyproject.toml", "setup.py"):
        assert name in members


def test_wheel_built_from_the_sdist_holds_the_extension_and_configs(sdist, tmp_path):
    # The path of `pip install fastshap_modality-*.tar.gz`, CPU kernels only (the CUDA part is built by CI).
    env = dict(os.environ, FASTSHAP_BUILD_CUDA="0", PIP_NO_INDEX="1")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(sdist),
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("fastshap/_C") and n.endswith(".so") for n in names)
    configs = sorted(f for f in _tracked_files() if f.startswith("fastshap_train/configs/"))
    assert configs and all(c in names for c in configs)
    assert not [n for n in names if n.startswith(("tests/", "bench/", "csrc/"))]
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)


def test_version_is_the_same_in_the_metadata_and_the_package():
    tomllib = pytest.importorskip("tomllib")
    import fastshap

    with open(ROOT / "pyproject.toml", "rb") as f:
        assert tomllib.load(f)["project"]["version"] == fastshap.__version__


#: `make build` keeps the build's output here (FASTSHAP_BUILD_LOG for a log kept elsewhere).
BUILD_LOG = Path(os.environ.get("FASTSHAP_BUILD_LOG", ROOT / ".venv" / "build.log"))
#: A compiler's warning about one of our files: gcc's "csrc/x.cpp:12:5: warning: ..." and nvcc's front end's
#: "csrc/cuda/x.cuh(12): warning #177-D: ..." (torch's headers live under torch/csrc/: not ours).
_OUR_WARNING = re.compile(r"(^|[\s/])(?<!torch/)csrc/\S+?(:\d+(:\d+)?:|\(\d+\):)\s*(warning|Warning)")


def test_the_build_has_no_warnings_from_our_sources():
    """The C++ and CUDA sources compile without warnings from our own code (gcc -Wall -Wextra, nvcc's front
    end, ptxas): read from the log of the build the tests run against."""
    if not BUILD_LOG.exists():
        pytest.skip(f"no build log at {BUILD_LOG} (`make build` writes it)")
    text = BUILD_LOG.read_text(errors="replace")
    assert "fastshap build configuration" in text, f"{BUILD_LOG} is not a verbose log of our build"
    ours = [line for line in text.splitlines() if _OUR_WARNING.search(line)]
    # ptxas names kernels, not files: any warning of its is about our kernels (stack frames, spills are info).
    ours += [line for line in text.splitlines() if line.lstrip().startswith("ptxas warning")]
    assert not ours, f"{len(ours)} warnings from our sources in {BUILD_LOG}:\n" + "\n".join(ours[:20])


@pytest.mark.parametrize(
    "line,ours",
    [
        ("csrc/cpu/shapley_cpu.cpp:12:5: warning: unused variable 'x' [-Wunused-variable]", True),
        ('/work/csrc/cuda/shapley_tile.cuh(340): warning #177-D: variable "k" was declared but never referenced', True),
        ("In file included from csrc/fastshap.cpp:3:", False),
        ("/venv/include/torch/csrc/api/include/torch/nn/x.h:5:1: warning: deprecated", False),
        ('csrc/cuda/kernels_fp32.cu(8): error: identifier "y" is undefined', False),
    ],
)
def test_the_warning_pattern(line, ours):
    assert bool(_OUR_WARNING.search(line)) == ours
