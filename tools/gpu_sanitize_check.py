"""The GPU kernels under NVIDIA's compute-sanitizer: what tools/emulation_asan_check.py checks on the CPU,
checked on the device itself, where the barriers, the cp.async waits and the ldmatrix/mma instructions run.

    python tools/gpu_sanitize_check.py                    # each tool in its own compute-sanitizer process
    python tools/gpu_sanitize_check.py --tools memcheck,racecheck
    python tools/gpu_sanitize_check.py --dry-run          # the cases on the CPU, no GPU, no sanitizer

It needs the package built with its CUDA kernels on this machine (bench/gpu_check.sh's build step) and says so
before starting a sanitizer. For each tool the driver starts ``compute-sanitizer --tool T --kernel-name
kns=... python <this file> --run``:
* memcheck (the full case list; the CUDA and Triton kernels): accesses out of bounds or misaligned. The
  caching allocator is off (PYTORCH_NO_CUDA_MEMORY_CACHING=1), so each tensor is an allocation of its own,
  and the inputs lie in storages that end at their last element: a read past a tensor is out of bounds;
* racecheck and synccheck (the quick list; the CUDA kernel only, Triton's generated code is not ours):
  shared-memory hazards, cp.async copies included, and barriers misused;
* initcheck (the quick list; both): reads of device memory never written (global scratch, the stats); also
  of shared memory where the sanitizer has ``--initcheck-address-space`` (2025.4 on, not CUDA 13.0's). The
  inputs reach the device by one host-to-device copy each, which initcheck tracks; a sanitizer without
  ``--initcheck-track-filtered-global-memory`` (before 2026.4) may not track what torch's own kernels wrote
  (the stats' zero fill), so there initcheck is advisory: printed, not failed on.
Sanitizers before 2026.4 are known to report cp.async loads with zero fill as out of bounds; Triton lowers
masked loads to those, so a report naming only fused_kernel / streaming_kernel is suspect until checked.
Each tool's line counts the reports by kernel.

Every case's values are checked too: the CUDA kernel's dyadic staging cases must give the CPU kernel's bits
(every sum exact); the core matrix cases (random values) the CPU kernel's phi outside near-ties and its
counts; the Triton cases the torch backend's phi outside near-ties (tests/triton_cases.py's rule). A wrong
value is reported and the run goes on. Exit status: 0 when every tool ran clean, 1 when a tool reported or
a value was wrong, 2 when the check cannot run here (no compute-sanitizer, a device it refuses, as gVisor
machines do, or no CUDA build): that says nothing about the kernels.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The test support modules (oracle, cases, kernel_cases, triton_cases) whose cases these scripts reuse.
sys.path[:0] = [os.path.join(ROOT, "tests"), ROOT]

#: tool -> (the backends whose kernels it checks, whether it runs the quick case list, seconds it may take)
TOOLS = {
    "memcheck": (("cuda", "triton"), False, 200),
    "racecheck": (("cuda",), True, 80),
    "synccheck": (("cuda",), True, 60),
    "initcheck": (("cuda", "triton"), True, 80),
}
#: backend -> substrings of its kernels' names (compute-sanitizer's kernel filter)
KERNELS = {"cuda": ("shapley_kernel",), "triton": ("fused_kernel", "streaming_kernel")}
#: tool -> options it takes when this compute-sanitizer lists them in --help: memcheck pads each allocation
#: (a read just past a tensor cannot land in the next allocation unseen), reports no failed API call that
#: torch or Triton handle themselves, and goes on after an error (later cases still run); initcheck also
#: checks shared memory (a pipeline stage read before its cp.async landed holds uninitialised bytes).
OPTIONAL = {
    "memcheck": (("--padding", "256"), ("--report-api-errors", "no"), ("--destroy-on-device-error", "kernel")),
    "initcheck": (("--initcheck-address-space", "all"),),
}
#: Without it, initcheck may miss what torch's own (filtered-out) kernels wrote: its reports are advisory.
TRACKS_FILTERED = "--initcheck-track-filtered-global-memory"
#: What compute-sanitizer prints where it cannot run (a finding about the machine, not the kernels).
UNSUPPORTED = ("Device not supported", "Unable to find injection library")


def exact_storage(t, device):
    """t's values on `device` with t's strides and storage offset, in a fresh storage that ends at t's last
    element (a read past the tensor is out of bounds), reaching the device by one host-to-device copy. The
    storage's elements outside the view (a misaligned start, the gaps of strided rows) hold NaN, or the
    lowest integer for labels: a kernel that lets one in gives NaN rows."""
    import torch

    span = t.storage_offset() + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) + 1
    fill = float("nan") if t.is_floating_point() else torch.iinfo(t.dtype).min
    flat = torch.full((span,), fill, dtype=t.dtype)
    flat.as_strided(t.shape, t.stride(), t.storage_offset()).copy_(t.cpu())
    return flat.to(device).as_strided(t.shape, t.stride(), t.storage_offset())


def _bitwise(want):
    """The check of a dyadic case: the CPU kernel's phi and counts, bit for bit."""
    import torch

    def check(phi, stats):
        if not torch.equal(phi.cpu(), want[0]):
            raise AssertionError(f"{int((phi.cpu() != want[0]).any(1).sum())} rows differ from the CPU kernel")
        if not torch.equal(stats[1:].cpu(), want[1][1:]):
            raise AssertionError("the stats differ from the CPU kernel's")

    return check


