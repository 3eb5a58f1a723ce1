"""What a run leaves in ``--out``: config, metrics, TensorBoard events, phi tables, plots, checkpoints.

    OUT/config.yaml           the resolved configuration (re-run with --config OUT/config.yaml)
    OUT/metrics.csv           one row per epoch (columns below)
    OUT/tensorboard/          event files: every metric, and phi histograms per modality
    OUT/phi/epoch_XXX.npz     per-sample phi (N, n) of the training set after epoch XXX (NaN: not valued)
    OUT/plots/*.png           phi_mean.png (mean phi per modality over epochs), phi_hist.png (per-sample
                              phi of the last valued epoch), accuracy.png (train / validation / test accuracy)
    OUT/results.json          final test accuracy; with a validation split the best epoch by validation
                              accuracy (best_epoch, best_val_acc) and the test accuracy there
                              (test_acc_at_best); final mean phi per modality, the modalities' short names
                              (modality_names: view0 -> fou), times
    OUT/last.pt, OUT/best.pt  checkpoints, written atomically (temporary file + os.replace); last.pt first:
                              it commits the epoch (the files above are restored from it on resume). best.pt:
                              the best validation accuracy, never the test split's (none without a validation
                              split: --select, --val-ratio)

metrics.csv columns: ``epoch, train_loss, train_acc, test_loss, test_acc, test_f1, [val_loss, val_acc, val_f1,]
lr, phi_mean_<modality>..., valued, resampled, train_rows, train_s, valuation_s, epoch_s, eval_s`` and the
method's own columns (``copies_<modality>``, ``weak_modality``, ...). Columns name a modality as the run's
summary does (``phi_mean_fou`` for uci-mfeat's view0; the phi tables and checkpoints keep the keys).
``train_loss`` and ``train_acc`` are over the rows the epoch trained on, re-sampled copies and altered
originals included (under re-sampling, not comparable with a baseline's; compare test or
validation accuracies). ``epoch_s`` = ``train_s + valuation_s`` (the epoch's training work); ``eval_s`` is the
test (and validation) pass.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from fastshap_train.errors import RunError

CHECKPOINT_FORMAT = "fastshap-training-checkpoint/1"

#: What a run writes in --out, as (folder, glob) pairs (a file's temporary twin ``.<name>.tmp<pid>`` included):
#: what --overwrite deletes, and nothing else, so that an --out holding other files never loses them.
_FILES = ("config.yaml", "metrics.csv", "results.json", "last.pt", "best.pt", "best-by-test.pt")
RUN_OUTPUTS = (
    *(("", name) for name in _FILES),
    *(("", f".{name}.tmp*") for name in _FILES),
    ("phi", "epoch_*.npz"),
    ("phi", ".epoch_*.npz.tmp*"),
    *(("plots", name) for name in ("phi_mean.png", "phi_hist.png", "accuracy.png")),
    ("tensorboard", "events.out.tfevents.*"),
)
#: The files that mean --out already holds a run's work (a config.yaml alone: a run that never trained).
_WORK = ("metrics.csv", "results.json", "last.pt", "best.pt")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not ours; the message names the file."""


def atomic_write_bytes(path, write) -> None:
    """Call write(tmp_path), then atomically move it over `path` (no torn file if the run is killed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def run_work(out) -> list:
    """The outputs of a run's work that `out` holds (empty: nothing a new run would lose)."""
    out = Path(out)
    found = [name for name in _WORK if (out / name).exists()]
    return found + (["phi/"] if any((out / "phi").glob("epoch_*.npz")) else [])


