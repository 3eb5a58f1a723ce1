"""The GPU kernels under NVIDIA's compute-sanitizer: what tests/emulation_asan_check.py checks on the CPU,
checked on the device itself, where the barriers, the cp.async waits and the ldmatrix/mma instructions run.

    python tests/gpu_sanitize_check.py                    # each tool in its own compute-sanitizer process
    python tests/gpu_sanitize_check.py --tools memcheck,racecheck
    python tests/gpu_sanitize_check.py --dry-run          # the cases on the CPU, no GPU, no sanitizer

For each tool the driver starts ``compute-sanitizer --tool T --kernel-name kns=... python <this file> --run``:
* memcheck (the full case list; the CUDA and Triton kernels): accesses out of bounds or misaligned. The
  caching allocator is off (PYTORCH_NO_CUDA_MEMORY_CACHING=1), so each tensor is an allocation of its own,
  and the features lie in storages that end at their last element: a read past a tensor is out of bounds;
* racecheck and synccheck (the quick list; the CUDA kernel only, Triton's generated code is not ours):
  shared-memory hazards, cp.async copies included, and barriers misused;
* initcheck (the quick list; both): reads of device memory never written (global scratch, the stats).

Every case is also checked for its values: the CUDA kernel must give the CPU kernel's bits (dyadic inputs, so
every sum is exact); the Triton kernels the torch backend's phi outside near-ties (tests/test_triton.py's
rule). Exit status: 0 when every tool ran clean, 1 when a tool reported or a value was wrong, 2 when
compute-sanitizer is missing or refuses the device (gVisor machines say "Device not supported"): that says
nothing about the kernels.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

#: tool -> (the backends whose kernels it checks, whether it runs the quick case list)
TOOLS = {
    "memcheck": (("cuda", "triton"), False),
    "racecheck": (("cuda",), True),
    "synccheck": (("cuda",), True),
    "initcheck": (("cuda", "triton"), True),
}
#: backend -> substrings of its kernels' names (compute-sanitizer's kernel filter)
KERNELS = {"cuda": ("shapley_kernel",), "triton": ("fused_kernel", "streaming_kernel")}
#: tool -> options it takes when this compute-sanitizer knows them (read from its --help): memcheck pads each
#: allocation, so that a read just past a tensor cannot land in the next allocation unseen; initcheck also
#: checks shared memory (a pipeline stage read before its copy landed reads uninitialised bytes).
OPTIONAL = {"memcheck": ("--padding", "256"), "initcheck": ("--initcheck-address-space", "all")}
#: What compute-sanitizer prints where it cannot run (a finding about the machine, not the kernels).
UNSUPPORTED = ("Device not supported", "Unable to find injection library", "LibraryNotLoaded")


def exact_storage(t, device):
    """t's values on `device` with t's strides and storage offset, in a fresh storage that ends at t's last
    element (a read past the tensor is out of bounds). The storage's elements outside the view (a misaligned
    start, the gaps of strided rows) hold NaN: a kernel that lets one into a sum gives NaN rows."""
    import torch

    span = t.storage_offset() + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) + 1
    flat = torch.full((span,), float("nan"), dtype=t.dtype, device=device)
    out = flat.as_strided(t.shape, t.stride(), t.storage_offset())
    out.copy_(t.to(device))
    return out


def cuda_cases(quick, device):
    """(name, op, op arguments, expected (phi, stats), tensor cores) for the CUDA kernel: the staging inputs of
    tests/test_cuda.py (every layout, FMA and tensor-core first layers, tail steps, partial tiles, both heads
    that stage weights) and, in the full list, the core case matrix (every head, baseline kind, benefit).
    Expected: the CPU kernel's (phi, stats)."""
    import torch
    import test_cuda as tc

    if quick:
        dtypes, shapes = (torch.float32, torch.bfloat16), (((72, 40), 150), ((70, 42), 33))
    else:
        dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
        shapes = (((72, 40), 150), ((64, 33), 129), ((8, 72), 9), ((70, 42), 33), ((520, 264), 1000))
    for dtype in dtypes:
        for kind in ("concat", "mlp"):
            for dims, batch in shapes:
                head, labels, layouts, want = tc._staging_inputs(dtype, kind, dims, batch)
                variants = [(head, False)]
                if dtype in tc.TC_DTYPES:  # weights of the features' dtype: the tensor-core first layer
                    variants.append((tc._in_dtype(head, dtype), True))
                for h, tensor_cores in variants:
                    h = h.to(device)
                    for layout, feats in layouts.items():
                        if quick and layout == "column-major":
                            continue
                        feats = [exact_storage(f, device) for f in feats]
                        op_kind, params, _ = tc.op_inputs(feats, h, None)
                        name = f"{dtype} {kind} {dims} B={batch} {layout}{' tensor cores' * tensor_cores}"
                        yield (name, f"shapley_{op_kind}", (feats, *params, [], labels.to(device), "accuracy"),
                               want, tensor_cores)
    if quick:
        return
    for case in tc.PLAN_CASES:
        feats, head, labels, baselines = tc.make_inputs(case)
        op_kind, params, base = tc.op_inputs(feats, head, baselines)
        want = getattr(torch.ops.fastshap, f"shapley_{op_kind}")(feats, *params, base, labels, case.benefit)
        dfeats = [exact_storage(f, device) for f in feats]
        dbase = None if baselines is None else [exact_storage(b, device) for b in baselines]
        op_kind, params, base = tc.op_inputs(dfeats, head.to(device), dbase)
        yield case.id, f"shapley_{op_kind}", (dfeats, *params, base, labels.to(device), case.benefit), want, False


