"""tools/gpu_sanitize_check.py, the compute-sanitizer run of the GPU kernels, without a GPU: its cases run on the
CPU kernels (--dry-run), and its driver reads a sanitizer's outcomes right (a stand-in compute-sanitizer on
PATH): clean, reported, unable to run on the machine, missing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tools import gpu_sanitize_check

SCRIPT = gpu_sanitize_check.__file__


def test_dry_run_builds_and_checks_every_case():
    """Every case of the full list, built as on the GPU (exact-size storages, NaN around views) and checked
    against the CPU kernel's bits (CUDA cases) or the torch backend and the oracle (Triton, interpreted)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, SCRIPT, "--dry-run"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    counts = dict(line.split(": ", 1) for line in done.stdout.splitlines() if line.startswith(("cuda:", "triton:")))
    assert int(counts["cuda"].split()[0]) > 300 and int(counts["triton"].split()[0]) > 20, done.stdout


def test_exact_storage_ends_at_the_last_element():
    import torch

    wide = torch.arange(40.0).reshape(4, 10)
    for t in (wide, wide[:, 1:8], wide.t(), wide[:, ::3]):
        copy = gpu_sanitize_check.exact_storage(t, "cpu")
        assert torch.equal(copy, t) and copy.stride() == t.stride()
        last = copy.storage_offset() + sum((s - 1) * st for s, st in zip(copy.shape, copy.stride()))
        assert copy.untyped_storage().nbytes() == (last + 1) * copy.element_size()
        gaps = copy.untyped_storage().nbytes() // 4 - copy.numel()
        assert (
            int(torch.isnan(torch.frombuffer(bytearray(bytes(copy.untyped_storage())), dtype=torch.float32)).sum())
            == gaps
        )


def _fake_sanitizer(tmp_path, body):
    """A compute-sanitizer on PATH that knows --padding (not --initcheck-address-space), runs `body` (bash)
    and records its arguments."""
    fake = tmp_path / "compute-sanitizer"
    help_text = "Memcheck-specific options:\n  --padding arg (=0)   Size in bytes for padding"
    fake.write_text(
        f'#!/usr/bin/env bash\n[[ $1 == --help ]] && {{ echo "{help_text}"; exit 0; }}\n'
        f'echo "$@" >> {tmp_path}/calls\n{body}\n'
    )
    fake.chmod(0o755)
    return dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}", CUDA_HOME=str(tmp_path / "none"))


