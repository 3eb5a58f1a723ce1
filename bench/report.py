"""Markdown tables from benchmark result files (the pytest-benchmark JSON that bench/ writes).

    python bench/report.py                          # the newest file in bench/results/
    python bench/report.py FILE [FILE ...] [-o report.md]

Times are medians (GPU: the CUDA-synchronised median of triton.testing.do_bench, or CUDA events). Ratios
are per sample against the plain head forward of the same case (CPU) or against fastshap's torch backend
and the decomposed torch alternative on the same device (GPU; end-to-end rows only: a CUDA-graph row is
GPU time, which no torch row measures). Rows timed on fewer samples than the case (slow loops, Captum) are
marked "*" and scaled to the case's batch per sample.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"

PROVIDER_ORDER = (
    "plain_forward",
    "linear_precat",
    "partial_gemms",
    "fastshap_cpp",
    "fastshap_torch",
    "fastshap_triton",
    "fastshap_triton_checked",
    "fastshap_triton_graph",
    "triton_op",
    "fastshap_cuda",
    "fastshap_cuda_graph",
    "fastshap_cuda_tc",
    "fastshap_cuda_tc_graph",
    "decomposed_torch",
    "naive_batched",
    "authors_loop",
    "balancemm_loop",
    "captum",
)
LABELS = {
    "plain_forward": "plain forward",
    "linear_precat": "Linear, pre-cat",
    "partial_gemms": "partial GEMMs",
    "fastshap_cpp": "fastshap cpp",
    "fastshap_torch": "fastshap torch",
    "fastshap_triton": "fastshap triton",
    "fastshap_triton_checked": "fastshap triton, checked",
    "fastshap_triton_graph": "fastshap triton, CUDA graph",
    "triton_op": "triton op, no API checks",
    "fastshap_cuda": "fastshap cuda",
    "fastshap_cuda_graph": "fastshap cuda, CUDA graph",
    "fastshap_cuda_tc": "fastshap cuda, tensor cores",
    "fastshap_cuda_tc_graph": "fastshap cuda, tensor cores, CUDA graph",
    "decomposed_torch": "decomposed torch",
    "naive_batched": "naive batched",
    "authors_loop": "authors' loop",
    "balancemm_loop": "BalanceMM loop",
    "captum": "Captum",
}


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2f}×" if x < 10 else f"{x:.0f}×"


def seconds(bench: dict) -> float:
    gpu_ms = bench["extra_info"].get("gpu_ms")
    return gpu_ms * 1e-3 if gpu_ms is not None else bench["stats"]["median"]


def per_batch(bench: dict) -> float:
    """Median time scaled to the case's batch (rows timed on a subset are scaled per sample)."""
    info = bench["extra_info"]
    return seconds(bench) * info["batch"] / info.get("batch_timed", info["batch"])


def case_key(info: dict) -> tuple:
    return (
        info.get("suite", "?"),
        info.get("head", "?"),
        info.get("dtype", "?"),
        info.get("n", 0),
        info.get("classes", 0),
        info.get("hidden") or 0,
        info.get("dim", 0),
        info.get("batch", 0),
    )


def provider_rank(name: str) -> tuple:
    return (PROVIDER_ORDER.index(name) if name in PROVIDER_ORDER else len(PROVIDER_ORDER), name)


def busy(info: dict) -> bool:
    """Whether others loaded the machine: load before the run, or more than the run's own threads at its end."""
    start, end = info.get("loadavg_start"), info.get("loadavg_end")
    own = info.get("torch_threads") or 1
    return bool((start and start[0] > 0.5) or (end and end[0] > own + 0.5))


