"""Memory safety of the CUDA kernels' block program, without a GPU: run as a script (tests/kernels/test_cuda.py
does, with libasan preloaded). It builds the CPU emulation of csrc/cuda with AddressSanitizer and runs it on
tensors allocated to their exact size, under plans from generous to none: the staging reads whole tiles
(16-byte vectors, the pipelined copies, the tensor-core stages, rows past the batch), and a read outside
a tensor, which the results cannot show (rows past the batch are dropped), is reported here. It is what
compute-sanitizer would check on a GPU. Prints one line per input type and exits 0 when nothing was reported.
"""

import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The test support modules (oracle, cases, kernel_cases, emulation) whose cases these scripts reuse.
sys.path[:0] = [os.path.join(ROOT, "tests"), ROOT]


def main() -> int:
    import emulation as em
    import kernel_cases as kc
    from gpu_sanitize_check import exact_storage

    # -O0: every access stays in the code for ASan to check, and the build takes a fifth of -O1 -g's time
    # (these heavy templates: about 12 s against 62 s a file); -g1 keeps the line tables of the reports.
    asan = ("-O0", "-g1", "-fsanitize=address", "-fno-omit-frame-pointer")
    emu = em.build_emulation("fastshap_cuda_emulation_asan", asan, ("-fsanitize=address",))
    budgets = (em.H100_LIMITS, (1 << 20, 1 << 20, 264), (0, 0, 2))
    runs = 0
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        for kind in ("concat", "mlp"):
            for dims, batch in (((72, 40), 150), ((64, 33), 129), ((8, 72), 9), ((70, 42), 33)):
                head, labels, layouts, want = kc.staging_inputs(dtype, kind, dims, batch)
                plans = [(head, limits) for limits in budgets]
                if dtype in kc.TC_DTYPES:  # the tensor-core first layer too
                    plans += [(kc.in_dtype(head, dtype), limits) for limits in em.TC_BUDGETS]
                for head, limits in plans:
                    for name, feats in layouts.items():
                        # Each layout (strides, misaligned start) in a storage that ends at its last element.
                        feats = [exact_storage(f, "cpu") for f in feats]
                        phi, _ = em.emulate(emu, feats, head, labels, None, "accuracy", limits)
                        assert torch.equal(phi, want[0]), (dtype, kind, dims, name, limits)
                        runs += 1
        print(f"{dtype}: {runs} runs, no report")
    # Every head, baselines of each kind, odd sizes: the oracle matrix's cases under the same budgets.
    for case in kc.PLAN_CASES:
        feats, head, labels, baselines = kc.make_inputs(case)
        for limits in budgets:
            em.emulate(emu, feats, head, labels, baselines, case.benefit, limits)
            runs += 1
    print(f"oracle cases: {runs} runs in all, no report")
    return 0


if __name__ == "__main__":
    sys.exit(main())
