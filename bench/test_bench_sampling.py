"""Benchmarks of the sampling estimator (``modality_shapley(estimator="sampling")``, fastshap/sampling.py).

Concat-linear head ``nn.Linear(n * 16, 10)``, fp32 features of width 16 per modality, B = 128:

  error     n = 10, 14: K = 16, 64, 256, 1024 permutations; antithetic pairs (fastshap's estimator) and the
            same number of independent permutations (paired at random, the plain estimator), each against
            the exact values (benefit "paper"): RMS error, RMS reported stderr and the coverage of the
            +-1.96 stderr interval over SEEDS calls, stored with the timing.
  captum    n = 32, 64 feature groups: fastshap's sampled values (benefit "accuracy") against Captum's
            ShapleyValueSampling over the concatenated input with one feature_mask group per modality, the
            same head, zero baselines, v = 1[correct], the same number of permutations K = 32 (Captum's
            n_samples), perturbations_per_eval 1, 16 and n. Both estimators are efficient, so each sample's
            values must sum to the same v(N) - v(empty): checked before timing, stored with the RMS difference
            of the two estimates.

    .venv/bin/python -m pytest bench/test_bench_sampling.py -q --benchmark-only
    .venv/bin/python bench/test_bench_sampling.py [RESULT.json]      # the markdown tables (docs/sampling.md)
"""

from __future__ import annotations

import functools
import json
import math
import sys
from pathlib import Path

import harness
import pytest
import torch
from torch import nn

import fastshap
from fastshap import backends, sampling

DIM, CLASSES, BATCH = 16, 10, 128
ERROR_N = (10, 14)
ERROR_K = (16, 64, 256, 1024)
SEEDS = 4
CAPTUM_N = (32, 64)
CAPTUM_K = 32


