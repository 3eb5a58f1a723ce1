"""What a trained run relies on: ``python -m fastshap_train.report RUN_DIR``, and :func:`load_run`.

    python -m fastshap_train.report runs/ks --split test --checkpoint best --out runs/ks/report-test

loads the run's checkpoint, encodes the split once in eval mode, values every sample (phi, the pairwise
interactions, each modality alone) through fastshap and writes the report of :mod:`fastshap.report`:
report.md, CSV tables and PNG figures (docs/report.md lists them). On the synthetic dataset the report also
says how often the most valued modality is the ground-truth informative one.

From Python::

    run = fastshap_train.load_run("runs/ks")            # model (eval mode), config, datasets
    features, labels, index = run.encode("test")
    phi = fastshap.modality_shapley(features, run.head, labels)
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

#: The checkpoints a run writes, by the name --checkpoint takes.
CHECKPOINTS = {"best": "best.pt", "last": "last.pt"}
SPLITS = ("test", "val", "train")


@dataclass
class Run:
    """A trained run, loaded for analysis.

    model: the run's MultimodalModel with the checkpoint's weights, in eval mode on `device`; config: its
    resolved Config; datasets: {"train", "test"[, "val"]} built with eval transforms; method: the run's
    Method (``run.head`` is what the trainer's valuation evaluates); checkpoint: the file loaded; epochs:
    epochs trained when it was written."""

    dir: Path
    config: object
    model: torch.nn.Module
    datasets: dict
    method: object
    checkpoint: Path
    epochs: int
    device: torch.device
    modalities: tuple = field(default=())

    @property
    def head(self):
        """The head fastshap values (the method's valuation head: the model's fusion head)."""
        return self.method.valuation_head()

    def modality_names(self) -> list[str]:
        """The names users give the modalities (uci-mfeat's view0 -> fou), in modality order."""
        data = self.datasets["train"]
        short = getattr(data, "short_name", None)
        return [short(m) if short else m for m in self.modalities]

    def baselines(self) -> list | None:
        """What replaces a removed modality in the run's valuation: Enc_i(zero input) for ``--removal
        input`` (eval mode), None (zero features) for feature removal."""
        if self.config.removal != "input":
            return None
        data = self.datasets["train"]
        zero = {m: data.zero_input(m).to(self.device) for m in self.modalities}
        return self.model.removed_features(zero)

    @torch.no_grad()
    def encode(self, split: str = "test", batch_size: int = 256):
        """The split's features, encoded once in eval mode: (n tensors (N, d_i) float32, labels (N,) or
        (N, T), dataset indices (N,)), all on the run's device."""
        if split not in self.datasets:
            raise ValueError(f"run {self.dir} has no {split!r} split; it has {', '.join(self.datasets)}")
        loader = DataLoader(self.datasets[split], batch_size=batch_size, shuffle=False, num_workers=0)
        feats, labels, index = [[] for _ in self.modalities], [], []
        for batch in loader:
            inputs = {m: batch[m].to(self.device) for m in self.modalities}
            for out, f in zip(feats, self.model.encode(inputs)):
                out.append(f.float())
            labels.append(batch["label"].to(self.device))
            index.append(batch["index"])
        if not labels:
            raise ValueError(f"the {split!r} split of run {self.dir} is empty")
        return [torch.cat(f) for f in feats], torch.cat(labels), torch.cat(index)


class _Host:
    """What a Method reads from its trainer while the model is built and its valuation head asked for."""

    def __init__(self, cfg, modalities, device):
        self.cfg = cfg
        self.modalities = tuple(modalities)
        self.device = device
        self.core = None
        self.epoch = 0


def _checkpoint_path(run_dir: Path, checkpoint) -> Path:
    from fastshap_train.outputs import CheckpointError

    if checkpoint is None:  # best.pt when the run selected one (a validation split), else last.pt
        for name in ("best.pt", "last.pt"):
            if (run_dir / name).is_file():
                return run_dir / name
        raise CheckpointError(
            f"{run_dir} holds no checkpoint (best.pt or last.pt): is it a run directory (--out of "
            f"fastshap-train), and was the run trained with --checkpoint?"
        )
    if checkpoint in CHECKPOINTS:
        path = run_dir / CHECKPOINTS[checkpoint]
        if not path.is_file():
            hint = " (best.pt needs a validation split: --select, --val-ratio)" if checkpoint == "best" else ""
            raise CheckpointError(f"run {run_dir} has no {path.name}{hint}")
        return path
    return Path(checkpoint)


def load_run(run_dir, checkpoint: str | None = None, *, device="cpu", data_root: str | None = None) -> Run:
    """Loads a trainer run for analysis: its model with a checkpoint's weights, its config and datasets.

    Args:
        run_dir: the run's ``--out`` directory.
        checkpoint: "best", "last", a path to a checkpoint, or None: best.pt when the run has one, else
            last.pt.
        device: where the model goes.
        data_root: the data's root when it has moved since the run (default: the run's ``--data-root``).

    The configuration is the one saved in the checkpoint (what the weights were trained with); the datasets
    are built from it with eval transforms, and must have the sizes and modalities the run trained on.
    """
    from fastshap_train.config import validate
    from fastshap_train.data import build_dataset, dataset_options, has_validation_split
    from fastshap_train.errors import ConfigError
    from fastshap_train.methods import build_method
    from fastshap_train.outputs import CheckpointError, load_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    path = _checkpoint_path(run_dir, checkpoint)
    state = load_checkpoint(path)
    try:
        cfg = validate(state["config"])
        if data_root is not None:
            cfg = cfg.replace(data_root=str(data_root))
    except (ConfigError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path}: its configuration no longer validates: {exc}") from None
    opts = dataset_options(cfg)
    datasets = {
        split: build_dataset(cfg.dataset, cfg.data_root, split, augment=False, **opts) for split in ("train", "test")
    }
    if has_validation_split(cfg.dataset, opts):
        datasets["val"] = build_dataset(cfg.dataset, cfg.data_root, "val", augment=False, **opts)
    _check_same_data(state.get("data"), datasets, path)
    device = torch.device(device)
    modalities = tuple(datasets["train"].modalities)
    host = _Host(cfg, modalities, device)
    method = build_method(cfg, host)
    model = method.build_model(datasets["train"])
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit the run's model: {exc}") from None
    model.to(device).eval()
    host.core = model
    return Run(run_dir, cfg, model, datasets, method, path, int(state.get("epoch", 0)), device, modalities)


def _check_same_data(saved: dict | None, datasets: dict, path: Path) -> None:
    """The per-sample tables index the datasets: they must be the ones the run trained on."""
    from fastshap_train.outputs import CheckpointError

    if not saved:
        return
    here = {
        "train_samples": len(datasets["train"]),
        "test_samples": len(datasets["test"]),
        "modalities": list(datasets["train"].modalities),
    }
    diffs = [f"{k} {saved[k]} in the checkpoint, {v} here" for k, v in here.items() if k in saved and saved[k] != v]
    if diffs:
        raise CheckpointError(f"checkpoint {path} was trained on other data ({'; '.join(diffs)})")


def run_report(
    run_dir,
    split: str = "test",
    checkpoint: str | None = None,
    out=None,
    *,
    device="cpu",
    data_root: str | None = None,
    backend: str = "auto",
    figures: bool = True,
    batch_size: int = 256,
):
    """Writes the report of one split of a run into `out` (default RUN_DIR/report-<split>); returns
    (the fastshap.report.ModalityReport, {name: path written})."""
    from fastshap.report import modality_report

    run = load_run(run_dir, checkpoint, device=device, data_root=data_root)
    features, labels, index = run.encode(split, batch_size)
    if labels.dim() != 1:
        raise ValueError(
            f"dataset {run.config.dataset} has per-segment labels {tuple(labels.shape)}: the report's per-class "
            f"tables need one label per sample"
        )
    dataset = run.datasets[split]
    informative = getattr(dataset, "informative", None)  # the synthetic dataset's ground truth
    if informative is not None:
        informative = torch.as_tensor(informative)[index.cpu()]
    class_names = getattr(dataset, "class_names", None)
    context = {
        "run": str(run.dir),
        "dataset": run.config.dataset,
        "method": run.config.method,
        "checkpoint": f"{run.checkpoint.name} (after {run.epochs} epochs)",
        "split": split,
        "removal": run.config.removal,
    }
    report = modality_report(
        features,
        run.head,
        labels,
        baselines=run.baselines(),
        benefit=run.config.benefit,
        backend=backend,
        names=run.modality_names(),
        class_names=list(class_names) if class_names is not None else None,
        informative=informative,
        sample_ids=index,
        context=context,
    )
    out = Path(out) if out is not None else run.dir / f"report-{split}"
    return report, report.write(out, figures=figures)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastshap_train.report",
        description="What a trained run relies on: per-modality, per-class and per-sample modality values of one "
        "split, written as report.md, CSV tables and PNG figures.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run's --out directory")
    parser.add_argument("--split", choices=SPLITS, default="test", help="the split to value (default: test)")
    parser.add_argument(
        "--checkpoint",
        choices=tuple(CHECKPOINTS),
        default=None,
        help="which checkpoint (default: best.pt when the run has one, else last.pt)",
    )
    parser.add_argument("--out", default=None, help="where to write the report (default: RUN_DIR/report-<split>)")
    parser.add_argument("--data-root", default=None, help="the data's root, when it has moved since the run")
    parser.add_argument("--device", default="cpu", help="device for the model and the valuation (default: cpu)")
    parser.add_argument("--backend", default="auto", help="fastshap backend (default: auto)")
    parser.add_argument("--batch-size", type=int, default=256, help="encoding batch size (default: 256)")
    parser.add_argument("--no-figures", action="store_true", help="tables and report.md only (no matplotlib)")
    args = parser.parse_args(argv)

    from fastshap import BackendError
    from fastshap_train.data.base import DataFileError, DataOptionError
    from fastshap_train.errors import RunError
    from fastshap_train.outputs import CheckpointError

    try:
        report, written = run_report(
            args.run_dir,
            args.split,
            args.checkpoint,
            args.out,
            device=args.device,
            data_root=args.data_root,
            backend=args.backend,
            figures=not args.no_figures,
            batch_size=args.batch_size,
        )
    except (
        CheckpointError,
        DataFileError,
        DataOptionError,
        FileNotFoundError,
        RunError,
        BackendError,
        ValueError,
    ) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    print(f"report of {report.samples} samples ({args.split}) written to {written['report.md'].parent}")
    for row in report.per_modality():
        print(
            f"  {row['modality']}: mean phi {row['mean_phi']:.3f}, phi < 1 in {row['share_phi_below_1']:.0%}, "
            f"accuracy alone {row['accuracy_alone']:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