def header(data: dict, path: Path) -> list:
    machine = data.get("machine_info", {})
    info = machine.get("bench", {})
    commit = data.get("commit_info", {})
    git = info.get("git", {})
    commit_id = (commit.get("id") or git.get("id") or "?")[:12]
    dirty = " (dirty tree)" if commit.get("dirty", git.get("dirty")) else ""
    date = info.get("date_utc") or data.get("datetime", "?")
    cpu = info.get("cpu_model", machine.get("cpu", {}).get("brand_raw", "?"))
    cores, threads = info.get("cpu_usable", "?"), info.get("torch_threads", "?")
    load = f"load average at start {info.get('loadavg_start')}, at end {info.get('loadavg_end')}"
    python = info.get("python", machine.get("python_version", "?"))
    versions = f"torch {info.get('torch', '?')}, triton {info.get('triton')}, captum {info.get('captum')}"
    lines = [
        f"Source: `{path}`",
        "",
        f"- date (UTC): {date}; commit {commit_id}{dirty}",
        f"- CPU: {cpu}, {cores} usable cores, torch threads {threads}; {load}",
        f"- python {python}, {versions}, pytest-benchmark {info.get('pytest_benchmark')}",
    ]
    gpu = info.get("gpu")
    if gpu:
        peak = gpu.get("peak_bandwidth_gbs")
        sm = str(gpu.get("capability", "?")).replace(".", "")
        bandwidth = f"{peak:.0f} GB/s" if peak else "unknown"
        lines.append(
            f"- GPU: {gpu.get('name')} (sm_{sm}, {gpu.get('memory_gib')} GiB), CUDA {gpu.get('cuda_runtime')}, "
            f"data-sheet HBM bandwidth {bandwidth}"
        )
    backends = info.get("fastshap", {}).get("backends")
    if backends:
        lines.append("- fastshap backends: " + "; ".join(f"{k}: {v}" for k, v in backends.items()))
    if busy(info):
        lines.append(
            "- **note: the machine was busy during the run** (see the load average): absolute times are noisy; "
            "compare ratios within the run, and re-run on a quiet machine for final figures"
        )
    return lines


def cpu_suite_table(benches: list) -> list:
    """One row per case, one column per provider: time at the case's batch and ratio to the plain forward."""
    cases: dict = {}
    for b in benches:
        cases.setdefault(case_key(b["extra_info"]), {})[b["extra_info"]["provider"]] = b
    providers = sorted({p for row in cases.values() for p in row}, key=provider_rank)
    lines = [
        "| n | B | " + " | ".join(LABELS.get(p, p) for p in providers) + " |",
        "|---|---|" + "---|" * len(providers),
    ]
    starred = False
    for key in sorted(cases, key=lambda k: (k[3], k[7])):
        row = cases[key]
        plain = row.get("plain_forward")
        base = per_batch(plain) if plain else None
        cells = []
        for p in providers:
            b = row.get(p)
            if b is None:
                cells.append("")
                continue
            t = per_batch(b)
            info = b["extra_info"]
            star = "*" if info.get("batch_timed", info["batch"]) < info["batch"] else ""
            starred |= bool(star)
            flag = " ⚠" if info.get("mismatch") else ""
            cells.append(f"{fmt_time(t)}{star} ({fmt_ratio(t / base) if base else '-'}){flag}")
        lines.append(f"| {key[3]} | {key[7]} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: median time for the whole batch (× the plain forward of the same case, per sample).")
    if starred:
        timed = sorted(
            {
                (LABELS.get(b["extra_info"]["provider"]), b["extra_info"]["batch_timed"])
                for b in benches
                if b["extra_info"].get("batch_timed", b["extra_info"]["batch"]) < b["extra_info"]["batch"]
            }
        )
        lines.append(
            "\\* timed on the first samples only and scaled per sample: "
            + ", ".join(f"{name} on {rows}" for name, rows in timed)
            + "."
        )
    return lines


def cpu_targets(benches: list) -> list:
    """The issue's targets for the cpp backend, measured in this run (information, not a gate)."""
    main = {}
    for b in benches:
        info = b["extra_info"]
        if info.get("suite") == "cpu-main":
            main.setdefault(info["n"], {})[info["provider"]] = per_batch(b)
    if not main:
        return []
    lines = [
        "| n | cpp / plain forward (target ≤ 1.3, moonshot ≤ 1.0) | cpp / Linear pre-cat (same target) "
        "| naive batched / cpp (target ≥ 8 at n=2, ≥ 60 at n=5) | decomposed torch / cpp "
        "| partial GEMMs share of cpp |",
        "|---|---|---|---|---|---|",
    ]

    def within(r):  # the forward-cost target, against either yardstick
        return "" if r is None else (" met" if r <= 1.3 else f" missed by {r / 1.3:.2f}×")

    for n in sorted(main):
        row = main[n]
        cpp, gemm = row.get("fastshap_cpp"), row.get("partial_gemms")
        ratio = {
            p: (row[p] / cpp if p in ("naive_batched", "decomposed_torch") else cpp / row[p])
            for p in ("plain_forward", "linear_precat", "naive_batched", "decomposed_torch")
            if cpp and row.get(p)
        }
        goal = {2: 8, 5: 60}.get(n)
        naive = ratio.get("naive_batched")
        v2 = "" if naive is None or goal is None else (" met" if naive >= goal else f" missed by {goal / naive:.2f}×")
        share = f"{gemm / cpp:.0%} GEMMs, {1 - gemm / cpp:.0%} walk + overhead" if cpp and gemm else "-"
        lines.append(
            f"| {n} | {fmt_ratio(ratio.get('plain_forward'))}{within(ratio.get('plain_forward'))} "
            f"| {fmt_ratio(ratio.get('linear_precat'))}{within(ratio.get('linear_precat'))} "
            f"| {fmt_ratio(naive)}{v2} | {fmt_ratio(ratio.get('decomposed_torch'))} | {share} |"
        )
    lines += [
        "",
        "The plain forward includes a torch.cat of the features, whose cost varies with the allocator "
        "(a fresh 42 MB buffer at n = 5): the pre-concatenated Linear is the stricter yardstick.",
    ]
    return lines


