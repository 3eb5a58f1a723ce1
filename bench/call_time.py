"""Time of one ``fastshap.modality_shapley`` call at small batches, against a plain forward of the same head.

At the batch sizes of a training step a call costs mostly fixed, per-call work (the public API's checks,
picking a backend, the dispatch, allocating outputs, reading the value checks back), not arithmetic. These
rows time whole calls on CPU tensors: a concat-linear head ``nn.Linear(n * 64, 10)``, fp32 features
``(B, 64)`` per modality, the paper benefit, zero baselines, at B = 1, 8, 64 and n = 2, 5:

* ``plain forward``: the yardstick, ``head(torch.cat(features, 1))`` under ``torch.no_grad()`` (one
  prediction of the batch, as a model runs its head).
* ``cpp`` / ``torch``: ``modality_shapley(features, head, labels, backend=...)`` as a user calls it (no
  surrounding ``no_grad``), checked (the value checks read back at the end of the call); ``defer_checks``:
  with a ``fastshap.DeferredChecks`` instead (what a training loop passes).
* ``triton, launch stubbed``: ``backend="triton"`` on CPU tensors with Triton's kernel launch replaced by a
  no-op (``host_path.stubbed_launch``): the host's share of a GPU call, without Triton's launcher or the CUDA
  launches of the torch ops around the kernel.

Every round times every row once (``reps`` calls each, the plain forward first), so a busy neighbour on a
shared machine slows the yardstick and the rows alike; each row's figure is its best round. Ratios are
over the plain forward of the same case in the same run.

    .venv/bin/python bench/call_time.py                   # Markdown table; best of 5 rounds x 500 calls
    .venv/bin/python bench/call_time.py --rounds 15 --out bench/results/host-path-DATE-after.md
    .venv/bin/python -m pytest bench/test_bench_call.py --benchmark-only      # the same rows, pytest-benchmark

Run without TRITON_INTERPRET (the Triton rows time the GPU launch path).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable

import harness
import host_path
import torch

BATCHES = (1, 8, 64)
MODALITIES = (2, 5)
WIDTH, CLASSES = 64, 10
PLAIN = "plain forward"
#: The rows, in the order of the table.
PROVIDERS = (
    PLAIN,
    "cpp",
    "cpp, defer_checks",
    "torch",
    "triton, launch stubbed",
    "triton, launch stubbed, defer_checks",
)


def inputs(batch: int, n: int, seed: int = 0):
    """(features n x (B, 64), nn.Linear(n * 64, 10), labels (B,)), seeded."""
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(batch, WIDTH, generator=g) for _ in range(n)]
    head = torch.nn.Linear(n * WIDTH, CLASSES)
    labels = torch.randint(0, CLASSES, (batch,), generator=g)
    return feats, head, labels


def triton_unavailable() -> str | None:
    """Why the stubbed Triton rows cannot run here, or None."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1 (the rows would time the interpreter, not the launch path)"
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"Triton is not installed ({exc})"
    return None


def calls(batch: int, n: int, providers=PROVIDERS) -> dict:
    """{row name: zero-argument callable} of one case (the triton rows need host_path.triton_on_cpu())."""
    import fastshap

    feats, head, labels = inputs(batch, n)
    deferred = fastshap.DeferredChecks()

    def plain():
        with torch.no_grad():
            return head(torch.cat(feats, 1))

    table = {
        PLAIN: plain,
        "cpp": lambda: fastshap.modality_shapley(feats, head, labels, backend="cpp"),
        "cpp, defer_checks": lambda: fastshap.modality_shapley(
            feats, head, labels, backend="cpp", defer_checks=deferred
        ),
        "torch": lambda: fastshap.modality_shapley(feats, head, labels, backend="torch"),
        "triton, launch stubbed": lambda: fastshap.modality_shapley(feats, head, labels, backend="triton"),
        "triton, launch stubbed, defer_checks": lambda: fastshap.modality_shapley(
            feats, head, labels, backend="triton", defer_checks=deferred
        ),
    }
    return {name: table[name] for name in providers}


def _round_us(fn: Callable, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps * 1e6


def interleaved(rows: dict, reps: int = 500, rounds: int = 5) -> dict:
    """{row: best µs per call}: every round times each row once, in order, `reps` calls each."""
    for fn in rows.values():  # warm-up: first-call work (caches, allocator, autotuner choice)
        for _ in range(20):
            fn()
    best = dict.fromkeys(rows, float("inf"))
    for _ in range(rounds):
        for name, fn in rows.items():
            best[name] = min(best[name], _round_us(fn, reps))
    return best


def measure(reps: int = 500, rounds: int = 5, batches=BATCHES, modalities=MODALITIES, providers=PROVIDERS) -> list:
    """[(batch, n, {row: µs})] for every case; rows that cannot run here are left out."""
    skip = triton_unavailable()
    wanted = [p for p in providers if not (skip and p.startswith("triton"))]
    stub = host_path.triton_on_cpu() if any(p.startswith("triton") for p in wanted) else contextlib.nullcontext()
    out = []
    with stub:
        for n in modalities:
            for batch in batches:
                out.append((batch, n, interleaved(calls(batch, n, wanted), reps, rounds)))
    return out


def table(results: list) -> str:
    providers = [p for p in PROVIDERS if any(p in r for _, _, r in results)]
    lines = [
        "| n | B | " + " | ".join(providers) + " |",
        "|---|---|" + "---|" * len(providers),
    ]
    for batch, n, row in results:
        cells = []
        for p in providers:
            us = row.get(p)
            cells.append("–" if us is None else f"{us:.1f} µs" + ("" if p == PLAIN else f" ({us / row[PLAIN]:.1f}×)"))
        lines.append(f"| {n} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(reps: int, rounds: int) -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"call time, best of {rounds} interleaved rounds x {reps} calls; d = {WIDTH}, C = {CLASSES}, fp32 CPU tensors; "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); load average {load} at the end"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=500, help="calls per round (default 500)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each row keeps its best (5)")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes, comma-separated")
    parser.add_argument("--modalities", default=",".join(map(str, MODALITIES)), help="n values, comma-separated")
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = measure(
        args.reps,
        args.rounds,
        tuple(int(b) for b in args.batches.split(",")),
        tuple(int(n) for n in args.modalities.split(",")),
    )
    text = header(args.reps, args.rounds) + "\n\n" + table(results) + "\n"
    skip = triton_unavailable()
    if skip:
        text += f"\ntriton rows left out: {skip}\n"
    harness.print_and_save(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
