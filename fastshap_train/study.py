"""``python -m fastshap_train.study``: when does valuation-guided re-sampling help? A controlled study.

    python -m fastshap_train.study                      # the whole study (see STUDY_SECONDS below)
    python -m fastshap_train.study --quick              # a reduced sweep, minutes on 2 CPU cores
    python -m fastshap_train.study paper-premise noise-partner --seeds 5 --jobs 2 --out runs/study

Each *setting* is a data regime (a synthetic generator configuration, or a pair of uci-mfeat views); each
*arm* is a training method with its options (the three f_s of the sample-level method are three arms).
Every (setting, arm, seed) is one training run through the trainer, configured as
``fastshap_train.compare`` configures its runs (:func:`fastshap_train.compare.run_config`: the dataset's
YAML, then the study's options, then ``--set``). Seed k draws its own data (``syn_seed`` / ``split_seed`` =
k) and its own initialisation; at a given seed every arm sees the same data and starts from the same
weights, so the differences between arms are paired over seeds.

After training, each run measures with its final model, the same way for every arm:

* ``test_acc``: fused test accuracy (all modalities);
* ``probe_acc_<i>``: a linear probe on encoder i's frozen features (multinomial logistic regression,
  full-batch L-BFGS, standardised features, fixed L2), trained on the training split, scored on the test
  split: how much of its modality the encoder learnt, whatever the head does with it;
* ``alone_acc_<i>``: the fused head's accuracy with only modality i kept (the others removed as in
  training): what the valuation's v({i}) sees;
* ``probe_fused_acc``: the same probe on all encoders' features concatenated: what a head refit on the
  frozen encoders could reach (against ``test_acc``: whether a loss lies in the encoders or in the head);
* ``phi_<i>``: mean phi of modality i over the training split (the trainer's own valuation pass),
  and ``phi_gap`` = ``phi_0 - phi_1``; ``phi_test_<i>`` and ``phi_gap_test`` the same over the test split;
* ``copy_loss_<split>_<i>``: cross-entropy of the head with only modality i kept, on the training and the
  test split: the loss of the copies the re-sampling methods add, and how it generalises;
* on synthetic data, where the generator knows which modality carries the label in each sample:
  ``probe_signal_acc_<i>`` (the probe on test samples where modality i carries the label) and
  ``noise_copy_loss_<split>_<i>`` (the copy loss on samples where modality i is pure noise; log C is
  chance, lower on the training split only is memorised noise).

Outputs in ``--out``: ``runs.csv`` (one row per run, every measure), ``summary.csv`` (per setting and
arm: mean and std of each measure, and the paired comparison with concat), ``tables.md`` (the headline
table and the diagnostics), ``delta.png`` (each arm's difference from concat with its 95% CI) and
``probes.png`` (per-encoder probe accuracy), and ``runs/<setting>/<arm>/seed<k>/`` (each run's
metrics.csv, results.json, config.yaml).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F

from fastshap_train.compare import DISPLAY, check_jobs, parse_overrides, run_config
from fastshap_train.dependencies import reports_missing_packages

# ------------------------------------------------------------------------------------------------------
# what is swept


@dataclass(frozen=True)
class Setting:
    """A data regime: a dataset, its options, and what the regime asks."""

    name: str
    dataset: str
    options: dict
    question: str
    views: tuple = ()
    group: str = "synthetic"
    quick: bool = False  # part of --quick
    quick_options: dict = field(default_factory=dict)  # --quick's smaller version of `options`


@dataclass(frozen=True)
class Arm:
    """A method with its options (one row of the tables)."""

    name: str
    method: str
    options: dict = field(default_factory=dict)
    label: str = ""
    epochs_factor: float = 1.0  # the setting's epochs times this (a control with more optimizer steps)
    reference: bool = False  # not a fusion method: left out of the accuracy tables, shown in the diagnostics

    @property
    def display(self) -> str:
        return self.label or DISPLAY.get(self.method, self.method)


#: The synthetic settings share 10 classes, two vector modalities (view0 = modality 0, the dominant one;
#: view1 = modality 1) of 256 features each (wide enough that an encoder must learn where the signal lies,
#: and that a modality can fit its own noise), MLP encoders, and the trainer's synthetic.yaml (Adam 1e-3).
#: Runs are short (600 training samples, 15 epochs, warmup 3) so that the whole study fits ~90 minutes on
#: 2 cores; --quick shrinks them further.
SYNTHETIC_BASE = {
    "syn_classes": 10,
    "syn_samples": 600,
    "syn_test_samples": 1000,
    "syn_dims": [256, 256],
    "syn_strength": [1.5, 1.0],
    "syn_noise": 1.5,
    "epochs": 15,
    "warmup": 3,
}
SYNTHETIC_QUICK = {"syn_samples": 400, "syn_test_samples": 500, "epochs": 10, "warmup": 2}
#: uci-mfeat: the dataset's YAML (Adam 1e-3, batch 64, warmup 5) cut to 20 epochs at a constant rate.
MFEAT_BASE = {"epochs": 20, "lr_step": 0}
MFEAT_QUICK = {"epochs": 10, "warmup": 3}


def _synthetic(name, question, quick=False, **options):
    options = {**SYNTHETIC_BASE, **options}
    return Setting(name, "synthetic", options, question, quick=quick, quick_options=SYNTHETIC_QUICK)


def _mfeat(views, question, quick=False):
    name = f"mfeat-{'-'.join(views)}"
    return Setting(name, "uci-mfeat", dict(MFEAT_BASE), question, tuple(views), "uci-mfeat", quick, MFEAT_QUICK)


SETTINGS = (
    # dataset-level dominance: modality 0 carries the label in every sample and is the stronger
    _synthetic(
        "dataset-informative",
        "the paper's premise: modality 1 carries the label in every sample but is weaker and learnt more slowly "
        "beside a dominant modality 0 that can fit the training set alone",
        quick=True,
        syn_dominance=[1, 0],
        syn_weak_by_modality=[0, 1],
    ),
    _synthetic(
        "dataset-noise",
        "the same with modality 1 pure noise in every sample: nothing to enhance",
        quick=True,
        syn_dominance=[1, 0],
        syn_weak_by_modality=[0, 0],
    ),
    # per-sample dominance: each sample's informative modality drawn 70 / 30
    _synthetic(
        "sample-informative",
        "per-sample dominance (70% of samples led by modality 0, 30% by modality 1); the other modality still "
        "carries half its signal",
        syn_dominance=[0.7, 0.3],
        syn_weak=0.5,
    ),
    _synthetic(
        "sample-noise",
        "per-sample dominance as above, the other modality pure noise: each sample has one useful modality",
        syn_dominance=[0.7, 0.3],
        syn_weak=0.0,
    ),
    # noise levels of the paper's premise
    _synthetic(
        "dataset-informative-noise1",
        "dataset-informative with less noise (1.0): both modalities easier",
        syn_dominance=[1, 0],
        syn_weak_by_modality=[0, 1],
        syn_noise=1.0,
    ),
    _synthetic(
        "dataset-informative-noise2.5",
        "dataset-informative with more noise (2.5): both modalities harder",
        syn_dominance=[1, 0],
        syn_weak_by_modality=[0, 1],
        syn_noise=2.5,
    ),
    # the setting, as reported: 16 features per modality, modality 1 informative in 15% of samples
    _synthetic(
        "issue-noise-partner",
        "the setting of the issue: noise 3, modality 1 pure noise in 85% of the samples (16 features each)",
        syn_dims=[16, 16],
        syn_noise=3.0,
        syn_dominance=[0.85, 0.15],
        syn_weak=0.0,
    ),
    _mfeat(("fou", "mor"), "the issue's pair: two weak views (Fourier ~0.80, morphological ~0.71 alone)", quick=True),
    _mfeat(("pix", "mor"), "a strong view (pixels ~0.97) beside a weak one (morphological)"),
    _mfeat(("fou", "zer"), "two weak views of similar strength (Fourier, Zernike)"),
)
SETTING_BY_NAME = {s.name: s for s in SETTINGS}
GROUPS = {g: [s.name for s in SETTINGS if s.group == g] for g in ("synthetic", "uci-mfeat")}


UNIMODAL = "unimodal"  # a built-in method (fastshap_train/methods/unimodal.py)


ARMS = (
    Arm("concat", "concat"),
    # About as many optimizer steps as the sample-level plans make (1.3x to 1.7x the originals per epoch in
    # this study): separates what the copies add as extra steps from what they add as targeted data.
    Arm("concat-1.5x", "concat", label="Concatenation, 1.5x epochs", epochs_factor=1.5),
    # What modality 1's encoder reaches when it is trained alone (every row keeps modality 1 only): the
    # yardstick of "under-trained" for the probes of the fusion arms.
    Arm("unimodal-1", UNIMODAL, {"unimodal_modality": 1}, "Modality 1 alone (reference)", reference=True),
    Arm("sample-level", "sample-level", {"fs": "linear"}, "Sample-level, f_s linear (ours)"),
    Arm("sample-level-concave", "sample-level", {"fs": "concave"}, "Sample-level, f_s concave"),
    Arm("sample-level-convex", "sample-level", {"fs": "convex"}, "Sample-level, f_s convex"),
    Arm("modality-level", "modality-level"),
    Arm("fixed-rate-low", "fixed-rate-low"),
    Arm("fixed-rate-high", "fixed-rate-high"),
    Arm("ogm-ge", "ogm-ge"),
    Arm("pmr", "pmr"),
    Arm("agm", "agm"),
)
ARM_BY_NAME = {a.name: a for a in ARMS}
QUICK_ARMS = ("concat", "concat-1.5x", "unimodal-1", "sample-level", "modality-level", "ogm-ge")
BASELINE = "concat"


def diagnostics(trainer) -> dict:
    """The measures listed in the module docstring, computed with the trainer's final model."""
    core, n = trainer.core, trainer.n
    was_training = core.training
    core.eval()
    try:
        train = _encode_split(trainer, trainer.value_set, trainer.train_indices)
        test = _encode_split(trainer, trainer.test_set, torch.arange(len(trainer.test_set)))
        baselines = trainer.valuator.compute_baselines()  # None under feature removal
        out = {}
        carries = {split: _carries_signal(data, idx) for split, data, idx in _splits(trainer)}
        for i in range(n):
            probe = linear_probe(
                train["features"][i], train["labels"], test["features"][i], trainer.train_set.num_classes
            )
            correct = probe == test["labels"]
            out[f"probe_acc_{i}"] = float(correct.double().mean())
            if carries["test"] is not None:
                signal = carries["test"][:, i]
                out[f"probe_signal_acc_{i}"] = float(correct[signal].double().mean()) if signal.any() else math.nan
            for split, enc in (("train", train), ("test", test)):
                logits = _head_alone(core, enc["features"], i, baselines)
                loss = F.cross_entropy(logits, enc["labels"], reduction="none")
                if split == "test":
                    out[f"alone_acc_{i}"] = float((logits.argmax(-1) == enc["labels"]).double().mean())
                out[f"copy_loss_{split}_{i}"] = float(loss.mean())
                if carries[split] is not None:
                    noise = ~carries[split][:, i]
                    out[f"noise_copy_loss_{split}_{i}"] = float(loss[noise].mean()) if noise.any() else math.nan
        # all encoders' features together: what a head trained on the frozen encoders alone could reach
        probe = linear_probe(
            torch.cat(train["features"], 1),
            train["labels"],
            torch.cat(test["features"], 1),
            trainer.train_set.num_classes,
        )
        out["probe_fused_acc"] = float((probe == test["labels"]).double().mean())
        values = trainer.valuator.run_pass(trainer.train_indices)
        phi = {"": values.phi.double(), "test_": _test_phi(trainer, test, baselines)}
        for split, table in phi.items():
            for i in range(n):
                out[f"phi_{split}{i}"] = float(torch.nanmean(table[:, i]))
            out[f"phi_gap{'_test' if split else ''}"] = (
                out[f"phi_{split}0"] - out[f"phi_{split}1"] if n > 1 else math.nan
            )
        return out
    finally:
        core.train(was_training)


