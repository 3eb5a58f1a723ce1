"""fastshap's transformers.Trainer callback with the real Trainer on the CPU: every epoch trains exactly its
plan's rows (the issue's Trainer trained 512 rows of a 1,151-row plan), alone and on two gloo ranks."""

import collections
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the [integrations] extra is not installed")
import run_hf  # noqa: E402  (this folder's script: the toy Trainer run)

HERE = Path(__file__).parent


def _counter(rows):
    return collections.Counter(map(tuple, rows))


def test_every_epoch_trains_the_whole_plan(tmp_path):
    recorder = run_hf.train(str(tmp_path), epochs=3, samples=90, batch_size=16)
    epochs = recorder.epochs
    assert len(epochs) == 3 and epochs[0]["rows"] == 90
    assert epochs[1]["rows"] > 90 and epochs[2]["rows"] > 90  # copies were added: the plans grew
    for entry in epochs:
        assert _counter(entry["seen"]) == _counter(entry["plan"])  # each plan row once, nothing else
    assert recorder.resampling.history[0]["rows"] == epochs[1]["rows"]
    assert all(entry.get("phi_matches_local", True) for entry in epochs)


def test_a_plan_swapped_without_the_callback_is_cut_short(tmp_path):
    """The issue's failure, kept as a check that the callback's sizing is what makes the difference."""
    epochs = run_hf.train(str(tmp_path), epochs=2, samples=90, batch_size=16, naive=True).epochs
    assert epochs[1]["rows"] > 96 and len(epochs[1]["seen"]) == 96  # 6 batches of 16: the first epoch's count


def test_refuses_gradient_accumulation_and_a_plan_over_max_rows(tmp_path):
    with pytest.raises(ValueError, match="gradient_accumulation_steps=1"):
        run_hf.train(str(tmp_path), epochs=2, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="max_rows"):
        run_hf.train(str(tmp_path), epochs=3, max_rows=91)
    with pytest.raises(ValueError, match="not max_steps"):
        run_hf.train(str(tmp_path), epochs=3, max_steps=5)


def test_data_parallel_ranks_train_one_plan_built_from_all_values(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    command += [str(HERE / "run_hf.py"), "--out", str(tmp_path), "--epochs", "3", "--samples", "90"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    batch, world = 16, 2
    for epoch, (a, b) in enumerate(zip(ranks[0]["epochs"], ranks[1]["epochs"])):
        assert a["plan"] == b["plan"], epoch  # one plan on every rank
        plan, seen = _counter(a["plan"]), _counter(a["seen"] + b["seen"])
        assert not plan - seen, epoch  # every row of the plan trained on
        # accelerate's even batches: each rank takes the same number of full batches, the last ones padded
        # with rows from the start of the epoch's order
        per_rank = math.ceil(math.ceil(len(a["plan"]) / batch) / world) * batch
        assert len(a["seen"]) == len(b["seen"]) == per_rank, epoch
        if epoch < 2:  # the values behind the next plan are every rank's share, gathered
            assert a["phi_matches_local"] and b["phi_matches_local"]
    assert ranks[0]["epochs"][1]["rows"] > 90
