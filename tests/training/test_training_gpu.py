"""The trainer on a GPU: mixed precision, online and epoch valuation, input removal (marked gpu)."""

import numpy as np
import pytest
import torch

import fastshap
from fastshap_train import valuation as valuation_module
from fastshap_train.engine import Trainer
from fastshap_train.testing import tiny_config

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(
    "valuation, removal, backend",
    [("online", "feature", "torch"), ("epoch", "input", "torch"), ("online", "feature", "auto")],
)
def test_amp_training_with_valuation_on_cuda(tmp_path, monkeypatch, valuation, removal, backend):
    seen = []
    real = fastshap.modality_shapley

    def spy(features, head, labels, **kwargs):
        seen.append((features[0].device.type, features[0].dtype))
        return real(features, head, labels, **kwargs)

    monkeypatch.setattr(valuation_module.fastshap, "modality_shapley", spy)
    t = Trainer(
        tiny_config(
            tmp_path,
            device="cuda",
            amp="auto",
            method="sample-level",
            valuation=valuation,
            removal=removal,
            backend=backend,
            syn_modalities="audio,visual",
            syn_size=32,
            syn_samples=96,
            epochs=2,
            warmup=1,
            batch_size=32,
        )
    )
    assert t.amp_dtype in (torch.bfloat16, torch.float16)
    t.fit()
    t.close()
    assert seen and all(dev == "cuda" for dev, _ in seen)
    assert any(dtype == t.amp_dtype for _, dtype in seen)  # features straight from the autocast forward
    for epoch in (0, 1):
        table = np.load(tmp_path / "phi" / f"epoch_{epoch:03d}.npz")["phi"]
        assert not np.isnan(table).any() and set(np.unique(table)) <= {-0.5, 0.0, 0.5, 1.0, 1.5}
    assert t.history[1]["resampled"] > 0 and np.isfinite(t.history[-1]["test_acc"])
