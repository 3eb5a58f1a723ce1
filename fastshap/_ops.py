"""Fake (meta) kernels of the compiled fastshap:: ops, so they trace under torch.compile and FakeTensor."""

from __future__ import annotations

import torch

from fastshap import _extension


def _fake_outputs(features, *others):
    """phi (B, n) and stats (4, n) float32, after the one check a fake kernel can make: every tensor on the
    features' device (ValueError, as the kernels' own check). The dispatcher also picks this kernel for a
    real call that mixes in a meta tensor, whose outputs would otherwise be uninitialised memory."""
    if not features:
        raise ValueError("fastshap: the op needs at least one modality's features")
    f = features[0]
    for name, value in (("features", features), *others):
        for t in value if isinstance(value, (list, tuple)) else [value]:
            if t.device != f.device:
                raise ValueError(
                    f"fastshap: the op's argument {name} is on {t.device}, its features on "
                    f"{f.device}; every tensor argument must be on one device"
                )
    n, batch = len(features), f.shape[0]
    return f.new_empty((batch, n), dtype=torch.float32), f.new_empty((4, n), dtype=torch.float32)


if _extension.LOADED:

    @torch.library.register_fake("fastshap::shapley_concat")
    def _concat_fake(features, weight, bias, baselines, labels, benefit):
        return _fake_outputs(features, ("weight", weight), ("bias", bias), ("baselines", baselines), ("labels", labels))

    @torch.library.register_fake("fastshap::shapley_decision")
    def _decision_fake(features, weight, bias, baselines, labels, benefit):
        return _fake_outputs(features, ("weight", weight), ("bias", bias), ("baselines", baselines), ("labels", labels))

    @torch.library.register_fake("fastshap::shapley_mlp")
    def _mlp_fake(features, weight1, bias1, weight2, bias2, baselines, labels, benefit):
        return _fake_outputs(
            features,
            ("weight1", weight1),
            ("bias1", bias1),
            ("weight2", weight2),
            ("bias2", bias2),
            ("baselines", baselines),
            ("labels", labels),
        )
