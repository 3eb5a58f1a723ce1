"""The GPU launch path as torch.compile traces it, without a GPU: run as a script in a process where
TRITON_INTERPRET is unset (tests/kernels/test_triton.py does). make_fx over fake CUDA tensors runs the Triton op's
implementation with wrap_triton enabled, so every launch goes through torch's tracing of user Triton
kernels (its kernel side table, the grid, the arguments it accepts: it rejects a num_ctas argument, for
one) and must come out as one triton_kernel_wrapper_mutation node. Covers the fixed tile, the autotuner,
and the autotuner's recorded choice, for the fused and the streaming kernel. Prints one line per trace.
"""

import sys

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

from fastshap import triton_shapley as ts


class _Always(dict):
    """_CHOSEN as after an eager run: every key has a recorded config (the first candidate)."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def get(self, key, default=None):
        return self.config


def main() -> int:
    assert not ts.INTERPRETED, "run without TRITON_INTERPRET"
    with FakeTensorMode():
        feats = [torch.empty(64, 16, device="cuda"), torch.empty(64, 24, device="cuda")]
        labels = torch.zeros(64, dtype=torch.long, device="cuda")
        heads = {
            "fused concat": ("concat", [torch.empty(5, 40, device="cuda"), torch.empty(5, device="cuda")]),
            "fused mlp": (
                "mlp",
                [
                    torch.empty(8, 40, device="cuda"),
                    torch.empty(8, device="cuda"),
                    torch.empty(5, 8, device="cuda"),
                    torch.empty(5, device="cuda"),
                ],
            ),
            "streaming concat": ("concat", [torch.empty(1000, 40, device="cuda"), torch.empty(1000, device="cuda")]),
        }
    some_config = ts._fused_configs(64, 32, 16, 4, 32)[0]
    chosen = ts._CHOSEN
    for name, (kind, params) in heads.items():
        for mode in ("fixed", "autotuner", "recorded choice"):
            ts.AUTOTUNE = mode != "fixed"
            if mode == "recorded choice":
                config = some_config if name.startswith("fused") else ts._streaming_configs(2, 1000, 1000, 0)[0]
                ts._CHOSEN = _Always(config)
            try:
                graph = make_fx(
                    lambda *xs: ts._shapley_impl(list(xs[:2]), kind, list(xs[2:-1]), [], xs[-1], "paper"),
                    tracing_mode="fake",
                )(*feats, *params, labels)
            finally:
                ts._CHOSEN = chosen
            calls = [str(node.target) for node in graph.graph.nodes if node.op == "call_function"]
            launches = [c for c in calls if "triton_kernel_wrapper" in c]
            assert len(launches) == 1, (name, mode, calls)
            print(name, mode, launches[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
