"""The training loop: plain PyTorch, one epoch at a time, with valuation, re-sampling and exact resume.

``Trainer(cfg).fit()`` runs ``cfg.epochs`` epochs (see :mod:`fastshap_train.methods` for the hooks and
:mod:`fastshap_train.outputs` for the files). Reproducibility: a run is seeded (``--seed``); every random draw
of the data plan (shuffling, subsets, copies, masks) uses a generator derived from (seed, purpose, epoch),
and the global RNG states (torch, CUDA, numpy, random; per rank) are saved in the checkpoint, so on the
CPU a run of 4 epochs equals a run of 2 epochs resumed to 4, metric for metric.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, DistributedSampler

from fastshap_train import distributed
from fastshap_train.config import Config, RunError, resume_path
from fastshap_train.data import build_dataset, dataset_options, has_validation_split
from fastshap_train.data.base import DataFileError, Plan, PlanBatches, PlanDataset, Subset, keep_bits
from fastshap_train.methods import build_method
from fastshap_train.metrics import confusion_update, weighted_f1_from_confusion
from fastshap_train.outputs import (
    CheckpointError,
    RunOutputs,
    atomic_write_bytes,
    load_checkpoint,
    prepare_out_dir,
    save_checkpoint,
)
from fastshap_train.valuation import Valuator

# Options that may differ between a run and its resumption without breaking exactness. Not among them:
# workers (augmentation draws from the workers' RNGs instead of the process's), device and threads (other
# kernels and summation orders).
_RESUME_FREE = {"epochs", "resume", "out", "progress", "tensorboard", "plots", "save_phi", "checkpoint", "eval_every"}


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derived_seed(seed: int, *parts) -> int:
    """A 63-bit seed from the run seed and a purpose (stable across processes and Python versions)."""
    text = ":".join(str(p) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    """Builds data, model, method and optimiser from a Config; ``fit()`` trains and writes the outputs.

    An ``cfg.out`` that already holds a run is refused unless the run resumes it, or `overwrite` deletes
    that run's outputs first (:func:`fastshap_train.outputs.prepare_out_dir`).
    """

    def __init__(self, cfg: Config, overwrite: bool = False):
        self.cfg = cfg
        self.dist = distributed.setup(cfg.device)
        self.device = self.dist.device
        # Before anything is built: a refused --out costs nothing, and no file is written before the check.
        path = resume_path(cfg)
        auto_fresh = cfg.resume == "auto" and path is None  # nothing to resume yet: a new run
        prepare_out_dir(cfg.out, overwrite, path, write=self.dist.is_main, auto_resume=auto_fresh)
        if auto_fresh and self.dist.is_main:
            warnings.warn(f"--resume auto: no checkpoint in {cfg.out} yet, starting a new run", stacklevel=2)
        self._configure_runtime()
        seed_all(cfg.seed)

        opts = dataset_options(cfg)
        self.train_set = build_dataset(cfg.dataset, cfg.data_root, "train", augment=True, **opts)
        self.value_set = self.train_set.with_augment(cfg.valuation_augment)
        self.test_set = build_dataset(cfg.dataset, cfg.data_root, "test", augment=False, **opts)
        self.val_set = self._validation_set(opts)
        self.modalities = tuple(self.train_set.modalities)
        #: The names users give the modalities (uci-mfeat's fou, mor, ...): metrics.csv's columns, TensorBoard
        #: tags, the summary. The keys above (view0, view5, ...) index the phi tables, checkpoints and encoders.
        self.modality_names = modality_names(self.train_set)
        self.n = len(self.modalities)
        if cfg.batch_size % self.dist.world:
            raise RunError(f"batch_size {cfg.batch_size} must be a multiple of the {self.dist.world} processes")
        self.per_rank_batch = cfg.batch_size // self.dist.world

        self.epoch = 0  # the epoch being trained (or the next one)
        self.step = 0  # step within the epoch
        self.global_step = 0
        self.method = build_method(cfg, self)
        self.core = self.method.build_model(self.train_set).to(self.device)
        self.model = self.core
        if self.dist.active:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.core, device_ids=ids, find_unused_parameters=self.method.skips_parameters
            )
        self.optimizer = self._build_optimizer()
        step = cfg.lr_step if cfg.lr_step > 0 else 10**9
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=step, gamma=cfg.lr_gamma)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.valuator = Valuator(self)

        self.train_indices = torch.as_tensor(self.method.train_indices(len(self.train_set)), dtype=torch.long)
        self.plan: Plan = self.method.first_plan()
        self.history: list = []
        self.best = dict(_NO_BEST)
        self._test_selected_best = False  # a resumed checkpoint chose its best.pt on the test split
        self.last_phi: np.ndarray | None = None  # the most recent full phi table (N, n), NaN = not valued
        self.last_phi_epoch = -1  # the epoch that valued it
        self.outputs = RunOutputs(cfg.out, self.dist.is_main, cfg.tensorboard, cfg.save_phi)
        self.method.setup()
        self.has_batch_norm = any(isinstance(m, _BATCH_NORMS) for m in self.core.modules())
        self.saved_epochs = 0  # epochs committed in OUT/last.pt (what a resume after a Ctrl-C continues)

        if path is not None:
            self.load(path)
        self.outputs.write_config(cfg)

    # -- set-up ---------------------------------------------------------------------------------------
    def _validation_set(self, opts: dict):
        """The split that picks best.pt and the best epoch, or None (no model selection). Never the test
        split: a model picked on it reports an optimistic test accuracy."""
        cfg = self.cfg
        if cfg.select == "none":
            return None
        if not has_validation_split(cfg.dataset, opts):
            if cfg.select == "val":
                hint = " (set --val-ratio)" if "val_ratio" in opts else ""
                raise RunError(f"--select val: dataset {cfg.dataset} has no validation split{hint}")
            return None
        try:
            return build_dataset(cfg.dataset, cfg.data_root, "val", augment=False, **opts)
        except DataFileError as exc:
            if cfg.select == "val":
                raise
            if self.dist.is_main:
                warnings.warn(
                    f"no model selection: the validation split cannot be read ({exc}); --select none silences this",
                    stacklevel=3,
                )
            return None

    def _configure_runtime(self) -> None:
        cfg = self.cfg
        # Process-wide settings, restored by close() (tests and notebooks run several trainers).
        self._saved_runtime = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        deterministic = cfg.deterministic == "on" or (cfg.deterministic == "auto" and self.device.type == "cpu")
        if deterministic:
            if self.device.type == "cuda":
                import os

                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    def _build_optimizer(self):
        cfg = self.cfg
        params = [p for p in self.core.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _amp_dtype(self) -> torch.dtype | None:
        if self.device.type != "cuda" or self.cfg.amp == "off":
            return None
        if self.cfg.amp == "fp16":
            return torch.float16
        if self.cfg.amp == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def seed_for(self, purpose: str, *parts) -> int:
        """The seed of one random draw (`purpose`, e.g. an epoch's plan): the same on every rank and on resume."""
        return derived_seed(self.cfg.seed, purpose, *parts)

    def generator(self, purpose: str, *parts) -> torch.Generator:
        """A CPU generator for one random draw of the data plan, the same on every rank and on resume."""
        return torch.Generator().manual_seed(self.seed_for(purpose, *parts))

    def progress(self, iterable, desc: str):
        """Progress bars on a terminal (rank 0, --progress); elsewhere the epoch's log line says it all."""
        if not (self.cfg.progress and self.dist.is_main and interactive()):
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=f"epoch {self.epoch} {desc}", leave=False, dynamic_ncols=True)

    def log_epoch(self, row: dict) -> None:
        """One line per epoch where no progress bar is drawn (logs, CI): --progress without a terminal."""
        if not (self.cfg.progress and self.dist.is_main) or interactive():
            return
        print(epoch_line(row, self.cfg.epochs, self.modality_names), flush=True)

    def ordered_loader(self, dataset, indices, purpose: str) -> DataLoader:
        """Unshuffled batches of dataset[indices] for a pass that does not train (test, valuation, a
        method's probe), in valuation-sized batches.

        Its own generator: without one a DataLoader draws its workers' base seed from the global RNG on
        every pass, so an extra test pass (the last epoch of a run stopped early to be resumed) would move
        the RNG state that the resumed run restores, and its dropout and augmentation would differ."""
        return DataLoader(
            Subset(dataset, [int(i) for i in indices]),
            batch_size=self.cfg.valuation_batch_size or 2 * self.per_rank_batch,
            shuffle=False,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
            generator=self.generator(purpose, self.epoch),
        )

    def inputs_to_device(self, batch: dict) -> dict:
        return {m: batch[m].to(self.device, non_blocking=True) for m in self.modalities}

    # -- one epoch ------------------------------------------------------------------------------------
    def train_loader(self, plan: Plan) -> DataLoader:
        data = PlanDataset(self.train_set, plan)
        sampler = DistributedSampler(
            data, num_replicas=self.dist.world, rank=self.dist.rank, shuffle=True, seed=self.cfg.seed, drop_last=False
        )
        sampler.set_epoch(self.epoch)
        # Every rank gets as many rows (DistributedSampler pads), so the same batch sizes and step count.
        batches = PlanBatches(sampler, self.per_rank_batch)
        self._check_batch_norm(batches)
        return DataLoader(
            data,
            batch_sampler=batches,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
            # Worker seeds come from this generator, not from the global RNG.
            generator=self.generator("loader", self.epoch),
        )

    def _check_batch_norm(self, batches: PlanBatches) -> None:
        """Batch norm in train mode needs 2 rows a batch: a plan too small for that is an error line."""
        if self.has_batch_norm and batches.smallest() == 1:
            raise RunError(
                f"epoch {self.epoch} trains on batches of one row per process ({len(batches.sampler)} row(s), "
                f"batch size {self.per_rank_batch} per process), which batch-norm encoders cannot take: "
                "use a batch size of at least 2 per process and at least 2 training samples per process"
            )

    def train_epoch(self) -> dict:
        cfg, online = self.cfg, self.cfg.valuation == "online"
        self.model.train()
        if online:
            self.valuator.online_start(len(self.train_set))
        # loss * rows, correct label elements, label elements, rows: device sums, no per-step sync
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        params = [p for p in self.core.parameters() if p.requires_grad]
        for self.step, batch in enumerate(  # noqa: B020  (self.step: the step's number, for the hooks)
            self.progress(self.train_loader(self.plan), "train")
        ):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            batch["keep_bits"] = keep_bits(batch["keep"], self.n)
            batch = self.method.on_batch(batch)
            with self.autocast():
                out = self.model(self.inputs_to_device(batch), batch["keep_bits"])
                loss = self.method.loss(out, batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.scaler.is_enabled():
                self.scaler.unscale_(self.optimizer)
            self.method.after_backward(out, batch)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if online:
                self.valuator.online_update(out, batch)
            with torch.no_grad():
                labels = batch["label"]
                sums[0] += loss.detach().double() * labels.shape[0]
                sums[1] += _correct(out.logits, labels)
                sums[2] += labels.numel()
                sums[3] += labels.shape[0]
            self.global_step += 1
        sums = distributed.all_reduce_sum(sums, self.dist)
        return {"train_loss": float(sums[0] / sums[3].clamp_min(1)), "train_acc": float(sums[1] / sums[2].clamp_min(1))}

    @torch.no_grad()
    def evaluate(self, dataset=None, split: str = "test") -> dict:
        """`split`_loss, _acc and _f1 (weighted F1) on `dataset` (default: the test split); every label
        element counts: per-segment tasks average over segments."""
        dataset = dataset if dataset is not None else self.test_set
        loader = self.ordered_loader(dataset, range(self.dist.rank, len(dataset), self.dist.world), split)
        was_training = self.core.training
        self.core.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        classes = self.train_set.num_classes
        confusion = torch.zeros(classes, classes, dtype=torch.float64, device=self.device)
        for batch in self.progress(loader, split):
            labels = batch["label"].to(self.device, non_blocking=True)
            with self.autocast():
                logits = self.core(self.inputs_to_device(batch)).logits
            sums[0] += F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), reduction="sum").double()
            sums[1] += _correct(logits, labels)
            sums[2] += labels.numel()
            confusion_update(confusion, logits, labels)
        self.core.train(was_training)
        sums = distributed.all_reduce_sum(sums, self.dist)
        confusion = distributed.all_reduce_sum(confusion, self.dist)
        count = max(1.0, float(sums[2]))
        return {
            f"{split}_loss": float(sums[0]) / count,
            f"{split}_acc": float(sums[1]) / count,
            f"{split}_f1": weighted_f1_from_confusion(confusion),
        }

    def value(self, indices: torch.Tensor):
        if self.cfg.valuation == "online":
            return self.valuator.online_finish(indices)
        return self.valuator.run_pass(indices)

    # -- the run --------------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg = self.cfg
        start_epoch = self.epoch
        run_start = time.perf_counter()
        for epoch in range(start_epoch, cfg.epochs):
            self.epoch = epoch
            self.valuator.reset_epoch()
            row = {"epoch": epoch}
            plan = self.plan
            lr = self.optimizer.param_groups[0]["lr"]

            t0 = time.perf_counter()
            row.update(self.train_epoch())
            self._check_finite(epoch)
            online_s = self.valuator.seconds
            train_s = time.perf_counter() - t0 - online_s
            self.scheduler.step()

            indices = self.method.valuation_indices(epoch)
            values = None
            if indices is not None:
                values = self.value(torch.as_tensor(indices, dtype=torch.long))
            elif cfg.valuation == "online":
                self.valuator.online_discard()
            valuation_s = self.valuator.seconds
            self.plan = self.method.next_plan(epoch, values)

            t1 = time.perf_counter()
            last = epoch == cfg.epochs - 1
            splits = [("test", self.test_set)] + ([("val", self.val_set)] if self.val_set is not None else [])
            for split, dataset in splits:
                if (epoch + 1) % cfg.eval_every == 0 or last:
                    row.update(self.evaluate(dataset, split))
                else:
                    row.update({f"{split}_loss": math.nan, f"{split}_acc": math.nan, f"{split}_f1": math.nan})
            eval_s = time.perf_counter() - t1

            row["lr"] = lr
            phi_table = self._phi_table(values)
            for i, name in enumerate(self.modality_names):
                col = values.phi[:, i] if values is not None else torch.zeros(0)
                ok = col[~torch.isnan(col)]
                row[f"phi_mean_{name}"] = float(ok.mean()) if ok.numel() else math.nan
            row["valued"] = int((~torch.isnan(values.phi).any(1)).sum()) if values is not None else 0
            row["resampled"] = plan.resampled
            row["train_rows"] = len(plan)
            row.update(self.method.epoch_metrics())
            row.update(
                {"train_s": train_s, "valuation_s": valuation_s, "epoch_s": train_s + valuation_s, "eval_s": eval_s}
            )
            self.history.append(row)
            if phi_table is not None:
                self.last_phi, self.last_phi_epoch = phi_table, epoch
            self._write_epoch(epoch, row, phi_table)
            self.log_epoch(row)
        results = self._results(time.perf_counter() - run_start)
        if self.dist.is_main:
            self.outputs.write_results(results)
            if cfg.plots:
                from fastshap_train.plots import run_plots

                run_plots(cfg.out, self.history, self.modalities, self.last_phi, results["modality_names"])
        self.outputs.close()
        return results

    def _check_finite(self, epoch: int) -> None:
        """Stop a diverged run at the end of its epoch, before its checkpoint replaces the last good one."""
        finite = torch.stack([torch.isfinite(p).all() for p in self.core.parameters()]).all()
        if not bool(finite):  # the same parameters on every rank under DDP: all ranks stop together
            raise self.diverged(
                epoch, "the model's parameters hold NaN or Inf values after training (lower --lr, or set --grad-clip)"
            )

    def diverged(self, epoch: int, what: str) -> RunError:
        """The error that stops a run whose values went non-finite in `epoch`, naming what is kept."""
        last = self.outputs.dir / "last.pt"
        if self.cfg.checkpoint and epoch > 0 and last.is_file():
            kept = f"the last good checkpoint {last} (after epoch {epoch - 1}) is kept"
        else:
            kept = "no checkpoint was written"
        return RunError(f"epoch {epoch}: the model diverged: {what}; {kept}")

    def _phi_table(self, values) -> np.ndarray | None:
        if values is None:
            return None
        table = torch.full((len(self.train_set), self.n), math.nan)
        table[values.index] = values.phi
        return table.numpy()

    def _write_epoch(self, epoch: int, row: dict, phi_table) -> None:
        val_acc = row.get("val_acc", math.nan)
        # Only the every-K evaluations compete, not the extra one after a run's last epoch: a run stopped
        # early to be resumed must pick the best epoch the uninterrupted run picks.
        scheduled = (epoch + 1) % self.cfg.eval_every == 0
        improved = scheduled and not math.isnan(val_acc) and val_acc > self.best["val_acc"]
        if improved:
            self.best = {"val_acc": val_acc, "test_acc": row["test_acc"], "epoch": epoch}
        self.epoch = epoch + 1
        state = self.state_dict() if self.cfg.checkpoint else None  # collective under DDP: every rank
        if not self.dist.is_main:
            return
        # last.pt first: it commits the epoch. A run killed before it re-runs the epoch on resume (and one
        # killed in its first epoch leaves only config.yaml); one killed after it gets the files below
        # rewritten from the checkpoint when it resumes (_restore_outputs).
        if state is not None:
            save_checkpoint(self.outputs.dir / "last.pt", state)
            self.saved_epochs = self.epoch
            if improved:
                save_checkpoint(self.outputs.dir / "best.pt", state)
        self.outputs.write_metrics(self.history)
        if phi_table is not None:
            self._write_phi(epoch, phi_table)
        self.outputs.log_scalars(epoch, row, phi_table, self.modality_names)

    def _write_phi(self, epoch: int, phi_table: np.ndarray) -> None:
        labels = self.train_set.labels
        self.outputs.write_phi(epoch, phi_table, labels.numpy() if labels is not None else None, self.modalities)

    def _restore_outputs(self, path) -> None:
        """After loading checkpoint `path`: what its epoch wrote after it, if the run was killed in between.

        metrics.csv is rewritten from the checkpoint's history (also dropping any row of an epoch that did
        not reach its checkpoint); the epoch's phi table is written if missing; and best.pt, if the
        checkpoint's epoch was the best, becomes a copy of the checkpoint (the two were the same state)."""
        if not self.dist.is_main:
            return
        self.outputs.write_metrics(self.history)
        done = self.epoch - 1
        if self.last_phi is not None and self.last_phi_epoch == done and done >= 0:
            if not (self.outputs.dir / "phi" / f"epoch_{done:03d}.npz").exists():
                self._write_phi(done, self.last_phi)
        best = self.outputs.dir / "best.pt"
        if self._test_selected_best and best.exists():
            # chosen on the test split by an older version: kept, under a name that says so, out of the way
            best.replace(best.with_name("best-by-test.pt"))
            warnings.warn(
                f"{best} was chosen on the test split (an older checkpoint format): renamed to "
                "best-by-test.pt; best.pt now follows the validation split",
                stacklevel=4,
            )
        if not self.cfg.checkpoint or self.best["epoch"] < 0 or Path(path).resolve() == best.resolve():
            return
        if self.best["epoch"] == done:  # the checkpoint is the best state itself
            atomic_write_bytes(best, lambda tmp: shutil.copyfile(path, tmp))
        elif not best.exists():  # resumed into another --out: the checkpoint's own best.pt, if it matches
            source = Path(path).parent / "best.pt"
            if source.is_file() and load_checkpoint(source).get("best") == self.best:
                atomic_write_bytes(best, lambda tmp: shutil.copyfile(source, tmp))

    def _results(self, seconds: float) -> dict:
        final = self.history[-1] if self.history else {}
        total_epoch = sum(r["epoch_s"] for r in self.history)
        total_val = sum(r["valuation_s"] for r in self.history)
        return {
            "dataset": self.cfg.dataset,
            "method": self.cfg.method,
            "modalities": list(self.modalities),
            # the names users give (uci-mfeat's fou, mor, ...) of the modality keys above (view0, view5, ...),
            # which stay the keys of final_phi_mean, the phi tables and checkpoints; metrics.csv's columns
            # (phi_mean_fou, copies_fou, ...) use the names
            "modality_names": dict(zip(self.modalities, self.modality_names)),
            "epochs": len(self.history),
            # model selection on the validation split: its best epoch, and the test accuracy there
            "selection": "val" if self.val_set is not None else "none",
            "best_epoch": self.best["epoch"],
            "best_val_acc": self.best["val_acc"] if self.best["epoch"] >= 0 else None,
            "test_acc_at_best": self.best["test_acc"] if self.best["epoch"] >= 0 else None,
            "final_test_acc": final.get("test_acc"),
            "final_test_f1": final.get("test_f1"),
            "final_phi_mean": {
                m: final.get(f"phi_mean_{name}") for m, name in zip(self.modalities, self.modality_names)
            },
            "valuation_share": total_val / total_epoch if total_epoch > 0 else 0.0,
            "seconds": seconds,
            "world_size": self.dist.world,
            "device": str(self.device),
        }

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        rng = distributed.all_gather_object(_rng_state(self.device), self.dist)
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "config": self.cfg.to_dict(),
            "model": self.core.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "method": self.method.state_dict(),
            "plan": self.plan.state_dict(),
            "train_indices": self.train_indices,
            "history": self.history,
            "best": dict(self.best),
            "last_phi": torch.from_numpy(self.last_phi) if self.last_phi is not None else None,
            "last_phi_epoch": self.last_phi_epoch,
            "rng": rng,
            "world_size": self.dist.world,
            "data": self.data_identity(),
        }

    def data_identity(self) -> dict:
        """What identifies the data a checkpoint was trained on: a resumed run must have the same."""
        return {
            "dataset": self.cfg.dataset,
            "options": dataset_options(self.cfg),
            "train_samples": len(self.train_set),
            "test_samples": len(self.test_set),
            "modalities": list(self.modalities),
        }

    def _check_same_data(self, state: dict, path) -> None:
        # The plan, phi tables and method state index the checkpoint's training set: other data would fail
        # mid-epoch (an index past the end) or silently train on part of it.
        here = self.data_identity()
        old = state.get("data")
        if old is None:  # a checkpoint from before "data" was saved: its config names the dataset options
            config = state.get("config") or {}
            old = {"dataset": config.get("dataset"), "options": {k: config[k] for k in here["options"] if k in config}}
        diffs = []
        if old.get("dataset") != here["dataset"]:
            diffs.append(f"dataset {old.get('dataset')} in the checkpoint, {here['dataset']} here")
        else:
            for key, value in here["options"].items():
                if old.get("options", {}).get(key, value) != value:
                    diffs.append(f"{key} {old['options'][key]} in the checkpoint, {value} here")
            for key in ("train_samples", "test_samples", "modalities"):
                if key in old and old[key] != here[key]:
                    diffs.append(f"{key.replace('_', ' ')} {old[key]} in the checkpoint, {here[key]} here")
        if diffs:
            raise CheckpointError(
                f"checkpoint {path} was trained on other data than this run's ({'; '.join(diffs)}): "
                "resume with the checkpoint's dataset options, or start a new run"
            )

    def load(self, path) -> None:
        state = load_checkpoint(path)
        self._check_same_data(state, path)
        try:
            self._load_state(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not fit this run: {type(exc).__name__}: {exc}") from None
        self._restore_outputs(path)

    def _load_state(self, state: dict) -> None:
        old = state["config"]
        changed = sorted(k for k in old if k not in _RESUME_FREE and old.get(k) != self.cfg.to_dict().get(k))
        if changed and self.dist.is_main:
            warnings.warn(
                f"resuming with changed options {', '.join(changed)}: the run may not match an uninterrupted one",
                stacklevel=3,
            )
        self.core.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state["method"])
        self.plan = Plan.from_state(state["plan"])
        self.train_indices = state["train_indices"].long()
        self.history = list(state["history"])
        # A checkpoint from before validation-based selection picked its best on the test split: not kept
        # (its best.pt is set aside by _restore_outputs); a run resumed without selection keeps none.
        self.best = dict(state["best"]) if "val_acc" in state["best"] and self.val_set is not None else dict(_NO_BEST)
        self._test_selected_best = "val_acc" not in state["best"] and state["best"].get("epoch", -1) >= 0
        self.last_phi = state["last_phi"].numpy() if state.get("last_phi") is not None else None
        self.last_phi_epoch = int(state.get("last_phi_epoch", -1))  # absent from older checkpoints
        self.epoch = int(state["epoch"])
        self.saved_epochs = self.epoch
        self.global_step = int(state["global_step"])
        rng = state["rng"]
        if len(rng) == self.dist.world:
            _set_rng_state(rng[self.dist.rank], self.device)
        else:
            if self.dist.is_main:
                warnings.warn(
                    f"the checkpoint was written by {len(rng)} processes, this run has {self.dist.world}: "
                    "random states are re-seeded, not restored",
                    stacklevel=3,
                )
            seed_all(derived_seed(self.cfg.seed, "resume", self.epoch, self.dist.rank))
        if self.epoch >= self.cfg.epochs and self.dist.is_main:
            warnings.warn(
                f"the checkpoint has already trained {self.epoch} epochs (--epochs {self.cfg.epochs}): "
                "nothing left to train",
                stacklevel=3,
            )

    def close(self) -> None:
        self.outputs.close()
        distributed.cleanup(self.dist)
        threads, deterministic = self._saved_runtime
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


