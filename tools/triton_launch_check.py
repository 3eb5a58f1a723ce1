"""The GPU launch path of fastshap.triton_shapley, without a GPU: run as a script in a process where
TRITON_INTERPRET is unset (tests/kernels/test_triton.py does). ``torch.library.wrap_triton`` is replaced by a
recorder that checks each launch the way Triton would bind it (every kernel argument given exactly once,
for every autotuning config; a grid of positive ints) instead of running it. Prints one line per launch.

The interpreter tests run the kernels but not this host code (autotuner, wrap_triton, grids, launch
options); without this check a mistake there shows up only on a GPU.
"""

import sys

import torch
import torch.library
from triton.runtime.autotuner import Autotuner

from fastshap import head_kinds, heads
from fastshap import triton_shapley as ts

LAUNCH_OPTIONS = ("num_warps", "num_stages")
#: Launch options torch.compile's tracing of wrap_triton rejects when passed to a kernel call.
UNTRACEABLE = ("num_ctas",)
launches = []


class Recorder:
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            fn, configs = self.kernel, [None]
            if isinstance(fn, Autotuner):
                fn.best_config = fn.configs[-1]  # what a tuning run leaves behind (fastshap reuses it)
                fn, configs = fn.fn, fn.configs
            names = list(fn.arg_names)
            untraceable = set(UNTRACEABLE) & set(kwargs)
            assert not untraceable, f"{untraceable} passed to the launch: torch.compile cannot trace that"
            for config in configs:
                given = dict(kwargs)
                if config is not None:
                    clash = set(config.kwargs) & set(given)
                    assert not clash, f"config and call both set {clash}"
                    given.update(config.kwargs)
                options = {k: given.pop(k) for k in LAUNCH_OPTIONS if k in given}
                assert len(args) <= len(names), f"{len(args)} positional arguments for {len(names)} parameters"
                positional = names[: len(args)]
                assert not set(positional) & set(given), f"given twice: {set(positional) & set(given)}"
                missing = set(names) - set(positional) - set(given)
                unknown = set(given) - set(names)
                assert not missing and not unknown, f"missing {missing}, unknown {unknown}"
                cells = grid(given) if callable(grid) else grid
                assert cells and all(isinstance(c, int) and c > 0 for c in cells), f"grid {cells}"
                launches.append((fn.fn.__name__, cells, options, config is not None))

        return launch


torch.library.wrap_triton = Recorder


def main() -> int:
    assert not ts.INTERPRETED, "run without TRITON_INTERPRET"
    g = torch.Generator().manual_seed(0)
    dims = [5, 7, 3]
    batch = 40
    feats = [torch.randn(batch, d, generator=g) for d in dims]
    labels = torch.randint(0, 4, (batch,), generator=g)
    shared = [torch.randn(d, generator=g) for d in dims]
    cases = [
        ("concat", heads.ConcatLinear(dims, 4), [], "paper"),
        ("decision", heads.DecisionFusion(dims, 4), shared, "probability"),
        ("mlp", heads.ConcatMLP(dims, 8, 4), [], "accuracy"),
        ("concat", heads.ConcatLinear(dims, 1000), [], "paper"),  # partials too wide: streaming kernel
        ("mlp", heads.ConcatMLP(dims, 300, 4), shared, "probability"),
    ]
    for kind, head, base, benefit in cases:
        if kind == "concat":
            params = [head.fc.weight.detach(), head.fc.bias.detach(), None, None]
        elif kind == "decision":
            params = [p.detach() for p in head.packed()] + [None, None]
        else:
            params = [
                head.fc1.weight.detach(),
                head.fc1.bias.detach(),
                head.fc2.weight.detach(),
                head.fc2.bias.detach(),
            ]
        fused = ts.uses_fused_kernel(kind, len(dims), params[0].shape[0], False)
        launch = ts._launch_fused if fused else ts._launch_streaming
        for autotune in (True, False):
            ts.AUTOTUNE = autotune
            tuned = []
            for _ in range(2):  # the second call of a shape launches the autotuner's choice directly
                phi = torch.empty(batch, len(dims))
                stats = torch.zeros(4, len(dims), dtype=torch.float64)
                before = len(launches)
                launch(head_kinds.get(kind).code, feats, *params, base, labels, benefit, phi, stats)
                assert len(launches) > before, f"{kind}: nothing launched"
                tuned.append(launches[-1][3])
            assert tuned == ([True, False] if autotune else [False, False]), (kind, fused, autotune, tuned)
    for name, cells, options, tuned in launches:
        print(name, cells, options, "autotuned" if tuned else "fixed")
    kinds = {name for name, *_ in launches}
    assert kinds == {"fused_kernel", "streaming_kernel"}, kinds
    return 0


if __name__ == "__main__":
    sys.exit(main())