def _near_ties(case, want):
    """The check of a core matrix case (random values: the GPU sums in another order than the CPU's GEMMs):
    phi equal outside near-ties, the non-finite and NaN-row counts exact."""
    import torch
    from kernel_cases import agree_outside_near_ties

    def check(phi, stats):
        agree_outside_near_ties(phi.cpu(), want[0], case, "against the CPU kernel")
        if not torch.equal(stats[2:].cpu(), want[1][2:]):
            raise AssertionError("the non-finite / NaN-row counts differ from the CPU kernel's")

    return check


def cuda_cases(quick, device):
    """(name, op arguments, check(phi, stats), tensor cores) for the CUDA kernel: the staging inputs of
    tests/kernel_cases.py (every layout, FMA and tensor-core first layers, tail steps, partial tiles, both heads
    that stage weights) and, in the full list, the core case matrix (every head, baseline kind, benefit)."""
    import kernel_cases as kc
    import torch

    if quick:
        dtypes, shapes = (torch.float32, torch.bfloat16), (((72, 40), 150), ((70, 42), 33))
    else:
        dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
        shapes = (((72, 40), 150), ((64, 33), 129), ((8, 72), 9), ((70, 42), 33), ((520, 264), 1000))
    for dtype in dtypes:
        for kind in ("concat", "mlp"):
            for dims, batch in shapes:
                head, labels, layouts, want = kc.staging_inputs(dtype, kind, dims, batch)
                variants = [(head, False)]
                if dtype in kc.TC_DTYPES:  # weights of the features' dtype: the tensor-core first layer
                    variants.append((kc.in_dtype(head, dtype), True))
                for h, tensor_cores in variants:
                    h = h.to(device)
                    for layout, feats in layouts.items():
                        if quick and layout == "column-major":
                            continue
                        feats = [exact_storage(f, device) for f in feats]
                        op_kind, params, _ = kc.op_inputs(feats, h, None)
                        name = f"{dtype} {kind} {dims} B={batch} {layout}{' tensor cores' * tensor_cores}"
                        yield (
                            name,
                            (feats, op_kind, list(params), [], exact_storage(labels, device), "accuracy"),
                            _bitwise(want),
                            tensor_cores,
                        )
    if quick:
        return
    for case in kc.PLAN_CASES:
        feats, head, labels, baselines = kc.make_inputs(case)
        op_kind, params, base = kc.op_inputs(feats, head, baselines)
        want = torch.ops.fastshap.shapley(feats, op_kind, list(params), base, labels, case.benefit)
        dfeats = [exact_storage(f, device) for f in feats]
        dbase = None if baselines is None else [exact_storage(b, device) for b in baselines]
        op_kind, params, base = kc.op_inputs(dfeats, head.to(device), dbase)
        yield (
            case.id,
            (dfeats, op_kind, list(params), base, exact_storage(labels, device), case.benefit),
            _near_ties(case, want),
            False,
        )