@torch.no_grad()
def _test_phi(trainer, encoded: dict, baselines) -> torch.Tensor:
    """phi (N, n) of the test samples, valued as the trainer values the training samples."""
    device, size = trainer.device, 2 * trainer.per_rank_batch
    out = []
    for start in range(0, len(encoded["labels"]), size):
        feats = [f[start : start + size].to(device) for f in encoded["features"]]
        out.append(trainer.valuator.value_batch(feats, encoded["labels"][start : start + size].to(device), baselines))
    trainer.valuator.raise_checks()
    return torch.cat(out).double().cpu()


def _splits(trainer):
    return (
        ("train", trainer.train_set, trainer.train_indices),
        ("test", trainer.test_set, torch.arange(len(trainer.test_set))),
    )


@torch.no_grad()
def _encode_split(trainer, dataset, indices) -> dict:
    """Encoder features n x (N, d_i) (CPU, float32) and labels (N,) of dataset[indices], in order."""
    feats, labels = [[] for _ in range(trainer.n)], []
    for batch in trainer.ordered_loader(dataset, indices.tolist(), "study-probe"):
        with trainer.autocast():
            encoded = trainer.core.encode(trainer.inputs_to_device(batch))
        for i, f in enumerate(encoded):
            feats[i].append(f.float().cpu())
        labels.append(batch["label"])
    return {"features": [torch.cat(f) for f in feats], "labels": torch.cat(labels)}


