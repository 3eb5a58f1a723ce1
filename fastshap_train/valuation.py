"""Per-sample modality valuation during training, through ``fastshap.modality_shapley``.

* **epoch** (the paper): after an epoch, a pass over the requested training samples in eval mode, no
  grad, eval transforms (``--valuation-augment`` for the authors' behaviour), unshuffled. The encoders run
  once per sample; the op evaluates all 2^n coalitions from the features. Under DDP each rank values
  every world-th sample and the results are all-gathered, so every rank holds the same full table.
* **online** (beyond the paper): inside each training step the op values the batch from the features the
  forward already computed (one op call per step, no extra forward, no extra pass). Values therefore come
  from train-mode features (dropout, batch-norm batch statistics) and from the parameters of the moment:
  the head after the step's optimizer update, applied to the features computed before it (the op runs
  once the step is done, so that it never delays the backward pass).
  Only original rows are recorded, so each sample is valued once per epoch: unmodified ones, and with
  ``--removal feature`` those modality-drop removed modalities from (their encoder outputs are the whole
  sample's; the head saw them zeroed). Re-sampled copies are not recorded; data-mask and modality-drop
  with input removal alter what the encoders see, so they refuse online valuation. With ``--removal
  input`` the baselines Enc_i(0) are computed once at the start of each epoch, in eval mode.

Both modes pass a :class:`fastshap.DeferredChecks` to the op, so that no call waits on the GPU for its
value checks; the checks are read once, where the pass or the epoch ends (a sync point anyway).

Per call nothing is done besides the op: the features go in as the forward left them (the op runs without
gradients and with autocast off by itself), so every call after the first takes fastshap's planned path
(the same head, widths, dtype and options each step; fastshap/_call_plan.py). The online update adds no op
per step: its values go into the table in one index write when the epoch ends.
"""

from __future__ import annotations

import math
import time

import torch
from torch.utils.data import DataLoader

import fastshap
from fastshap_train import distributed
from fastshap_train.methods.base import Method, Values