def triton_cases(quick):
    """(case, MLP hidden width) pairs for the Triton kernels: the fused kernel (fp32 and native bf16 first
    layers, the MLP), its wide footprints (n = 5, C = 101) and the streaming kernel (per-sample baselines
    with decision fusion, C = 1000)."""
    from triton_cases import Case

    cases = [
        (Case(2, 31, 300, "concat", "fp32", "strided", "none", "paper"), 24),
        (Case(2, 31, 300, "concat", "bf16", "contig", "none", "paper", weights="same"), 24),
        (Case(3, 31, 200, "mlp", "bf16", "T", "mixed", "probability", weights="same"), 64),
        (Case(5, 101, 130, "concat", "fp32", "contig", "shared", "accuracy"), 24),
        (Case(5, 101, 70, "decision", "bf16", "strided", "sample", "probability", weights="same"), 24),
        (Case(2, 1000, 50, "concat", "fp32", "contig", "none", "paper"), 24),
    ]
    return cases[:2] + cases[-1:] if quick else cases


def triton_launches(case, hidden, every_config, device):
    """(name, launch()) for one Triton case on exact-size storages: the API call, then (every_config) each
    autotuning candidate launched directly; each launch checks phi against the torch backend and the
    oracle."""
    import torch
    import triton_cases as tt
    from kernel_cases import head_params, kernel_baselines

    import fastshap
    from fastshap import head_kinds, triton_shapley

    feats, head, labels, baselines = tt.make_inputs(case, "cpu", hidden=hidden)
    expected = tt.oracle_for(feats, head, labels, baselines, case.benefit)
    feats = [exact_storage(f, device) for f in feats]
    baselines = None if baselines is None else [exact_storage(b, device) for b in baselines]
    head, labels = head.to(device), exact_storage(labels, device)
    reference = fastshap.modality_shapley(
        feats, head, labels, baselines=baselines, benefit=case.benefit, backend="torch"
    )
    eps = tt.GPU_EPS if device == "cuda" else tt.INTERPRETER_EPS

    def api_call():
        phi = fastshap.modality_shapley(
            feats, head, labels, baselines=baselines, benefit=case.benefit, backend="triton"
        )
        tt.assert_matches(phi, reference, expected, eps, case.id)

    yield case.id, api_call
    if not every_config:
        return
    kind = case.head
    params = head_params(kind, head) + ([None, None] if kind != "mlp" else [])
    base = kernel_baselines(baselines, feats)
    code = head_kinds.get(kind).code
    width = head.fc2.out_features if kind == "mlp" else case.C
    if triton_shapley.uses_fused_kernel(kind, case.n, params[0].shape[0], bool(base) and base[0].dim() == 2):
        _, _, tuning = triton_shapley._fused_plan(code, feats, *params, base, labels, case.benefit, None, None)
        configs, launch = triton_shapley._fused_configs(*tuning), triton_shapley._launch_fused
    else:
        configs = triton_shapley._streaming_configs(case.n, params[0].shape[0], width, code)
        launch = triton_shapley._launch_streaming
    for config in configs:

        def one(config=config):
            phi = torch.full((case.B, case.n), float("nan"), device=device)
            stats = torch.zeros(4, case.n, dtype=torch.float64, device=device)
            launch(code, feats, *params, base, labels, case.benefit, phi, stats, config=config)
            tt.assert_matches(phi, reference, expected, eps, f"{case.id} {config}")

        yield f"{case.id} {config}", one