def prepare_out_dir(
    out, overwrite: bool = False, resume: str | None = None, write: bool = True, auto_resume: bool = False
) -> None:
    """Make sure --out can take this run, before anything is built or written.

    A directory that already holds a run is refused unless the run continues it (`resume` is a checkpoint
    inside it) or `overwrite` is set; then its outputs are deleted first, so that no file of the old run
    (an old epoch's phi table, an old best.pt) is left among the new ones. `write`: this process writes
    the outputs (rank 0) and creates or clears the directory; other ranks only check. `auto_resume`:
    --resume auto was given and found no checkpoint in `out` (`resume` is None).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a directory")
    continues = resume is not None and Path(resume).resolve().parent == out.resolve()
    if overwrite and continues:
        raise RunError(f"--overwrite would delete {resume}, which --resume continues from: pass only one of them")
    found = run_work(out)
    if found and not continues:
        if not overwrite and auto_resume:
            raise RunError(
                f"--out {out} holds a run ({', '.join(found)}) but no checkpoint to resume from (last.pt; "
                "was it trained with --no-checkpoint?): pass --overwrite to delete its outputs and start "
                "over (or choose another --out)"
            )
        if not overwrite:
            raise RunError(
                f"--out {out} already holds a run ({', '.join(found)}): pass --resume auto to continue it, "
                "or --overwrite to delete its outputs and start over (or choose another --out)"
            )
        if write:
            for folder, pattern in RUN_OUTPUTS:
                for path in (out / folder).glob(pattern):
                    path.unlink()
            for folder in {folder for folder, _ in RUN_OUTPUTS if folder}:
                with contextlib.suppress(OSError):  # left in place when it holds other files
                    (out / folder).rmdir()
    if write:
        # Temporary twins left by a run killed while writing (one per kill: their names hold the pid). Only one
        # run writes in an --out at a time, so none of them is being written now.
        for folder, pattern in RUN_OUTPUTS:
            if ".tmp" in pattern:
                for path in (out / folder).glob(pattern):
                    with contextlib.suppress(OSError):
                        path.unlink()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a path under a file, no permission, a read-only disk
            raise RunError(f"--out {out}: cannot create the directory: {exc.strerror or exc}") from None


def save_checkpoint(path, state: dict) -> None:
    state = {"format": CHECKPOINT_FORMAT, **state}
    atomic_write_bytes(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a fastshap training checkpoint ({CHECKPOINT_FORMAT})")
    return state


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


class RunOutputs:
    """Writes the run's files; every method is a no-op unless `enabled` (rank 0)."""

    def __init__(self, out_dir, enabled: bool = True, tensorboard: bool = True, save_phi: bool = True):
        self.dir = Path(out_dir)
        self.enabled = enabled
        self.save_phi = save_phi
        self._tb = None
        self._tb_wanted = tensorboard
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    # -- files --------------------------------------------------------------------------------------
    def write_config(self, cfg) -> None:
        if not self.enabled:
            return
        import yaml

        text = yaml.safe_dump(cfg.to_dict(), sort_keys=True)
        atomic_write_bytes(self.dir / "config.yaml", lambda tmp: Path(tmp).write_text(text))

    def write_metrics(self, history: list) -> None:
        if not self.enabled or not history:
            return
        columns = []
        for row in history:
            columns += [k for k in row if k not in columns]

        def write(tmp):
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns, restval="")
                writer.writeheader()
                for row in history:
                    writer.writerow({k: _fmt(v) for k, v in row.items()})

        atomic_write_bytes(self.dir / "metrics.csv", write)

    def write_phi(self, epoch: int, phi: np.ndarray, labels: np.ndarray | None, modalities) -> None:
        if not (self.enabled and self.save_phi):
            return
        payload = {
            "phi": phi.astype(np.float32),
            "valued": ~np.isnan(phi).any(1),
            "modalities": np.array(modalities),
            "epoch": np.array(epoch),
        }
        if labels is not None:
            payload["labels"] = labels
        atomic_write_bytes(self.dir / "phi" / f"epoch_{epoch:03d}.npz", lambda tmp: _savez(tmp, payload))

    def write_results(self, results: dict) -> None:
        if not self.enabled:
            return
        text = json.dumps({k: _plain(v) for k, v in results.items()}, indent=2, sort_keys=True)
        atomic_write_bytes(self.dir / "results.json", lambda tmp: Path(tmp).write_text(text + "\n"))

    # -- TensorBoard --------------------------------------------------------------------------------
    def tensorboard(self):
        if not (self.enabled and self._tb_wanted):
            return None
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                warnings.warn(f"TensorBoard events are not written: {exc}", stacklevel=2)
                self._tb_wanted = False
                return None
            self._tb = SummaryWriter(str(self.dir / "tensorboard"))
        return self._tb

    def log_scalars(self, epoch: int, row: dict, phi: np.ndarray | None, modalities) -> None:
        tb = self.tensorboard()
        if tb is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                tb.add_scalar(key, value, epoch)
        if phi is not None:
            for i, m in enumerate(modalities):
                col = phi[:, i]
                col = col[~np.isnan(col)]
                if col.size:
                    tb.add_histogram(f"phi/{m}", col, epoch)
        tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _savez(tmp, payload):
    # np.savez appends .npz to names without it; write through a file handle to keep the temp name.
    with open(tmp, "wb") as fh:
        np.savez(fh, **payload)


def _fmt(value):
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def read_metrics(path) -> list:
    """metrics.csv -> list of dicts with numbers parsed (empty cells -> NaN)."""
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            parsed = {}
            for k, v in row.items():
                if v == "":
                    parsed[k] = float("nan")
                    continue
                try:
                    parsed[k] = int(v)
                except ValueError:
                    try:
                        parsed[k] = float(v)
                    except ValueError:
                        parsed[k] = v
            rows.append(parsed)
    return rows