@torch.no_grad()
def _head_alone(core, features: list, i: int, baselines) -> torch.Tensor:
    """Head logits (N, C) with only modality i present, the others removed as the model removes them:
    zero features, or (``--removal input``) their encoders' outputs on a zero input (`baselines`)."""
    device = next(core.parameters()).device
    feats = []
    for j, f in enumerate(features):
        f = f.to(device)
        if j != i:
            f = torch.zeros_like(f) if baselines is None else baselines[j].to(device, f.dtype).expand_as(f)
        feats.append(f)
    return core.head(feats).float().cpu()


def _carries_signal(dataset, indices) -> torch.Tensor | None:
    """(N, n) bool: modality i carries the label in sample indices[j] (synthetic data only, else None)."""
    informative = getattr(dataset, "informative", None)
    weak = getattr(dataset, "weak_by_modality", None)
    if informative is None or weak is None:
        return None
    n = len(weak)
    inf = informative[indices]
    carries = torch.nn.functional.one_hot(inf, n).bool()
    return carries | torch.tensor([w > 0 for w in weak]).view(1, n)


def linear_probe(train_x, train_y, test_x, classes: int, l2: float = 1e-3, iterations: int = 50) -> torch.Tensor:
    """Predicted test labels of a multinomial logistic regression on standardised features.

    train_x (N, d), train_y (N,), test_x (M, d) -> (M,) int64. Full-batch L-BFGS in float64 from zero
    weights: deterministic, and the same procedure whatever method trained the encoder."""
    train_x, test_x = train_x.double(), test_x.double()
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-8)
    a, b = (train_x - mean) / std, (test_x - mean) / std
    weight = torch.zeros(a.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(a @ weight + bias, train_y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (b @ weight + bias).argmax(-1)


# ------------------------------------------------------------------------------------------------------
# one run


def run_one(spec: dict) -> dict:
    """Train one (setting, arm, seed) and measure it; never raises (``status`` says what happened)."""
    from fastshap_train.engine import Trainer
    from fastshap_train.methods._common import NotApplicable

    row = {k: spec[k] for k in ("setting", "arm", "method", "seed")}
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        trainer = Trainer(run_config(spec), overwrite=spec["overwrite"])
        try:
            results = trainer.fit()
            history = trainer.history
            row.update(test_acc=results["final_test_acc"], train_loss=history[-1]["train_loss"])
            # training rows per epoch over the originals: what the copies cost in optimizer steps
            row["rows_ratio"] = sum(r["train_rows"] for r in history) / (len(history) * len(trainer.train_indices))
            row.update(diagnostics(trainer))
            row["status"] = "ok"
        finally:
            trainer.close()
    except NotApplicable as exc:
        row.update(status="n/a", message=str(exc))
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the study
        row.update(status="error", message=f"{type(exc).__name__}: {exc}")
        traceback.print_exc()
    row["seconds"] = round(time.perf_counter() - start, 2)
    row["cpu_seconds"] = round(time.process_time() - cpu_start, 2)  # what the run cost, whatever else ran
    if row["status"] == "ok":  # beside the run's own files: --reuse reads it instead of training again
        (Path(spec["out"]) / ROW_FILE).write_text(json.dumps({"spec": _spec_identity(spec), "row": row}))
    return row


#: Each finished run's measures, in its folder.
ROW_FILE = "study.json"


def _spec_identity(spec: dict) -> dict:
    """What makes two planned runs the same run (JSON-normalised)."""
    keys = ("setting", "arm", "method", "seed", "dataset", "views", "overrides")
    return json.loads(json.dumps({k: spec[k] for k in keys}))


def reused_row(spec: dict) -> dict | None:
    """The measures of a finished run of exactly this spec (--reuse), or None."""
    path = Path(spec["out"]) / ROW_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved["row"] if saved.get("spec") == _spec_identity(spec) else None


# ------------------------------------------------------------------------------------------------------
# the sweep


#: Options every run gets: the final model is measured once (no per-epoch test or validation passes), and
#: the measures above replace what a run's own valuation logging would add.
RUN_OPTIONS = {"eval_every": 10**6, "select": "none", "batch_size": 64}


def plan_runs(settings: list, arms: list, seeds: int, out: Path, quick: bool, overrides: dict, overwrite: bool):
    """Every (setting, arm, seed) as a spec for :func:`run_one` (and compare's run_config)."""
    runs = []
    for setting in settings:
        for arm in arms:
            for seed in range(seeds):
                values = {**RUN_OPTIONS, **setting.options, **(setting.quick_options if quick else {})}
                # each seed its own data; every arm the same data at a given seed (paired comparisons)
                values["syn_seed" if setting.dataset == "synthetic" else "split_seed"] = seed
                values.update(arm.options)
                values.update(overrides)
                if arm.epochs_factor != 1.0:
                    values["epochs"] = max(1, round(int(values["epochs"]) * arm.epochs_factor))
                runs.append(
                    {
                        "setting": setting.name,
                        "arm": arm.name,
                        "method": arm.method,
                        "seed": seed,
                        "dataset": setting.dataset,
                        "views": ",".join(setting.views),
                        "out": str(out / "runs" / setting.name / arm.name / f"seed{seed}"),
                        "config": [],
                        "overrides": values,
                        "threads": 1,  # small models: one thread per run, runs in parallel (--jobs)
                        "overwrite": overwrite,
                        "metric": "final",
                    }
                )
    return runs


def check_runs(runs: list) -> None:
    """Resolve each (setting, arm) before the first run: a wrong option stops the study at once."""
    from fastshap_train.data import check_dataset_options

    for spec in runs:
        if spec["seed"] == 0:
            try:
                check_dataset_options(run_config(spec))
            except ValueError as exc:  # ConfigError, DataOptionError
                raise type(exc)(f"{spec['setting']}, {spec['arm']}: {exc}") from None


def check_overrides(settings: list, overrides: dict) -> None:
    """A --set of another dataset's option would be silently ignored by the runs: refuse it."""
    from fastshap_train.data import dataset_entry, dataset_names

    data_options = {k for name in dataset_names() for k in dataset_entry(name).options}
    for setting in settings:
        own = set(dataset_entry(setting.dataset).options)
        foreign = sorted(k for k in overrides if k in data_options - own)
        if foreign:
            raise ValueError(
                f"{setting.name}: --set {', '.join(foreign)}: not an option of dataset {setting.dataset} "
                "(name the settings it applies to)"
            )


def execute(runs: list, jobs: int, report, reuse: bool = False) -> list:
    """Run every spec (in `jobs` spawned processes), calling report(row, done) as each ends; rows in spec
    order. `reuse`: a run whose folder holds the measures of the same spec is read, not trained again."""
    rows = [reused_row(spec) if reuse else None for spec in runs]
    for done, row in enumerate(r for r in rows if r is not None):
        report(row, done + 1, reused=True)
    todo = [i for i, row in enumerate(rows) if row is None]
    done = len(runs) - len(todo)
    if jobs == 1 or len(todo) <= 1:
        results = map(run_one, [runs[i] for i in todo])
        pool = None
    else:
        # spawn: a fresh interpreter per worker (no fork of a process that already holds torch threads)
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=get_context("spawn"))
        results = pool.map(run_one, [runs[i] for i in todo])
    try:
        for i, row in zip(todo, results):
            rows[i] = row
            done += 1
            report(row, done)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return rows


# ------------------------------------------------------------------------------------------------------
# statistics


def paired_comparison(values: dict, baseline: dict) -> dict:
    """Arm minus baseline, paired by seed: {seeds, mean, std, ci_low, ci_high, p_t, p_wilcoxon, wins, losses}.

    `values` / `baseline` map seed -> accuracy. The CI is the t interval of the mean difference (95%);
    p_t the paired t-test's two-sided p-value, p_wilcoxon the signed-rank test's (exact; with 5 seeds it
    cannot go below 0.0625). NaN where fewer than 2 seeds pair up."""
    from scipy import stats

    seeds = sorted(set(values) & set(baseline))
    diffs = [values[s] - baseline[s] for s in seeds]
    k = len(diffs)
    out = {"seeds": k, "wins": sum(d > 0 for d in diffs), "losses": sum(d < 0 for d in diffs)}
    if k < 2:
        return {**out, **dict.fromkeys(("mean", "std", "ci_low", "ci_high", "p_t", "p_wilcoxon"), math.nan)}
    mean = sum(diffs) / k
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (k - 1))
    half = float(stats.t.ppf(0.975, k - 1)) * std / math.sqrt(k)
    if std == 0:  # every seed moved by the same amount: no variance to test against
        p_t = 1.0 if mean == 0 else 0.0
    else:
        p_t = float(stats.ttest_rel([values[s] for s in seeds], [baseline[s] for s in seeds]).pvalue)
    nonzero = [d for d in diffs if d != 0]
    p_w = float(stats.wilcoxon(nonzero).pvalue) if nonzero else 1.0
    return {
        **out,
        "mean": mean,
        "std": std,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "p_t": p_t,
        "p_wilcoxon": p_w,
    }