def run_cases(quick, backends, device):
    """Runs the cases in this process (under a sanitizer, or on the CPU for --dry-run). A wrong value is
    printed and the run goes on; returns (cases run, names of the failed ones)."""
    import torch

    start, done, failed = time.monotonic(), 0, []

    def record(name, fn):
        nonlocal done
        try:
            fn()
        except AssertionError as exc:
            failed.append(name)
            print(f"VALUE FAILED {name}: {exc}", flush=True)
        done += 1
        if done % 50 == 0:
            print(f"... {done} cases, {time.monotonic() - start:.0f} s", flush=True)

    if "cuda" in backends:
        for name, args, check, tensor_cores in cuda_cases(quick, device):

            def one(args=args, check=check, tensor_cores=tensor_cores):
                os.environ["FASTSHAP_CUDA_TENSOR_CORES"] = "1" if tensor_cores else "0"  # read by every launch
                check(*torch.ops.fastshap.shapley(*args))

            record(name, one)
        os.environ.pop("FASTSHAP_CUDA_TENSOR_CORES", None)
        print(f"cuda: {done} cases, {time.monotonic() - start:.0f} s", flush=True)
    if "triton" in backends:
        before = done
        for case, hidden in triton_cases(quick):
            for name, launch in triton_launches(case, hidden, not quick, device):
                record(name, launch)
        print(f"triton: {done - before} launches, {time.monotonic() - start:.0f} s", flush=True)
    if device == "cuda":
        torch.cuda.synchronize()  # a fault of the last launch surfaces here, inside the sanitizer's run
    if failed:
        print(f"{len(failed)} of {done} cases gave wrong values: {'; '.join(failed[:10])}", flush=True)
    return done, failed


def find_sanitizer():
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for root in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        path = os.path.join(root or "", "bin", "compute-sanitizer")
        if root and os.access(path, os.X_OK):
            return path
    return None