def triton_cases(quick):
    """(case, MLP hidden width) pairs for the Triton kernels:
    the fused kernel (fp32 and native bf16 first layers, the MLP), its wide footprints (n = 5, C = 101) and
    the streaming kernel (per-sample baselines with decision fusion, C = 1000)."""
    from test_triton import Case

    cases = [
        (Case(2, 31, 300, "concat", "fp32", "strided", "none", "paper"), 24),
        (Case(2, 31, 300, "concat", "bf16", "contig", "none", "paper", weights="same"), 24),
        (Case(3, 31, 200, "mlp", "bf16", "T", "mixed", "probability", weights="same"), 64),
        (Case(5, 101, 130, "concat", "fp32", "contig", "shared", "accuracy"), 24),
        (Case(5, 101, 70, "decision", "bf16", "strided", "sample", "probability", weights="same"), 24),
        (Case(2, 1000, 50, "concat", "fp32", "contig", "none", "paper"), 24),
    ]
    return cases[:2] + cases[-1:] if quick else cases


def run_triton_case(case, hidden, every_config, device):
    """Runs one Triton case (each autotuning candidate when `every_config`) on exact-size storages and checks
    phi against the torch backend and the oracle; returns the number of launches."""
    import torch
    import fastshap
    import test_triton as tt
    from fastshap import triton_shapley

    feats, head, labels, baselines = tt.make_inputs(case, "cpu", hidden=hidden)
    expected = tt.oracle_for(feats, head, labels, baselines, case.benefit)
    feats = [exact_storage(f, device) for f in feats]
    baselines = None if baselines is None else [exact_storage(b, device) for b in baselines]
    head, labels = head.to(device), labels.to(device)
    reference = fastshap.modality_shapley(feats, head, labels, baselines=baselines, benefit=case.benefit,
                                          backend="torch")
    eps = tt.GPU_EPS if device == "cuda" else tt.INTERPRETER_EPS
    phi = fastshap.modality_shapley(feats, head, labels, baselines=baselines, benefit=case.benefit, backend="triton")
    tt.assert_matches(phi, reference, expected, eps, case.id)
    launches = 1
    if not every_config:
        return launches
    kind = case.head
    params = tt._params(kind, head) + ([None, None] if kind != "mlp" else [])
    base = list(fastshap.api._check_baselines(baselines, feats) or [])
    width = head.fc2.out_features if kind == "mlp" else case.C
    code = triton_shapley._HEADS[kind]
    if triton_shapley.uses_fused_kernel(kind, case.n, params[0].shape[0], bool(base) and base[0].dim() == 2):
        _, _, tuning = triton_shapley._fused_plan(code, feats, *params, base, labels, case.benefit, None, None)
        configs, launch = triton_shapley._fused_configs(*tuning), triton_shapley._launch_fused
    else:
        configs = triton_shapley._streaming_configs(case.n, params[0].shape[0], width, code)
        launch = triton_shapley._launch_streaming
    for config in configs:
        phi = torch.full((case.B, case.n), float("nan"), device=device)
        stats = torch.zeros(4, case.n, dtype=torch.float64, device=device)
        launch(code, feats, *params, base, labels, case.benefit, phi, stats, config=config)
        tt.assert_matches(phi, reference, expected, eps, f"{case.id} {config}")
        launches += 1
    return launches


