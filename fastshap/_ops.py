"""The fake (meta) kernels of the compiled ops ``fastshap::shapley`` and ``fastshap::shapley_sampled``, so that
they trace under torch.compile and FakeTensor."""

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

    if hasattr(torch.ops.fastshap, "shapley_sampled"):  # an extension built before the sampled op lacks it

        @torch.library.register_fake("fastshap::shapley_sampled")
        def _shapley_sampled_fake(features, head, params, baselines, labels, benefit, orders):
            """phi (B, n), stderr (B, n) and stats (4, n) float32, after the sampled op's memory guards (any n;
            orders (P, 2, n) int64 on the features' device: its values are the kernel's to check)."""
            shape = check_op(features, head, params, baselines, labels, benefit, max_modalities=None)
            f = features[0]
            if orders.dim() != 3 or orders.shape[0] < 1 or tuple(orders.shape[1:]) != (2, shape.n):
                raise ValueError(f"fastshap: orders must be (P >= 1, 2, {shape.n}) int64, got {list(orders.shape)}")
            if orders.dtype != torch.int64:
                raise ValueError(f"fastshap: orders must be int64, got {orders.dtype}")
            if orders.device != f.device:
                raise ValueError(f"fastshap: orders are on {orders.device}, features on {f.device}")
            phi = f.new_empty((shape.batch, shape.n), dtype=torch.float32)
            return phi, torch.empty_like(phi), f.new_empty((4, shape.n), dtype=torch.float32)
