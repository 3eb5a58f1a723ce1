"""The examples run as users run them (tiny sizes), and fastshap's part of each stays small; fastshap imports
without the training frameworks, and their integrations name the extra to install."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
EXAMPLES = {
    "plain_loop.py": None,
    "hf_trainer.py": "transformers",
    "lightning_loop.py": "lightning",
}
MARK = "# [fastshap]"


def fastshap_lines(path: Path) -> list:
    """The code lines marked as fastshap's part (the docstring's mention of the mark is not code)."""
    return [line for line in path.read_text().splitlines() if MARK in line and f"``{MARK}``" not in line]


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_runs_and_fastshaps_part_is_small(name):
    if EXAMPLES[name]:
        pytest.importorskip(EXAMPLES[name], reason="the [integrations] extra is not installed")
    path = ROOT / "examples" / name
    lines = fastshap_lines(path)
    assert 5 <= len(lines) <= 15, lines
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, str(path), "--samples", "96", "--epochs", "3", "--batch-size", "32"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # every example reports the plans it built: copies were added after epochs 0 and 1
    plans = [int(m) for m in re.findall(r"next plan (\d+) rows", done.stdout)]
    assert len(plans) >= 2 and all(rows > 96 for rows in plans[:2]), done.stdout


def test_fastshap_imports_without_the_frameworks():
    code = """
import sys
sys.modules["transformers"] = None  # as if not installed
sys.modules["lightning"] = None
import fastshap, fastshap.resampling, fastshap.capture, fastshap.integrations
assert "transformers" not in sys.modules or sys.modules["transformers"] is None
for name in ("huggingface", "lightning"):
    try:
        __import__("fastshap.integrations." + name)
    except ImportError as exc:
        assert "fastshap-modality[integrations]" in str(exc), exc
    else:
        raise AssertionError(name + " imported without its framework")
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