#: No best epoch yet (or no model selection: no validation split).
_NO_BEST = {"val_acc": -math.inf, "test_acc": math.nan, "epoch": -1}


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(-1) == labels).sum().double()


_BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def modality_names(dataset) -> tuple:
    """The modalities' names as users give them (``dataset.short_name``), else their keys; the keys when two
    names would clash (the names are metrics.csv's column suffixes)."""
    fn = getattr(dataset, "short_name", None)
    keys = tuple(dataset.modalities)
    names = tuple(fn(m) for m in keys) if fn else keys
    return names if len(set(names)) == len(names) else keys


def interactive() -> bool:
    """Whether progress bars have a terminal to draw on (tqdm writes to stderr)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def epoch_line(row: dict, epochs: int, names) -> str:
    """An epoch's metrics.csv row as one log line."""

    def num(key, fmt=".4f"):
        value = row.get(key)
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    parts = [f"train loss {num('train_loss')} acc {num('train_acc')}"]
    for split in ("val", "test"):
        if num(f"{split}_acc") is not None:
            parts.append(f"{split} acc {num(f'{split}_acc')}")
    phi = [f"{name} {num(f'phi_mean_{name}', '+.3f')}" for name in names if num(f"phi_mean_{name}") is not None]
    if phi:
        parts.append("mean phi " + " ".join(phi))
    parts.append(f"{row.get('train_rows')} rows ({row.get('resampled')} re-sampled)")
    parts.append(f"{row.get('epoch_s', 0.0) + row.get('eval_s', 0.0):.1f} s")
    # 0-based like metrics.csv's epoch column, the progress bars and the error messages: epoch 0/39 .. 39/39
    return f"epoch {row['epoch']}/{epochs - 1}: " + ", ".join(parts)


def train(cfg: Config, overwrite: bool = False) -> dict:
    """Train with `cfg` and return results.json's content (`overwrite`: see :class:`Trainer`).

    A KeyboardInterrupt leaves with ``epoch`` (the epoch it stopped) and ``saved_epochs`` (the epochs the
    last checkpoint holds) set on it, for the command line's resume message."""
    trainer = Trainer(cfg, overwrite)
    try:
        return trainer.fit()
    except KeyboardInterrupt as exc:
        exc.epoch, exc.saved_epochs = trainer.epoch, trainer.saved_epochs
        raise
    finally:
        trainer.close()
