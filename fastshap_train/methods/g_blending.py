"""``g-blending``: Gradient Blending (Wang, Tran and Feiszli, CVPR 2020), online form.

The loss is a weighted sum over n + 1 heads, the n unimodal outputs and the fused one:

    loss = sum_k w_k CE(out_k, y),   sum_k w_k = 1

Unimodal outputs are the concat head's per-modality slices plus bias / n (as in OGM-GE's and PMR's released
code; ``--gb-heads slice``) or one extra linear classifier per modality on the shared encoders
(``--gb-heads separate``, the paper's multi-head set-up; prediction still uses the fused head only).

**Weights** (paper Sec. 3.3): for a head k trained from checkpoint N to N + s, with L^T its loss on training
data and L^V on held-out data,

    O = L^V - L^T  (overfitting),  G_k = L^V_N - L^V_{N+s},  O_k = O_{N+s} - O_N,  w_k = (G_k / O_k^2) / Z

(the overfitting-to-generalisation ratio enters as w ~ G / O^2; Z normalises the sum to 1). A head whose
held-out loss did not decrease (G_k <= 0) gets weight 0; if no head improved the weights are uniform. The
held-out split V is ``--gb-holdout`` of the TRAINING set, drawn once per run (seeded) and never trained on;
L^T is measured on a fixed random subset of the remaining training samples of the same size. Both are
measured in eval mode with eval transforms. The test set is never used.

``--gb-mode probe`` (default) is the paper's online G-Blend (its Algorithm 1 re-run from the current weights
every super-epoch): at the start of each super-epoch of ``--gb-super-epoch`` epochs, for every head k a copy of
the model is trained on head k alone for a super-epoch (same optimiser kind and learning rate, fresh
optimiser state), and the weights come from the copies' losses before and after; the real model then
trains a super-epoch with them. This costs n + 1 extra super-epochs of training per super-epoch.
``--gb-mode joint`` is a cheap approximation: the model's own heads are measured at the super-epoch
boundaries and the weights of the next super-epoch come from the progress of the last one (uniform weights
for the first).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from fastshap_train import distributed
from fastshap_train.data.base import Plan, PlanBatches, PlanDataset
from fastshap_train.errors import RunError
from fastshap_train.methods._common import check_head, eval_loader, random_subset, unimodal_logits
from fastshap_train.methods.base import Method
from fastshap_train.registry import Option, register_method, register_options

register_options(
    "g-blending",
    [
        Option(
            "gb_super_epoch",
            10,
            "G-Blending: epochs per super-epoch between weight estimates (GeWu-Lab BalanceBenchmark: 10)",
            check=lambda x: None if x >= 1 else "must be >= 1",
        ),
        Option(
            "gb_holdout",
            0.1,
            "G-Blending: share of the training set held out to measure generalisation (never trained on)",
            check=lambda x: None if 0 < x < 1 else "must be in (0, 1)",
        ),
        Option(
            "gb_mode",
            "probe",
            "G-Blending: probe (train a copy per head each super-epoch, the paper's online "
            "G-Blend) or joint (measure the model's own heads; cheap)",
            choices=("probe", "joint"),
        ),
        Option(
            "gb_heads",
            "slice",
            "G-Blending unimodal outputs: slice (concat head's per-modality slice + bias/n) "
            "or separate (one extra linear classifier per modality)",
            choices=("slice", "separate"),
        ),
    ],
    title="g-blending (Wang et al., CVPR 2020)",
)


def blend_weights(train_before, val_before, train_after, val_after, eps: float = 1e-12) -> torch.Tensor:
    """Per-head losses (K,) at the start and end of a super-epoch -> weights (K,) float64 summing to 1.

    G = L^V_before - L^V_after, O = (L^V_after - L^T_after) - (L^V_before - L^T_before),
    w = max(G, 0) / max(O^2, eps), normalised; uniform when every G <= 0.
    """
    t0, v0, t1, v1 = (
        torch.as_tensor(x, dtype=torch.float64) for x in (train_before, val_before, train_after, val_after)
    )
    gain = v0 - v1
    over = (v1 - t1) - (v0 - t0)
    raw = gain.clamp_min(0.0) / (over * over).clamp_min(eps)
    total = raw.sum()
    if not torch.isfinite(total) or total <= 0:
        return torch.full_like(raw, 1.0 / raw.numel())
    return raw / total


class _AuxHeads(nn.Module):
    """One linear classifier per modality (``--gb-heads separate``)."""

    def __init__(self, dims, num_classes):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d, num_classes) for d in dims)

    def forward(self, features):
        return [layer(f) for layer, f in zip(self.layers, features)]


@register_method("g-blending")
class GBlending(Method):
    head = "concat"
    help = "G-Blending (Wang et al. 2020): unimodal + fused CE weighted by overfitting-to-generalisation ratios"

    def __init__(self, cfg, trainer):
        super().__init__(cfg, trainer)
        self.weights = torch.full((self.n + 1,), 1.0 / (self.n + 1), dtype=torch.float64)
        self.holdout: torch.Tensor | None = None
        self.train_probe: torch.Tensor | None = None  # training samples where L^T is measured
        self.snapshot: torch.Tensor | None = None  # joint mode: (2, K) losses at the last boundary
        self.history: list = []  # (epoch, weights, G, O) per estimate
        self._metrics = {}
        self._used = self.weights  # the weights of the last training step (logged per epoch)
        self.estimated_for = -1  # the epoch whose weights were estimated last

    @classmethod
    def check_config(cls, cfg):
        if cfg["gb_heads"] == "slice":
            problem = check_head(cfg)
            if problem:
                return problem
        return super().check_config(cfg)

    def head_names(self) -> list:
        return list(self.trainer.modality_names) + ["fused"]

    # -- model and data ---------------------------------------------------------------------------------
    def build_model(self, dataset):
        model = super().build_model(dataset)
        if self.cfg.gb_heads == "separate":
            model.gb_heads = _AuxHeads(model.dims, dataset.num_classes)
        return model

    def train_indices(self, size):
        g = self.trainer.generator("g-blending-holdout")
        perm = torch.randperm(size, generator=g)
        held = max(1, int(round(float(self.cfg.gb_holdout) * size)))
        if held >= size:
            raise RunError(
                f"g-blending: --gb-holdout {self.cfg.gb_holdout} holds out all {size} training samples "
                f"(none left to train on): lower it"
            )
        self.holdout = perm[:held].sort().values
        keep = perm[held:].sort().values
        self.train_probe = random_subset(keep, held, self.trainer.generator("g-blending-train-probe"))
        return keep

    def head_logits(self, model, out) -> list:
        """K = n + 1 logits (B, C): unimodal outputs, then the fused one."""
        if self.cfg.gb_heads == "separate":
            uni = model.gb_heads(out.features)
        else:
            uni = unimodal_logits(model.head, out.features)
        return list(uni) + [out.logits]

    # -- the loss ---------------------------------------------------------------------------------------
    def loss(self, out, batch):
        labels = batch["label"]
        self._used = self.weights
        total = 0.0
        for w, z in zip(self.weights.tolist(), self.head_logits(self.trainer.core, out)):
            if w > 0:
                total = total + w * F.cross_entropy(z.float(), labels)
        return total

    # -- weight estimation ------------------------------------------------------------------------------
    @torch.no_grad()
    def measure(self, model) -> torch.Tensor:
        """(2, K) float64: mean CE of each head on the training probe subset (row 0) and on V (row 1)."""
        t = self.trainer
        was_training = model.training
        model.eval()
        rows = []
        for indices in (self.train_probe, self.holdout):
            sums = torch.zeros(self.n + 1, dtype=torch.float64)
            count = 0
            for batch in eval_loader(t, indices):
                labels = batch["label"].to(t.device)
                out = model(t.inputs_to_device(batch))
                for k, z in enumerate(self.head_logits(model, out)):
                    sums[k] += float(F.cross_entropy(z.float(), labels, reduction="sum"))
                count += labels.shape[0]
            rows.append(sums / max(count, 1))
        model.train(was_training)
        return torch.stack(rows)

    def probe(self, epoch: int) -> tuple:
        """Train a copy of the model on each head alone for a super-epoch; (before (2, K), after (2, K))."""
        t = self.trainer
        before = self.measure(t.core)
        after = torch.zeros_like(before)
        base_opt = t.optimizer
        # The optimiser's constructor arguments at the current learning rate (not scheduler bookkeeping).
        group = {k: v for k, v in base_opt.param_groups[0].items() if k in base_opt.defaults and k != "params"}
        plan = Plan.originals(t.train_indices, self.n)
        for k in range(self.n + 1):
            model = copy.deepcopy(t.core)
            model.train()
            opt = type(base_opt)([p for p in model.parameters() if p.requires_grad], **group)
            for e in range(int(self.cfg.gb_super_epoch)):
                data = PlanDataset(t.train_set, plan)
                g = t.generator("g-blending-probe", epoch, k, e)
                loader = DataLoader(
                    data,
                    # a shuffled epoch (as shuffle=True draws it) whose one-row tail joins the batch before it:
                    # the probe trains in train mode, where batch norm cannot take a batch of one row
                    batch_sampler=PlanBatches(RandomSampler(data, generator=g), t.per_rank_batch),
                    num_workers=t.cfg.workers,
                    generator=g,
                )
                for batch in loader:
                    labels = batch["label"].to(t.device)
                    out = model(t.inputs_to_device(batch))
                    loss = F.cross_entropy(self.head_logits(model, out)[k].float(), labels)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            after[:, k] = self.measure(model)[:, k]
            del model, opt
        return before, after

    def estimate(self, epoch: int) -> None:
        """The weights of the super-epoch that starts at `epoch`, from the model as it is now."""
        if self.cfg.gb_mode == "probe":
            before, after = self.probe(epoch)
        else:
            after = self.measure(self.trainer.core)
            before, self.snapshot = self.snapshot, after
            if before is None:
                return
        weights = blend_weights(before[0], before[1], after[0], after[1])
        # Every rank computed the same thing from the same data; rank 0's result is authoritative.
        weights = distributed.all_gather_object(weights, self.trainer.dist)[0]
        self.weights = weights.double()
        gain = before[1] - after[1]
        over = (after[1] - after[0]) - (before[1] - before[0])
        self.history.append({"epoch": epoch, "weights": self.weights.tolist(), "G": gain.tolist(), "O": over.tolist()})
        self._metrics = {"gb_estimated": 1}

    def on_batch(self, batch):
        # At the first step of each super-epoch (not after the previous epoch: a run's last epoch then
        # costs no probe, and a resumed run estimates exactly where an uninterrupted one does).
        epoch = self.trainer.epoch
        if epoch % int(self.cfg.gb_super_epoch) == 0 and self.estimated_for != epoch:
            self.estimated_for = epoch
            self.estimate(epoch)
        return batch

    # -- logging and checkpoints ------------------------------------------------------------------------
    def epoch_metrics(self):
        out = {"gb_estimated": 0, **self._metrics}
        self._metrics = {}
        for name, w in zip(self.head_names(), self._used.tolist()):
            out[f"gb_w_{name}"] = w
        return out

    def state_dict(self):
        return {
            "weights": self.weights.clone(),
            "holdout": self.holdout,
            "train_probe": self.train_probe,
            "snapshot": self.snapshot,
            "history": list(self.history),
            "estimated_for": self.estimated_for,
        }

    def load_state_dict(self, state):
        if state:
            self.weights = state["weights"].double().clone()
            self.holdout = state["holdout"]
            self.train_probe = state["train_probe"]
            self.snapshot = state["snapshot"]
            self.history = list(state["history"])
            self.estimated_for = int(state["estimated_for"])
