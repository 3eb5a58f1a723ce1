"""``pmr``: Prototypical Modal Rebalance (Fan et al., CVPR 2023).

Prototypes: c^m_k, the mean encoder feature of modality m over the training samples of class k. Before
epoch 0 and after every epoch they are recomputed in eval mode, without gradients, from a random
``--pmr-proto-ratio`` share of the training set (the released code uses the first tenth of the shuffled
training batches), then mixed with the previous ones: ``c <- (1 - mu) c_new + mu c_old`` with
``mu = --pmr-momentum`` (released code: ``momentum_coef``, default 0.2; no mixing before epoch 0). A class
missing from the subset keeps its previous prototype (zeros before the first one).

Per training step, with z^m the modality's features and d the Euclidean distance (released ``EU_dist``):

    p^m     = softmax(-d(z^m, c^m))                      the non-parametric prototype classifier
    PCE^m   = CE(-d(z^m, c^m), y)
    s_m     = sum over the batch of p^m[y]               (summed over DDP ranks)
    loss    = CE(fused logits, y) + sum over m != strongest of beta_m PCE^m

The strongest modality is the argmax of s. Within epochs ``--pmr-start`` .. ``--pmr-end`` every weaker
modality gets ``beta_m = alpha`` (``--pmr-form constant``: the released ``main_Prototype_grad.py``, where
the weaker of two modalities gets ``alpha``) or ``beta_m = alpha * clip(s_max / s_m - 1, 0, 1)``
(``--pmr-form ratio``: proportional to the imbalance, as in GeWu-Lab's BalanceBenchmark PMR). For n = 2 this
is the paper's "PCE on the slow-learning modality"; for n > 2 (our extension: the paper has two modalities)
every modality below the strongest gets its term. ``--pmr-mu`` > 0 adds the paper's prototypical entropy
regularisation (PER) during the first ``--pmr-per-epochs`` modulated epochs:
``- mu * sum_m beta_m * H(p^strongest)``, the mean entropy of the strongest modality's prototype
distribution, which delays its premature convergence (off by default: the released main script has no PER).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastshap_train.methods._common import eval_loader, in_window, random_subset, reduce_sum
from fastshap_train.methods.base import Method
from fastshap_train.registry import Option, register_method, register_options

register_options(
    "pmr",
    [
        Option(
            "pmr_alpha",
            1.0,
            "PMR: weight alpha of the prototype CE of weaker modalities (released default 1.0)",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
        Option(
            "pmr_momentum",
            0.2,
            "PMR: momentum of the prototype update c = (1 - mu) c_new + mu c_old (released default 0.2)",
            check=lambda x: None if 0 <= x < 1 else "must be in [0, 1)",
        ),
        Option(
            "pmr_start",
            0,
            "PMR: first epoch with the prototype terms (released default 0)",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
        Option(
            "pmr_end", 100, "PMR: last epoch with the prototype terms, inclusive (released default 100; -1: no end)"
        ),
        Option(
            "pmr_form",
            "constant",
            "PMR: weight of a weaker modality's PCE: constant alpha (released code) or "
            "ratio alpha * clip(s_max / s_m - 1, 0, 1)",
            choices=("constant", "ratio"),
        ),
        Option(
            "pmr_proto_ratio",
            0.1,
            "PMR: share of the training set used to compute the prototypes (released: 1/10)",
            check=lambda x: None if 0 < x <= 1 else "must be in (0, 1]",
        ),
        Option(
            "pmr_mu",
            0.0,
            "PMR: weight of the prototypical entropy regularisation of the strongest modality (PMR-PER; 0: off)",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
        Option(
            "pmr_per_epochs",
            10,
            "PMR: number of modulated epochs with the entropy regularisation",
            check=lambda x: None if x >= 0 else "must be >= 0",
        ),
    ],
    title="pmr (Fan et al., CVPR 2023)",
)


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple:
    """features (N, d), labels (N,) -> (sums (C, d) float64, counts (C,) float64)."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64, device=features.device)
    sums.index_add_(0, labels, features.double())
    counts = torch.bincount(labels, minlength=num_classes).double()
    return sums, counts


def update_prototypes(sums: torch.Tensor, counts: torch.Tensor, old: torch.Tensor | None, momentum: float):
    """Class means from (sums, counts), mixed with `old` as (1 - momentum) new + momentum old (no old: new).

    Classes with no sample keep their old prototype (zeros when there is none). Returns (C, d) float32.
    """
    seen = counts > 0
    new = torch.zeros_like(sums)
    new[seen] = sums[seen] / counts[seen].unsqueeze(1)
    if old is None:
        return new.float()
    old = old.to(new)
    mixed = (1.0 - momentum) * new + momentum * old
    return torch.where(seen.unsqueeze(1), mixed, old).float()


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """-Euclidean distance (B, C) between features (B, d) and prototypes (C, d): the prototype classifier."""
    return -torch.cdist(features.float(), prototypes.float().to(features.device))


