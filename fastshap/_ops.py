"""Fake (meta) kernels of the compiled fastshap:: ops, so they trace under torch.compile and FakeTensor."""

from __future__ import annotations

import torch

from fastshap import _extension


def _fake_outputs(features):
    n, batch = len(features), features[0].shape[0]
    f = features[0]
    return f.new_empty((batch, n), dtype=torch.float32), f.new_empty((4, n), dtype=torch.float32)


if _extension.LOADED:

    @torch.library.register_fake("fastshap::shapley_concat")
    def _concat_fake(features, weight, bias, baselines, labels, benefit):
        return _fake_outputs(features)

    @torch.library.register_fake("fastshap::shapley_decision")
    def _decision_fake(features, weight, bias, baselines, labels, benefit):
        return _fake_outputs(features)

    @torch.library.register_fake("fastshap::shapley_mlp")
    def _mlp_fake(features, weight1, bias1, weight2, bias2, baselines, labels, benefit):
        return _fake_outputs(features)
