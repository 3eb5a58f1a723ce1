"""``python -m fastshap_train.compare``: run methods x settings x seeds and write a table like the paper's.

    python -m fastshap_train.compare --dataset uci-mfeat --views fou,mor --views fou,kar,pix,zer \\
        --methods concat,decision-fusion,ogm-ge,pmr,agm --seeds 3 --set epochs=20 --out runs/compare

A *setting* is a column of the table: a dataset (``--dataset``, repeatable) and, for multi-view datasets, a
view list (``--views``, repeatable; every dataset gets every view list). Each (setting, method, seed) is one
training run with the dataset's configuration (``fastshap_train/configs/<dataset>.yaml``), then ``--config``
files, then ``--set KEY=VALUE`` overrides, then the method, seed and output directory. Runs write only
metrics and results (no checkpoints, plots, TensorBoard or phi tables), and methods that do not use the
valuation skip its logging pass (``--valuation none``). ``--import MODULE`` (repeatable) loads a plug-in
module's datasets, encoder kinds and methods first, as ``python -m fastshap_train --import`` does.

Outputs in ``--out``:

    runs.csv    one row per run: setting, method, seed, status, final test accuracy, test accuracy at the
                best validation epoch (test_acc_at_best, empty without a validation split), seconds
    table.csv   method x setting: mean, std (sample std over seeds), number of seeds
    table.md    the paper's layout: one row per method, one column per setting, "mean ± std" in percent
                (best mean per column in bold; "n/a" where a method does not apply, e.g. Greedy with n != 2)
    table.png   grouped bars with std error bars
    runs/<setting>/<method>/seed<k>/   each run's metrics.csv, results.json, config.yaml

An --out that already holds a comparison (or any of its runs) is refused unless --overwrite, which replaces
the table and each run it makes. Datasets, views, methods, config files and --set values are checked before
the first run starts; a dataset, view list or method given twice is an error (it would count one run as
two seeds).

The table reports the test accuracy of the last epoch (``--metric final``, the default) or at the epoch of
the best validation accuracy (``--metric best``; never an epoch picked on the test set, as the authors'
code picked it).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from fastshap_train import plugins
from fastshap_train.dependencies import reports_missing_packages
from fastshap_train.registry import RegistrationError

DEFAULT_METHODS = (
    "concat",
    "decision-fusion",
    "g-blending",
    "ogm-ge",
    "greedy",
    "pmr",
    "agm",
    "sample-level",
    "modality-level",
)

DISPLAY = {
    "concat": "Concatenation",
    "decision-fusion": "Decision fusion",
    "g-blending": "G-Blending",
    "ogm-ge": "OGM-GE",
    "greedy": "Greedy",
    "pmr": "PMR",
    "agm": "AGM",
    "sample-level": "Sample-level (ours)",
    "modality-level": "Modality-level (ours)",
    "fixed-rate-low": "Fixed rate, low",
    "fixed-rate-high": "Fixed rate, high",
    "modality-drop": "Modality drop",
    "data-mask": "Data mask",
}

#: More seeds than this per method and setting is a typo, not a study: each is a full training run.
MAX_SEEDS = 1000

RUN_FIELDS = (
    "setting",
    "dataset",
    "views",
    "method",
    "seed",
    "status",
    "final_test_acc",
    "test_acc_at_best",
    "best_epoch",
    "epochs",
    "seconds",
    "message",
)
#: --metric -> the run's results.json entry it reports
METRIC_KEYS = {"final": "final_test_acc", "best": "test_acc_at_best"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m fastshap_train.compare",
        description="Train several methods on one or more datasets over seeds; write the paper-style table.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--dataset", action="append", default=[], metavar="NAME", help="dataset (repeatable)")
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module of yours first, as python -m fastshap_train --import does: its datasets, "
        "encoder kinds and methods by name in every run (repeatable)",
    )
    p.add_argument(
        "--views",
        action="append",
        default=[],
        metavar="A,B",
        help="view list of multi-view datasets, one table column each (repeatable)",
    )
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        metavar="A,B",
        help=f"methods, comma-separated (default: {','.join(DEFAULT_METHODS)})",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=3,
        metavar="K",
        help=f"seeds 0..K-1 per method and setting, K in [1, {MAX_SEEDS}] (default 3)",
    )
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config applied to every run")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option override applied to every run, e.g. --set epochs=20 (repeatable)",
    )
    p.add_argument(
        "--metric",
        choices=("final", "best"),
        default="final",
        help="test accuracy of the last epoch (default), or at the epoch of the best validation accuracy "
        "(needs a validation split)",
    )
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="runs in parallel processes (default 1)")
    p.add_argument("--out", default="runs/compare", metavar="DIR", help="output directory (default runs/compare)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a comparison already in --out (its table, and each run this one makes)",
    )
    args = p.parse_args(argv)
    if not args.dataset:
        p.error("give at least one --dataset")
    args.dataset = [d.strip() for d in args.dataset]
    _no_repeats(p, "--dataset", args.dataset)
    if not 1 <= args.seeds <= MAX_SEEDS:
        p.error(f"--seeds must be in [1, {MAX_SEEDS}], got {args.seeds}")
    check_jobs(p, args.jobs)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not args.method_list:
        p.error("--methods is empty")
    _no_repeats(p, "--methods", args.method_list)
    args.view_lists = [[v.strip() for v in views.split(",") if v.strip()] for views in args.views]
    if any(not views for views in args.view_lists):
        p.error("--views is empty")
    _no_repeats(p, "--views", [",".join(views) for views in args.view_lists])
    owned = {key: f"compare sets {key} itself ({why})" for key, why in _SET_BY_COMPARE.items()}
    args.overrides = parse_overrides(p, args.set, owned)
    return args, p


def check_jobs(parser: argparse.ArgumentParser, jobs: int) -> None:
    """--jobs (parallel runs) in [1, 4 x the CPUs], or the parser's usage error (also the study's)."""
    from fastshap_train.config import cpu_cap

    cap, cpus = cpu_cap()
    if not 1 <= jobs <= cap:
        # each job is a process training a model: more than the cores only slows every run and costs memory
        parser.error(f"--jobs must be in [1, {cap}] (at most 4 x the {cpus} CPUs), got {jobs}")


def parse_overrides(parser: argparse.ArgumentParser, items: list, owned: dict) -> dict:
    """--set KEY=VALUE items as {key: value} (dashes in a key read as underscores; also the study's). A key
    in `owned` (key -> why --set may not change it) is the parser's usage error."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        key = key.strip().replace("-", "_")
        if key in owned:
            parser.error(f"--set {key}=...: {owned[key]}")
        overrides[key] = value.strip()
    return overrides


# Options each run gets from compare, which --set would not change: say so rather than ignore it.
_SET_BY_COMPARE = {
    "dataset": "use --dataset",
    "method": "use --methods",
    "seed": "use --seeds",
    "out": "use --out",
    "resume": "every run starts afresh",
}


def _no_repeats(parser, flag: str, items: list) -> None:
    """A repeated item would run the same runs twice (and count them as extra seeds): an error."""
    repeated = sorted({x for x in items if items.count(x) > 1})
    if repeated:
        parser.error(f"{flag} lists {', '.join(map(repr, repeated))} more than once")


def setting_label(dataset: str, views) -> str:
    return f"{dataset} ({'+'.join(views)})" if views else dataset


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


def plan_runs(args) -> list:
    """Every (setting, method, seed) as a dict of what a worker needs."""
    runs = []
    view_lists = args.view_lists or [[]]
    for dataset in args.dataset:
        for views in view_lists:
            label = setting_label(dataset, views)
            for method in args.method_list:
                for seed in range(args.seeds):
                    out = Path(args.out) / "runs" / _slug(label) / method / f"seed{seed}"
                    runs.append(
                        {
                            "setting": label,
                            "dataset": dataset,
                            "views": ",".join(views),
                            "method": method,
                            "seed": seed,
                            "out": str(out),
                            "config": list(args.config),
                            "overrides": dict(args.overrides),
                            "threads": 1 if args.jobs > 1 else 0,
                            "overwrite": args.overwrite,
                            "metric": args.metric,
                            "imports": plugins.loaded(),  # a worker process registers them again
                        }
                    )
    return runs


def run_config(spec: dict):
    """The resolved configuration of one planned run (ConfigError if its options are wrong)."""
    from fastshap_train.config import resolve_config
    from fastshap_train.methods import method_class

    values = dict(spec["overrides"])
    values.update(
        dataset=spec["dataset"],
        method=spec["method"],
        seed=spec["seed"],
        out=spec["out"],
        progress=False,
        tensorboard=False,
        plots=False,
        save_phi=False,
        checkpoint=False,
    )
    if spec["views"]:
        values["views"] = spec["views"]
    if spec["threads"] and "threads" not in spec["overrides"]:
        values["threads"] = spec["threads"]
    if spec.get("metric") == "best" and "select" not in spec["overrides"]:
        values["select"] = "val"  # a validation split whose files are missing: the run fails, naming them
    if not method_class(spec["method"]).needs_valuation and "valuation" not in spec["overrides"]:
        values["valuation"] = "none"
    return resolve_config(values, spec["config"])


def check_runs(runs: list, metric: str = "final") -> None:
    """Resolve every planned (setting, method) and check its dataset options before any run starts: a
    mistake stops the comparison at once instead of failing each of its runs. Raises ConfigError or
    DataOptionError naming the setting and method."""
    from fastshap_train.config import ConfigError
    from fastshap_train.data import check_dataset_options, dataset_options, has_validation_split
    from fastshap_train.data.base import DataOptionError

    for spec in runs:
        if spec["seed"]:
            continue  # the seed changes nothing that is checked here
        where = f"{spec['setting']}, {spec['method']}"
        try:  # run_config refuses views for a dataset that has none (fastshap_train.data.views_problem)
            cfg = run_config(spec)
            check_dataset_options(cfg)
        except (ConfigError, DataOptionError) as exc:
            raise type(exc)(f"{where}: {exc}") from None
        options = dataset_options(cfg)
        if metric == "best" and (cfg.select == "none" or not has_validation_split(cfg.dataset, options)):
            hint = (
                "--set select=none turns model selection off"
                if cfg.select == "none"
                else "--set val_ratio=0.1 carves one from the training split"
                if "val_ratio" in options
                else "the dataset has none"
            )
            raise ConfigError(
                f"{where}: --metric best is the test accuracy at the best validation epoch, and this "
                f"run has no validation split ({hint})"
            )


def run_one(spec: dict) -> dict:
    """Train one run; never raises (the status says what happened)."""
    from fastshap import BackendError
    from fastshap_train.config import ConfigError, RunError
    from fastshap_train.data.base import DataFileError, DataOptionError
    from fastshap_train.engine import train
    from fastshap_train.methods._common import NotApplicable
    from fastshap_train.outputs import CheckpointError

    row = {k: spec.get(k, "") for k in ("setting", "dataset", "views", "method", "seed")}
    start = time.perf_counter()
    try:
        plugins.load(spec.get("imports", ()))
        results = train(run_config(spec), overwrite=spec["overwrite"])
        row.update(
            status="ok",
            final_test_acc=results.get("final_test_acc"),
            test_acc_at_best=results.get("test_acc_at_best"),
            best_epoch=results.get("best_epoch"),
            epochs=results.get("epochs"),
            message="",
        )
    except NotApplicable as exc:
        row.update(status="n/a", message=str(exc))
    except (
        ConfigError,
        KeyError,
        RunError,
        DataOptionError,
        DataFileError,
        CheckpointError,
        BackendError,
        RegistrationError,
        plugins.PluginError,
    ) as exc:
        # errors whose message says it all: no traceback
        row.update(status="error", message=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the table
        row.update(status="error", message=f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def summarise(rows: list, metric: str) -> dict:
    """{(setting, method): {"mean", "std", "seeds", "status"}} with accuracies in [0, 1]."""
    key = METRIC_KEYS[metric]
    table = {}
    for row in rows:
        cell = table.setdefault((row["setting"], row["method"]), {"values": [], "statuses": set()})
        cell["statuses"].add(row["status"])
        value = row.get(key)
        if row["status"] == "ok" and value is not None and value != "" and math.isfinite(float(value)):
            cell["values"].append(float(value))
    out = {}
    for k, cell in table.items():
        vals = cell["values"]
        mean = sum(vals) / len(vals) if vals else math.nan
        if len(vals) > 1:
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        else:
            std = 0.0 if vals else math.nan
        status = "ok" if vals else ("n/a" if cell["statuses"] == {"n/a"} else "error")
        out[k] = {"mean": mean, "std": std, "seeds": len(vals), "status": status}
    return out


def markdown_table(summary: dict, settings: list, methods: list, metric: str) -> str:
    best = {}
    for s in settings:
        means = [summary[(s, m)]["mean"] for m in methods if (s, m) in summary and summary[(s, m)]["seeds"]]
        best[s] = max(means) if means else None
    lines = ["| Method | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for m in methods:
        cells = []
        for s in settings:
            c = summary.get((s, m))
            if c is None or c["status"] == "n/a":
                cells.append("n/a")
            elif not c["seeds"]:
                cells.append("failed")
            else:
                text = f"{100 * c['mean']:.2f} ± {100 * c['std']:.2f}"
                cells.append(f"**{text}**" if best[s] is not None and c["mean"] == best[s] else text)
        lines.append(f"| {DISPLAY.get(m, m)} | " + " | ".join(cells) + " |")
    seeds = sorted({c["seeds"] for c in summary.values() if c["seeds"]})
    which = "of the last epoch" if metric == "final" else "at the epoch of the best validation accuracy"
    note = f"\nTest accuracy (%) {which}, mean ± sample std over {'/'.join(map(str, seeds)) or 0} seed(s)."
    return "\n".join(lines) + "\n" + note + "\n"


def write_outputs(out: Path, rows: list, settings: list, methods: list, metric: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "runs.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=RUN_FIELDS, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in RUN_FIELDS})
    summary = summarise(rows, metric)
    with open(out / "table.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method"] + [f"{s} {what}" for s in settings for what in ("mean", "std", "seeds")])
        for m in methods:
            line = [m]
            for s in settings:
                c = summary.get((s, m), {"mean": math.nan, "std": math.nan, "seeds": 0})
                line += [f"{c['mean']:.6f}" if c["seeds"] else "", f"{c['std']:.6f}" if c["seeds"] else "", c["seeds"]]
            writer.writerow(line)
    text = markdown_table(summary, settings, methods, metric)
    (out / "table.md").write_text(text)
    plot_table(summary, settings, methods, out / "table.png", metric)
    return {"summary": summary, "markdown": text}


def plot_table(summary: dict, settings: list, methods: list, path, metric: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6.5, 2.8 + 0.4 * len(settings) * max(1, len(methods))), 3.8), dpi=120)
    for j, m in enumerate(methods):
        xs, ys, es = [], [], []
        for i, s in enumerate(settings):
            c = summary.get((s, m))
            if c and c["seeds"]:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(100 * c["mean"])
                es.append(100 * c["std"])
        if xs:
            ax.bar(xs, ys, width=width * 0.95, yerr=es, capsize=2, label=DISPLAY.get(m, m))
    finite = [100 * c["mean"] for c in summary.values() if c["seeds"]]
    if finite:
        lo = max(0.0, min(finite) - 5)
        ax.set_ylim(lo, min(100.0, max(finite) + 3))
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels(settings, fontsize=8)
    ax.set_ylabel(f"test accuracy (%), {metric} epoch")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@reports_missing_packages("python -m fastshap_train.compare")
def main(argv=None) -> int:
    args, parser = parse_args(argv)
    try:
        plugins.load(args.imports)
    except (plugins.PluginError, RegistrationError) as exc:
        parser.error(str(exc))
    from fastshap_train.config import ConfigError
    from fastshap_train.data import dataset_names
    from fastshap_train.data.base import DataOptionError
    from fastshap_train.methods import method_names
    from fastshap_train.outputs import run_work

    unknown = [d for d in args.dataset if d not in dataset_names()]
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(unknown)}; available: {', '.join(dataset_names())}")
    unknown = [m for m in args.method_list if m not in method_names()]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(method_names())}")
    runs = plan_runs(args)
    try:
        check_runs(runs, args.metric)
    except (ConfigError, DataOptionError) as exc:
        parser.error(str(exc))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return _fail(parser, f"--out {out} is a file, not a directory")
    held = [r["out"] for r in runs if run_work(r["out"])]
    if not args.overwrite and ((out / "runs.csv").exists() or held):
        what = "a comparison (runs.csv)" if (out / "runs.csv").exists() else f"runs of a comparison ({held[0]}, ...)"
        return _fail(
            parser, f"--out {out} already holds {what}: pass --overwrite to replace it, or choose another --out"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _fail(parser, f"--out {out}: cannot create the directory: {exc.strerror or exc}")
    settings = list(dict.fromkeys(r["setting"] for r in runs))
    print(
        f"{len(runs)} runs: {len(settings)} setting(s) x {len(args.method_list)} method(s) x {args.seeds} seed(s)",
        flush=True,
    )
    rows = []
    start = time.perf_counter()

    def report(row):
        rows.append(row)
        acc = row.get(METRIC_KEYS[args.metric])
        acc_text = f"{100 * float(acc):.2f}%" if row["status"] == "ok" and acc is not None else row["status"]
        print(
            f"[{len(rows)}/{len(runs)}] {row['setting']} {row['method']} seed {row['seed']}: {acc_text} "
            f"({row['seconds']:.1f} s){' ' + row['message'] if row['status'] != 'ok' else ''}",
            flush=True,
        )

    if args.jobs == 1:
        for spec in runs:
            report(run_one(spec))
    else:
        # spawn: a fresh interpreter per worker (no fork of a process that already holds torch threads)
        with ProcessPoolExecutor(max_workers=min(args.jobs, len(runs)), mp_context=get_context("spawn")) as pool:
            for row in pool.map(run_one, runs):
                report(row)
    order = {(r["setting"], r["method"], r["seed"]): i for i, r in enumerate(runs)}
    rows.sort(key=lambda r: order[(r["setting"], r["method"], r["seed"])])
    result = write_outputs(Path(args.out), rows, settings, args.method_list, args.metric)
    print()
    print(result["markdown"])
    print(f"{len(runs)} runs in {time.perf_counter() - start:.0f} s; table in {os.path.join(args.out, 'table.md')}")
    return 1 if any(r["status"] == "error" for r in rows) else 0


def _fail(parser, message: str) -> int:
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
