"""fastshap's Lightning callback with the real Trainer on the CPU: every epoch trains exactly its plan's
rows, alone and under DDP on two gloo processes."""

import collections
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning", reason="the [integrations] extra is not installed")
import run_lightning  # noqa: E402  (this folder's script: the toy Lightning run)

HERE = Path(__file__).parent


def _counter(rows):
    return collections.Counter(map(tuple, rows))


def test_every_epoch_trains_the_whole_plan():
    trainer, recorder = run_lightning.train(epochs=3, samples=90, batch_size=16)
    epochs = recorder.epochs
    assert trainer.reload_dataloaders_every_n_epochs == 1  # set by the callback
    assert len(epochs[0]["plan"]) == 90 and len(epochs[1]["plan"]) > 90 and len(epochs[2]["plan"]) > 90
    for entry in epochs:
        assert _counter(entry["seen"]) == _counter(entry["plan"])  # each plan row once, nothing else
        assert entry["batches"] == math.ceil(len(entry["plan"]) / 16)
    assert all(entry.get("phi_matches_local", True) for entry in epochs[:2])
    assert len(recorder.resampling.history) == 2  # no valuation after the last epoch


def test_ddp_ranks_train_one_plan_built_from_all_values(tmp_path):
    command = [sys.executable, str(HERE / "run_lightning.py"), "--out", str(tmp_path), "--devices", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    for epoch, (a, b) in enumerate(zip(ranks[0]["epochs"], ranks[1]["epochs"])):
        assert a["plan"] == b["plan"], epoch  # one plan on every rank
        plan, seen = _counter(a["plan"]), _counter(a["seen"] + b["seen"])
        assert not plan - seen, epoch  # every row of the plan trained on
        # DistributedSampler: ceil(rows / 2) each, the odd one out repeated from the start of the order
        assert len(a["seen"]) == len(b["seen"]) == math.ceil(len(a["plan"]) / 2), epoch
        if epoch < 2:
            assert a["phi_matches_local"] and b["phi_matches_local"]
    assert len(ranks[0]["epochs"][1]["plan"]) > 90
