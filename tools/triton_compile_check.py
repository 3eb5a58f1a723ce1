"""The Triton kernels compiled for a GPU without one: every launch of a few shapes (each with several of its
autotuning configs) compiled by Triton for sm_90 offline and assembled by its bundled ptxas, which reports
registers and spill stores. Run as a script in a process where TRITON_INTERPRET is unset (tests/kernels/
test_triton.py does: the interpreter accepts programs the compiler rejects). Prints one line per compiled
launch: what, registers, spill bytes.
"""

import os
import re
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The test support modules (oracle, cases, triton_cases).
sys.path[:0] = [os.path.join(ROOT, "tests"), ROOT]

from triton_cases import Case  # noqa: E402

#: The launches compiled (kernel, case, MLP hidden width).
COMPILE_CASES = [
    ("fused", Case(2, 31, 64, "concat", "fp32", "contig", "none", "paper"), 24),
    ("fused", Case(3, 31, 64, "mlp", "bf16", "T", "shared", "probability", weights="same"), 64),
    ("fused", Case(3, 31, 64, "decision", "fp16", "contig", "sample", "accuracy"), 24),
    ("streaming", Case(9, 101, 64, "mlp", "fp32", "strided", "sample", "paper"), 128),
    ("streaming", Case(5, 101, 64, "decision", "fp32", "contig", "none", "paper"), 24),
    # wide footprints (WIDE_HEADS): n = 5 with C = 101, the MLP with H = 256
    ("fused", Case(5, 101, 64, "concat", "fp32", "contig", "none", "probability"), 24),
    ("fused", Case(2, 31, 64, "mlp", "bf16", "contig", "shared", "paper", weights="same"), 256),
]


def compile_offline(arch: int = 90):
    """Compile every COMPILE_CASES launch with each of its autotuning configs for sm_<arch> (no GPU needed:
    Triton's bundled ptxas) and return [(what, registers, spill bytes)]. Run in a process where
    TRITON_INTERPRET is unset."""
    import triton
    from kernel_cases import head_params
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton_cases import make_inputs, op_kind

    from fastshap import _triton_kernels as kernels
    from fastshap import head_kinds, triton_shapley

    assert not triton_shapley.INTERPRETED, "run without TRITON_INTERPRET"
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    codes = {
        torch.float32: "*fp32",
        torch.float16: "*fp16",
        torch.bfloat16: "*bf16",
        torch.int64: "*i64",
        torch.float64: "*fp64",
    }
    results = []
    for which, case, hidden in COMPILE_CASES:
        feats, head, labels, baselines = make_inputs(case, "cpu", hidden=hidden)
        head_kind = op_kind(case)
        params = head_params(head_kind, head.fc if case.head == "linear" else head)
        if head_kind != "mlp":
            params = params[:2] + [None, None]
        phi = torch.empty(case.B, case.n)
        stats = torch.zeros(4, case.n, dtype=torch.float64)
        plan_args = (
            head_kinds.get(head_kind).code,
            feats,
            *params,
            baselines or [],
            labels,
            case.benefit,
            phi,
            stats,
        )
        if which == "fused":
            args, meta, tuning = triton_shapley._fused_plan(*plan_args)
            fn = kernels.fused_kernel
            configs = triton_shapley._fused_configs(*tuning)
            launches = [
                (dict(meta, **c.kwargs), c.num_warps, c.num_stages) for c in {configs[0], configs[-2], configs[-1]}
            ]
        else:
            args, meta, tuning, _ = triton_shapley._streaming_plan(*plan_args)
            fn = kernels.streaming_kernel
            configs = triton_shapley._streaming_configs(*tuning)
            launches = [(dict(meta, **c.kwargs), c.num_warps, 2) for c in configs]
        for meta_c, warps, stages in launches:
            values = dict(zip(fn.arg_names, args), **meta_c)
            signature, constants, attrs = {}, {}, {}
            for i, name in enumerate(fn.arg_names):  # what the JIT specializes on: None, ints == 1, multiples of 16
                v = values[name]
                if v is None or name in meta_c or (not isinstance(v, torch.Tensor) and v == 1):
                    signature[name], constants[name] = "constexpr", v
                elif isinstance(v, torch.Tensor):
                    signature[name], attrs[(i,)] = codes[v.dtype], [["tt.divisibility", 16]]
                else:
                    signature[name] = "i32"
                    if v % 16 == 0:
                        attrs[(i,)] = [["tt.divisibility", 16]]
            src = ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)
            compiled = triton.compile(
                src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps, "num_stages": stages}
            )
            with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
                f.write(compiled.asm["ptx"])
                f.flush()
                report = subprocess.run(
                    [ptxas, "-v", f"--gpu-name=sm_{arch}a", f.name, "-o", os.devnull],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stderr
            regs = int(re.search(r"Used (\d+) registers", report).group(1))
            spill = int(re.search(r"(\d+) bytes spill stores", report).group(1))
            tiles = {k: meta_c[k] for k in ("BLOCK_B", "BLOCK_D", "BLOCK_K", "MB") if k in meta_c}
            results.append((f"{which} {case.id} {tiles} warps={warps}", regs, spill))
    return results


def main() -> int:
    for what, regs, spill in compile_offline():
        print(what, regs, spill)
    return 0


if __name__ == "__main__":
    sys.exit(main())