def _case(n: int, seed: int):
    """Features, head and labels: weights scaled so that removing a few modalities changes the prediction
    (the values vary), a quarter of the labels random (some predictions wrong)."""
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(BATCH, DIM, generator=g) for _ in range(n)]
    head = nn.Linear(n * DIM, CLASSES)
    with torch.no_grad():
        head.weight.copy_(torch.randn(CLASSES, n * DIM, generator=g) / math.sqrt(DIM))
        head.bias.zero_()
        labels = head(torch.cat(feats, 1)).argmax(-1)
    labels[::4] = torch.randint(0, CLASSES, (BATCH // 4,), generator=g)
    return feats, head, labels


def _fastest_sampled_backend() -> str:
    return sampling.select("auto", backends.Call("concat", torch.device("cpu"), torch.float32, 16))


def _independent_orders(pairs: int, n: int, g: torch.Generator) -> torch.Tensor:
    """2 * pairs independent uniform permutations, paired in drawing order: the plain estimator's draws."""
    return torch.rand(pairs, 2, n, generator=g, dtype=torch.float64).argsort(-1)


def _sampled(feats, head, labels, benefit, samples, seed, antithetic, backend):
    """(phi, stderr) of one call: the public API for the antithetic estimator; the same op on independent
    orders for the plain one."""
    g = torch.Generator().manual_seed(seed)
    if antithetic:
        return fastshap.modality_shapley(
            feats,
            head,
            labels,
            benefit=benefit,
            estimator="sampling",
            samples=samples,
            generator=g,
            with_stderr=True,
            backend=backend,
        )
    spec = backends.HeadSpec("concat", (head.weight.detach(), head.bias.detach()))
    orders = _independent_orders(samples // 2, len(feats), g)
    with torch.no_grad():
        phi, stderr, _ = sampling.run(backend, spec, feats, None, labels, benefit, orders)
    return phi, stderr


@functools.lru_cache(maxsize=2)
def _exact(n: int):
    feats, head, labels = _case(n, seed=n)
    with torch.no_grad():
        return fastshap.modality_shapley(feats, head, labels).double()


@pytest.mark.benchmark(max_time=1.0, min_rounds=3, warmup=False)
@pytest.mark.parametrize("estimator", ["antithetic", "independent"])
@pytest.mark.parametrize("samples", ERROR_K)
@pytest.mark.parametrize("n", ERROR_N)
def test_error_against_exact(benchmark, n, samples, estimator):
    feats, head, labels = _case(n, seed=n)
    exact = _exact(n)
    backend = _fastest_sampled_backend()
    antithetic = estimator == "antithetic"
    squared, reported, covered = [], [], []
    for seed in range(SEEDS):
        phi, stderr = _sampled(feats, head, labels, "paper", samples, seed, antithetic, backend)
        error = phi.double() - exact
        squared.append(float((error * error).mean()))
        reported.append(float((stderr.double() ** 2).mean()))
        covered.append(float((error.abs() <= 1.96 * stderr.double() + 1e-6).double().mean()))
    benchmark.group = f"sampling error n={n}"
    benchmark.extra_info.update(
        suite="sampling-error",
        n=n,
        batch=BATCH,
        dim=DIM,
        classes=CLASSES,
        benefit="paper",
        samples=samples,
        estimator=estimator,
        backend=backend,
        provider=f"{estimator}-K{samples}",
        seeds=SEEDS,
        rms_error=math.sqrt(sum(squared) / SEEDS),
        rms_stderr=math.sqrt(sum(reported) / SEEDS),
        coverage=sum(covered) / SEEDS,
        exact_rms=float(exact.pow(2).mean().sqrt()),
        threads=torch.get_num_threads(),
    )
    with torch.no_grad():
        benchmark(lambda: _sampled(feats, head, labels, "paper", samples, 0, antithetic, backend))


# --- Captum ------------------------------------------------------------------------------------------------


def captum_sampling(features, head: nn.Linear, labels, samples: int, perturbations_per_eval: int, seed: int):
    """Captum's ShapleyValueSampling over the concatenated features, one feature_mask group per modality,
    zero baselines, v = 1[argmax == label]: (B, n) float32 (one column per group)."""
    from captum.attr import ShapleyValueSampling

    x = torch.cat(list(features), 1)
    groups = torch.cat([torch.full((f.shape[1],), i, dtype=torch.long) for i, f in enumerate(features)])

    def correct(inputs, y):
        return (head(inputs).argmax(-1) == y).to(inputs.dtype)

    torch.manual_seed(seed)  # Captum draws its permutations from torch's global generator
    attr = ShapleyValueSampling(correct).attribute(
        x,
        baselines=0.0,
        feature_mask=groups.unsqueeze(0),
        additional_forward_args=(labels,),
        n_samples=samples,
        perturbations_per_eval=perturbations_per_eval,
    )
    first_columns = torch.tensor([0] + [f.shape[1] for f in features[:-1]]).cumsum(0)
    return attr[:, first_columns].float()


def _captum_params():
    out = []
    for n in CAPTUM_N:
        out += [pytest.param(n, "fastshap_torch", id=f"n{n}-fastshap_torch")]
        out += [pytest.param(n, "fastshap_cpp", id=f"n{n}-fastshap_cpp")]
        out += [pytest.param(n, f"captum_ppe{p}", id=f"n{n}-captum_ppe{p}") for p in (1, 16, n)]
    return out


@pytest.mark.benchmark(max_time=1.0, min_rounds=3, warmup=False)
@pytest.mark.parametrize("n,provider", _captum_params())
def test_against_captum(benchmark, n, provider):
    feats, head, labels = _case(n, seed=100 + n)
    benchmark.group = f"sampling vs Captum n={n} K={CAPTUM_K}"
    info = benchmark.extra_info
    info.update(suite="sampling-captum", n=n, batch=BATCH, dim=DIM, classes=CLASSES, benefit="accuracy")
    info.update(samples=CAPTUM_K, provider=provider, threads=torch.get_num_threads())
    ours = functools.partial(_sampled, feats, head, labels, "accuracy", CAPTUM_K, 0, True)
    if provider.startswith("fastshap"):
        backend = provider.removeprefix("fastshap_")
        call = backends.Call("concat", torch.device("cpu"), torch.float32, n)
        reason = backends.why_not(backend, call) or sampling._sampled_declines(backend, call)
        if reason:
            harness.UNAVAILABLE.append({"group": benchmark.group, "provider": provider, "reason": reason})
            pytest.skip(reason)
        with torch.no_grad():
            benchmark(lambda: ours(backend))
        return
    pytest.importorskip("captum")
    ppe = int(provider.removeprefix("captum_ppe"))
    with torch.no_grad():
        theirs = captum_sampling(feats, head, labels, CAPTUM_K, ppe, seed=0)
        phi, stderr = ours("torch")
    # The same game: both estimates sum to v(N) - v(empty) for every sample.
    gap = float((theirs.double().sum(1) - phi.double().sum(1)).abs().max())
    info.update(
        efficiency_gap=gap,
        rms_difference=float((theirs.double() - phi.double()).pow(2).mean().sqrt()),
        fastshap_rms_stderr=float(stderr.double().pow(2).mean().sqrt()),
        perturbations_per_eval=ppe,
    )
    assert gap <= 1e-4, gap
    with torch.no_grad():
        benchmark.pedantic(lambda: captum_sampling(feats, head, labels, CAPTUM_K, ppe, seed=0), rounds=1, iterations=1)


# --- tables ------------------------------------------------------------------------------------------------


def tables(path: Path) -> str:
    """Markdown tables of a result file's sampling rows."""
    data = json.loads(path.read_text())
    rows = [b for b in data["benchmarks"] if b.get("extra_info", {}).get("suite", "").startswith("sampling")]
    machine = data.get("machine_info", {}).get("bench", {})
    out = [
        f"{machine.get('cpu_model', '?')}, {machine.get('torch_threads', '?')} threads, torch "
        f"{machine.get('torch', '?')}, captum {machine.get('captum', '?')}; load "
        f"{machine.get('loadavg_start')} -> {machine.get('loadavg_end')}; {path.name}",
        "",
    ]
    error = [r for r in rows if r["extra_info"]["suite"] == "sampling-error"]
    if error:
        out += [
            "| n | K | estimator | RMS error | RMS stderr | coverage of ±1.96 stderr | time (B = 128) |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sorted(error, key=lambda r: (r["extra_info"]["n"], r["extra_info"]["samples"])):
            e = r["extra_info"]
            out.append(
                f"| {e['n']} | {e['samples']} | {e['estimator']} | {e['rms_error']:.4f} | {e['rms_stderr']:.4f} | "
                f"{e['coverage']:.3f} | {r['stats']['median'] * 1e3:.1f} ms |"
            )
        out.append("")
    captum = [r for r in rows if r["extra_info"]["suite"] == "sampling-captum"]
    if captum:
        out += [
            f"| n | provider | time (B = 128, K = {CAPTUM_K}) | Captum's best / this |",
            "|---|---|---|---|",
        ]
        for n in sorted({r["extra_info"]["n"] for r in captum}):
            mine = [r for r in captum if r["extra_info"]["n"] == n]
            best = min((r["stats"]["median"] for r in mine if "captum" in r["extra_info"]["provider"]), default=None)
            for r in sorted(mine, key=lambda r: r["stats"]["median"]):
                t = r["stats"]["median"]
                ratio = "-" if not best else f"{best / t:.2f}×" if best / t < 10 else f"{best / t:.0f}×"
                out.append(f"| {n} | {r['extra_info']['provider']} | {t * 1e3:.1f} ms | {ratio} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    files = [Path(p) for p in sys.argv[1:]] or [
        max(harness.RESULTS_DIR.glob("*.json"), key=lambda p: p.stat().st_mtime)
    ]
    for f in files:
        print(tables(f))
