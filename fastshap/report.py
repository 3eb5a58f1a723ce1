"""What a trained model relies on: per-modality, per-class and per-sample tables of modality values.

    from fastshap.report import modality_report
    rep = modality_report([audio, visual], head, labels, names=["audio", "visual"])
    rep.per_modality()    # one row per modality: mean phi, share of phi < 1, accuracy alone, interactions
    rep.write("out/")     # report.md, CSV tables and PNG figures (the figures need matplotlib)

Everything comes from one :func:`fastshap.modality_interactions` call per chunk of samples (phi on its
diagonal) and the coalition values of the single modalities and the full set (:func:`fastshap.coalition_values`
with the accuracy benefit when the report's benefit is "probability"). Any model: features ``(B, d_i)``,
the fusion head and labels are all it needs. The files and columns are described in docs/report.md.

The most valued modality of a sample is the unique argmax of its phi row; a row whose maximum is shared is
a *tie* (index -1 in :func:`top_modality`), never silently the first modality: under the paper benefit ties
are common (n = 2: phi = (0.5, 0.5) whenever only the two together are right).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastshap import _validate, api, coalitions

#: Bytes of coalition values a report holds at once (it values the samples in chunks).
_CHUNK_BYTES = 1 << 28
#: Samples listed per modality among the most reliant.
TOP_SAMPLES = 10
#: Classes shown in report.md's per-class table (all of them are in per_class.csv).
_MD_CLASSES = 30


def top_modality(phi: torch.Tensor) -> torch.Tensor:
    """(B,) int64: the index of each row's unique largest phi, or -1 where the largest value is shared (a
    tie) or the row holds NaN. ``phi.argmax(1)`` would name the first of tied modalities instead."""
    if phi.shape[1] == 0:
        return torch.full((phi.shape[0],), -1, dtype=torch.long)
    top = phi.max(1, keepdim=True).values
    unique = (phi == top).sum(1) == 1
    return torch.where(unique, phi.argmax(1), -1)


@dataclass
class ModalityReport:
    """Per-sample results and the tables computed from them (all on the CPU).

    names: n modality names; labels (B,) int64; phi (B, n) float32; interactions (B, n, n) float32 (phi on
    the diagonal); alone_correct (B, n) bool: the coalition {i} alone predicts the label; full_correct (B,)
    bool: all modalities together do (the model's own accuracy); informative (B,) int64 or None: the
    ground-truth modality of each sample when the data knows it (the synthetic dataset); sample_ids (B,)
    int64: what the per-sample tables call each sample (default 0..B-1)."""

    names: tuple
    labels: torch.Tensor
    phi: torch.Tensor
    interactions: torch.Tensor
    alone_correct: torch.Tensor
    full_correct: torch.Tensor
    benefit: str = "paper"
    class_names: tuple | None = None
    informative: torch.Tensor | None = None
    sample_ids: torch.Tensor | None = None
    context: dict = field(default_factory=dict)  # shown at the top of report.md (run, split, checkpoint, ...)

    def __post_init__(self):
        if self.sample_ids is None:
            self.sample_ids = torch.arange(self.labels.shape[0])

    # -- basics -------------------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def samples(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        known = len(self.class_names) if self.class_names is not None else 0
        return max(known, int(self.labels.max()) + 1 if self.samples else 0)

    def class_name(self, c: int) -> str:
        return str(self.class_names[c]) if self.class_names is not None and c < len(self.class_names) else str(c)

    def top(self) -> torch.Tensor:
        """(B,) the most valued modality of each sample, -1 for a tie (:func:`top_modality`)."""
        return top_modality(self.phi)

    def only_through(self) -> torch.Tensor:
        """(B,) int64: the modality through which alone a correctly predicted sample is right (the model is
        right, exactly one single modality is right on its own), else -1."""
        single = self.alone_correct.sum(1) == 1
        return torch.where(self.full_correct & single, self.alone_correct.long().argmax(1), -1)

    def mean_interactions(self) -> torch.Tensor:
        """(n, n) float64: the mean of I_ij over the samples (mean phi on the diagonal)."""
        return self.interactions.double().mean(0) if self.samples else torch.full((self.n, self.n), math.nan)

    # -- tables (lists of dicts: one per row) -----------------------------------------------------------------
    def per_modality(self) -> list[dict]:
        """One row per modality: mean and standard deviation of phi, share of samples with phi < 1 (the
        paper's re-sampling threshold), accuracy of the modality alone, mean interaction with the others
        (the mean over samples and the other modalities of I_ij), share of samples where it is the most
        valued (ties excluded) and count of samples the model gets right through it only."""
        top, only = self.top(), self.only_through()
        phi = self.phi.double()
        off = self.interactions.double().sum(2) - phi  # row sums without the diagonal
        rows = []
        for i, name in enumerate(self.names):
            rows.append(
                {
                    "modality": name,
                    "mean_phi": _mean(phi[:, i]),
                    "std_phi": float(phi[:, i].std()) if self.samples > 1 else math.nan,
                    "share_phi_below_1": _mean((phi[:, i] < 1).double()),
                    "accuracy_alone": _mean(self.alone_correct[:, i].double()),
                    "mean_interaction": _mean(off[:, i] / (self.n - 1)) if self.n > 1 else math.nan,
                    "most_valued_share": _mean((top == i).double()),
                    "right_only_through": int((only == i).sum()),
                }
            )
        return rows

    def summary(self) -> dict:
        """Whole-set figures: samples, accuracy of the full model, share of ties for the most valued."""
        return {
            "samples": self.samples,
            "accuracy": _mean(self.full_correct.double()),
            "most_valued_tie_share": _mean((self.top() == -1).double()),
            "right_through_one_modality_only": int((self.only_through() >= 0).sum()),
            "benefit": self.benefit,
        }

    def per_class(self) -> list[dict]:
        """One row per class with samples: its accuracy, mean phi per modality and accuracy of each modality
        alone."""
        rows = []
        for c in range(self.num_classes):
            mask = self.labels == c
            count = int(mask.sum())
            if not count:
                continue
            row = {"class": c, "name": self.class_name(c), "samples": count}
            row["accuracy"] = _mean(self.full_correct[mask].double())
            for i, name in enumerate(self.names):
                row[f"mean_phi_{name}"] = _mean(self.phi[mask, i].double())
            for i, name in enumerate(self.names):
                row[f"accuracy_alone_{name}"] = _mean(self.alone_correct[mask, i].double())
            rows.append(row)
        return rows

    def per_sample(self) -> list[dict]:
        """One row per sample: id, label, whether the model is right, phi per modality, the pairwise
        interactions (I_<a>_<b>), whether each modality alone is right, the most valued modality (or
        "tie") and, when known, the informative one."""
        top, only = self.top().tolist(), self.only_through().tolist()
        pairs = list(zip(*(t.tolist() for t in coalitions.pairs(self.n))))
        phi, inter = self.phi.tolist(), self.interactions.tolist()
        alone, labels, ids = self.alone_correct.tolist(), self.labels.tolist(), self.sample_ids.tolist()
        full = self.full_correct.tolist()
        informative = self.informative.tolist() if self.informative is not None else None
        rows = []
        for b in range(self.samples):
            row = {"sample": ids[b], "label": labels[b], "correct": int(full[b])}
            row.update({f"phi_{m}": phi[b][i] for i, m in enumerate(self.names)})
            row.update({f"I_{self.names[i]}_{self.names[j]}": inter[b][i][j] for i, j in pairs})
            row.update({f"alone_correct_{m}": int(alone[b][i]) for i, m in enumerate(self.names)})
            row["most_valued"] = self.names[top[b]] if top[b] >= 0 else "tie"
            row["right_only_through"] = self.names[only[b]] if only[b] >= 0 else ""
            if informative is not None:
                row["informative"] = self.names[informative[b]]
            rows.append(row)
        return rows

    def most_reliant(self, k: int = TOP_SAMPLES) -> list[dict]:
        """Per modality, the k samples that rely on it most: the largest margin of its phi over the best
        other modality's (its phi itself when n = 1); ties keep sample order."""
        rows = []
        phi = self.phi.double()
        for i, name in enumerate(self.names):
            others = torch.cat([phi[:, :i], phi[:, i + 1 :]], 1)
            margin = phi[:, i] - (others.max(1).values if others.shape[1] else 0.0)
            order = sorted(range(self.samples), key=lambda b: (-margin[b].item(), b))[:k]
            for rank, b in enumerate(order, start=1):
                row = {"modality": name, "rank": rank, "sample": int(self.sample_ids[b]), "label": int(self.labels[b])}
                row["margin"] = float(margin[b])
                row.update({f"phi_{m}": float(phi[b, j]) for j, m in enumerate(self.names)})
                row["correct"] = int(self.full_correct[b])
                rows.append(row)
        return rows

    def single_modality_correct(self) -> list[dict]:
        """The samples the model gets right through one modality only (see :meth:`only_through`)."""
        only = self.only_through()
        return [
            {
                "sample": int(self.sample_ids[b]),
                "label": int(self.labels[b]),
                "modality": self.names[int(only[b])],
                **{f"phi_{m}": float(self.phi[b, j]) for j, m in enumerate(self.names)},
            }
            for b in only.ge(0).nonzero().flatten().tolist()
        ]

    def ground_truth(self) -> list[dict] | None:
        """When the informative modality of each sample is known: how often the most valued modality is it,
        per informative modality and over all samples (shares of samples: the top is the informative one,
        a tie, another modality; and the share of untied samples whose most valued modality is the
        informative one). None when it is not known."""
        if self.informative is None:
            return None
        top = self.top()
        rows = []
        groups = [(name, self.informative == i) for i, name in enumerate(self.names)]
        for name, mask in [*groups, ("all", torch.ones_like(self.informative, dtype=torch.bool))]:
            count = int(mask.sum())
            hit = top[mask] == self.informative[mask]
            tie = top[mask] == -1
            rows.append(
                {
                    "informative": name,
                    "samples": count,
                    "top_is_informative": _mean(hit.double()),
                    "tie": _mean(tie.double()),
                    "top_is_other": _mean((~hit & ~tie).double()),
                    "informative_among_untied": _mean(hit[~tie].double()),
                    "accuracy": _mean(self.full_correct[mask].double()),
                }
            )
        return rows

    # -- files ------------------------------------------------------------------------------------------------
    def write(self, out_dir, figures: bool = True) -> dict:
        """Writes report.md, the CSV tables and (``figures``) the PNG figures into `out_dir`; returns
        {file name: path} of what it wrote. Figures need matplotlib (drawn with the Agg canvas: no display)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = {}
        tables = {
            "per_modality": self.per_modality(),
            "per_class": self.per_class(),
            "per_sample": self.per_sample(),
            "most_reliant": self.most_reliant(),
            "single_modality_correct": self.single_modality_correct(),
            "interactions": self._interaction_rows(),
        }
        truth = self.ground_truth()
        if truth is not None:
            tables["ground_truth"] = truth
        headers = {"single_modality_correct": ["sample", "label", "modality", *(f"phi_{m}" for m in self.names)]}
        for name, rows in tables.items():
            written[f"{name}.csv"] = _write_csv(out / f"{name}.csv", rows, headers.get(name))
        if figures:
            written.update(draw_figures(self, out))
        written["report.md"] = out / "report.md"
        written["report.md"].write_text(self.markdown(written, tables))
        return written

    def _interaction_rows(self) -> list[dict]:
        mean = self.mean_interactions().tolist()
        return [{"modality": a, **{b: mean[i][j] for j, b in enumerate(self.names)}} for i, a in enumerate(self.names)]

    def markdown(self, written: dict | None = None, tables: dict | None = None) -> str:
        """report.md's text (the figures and files it links are those of `written`, {file name: path})."""
        written = written or {}
        tables = tables or {}
        summary = self.summary()
        lines = ["# Modality report", ""]
        for key, value in self.context.items():
            lines.append(f"- {key}: {value}")
        lines += [
            f"- samples: {summary['samples']}; accuracy: {_fmt(summary['accuracy'])}; benefit: {self.benefit}",
            f"- most valued modality shared by several (a tie): {_fmt(summary['most_valued_tie_share'])} of the "
            f"samples; right through one modality only: {summary['right_through_one_modality_only']} samples",
            "",
            "## Per modality",
            "",
        ]
        columns = [
            ("modality", "modality"),
            ("mean_phi", "mean phi"),
            ("share_phi_below_1", "phi < 1"),
            ("accuracy_alone", "accuracy alone"),
            ("mean_interaction", "mean interaction"),
            ("most_valued_share", "most valued"),
            ("right_only_through", "right only through it"),
        ]
        lines += _md_table(tables.get("per_modality") or self.per_modality(), columns)
        lines += [
            "",
            "phi: the modality's Shapley value; phi < 1: share of samples below the paper's re-sampling threshold; "
            "accuracy alone: the coalition of that modality only; mean interaction: mean over samples and the "
            "other modalities of the pairwise Shapley interaction index (> 0 complementary, < 0 redundant); "
            "most valued: share of samples where its phi is the unique largest.",
            "",
        ]
        truth = tables.get("ground_truth") if tables else self.ground_truth()
        if truth is not None:
            lines += ["## Most valued modality against the ground truth", ""]
            lines += _md_table(
                truth,
                [
                    ("informative", "informative modality"),
                    ("samples", "samples"),
                    ("top_is_informative", "most valued is it"),
                    ("tie", "tie"),
                    ("top_is_other", "another"),
                    ("informative_among_untied", "it, ties left out"),
                    ("accuracy", "accuracy"),
                ],
            )
            lines.append("")
        if self.n > 1:
            lines += ["## Mean pairwise interactions (mean phi on the diagonal)", ""]
            lines += _md_table(self._interaction_rows(), [("modality", ""), *((m, m) for m in self.names)])
            lines.append("")
        per_class = tables.get("per_class") or self.per_class()
        lines += ["## Per class", ""]
        columns = [("name", "class"), ("samples", "samples"), ("accuracy", "accuracy")]
        columns += [(f"mean_phi_{m}", f"phi {m}") for m in self.names]
        columns += [(f"accuracy_alone_{m}", f"alone {m}") for m in self.names]
        lines += _md_table(per_class[:_MD_CLASSES], columns)
        if len(per_class) > _MD_CLASSES:
            lines.append(f"\n({len(per_class) - _MD_CLASSES} more classes in per_class.csv)")
        lines.append("")
        figures = [name for name in written if name.endswith(".png")]
        if figures:
            lines += ["## Figures", ""]
            lines += [f"![{name.removesuffix('.png')}]({name})" for name in figures]
            lines.append("")
        files = [name for name in written if name.endswith(".csv")]
        if files:
            lines += ["## Files", "", ", ".join(files), ""]
        return "\n".join(lines)


def modality_report(
    features: Sequence[torch.Tensor],
    head: api.Head,
    labels: torch.Tensor,
    *,
    baselines: Sequence[torch.Tensor] | None = None,
    benefit: str = "paper",
    backend: str = "auto",
    names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    informative: torch.Tensor | None = None,
    sample_ids: torch.Tensor | None = None,
    context: dict | None = None,
) -> ModalityReport:
    """Values every sample and returns the report's per-sample results (tables: :class:`ModalityReport`).

    Args: features, head, labels ``(B,)``, baselines, benefit, backend: those of
    :func:`fastshap.modality_shapley`; names: n modality names (default ``m0, m1, ...``); class_names: a
    name per class; informative: ``(B,)`` the ground-truth informative modality of each sample, if known;
    sample_ids: ``(B,)`` what the per-sample tables call each sample (e.g. dataset indices); context:
    key-value lines for report.md's header.
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(
            f"fastshap: a modality report needs one label per sample, labels (B,); got {shape} (per-segment "
            f"labels have no per-class table: value them with fastshap.modality_interactions)"
        )
    # the API's own checks first: the chunks below slice the features, baselines and labels
    features = _validate.check_features(features)
    baselines = _validate.check_baselines(baselines, features)
    n, batch = len(features), labels.shape[0]
    names = _names(names, n)
    informative = _per_sample(informative, batch, "informative", high=n)
    sample_ids = _per_sample(sample_ids, batch, "sample_ids")
    if class_names is not None:
        if isinstance(class_names, str) or not isinstance(class_names, Sequence):
            raise TypeError(f"fastshap: class_names must be a list of names, got {type(class_names).__name__}")
        class_names = tuple(str(c) for c in class_names)
    count = 1 << n
    step = max(1, _CHUNK_BYTES // (count * 4))
    kwargs = dict(baselines=baselines, benefit=benefit, backend=backend)
    singles = [1 << i for i in range(n)]
    phi, inter, alone, full = [], [], [], []
    for b0 in range(0, max(batch, 1), step):
        rows = slice(b0, min(batch, b0 + step))
        feats = [f[rows] for f in features]
        base = [b[rows] if b.dim() == 2 else b for b in baselines] if baselines is not None else None
        kwargs["baselines"] = base
        got = coalitions.modality_interactions(feats, head, labels[rows], **kwargs)
        # correctness of {i} and of N: under "paper" v = |S| 1[correct] and under "accuracy" v = 1[correct];
        # the probability benefit's values say nothing about argmax, so its correctness takes one more call
        kwargs_correct = dict(kwargs, benefit="accuracy" if benefit == "probability" else benefit)
        values = coalitions.coalition_values(feats, head, labels[rows], **kwargs_correct)
        inter.append(got.cpu())
        phi.append(got.diagonal(dim1=1, dim2=2).cpu())
        alone.append(values[:, singles].cpu() != 0)
        full.append(values[:, count - 1].cpu() != 0)
    return ModalityReport(
        names=names,
        labels=labels.detach().cpu().long(),
        phi=torch.cat(phi),
        interactions=torch.cat(inter),
        alone_correct=torch.cat(alone),
        full_correct=torch.cat(full),
        benefit=benefit,
        class_names=class_names,
        informative=informative,
        sample_ids=sample_ids,
        context=dict(context or {}),
    )


def _names(names, n: int) -> tuple:
    if names is None:
        return tuple(f"m{i}" for i in range(n))
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"fastshap: names must be a list of {n} modality names, got {type(names).__name__}")
    names = tuple(str(m) for m in names)
    if len(names) != n:
        raise ValueError(f"fastshap: {len(names)} names given for {n} modalities")
    if len(set(names)) != n:
        raise ValueError(f"fastshap: modality names must be distinct, got {list(names)}")
    return names


def _per_sample(values, batch: int, what: str, high: int | None = None) -> torch.Tensor | None:
    if values is None:
        return None
    values = torch.as_tensor(values)
    if values.dtype == torch.bool or values.is_floating_point() or values.is_complex():
        raise TypeError(f"fastshap: {what} must hold integers, got {values.dtype}")
    if tuple(values.shape) != (batch,):
        raise ValueError(f"fastshap: {what} must be ({batch},), one per sample, got {tuple(values.shape)}")
    values = values.detach().cpu().long()
    if high is not None and batch and bool(((values < 0) | (values >= high)).any()):
        raise ValueError(f"fastshap: {what} must be modality indices in [0, {high})")
    return values


def _mean(x: torch.Tensor) -> float:
    return float(x.mean()) if x.numel() else math.nan


def _fmt(x) -> str:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def _md_table(rows: list[dict], columns: list[tuple]) -> list[str]:
    if not rows:
        return ["(no rows)"]
    out = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_fmt(row.get(key, "")) for key, _ in columns) + " |" for row in rows]
    return out


def _write_csv(path: Path, rows: list[dict], header: list | None = None) -> Path:
    header = header or (list(rows[0]) if rows else [])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


# -------------------------------------------------------------------------------------------------------------
# figures (matplotlib, imported here only: fastshap itself needs only torch)


def draw_figures(report: ModalityReport, out_dir) -> dict:
    """modalities.png (mean phi with its spread, share of phi < 1, accuracy alone against the model's),
    classes.png (per class: mean phi and accuracy alone per modality, heatmaps) and, for n > 1,
    interactions.png (mean pairwise interactions). Drawn on matplotlib's Agg canvas through the object
    API: no display, and the caller's pyplot backend is left alone."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            f"fastshap: the report's figures need matplotlib ({exc}); install it (pip install matplotlib) or "
            f"write the report with figures=False"
        ) from None
    out = Path(out_dir)
    written = {}
    names = list(report.names)
    rows = report.per_modality()
    x = list(range(report.n))

    fig = Figure(figsize=(3.0 + 1.6 * report.n, 3.4), dpi=100)
    left, right = fig.subplots(1, 2)
    means = [r["mean_phi"] for r in rows]
    spread = [0.0 if math.isnan(r["std_phi"]) else r["std_phi"] for r in rows]
    left.bar(x, means, yerr=spread, color="tab:blue", alpha=0.8, capsize=3)
    for i, r in enumerate(rows):  # at the foot of the bar, clear of the error bar
        left.text(i, 0, f"{r['share_phi_below_1']:.0%}\nbelow 1", ha="center", va="bottom", fontsize=7, color="white")
    left.axhline(1.0, color="grey", lw=0.8, ls=":")
    left.set_title("mean phi (± std; share of phi < 1)", fontsize=9)
    right.bar(x, [r["accuracy_alone"] for r in rows], color="tab:green", alpha=0.8)
    accuracy = report.summary()["accuracy"]
    right.axhline(accuracy, color="black", lw=1, ls="--", label=f"all modalities {accuracy:.2f}")
    right.set_ylim(0, 1)
    right.set_title("accuracy alone", fontsize=9)
    right.legend(fontsize=7, loc="lower right")
    for ax in (left, right):
        ax.set_xticks(x, names, fontsize=8, rotation=30 if report.n > 4 else 0)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(_figure_title(report), fontsize=9)
    fig.tight_layout()
    written["modalities.png"] = _save(fig, out / "modalities.png")

    per_class = report.per_class()
    if per_class:
        phi = [[r[f"mean_phi_{m}"] for m in names] for r in per_class]
        alone = [[r[f"accuracy_alone_{m}"] for m in names] for r in per_class]
        labels = [r["name"] for r in per_class]
        height = min(40.0, 1.4 + 0.22 * len(per_class))
        fig = Figure(figsize=(2.6 + 1.2 * report.n, height), dpi=100)
        left, right = fig.subplots(1, 2, sharey=True)
        _heatmap(fig, left, phi, labels, names, "mean phi per class", "viridis")
        _heatmap(fig, right, alone, labels, names, "accuracy alone per class", "Greens", low=0.0, high=1.0)
        left.set_ylabel("class", fontsize=8)
        fig.suptitle(_figure_title(report), fontsize=9)
        fig.tight_layout()
        written["classes.png"] = _save(fig, out / "classes.png")

    if report.n > 1:
        mean = report.mean_interactions()
        off = mean.clone()
        off.fill_diagonal_(float("nan"))
        fig = Figure(figsize=(2.2 + 0.7 * report.n, 1.8 + 0.6 * report.n), dpi=100)
        ax = fig.subplots()
        _heatmap(fig, ax, off.tolist(), names, names, "mean pairwise interaction (diagonal: mean phi)", "PuOr_r",
                 centre=0.0, diagonal=mean.diagonal().tolist())  # fmt: skip
        fig.tight_layout()
        written["interactions.png"] = _save(fig, out / "interactions.png")
    return written


def _figure_title(report: ModalityReport) -> str:
    """The data the figure is about: dataset and split when the report knows them, samples, benefit."""
    where = " ".join(str(report.context[k]) for k in ("dataset", "split") if k in report.context)
    return f"{where + ': ' if where else ''}{report.samples} samples, benefit {report.benefit}"


def _heatmap(fig, ax, table, row_labels, col_labels, title, cmap, centre=None, low=None, high=None, diagonal=None):
    """A heatmap of `table` (rows x columns, NaN cells blank) with its values written in the cells (in
    white on dark cells)."""
    data = torch.tensor(table, dtype=torch.float64)
    finite = data[torch.isfinite(data)]
    if centre is not None:
        reach = float((finite - centre).abs().max()) if finite.numel() else 1.0
        low, high = centre - (reach or 1.0), centre + (reach or 1.0)
    image = ax.imshow(data.numpy(), cmap=cmap, vmin=low, vmax=high, aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(col_labels)), col_labels, fontsize=8, rotation=30 if len(col_labels) > 4 else 0)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    ax.set_title(title, fontsize=9)
    if data.shape[0] * data.shape[1] > 600:  # too many cells to read their numbers
        return
    for r in range(data.shape[0]):
        for c in range(data.shape[1]):
            value = float(data[r, c])
            if diagonal is not None and r == c:
                ax.text(c, r, f"phi\n{diagonal[r]:.2f}", ha="center", va="center", fontsize=8, color="dimgrey")
            elif math.isfinite(value):
                red, green, blue, _ = image.cmap(image.norm(value))
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5
                ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")


def _save(fig, path: Path) -> Path:
    fig.savefig(path)
    return path