def _mean_std(xs: list) -> tuple:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return math.nan, math.nan, 0
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return mean, std, len(xs)


def measures(rows: list) -> list:
    """The measure columns present in `rows`, in a stable order."""
    first = ["test_acc", "train_loss"]
    rest = sorted({k for r in rows for k in r if k not in RUN_FIELDS and k not in first})
    return first + rest


RUN_FIELDS = ("setting", "arm", "method", "seed", "status", "seconds", "cpu_seconds", "message")


def summarise(rows: list, settings: list, arms: list) -> list:
    """One dict per (setting, arm): mean / std / n of every measure, and the comparison with concat."""
    cols = measures(rows)
    by = {}
    for r in rows:
        by.setdefault((r["setting"], r["arm"]), []).append(r)
    out = []
    for s in settings:
        base = {r["seed"]: r["test_acc"] for r in by.get((s.name, BASELINE), []) if r["status"] == "ok"}
        for a in arms:
            cell = by.get((s.name, a.name), [])
            ok = [r for r in cell if r["status"] == "ok"]
            line = {"setting": s.name, "arm": a.name, "runs": len(cell), "ok": len(ok)}
            line["status"] = "ok" if ok else ("n/a" if cell and all(r["status"] == "n/a" for r in cell) else "error")
            for c in cols:
                mean, std, count = _mean_std([_num(r.get(c)) for r in ok])
                line[f"{c}_mean"], line[f"{c}_std"] = mean, std
            if a.name != BASELINE and not a.reference:
                cmp = paired_comparison({r["seed"]: r["test_acc"] for r in ok}, base)
                line.update({f"vs_concat_{k}": v for k, v in cmp.items()})
            out.append(line)
    return out