def run_cases(quick, backends, device):
    """Runs the cases in this process (under a sanitizer, or on the CPU for --dry-run); raises on a wrong value."""
    import torch

    done = 0
    if "cuda" in backends:
        for name, op, args, want, tensor_cores in cuda_cases(quick, device):
            os.environ["FASTSHAP_CUDA_TENSOR_CORES"] = "1" if tensor_cores else "0"  # read by every launch
            phi, stats = getattr(torch.ops.fastshap, op)(*args)
            if not torch.equal(phi.cpu(), want[0]):
                raise AssertionError(f"{name}: {int((phi.cpu() != want[0]).any(1).sum())} rows differ from the CPU kernel")
            if not torch.equal(stats[1:].cpu(), want[1][1:]):
                raise AssertionError(f"{name}: stats differ from the CPU kernel's")
            done += 1
        os.environ.pop("FASTSHAP_CUDA_TENSOR_CORES", None)
        print(f"cuda: {done} cases", flush=True)
    if "triton" in backends:
        launches = sum(run_triton_case(case, hidden, not quick, device)
                       for case, hidden in triton_cases(quick))
        print(f"triton: {launches} launches", flush=True)
        done += launches
    if device == "cuda":
        torch.cuda.synchronize()  # a fault of the last launch surfaces here, inside the sanitizer's run
    return done


def find_sanitizer():
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        path = os.path.join(root or "", "bin", "compute-sanitizer")
        if root and os.access(path, os.X_OK):
            return path
    return None


def drive(tools, backends, timeout):
    """One compute-sanitizer process per tool; prints a line per tool and returns the exit status."""
    sanitizer = find_sanitizer()
    if sanitizer is None:
        print("compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
        return 2
    try:
        known = subprocess.run([sanitizer, "--help"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        known = ""
    status = 0
    for tool in tools:
        checks, quick = TOOLS[tool]
        ran = [b for b in backends if b in checks]
        if not ran:
            print(f"{tool}: nothing to check with backends {','.join(backends)}")
            continue
        command = [sanitizer, "--tool", tool, "--error-exitcode", "3", "--print-limit", "30"]
        if tool in OPTIONAL and OPTIONAL[tool][0] in known:
            command += OPTIONAL[tool]
        for kernel in (k for b in ran for k in KERNELS[b]):
            command += ["--kernel-name", f"kns={kernel}"]
        command += [sys.executable, os.path.abspath(__file__), "--run", "--backends", ",".join(ran)]
        command += ["--quick"] if quick else []
        env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1", FASTSHAP_TRITON_AUTOTUNE="0")
        start = time.monotonic()
        print(f"### {tool}: {' '.join(command)}", flush=True)
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            print(f"{tool}: TIMEOUT after {timeout} s\n{(err.stdout or '')[-3000:]}")
            status = 1
            continue
        out = done.stdout + done.stderr
        seconds = time.monotonic() - start
        if any(u in out for u in UNSUPPORTED):
            print(out[-3000:])
            print(f"{tool}: compute-sanitizer cannot run on this machine ({seconds:.0f} s)")
            return 2
        counts = [line.strip() for line in out.splitlines() if line.startswith(("cuda:", "triton:"))]
        summary = [line for line in out.splitlines() if "ERROR SUMMARY" in line or "RACECHECK SUMMARY" in line]
        if done.returncode == 0:
            print(f"{tool}: clean, {seconds:.0f} s; {'; '.join(counts)}; {'; '.join(summary)}", flush=True)
        else:
            print(out[-6000:])
            print(f"{tool}: REPORTED (exit {done.returncode}), {seconds:.0f} s", flush=True)
            status = 1
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated: " + ", ".join(TOOLS))
    parser.add_argument("--backends", default="cuda,triton", help="comma-separated: cuda, triton")
    parser.add_argument("--timeout", type=int, default=150, help="seconds per tool")
    parser.add_argument("--run", action="store_true", help="run the cases in this process (what each tool runs)")
    parser.add_argument("--quick", action="store_true", help="the short case list")
    parser.add_argument("--dry-run", action="store_true", help="the cases on the CPU (no sanitizer, no GPU)")
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.split(",") if b]
    if not set(backends) <= {"cuda", "triton"} or not set(args.tools.split(",")) <= set(TOOLS):
        parser.error(f"unknown backend or tool: {args.backends!r}, {args.tools!r}")
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports Triton
        os.environ.setdefault("FASTSHAP_TRITON_AUTOTUNE", "0")
        print(f"dry run: {run_cases(args.quick, backends, 'cpu')} cases or launches on the CPU")
        return 0
    if args.run:
        run_cases(args.quick, backends, "cuda")
        return 0
    return drive(args.tools.split(","), backends, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