def why_not_here(backends):
    """Why the backends' kernels cannot run in this environment (no CUDA build, no GPU, no Triton), or None;
    asked in a process of its own, without a sanitizer."""
    code = (
        "import sys; from fastshap import backends\n"
        f"why = [f'{{b}}: {{r}}' for b in {list(backends)!r} for r in [backends.BACKENDS[b].unavailable()] if r]\n"
        "sys.exit('; '.join(why) or None)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    return None if done.returncode == 0 else (done.stderr.strip()[-2000:] or f"exit {done.returncode}")


def _reports_by_kernel(out):
    """{kernel: reports naming it}: the sanitizer's '=========     at <kernel>...' lines."""
    counts = {}
    for line in out.splitlines():
        found = re.match(r"=+\s+at\s+(.*)", line)
        if found:
            name = next((k for ks in KERNELS.values() for k in ks if k in found.group(1)), "other")
            counts[name] = counts.get(name, 0) + 1
    return counts


def _run(command, env, timeout):
    """(exit status or None on timeout, output): the sanitizer and its target in a session of their own, so
    that a timeout stops both (the target would otherwise keep the GPU busy under the next tool)."""
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out if isinstance(out, str) else (out or b"").decode(errors="replace")


def _show(out):
    """The output's head and tail: the first report and the last lines (the counts, the summary)."""
    print(out if len(out) <= 9000 else f"{out[:3000]}\n[... {len(out) - 8000} characters ...]\n{out[-5000:]}")


def drive(tools, backends, timeout=None, precheck=True):
    """One compute-sanitizer process per tool; prints a line per tool and returns the exit status."""
    sanitizer = find_sanitizer()
    if sanitizer is None:
        print("compute-sanitizer not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
        return 2
    why = why_not_here(backends) if precheck else None
    if why is not None:
        print(f"the kernels cannot run here ({why}): build with CUDA first (bench/gpu_check.sh's build step)")
        return 2
    try:
        known = subprocess.run([sanitizer, "--help"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        known = ""
    status = 0
    for tool in tools:
        checks, quick, seconds = TOOLS[tool]
        ran = [b for b in backends if b in checks]
        if not ran:
            print(f"{tool}: nothing to check with backends {','.join(backends)}")
            continue
        command = [sanitizer, "--tool", tool, "--error-exitcode", "3", "--print-limit", "30"]
        for option in OPTIONAL.get(tool, ()):
            command += list(option) if option[0] in known else []
        for kernel in (k for b in ran for k in KERNELS[b]):
            command += ["--kernel-name", f"kns={kernel}"]
        command += [sys.executable, os.path.abspath(__file__), "--run", "--backends", ",".join(ran)]
        command += ["--quick"] if quick else []
        advisory = tool == "initcheck" and TRACKS_FILTERED not in known
        env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1", FASTSHAP_TRITON_AUTOTUNE="0")
        print(f"### {tool}: {' '.join(command)}", flush=True)
        start = time.monotonic()
        code, out = _run(command, env, timeout or seconds)
        seconds_taken = time.monotonic() - start
        if any(u in out for u in UNSUPPORTED):
            _show(out)
            print(f"{tool}: compute-sanitizer cannot run on this machine ({seconds_taken:.0f} s)")
            return 2
        counts = "; ".join(line.strip() for line in out.splitlines() if line.startswith(("cuda:", "triton:")))
        summary = "; ".join(line.strip("= ") for line in out.splitlines() if "SUMMARY" in line)
        by_kernel = _reports_by_kernel(out)
        if code == 0:
            print(f"{tool}: clean, {seconds_taken:.0f} s; {counts}; {summary}", flush=True)
            continue
        _show(out)
        what = (
            "TIMEOUT"
            if code is None
            else "REPORTED (exit 3)"
            if code == 3
            else f"RUN FAILED (exit {code}: see VALUE FAILED lines or the traceback)"
        )
        note = " (advisory: this sanitizer does not track memory that filtered-out kernels wrote)" if advisory else ""
        print(f"{tool}: {what}, {seconds_taken:.0f} s; reports by kernel: {by_kernel or 'none'}{note}", flush=True)
        status = status if advisory and code == 3 else 1
    return status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated: " + ", ".join(TOOLS))
    parser.add_argument("--backends", default="cuda,triton", help="comma-separated: cuda, triton")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per tool (default: each tool's own)")
    parser.add_argument("--run", action="store_true", help="run the cases in this process (what each tool runs)")
    parser.add_argument("--quick", action="store_true", help="the short case list")
    parser.add_argument("--dry-run", action="store_true", help="the cases on the CPU (no sanitizer, no GPU)")
    parser.add_argument("--no-precheck", action="store_true", help=argparse.SUPPRESS)  # tests of the driver
    args = parser.parse_args(argv)
    backends = [b for b in args.backends.replace(" ", "").split(",") if b]
    tools = [t for t in args.tools.replace(" ", "").split(",") if t]
    if not set(backends) <= set(KERNELS) or not set(tools) <= set(TOOLS):
        parser.error(f"unknown backend or tool: {args.backends!r}, {args.tools!r}")
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports Triton
        os.environ.setdefault("FASTSHAP_TRITON_AUTOTUNE", "0")
        done, failed = run_cases(args.quick, backends, "cpu")
        print(f"dry run: {done} cases or launches on the CPU, {len(failed)} wrong")
        return 1 if failed else 0
    if args.run:
        return 1 if run_cases(args.quick, backends, "cuda")[1] else 0
    return drive(tools, backends, args.timeout, precheck=not args.no_precheck)


if __name__ == "__main__":
    sys.exit(main())
