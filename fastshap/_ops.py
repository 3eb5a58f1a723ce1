"""The fake (meta) kernel of the compiled op ``fastshap::shapley``, so that it traces under torch.compile and
FakeTensor."""

from __future__ import annotations

import torch

from fastshap import _extension
from fastshap._op_checks import check_op

if _extension.LOADED:

    @torch.library.register_fake("fastshap::shapley")
    def _shapley_fake(features, head, params, baselines, labels, benefit):
        """phi (B, n) and stats (4, n) float32, after the compiled op's memory guards (the same ValueErrors).
        The dispatcher also picks this kernel for a real call that mixes in a meta tensor, whose outputs would
        otherwise be uninitialised memory: the device checks refuse it."""
        shape = check_op(features, head, params, baselines, labels, benefit)
        f = features[0]
        return f.new_empty((shape.batch, shape.n), dtype=torch.float32), f.new_empty((4, shape.n), dtype=torch.float32)
