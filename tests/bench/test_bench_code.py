"""The benchmarks' own code, which CI would not run otherwise: the alternatives compute fastshap's values,
and the GPU benchmark's cases, value checks and report run end to end on the CPU (bench/gpu_cases.py
--dry-run), so that a lent GPU's minutes are not spent finding a broken benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"


@pytest.fixture
def alternatives(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import alternatives

    return alternatives


def test_alternatives_compute_fastshaps_values(alternatives, capsys):
    pytest.importorskip("captum")
    alternatives.sanity(ns=(2, 3), batch=64)  # raises on any disagreement outside near ties
    out = capsys.readouterr().out
    for name in ("decomposed_torch", "decomposed_torch mlp", "naive_batched mlp", "captum", "authors_loop"):
        assert f" {name}: agrees with fastshap" in out


def test_decomposed_alternative_skips_only_what_is_worth_nothing(alternatives):
    """Under the paper benefit the empty coalition is worth 0 and is skipped; under "accuracy" it is
    evaluated (the all-removed prediction can be right)."""
    import torch

    import fastshap

    case = alternatives.make_case(2, 64, dim=8, classes=3, seed=5)
    f, h, y = case.features, case.head, case.labels
    with torch.no_grad():
        torch.nn.init.zeros_(h.weight)  # every coalition predicts the bias's argmax: v(empty) = v(S)
        for benefit in ("paper", "accuracy"):
            got = alternatives.decomposed_torch(f, h, y, benefit)
            assert torch.equal(got, fastshap.modality_shapley(f, h, y, benefit=benefit, backend="torch"))


def test_gpu_benchmark_dry_run_and_report(tmp_path):
    result = tmp_path / "dry.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # Triton rows: unavailable on CPU
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_cases.py"), "--dry-run", "--json", str(result)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {b["extra_info"]["provider"]: b for b in json.loads(result.read_text())["benchmarks"]}
    for provider in ("plain_forward", "fastshap_torch", "decomposed_torch", "naive_batched"):
        assert provider in rows, sorted(rows)
    assert rows["decomposed_torch"]["extra_info"]["mismatch"] == 0
    report = subprocess.run(
        [sys.executable, str(BENCH / "report.py"), str(result)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert report.returncode == 0, report.stderr
    assert "| decomposed torch |" in report.stdout and "vs decomposed torch" in report.stdout


def test_gpu_check_script_parses():
    done = subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