@pytest.mark.parametrize(
    "body,status,says",
    [
        ('echo "cuda: 3 cases"; echo "========= ERROR SUMMARY: 0 errors"', 0, "racecheck: clean"),
        (
            'echo "========= Invalid __global__ read of size 16 bytes"; '
            'echo "=========     at fused_kernel+0x120"; exit 3',
            1,
            "memcheck: REPORTED (exit 3), 0 s; reports by kernel: {'fused_kernel': 1}",
        ),
        ('echo "VALUE FAILED case: 3 rows differ"; exit 1', 1, "memcheck: RUN FAILED (exit 1"),
        ('echo "========= Error: Device not supported"; exit 1', 2, "cannot run on this machine"),
    ],
    ids=["clean", "reported", "wrong-values", "unsupported"],
)
def test_driver_reads_the_sanitizer(tmp_path, body, status, says):
    env = _fake_sanitizer(tmp_path, body)
    done = subprocess.run(
        [sys.executable, SCRIPT, "--tools", "memcheck,racecheck", "--no-precheck"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == status, done.stdout + done.stderr
    assert says in done.stdout, done.stdout
    calls = (tmp_path / "calls").read_text().splitlines()
    # memcheck filters both backends' kernels and runs the full list; racecheck only the CUDA kernel, quick.
    assert "--tool memcheck" in calls[0] and "kns=fused_kernel" in calls[0] and "--quick" not in calls[0]
    assert "--padding 256" in calls[0]  # an option this sanitizer's --help lists
    if status != 2:
        assert (
            "--tool racecheck" in calls[1]
            and "kns=fused_kernel" not in calls[1]
            and calls[1].endswith("--run --backends cuda --quick")
        )


def test_driver_leaves_out_options_its_sanitizer_does_not_know(tmp_path):
    env = _fake_sanitizer(tmp_path, "exit 0")
    done = subprocess.run(
        [sys.executable, SCRIPT, "--tools", "initcheck", "--no-precheck"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    call = (tmp_path / "calls").read_text()
    assert "--tool initcheck" in call and "--initcheck-address-space" not in call and "--padding" not in call


@pytest.mark.skipif(os.access("/usr/local/cuda/bin/compute-sanitizer", os.X_OK), reason="this machine has one")
def test_driver_without_a_sanitizer(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable), CUDA_HOME=str(tmp_path))
    done = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "compute-sanitizer not found" in done.stdout, done.stdout + done.stderr


def test_driver_stops_a_tool_past_its_time(tmp_path):
    """The sanitizer and its target are stopped together, and the next tool runs."""
    env = _fake_sanitizer(tmp_path, 'if [[ " $* " == *" memcheck "* ]]; then sleep 60; fi; exit 0')
    done = subprocess.run(
        [sys.executable, SCRIPT, "--tools", "memcheck,synccheck", "--no-precheck", "--timeout", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "memcheck: TIMEOUT" in done.stdout and "synccheck: clean" in done.stdout, done.stdout


def test_initcheck_is_advisory_where_the_sanitizer_cannot_track_filtered_kernels(tmp_path):
    env = _fake_sanitizer(tmp_path, 'echo "=========     at shapley_kernel+0x40"; exit 3')
    done = subprocess.run(
        [sys.executable, SCRIPT, "--tools", "initcheck", "--no-precheck"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0 and "initcheck: REPORTED (exit 3)" in done.stdout and "advisory" in done.stdout, (
        done.stdout
    )


def test_driver_says_when_the_kernels_cannot_run_here(tmp_path):
    """Here (no GPU) the pre-check stops before any sanitizer starts, with exit status 2."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    env = _fake_sanitizer(tmp_path, "exit 0")
    done = subprocess.run(
        [sys.executable, SCRIPT, "--backends", "cuda"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 2 and "cannot run here" in done.stdout, done.stdout + done.stderr
    assert not (tmp_path / "calls").exists()


def test_value_checks_bitwise_for_dyadic_cases_and_near_ties_for_random_ones():
    """Dyadic staging cases must give the CPU kernel's bits; random core-matrix cases (the GPU sums in another
    order) only its phi outside near-ties, and its counts."""
    import kernel_cases as kc
    import torch

    case = next(c for c in kc.PLAN_CASES if c.benefit == "paper" and c.B >= 32)
    feats, head, labels, baselines = kc.make_inputs(case)
    kind, params, base = kc.op_inputs(feats, head, baselines)
    phi, stats = torch.ops.fastshap.shapley(feats, kind, params, base, labels, case.benefit)
    near_ties = gpu_sanitize_check._near_ties(case, (phi, stats))
    near_ties(phi, stats)
    decided = kc.expected_for(case).decided(kc.compute_eps(kc.DTYPES[case.dtype]))
    wrong = phi.clone()
    wrong[int(decided.nonzero()[0])] += 1
    with pytest.raises(AssertionError, match="decided samples differ"):
        near_ties(wrong, stats)
    counts = stats.clone()
    counts[2, 0] += 1
    with pytest.raises(AssertionError, match="counts differ"):
        near_ties(phi, counts)
    bitwise = gpu_sanitize_check._bitwise((phi, stats))
    bitwise(phi, stats)
    tiny = phi.clone()
    tiny[0, 0] = torch.nextafter(tiny[0, 0], torch.tensor(float("inf")))
    with pytest.raises(AssertionError, match="1 rows differ"):
        bitwise(tiny, stats)