def _num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------------
# outputs


def _pct(x, digits=2) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}"


def _num_text(x, digits=3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _p_text(p) -> str:
    if p is None or not math.isfinite(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def markdown(summary: list, settings: list, arms: list, seeds: int, quick: bool, overrides: dict) -> str:
    cell = {(x["setting"], x["arm"]): x for x in summary}
    lines = [f"# Study: when does valuation-guided re-sampling help? ({'quick' if quick else 'full'} sweep)", ""]
    lines += ["## Settings", "", "| setting | data | question |", "|---|---|---|"]
    for s in settings:
        lines.append(f"| {s.name} | {_describe(s, quick, overrides)} | {s.question} |")
    lines += ["", "## Fused test accuracy (%)", ""]
    lines += ["| arm | " + " | ".join(s.name for s in settings) + " |", "|---|" + "---|" * len(settings)]
    for a in (a for a in arms if not a.reference):
        row = []
        for s in settings:
            c = cell.get((s.name, a.name))
            row.append(_acc_cell(c, cell.get((s.name, BASELINE))))
        lines.append(f"| {a.display} | " + " | ".join(row) + " |")
    lines += [
        "",
        f"Mean ± sample std over {seeds} seeds (each seed its own data and initialisation, shared by the arms). "
        "Bold: the mean differs from concat's with a paired t-test p < 0.05.",
        "",
        "## Difference from concat (points), paired over seeds",
        "",
    ]
    lines += ["| arm | " + " | ".join(s.name for s in settings) + " |", "|---|" + "---|" * len(settings)]
    for a in arms:
        if a.name == BASELINE or a.reference:
            continue
        row = []
        for s in settings:
            c = cell.get((s.name, a.name))
            if c is None or c["status"] != "ok" or not math.isfinite(c.get("vs_concat_mean", math.nan)):
                row.append(c["status"] if c else "–")
                continue
            row.append(
                f"{100 * c['vs_concat_mean']:+.2f} [{100 * c['vs_concat_ci_low']:+.2f}, "
                f"{100 * c['vs_concat_ci_high']:+.2f}] p={_p_text(c['vs_concat_p_t'])} "
                f"({c['vs_concat_wins']}/{c['vs_concat_losses']})"
            )
        lines.append(f"| {a.display} | " + " | ".join(row) + " |")
    lines += [
        "",
        "Mean difference [95% t interval], the paired t-test's p-value, and (seeds where the arm won / lost).",
        "",
        "## Diagnostics (means over seeds)",
        "",
        "probe fused / i: linear-probe test accuracy (%) on all encoders' / encoder i's frozen features; alone i: "
        "the fused head's test accuracy (%) with only modality i; phi gap: mean phi_0 - mean phi_1 over the "
        "training / test split (final model); copy loss: the head's cross-entropy with only modality 1 kept, "
        "training / test split (on synthetic data: over the samples where modality 1 is pure noise, when there "
        "are any); train loss: the "
        "last epoch's, over the plan's rows (copies included); rows: training rows per epoch over the originals "
        "(the optimizer steps the copies add). ln(10) = 2.30 is chance for 10 classes.",
        "",
    ]
    for s in settings:
        lines += [f"### {s.name}", ""]
        lines += [
            "| arm | test | probe fused | probe 0 | probe 1 | probe 1 (signal) | alone 0 | alone 1 | phi gap "
            "train / test | copy loss 1 train / test | train loss | rows |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for a in arms:
            c = cell.get((s.name, a.name))
            if c is None or c["status"] != "ok":
                lines.append(f"| {a.display} | {c['status'] if c else '–'} |" + " |" * 11)
                continue
            noise = "noise_copy_loss_train_1_mean"
            key = "noise_copy_loss" if math.isfinite(c.get(noise, math.nan)) else "copy_loss"
            lines.append(
                f"| {a.display} | {_pct(c['test_acc_mean'])} | {_pct(c.get('probe_fused_acc_mean'), 1)} | "
                f"{_pct(c.get('probe_acc_0_mean'), 1)} | "
                f"{_pct(c.get('probe_acc_1_mean'), 1)} | {_pct(c.get('probe_signal_acc_1_mean', math.nan), 1)} | "
                f"{_pct(c.get('alone_acc_0_mean'), 1)} | {_pct(c.get('alone_acc_1_mean'), 1)} | "
                f"{_num_text(c.get('phi_gap_mean'), 2)} / {_num_text(c.get('phi_gap_test_mean'), 2)} | "
                f"{_num_text(c.get(key + '_train_1_mean'))} / "
                f"{_num_text(c.get(key + '_test_1_mean'))} | {_num_text(c.get('train_loss_mean'))} | "
                f"{_num_text(c.get('rows_ratio_mean'), 2)} |"
            )
        lines.append("")
    return "\n".join(lines)


def _acc_cell(c, base) -> str:
    if c is None:
        return "–"
    if c["status"] != "ok":
        return c["status"]
    text = f"{_pct(c['test_acc_mean'])} ± {_pct(c['test_acc_std'])}"
    p = c.get("vs_concat_p_t", math.nan)
    return f"**{text}**" if math.isfinite(p) and p < 0.05 else text


def _describe(s: Setting, quick: bool, overrides: dict) -> str:
    opts = {**s.options, **(s.quick_options if quick else {}), **overrides}
    views = f"views {'+'.join(s.views)}; " if s.views else ""
    return f"{s.dataset}: {views}" + ", ".join(f"{k}={_fmt(v)}" for k, v in opts.items())


def _fmt(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def write_outputs(
    out: Path, rows: list, settings: list, arms: list, seeds: int, quick: bool, overrides: dict | None = None
) -> str:
    out.mkdir(parents=True, exist_ok=True)
    cols = measures(rows)
    with open(out / "runs.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(RUN_FIELDS[:4]) + cols + list(RUN_FIELDS[4:]), restval="")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _csv(r.get(k, "")) for k in writer.fieldnames})
    summary = summarise(rows, settings, arms)
    fields = list(dict.fromkeys(k for line in summary for k in line))
    with open(out / "summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        for line in summary:
            writer.writerow({k: _csv(v) for k, v in line.items()})
    text = markdown(summary, settings, arms, seeds, quick, overrides or {})
    (out / "tables.md").write_text(text)
    plot_deltas(summary, settings, arms, out / "delta.png")
    plot_probes(summary, settings, arms, out / "probes.png")
    return text


def _csv(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def _figure(settings: list, height=3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(settings))
    rows = math.ceil(len(settings) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, height * rows), dpi=72, squeeze=False)
    for ax in axes.flat[len(settings) :]:
        ax.axis("off")
    return plt, fig, axes.flat


def plot_deltas(summary: list, settings: list, arms: list, path) -> None:
    """Per setting, each arm's mean difference from concat (points) with its 95% CI."""
    cell = {(x["setting"], x["arm"]): x for x in summary}
    others = [a for a in arms if a.name != BASELINE and not a.reference]
    plt, fig, axes = _figure(settings, 0.35 * len(others) + 1.2)
    for ax, s in zip(axes, settings):
        for j, a in enumerate(others):
            c = cell.get((s.name, a.name))
            if not c or not math.isfinite(c.get("vs_concat_mean", math.nan)):
                continue
            m, lo, hi = (100 * c[f"vs_concat_{k}"] for k in ("mean", "ci_low", "ci_high"))
            color = "tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:gray"
            ax.errorbar([m], [j], xerr=[[m - lo], [hi - m]], fmt="o", color=color, capsize=2, ms=4)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(others)))
        ax.set_yticklabels([a.name for a in others], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(s.name, fontsize=9)
        ax.set_xlabel("test accuracy - concat (points)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_probes(summary: list, settings: list, arms: list, path) -> None:
    """Per setting, each arm's linear-probe test accuracy of encoder 0 and encoder 1."""
    cell = {(x["setting"], x["arm"]): x for x in summary}
    plt, fig, axes = _figure(settings, 0.35 * len(arms) + 1.2)
    for ax, s in zip(axes, settings):
        for i, marker in ((0, "s"), (1, "o")):
            xs, ys = [], []
            for j, a in enumerate(arms):
                c = cell.get((s.name, a.name))
                if c and math.isfinite(c.get(f"probe_acc_{i}_mean", math.nan)):
                    xs.append(100 * c[f"probe_acc_{i}_mean"])
                    ys.append(j)
            ax.plot(xs, ys, marker, ms=4, label=f"encoder {i}")
        ax.set_yticks(range(len(arms)))
        ax.set_yticklabels([a.name for a in arms], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(s.name, fontsize=9)
        ax.set_xlabel("linear-probe test accuracy (%)", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m fastshap_train.study",
        description="When does valuation-guided re-sampling help? Sweep data regimes x methods x seeds.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="settings or groups to run (default: all); see --list")
    p.add_argument("--quick", action="store_true", help="the reduced sweep: fewer settings, arms, seeds, samples")
    p.add_argument(
        "--out", default=None, metavar="DIR", help="output directory (default runs/study or runs/study-quick)"
    )
    p.add_argument("--seeds", type=int, default=None, metavar="K", help="seeds 0..K-1 (default 5; --quick 3)")
    p.add_argument("--arms", default=None, metavar="A,B", help="arms, comma-separated (default all; --quick fewer)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="option override for every run")
    p.add_argument("--jobs", type=int, default=2, metavar="N", help="runs in parallel processes (default 2)")
    p.add_argument("--overwrite", action="store_true", help="replace a study already in --out")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep the runs of --out that finished with the same options (an interrupted or extended study); "
        "train the others",
    )
    p.add_argument("--list", action="store_true", help="list the settings, groups and arms, and exit")
    args = p.parse_args(argv)
    check_jobs(p, args.jobs)
    if args.seeds is None:
        args.seeds = 3 if args.quick else 5
    if not 2 <= args.seeds <= 100:
        p.error(f"--seeds must be in [2, 100] (the comparisons pair seeds), got {args.seeds}")
    args.out = Path(args.out or ("runs/study-quick" if args.quick else "runs/study"))
    owned = ("dataset", "method", "seed", "out", "resume", "views", "syn_seed", "split_seed")
    args.overrides = parse_overrides(p, args.set, {key: f"the study sets {key} itself" for key in owned})
    return args, p


def select(args, parser) -> tuple:
    """(settings, arms) the arguments ask for."""
    if args.names:
        settings = []
        for name in args.names:
            if name in GROUPS:
                settings += [SETTING_BY_NAME[n] for n in GROUPS[name]]
            elif name in SETTING_BY_NAME:
                settings.append(SETTING_BY_NAME[name])
            else:
                parser.error(f"unknown setting or group {name!r}; see --list")
        settings = [s for i, s in enumerate(settings) if s.name not in {t.name for t in settings[:i]}]
    else:
        settings = [s for s in SETTINGS if s.quick or not args.quick]
    if args.arms is not None:
        names = [a.strip() for a in args.arms.split(",") if a.strip()]
        unknown = [a for a in names if a not in ARM_BY_NAME]
        if unknown or not names:
            parser.error(f"unknown arm(s) {', '.join(unknown) or '(none given)'}; arms: {', '.join(ARM_BY_NAME)}")
        if BASELINE not in names:
            names.insert(0, BASELINE)  # every comparison is against it
        arms = [ARM_BY_NAME[a] for a in dict.fromkeys(names)]
    else:
        arms = [a for a in ARMS if a.name in QUICK_ARMS] if args.quick else list(ARMS)
    return settings, arms


def print_list() -> None:
    print("settings:")
    for s in SETTINGS:
        print(f"  {s.name:<24} {'(quick) ' if s.quick else ''}{s.question}")
    print("groups: " + ", ".join(f"{g} ({', '.join(ns)})" for g, ns in GROUPS.items()))
    print("arms: " + ", ".join(a.name for a in ARMS) + f" (--quick: {', '.join(QUICK_ARMS)})")


@reports_missing_packages("python -m fastshap_train.study")
def main(argv=None) -> int:
    args, parser = parse_args(argv)
    if args.list:
        print_list()
        return 0
    settings, arms = select(args, parser)
    runs = plan_runs(settings, arms, args.seeds, args.out, args.quick, args.overrides, args.overwrite or args.reuse)
    try:
        check_overrides(settings, args.overrides)
        check_runs(runs)
    except ValueError as exc:
        parser.error(str(exc))
    held = (args.out / "runs.csv").exists() or any(Path(r["out"]).exists() for r in runs)
    if held and not (args.overwrite or args.reuse):
        print(
            f"{parser.prog}: error: --out {args.out} already holds a study: --overwrite replaces it, --reuse "
            "keeps its finished runs",
            file=sys.stderr,
        )
        return 1
    print(f"{len(runs)} runs: {len(settings)} setting(s) x {len(arms)} arm(s) x {args.seeds} seeds", flush=True)
    start = time.perf_counter()

    def report(row, done, reused=False):
        acc = f"{100 * row['test_acc']:.2f}%" if row["status"] == "ok" else f"{row['status']} {row.get('message', '')}"
        acc += " (reused)" if reused else ""
        print(
            f"[{done}/{len(runs)}] {row['setting']} {row['arm']} seed {row['seed']}: {acc} ({row['seconds']:.1f} s)",
            flush=True,
        )

    rows = execute(runs, args.jobs, report, reuse=args.reuse)
    text = write_outputs(args.out, rows, settings, arms, args.seeds, args.quick, args.overrides)
    print()
    print(text)
    print(f"{len(runs)} runs in {time.perf_counter() - start:.0f} s; tables in {args.out / 'tables.md'}")
    return 1 if any(r["status"] == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