def case_label(info: dict) -> str:
    _, head, dtype, n, classes, hidden, dim, batch = case_key(info)
    return f"{head}{f' H={hidden}' if hidden else ''} n={n} C={classes} d={dim} B={batch} {dtype}"


def gpu_table(benches: list, copy_gbs: float | None, peak_gbs: float | None) -> list:
    lines = [
        "| case | provider | median | GB/s | % of data-sheet peak | % of measured copy "
        "| speed-up vs fastshap torch | vs decomposed torch | host time / call | check |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    cases: dict = {}
    for b in benches:
        cases.setdefault(case_key(b["extra_info"]), {})[b["extra_info"]["provider"]] = b
    for key in sorted(cases, key=lambda k: (k[1], k[3], k[2])):
        row = cases[key]
        torch_t = seconds(row["fastshap_torch"]) if "fastshap_torch" in row else None
        decomposed_t = seconds(row["decomposed_torch"]) if "decomposed_torch" in row else None
        label = case_label(row[next(iter(row))]["extra_info"])
        for p in sorted(row, key=provider_rank):
            b = row[p]
            info, t = b["extra_info"], seconds(b)
            gbs = info.get("bytes", 0) / t / 1e9 if info.get("bytes") else None
            pct_peak = f"{gbs / peak_gbs:.0%}" if gbs and peak_gbs else "-"
            pct_copy = f"{gbs / copy_gbs:.0%}" if gbs and copy_gbs else "-"
            graph = p.endswith("_graph")  # GPU time: against end-to-end torch rows it would flatter
            speed = fmt_ratio(torch_t / t) if torch_t and not graph else "-"
            speed2 = fmt_ratio(decomposed_t / t) if decomposed_t and not graph else "-"
            check = (
                "-" if "mismatch" not in info else ("ok" if not info["mismatch"] else f"⚠ {info['mismatch']} differ")
            )
            if info.get("near_tie_samples"):
                check += f" ({info['near_tie_samples']} near ties)"
            check += timer_disagreement(b)
            host = fmt_time(info["host_us"] * 1e-6) if info.get("host_us") is not None else "-"
            lines.append(
                f"| {label} | {LABELS.get(p, p)} | {fmt_time(t)} | {f'{gbs:.0f}' if gbs else '-'} "
                f"| {pct_peak} | {pct_copy} | {speed} | {speed2} | {host} | {check} |"
            )
    return lines


#: How far the two GPU timers may disagree before a row is flagged.
TIMER_TOLERANCE = 0.2


def timer_disagreement(bench: dict) -> str:
    """A flag when the cross-check (pytest-benchmark's rounds, each call followed by a synchronize) and the
    reported do_bench median differ by more than TIMER_TOLERANCE: do_bench clears L2 between calls and
    overlaps the host with the GPU, so for host-bound rows the two measure different things."""
    gpu_ms, sync = bench["extra_info"].get("gpu_ms"), (bench.get("stats") or {}).get("median")
    if not gpu_ms or not sync:
        return ""
    ratio = sync * 1e3 / gpu_ms
    if abs(ratio - 1) <= TIMER_TOLERANCE:
        return ""
    return f"; ⚠ synchronised rounds: {fmt_time(sync)} ({ratio:.2f}× the median)"


def gpu_targets(benches: list, copy_gbs: float | None, peak_gbs: float | None) -> list:
    """The Triton and CUDA issues' targets, measured in this run (information, not a gate): at n = 2 the
    linear head's end-to-end bandwidth (>= 70% of the data-sheet peak) and speed-up (>= 3x the torch
    backend); for the other cases, time within 2x of the bandwidth bound (bytes / measured copy). Each backend
    twice: end to end (the Python call, host time included) and its GPU time (the same call replayed from a
    CUDA graph), since bandwidth is the GPU's and the host's share depends on the machine's CPU."""
    cases: dict = {}
    for b in benches:
        cases.setdefault(case_key(b["extra_info"]), {})[b["extra_info"]["provider"]] = b
    lines = []
    for key in sorted(cases, key=lambda k: (k[1], k[3], k[2])):
        row = cases[key]
        torch_t = seconds(row["fastshap_torch"]) if "fastshap_torch" in row else None
        decomposed_t = seconds(row["decomposed_torch"]) if "decomposed_torch" in row else None
        info0 = row[next(iter(row))]["extra_info"]
        two = info0.get("n") == 2 and info0.get("head") != "mlp"
        for p in (
            "fastshap_triton",
            "fastshap_triton_graph",
            "fastshap_cuda",
            "fastshap_cuda_graph",
            "fastshap_cuda_tc",
            "fastshap_cuda_tc_graph",
        ):
            if p not in row:
                continue
            info, t = row[p]["extra_info"], seconds(row[p])
            gbs = info.get("bytes", 0) / t / 1e9 if info.get("bytes") else None
            graph = p.endswith("_graph")
            # the torch backend is timed end to end only: no ratio for GPU-time rows
            speed = torch_t / t if torch_t and not graph else None
            if two:
                share = gbs / peak_gbs if gbs and peak_gbs else None
                first = "-" if share is None else f"{share:.0%} of peak: {'met' if share >= 0.7 else 'missed'}"
                second = "-" if speed is None else f"{fmt_ratio(speed)}: {'met' if speed >= 3 else 'missed'}"
            else:
                bound = info.get("bytes", 0) / (copy_gbs * 1e9) if copy_gbs and info.get("bytes") else None
                first = "-" if bound is None else f"{t / bound:.1f}× the bound: {'met' if t <= 2 * bound else 'missed'}"
                second = "-" if speed is None else fmt_ratio(speed)
            timed = "GPU time (CUDA graph)" if graph else "end to end"
            third = fmt_ratio(decomposed_t / t) if decomposed_t and not graph else "-"
            lines.append(f"| {case_label(info)} | {LABELS.get(p, p)} | {timed} | {first} | {second} | {third} |")
    if not lines:
        return []
    return [
        "## Targets (this run, defer_checks)",
        "",
        "n = 2 linear: ≥ 70% of the data-sheet HBM bandwidth and ≥ 3× the torch backend; n = 5 and the MLP: "
        "within 2× of the bandwidth bound (bytes / measured copy). End to end: one Python call after another, "
        "host time included; GPU time: the same call replayed from a CUDA graph (what the GPU spends, as "
        "under torch.compile's CUDA graphs or when the host runs ahead).",
        "",
        "| case | backend | timed | bandwidth target | vs torch backend | vs decomposed torch |",
        "|---|---|---|---|---|---|",
        *lines,
        "",
    ]


def checks(benches: list) -> list:
    checked = [b for b in benches if "mismatch" in b["extra_info"]]
    if not checked:
        return []
    bad = [b for b in checked if b["extra_info"]["mismatch"]]
    ties = sum(b["extra_info"].get("near_tie_samples", 0) for b in checked)
    lines = [
        f"Value checks: {len(checked) - len(bad)} of {len(checked)} checked rows agree with fastshap on every sample "
        "outside near ties "
        f"({ties} near-tie samples in all, where summation order may flip an argmax)."
    ]
    for b in bad:
        lines.append(
            f"- ⚠ {b['name']}: {b['extra_info']['mismatch']} samples differ "
            f"({b['extra_info'].get('checked_against', '?')})"
        )
    return lines


def autotuning(benches: list, copy_gbs: float | None) -> list:
    """The Triton kernel alone: the autotuner's own timing of each candidate tile (do_bench medians of the
    kernel launch, no host work between launches), against the same bytes as the op's row."""
    rows = []
    for b in benches:
        info = b.get("extra_info", {})
        for tuning in info.get("autotuning") or []:
            chosen = tuning.get("chosen", "")
            times = tuning.get("candidates", {}).get(chosen)
            if not times:
                continue
            ms = times[0]
            gbs = info.get("bytes", 0) / (ms * 1e-3) / 1e9
            share = f"{gbs / copy_gbs:.0%}" if copy_gbs else "-"
            tile = ", ".join(
                part for part in chosen.split(", ") if not part.endswith("None") and "num_ctas" not in part
            )
            kernel = "streaming" if "BLOCK_K" in chosen else "fused"
            rows.append(
                f"| {case_label(info)} | {kernel} | {tile} | {ms * 1e3:.0f} µs | {gbs:.0f} | {share} | "
                f"{len(tuning['candidates'])} |"
            )
    if not rows:
        return []
    return [
        "## Triton kernel alone (autotuner timings)",
        "",
        "GB/s: the op's bytes over the kernel's time. The streaming kernel reads the partial products that "
        "torch GEMMs computed before it, so its row leaves those GEMMs out.",
        "",
        "| case | kernel | chosen tile | kernel median | GB/s | % of measured copy | candidates |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def report(path: Path) -> str:
    data = json.loads(path.read_text())
    benches = data.get("benchmarks", [])
    out = ["# fastshap benchmarks", ""] + header(data, path) + [""]
    suites: dict = {}
    for b in benches:
        if "provider" in b.get("extra_info", {}):
            suites.setdefault(b["extra_info"].get("suite", "?"), []).append(b)
    titles = {
        "cpu-main": "CPU, B = 4096, d_i = 512, C = 31, fp32, concat-linear head",
        "cpu-sweep-n": "CPU, sweep over n (B = 4096)",
        "cpu-sweep-B": "CPU, sweep over B (n = 2)",
    }
    if "cpu-main" in suites:
        out += ["## Targets of the cpp backend (this run)", ""] + cpu_targets(suites["cpu-main"]) + [""]
    info = data.get("machine_info", {}).get("bench", {})
    copy_gbs = None
    for b in benches:
        if b.get("extra_info", {}).get("copy_gbs"):
            copy_gbs = b["extra_info"]["copy_gbs"]
    peak = (info.get("gpu") or {}).get("peak_bandwidth_gbs")
    for suite in sorted(suites, key=lambda s: (not s.startswith("cpu-main"), s)):
        out += [f"## {titles.get(suite, suite)}", ""]
        if suite.startswith("gpu"):
            out += gpu_targets(suites[suite], copy_gbs, peak)
            out += gpu_table(suites[suite], copy_gbs, peak)
            out += [
                "",
                f"Bandwidth: bytes moved (see bench/README.md) / median time; measured device-to-device copy: "
                f"{f'{copy_gbs:.0f} GB/s' if copy_gbs else 'not measured'}; "
                f"data-sheet peak: {f'{peak:.0f} GB/s' if peak else 'unknown'}.",
            ]
        else:
            out += cpu_suite_table(suites[suite])
        out.append("")
    others = [
        b for b in benches if "provider" not in b.get("extra_info", {}) and "copy_gbs" not in b.get("extra_info", {})
    ]
    if others:
        out += ["## Other benchmarks", "", "| benchmark | median | extra info |", "|---|---|---|"]
        for b in others:
            extra = ", ".join(f"{k}={v}" for k, v in b.get("extra_info", {}).items())
            out.append(f"| {b['name']} | {fmt_time(seconds(b))} | {extra} |")
        out.append("")
    notes = sorted(
        {
            (b["extra_info"]["provider"], b["extra_info"].get("note", ""))
            for b in benches
            if "provider" in b.get("extra_info", {})
        },
        key=lambda x: provider_rank(x[0]),
    )
    if notes:
        out += (
            ["## What each row measures", ""]
            + [f"- **{LABELS.get(p, p)}**: {note}" for p, note in notes if note]
            + [""]
        )
    out += autotuning(benches, copy_gbs)
    out += checks(benches)
    unavailable: dict = {}
    for u in data.get("unavailable") or []:
        unavailable.setdefault((u.get("provider"), u.get("reason")), []).append(u.get("group", ""))
    if unavailable:
        out += ["", "## Not run here", ""]
        out += [
            f"- {LABELS.get(p, p)}: {reason} (cases: {', '.join(groups)})"
            for (p, reason), groups in unavailable.items()
        ]
    return "\n".join(out).rstrip() + "\n"


def newest_result() -> Path:
    files = sorted(RESULTS_DIR.glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        sys.exit(f"report.py: no result files in {RESULTS_DIR}; run `make bench` first or name a file")
    return files[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, help="result JSON files (default: the newest in bench/results/)")
    parser.add_argument("-o", "--output", type=Path, help="write the Markdown here instead of stdout")
    args = parser.parse_args(argv)
    files = args.files or [newest_result()]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        print(f"report.py: no such result file: {', '.join(missing)} (did the benchmarks run?)", file=sys.stderr)
        return 1
    text = "\n".join(report(p) for p in files)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