def pmr_coefficients(scores: torch.Tensor, alpha: float, form: str = "constant") -> torch.Tensor:
    """scores (n,) -> beta (n,) float64: 0 for the strongest modality (first argmax), alpha (constant) or
    alpha * clip(s_max / s_m - 1, 0, 1) (ratio) for every modality with a lower score."""
    s = scores.detach().double().cpu()
    strongest = int(torch.argmax(s))
    top = s[strongest]
    weaker = s < top
    if form == "constant":
        beta = torch.where(weaker, torch.full_like(s, alpha), torch.zeros_like(s))
    else:
        ratio = top / s.clamp_min(1e-300)
        beta = alpha * (ratio - 1.0).clamp(0.0, 1.0)
        beta = torch.where(weaker, beta, torch.zeros_like(s))
    return beta


def prototype_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the entropy of softmax(logits) (B, C) -> scalar."""
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1).mean()


@register_method("pmr")
class PMR(Method):
    head = "concat"
    help = "PMR (Fan et al. 2023): prototype cross-entropy on the weaker modalities (momentum class prototypes)"

    def __init__(self, cfg, trainer):
        super().__init__(cfg, trainer)
        self.prototypes: list | None = None  # n tensors (C, d_m) on the device
        self._sums = {}

    # -- prototypes -------------------------------------------------------------------------------------
    def setup(self):
        self.refresh_prototypes(-1)

    @torch.no_grad()
    def refresh_prototypes(self, epoch: int) -> None:
        """Recompute the prototypes from a random subset (the one used before epoch `epoch` + 1)."""
        t = self.trainer
        pool = t.train_indices
        count = max(1, int(round(float(self.cfg.pmr_proto_ratio) * len(pool))))
        subset = random_subset(pool, count, t.generator("pmr-prototypes", epoch))
        local = subset[t.dist.rank :: t.dist.world]
        core = t.core
        was_training = core.training
        core.eval()
        classes = t.train_set.num_classes
        sums = [torch.zeros(classes, d, dtype=torch.float64, device=t.device) for d in core.dims]
        counts = torch.zeros(classes, dtype=torch.float64, device=t.device)
        for batch in eval_loader(t, local):
            labels = batch["label"].to(t.device)
            with t.autocast():
                feats = core.encode(t.inputs_to_device(batch))
            for i, f in enumerate(feats):
                s, c = class_means(f.float(), labels, classes)
                sums[i] += s
            counts += torch.bincount(labels, minlength=classes).double()
        core.train(was_training)
        flat = reduce_sum(torch.cat([s.flatten() for s in sums] + [counts]), t)
        parts, offset = [], 0
        for s in sums:
            parts.append(flat[offset : offset + s.numel()].view_as(s))
            offset += s.numel()
        counts = flat[offset:]
        old = self.prototypes
        momentum = float(self.cfg.pmr_momentum)
        self.prototypes = [
            update_prototypes(parts[i], counts, None if old is None else old[i], momentum).to(t.device)
            for i in range(len(parts))
        ]

    def next_plan(self, epoch, values):
        self.refresh_prototypes(epoch)
        return super().next_plan(epoch, values)

    # -- the loss ---------------------------------------------------------------------------------------
    def loss(self, out, batch):
        labels = batch["label"]
        loss = F.cross_entropy(out.logits.float(), labels)
        sims = [prototype_logits(z, c) for z, c in zip(out.raw_features, self.prototypes)]
        scores = torch.stack(
            [torch.softmax(s.detach().double(), -1).gather(1, labels.view(-1, 1)).sum() for s in sims]
            + [labels.new_tensor(labels.shape[0], dtype=torch.float64)]
        )
        scores = reduce_sum(scores, self.trainer)
        scores, rows = scores[:-1], float(scores[-1])
        beta = pmr_coefficients(scores, float(self.cfg.pmr_alpha), self.cfg.pmr_form)
        epoch, start = self.trainer.epoch, int(self.cfg.pmr_start)
        active = in_window(epoch, start, int(self.cfg.pmr_end))
        self._accumulate(beta if active else torch.zeros_like(beta), scores / max(rows, 1.0))
        if not active:
            return loss
        for i, b in enumerate(beta.tolist()):
            if b > 0:
                loss = loss + b * F.cross_entropy(sims[i], labels)
        mu = float(self.cfg.pmr_mu)
        if mu > 0 and epoch < start + int(self.cfg.pmr_per_epochs) and float(beta.sum()) > 0:
            strongest = int(torch.argmax(scores.cpu()))
            loss = loss - mu * float(beta.sum()) * prototype_entropy(sims[strongest])
        return loss

    # -- logging and checkpoints ------------------------------------------------------------------------
    def _accumulate(self, beta, scores):
        s = self._sums
        s["steps"] = s.get("steps", 0) + 1
        s["beta"] = s.get("beta", 0) + beta
        s["weak"] = s.get("weak", 0) + (beta > 0).double()
        s["score"] = s.get("score", 0) + scores.detach().double().cpu()

    def epoch_metrics(self):
        s, self._sums = self._sums, {}
        if not s:
            return {}
        out = {}
        for i, m in enumerate(self.trainer.modality_names):
            out[f"pmr_beta_{m}"] = float(s["beta"][i] / s["steps"])
            out[f"pmr_weak_steps_{m}"] = int(s["weak"][i])
            out[f"pmr_proto_prob_{m}"] = float(s["score"][i] / s["steps"])  # mean p^m[y]
        return out

    def state_dict(self):
        return {"prototypes": [p.cpu() for p in self.prototypes]} if self.prototypes is not None else {}

    def load_state_dict(self, state):
        if state:
            self.prototypes = [p.to(self.trainer.device) for p in state["prototypes"]]
