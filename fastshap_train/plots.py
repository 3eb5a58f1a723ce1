"""PNG plots of a run (matplotlib, Agg backend: no display needed).

``python -m fastshap_train.plots OUT`` redraws a run's plots from its metrics.csv and phi tables.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fastshap_train.dependencies import reports_missing_packages


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _column(history, key):
    return np.array([row.get(key, float("nan")) for row in history], dtype=float)


def phi_mean_column(history: list, modality: str, labels=None) -> str:
    """The metrics.csv column of `modality`'s mean phi: ``phi_mean_<name>`` (``phi_mean_fou``), or in a file
    written before the columns took the modalities' names, ``phi_mean_<key>`` (``phi_mean_view0``)."""
    name = (labels or {}).get(modality, modality)
    if any(f"phi_mean_{name}" in row for row in history):
        return f"phi_mean_{name}"
    return f"phi_mean_{modality}"


def plot_phi_mean(history: list, modalities: Sequence[str], path, title: str = "", labels=None) -> Path | None:
    """Mean phi per modality over epochs (the paper's Figure 4a); `labels` maps modality keys to names."""
    keys = [phi_mean_column(history, m, labels) for m in modalities]
    if not history or not any(np.isfinite(_column(history, k)).any() for k in keys):
        return None
    plt = _pyplot()
    epochs = _column(history, "epoch")
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for m, k in zip(modalities, keys):
        ax.plot(epochs, _column(history, k), marker="o", ms=3, label=(labels or {}).get(m, m))
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean Shapley value")
    ax.set_title(title or "mean phi per modality")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def phi_hist_edges(phi: np.ndarray) -> np.ndarray:
    """Bin edges covering every value: the paper benefit's range [-(n-1)/2, (n+1)/2] widened to the data
    (the other benefits reach -1); one bin per multiple of 1/n! where the values are such multiples (the
    discrete benefits, n <= 4), else 40 bins (the probability benefit's values are continuous)."""
    n = phi.shape[1]
    lo, hi = min(-(n - 1) / 2, float(phi.min())), max((n + 1) / 2, float(phi.max()))
    scaled = phi * math.factorial(n)
    if n <= 4 and np.allclose(scaled, np.round(scaled), rtol=0, atol=1e-4):
        step = 1.0 / math.factorial(n)
        return np.arange(lo - step / 2, hi + step, step)
    return np.linspace(lo, hi, 41)


def plot_phi_hist(phi: np.ndarray, modalities: Sequence[str], path, title: str = "", labels=None) -> Path | None:
    """Histogram of per-sample phi per modality."""
    phi = np.asarray(phi, dtype=float)
    phi = phi[~np.isnan(phi).any(1)]
    if phi.size == 0:
        return None
    plt = _pyplot()
    n = phi.shape[1]
    edges = phi_hist_edges(phi)
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.hist([phi[:, i] for i in range(n)], bins=edges, label=[(labels or {}).get(m, m) for m in modalities])
    ax.set_xlabel("per-sample Shapley value")
    ax.set_ylabel("samples")
    ax.set_title(title or "per-sample phi")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_accuracy(history: list, path, title: str = "") -> Path | None:
    if not history:
        return None
    plt = _pyplot()
    epochs = _column(history, "epoch")
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    for key in ("train_acc", "val_acc", "test_acc"):
        y = _column(history, key)
        ok = np.isfinite(y)
        if ok.any():
            ax.plot(epochs[ok], y[ok], marker="o", ms=3, label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def run_plots(out_dir, history: list, modalities: Sequence[str], last_phi: np.ndarray | None, labels=None) -> list:
    folder = Path(out_dir) / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    made = [
        plot_phi_mean(history, modalities, folder / "phi_mean.png", labels=labels),
        plot_accuracy(history, folder / "accuracy.png"),
    ]
    if last_phi is not None:
        made.append(plot_phi_hist(last_phi, modalities, folder / "phi_hist.png", labels=labels))
    return [p for p in made if p is not None]


@reports_missing_packages("python -m fastshap_train.plots")
def main(argv=None) -> None:
    from fastshap_train.outputs import read_metrics

    parser = argparse.ArgumentParser(prog="python -m fastshap_train.plots", description="redraw a run's plots")
    parser.add_argument("out", help="the run's --out directory")
    args = parser.parse_args(argv)
    out = Path(args.out)
    history = read_metrics(out / "metrics.csv")
    # the columns' suffixes: the modalities' names (or, in older files, their keys)
    modalities = [k[len("phi_mean_") :] for k in history[0] if k.startswith("phi_mean_")] if history else []
    labels = None  # modality key -> name (uci-mfeat's view0 -> fou, ...), as the run drew them
    if (out / "results.json").is_file():
        import json

        results = json.loads((out / "results.json").read_text())
        labels = results.get("modality_names")
        modalities = results.get("modalities") or modalities
    tables = sorted((out / "phi").glob("epoch_*.npz"))
    last = None
    for path in reversed(tables):
        data = np.load(path)
        if data["valued"].any():
            last, modalities = data["phi"], [str(m) for m in data["modalities"]]  # the keys
            break
    for path in run_plots(out, history, modalities, last, labels):
        print(path)


if __name__ == "__main__":
    main()
