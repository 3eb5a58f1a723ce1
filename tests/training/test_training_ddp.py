"""DDP: two gloo processes on the CPU give the same phi table and the same re-sampling as one process."""

import numpy as np
import pytest
import torch
import torch.distributed as dist

from fastshap_train.engine import Trainer
from fastshap_train.launch import spawn_local
from fastshap_train.testing import tiny_config

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not built into this torch",
)

MODES = ("epoch", "online")


def test_two_processes_match_one(tmp_path):
    # 96 samples, global batch 16: both ranks see 48 rows in batches of 8, forming the same global batches.
    opts = dict(method="sample-level", epochs=1, warmup=1, syn_samples=96, batch_size=16)
    singles = []
    for mode in MODES:
        t = Trainer(tiny_config(tmp_path / f"one-{mode}", valuation=mode, **opts))
        t.fit()
        t.close()
        singles.append(t)
    results = tmp_path / "ranks"
    results.mkdir()
    # Both valuation modes in one spawn (starting processes is most of the cost here), and a Greedy run: its
    # curation steps leave parameters out of the loss, which DDP must be told of or it stops the run.
    greedy = tiny_config(
        tmp_path / "two-greedy",
        method="greedy",
        epochs=3,
        greedy_start=0,
        greedy_epsilon=0,
        syn_samples=96,
        batch_size=16,
    )
    spawn_local(
        2, [*(tiny_config(tmp_path / f"two-{mode}", valuation=mode, **opts) for mode in MODES), greedy], str(results)
    )
    greedy_history = torch.load(results / "run2_rank0.pt", weights_only=False)["history"]
    assert len(greedy_history) == 3
    assert any(v > 0 for row in greedy_history for k, v in row.items() if k.startswith("greedy_curation_steps")), (
        greedy_history
    )

    for k, (mode, single) in enumerate(zip(MODES, singles)):
        one = np.load(tmp_path / f"one-{mode}" / "phi" / "epoch_000.npz")["phi"]
        two = np.load(tmp_path / f"two-{mode}" / "phi" / "epoch_000.npz")["phi"]
        assert not np.isnan(one).any(), mode
        assert np.array_equal(one, two), mode

        ranks = [torch.load(results / f"run{k}_rank{r}.pt", weights_only=False) for r in range(2)]
        # every rank holds the full gathered table and re-samples from it identically
        for r in ranks:
            assert np.array_equal(r["phi"], one), mode
            for key in ("index", "keep", "mask"):
                assert torch.equal(r["plan"][key], single.plan.state_dict()[key]), (mode, key)
        assert len(single.plan) > 96  # the plan for the next epoch did re-sample
        a, b = single.history[0], ranks[0]["history"][0]
        assert a["test_acc"] == b["test_acc"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