class Valuator:
    def __init__(self, trainer):
        self.t = trainer
        self.table: torch.Tensor | None = None
        self.steps: list = []  # online: each step's (phi, index, keep, mask) until the epoch's table is written
        self.baselines: list | None = None
        self.seconds = 0.0  # time spent valuing in the current epoch
        self.calls = 0  # op calls in the current epoch
        self.op_seconds = 0.0  # time inside those calls (host time; asynchronous on a GPU)
        self.checks = fastshap.DeferredChecks()
        # Online: rows with modalities removed are originals whose raw features are the sample's (see above)
        self.records_removals = trainer.method.removes_from_originals and trainer.cfg.removal == "feature"

    # -- shared -------------------------------------------------------------------------------------
    def compute_baselines(self) -> list | None:
        """Enc_i(zero input) for --removal input (eval mode, no grad), else None (zero features)."""
        if self.t.cfg.removal != "input":
            return None
        core = self.t.core
        was_training = core.training
        core.eval()
        zero = {m: self.t.value_set.zero_input(m).to(self.t.device) for m in self.t.modalities}
        with torch.no_grad(), self.t.autocast():
            base = core.removed_features(zero)
        core.train(was_training)
        return base

    def value_batch(self, features, labels, baselines=None) -> torch.Tensor:
        """One op call: features n x (B, d_i) -> phi (B, n) on their device (without gradients, in the op's
        own fp32 / fp64 arithmetic whatever autocast is on: the op sees to both)."""
        self.calls += 1
        start = time.perf_counter()
        cfg = self.t.cfg
        phi = fastshap.modality_shapley(
            features,
            self.t.method.valuation_head(),
            labels,
            baselines=baselines,
            benefit=cfg.benefit,
            backend=cfg.backend,
            defer_checks=self.checks,
        )
        self.op_seconds += time.perf_counter() - start
        return phi

    def raise_checks(self) -> None:
        """The op's deferred value checks of this pass or epoch, summed over the ranks (all raise together)."""
        t = self.t
        try:
            self.checks.raise_if_any(reduce=lambda counts: distributed.all_reduce_sum(counts, t.dist), device=t.device)
        except ValueError as exc:  # NaN / Inf features or head weights: the model went non-finite
            # fastshap's closing advice is for API callers (defer_checks is the trainer's choice): dropped.
            problems = str(exc).split(". Run the calls without defer_checks")[0]
            raise t.diverged(t.epoch, f"the valuation's value checks failed ({problems})") from None

    # -- epoch mode ---------------------------------------------------------------------------------
    def pass_loader(self, indices: torch.Tensor) -> DataLoader:
        """This rank's share of `indices` (every world-th), unshuffled, eval transforms, valuation batches."""
        t = self.t
        return t.ordered_loader(t.value_set, indices[t.dist.rank :: t.dist.world].tolist(), "valuation")

    def run_pass(self, indices: torch.Tensor) -> Values:
        t = self.t
        start = time.perf_counter()
        loader = self.pass_loader(indices)
        core = t.core
        was_training = core.training
        core.eval()
        base = self.compute_baselines()
        out_index, out_phi = [], []
        with torch.no_grad():
            for batch in t.progress(loader, "valuation"):
                inputs = t.inputs_to_device(batch)
                labels = batch["label"].to(t.device, non_blocking=True)
                with t.autocast():
                    feats = core.encode(inputs)
                out_phi.append(self.value_batch(feats, labels, base))
                out_index.append(batch["index"])
        core.train(was_training)
        self.raise_checks()
        index = torch.cat(out_index) if out_index else torch.zeros(0, dtype=torch.long)
        phi = torch.cat(out_phi).float().cpu() if out_phi else torch.zeros(0, t.n)
        index, phi = distributed.gather_rows(index, phi, t.dist)
        self.seconds += time.perf_counter() - start
        return _in_order(indices, index, phi, len(t.train_set))

    # -- online mode --------------------------------------------------------------------------------
    def online_start(self, size: int) -> None:
        """A fresh (size + 1, n) table on the device (the last row absorbs rows that are not recorded)."""
        t = self.t
        self.table = torch.full((size + 1, t.n), math.nan, device=t.device)
        start = time.perf_counter()
        self.baselines = self.compute_baselines()
        # Which of the epoch's rows must be told apart from the recorded ones, decided once from its plan:
        # rows with a data mask, and (unless removals are recorded) rows that keep fewer modalities. A method
        # whose on_batch may rewrite a batch's rows has every batch's rows tested.
        plan, full = t.plan, t.plan.full
        rewrites = type(t.method).on_batch is not Method.on_batch
        self.test_mask = rewrites or bool((plan.mask != 0).any())
        self.test_keep = not self.records_removals and (rewrites or bool((plan.keep != full).any()))
        self.full = full
        self.steps = []
        self.seconds += time.perf_counter() - start

    def online_update(self, out, batch: dict) -> None:
        """Values the step's batch. The values and the rows they belong to are kept as they are (references,
        no op: the first ops after a training step pay for its cold caches) and written into the table in one
        go when the epoch ends."""
        start = time.perf_counter()
        phi = self.value_batch(out.raw_features, batch["label"], self.baselines)
        keep = batch["keep"] if self.test_keep else None
        self.steps.append((phi, batch["index"], keep, batch["mask"] if self.test_mask else None))
        self.seconds += time.perf_counter() - start

    def _write_steps(self) -> None:
        """The epoch's values into the table: one index write, no boolean selection (no host-device
        synchronisation), rows that are not recorded sent to the table's last row. A sample is recorded at
        most once per epoch (copies and altered rows are not), so the order of the writes does not matter."""
        steps, self.steps = self.steps, []
        if not steps:
            return
        phi, rows, keep, mask = (torch.cat(column) if column[0] is not None else None for column in zip(*steps))
        original = None
        if mask is not None:
            original = mask == 0
        if keep is not None:
            original = keep == self.full if original is None else original & (keep == self.full)
        if original is not None:
            rows = torch.where(original, rows, self.table.shape[0] - 1)
        self.table.index_copy_(0, rows, phi)

    def online_finish(self, indices: torch.Tensor) -> Values:
        """The epoch's table gathered over ranks, restricted to `indices`."""
        start = time.perf_counter()
        self._write_steps()
        table = self.table[:-1].float().cpu()
        self.raise_checks()
        seen = ~torch.isnan(table).any(1)
        index, phi = distributed.gather_rows(seen.nonzero().flatten(), table[seen], self.t.dist)
        self.table = None
        self.seconds += time.perf_counter() - start
        return _in_order(indices, index, phi, table.shape[0])

    def online_discard(self) -> None:
        """The epoch's values are not asked for: the table and the steps' values go."""
        self.table, self.steps = None, []

    def reset_epoch(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.op_seconds = 0.0


def _in_order(requested: torch.Tensor, index: torch.Tensor, phi: torch.Tensor, size: int) -> Values:
    """Values in the requested order, whatever order the ranks returned them in (NaN where missing)."""
    full = torch.full((size, phi.shape[1]), math.nan)
    full[index] = phi.float()
    return Values(requested.clone(), full[requested])
